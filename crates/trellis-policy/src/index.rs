//! Inverted indexes that keep the compiler's work in proportion to a change: for an
//! identity that appeared or went away, the NetworkPolicies that can select it (as
//! subject) or match it (as peer); for a peer selector, the identities that can match
//! it. Each selector is filed under one of its `matchLabels` pairs (or its namespace),
//! so a lookup touches only the policies and identities that share a label with the
//! change; selectors without any pair to file them under are scanned.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use trellis_api::objects::{NetworkPolicySpec, Peer, PortRef};

use crate::model::{IdentityKey, Labels};

/// A NetworkPolicy's key: (namespace, name).
pub type NpKey = (String, String);

/// Where a selector peer is filed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PeerKey {
    /// Pods of this namespace with this label (a `podSelector` alone).
    NsPodLabel(String, String, String),
    /// Pods with this label, in any namespace.
    Label(String, String),
    /// Pods in namespaces with this label.
    NsLabel(String, String),
    /// Pods of this namespace.
    Ns(String),
    /// Anything.
    Scan,
}

/// Where a policy's subject selector is filed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SubjectKey {
    /// Pods of the namespace with this label.
    Label(String, String, String),
    /// Every pod of the namespace.
    Ns(String),
}

fn first(l: &BTreeMap<String, String>) -> Option<(String, String)> {
    l.iter().next().map(|(k, v)| (k.clone(), v.clone()))
}

fn peer_key(ns: &str, p: &Peer) -> Option<PeerKey> {
    if p.ip_block.is_some() {
        return None;
    }
    if let Some((k, v)) = p.pod_selector.as_ref().and_then(|s| first(&s.match_labels)) {
        return Some(match p.namespace_selector {
            None => PeerKey::NsPodLabel(ns.to_string(), k, v),
            Some(_) => PeerKey::Label(k, v),
        });
    }
    match &p.namespace_selector {
        None => Some(PeerKey::Ns(ns.to_string())),
        Some(s) => Some(match first(&s.match_labels) {
            Some((k, v)) => PeerKey::NsLabel(k, v),
            None => PeerKey::Scan,
        }),
    }
}

/// The peer keys of a policy: its selector peers, and a scan when an egress rule's
/// named ports make every destination identity matter (`to` empty or an `ipBlock`).
fn peer_keys(ns: &str, spec: &NetworkPolicySpec) -> BTreeSet<PeerKey> {
    let mut out: BTreeSet<PeerKey> = spec
        .ingress
        .iter()
        .flat_map(|r| &r.from)
        .chain(spec.egress.iter().flat_map(|r| &r.to))
        .filter_map(|p| peer_key(ns, p))
        .collect();
    let named_any = spec.egress.iter().any(|r| {
        (r.to.is_empty() || r.to.iter().any(|p| p.ip_block.is_some()))
            && r.ports
                .iter()
                .any(|p| matches!(p.port, Some(PortRef::Name(_))))
    });
    if named_any {
        out.insert(PeerKey::Scan);
    }
    out
}

fn subject_key(ns: &str, spec: &NetworkPolicySpec) -> SubjectKey {
    match first(&spec.pod_selector.match_labels) {
        Some((k, v)) => SubjectKey::Label(ns.to_string(), k, v),
        None => SubjectKey::Ns(ns.to_string()),
    }
}

/// The NetworkPolicies filed by what their selectors need.
#[derive(Debug, Default)]
pub struct NpIndex {
    subjects: HashMap<SubjectKey, BTreeSet<NpKey>>,
    peers: HashMap<PeerKey, BTreeSet<NpKey>>,
    /// Policies with a `namespaceSelector` peer (namespace label changes affect them).
    ns_selecting: BTreeSet<NpKey>,
}

impl NpIndex {
    /// File policy `key`.
    pub fn add(&mut self, key: &NpKey, spec: &NetworkPolicySpec) {
        self.subjects
            .entry(subject_key(&key.0, spec))
            .or_default()
            .insert(key.clone());
        for pk in peer_keys(&key.0, spec) {
            self.peers.entry(pk).or_default().insert(key.clone());
        }
        if has_ns_selector(spec) {
            self.ns_selecting.insert(key.clone());
        }
    }

    /// Unfile policy `key` (filed with `spec`).
    pub fn remove(&mut self, key: &NpKey, spec: &NetworkPolicySpec) {
        let sk = subject_key(&key.0, spec);
        if let Some(s) = self.subjects.get_mut(&sk) {
            s.remove(key);
            if s.is_empty() {
                self.subjects.remove(&sk);
            }
        }
        for pk in peer_keys(&key.0, spec) {
            if let Some(s) = self.peers.get_mut(&pk) {
                s.remove(key);
                if s.is_empty() {
                    self.peers.remove(&pk);
                }
            }
        }
        self.ns_selecting.remove(key);
    }

