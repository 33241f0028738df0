//! Does policy slow the data path? Pod → pod across two nodes, with 1,000
//! NetworkPolicies selecting both pods vs none, in the same lab, interleaved rounds
//! (needs root; everything lives in namespaces `trpolb-<pid>-*`, removed at the end).
//!
//! `cargo bench -p trellis-policy --bench datapath` (`ROUNDS` 5, `SECS` 3 per
//! measurement).
//!
//! Lab: nodes A and B (namespaces) joined by a veth underlay (192.168.95.0/24), each with
//! a pod bridge (10.244.1.0/24, 10.244.2.0/24) and routes to the other's pods; client
//! pod on A, server pod on B. Both nodes run the policy table for their own pod. "none":
//! no NetworkPolicy; "1000": 1,000 NetworkPolicies each selecting both pods (ingress and
//! egress on its own port) plus one allowing the measured ports, so both pods are
//! isolated both ways and every packet is judged against sets holding the pair's
//! elements. Measured: single-stream TCP throughput (iperf3) and TCP connections per
//! second (connect + close, one thread). Target: 1000 / none ≥ 0.95. For reference,
//! a third case runs without the policy table ("no table"), only a one-rule table that
//! keeps connection tracking on as a node's service NAT does, so the cost of the policy
//! table itself is printed too (no target).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trellis_api::objects::{parse_yaml, AnyObject};
use trellis_lab::scratch::{in_ns, sh};
use trellis_policy::compile::Compiler;
use trellis_policy::model::{Inputs, PodInfo};
use trellis_policy::table::Table;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const CONN_PORT: u16 = 8080;

struct Lab {
    prefix: String,
    names: Vec<String>,
    procs: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn new() -> Lab {
        let mut lab = Lab {
            prefix: format!("trpolb-{}-", std::process::id()),
            names: Vec::new(),
            procs: Vec::new(),
        };
        for role in ["a", "b", "client", "server"] {
            let n = lab.ns(role);
            sh(&["ip", "netns", "add", &n]);
            lab.names.push(n);
        }
        let (a, b, c, s) = (lab.ns("a"), lab.ns("b"), lab.ns("client"), lab.ns("server"));
        let ipn = |ns: &str, args: &[&str]| {
            let mut v = vec!["ip", "-n", ns];
            v.extend_from_slice(args);
            sh(&v);
        };
        ipn(
            &a,
            &[
                "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", &b,
            ],
        );
        for (node, me, other_net, other, sub) in [
            (
                &a,
                "192.168.95.1/24",
                "10.244.2.0/24",
                "192.168.95.2",
                "10.244.1.1/24",
            ),
            (
                &b,
                "192.168.95.2/24",
                "10.244.1.0/24",
                "192.168.95.1",
                "10.244.2.1/24",
            ),
        ] {
            sh(&[
                "ip",
                "netns",
                "exec",
                node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
            ipn(node, &["link", "set", "lo", "up"]);
            ipn(node, &["addr", "add", me, "dev", "u0"]);
            ipn(node, &["link", "set", "u0", "up"]);
            ipn(node, &["link", "add", "br0", "type", "bridge"]);
            ipn(node, &["addr", "add", sub, "dev", "br0"]);
            ipn(node, &["link", "set", "br0", "up"]);
            ipn(node, &["route", "add", other_net, "via", other]);
        }
        for (node, pod, addr, gw) in [
            (&a, &c, "10.244.1.2/24", "10.244.1.1"),
            (&b, &s, "10.244.2.2/24", "10.244.2.1"),
        ] {
            ipn(
                node,
                &[
                    "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", pod,
                ],
            );
            ipn(node, &["link", "set", "vp", "master", "br0", "up"]);
            ipn(pod, &["addr", "add", addr, "dev", "eth0"]);
            ipn(pod, &["link", "set", "eth0", "up"]);
            ipn(pod, &["link", "set", "lo", "up"]);
            ipn(pod, &["route", "add", "default", "via", gw]);
        }
        // Room for every connection of a measurement without reusing a source port.
        sh(&[
            "ip",
            "netns",
            "exec",
            &c,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
        ]);
        let iperf = Command::new("ip")
            .args([
                "netns",
                "exec",
                &s,
                "iperf3",
                "-s",
                "-B",
                &SERVER.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s (install iperf3)");
        lab.procs.push(iperf);
        lab
    }
}

fn pods() -> BTreeMap<Ipv4Addr, PodInfo> {
    let mut m = BTreeMap::new();
    for (ip, name, node) in [(CLIENT, "client", "a"), (SERVER, "server", "b")] {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), name.to_string());
        m.insert(
            ip,
            PodInfo {
                namespace: "bench".into(),
                name: name.into(),
                ip,
                labels,
                ports: Vec::new(),
                node: node.into(),
            },
        );
    }
    m
}

fn inputs(policies: u32) -> Inputs {
    let mut i = Inputs {
        pods: pods(),
        ..Default::default()
    };
    let mut yaml = String::new();
    for j in 0..policies {
        yaml += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{j}, namespace: bench}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{{port: {}}}]}}]\n  egress: [{{to: [{{podSelector: {{}}}}], ports: [{{port: {}}}]}}]\n",
            10_000 + j,
            10_000 + j
        );
    }
    if policies > 0 {
        yaml += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench-ports, namespace: bench}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 5201}, {port: 8080}]}]\n  egress: [{to: [{podSelector: {matchLabels: {app: server}}}], ports: [{port: 5201}, {port: 8080}]}]\n";
        for o in parse_yaml(&yaml).expect("bench policies") {
            if let AnyObject::NetworkPolicy(p) = o {
                i.netpols.insert(
                    (
                        p.metadata.namespace.clone().unwrap(),
                        p.metadata.name.clone(),
                    ),
                    p.spec,
                );
            }
        }
    }
    i
}

