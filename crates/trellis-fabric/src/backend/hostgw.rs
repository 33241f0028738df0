//! `host-gw`: a route to each peer's subnet via the peer's underlay address. Only peers
//! on our own L2 segment can be a next hop; the others are reported unreachable instead
//! of being black-holed through a route the kernel would refuse or misuse.

use crate::{Desired, Local, Peer, Route};

/// The direct route to `peer`, or `None` when it is off our segment.
pub(super) fn route(local: &Local, peer: &Peer) -> Option<Route> {
    local.segment.contains(&peer.address).then(|| Route {
        dst: peer.subnet,
        via: Some(peer.address),
        dev: local.uplink.clone(),
        onlink: false,
    })
}

pub(super) fn desired(local: &Local, peers: &[&Peer]) -> Desired {
    let mut d = Desired::default();
    for p in peers {
        match route(local, p) {
            Some(r) => {
                d.routes.insert(r);
            }
            None => {
                d.unreachable.insert(p.name.clone());
            }
        }
    }
    d
}
