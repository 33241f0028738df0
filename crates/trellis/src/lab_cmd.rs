//! `trellis lab up|down|exec|status`: a persistent lab for the demo and for poking around.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use trellis_api::objects::{AnyObject, Endpoint};
use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::routed::RackRouter;
use trellis_lab::Lab;

#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Create a lab: an underlay with the Trellis server, N nodes each running an agent
    /// in cluster mode, P pods per node, and print the reachability matrix.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The Network's backend: vxlan (default), host-gw, hybrid, udp, l2 or bgp
        /// (bgp with --racks).
        #[arg(long)]
        backend: Option<String>,
        /// A routed underlay instead of one segment: nodes per rack (`2,2`), each rack
        /// an L2 segment behind its own top-of-rack router (BIRD in odd racks, FRR in
        /// even ones) that peers over eBGP with its nodes and the other routers; the
        /// Network on bgp, each node its own AS, no node mesh. Replaces --nodes.
        #[arg(long, value_delimiter = ',')]
        racks: Vec<usize>,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Lab name (namespaces are called trlab-NAME-...).
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Remove a lab (or all persistent labs with --all).
    Down {
        /// Lab name.
        #[arg(default_value = "demo")]
        name: String,
        /// Remove every persistent lab.
        #[arg(long)]
        all: bool,
    },
    /// The lab's HTTP backend (ingress tests and benchmarks); run it inside a pod.
    #[command(hide = true)]
    Echo(crate::lab_echo_cmd::EchoArgs),
    /// Run a command inside a lab namespace: `u`, a node (`n1`) or a pod (`n1-p1`).
    Exec {
        /// Lab name.
        name: String,
        /// Target namespace.
        target: String,
        /// The command.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Pods to try policies on: `add NAME --node N [--namespace NS] [--labels k=v,...]
    /// [--ports name:port/proto,...]`, `del NAME`.
    #[command(subcommand)]
    Pod(crate::lab_pod_cmd::LabPodCmd),
    /// Two tenants (or more) side by side with the same address range: a Tenant,
    /// Network, Namespace and pod on every node each, and who answers every address
    /// from every pod.
    Tenants(crate::lab_tenants_cmd::TenantsArgs),
    /// Show a lab's namespaces, addresses and processes.
    Status {
        /// Lab name (all labs when omitted).
        name: Option<String>,
    },
}

pub(crate) fn sibling(bin: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(bin);
    if !p.exists() {
        bail!("{} not found next to {}", bin, me.display());
    }
    Ok(p)
}

