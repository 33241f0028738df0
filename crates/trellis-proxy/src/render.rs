//! The desired table, as pure data: the fixed skeleton for a configuration and, per
//! service, its chains, affinity sets and map elements.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use trellis_api::naming::fnv1a64;

use crate::{EndpointModel, PortModel, Protocol, ProxyConfig, ServiceModel, MASQUERADE_MARK};
use trellis_net::nftnl::expr::{Rule, NFT_RETURN, PROTO_TCP, PROTO_UDP};

/// Bumped whenever the encoding of any rule changes, so that old tables are rewritten.
const FORMAT: &str = "trellis-proxy/1";

pub(crate) const SERVICES: &str = "services";
pub(crate) const MASQUERADING: &str = "masquerading";
pub(crate) const MARK_OFF_CLUSTER: &str = "mark-off-cluster";
pub(crate) const ENDPOINTS_CHECK: &str = "endpoints-check";

// nf_tables set flags and data types.
const SET_MAP: u32 = 0x8;
const SET_TIMEOUT: u32 = 0x10;
const SET_EVAL: u32 = 0x20;
const DATA_VERDICT: u32 = 0xffff_ff00;
const TYPE_IPADDR: u32 = 7;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}

/// The sets every table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum StaticSet {
    /// `ipv4_addr . inet_proto . inet_service : verdict`: cluster, external and LB IPs.
    ServiceIps,
    /// `inet_proto . inet_service : verdict`: node ports.
    ServiceNodeports,
    /// `ipv4_addr . inet_proto . inet_service`: addresses to reject.
    NoEndpointServices,
    /// `inet_proto . inet_service`: node ports to reject.
    NoEndpointNodeports,
    /// `ipv4_addr . ipv4_addr`: endpoint . endpoint (hairpin).
    Hairpin,
}

impl StaticSet {
    pub(crate) const ALL: [StaticSet; 5] = [
        StaticSet::ServiceIps,
        StaticSet::ServiceNodeports,
        StaticSet::NoEndpointServices,
        StaticSet::NoEndpointNodeports,
        StaticSet::Hairpin,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            StaticSet::ServiceIps => "service-ips",
            StaticSet::ServiceNodeports => "service-nodeports",
            StaticSet::NoEndpointServices => "no-endpoint-services",
            StaticSet::NoEndpointNodeports => "no-endpoint-nodeports",
            StaticSet::Hairpin => "hairpin",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the set lives in the shard tables (else in the main table).
    pub(crate) fn in_shard(self) -> bool {
        matches!(self, StaticSet::ServiceIps | StaticSet::ServiceNodeports)
    }

    pub(crate) fn spec(self) -> SetSpec {
        let ip_proto_port = concat(&[TYPE_IPADDR, TYPE_INET_PROTO, TYPE_INET_SERVICE]);
        let proto_port = concat(&[TYPE_INET_PROTO, TYPE_INET_SERVICE]);
        let (flags, key_type, key_len, verdict) = match self {
            StaticSet::ServiceIps => (SET_MAP, ip_proto_port, 12, true),
            StaticSet::ServiceNodeports => (SET_MAP, proto_port, 8, true),
            StaticSet::NoEndpointServices => (0, ip_proto_port, 12, false),
            StaticSet::NoEndpointNodeports => (0, proto_port, 8, false),
            StaticSet::Hairpin => (0, concat(&[TYPE_IPADDR, TYPE_IPADDR]), 8, false),
        };
        SetSpec {
            name: self.name().to_string(),
            flags,
            key_type,
            key_len,
            data_type: verdict.then_some(DATA_VERDICT),
            timeout_ms: None,
        }
    }
}

/// A named set as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetSpec {
    pub(crate) name: String,
    pub(crate) flags: u32,
    pub(crate) key_type: u32,
    pub(crate) key_len: u32,
    /// `Some(DATA_VERDICT)` for a verdict map.
    pub(crate) data_type: Option<u32>,
    pub(crate) timeout_ms: Option<u64>,
}

