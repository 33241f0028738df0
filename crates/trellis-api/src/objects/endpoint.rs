//! `Endpoint`: one pod attachment (container + interface) on one node, published by the
//! node's agent.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::node::check_unicast;
use super::{
    validate_dns1123_label, validate_dns1123_subdomain, validate_mac, Kind, NoStatus, Object, Spec,
    ValidationError,
};
use crate::naming::validate_ifname;

/// Label an agent sets on the Endpoints it publishes: the node's name.
pub const ENDPOINT_NODE_LABEL: &str = "trellis.io/node";
/// Label an agent sets on the Endpoints it publishes: the network's name.
pub const ENDPOINT_NETWORK_LABEL: &str = "trellis.io/network";

/// An `Endpoint` object (namespaced, plural `endpoints`). Its labels (in
/// `metadata.labels`, copied from the pod) are what Service selectors match.
pub type Endpoint = Object<EndpointSpec>;

/// `spec` of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// The runtime's container ID (CNI `CNI_CONTAINERID`): letters, digits, `_`, `.`, `-`.
    pub container_id: String,
    /// The interface name inside the container (CNI `CNI_IFNAME`), at most 15 bytes.
    pub ifname: String,
    /// The network the address is from.
    pub network: String,
    /// The node the pod runs on.
    pub node: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The MAC address of the pod's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Whether the endpoint should receive service traffic (default true).
    #[serde(default = "default_true")]
    pub ready: bool,
    /// The [`Pod`](super::Pod) (same namespace) the attachment belongs to, if declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Spec for EndpointSpec {
    const KIND: Kind = Kind::Endpoint;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        self.validate_spec().map_err(|e| e.under("spec"))
    }
}

impl EndpointSpec {
    fn validate_spec(&self) -> Result<(), ValidationError> {
        validate_container_id(&self.container_id)
            .map_err(|m| ValidationError::new("containerId", m))?;
        validate_ifname(&self.ifname)
            .map_err(|m| ValidationError::new("ifname", format!("{:?} {m}", self.ifname)))?;
        validate_dns1123_label(&self.network).map_err(|m| ValidationError::new("network", m))?;
        validate_dns1123_subdomain(&self.node).map_err(|m| ValidationError::new("node", m))?;
        check_unicast(self.ip).map_err(|m| ValidationError::new("ip", m))?;
        if let Some(mac) = &self.mac {
            validate_mac(mac).map_err(|m| ValidationError::new("mac", m))?;
        }
        if let Some(pod) = &self.pod_name {
            validate_dns1123_label(pod).map_err(|m| ValidationError::new("podName", m))?;
        }
        Ok(())
    }
}

/// The CNI spec's rule for a container ID: not empty; letters, digits, `_`, `.`, `-`.
fn validate_container_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed; only letters, digits, '_', '.' and '-' are"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectMeta;

    fn ep() -> Endpoint {
        Endpoint::new(
            ObjectMeta::namespaced("default", "web-1-eth0"),
            EndpointSpec {
                container_id: "0123abcd".into(),
                ifname: "eth0".into(),
                network: "pods".into(),
                node: "node-1".into(),
                ip: "10.244.1.5".parse().unwrap(),
                mac: Some("0a:58:0a:f4:01:05".into()),
                ready: true,
                pod_name: Some("web-1".into()),
            },
        )
    }

    #[track_caller]
    fn assert_err(e: &Endpoint, field: &str, fragment: &str) {
        let err = e.validate().expect_err("should not validate");
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(fragment), "{err:?} lacks {fragment:?}");
    }

    /// A change to a valid spec, the field it breaks and a fragment of the message.
    type Case = (fn(&mut EndpointSpec), &'static str, &'static str);

    #[test]
    fn endpoint_rules() {
        ep().validate().unwrap();
        let cases: Vec<Case> = vec![
            (
                |s| s.container_id.clear(),
                "spec.containerId",
                "must not be empty",
            ),
            (
                |s| s.container_id = "a/b".into(),
                "spec.containerId",
                "'/' is not allowed",
            ),
            (
                |s| s.ifname = "eth0123456789012".into(),
                "spec.ifname",
                "at most 15",
            ),
            (|s| s.ifname.clear(), "spec.ifname", "empty"),
            (|s| s.network = "Pods".into(), "spec.network", "uppercase"),
            (|s| s.node = "node_1".into(), "spec.node", "not allowed"),
            (|s| s.ip = Ipv4Addr::UNSPECIFIED, "spec.ip", "unspecified"),
            (
                |s| s.mac = Some("0a:58".into()),
                "spec.mac",
                "not a MAC address",
            ),
            (
                |s| s.pod_name = Some("web.1".into()),
                "spec.podName",
                "not a DNS-1123 label",
            ),
        ];
        for (change, field, fragment) in cases {
            let mut e = ep();
            change(&mut e.spec);
            assert_err(&e, field, fragment);
        }
        let mut e = ep();
        e.metadata.namespace = None;
        assert_err(&e, "metadata.namespace", "Endpoint is a namespaced kind");
    }
}
