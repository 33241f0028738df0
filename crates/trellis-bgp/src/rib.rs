//! The routes learned from every peer (Adj-RIB-In) and the best path per prefix: a pure
//! data structure fed by [`RouteEvent`]s, read by the kernel installer
//! ([`crate::install`]) and the exports ([`crate::export`]).
//!
//! Best path (RFC 4271 §9.1.2.2 and RFC 4456 §9, the parts that apply to a node): a
//! fresh path over a stale one (kept through a restart or a peer's removal), the
//! highest LOCAL_PREF (100 when absent), the shortest AS path, the lowest ORIGIN, a route
//! from an eBGP peer over one from iBGP, the shortest CLUSTER_LIST, then the lowest
//! originator (or peer) address. Candidates equal up to the eBGP/iBGP step make the
//! ECMP set.
//!
//! Changes are tracked: [`Rib::settle`] recomputes the best path of only the prefixes
//! touched since the last call and returns those whose best path changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::attrs::Attrs;
use crate::session::RouteEvent;

/// What kind of peer a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Source {
    /// The session is eBGP.
    pub ebgp: bool,
    /// The peer is a route-reflector client of ours (RFC 4456).
    pub client: bool,
}

/// One peer's route to a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Its attributes.
    pub attrs: Arc<Attrs>,
    /// The peer's kind.
    pub source: Source,
    /// Kept from a session that went down, for graceful restart (RFC 4724): replaced
    /// or removed when the peer is back and sends End-of-RIB.
    pub stale: bool,
}

/// The best path of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    /// The peer of the best path.
    pub peer: Ipv4Addr,
    /// The best path.
    pub path: Path,
    /// The next hops of every path as good (ECMP), in order.
    pub next_hops: Vec<Ipv4Addr>,
    /// The other paths as good (ECMP), with their peers: what a reflector passes on
    /// besides the best to add-path peers.
    pub equal: Vec<(Ipv4Addr, Path)>,
}

/// Every peer's routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rib {
    /// prefix → (peer, path identifier) → path.
    routes: BTreeMap<Ipv4Net, BTreeMap<(Ipv4Addr, u32), Path>>,
    best: BTreeMap<Ipv4Net, Best>,
    dirty: BTreeSet<Ipv4Net>,
}

/// The preference key of a path: smaller is better.
#[allow(clippy::type_complexity)]
fn rank(peer: Ipv4Addr, p: &Path) -> (bool, u32, usize, u8, bool, usize, Ipv4Addr, Ipv4Addr) {
    let a = &p.attrs;
    (
        p.stale,
        u32::MAX - a.local_pref.unwrap_or(100),
        a.as_path.len(),
        a.origin,
        !p.source.ebgp,
        a.cluster_list.len(),
        a.originator_id.unwrap_or(peer),
        peer,
    )
}

impl Rib {
    /// Take a session's event from `peer`. `Down` removes the peer's routes unless
    /// `keep_stale`, which marks them stale instead (the peer restarts gracefully);
    /// End-of-RIB removes the peer's routes still stale; `Up` changes nothing.
    pub fn apply(&mut self, peer: Ipv4Addr, source: Source, keep_stale: bool, e: &RouteEvent) {
        match e {
            RouteEvent::Learned {
                prefix,
                path_id,
                attrs,
            } => {
                let prefix = prefix.trunc();
                self.routes.entry(prefix).or_default().insert(
                    (peer, *path_id),
                    Path {
                        attrs: attrs.clone(),
                        source,
                        stale: false,
                    },
                );
                self.dirty.insert(prefix);
            }
            RouteEvent::Withdrawn(prefix, path_id) => {
                let prefix = prefix.trunc();
                if let Some(m) = self.routes.get_mut(&prefix) {
                    if m.remove(&(peer, *path_id)).is_some() {
                        self.dirty.insert(prefix);
                    }
                    if m.is_empty() {
                        self.routes.remove(&prefix);
                    }
                }
            }
            RouteEvent::Down(_) if keep_stale => self.mark_stale(peer),
            RouteEvent::Down(_) => self.forget(peer),
            RouteEvent::EndOfRib => self.drop_stale(peer),
            RouteEvent::Up(_) => {}
        }
    }

