//! Compiling [`Inputs`] into the elements of the policy table's sets, in proportion to
//! the change: [`Compiler::apply`] takes a list of [`Change`]s (a pod, namespace,
//! policy or node added, changed or gone; [`Compiler::update`] computes them from new
//! inputs), recomputes only the contributions of the policies the change can affect
//! (found through the inverted indexes of [`crate::index`]), and returns the element
//! [`Delta`] (an element leaves a set only when no policy contributes it any more).
//!
//! The compiler works on pod *identities* (namespace, labels, named ports: pods that
//! are alike share one), which keeps its work small; the kernel's sets are keyed by
//! addresses (see [`crate::elements`], which spells identities out per pod, and
//! [`crate::table`] for the sets and chains).
//!
//! Only identities with a pod on this node are subjects: a node holds the rules of its
//! own pods.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use trellis_api::naming::fnv1a64;
use trellis_api::objects::{CnpAction, NetworkPolicySpec, Peer, PolicyPort, PortRef, Tier};

use trellis_api::objects::ClusterNetworkPolicySpec;

use crate::elements::{Atom, Atoms};
pub use crate::elements::{Delta, Elem, SetName};
use crate::index::{IdentIndex, NpIndex, NpKey};
use crate::model::{
    cnp_port_spans, np_port_spans, np_rules, Dir, IdentityKey, Inputs, Labels, NodeInfo, PodInfo,
    PortSpan,
};

/// One change of the inputs: the new value, or `None` when the object is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A pod, by address.
    Pod(Ipv4Addr, Option<PodInfo>),
    /// A Namespace object's labels, by name.
    Namespace(String, Option<Labels>),
    /// A NetworkPolicy, by (namespace, name).
    NetPol(NpKey, Option<NetworkPolicySpec>),
    /// A ClusterNetworkPolicy, by name.
    Cnp(String, Option<ClusterNetworkPolicySpec>),
    /// A Node, by name.
    Node(String, Option<NodeInfo>),
}

/// The kind of a per-rule set of a ClusterNetworkPolicy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleSet {
    /// Peer identities.
    Ids,
    /// Peer address blocks.
    Nets,
    /// Numbered ports.
    Ports,
    /// Named ports per destination identity.
    Named,
}

/// One compiled ClusterNetworkPolicy rule, in evaluation order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CnpRuleLayout {
    /// `Admin` or `Baseline`.
    pub tier: Tier,
    /// The direction.
    pub dir: Dir,
    /// What matching traffic gets.
    pub action: CnpAction,
    /// The subject set's name.
    pub subject_set: SetName,
    /// `<policy>/<rule>` for log prefixes.
    pub label: String,
    /// The per-rule sets that exist (a rule without numbered ports has no `Ports`...).
    pub sets: BTreeMap<RuleSet, SetName>,
    /// Whether the rule has a port list at all (else every port matches).
    pub has_ports: bool,
}

/// `cidr` minus `except`, as inclusive address ranges.
pub fn block_ranges(cidr: Ipv4Net, except: &[Ipv4Net]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut ranges = vec![(u32::from(cidr.network()), u32::from(cidr.broadcast()))];
    for e in except {
        let (elo, ehi) = (u32::from(e.network()), u32::from(e.broadcast()));
        let mut next = Vec::new();
        for (lo, hi) in ranges {
            if ehi < lo || elo > hi {
                next.push((lo, hi));
                continue;
            }
            if elo > lo {
                next.push((lo, elo - 1));
            }
            if ehi < hi {
                next.push((ehi + 1, hi));
            }
        }
        ranges = next;
    }
    ranges
        .into_iter()
        .map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b)))
        .collect()
}

#[derive(Debug, Clone)]
struct Identity {
    id: u32,
    pods: BTreeSet<Ipv4Addr>,
    /// This node's pods of it.
    local: BTreeSet<Ipv4Addr>,
}

type Contribution = HashSet<Atom>;

