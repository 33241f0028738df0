//! The policy model, as pure data: the objects policy reads ([`Inputs`]), pod
//! identities, port resolution, and [`Inputs::check`], the verdict of one flow with
//! the rule that gives it (what `trellis policy check` and `explain` print, and what
//! the compiled sets are tested against).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use trellis_api::naming::fnv1a64;
use trellis_api::objects::{
    ClusterNetworkPolicySpec, CnpAction, CnpPeer, CnpPort, ContainerPort, NamespacedPods,
    NetworkPolicySpec, Peer, PolicyPort, PolicyProtocol, PortRef, Subject, Tier,
    ENDPOINT_NETWORK_LABEL, ENDPOINT_NODE_LABEL,
};

/// Labels.
pub type Labels = BTreeMap<String, String>;

/// A pod as policy sees it (from an Endpoint, or from a CNI ADD on this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name (the Pod object's, when declared), for messages.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its labels.
    pub labels: Labels,
    /// Its named ports.
    pub ports: Vec<ContainerPort>,
    /// The node it runs on.
    pub node: String,
}

/// A node as a policy peer (`nodes` peers of ClusterNetworkPolicies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its labels.
    pub labels: Labels,
    /// Its underlay address.
    pub address: Ipv4Addr,
}

/// Everything policy decisions depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Labels of the Namespace objects, by name (the automatic name label is added on
    /// reading, see [`Inputs::ns_labels`]).
    pub namespaces: BTreeMap<String, Labels>,
    /// Every known pod, by address.
    pub pods: BTreeMap<Ipv4Addr, PodInfo>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// NetworkPolicies by (namespace, name).
    pub netpols: BTreeMap<(String, String), NetworkPolicySpec>,
    /// ClusterNetworkPolicies by name.
    pub cnps: BTreeMap<String, ClusterNetworkPolicySpec>,
}

/// What pods with equal namespace, labels and named ports share: the policy data path
/// keys its sets by identity, not by address, so a pod that joins an existing identity
/// is one map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// The namespace.
    pub namespace: String,
    /// The labels.
    pub labels: Labels,
    /// The named ports, sorted.
    pub ports: Vec<ContainerPort>,
}

impl IdentityKey {
    /// The identity of `pod`.
    pub fn of(pod: &PodInfo) -> Self {
        let mut ports = pod.ports.clone();
        ports.sort();
        IdentityKey {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            ports,
        }
    }

    /// The preferred numeric id (never 0): a hash of the key. Collisions are resolved
    /// by the engine (next free number).
    pub fn preferred_id(&self) -> u32 {
        let mut parts: Vec<&[u8]> = vec![self.namespace.as_bytes(), b"\0"];
        for (k, v) in &self.labels {
            parts.extend([k.as_bytes(), b"=", v.as_bytes(), b"\0"]);
        }
        let port_text: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("{}/{}/{}", p.name, p.protocol, p.container_port))
            .collect();
        parts.push(b"|");
        for p in &port_text {
            parts.extend([p.as_bytes(), b"\0"]);
        }
        let h = fnv1a64(parts);
        let id = (h ^ (h >> 32)) as u32;
        id.max(1)
    }

    /// The port `name` for `protocol`, if declared.
    pub fn named_port(&self, name: &str, protocol: PolicyProtocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.container_port)
    }
}

/// A direction relative to the pod a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// Traffic to the pod.
    Ingress,
    /// Traffic from the pod.
    Egress,
}

impl Dir {
    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// An inclusive port range of one protocol; `proto` `None` is every protocol (and
/// every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpan {
    /// The IP protocol number (`None`: any protocol, any port).
    pub proto: Option<u8>,
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortSpan {
    /// Every protocol and port.
    pub const ANY: PortSpan = PortSpan {
        proto: None,
        lo: 0,
        hi: u16::MAX,
    };

    /// Whether `proto`/`port` is inside.
    pub fn contains(&self, proto: u8, port: u16) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && (self.proto.is_none() || (self.lo..=self.hi).contains(&port))
    }
}

