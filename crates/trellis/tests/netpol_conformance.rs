//! NetworkPolicy and ClusterNetworkPolicy conformance in a 2-node lab: the standard
//! layout (namespaces x, y, z; pods a, b, c in each, spread over both nodes; TCP and UDP
//! echo servers on ports 80 and 81 in every pod), then every generated case: apply its
//! objects, probe the full pod → pod matrix until it equals the oracle's (or the
//! propagation time passes), remove the objects again.
//!
//! The expected matrices come from `trellis_lab::conformance::oracle`, written from the
//! specification independently of the data path (`trellis-policy`).
//!
//! Environment: `TRELLIS_NETPOL_CASES=<substring>` runs only the cases whose name
//! contains it; `TRELLIS_NETPOL_MAX_FAILURES=<n>` (default 10) stops the run after that
//! many failing cases.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::cluster::cluster_lab;
use common::{plugin, trellis};
use trellis_api::objects::AnyObject;
use trellis_lab::conformance::cases::{cases, standard_objects, standard_pod_keys, Case, Layout};
use trellis_lab::conformance::oracle::{Endpoint, Labels, NodeInfo, Oracle, Probe};
use trellis_lab::conformance::probe::{probe_all, EchoServers, ProbeConfig, Probed, Target};
use trellis_lab::conformance::{render_comparison, render_matrix, Matrix, PROBE_COLUMNS};
use trellis_lab::Lab;

/// A pod's traffic to its own address is not compared: probes go to pod addresses, and
/// a packet from a pod to its own address stays on the pod's loopback, never reaching
/// the node where Trellis enforces policy (the Kubernetes e2e suite's `AllowLoopback`).
/// The oracle still judges it by policy; its verdicts are printed for the record.
const IGNORE_LOOPBACK: bool = true;

/// How long a policy change may take to show in the data path.
const PROPAGATION: Duration = Duration::from_secs(5);
/// How long a Namespace or Pod label change may take (it travels through more objects).
const LABEL_PROPAGATION: Duration = Duration::from_secs(15);

fn probe_config() -> ProbeConfig {
    ProbeConfig {
        timeout: Duration::from_millis(800),
        udp_resend: Duration::from_millis(300),
    }
}

/// The lab with the standard layout, its pods' echo servers running.
struct Fixture {
    lab: Lab,
    layout: Layout,
    targets: Vec<Target>,
    _servers: EchoServers,
}

fn fixture() -> Fixture {
    let t = trellis();
    let mut lab = cluster_lab(2, 0, "vxlan", 0);
    // Namespaces and Pods first, so every attachment binds to its Pod.
    let standard = standard_objects();
    lab.apply(&t, &Case::manifest(&standard.iter().collect::<Vec<_>>()))
        .expect("apply the standard namespaces and pods");
    let nodes = lab.state.nodes.len();
    let mut targets = Vec::new();
    for (i, (ns, pod)) in standard_pod_keys().into_iter().enumerate() {
        let node = Layout::node_of(i, nodes);
        let p = lab
            .add_pod(node, &format!("{ns}-{pod}"))
            .expect("pod netns");
        let ip = lab
            .cni_add_pod_with(
                &plugin(),
                &p.netns,
                &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
            )
            .expect("ADD");
        targets.push(Target {
            name: format!("{ns}/{pod}"),
            netns: p.netns,
            ip,
        });
    }
    let node_infos = lab
        .state
        .nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            labels: Labels::new(),
            address: n.addr,
        })
        .collect();
    let ips: Vec<Ipv4Addr> = targets.iter().map(|t| t.ip).collect();
    let layout = Layout::standard(&ips, node_infos);
    let servers = EchoServers::start(&targets, &[80, 81]).expect("echo servers");
    Fixture {
        lab,
        layout,
        targets,
        _servers: servers,
    }
}

