//! The test oracle: what NetworkPolicy (`networking.k8s.io/v1` semantics) and
//! ClusterNetworkPolicy (Admin and Baseline tiers) say about one packet, computed from
//! the specification alone.
//!
//! This module is written independently of the data path (`trellis-policy`): it uses
//! only the API *types*, and does its own selector, CIDR and port matching, so a shared
//! misreading cannot make both agree.
//!
//! A connection from `src` to `dst` is allowed when the egress side of `src` allows it
//! *and* the ingress side of `dst` does. A side whose endpoint is not a pod (an outside
//! address, a node address) has no policy and allows. For a pod, each side is decided
//! in this order:
//!
//! 1. **Admin** ClusterNetworkPolicies whose subject selects the pod, by priority (lower
//!    first; equal priorities by name), each one's rules of that direction in order: the
//!    first matching rule decides: `Accept` allows (nothing below is consulted), `Deny`
//!    denies, `Pass` skips the remaining Admin rules; `Log` changes nothing and goes on.
//! 2. **NetworkPolicies** of the pod's namespace selecting it for the direction
//!    (`policyTypes`, default `Ingress` plus `Egress` when there are egress rules): if
//!    there is at least one, the traffic is allowed iff some rule of some of them allows
//!    it.
//! 3. **Baseline** ClusterNetworkPolicies, like Admin (no `Pass`); no matching rule:
//!    allowed.
//!
//! Traffic from a pod to itself is evaluated like any other by default
//! ([`Loopback::Policy`]); [`Loopback::Allowed`] instead allows it unconditionally (the
//! convention of the Kubernetes e2e `AllowLoopback`, for data paths that cannot see a
//! pod talking to its own address, which never leaves the pod's namespace).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use trellis_api::objects::{
    AnyObject, ClusterNetworkPolicy, CnpAction, CnpPeer, CnpPort, CnpRule, ContainerPort,
    LabelSelector, NamespacedPods, NetworkPolicy, Peer, PolicyPort, PolicyProtocol, PolicyType,
    PortRef, SelectorOperator, Subject, Tier,
};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries, whose value is the namespace's name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace: its name and labels (the name label is added by the oracle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// The name.
    pub name: String,
    /// Its labels (without the automatic name label, which is always added).
    pub labels: Labels,
}

/// A pod as the oracle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: String,
    /// Its named ports (`Pod.spec.ports`).
    pub ports: Vec<ContainerPort>,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod declares port `name` for `protocol` with number `port`.
    fn declares(&self, name: &str, protocol: PolicyProtocol, port: u16) -> bool {
        self.ports
            .iter()
            .any(|p| p.name == name && p.protocol == protocol && p.container_port == port)
    }
}

/// A node: its name, labels and underlay address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its underlay address.
    pub address: Ipv4Addr,
}

/// One end of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A pod, by its index in [`Oracle::pods`].
    Pod(usize),
    /// An address that is no pod's: a node's underlay address or one outside the
    /// cluster.
    Address(Ipv4Addr),
}

/// One probe: a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    /// The client.
    pub src: Endpoint,
    /// The server.
    pub dst: Endpoint,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: PolicyProtocol,
}

/// How traffic from a pod to its own address is judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Loopback {
    /// Like any other traffic.
    #[default]
    Policy,
    /// Always allowed.
    Allowed,
}

/// A direction relative to the pod whose policies are consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic to the pod.
    Ingress,
    /// Traffic from the pod.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What decided one side of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The endpoint is not a pod: no policy applies.
    NotAPod,
    /// A pod's traffic to itself with [`Loopback::Allowed`].
    Loopback,
    /// A ClusterNetworkPolicy rule (`Accept` or `Deny`).
    Cnp {
        /// The tier.
        tier: Tier,
        /// The policy's name.
        policy: String,
        /// The rule's name (or index).
        rule: String,
        /// `Accept` or `Deny`.
        action: CnpAction,
    },
    /// A NetworkPolicy rule allowed it.
    NetworkPolicyAllows {
        /// `namespace/name` of the policy.
        policy: String,
        /// The rule's index in that direction's list.
        rule: usize,
    },
    /// NetworkPolicies select the pod for the direction and none allows it.
    NetworkPolicyDenies {
        /// `namespace/name` of every selecting policy.
        selecting: Vec<String>,
    },
    /// Nothing selects the pod or matches: allowed.
    Default,
}

/// The verdict for one side (egress of the source or ingress of the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideVerdict {
    /// Whether this side lets the traffic through.
    pub allowed: bool,
    /// Why.
    pub decision: Decision,
    /// The Admin `Pass` rule that handed the decision down (`policy/rule`), if any.
    pub passed_by: Option<String>,
    /// The `Log` rules that matched on the way (`policy/rule`).
    pub logged_by: Vec<String>,
}

impl SideVerdict {
    fn new(allowed: bool, decision: Decision) -> Self {
        SideVerdict {
            allowed,
            decision,
            passed_by: None,
            logged_by: Vec::new(),
        }
    }
}

impl fmt::Display for SideVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "allowed" } else { "denied" })?;
        match &self.decision {
            Decision::NotAPod => write!(f, " (not a pod)")?,
            Decision::Loopback => write!(f, " (a pod to itself)")?,
            Decision::Cnp {
                tier,
                policy,
                rule,
                action,
            } => write!(f, " by {tier:?} {policy}/{rule} ({action:?})")?,
            Decision::NetworkPolicyAllows { policy, rule } => {
                write!(f, " by NetworkPolicy {policy} rule {rule}")?
            }
            Decision::NetworkPolicyDenies { selecting } => {
                write!(f, ": isolated by {}, no rule allows", selecting.join(", "))?
            }
            Decision::Default => write!(f, " (no policy decides)")?,
        }
        if let Some(p) = &self.passed_by {
            write!(f, ", after Pass {p}")?;
        }
        if !self.logged_by.is_empty() {
            write!(f, ", logged by {}", self.logged_by.join(", "))?;
        }
        Ok(())
    }
}

/// The verdict for one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Both sides allow.
    pub allowed: bool,
    /// The source's egress side.
    pub egress: SideVerdict,
    /// The destination's ingress side.
    pub ingress: SideVerdict,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (egress: {}; ingress: {})",
            if self.allowed { "allowed" } else { "denied" },
            self.egress,
            self.ingress
        )
    }
}

