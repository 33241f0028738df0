//! The agent's nftables table of one network (`ip trellis` for the agent's first
//! network, `ip trellis-net-<name>` for the others): egress masquerade for the pod
//! subnet and host port mappings.
//!
//! The rules are fixed for a given configuration; everything that changes per pod is an
//! element of a map, so a pod ADD or DEL is one element add or delete, never a reload.
//! Every rule carries a comment with a hash of the configuration: on start the agent
//! adopts a table whose rules already carry the current hash and changes nothing; a
//! table from another configuration (or a damaged one) has its chains replaced in one
//! atomic transaction. Nothing outside the network's table is touched.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use trellis_api::agent::{PortMapping, Protocol};
use trellis_api::naming::LINK_PREFIX;
use trellis_net::{nft, Result};

/// The name (family `ip`) of the first network's table.
pub const DEFAULT_TABLE: &str = "trellis";

/// The table name for the agent's network number `index` called `network`: the first
/// keeps [`DEFAULT_TABLE`].
pub fn table_name(index: usize, network: &str) -> String {
    if index == 0 {
        DEFAULT_TABLE.into()
    } else {
        format!("{DEFAULT_TABLE}-net-{network}")
    }
}

/// The configuration the rules are derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The table's name (family `ip`).
    pub table: String,
    /// The node's pod subnet (masqueraded when leaving the cluster).
    pub pod_subnet: Ipv4Net,
    /// Destinations that are not masqueraded (the cluster's pod CIDRs).
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// The pod bridge.
    pub bridge: String,
}

/// One element of a port-mapping map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortElement {
    /// Only this node address, or every local address.
    pub host_ip: Option<Ipv4Addr>,
    /// tcp/udp.
    pub protocol: Protocol,
    /// Host port.
    pub host_port: u16,
    /// Pod address.
    pub pod_ip: Ipv4Addr,
    /// Pod port.
    pub pod_port: u16,
}

impl PortElement {
    /// The element that maps `pm` to `pod_ip`.
    pub fn new(pod_ip: Ipv4Addr, pm: &PortMapping) -> Self {
        PortElement {
            host_ip: pm.host_ip,
            protocol: pm.protocol,
            host_port: pm.host_port,
            pod_ip,
            pod_port: pm.container_port,
        }
    }

    fn map(&self) -> &'static str {
        if self.host_ip.is_some() {
            "hostport_ip"
        } else {
            "hostport_any"
        }
    }

    fn key(&self) -> String {
        match self.host_ip {
            Some(h) => format!("{h} . {} . {}", self.protocol.as_str(), self.host_port),
            None => format!("{} . {}", self.protocol.as_str(), self.host_port),
        }
    }

    fn text(&self) -> String {
        format!("{} : {} . {}", self.key(), self.pod_ip, self.pod_port)
    }
}

fn skeleton_rules(cfg: &NatConfig) -> Vec<(&'static str, String)> {
    let br = &cfg.bridge;
    vec![
        ("prerouting", "fib daddr type local jump hostports".into()),
        ("output", "fib daddr type local jump hostports".into()),
        (
            "hostports",
            "dnat ip to ip daddr . meta l4proto . th dport map @hostport_ip".into(),
        ),
        (
            "hostports",
            "dnat ip to meta l4proto . th dport map @hostport_any".into(),
        ),
        // A pod reaching a published port of a pod on the same bridge (hairpin): without
        // this the reply would bypass the DNAT and the client would drop it.
        (
            "postrouting",
            "ip saddr @pod_subnets ip daddr @pod_subnets ct status dnat masquerade".into(),
        ),
        // Not to the node's other bridges' peers, nor to a peered tenant's world (its
        // `trlp…` links): those see the pod's own address.
        (
            "postrouting",
            format!(
                "ip saddr @pod_subnets ip daddr != @cluster_cidrs oifname != \"{br}\" oifname != \"{LINK_PREFIX}p*\" masquerade"
            ),
        ),
    ]
}

fn config_hash(cfg: &NatConfig) -> String {
    let rules = skeleton_rules(cfg);
    let cidrs: Vec<String> = std::iter::once(cfg.pod_subnet)
        .chain(cfg.cluster_cidrs.iter().copied())
        .map(|c| c.to_string())
        .collect();
    let h = trellis_api::naming::fnv1a64(
        rules
            .iter()
            .flat_map(|(c, r)| [c.as_bytes(), r.as_bytes()])
            .chain(cidrs.iter().map(|c| c.as_bytes())),
    );
    format!("trellis:{:08x}", h >> 32)
}

