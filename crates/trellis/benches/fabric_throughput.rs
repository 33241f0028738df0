//! Pod-to-pod TCP throughput across two nodes for every fabric backend, against the bare
//! underlay and a hand-made kernel VXLAN, measured in the same run.
//!
//! Run as root, with iperf3 installed:
//! `cargo bench -p trellis --bench fabric_throughput` (`TRELLIS_BENCH_SECS` sets the
//! iperf3 duration, default 5; `TRELLIS_BENCH_ROUNDS` the repetitions, default 3).
//!
//! Per backend (host-gw, vxlan, hybrid, udp, l2) one lab: `trellis server` in the underlay
//! namespace, the `default` Network on that backend, a cluster agent on each of two nodes
//! and one pod per node (`trellis-cni` ADD). iperf3 runs TCP from the pod on node 1 to
//! the pod on node 2, one stream and four (`-P 4`); the figure is
//! `end.sum_received.bits_per_second` of `-J`. In the hybrid lab both nodes share a
//! segment, so hybrid routes as host-gw does.
//!
//! References, each interleaved round by round with the backend it is compared with:
//! - underlay (in the host-gw lab): node 1 → node 2 between the node namespaces' `eth0`
//!   addresses, i.e. veth → bridge → veth with nothing of Trellis on the path;
//! - hand-made host-gw (in the host-gw lab): the pod topology below, routed over `eth0`,
//!   to tell the cost of the pod path's extra hops (veth, bridge, forwarding on both
//!   nodes) from anything Trellis adds;
//! - hand-made routed (in the host-gw lab): the leanest veth pod path there is (Calico's:
//!   no bridge, a /32 route to the pod's veth), the floor for any design that gives a pod
//!   its own veth;
//! - hand-made VXLAN (in the vxlan lab, next to Trellis's device): the same topology
//!   built with `ip`/`bridge` commands only — a pod namespace behind a veth on a bridge on
//!   each node, a VXLAN device (VNI 99, dstport 4789, learning off) with static FDB and
//!   neighbour entries, a route to the other node's pod subnet via the VXLAN device, MTU
//!   1450 on the pods — on 10.99.1.0/24 and 10.99.2.0/24, devices named `hm…`.
//!
//! The underlay of a lab is a veth with no line rate: every path is CPU-bound, so a
//! ratio there prices the pod path's extra per-packet work, not a link's capacity. The
//! host-gw lab is therefore measured twice: as is, and with its two underlay ports shaped
//! like a NIC (`tbf`, `TRELLIS_BENCH_LINK`, default `10gbit`), where the question is
//! whether host-gw fills the link as the bare underlay does, and at what CPU cost (busy
//! cores from `/proc/stat` during each run, per Gbit/s received, against the underlay's).
//!
//! Each round measures, per stream count, a lab's paths back to back (reversed every other
//! round). Each figure is the median over the rounds and the table's ratios are ratios of
//! medians; the target lines (vxlan vs hand-made, host-gw vs underlay as is and through the
//! shaped link) take the median of the per-round ratios, which cancels load drifting
//! between rounds; the first two also show the ratio of the best runs (interference only
//! ever lowers a run). The load average is
//! printed: other work on the machine moves these figures (iperf3 runs at `nice -10` to
//! soften that; the udp backend's pump, in the agent, does not). Traffic stays inside the
//! labs; the labs (agents, servers, iperf3, namespaces) go when they drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{wait_for, Lab};

const BACKENDS: [&str; 5] = ["host-gw", "vxlan", "hybrid", "udp", "l2"];
const STREAMS: [usize; 2] = [1, 4];
/// iperf3 (client and server, and the kernel work done in their context) runs ahead of
/// other work on the machine, so a compile elsewhere moves the figures less.
const NICE: [&str; 3] = ["nice", "-n", "-10"];

fn env_u64(k: &str, d: u64) -> u64 {
    match std::env::var(k) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{k} must be a positive integer, not {v:?}")),
        Err(_) => d,
    }
}

/// One measured path: iperf3 client in `client_ns`, server (already listening) at `to`.
#[derive(Debug, Clone)]
struct Path {
    name: String,
    client_ns: String,
    to: Ipv4Addr,
}

/// Samples in Gbit/s: `samples[s]` for `STREAMS[s]`; `busy[s]` the machine's busy cores
/// (0 to the core count) averaged over each of those runs.
#[derive(Debug, Default)]
struct Samples {
    name: String,
    samples: [Vec<f64>; 2],
    busy: [Vec<f64>; 2],
}