/// The rules of NetworkPolicy `np` for direction `dir`, each as (peers, ports): its
/// `ingress[].from` or `egress[].to`.
pub fn np_rules(np: &NetworkPolicySpec, dir: Dir) -> Vec<(&[Peer], &[PolicyPort])> {
    match dir {
        Dir::Ingress => np
            .ingress
            .iter()
            .map(|r| (&r.from[..], &r.ports[..]))
            .collect(),
        Dir::Egress => np
            .egress
            .iter()
            .map(|r| (&r.to[..], &r.ports[..]))
            .collect(),
    }
}

/// The spans of a NetworkPolicy `ports` list for a destination with named ports
/// `dst` (`None`: the destination is not a pod, named ports match nothing). An empty
/// list is every port.
pub fn np_port_spans(ports: &[PolicyPort], dst: Option<&IdentityKey>) -> Vec<PortSpan> {
    if ports.is_empty() {
        return vec![PortSpan::ANY];
    }
    let mut out = Vec::new();
    for p in ports {
        let proto = p.protocol.number();
        match &p.port {
            None => out.push(PortSpan {
                proto: Some(proto),
                lo: 0,
                hi: u16::MAX,
            }),
            Some(PortRef::Number(n)) => out.push(PortSpan {
                proto: Some(proto),
                lo: *n,
                hi: p.end_port.unwrap_or(*n).max(*n),
            }),
            Some(PortRef::Name(name)) => {
                if let Some(n) = dst.and_then(|d| d.named_port(name, p.protocol)) {
                    out.push(PortSpan {
                        proto: Some(proto),
                        lo: n,
                        hi: n,
                    })
                }
            }
        }
    }
    out
}

/// The spans of a ClusterNetworkPolicy `ports` list (see [`np_port_spans`]).
pub fn cnp_port_spans(ports: &[CnpPort], dst: Option<&IdentityKey>) -> Vec<PortSpan> {
    if ports.is_empty() {
        return vec![PortSpan::ANY];
    }
    let mut out = Vec::new();
    for p in ports {
        if let Some(n) = &p.port_number {
            out.push(PortSpan {
                proto: Some(n.protocol.number()),
                lo: n.port,
                hi: n.port,
            });
        }
        if let Some(r) = &p.port_range {
            out.push(PortSpan {
                proto: Some(r.protocol.number()),
                lo: r.start,
                hi: r.end,
            });
        }
        if let Some(name) = &p.named_port {
            for proto in [
                PolicyProtocol::Tcp,
                PolicyProtocol::Udp,
                PolicyProtocol::Sctp,
            ] {
                if let Some(n) = dst.and_then(|d| d.named_port(name, proto)) {
                    out.push(PortSpan {
                        proto: Some(proto.number()),
                        lo: n,
                        hi: n,
                    });
                }
            }
        }
    }
    out
}

/// Which tenant each Namespace belongs to (namespaces of the default world are left out).
pub fn tenants_of<'a>(
    objects: impl IntoIterator<Item = &'a trellis_api::objects::AnyObject>,
) -> BTreeMap<String, String> {
    objects
        .into_iter()
        .filter_map(|o| match o {
            trellis_api::objects::AnyObject::Namespace(n) => {
                n.spec.tenant.clone().map(|t| (n.metadata.name.clone(), t))
            }
            _ => None,
        })
        .collect()
}

/// The world object `o` belongs to: `Some(tenant)` (`Some(None)`: the default world)
/// for a namespaced object (by its namespace's tenant, from [`tenants_of`]), a
/// Namespace (its own) and a ClusterNetworkPolicy scoped to one tenant; `None` for what
/// every world reads (Nodes, unscoped ClusterNetworkPolicies). A world's policy is
/// compiled from its own objects only.
pub fn world_of(
    o: &trellis_api::objects::AnyObject,
    tenant_of: &BTreeMap<String, String>,
) -> Option<Option<String>> {
    use trellis_api::objects::AnyObject;
    match o {
        AnyObject::Node(_) => None,
        AnyObject::ClusterNetworkPolicy(p) => p.spec.tenant.clone().map(Some),
        AnyObject::Namespace(n) => Some(n.spec.tenant.clone()),
        o => Some(
            o.metadata()
                .namespace
                .as_ref()
                .and_then(|n| tenant_of.get(n))
                .cloned(),
        ),
    }
}

