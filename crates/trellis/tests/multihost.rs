//! The multi-host pod network in labs of at least three nodes: a server in the underlay,
//! agents in cluster mode, pods on every node. Full-mesh reachability (ICMP and TCP) for
//! every backend, nodes joining and leaving, `kill -9` of an agent under a live iperf3
//! stream, and switching a Network's backend on a live lab.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::cluster::{
    add_pod, add_pod_in, assert_mesh, cluster_lab, http_get, mesh_failures, serve_node,
};
use common::{pid_of, plugin, require, trellis};
use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{wait_for, Lab};

/// The routes the fabric owns in a node, as text.
fn owned_routes(lab: &Lab, node: usize) -> String {
    let ns = &lab.state.nodes[node].netns;
    // The fabric's (116) and BGP's (119).
    ["116", "119"]
        .iter()
        .map(|p| {
            let o = lab.exec(ns, &["ip", "route", "show", "proto", p]).unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
        .collect()
}

/// Every pod's address as its own kernel has it (`eth0`), in lab order.
fn pod_addresses(lab: &Lab) -> Vec<String> {
    lab.state
        .pods
        .iter()
        .map(|p| {
            let o = lab
                .exec(&p.netns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(3)
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn node_json(lab: &Lab, name: &str) -> serde_json::Value {
    let out = lab
        .cli(&trellis(), &["get", "node", name, "-o", "json"])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

#[test]
fn vxlan_full_mesh() {
    let lab = cluster_lab(3, 0, "vxlan", 2);
    assert_mesh(&lab, Duration::from_secs(15), "vxlan");
    // Static FDB and neighbour entries, no learning.
    let n1 = &lab.state.nodes[0].netns;
    let link =
        String::from_utf8_lossy(&lab.exec(n1, &["ip", "-d", "link"]).unwrap().stdout).into_owned();
    assert!(link.contains("nolearning"), "{link}");
    let fdb = lab.exec(n1, &["bridge", "fdb", "show"]).unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert_eq!(
        fdb.lines().filter(|l| l.contains(" dst ")).count(),
        2,
        "{fdb}"
    );
    // Pod MTU = underlay 1500 - 50.
    let pod = &lab.state.pods[0].netns;
    let l = lab.exec(pod, &["ip", "link", "show", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&l.stdout).contains("mtu 1450"));
    // Drift: a deleted route, FDB entry and the tunnel device itself come back with the
    // agent's periodic pass, and the mesh with them.
    let before = fabric_snapshot(&lab, 0);
    let routes = owned_routes(&lab, 0);
    let route = routes.lines().next().expect("an owned route");
    let dst = route.split_whitespace().next().unwrap();
    lab.exec(n1, &["ip", "route", "del", dst, "proto", "116"])
        .unwrap();
    let entry = fdb.lines().find(|l| l.contains(" dst ")).unwrap();
    let w: Vec<&str> = entry.split_whitespace().collect();
    lab.exec(
        n1,
        &[
            "bridge", "fdb", "del", w[0], "dev", w[2], "dst", w[4], "self",
        ],
    )
    .unwrap();
    assert_ne!(fabric_snapshot(&lab, 0), before);
    assert!(
        wait_for(Duration::from_secs(15), || fabric_snapshot(&lab, 0)
            == before),
        "route and FDB entry not restored:\n{}",
        fabric_snapshot(&lab, 0)
    );
    let dev = w[2].to_string();
    lab.exec(n1, &["ip", "link", "del", &dev]).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || owned_routes(&lab, 0) == routes),
        "{dev} and its routes not restored: {}",
        owned_routes(&lab, 0)
    );
    assert_mesh(&lab, Duration::from_secs(15), "vxlan after drift repair");
}

/// `backend: bgp`: the agents' BGP speakers form a full iBGP mesh and carry every
/// node's subnet (routes of protocol 119 via the nodes' addresses, no tunnel); every
/// pod reaches every other.
#[test]
fn bgp_full_mesh() {
    let lab = cluster_lab(3, 0, "bgp", 1);
    assert_mesh(&lab, Duration::from_secs(20), "bgp");
    for (n, node) in lab.state.nodes.iter().enumerate() {
        let out = lab
            .exec(&node.netns, &["ip", "route", "show", "proto", "119"])
            .unwrap();
        let routes = String::from_utf8_lossy(&out.stdout).into_owned();
        // Two learned routes, and the node's own subnet as a blackhole behind its bridge.
        let learned = routes
            .lines()
            .filter(|l| !l.starts_with("blackhole"))
            .count();
        assert_eq!(learned, 2, "node {n}: {routes}");
        assert_eq!(
            routes
                .lines()
                .filter(|l| l.starts_with("blackhole 10.244.") && l.contains("metric 1000000"))
                .count(),
            1,
            "node {n}: {routes}"
        );
        for (m, other) in lab.state.nodes.iter().enumerate() {
            if m != n {
                assert!(
                    routes.contains(&format!("via {}", other.addr)),
                    "node {n}: {routes}"
                );
            }
        }
        let links = lab.exec(&node.netns, &["ip", "-o", "link"]).unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert!(!links.contains(": trl."), "a tunnel on node {n}: {links}");
    }
    // Switched to vxlan: the speakers stop and their routes go; the pods still reach
    // each other.
    lab.apply(&trellis(), &network_manifest("default", "vxlan"))
        .unwrap();
    assert_mesh(&lab, Duration::from_secs(20), "bgp → vxlan");
    for (n, node) in lab.state.nodes.iter().enumerate() {
        let gone = wait_for(Duration::from_secs(10), || {
            let out = lab
                .exec(&node.netns, &["ip", "route", "show", "proto", "119"])
                .unwrap();
            out.stdout.is_empty()
        });
        assert!(gone, "node {n} keeps bgp routes after the switch");
    }
}

#[test]
fn host_gw_full_mesh_and_off_segment_peer_reported() {
    let lab = cluster_lab(3, 1, "host-gw", 1);
    // The three same-segment nodes reach each other; the remote one is reported.
    let n4 = lab.state.nodes[3].name.clone();
    assert!(
        wait_for(Duration::from_secs(10), || {
            node_json(&lab, "n1")["status"]["unreachablePeers"] == json!([n4])
        }),
        "n1 must report {n4} unreachable: {}",
        node_json(&lab, "n1")
    );
    let routes = owned_routes(&lab, 0);
    assert_eq!(routes.lines().count(), 2, "{routes}");
    assert!(routes.contains("via 192.168.77.12 dev eth0"), "{routes}");
    // Pod MTU = underlay MTU (no encapsulation).
    let pod = &lab.state.pods[0].netns;
    let l = lab.exec(pod, &["ip", "link", "show", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&l.stdout).contains("mtu 1500"));
    let mut same = Lab::load(&lab.state.name).unwrap();
    // mesh among the same-segment nodes only
    same.state.nodes.truncate(3);
    same.state.pods.retain(|p| p.node < 3);
    assert_mesh(&same, Duration::from_secs(15), "host-gw");
}

#[test]
fn hybrid_routes_on_segment_and_tunnels_across() {
    let lab = cluster_lab(3, 1, "hybrid", 1);
    assert_mesh(&lab, Duration::from_secs(15), "hybrid");
    let routes = owned_routes(&lab, 0);
    assert!(routes.contains("via 192.168.77.12 dev eth0"), "{routes}");
    assert!(
        routes.contains("dev trl."),
        "the remote node goes through vxlan: {routes}"
    );
    assert!(node_json(&lab, "n1")["status"]["unreachablePeers"].is_null());
}

#[test]
fn udp_full_mesh() {
    let lab = cluster_lab(3, 0, "udp", 1);
    assert_mesh(&lab, Duration::from_secs(15), "udp");
    let pod = &lab.state.pods[0].netns;
    let l = lab.exec(pod, &["ip", "link", "show", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&l.stdout).contains("mtu 1472"));
}

#[test]
fn node_joins_and_leaves() {
    let t = trellis();
    let timing = Timing::default();
    let mut lab = cluster_lab(3, 0, "vxlan", 1);
    assert_mesh(&lab, Duration::from_secs(15), "3 nodes");
    // Join a fourth node.
    let n = lab.join_node().unwrap();
    lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
    serve_node(&mut lab, n);
    let ip = add_pod(&mut lab, n, "p1");
    assert_mesh(&lab, Duration::from_secs(15), "after the join");
    let subnet = format!("{}.0/24", ip.to_string().rsplit_once('.').unwrap().0);
    for i in 0..3 {
        assert!(owned_routes(&lab, i).contains(&subnet));
    }
    let n4_endpoints = |lab: &Lab| {
        endpoints(lab)
            .into_iter()
            .filter(|e| e["spec"]["node"] == "n4")
            .collect::<Vec<_>>()
    };
    // Its pod's Endpoint is published (and ready) before it leaves.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let n4 = n4_endpoints(&lab);
            n4.len() == 1 && n4[0]["spec"]["ready"] == true
        }),
        "n4's Endpoint was not published: {:?}\n{}",
        n4_endpoints(&lab),
        std::fs::read_to_string(lab.dir().join("agent-n4.log")).unwrap_or_default()
    );
    // It leaves (agent stopped; its lease expires): its routes and FDB entries leave
    // every other node, its endpoints become not ready.
    let pid = pid_of(&lab, "agent n4");
    lab.stop(pid, false);
    let gone = wait_for(Duration::from_secs(15), || {
        (0..3).all(|i| !owned_routes(&lab, i).contains(&subnet))
    });
    assert!(gone, "routes to {subnet} stay: {}", owned_routes(&lab, 0));
    let fdb_gone = wait_for(Duration::from_secs(5), || {
        (0..3).all(|i| {
            let fdb = lab
                .exec(&lab.state.nodes[i].netns, &["bridge", "fdb", "show"])
                .unwrap();
            !String::from_utf8_lossy(&fdb.stdout).contains("192.168.77.14")
        })
    });
    assert!(fdb_gone, "FDB entries towards n4 stay");
    assert!(
        wait_for(Duration::from_secs(5), || {
            let n4 = n4_endpoints(&lab);
            n4.len() == 1 && n4[0]["spec"]["ready"] == false
        }),
        "n4's endpoint is not marked not ready: {:?}",
        n4_endpoints(&lab)
    );
    let before = fabric_snapshot(&lab, n);
    let pod_before = pod_addresses(&lab);
    // It returns with the same subnet: nothing changes for its pod or its kernel.
    lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
    assert_mesh(&lab, Duration::from_secs(15), "after the return");
    assert_eq!(pod_addresses(&lab), pod_before);
    assert!(pod_before.last().unwrap().starts_with(&format!("{ip}/")));
    let lease = &node_json(&lab, "n4")["status"]["leases"][0]["cidr"];
    assert_eq!(lease, &json!(subnet), "n4 got another subnet");
    assert!(owned_routes(&lab, 0).contains(&subnet));
    assert_eq!(
        fabric_snapshot(&lab, n),
        before,
        "n4's kernel changed on return"
    );
    assert!(wait_for(Duration::from_secs(10), || {
        endpoints(&lab).iter().all(|e| e["spec"]["ready"] == true)
    }));
}

/// Everything the fabric owns on a node, for before/after comparisons.
fn fabric_snapshot(lab: &Lab, node: usize) -> String {
    let ns = &lab.state.nodes[node].netns;
    let mut s = owned_routes(lab, node);
    // Configured FDB entries only: learned ones come and go with the traffic.
    let fdb = lab.exec(ns, &["bridge", "fdb", "show"]).unwrap();
    for l in String::from_utf8_lossy(&fdb.stdout).lines() {
        if l.contains("permanent") || l.contains("static") || l.contains(" dst ") {
            s.push_str(l);
            s.push('\n');
        }
    }
    let neigh = lab
        .exec(ns, &["ip", "neigh", "show", "nud", "permanent"])
        .unwrap();
    s.push_str(&String::from_utf8_lossy(&neigh.stdout));
    let links = lab.exec(ns, &["ip", "-o", "link"]).unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        // A TUN device's operational state follows its pump (UNKNOWN when fresh, UP
        // after a restart's carrier off and on): not configuration.
        if l.contains("link/none") {
            let mut words = l.split_whitespace();
            while let Some(w) = words.next() {
                if w == "state" {
                    words.next();
                } else {
                    s.push_str(w);
                    s.push(' ');
                }
            }
        } else {
            s.push_str(l);
        }
        s.push('\n');
    }
    s
}

/// Monitors on the first `nodes` nodes recording every route, link and neighbour change
/// (`ip monitor`) and every FDB change (`bridge monitor`): (name, pid) pairs.
fn start_monitors(lab: &mut Lab, nodes: usize) -> Vec<(String, u32)> {
    let mut monitors = Vec::new();
    for i in 0..nodes {
        let ns = lab.state.nodes[i].netns.clone();
        let mut m = std::process::Command::new("ip");
        m.args(["-4", "-ts", "monitor", "label", "route", "link", "neigh"]);
        let name = format!("monitor n{}", i + 1);
        monitors.push((name.clone(), lab.spawn(&ns, &name, m).unwrap()));
        let mut b = std::process::Command::new("bridge");
        b.args(["monitor", "fdb"]);
        let name = format!("fdbmonitor n{}", i + 1);
        monitors.push((name.clone(), lab.spawn(&ns, &name, b).unwrap()));
    }
    monitors
}

/// Stop the monitors and assert they saw no change of a configured entry. Traffic moves
/// learned FDB entries and ARP states: only configured entries (the fabric's) count. The
/// bridge's own port notifications (family AF_BRIDGE, printed without a qdisc: a port's
/// STP state settling some seconds after it joined) are not changes either, nor is the
/// carrier of the udp backend's TUN device (`link/none`) following its pump.
fn assert_no_configured_changes(lab: &mut Lab, monitors: Vec<(String, u32)>, during: &str) {
    let mut seen = Vec::new();
    for (name, pid) in monitors {
        lab.stop(pid, false);
        let file = lab.dir().join(format!("{}.log", name.replace(' ', "-")));
        let log =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // One record per event: continuation lines start with whitespace.
        let mut records: Vec<String> = Vec::new();
        for l in log.lines().filter(|l| !l.trim().is_empty()) {
            match records.last_mut() {
                Some(r) if l.starts_with(char::is_whitespace) => {
                    r.push('\n');
                    r.push_str(l);
                }
                _ => records.push(l.to_string()),
            }
        }
        let changes: Vec<String> = records
            .into_iter()
            .filter(|r| {
                let bridge_port_note =
                    r.contains("[LINK]") && r.contains(" master ") && !r.contains(" qdisc ");
                let tun_carrier =
                    r.contains("[LINK]") && r.contains("link/none") && !r.contains("Deleted");
                !bridge_port_note
                    && !tun_carrier
                    && (!r.contains("[NEIGH]") || r.contains("PERMANENT"))
                    && (!name.starts_with("fdb")
                        || r.contains(" dst ")
                        || r.contains("permanent")
                        || r.contains("static"))
            })
            .collect();
        if !changes.is_empty() {
            seen.push(format!("{name}:\n{}", changes.join("\n")));
        }
    }
    assert!(
        seen.is_empty(),
        "kernel changes during {during}:\n{}",
        seen.join("\n")
    );
}

#[test]
fn agent_kill9_under_iperf3_changes_nothing() {
    kill9_under_iperf3("vxlan");
}

/// The bgp backend's routes are learned by the agents' speakers: killed and restarted
/// (both ends), nothing is withdrawn (graceful restart) and the stream survives.
#[test]
fn bgp_agent_kill9_under_iperf3_changes_nothing() {
    kill9_under_iperf3("bgp");
}

/// The udp backend's pump lives in the agent, but its TUN device and the routes into it
/// outlive it: the stream survives the restart (packets are lost meanwhile, TCP resends).
#[test]
fn udp_agent_kill9_under_iperf3_changes_nothing() {
    kill9_under_iperf3("udp");
}

/// `kill -9` of both ends' agents while an iperf3 stream crosses nodes on `backend`,
/// then a restart: the stream survives and no route, link, permanent neighbour or
/// configured FDB entry changes.
fn kill9_under_iperf3(backend: &str) {
    require(&["iperf3"]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = cluster_lab(3, 0, backend, 1);
    assert_mesh(&lab, Duration::from_secs(15), "before");
    let server_ip = lab.state.pods[1].ip.unwrap();
    let (srv_ns, cli_ns) = (
        lab.state.pods[1].netns.clone(),
        lab.state.pods[0].netns.clone(),
    );
    let mut iperf = std::process::Command::new("iperf3");
    iperf.args(["-s", "-1"]);
    lab.spawn(&srv_ns, "iperf3 server", iperf).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<String> = (0..3).map(|i| fabric_snapshot(&lab, i)).collect();
    let monitors = start_monitors(&mut lab, 2);
    let stream_start = Instant::now();
    let client = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &cli_ns,
                "iperf3",
                "-c",
                &server_ip.to_string(),
                "-t",
                "6",
                "-J",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_secs(1));
    // kill -9 both ends' agents, restart them while the stream runs.
    for name in ["agent n1", "agent n2"] {
        let pid = pid_of(&lab, name);
        lab.stop(pid, true);
    }
    lab.start_cluster_agent(&t, 0, "default", &timing).unwrap();
    lab.start_cluster_agent(&t, 1, "default", &timing).unwrap();
    let restarted_at = stream_start.elapsed();
    let out = client.join().unwrap();
    assert!(
        restarted_at < Duration::from_millis(5500),
        "the agents must be back while the 6 s stream runs (back after {restarted_at:?})"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "iperf3 stream broke: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(bytes > 0.0, "{report}");
    // Per-second intervals: none after the restart is empty.
    let intervals = report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 5, "{report}");
    for iv in intervals {
        assert!(
            iv["sum"]["bytes"].as_f64().unwrap_or(0.0) > 0.0,
            "a second without traffic: {iv}"
        );
    }
    // The restarted agents changed nothing: same routes, FDB, neighbours and links, and
    // the monitors saw no route or link event. Wait one fabric pass first.
    std::thread::sleep(Duration::from_secs(2));
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&fabric_snapshot(&lab, i), b, "node n{} changed", i + 1);
    }
    assert_no_configured_changes(&mut lab, monitors, "agent restart");
    for n in ["n1", "n2"] {
        let log = std::fs::read_to_string(lab.dir().join(format!("agent-{n}.log"))).unwrap();
        let last_start = log.rfind("joined the cluster").unwrap();
        assert!(
            !log[last_start..].contains("fabric updated"),
            "{n} re-applied:\n{}",
            &log[last_start..]
        );
    }
}

