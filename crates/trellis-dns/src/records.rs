//! The records the agent builds ([`Records`]) and their compiled, read-only index
//! ([`Zone`]) that the server answers from.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::{DnsError, TTL};

/// The version of the Kubernetes DNS-based service discovery specification answered
/// (`TXT dns-version.<domain>`).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The L4 protocol of a [`NamedPort`]: the `_tcp` / `_udp` label of its SRV name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// `TCP`: `_tcp`.
    Tcp,
    /// `UDP`: `_udp`.
    Udp,
}

impl Proto {
    /// The SRV label: `_tcp` or `_udp`.
    pub fn srv_label(self) -> &'static str {
        match self {
            Proto::Tcp => "_tcp",
            Proto::Udp => "_udp",
        }
    }
}

/// A named service port: `SRV _<name>._<tcp|udp>.<svc>.<ns>.svc.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    /// The port's name (a DNS label; matched case-insensitively). A port without a name
    /// has no SRV record: leave it out.
    pub name: String,
    /// The port the SRV record announces (the service port).
    pub port: u16,
    /// `_tcp` or `_udp`.
    pub protocol: Proto,
}

/// What one service publishes in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRecord {
    /// A service with a cluster IP: `A` the cluster IP, SRV records pointing at the
    /// service name.
    ClusterIp {
        /// The cluster IP.
        ip: Ipv4Addr,
        /// The named ports (SRV records).
        ports: Vec<NamedPort>,
    },
    /// A headless service (`clusterIP: "None"`): `A` records for the endpoints; SRV
    /// records pointing at `<a-b-c-d>.<svc>.<ns>.svc.<domain>`, one per endpoint.
    Headless {
        /// The addresses of the service's ready endpoints (duplicates are dropped). With
        /// none, the name exists but has no address (NODATA).
        endpoints: Vec<Ipv4Addr>,
        /// The named ports (SRV records).
        ports: Vec<NamedPort>,
    },
    /// An ExternalName service: `CNAME` to this name (absolute, with or without the
    /// final dot).
    ExternalName(String),
}

/// The cluster DNS records of one domain, built by the agent and handed to
/// [`DnsServer::set_records`](crate::DnsServer::set_records).
#[derive(Debug, Clone)]
pub struct Records {
    /// The domain, lowercase and absolute (`cluster.local.`).
    domain: Name,
    /// The records of each service, by (namespace, name).
    services: BTreeMap<(String, String), Vec<Entry>>,
}

/// One record of a service: its answer records and the additional-section records of
/// its SRV names.
#[derive(Debug, Clone)]
enum Entry {
    /// A record answered for its own name.
    Answer(Record),
    /// A record sent in the additional section with the SRV records of the given name.
    Extra(Name, Record),
    /// A name that exists without records (NODATA).
    Exists(Name),
    /// A `PTR` record in the reverse zone (`d.c.b.a.in-addr.arpa.`).
    Reverse(Record),
}

/// The `PTR` record `d.c.b.a.in-addr.arpa. PTR <target>`.
fn ptr(ip: Ipv4Addr, target: &Name) -> Result<Record, DnsError> {
    let [a, b, c, d] = ip.octets();
    let owner = format!("{d}.{c}.{b}.{a}.in-addr.arpa.");
    let name = Name::from_ascii(&owner).map_err(|e| DnsError::InvalidName {
        name: owner,
        reason: e.to_string(),
    })?;
    Ok(Record::from_rdata(
        name,
        TTL,
        RData::PTR(PTR(target.clone())),
    ))
}

