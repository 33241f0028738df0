//! Fabric convergence on node join: how long after a new node's agent starts every
//! original node has a route to the new node's pod subnet.
//!
//! Run as root: `cargo bench -p trellis --bench fabric_convergence`
//! (`TRELLIS_BENCH_NODES` original nodes, default 10; `TRELLIS_BENCH_JOINS` joins,
//! default 20; `TRELLIS_BENCH_BACKENDS`, default `vxlan,bgp,bgp-rr`: each in a lab of
//! its own, one after the other in the same run. `bgp` is the node mesh; `bgp-rr` makes
//! the first two nodes route reflectors (Node `spec.bgp.routeReflectorClusterID`), turns
//! the mesh off and peers every node with them through one BGPPeer, so a joining node
//! peers with the two reflectors only).
//!
//! A lab with `trellis server` in the underlay namespace, the `default` Network, and a
//! cluster agent (release build, heartbeat 1 s, resync 5 s as in the tests) on each of the
//! original nodes. Then, one at a time, a node joins: its namespace is made, its node
//! token written, and only then the clock starts, just before its agent process is spawned
//! (through `ip netns exec`, as the lab starts every agent). The agent registers its Node,
//! heartbeats, leases a subnet; the original agents see the Node change on their watch and
//! program routes. This process polls every original node's routing table over rtnetlink
//! (one socket bound inside each node namespace, a dump every 2 ms per node until it has
//! the route; no `ip` processes) for a /24 of the cluster CIDR that no node had before the
//! join. The sample is the time until the last of the original nodes has it. Afterwards
//! the subnet is checked against the lease the server holds for the node
//! (`status.leases[0].cidr`). Joined nodes stay, so the cluster grows to
//! NODES + JOINS nodes: later joins converge under more peers.
//!
//! Prints every join, then per backend p50/p99/max (nearest rank: with 20 joins p99 is
//! the maximum) and the target p99 <= 1 s.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{netns_path, wait_for, Lab};
use trellis_net::{Netlink, Netns};

const POLL: Duration = Duration::from_millis(2);
const TIMEOUT: Duration = Duration::from_secs(10);

fn env_usize(k: &str, d: usize) -> usize {
    match std::env::var(k) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{k} must be a positive integer, not {v:?}")),
        Err(_) => d,
    }
}

/// Nearest-rank percentile.
fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The node-sized subnets of the cluster CIDR a node has routes to.
async fn pod_routes(nl: &Netlink, cluster: Ipv4Net) -> HashSet<Ipv4Net> {
    let routes = nl.routes().await.expect("dump routes");
    routes
        .into_iter()
        .map(|r| r.0)
        .filter(|d| d.prefix_len() == 24 && cluster.contains(d))
        .collect()
}

/// One join's result.
#[derive(Debug)]
struct Join {
    node: String,
    subnet: Ipv4Net,
    /// Agent start → its CNI socket answers (informational).
    ready: Option<Duration>,
    /// Agent start → each original node has the route, in node order.
    per_node: Vec<Duration>,
}

fn agent_log(lab: &Lab, name: &str) -> String {
    std::fs::read_to_string(lab.dir().join(format!("agent-{name}.log"))).unwrap_or_default()
}

/// The reflectors and peering of the `bgp-rr` mode: nodes 1 and 2 reflect.
fn reflectors(lab: &Lab) -> String {
    let mut m = String::new();
    for n in &lab.state.nodes[..2] {
        m.push_str(&format!(
            "---\napiVersion: trellis/v1\nkind: Node\nmetadata: {{name: {}, labels: {{route-reflector: 'true'}}}}\n\
             spec: {{address: {}, bgp: {{routeReflectorClusterID: 244.0.0.1}}}}\n",
            n.name, n.addr
        ));
    }
    m.push_str(
        "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: to-reflectors}\n\
         spec: {nodeSelector: all(), peerSelector: route-reflector == 'true'}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n\
         spec: {nodeToNodeMeshEnabled: false}\n",
    );
    m
}

