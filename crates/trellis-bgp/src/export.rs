//! What this speaker announces to each kind of peer (Adj-RIB-Out), as pure functions.
//!
//! - Our own prefixes ([`LocalRoute`]) go to every peer: to eBGP peers with our AS as the
//!   path, to iBGP peers with an empty path and LOCAL_PREF 100; the next hop is our
//!   address.
//! - A node is no transit: routes learned from peers are not passed on, except by a
//!   route reflector (RFC 4456 §6), which passes the best iBGP path on inside the AS —
//!   a client's to every iBGP peer, a non-client's to clients only — with ORIGINATOR_ID
//!   set and its cluster ID put first in CLUSTER_LIST, the rest unchanged.
//! - A route never goes back to the peer it came from, nor to an eBGP peer whose AS is
//!   in its path, nor past the peer's export filter ([`Eligible`]).
//!
//! The speaker keeps one table per [`Class`] of peer ([`Exports`]); each session diffs
//! it against what it sent, only over the prefixes that changed when it has seen every
//! version, over everything when it skipped one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::attrs::{Attrs, PathKey};
use crate::policy::Filter;
use crate::rib::Best;

/// A prefix this speaker originates, with the communities it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalRoute {
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Also a blackhole route in our kernel, behind any other route to the prefix: a
    /// node's pod subnet, so that an address in it that nothing routes is dropped here
    /// and does not leak elsewhere.
    pub blackhole: bool,
}

/// The kinds of peer that get the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Another AS.
    Ebgp,
    /// Our AS, not a client of ours.
    Ibgp,
    /// Our AS, a route-reflector client of ours.
    Client,
}

/// Who we are, as the exports need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    /// Our AS.
    pub asn: u32,
    /// Our address: next hop of our own routes.
    pub address: Ipv4Addr,
    /// Our cluster, when we reflect routes.
    pub cluster_id: Option<Ipv4Addr>,
}

/// One exported route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// The attributes as sent.
    pub attrs: Arc<Attrs>,
    /// The peer it was learned from (never sent back there); `None` for our own.
    pub from: Option<Ipv4Addr>,
    /// The other paths as good, as sent, with their peers: for add-path peers (RFC
    /// 7911), which get every one; others get the best alone.
    pub more: Vec<(Arc<Attrs>, Ipv4Addr)>,
}

impl Out {
    /// The path identifier of the path from `from` (our own: 1): the same for a path
    /// whatever else changes, so a peer replaces it in place.
    fn path_id(from: Option<Ipv4Addr>) -> u32 {
        from.map_or(1, u32::from)
    }
}

/// What goes to peers of `class` for one prefix.
pub fn route_for(
    me: &Me,
    class: Class,
    local: Option<&LocalRoute>,
    best: Option<&Best>,
) -> Option<Out> {
    if let Some(l) = local {
        let mut a = Attrs::local(me.address);
        a.communities = l.communities.clone();
        a.large_communities = l.large_communities.clone();
        match class {
            Class::Ebgp => a.as_path = vec![me.asn],
            Class::Ibgp | Class::Client => a.local_pref = Some(100),
        }
        return Some(Out {
            attrs: Arc::new(a),
            from: None,
            more: Vec::new(),
        });
    }
    let cluster = me.cluster_id?;
    let b = best?;
    let src = b.path.source;
    let reflect = !src.ebgp
        && match class {
            Class::Client => true,
            Class::Ibgp => src.client,
            Class::Ebgp => false,
        };
    if !reflect {
        return None;
    }
    let reflected = |peer: Ipv4Addr, attrs: &Attrs| {
        let mut a = attrs.clone();
        a.originator_id.get_or_insert(peer);
        a.cluster_list.insert(0, cluster);
        Arc::new(a)
    };
    Some(Out {
        attrs: reflected(b.peer, &b.path.attrs),
        from: Some(b.peer),
        more: b
            .equal
            .iter()
            .filter(|(_, p)| !p.source.ebgp && (class == Class::Client || p.source.client))
            .map(|(peer, p)| (reflected(*peer, &p.attrs), *peer))
            .collect(),
    })
}

