//! From atoms to kernel set elements.
//!
//! Policies contribute *atoms* (“subject identity 7 may reach peer identity 9 on TCP
//! 80-90”). The kernel's sets are keyed by addresses on both sides (nothing else is
//! needed per packet than the connection's addresses, protocol and port): an atom
//! becomes one element per pod of this node with the subject identity and per pod with
//! the peer identity. [`Atoms::set_subject`] and [`Atoms::set_peer`] re-emit the atoms
//! of an identity when its pods change, so a pod joining an identity costs the elements
//! of that pod only.
//!
//! Several policies may contribute the same or overlapping atoms. The kernel's interval
//! sets (nftables' `pipapo`) refuse an element that starts or ends inside another one,
//! so the atoms of one *group* (same subject, same peer, same protocol) are merged into
//! disjoint elements; single ports and whole protocols go to hash sets, true ranges to
//! interval sets. [`Atoms`] counts the contributions of every atom and keeps, per group,
//! the elements it put in the kernel, so a change re-merges only the groups it touched.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::model::{Dir, PortSpan};

/// The name of a set of the policy table.
pub type SetName = String;

/// One element: the key, the end of an interval (interval sets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    /// The key bytes (each field padded to 4 bytes).
    pub key: Vec<u8>,
    /// The last key of the interval, for interval sets.
    pub key_end: Option<Vec<u8>>,
}

/// Element changes for the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Elements to delete, per set (applied before `add`).
    pub del: BTreeMap<SetName, Vec<Elem>>,
    /// Elements to add, per set.
    pub add: BTreeMap<SetName, Vec<Elem>>,
    /// The ClusterNetworkPolicy rule layout changed: chains and per-rule sets must be
    /// rewritten (a full sync).
    pub layout_changed: bool,
}

impl Delta {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.del.is_empty() && !self.layout_changed
    }

    /// How many element changes.
    pub fn len(&self) -> usize {
        self.add.values().map(Vec::len).sum::<usize>()
            + self.del.values().map(Vec::len).sum::<usize>()
    }
}

/// The smallest unit a policy contributes. `s` is a subject identity (spelled out per
/// pod of this node), `q` a peer identity (spelled out per pod anywhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    /// `local`: a pod of this node.
    Local(Ipv4Addr),
    /// `node-addrs`: an address of this node (its own connections are not policed).
    NodeAddr(Ipv4Addr),
    /// `node-dns`: a DNS server of the node every pod may reach (address, protocol).
    Dns(Ipv4Addr, u8),
    /// `np-*-iso`: subject `s` is isolated for the direction.
    Iso(Dir, u32),
    /// A NetworkPolicy allows subject `s` ↔ peer identity `q` on `span`.
    Peer(Dir, u32, u32, PortSpan),
    /// A NetworkPolicy allows subject `s` ↔ addresses `lo..=hi` on `span`.
    Net(Dir, u32, u32, u32, PortSpan),
    /// A ClusterNetworkPolicy's subject set holds subject `s`.
    CnpSubject(SetName, u32),
    /// A per-rule peer set of a ClusterNetworkPolicy holds the pods of identity `q`.
    CnpId(SetName, u32),
    /// A per-rule address set of a ClusterNetworkPolicy: `lo..=hi`.
    CnpNet(SetName, u32, u32),
    /// A per-rule port set of a ClusterNetworkPolicy (protocol always set).
    CnpPort(SetName, PortSpan),
    /// An egress rule's named port: destination (peer) identity, protocol, port.
    CnpNamedPeer(SetName, u32, u8, u16),
    /// An ingress rule's named port: destination (subject) identity, protocol, port.
    CnpNamedSubject(SetName, u32, u8, u16),
}

