//! Pod-to-pod TCP throughput on `backend: bgp` against `host-gw`, in the same lab and
//! the same run: one lab (`trellis server`, a cluster agent on each of two nodes, one pod
//! per node); per round the `default` Network is switched to one backend, then the
//! other (the order alternates), and once the pod on node 1 reaches the pod on node 2
//! through the new routes, iperf3 runs one TCP stream between them for
//! `TRELLIS_BENCH_SECS` (default 3). The ratio bgp / host-gw per round, median over
//! `TRELLIS_BENCH_ROUNDS` (default 5). Both carry plain routes (host-gw: protocol 116
//! from the fabric; bgp: protocol 119 from the speakers), so the figure checks that BGP
//! puts nothing on the data path. Run as root, with iperf3.

use std::path::PathBuf;
use std::time::Duration;

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{wait_for, Lab};

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Switch the network to `backend` and wait until its routes carry the pods' traffic.
fn switch(lab: &Lab, trellis: &std::path::Path, backend: &str, client: &str, to: &str) {
    lab.apply(trellis, &network_manifest("default", backend))
        .expect("switch backend");
    let proto = if backend == "bgp" { "119" } else { "116" };
    let node1 = lab.state.nodes[0].netns.clone();
    let ok = wait_for(Duration::from_secs(30), || {
        let routes = lab
            .exec(&node1, &["ip", "route", "show", "proto", proto])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        !routes.is_empty()
            && lab
                .exec_any(client, &["ping", "-c", "1", "-W", "1", to])
                .is_ok_and(|o| o.status.success())
    });
    assert!(ok, "{backend}: the pods do not reach each other");
}

fn iperf(lab: &Lab, client: &str, to: &str, secs: u64) -> f64 {
    let t = secs.to_string();
    for _ in 0..20 {
        let out = lab
            .exec_any(client, &["iperf3", "-c", to, "-t", &t, "-J"])
            .expect("iperf3");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            if bps > 0.0 {
                return bps / 1e9;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("iperf3 never measured");
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let rounds = env_u64("TRELLIS_BENCH_ROUNDS", 5).max(1);
    let secs = env_u64("TRELLIS_BENCH_SECS", 3);
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let timing = Timing::default();
    let mut lab = Lab::new(2).expect("lab");
    lab.start_server(&trellis, &timing).expect("server");
    lab.apply(&trellis, &network_manifest("default", "host-gw"))
        .expect("network");
    for n in 0..2 {
        lab.start_cluster_agent(&trellis, n, "default", &timing)
            .expect("agent");
    }
    let mut pods = Vec::new();
    for n in 0..2 {
        let p = lab.add_pod(n, &format!("p{n}")).expect("pod");
        let ip = lab.cni_add_pod(&plugin, &p.netns).expect("ADD");
        pods.push((p.netns, ip.to_string()));
    }
    let (client, server) = (pods[0].0.clone(), pods[1].clone());
    let mut c = std::process::Command::new("iperf3");
    c.arg("-s");
    lab.spawn(&server.0, "iperf3 server", c).expect("iperf3 -s");
    let mut ratios = Vec::new();
    let (mut hg, mut bgp) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            ["host-gw", "bgp"]
        } else {
            ["bgp", "host-gw"]
        };
        let mut got = [0.0; 2];
        for backend in order {
            switch(&lab, &trellis, backend, &client, &server.1);
            let g = iperf(&lab, &client, &server.1, secs);
            got[usize::from(backend == "bgp")] = g;
        }
        eprintln!(
            "round {r}: host-gw {:.2} Gbit/s, bgp {:.2} Gbit/s",
            got[0], got[1]
        );
        hg.push(got[0]);
        bgp.push(got[1]);
        ratios.push(got[1] / got[0]);
    }
    let ratio = median(ratios);
    println!(
        "pod->pod throughput ({rounds} rounds x {secs} s, one stream): host-gw {:.2}, bgp {:.2} Gbit/s; bgp / host-gw (median of rounds) {ratio:.3} (target >= 0.98: {})",
        median(hg),
        median(bgp),
        if ratio >= 0.98 { "PASS" } else { "FAIL" }
    );
}
