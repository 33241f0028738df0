//! How the node agents grow with tenants: 1 tenant of 10 pods vs 100 tenants of 10 pods
//! each, on a 3-node lab: agent memory (RSS) and the cost of one change.
//!
//! Run as root: `cargo bench -p trellis --bench tenant_scale` (`TRELLIS_BENCH_TENANTS`,
//! default 100; `TRELLIS_BENCH_PODS`, default 10 per tenant; `TRELLIS_BENCH_CHANGES`,
//! default 10).
//!
//! A lab with `trellis server`, the `default` Network and a cluster agent (release build)
//! on each of 3 nodes. Tenant `tN` has a Network (vxlan, all tenants the same range
//! `10.250.0.0/16`), a Namespace, and its pods spread over the nodes (CNI ADD without a
//! `network`: each agent makes the tenant's world on first use). At 1 tenant and again
//! once all tenants exist, the bench records: every agent's RSS; per change, (a) the CNI
//! ADD latency of a new pod of the first tenant, (b) a Service created in the first
//! tenant's namespace → its cluster IP in the first tenant's proxy table inside its
//! world on every node (polled with `nft` every 5 ms). Prints p50 of each and the
//! growth (many / one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{wait_for, Lab};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{k}: not a number")))
        .unwrap_or(d)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn tenant(i: usize) -> String {
    format!(
        "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {{name: t{i}}}\n---\n\
         apiVersion: trellis/v1\nkind: Network\nmetadata: {{name: t{i}-pods}}\nspec: {{cidr: 10.250.0.0/16, tenant: t{i}}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: t{i}-ns}}\nspec: {{tenant: t{i}}}\n---\n"
    )
}

/// ADD one pod of tenant `t` on node `n`; returns the ADD's duration.
fn add_pod(lab: &mut Lab, plugin: &Path, t: usize, n: usize, name: &str) -> Duration {
    let pod = lab.add_pod(n, name).expect("pod netns");
    let args = format!("K8S_POD_NAMESPACE=t{t}-ns");
    let t0 = Instant::now();
    let mut ok = lab.cni_add_pod_with(plugin, &pod.netns, &args).is_ok();
    let took = t0.elapsed();
    // The first pod of a tenant may come before the agent saw its namespace.
    if !ok {
        ok = wait_for(Duration::from_secs(5), || {
            lab.cni_add_pod_with(plugin, &pod.netns, &args).is_ok()
        });
    }
    assert!(ok, "ADD {name} kept failing");
    took
}

/// Whether the proxy tables in tenant `t0`'s world on node `n` hold `ip`.
fn in_world_table(lab: &Lab, n: usize, ip: &str) -> bool {
    let world = lab.agent_paths(n).state_dir.join("worlds/t0/netns");
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", world.display()))
        .args(["nft", "list", "ruleset"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(ip))
}

struct Figures {
    rss: Vec<f64>,
    add: Duration,
    svc: Duration,
}

fn measure(lab: &mut Lab, trellis: &Path, plugin: &Path, round: &str, changes: usize) -> Figures {
    let nodes = lab.state.nodes.len();
    let mut adds = Vec::new();
    let mut svcs = Vec::new();
    for i in 0..changes {
        adds.push(add_pod(lab, plugin, 0, i % nodes, &format!("{round}-a{i}")));
        let manifest = format!(
            "apiVersion: trellis/v1\nkind: Service\nmetadata: {{name: {round}-s{i}, namespace: t0-ns}}\nspec: {{selector: {{app: x{i}}}, ports: [{{port: 80}}]}}\n"
        );
        // A cluster IP no other Service of the world has: 10.96.<round>.<i + 10>.
        let ip = format!("10.96.{}.{}", if round == "one" { 1 } else { 2 }, i + 10);
        let manifest = manifest.replace("spec: {", &format!("spec: {{clusterIP: {ip}, "));
        let t0 = Instant::now();
        lab.apply(trellis, &manifest).expect("service");
        let mut done = vec![false; nodes];
        let ok = wait_for(Duration::from_secs(20), || {
            for (n, d) in done.iter_mut().enumerate() {
                if !*d {
                    *d = in_world_table(lab, n, &ip);
                }
            }
            done.iter().all(|d| *d)
        });
        assert!(ok, "service {round}-s{i} ({ip}) not programmed everywhere");
        svcs.push(t0.elapsed());
    }
    let rss = (0..nodes)
        .map(|n| {
            let pid = lab
                .state
                .procs
                .iter()
                .find(|p| p.what == format!("agent n{}", n + 1))
                .expect("agent")
                .pid;
            rss_mib(pid)
        })
        .collect();
    Figures {
        rss,
        add: median(adds),
        svc: median(svcs),
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let tenants = env_usize("TRELLIS_BENCH_TENANTS", 100);
    let pods = env_usize("TRELLIS_BENCH_PODS", 10);
    let changes = env_usize("TRELLIS_BENCH_CHANGES", 10);
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let timing = Timing::default();
    let mut lab = Lab::new(3).expect("create lab");
    lab.start_server(&trellis, &timing).expect("server");
    lab.apply(&trellis, &network_manifest("default", "vxlan"))
        .expect("network");
    for n in 0..3 {
        lab.start_cluster_agent(&trellis, n, "default", &timing)
            .expect("agent");
    }
    let start = Instant::now();
    let mut all = String::new();
    for t in 0..tenants {
        all += &tenant(t);
    }
    lab.apply(&trellis, &all).expect("tenants");
    std::thread::sleep(Duration::from_secs(1));
    for p in 0..pods {
        add_pod(&mut lab, &plugin, 0, p % 3, &format!("t0-p{p}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let one = measure(&mut lab, &trellis, &plugin, "one", changes);
    for t in 1..tenants {
        for p in 0..pods {
            add_pod(&mut lab, &plugin, t, p % 3, &format!("t{t}-p{p}"));
        }
    }
    eprintln!(
        "{tenants} tenants x {pods} pods placed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let many = measure(&mut lab, &trellis, &plugin, "many", changes);
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "agent RSS (MiB, per node): 1 tenant {:?}, {tenants} tenants {:?}; growth {:.2}x ({:.2} MiB per tenant)",
        one.rss.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
        many.rss.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
        avg(&many.rss) / avg(&one.rss),
        (avg(&many.rss) - avg(&one.rss)) / (tenants.max(2) - 1) as f64
    );
    println!(
        "CNI ADD of a tenant pod (p50 of {changes}): 1 tenant {:.1} ms, {tenants} tenants {:.1} ms; growth {:.2}x",
        ms(one.add),
        ms(many.add),
        many.add.as_secs_f64() / one.add.as_secs_f64()
    );
    println!(
        "Service created -> in the tenant's proxy table on every node (p50 of {changes}, including the trellis apply process): 1 tenant {:.1} ms, {tenants} tenants {:.1} ms; growth {:.2}x",
        ms(one.svc),
        ms(many.svc),
        many.svc.as_secs_f64() / one.svc.as_secs_f64()
    );
}