/// The hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BaseSpec {
    pub(crate) kind: &'static str,
    pub(crate) hook: u32,
    pub(crate) priority: i32,
}

/// A chain and its rules (each the contents of `NFTA_RULE_EXPRESSIONS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainSpec {
    pub(crate) name: String,
    pub(crate) base: Option<BaseSpec>,
    pub(crate) rules: Vec<Arc<[u8]>>,
    /// The comment every rule carries: a fingerprint of the whole chain.
    pub(crate) comment: String,
}

impl ChainSpec {
    fn new(name: impl Into<String>, base: Option<BaseSpec>, rules: Vec<Rule>) -> Self {
        Self::with_salt(name, base, rules, "")
    }

    /// `salt`: what else the chain depends on (the timeout of the affinity sets its
    /// rules name: a new timeout recreates the sets, so the rules must be rewritten
    /// in the same transaction).
    fn with_salt(
        name: impl Into<String>,
        base: Option<BaseSpec>,
        rules: Vec<Rule>,
        salt: &str,
    ) -> Self {
        let name = name.into();
        let rules: Vec<Arc<[u8]>> = rules.into_iter().map(Rule::into_bytes).collect();
        let base_text = base
            .map(|b| format!("{} {} {}", b.kind, b.hook, b.priority))
            .unwrap_or_default();
        let h = fnv1a64(
            [
                FORMAT.as_bytes(),
                name.as_bytes(),
                base_text.as_bytes(),
                salt.as_bytes(),
            ]
            .into_iter()
            .chain(rules.iter().flat_map(|r| [b"|".as_slice(), &r[..]])),
        );
        ChainSpec {
            name,
            base,
            rules,
            comment: format!("{h:016x}"),
        }
    }
}

/// An element of a static set; `goto` is the verdict of a map element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Elem {
    pub(crate) set: StaticSet,
    pub(crate) key: Vec<u8>,
    pub(crate) goto: Option<String>,
}

pub(crate) fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

pub(crate) fn key_ip_proto_port(ip: Ipv4Addr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&ip.octets());
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

pub(crate) fn key_proto_port(proto: u8, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

pub(crate) fn key_ip_ip(a: Ipv4Addr, b: Ipv4Addr) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    k.extend_from_slice(&a.octets());
    k.extend_from_slice(&b.octets());
    k
}

/// The stable hash naming a service port's chains: service key, port name, protocol.
pub(crate) fn port_hash(key: &str, port: &PortModel) -> String {
    let h = fnv1a64([
        key.as_bytes(),
        b"/",
        port.name.as_bytes(),
        b"/",
        port.protocol.as_str().as_bytes(),
    ]);
    format!("{:012x}", h >> 16)
}

fn affinity_set(h: &str, ep: Ipv4Addr) -> String {
    let e = fnv1a64([h.as_bytes(), b"/", ep.to_string().as_bytes()]);
    format!("aff-{h}-{:08x}", e >> 32)
}