/// Jiffies of all CPUs so far, from the first line of `/proc/stat`: (busy, stolen, total).
/// Stolen time is the hypervisor running something else on this VM's CPUs: neither busy
/// nor idle for us.
fn cpu_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let v: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("jiffies"))
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4] - v[7], v[7], total)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One iperf3 TCP run: Gbit/s received, and the machine's busy and stolen cores meanwhile.
/// Retries while the server is not listening yet (or still busy with the previous run).
fn iperf(lab: &Lab, p: &Path, streams: usize, secs: u64) -> (f64, f64, f64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (to, t, n) = (p.to.to_string(), secs.to_string(), streams.to_string());
    let argv = [
        NICE[0], NICE[1], NICE[2], "iperf3", "-c", &to, "-t", &t, "-P", &n, "-J",
    ];
    let mut last = String::new();
    for _ in 0..25 {
        let before = cpu_jiffies();
        let out = lab.exec_any(&p.client_ns, &argv).expect("run iperf3");
        let after = cpu_jiffies();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            if out.status.success() && bps > 0.0 {
                let total = (after.2 - before.2).max(1) as f64;
                let busy = (after.0 - before.0) as f64 / total;
                let stolen = (after.1 - before.1) as f64 / total;
                return (bps / 1e9, busy * cores, stolen * cores);
            }
        }
        last = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let err = v["error"].as_str().unwrap_or_default();
        if !(err.contains("unable to connect") || err.contains("busy")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("iperf3 {} ({streams} streams) failed:\n{last}", p.name);
}

/// Start an iperf3 server in `ns` (the lab stops it).
fn iperf_server(lab: &mut Lab, ns: &str, what: &str) {
    let mut c = Command::new(NICE[0]);
    c.args(&NICE[1..]).args(["iperf3", "-s"]);
    lab.spawn(ns, &format!("iperf3 {what}"), c)
        .expect("start iperf3 server");
}

/// Run `rounds` rounds; in each, for one stream count after the other, every path back to
/// back, in reverse order every other round (so a comparison's two sides alternate who
/// goes first and are measured seconds apart).
fn measure(lab: &Lab, paths: &[Path], rounds: u64, secs: u64) -> Vec<Samples> {
    let mut res: Vec<Samples> = paths
        .iter()
        .map(|p| Samples {
            name: p.name.clone(),
            ..Default::default()
        })
        .collect();
    for r in 0..rounds {
        for (s, streams) in STREAMS.iter().enumerate() {
            let mut order: Vec<usize> = (0..paths.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let (g, busy, stolen) = iperf(lab, &paths[k], *streams, secs);
                eprintln!(
                    "  round {} {:<17} -P {streams}: {g:6.2} Gbit/s, {busy:.2} cores busy, {stolen:.2} stolen",
                    r + 1,
                    paths[k].name
                );
                res[k].samples[s].push(g);
                res[k].busy[s].push(busy);
            }
        }
    }
    res
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Run `ip` or `bridge` with a whitespace-separated argument line; panics on failure.
fn run(line: &str) {
    let mut args = line.split_whitespace();
    let prog = args.next().expect("a command");
    let out = Command::new(prog).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A reference path built by hand with `ip`/`bridge` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandMade {
    /// Trellis's pod topology (veth on a bridge), routed to the other node's pod subnet
    /// via its underlay address (pod MTU 1500).
    HostGw,
    /// The leanest veth pod path (Calico's): no bridge, a /32 route to the pod's veth,
    /// the pod's gateway a static neighbour entry on the node's veth MAC; routed across
    /// nodes as host-gw (pod MTU 1500).
    Routed,
    /// Trellis's pod topology over a VXLAN device with static FDB/neighbour entries (pod
    /// MTU 1450).
    Vxlan,
}

/// A hand-made pod network between nodes 0 and 1 of `lab`, on 10.99.0.0/16 (10.98.0.0/16
/// for [`HandMade::Routed`]), devices named `hm…`: on node i (1, 2) a pod namespace behind
/// the veth `hmv0` (`hmr0` when routed) with 10.9x.i.2 and the route to the other
/// node's 10.9x.j.0/24; the bridged kinds put `hmv0` on a bridge `hmbr0` with
/// 10.9x.i.1/24. Returns the pods' namespaces and addresses.
fn hand_made(lab: &mut Lab, kind: HandMade) -> [(String, Ipv4Addr); 2] {
    let (mtu, net, v) = match kind {
        HandMade::HostGw => (1500, 99, "hmv0"),
        HandMade::Routed => (1500, 98, "hmr0"),
        HandMade::Vxlan => (1450, 99, "hmv0"),
    };
    let vtep_mac = |i: usize| format!("0e:99:0a:63:{i:02x}:00");
    let mut pods = Vec::new();
    for i in 1..=2usize {
        let node = lab.state.nodes[i - 1].clone();
        let pod = lab
            .add_pod(i - 1, &v[..3])
            .expect("hand-made pod namespace");
        let (n, p, local) = (&node.netns, &pod.netns, node.addr);
        run(&format!(
            "ip -n {n} link add {v} mtu {mtu} type veth peer name hmp0 mtu {mtu} netns {p}"
        ));
        run(&format!("ip -n {p} link set hmp0 name eth0"));
        run(&format!("ip -n {p} link set eth0 up"));
        if kind == HandMade::Routed {
            run(&format!("ip -n {n} link set {v} up"));
            run(&format!("ip -n {n} route add 10.{net}.{i}.2/32 dev {v}"));
            run(&format!("ip -n {p} addr add 10.{net}.{i}.2/32 dev eth0"));
            let out = lab
                .exec(n, &["cat", &format!("/sys/class/net/{v}/address")])
                .expect("veth MAC");
            let mac = String::from_utf8_lossy(&out.stdout).trim().to_string();
            run(&format!(
                "ip -n {p} route add 169.254.1.1 dev eth0 scope link"
            ));
            run(&format!(
                "ip -n {p} neigh add 169.254.1.1 lladdr {mac} dev eth0 nud permanent"
            ));
            run(&format!(
                "ip -n {p} route add default via 169.254.1.1 dev eth0"
            ));
        } else {
            run(&format!("ip -n {n} link add hmbr0 type bridge"));
            run(&format!("ip -n {n} addr add 10.{net}.{i}.1/24 dev hmbr0"));
            run(&format!("ip -n {n} link set hmbr0 mtu {mtu} up"));
            run(&format!("ip -n {n} link set {v} master hmbr0 up"));
            run(&format!("ip -n {p} addr add 10.{net}.{i}.2/24 dev eth0"));
            run(&format!("ip -n {p} route add default via 10.{net}.{i}.1"));
        }
        if kind == HandMade::Vxlan {
            run(&format!(
                "ip -n {n} link add hmvx99 type vxlan id 99 local {local} dev eth0 dstport 4789 nolearning"
            ));
            let mac = vtep_mac(i);
            run(&format!("ip -n {n} link set hmvx99 mtu 1450 address {mac}"));
            run(&format!("ip -n {n} addr add 10.99.{i}.0/32 dev hmvx99"));
            run(&format!("ip -n {n} link set hmvx99 up"));
        }
        lab.exec(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .expect("ip_forward");
        let addr = format!("10.{net}.{i}.2").parse().expect("address");
        pods.push((pod.netns.clone(), addr));
    }
    for i in 1..=2usize {
        let j = 3 - i;
        let n = lab.state.nodes[i - 1].netns.clone();
        let peer = lab.state.nodes[j - 1].addr;
        match kind {
            HandMade::HostGw | HandMade::Routed => {
                run(&format!(
                    "ip -n {n} route add 10.{net}.{j}.0/24 via {peer} dev eth0"
                ));
            }
            HandMade::Vxlan => {
                let mac = vtep_mac(j);
                run(&format!(
                    "ip -n {n} neigh add 10.99.{j}.0 lladdr {mac} dev hmvx99 nud permanent"
                ));
                run(&format!(
                    "bridge -n {n} fdb append {mac} dev hmvx99 dst {peer} self permanent"
                ));
                run(&format!(
                    "ip -n {n} route add 10.99.{j}.0/24 via 10.99.{j}.0 dev hmvx99 onlink"
                ));
            }
        }
    }
    let [a, b]: [(String, Ipv4Addr); 2] = pods.try_into().expect("two pods");
    assert!(
        wait_for(Duration::from_secs(5), || lab.ping(&a.0, b.1)),
        "hand-made {kind:?}: pod on n1 cannot reach {}",
        b.1
    );
    [a, b]
}

/// Shape the lab's underlay like a NIC of `rate` (a `tc` rate, e.g. `10gbit`): a token
/// bucket on each underlay port towards nodes 1 and 2, i.e. on both directions of the
/// node-to-node link. Everything the host-gw lab measures crosses these two ports.
fn limit_link(lab: &Lab, rate: &str) {
    let u = &lab.state.underlay;
    for port in ["n1", "n2"] {
        run(&format!(
            "tc -n {u} qdisc replace dev {port} root tbf rate {rate} burst 4mb latency 20ms"
        ));
    }
}

/// A lab with the server, the `default` Network on `backend`, agents on two nodes, one
/// pod per node reachable from the other, and an iperf3 server in node 2's pod.
fn cluster_lab(backend: &str) -> Lab {
    let t = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let timing = Timing::default();
    let mut lab = Lab::new(2).expect("create lab");
    lab.start_server(&t, &timing).expect("server");
    lab.apply(&t, &network_manifest("default", backend))
        .expect("network");
    for n in 0..2 {
        lab.start_cluster_agent(&t, n, "default", &timing)
            .expect("agent");
    }
    for n in 0..2 {
        let pod = lab.add_pod(n, "p1").expect("pod namespace");
        lab.cni_add_pod(&plugin, &pod.netns).expect("CNI ADD");
    }
    let (from, to) = (&lab.state.pods[0], &lab.state.pods[1]);
    let to_ip = to.ip.expect("pod address");
    assert!(
        wait_for(Duration::from_secs(15), || lab.ping(&from.netns, to_ip)),
        "{backend}: pod on n1 cannot reach {to_ip}"
    );
    let mtu = lab
        .exec(&from.netns, &["cat", "/sys/class/net/eth0/mtu"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let routes = lab
        .exec(
            &lab.state.nodes[0].netns,
            &["ip", "route", "show", "proto", "116"],
        )
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', "; ")
        })
        .unwrap_or_default();
    eprintln!(
        "{backend}: lab {}, pod MTU {mtu}, n1 fabric routes: {routes}",
        lab.state.name
    );
    let ns = to.netns.clone();
    iperf_server(&mut lab, &ns, "pod n2");
    lab
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    for tool in ["iperf3", "ip", "bridge", "tc", "ping", "nft"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| std::path::Path::new(d).join(tool).exists());
        assert!(
            found,
            "{tool} is missing (install iperf3, iproute2, iputils-ping, nftables)"
        );
    }
    let secs = env_u64("TRELLIS_BENCH_SECS", 5);
    let rounds = env_u64("TRELLIS_BENCH_ROUNDS", 3);
    let link = std::env::var("TRELLIS_BENCH_LINK").unwrap_or_else(|_| "10gbit".into());
    let started = Instant::now();
    let load_before = loadavg();

    let mut rows: Vec<Samples> = Vec::new();
    for backend in BACKENDS {
        let mut lab = cluster_lab(backend);
        let mut paths = vec![Path {
            name: backend.to_string(),
            client_ns: lab.state.pods[0].netns.clone(),
            to: lab.state.pods[1].ip.expect("pod address"),
        }];
        match backend {
            "host-gw" => {
                let n2 = lab.state.nodes[1].netns.clone();
                iperf_server(&mut lab, &n2, "node n2");
                paths.insert(
                    0,
                    Path {
                        name: "underlay".into(),
                        client_ns: lab.state.nodes[0].netns.clone(),
                        to: lab.state.nodes[1].addr,
                    },
                );
                for (kind, name) in [
                    (HandMade::HostGw, "hand-made host-gw"),
                    (HandMade::Routed, "hand-made routed"),
                ] {
                    let [a, b] = hand_made(&mut lab, kind);
                    iperf_server(&mut lab, &b.0, name);
                    paths.push(Path {
                        name: name.into(),
                        client_ns: a.0,
                        to: b.1,
                    });
                }
                rows.extend(measure(&lab, &paths, rounds, secs));
                // The same paths through a NIC-like link.
                limit_link(&lab, &link);
                let mut limited = paths.clone();
                for p in &mut limited {
                    p.name = format!("{} @link", p.name);
                }
                rows.extend(measure(&lab, &limited, rounds, secs));
                continue;
            }
            "vxlan" => {
                let [a, b] = hand_made(&mut lab, HandMade::Vxlan);
                iperf_server(&mut lab, &b.0, "hand-made pod n2");
                paths.push(Path {
                    name: "hand-made vxlan".into(),
                    client_ns: a.0,
                    to: b.1,
                });
            }
            _ => {}
        }
        rows.extend(measure(&lab, &paths, rounds, secs));
        // `lab` drops here: agents, server, iperf3 servers and namespaces go.
    }

    let med = |name: &str, s: usize| {
        let r = rows.iter().find(|r| r.name == name).expect("measured");
        median(&r.samples[s])
    };
    let under = [med("underlay", 0), med("underlay", 1)];
    println!(
        "\npod -> pod TCP throughput across two nodes (iperf3 -t {secs}, median of {rounds} rounds)"
    );
    println!("network namespaces over veth; underlay = node eth0 -> node eth0\n");
    println!("backend            1 stream   4 streams   ratio vs underlay (1 / 4 streams)");
    println!("                   Gbit/s     Gbit/s");
    let order = [
        "underlay",
        "host-gw",
        "vxlan",
        "hybrid",
        "udp",
        "l2",
        "hand-made host-gw",
        "hand-made routed",
        "hand-made vxlan",
    ];
    for name in order {
        let (a, b) = (med(name, 0), med(name, 1));
        println!(
            "{name:<18}{a:>8.2}{b:>12.2}{:>13.2} / {:.2}",
            a / under[0],
            b / under[1]
        );
    }
    // Targets: the median of the per-round ratios (each round measures both sides back
    // to back), which cancels load that drifts between rounds.
    let paired = |a: &str, b: &str, s: usize| {
        let find = |n: &str| rows.iter().find(|r| r.name == n).expect("measured");
        let (a, b) = (&find(a).samples[s], &find(b).samples[s]);
        median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
    };
    let best = |name: &str, s: usize| {
        let r = rows.iter().find(|r| r.name == name).expect("measured");
        r.samples[s].iter().copied().fold(0.0, f64::max)
    };
    let verdict = |r: f64| if r >= 0.95 { "PASS" } else { "MISS" };
    for (a, b, what) in [
        ("vxlan", "hand-made vxlan", "vxlan vs hand-made vxlan"),
        (
            "host-gw",
            "underlay",
            "host-gw vs underlay, no link limit (CPU-bound)",
        ),
    ] {
        let (r1, r4) = (paired(a, b, 0), paired(a, b, 1));
        let (b1, b4) = (best(a, 0) / best(b, 0), best(a, 1) / best(b, 1));
        println!(
            "{what}: ratio {r1:.2} (1 stream), {r4:.2} (4 streams) (target >= 0.95): {} / {}   [best of {rounds}: {b1:.2} / {b4:.2}]",
            verdict(r1),
            verdict(r4)
        );
    }
    for (a, b, what) in [
        (
            "host-gw",
            "hand-made host-gw",
            "host-gw vs hand-made host-gw (same topology)",
        ),
        (
            "hand-made routed",
            "underlay",
            "hand-made routed vs underlay (the leanest veth pod path)",
        ),
    ] {
        println!(
            "{what}: ratio {:.2} (1 stream), {:.2} (4 streams), no target",
            paired(a, b, 0),
            paired(a, b, 1)
        );
    }

    // The link-bound pass: throughput against the shaped underlay, and what the pod path
    // costs in CPU at that rate (busy cores per Gbit/s received).
    println!("\nthe same host-gw lab, its underlay ports shaped to {link} (tbf), median of {rounds} rounds\n");
    println!("path                      1 stream   4 streams   busy cores (1 / 4)   CPU per Gbit/s vs underlay (1 / 4)");
    let busy = |name: &str, s: usize| {
        let r = rows.iter().find(|r| r.name == name).expect("measured");
        median(&r.busy[s])
    };
    let per_gbit = |name: &str, s: usize| busy(name, s) / med(name, s);
    for name in [
        "underlay @link",
        "host-gw @link",
        "hand-made host-gw @link",
        "hand-made routed @link",
    ] {
        println!(
            "{name:<24}{:>8.2}{:>12.2}{:>13.2} / {:.2}{:>18.2} / {:.2}",
            med(name, 0),
            med(name, 1),
            busy(name, 0),
            busy(name, 1),
            per_gbit(name, 0) / per_gbit("underlay @link", 0),
            per_gbit(name, 1) / per_gbit("underlay @link", 1)
        );
    }
    println!(
        "host-gw vs hand-made host-gw at {link} (same topology, same node tables): CPU per Gbit/s {:.2} / {:.2}, no target",
        per_gbit("host-gw @link", 0) / per_gbit("hand-made host-gw @link", 0),
        per_gbit("host-gw @link", 1) / per_gbit("hand-made host-gw @link", 1)
    );
    let (r1, r4) = (
        paired("host-gw @link", "underlay @link", 0),
        paired("host-gw @link", "underlay @link", 1),
    );
    println!(
        "host-gw vs underlay through a {link} link: ratio {r1:.2} (1 stream), {r4:.2} (4 streams) (target >= 0.95): {} / {}",
        verdict(r1),
        verdict(r4)
    );
    println!("(target ratios: median over rounds of the ratio within a round; best of: ratio of the best runs)");
    println!("hybrid: both nodes on one segment, so it routes as host-gw; udp: userspace pump; l2: pods bridged onto the underlay segment (no routing), its ratio against the host-gw lab's underlay");
    println!(
        "{:.0} s in all; load average {load_before} before, {} after (2 cores)",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