/// The cluster the oracle judges: namespaces, pods, nodes and policies.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    /// Namespaces with objects (name → labels without the name label).
    pub namespaces: BTreeMap<String, Labels>,
    /// Pods.
    pub pods: Vec<PodInfo>,
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies.
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// How a pod's traffic to itself is judged.
    pub loopback: Loopback,
}

impl Oracle {
    /// A cluster without policies.
    pub fn new(namespaces: &[NamespaceInfo], pods: Vec<PodInfo>, nodes: Vec<NodeInfo>) -> Self {
        Oracle {
            namespaces: namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone()))
                .collect(),
            pods,
            nodes,
            ..Default::default()
        }
    }

    /// Take one object into account: NetworkPolicies and ClusterNetworkPolicies are
    /// added (replacing one of the same name); a Namespace, Pod or Node object replaces
    /// the labels (and a Pod's named ports) of the one of that name (a Namespace object
    /// for an unknown namespace is added; unknown pods and nodes are ignored: the oracle
    /// knows no address for them). Other kinds are ignored.
    pub fn apply(&mut self, object: &AnyObject) {
        match object {
            AnyObject::NetworkPolicy(p) => {
                self.network_policies
                    .retain(|o| !(o.name() == p.name() && o.namespace() == p.namespace()));
                self.network_policies.push(p.clone());
            }
            AnyObject::ClusterNetworkPolicy(p) => {
                self.cluster_policies.retain(|o| o.name() != p.name());
                self.cluster_policies.push(p.clone());
            }
            AnyObject::Namespace(n) => {
                self.namespaces
                    .insert(n.name().to_string(), n.metadata.labels.clone());
            }
            AnyObject::Pod(p) => {
                let ns = p.namespace().unwrap_or("default");
                if let Some(pod) = self
                    .pods
                    .iter_mut()
                    .find(|x| x.namespace == ns && x.name == p.name())
                {
                    pod.labels = p.metadata.labels.clone();
                    pod.ports = p.spec.ports.clone();
                }
            }
            AnyObject::Node(n) => {
                if let Some(node) = self.nodes.iter_mut().find(|x| x.name == n.name()) {
                    node.labels = n.metadata.labels.clone();
                }
            }
            _ => {}
        }
    }

    /// The index of pod `namespace/name`.
    pub fn pod_index(&self, key: &str) -> Option<usize> {
        self.pods.iter().position(|p| p.key() == key)
    }

    /// [`Endpoint::Pod`] of pod `namespace/name`; panics when there is none (for tests).
    pub fn pod(&self, key: &str) -> Endpoint {
        Endpoint::Pod(
            self.pod_index(key)
                .unwrap_or_else(|| panic!("the oracle knows no pod {key}")),
        )
    }

    /// The labels of namespace `name`: its object's, plus the name label.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        let mut l = self.namespaces.get(name).cloned().unwrap_or_default();
        l.insert(NAME_LABEL.to_string(), name.to_string());
        l
    }

    /// The address of an endpoint.
    pub fn address(&self, e: Endpoint) -> Ipv4Addr {
        match e {
            Endpoint::Pod(i) => self.pods[i].ip,
            Endpoint::Address(a) => a,
        }
    }

    /// Whether `probe` is allowed, and why.
    pub fn verdict(&self, probe: &Probe) -> Verdict {
        if self.loopback == Loopback::Allowed {
            if let (Endpoint::Pod(a), Endpoint::Pod(b)) = (probe.src, probe.dst) {
                if a == b {
                    let side = SideVerdict::new(true, Decision::Loopback);
                    return Verdict {
                        allowed: true,
                        egress: side.clone(),
                        ingress: side,
                    };
                }
            }
        }
        let egress = match probe.src {
            Endpoint::Pod(p) => self.side(p, Direction::Egress, probe.dst, probe),
            Endpoint::Address(_) => SideVerdict::new(true, Decision::NotAPod),
        };
        let ingress = match probe.dst {
            Endpoint::Pod(p) => self.side(p, Direction::Ingress, probe.src, probe),
            Endpoint::Address(_) => SideVerdict::new(true, Decision::NotAPod),
        };
        Verdict {
            allowed: egress.allowed && ingress.allowed,
            egress,
            ingress,
        }
    }

    /// Whether `probe` is allowed.
    pub fn allows(&self, probe: &Probe) -> bool {
        self.verdict(probe).allowed
    }

    /// One side: pod `pod`'s policies for `dir`, `peer` the other end.
    fn side(&self, pod: usize, dir: Direction, peer: Endpoint, probe: &Probe) -> SideVerdict {
        let mut logged = Vec::new();
        let mut passed_by = None;
        // 1. Admin tier.
        'admin: for cnp in self.tier(Tier::Admin, pod) {
            for (i, rule) in rules_of(cnp, dir).iter().enumerate() {
                if !self.cnp_rule_matches(rule, pod, dir, peer, probe) {
                    continue;
                }
                let id = format!("{}/{}", cnp.name(), rule_name(rule, i));
                match rule.action {
                    CnpAction::Log => logged.push(id),
                    CnpAction::Pass => {
                        passed_by = Some(id);
                        break 'admin;
                    }
                    CnpAction::Accept | CnpAction::Deny => {
                        return SideVerdict {
                            allowed: rule.action == CnpAction::Accept,
                            decision: Decision::Cnp {
                                tier: Tier::Admin,
                                policy: cnp.name().to_string(),
                                rule: rule_name(rule, i),
                                action: rule.action,
                            },
                            passed_by: None,
                            logged_by: logged,
                        };
                    }
                }
            }
        }
        let finish = |allowed: bool, decision: Decision, logged: Vec<String>| SideVerdict {
            allowed,
            decision,
            passed_by: passed_by.clone(),
            logged_by: logged,
        };
        // 2. NetworkPolicies.
        let selecting: Vec<&NetworkPolicy> = self
            .network_policies
            .iter()
            .filter(|np| self.np_selects(np, pod, dir))
            .collect();
        if !selecting.is_empty() {
            for np in &selecting {
                if let Some(rule) = self.np_allowing_rule(np, pod, dir, peer, probe) {
                    let policy = format!("{}/{}", np.namespace().unwrap_or(""), np.name());
                    return finish(true, Decision::NetworkPolicyAllows { policy, rule }, logged);
                }
            }
            let selecting = selecting
                .iter()
                .map(|np| format!("{}/{}", np.namespace().unwrap_or(""), np.name()))
                .collect();
            return finish(false, Decision::NetworkPolicyDenies { selecting }, logged);
        }
        // 3. Baseline tier.
        for cnp in self.tier(Tier::Baseline, pod) {
            for (i, rule) in rules_of(cnp, dir).iter().enumerate() {
                if !self.cnp_rule_matches(rule, pod, dir, peer, probe) {
                    continue;
                }
                match rule.action {
                    CnpAction::Log => logged.push(format!("{}/{}", cnp.name(), rule_name(rule, i))),
                    // Not valid in Baseline; ignored should it ever get here.
                    CnpAction::Pass => {}
                    CnpAction::Accept | CnpAction::Deny => {
                        let decision = Decision::Cnp {
                            tier: Tier::Baseline,
                            policy: cnp.name().to_string(),
                            rule: rule_name(rule, i),
                            action: rule.action,
                        };
                        return finish(rule.action == CnpAction::Accept, decision, logged);
                    }
                }
            }
        }
        finish(true, Decision::Default, logged)
    }

    /// The policies of `tier` whose subject selects pod `pod`, in evaluation order.
    fn tier(&self, tier: Tier, pod: usize) -> Vec<&ClusterNetworkPolicy> {
        let mut v: Vec<&ClusterNetworkPolicy> = self
            .cluster_policies
            .iter()
            .filter(|c| c.spec.tier == tier && self.subject_selects(&c.spec.subject, pod))
            .collect();
        v.sort_by(|a, b| (a.spec.priority, a.name()).cmp(&(b.spec.priority, b.name())));
        v
    }

    fn subject_selects(&self, s: &Subject, pod: usize) -> bool {
        let p = &self.pods[pod];
        match (&s.namespaces, &s.pods) {
            (Some(ns), None) => selects(ns, &self.namespace_labels(&p.namespace)),
            (None, Some(np)) => self.namespaced_pods_select(np, pod),
            // Invalid (exactly one is required): selects nothing.
            _ => false,
        }
    }

    fn namespaced_pods_select(&self, np: &NamespacedPods, pod: usize) -> bool {
        let p = &self.pods[pod];
        selects(&np.namespace_selector, &self.namespace_labels(&p.namespace))
            && selects(&np.pod_selector, &p.labels)
    }

    fn cnp_rule_matches(
        &self,
        rule: &CnpRule,
        pod: usize,
        dir: Direction,
        peer: Endpoint,
        probe: &Probe,
    ) -> bool {
        rule.peers.iter().any(|p| self.cnp_peer_matches(p, peer))
            && (rule.ports.is_empty()
                || rule
                    .ports
                    .iter()
                    .any(|p| self.cnp_port_matches(p, self.port_owner(pod, dir, peer), probe)))
    }

    fn cnp_peer_matches(&self, p: &CnpPeer, peer: Endpoint) -> bool {
        let set = usize::from(p.namespaces.is_some())
            + usize::from(p.pods.is_some())
            + usize::from(p.nodes.is_some())
            + usize::from(!p.networks.is_empty());
        if set != 1 {
            // Invalid: matches nothing.
            return false;
        }
        if let Some(ns) = &p.namespaces {
            return match peer {
                Endpoint::Pod(i) => selects(ns, &self.namespace_labels(&self.pods[i].namespace)),
                Endpoint::Address(_) => false,
            };
        }
        if let Some(np) = &p.pods {
            return match peer {
                Endpoint::Pod(i) => self.namespaced_pods_select(np, i),
                Endpoint::Address(_) => false,
            };
        }
        if let Some(nodes) = &p.nodes {
            return match peer {
                Endpoint::Pod(_) => false,
                Endpoint::Address(a) => self
                    .nodes
                    .iter()
                    .any(|n| n.address == a && selects(nodes, &n.labels)),
            };
        }
        let addr = self.address(peer);
        p.networks
            .iter()
            .any(|n| in_cidr(n.addr(), n.prefix_len(), addr))
    }

    fn cnp_port_matches(&self, p: &CnpPort, owner: Option<&PodInfo>, probe: &Probe) -> bool {
        let set = usize::from(p.port_number.is_some())
            + usize::from(p.port_range.is_some())
            + usize::from(p.named_port.is_some());
        if set != 1 {
            return false;
        }
        if let Some(n) = &p.port_number {
            return n.protocol == probe.protocol && n.port == probe.port;
        }
        if let Some(r) = &p.port_range {
            return r.protocol == probe.protocol && r.start <= probe.port && probe.port <= r.end;
        }
        let name = p.named_port.as_deref().unwrap_or_default();
        owner.is_some_and(|o| o.declares(name, probe.protocol, probe.port))
    }

    /// The pod that owns the destination port: for ingress the subject, for egress the
    /// peer (if a pod).
    fn port_owner(&self, pod: usize, dir: Direction, peer: Endpoint) -> Option<&PodInfo> {
        match dir {
            Direction::Ingress => Some(&self.pods[pod]),
            Direction::Egress => match peer {
                Endpoint::Pod(i) => Some(&self.pods[i]),
                Endpoint::Address(_) => None,
            },
        }
    }

    /// Whether NetworkPolicy `np` selects pod `pod` for `dir`.
    fn np_selects(&self, np: &NetworkPolicy, pod: usize, dir: Direction) -> bool {
        let p = &self.pods[pod];
        if np.namespace() != Some(p.namespace.as_str()) {
            return false;
        }
        if !selects(&np.spec.pod_selector, &p.labels) {
            return false;
        }
        // policyTypes; left out: Ingress, plus Egress when there are egress rules.
        let (ingress, egress) = match &np.spec.policy_types {
            Some(t) => (
                t.contains(&PolicyType::Ingress),
                t.contains(&PolicyType::Egress),
            ),
            None => (true, !np.spec.egress.is_empty()),
        };
        match dir {
            Direction::Ingress => ingress,
            Direction::Egress => egress,
        }
    }

    /// The index of the first rule of `np` (for `dir`) that allows the probe.
    fn np_allowing_rule(
        &self,
        np: &NetworkPolicy,
        pod: usize,
        dir: Direction,
        peer: Endpoint,
        probe: &Probe,
    ) -> Option<usize> {
        let ns = np.namespace().unwrap_or("");
        let owner = self.port_owner(pod, dir, peer);
        let rules: Vec<(&[Peer], &[PolicyPort])> = match dir {
            Direction::Ingress => np
                .spec
                .ingress
                .iter()
                .map(|r| (r.from.as_slice(), r.ports.as_slice()))
                .collect(),
            Direction::Egress => np
                .spec
                .egress
                .iter()
                .map(|r| (r.to.as_slice(), r.ports.as_slice()))
                .collect(),
        };
        rules.iter().position(|(peers, ports)| {
            (peers.is_empty() || peers.iter().any(|p| self.np_peer_matches(p, ns, peer)))
                && (ports.is_empty() || ports.iter().any(|p| np_port_matches(p, owner, probe)))
        })
    }

    /// Whether NetworkPolicy peer `p` (of a policy in namespace `ns`) matches `peer`.
    fn np_peer_matches(&self, p: &Peer, ns: &str, peer: Endpoint) -> bool {
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                // Invalid: matches nothing.
                return false;
            }
            let a = self.address(peer);
            return in_cidr(b.cidr.addr(), b.cidr.prefix_len(), a)
                && !b
                    .except
                    .iter()
                    .any(|e| in_cidr(e.addr(), e.prefix_len(), a));
        }
        let Endpoint::Pod(i) = peer else {
            // Selectors match pods only.
            return false;
        };
        let q = &self.pods[i];
        match (&p.namespace_selector, &p.pod_selector) {
            (None, None) => false,
            (None, Some(ps)) => q.namespace == ns && selects(ps, &q.labels),
            (Some(nss), None) => selects(nss, &self.namespace_labels(&q.namespace)),
            (Some(nss), Some(ps)) => {
                selects(nss, &self.namespace_labels(&q.namespace)) && selects(ps, &q.labels)
            }
        }
    }
}