/// Probe until the matrix equals `expected` (loopback aside) or `within` passes;
/// returns the last probe and whether it matched.
///
/// A full probe waits out the timeout of every dropped probe, so while the last change
/// visibly has not arrived yet (a quick probe reaches a pod it should not), only quick
/// probes are spent: a reached probe is proof, whatever its timeout.
fn probe_until(f: &Fixture, expected: &Matrix, within: Duration) -> (Probed, bool) {
    let deadline = Instant::now() + within;
    let quick = ProbeConfig {
        timeout: Duration::from_millis(150),
        udp_resend: Duration::from_millis(60),
    };
    while Instant::now() < deadline {
        let probed = probe_all(&f.targets, &PROBE_COLUMNS, &quick).expect("probe");
        let m = probed.matrix();
        let leaks = expected
            .differences(&m, IGNORE_LOOPBACK)
            .into_iter()
            .any(|(c, s, d)| m.get(c, s, d));
        if !leaks {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        let probed = probe_all(&f.targets, &PROBE_COLUMNS, &probe_config()).expect("probe");
        let same = expected
            .differences(&probed.matrix(), IGNORE_LOOPBACK)
            .is_empty();
        if same || Instant::now() >= deadline {
            return (probed, same);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn explain(oracle: &Oracle, c: usize, s: usize, d: usize) -> String {
    let col = PROBE_COLUMNS[c];
    oracle
        .verdict(&Probe {
            src: Endpoint::Pod(s),
            dst: Endpoint::Pod(d),
            port: col.port,
            protocol: col.protocol,
        })
        .to_string()
}

fn no_policy_matrix(f: &Fixture) -> Matrix {
    Matrix::expected(&f.layout.oracle(), &PROBE_COLUMNS)
}

#[test]
fn prober_reaches_every_pod_without_policy() {
    let f = fixture();
    let expected = no_policy_matrix(&f);
    assert_eq!(expected.allowed_count(), expected.len());
    // The fabric may still be converging right after the agents joined.
    let (probed, same) = probe_until(&f, &expected, Duration::from_secs(20));
    let m = probed.matrix();
    assert!(
        same,
        "{}\nprobed:\n{}",
        render_comparison(
            &expected,
            &m,
            false,
            |c, s, d| explain(&f.layout.oracle(), c, s, d),
            |c, s, d| probed.outcome(c, s, d).to_string(),
        ),
        render_matrix(&m)
    );
    // Loopback too, and the full matrix within the prober's budget.
    assert_eq!(m.allowed_count(), m.len());
    assert!(
        probed.took < Duration::from_millis(1500),
        "{:?}",
        probed.took
    );
    eprintln!("{} probes reached in {:?}", m.len(), probed.took);
}

fn apply_objects(f: &Fixture, objects: &[&AnyObject]) -> Result<(), String> {
    if objects.is_empty() {
        return Ok(());
    }
    f.lab
        .apply(&trellis(), &Case::manifest(objects))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn delete_objects(f: &Fixture, objects: &[&AnyObject]) -> Result<(), String> {
    if objects.is_empty() {
        return Ok(());
    }
    f.lab
        .cli_with_input(
            &trellis(),
            &["delete", "-f", "-", "--ignore-not-found"],
            &Case::manifest(objects),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Remove a case's policies and put back the standard objects it replaced.
fn undo(f: &Fixture, case: &Case) -> Result<(), String> {
    delete_objects(f, &case.policies())?;
    let restore = case.restore_objects();
    apply_objects(f, &restore.iter().collect::<Vec<_>>())
}

#[test]
fn network_policy_conformance() {
    let f = fixture();
    let baseline = no_policy_matrix(&f);
    let (probed, same) = probe_until(&f, &baseline, Duration::from_secs(20));
    assert!(
        same,
        "the lab does not reach everything before any policy:\n{}",
        render_matrix(&probed.matrix())
    );
    let filter = std::env::var("TRELLIS_NETPOL_CASES").unwrap_or_default();
    let max_failures: usize = std::env::var("TRELLIS_NETPOL_MAX_FAILURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let all: Vec<Case> = cases(&f.layout)
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .collect();
    assert!(!all.is_empty(), "no case matches {filter:?}");
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut passed = 0;
    for (i, case) in all.iter().enumerate() {
        let oracle = case.oracle(&f.layout);
        let expected = Matrix::expected(&oracle, &PROBE_COLUMNS);
        let objects: Vec<&AnyObject> = case.objects.iter().collect();
        if let Err(e) = apply_objects(&f, &objects) {
            failures.push(format!("case {} : apply failed: {e}", case.name));
            let _ = undo(&f, case);
            if failures.len() >= max_failures {
                break;
            }
            continue;
        }
        let within = if case.changes_labels() {
            LABEL_PROPAGATION
        } else {
            PROPAGATION
        };
        let t0 = Instant::now();
        let (probed, same) = probe_until(&f, &expected, within);
        let m = probed.matrix();
        if same {
            passed += 1;
            eprintln!(
                "[{}/{}] ok   {} ({} denied, {:?})",
                i + 1,
                all.len(),
                case.name,
                expected.len() - expected.allowed_count(),
                t0.elapsed()
            );
        } else {
            let table = render_comparison(
                &expected,
                &m,
                IGNORE_LOOPBACK,
                |c, s, d| explain(&oracle, c, s, d),
                |c, s, d| probed.outcome(c, s, d).to_string(),
            );
            let manifest = Case::manifest(&objects);
            eprintln!("[{}/{}] FAIL {}", i + 1, all.len(), case.name);
            failures.push(format!(
                "case {} (not equal after {within:?}):\n{table}objects:\n{manifest}\n",
                case.name
            ));
        }
        if IGNORE_LOOPBACK {
            let n = (0..PROBE_COLUMNS.len())
                .flat_map(|c| (0..f.targets.len()).map(move |s| (c, s)))
                .filter(|&(c, s)| !expected.get(c, s, s))
                .count();
            if n > 0 {
                eprintln!("      ({n} probes of a pod to itself the oracle denies, not compared)");
            }
        }
        if let Err(e) = undo(&f, case) {
            failures.push(format!(
                "case {}: removing its objects failed: {e}",
                case.name
            ));
        }
        if failures.len() >= max_failures {
            eprintln!("stopping after {} failing cases", failures.len());
            break;
        }
    }
    eprintln!(
        "{passed} of {} cases passed in {:?}",
        all.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failing case(s) ({passed} of {} passed before the run stopped or ended):\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