/// The control plane goes away (`kill -9` of the server, longer than the node lease TTL
/// and a fabric resync; one agent is killed and restarted meanwhile) and comes back: the
/// agents keep every route, FDB entry, neighbour and link, pods keep talking, and the
/// server's return changes nothing either (its store still holds leases nobody could
/// renew; it must not declare the nodes dead before they can heartbeat).
#[test]
fn server_outage_and_return_change_nothing() {
    server_outage_and_return("vxlan");
}

/// The same on udp, whose packets need the pump in the agent: the agent restarted while
/// the server is away resumes its pump with the peers it remembers.
#[test]
fn udp_server_outage_and_return_change_nothing() {
    server_outage_and_return("udp");
}

/// Every pod and node still reaches every other at once, and no node's fabric differs
/// from `before` (one [`fabric_snapshot`] per node).
fn assert_mesh_and_fabric_kept(lab: &Lab, before: &[String], when: &str) {
    let failures = mesh_failures(lab);
    assert!(failures.is_empty(), "{when}: {failures:?}");
    for (i, b) in before.iter().enumerate() {
        assert_eq!(
            &fabric_snapshot(lab, i),
            b,
            "{when}: node n{} changed",
            i + 1
        );
    }
}

fn server_outage_and_return(backend: &str) {
    let t = trellis();
    let timing = Timing::default();
    let mut lab = cluster_lab(3, 0, backend, 1);
    assert_mesh(&lab, Duration::from_secs(15), "before");
    let before: Vec<String> = (0..3).map(|i| fabric_snapshot(&lab, i)).collect();
    let monitors = start_monitors(&mut lab, 3);
    let pid = pid_of(&lab, "server");
    lab.stop(pid, true);
    // Agent n1 also dies and comes back while the server is away: it cannot join, so it
    // must touch nothing until it can.
    let pid = pid_of(&lab, "agent n1");
    lab.stop(pid, true);
    let agent = lab
        .cluster_agent_command(&t, 0, "default", &timing)
        .unwrap();
    let n1 = lab.state.nodes[0].netns.clone();
    lab.spawn(&n1, "agent n1", agent).unwrap();
    let down_for = Duration::from_secs_f64(timing.node_lease_ttl as f64 + timing.resync + 1.0);
    std::thread::sleep(down_for);
    assert_mesh_and_fabric_kept(&lab, &before, "server down");
    lab.run_server(&t, &timing).unwrap();
    let socket = lab.agent_paths(0).socket;
    assert!(
        wait_for(Duration::from_secs(15), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        }),
        "the restarted agent n1 did not join once the server was back"
    );
    assert!(
        wait_for(Duration::from_secs(15), || {
            (1..=3).all(|i| node_json(&lab, &format!("n{i}"))["status"]["ready"] == true)
        }),
        "nodes not ready again after the server's return"
    );
    // A lease TTL and a fabric pass after the return.
    std::thread::sleep(Duration::from_secs_f64(
        timing.node_lease_ttl as f64 + timing.resync,
    ));
    assert_mesh_and_fabric_kept(&lab, &before, "server back");
    assert_no_configured_changes(&mut lab, monitors, "the server's outage and return");
    assert!(
        endpoints(&lab).iter().all(|e| e["spec"]["ready"] == true),
        "{:?}",
        endpoints(&lab)
    );
}