fn rules_of(c: &ClusterNetworkPolicy, dir: Direction) -> &[CnpRule] {
    match dir {
        Direction::Ingress => &c.spec.ingress,
        Direction::Egress => &c.spec.egress,
    }
}

fn rule_name(r: &CnpRule, index: usize) -> String {
    r.name.clone().unwrap_or_else(|| index.to_string())
}

/// Whether NetworkPolicy port `p` matches the probe; named ports resolve against
/// `owner` (the pod owning the destination port).
fn np_port_matches(p: &PolicyPort, owner: Option<&PodInfo>, probe: &Probe) -> bool {
    if p.protocol != probe.protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(PortRef::Number(start)) => match p.end_port {
            None => probe.port == *start,
            Some(end) => *start <= probe.port && probe.port <= end,
        },
        Some(PortRef::Name(name)) => {
            // A named port with endPort is invalid: matches nothing.
            p.end_port.is_none()
                && owner.is_some_and(|o| o.declares(name, probe.protocol, probe.port))
        }
    }
}

/// Label selector semantics: every `matchLabels` pair and every expression hold.
pub fn selects(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in &sel.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in &sel.match_expressions {
        let value = labels.get(&r.key);
        let listed = value.is_some_and(|v| r.values.iter().any(|x| x == v));
        let ok = match r.operator {
            SelectorOperator::In => listed,
            SelectorOperator::NotIn => !listed,
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `ip` is inside `net/prefix` (host bits of `net` ignored).
pub fn in_cidr(net: Ipv4Addr, prefix: u8, ip: Ipv4Addr) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix.min(32)));
    u32::from(net) & mask == u32::from(ip) & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::objects::parse_yaml;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(ns: &str, name: &str, l: &[(&str, &str)], ip: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(l),
            ip: ip.parse().unwrap(),
            node: "n1".into(),
            ports: Vec::new(),
        }
    }

    fn objects(yaml: &str) -> Vec<AnyObject> {
        let v = parse_yaml(yaml).unwrap();
        for o in &v {
            o.validate().unwrap_or_else(|e| panic!("{e}: {yaml}"));
        }
        v
    }

    fn with(mut o: Oracle, yaml: &str) -> Oracle {
        for obj in objects(yaml) {
            o.apply(&obj);
        }
        o
    }

    fn tcp(o: &Oracle, src: Endpoint, dst: Endpoint, port: u16) -> bool {
        o.allows(&Probe {
            src,
            dst,
            port,
            protocol: PolicyProtocol::Tcp,
        })
    }

    fn udp(o: &Oracle, src: Endpoint, dst: Endpoint, port: u16) -> bool {
        o.allows(&Probe {
            src,
            dst,
            port,
            protocol: PolicyProtocol::Udp,
        })
    }

    fn addr(a: &str) -> Endpoint {
        Endpoint::Address(a.parse().unwrap())
    }

    /// The cluster of the Kubernetes documentation's example `test-network-policy`.
    fn docs_cluster() -> Oracle {
        Oracle::new(
            &[
                NamespaceInfo {
                    name: "default".into(),
                    labels: Labels::new(),
                },
                NamespaceInfo {
                    name: "myproject".into(),
                    labels: labels(&[("project", "myproject")]),
                },
                NamespaceInfo {
                    name: "other".into(),
                    labels: labels(&[("project", "other")]),
                },
            ],
            vec![
                pod("default", "db", &[("role", "db")], "172.17.0.10"),
                pod("default", "frontend", &[("role", "frontend")], "10.1.0.2"),
                pod("default", "misc", &[], "10.1.0.3"),
                pod("myproject", "client", &[("role", "client")], "10.1.0.4"),
                pod("other", "client", &[("role", "frontend")], "10.1.0.5"),
                pod("default", "ext", &[], "10.0.0.7"),
            ],
            vec![],
        )
    }

    const DOCS_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: test-network-policy, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {project: myproject}}
    - podSelector: {matchLabels: {role: frontend}}
    ports: [{protocol: TCP, port: 6379}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 5978}]