/// The incremental compiler of one node.
#[derive(Debug)]
pub struct Compiler {
    node: String,
    inputs: Inputs,
    identities: BTreeMap<IdentityKey, Identity>,
    by_id: HashMap<u32, IdentityKey>,
    /// Per pod: its `ids` / `local` atoms.
    pods: HashMap<Ipv4Addr, Contribution>,
    /// Per NetworkPolicy: the atoms it contributes.
    np: HashMap<(String, String), Contribution>,
    np_index: NpIndex,
    ident_index: IdentIndex,
    /// All ClusterNetworkPolicy atoms (recomputed as a whole; there are few).
    cnp: Contribution,
    cnp_layout: Vec<CnpRuleLayout>,
    atoms: Atoms,
}

impl Compiler {
    /// An empty compiler for node `node` (its pods are the subjects); `dns`: the node's
    /// cluster DNS addresses, which every pod may reach on port 53; `node_addrs`: the
    /// node's own addresses, whose connections to its pods are never policed (kubelet
    /// probes).
    pub fn new(node: &str, dns: &[Ipv4Addr], node_addrs: &[Ipv4Addr]) -> Self {
        let mut c = Compiler {
            node: node.to_string(),
            inputs: Inputs::default(),
            identities: BTreeMap::new(),
            by_id: HashMap::new(),
            pods: HashMap::new(),
            np: HashMap::new(),
            np_index: NpIndex::default(),
            ident_index: IdentIndex::default(),
            cnp: HashSet::new(),
            cnp_layout: Vec::new(),
            atoms: Atoms::default(),
        };
        let fixed: Contribution = dns
            .iter()
            .flat_map(|ip| [Atom::Dns(*ip, 6), Atom::Dns(*ip, 17)])
            .chain(node_addrs.iter().map(|ip| Atom::NodeAddr(*ip)))
            .collect();
        let mut d = Delta::default();
        c.atoms.replace(&HashSet::new(), &fixed, &mut d);
        c
    }

    /// The inputs last compiled.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// The ClusterNetworkPolicy rules in evaluation order (chains are built from this).
    pub fn cnp_layout(&self) -> &[CnpRuleLayout] {
        &self.cnp_layout
    }

    /// Every element wanted now, per set, with every set the table needs (empty ones
    /// too).
    pub fn desired(&self) -> BTreeMap<SetName, BTreeSet<Elem>> {
        let mut out = self.atoms.elements();
        for set in self.all_set_names() {
            out.entry(set).or_default();
        }
        out
    }

    /// Every per-rule set name of the ClusterNetworkPolicies.
    pub fn cnp_set_names(&self) -> BTreeSet<SetName> {
        let mut s = BTreeSet::new();
        for r in &self.cnp_layout {
            s.insert(r.subject_set.clone());
            s.extend(r.sets.values().cloned());
        }
        s
    }

    /// Every set name the table needs (static and per ClusterNetworkPolicy rule).
    pub fn all_set_names(&self) -> BTreeSet<SetName> {
        let mut s: BTreeSet<SetName> = crate::table::STATIC_SETS
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        s.extend(self.cnp_set_names());
        s
    }

    /// Bring the compiled state to `new` and return the element changes (the changes
    /// are found by comparing every object; [`Compiler::apply`] takes them directly).
    pub fn update(&mut self, new: Inputs) -> Delta {
        let mut changes = Vec::new();
        for (k, _, v) in diff_maps(&self.inputs.pods, &new.pods) {
            changes.push(Change::Pod(k, v.cloned()));
        }
        for (k, _, v) in diff_maps(&self.inputs.namespaces, &new.namespaces) {
            changes.push(Change::Namespace(k, v.cloned()));
        }
        for (k, _, v) in diff_maps(&self.inputs.netpols, &new.netpols) {
            changes.push(Change::NetPol(k, v.cloned()));
        }
        for (k, _, v) in diff_maps(&self.inputs.cnps, &new.cnps) {
            changes.push(Change::Cnp(k, v.cloned()));
        }
        for (k, _, v) in diff_maps(&self.inputs.nodes, &new.nodes) {
            changes.push(Change::Node(k, v.cloned()));
        }
        self.apply(changes)
    }

