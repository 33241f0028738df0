//! Tenant network lifecycle: creating a tenant's Network → the first pod on it reachable
//! from a pod on another node; deleting it → nothing of it left on any node.
//!
//! Run as root: `cargo bench -p trellis --bench network_lifecycle`
//! (`TRELLIS_BENCH_ROUNDS`, default 20; `TRELLIS_BENCH_NODES`, default 3).
//!
//! A lab with `trellis server`, the `default` Network (vxlan) and a cluster agent (release
//! build) on every node, serving only `default` at start; a Tenant `red` and its Namespace
//! `shop`. Per round: the clock starts just before `trellis apply` of a new Network of
//! `red` (vxlan, a fresh name, the same range every round); then a pod of `shop` is added
//! on node 1 and one on node 2 (CNI ADD without a `network`: the agents pick the tenant's
//! network and start serving it), and the second pings the first (one probe every 10 ms)
//! until it answers. The sample is that first answer (it includes making the tenant's
//! world namespace on both nodes). Then both pods go, the Network is deleted, and the
//! second figure is the time until no node has the tenant's world any more.
//! Prints p50/p99/max (nearest rank) of both, and the target: create → reachable p99 <= 1 s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{wait_for, Lab};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{k}: not a number")))
        .unwrap_or(d)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let rounds = env_usize("TRELLIS_BENCH_ROUNDS", 20);
    let nodes = env_usize("TRELLIS_BENCH_NODES", 3).max(2);
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let timing = Timing::default();
    let mut lab = Lab::new(nodes).expect("create lab");
    lab.start_server(&trellis, &timing).expect("server");
    lab.apply(&trellis, &network_manifest("default", "vxlan"))
        .expect("network");
    for n in 0..nodes {
        lab.start_cluster_agent(&trellis, n, "default", &timing)
            .expect("agent");
    }
    lab.apply(
        &trellis,
        "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: red}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {tenant: red}\n",
    )
    .expect("tenant");
    // Let the agents' informers see the namespace.
    std::thread::sleep(Duration::from_secs(1));
    let mut create = Vec::new();
    let mut delete = Vec::new();
    for i in 0..rounds {
        let net = format!("red-{i}");
        let t0 = Instant::now();
        lab.apply(
            &trellis,
            &format!(
                "apiVersion: trellis/v1\nkind: Network\nmetadata: {{name: {net}}}\nspec: {{cidr: 10.100.0.0/16, tenant: red}}\n"
            ),
        )
        .expect("network");
        let mut ips = Vec::new();
        let mut pods = Vec::new();
        for n in [0, 1] {
            let pod = lab.add_pod(n, &format!("p{i}")).expect("pod netns");
            let args = format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=p{i}");
            // The agent may see the Network a moment after the server has it.
            let mut ip = None;
            let ok = wait_for(Duration::from_secs(5), || {
                ip = lab.cni_add_pod_with(&plugin, &pod.netns, &args).ok();
                ip.is_some()
            });
            assert!(ok, "round {i}: ADD on node {n} kept failing");
            ips.push(ip.expect("address"));
            pods.push(pod);
        }
        let target = ips[0].to_string();
        let reachable = wait_for(Duration::from_secs(10), || {
            lab.exec_any(&pods[1].netns, &["ping", "-c", "1", "-W", "1", &target])
                .is_ok_and(|o| o.status.success())
        });
        assert!(reachable, "round {i}: {target} never answered");
        let d = t0.elapsed();
        create.push(d);
        for p in &pods {
            lab.remove_pod_netns(&p.netns).expect("remove pod");
        }
        let t1 = Instant::now();
        lab.cli(&trellis, &["delete", "network", &net])
            .expect("delete network");
        // The tenant's only network: its world goes from every node that had it.
        let gone = wait_for(Duration::from_secs(10), || {
            (0..nodes).all(|n| !lab.agent_paths(n).state_dir.join("worlds/red").exists())
        });
        assert!(gone, "round {i}: {net}'s world is still there");
        let r = t1.elapsed();
        delete.push(r);
        eprintln!(
            "round {i:>2}: created → reachable {:.1} ms, deleted → gone {:.1} ms",
            ms(d),
            ms(r)
        );
    }
    let p99 = pct(&create, 0.99);
    println!(
        "tenant network created → first pod reachable from another node ({rounds} rounds, {nodes} nodes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 1000 ms: {})",
        ms(pct(&create, 0.5)),
        ms(p99),
        ms(*create.iter().max().expect("samples")),
        if p99 <= Duration::from_secs(1) { "PASS" } else { "FAIL" }
    );
    println!(
        "network deleted → gone from every node: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(&delete, 0.5)),
        ms(pct(&delete, 0.99)),
        ms(*delete.iter().max().expect("samples")),
    );
}
