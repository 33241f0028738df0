//! `udp`: a TUN device per network and a route per peer subnet into it; the agent's
//! packet pump ([`crate::udp`]) carries the packets to the peers over UDP. The slow
//! path, for hosts without VXLAN: every packet crosses into userspace twice.

use crate::{naming, Desired, NetworkFabric, Peer, Route, TunDevice};

pub(super) fn desired(net: &NetworkFabric, peers: &[&Peer], mtu: u32) -> Desired {
    let mut d = Desired::default();
    let dev = TunDevice {
        name: naming::tun_device(&net.name),
        mtu,
        address: ipnet::Ipv4Net::new(net.subnet.network(), 32).expect("/32"),
    };
    for p in peers {
        d.routes.insert(Route {
            dst: p.subnet,
            via: None,
            dev: dev.name.clone(),
            onlink: false,
        });
    }
    d.tun.insert(dev);
    d
}