    /// Apply `changes` and return the element changes.
    pub fn apply(&mut self, changes: Vec<Change>) -> Delta {
        let mut delta = Delta::default();
        let mut pod_changes: Vec<(Ipv4Addr, Option<PodInfo>)> = Vec::new();
        let mut ns_changed = false;
        let mut redo: BTreeSet<NpKey> = BTreeSet::new();
        let mut cnp_changed = false;
        for c in changes {
            match c {
                Change::Pod(ip, new) => {
                    let old = match new {
                        Some(p) => self.inputs.pods.insert(ip, p),
                        None => self.inputs.pods.remove(&ip),
                    };
                    if old.as_ref() != self.inputs.pods.get(&ip) {
                        pod_changes.push((ip, old));
                    }
                }
                Change::Namespace(n, new) => {
                    let old = match new {
                        Some(l) => self.inputs.namespaces.insert(n.clone(), l),
                        None => self.inputs.namespaces.remove(&n),
                    };
                    ns_changed |= old.as_ref() != self.inputs.namespaces.get(&n);
                }
                Change::NetPol(k, new) => {
                    let old = match new {
                        Some(spec) => self.inputs.netpols.insert(k.clone(), spec),
                        None => self.inputs.netpols.remove(&k),
                    };
                    if old.as_ref() != self.inputs.netpols.get(&k) {
                        if let Some(o) = &old {
                            self.np_index.remove(&k, o);
                        }
                        if let Some(n) = self.inputs.netpols.get(&k) {
                            self.np_index.add(&k, n);
                        }
                        redo.insert(k);
                    }
                }
                Change::Cnp(k, new) => {
                    let old = match new {
                        Some(spec) => self.inputs.cnps.insert(k.clone(), spec),
                        None => self.inputs.cnps.remove(&k),
                    };
                    cnp_changed |= old.as_ref() != self.inputs.cnps.get(&k);
                }
                Change::Node(k, new) => {
                    let old = match new {
                        Some(n) => self.inputs.nodes.insert(k.clone(), n),
                        None => self.inputs.nodes.remove(&k),
                    };
                    cnp_changed |= old.as_ref() != self.inputs.nodes.get(&k);
                }
            }
        }

        // Pods: identities, then their `ids`/`local` atoms.
        let mut idents_changed: BTreeSet<IdentityKey> = BTreeSet::new();
        let mut subjects_changed: BTreeSet<IdentityKey> = BTreeSet::new();
        let mut local_changed: BTreeSet<u32> = BTreeSet::new();
        let mut pods_changed: BTreeSet<u32> = BTreeSet::new();
        for (ip, before) in &pod_changes {
            let ip = *ip;
            if let Some(p) = before {
                let k = IdentityKey::of(p);
                let i = self.identities.get_mut(&k).expect("known identity");
                i.pods.remove(&ip);
                pods_changed.insert(i.id);
                if p.node == self.node {
                    i.local.remove(&ip);
                    local_changed.insert(i.id);
                    if i.local.is_empty() {
                        subjects_changed.insert(k.clone());
                    }
                }
                if i.pods.is_empty() {
                    let id = i.id;
                    self.identities.remove(&k);
                    self.by_id.remove(&id);
                    self.ident_index.remove(&k);
                    idents_changed.insert(k);
                }
            }
            if let Some(p) = self.inputs.pods.get(&ip) {
                let k = IdentityKey::of(p);
                if !self.identities.contains_key(&k) {
                    let mut id = k.preferred_id();
                    while id == 0 || self.by_id.contains_key(&id) {
                        id = id.wrapping_add(1);
                    }
                    self.by_id.insert(id, k.clone());
                    self.ident_index.add(&k);
                    self.identities.insert(
                        k.clone(),
                        Identity {
                            id,
                            pods: BTreeSet::new(),
                            local: BTreeSet::new(),
                        },
                    );
                    idents_changed.insert(k.clone());
                }
                let i = self.identities.get_mut(&k).expect("identity");
                i.pods.insert(ip);
                pods_changed.insert(i.id);
                if p.node == self.node {
                    i.local.insert(ip);
                    local_changed.insert(i.id);
                    if i.local.len() == 1 {
                        subjects_changed.insert(k);
                    }
                }
            }
        }
        // Subject atoms are spelled out per local pod: follow the pod sets.
        for id in local_changed {
            let addrs = self
                .by_id
                .get(&id)
                .and_then(|k| self.identities.get(k))
                .map(|i| i.local.clone())
                .unwrap_or_default();
            self.atoms.set_subject(id, addrs, &mut delta);
        }
        // Peer atoms are spelled out per pod of the identity.
        for id in pods_changed {
            let addrs = self
                .by_id
                .get(&id)
                .and_then(|k| self.identities.get(k))
                .map(|i| i.pods.clone())
                .unwrap_or_default();
            self.atoms.set_peer(id, addrs, &mut delta);
        }
        for (ip, _) in &pod_changes {
            let ip = *ip;
            let now: Contribution = match self.inputs.pods.get(&ip) {
                Some(p) if p.node == self.node => [Atom::Local(ip)].into(),
                _ => HashSet::new(),
            };
            let before = self.pods.remove(&ip).unwrap_or_default();
            self.atoms.replace(&before, &now, &mut delta);
            if !now.is_empty() {
                self.pods.insert(ip, now);
            }
        }

        // The NetworkPolicies the change can affect: changed ones, those that can
        // select a changed subject or match a changed peer identity, and (namespace
        // labels changed) those selecting namespaces by label.
        for k in &subjects_changed {
            self.np_index.subject_candidates(k, &mut redo);
        }
        for k in &idents_changed {
            let l = self.inputs.ns_labels(&k.namespace);
            self.np_index.peer_candidates(k, &l, &mut redo);
        }
        if ns_changed {
            redo.extend(self.np_index.ns_selecting().iter().cloned());
        }
        for key in redo {
            let now = match self.inputs.netpols.get(&key) {
                Some(spec) => self.np_contribution(&key.0, spec),
                None => HashSet::new(),
            };
            let before = self.np.remove(&key).unwrap_or_default();
            self.atoms.replace(&before, &now, &mut delta);
            if self.inputs.netpols.contains_key(&key) {
                self.np.insert(key, now);
            }
        }

        // ClusterNetworkPolicies: recomputed as a whole when anything they read changed.
        let cnp_inputs_changed =
            cnp_changed || ns_changed || !idents_changed.is_empty() || !subjects_changed.is_empty();
        if cnp_inputs_changed && !(self.inputs.cnps.is_empty() && self.cnp.is_empty()) {
            let (layout, now) = self.cnp_contribution();
            let old_sets = self.cnp_set_names();
            if layout != self.cnp_layout {
                delta.layout_changed = true;
                self.cnp_layout = layout;
            }
            let before = std::mem::take(&mut self.cnp);
            self.atoms.replace(&before, &now, &mut delta);
            self.cnp = now;
            if delta.layout_changed {
                // Elements of sets that go away leave with their sets.
                let names = self.cnp_set_names();
                delta
                    .del
                    .retain(|s, _| names.contains(s) || !old_sets.contains(s));
            }
        }
        delta
    }

