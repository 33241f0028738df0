//! The agent <-> CNI plugin protocol, version [`PROTOCOL_VERSION`].
//!
//! Transport: a unix stream socket (default [`DEFAULT_SOCKET`]). One agent serves every
//! Network it was started with (`--network`); a request names the network its plugin configuration chose
//! (`network`), or none for the agent's first. The plugin writes one
//! [`Request`] as a single line of JSON, the agent answers with one [`Response`] line and
//! closes the connection. A request whose `version` the agent does not speak gets an
//! error naming the versions it does. Fields are camelCase; unknown fields are rejected
//! so that a newer plugin talking to an older agent fails loudly instead of silently
//! losing a field.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/trellis/agent.sock";

/// One request from the plugin: `{"version": 1, "op": "...", ...fields of the op}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The Network the attachment belongs to; `None`: the agent's first.
    pub network: Option<String>,
    /// What to do.
    pub op: Op,
}

impl Request {
    /// A request in this build's protocol version, for the agent's first network.
    pub fn new(op: Op) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            network: None,
            op,
        }
    }

    /// The same request for `network`.
    pub fn for_network(mut self, network: Option<String>) -> Self {
        self.network = network;
        self
    }

    /// Encode as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        let mut v = serde_json::to_value(&self.op).expect("Op serializes");
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("version".into(), self.version.into());
            if let Some(n) = &self.network {
                m.insert("network".into(), n.clone().into());
            }
        }
        v.to_string()
    }

    /// Decode one line. The version is checked before the operation so that a request
    /// from a newer plugin gets [`RequestError::Version`], not a confusing field error.
    pub fn from_line(line: &str) -> Result<Self, RequestError> {
        let mut v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| RequestError::Decode(e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| RequestError::Decode("request is not a JSON object".into()))?;
        let version = obj
            .remove("version")
            .ok_or_else(|| RequestError::Decode("missing field `version`".into()))?
            .as_u64()
            .ok_or_else(|| RequestError::Decode("`version` is not an integer".into()))?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(RequestError::Version(version));
        }
        let network = match obj.remove("network") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(n)) => Some(n),
            Some(other) => {
                return Err(RequestError::Decode(format!(
                    "`network` must be a string, not {other}"
                )))
            }
        };
        let op = serde_json::from_value(v).map_err(|e| RequestError::Decode(e.to_string()))?;
        Ok(Request {
            version: PROTOCOL_VERSION,
            network,
            op,
        })
    }
}

/// Why a request line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not valid JSON, or not a valid operation.
    Decode(String),
    /// A protocol version this build does not speak.
    Version(u64),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Decode(e) => write!(f, "bad agent request: {e}"),
            RequestError::Version(v) => write!(
                f,
                "agent protocol version {v} is not supported; this agent speaks version {PROTOCOL_VERSION}"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// The operations of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Reserve an address for an attachment and program its port mappings. The plugin
    /// then plumbs the veth; if that fails it sends [`Op::Del`] for the same attachment.
    Add(AddRequest),
    /// Release the attachment: detach its veth at once (deletion of the link finishes in
    /// the background), remove its port mappings, free its address. Idempotent.
    Del(Attachment),
    /// Return the agent's record of an attachment, for CNI CHECK.
    Check(Attachment),
    /// Release every attachment of this network that is not listed (CNI GC).
    Gc(GcRequest),
    /// Is the agent ready to serve ADD?
    Status,
}

/// Identifies one attachment: a container's interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// The body of [`Op::Add`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`, recorded for diagnostics.
    pub netns: String,
    /// A specific address asked for (the `ips` capability or `IP=` in `CNI_ARGS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ip: Option<Ipv4Addr>,
    /// Host port -> pod port mappings to program (the `portMappings` capability).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Labels for the attachment's Endpoint, from `LABELS=k1=v1,k2=v2` in `CNI_ARGS`
    /// (a Pod object of the same namespace/name, when it exists, wins).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// A specific MAC address asked for (the `mac` capability or `MAC=` in `CNI_ARGS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// Only traffic to this node address is mapped; `None` maps every node address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The lowercase name nftables and CNI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The body of [`Op::Gc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcRequest {
    /// The attachments the runtime still knows about; every other one is released.
    pub valid_attachments: Vec<Attachment>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Response {
    /// Success of [`Op::Add`] or [`Op::Check`].
    Lease(Lease),
    /// Success of [`Op::Del`].
    Released,
    /// Success of [`Op::Gc`]: the attachments released.
    Collected(Vec<Attachment>),
    /// Success of [`Op::Status`].
    Status(AgentStatus),
    /// Failure.
    Error(ErrorBody),
}

