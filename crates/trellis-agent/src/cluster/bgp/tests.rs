use super::*;
use serde_json::{json, Value};

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn network(name: &str, backend: &str) -> Network {
    parse(json!({
        "apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": name},
        "spec": {"cidr": "10.244.0.0/16", "backend": backend}
    }))
}

fn node(name: &str, addr: &str, labels: Value, bgp: Value, leases: &[(&str, &str)]) -> Node {
    let leases: Vec<_> = leases
        .iter()
        .map(|(n, c)| json!({"network": n, "cidr": c}))
        .collect();
    let mut spec = json!({"address": addr});
    if !bgp.is_null() {
        spec["bgp"] = bgp;
    }
    parse(json!({
        "apiVersion": "trellis/v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"ready": true, "leases": leases}
    }))
}

fn calico<T: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value) -> T {
    parse(
        json!({"apiVersion": "trellis/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}),
    )
}

struct World {
    nets: Vec<Network>,
    nodes: Vec<Node>,
    config: Option<BgpConfiguration>,
    peers: Vec<BgpPeer>,
    filters: Vec<BgpFilter>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    endpoints: Vec<Endpoint>,
}

impl World {
    fn three_nodes() -> Self {
        World {
            nets: vec![network("pods", "bgp"), network("other", "vxlan")],
            nodes: vec![
                node(
                    "n1",
                    "192.0.2.1",
                    json!({}),
                    Value::Null,
                    &[("pods", "10.244.0.0/24")],
                ),
                node(
                    "n2",
                    "192.0.2.2",
                    json!({}),
                    Value::Null,
                    &[("pods", "10.244.1.0/24")],
                ),
                node(
                    "n3",
                    "192.0.2.3",
                    json!({}),
                    Value::Null,
                    &[("other", "10.1.0.0/24")],
                ),
            ],
            config: None,
            peers: vec![],
            filters: vec![],
            secrets: vec![],
            services: vec![],
            endpoints: vec![],
        }
    }

    fn desired(&self, me: &str, served: &[(&str, &str)]) -> Option<Desired> {
        let served: Vec<(String, Ipv4Net)> = served
            .iter()
            .map(|(n, c)| (n.to_string(), c.parse().unwrap()))
            .collect();
        let refs = |v| v;
        desired(&Inputs {
            node: me,
            served: &served,
            networks: &self.nets.iter().collect::<Vec<_>>(),
            nodes: &self.nodes.iter().collect::<Vec<_>>(),
            config: self.config.as_ref(),
            peers: &refs(self.peers.iter().collect::<Vec<_>>()),
            filters: &self.filters.iter().collect::<Vec<_>>(),
            secrets: &self.secrets.iter().collect::<Vec<_>>(),
            services: &self.services.iter().collect::<Vec<_>>(),
            endpoints: &self.endpoints.iter().collect::<Vec<_>>(),
        })
    }
}

fn addrs(d: &Desired) -> Vec<String> {
    d.peers.iter().map(|p| p.address.to_string()).collect()
}

fn prefixes(d: &Desired) -> Vec<String> {
    d.routes.keys().map(|p| p.to_string()).collect()
}

#[test]
fn the_mesh_is_every_ready_node_of_a_bgp_network() {
    let w = World::three_nodes();
    let d = w.desired("n1", &[("pods", "10.244.0.0/24")]).unwrap();
    assert_eq!(prefixes(&d), ["10.244.0.0/24"]);
    assert_eq!(addrs(&d), ["192.0.2.2"]);
    assert_eq!(d.settings.asn, DEFAULT_AS_NUMBER);
    assert!(!d.peers.iter().next().unwrap().client);
    // No bgp network served here and no BGPPeer: no speaker.
    assert_eq!(w.desired("n3", &[("other", "10.1.0.0/24")]), None);
}

#[test]
fn reflectors_from_node_labels_and_a_bgp_peer() {
    let mut w = World::three_nodes();
    w.nodes[0] = node(
        "n1",
        "192.0.2.1",
        json!({"route-reflector": "true"}),
        json!({"routeReflectorClusterID": "244.0.0.1"}),
        &[("pods", "10.244.0.0/24")],
    );
    w.nodes[2] = node(
        "n3",
        "192.0.2.3",
        json!({}),
        Value::Null,
        &[("pods", "10.244.2.0/24")],
    );
    w.config = Some(calico(
        "BGPConfiguration",
        "default",
        json!({"nodeToNodeMeshEnabled": false}),
    ));
    w.peers = vec![calico(
        "BGPPeer",
        "to-rr",
        json!({"nodeSelector": "!has(route-reflector)", "peerSelector": "route-reflector == 'true'"}),
    )];
    // A client peers with the reflector only.
    let d2 = w.desired("n2", &[("pods", "10.244.1.0/24")]).unwrap();
    assert_eq!(addrs(&d2), ["192.0.2.1"]);
    assert!(!d2.peers.iter().next().unwrap().client);
    assert_eq!(d2.settings.cluster_id, None);
    // The reflector peers (the other way round) with both clients, as clients.
    let d1 = w.desired("n1", &[("pods", "10.244.0.0/24")]).unwrap();
    assert_eq!(addrs(&d1), ["192.0.2.2", "192.0.2.3"]);
    assert!(d1.peers.iter().all(|p| p.client));
    assert_eq!(d1.settings.cluster_id, Some(Ipv4Addr::new(244, 0, 0, 1)));
}

#[test]
fn a_router_peer_with_password_timers_and_filters() {
    let mut w = World::three_nodes();
    w.nodes[0] = node(
        "n1",
        "192.0.2.1",
        json!({"rack": "a"}),
        json!({"asNumber": 65010}),
        &[("pods", "10.244.0.0/24")],
    );
    w.peers = vec![
        calico(
            "BGPPeer",
            "tor-a",
            json!({"nodeSelector": "rack == 'a'", "peerIP": "192.0.2.254:1179", "asNumber": 65000,
                   "holdTime": "30s", "filters": ["pods-only"], "bfdEnabled": true, "maxRestartTime": "5m",
                   "password": {"secretKeyRef": {"name": "bgp", "key": "tor-a"}}}),
        ),
        // A peer at this node's own address is no peer.
        calico(
            "BGPPeer",
            "self",
            json!({"node": "n1", "peerIP": "192.0.2.1", "asNumber": 65000}),
        ),
    ];
    w.filters = vec![calico(
        "BGPFilter",
        "pods-only",
        json!({"exportV4": [{"action": "Reject", "matchOperator": "NotIn", "cidr": "10.244.0.0/16"}]}),
    )];
    // The Secret is missing: the peering waits for it, and says so.
    let d = w.desired("n1", &[("pods", "10.244.0.0/24")]).unwrap();
    assert_eq!(addrs(&d), ["192.0.2.2"]);
    assert!(d.problems[0].contains("tor-a"), "{:?}", d.problems);
    w.secrets = vec![parse(json!({"apiVersion": "trellis/v1", "kind": "Secret",
        "metadata": {"name": "bgp", "namespace": "trellis-system"},
        "spec": {"data": {"tor-a": "czNjcmV0"}}}))];
    let d = w.desired("n1", &[("pods", "10.244.0.0/24")]).unwrap();
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(d.settings.asn, 65010);
    let tor = d
        .peers
        .iter()
        .find(|p| p.address == Ipv4Addr::new(192, 0, 2, 254))
        .unwrap();
    assert_eq!(
        (tor.asn, tor.port, tor.hold_time, tor.password.as_deref()),
        (65000, Some(1179), Some(30), Some("s3cret"))
    );
    assert!(tor.bfd);
    assert_eq!(tor.restart_time, Some(300));
    assert!(!tor.export.accepts("192.168.0.0/24".parse().unwrap()));
    assert!(tor.export.accepts("10.244.0.0/24".parse().unwrap()));
    // The other node's session gets the node's own AS as its peer AS.
    let d2 = w.desired("n2", &[("pods", "10.244.1.0/24")]).unwrap();
    assert_eq!(d2.peers.iter().next().unwrap().asn, 65010);
}

#[test]
fn service_addresses_follow_the_configuration_and_local_endpoints() {
    let mut w = World::three_nodes();
    w.config = Some(calico(
        "BGPConfiguration",
        "default",
        json!({"serviceClusterIPs": [{"cidr": "10.96.0.0/16"}],
               "serviceExternalIPs": [{"cidr": "198.51.100.0/24"}],
               "serviceLoadBalancerIPs": [{"cidr": "203.0.113.0/24"}],
               "communities": [{"name": "svc", "value": "64512:300"}],
               "prefixAdvertisements": [{"cidr": "198.51.100.0/24", "communities": ["svc", "64512:1:2"]}]}),
    ));
    let svc = |name: &str, ip: &str, ext: &str, policy: &str| -> Service {
        parse(json!({"apiVersion": "trellis/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "clusterIP": ip,
                     "externalIPs": [ext], "externalTrafficPolicy": policy,
                     "ports": [{"port": 80}]},
            "status": {"loadBalancerIP": format!("203.0.113.{}", &ip[8..])}}))
    };
    w.services = vec![
        svc("web", "10.96.0.10", "198.51.100.10", "Cluster"),
        svc("db", "10.96.0.20", "198.51.100.20", "Local"),
    ];
    w.endpoints = vec![parse(
        json!({"apiVersion": "trellis/v1", "kind": "Endpoint",
        "metadata": {"name": "db-1", "namespace": "default", "labels": {"app": "db"}},
        "spec": {"containerId": "c", "ifname": "eth0", "network": "pods", "node": "n2",
                 "ip": "10.244.1.5", "ready": true}}),
    )];
    let d1 = w.desired("n1", &[("pods", "10.244.0.0/24")]).unwrap();
    assert_eq!(
        prefixes(&d1),
        [
            "10.96.0.0/16",
            "10.244.0.0/24",
            "198.51.100.10/32",
            "203.0.113.10/32"
        ]
    );
    let d2 = w.desired("n2", &[("pods", "10.244.1.0/24")]).unwrap();
    assert_eq!(
        prefixes(&d2),
        [
            "10.96.0.0/16",
            "10.96.0.20/32",
            "10.244.1.0/24",
            "198.51.100.10/32",
            "198.51.100.20/32",
            "203.0.113.10/32",
            "203.0.113.20/32"
        ]
    );
    let ext = &d2.routes[&"198.51.100.20/32".parse().unwrap()];
    assert_eq!(ext.communities, vec![(64512 << 16) | 300]);
    assert_eq!(ext.large_communities, vec![(64512, 1, 2)]);
}
