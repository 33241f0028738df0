//! The `bgp` backend driven by the cluster's objects, in labs with real agents and real
//! routers: route reflectors from Node `spec.bgp` and BGPPeers, a live move from the
//! node mesh to reflectors and back under UDP streams that lose nothing, clients that
//! keep their routes when every reflector dies (graceful restart); racks joined only by
//! BIRD and FRR top-of-rack routers; a GoBGP reflector.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::{add_pod_with, assert_mesh, cluster_lab, serve_node};
use common::{pid_of, require, trellis};
use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::routed::RackRouter;
use trellis_lab::{routers, wait_for, Lab};

/// The BGP sessions node `n` has established, as peer addresses.
fn sessions(lab: &Lab, n: usize) -> Vec<String> {
    let out = lab
        .exec(
            &lab.state.nodes[n].netns,
            &[
                "ss",
                "-Htn",
                "state",
                "established",
                "( sport = :179 or dport = :179 )",
            ],
        )
        .unwrap();
    let mut peers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|a| a.rsplit_once(':').map_or(a, |(ip, _)| ip).to_string())
        .collect();
    peers.sort();
    peers
}

/// Node `n`'s routes learned over BGP (its own subnet's blackhole left out).
fn bgp_routes(lab: &Lab, n: usize) -> String {
    lab.routes_of_proto(&lab.state.nodes[n].netns, 119)
        .lines()
        .filter(|l| !l.starts_with("blackhole"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A UDP stream of `secs` seconds at 20 Mbit/s from pod `from` to pod `to`; returns
/// the iperf3 report's (packets, lost packets).
fn udp_stream(
    lab: &mut Lab,
    from: usize,
    to: usize,
    secs: u32,
) -> std::thread::JoinHandle<(u64, u64)> {
    let server_ip = lab.state.pods[to].ip.unwrap();
    let srv_ns = lab.state.pods[to].netns.clone();
    let cli_ns = lab.state.pods[from].netns.clone();
    let mut iperf = std::process::Command::new("iperf3");
    iperf.args(["-s", "-1"]);
    lab.spawn(&srv_ns, "iperf3 server", iperf).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &cli_ns, "iperf3", "-c"])
            .arg(server_ip.to_string())
            .args([
                "-u",
                "-b",
                "20M",
                "-l",
                "1200",
                "-t",
                &secs.to_string(),
                "-J",
            ])
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let sum = &r["end"]["sum"];
        let packets = sum["packets"].as_u64().unwrap_or(0);
        let lost = sum["lost_packets"].as_u64().unwrap_or(u64::MAX);
        assert!(
            packets > 0,
            "no stream: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (packets, lost)
    })
}

const REFLECTORS: &str = "
apiVersion: trellis/v1
kind: Node
metadata: {name: n1, labels: {route-reflector: 'true'}}
spec: {address: 192.168.77.11, bgp: {routeReflectorClusterID: 244.0.0.1}}
---
apiVersion: trellis/v1
kind: Node
metadata: {name: n2, labels: {route-reflector: 'true'}}
spec: {address: 192.168.77.12, bgp: {routeReflectorClusterID: 244.0.0.1}}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 64512
";