impl Inputs {
    /// The labels of namespace `ns`: its object's plus the automatic name label.
    pub fn ns_labels(&self, ns: &str) -> Labels {
        trellis_api::objects::namespace_labels(ns, self.namespaces.get(ns))
    }

    /// Whether NetworkPolicy peer `peer` of a policy in `policy_ns` matches identity `q`
    /// (selector peers only; `ipBlock` peers are matched by address).
    pub fn np_peer_matches(&self, policy_ns: &str, peer: &Peer, q: &IdentityKey) -> bool {
        if peer.ip_block.is_some() {
            return false;
        }
        let ns_ok = match &peer.namespace_selector {
            Some(s) => s.matches(&self.ns_labels(&q.namespace)),
            None => q.namespace == policy_ns,
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&q.labels))
    }

    /// Whether a CNP subject selects identity `q`.
    pub fn subject_selects(&self, s: &Subject, q: &IdentityKey) -> bool {
        match (&s.namespaces, &s.pods) {
            (Some(n), _) => n.matches(&self.ns_labels(&q.namespace)),
            (_, Some(p)) => self.pods_match(p, q),
            _ => false,
        }
    }

    fn pods_match(&self, p: &NamespacedPods, q: &IdentityKey) -> bool {
        p.namespace_selector.matches(&self.ns_labels(&q.namespace))
            && p.pod_selector.matches(&q.labels)
    }

    /// Whether CNP peer `peer` matches identity `q` (namespaces / pods peers).
    pub fn cnp_peer_matches_identity(&self, peer: &CnpPeer, q: &IdentityKey) -> bool {
        if let Some(n) = &peer.namespaces {
            return n.matches(&self.ns_labels(&q.namespace));
        }
        if let Some(p) = &peer.pods {
            return self.pods_match(p, q);
        }
        false
    }

    /// The addresses CNP peer `peer` matches as address blocks (`networks`, `nodes`).
    pub fn cnp_peer_nets(&self, peer: &CnpPeer) -> Vec<ipnet::Ipv4Net> {
        let mut out = peer.networks.clone();
        if let Some(sel) = &peer.nodes {
            for n in self.nodes.values() {
                if sel.matches(&n.labels) {
                    out.push(ipnet::Ipv4Net::new(n.address, 32).expect("/32"));
                }
            }
        }
        out
    }

    /// CNPs of `tier` in evaluation order: priority, then name.
    pub fn cnps_in_order(&self, tier: Tier) -> Vec<(&String, &ClusterNetworkPolicySpec)> {
        let mut v: Vec<_> = self.cnps.iter().filter(|(_, c)| c.tier == tier).collect();
        v.sort_by_key(|(n, c)| (c.priority, n.as_str()));
        v
    }

    /// Whether NetworkPolicy `spec` in `ns` selects identity `q` for `dir`.
    pub fn np_selects(
        &self,
        ns: &str,
        spec: &NetworkPolicySpec,
        q: &IdentityKey,
        dir: Dir,
    ) -> bool {
        let (i, e) = spec.effective_types();
        let on = match dir {
            Dir::Ingress => i,
            Dir::Egress => e,
        };
        on && q.namespace == ns && spec.pod_selector.matches(&q.labels)
    }
}

/// One end of a flow for [`Inputs::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End<'a> {
    /// A pod.
    Pod(&'a PodInfo),
    /// An address that is no pod (a node, the outside).
    Addr(Ipv4Addr),
}