    /// The policies that can select identity `q` as a subject.
    pub fn subject_candidates(&self, q: &IdentityKey, out: &mut BTreeSet<NpKey>) {
        if let Some(s) = self.subjects.get(&SubjectKey::Ns(q.namespace.clone())) {
            out.extend(s.iter().cloned());
        }
        for (k, v) in &q.labels {
            if let Some(s) = self.subjects.get(&SubjectKey::Label(
                q.namespace.clone(),
                k.clone(),
                v.clone(),
            )) {
                out.extend(s.iter().cloned());
            }
        }
    }

    /// The policies that can match identity `q` (in a namespace labelled `ns_labels`)
    /// as a peer.
    pub fn peer_candidates(&self, q: &IdentityKey, ns_labels: &Labels, out: &mut BTreeSet<NpKey>) {
        let mut add = |k: PeerKey| {
            if let Some(s) = self.peers.get(&k) {
                out.extend(s.iter().cloned());
            }
        };
        add(PeerKey::Scan);
        add(PeerKey::Ns(q.namespace.clone()));
        for (k, v) in &q.labels {
            add(PeerKey::Label(k.clone(), v.clone()));
            add(PeerKey::NsPodLabel(
                q.namespace.clone(),
                k.clone(),
                v.clone(),
            ));
        }
        for (k, v) in ns_labels {
            add(PeerKey::NsLabel(k.clone(), v.clone()));
        }
    }

    /// The policies whose peers select namespaces by label.
    pub fn ns_selecting(&self) -> &BTreeSet<NpKey> {
        &self.ns_selecting
    }
}

fn has_ns_selector(spec: &NetworkPolicySpec) -> bool {
    spec.ingress
        .iter()
        .flat_map(|r| &r.from)
        .chain(spec.egress.iter().flat_map(|r| &r.to))
        .any(|p| p.namespace_selector.is_some())
}

/// Identities filed by label and by namespace.
#[derive(Debug, Default)]
pub struct IdentIndex {
    by_label: HashMap<(String, String), BTreeSet<IdentityKey>>,
    by_ns_label: HashMap<(String, String, String), BTreeSet<IdentityKey>>,
    by_ns: HashMap<String, BTreeSet<IdentityKey>>,
}

impl IdentIndex {
    /// File identity `k`.
    pub fn add(&mut self, k: &IdentityKey) {
        for (l, v) in &k.labels {
            self.by_label
                .entry((l.clone(), v.clone()))
                .or_default()
                .insert(k.clone());
            self.by_ns_label
                .entry((k.namespace.clone(), l.clone(), v.clone()))
                .or_default()
                .insert(k.clone());
        }
        self.by_ns
            .entry(k.namespace.clone())
            .or_default()
            .insert(k.clone());
    }

    /// Unfile identity `k`.
    pub fn remove(&mut self, k: &IdentityKey) {
        for (l, v) in &k.labels {
            let key = (l.clone(), v.clone());
            if let Some(s) = self.by_label.get_mut(&key) {
                s.remove(k);
                if s.is_empty() {
                    self.by_label.remove(&key);
                }
            }
            let key = (k.namespace.clone(), l.clone(), v.clone());
            if let Some(s) = self.by_ns_label.get_mut(&key) {
                s.remove(k);
                if s.is_empty() {
                    self.by_ns_label.remove(&key);
                }
            }
        }
        if let Some(s) = self.by_ns.get_mut(&k.namespace) {
            s.remove(k);
            if s.is_empty() {
                self.by_ns.remove(&k.namespace);
            }
        }
    }

    /// The identities of namespace `ns`.
    pub fn in_ns(&self, ns: &str) -> impl Iterator<Item = &IdentityKey> {
        self.by_ns.get(ns).into_iter().flatten()
    }

    /// A superset of the identities NetworkPolicy peer `p` (of a policy in `ns`) can
    /// match (`None`: every identity must be checked). `namespaces` lists the known
    /// namespaces with their labels.
    pub fn peer_candidates<'a>(
        &'a self,
        ns: &str,
        p: &Peer,
        namespaces: impl Iterator<Item = (&'a String, Labels)>,
    ) -> Option<Vec<&'a IdentityKey>> {
        match peer_key(ns, p)? {
            PeerKey::Label(k, v) => {
                Some(self.by_label.get(&(k, v)).into_iter().flatten().collect())
            }
            PeerKey::NsPodLabel(n, k, v) => Some(
                self.by_ns_label
                    .get(&(n, k, v))
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            PeerKey::Ns(n) => Some(self.in_ns(&n).collect()),
            PeerKey::NsLabel(k, v) => Some(
                namespaces
                    .filter(|(_, l)| l.get(&k) == Some(&v))
                    .flat_map(|(n, _)| self.in_ns(n))
                    .collect(),
            ),
            PeerKey::Scan => None,
        }
    }

    /// Every namespace that has identities.
    pub fn namespaces(&self) -> impl Iterator<Item = &String> {
        self.by_ns.keys()
    }
}