#[test]
fn backend_switch_keeps_addresses() {
    let t = trellis();
    let lab = cluster_lab(3, 0, "vxlan", 1);
    assert_mesh(&lab, Duration::from_secs(15), "vxlan");
    let ips = pod_addresses(&lab);
    assert!(ips.iter().all(|a| a.starts_with("10.244.")), "{ips:?}");
    lab.apply(&t, &network_manifest("default", "host-gw"))
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            let r = owned_routes(&lab, 0);
            r.contains("dev eth0") && !r.contains("trl.")
        }),
        "{}",
        owned_routes(&lab, 0)
    );
    let links = lab
        .exec(&lab.state.nodes[0].netns, &["ip", "-o", "link"])
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("trl."),
        "the vxlan device is removed"
    );
    assert_mesh(&lab, Duration::from_secs(15), "host-gw");
    assert_eq!(pod_addresses(&lab), ips, "host-gw changed pod addresses");
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || owned_routes(&lab, 0)
        .contains("dev trl.")));
    assert_mesh(&lab, Duration::from_secs(15), "vxlan again");
    assert_eq!(
        pod_addresses(&lab),
        ips,
        "vxlan again changed pod addresses"
    );
    // To udp and back: the (persistent) TUN device goes once no network wants it.
    let n1 = lab.state.nodes[0].netns.clone();
    let tun_exists = |lab: &Lab| {
        let o = lab.exec(&n1, &["ip", "-o", "link"]).unwrap();
        String::from_utf8_lossy(&o.stdout).contains(": trlu")
    };
    lab.apply(&t, &network_manifest("default", "udp")).unwrap();
    assert!(wait_for(Duration::from_secs(10), || tun_exists(&lab)));
    assert_mesh(&lab, Duration::from_secs(15), "udp");
    assert_eq!(pod_addresses(&lab), ips, "udp changed pod addresses");
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !tun_exists(&lab)),
        "the udp device stays after the switch back to vxlan"
    );
    assert_mesh(&lab, Duration::from_secs(15), "vxlan after udp");
}