/// One class's table, as published to its sessions.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    /// Bumped by every change.
    pub version: u64,
    /// Every exported route.
    pub routes: Arc<BTreeMap<Ipv4Net, Out>>,
    /// The prefixes changed since the previous version.
    pub changed: Arc<BTreeSet<Ipv4Net>>,
}

impl Exports {
    /// The next version: `prefixes` recomputed with `f`.
    pub fn next(
        &self,
        prefixes: &BTreeSet<Ipv4Net>,
        mut f: impl FnMut(Ipv4Net) -> Option<Out>,
    ) -> Option<Exports> {
        let mut routes = (*self.routes).clone();
        let mut changed = BTreeSet::new();
        for p in prefixes {
            let new = f(*p);
            if new.as_ref() == routes.get(p) {
                continue;
            }
            changed.insert(*p);
            match new {
                Some(o) => routes.insert(*p, o),
                None => routes.remove(p),
            };
        }
        if changed.is_empty() {
            return None;
        }
        Some(Exports {
            version: self.version + 1,
            routes: Arc::new(routes),
            changed: Arc::new(changed),
        })
    }
}

/// Which routes one peer may get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligible {
    /// The peer's address.
    pub address: Ipv4Addr,
    /// The peer's AS, when it is eBGP.
    pub ebgp_asn: Option<u32>,
    /// Its export filter.
    pub filter: Filter,
}

impl Eligible {
    fn allows(&self, prefix: Ipv4Net, from: Option<Ipv4Addr>, attrs: &Attrs) -> bool {
        from != Some(self.address)
            && self
                .ebgp_asn
                .is_none_or(|asn| !attrs.as_path.contains(&asn))
            && self.filter.accepts(prefix)
    }

    /// The paths this peer gets of `o`: every allowed one with its identifier when it
    /// speaks add-path, else the first allowed one (the best, unless the best may not go
    /// to it) with identifier 0.
    fn paths(&self, prefix: Ipv4Net, o: &Out, add_path: bool) -> Vec<(u32, Arc<Attrs>)> {
        let all = std::iter::once((o.from, &o.attrs))
            .chain(o.more.iter().map(|(a, from)| (Some(*from), a)))
            .filter(|(from, a)| self.allows(prefix, *from, a));
        if add_path {
            all.map(|(from, a)| (Out::path_id(from), a.clone()))
                .collect()
        } else {
            all.take(1).map(|(_, a)| (0, a.clone())).collect()
        }
    }
}

/// Whether the peer has the path `key` of `table` (it was sent the table).
pub fn has(table: &BTreeMap<Ipv4Net, Out>, key: &PathKey, peer: &Eligible, add_path: bool) -> bool {
    table.get(&key.prefix).is_some_and(|o| {
        peer.paths(key.prefix, o, add_path)
            .iter()
            .any(|(id, _)| *id == key.path_id)
    })
}

