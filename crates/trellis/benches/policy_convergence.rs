//! Policy convergence: a label change on the server → enforced on every node.
//!
//! Run as root: `cargo bench -p trellis --bench policy_convergence`
//! (`TRELLIS_BENCH_NODES` nodes, default 10; `TRELLIS_BENCH_CHANGES`, default 50).
//!
//! A lab with `trellis server`, the `default` Network (vxlan) and a cluster agent (release
//! build) on every node; a "server" pod in namespace `x` on every node and a "client" pod
//! in namespace `y` on the first. `x` is isolated: its pods accept only pods labelled
//! `access: "yes"`, from any namespace. Each change flips the client's Pod label between
//! `yes` and `no` (one `trellis apply`; the clock starts just before it) and this process
//! polls every node's policy table over netlink (one nf_tables socket bound inside each
//! node namespace, a dump of the set `np-in-any` every 2 ms) until every node's server pod
//! accepts (or no longer accepts) the client. The sample is the time until the last node
//! has it. Prints p50/p99/max (nearest rank) and the target p99 <= 1 s.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{netns_path, wait_for, Lab};
use trellis_net::nftnl::{attr, msg, parse_attrs, Attrs, Socket, FAMILY_IP};
use trellis_net::Netns;

const POLL: Duration = Duration::from_millis(2);
const TIMEOUT: Duration = Duration::from_secs(10);

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

/// The `subject . peer` pairs of `np-in-any` in the calling thread's namespace.
fn pairs(sock: &mut Socket) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut a = Attrs::new();
    a.put_str(1, "trellis-policy").put_str(2, "np-in-any");
    let Ok(msgs) = sock.dump(FAMILY_IP, msg::GETSETELEM, &a) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in msgs {
        let Some(list) = attr(&m, 3) else { continue };
        for (ty, e) in parse_attrs(list) {
            if ty != 1 {
                continue;
            }
            if let Some(k) = attr(e, 1).and_then(|k| attr(k, 1)) {
                if k.len() >= 8 {
                    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                    out.push((ip(&k[0..4]), ip(&k[4..8])));
                }
            }
        }
    }
    out
}

fn pod_manifest(ns: &str, name: &str, access: &str) -> String {
    format!(
        "apiVersion: trellis/v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}, access: \"{access}\"}}}}\n"
    )
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let nodes = env_usize("TRELLIS_BENCH_NODES", 10);
    let changes = env_usize("TRELLIS_BENCH_CHANGES", 50);
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let timing = Timing::default();
    let t = Instant::now();
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
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-access, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {access: \"yes\"}}}]}]\n",
    )
    .expect("policy");
    let mut servers = Vec::new();
    for n in 0..nodes {
        let name = format!("server{n}");
        lab.apply(&trellis, &pod_manifest("x", &name, "no"))
            .expect("pod");
        let pod = lab.add_pod(n, &name).expect("pod netns");
        let ip = lab
            .cni_add_pod_with(
                &plugin,
                &pod.netns,
                &format!("K8S_POD_NAMESPACE=x;K8S_POD_NAME={name}"),
            )
            .expect("ADD");
        servers.push(ip);
    }
    lab.apply(&trellis, &pod_manifest("y", "client", "no"))
        .expect("client pod");
    let cpod = lab.add_pod(0, "client").expect("client netns");
    let client = lab
        .cni_add_pod_with(
            &plugin,
            &cpod.netns,
            "K8S_POD_NAMESPACE=y;K8S_POD_NAME=client",
        )
        .expect("client ADD");
    eprintln!(
        "lab {}: {nodes} nodes, {nodes} server pods, client {client} ready in {:.1} s",
        lab.state.name,
        t.elapsed().as_secs_f64()
    );

    // One polling thread per node, each with a socket inside its node namespace.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, bool, Instant)>();
    let want = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0)); // 0 idle, 1 allow, 2 deny
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        let path = netns_path(&lab.state.nodes[n].netns);
        let (tx, want, stop, server) = (tx.clone(), want.clone(), stop.clone(), *server);
        pollers.push(std::thread::spawn(move || {
            let ns = Netns::open(&path).expect("node netns");
            ns.run(move || {
                let mut sock = Socket::open().expect("nf_tables socket");
                let mut last = 0u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let w = want.load(std::sync::atomic::Ordering::Relaxed);
                    if w != 0 && w != last {
                        let has = pairs(&mut sock).contains(&(server, client));
                        if has == (w == 1) {
                            let _ = tx.send((n, has, Instant::now()));
                            last = w;
                        }
                    }
                    std::thread::sleep(POLL);
                }
            })
            .expect("enter node netns");
        }));
    }
    // Everything settled: nobody accepts the client yet.
    std::thread::sleep(Duration::from_secs(2));
    let mut samples = Vec::new();
    for i in 0..changes {
        let allow = i % 2 == 0;
        let t0 = Instant::now();
        lab.apply(
            &trellis,
            &pod_manifest("y", "client", if allow { "yes" } else { "no" }),
        )
        .expect("label change");
        want.store(
            if allow { 1 } else { 2 },
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut seen = vec![None; nodes];
        let ok = wait_for(TIMEOUT, || {
            while let Ok((n, has, at)) = rx.try_recv() {
                if has == allow {
                    seen[n] = Some(at);
                }
            }
            seen.iter().all(Option::is_some)
        });
        assert!(
            ok,
            "change {i}: not enforced on every node within {TIMEOUT:?}: {seen:?}"
        );
        let last = seen.iter().flatten().max().expect("samples");
        let d = last.duration_since(t0);
        eprintln!(
            "change {i:>2} ({}): every node after {:.1} ms",
            if allow { "allow" } else { "deny" },
            d.as_secs_f64() * 1e3
        );
        samples.push(d);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        let _ = p.join();
    }
    let p99 = pct(&samples, 0.99);
    println!(
        "label change -> enforced on all {nodes} nodes, {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; target p99 <= 1 s: {}",
        pct(&samples, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        pct(&samples, 1.0).as_secs_f64() * 1e3,
        if p99 <= Duration::from_secs(1) { "PASS" } else { "FAIL" }
    );
}