const CHAINS: [(&str, &str); 4] = [
    (
        "prerouting",
        "type nat hook prerouting priority -100; policy accept;",
    ),
    (
        "output",
        "type nat hook output priority -100; policy accept;",
    ),
    ("hostports", ""),
    (
        "postrouting",
        "type nat hook postrouting priority 100; policy accept;",
    ),
];

/// What [`ensure_table`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableAction {
    /// The table was already as desired: nothing was written.
    Adopted,
    /// The table was created or its chains replaced.
    Written,
}

/// Make the table match `cfg` without disturbing a table that already does.
pub fn ensure_table(cfg: &NatConfig) -> Result<TableAction> {
    let tag = config_hash(cfg);
    if let Some(cur) = nft::list_json(&format!("table ip {}", cfg.table))? {
        if table_matches(&cur, cfg, &tag) {
            return Ok(TableAction::Adopted);
        }
    }
    nft::apply(&table_script(cfg, &tag))?;
    Ok(TableAction::Written)
}

/// Delete table `ip <table>` (the network it served is gone); absent is fine.
pub fn delete_table(table: &str) -> Result<()> {
    if nft::list_json(&format!("table ip {table}"))?.is_none() {
        return Ok(());
    }
    nft::apply(&format!("delete table ip {table}\n"))
}

fn table_matches(cur: &serde_json::Value, cfg: &NatConfig, tag: &str) -> bool {
    let want = skeleton_rules(cfg);
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut sets = BTreeSet::new();
    let mut pod_subnets = Vec::new();
    let mut cluster = Vec::new();
    for o in nft::objects(cur) {
        if let Some(r) = o.get("rule") {
            rules.push((
                r["chain"].as_str().unwrap_or_default().to_string(),
                r["comment"].as_str().unwrap_or_default().to_string(),
            ));
        }
        for kind in ["set", "map"] {
            if let Some(s) = o.get(kind) {
                let name = s["name"].as_str().unwrap_or_default().to_string();
                if name == "pod_subnets" {
                    pod_subnets = prefixes(&s["elem"]);
                }
                if name == "cluster_cidrs" {
                    cluster = prefixes(&s["elem"]);
                }
                sets.insert(name);
            }
        }
    }
    let want_sets: BTreeSet<String> = [
        "pod_subnets",
        "cluster_cidrs",
        "hostport_any",
        "hostport_ip",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut want_cluster = cfg.cluster_cidrs.clone();
    want_cluster.sort();
    cluster.sort();
    let mut have_chains: Vec<&str> = rules.iter().map(|(c, _)| c.as_str()).collect();
    let mut want_chains: Vec<&str> = want.iter().map(|(c, _)| *c).collect();
    have_chains.sort_unstable();
    want_chains.sort_unstable();
    have_chains == want_chains
        && rules.iter().all(|(_, c)| c == tag)
        && sets == want_sets
        && pod_subnets == vec![cfg.pod_subnet]
        && cluster == want_cluster
}

fn prefixes(elem: &serde_json::Value) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    for e in elem.as_array().into_iter().flatten() {
        if let Some(p) = e.get("prefix") {
            if let (Some(a), Some(l)) = (p["addr"].as_str(), p["len"].as_u64()) {
                if let (Ok(a), Ok(l)) = (a.parse(), u8::try_from(l)) {
                    if let Ok(n) = Ipv4Net::new(a, l) {
                        out.push(n);
                    }
                }
            }
        } else if let Some(a) = e.as_str().and_then(|a| a.parse().ok()) {
            out.push(Ipv4Net::new(a, 32).expect("/32"));
        }
    }
    out
}

/// The whole-table script: declares everything (declaring an existing set or chain is
/// a no-op), then replaces the rules of each chain and the contents of the two static
/// sets inside the same transaction. Port-mapping maps keep their elements.
fn table_script(cfg: &NatConfig, tag: &str) -> String {
    let t = format!("ip {}", cfg.table);
    let mut s = String::new();
    let _ = writeln!(s, "add table {t}");
    let _ = writeln!(
        s,
        "add set {t} pod_subnets {{ type ipv4_addr; flags interval; }}"
    );
    let _ = writeln!(
        s,
        "add set {t} cluster_cidrs {{ type ipv4_addr; flags interval; }}"
    );
    let _ = writeln!(
        s,
        "add map {t} hostport_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}"
    );
    let _ = writeln!(
        s,
        "add map {t} hostport_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}"
    );
    for (c, hook) in CHAINS {
        if hook.is_empty() {
            let _ = writeln!(s, "add chain {t} {c}");
        } else {
            let _ = writeln!(s, "add chain {t} {c} {{ {hook} }}");
        }
        let _ = writeln!(s, "flush chain {t} {c}");
    }
    let _ = writeln!(s, "flush set {t} pod_subnets");
    let _ = writeln!(s, "add element {t} pod_subnets {{ {} }}", cfg.pod_subnet);
    let _ = writeln!(s, "flush set {t} cluster_cidrs");
    let cluster: Vec<String> = cfg.cluster_cidrs.iter().map(|c| c.to_string()).collect();
    if !cluster.is_empty() {
        let _ = writeln!(
            s,
            "add element {t} cluster_cidrs {{ {} }}",
            cluster.join(", ")
        );
    }
    for (c, r) in skeleton_rules(cfg) {
        let _ = writeln!(s, "add rule {t} {c} {r} comment \"{tag}\"");
    }
    s
}