/// What the plugin needs to plumb an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lease {
    /// The pod address with the subnet's prefix length.
    pub address: Ipv4Net,
    /// The bridge address, the pod's default gateway.
    pub gateway: Ipv4Addr,
    /// The node bridge to attach the host side to.
    pub bridge: String,
    /// MTU for both ends of the veth.
    pub mtu: u32,
    /// Port mappings programmed for this attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// True when the reservation already existed (a retried ADD, or CHECK).
    #[serde(default)]
    pub existing: bool,
    /// The cluster DNS the pod should use (cluster mode), unless the network config
    /// sets `dns` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<LeaseDns>,
    /// The MAC address the pod's interface must have: the requested one, else
    /// `0a:58:` followed by the address (anti-spoofing lets the port send only from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The network namespace the bridge (and so the host side of the veth) lives in,
    /// when it is not the node's own: a tenant's world (a path to open, e.g. the
    /// agent's bind mount of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_netns: Option<String>,
}

/// The cluster DNS handed to pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseDns {
    /// Name servers (the agent's DNS on the pod gateway).
    pub nameservers: Vec<Ipv4Addr>,
    /// Search domains (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`).
    pub search: Vec<String>,
    /// resolv.conf options (`ndots:5`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Health of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentStatus {
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// Addresses still free.
    pub free: u32,
    /// Addresses reserved.
    pub reserved: u32,
}

/// A failed request. `code` follows the CNI error codes so the plugin can pass it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorBody {
    /// CNI error code (see [`codes`]).
    pub code: u32,
    /// One-line message naming the offending field or value.
    pub msg: String,
}

/// Error codes: the CNI spec's well-known ones and Trellis's own (>= 100).
pub mod codes {
    /// Incompatible CNI version (or agent protocol version).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Trellis: the node subnet has no free address.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// Trellis: the requested address is already used by another attachment.
    pub const ADDRESS_IN_USE: u32 = 101;
    /// Trellis: the requested address is outside the node subnet or is reserved
    /// (network, gateway, broadcast, excluded).
    pub const ADDRESS_NOT_ALLOWED: u32 = 102;
    /// Trellis: the host port is already mapped by another attachment.
    pub const PORT_IN_USE: u32 = 103;
    /// Trellis: the attachment already exists and is plumbed; DEL it first.
    pub const ALREADY_ATTACHED: u32 = 104;
    /// Trellis: configuring the kernel (links, addresses, routes, nftables) failed.
    pub const KERNEL: u32 = 105;
    /// Trellis: CHECK found the attachment different from what it should be.
    pub const CHECK_FAILED: u32 = 106;
}

impl AddRequest {
    /// The attachment this request is for.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

impl Response {
    /// Build an error response.
    pub fn error(code: u32, msg: impl Into<String>) -> Self {
        Response::Error(ErrorBody {
            code,
            msg: msg.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_and_shape() {
        let r = Request {
            version: PROTOCOL_VERSION,
            network: None,
            op: Op::Del(Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }),
        };
        let s = r.to_line();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version":1,"op":"del","containerId":"c1","ifname":"eth0"})
        );
        assert_eq!(Request::from_line(&s).unwrap(), r);
        let st = Request::from_line(r#"{"version":1,"op":"status"}"#).unwrap();
        assert_eq!(st.op, Op::Status);
        assert_eq!(
            Request::from_line(r#"{"version":2,"op":"status"}"#),
            Err(RequestError::Version(2))
        );
        let blue = Request::new(Op::Status).for_network(Some("blue".into()));
        let line = blue.to_line();
        assert!(line.contains(r#""network":"blue""#), "{line}");
        assert_eq!(Request::from_line(&line).unwrap(), blue);
        assert!(matches!(
            Request::from_line(r#"{"version":1,"network":7,"op":"status"}"#),
            Err(RequestError::Decode(m)) if m.contains("network")
        ));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = Request::from_line(
            r#"{"version":1,"op":"del","containerId":"c1","ifname":"eth0","bogus":1}"#,
        );
        assert!(matches!(e, Err(RequestError::Decode(m)) if m.contains("bogus")));
    }
}
