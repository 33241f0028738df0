//! `vxlan`: one kernel VXLAN device per network, with a static FDB entry and a static
//! neighbour entry per peer (no learning, no multicast), and a route per peer subnet via
//! the peer's VTEP address (its subnet's network address) on the device.

use crate::{
    naming, vtep_mac, Desired, Fdb, Local, Neighbour, NetworkFabric, Peer, Route, VxlanDevice,
    VXLAN_PORT,
};

/// The VXLAN device of `net` on this node, or `None` when the network has no VNI yet.
pub(super) fn device(net: &NetworkFabric, local: &Local, mtu: u32) -> Option<VxlanDevice> {
    let vni = net.vni?;
    Some(VxlanDevice {
        name: naming::vxlan_device(vni),
        vni,
        local: local.address,
        uplink: local.uplink.clone(),
        port: VXLAN_PORT,
        mtu,
        mac: vtep_mac(net.subnet),
        address: ipnet::Ipv4Net::new(net.subnet.network(), 32).expect("/32"),
    })
}

/// Route, neighbour and FDB entry that send `peer`'s subnet through `dev`.
pub(super) fn peer_entries(d: &mut Desired, dev: &VxlanDevice, peer: &Peer) {
    let vtep = peer.subnet.network();
    let mac = vtep_mac(peer.subnet);
    d.routes.insert(Route {
        dst: peer.subnet,
        via: Some(vtep),
        dev: dev.name.clone(),
        onlink: true,
    });
    d.neighbours.insert(Neighbour {
        dev: dev.name.clone(),
        ip: vtep,
        mac,
    });
    d.fdb.insert(Fdb {
        dev: dev.name.clone(),
        mac,
        dst: peer.address,
    });
}

pub(super) fn desired(net: &NetworkFabric, local: &Local, peers: &[&Peer], mtu: u32) -> Desired {
    let mut d = Desired::default();
    let Some(dev) = device(net, local, mtu) else {
        // No VNI yet (the server allocates it): nothing to build; every peer waits.
        d.unreachable = peers.iter().map(|p| p.name.clone()).collect();
        return d;
    };
    for p in peers {
        peer_entries(&mut d, &dev, p);
    }
    d.vxlan.insert(dev);
    d
}