impl Records {
    /// An empty set for `domain` (e.g. `cluster.local`; matched case-insensitively).
    ///
    /// # Panics
    ///
    /// When `domain` is not a valid DNS name; [`Records::try_new`] returns the error.
    pub fn new(domain: &str) -> Self {
        match Self::try_new(domain) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// An empty set for `domain`, or why `domain` is not a usable DNS name.
    pub fn try_new(domain: &str) -> Result<Self, DnsError> {
        let bad = |reason: &str| DnsError::InvalidName {
            name: domain.to_string(),
            reason: reason.to_string(),
        };
        let bare = domain.strip_suffix('.').unwrap_or(domain);
        if bare.is_empty() {
            return Err(bad("the cluster domain must not be empty (or the root)"));
        }
        for label in bare.split('.') {
            check_label(label).map_err(|m| bad(&m))?;
        }
        let mut name = Name::from_ascii(bare).map_err(|e| bad(&e.to_string()))?;
        name.set_fqdn(true);
        Ok(Records {
            domain: name.to_lowercase(),
            services: BTreeMap::new(),
        })
    }

    /// The domain, absolute and lowercase (`cluster.local.`).
    pub fn domain(&self) -> String {
        self.domain.to_string()
    }

    /// The number of services added.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service has been added.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Adds (or replaces) the records of service `name` in namespace `ns`:
    ///
    /// - ClusterIP: `A <svc>.<ns>.svc.<domain>` the cluster IP, and for each named port
    ///   `SRV _<port>._<tcp|udp>.<svc>.<ns>.svc.<domain>` with target the service name;
    /// - headless: `A` records the endpoints' addresses, and for each named port one SRV
    ///   per endpoint with target `<a-b-c-d>.<svc>.<ns>.svc.<domain>`, whose `A` record is
    ///   added too;
    /// - ExternalName: `CNAME` to the external name;
    /// - `PTR d.c.b.a.in-addr.arpa.` for the cluster IP (to the service name) and for
    ///   each headless endpoint (to its `<a-b-c-d>` name).
    ///
    /// A service whose names are not valid DNS names is left out with a warning (the
    /// agent's objects are validated before); [`Records::try_add_service`] returns the
    /// error instead.
    pub fn add_service(&mut self, ns: &str, name: &str, svc: ServiceRecord) {
        if let Err(e) = self.try_add_service(ns, name, svc) {
            tracing::warn!(namespace = ns, service = name, error = %e, "service left out of DNS");
        }
    }

    /// [`Records::add_service`], returning why a service cannot be published (nothing is
    /// changed then).
    pub fn try_add_service(
        &mut self,
        ns: &str,
        name: &str,
        svc: ServiceRecord,
    ) -> Result<(), DnsError> {
        let ns = ns.to_ascii_lowercase();
        let name = name.to_ascii_lowercase();
        for l in [&ns, &name] {
            check_label(l).map_err(|reason| DnsError::InvalidName {
                name: l.clone(),
                reason,
            })?;
        }
        let base = join(&[&name, &ns, "svc"], &self.domain)?;
        let mut entries = Vec::new();
        match svc {
            ServiceRecord::ClusterIp { ip, ports } => {
                let a = Record::from_rdata(base.clone(), TTL, RData::A(A(ip)));
                entries.push(Entry::Answer(a.clone()));
                entries.push(Entry::Reverse(ptr(ip, &base)?));
                for p in dedup(ports) {
                    let srv_name = srv_name(&p, &base)?;
                    let srv = SRV::new(0, 100, p.port, base.clone());
                    entries.push(Entry::Answer(Record::from_rdata(
                        srv_name.clone(),
                        TTL,
                        RData::SRV(srv),
                    )));
                    entries.push(Entry::Extra(srv_name, a.clone()));
                }
            }
            ServiceRecord::Headless { endpoints, ports } => {
                let endpoints = dedup(endpoints);
                let mut hosts = Vec::with_capacity(endpoints.len());
                for ip in &endpoints {
                    entries.push(Entry::Answer(Record::from_rdata(
                        base.clone(),
                        TTL,
                        RData::A(A(*ip)),
                    )));
                    let host = join(&[&dashed(*ip)], &base)?;
                    let a = Record::from_rdata(host.clone(), TTL, RData::A(A(*ip)));
                    entries.push(Entry::Answer(a.clone()));
                    entries.push(Entry::Reverse(ptr(*ip, &host)?));
                    hosts.push((host, a));
                }
                // Equal shares, as CoreDNS does.
                let weight = u16::try_from(100 / hosts.len().max(1)).unwrap_or(1).max(1);
                for p in dedup(ports) {
                    let srv_name = srv_name(&p, &base)?;
                    for (host, a) in &hosts {
                        let srv = SRV::new(0, weight, p.port, host.clone());
                        entries.push(Entry::Answer(Record::from_rdata(
                            srv_name.clone(),
                            TTL,
                            RData::SRV(srv),
                        )));
                        entries.push(Entry::Extra(srv_name.clone(), a.clone()));
                    }
                    if hosts.is_empty() {
                        // The SRV name exists (NODATA), like the service name.
                        entries.push(Entry::Exists(srv_name));
                    }
                }
            }
            ServiceRecord::ExternalName(target) => {
                let bad = |reason: String| DnsError::InvalidName {
                    name: target.clone(),
                    reason,
                };
                let bare = target.strip_suffix('.').unwrap_or(&target);
                if bare.is_empty() {
                    return Err(bad("an ExternalName target must not be empty".into()));
                }
                let mut t = Name::from_utf8(bare).map_err(|e| bad(e.to_string()))?;
                t.set_fqdn(true);
                entries.push(Entry::Answer(Record::from_rdata(
                    base,
                    TTL,
                    RData::CNAME(CNAME(t.to_lowercase())),
                )));
            }
        }
        self.services.insert((ns, name), entries);
        Ok(())
    }

    /// The read-only index the server answers from.
    pub(crate) fn compile(&self) -> Zone {
        let origin = self.domain.clone();
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa_name = |l: &str| origin.prepend_label(l).unwrap_or_else(|_| origin.clone());
        let mname = soa_name("dns")
            .prepend_label("ns")
            .unwrap_or_else(|_| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(
                mname,
                soa_name("hostmaster"),
                serial,
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        let mut zone = Zone {
            origin: LowerName::new(&origin),
            origin_labels: origin.num_labels(),
            soa: soa.clone(),
            nodes: HashMap::new(),
            reverse: HashMap::new(),
        };
        zone.node(&origin).records.push(soa);
        // The schema version of the Kubernetes DNS specification answered here.
        if let Ok(n) = origin.prepend_label("dns-version") {
            let txt = Record::from_rdata(
                n.clone(),
                TTL,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
            );
            zone.node(&n).records.push(txt);
        }
        for l in ["svc", "pod"] {
            if let Ok(n) = origin.prepend_label(l) {
                zone.node(&n);
            }
        }
        for entries in self.services.values() {
            for e in entries {
                match e {
                    Entry::Answer(r) => zone.node(&r.name).records.push(r.clone()),
                    Entry::Extra(owner, r) => {
                        let node = zone.node(owner);
                        if !node.additionals.contains(r) {
                            node.additionals.push(r.clone());
                        }
                    }
                    Entry::Exists(name) => {
                        zone.node(name);
                    }
                    Entry::Reverse(r) => {
                        let records = zone.reverse.entry(LowerName::new(&r.name)).or_default();
                        if !records.contains(r) {
                            records.push(r.clone());
                        }
                    }
                }
            }
        }
        zone
    }
}

/// `<labels...>.<parent>`.
fn join(labels: &[&str], parent: &Name) -> Result<Name, DnsError> {
    let mut name = parent.clone();
    for l in labels.iter().rev() {
        name = name.prepend_label(*l).map_err(|e| DnsError::InvalidName {
            name: format!("{}.{parent}", labels.join(".")),
            reason: e.to_string(),
        })?;
    }
    Ok(name)
}

/// `_<port>._<proto>.<base>`.
fn srv_name(p: &NamedPort, base: &Name) -> Result<Name, DnsError> {
    let port = p.name.to_ascii_lowercase();
    check_label(&port).map_err(|reason| DnsError::InvalidName {
        name: p.name.clone(),
        reason: format!("port name: {reason}"),
    })?;
    join(&[&format!("_{port}"), p.protocol.srv_label()], base)
}

/// A DNS-1123 label (letters — any case —, digits and `-`, not at either end; 1 to 63).
fn check_label(l: &str) -> Result<(), String> {
    if l.is_empty() || l.len() > 63 {
        return Err(format!("{l:?} must be 1 to 63 characters"));
    }
    if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!(
            "{l:?} may only hold letters, digits and '-' (a DNS-1123 label)"
        ));
    }
    if l.starts_with('-') || l.ends_with('-') {
        return Err(format!("{l:?} must not start or end with '-'"));
    }
    Ok(())
}

/// The items in their first order, without repeats.
fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// `a-b-c-d` for `a.b.c.d`.
pub(crate) fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

/// `a.b.c.d` for the label `a-b-c-d` (decimal octets, 1 to 3 digits each).
fn parse_dashed(label: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = label.split(|&b| b == b'-');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *o = std::str::from_utf8(p).ok()?.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// The compiled, read-only records of one domain.
#[derive(Debug)]
pub(crate) struct Zone {
    /// The domain.
    pub(crate) origin: LowerName,
    origin_labels: u8,
    /// The zone's SOA, for the authority section of negative answers.
    pub(crate) soa: Record,
    /// Every name that exists: owners of records and the names between them and the
    /// domain (empty non-terminals, with no records).
    nodes: HashMap<LowerName, Node>,
    /// The `PTR` records of the cluster's addresses, by `d.c.b.a.in-addr.arpa.`.
    reverse: HashMap<LowerName, Vec<Record>>,
}

/// The records of one name.
#[derive(Debug, Default)]
pub(crate) struct Node {
    records: Vec<Record>,
    /// Sent in the additional section with this name's SRV records.
    additionals: Vec<Record>,
}

/// The outcome of a lookup in the zone.
#[derive(Debug)]
pub(crate) enum Lookup<'z> {
    /// Records of the asked type, and the records for the additional section.
    Found {
        answers: Vec<&'z Record>,
        additionals: &'z [Record],
    },
    /// The name is an alias: its CNAME record and the target to follow.
    Alias(&'z Record, &'z Name),
    /// A pod name: `A` this address.
    Pod(Ipv4Addr),
    /// The name exists without a record of the asked type.
    NoData,
    /// No such name.
    NxDomain,
}

impl Zone {
    /// The node of `name` (created, with its ancestors up to the origin, if needed).
    fn node(&mut self, name: &Name) -> &mut Node {
        let mut ancestor = name.base_name();
        while ancestor.num_labels() > self.origin_labels {
            self.nodes.entry(LowerName::new(&ancestor)).or_default();
            ancestor = ancestor.base_name();
        }
        self.nodes.entry(LowerName::new(name)).or_default()
    }

