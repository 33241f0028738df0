//! The `bgp` backend driven by the cluster's objects, in labs with real agents: route
//! reflectors from Node `spec.bgp` and BGPPeers, a live move from the node mesh to
//! reflectors under a UDP stream that loses nothing, and clients that keep their routes
//! when every reflector dies (graceful restart).

mod common;

use std::time::Duration;

use common::cluster::{assert_mesh, cluster_lab};
use common::{pid_of, require, trellis};
use trellis_lab::{wait_for, Lab};

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

fn bgp_routes(lab: &Lab, n: usize) -> String {
    let out = lab
        .exec(
            &lab.state.nodes[n].netns,
            &["ip", "route", "show", "proto", "119"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
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
}