#[test]
fn mesh_to_reflectors_under_a_stream_loses_nothing() {
    require(&["iperf3", "ss"]);
    let t = trellis();
    let mut lab = cluster_lab(4, 0, "bgp", 1);
    assert_mesh(&lab, Duration::from_secs(20), "mesh");
    assert_eq!(sessions(&lab, 2).len(), 3, "n3 meshes with every node");
    // Pod on n3 → pod on n4, two clients of the coming reflectors.
    let stream = udp_stream(&mut lab, 2, 3, 8);
    std::thread::sleep(Duration::from_secs(1));
    lab.apply(&t, REFLECTORS).unwrap();
    // The clients end up peering with the two reflectors only; the reflectors with
    // everyone (each other included: one peerSelector selects both ways).
    let want_client = vec!["192.168.77.11".to_string(), "192.168.77.12".to_string()];
    assert!(
        wait_for(Duration::from_secs(15), || sessions(&lab, 2) == want_client
            && sessions(&lab, 3) == want_client),
        "client sessions: n3 {:?} n4 {:?}",
        sessions(&lab, 2),
        sessions(&lab, 3)
    );
    let (packets, lost) = stream.join().unwrap();
    assert_eq!(lost, 0, "{lost} of {packets} packets lost in the move");
    // Every route is still there, now reflected.
    assert_mesh(&lab, Duration::from_secs(10), "reflectors");
    let routes = bgp_routes(&lab, 2);
    assert_eq!(routes.lines().count(), 3, "n3: {routes}");
    // What the CLI shows: the peering, and n3's two sessions with their prefixes.
    let peers = lab.cli(&t, &["get", "bgppeers"]).unwrap();
    assert!(
        peers.contains("peer-with-route-reflectors") && peers.contains("route-reflector == 'true'"),
        "{peers}"
    );
    let status_ok = |out: &str| {
        let rows: Vec<Vec<&str>> = out
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        rows.len() == 2
            && rows
                .iter()
                .all(|r| r[0] == "n3" && r[3] == "Established" && r[5] == "3" && r[6] == "1")
    };
    let mut status = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            status = lab.cli(&t, &["bgp", "status", "n3"]).unwrap();
            status_ok(&status)
        }),
        "trellis bgp status n3:\n{status}"
    );
    // Both reflectors die: their clients keep every route (graceful restart) and the
    // pods keep talking.
    for name in ["agent n1", "agent n2"] {
        let pid = pid_of(&lab, name);
        lab.stop(pid, true);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        bgp_routes(&lab, 2),
        routes,
        "n3 lost routes with its reflectors"
    );
    let n4_pod = lab.state.pods[3].ip.unwrap();
    assert!(
        lab.ping(&lab.state.pods[2].netns, n4_pod),
        "n3's pod no longer reaches n4's"
    );
    // The reflectors come back, then the cluster moves back to the mesh under a stream:
    // nothing lost either way.
    for n in [0, 1] {
        lab.start_cluster_agent(&t, n, "default", &Timing::default())
            .unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(15), || sessions(&lab, 2) == want_client),
        "n3 did not get its reflectors back: {:?}",
        sessions(&lab, 2)
    );
    let stream = udp_stream(&mut lab, 2, 3, 8);
    std::thread::sleep(Duration::from_secs(1));
    lab.cli(&t, &["delete", "bgppeer", "peer-with-route-reflectors"])
        .unwrap();
    lab.apply(
        &t,
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n\
         spec: {nodeToNodeMeshEnabled: true}\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || sessions(&lab, 2).len() == 3),
        "n3 is not back in the mesh: {:?}",
        sessions(&lab, 2)
    );
    let (packets, lost) = stream.join().unwrap();
    assert_eq!(
        lost, 0,
        "{lost} of {packets} packets lost moving back to the mesh"
    );
    assert_mesh(&lab, Duration::from_secs(10), "back to the mesh");
}