impl End<'_> {
    fn ip(&self) -> Ipv4Addr {
        match self {
            End::Pod(p) => p.ip,
            End::Addr(a) => *a,
        }
    }

    fn identity(&self) -> Option<IdentityKey> {
        match self {
            End::Pod(p) => Some(IdentityKey::of(p)),
            End::Addr(_) => None,
        }
    }
}

/// The decision of one side (egress of the source, ingress of the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideVerdict {
    /// Allowed or not.
    pub allowed: bool,
    /// What decided, for a human: `ClusterNetworkPolicy admin-x rule 0 (Deny)`,
    /// `NetworkPolicy default/allow-web ingress[0]`, `isolated by NetworkPolicy
    /// default/deny, no rule allows`, `no policy selects the pod`.
    pub reason: String,
    /// Log rules passed on the way.
    pub logged: Vec<String>,
}

/// The verdict of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Egress of the source pod (`None`: the source is not a pod).
    pub egress: Option<SideVerdict>,
    /// Ingress of the destination pod (`None`: the destination is not a pod).
    pub ingress: Option<SideVerdict>,
}

impl Verdict {
    /// Whether both sides allow.
    pub fn allowed(&self) -> bool {
        self.egress.as_ref().is_none_or(|s| s.allowed)
            && self.ingress.as_ref().is_none_or(|s| s.allowed)
    }
}

impl Inputs {
    /// The verdict of a flow from `src` to `dst` on `proto`/`port`, computed from the
    /// objects (this is the specification the compiled sets implement).
    ///
    /// A pod reaching itself at its own address never leaves its network namespace, so
    /// no policy applies (as in Kubernetes: a pod cannot block its own traffic).
    pub fn check(&self, src: End<'_>, dst: End<'_>, proto: u8, port: u16) -> Verdict {
        if let (End::Pod(a), End::Pod(b)) = (src, dst) {
            if a.ip == b.ip {
                let own = SideVerdict {
                    allowed: true,
                    reason: "a pod reaching its own address never leaves its namespace".into(),
                    logged: Vec::new(),
                };
                return Verdict {
                    egress: Some(own.clone()),
                    ingress: Some(own),
                };
            }
        }
        // A pod's own node reaches it whatever the policies (kubelet-style probes).
        if let (End::Addr(a), End::Pod(p)) = (src, dst) {
            if self.nodes.get(&p.node).is_some_and(|n| n.address == a) {
                return Verdict {
                    egress: None,
                    ingress: Some(SideVerdict {
                        allowed: true,
                        reason: format!("the pod's own node ({}) is never policed", p.node),
                        logged: Vec::new(),
                    }),
                };
            }
        }
        let egress = match src {
            End::Pod(p) => Some(self.side(p, Dir::Egress, dst, proto, port)),
            End::Addr(_) => None,
        };
        let ingress = match dst {
            End::Pod(p) => Some(self.side(p, Dir::Ingress, src, proto, port)),
            End::Addr(_) => None,
        };
        Verdict { egress, ingress }
    }