    fn remove_where(&mut self, peer: Ipv4Addr, only_stale: bool) {
        let dirty = &mut self.dirty;
        self.routes.retain(|prefix, m| {
            let before = m.len();
            m.retain(|(p, _), path| *p != peer || (only_stale && !path.stale));
            if m.len() != before {
                dirty.insert(*prefix);
            }
            !m.is_empty()
        });
    }

    /// Mark every route of `peer` stale: kept, but any fresh path is preferred.
    pub fn mark_stale(&mut self, peer: Ipv4Addr) {
        for (prefix, m) in self.routes.iter_mut() {
            for p in m.range_mut((peer, 0)..=(peer, u32::MAX)).map(|(_, p)| p) {
                if !p.stale {
                    p.stale = true;
                    self.dirty.insert(*prefix);
                }
            }
        }
    }

    /// Drop `peer`'s routes still stale (its restart time is over, or its End-of-RIB
    /// came).
    pub fn drop_stale(&mut self, peer: Ipv4Addr) {
        self.remove_where(peer, true);
    }

    /// Drop every route of `peer` (removed, or down without graceful restart).
    pub fn forget(&mut self, peer: Ipv4Addr) {
        self.remove_where(peer, false);
    }

    /// Recompute the best paths of the prefixes changed since the last call; returns
    /// the prefixes whose best path (or ECMP set) changed.
    pub fn settle(&mut self) -> BTreeSet<Ipv4Net> {
        let mut changed = BTreeSet::new();
        for prefix in std::mem::take(&mut self.dirty) {
            let best = self.routes.get(&prefix).and_then(|paths| {
                let (key, path) = paths.iter().min_by_key(|((a, _), p)| rank(*a, p))?;
                let head = |a: Ipv4Addr, p: &Path| {
                    let r = rank(a, p);
                    (r.0, r.1, r.2, r.3, r.4)
                };
                let top = head(key.0, path);
                let equal: Vec<(Ipv4Addr, Path)> = paths
                    .iter()
                    .filter(|((a, _), p)| head(*a, p) == top)
                    .filter(|(k, _)| *k != key)
                    .map(|((a, _), p)| (*a, p.clone()))
                    .collect();
                let mut next_hops: Vec<Ipv4Addr> = std::iter::once(path.attrs.next_hop)
                    .chain(equal.iter().map(|(_, p)| p.attrs.next_hop))
                    .collect();
                next_hops.sort();
                next_hops.dedup();
                Some(Best {
                    peer: key.0,
                    path: path.clone(),
                    next_hops,
                    equal,
                })
            });
            if best.as_ref() == self.best.get(&prefix) {
                continue;
            }
            changed.insert(prefix);
            match best {
                Some(b) => self.best.insert(prefix, b),
                None => self.best.remove(&prefix),
            };
        }
        changed
    }

    /// The best path of every prefix (as of the last [`Rib::settle`]).
    pub fn best(&self) -> &BTreeMap<Ipv4Net, Best> {
        &self.best
    }

    /// The best next hops of every prefix (as of the last [`Rib::settle`]).
    pub fn next_hops(&self) -> BTreeMap<Ipv4Net, Vec<Ipv4Addr>> {
        self.best
            .iter()
            .map(|(p, b)| (*p, b.next_hops.clone()))
            .collect()
    }