#[test]
fn l2_pods_live_on_the_underlay_segment() {
    let t = trellis();
    let timing = Timing::default();
    let mut lab = cluster_lab(3, 0, "l2", 1);
    assert_mesh(&lab, Duration::from_secs(15), "l2");
    // Pods have segment addresses outside the reserved range and the hosts' addresses,
    // and machines outside the cluster (the underlay router) reach them directly.
    let u = lab.state.underlay.clone();
    for p in &lab.state.pods {
        let ip = p.ip.unwrap();
        assert!(ip.to_string().starts_with("192.168.77."), "{ip}");
        assert!(ip.octets()[3] >= 16, "{ip} is in the reserved range");
        assert!(lab.ping(&u, ip), "underlay -> {ip}");
        assert_eq!(http_get(&lab, &u, ip).trim(), p.name);
    }
    // No tunnel, no routes: the segment carries everything.
    assert!(owned_routes(&lab, 0).trim().is_empty());
    // A host registering later with the address n1 would hand out next is skipped.
    let last = lab.state.pods[0].ip.unwrap();
    let next = std::net::Ipv4Addr::from(u32::from(last) + 1);
    lab.apply(
        &t,
        &format!("apiVersion: trellis/v1\nkind: Node\nmetadata:\n  name: late-host\nspec:\n  address: {next}\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let got = add_pod(&mut lab, 0, "p2");
    assert_ne!(got, next, "a pod got a host's address");
    assert_eq!(got, std::net::Ipv4Addr::from(u32::from(next) + 1));
    assert_eq!(lab.state.pods[0].ip, Some(last));
    // A restarted agent adopts the bridged uplink as it is.
    let before = fabric_snapshot(&lab, 0);
    let pid = pid_of(&lab, "agent n1");
    lab.stop(pid, true);
    lab.start_cluster_agent(&t, 0, "default", &timing).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(fabric_snapshot(&lab, 0), before);
    assert_mesh(&lab, Duration::from_secs(10), "l2 after restart");
}

#[test]
fn pod_mtu_follows_the_underlay() {
    let mut lab = cluster_lab(3, 0, "vxlan", 1);
    let n1 = lab.state.nodes[0].netns.clone();
    // Set n1's underlay MTU, wait for the next fabric pass (resync: 5 s) to resize the
    // tunnel, then ADD a pod: its netns.
    let underlay_mtu = |lab: &mut Lab, mtu: u32, pod: &str| {
        lab.exec(&n1, &["ip", "link", "set", "eth0", "mtu", &mtu.to_string()])
            .unwrap();
        let tunnel = format!("mtu {}", mtu - 50);
        assert!(
            wait_for(Duration::from_secs(10), || {
                let l = lab.exec(&n1, &["ip", "-o", "link"]).unwrap();
                String::from_utf8_lossy(&l.stdout)
                    .lines()
                    .any(|l| l.contains(": trl.") && l.contains(&tunnel))
            }),
            "tunnel not at {tunnel}"
        );
        let p = lab.add_pod(0, pod).unwrap();
        lab.cni_add_pod(&plugin(), &p.netns).unwrap();
        p.netns
    };
    let mtu_of = |lab: &Lab, ns: &str| {
        let l = lab.exec(ns, &["ip", "link", "show", "eth0"]).unwrap();
        String::from_utf8_lossy(&l.stdout).into_owned()
    };
    let late = underlay_mtu(&mut lab, 1400, "late");
    assert!(mtu_of(&lab, &late).contains("mtu 1350"));
    // And back: the tunnel grows again, the next pod gets 1450, the earlier keep theirs.
    let later = underlay_mtu(&mut lab, 1500, "later");
    assert!(mtu_of(&lab, &later).contains("mtu 1450"));
    assert!(mtu_of(&lab, &late).contains("mtu 1350"));
    // Full-size packets (DF) cross from the new pod to a pod on n2 and back.
    let to = lab.state.pods[1].ip.unwrap().to_string();
    let ping = lab
        .exec_any(
            &later,
            &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1422", &to],
        )
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

/// The udp backend's TUN device follows the underlay MTU too (its pump is replaced and
/// the new one resizes the device it adopts), and the mesh keeps working.
#[test]
fn udp_tun_mtu_follows_the_underlay() {
    let lab = cluster_lab(3, 0, "udp", 1);
    let n1 = lab.state.nodes[0].netns.clone();
    let tun_line = |lab: &Lab| {
        let l = lab.exec(&n1, &["ip", "-o", "link"]).unwrap();
        String::from_utf8_lossy(&l.stdout)
            .lines()
            .find(|l| l.contains(": trlu"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(tun_line(&lab).contains("mtu 1472"), "{}", tun_line(&lab));
    lab.exec(&n1, &["ip", "link", "set", "eth0", "mtu", "1400"])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || tun_line(&lab)
            .contains("mtu 1372")),
        "TUN device not resized: {}",
        tun_line(&lab)
    );
    assert_mesh(&lab, Duration::from_secs(15), "udp after the MTU change");
}

/// CNI `command` (ADD, DEL) of container `container` in namespace `netns` on node `node`,
/// with `CNI_ARGS` and `extra` keys set in the plugin configuration (`network`,
/// `runtimeConfig`): whether it succeeded, and the plugin's JSON answer (result or error;
/// `null` for an empty answer).
fn cni_call(
    lab: &Lab,
    command: &str,
    node: usize,
    container: &str,
    netns: &str,
    cni_args: &str,
    extra: serde_json::Value,
) -> (bool, serde_json::Value) {
    let mut conf = lab.cni_config(node, "1.1.0");
    for (k, v) in extra.as_object().expect("an object") {
        conf[k] = v.clone();
    }
    let path = trellis_lab::netns_path(netns).display().to_string();
    let out = lab
        .cni(
            &plugin(),
            node,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", &path),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", cni_args),
            ],
            &conf,
        )
        .unwrap();
    let answer = if out.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    (out.status.success(), answer)
}

/// The Endpoints the server holds, as (namespace/name, labels, ip, ready).
fn endpoints(lab: &Lab) -> Vec<serde_json::Value> {
    let out = lab
        .cli(&trellis(), &["get", "endpoints", "-A", "-o", "json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn endpoints_follow_attachments_with_labels() {
    let t = trellis();
    let mut lab = cluster_lab(3, 0, "vxlan", 0);
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {app: web, tier: front}\n",
    )
    .unwrap();
    let add = |lab: &mut Lab, node: usize, name: &str, args: &str| {
        let pod = lab.add_pod(node, name).unwrap();
        let (ok, answer) = cni_call(lab, "ADD", node, name, &pod.netns, args, json!({}));
        assert!(ok, "{answer}");
    };
    add(
        &mut lab,
        0,
        "c1",
        "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1",
    );
    add(&mut lab, 1, "c2", "LABELS=app=db,role=primary");
    assert!(wait_for(Duration::from_secs(10), || endpoints(&lab).len() == 2));
    let eps = endpoints(&lab);
    let web = eps
        .iter()
        .find(|e| e["spec"]["podName"] == "web-1")
        .unwrap();
    assert_eq!(web["metadata"]["namespace"], "shop");
    assert_eq!(web["metadata"]["labels"]["app"], "web");
    assert_eq!(web["metadata"]["labels"]["tier"], "front");
    assert_eq!(web["metadata"]["labels"]["trellis.io/node"], "n1");
    assert_eq!(web["spec"]["ready"], true);
    let db = eps
        .iter()
        .find(|e| e["spec"]["containerId"] == "c2")
        .unwrap();
    assert_eq!(db["metadata"]["namespace"], "default");
    assert_eq!(db["metadata"]["labels"]["role"], "primary");
    assert_eq!(db["spec"]["node"], "n2");
    // A bad LABELS argument is a clear CNI error that changes nothing.
    let pod = lab.add_pod(2, "bad").unwrap();
    let (ok, err) = cni_call(&lab, "ADD", 2, "c3", &pod.netns, "LABELS=app", json!({}));
    assert!(!ok);
    assert_eq!(err["code"], 4, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("LABELS"), "{err}");
    // DEL removes the Endpoint.
    let out = lab
        .cni(
            &plugin(),
            1,
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c2"),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", "eth0"),
            ],
            &lab.cni_config(1, "1.1.0"),
        )
        .unwrap();
    assert!(out.status.success());
    assert!(wait_for(Duration::from_secs(10), || endpoints(&lab).len() == 1));
    // Readiness is the server's (node liveness): a publisher pass keeps what it says.
    let mut web = endpoints(&lab)
        .into_iter()
        .find(|e| e["spec"]["podName"] == "web-1")
        .unwrap();
    web["spec"]["ready"] = json!(false);
    lab.apply(&t, &web.to_string()).unwrap();
    add(&mut lab, 0, "c4", "LABELS=app=late");
    assert!(wait_for(Duration::from_secs(10), || endpoints(&lab).len() == 2));
    let web = endpoints(&lab)
        .into_iter()
        .find(|e| e["spec"]["podName"] == "web-1")
        .unwrap();
    assert_eq!(
        web["spec"]["ready"], false,
        "the agent overrode readiness: {web}"
    );
}

#[test]
fn agent_refuses_bad_credentials_and_a_mismatched_l2_network() {
    let t = trellis();
    let lab = cluster_lab(1, 0, "vxlan", 0);
    let n1 = lab.state.nodes[0].netns.clone();
    let dir = lab.dir();
    let run_agent = |token: &str, network: &str| {
        std::fs::write(dir.join("bad.token"), token).unwrap();
        let out = std::process::Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &n1])
            .arg(&t)
            .args([
                "agent",
                "--server",
                &trellis_lab::cluster::server_url(),
                "--node",
                "n1",
            ])
            .args(["--network", network])
            .arg("--ca")
            .arg(dir.join("server/ca.pem"))
            .arg("--token-file")
            .arg(dir.join("bad.token"))
            .arg("--state-dir")
            .arg(dir.join("bad-state"))
            .arg("--socket")
            .arg(dir.join("bad.sock"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run_agent("not-a-token", "default");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server refused us"), "{err}");
    // An l2 network whose cidr is not the node's segment: refused before any change.
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Network\nmetadata:\n  name: seg\nspec:\n  backend: l2\n  cidr: 10.50.0.0/24\n  nodeSubnetPrefix: 28\n",
    )
    .unwrap();
    let token = std::fs::read_to_string(lab.agent_paths(0).state_dir.join("node.token")).unwrap();
    let links_before = lab.exec(&n1, &["ip", "-o", "link"]).unwrap().stdout;
    let (code, err) = run_agent(&token, "seg");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("must be the underlay segment"), "{err}");
    assert_eq!(
        lab.exec(&n1, &["ip", "-o", "link"]).unwrap().stdout,
        links_before
    );
}