/// Which atoms merge together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Group {
    /// Exact elements: one atom, its elements (per subject / peer address).
    Exact(Atom),
    /// Subject, peer, protocol (`None`: any protocol and port).
    Peer(Dir, u32, u32, Option<u8>),
    /// Subject, protocol: address ranges.
    Net(Dir, u32, Option<u8>),
    /// A ClusterNetworkPolicy address set.
    CnpNet(SetName),
    /// A ClusterNetworkPolicy port set, per protocol.
    CnpPort(SetName, u8),
}

impl Group {
    /// The subject identity spelled out per local pod, if any.
    fn subject(&self) -> Option<u32> {
        match self {
            Group::Exact(Atom::Iso(_, s))
            | Group::Exact(Atom::CnpSubject(_, s))
            | Group::Exact(Atom::CnpNamedSubject(_, s, ..))
            | Group::Peer(_, s, ..)
            | Group::Net(_, s, _) => Some(*s),
            _ => None,
        }
    }

    /// The peer identity spelled out per pod, if any.
    fn peer(&self) -> Option<u32> {
        match self {
            Group::Exact(Atom::CnpId(_, q))
            | Group::Exact(Atom::CnpNamedPeer(_, q, ..))
            | Group::Peer(_, _, q, _) => Some(*q),
            _ => None,
        }
    }
}

/// The NetworkPolicy set names of a direction.
#[derive(Debug, Clone, Copy)]
pub struct NpSets {
    /// `subject . peer`: any protocol and port (hash).
    pub any: &'static str,
    /// `subject . peer . proto`: every port of a protocol (hash).
    pub proto: &'static str,
    /// `subject . peer . proto . port` (hash).
    pub port: &'static str,
    /// `subject . peer . proto . port range` (intervals).
    pub range: &'static str,
    /// `subject . address range`: any protocol and port (intervals).
    pub cidr_any: &'static str,
    /// `subject . address range . proto . port range` (intervals).
    pub cidr: &'static str,
    /// `subject`: isolated.
    pub iso: &'static str,
}

/// The NetworkPolicy sets of `dir`.
pub fn np_sets(dir: Dir) -> NpSets {
    match dir {
        Dir::Ingress => NpSets {
            any: "np-in-any",
            proto: "np-in-proto",
            port: "np-in-port",
            range: "np-in-range",
            cidr_any: "np-in-cidr-any",
            cidr: "np-in-cidr",
            iso: "np-in-iso",
        },
        Dir::Egress => NpSets {
            any: "np-out-any",
            proto: "np-out-proto",
            port: "np-out-port",
            range: "np-out-range",
            cidr_any: "np-out-cidr-any",
            cidr: "np-out-cidr",
            iso: "np-out-iso",
        },
    }
}

fn group_of(a: &Atom) -> Group {
    match a {
        Atom::Peer(d, s, q, span) => Group::Peer(*d, *s, *q, span.proto),
        Atom::Net(d, s, _, _, span) => Group::Net(*d, *s, span.proto),
        Atom::CnpNet(set, ..) => Group::CnpNet(set.clone()),
        Atom::CnpPort(set, span) => Group::CnpPort(set.clone(), span.proto.unwrap_or(0)),
        other => Group::Exact(other.clone()),
    }
}

