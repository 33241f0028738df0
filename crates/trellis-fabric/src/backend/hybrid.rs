//! `hybrid`: host-gw routes to peers on our segment, vxlan to the others (Flannel's
//! DirectRouting, Calico's CrossSubnet). The VXLAN device exists whenever the network
//! has a VNI, so a peer moving off-segment needs no device change.

use super::{hostgw, vxlan};
use crate::{Desired, Local, NetworkFabric, Peer};

pub(super) fn desired(net: &NetworkFabric, local: &Local, peers: &[&Peer], mtu: u32) -> Desired {
    let mut d = Desired::default();
    let dev = vxlan::device(net, local, mtu);
    for p in peers {
        match (hostgw::route(local, p), &dev) {
            (Some(r), _) => {
                d.routes.insert(r);
            }
            (None, Some(dev)) => vxlan::peer_entries(&mut d, dev, p),
            (None, None) => {
                d.unreachable.insert(p.name.clone());
            }
        }
    }
    if let Some(dev) = dev {
        d.vxlan.insert(dev);
    }
    d
}