    /// The `PTR` records of `name` (`d.c.b.a.in-addr.arpa.`), if it is an address of
    /// the cluster's services; other reverse names are not this zone's.
    pub(crate) fn reverse(&self, name: &LowerName) -> Option<&[Record]> {
        self.reverse.get(name).map(Vec::as_slice)
    }

    /// Whether `name` is the domain or under it.
    pub(crate) fn contains(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    /// The answer for `name` (in the zone) and `qtype`.
    pub(crate) fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        if let Some(node) = self.nodes.get(name) {
            let answers: Vec<&Record> = node
                .records
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .collect();
            if !answers.is_empty() {
                let srv = answers.iter().any(|r| r.record_type() == RecordType::SRV);
                return Lookup::Found {
                    answers,
                    additionals: if srv { &node.additionals } else { &[] },
                };
            }
            for r in &node.records {
                if let RData::CNAME(CNAME(target)) = &r.data {
                    return Lookup::Alias(r, target);
                }
            }
            return Lookup::NoData;
        }
        // <a-b-c-d>.<ns>.pod.<domain>, and <ns>.pod.<domain> as an empty non-terminal.
        let extra = name.num_labels().saturating_sub(self.origin_labels);
        let mut labels = name.iter();
        match extra {
            3 => {
                let first = labels.next().unwrap_or_default();
                if labels.nth(1) == Some(b"pod".as_slice()) {
                    if let Some(ip) = parse_dashed(first) {
                        return if matches!(qtype, RecordType::A | RecordType::ANY) {
                            Lookup::Pod(ip)
                        } else {
                            Lookup::NoData
                        };
                    }
                }
            }
            2 if labels.nth(1) == Some(b"pod".as_slice()) => return Lookup::NoData,
            _ => {}
        }
        Lookup::NxDomain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    #[test]
    fn dashed_round_trip() {
        let ip = Ipv4Addr::new(10, 244, 1, 5);
        assert_eq!(parse_dashed(dashed(ip).as_bytes()), Some(ip));
        for bad in [
            "10-244-1",
            "10-244-1-5-6",
            "10-244-1-256",
            "a-b-c-d",
            "10--1-5",
            "0010-1-1-1",
        ] {
            assert_eq!(parse_dashed(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(Records::try_new("").is_err());
        assert!(Records::try_new(".").is_err());
        assert!(Records::try_new("cluster..local").is_err());
        assert_eq!(Records::new("Cluster.Local").domain(), "cluster.local.");
        let mut r = Records::new("cluster.local");
        let svc = || ServiceRecord::ClusterIp {
            ip: Ipv4Addr::new(10, 96, 0, 1),
            ports: vec![],
        };
        assert!(r.try_add_service("default", "web.x", svc()).is_err());
        assert!(r.try_add_service("-x", "web", svc()).is_err());
        let bad_port = ServiceRecord::ClusterIp {
            ip: Ipv4Addr::new(10, 96, 0, 1),
            ports: vec![NamedPort {
                name: "a b".into(),
                port: 80,
                protocol: Proto::Tcp,
            }],
        };
        assert!(r.try_add_service("default", "web", bad_port).is_err());
        assert!(r.is_empty());
        r.add_service("default", "Web", svc());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn empty_non_terminals_and_pods() {
        let mut r = Records::new("cluster.local");
        r.add_service(
            "default",
            "web",
            ServiceRecord::ClusterIp {
                ip: Ipv4Addr::new(10, 96, 0, 1),
                ports: vec![NamedPort {
                    name: "http".into(),
                    port: 80,
                    protocol: Proto::Tcp,
                }],
            },
        );
        let z = r.compile();
        for ent in [
            "cluster.local.",
            "svc.cluster.local.",
            "default.svc.cluster.local.",
            "_tcp.web.default.svc.cluster.local.",
            "pod.cluster.local.",
            "any.pod.cluster.local.",
        ] {
            assert!(
                matches!(z.lookup(&lower(ent), RecordType::A), Lookup::NoData),
                "{ent}"
            );
        }
        assert!(matches!(
            z.lookup(&lower("cluster.local."), RecordType::SOA),
            Lookup::Found { .. }
        ));
        assert!(matches!(
            z.lookup(&lower("10-1-2-3.x.pod.cluster.local."), RecordType::A),
            Lookup::Pod(ip) if ip == Ipv4Addr::new(10, 1, 2, 3)
        ));
        assert!(matches!(
            z.lookup(&lower("10-1-2-3.x.pod.cluster.local."), RecordType::AAAA),
            Lookup::NoData
        ));
        assert!(matches!(
            z.lookup(&lower("10-1-2.x.pod.cluster.local."), RecordType::A),
            Lookup::NxDomain
        ));
        assert!(matches!(
            z.lookup(&lower("nope.default.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        ));
        match z.lookup(
            &lower("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        ) {
            Lookup::Found {
                answers,
                additionals,
            } => {
                assert_eq!(answers.len(), 1);
                assert_eq!(additionals.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