/// The "no table" case: `program` replaces the policy table with [`CT_ONLY`].
const NO_TABLE: u32 = u32::MAX;

/// A one-rule table that needs connection tracking, as a node's service NAT does:
/// without any, the kernel tracks no connections and the reference would measure that.
const CT_ONLY: &str = "table ip trpolb-ct {
  chain postrouting { type filter hook postrouting priority 200; ct state invalid drop; }
}";

/// Program both nodes for `policies` (or [`CT_ONLY`] for [`NO_TABLE`]).
fn program(lab: &Lab, policies: u32) {
    for (node, name) in [(lab.ns("a"), "a"), (lab.ns("b"), "b")] {
        // Either table may be absent: ignore the status of the deletes.
        let nft = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", &node, "nft"])
                .args(args)
                .output()
        };
        if policies == NO_TABLE {
            let _ = nft(&["delete", "table", "ip", "trellis-policy"]);
            let mut child = Command::new("ip")
                .args(["netns", "exec", &node, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("nft");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(CT_ONLY.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "nft -f (ct only)");
            continue;
        }
        let _ = nft(&["delete", "table", "ip", "trpolb-ct"]);
        let name = name.to_string();
        in_ns(&node, move || {
            let mut c = Compiler::new(&name, &[], &[]);
            c.update(inputs(policies));
            Table::new().full_sync(&c).expect("program");
        });
    }
}

fn iperf(lab: &Lab, secs: u64) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("client"),
            "iperf3",
            "-c",
            &SERVER.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .expect("iperf3 -c");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3: {v}"))
        / 1e9
}

fn conns(lab: &Lab, secs: u64) -> f64 {
    // Start every measurement from empty connection tracking in the lab's own nodes
    // (entries of closed connections linger for 10 s and would weigh on the next one).
    for n in ["a", "b"] {
        let _ = Command::new("ip")
            .args(["netns", "exec", &lab.ns(n), "conntrack", "-F"])
            .output();
    }
    let listener = in_ns(&lab.ns("server"), || {
        TcpListener::bind(SocketAddrV4::new(SERVER, CONN_PORT)).expect("bind")
    });
    {
        use std::os::fd::AsRawFd;
        // SAFETY: listen on our own listening socket only raises its backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    listener.set_nonblocking(true).unwrap();
    let acceptor = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => drop(c),
                // SAFETY: one valid pollfd.
                Err(_) => unsafe {
                    libc::poll(&mut pfd, 1, 100);
                },
            }
        }
    });
    let n = in_ns(&lab.ns("client"), move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        let mut failed = 0u64;
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(
                &SocketAddrV4::new(SERVER, CONN_PORT).into(),
                Duration::from_secs(1),
            ) {
                Ok(c) => {
                    reset_on_close(&c);
                    drop(c);
                    n += 1;
                }
                Err(_) => failed += 1,
            }
        }
        assert!(failed * 100 <= n, "{failed} of {n} connections failed");
        n
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = acceptor.join();
    n as f64 / secs as f64
}

/// `SO_LINGER` 0: close with a reset, no TIME_WAIT piling up over the run.
fn reset_on_close(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value is a linger struct with its size; the fd is open.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let lab = Lab::new();
    std::thread::sleep(Duration::from_millis(300));
    let mut tput: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut cps: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut ratios_t = Vec::new();
    let mut ratios_c = Vec::new();
    let mut bare_t = Vec::new();
    let mut bare_c = Vec::new();
    let many: u32 = std::env::var("POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for round in 0..rounds {
        // Rotate which case goes first.
        let mut order = [0, many, NO_TABLE];
        order.rotate_left(round % 3);
        let mut this_t = BTreeMap::new();
        let mut this_c = BTreeMap::new();
        for p in order {
            program(&lab, p);
            let t = iperf(&lab, secs);
            let c = conns(&lab, secs);
            println!(
                "round {round} {:>14}: {t:.2} Gbit/s, {c:.0} conn/s",
                label(p)
            );
            this_t.insert(p, t);
            this_c.insert(p, c);
            tput.entry(p).or_default().push(t);
            cps.entry(p).or_default().push(c);
        }
        ratios_t.push(this_t[&many] / this_t[&0]);
        ratios_c.push(this_c[&many] / this_c[&0]);
        bare_t.push(this_t[&many] / this_t[&NO_TABLE]);
        bare_c.push(this_c[&many] / this_c[&NO_TABLE]);
    }
    // Leave the nodes empty (they go away with the lab anyway).
    program(&lab, 0);
    let (rt, rc) = (median(ratios_t), median(ratios_c));
    println!(
        "throughput: no table {:.2}, none {:.2}, {many} policies {:.2} Gbit/s; ratio {many} / none (median of rounds) {rt:.3} {}; {many} / no table {:.3}",
        median(tput[&NO_TABLE].clone()),
        median(tput[&0].clone()),
        median(tput[&many].clone()),
        if rt >= 0.95 { "PASS" } else { "FAIL" },
        median(bare_t),
    );
    println!(
        "connections: no table {:.0}/s, none {:.0}/s, {many} policies {:.0}/s; ratio {many} / none (median of rounds) {rc:.3} {}; {many} / no table {:.3}",
        median(cps[&NO_TABLE].clone()),
        median(cps[&0].clone()),
        median(cps[&many].clone()),
        if rc >= 0.95 { "PASS" } else { "FAIL" },
        median(bare_c),
    );
}

fn label(p: u32) -> String {
    match p {
        NO_TABLE => "no table".to_string(),
        0 => "no policies".to_string(),
        n => format!("{n} policies"),
    }
}
