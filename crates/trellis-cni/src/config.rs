//! The network configuration on stdin, and the `CNI_*` environment.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use trellis_api::agent::{Attachment, PortMapping, Protocol, DEFAULT_SOCKET};
use trellis_api::naming::validate_ifname;

use crate::error::{codes, CniError};
use crate::result::CniResult;

/// The CNI versions this plugin speaks; results are written in the requested one.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Keys the spec defines or runtimes inject, plus Trellis's own. Any other key is
/// rejected with code 2 so a typo (`mtU`, `agentsocket`) does not silently do nothing.
const KNOWN_KEYS: [&str; 17] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "ipMasq",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "agentSocket",
    "network",
    "mtu",
];

/// DNS settings handed to the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Dns {
    /// Name servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// The parsed network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// Requested CNI version (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Agent socket.
    pub agent_socket: String,
    /// The Trellis Network to attach to (`None`: the agent's first).
    pub network: Option<String>,
    /// MTU override (otherwise the agent's).
    pub mtu: Option<u32>,
    /// DNS for the result.
    pub dns: Dns,
    /// Port mappings (capability `portMappings`).
    pub port_mappings: Vec<PortMapping>,
    /// Requested address (capability `ips`, `args.cni.ips`).
    pub requested_ip: Option<Ipv4Addr>,
    /// Requested MAC (capability `mac`, `args.cni.mac`).
    pub mac: Option<[u8; 6]>,
    /// The previous plugin's result, when chained.
    pub prev_result: Option<CniResult>,
    /// GC: the attachments to keep.
    pub valid_attachments: Vec<Attachment>,
}

fn get_str<'a>(
    v: &'a serde_json::Map<String, serde_json::Value>,
    k: &str,
) -> Result<Option<&'a str>, CniError> {
    match v.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(CniError::config(
            k,
            format!("must be a string, got {other}"),
        )),
    }
}

/// Read the `cniVersion` of a config, for answering errors in the right version even
/// when the rest of the config is bad.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS.contains(&s).then(|| s.to_string())
}

/// Decode and validate the configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let v: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            codes::DECODE,
            format!("network config on stdin is not valid JSON: {e}"),
        )
    })?;
    let obj = v.as_object().ok_or_else(|| {
        CniError::new(
            codes::DECODE,
            "network config on stdin is not a JSON object",
        )
    })?;
    let cni_version = get_str(obj, "cniVersion")?
        .ok_or_else(|| CniError::config("cniVersion", "is required"))?
        .to_string();
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {cni_version:?} is not supported; supported versions are {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    for k in obj.keys() {
        if k == "ipam" {
            return Err(CniError::new(
                codes::UNSUPPORTED_FIELD,
                format!("unsupported field `ipam`: {}: the Trellis agent owns IPAM for its node, remove this field", obj[k]),
            ));
        }
        if !KNOWN_KEYS.contains(&k.as_str()) {
            return Err(CniError::new(
                codes::UNSUPPORTED_FIELD,
                format!("unsupported field `{k}`: {}", obj[k]),
            ));
        }
    }
    let name = get_str(obj, "name")?
        .ok_or_else(|| CniError::config("name", "is required"))?
        .to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(CniError::config(
            "name",
            format!(
                "{name:?} must be non-empty and contain only letters, digits, '-', '_' and '.'"
            ),
        ));
    }
    let agent_socket = get_str(obj, "agentSocket")?
        .unwrap_or(DEFAULT_SOCKET)
        .to_string();
    if !agent_socket.starts_with('/') {
        return Err(CniError::config(
            "agentSocket",
            format!("{agent_socket:?} must be an absolute path"),
        ));
    }
    let network = get_str(obj, "network")?.map(str::to_string);
    if let Some(n) = &network {
        trellis_api::objects::validate_dns1123_label(n)
            .map_err(|why| CniError::config("network", format!("{why} (a Network's name)")))?;
    }
    let mtu = match obj.get("mtu") {
        None | Some(serde_json::Value::Null) => None,
        Some(m) => {
            let n = m
                .as_u64()
                .filter(|n| (68..=65535).contains(n))
                .ok_or_else(|| {
                    CniError::config(
                        "mtu",
                        format!("{m} must be an integer between 68 and 65535"),
                    )
                })?;
            Some(n as u32)
        }
    };
    let dns = match obj.get("dns") {
        None | Some(serde_json::Value::Null) => Dns::default(),
        Some(d) => serde_json::from_value(d.clone()).map_err(|e| CniError::config("dns", e))?,
    };
    let rc = obj.get("runtimeConfig").cloned().unwrap_or_default();
    if !rc.is_null() && !rc.is_object() {
        return Err(CniError::config("runtimeConfig", "must be an object"));
    }
    let args_cni = obj
        .get("args")
        .and_then(|a| a.get("cni"))
        .cloned()
        .unwrap_or_default();

    let port_mappings = match rc.get("portMappings") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(p) => parse_port_mappings(p)?,
    };
    let ips = rc
        .get("ips")
        .filter(|v| !v.is_null())
        .map(|v| ("runtimeConfig.ips", v))
        .or_else(|| args_cni.get("ips").map(|v| ("args.cni.ips", v)));
    let requested_ip = match ips {
        None => None,
        Some((field, v)) => parse_ips(field, v)?,
    };
    let mac = rc
        .get("mac")
        .filter(|v| !v.is_null())
        .map(|v| ("runtimeConfig.mac", v))
        .or_else(|| args_cni.get("mac").map(|v| ("args.cni.mac", v)));
    let mac = match mac {
        None => None,
        Some((field, v)) => Some(parse_mac_field(field, v)?),
    };
    let prev_result = match obj.get("prevResult") {
        None | Some(serde_json::Value::Null) => None,
        Some(p) => Some(CniResult::from_json(p).map_err(|e| CniError::config("prevResult", e))?),
    };
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct A {
                #[serde(rename = "containerID")]
                container_id: String,
                ifname: String,
            }
            let list: Vec<A> = serde_json::from_value(v.clone())
                .map_err(|e| CniError::config("cni.dev/valid-attachments", e))?;
            list.into_iter()
                .map(|a| Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect()
        }
    };
    Ok(NetConf {
        cni_version,
        name,
        agent_socket,
        network,
        mtu,
        dns,
        port_mappings,
        requested_ip,
        mac,
        prev_result,
        valid_attachments,
    })
}

