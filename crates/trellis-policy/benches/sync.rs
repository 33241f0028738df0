//! Policy programming cost, in a throwaway network namespace (needs root; the work runs
//! on a thread that unshares its own network namespace, the root one is never touched).
//!
//! `cargo bench -p trellis-policy --bench sync [-- ENDPOINTS CHANGES]` (default 10,000
//! endpoints of which 100 on this node, 200 changes of each kind), for 100, 1,000 and
//! 10,000 NetworkPolicies (`POLICIES=1000` runs one count).
//!
//! The cluster: 50 namespaces; namespace `ns0` holds the pods and the 10 policies the
//! changes touch, the other 49 hold the other pods and every other policy (each selects
//! its own app and allows two other apps, one of them across namespaces by label), so
//! the per-change figures show what the unrelated policies cost a change: nothing, if
//! the work is proportional to the change. Measured per count:
//! - full sync into an empty table (compile + write), and a restart's full sync (a new
//!   compiler and table over the same kernel state: must write nothing);
//! - p50 / p99 of one label change (a pod of `ns0` moves between two identities), one
//!   new pod on this node, one policy change (a port of an `ns0` policy), each compiled
//!   and written as one transaction.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use trellis_api::objects::{parse_yaml, AnyObject, NetworkPolicySpec};
use trellis_policy::compile::{Change, Compiler};
use trellis_policy::model::{Inputs, PodInfo};
use trellis_policy::table::Table;

const NODE: &str = "bench-node";
const NAMESPACES: u32 = 50;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn pod(i: u32, ns: u32, app: String, local: bool) -> PodInfo {
    let mut labels = BTreeMap::new();
    labels.insert("app".to_string(), app);
    labels.insert("role".to_string(), format!("r{}", i % 2));
    PodInfo {
        namespace: format!("ns{ns}"),
        name: format!("pod{i}"),
        ip: Ipv4Addr::from(0x0af4_0000 + i),
        labels,
        ports: Vec::new(),
        node: if local {
            NODE.into()
        } else {
            format!("node{}", i % 100)
        },
    }
}

fn netpol(yaml: &str) -> NetworkPolicySpec {
    match parse_yaml(yaml).expect("bench policy parses").remove(0) {
        AnyObject::NetworkPolicy(p) => p.spec,
        _ => unreachable!(),
    }
}

/// A core policy of `ns0`: app core<k> accepts app core<k+1> and role r1 on `port`.
fn core_policy(k: u32, port: u16) -> NetworkPolicySpec {
    netpol(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: c{k}, namespace: ns0}}\nspec:\n  podSelector: {{matchLabels: {{app: core{k}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: core{}}}}}}}, {{podSelector: {{matchLabels: {{role: r1}}}}}}]\n    ports: [{{port: {port}}}]\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{app: core{}}}}}}}]\n",
        (k + 1) % 10,
        (k + 2) % 10
    ))
}

/// A background policy of another namespace.
fn bg_policy(j: u32) -> ((String, String), NetworkPolicySpec) {
    let ns = 1 + j % (NAMESPACES - 1);
    let spec = netpol(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b{j}, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: bg{j}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: bg{}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: bg{}}}}}}}]\n    ports: [{{port: {}, protocol: TCP}}, {{port: 53, protocol: UDP}}]\n",
        j + 1,
        j % 5,
        j + 2,
        8000 + j % 100
    ));
    ((format!("ns{ns}"), format!("b{j}")), spec)
}

fn inputs(endpoints: u32, local: u32, policies: u32) -> Inputs {
    let mut inp = Inputs::default();
    for n in 0..NAMESPACES {
        let mut l = BTreeMap::new();
        l.insert(
            "team".to_string(),
            if n == 0 {
                "core".into()
            } else {
                format!("t{}", n % 5)
            },
        );
        inp.namespaces.insert(format!("ns{n}"), l);
    }
    let bg = policies.saturating_sub(10).max(1);
    for i in 0..endpoints {
        // 1 pod in 10 is in ns0 (10 core apps); the rest spread over the background apps.
        // Every (endpoints / local)-th pod runs here; an odd stride spreads them over
        // the apps.
        let stride = (endpoints / local.max(1)).max(1) | 1;
        let is_local = i % stride == 0;
        let p = if i % 10 == 0 {
            pod(i, 0, format!("core{}", (i / 10) % 10), is_local)
        } else {
            let j = i % bg;
            pod(i, 1 + j % (NAMESPACES - 1), format!("bg{j}"), is_local)
        };
        inp.pods.insert(p.ip, p);
    }
    for k in 0..10 {
        inp.netpols
            .insert(("ns0".into(), format!("c{k}")), core_policy(k, 80));
    }
    for j in 0..policies.saturating_sub(10) {
        let (k, spec) = bg_policy(j);
        inp.netpols.insert(k, spec);
    }
    inp
}