/// What one session must send to bring the peer from what it was sent of `old` (the
/// table of the last version it got; empty at the start) to `new`: the withdrawals and
/// the announcements, with path identifiers when the session speaks add-path. With
/// `only`, just those prefixes are compared. A session keeps no copy of what it sent:
/// the tables are shared by every session of a class.
pub fn diff(
    old: &BTreeMap<Ipv4Net, Out>,
    new: &BTreeMap<Ipv4Net, Out>,
    only: Option<&BTreeSet<Ipv4Net>>,
    peer: &Eligible,
    add_path: bool,
) -> (Vec<PathKey>, Vec<(PathKey, Arc<Attrs>)>) {
    let seen = |t: &BTreeMap<Ipv4Net, Out>, p: &Ipv4Net| -> Vec<(u32, Arc<Attrs>)> {
        t.get(p)
            .map(|o| peer.paths(*p, o, add_path))
            .unwrap_or_default()
    };
    let mut withdraw = Vec::new();
    let mut announce = Vec::new();
    let mut one = |p: &Ipv4Net| {
        let (was, now) = (seen(old, p), seen(new, p));
        for (id, a) in &now {
            if !was.iter().any(|(i, w)| i == id && w == a) {
                announce.push((
                    PathKey {
                        prefix: *p,
                        path_id: *id,
                    },
                    a.clone(),
                ));
            }
        }
        for (id, _) in &was {
            if !now.iter().any(|(i, _)| i == id) {
                withdraw.push(PathKey {
                    prefix: *p,
                    path_id: *id,
                });
            }
        }
    };
    match only {
        Some(ps) => ps.iter().for_each(&mut one),
        None => {
            let all: BTreeSet<&Ipv4Net> = old.keys().chain(new.keys()).collect();
            all.into_iter().for_each(one);
        }
    }
    (withdraw, announce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::{Path, Source};

    fn me(cluster: Option<[u8; 4]>) -> Me {
        Me {
            asn: 64512,
            address: Ipv4Addr::new(10, 0, 0, 1),
            cluster_id: cluster.map(Ipv4Addr::from),
        }
    }

    fn best(peer: [u8; 4], client: bool, ebgp: bool) -> Best {
        let peer = Ipv4Addr::from(peer);
        Best {
            peer,
            path: Path {
                attrs: Arc::new(Attrs {
                    local_pref: Some(100),
                    ..Attrs::local(peer)
                }),
                source: Source { ebgp, client },
                stale: false,
            },
            next_hops: vec![peer],
            equal: vec![],
        }
    }

    #[test]
    fn our_routes_go_everywhere_in_each_class_form() {
        let l = LocalRoute {
            communities: vec![(64512 << 16) | 100],
            ..Default::default()
        };
        let e = route_for(&me(None), Class::Ebgp, Some(&l), None).unwrap();
        assert_eq!(e.attrs.as_path, vec![64512]);
        assert_eq!(e.attrs.local_pref, None);
        assert_eq!(e.attrs.communities, l.communities);
        let i = route_for(&me(None), Class::Ibgp, Some(&l), None).unwrap();
        assert!(i.attrs.as_path.is_empty());
        assert_eq!(i.attrs.local_pref, Some(100));
        assert_eq!(i.from, None);
        // A node that is no reflector passes nothing on.
        let b = best([10, 0, 0, 5], false, false);
        for class in [Class::Ebgp, Class::Ibgp, Class::Client] {
            assert_eq!(route_for(&me(None), class, None, Some(&b)), None);
        }
    }

    #[test]
    fn a_reflector_passes_client_routes_to_all_and_others_to_clients() {
        let rr = me(Some([1, 1, 1, 1]));
        let from_client = best([10, 0, 0, 5], true, false);
        let from_peer = best([10, 0, 0, 6], false, false);
        let from_ebgp = best([10, 0, 0, 7], false, true);
        let o = route_for(&rr, Class::Ibgp, None, Some(&from_client)).unwrap();
        assert_eq!(o.from, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(o.attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(o.attrs.cluster_list, vec![Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(o.attrs.next_hop, Ipv4Addr::new(10, 0, 0, 5), "unchanged");
        assert!(route_for(&rr, Class::Client, None, Some(&from_client)).is_some());
        assert!(route_for(&rr, Class::Client, None, Some(&from_peer)).is_some());
        assert!(route_for(&rr, Class::Ibgp, None, Some(&from_peer)).is_none());
        assert!(route_for(&rr, Class::Ebgp, None, Some(&from_client)).is_none());
        for class in [Class::Ebgp, Class::Ibgp, Class::Client] {
            assert!(route_for(&rr, class, None, Some(&from_ebgp)).is_none());
        }
    }

    #[test]
    fn add_path_peers_get_every_equal_path_others_the_best() {
        let rr = me(Some([1, 1, 1, 1]));
        let p: Ipv4Net = "10.96.0.10/32".parse().unwrap();
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 6));
        let mut two = best([10, 0, 0, 5], true, false);
        let other = best([10, 0, 0, 6], true, false);
        two.equal = vec![(b, other.path.clone())];
        let o = route_for(&rr, Class::Client, None, Some(&two)).unwrap();
        assert_eq!(o.more.len(), 1);
        let table = BTreeMap::from([(p, o)]);
        let client = |addr: [u8; 4]| Eligible {
            address: Ipv4Addr::from(addr),
            ebgp_asn: None,
            filter: Filter::default(),
        };
        // An add-path client gets both, each with its own identifier.
        let (_, got) = diff(&BTreeMap::new(), &table, None, &client([10, 0, 0, 7]), true);
        let ids: Vec<u32> = got.iter().map(|(k, _)| k.path_id).collect();
        assert_eq!(ids, vec![u32::from(a), u32::from(b)]);
        // Without add-path: the best alone; and the originator of the best gets the
        // other path instead of its own.
        let (_, got) = diff(
            &BTreeMap::new(),
            &table,
            None,
            &client([10, 0, 0, 7]),
            false,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.path_id, 0);
        assert_eq!(got[0].1.next_hop, a);
        let (_, got) = diff(
            &BTreeMap::new(),
            &table,
            None,
            &client([10, 0, 0, 5]),
            false,
        );
        assert_eq!(got[0].1.next_hop, b);
        // One of the two goes: an add-path client gets one withdrawal.
        let one = BTreeMap::from([(
            p,
            route_for(&rr, Class::Client, None, Some(&other)).unwrap(),
        )]);
        let (w, a2) = diff(&table, &one, None, &client([10, 0, 0, 7]), true);
        assert_eq!(
            w,
            vec![PathKey {
                prefix: p,
                path_id: u32::from(a)
            }]
        );
        assert!(a2.is_empty(), "the remaining path is unchanged: {a2:?}");
    }

    #[test]
    fn sessions_get_only_what_changed_and_never_their_own_routes() {
        let rr = me(Some([1, 1, 1, 1]));
        let (p1, p2): (Ipv4Net, Ipv4Net) = (
            "10.244.1.0/24".parse().unwrap(),
            "10.244.2.0/24".parse().unwrap(),
        );
        let b1 = best([10, 0, 0, 5], true, false);
        let v0 = Exports::default();
        let v1 = v0
            .next(&BTreeSet::from([p1, p2]), |p| {
                route_for(
                    &rr,
                    Class::Client,
                    (p == p2).then_some(&LocalRoute::default()),
                    Some(&b1),
                )
            })
            .unwrap();
        assert_eq!(v1.version, 1);
        let client5 = Eligible {
            address: Ipv4Addr::new(10, 0, 0, 5),
            ebgp_asn: None,
            filter: Filter::default(),
        };
        let (w, a) = diff(&BTreeMap::new(), &v1.routes, None, &client5, false);
        assert!(w.is_empty());
        assert_eq!(
            a.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![PathKey::plain(p2)]
        );
        let client6 = Eligible {
            address: Ipv4Addr::new(10, 0, 0, 6),
            ..client5.clone()
        };
        let (_, a) = diff(&BTreeMap::new(), &v1.routes, None, &client6, false);
        assert_eq!(a.len(), 2);
        // p1's origin withdraws it: one change, one withdrawal.
        let v2 = v1
            .next(&BTreeSet::from([p1]), |p| {
                route_for(
                    &rr,
                    Class::Client,
                    (p == p2).then_some(&LocalRoute::default()),
                    None,
                )
            })
            .unwrap();
        assert_eq!(*v2.changed, BTreeSet::from([p1]));
        assert_eq!(
            diff(&v1.routes, &v2.routes, Some(&v2.changed), &client6, false),
            (vec![PathKey::plain(p1)], vec![])
        );
        assert!(v2
            .next(&BTreeSet::from([p2]), |_| v2.routes.get(&p2).cloned())
            .is_none());
    }
}