fn parse_port_mappings(v: &serde_json::Value) -> Result<Vec<PortMapping>, CniError> {
    let field = "runtimeConfig.portMappings";
    let arr = v
        .as_array()
        .ok_or_else(|| CniError::config(field, "must be a list"))?;
    let mut out = Vec::new();
    for (i, m) in arr.iter().enumerate() {
        let f = |k: &str| format!("{field}[{i}].{k}");
        let port = |k: &str| -> Result<u16, CniError> {
            let p = m
                .get(k)
                .ok_or_else(|| CniError::config(&f(k), "is required"))?;
            p.as_u64()
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16)
                .ok_or_else(|| {
                    CniError::config(&f(k), format!("{p} is not a port between 1 and 65535"))
                })
        };
        let host_port = port("hostPort")?;
        let container_port = port("containerPort")?;
        let protocol = match m
            .get("protocol")
            .and_then(|p| p.as_str())
            .map(str::to_ascii_lowercase)
        {
            None => Protocol::Tcp,
            Some(p) if p == "tcp" => Protocol::Tcp,
            Some(p) if p == "udp" => Protocol::Udp,
            Some(p) => {
                return Err(CniError::config(
                    &f("protocol"),
                    format!("{p:?} is not tcp or udp"),
                ))
            }
        };
        let host_ip = match m.get("hostIP").and_then(|h| h.as_str()) {
            None | Some("") | Some("0.0.0.0") => None,
            Some(h) => Some(h.parse::<Ipv4Addr>().map_err(|_| {
                CniError::config(&f("hostIP"), format!("{h:?} is not an IPv4 address"))
            })?),
        };
        out.push(PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        });
    }
    Ok(out)
}

fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr, CniError> {
    let ip = s.split('/').next().unwrap_or_default();
    if s.contains('/') {
        s.parse::<Ipv4Net>().map_err(|_| {
            CniError::config(field, format!("{s:?} is not an IPv4 address or CIDR"))
        })?;
    }
    ip.parse()
        .map_err(|_| CniError::config(field, format!("{s:?} is not an IPv4 address")))
}

fn parse_ips(field: &str, v: &serde_json::Value) -> Result<Option<Ipv4Addr>, CniError> {
    let arr = v
        .as_array()
        .ok_or_else(|| CniError::config(field, "must be a list of addresses"))?;
    match arr.as_slice() {
        [] => Ok(None),
        [one] => {
            let s = one
                .as_str()
                .ok_or_else(|| CniError::config(field, format!("{one} is not a string")))?;
            parse_ip(field, s).map(Some)
        }
        _ => Err(CniError::config(
            field,
            "only one IPv4 address can be requested",
        )),
    }
}

fn parse_mac_field(field: &str, v: &serde_json::Value) -> Result<[u8; 6], CniError> {
    let s = v
        .as_str()
        .ok_or_else(|| CniError::config(field, format!("{v} is not a string")))?;
    let mac = trellis_net::netlink::parse_mac(s)
        .ok_or_else(|| CniError::config(field, format!("{s:?} is not a MAC address")))?;
    if mac[0] & 1 == 1 {
        return Err(CniError::config(
            field,
            format!("{s:?} is a multicast MAC address"),
        ));
    }
    Ok(mac)
}

/// The CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// STATUS.
    Status,
    /// GC.
    Gc,
    /// VERSION.
    Version,
}

