//! The routes learned from every peer (Adj-RIB-In) and the best path per prefix: a pure
//! data structure fed by [`RouteEvent`]s, read by the kernel installer
//! ([`crate::install`]).
//!
//! Best path (RFC 4271 §9.1.2.2, the parts that apply to a node): the shortest AS path,
//! then a route from an eBGP peer over one from iBGP, then the lowest peer address.
//! Equal candidates up to the tie-break on the peer make the ECMP set.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::session::RouteEvent;

/// One peer's route to a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The next hop.
    pub next_hop: Ipv4Addr,
    /// The AS path, nearest first.
    pub as_path: Vec<u32>,
    /// Learned over eBGP.
    pub ebgp: bool,
    /// Kept from a session that went down, for graceful restart (RFC 4724): replaced
    /// or removed when the peer is back and sends End-of-RIB.
    pub stale: bool,
}

/// Every peer's routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rib {
    /// prefix → peer → path.
    routes: BTreeMap<Ipv4Net, BTreeMap<Ipv4Addr, Path>>,
}

impl Rib {
    /// Take a session's event from `peer` (`ebgp`: the session is eBGP). `Down` removes
    /// the peer's routes unless `keep_stale`, which marks them stale instead (the
    /// peer restarts gracefully); `Up`/`EndOfRib` are no changes here, except that
    /// End-of-RIB removes the peer's routes still stale.
    pub fn apply(&mut self, peer: Ipv4Addr, ebgp: bool, keep_stale: bool, e: &RouteEvent) {
        match e {
            RouteEvent::Learned {
                prefix,
                next_hop,
                as_path,
            } => {
                self.routes.entry(prefix.trunc()).or_default().insert(
                    peer,
                    Path {
                        next_hop: *next_hop,
                        as_path: as_path.clone(),
                        ebgp,
                        stale: false,
                    },
                );
            }
            RouteEvent::Withdrawn(prefix) => {
                if let Some(m) = self.routes.get_mut(&prefix.trunc()) {
                    m.remove(&peer);
                }
            }
            RouteEvent::Down(_) if keep_stale => {
                for m in self.routes.values_mut() {
                    if let Some(p) = m.get_mut(&peer) {
                        p.stale = true;
                    }
                }
            }
            RouteEvent::Down(_) => self.forget(peer),
            RouteEvent::EndOfRib => {
                for m in self.routes.values_mut() {
                    if m.get(&peer).is_some_and(|p| p.stale) {
                        m.remove(&peer);
                    }
                }
            }
            RouteEvent::Up(_) => {}
        }
        self.routes.retain(|_, m| !m.is_empty());
    }

    /// Drop `peer`'s routes still stale (its restart time is over).
    pub fn drop_stale(&mut self, peer: Ipv4Addr) {
        for m in self.routes.values_mut() {
            if m.get(&peer).is_some_and(|p| p.stale) {
                m.remove(&peer);
            }
        }
        self.routes.retain(|_, m| !m.is_empty());
    }

    /// Drop every route of `peer` (removed, or its stale time is over).
    pub fn forget(&mut self, peer: Ipv4Addr) {
        for m in self.routes.values_mut() {
            m.remove(&peer);
        }
        self.routes.retain(|_, m| !m.is_empty());
    }

    /// The best next hops of every prefix (more than one: ECMP), in order.
    pub fn best(&self) -> BTreeMap<Ipv4Net, Vec<Ipv4Addr>> {
        self.routes
            .iter()
            .filter_map(|(prefix, paths)| {
                let key = |p: &Path| (p.as_path.len(), !p.ebgp);
                let best = paths.values().map(key).min()?;
                let mut hops: Vec<Ipv4Addr> = paths
                    .values()
                    .filter(|p| key(p) == best)
                    .map(|p| p.next_hop)
                    .collect();
                hops.sort();
                hops.dedup();
                Some((*prefix, hops))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(p: &str, nh: [u8; 4], path: &[u32]) -> RouteEvent {
        RouteEvent::Learned {
            prefix: p.parse().unwrap(),
            next_hop: Ipv4Addr::from(nh),
            as_path: path.to_vec(),
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
            true,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 1], &[65001, 65009]),
        );
        rib.apply(
            b,
            true,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 2], &[65002]),
        );
        assert_eq!(rib.best()[&p], vec![b]);
        // An equally short path: ECMP.
        rib.apply(
            c,
            true,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 3], &[65003]),
        );
        assert_eq!(rib.best()[&p], vec![b, c]);
        // eBGP beats iBGP at equal length.
        let mut r2 = Rib::default();
        r2.apply(
            a,
            false,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 1], &[]),
        );
        r2.apply(
            b,
            true,
            false,
            &learned("10.244.5.0/24", [10, 0, 0, 2], &[]),
        );
        assert_eq!(r2.best()[&p], vec![b]);
        // Withdrawn, and a peer down without graceful restart.
        rib.apply(b, true, false, &RouteEvent::Withdrawn(p));
        assert_eq!(rib.best()[&p], vec![c]);
        rib.apply(c, true, false, &RouteEvent::Down("gone".into()));
        assert_eq!(rib.best()[&p], vec![a]);
        // Graceful restart: a's route is kept (stale) across its restart, and dropped
        // at its End-of-RIB if it did not come again.
        rib.apply(a, true, true, &RouteEvent::Down("restarting".into()));
        assert_eq!(rib.best()[&p], vec![a]);
        rib.apply(a, true, true, &RouteEvent::EndOfRib);
        assert!(rib.best().is_empty());
    }
}