pub fn run(cmd: LabCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::Pod(c) => crate::lab_pod_cmd::run(c),
        LabCmd::Tenants(a) => crate::lab_tenants_cmd::run(a),
        LabCmd::Up {
            nodes,
            backend,
            racks,
            pods,
            name,
        } => up(nodes, backend.as_deref(), &racks, pods, &name),
        LabCmd::Down { name, all } => {
            let names = if all {
                trellis_lab::list_persistent()
            } else {
                vec![name]
            };
            let mut failed = false;
            for n in names {
                let lab = Lab::load(&n)?;
                for e in lab.destroy() {
                    eprintln!("{n}: {e}");
                    failed = true;
                }
                println!("lab {n} removed");
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        LabCmd::Echo(a) => crate::lab_echo_cmd::run(a),
        LabCmd::Exec { name, target, argv } => {
            let lab = Lab::load(&name)?;
            let ns = lab.resolve(&target).with_context(|| {
                format!("lab {name} has no namespace {target:?} (try u, n1, n1-p1)")
            })?;
            let mut c = lab.command(&ns, &argv[0]);
            c.args(&argv[1..]);
            // The CLI inside the lab talks to the lab's server as admin.
            if lab.client_config().exists() && std::env::var_os("TRELLIS_CONFIG").is_none() {
                c.env("TRELLIS_CONFIG", lab.client_config());
            }
            let status = c.status()?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        LabCmd::Status { name } => {
            let names = match name {
                Some(n) => vec![n],
                None => trellis_lab::list_persistent(),
            };
            if names.is_empty() {
                println!("no labs");
            }
            for n in names {
                print_status(&Lab::load(&n)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(lab: &Lab) {
    let s = &lab.state;
    println!("lab {}  (state: {})", s.name, lab.dir().display());
    println!(
        "  underlay  {:<28} {}.1/24 on bridge trlu0",
        s.underlay,
        trellis_lab::UNDERLAY_PREFIX
    );
    if let Some(server) = s.notes.get("server") {
        println!("  server    {server} (in the underlay namespace)");
    }
    for n in &s.nodes {
        let subnet = s
            .notes
            .get(&format!("subnet {}", n.name))
            .map(String::as_str)
            .unwrap_or("-");
        println!(
            "  node {:<4} {:<28} {}  pods {}",
            n.name, n.netns, n.addr, subnet
        );
    }
    for p in &s.pods {
        let ip = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        println!("  pod  {:<7} {:<28} {}", p.name, p.netns, ip);
    }
    for p in &s.procs {
        println!("  proc {:<7} pid {}", p.what, p.pid);
    }
}

fn up(
    nodes: usize,
    backend: Option<&str>,
    racks: &[usize],
    pods: usize,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let routed = !racks.is_empty();
    let backend = match (backend, routed) {
        (None, false) => "vxlan",
        (None, true) | (Some("bgp"), true) => "bgp",
        (Some(b), true) => bail!("--racks routes the pods with BGP: --backend {b:?} does not go with it (leave --backend out)"),
        (Some(b), false) => b,
    };
    if !["vxlan", "host-gw", "hybrid", "udp", "l2", "bgp"].contains(&backend) {
        bail!("--backend {backend:?}: expected vxlan, host-gw, hybrid, udp, l2 or bgp");
    }
    if routed {
        for (tool, package) in [("bird", "bird2"), ("/usr/lib/frr/bgpd", "frr")] {
            let found = tool.starts_with('/') && Path::new(tool).exists()
                || std::env::var("PATH")
                    .unwrap_or_default()
                    .split(':')
                    .any(|d| Path::new(d).join(tool).exists());
            if !found {
                bail!("--racks runs BIRD and FRR as top-of-rack routers: {tool} is missing (apt-get install {package})");
            }
        }
    }
    let trellis = std::env::current_exe()?;
    let plugin = sibling("trellis-cni")?;
    let mut lab = if routed {
        Lab::new_persistent_routed(name, racks)?
    } else {
        Lab::new_persistent(name, nodes)?
    };
    let nodes = lab.state.nodes.len();
    let mut routers = Vec::new();
    // Until the lab is complete, a failure tears it down; persist() at the end.
    let timing = Timing::default();
    let res = (|| -> anyhow::Result<()> {
        if routed {
            routers = lab.start_rack_routers()?;
        }
        lab.start_server(&trellis, &timing)?;
        lab.apply(&trellis, &network_manifest("default", backend))?;
        if routed {
            lab.apply(&trellis, &lab.routed_bgp_manifest())?;
        }
        for n in 0..nodes {
            lab.start_cluster_agent(&trellis, n, "default", &timing)?;
        }
        for n in 0..nodes {
            for p in 1..=pods {
                let pod = lab.add_pod(n, &format!("p{p}"))?;
                lab.cni_add_pod_with(&plugin, &pod.netns, "LABELS=app=demo")?;
                // A web server answering with the pod's name, behind the demo Service.
                let www = lab.dir().join(format!("www-{}", pod.name));
                std::fs::create_dir_all(&www)?;
                std::fs::write(www.join("index.html"), format!("{}\n", pod.name))?;
                let mut httpd = std::process::Command::new("busybox");
                httpd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&www);
                lab.spawn(&pod.netns, &format!("httpd {}", pod.name), httpd)?;
            }
            let node = lab.state.nodes[n].name.clone();
            let v: serde_json::Value =
                serde_json::from_str(&lab.cli(&trellis, &["get", "node", &node, "-o", "json"])?)?;
            if let Some(cidr) = v["status"]["leases"][0]["cidr"].as_str() {
                lab.state
                    .notes
                    .insert(format!("subnet {node}"), cidr.to_string());
            }
        }
        lab.apply(&trellis, DEMO_SERVICE)?;
        lab.save()?;
        Ok(())
    })();
    if let Err(e) = res {
        let errs = lab.destroy();
        bail!("lab up failed: {e:#} (cleanup errors: {errs:?})");
    }
    lab.persist()?;
    print_status(&lab);
    println!();
    // Give every agent a moment to see every other node's lease.
    let all_ok = trellis_lab::wait_for(std::time::Duration::from_secs(10), || {
        matrix(&lab).iter().all(|row| row.1.iter().all(|ok| *ok))
    });
    println!("reachability over {backend} (ping; rows = from, columns = to):");
    let targets = targets(&lab);
    print!("{:>8}", "");
    for (t, _) in &targets {
        print!(" {t:>6}");
    }
    println!();
    for (src, row) in matrix(&lab) {
        print!("{src:>8}");
        for ok in row {
            print!(" {:>6}", if ok { "ok" } else { "-" });
        }
        println!();
    }
    println!();
    if !all_ok {
        println!("(some paths failed; see the agent logs below)");
        println!();
    }
    // Measure only once the client's node has programmed the Service and every pod's
    // Endpoint: until then requests would meet a partial (or empty) endpoint set.
    let programmed = match wait_demo_programmed(&lab, &trellis, nodes * pods) {
        Ok(()) => true,
        Err(e) => {
            println!("{e}");
            println!("(measuring anyway; see the agent logs below)");
            println!();
            false
        }
    };
    let spread = demo_spread(&lab, &trellis);
    let all_ok = all_ok && programmed && spread.is_some();
    println!();
    let me = trellis.display().to_string();
    println!("Where to look:");
    println!("  {me} lab exec {name} u -- {me} get nodes -o wide      # the cluster, from the lab's server");
    println!("  {me} lab exec {name} u -- {me} get endpoints -A        # one Endpoint per pod");
    let proto = if backend == "bgp" { 119 } else { 116 };
    println!("  {me} lab exec {name} n1 -- ip route                    # routes to the other nodes' pods (proto {proto})");
    println!("  {me} lab exec {name} n1 -- bridge fdb show | grep dst  # vxlan peers");
    println!("  {me} lab exec {name} u -- {me} get services -o wide    # the demo Service");
    println!("  {me} lab exec {name} n1 -- nft list ruleset            # its nftables (tables trellis-svc*)");
    // The cluster DNS listens on the pod gateway, or on the node address under l2
    // (where the pods' gateway is the segment's router).
    let dns = if backend == "l2" {
        lab.state.nodes.first().map(|n| n.addr.to_string())
    } else {
        lab.state
            .notes
            .get("subnet n1")
            .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
            .and_then(|c| c.hosts().next())
            .map(|g| g.to_string())
    }
    .unwrap_or_default();
    println!("  {me} lab exec {name} n1-p1 -- busybox nslookup demo.default.svc.cluster.local {dns}   # the cluster DNS of n1");
    println!(
        "  {me} lab exec {name} n1-p1 -- ping {}",
        targets.last().map(|t| t.1.to_string()).unwrap_or_default()
    );
    for (k, r) in routers.iter().enumerate() {
        match r {
            RackRouter::Bird(sock) => println!(
                "  {me} lab exec {name} r{} -- birdc -s {} show route   # rack {}'s router (BIRD)",
                k + 1,
                sock.display(),
                k + 1
            ),
            RackRouter::Frr(dir) => println!(
                "  {me} lab exec {name} r{} -- vtysh --vty_socket {} -c 'show ip bgp'   # rack {}'s router (FRR)",
                k + 1,
                dir.display(),
                k + 1
            ),
        }
    }
    if backend == "bgp" {
        println!(
            "  {me} lab exec {name} u -- {me} bgp status             # every node's BGP sessions"
        );
    }
    println!(
        "  less {}/agent-n1.log {}/server.log",
        lab.dir().display(),
        lab.dir().display()
    );
    println!("  {me} lab down {name}");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every pod and node address, by short name.
fn targets(lab: &Lab) -> Vec<(String, std::net::Ipv4Addr)> {
    lab.state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr))
        .chain(
            lab.state
                .pods
                .iter()
                .filter_map(|p| p.ip.map(|ip| (p.name.clone(), ip))),
        )
        .collect()
}

/// Ping from every node and pod to every target, in parallel; rows in order.
fn matrix(lab: &Lab) -> Vec<(String, Vec<bool>)> {
    let targets = targets(lab);
    let sources: Vec<(String, String)> = lab
        .state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.netns.clone()))
        .chain(
            lab.state
                .pods
                .iter()
                .map(|p| (p.name.clone(), p.netns.clone())),
        )
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|(name, ns)| {
                let targets = &targets;
                s.spawn(move || {
                    let row = targets.iter().map(|(_, ip)| lab.ping(ns, *ip)).collect();
                    (name.clone(), row)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    })
}

/// The demo Service: every pod of the lab (label `app=demo`), port 80 → 8080.
const DEMO_SERVICE: &str = "apiVersion: trellis/v1
kind: Service
metadata: {name: demo, namespace: default}
spec:
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

/// How long `lab up` waits for the client's node to program the demo Service.
const PROGRAMMED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Wait (at most [`PROGRAMMED_TIMEOUT`]) until the demo Service selects `endpoints`
/// ready Endpoints (one per pod) and the node of the first pod, where the requests come
/// from, reports in `status.programmed` that it has programmed the Service and
/// all of them. The error says what was still missing.
fn wait_demo_programmed(lab: &Lab, trellis: &Path, endpoints: usize) -> Result<(), String> {
    let Some(pod) = lab.state.pods.first() else {
        return Ok(());
    };
    let node = lab.state.nodes[pod.node].name.clone();
    let get = |args: &[&str]| -> Result<AnyObject, String> {
        let text = lab.cli(trellis, args).map_err(|e| e.to_string())?;
        let v = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        AnyObject::from_value(v).map_err(|e| e.to_string())
    };
    let check = || -> Result<(), String> {
        let AnyObject::Service(svc) = get(&["get", "service", "demo", "-o", "json"])? else {
            return Err("service demo is not a Service".into());
        };
        let text = lab
            .cli(trellis, &["get", "endpoints", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let eps: Vec<Endpoint> = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| match AnyObject::from_value(v) {
                Ok(AnyObject::Endpoint(e)) => Some(e),
                _ => None,
            })
            .collect();
        let ready = eps
            .iter()
            .filter(|e| svc.selects(e) && e.spec.ready)
            .count();
        let AnyObject::Node(n) = get(&["get", "node", &node, "-o", "json"])? else {
            return Err(format!("node {node} is not a Node"));
        };
        let want = svc.programmed_revisions(&eps);
        if ready == endpoints && n.has_programmed(&want) {
            return Ok(());
        }
        let had = match n.status.programmed {
            Some(p) => format!("services {} / endpoints {}", p.services, p.endpoints),
            None => "nothing".into(),
        };
        Err(format!(
            "{ready} of {endpoints} endpoints ready; node {node} reports having programmed \
             {had}, the Service needs services {} / endpoints {}",
            want.services, want.endpoints
        ))
    };
    let deadline = std::time::Instant::now() + PROGRAMMED_TIMEOUT;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the demo Service is not programmed on {node} after {}s: {last}",
                PROGRAMMED_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// 60 requests from the first pod to the demo Service's cluster IP; prints which pod
/// answered how often. `None` when the service did not answer.
fn demo_spread(lab: &Lab, trellis: &std::path::Path) -> Option<()> {
    let svc: serde_json::Value = lab
        .cli(trellis, &["get", "service", "demo", "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())?;
    let ip = svc["spec"]["clusterIP"].as_str()?.to_string();
    let from = lab.state.pods.first()?.clone();
    let url = format!("http://{ip}/");
    let mut hits: std::collections::BTreeMap<String, u32> = Default::default();
    let mut failed = 0;
    for _ in 0..60 {
        let out = lab
            .exec_any(
                &from.netns,
                &["timeout", "2", "busybox", "wget", "-q", "-O-", &url],
            )
            .ok()?;
        if out.status.success() {
            *hits
                .entry(String::from_utf8_lossy(&out.stdout).trim().to_string())
                .or_default() += 1;
        } else {
            failed += 1;
        }
    }
    println!(
        "service demo ({ip}:80 -> every pod's :8080), 60 requests from {}:",
        from.name
    );
    for (pod, n) in &hits {
        println!("  {pod:>8} {n:>3} {}", "#".repeat(*n as usize));
    }
    if failed > 0 {
        println!("  {failed} failed");
    }
    (failed == 0 && !hits.is_empty()).then_some(())
}