"#;

    #[test]
    fn no_policy_allows_everything() {
        let o = docs_cluster();
        for s in 0..o.pods.len() {
            for d in 0..o.pods.len() {
                assert!(tcp(&o, Endpoint::Pod(s), Endpoint::Pod(d), 80));
                assert!(udp(&o, Endpoint::Pod(s), Endpoint::Pod(d), 53));
            }
        }
        let v = o.verdict(&Probe {
            src: addr("1.2.3.4"),
            dst: o.pod("default/db"),
            port: 1,
            protocol: PolicyProtocol::Tcp,
        });
        assert_eq!(v.egress.decision, Decision::NotAPod);
        assert_eq!(v.ingress.decision, Decision::Default);
    }

    #[test]
    fn the_documentation_example() {
        let o = with(docs_cluster(), DOCS_POLICY);
        let db = o.pod("default/db");
        let fe = o.pod("default/frontend");
        // podSelector peer: frontend pods of the policy's namespace, on TCP 6379 only.
        assert!(tcp(&o, fe, db, 6379));
        assert!(!tcp(&o, fe, db, 80));
        assert!(!udp(&o, fe, db, 6379));
        // ...not a role=frontend pod of another namespace.
        assert!(!tcp(&o, o.pod("other/client"), db, 6379));
        // namespaceSelector peer: every pod of myproject.
        assert!(tcp(&o, o.pod("myproject/client"), db, 6379));
        // A pod of default without the label.
        assert!(!tcp(&o, o.pod("default/misc"), db, 6379));
        // ipBlock: the cidr minus except.
        assert!(tcp(&o, addr("172.17.0.5"), db, 6379));
        assert!(tcp(&o, addr("172.17.255.1"), db, 6379));
        assert!(!tcp(&o, addr("172.17.1.5"), db, 6379));
        assert!(!tcp(&o, addr("172.18.0.1"), db, 6379));
        // Egress of db: only 10.0.0.0/24 on TCP 5978, pods included by their address.
        assert!(tcp(&o, db, addr("10.0.0.1"), 5978));
        assert!(!tcp(&o, db, addr("10.0.0.1"), 5979));
        assert!(!tcp(&o, db, addr("10.0.1.1"), 5978));
        assert!(tcp(&o, db, o.pod("default/ext"), 5978));
        assert!(!tcp(&o, db, fe, 5978));
        // Other pods are not isolated.
        assert!(tcp(&o, fe, o.pod("default/misc"), 1));
        assert!(tcp(&o, o.pod("default/misc"), fe, 1));
        // The reason names the policy.
        let v = o.verdict(&Probe {
            src: fe,
            dst: db,
            port: 80,
            protocol: PolicyProtocol::Tcp,
        });
        assert_eq!(
            v.ingress.decision,
            Decision::NetworkPolicyDenies {
                selecting: vec!["default/test-network-policy".into()]
            }
        );
        assert!(v
            .to_string()
            .contains("isolated by default/test-network-policy"));
        let v = o.verdict(&Probe {
            src: fe,
            dst: db,
            port: 6379,
            protocol: PolicyProtocol::Tcp,
        });
        assert_eq!(
            v.ingress.decision,
            Decision::NetworkPolicyAllows {
                policy: "default/test-network-policy".into(),
                rule: 0
            }
        );
    }

    #[test]
    fn both_sides_must_allow() {
        // db's egress is isolated: it cannot even reach a pod that accepts everything.
        let o = with(docs_cluster(), DOCS_POLICY);
        let v = o.verdict(&Probe {
            src: o.pod("default/db"),
            dst: o.pod("default/misc"),
            port: 80,
            protocol: PolicyProtocol::Tcp,
        });
        assert!(!v.allowed);
        assert!(!v.egress.allowed);
        assert!(v.ingress.allowed);
    }

    fn two_namespaces() -> Oracle {
        Oracle::new(
            &[NamespaceInfo {
                name: "prod".into(),
                labels: labels(&[("user", "alice")]),
            }],
            vec![
                pod("default", "server", &[("app", "server")], "10.0.1.1"),
                pod("prod", "client", &[("role", "client")], "10.0.1.2"),
                pod("prod", "web", &[("role", "web")], "10.0.1.3"),
                pod("default", "client", &[("role", "client")], "10.0.1.4"),
                // No Namespace object: only the name label.
                pod("bare", "client", &[("role", "client")], "10.0.1.5"),
            ],
            vec![],
        )
    }

    #[test]
    fn and_versus_or_peers() {
        let base = two_namespaces();
        let server = base.pod("default/server");
        let prod_client = base.pod("prod/client");
        let prod_web = base.pod("prod/web");
        let def_client = base.pod("default/client");
        // One peer with both selectors: client pods of alice's namespaces.
        let and = with(
            base.clone(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {user: alice}}\n      podSelector: {matchLabels: {role: client}}\n",
        );
        assert!(tcp(&and, prod_client, server, 80));
        assert!(!tcp(&and, prod_web, server, 80));
        assert!(!tcp(&and, def_client, server, 80));
        // Two peers: every pod of alice's namespaces, or client pods of the policy's
        // own namespace.
        let or = with(
            base,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {user: alice}}\n    - podSelector: {matchLabels: {role: client}}\n",
        );
        assert!(tcp(&or, prod_client, server, 80));
        assert!(tcp(&or, prod_web, server, 80));
        assert!(tcp(&or, def_client, server, 80));
        assert!(!tcp(&or, or.pod("bare/client"), server, 80));
    }

    #[test]
    fn namespace_name_label_without_object() {
        let o = with(
            two_namespaces(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: bare}}}]\n",
        );
        let server = o.pod("default/server");
        assert!(tcp(&o, o.pod("bare/client"), server, 80));
        assert!(!tcp(&o, o.pod("prod/client"), server, 80));
        // The policy's own namespace is not implied.
        assert!(!tcp(&o, o.pod("default/client"), server, 80));
        assert_eq!(
            o.namespace_labels("prod"),
            labels(&[("user", "alice"), (NAME_LABEL, "prod")])
        );
    }

    #[test]
    fn default_deny_and_allow_all() {
        let base = two_namespaces();
        let s = base.pod("default/server");
        let c = base.pod("default/client");
        let p = base.pod("prod/client");
        let np = |spec: &str| {
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: default}}\nspec: {spec}\n")
        };
        // Default deny ingress (policyTypes left out: Ingress).
        let o = with(base.clone(), &np("{podSelector: {}}"));
        assert!(!tcp(&o, p, s, 80));
        assert!(!tcp(&o, c, s, 80), "same namespace too");
        assert!(tcp(&o, s, p, 80), "egress is not isolated");
        // Allow all ingress.
        let o = with(base.clone(), &np("{podSelector: {}, ingress: [{}]}"));
        assert!(tcp(&o, p, s, 80) && udp(&o, p, s, 9));
        assert!(tcp(&o, addr("8.8.8.8"), s, 80));
        // Default deny egress.
        let o = with(
            base.clone(),
            &np("{podSelector: {}, policyTypes: [Egress]}"),
        );
        assert!(!tcp(&o, s, p, 80));
        assert!(!tcp(&o, s, addr("8.8.8.8"), 80));
        assert!(tcp(&o, p, s, 80), "ingress is not isolated");
        // Egress rules without policyTypes: both directions isolated.
        let o = with(base.clone(), &np("{podSelector: {}, egress: [{}]}"));
        assert!(tcp(&o, s, p, 80), "egress allowed by the rule");
        assert!(!tcp(&o, p, s, 80), "ingress isolated by default");
        // policyTypes [Ingress] ignores egress rules.
        let o = with(
            base.clone(),
            &np("{podSelector: {}, policyTypes: [Ingress], ingress: [{}], egress: [{ports: [{port: 1}]}]}"),
        );
        assert!(tcp(&o, s, p, 80));
        // Default deny all.
        let o = with(
            base.clone(),
            &np("{podSelector: {}, policyTypes: [Ingress, Egress]}"),
        );
        assert!(!tcp(&o, s, p, 80) && !tcp(&o, p, s, 80) && !tcp(&o, c, s, 80));
        assert!(tcp(&o, p, base.pod("prod/web"), 80), "another namespace");
    }

    #[test]
    fn policies_add_up() {
        let base = two_namespaces();
        let s = base.pod("default/server");
        let o = with(
            base.clone(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: default}\nspec: {podSelector: {matchLabels: {app: server}}, ingress: [{from: [{namespaceSelector: {matchLabels: {user: alice}}}], ports: [{port: 80}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: udp, namespace: default}\nspec: {podSelector: {matchLabels: {app: server}}, ingress: [{ports: [{protocol: UDP}]}]}\n",
        );
        assert!(tcp(&o, o.pod("prod/web"), s, 80));
        assert!(!tcp(&o, o.pod("prod/web"), s, 81));
        assert!(udp(&o, o.pod("bare/client"), s, 81));
        assert!(!tcp(&o, o.pod("bare/client"), s, 80));
        // The deny policy still isolates default/client.
        assert!(!udp(&o, s, o.pod("default/client"), 81));
    }

    #[test]
    fn ports_numbers_ranges_names_protocols() {
        let mut base = two_namespaces();
        base.pods[0].ports = vec![
            ContainerPort {
                name: "http".into(),
                container_port: 8080,
                protocol: PolicyProtocol::Tcp,
            },
            ContainerPort {
                name: "dns".into(),
                container_port: 53,
                protocol: PolicyProtocol::Udp,
            },
        ];
        let s = base.pod("default/server");
        let c = base.pod("prod/client");
        let np = |ports: &str| {
            with(base.clone(), &format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: default}}\nspec: {{podSelector: {{}}, ingress: [{{ports: {ports}}}]}}\n"))
        };
        // endPort: the documentation's 32000-32768.
        let o = np("[{protocol: TCP, port: 32000, endPort: 32768}]");
        assert!(tcp(&o, c, s, 32000) && tcp(&o, c, s, 32768) && tcp(&o, c, s, 32100));
        assert!(!tcp(&o, c, s, 31999) && !tcp(&o, c, s, 32769) && !udp(&o, c, s, 32000));
        // Protocol only.
        let o = np("[{protocol: UDP}]");
        assert!(udp(&o, c, s, 1) && udp(&o, c, s, 65535) && !tcp(&o, c, s, 1));
        // Named ports resolve against the subject (ingress), per protocol.
        let o = np("[{port: http}]");
        assert!(tcp(&o, c, s, 8080));
        assert!(!tcp(&o, c, s, 80));
        assert!(!udp(&o, c, s, 8080));
        let o = np("[{port: dns, protocol: UDP}]");
        assert!(udp(&o, c, s, 53) && !tcp(&o, c, s, 53));
        let o = np("[{port: dns}]");
        assert!(
            !udp(&o, c, s, 53),
            "dns is declared for UDP, the rule says TCP"
        );
        // A pod not declaring the name is not matched.
        let o = with(
            base.clone(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec: {podSelector: {}, ingress: [{ports: [{port: http}]}]}\n",
        );
        assert!(!tcp(&o, s, c, 8080));
        // Egress: the name resolves against the peer.
        let o = with(
            base.clone(),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: http}]}]}\n",
        );
        assert!(tcp(&o, c, s, 8080));
        assert!(!tcp(&o, c, base.pod("default/client"), 8080));
        assert!(!tcp(&o, c, addr("1.1.1.1"), 8080));
        // Several ports OR.
        let o = np("[{port: 80}, {port: 81, protocol: UDP}]");
        assert!(tcp(&o, c, s, 80) && udp(&o, c, s, 81));
        assert!(!udp(&o, c, s, 80) && !tcp(&o, c, s, 81));
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        let sel = |yaml: &str| -> LabelSelector {
            let o = objects(&format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: d}}\nspec: {{podSelector: {yaml}}}\n"));
            let AnyObject::NetworkPolicy(p) = &o[0] else {
                unreachable!()
            };
            p.spec.pod_selector.clone()
        };
        assert!(selects(&sel("{}"), &l));
        assert!(selects(&sel("{}"), &Labels::new()));
        assert!(selects(&sel("{matchLabels: {pod: a}}"), &l));
        assert!(!selects(&sel("{matchLabels: {pod: a, x: y}}"), &l));
        let expr = |e: &str| sel(&format!("{{matchExpressions: [{e}]}}"));
        assert!(selects(
            &expr("{key: pod, operator: In, values: [a, b]}"),
            &l
        ));
        assert!(!selects(&expr("{key: pod, operator: In, values: [b]}"), &l));
        assert!(!selects(
            &expr("{key: nope, operator: In, values: [a]}"),
            &l
        ));
        assert!(selects(
            &expr("{key: pod, operator: NotIn, values: [b]}"),
            &l
        ));
        assert!(!selects(
            &expr("{key: pod, operator: NotIn, values: [a]}"),
            &l
        ));
        assert!(
            selects(&expr("{key: nope, operator: NotIn, values: [a]}"), &l),
            "absent key"
        );
        assert!(selects(&expr("{key: tier, operator: Exists}"), &l));
        assert!(!selects(&expr("{key: nope, operator: Exists}"), &l));
        assert!(selects(&expr("{key: nope, operator: DoesNotExist}"), &l));
        assert!(!selects(&expr("{key: tier, operator: DoesNotExist}"), &l));
        assert!(!selects(
            &sel("{matchLabels: {pod: a}, matchExpressions: [{key: tier, operator: In, values: [db]}]}"),
            &l
        ));
    }

    #[test]
    fn cidrs() {
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        assert!(in_cidr(ip("10.0.0.0"), 8, ip("10.255.1.2")));
        assert!(!in_cidr(ip("10.0.0.0"), 8, ip("11.0.0.0")));
        assert!(in_cidr(ip("0.0.0.0"), 0, ip("1.2.3.4")));
        assert!(in_cidr(ip("10.0.0.5"), 32, ip("10.0.0.5")));
        assert!(!in_cidr(ip("10.0.0.5"), 32, ip("10.0.0.4")));
        assert!(
            in_cidr(ip("10.0.0.5"), 24, ip("10.0.0.200")),
            "host bits ignored"
        );
    }

    fn cnp(yaml_spec: &str, name: &str) -> String {
        format!("apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {yaml_spec}\n---\n")
    }

    const DENY_ALL_DEFAULT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec: {podSelector: {}}\n---\n";
    const ALLOW_ALL_DEFAULT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow, namespace: default}\nspec: {podSelector: {}, ingress: [{}]}\n---\n";

    #[test]
    fn admin_tier_before_network_policies() {
        let base = two_namespaces();
        let s = base.pod("default/server");
        let c = base.pod("prod/client");
        let w = base.pod("prod/web");
        let subject =
            "subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: default}}}";
        // Accept overrides a NetworkPolicy deny.
        let o = with(
            base.clone(),
            &format!(
                "{DENY_ALL_DEFAULT}{}",
                cnp(&format!("{{tier: Admin, priority: 10, {subject}, ingress: [{{action: Accept, from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{role: client}}}}}}}}]}}]}}"), "a")
            ),
        );
        assert!(tcp(&o, c, s, 80));
        assert!(!tcp(&o, w, s, 80));
        let v = o.verdict(&Probe {
            src: c,
            dst: s,
            port: 80,
            protocol: PolicyProtocol::Tcp,
        });
        assert!(matches!(
            v.ingress.decision,
            Decision::Cnp {
                tier: Tier::Admin,
                action: CnpAction::Accept,
                ..
            }
        ));
        // Deny overrides a NetworkPolicy allow.
        let o = with(
            base.clone(),
            &format!(
                "{ALLOW_ALL_DEFAULT}{}",
                cnp(&format!("{{tier: Admin, priority: 10, {subject}, ingress: [{{action: Deny, from: [{{namespaces: {{matchLabels: {{user: alice}}}}}}], ports: [{{portNumber: {{port: 80}}}}]}}]}}"), "a")
            ),
        );
        assert!(!tcp(&o, c, s, 80));
        assert!(tcp(&o, c, s, 81));
        assert!(tcp(&o, base.pod("bare/client"), s, 80));
        // Pass hands over to NetworkPolicies...
        let pass = cnp(&format!("{{tier: Admin, priority: 1, {subject}, ingress: [{{action: Pass, from: [{{namespaces: {{}}}}]}}]}}"), "pass");
        let deny = cnp(&format!("{{tier: Admin, priority: 5, {subject}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}"), "deny");
        let o = with(base.clone(), &format!("{ALLOW_ALL_DEFAULT}{pass}{deny}"));
        assert!(tcp(&o, c, s, 80), "Pass skips the later Admin Deny");
        let v = o.verdict(&Probe {
            src: c,
            dst: s,
            port: 80,
            protocol: PolicyProtocol::Tcp,
        });
        assert_eq!(v.ingress.passed_by.as_deref(), Some("pass/0"));
        let o = with(base.clone(), &format!("{DENY_ALL_DEFAULT}{pass}{deny}"));
        assert!(!tcp(&o, c, s, 80), "...which may deny");
        // ...and without NetworkPolicies to Baseline.
        let baseline = cnp(&format!("{{tier: Baseline, priority: 1, {subject}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}"), "base");
        let o = with(base.clone(), &format!("{pass}{deny}{baseline}"));
        assert!(!tcp(&o, c, s, 80));
        assert!(
            tcp(&o, addr("1.2.3.4"), s, 80),
            "no peer matches an address"
        );
        let o = with(base.clone(), &format!("{pass}{deny}"));
        assert!(tcp(&o, c, s, 80));
        // Without Pass, Deny.
        let o = with(base.clone(), &format!("{ALLOW_ALL_DEFAULT}{deny}"));
        assert!(!tcp(&o, c, s, 80));
    }

    #[test]
    fn admin_priorities_names_and_rule_order() {
        let base = two_namespaces();
        let s = base.pod("default/server");
        let c = base.pod("prod/client");
        let subject =
            "subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}";
        let rule = |action: &str| format!("{{action: {action}, from: [{{namespaces: {{}}}}]}}");
        let accept5 = cnp(
            &format!(
                "{{tier: Admin, priority: 5, {subject}, ingress: [{}]}}",
                rule("Accept")
            ),
            "b-accept",
        );
        let deny10 = cnp(
            &format!(
                "{{tier: Admin, priority: 10, {subject}, ingress: [{}]}}",
                rule("Deny")
            ),
            "a-deny",
        );
        let deny5 = cnp(
            &format!(
                "{{tier: Admin, priority: 5, {subject}, ingress: [{}]}}",
                rule("Deny")
            ),
            "a-deny",
        );
        // Lower priority first, whatever the names.
        assert!(tcp(
            &with(base.clone(), &format!("{deny10}{accept5}")),
            c,
            s,
            80
        ));
        // Equal priorities: by name (a-deny before b-accept).
        assert!(!tcp(
            &with(base.clone(), &format!("{accept5}{deny5}")),
            c,
            s,
            80
        ));
        // Rule order within one policy; Log goes on.
        let one = cnp(
            &format!(
                "{{tier: Admin, priority: 3, {subject}, ingress: [{{name: log, action: Log, from: [{{namespaces: {{}}}}]}}, {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 81}}}}]}}, {}]}}",
                rule("Accept")
            ),
            "one",
        );
        let o = with(base.clone(), &format!("{DENY_ALL_DEFAULT}{one}"));
        assert!(tcp(&o, c, s, 80));
        assert!(!tcp(&o, c, s, 81));
        let v = o.verdict(&Probe {
            src: c,
            dst: s,
            port: 81,
            protocol: PolicyProtocol::Tcp,
        });
        assert_eq!(v.ingress.logged_by, vec!["one/log".to_string()]);
        assert_eq!(
            v.ingress.decision,
            Decision::Cnp {
                tier: Tier::Admin,
                policy: "one".into(),
                rule: "1".into(),
                action: CnpAction::Deny
            }
        );
        // The subject must select: client pods are not subjects.
        assert!(tcp(&o, s, c, 81));
    }

    #[test]
    fn baseline_only_without_network_policies_for_the_direction() {
        let base = two_namespaces();
        let s = base.pod("default/server");
        let c = base.pod("prod/client");
        let baseline = cnp(
            "{tier: Baseline, priority: 10, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}], egress: [{action: Deny, to: [{networks: [10.0.1.0/24]}], ports: [{portNumber: {protocol: UDP, port: 53}}]}]}",
            "base",
        );
        let o = with(base.clone(), &baseline);
        assert!(!tcp(&o, c, s, 80));
        assert!(!udp(&o, s, c, 53), "egress baseline by network");
        assert!(!udp(&o, s, addr("10.0.1.99"), 53));
        assert!(udp(&o, s, addr("10.0.2.99"), 53));
        // A NetworkPolicy selecting the server for ingress replaces Baseline there...
        let o = with(base.clone(), &format!("{ALLOW_ALL_DEFAULT}{baseline}"));
        assert!(tcp(&o, c, s, 80));
        // ...but not for egress, and not for other namespaces.
        assert!(!udp(&o, s, c, 53));
        assert!(!tcp(&o, s, c, 80));
        // An egress-only NetworkPolicy leaves ingress to Baseline.
        let o = with(
            base.clone(),
            &format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: e, namespace: default}}\nspec: {{podSelector: {{}}, policyTypes: [Egress], egress: [{{}}]}}\n---\n{baseline}"),
        );
        assert!(udp(&o, s, addr("10.0.1.99"), 53));
        assert!(
            !udp(&o, s, c, 53),
            "prod/client's ingress is still Baseline's"
        );
        assert!(!tcp(&o, base.pod("default/client"), s, 80));
        // Baseline Accept before Deny by priority.
        let accept = cnp(
            "{tier: Baseline, priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}}], ports: [{portRange: {start: 80, end: 81}}]}]}",
            "first",
        );
        let o = with(base.clone(), &format!("{baseline}{accept}"));
        assert!(tcp(&o, c, s, 80) && tcp(&o, c, s, 81));
        assert!(!tcp(&o, c, s, 82) && !udp(&o, c, s, 80));
        assert!(!tcp(&o, base.pod("prod/web"), s, 80));
    }

    #[test]
    fn cnp_nodes_networks_and_named_ports() {
        let mut base = two_namespaces();
        base.nodes = vec![
            NodeInfo {
                name: "n1".into(),
                labels: labels(&[("zone", "a")]),
                address: "192.168.77.11".parse().unwrap(),
            },
            NodeInfo {
                name: "n2".into(),
                labels: labels(&[("zone", "b")]),
                address: "192.168.77.12".parse().unwrap(),
            },
        ];
        base.pods[0].ports = vec![ContainerPort {
            name: "http".into(),
            container_port: 8080,
            protocol: PolicyProtocol::Tcp,
        }];
        let s = base.pod("default/server");
        let o = with(
            base.clone(),
            &cnp(
                "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{nodes: {matchLabels: {zone: a}}}]}, {action: Deny, from: [{networks: [10.0.1.2/32]}], ports: [{namedPort: http}]}]}",
                "c",
            ),
        );
        assert!(!tcp(&o, addr("192.168.77.11"), s, 80));
        assert!(tcp(&o, addr("192.168.77.12"), s, 80));
        assert!(tcp(&o, addr("192.168.77.13"), s, 80));
        // networks match pod addresses; the named port resolves against the subject.
        let c = o.pod("prod/client");
        assert!(!tcp(&o, c, s, 8080));
        assert!(tcp(&o, c, s, 80));
        assert!(udp(&o, c, s, 8080), "UDP 8080 is not named");
        assert!(tcp(&o, o.pod("prod/web"), s, 8080));
        // Node peers never match pods.
        let o = with(
            base.clone(),
            &cnp(
                "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {}}]}]}",
                "c",
            ),
        );
        assert!(tcp(&o, c, s, 80));
        assert!(!tcp(&o, c, addr("192.168.77.12"), 80));
        // Egress named port: against the peer.
        let o = with(
            base,
            &cnp(
                "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], ports: [{namedPort: http}]}]}",
                "c",
            ),
        );
        assert!(!tcp(&o, c, s, 8080));
        assert!(tcp(&o, s, c, 8080));
    }

    #[test]
    fn loopback() {
        let mut o = with(two_namespaces(), DENY_ALL_DEFAULT);
        let s = o.pod("default/server");
        assert!(!tcp(&o, s, s, 80), "a pod to itself is subject to policy");
        o.loopback = Loopback::Allowed;
        assert!(tcp(&o, s, s, 80));
        assert!(!tcp(&o, o.pod("default/client"), s, 80));
    }

    #[test]
    fn label_changes_by_objects() {
        let base = two_namespaces();
        let o = with(
            base,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bare, labels: {user: alice}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod, labels: {role: client}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {user: alice}}\n      podSelector: {matchLabels: {role: client}}\n",
        );
        let s = o.pod("default/server");
        assert!(tcp(&o, o.pod("bare/client"), s, 80));
        assert!(tcp(&o, o.pod("prod/web"), s, 80));
    }
}