/// The fixed chains of a configuration: `(main table, every shard table)`.
pub(crate) fn skeleton(cfg: &ProxyConfig) -> (Vec<ChainSpec>, Vec<ChainSpec>) {
    let nat = |hook, priority| {
        Some(BaseSpec {
            kind: "nat",
            hook,
            priority,
        })
    };
    let filter = |hook| {
        Some(BaseSpec {
            kind: "filter",
            hook,
            priority: -10,
        })
    };
    let jump = |c: &str| {
        let mut r = Rule::new();
        r.jump(c);
        vec![r]
    };
    let mut shard = vec![
        ChainSpec::new("nat-prerouting", nat(0, -100), jump(SERVICES)),
        ChainSpec::new("nat-output", nat(3, -100), jump(SERVICES)),
    ];
    let mut chains = vec![ChainSpec::new(
        "nat-postrouting",
        nat(4, 100),
        jump(MASQUERADING),
    )];
    for (name, hook) in [
        ("filter-input", 1),
        ("filter-forward", 2),
        ("filter-output", 3),
    ] {
        let mut r = Rule::new();
        r.ct_state_new().jump(ENDPOINTS_CHECK);
        chains.push(ChainSpec::new(name, filter(hook), vec![r]));
    }

    let node_rule = |f: &dyn Fn(&mut Rule)| -> Vec<Rule> {
        if cfg.node_ips.is_empty() {
            let mut r = Rule::new();
            r.fib_local(true).daddr_not_loopback();
            f(&mut r);
            vec![r]
        } else {
            let mut ips: Vec<Ipv4Addr> = cfg.node_ips.clone();
            ips.sort();
            ips.dedup();
            ips.into_iter()
                .map(|ip| {
                    let mut r = Rule::new();
                    r.ip_eq(true, ip);
                    f(&mut r);
                    r
                })
                .collect()
        }
    };

    let mut services = Vec::new();
    let mut r = Rule::new();
    r.vmap_daddr_proto_port(StaticSet::ServiceIps.name());
    services.push(r);
    services.extend(node_rule(&|r| {
        r.vmap_proto_port(StaticSet::ServiceNodeports.name());
    }));
    shard.push(ChainSpec::new(SERVICES, None, services));

    let mut marked = Rule::new();
    marked
        .mark_has(MASQUERADE_MARK)
        .mark_toggle(MASQUERADE_MARK)
        .masquerade();
    let mut hairpin = Rule::new();
    hairpin
        .ct_status_dnat()
        .in_saddr_daddr(StaticSet::Hairpin.name())
        .masquerade();
    chains.push(ChainSpec::new(MASQUERADING, None, vec![marked, hairpin]));

    let mut cidrs = cfg.cluster_cidrs.clone();
    cidrs.sort();
    cidrs.dedup();
    let mut off = Vec::new();
    for c in &cidrs {
        let mut r = Rule::new();
        r.ip_in(false, *c).verdict(NFT_RETURN, None);
        off.push(r);
    }
    let mut r = Rule::new();
    r.mark_set(MASQUERADE_MARK);
    off.push(r);
    shard.push(ChainSpec::new(MARK_OFF_CLUSTER, None, off));

    let mut check = Vec::new();
    for tcp in [true, false] {
        let mut r = Rule::new();
        if tcp {
            r.l4proto(PROTO_TCP);
        }
        r.in_daddr_proto_port(StaticSet::NoEndpointServices.name())
            .reject(tcp);
        check.push(r);
    }
    for tcp in [true, false] {
        check.extend(node_rule(&|r| {
            if tcp {
                r.l4proto(PROTO_TCP);
            }
            r.in_proto_port(StaticSet::NoEndpointNodeports.name())
                .reject(tcp);
        }));
    }
    chains.push(ChainSpec::new(ENDPOINTS_CHECK, None, check));
    (chains, shard)
}

/// What one service contributes to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub(crate) chains: Vec<ChainSpec>,
    pub(crate) sets: Vec<SetSpec>,
    /// Elements with the port hash they belong to.
    pub(crate) elems: Vec<(Elem, String)>,
}