    fn side(
        &self,
        subject: &PodInfo,
        dir: Dir,
        peer: End<'_>,
        proto: u8,
        port: u16,
    ) -> SideVerdict {
        let s = IdentityKey::of(subject);
        let q = peer.identity();
        // The destination's named ports: the subject's for ingress, the peer's for egress.
        let dst = match dir {
            Dir::Ingress => Some(&s),
            Dir::Egress => q.as_ref(),
        };
        let mut logged = Vec::new();
        let tier = |t: Tier, logged: &mut Vec<String>| {
            self.tier(t, dir, &s, peer, q.as_ref(), dst, (proto, port), logged)
        };
        if let Some((allowed, reason)) = tier(Tier::Admin, &mut logged) {
            return SideVerdict {
                allowed,
                reason,
                logged,
            };
        }
        // NetworkPolicies.
        let mut selecting = Vec::new();
        for ((ns, name), np) in &self.netpols {
            if !self.np_selects(ns, np, &s, dir) {
                continue;
            }
            selecting.push(format!("{ns}/{name}"));
            let rules = np_rules(np, dir);
            for (i, (peers, ports)) in rules.into_iter().enumerate() {
                let peer_ok = peers.is_empty()
                    || peers.iter().any(|p| match (&p.ip_block, &q) {
                        (Some(b), _) => b.contains(peer.ip()),
                        (None, Some(q)) => self.np_peer_matches(ns, p, q),
                        (None, None) => false,
                    });
                let port_ok = np_port_spans(ports, dst)
                    .iter()
                    .any(|sp| sp.contains(proto, port));
                if peer_ok && port_ok {
                    return SideVerdict {
                        allowed: true,
                        reason: format!("NetworkPolicy {ns}/{name} {}[{i}]", dir.as_str()),
                        logged,
                    };
                }
            }
        }
        if !selecting.is_empty() {
            return SideVerdict {
                allowed: false,
                reason: format!(
                    "isolated for {} by NetworkPolicy {}; no rule allows",
                    dir.as_str(),
                    selecting.join(", ")
                ),
                logged,
            };
        }
        if let Some((allowed, reason)) = tier(Tier::Baseline, &mut logged) {
            return SideVerdict {
                allowed,
                reason,
                logged,
            };
        }
        SideVerdict {
            allowed: true,
            reason: format!("no policy selects the pod for {}", dir.as_str()),
            logged,
        }
    }

    /// The rules of `t`'s ClusterNetworkPolicies selecting subject `s`, in order: the
    /// first matching Accept or Deny decides (`Some((allowed, reason))`); Log rules are
    /// recorded and passed; a Pass (Admin only) or no match decides nothing.
    #[allow(clippy::too_many_arguments)]
    fn tier(
        &self,
        t: Tier,
        dir: Dir,
        s: &IdentityKey,
        peer: End<'_>,
        q: Option<&IdentityKey>,
        dst: Option<&IdentityKey>,
        (proto, port): (u8, u16),
        logged: &mut Vec<String>,
    ) -> Option<(bool, String)> {
        for (name, c) in self.cnps_in_order(t) {
            if !self.subject_selects(&c.subject, s) {
                continue;
            }
            let rules = match dir {
                Dir::Ingress => &c.ingress,
                Dir::Egress => &c.egress,
            };
            for (i, r) in rules.iter().enumerate() {
                if !self.cnp_rule_matches(r, peer, q, dst, proto, port) {
                    continue;
                }
                let what = format!(
                    "ClusterNetworkPolicy {name} ({t:?}, priority {}) {}[{}] ({:?})",
                    c.priority,
                    dir.as_str(),
                    r.display_name(i),
                    r.action
                );
                match r.action {
                    CnpAction::Accept => return Some((true, what)),
                    CnpAction::Deny => return Some((false, what)),
                    CnpAction::Log => logged.push(what),
                    CnpAction::Pass => {
                        logged.push(what);
                        return None;
                    }
                }
            }
        }
        None
    }

    fn cnp_rule_matches(
        &self,
        r: &trellis_api::objects::CnpRule,
        peer: End<'_>,
        q: Option<&IdentityKey>,
        dst: Option<&IdentityKey>,
        proto: u8,
        port: u16,
    ) -> bool {
        let peer_ok = r.peers.iter().any(|p| {
            q.is_some_and(|q| self.cnp_peer_matches_identity(p, q))
                || self.cnp_peer_nets(p).iter().any(|n| n.contains(&peer.ip()))
        });
        peer_ok
            && cnp_port_spans(&r.ports, dst)
                .iter()
                .any(|sp| sp.contains(proto, port))
    }