fn run(endpoints: u32, local: u32, policies: u32, changes: u32) -> (Duration, Duration, Duration) {
    let inp = inputs(endpoints, local, policies);
    let mut c = Compiler::new(NODE, &["10.244.0.1".parse().unwrap()], &[]);
    let mut t = Table::new();
    let t0 = Instant::now();
    let d = c.update(inp.clone());
    let compile = t0.elapsed();
    let r = t.full_sync(&c).expect("full sync");
    let full = t0.elapsed();
    let elements: usize = c.desired().values().map(|s| s.len()).sum();
    println!(
        "{policies} policies, {endpoints} endpoints ({local} local): full sync into an empty table {full:?} (compile {compile:?}; {elements} elements, {} added; delta {})",
        r.added,
        d.len()
    );
    // A restart: a new compiler and table over what the kernel holds.
    let t0 = Instant::now();
    let mut c2 = Compiler::new(NODE, &["10.244.0.1".parse().unwrap()], &[]);
    c2.update(inp.clone());
    let r2 = Table::new().full_sync(&c2).expect("restart sync");
    println!(
        "  restart (new compiler, unchanged kernel): {:?}, wrote {} (must be nothing: {})",
        t0.elapsed(),
        if r2.changed_nothing() {
            "nothing"
        } else {
            "something"
        },
        r2.changed_nothing()
    );
    assert!(r2.changed_nothing(), "{r2:?}");
    drop(c2);

    let time = |c: &mut Compiler, t: &mut Table, ch: Vec<Change>| {
        let t0 = Instant::now();
        let d = c.apply(ch);
        t.apply(c, &d).expect("apply");
        (t0.elapsed(), d.len())
    };
    // Label changes: a pod of ns0 flips role r0 <-> r1 (a peer of every core policy
    // when r1), alternating local and remote pods.
    let mut label = Vec::new();
    let mut elems = 0;
    for n in 0..changes {
        let ip = Ipv4Addr::from(0x0af4_0000 + (n % 50) * 10);
        let mut p = c.inputs().pods[&ip].clone();
        let r = if p.labels["role"] == "r1" { "r0" } else { "r1" };
        p.labels.insert("role".into(), r.into());
        let (d, e) = time(&mut c, &mut t, vec![Change::Pod(ip, Some(p))]);
        label.push(d);
        elems += e;
    }
    let label_elems = elems / changes as usize;
    // New pods on this node in ns0 (each then removed, untimed).
    let mut new_pod = Vec::new();
    let mut elems = 0;
    for n in 0..changes {
        let i = endpoints + n;
        let p = pod(i, 0, format!("core{}", n % 10), true);
        let ip = p.ip;
        let (d, e) = time(&mut c, &mut t, vec![Change::Pod(ip, Some(p))]);
        new_pod.push(d);
        elems += e;
        time(&mut c, &mut t, vec![Change::Pod(ip, None)]);
    }
    let pod_elems = elems / changes as usize;
    // Policy changes: a core policy's port 80 <-> 8080.
    let mut policy = Vec::new();
    let mut elems = 0;
    for n in 0..changes {
        let k = n % 10;
        let port = if (n / 10) % 2 == 0 { 8080 } else { 80 };
        let (d, e) = time(
            &mut c,
            &mut t,
            vec![Change::NetPol(
                ("ns0".into(), format!("c{k}")),
                Some(core_policy(k, port)),
            )],
        );
        policy.push(d);
        elems += e;
    }
    let policy_elems = elems / changes as usize;
    let (l99, p99, q99) = (
        pct(&mut label, 0.99),
        pct(&mut new_pod, 0.99),
        pct(&mut policy, 0.99),
    );
    println!(
        "  label change: p50 {:?} p99 {l99:?} ({label_elems} elements/change)",
        pct(&mut label, 0.5)
    );
    println!(
        "  new pod:      p50 {:?} p99 {p99:?} ({pod_elems} elements/change)",
        pct(&mut new_pod, 0.5)
    );
    println!(
        "  policy change: p50 {:?} p99 {q99:?} ({policy_elems} elements/change)",
        pct(&mut policy, 0.5)
    );
    println!(
        "  targets: full sync <= 2 s: {}; per change p99 <= 5 ms: {}",
        if full <= Duration::from_secs(2) {
            "PASS"
        } else {
            "FAIL"
        },
        if l99.max(p99).max(q99) <= Duration::from_millis(5) {
            "PASS"
        } else {
            "FAIL"
        }
    );
    // Leave an empty table for the next count.
    let mut empty = Compiler::new(NODE, &[], &[]);
    empty.update(Inputs::default());
    Table::new().full_sync(&empty).expect("empty the table");
    (l99, p99, q99)
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let endpoints = args.first().copied().unwrap_or(10_000);
    let changes = args.get(1).copied().unwrap_or(200);
    let local: u32 = std::env::var("LOCAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let counts: Vec<u32> = match std::env::var("POLICIES") {
        Ok(v) => vec![v.parse().expect("POLICIES")],
        Err(_) => vec![100, 1_000, 10_000],
    };
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root");
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let mut results = Vec::new();
        for p in &counts {
            results.push((*p, run(endpoints, local, *p, changes)));
        }
        if let (Some(first), Some(last)) = (results.first(), results.last()) {
            if first.0 != last.0 {
                let r = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-9);
                println!(
                    "per-change p99 at {} / at {} policies: label {:.2}, new pod {:.2}, policy {:.2} (target <= 1.5)",
                    last.0,
                    first.0,
                    r(first.1 .0, last.1 .0),
                    r(first.1 .1, last.1 .1),
                    r(first.1 .2, last.1 .2)
                );
            }
        }
    })
    .join()
    .expect("bench thread");
}