/// One mode's samples: route on all original nodes, on the first, new agent ready; and
/// the joins that did not converge.
struct Summary {
    mode: String,
    all: Vec<Duration>,
    first: Vec<Duration>,
    ready: Vec<Duration>,
    failures: Vec<String>,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let base = env_usize("TRELLIS_BENCH_NODES", 10);
    let joins = env_usize("TRELLIS_BENCH_JOINS", 20);
    let modes = std::env::var("TRELLIS_BENCH_BACKENDS")
        .or_else(|_| std::env::var("TRELLIS_BENCH_BACKEND"))
        .unwrap_or_else(|_| "vxlan,bgp,bgp-rr".into());
    assert!(base + joins <= 200, "a lab holds at most 200 nodes");
    assert!(
        base >= 2,
        "at least two original nodes (bgp-rr makes two reflectors)"
    );
    let summaries: Vec<Summary> = modes
        .split(',')
        .map(|m| run_mode(m.trim(), base, joins))
        .collect();
    println!("\nfabric convergence on join: agent process start -> route to the new node's subnet");
    println!(
        "{base} original nodes, {joins} joins each (cluster grows to {} nodes), rtnetlink poll every {} ms",
        base + joins,
        POLL.as_millis()
    );
    println!("                                            p50        p99        max   (ms)");
    let row = |what: &str, v: &[Duration]| {
        if v.is_empty() {
            println!("{what:<38}          -          -          -");
        } else {
            println!(
                "{what:<38}{:>10.1}{:>11.1}{:>11.1}",
                ms(pct(v, 0.5)),
                ms(pct(v, 0.99)),
                ms(pct(v, 1.0))
            );
        }
    };
    let mut pass = true;
    for s in &summaries {
        row(&format!("{}: route on all original nodes", s.mode), &s.all);
        row(&format!("{}: route on the first node", s.mode), &s.first);
        row(
            &format!("{}: new agent's CNI socket answers", s.mode),
            &s.ready,
        );
        if !s.failures.is_empty() {
            println!(
                "{}: {} join(s) did not converge within {TIMEOUT:?}: {}",
                s.mode,
                s.failures.len(),
                s.failures.join(", ")
            );
        }
        pass &= s.failures.is_empty()
            && !s.all.is_empty()
            && pct(&s.all, 0.99) <= Duration::from_secs(1);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load average {} at the end (2 cores)", load.join(" "));
    println!(
        "target p99 <= 1 s for every backend: {}",
        if pass { "PASS" } else { "FAIL" }
    );
}

/// Run the joins of one mode (`vxlan`, `bgp`, `bgp-rr`, or another backend) in a lab of
/// its own.
fn run_mode(mode: &str, base: usize, joins: usize) -> Summary {
    let backend = if mode == "bgp-rr" { "bgp" } else { mode };
    let cluster: Ipv4Net = "10.244.0.0/16".parse().expect("cidr");
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let timing = Timing::default();
    let t = Instant::now();
    let mut lab = Lab::new(base).expect("create lab");
    lab.start_server(&trellis, &timing).expect("server");
    lab.apply(&trellis, &network_manifest("default", backend))
        .expect("network");
    if mode == "bgp-rr" {
        lab.apply(&trellis, &reflectors(&lab)).expect("reflectors");
    }
    for n in 0..base {
        lab.start_cluster_agent(&trellis, n, "default", &timing)
            .expect("agent");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nls: Vec<Netlink> = lab.state.nodes[..base]
        .iter()
        .map(|n| {
            let ns = Netns::open(netns_path(&n.netns)).expect("open node netns");
            rt.block_on(async { Netlink::connect_in(&ns) })
                .expect("netlink in node namespace")
        })
        .collect();
    // The original mesh first: every node has a route to every other node's subnet (and
    // its own, through the bridge).
    let meshed = wait_for(Duration::from_secs(30), || {
        rt.block_on(async {
            for nl in &nls {
                if pod_routes(nl, cluster).await.len() < base {
                    return false;
                }
            }
            true
        })
    });
    assert!(meshed, "the {base} original nodes did not mesh within 30 s");
    eprintln!(
        "lab {}: {base} nodes meshed ({mode}) in {:.1} s",
        lab.state.name,
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));

    let mut results = Vec::new();
    let mut failures = Vec::new();
    for k in 0..joins {
        let node = lab.join_node().expect("join node");
        let name = lab.state.nodes[node].name.clone();
        let netns = lab.state.nodes[node].netns.clone();
        let socket = lab.agent_paths(node).socket;
        let before: HashSet<Ipv4Net> = rt.block_on(async {
            let mut s = HashSet::new();
            for nl in &nls {
                s.extend(pod_routes(nl, cluster).await);
            }
            s
        });
        let cmd = lab
            .cluster_agent_command(&trellis, node, "default", &timing)
            .expect("agent command");

        let t0 = Instant::now();
        lab.spawn(&netns, &format!("agent {name}"), cmd)
            .expect("spawn agent");
        let mut seen: Vec<Option<(Duration, Ipv4Net)>> = vec![None; base];
        let mut ready = None;
        rt.block_on(async {
            while seen.iter().any(Option::is_none) && t0.elapsed() < TIMEOUT {
                for (i, nl) in nls.iter().enumerate() {
                    if seen[i].is_some() {
                        continue;
                    }
                    let routes = pod_routes(nl, cluster).await;
                    if let Some(s) = routes.difference(&before).next() {
                        seen[i] = Some((t0.elapsed(), *s));
                    }
                }
                if ready.is_none() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                    ready = Some(t0.elapsed());
                }
                tokio::time::sleep(POLL).await;
            }
        });
        // The new agent serves pods once its node is set up (after the lease).
        while ready.is_none() && t0.elapsed() < TIMEOUT {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                ready = Some(t0.elapsed());
            }
            std::thread::sleep(POLL);
        }
        if seen.iter().any(Option::is_none) {
            let missing: Vec<String> = (0..base)
                .filter(|i| seen[*i].is_none())
                .map(|i| lab.state.nodes[i].name.clone())
                .collect();
            let log = agent_log(&lab, &name);
            let sockets = lab
                .exec_any(&netns, &["ss", "-tan"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let n1_log = agent_log(&lab, &lab.state.nodes[0].name);
            let n1_tail: Vec<&str> = n1_log.lines().rev().take(12).collect();
            eprintln!(
                "join {} ({name}): no route on {} after {TIMEOUT:?}\n{log}\n{name}'s sockets:\n{sockets}\nn1's log (tail):\n{}",
                k + 1,
                missing.join(", "),
                n1_tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            failures.push(name);
            continue;
        }
        let seen: Vec<(Duration, Ipv4Net)> = seen.into_iter().flatten().collect();
        let subnet = seen[0].1;
        assert!(
            seen.iter().all(|s| s.1 == subnet),
            "join {}: nodes saw different new subnets: {seen:?}",
            k + 1
        );
        // The server's lease for the node is the subnet the routes point at.
        let lease = lab
            .cli(&trellis, &["get", "node", &name, "-o", "json"])
            .ok()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .and_then(|v| {
                v["status"]["leases"][0]["cidr"]
                    .as_str()
                    .map(str::to_string)
            });
        assert_eq!(
            lease.as_deref(),
            Some(subnet.to_string().as_str()),
            "join {}: routes to {subnet}, but the server leased {name} {lease:?}",
            k + 1
        );
        let j = Join {
            node: name,
            subnet,
            ready,
            per_node: seen.iter().map(|s| s.0).collect(),
        };
        let (first, last) = (
            j.per_node.iter().min().copied().unwrap_or_default(),
            j.per_node.iter().max().copied().unwrap_or_default(),
        );
        let ready = j.ready.map_or("   -".into(), |d| format!("{:6.0}", ms(d)));
        eprintln!(
            "join {:>2} {:<4} {:<15} agent ready {ready} ms, first node {:6.1} ms, all {base} nodes {:6.1} ms ({} nodes in the lab)",
            k + 1,
            j.node,
            j.subnet.to_string(),
            ms(first),
            ms(last),
            lab.state.nodes.len()
        );
        results.push(j);
        // Let the other agents finish their pass before the next join.
        std::thread::sleep(Duration::from_millis(300));
    }

    let all: Vec<Duration> = results
        .iter()
        .map(|j| j.per_node.iter().max().copied().unwrap_or_default())
        .collect();
    let first: Vec<Duration> = results
        .iter()
        .map(|j| j.per_node.iter().min().copied().unwrap_or_default())
        .collect();
    let ready: Vec<Duration> = results.iter().filter_map(|j| j.ready).collect();
    Summary {
        mode: mode.to_string(),
        all,
        first,
        ready,
        failures,
    }
}