fn u32f(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn addrf(a: Ipv4Addr) -> [u8; 4] {
    a.octets()
}

fn protof(p: u8) -> [u8; 4] {
    [p, 0, 0, 0]
}

fn portf(p: u16) -> [u8; 4] {
    let b = p.to_be_bytes();
    [b[0], b[1], 0, 0]
}

fn cat(fields: &[[u8; 4]]) -> Vec<u8> {
    fields.iter().flatten().copied().collect()
}

fn exact(key: Vec<u8>) -> Elem {
    Elem { key, key_end: None }
}

fn range(lo: Vec<u8>, hi: Vec<u8>) -> Elem {
    Elem {
        key: lo,
        key_end: Some(hi),
    }
}

/// Merge inclusive ranges into disjoint ones (adjacent ranges join).
pub fn merge(mut r: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    r.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// An inclusive address range and an inclusive port range.
pub type Box2 = ((u32, u32), (u16, u16));

/// Disjoint boxes covering the union of `boxes` (address range × port range): the
/// ports are cut into elementary segments, the addresses of each segment merged, and
/// neighbouring segments with equal addresses joined.
pub fn disjoint_boxes(boxes: &[Box2]) -> Vec<Box2> {
    let mut cuts: BTreeSet<u32> = BTreeSet::new();
    for (_, (lo, hi)) in boxes {
        cuts.insert(u32::from(*lo));
        cuts.insert(u32::from(*hi) + 1);
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out: Vec<Box2> = Vec::new();
    // The merged addresses of the segment being built, and its first and last port.
    type Pending = (Vec<(u32, u32)>, u16, u16);
    let mut prev: Option<Pending> = None;
    for w in cuts.windows(2) {
        let (seg_lo, seg_hi) = (w[0], w[1] - 1);
        let addrs = merge(
            boxes
                .iter()
                .filter(|(_, (lo, hi))| u32::from(*lo) <= seg_lo && seg_hi <= u32::from(*hi))
                .map(|(a, _)| *a)
                .collect(),
        );
        let (seg_lo, seg_hi) = (seg_lo as u16, seg_hi as u16);
        match &mut prev {
            Some((pa, _, phi)) if *pa == addrs && u32::from(*phi) + 1 == u32::from(seg_lo) => {
                *phi = seg_hi
            }
            _ => {
                if let Some((pa, plo, phi)) = prev.take() {
                    out.extend(pa.into_iter().map(|a| (a, (plo, phi))));
                }
                prev = Some((addrs, seg_lo, seg_hi));
            }
        }
    }
    if let Some((pa, plo, phi)) = prev {
        out.extend(pa.into_iter().map(|a| (a, (plo, phi))));
    }
    out
}

/// The kernel elements of one group from its atoms, for the subject's local pods and
/// the peer's pods.
fn elements(
    g: &Group,
    atoms: &HashSet<Atom>,
    subjects: &BTreeSet<Ipv4Addr>,
    peers: &BTreeSet<Ipv4Addr>,
) -> Vec<(SetName, Elem)> {
    let mut out = Vec::new();
    match g {
        Group::Exact(a) => match a {
            Atom::Local(ip) => out.push(("local".into(), exact(addrf(*ip).to_vec()))),
            Atom::NodeAddr(ip) => out.push(("node-addrs".into(), exact(addrf(*ip).to_vec()))),
            Atom::Dns(ip, p) => out.push((
                "node-dns".into(),
                exact(cat(&[addrf(*ip), protof(*p), portf(53)])),
            )),
            Atom::Iso(d, _) => {
                for s in subjects {
                    out.push((np_sets(*d).iso.into(), exact(addrf(*s).to_vec())));
                }
            }
            Atom::CnpSubject(set, _) => {
                for s in subjects {
                    out.push((set.clone(), exact(addrf(*s).to_vec())));
                }
            }
            Atom::CnpNamedSubject(set, _, p, port) => {
                for s in subjects {
                    out.push((
                        set.clone(),
                        exact(cat(&[addrf(*s), protof(*p), portf(*port)])),
                    ));
                }
            }
            Atom::CnpId(set, _) => {
                for q in peers {
                    out.push((set.clone(), exact(addrf(*q).to_vec())));
                }
            }
            Atom::CnpNamedPeer(set, _, p, port) => {
                for q in peers {
                    out.push((
                        set.clone(),
                        exact(cat(&[addrf(*q), protof(*p), portf(*port)])),
                    ));
                }
            }
            Atom::Peer(..) | Atom::Net(..) | Atom::CnpNet(..) | Atom::CnpPort(..) => {
                unreachable!("grouped atom {a:?}")
            }
        },
        Group::Peer(d, _, _, proto) => {
            let sets = np_sets(*d);
            let ranges = match proto {
                None => Vec::new(),
                Some(_) => merge(
                    atoms
                        .iter()
                        .filter_map(|a| match a {
                            Atom::Peer(_, _, _, sp) => Some((u32::from(sp.lo), u32::from(sp.hi))),
                            _ => None,
                        })
                        .collect(),
                ),
            };
            for s in subjects {
                for q in peers {
                    let (s, q) = (addrf(*s), addrf(*q));
                    let Some(p) = proto else {
                        out.push((sets.any.into(), exact(cat(&[s, q]))));
                        continue;
                    };
                    for (lo, hi) in &ranges {
                        let (lo, hi) = (*lo as u16, *hi as u16);
                        if lo == 0 && hi == u16::MAX {
                            out.push((sets.proto.into(), exact(cat(&[s, q, protof(*p)]))));
                        } else if lo == hi {
                            out.push((
                                sets.port.into(),
                                exact(cat(&[s, q, protof(*p), portf(lo)])),
                            ));
                        } else {
                            out.push((
                                sets.range.into(),
                                range(
                                    cat(&[s, q, protof(*p), portf(lo)]),
                                    cat(&[s, q, protof(*p), portf(hi)]),
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Group::Net(d, _, proto) => {
            let sets = np_sets(*d);
            match proto {
                None => {
                    let r = merge(
                        atoms
                            .iter()
                            .filter_map(|a| match a {
                                Atom::Net(_, _, lo, hi, _) => Some((*lo, *hi)),
                                _ => None,
                            })
                            .collect(),
                    );
                    for s in subjects {
                        for (lo, hi) in &r {
                            out.push((
                                sets.cidr_any.into(),
                                range(cat(&[addrf(*s), u32f(*lo)]), cat(&[addrf(*s), u32f(*hi)])),
                            ));
                        }
                    }
                }
                Some(p) => {
                    let boxes: Vec<Box2> = atoms
                        .iter()
                        .filter_map(|a| match a {
                            Atom::Net(_, _, lo, hi, sp) => Some(((*lo, *hi), (sp.lo, sp.hi))),
                            _ => None,
                        })
                        .collect();
                    let boxes = disjoint_boxes(&boxes);
                    for s in subjects {
                        for ((alo, ahi), (plo, phi)) in &boxes {
                            let k = |a: u32, port: u16| {
                                cat(&[addrf(*s), u32f(a), protof(*p), portf(port)])
                            };
                            out.push((sets.cidr.into(), range(k(*alo, *plo), k(*ahi, *phi))));
                        }
                    }
                }
            }
        }
        Group::CnpNet(set) => {
            let r = merge(
                atoms
                    .iter()
                    .filter_map(|a| match a {
                        Atom::CnpNet(_, lo, hi) => Some((*lo, *hi)),
                        _ => None,
                    })
                    .collect(),
            );
            for (lo, hi) in r {
                out.push((
                    set.clone(),
                    range(
                        cat(&[u32f(lo), protof(0)]),
                        cat(&[u32f(hi), protof(u8::MAX)]),
                    ),
                ));
            }
        }
        Group::CnpPort(set, p) => {
            let r = merge(
                atoms
                    .iter()
                    .filter_map(|a| match a {
                        Atom::CnpPort(_, sp) => Some((u32::from(sp.lo), u32::from(sp.hi))),
                        _ => None,
                    })
                    .collect(),
            );
            for (lo, hi) in r {
                out.push((
                    set.clone(),
                    range(
                        cat(&[protof(*p), portf(lo as u16)]),
                        cat(&[protof(*p), portf(hi as u16)]),
                    ),
                ));
            }
        }
    }
    out
}

/// A multiset of atoms and the kernel elements it stands for.
#[derive(Debug, Default)]
pub struct Atoms {
    counts: HashMap<Atom, u32>,
    members: HashMap<Group, HashSet<Atom>>,
    emitted: HashMap<Group, Vec<(SetName, Elem)>>,
    /// This node's pods of each subject identity.
    subjects: HashMap<u32, BTreeSet<Ipv4Addr>>,
    /// Every pod of each peer identity.
    peers: HashMap<u32, BTreeSet<Ipv4Addr>>,
    /// The live groups of each subject / peer identity.
    by_subject: HashMap<u32, HashSet<Group>>,
    by_peer: HashMap<u32, HashSet<Group>>,
}

impl Atoms {
    /// Replace contribution `old` by `new`; the element changes go to `delta`.
    pub fn replace(&mut self, old: &HashSet<Atom>, new: &HashSet<Atom>, delta: &mut Delta) {
        let mut dirty: HashSet<Group> = HashSet::new();
        for a in old.difference(new) {
            let c = self.counts.get_mut(a).expect("counted atom");
            *c -= 1;
            if *c == 0 {
                self.counts.remove(a);
                let g = group_of(a);
                if let Some(m) = self.members.get_mut(&g) {
                    m.remove(a);
                }
                dirty.insert(g);
            }
        }
        for a in new.difference(old) {
            let c = self.counts.entry(a.clone()).or_insert(0);
            *c += 1;
            if *c == 1 {
                let g = group_of(a);
                self.members.entry(g.clone()).or_default().insert(a.clone());
                dirty.insert(g);
            }
        }
        for g in dirty {
            self.emit(g, delta);
        }
    }

    /// This node's pods with identity `s` are now `addrs`: re-emit its subject groups.
    pub fn set_subject(&mut self, s: u32, addrs: BTreeSet<Ipv4Addr>, delta: &mut Delta) {
        self.set_members(true, s, addrs, delta);
    }

    /// The pods with identity `q` are now `addrs`: re-emit its peer groups.
    pub fn set_peer(&mut self, q: u32, addrs: BTreeSet<Ipv4Addr>, delta: &mut Delta) {
        self.set_members(false, q, addrs, delta);
    }

    fn set_members(
        &mut self,
        subject: bool,
        id: u32,
        addrs: BTreeSet<Ipv4Addr>,
        delta: &mut Delta,
    ) {
        let (map, index) = if subject {
            (&mut self.subjects, &self.by_subject)
        } else {
            (&mut self.peers, &self.by_peer)
        };
        if map.get(&id).map_or(addrs.is_empty(), |a| *a == addrs) {
            return;
        }
        if addrs.is_empty() {
            map.remove(&id);
        } else {
            map.insert(id, addrs);
        }
        let groups: Vec<Group> = index
            .get(&id)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        for g in groups {
            self.emit(g, delta);
        }
    }

    /// Recompute group `g`'s elements and record the difference.
    fn emit(&mut self, g: Group, delta: &mut Delta) {
        let empty = BTreeSet::new();
        let (subject, peer) = (g.subject(), g.peer());
        let live = self.members.get(&g).is_some_and(|m| !m.is_empty());
        let now = if live {
            let subjects = subject
                .and_then(|s| self.subjects.get(&s))
                .unwrap_or(&empty);
            let peers = peer.and_then(|q| self.peers.get(&q)).unwrap_or(&empty);
            elements(&g, &self.members[&g], subjects, peers)
        } else {
            self.members.remove(&g);
            Vec::new()
        };
        for (id, index) in [(subject, &mut self.by_subject), (peer, &mut self.by_peer)] {
            let Some(id) = id else { continue };
            let idx = index.entry(id).or_default();
            if live {
                idx.insert(g.clone());
            } else {
                idx.remove(&g);
                if idx.is_empty() {
                    index.remove(&id);
                }
            }
        }
        let before = self.emitted.remove(&g).unwrap_or_default();
        if before != now {
            let b: HashSet<&(SetName, Elem)> = before.iter().collect();
            let n: HashSet<&(SetName, Elem)> = now.iter().collect();
            for (set, e) in before.iter().filter(|x| !n.contains(x)) {
                delta.del.entry(set.clone()).or_default().push(e.clone());
            }
            for (set, e) in now.iter().filter(|x| !b.contains(x)) {
                delta.add.entry(set.clone()).or_default().push(e.clone());
            }
        }
        if !now.is_empty() {
            self.emitted.insert(g, now);
        }
    }

    /// Every element wanted now, per set.
    pub fn elements(&self) -> BTreeMap<SetName, BTreeSet<Elem>> {
        let mut out: BTreeMap<SetName, BTreeSet<Elem>> = BTreeMap::new();
        for v in self.emitted.values() {
            for (set, e) in v {
                out.entry(set.clone()).or_default().insert(e.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]),
            vec![(1, 9), (20, 30)]
        );
    }

    #[test]
    fn boxes_become_disjoint_and_cover_the_same_points() {
        let boxes = vec![
            ((0, 100), (80, 80)),
            ((50, 200), (80, 90)),
            ((300, 300), (0, 65535)),
            ((10, 20), (85, 85)),
        ];
        let out = disjoint_boxes(&boxes);
        // Disjoint: no point of one box inside another.
        for (i, a) in out.iter().enumerate() {
            for b in &out[i + 1..] {
                let overlap =
                    a.0 .0 <= b.0 .1 && b.0 .0 <= a.0 .1 && a.1 .0 <= b.1 .1 && b.1 .0 <= a.1 .1;
                assert!(!overlap, "{a:?} overlaps {b:?}");
            }
        }
        // Same coverage on a grid of sample points.
        for addr in [0, 10, 15, 20, 21, 49, 50, 100, 101, 200, 201, 299, 300, 301] {
            for port in [0u16, 79, 80, 81, 85, 89, 90, 91, 65535] {
                let inside = |bs: &[Box2]| {
                    bs.iter().any(|((alo, ahi), (plo, phi))| {
                        (*alo..=*ahi).contains(&addr) && (*plo..=*phi).contains(&port)
                    })
                };
                assert_eq!(inside(&boxes), inside(&out), "addr {addr} port {port}");
            }
        }
    }

    #[test]
    fn overlapping_contributions_merge_and_unmerge() {
        let mut atoms = Atoms::default();
        atoms.set_subject(
            1,
            [Ipv4Addr::new(10, 0, 0, 1)].into(),
            &mut Delta::default(),
        );
        atoms.set_peer(
            2,
            [Ipv4Addr::new(10, 0, 0, 2)].into(),
            &mut Delta::default(),
        );
        let span = |lo, hi| PortSpan {
            proto: Some(6),
            lo,
            hi,
        };
        let a: HashSet<Atom> = [Atom::Peer(Dir::Ingress, 1, 2, span(80, 80))].into();
        let b: HashSet<Atom> = [Atom::Peer(Dir::Ingress, 1, 2, span(80, 90))].into();
        let mut d = Delta::default();
        atoms.replace(&HashSet::new(), &a, &mut d);
        assert_eq!(d.add["np-in-port"].len(), 1);
        let mut d = Delta::default();
        atoms.replace(&HashSet::new(), &b, &mut d);
        // 80 is replaced by 80-90: one delete, one add.
        assert_eq!(
            (d.del["np-in-port"].len(), d.add["np-in-range"].len()),
            (1, 1)
        );
        let mut d = Delta::default();
        atoms.replace(&b, &HashSet::new(), &mut d);
        assert_eq!(
            (d.del["np-in-range"].len(), d.add["np-in-port"].len()),
            (1, 1)
        );
        let mut d = Delta::default();
        atoms.replace(&a, &HashSet::new(), &mut d);
        assert_eq!(d.del["np-in-port"].len(), 1);
        assert!(atoms.elements().is_empty());
        // The same atom from two contributions counts twice.
        let mut d = Delta::default();
        atoms.replace(&HashSet::new(), &a, &mut d);
        atoms.replace(&HashSet::new(), &a, &mut d);
        let mut d = Delta::default();
        atoms.replace(&a, &HashSet::new(), &mut d);
        assert!(d.is_empty(), "still held by the other contribution");
    }
}