/// The `CNI_*` variables, validated for the command.
#[derive(Debug, Clone)]
pub struct Env {
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// Read and validate from a variable lookup (the process environment in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let cmd = get("CNI_COMMAND").ok_or_else(|| CniError::env("CNI_COMMAND", "is not set"))?;
        let command = match cmd.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::env(
                    "CNI_COMMAND",
                    format!("{other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
                ))
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: BTreeMap::new(),
        };
        if !per_container {
            return Ok(env);
        }
        let id = get("CNI_CONTAINERID")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CniError::env("CNI_CONTAINERID", "is not set"))?;
        if !id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(CniError::env(
                "CNI_CONTAINERID",
                format!("{id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"),
            ));
        }
        env.container_id = id;
        let ifname = get("CNI_IFNAME")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CniError::env("CNI_IFNAME", "is not set"))?;
        validate_ifname(&ifname)
            .map_err(|why| CniError::env("CNI_IFNAME", format!("{ifname:?} {why}")))?;
        env.ifname = ifname;
        env.netns = get("CNI_NETNS").unwrap_or_default();
        if command != Command::Del && env.netns.is_empty() {
            return Err(CniError::env("CNI_NETNS", "is not set"));
        }
        if !env.netns.is_empty() && !env.netns.starts_with('/') {
            return Err(CniError::env(
                "CNI_NETNS",
                format!("{:?} is not an absolute path", env.netns),
            ));
        }
        if get("CNI_PATH").is_none() {
            return Err(CniError::env("CNI_PATH", "is not set"));
        }
        if let Some(a) = get("CNI_ARGS").filter(|a| !a.is_empty()) {
            for kv in a.split(';').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CniError::env("CNI_ARGS", format!("{kv:?} is not KEY=VALUE")))?;
                env.args.insert(k.to_string(), v.to_string());
            }
        }
        Ok(env)
    }

    /// The attachment this invocation is about.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// `IP=` from `CNI_ARGS`, validated.
    pub fn requested_ip(&self) -> Result<Option<Ipv4Addr>, CniError> {
        match self.args.get("IP") {
            None => Ok(None),
            Some(s) => s
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map(Some)
                .map_err(|_| CniError::env("CNI_ARGS", format!("IP={s:?} is not an IPv4 address"))),
        }
    }

    /// `LABELS=k1=v1,k2=v2` from `CNI_ARGS`: the Endpoint's labels, validated like
    /// object labels.
    pub fn labels(&self) -> Result<BTreeMap<String, String>, CniError> {
        let mut out = BTreeMap::new();
        let Some(s) = self.args.get("LABELS") else {
            return Ok(out);
        };
        for kv in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                CniError::env("CNI_ARGS", format!("LABELS: {kv:?} is not key=value"))
            })?;
            out.insert(k.to_string(), v.to_string());
        }
        trellis_api::objects::validate_labels(&out)
            .map_err(|e| CniError::env("CNI_ARGS", format!("LABELS{}: {}", e.field, e.message)))?;
        Ok(out)
    }

    /// `MAC=` from `CNI_ARGS`, validated.
    pub fn requested_mac(&self) -> Result<Option<[u8; 6]>, CniError> {
        match self.args.get("MAC") {
            None => Ok(None),
            Some(s) => parse_mac_field("MAC", &serde_json::Value::String(s.clone()))
                .map(Some)
                .map_err(|e| CniError::env("CNI_ARGS", e.msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = env(&[]).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_COMMAND: is not set"));
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert!(e.msg.starts_with("CNI_CONTAINERID"), "{e}");
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        assert!(env(&base).is_ok());
        let mut bad = base;
        bad[2] = ("CNI_IFNAME", "averyveryverylongname");
        let e = env(&bad).unwrap_err();
        assert!(
            e.msg.starts_with("CNI_IFNAME") && e.msg.contains("15"),
            "{e}"
        );
        let mut bad = base;
        bad[1] = ("CNI_CONTAINERID", "a/b");
        assert!(env(&bad).unwrap_err().msg.starts_with("CNI_CONTAINERID"));
        let mut v = base.to_vec();
        v.push(("CNI_ARGS", "IgnoreUnknown=1;broken"));
        assert!(env(&v).unwrap_err().msg.starts_with("CNI_ARGS"));
    }

    #[test]
    fn config_errors() {
        let e = parse(b"{nope").unwrap_err();
        assert_eq!(e.code, 6);
        let e = parse(br#"{"cniVersion":"0.3.1","name":"n","type":"trellis-cni"}"#).unwrap_err();
        assert_eq!(e.code, 1);
        let e = parse(br#"{"cniVersion":"1.1.0","name":"n","type":"trellis-cni","mtuu":1}"#)
            .unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("mtuu"));
        let e = parse(br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":10}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("`mtu`"));
        let e = parse(br#"{"cniVersion":"1.1.0","name":"n","type":"t","runtimeConfig":{"ips":["10.0.0.300/24"]}}"#).unwrap_err();
        assert!(e.msg.contains("runtimeConfig.ips"), "{e}");
        let e = parse(br#"{"cniVersion":"1.1.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#).unwrap_err();
        assert!(e.msg.contains("portMappings[0].hostPort"), "{e}");
        let c = parse(br#"{"cniVersion":"0.4.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"UDP","hostIP":""}],"mac":"0a:58:00:00:00:01","ips":["10.1.0.5/24"]}}"#).unwrap();
        assert_eq!(c.port_mappings[0].protocol, Protocol::Udp);
        assert_eq!(c.requested_ip, Some(Ipv4Addr::new(10, 1, 0, 5)));
        assert!(c.mac.is_some());
    }
}