/// Rules choosing among `eps` (sorted, non-empty): affinity first, then an even random
/// spread.
fn choose(
    rules: &mut Vec<Rule>,
    h: &str,
    eps: &[Ipv4Addr],
    proto: u8,
    target: u16,
    affinity: bool,
) {
    if affinity {
        for ep in eps {
            let set = affinity_set(h, *ep);
            let mut r = Rule::new();
            r.saddr_in_set(&set)
                .update_saddr(&set)
                .dnat(proto, *ep, target);
            rules.push(r);
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let mut r = Rule::new();
        if i + 1 < n {
            r.numgen_is_zero(u32::try_from(n - i).unwrap_or(u32::MAX));
        }
        if affinity {
            r.update_saddr(&affinity_set(h, *ep));
        }
        r.dnat(proto, *ep, target);
        rules.push(r);
    }
}

/// The chains, sets and elements of one service.
pub(crate) fn render(cfg: &ProxyConfig, svc: &ServiceModel) -> Rendered {
    let mut out = Rendered::default();
    let Some(cip) = svc.cluster_ip else {
        return out;
    };
    let mut all: Vec<EndpointModel> = svc.endpoints.clone();
    all.sort();
    all.dedup_by_key(|e| e.ip);
    let eps: Vec<Ipv4Addr> = all.iter().map(|e| e.ip).collect();
    let local: Vec<Ipv4Addr> = all.iter().filter(|e| e.local).map(|e| e.ip).collect();
    let mut ext_ips: Vec<Ipv4Addr> = svc.external_ips.clone();
    ext_ips.sort();
    ext_ips.dedup();
    ext_ips.retain(|ip| *ip != cip);
    let mut cidrs = cfg.cluster_cidrs.clone();
    cidrs.sort();
    cidrs.dedup();
    let affinity = svc.affinity_timeout.filter(|_| !eps.is_empty());
    let salt = affinity
        .map(|t| format!("affinity {t}"))
        .unwrap_or_default();

    let mut seen = BTreeSet::new();
    for port in &svc.ports {
        if !seen.insert((port.name.clone(), port.protocol.as_str())) {
            continue;
        }
        let h = port_hash(&svc.key, port);
        let proto = proto_num(port.protocol);
        let svc_chain = format!("svc-{h}");
        let ext_chain = format!("ext-{h}");
        let has_ext = !ext_ips.is_empty() || port.node_port.is_some();
        let mut elem = |set: StaticSet, key: Vec<u8>, goto: Option<&String>| {
            out.elems.push((
                Elem {
                    set,
                    key,
                    goto: goto.cloned(),
                },
                h.clone(),
            ));
        };

        if eps.is_empty() {
            for ip in std::iter::once(cip).chain(ext_ips.iter().copied()) {
                elem(
                    StaticSet::NoEndpointServices,
                    key_ip_proto_port(ip, proto, port.port),
                    None,
                );
            }
            if let Some(np) = port.node_port {
                elem(
                    StaticSet::NoEndpointNodeports,
                    key_proto_port(proto, np),
                    None,
                );
            }
            continue;
        }

        elem(
            StaticSet::ServiceIps,
            key_ip_proto_port(cip, proto, port.port),
            Some(&svc_chain),
        );
        for ep in &eps {
            elem(StaticSet::Hairpin, key_ip_ip(*ep, *ep), None);
        }
        let mut rules = Vec::new();
        let mut r = Rule::new();
        r.jump(MARK_OFF_CLUSTER);
        rules.push(r);
        choose(
            &mut rules,
            &h,
            &eps,
            proto,
            port.target_port,
            affinity.is_some(),
        );
        out.chains
            .push(ChainSpec::with_salt(svc_chain.clone(), None, rules, &salt));
        if let Some(t) = affinity {
            for ep in &eps {
                out.sets.push(SetSpec {
                    name: affinity_set(&h, *ep),
                    flags: SET_TIMEOUT | SET_EVAL,
                    key_type: TYPE_IPADDR,
                    key_len: 4,
                    data_type: None,
                    timeout_ms: Some(u64::from(t.max(1)) * 1000),
                });
            }
        }

        if !has_ext {
            continue;
        }
        let mut rules = Vec::new();
        if svc.local_only {
            for c in &cidrs {
                let mut r = Rule::new();
                r.ip_in(false, *c).goto(&svc_chain);
                rules.push(r);
            }
            let mut r = Rule::new();
            r.fib_local(false)
                .mark_set(MASQUERADE_MARK)
                .goto(&svc_chain);
            rules.push(r);
            if !local.is_empty() {
                choose(
                    &mut rules,
                    &h,
                    &local,
                    proto,
                    port.target_port,
                    affinity.is_some(),
                );
            }
        } else {
            let mut r = Rule::new();
            r.mark_set(MASQUERADE_MARK).goto(&svc_chain);
            rules.push(r);
        }
        out.chains
            .push(ChainSpec::with_salt(ext_chain.clone(), None, rules, &salt));
        let reject_external = svc.local_only && local.is_empty();
        for ip in &ext_ips {
            let key = key_ip_proto_port(*ip, proto, port.port);
            if reject_external {
                elem(StaticSet::NoEndpointServices, key.clone(), None);
            }
            elem(StaticSet::ServiceIps, key, Some(&ext_chain));
        }
        if let Some(np) = port.node_port {
            let key = key_proto_port(proto, np);
            if reject_external {
                elem(StaticSet::NoEndpointNodeports, key.clone(), None);
            }
            elem(StaticSet::ServiceNodeports, key, Some(&ext_chain));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProxyConfig {
        let mut c = ProxyConfig::new("t", vec![], vec!["10.244.0.0/16".parse().unwrap()]);
        c.shards = 1;
        c
    }

    fn svc(eps: &[(&str, bool)]) -> ServiceModel {
        ServiceModel {
            key: "default/web".into(),
            cluster_ip: Some("10.96.0.10".parse().unwrap()),
            external_ips: vec!["192.168.93.100".parse().unwrap()],
            ports: vec![PortModel {
                name: "http".into(),
                port: 80,
                target_port: 8080,
                protocol: Protocol::Tcp,
                node_port: Some(30080),
            }],
            affinity_timeout: None,
            local_only: false,
            endpoints: eps
                .iter()
                .map(|(ip, local)| EndpointModel {
                    ip: ip.parse().unwrap(),
                    local: *local,
                })
                .collect(),
        }
    }

    #[test]
    fn names_are_stable_and_short() {
        let p = &svc(&[]).ports[0];
        let h = port_hash("default/web", p);
        assert_eq!(h.len(), 12);
        assert_eq!(h, port_hash("default/web", p));
        assert_ne!(h, port_hash("default/web2", p));
        assert!(affinity_set(&h, "10.0.0.1".parse().unwrap()).starts_with(&format!("aff-{h}-")));
    }

    #[test]
    fn affinity_timeout_changes_the_chains() {
        let mut a = svc(&[("10.244.1.2", true)]);
        a.affinity_timeout = Some(10);
        let mut b = a.clone();
        b.affinity_timeout = Some(20);
        let (ra, rb) = (render(&cfg(), &a), render(&cfg(), &b));
        assert_eq!(ra.chains[0].rules, rb.chains[0].rules);
        assert_ne!(ra.chains[0].comment, rb.chains[0].comment);
        assert_ne!(ra.sets[0].timeout_ms, rb.sets[0].timeout_ms);
    }

    #[test]
    fn no_endpoints_only_rejects() {
        let r = render(&cfg(), &svc(&[]));
        assert!(r.chains.is_empty());
        let sets: Vec<StaticSet> = r.elems.iter().map(|(e, _)| e.set).collect();
        assert_eq!(
            sets,
            vec![
                StaticSet::NoEndpointServices,
                StaticSet::NoEndpointServices,
                StaticSet::NoEndpointNodeports
            ]
        );
    }

    #[test]
    fn endpoints_get_chains_and_elements() {
        let r = render(&cfg(), &svc(&[("10.244.1.3", true), ("10.244.1.2", false)]));
        let names: Vec<&str> = r.chains.iter().map(|c| &c.name[..4]).collect();
        assert_eq!(names, vec!["svc-", "ext-"]);
        // mark-off-cluster jump + two endpoints
        assert_eq!(r.chains[0].rules.len(), 3);
        let mut local = svc(&[("10.244.1.3", false)]);
        local.local_only = true;
        let r2 = render(&cfg(), &local);
        // Local with no local endpoint: external addresses are also rejected.
        assert!(r2
            .elems
            .iter()
            .any(|(e, _)| e.set == StaticSet::NoEndpointNodeports));
        assert_ne!(r.chains[1].comment, r2.chains[1].comment);
    }
}