/// Add and delete port-mapping elements of `table` in one transaction.
pub fn update_ports(table: &str, add: &[PortElement], del: &[PortElement]) -> Result<()> {
    if add.is_empty() && del.is_empty() {
        return Ok(());
    }
    let mut s = String::new();
    for e in del {
        let _ = writeln!(s, "delete element ip {table} {} {{ {} }}", e.map(), e.key());
    }
    for e in add {
        let _ = writeln!(s, "add element ip {table} {} {{ {} }}", e.map(), e.text());
    }
    nft::apply(&s)
}

/// The port-mapping elements now in `table`.
pub fn list_ports(table: &str) -> Result<BTreeSet<PortElement>> {
    let mut out = BTreeSet::new();
    for map in ["hostport_any", "hostport_ip"] {
        let Some(v) = nft::list_json(&format!("map ip {table} {map}"))? else {
            continue;
        };
        for o in nft::objects(&v) {
            let Some(m) = o.get("map") else { continue };
            for e in m["elem"].as_array().into_iter().flatten() {
                if let Some(pe) = parse_element(e) {
                    out.insert(pe);
                }
            }
        }
    }
    Ok(out)
}

fn parse_element(e: &serde_json::Value) -> Option<PortElement> {
    let pair = e.as_array()?;
    let key = pair.first()?.get("concat")?.as_array()?;
    let val = pair.get(1)?.get("concat")?.as_array()?;
    let (host_ip, proto, port) = match key.len() {
        2 => (None, &key[0], &key[1]),
        3 => (Some(key[0].as_str()?.parse().ok()?), &key[1], &key[2]),
        _ => return None,
    };
    let protocol = match proto {
        serde_json::Value::String(s) if s == "tcp" => Protocol::Tcp,
        serde_json::Value::String(s) if s == "udp" => Protocol::Udp,
        serde_json::Value::Number(n) if n.as_u64() == Some(6) => Protocol::Tcp,
        serde_json::Value::Number(n) if n.as_u64() == Some(17) => Protocol::Udp,
        _ => return None,
    };
    Some(PortElement {
        host_ip,
        protocol,
        host_port: u16::try_from(port.as_u64()?).ok()?,
        pod_ip: val.first()?.as_str()?.parse().ok()?,
        pod_port: u16::try_from(val.get(1)?.as_u64()?).ok()?,
    })
}

/// Bring the port maps to exactly `want`: one transaction with the difference.
/// Returns (added, deleted).
pub fn sync_ports(table: &str, want: &BTreeSet<PortElement>) -> Result<(usize, usize)> {
    let have = list_ports(table)?;
    // An element whose key matches but whose value differs must be deleted first.
    let add: Vec<PortElement> = want.difference(&have).copied().collect();
    let del: Vec<PortElement> = have.difference(want).copied().collect();
    update_ports(table, &add, &del)?;
    Ok((add.len(), del.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_json_elements() {
        let v: serde_json::Value = serde_json::from_str(
            r#"[[{"concat": ["192.168.1.2", "udp", 53]}, {"concat": ["10.244.1.5", 5353]}]]"#,
        )
        .unwrap();
        let e = parse_element(&v[0]).unwrap();
        assert_eq!(e.host_ip, Some("192.168.1.2".parse().unwrap()));
        assert_eq!(e.protocol, Protocol::Udp);
        assert_eq!((e.host_port, e.pod_port), (53, 5353));
        assert_eq!(e.text(), "192.168.1.2 . udp . 53 : 10.244.1.5 . 5353");
    }

    #[test]
    fn hash_depends_on_config() {
        let a = NatConfig {
            table: DEFAULT_TABLE.into(),
            pod_subnet: "10.244.1.0/24".parse().unwrap(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            bridge: "trl0".into(),
        };
        let mut b = a.clone();
        b.pod_subnet = "10.244.2.0/24".parse().unwrap();
        assert_ne!(config_hash(&a), config_hash(&b));
        assert!(
            table_script(&a, "t").contains("add element ip trellis pod_subnets { 10.244.1.0/24 }")
        );
    }
}