/// Nodes in two racks (one L2 segment each) joined only by their top-of-rack routers —
/// BIRD in rack 1 (AS 65001), FRR in rack 2 (AS 65002), eBGP between them — each node
/// its own AS (65100 + n), peering with its rack's router through a BGPPeer chosen by
/// the node's `rack` label; no node mesh. Pods reach each other across the racks; the
/// routers hold every node's subnet, and a Service's `Local` external IP only from the
/// node with its endpoint. An agent killed and restarted under a stream makes its
/// router withdraw nothing and loses no packet.
#[test]
fn top_of_rack_routers_bird_and_frr_carry_pods_across_racks() {
    require(&[
        "bird",
        "birdc",
        "vtysh",
        "/usr/lib/frr/bgpd",
        "/usr/lib/frr/zebra",
        "iperf3",
    ]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = Lab::new_routed(&[2, 2]).unwrap();
    let in_rack = |lab: &Lab, r: usize| -> Vec<(usize, Ipv4Addr)> {
        (0..lab.state.nodes.len())
            .filter(|n| lab.rack_of(*n) == Some(r))
            .map(|n| (n, lab.state.nodes[n].addr))
            .collect()
    };
    let (r1_nodes, r2_nodes) = (in_rack(&lab, 1), in_rack(&lab, 2));
    // Rack 1: BIRD; rack 2: FRR; eBGP with their nodes and with each other.
    let routers = lab.start_rack_routers().unwrap();
    let (bird, frr) = match &routers[..] {
        [RackRouter::Bird(b), f @ RackRouter::Frr(_)] => (b.clone(), f.clone()),
        other => panic!("expected BIRD then FRR: {other:?}"),
    };
    // The cluster: Nodes declared first (rack label, own AS), then the agents.
    lab.start_server(&t, &timing).unwrap();
    let manifest = format!(
        "{}{}---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: default}}\n\
         spec:\n  nodeToNodeMeshEnabled: false\n  serviceExternalIPs: [{{cidr: 198.51.100.0/24}}]\n",
        network_manifest("default", "bgp"),
        lab.routed_bgp_manifest()
    );
    lab.apply(&t, &manifest).unwrap();
    for n in 0..lab.state.nodes.len() {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
        serve_node(&mut lab, n);
    }
    for n in 0..lab.state.nodes.len() {
        add_pod_with(&mut lab, n, "p1", &format!("LABELS=app=web{n}"));
    }
    assert_mesh(&lab, Duration::from_secs(30), "across racks");
    // Each router holds the other rack's subnets, via the other router.
    let subnets = |lab: &Lab| -> Vec<String> {
        (0..lab.state.nodes.len())
            .map(|n| {
                let node = lab
                    .cli(&t, &["get", "node", &format!("n{}", n + 1), "-o", "json"])
                    .unwrap();
                let v: serde_json::Value = serde_json::from_str(&node).unwrap();
                v["status"]["leases"][0]["cidr"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let subnets = subnets(&lab);
    let bird_routes = RackRouter::Bird(bird.clone()).routes();
    for (i, _) in &r2_nodes {
        assert!(
            bird_routes.contains(&subnets[*i]),
            "BIRD lacks {}: {bird_routes}",
            subnets[*i]
        );
    }
    let frr_routes = frr.routes();
    for (i, _) in &r1_nodes {
        assert!(
            frr_routes.contains(&subnets[*i]),
            "FRR lacks {}: {frr_routes}",
            subnets[*i]
        );
    }
    // A Local Service's external IP: announced only by the node with its endpoint.
    let (ep_node, ep_addr) = r1_nodes[1];
    lab.apply(
        &t,
        &format!(
            "apiVersion: trellis/v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec:\n  selector: {{app: web{ep_node}}}\n  externalIPs: [198.51.100.10]\n  \
             externalTrafficPolicy: Local\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ext = || routers::birdc(&bird, &["show", "route", "198.51.100.10/32", "all"]);
    assert!(
        wait_for(Duration::from_secs(10), || ext()
            .contains(&format!("via {ep_addr}"))),
        "BIRD: {}",
        ext()
    );
    let other = r1_nodes[0].1;
    assert!(
        !ext().contains(&format!("via {other}")),
        "announced by a node without endpoint: {}",
        ext()
    );
    // kill -9 of a rack-1 agent under a UDP stream to a rack-2 pod: BIRD withdraws
    // nothing (graceful restart), and no packet is lost.
    let withdraws = |lab: &Lab| -> String {
        let _ = lab;
        let all = routers::birdc(&bird, &["show", "protocols", "all", "p0"]);
        all.lines()
            .filter(|l| l.contains("Import withdraws"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = withdraws(&lab);
    assert!(!before.is_empty(), "no statistics from BIRD");
    let (src, dst) = (r1_nodes[0].0, r2_nodes[0].0);
    let stream = udp_stream(&mut lab, src, dst, 6);
    std::thread::sleep(Duration::from_secs(1));
    let pid = pid_of(&lab, &format!("agent n{}", src + 1));
    lab.stop(pid, true);
    lab.start_cluster_agent(&t, src, "default", &timing)
        .unwrap();
    let (packets, lost) = stream.join().unwrap();
    assert_eq!(
        lost, 0,
        "{lost} of {packets} packets lost across the restart"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        withdraws(&lab),
        before,
        "BIRD saw withdrawals from the restarted node"
    );
}

/// Three nodes without a mesh, each peering only with a GoBGP route reflector (AS
/// 64512, the nodes its clients): every node gets the others' subnets from it, next
/// hops unchanged, and the pods reach each other.
#[test]
fn a_gobgp_reflector_serves_the_nodes() {
    require(&["gobgpd", "gobgp"]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = Lab::new(4).unwrap();
    // The fourth namespace is GoBGP's, not a node's.
    let rr = lab.state.nodes.pop().unwrap();
    let clients: Vec<Ipv4Addr> = lab.state.nodes.iter().map(|n| n.addr).collect();
    let api = routers::start_gobgp_reflector(
        &mut lab,
        &rr.netns,
        64512,
        rr.addr,
        Ipv4Addr::new(244, 0, 0, 9),
        &clients,
    )
    .unwrap();
    lab.start_server(&t, &timing).unwrap();
    let manifest = format!(
        "{}---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: default}}\n\
         spec: {{nodeToNodeMeshEnabled: false}}\n---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\n\
         metadata: {{name: gobgp-rr}}\nspec: {{peerIP: '{}', asNumber: 64512}}\n",
        network_manifest("default", "bgp"),
        rr.addr
    );
    lab.apply(&t, &manifest).unwrap();
    for n in 0..3 {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
        serve_node(&mut lab, n);
        add_pod_with(&mut lab, n, "p1", "");
    }
    assert_mesh(&lab, Duration::from_secs(30), "through GoBGP");
    for n in 0..3 {
        let routes = bgp_routes(&lab, n);
        assert_eq!(routes.lines().count(), 2, "n{}: {routes}", n + 1);
        assert_eq!(
            sessions(&lab, n),
            vec![rr.addr.to_string()],
            "n{} peers with GoBGP only",
            n + 1
        );
    }
    let rib = routers::gobgp(&lab, &rr.netns, api, &["global", "rib"]);
    assert_eq!(rib.matches("10.244.").count(), 3, "GoBGP's table: {rib}");
}