    /// How many prefixes each peer has announced (counting stale ones), in one pass.
    pub fn received_by_peer(&self) -> std::collections::HashMap<Ipv4Addr, usize> {
        let mut out = std::collections::HashMap::new();
        for paths in self.routes.values() {
            let mut last = None;
            // Keys are ordered by peer: count each peer once per prefix.
            for (peer, _) in paths.keys() {
                if last != Some(*peer) {
                    *out.entry(*peer).or_insert(0) += 1;
                    last = Some(*peer);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EBGP: Source = Source {
        ebgp: true,
        client: false,
    };
    const IBGP: Source = Source {
        ebgp: false,
        client: false,
    };

    fn learned(p: &str, nh: [u8; 4], path: &[u32]) -> RouteEvent {
        RouteEvent::Learned {
            prefix: p.parse().unwrap(),
            path_id: 0,
            attrs: Arc::new(Attrs {
                as_path: path.to_vec(),
                ..Attrs::local(Ipv4Addr::from(nh))
            }),
        }
    }

    #[test]
    fn best_paths_ecmp_withdrawals_and_stale_routes() {
        let (a, b, c) = (
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
        );
        let p: Ipv4Net = "10.244.5.0/24".parse().unwrap();
        let mut rib = Rib::default();
        rib.apply(
            a,
            EBGP,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 1], &[65001, 65009]),
        );
        rib.apply(
            b,
            EBGP,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 2], &[65002]),
        );
        assert_eq!(rib.settle(), BTreeSet::from([p]));
        assert_eq!(rib.next_hops()[&p], vec![b]);
        assert!(rib.settle().is_empty(), "nothing changed since");
        // An equally short path: ECMP.
        rib.apply(
            c,
            EBGP,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 3], &[65003]),
        );
        rib.settle();
        assert_eq!(rib.next_hops()[&p], vec![b, c]);
        // eBGP beats iBGP at equal length; a higher LOCAL_PREF beats both.
        let mut r2 = Rib::default();
        r2.apply(
            a,
            IBGP,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 1], &[]),
        );
        r2.apply(
            b,
            EBGP,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 2], &[]),
        );
        r2.settle();
        assert_eq!(r2.next_hops()[&p], vec![b]);
        let preferred = RouteEvent::Learned {
            prefix: p,
            path_id: 0,
            attrs: Arc::new(Attrs {
                local_pref: Some(200),
                ..Attrs::local(a)
            }),
        };
        r2.apply(a, IBGP, false, &preferred);
        r2.settle();
        assert_eq!(r2.best()[&p].peer, a);
        // Withdrawn, and a peer down without graceful restart.
        rib.apply(b, EBGP, false, &RouteEvent::Withdrawn(p, 0));
        rib.settle();
        assert_eq!(rib.next_hops()[&p], vec![c]);
        rib.apply(c, EBGP, false, &RouteEvent::Down("gone".into()));
        rib.settle();
        assert_eq!(rib.next_hops()[&p], vec![a]);
        assert_eq!(rib.received_by_peer()[&a], 1);
        // Graceful restart: a's route is kept (stale) across its restart, and dropped
        // at its End-of-RIB if it did not come again.
        rib.apply(a, EBGP, true, &RouteEvent::Down("restarting".into()));
        rib.settle();
        assert_eq!(rib.next_hops()[&p], vec![a]);
        assert!(rib.best()[&p].path.stale);
        // A fresh path, however long, is preferred to a stale one.
        rib.apply(
            c,
            EBGP,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 3], &[1, 2, 3]),
        );
        rib.settle();
        assert_eq!(rib.next_hops()[&p], vec![c]);
        rib.apply(c, EBGP, false, &RouteEvent::Withdrawn(p, 0));
        rib.apply(a, EBGP, true, &RouteEvent::EndOfRib);
        assert_eq!(rib.settle(), BTreeSet::from([p]));
        assert!(rib.best().is_empty());
    }

    #[test]
    fn a_shorter_cluster_list_wins() {
        let p: Ipv4Net = "10.244.5.0/24".parse().unwrap();
        let nh = Ipv4Addr::new(10, 0, 0, 9);
        let via = |clusters: Vec<Ipv4Addr>| RouteEvent::Learned {
            prefix: p,
            path_id: 0,
            attrs: Arc::new(Attrs {
                originator_id: Some(nh),
                cluster_list: clusters,
                ..Attrs::local(nh)
            }),
        };
        let (r1, r2) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mut rib = Rib::default();
        rib.apply(r1, IBGP, false, &via(vec![r1, r2]));
        rib.apply(r2, IBGP, false, &via(vec![r2]));
        rib.settle();
        assert_eq!(rib.best()[&p].peer, r2);
    }
}