#[test]
fn one_agent_serves_two_networks_with_different_backends() {
    require(&["ip", "nft", "ping", "busybox", "bridge"]);
    let t = trellis();
    let timing = Timing {
        agent_args: vec!["--network".into(), "blue".into()],
        ..Timing::default()
    };
    let mut lab = Lab::new(3).unwrap();
    lab.start_server(&t, &timing).unwrap();
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Network\nmetadata:\n  name: blue\nspec:\n  backend: host-gw\n  cidr: 10.245.0.0/16\n",
    )
    .unwrap();
    for n in 0..3 {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
        serve_node(&mut lab, n);
    }
    for n in 0..3 {
        add_pod(&mut lab, n, "red");
        let ip = add_pod_in(&mut lab, n, "blue", "", Some("blue"));
        assert!(ip.to_string().starts_with("10.245."), "{ip}");
    }
    // Every pod and node reaches every other, in and across the two networks.
    assert_mesh(&lab, Duration::from_secs(15), "two networks");
    // One bridge, IPAM and table per network; each network's routes by its backend.
    let n1 = lab.state.nodes[0].netns.clone();
    let links =
        String::from_utf8_lossy(&lab.exec(&n1, &["ip", "-o", "link"]).unwrap().stdout).into_owned();
    let blue_bridge = trellis_api::naming::network_bridge("blue");
    assert!(
        links.contains(": trl0:") && links.contains(&format!(": {blue_bridge}:")),
        "{links}"
    );
    let tables =
        String::from_utf8_lossy(&lab.exec(&n1, &["nft", "list", "tables"]).unwrap().stdout)
            .into_owned();
    assert!(
        tables.contains("table ip trellis\n") && tables.contains("table ip trellis-net-blue"),
        "{tables}"
    );
    let routes = owned_routes(&lab, 0);
    let blue_lease = node_json(&lab, "n2")["status"]["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["network"] == "blue")
        .unwrap()["cidr"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        routes.contains(&format!("{blue_lease} via 192.168.77.12 dev eth0")),
        "blue is host-gw: {routes}"
    );
    assert!(routes.contains("dev trl."), "default is vxlan: {routes}");
    // Endpoints carry their network.
    let eps = lab
        .cli(&t, &["get", "endpoints", "-A", "-o", "json"])
        .unwrap();
    let eps: serde_json::Value = serde_json::from_str(&eps).unwrap();
    let blue_eps = eps["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["spec"]["network"] == "blue")
        .count();
    assert_eq!(blue_eps, 3, "{eps}");
    // A network the agent does not serve: a clear error, nothing created.
    let stray = lab.add_pod(0, "stray").unwrap();
    let (ok, err) = cni_call(
        &lab,
        "ADD",
        0,
        "stray",
        &stray.netns,
        "",
        json!({"network": "green"}),
    );
    assert!(!ok);
    assert_eq!(err["code"], 7, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("\"green\"") && msg.contains("does not exist"),
        "{msg}"
    );
    let stray_links = lab.exec(&stray.netns, &["ip", "-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&stray_links.stdout).contains("eth0"));
    lab.remove_pod_netns(&stray.netns).unwrap();
    // Host ports are the node's: one published in `default` is refused in `blue` (CNI
    // code 103, naming the holder and its network) and nothing is made for the second pod;
    // once the holder is gone, `blue` may publish it.
    let ports = |net: &str| {
        json!({"network": net, "runtimeConfig": {"portMappings": [
            {"hostPort": 18111, "containerPort": 80, "protocol": "tcp"}]}})
    };
    let node_links = |lab: &Lab| {
        let o = lab.exec(&n1, &["ip", "-o", "link"]).unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let links_before = node_links(&lab);
    let holder = lab.add_pod(0, "hp-red").unwrap();
    let (ok, res) = cni_call(
        &lab,
        "ADD",
        0,
        "hp-red",
        &holder.netns,
        "",
        ports("default"),
    );
    assert!(ok, "{res}");
    let second = lab.add_pod(0, "hp-blue").unwrap();
    let (ok, err) = cni_call(&lab, "ADD", 0, "hp-blue", &second.netns, "", ports("blue"));
    assert!(!ok);
    assert_eq!(err["code"], 103, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("tcp/18111") && msg.contains("hp-red") && msg.contains("network default"),
        "{msg}"
    );
    let second_links = lab.exec(&second.netns, &["ip", "-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&second_links.stdout).contains("eth0"));
    let blue_maps = lab
        .exec(&n1, &["nft", "list", "table", "ip", "trellis-net-blue"])
        .unwrap();
    assert!(!String::from_utf8_lossy(&blue_maps.stdout).contains("18111"));
    let (ok, res) = cni_call(
        &lab,
        "DEL",
        0,
        "hp-red",
        &holder.netns,
        "",
        ports("default"),
    );
    assert!(ok, "{res}");
    let (ok, res) = cni_call(&lab, "ADD", 0, "hp-blue", &second.netns, "", ports("blue"));
    assert!(ok, "{res}");
    let (ok, res) = cni_call(&lab, "DEL", 0, "hp-blue", &second.netns, "", ports("blue"));
    assert!(ok, "{res}");
    for p in [holder, second] {
        lab.remove_pod_netns(&p.netns).unwrap();
    }
    // Veths go with their namespace, asynchronously: settle before the restart check.
    assert!(
        wait_for(Duration::from_secs(10), || node_links(&lab) == links_before),
        "the host-port pods' veths stay: {}",
        node_links(&lab)
    );
    // kill -9 and restart: both networks adopted, nothing changes.
    let before = fabric_snapshot(&lab, 0);
    let tables_before = lab
        .exec(
            &n1,
            &["nft", "-a", "list", "table", "ip", "trellis-net-blue"],
        )
        .unwrap();
    let pid = pid_of(&lab, "agent n1");
    lab.stop(pid, true);
    lab.start_cluster_agent(&t, 0, "default", &timing).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(fabric_snapshot(&lab, 0), before);
    let tables_after = lab
        .exec(
            &n1,
            &["nft", "-a", "list", "table", "ip", "trellis-net-blue"],
        )
        .unwrap();
    assert_eq!(tables_before.stdout, tables_after.stdout);
    assert_mesh(
        &lab,
        Duration::from_secs(10),
        "two networks after a restart",
    );
}

/// A network created at run time is served from the first ADD naming it, on every node
/// that gets such a pod, with no agent restart; deleting it removes what was made for
/// it on every node (bridge, table, tunnel device, routes, state, Endpoints) while the
/// agents and the other network carry on.
#[test]
fn networks_come_and_go_at_run_time() {
    require(&["ip", "nft", "ping", "busybox", "bridge"]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = Lab::new(2).unwrap();
    lab.start_server(&t, &timing).unwrap();
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    for n in 0..2 {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
        serve_node(&mut lab, n);
        add_pod(&mut lab, n, &format!("d{n}"));
    }
    let pids: Vec<u32> = (0..2)
        .map(|n| pid_of(&lab, &format!("agent n{}", n + 1)))
        .collect();
    let kernel = |lab: &Lab, n: usize| {
        let ns = lab.state.nodes[n].netns.clone();
        let run = |args: &[&str]| {
            String::from_utf8_lossy(&lab.exec(&ns, args).unwrap().stdout).into_owned()
        };
        (
            run(&["ip", "-o", "link"]),
            run(&["nft", "list", "tables"]),
            owned_routes(lab, n),
        )
    };
    let before: Vec<_> = (0..2).map(|n| kernel(&lab, n)).collect();
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Network\nmetadata:\n  name: extra\nspec:\n  cidr: 10.246.0.0/16\n",
    )
    .unwrap();
    let mut extra_ips = Vec::new();
    for n in 0..2 {
        let ip = add_pod_in(&mut lab, n, &format!("x{n}"), "", Some("extra"));
        assert!(ip.to_string().starts_with("10.246."), "{ip}");
        extra_ips.push(ip);
    }
    // Every pod reaches every other, in and across the two networks.
    assert_mesh(&lab, Duration::from_secs(15), "a network added at run time");
    let bridge = trellis_api::naming::network_bridge("extra");
    for n in 0..2 {
        let (links, tables, _) = kernel(&lab, n);
        assert!(links.contains(&format!(": {bridge}:")), "{links}");
        assert!(tables.contains("table ip trellis-net-extra"), "{tables}");
        assert!(lab
            .agent_paths(n)
            .state_dir
            .join("networks/extra/ipam.redb")
            .exists());
    }
    let extra_eps = |lab: &Lab| {
        endpoints(lab)
            .iter()
            .filter(|e| e["spec"]["network"] == "extra")
            .count()
    };
    assert_eq!(extra_eps(&lab), 2);
    // Deleted: every node removes what it made for the network; the agents stay.
    for n in 0..2 {
        let name = format!("n{}-x{n}", n + 1);
        let httpd = pid_of(&lab, &format!("httpd {name}"));
        lab.stop(httpd, true);
        let netns = lab
            .state
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .netns
            .clone();
        lab.remove_pod_netns(&netns).unwrap();
    }
    lab.cli(&t, &["delete", "network", "extra"]).unwrap();
    for (n, was) in before.iter().enumerate() {
        let settled = wait_for(Duration::from_secs(15), || &kernel(&lab, n) == was);
        assert!(
            settled,
            "node {n} after the network was deleted:\n{:?}\nbefore it was created:\n{was:?}",
            kernel(&lab, n),
        );
        assert!(!lab.agent_paths(n).state_dir.join("networks/extra").exists());
    }
    assert!(wait_for(Duration::from_secs(10), || extra_eps(&lab) == 0));
    for (n, pid) in pids.iter().enumerate() {
        assert_eq!(pid_of(&lab, &format!("agent n{}", n + 1)), *pid);
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(
            unsafe { libc::kill(*pid as i32, 0) },
            0,
            "agent n{} died",
            n + 1
        );
    }
    assert_mesh(&lab, Duration::from_secs(10), "the network's pods gone");

    // A plugin configuration without `network`: a pod of a tenant's namespace goes to
    // the tenant's network (served from that ADD on); DEL finds it there.
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: red}\n---\n\
         apiVersion: trellis/v1\nkind: Network\nmetadata: {name: red-pods}\nspec: {cidr: 10.247.0.0/16, tenant: red}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {tenant: red}\n",
    )
    .unwrap();
    let tp = lab.add_pod(0, "t1").unwrap();
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=t1";
    let tenant_eps = |lab: &Lab| {
        endpoints(lab)
            .iter()
            .filter(|e| e["spec"]["network"] == "red-pods")
            .count()
    };
    // The agent may not have seen the namespace yet: it says so and is asked again.
    let mut added = None;
    assert!(wait_for(Duration::from_secs(10), || {
        let (ok, res) = cni_call(&lab, "ADD", 0, "t1", &tp.netns, args, json!({}));
        if ok {
            added = Some(res);
        }
        ok
    }));
    let res = added.unwrap();
    let ip = res["ips"][0]["address"].as_str().unwrap();
    assert!(ip.starts_with("10.247."), "{res}");
    assert!(wait_for(Duration::from_secs(10), || tenant_eps(&lab) == 1));
    // kill -9 and restart: the network served on demand is served again from its
    // state (its pod lives on), and nothing in the kernel changes.
    let before_restart = kernel(&lab, 0);
    let pid = pid_of(&lab, "agent n1");
    lab.stop(pid, true);
    lab.start_cluster_agent(&t, 0, "default", &timing).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(kernel(&lab, 0), before_restart);
    let (ok, checked) = cni_call(
        &lab,
        "CHECK",
        0,
        "t1",
        &tp.netns,
        args,
        json!({ "prevResult": res }),
    );
    assert!(ok, "{checked}");
    let (ok, res) = cni_call(&lab, "DEL", 0, "t1", &tp.netns, args, json!({}));
    assert!(ok, "{res}");
    assert!(wait_for(Duration::from_secs(10), || tenant_eps(&lab) == 0));
    // A tenant without a network: a clear error, nothing made.
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: empty}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: void}\nspec: {tenant: empty}\n",
    )
    .unwrap();
    let vp = lab.add_pod(0, "v1").unwrap();
    let mut err = serde_json::Value::Null;
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (ok, e) = cni_call(
                &lab,
                "ADD",
                0,
                "v1",
                &vp.netns,
                "K8S_POD_NAMESPACE=void",
                json!({}),
            );
            assert!(!ok, "{e}");
            err = e;
            err["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("no Network")
        }),
        "{err}"
    );
    assert_eq!(err["code"], 7, "{err}");
    let links = lab.exec(&vp.netns, &["ip", "-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
    // A tenant pod's host port bound to a node address: refused, naming the field;
    // nothing made.
    let hp = lab.add_pod(0, "hp1").unwrap();
    let hp_args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=hp1";
    let node1 = lab.state.nodes[0].addr;
    let (ok, e) = cni_call(
        &lab,
        "ADD",
        0,
        "hp1",
        &hp.netns,
        hp_args,
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 8080, "protocol": "tcp", "hostIP": node1.to_string()}]}}),
    );
    assert!(!ok, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("runtimeConfig.portMappings[0].hostIP"),
        "{e}"
    );
    let links = lab.exec(&hp.netns, &["ip", "-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
    assert_eq!(tenant_eps(&lab), 0);
    // On every node address: the node's port leads into the world, to the pod, from
    // the outside and from the node itself; DEL closes it.
    let (ok, res) = cni_call(
        &lab,
        "ADD",
        0,
        "hp1",
        &hp.netns,
        hp_args,
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 8080, "protocol": "tcp"}]}}),
    );
    assert!(ok, "{res}");
    let www = lab.dir().join("www-hp1");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hp1").unwrap();
    let mut httpd = std::process::Command::new("busybox");
    httpd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&www);
    lab.spawn(&hp.netns, "httpd hp1", httpd).unwrap();
    let underlay = lab.state.underlay.clone();
    let node1_ns = lab.state.nodes[0].netns.clone();
    for from in [&underlay, &node1_ns] {
        assert!(
            wait_for(Duration::from_secs(10), || {
                common::cluster::http_get_port(&lab, from, node1, 8081).trim() == "hp1"
            }),
            "the host port of a tenant's pod does not lead to it from {from}"
        );
    }
    let map = |lab: &Lab| {
        let out = lab
            .exec(
                &node1_ns,
                &["nft", "list", "map", "ip", "trellis-worlds", "hostports"],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(map(&lab).contains("8081"), "{}", map(&lab));
    let httpd = pid_of(&lab, "httpd hp1");
    lab.stop(httpd, true);
    let (ok, res) = cni_call(&lab, "DEL", 0, "hp1", &hp.netns, hp_args, json!({}));
    assert!(ok, "{res}");
    assert!(
        wait_for(Duration::from_secs(10), || !map(&lab).contains("8081")),
        "{}",
        map(&lab)
    );

    // A network with a nodeSelector is served by the selected nodes before any pod
    // needs it, and only by them.
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Network\nmetadata: {name: edge}\n\
         spec: {cidr: 10.248.0.0/16, nodeSelector: {matchLabels: {role: edge}}}\n",
    )
    .unwrap();
    let labelled = wait_for(Duration::from_secs(10), || {
        let mut n2 = node_json(&lab, "n2");
        n2["metadata"]["labels"]["role"] = json!("edge");
        lab.cli_with_input(&t, &["apply", "-f", "-"], &n2.to_string())
            .is_ok()
    });
    assert!(labelled, "could not label n2");
    let edge_dir = |n: usize| lab.agent_paths(n).state_dir.join("networks/edge/ipam.redb");
    assert!(
        wait_for(Duration::from_secs(10), || edge_dir(1).exists()),
        "the selected node does not serve the network"
    );
    // (The IPAM file is made before the bridge: wait for the bridge too.)
    let bridge = trellis_api::naming::network_bridge("edge");
    let has_bridge = |lab: &Lab| {
        let out = lab
            .exec(&lab.state.nodes[1].netns.clone(), &["ip", "-o", "link"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!(": {bridge}:"))
    };
    assert!(
        wait_for(Duration::from_secs(10), || has_bridge(&lab)),
        "the selected node has no bridge for the network"
    );
    assert!(
        !edge_dir(0).exists(),
        "an unselected node serves the network"
    );
    // The label removed: the node no longer serves it (it has no pod there).
    let unlabelled = wait_for(Duration::from_secs(10), || {
        let mut n2 = node_json(&lab, "n2");
        n2["metadata"]["labels"]
            .as_object_mut()
            .map(|l| l.remove("role"));
        lab.cli_with_input(&t, &["apply", "-f", "-"], &n2.to_string())
            .is_ok()
    });
    assert!(unlabelled, "could not unlabel n2");
    assert!(
        wait_for(Duration::from_secs(30), || !edge_dir(1).exists()
            && !has_bridge(&lab)),
        "a node no longer selected still serves the network"
    );
    // Selected again, then the network deleted: gone from the node.
    let relabelled = wait_for(Duration::from_secs(10), || {
        let mut n2 = node_json(&lab, "n2");
        n2["metadata"]["labels"]["role"] = json!("edge");
        lab.cli_with_input(&t, &["apply", "-f", "-"], &n2.to_string())
            .is_ok()
    });
    assert!(relabelled);
    assert!(wait_for(Duration::from_secs(10), || has_bridge(&lab)));
    lab.cli(&t, &["delete", "network", "edge"]).unwrap();
    assert!(wait_for(Duration::from_secs(10), || !edge_dir(1).exists()));
}