    /// The pods (by identity) a NetworkPolicy or ClusterNetworkPolicy selects, for
    /// `trellis policy explain`: every policy selecting `pod`, in evaluation order.
    pub fn selecting(&self, pod: &PodInfo) -> Vec<String> {
        let s = IdentityKey::of(pod);
        let mut out = Vec::new();
        for (name, c) in self.cnps_in_order(Tier::Admin) {
            if self.subject_selects(&c.subject, &s) {
                out.push(format!(
                    "ClusterNetworkPolicy {name} (Admin, priority {})",
                    c.priority
                ));
            }
        }
        for ((ns, name), np) in &self.netpols {
            let i = self.np_selects(ns, np, &s, Dir::Ingress);
            let e = self.np_selects(ns, np, &s, Dir::Egress);
            if i || e {
                let types: Vec<&str> = [(i, "Ingress"), (e, "Egress")]
                    .into_iter()
                    .filter(|x| x.0)
                    .map(|x| x.1)
                    .collect();
                out.push(format!("NetworkPolicy {ns}/{name} ({})", types.join(", ")));
            }
        }
        for (name, c) in self.cnps_in_order(Tier::Baseline) {
            if self.subject_selects(&c.subject, &s) {
                out.push(format!(
                    "ClusterNetworkPolicy {name} (Baseline, priority {})",
                    c.priority
                ));
            }
        }
        out
    }
}

/// Labels the agent adds to Endpoints (`trellis.io/node`, `trellis.io/network`): not
/// the pod's own, so not part of its identity.
pub fn is_agent_label(key: &str) -> bool {
    key == ENDPOINT_NODE_LABEL || key == ENDPOINT_NETWORK_LABEL
}

impl Inputs {
    /// The inputs of a cluster from its objects: Namespaces, NetworkPolicies,
    /// ClusterNetworkPolicies, Nodes, and a pod per Endpoint (labels and named ports from
    /// its Pod object when it names one that exists, so a label change applies without
    /// waiting for the Endpoint to be republished; else the Endpoint's labels without the
    /// agent's). Other kinds are ignored.
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = &'a trellis_api::objects::AnyObject> + Clone,
    ) -> Inputs {
        use trellis_api::objects::AnyObject;
        let mut inputs = Inputs::default();
        let mut pod_objects: BTreeMap<(String, String), (Labels, Vec<ContainerPort>)> =
            BTreeMap::new();
        for o in objects.clone() {
            match o {
                AnyObject::Namespace(n) => {
                    inputs
                        .namespaces
                        .insert(n.metadata.name.clone(), n.metadata.labels.clone());
                }
                AnyObject::NetworkPolicy(p) => {
                    inputs.netpols.insert(
                        (
                            p.metadata.namespace.clone().unwrap_or_default(),
                            p.metadata.name.clone(),
                        ),
                        p.spec.clone(),
                    );
                }
                AnyObject::ClusterNetworkPolicy(p) => {
                    inputs.cnps.insert(p.metadata.name.clone(), p.spec.clone());
                }
                AnyObject::Node(n) => {
                    inputs.nodes.insert(
                        n.metadata.name.clone(),
                        NodeInfo {
                            labels: n.metadata.labels.clone(),
                            address: n.spec.address,
                        },
                    );
                }
                AnyObject::Pod(p) => {
                    pod_objects.insert(
                        (
                            p.metadata.namespace.clone().unwrap_or_default(),
                            p.metadata.name.clone(),
                        ),
                        (p.metadata.labels.clone(), p.spec.ports.clone()),
                    );
                }
                _ => {}
            }
        }
        for o in objects {
            let AnyObject::Endpoint(e) = o else { continue };
            let ns = e.metadata.namespace.clone().unwrap_or_default();
            let name = e.spec.pod_name.clone().unwrap_or(e.metadata.name.clone());
            let declared = e
                .spec
                .pod_name
                .as_ref()
                .and_then(|n| pod_objects.get(&(ns.clone(), n.clone())));
            inputs.pods.insert(
                e.spec.ip,
                PodInfo {
                    namespace: ns,
                    name,
                    ip: e.spec.ip,
                    labels: match declared {
                        Some((labels, _)) => labels.clone(),
                        None => e
                            .metadata
                            .labels
                            .iter()
                            .filter(|(k, _)| !is_agent_label(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    },
                    ports: declared.map(|d| d.1.clone()).unwrap_or_default(),
                    node: e.spec.node.clone(),
                },
            );
        }
        inputs
    }
}
