//! Backends: each computes only its variable part, the [`Desired`] kernel state for one
//! network and the current peers. Chosen by an explicit `match` on the Network's
//! `spec.backend`; nothing here touches the kernel.

mod hostgw;
mod hybrid;
mod udp;
mod vxlan;

use crate::{pod_mtu, Backend, Desired, Local, NetworkFabric, Peer};

/// What `network`'s backend wants for `peers` (the other nodes holding a subnet in it;
/// this node is filtered out if present).
pub fn desired(net: &NetworkFabric, local: &Local, peers: &[Peer]) -> Desired {
    let peers: Vec<&Peer> = peers
        .iter()
        .filter(|p| p.name != local.name && p.subnet != net.subnet)
        .collect();
    let mtu = pod_mtu(net, local);
    match net.backend {
        Backend::Vxlan => vxlan::desired(net, local, &peers, mtu),
        Backend::HostGw => hostgw::desired(local, &peers),
        Backend::Hybrid => hybrid::desired(net, local, &peers, mtu),
        Backend::Udp => udp::desired(net, &peers, mtu),
        // l2: pods sit on the underlay segment itself and are reached by ARP; bgp: the
        // routes come from the BGP speaker. Neither needs anything from the fabric.
        Backend::L2 | Backend::Bgp => Desired::default(),
    }
}

#[cfg(test)]
mod tests;