    /// Local subject identities (in `ns`) with their ids.
    fn local_subjects<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a IdentityKey, u32)> + 'a {
        self.ident_index.in_ns(ns).filter_map(move |k| {
            let i = &self.identities[k];
            (!i.local.is_empty()).then_some((k, i.id))
        })
    }

    fn np_contribution(&self, ns: &str, spec: &NetworkPolicySpec) -> Contribution {
        let mut c = HashSet::new();
        for (s_key, s) in self.local_subjects(ns) {
            for dir in [Dir::Ingress, Dir::Egress] {
                if !self.inputs.np_selects(ns, spec, s_key, dir) {
                    continue;
                }
                c.insert(Atom::Iso(dir, s));
                let rules = np_rules(spec, dir);
                for (peers, ports) in rules {
                    self.rule_atoms(&mut c, ns, dir, s, s_key, peers, ports);
                }
            }
        }
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn rule_atoms(
        &self,
        c: &mut Contribution,
        ns: &str,
        dir: Dir,
        s: u32,
        s_key: &IdentityKey,
        peers: &[Peer],
        ports: &[PolicyPort],
    ) {
        let named = ports
            .iter()
            .any(|p| matches!(p.port, Some(PortRef::Name(_))));
        // Spans that do not depend on the peer: numbered ports, and for ingress named
        // ports resolved against the subject. Egress named ports resolve per peer.
        let per_peer = dir == Dir::Egress && named;
        let fixed: Vec<PortSpan> = match dir {
            Dir::Ingress => np_port_spans(ports, Some(s_key)),
            Dir::Egress => np_port_spans(ports, None),
        };
        if peers.is_empty() {
            for sp in &fixed {
                c.insert(Atom::Net(dir, s, 0, u32::MAX, *sp));
            }
            if per_peer {
                for (q_key, q) in &self.identities {
                    for sp in np_port_spans(ports, Some(q_key)) {
                        c.insert(Atom::Peer(dir, s, q.id, sp));
                    }
                }
            }
            return;
        }
        for peer in peers {
            if let Some(b) = &peer.ip_block {
                for (lo, hi) in block_ranges(b.cidr, &b.except) {
                    for sp in &fixed {
                        c.insert(Atom::Net(dir, s, u32::from(lo), u32::from(hi), *sp));
                    }
                }
                if per_peer {
                    // Named ports of the pods inside the block, per address.
                    for (q_key, q) in &self.identities {
                        for ip in q.pods.iter().filter(|ip| b.contains(**ip)) {
                            for sp in np_port_spans(ports, Some(q_key)) {
                                let a = u32::from(*ip);
                                c.insert(Atom::Net(dir, s, a, a, sp));
                            }
                        }
                    }
                }
                continue;
            }
            let namespaces = self
                .ident_index
                .namespaces()
                .map(|n| (n, self.inputs.ns_labels(n)));
            let candidates: Vec<&IdentityKey> =
                match self.ident_index.peer_candidates(ns, peer, namespaces) {
                    Some(c) => c,
                    None => self.identities.keys().collect(),
                };
            for q_key in candidates {
                let q = &self.identities[q_key];
                if !self.inputs.np_peer_matches(ns, peer, q_key) {
                    continue;
                }
                if per_peer {
                    for sp in np_port_spans(ports, Some(q_key)) {
                        c.insert(Atom::Peer(dir, s, q.id, sp));
                    }
                } else {
                    for sp in &fixed {
                        c.insert(Atom::Peer(dir, s, q.id, *sp));
                    }
                }
            }
        }
    }

    fn cnp_contribution(&self) -> (Vec<CnpRuleLayout>, Contribution) {
        let mut layout = Vec::new();
        let mut c = HashSet::new();
        for tier in [Tier::Admin, Tier::Baseline] {
            for (name, spec) in self.inputs.cnps_in_order(tier) {
                let h = format!("{:08x}", fnv1a64([name.as_bytes()]) as u32);
                let subject_set = format!("c{h}-subj");
                for (k, i) in &self.identities {
                    if !i.local.is_empty() && self.inputs.subject_selects(&spec.subject, k) {
                        c.insert(Atom::CnpSubject(subject_set.clone(), i.id));
                    }
                }
                for dir in [Dir::Ingress, Dir::Egress] {
                    let rules = match dir {
                        Dir::Ingress => &spec.ingress,
                        Dir::Egress => &spec.egress,
                    };
                    for (ri, r) in rules.iter().enumerate() {
                        let d = if dir == Dir::Ingress { 'i' } else { 'e' };
                        let base = format!("c{h}-{d}{ri}");
                        let mut sets = BTreeMap::new();
                        for p in &r.peers {
                            if p.namespaces.is_some() || p.pods.is_some() {
                                let set = format!("{base}-ids");
                                for (k, i) in &self.identities {
                                    if self.inputs.cnp_peer_matches_identity(p, k) {
                                        c.insert(Atom::CnpId(set.clone(), i.id));
                                    }
                                }
                                sets.insert(RuleSet::Ids, set);
                            } else {
                                let set = format!("{base}-nets");
                                for n in self.inputs.cnp_peer_nets(p) {
                                    c.insert(Atom::CnpNet(
                                        set.clone(),
                                        u32::from(n.network()),
                                        u32::from(n.broadcast()),
                                    ));
                                }
                                sets.insert(RuleSet::Nets, set);
                            }
                        }
                        let numbered: Vec<_> = r
                            .ports
                            .iter()
                            .filter(|p| p.named_port.is_none())
                            .cloned()
                            .collect();
                        if !numbered.is_empty() {
                            let set = format!("{base}-ports");
                            for sp in cnp_port_spans(&numbered, None) {
                                c.insert(Atom::CnpPort(set.clone(), sp));
                            }
                            sets.insert(RuleSet::Ports, set);
                        }
                        let named: Vec<_> = r
                            .ports
                            .iter()
                            .filter(|p| p.named_port.is_some())
                            .cloned()
                            .collect();
                        if !named.is_empty() {
                            let set = format!("{base}-named");
                            // The destination's port: the subject's for ingress,
                            // the peer's for egress.
                            for (k, i) in &self.identities {
                                if dir == Dir::Ingress && i.local.is_empty() {
                                    continue;
                                }
                                for sp in cnp_port_spans(&named, Some(k)) {
                                    if let Some(p) = sp.proto {
                                        c.insert(match dir {
                                            Dir::Ingress => {
                                                Atom::CnpNamedSubject(set.clone(), i.id, p, sp.lo)
                                            }
                                            Dir::Egress => {
                                                Atom::CnpNamedPeer(set.clone(), i.id, p, sp.lo)
                                            }
                                        });
                                    }
                                }
                            }
                            sets.insert(RuleSet::Named, set);
                        }
                        layout.push(CnpRuleLayout {
                            tier,
                            dir,
                            action: r.action,
                            subject_set: subject_set.clone(),
                            label: format!("{name}/{}", r.display_name(ri)),
                            sets,
                            has_ports: !r.ports.is_empty(),
                        });
                    }
                }
            }
        }
        (layout, c)
    }
}

/// The keys whose values differ between `a` and `b`, with both values.
fn diff_maps<'a, K: Ord + Clone, V: PartialEq>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
) -> Vec<(K, Option<&'a V>, Option<&'a V>)> {
    let mut out = Vec::new();
    let mut x = a.iter().peekable();
    let mut y = b.iter().peekable();
    loop {
        match (x.peek(), y.peek()) {
            (None, None) => break,
            (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                if va != vb {
                    out.push(((*ka).clone(), Some(*va), Some(*vb)));
                }
                x.next();
                y.next();
            }
            (Some((ka, va)), Some((kb, _))) if ka < kb => {
                out.push(((*ka).clone(), Some(*va), None));
                x.next();
            }
            (Some((ka, va)), None) => {
                out.push(((*ka).clone(), Some(*va), None));
                x.next();
            }
            (_, Some((kb, vb))) => {
                out.push(((*kb).clone(), None, Some(*vb)));
                y.next();
            }
        }
    }
    out
}
