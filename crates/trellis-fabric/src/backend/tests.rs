use super::desired;
use crate::{vtep_mac, Backend, Local, NetworkFabric, Peer};

fn local() -> Local {
    Local {
        name: "n1".into(),
        address: "192.168.77.11".parse().unwrap(),
        uplink: "eth0".into(),
        segment: "192.168.77.11/24".parse().unwrap(),
        uplink_mtu: 1500,
    }
}

fn net(backend: Backend) -> NetworkFabric {
    NetworkFabric {
        name: "default".into(),
        backend,
        vni: Some(7),
        mtu: None,
        subnet: "10.244.1.0/24".parse().unwrap(),
    }
}

fn peers() -> Vec<Peer> {
    vec![
        // ourselves: ignored
        Peer {
            name: "n1".into(),
            address: "192.168.77.11".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        },
        Peer {
            name: "n2".into(),
            address: "192.168.77.12".parse().unwrap(),
            subnet: "10.244.2.0/24".parse().unwrap(),
        },
        Peer {
            name: "far".into(),
            address: "192.168.78.13".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
        },
    ]
}

#[test]
fn vxlan_has_a_route_neighbour_and_fdb_entry_per_peer() {
    let d = desired(&net(Backend::Vxlan), &local(), &peers());
    let dev = d.vxlan.iter().next().unwrap();
    assert_eq!(dev.name, "trl.7");
    assert_eq!(dev.mtu, 1450);
    assert_eq!(dev.address.to_string(), "10.244.1.0/32");
    assert_eq!(dev.mac, vtep_mac("10.244.1.0/24".parse().unwrap()));
    assert_eq!(d.routes.len(), 2);
    assert_eq!(d.neighbours.len(), 2);
    assert_eq!(d.fdb.len(), 2);
    let r = d
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.244.2.0/24")
        .unwrap();
    assert_eq!(r.via, Some("10.244.2.0".parse().unwrap()));
    assert!(r.onlink);
    assert!(d.fdb.iter().any(|f| f.dst.to_string() == "192.168.78.13"));
    assert!(d.unreachable.is_empty());
}

#[test]
fn vxlan_without_a_vni_builds_nothing() {
    let mut n = net(Backend::Vxlan);
    n.vni = None;
    let d = desired(&n, &local(), &peers());
    assert!(d.vxlan.is_empty() && d.routes.is_empty());
    assert_eq!(d.unreachable.len(), 2);
}

#[test]
fn host_gw_reports_peers_off_the_segment() {
    let d = desired(&net(Backend::HostGw), &local(), &peers());
    assert!(d.vxlan.is_empty());
    assert_eq!(d.routes.len(), 1);
    let r = d.routes.iter().next().unwrap();
    assert_eq!(r.via, Some("192.168.77.12".parse().unwrap()));
    assert_eq!(r.dev, "eth0");
    assert_eq!(d.unreachable.iter().collect::<Vec<_>>(), ["far"]);
}

#[test]
fn hybrid_routes_directly_on_segment_and_tunnels_the_rest() {
    let d = desired(&net(Backend::Hybrid), &local(), &peers());
    assert_eq!(d.vxlan.len(), 1);
    let near = d
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.244.2.0/24")
        .unwrap();
    assert_eq!(near.dev, "eth0");
    let far = d
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.244.3.0/24")
        .unwrap();
    assert_eq!(far.dev, "trl.7");
    assert_eq!(d.fdb.len(), 1);
    assert!(d.unreachable.is_empty());
}

#[test]
fn udp_routes_into_the_tun_device_and_mtu_follows_overhead() {
    let d = desired(&net(Backend::Udp), &local(), &peers());
    let tun = d.tun.iter().next().unwrap();
    assert_eq!(tun.mtu, 1472);
    assert!(d
        .routes
        .iter()
        .all(|r| r.dev == tun.name && r.via.is_none()));
    let mut n = net(Backend::Udp);
    n.mtu = Some(1400);
    assert_eq!(
        desired(&n, &local(), &peers())
            .tun
            .iter()
            .next()
            .unwrap()
            .mtu,
        1400
    );
}

#[test]
fn l2_and_bgp_need_nothing() {
    for b in [Backend::L2, Backend::Bgp] {
        assert_eq!(desired(&net(b), &local(), &peers()), Default::default());
    }
}
