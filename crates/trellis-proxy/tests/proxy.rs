//! The service proxy end to end, in real network namespaces (needs root).
//!
//! Lab per test: a "node" namespace with the pod bridge `br0` (10.244.1.1/24, hairpin on
//! its ports) and an uplink veth (192.168.93.1/24) to a "client" namespace
//! (192.168.93.2/24, routes to the cluster IPs 10.96.0.0/16 and the external / LB IPs
//! 203.0.113.0/24 via the node); three "pod" namespaces p1..p3 (10.244.1.2-4) behind
//! veths on the bridge, each running a TCP server on 8080 (answers its name and the
//! peer address it sees) and a UDP server on 5353 (answers its name). The proxy runs on
//! threads inside the node namespace. Every namespace is named
//! `trprx-<pid>-<test>-<role>` and removed on success, failure and panic; namespaces
//! of earlier runs whose process is gone are swept at the start. The root namespace is
//! never touched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trellis_lab::scratch::{in_ns, run, sh, sweep_stale};
use trellis_net::Netns;
use trellis_proxy::{
    EndpointModel, PortModel, Protocol, Proxy, ProxyConfig, ServiceModel, SyncReport,
};

const PREFIX: &str = "trprx-";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 93, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 93, 2);
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 1 + u8::try_from(i).unwrap())
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the proxy tests create network namespaces and nftables tables: run them as root"
    );
}

/// The lab of one test; everything is deleted on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    proxy: Arc<Mutex<Proxy>>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        require_root();
        sweep_stale(PREFIX);
        let mut lab = Lab {
            prefix: format!("{PREFIX}{}-{test}-", std::process::id()),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            proxy: Arc::new(Mutex::new(Proxy::new(config()))),
        };
        let node = lab.add("node");
        let client = lab.add("client");
        let ipn = |ns: &str, args: &[&str]| {
            let mut v = vec!["ip", "-n", ns];
            v.extend_from_slice(args);
            sh(&v);
        };
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        ipn(&node, &["link", "add", "br0", "type", "bridge"]);
        ipn(&node, &["addr", "add", "10.244.1.1/24", "dev", "br0"]);
        ipn(&node, &["link", "set", "br0", "up"]);
        ipn(
            &node,
            &[
                "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &client,
            ],
        );
        ipn(&node, &["addr", "add", "192.168.93.1/24", "dev", "up0"]);
        ipn(&node, &["link", "set", "up0", "up"]);
        ipn(&node, &["route", "add", "default", "via", "192.168.93.2"]);
        ipn(&client, &["addr", "add", "192.168.93.2/24", "dev", "eth0"]);
        ipn(&client, &["link", "set", "eth0", "up"]);
        ipn(
            &client,
            &["route", "add", "10.96.0.0/16", "via", "192.168.93.1"],
        );
        ipn(
            &client,
            &["route", "add", "203.0.113.0/24", "via", "192.168.93.1"],
        );
        for i in 1..=3 {
            let pod = lab.add(&format!("p{i}"));
            let port = format!("vp{i}");
            ipn(
                &node,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &pod,
                ],
            );
            ipn(&node, &["link", "set", &port, "master", "br0", "up"]);
            ipn(
                &node,
                &[
                    "link",
                    "set",
                    &port,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
            );
            ipn(
                &pod,
                &["addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"],
            );
            ipn(&pod, &["link", "set", "eth0", "up"]);
            ipn(&pod, &["route", "add", "default", "via", "10.244.1.1"]);
            lab.serve(&pod, format!("p{i}"));
        }
        lab
    }

    fn add(&mut self, role: &str) -> String {
        let ns = format!("{}{role}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Start the TCP (8080) and UDP (5353) servers of a pod.
    fn serve(&mut self, ns: &str, name: String) {
        let path = format!("/run/netns/{ns}");
        let (stop, n, p) = (self.stop.clone(), name.clone(), path.clone());
        self.threads.push(std::thread::spawn(move || {
            let netns = Netns::open(&p).expect("open namespace");
            let _guard = netns.enter().expect("enter namespace");
            let l = TcpListener::bind("0.0.0.0:8080").expect("bind 8080");
            l.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let n = n.clone();
                        std::thread::spawn(move || handle(s, &n, peer.ip()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let netns = Netns::open(&path).expect("open namespace");
            let _guard = netns.enter().expect("enter namespace");
            let u = UdpSocket::bind("0.0.0.0:5353").expect("bind 5353");
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(name.as_bytes(), peer);
                }
            }
        }));
    }

    /// Run `f` with the proxy on a thread inside the node namespace.
    fn proxy<T: Send + 'static>(&self, f: impl FnOnce(&mut Proxy) -> T + Send + 'static) -> T {
        let p = self.proxy.clone();
        in_ns(&self.ns("node"), move || f(&mut p.lock().unwrap()))
    }

    fn full_sync(&self, svcs: &[ServiceModel]) -> SyncReport {
        let svcs = svcs.to_vec();
        self.proxy(move |p| p.full_sync(&svcs))
            .unwrap_or_else(|e| panic!("full sync: {e}"))
    }

    fn update(&self, changed: &[ServiceModel], removed: &[&str]) -> SyncReport {
        let changed = changed.to_vec();
        let removed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
        self.proxy(move |p| p.update(&changed, &removed))
            .unwrap_or_else(|e| panic!("update: {e}"))
    }

    /// An HTTP request from namespace `role`: (server name, peer address it saw).
    fn get(&self, role: &str, ip: Ipv4Addr, port: u16) -> Result<(String, Ipv4Addr), String> {
        in_ns(&self.ns(role), move || http(SocketAddrV4::new(ip, port)))
    }

    fn sh_in(&self, role: &str, args: &[&str]) -> String {
        let ns = self.ns(role);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in self.namespaces.iter().rev() {
            let out = run(&["ip", "netns", "del", ns]);
            if !out.status.success() {
                eprintln!(
                    "cannot delete namespace {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// One accepted connection: an HTTP GET gets one answer; other lines are answered one
/// by one until the client closes.
fn handle(s: TcpStream, name: &str, peer: std::net::IpAddr) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut w = s.try_clone().expect("clone stream");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        if line.starts_with("GET") {
            let _ = write!(w, "HTTP/1.0 200 OK\r\n\r\n{name} {peer}\n");
            return;
        }
        let _ = writeln!(w, "{name} {peer}");
        line.clear();
    }
}

fn http(addr: SocketAddrV4) -> Result<(String, Ipv4Addr), String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let last = body.lines().last().unwrap_or_default().to_string();
    let mut it = last.split_whitespace();
    let name = it.next().unwrap_or_default().to_string();
    let peer = it
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad answer {body:?}"))?;
    Ok((name, peer))
}

fn config() -> ProxyConfig {
    let mut c = ProxyConfig::new(
        "trprx-svc",
        vec![NODE_IP],
        vec!["10.244.0.0/16".parse().unwrap()],
    );
    c.shards = 4;
    c
}

fn ep(i: usize, local: bool) -> EndpointModel {
    EndpointModel {
        ip: pod_ip(i),
        local,
    }
}

/// `default/web`: 10.96.0.10:80 -> 8080, node port 30080, external IP and LB IP.
fn web(endpoints: Vec<EndpointModel>) -> ServiceModel {
    ServiceModel {
        key: "default/web".into(),
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
        external_ips: vec![EXT_IP, LB_IP],
        ports: vec![PortModel {
            name: "http".into(),
            port: 80,
            target_port: 8080,
            protocol: Protocol::Tcp,
            node_port: Some(30080),
        }],
        affinity_timeout: None,
        local_only: false,
        endpoints,
    }
}

/// A TCP service `default/<name>` on `ip:80` (node port optional).
fn tcp_service(
    name: &str,
    ip: Ipv4Addr,
    node_port: Option<u16>,
    endpoints: Vec<EndpointModel>,
) -> ServiceModel {
    ServiceModel {
        key: format!("default/{name}"),
        cluster_ip: Some(ip),
        external_ips: vec![],
        ports: vec![PortModel {
            name: String::new(),
            port: 80,
            target_port: 8080,
            protocol: Protocol::Tcp,
            node_port,
        }],
        affinity_timeout: None,
        local_only: false,
        endpoints,
    }
}

fn counts(
    lab: &Lab,
    role: &str,
    ip: Ipv4Addr,
    port: u16,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (name, _) = lab
            .get(role, ip, port)
            .unwrap_or_else(|e| panic!("request from {role} to {ip}:{port}: {e}"));
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

/// How long a TCP connect from `role` takes to fail, and that it was refused.
fn refused(lab: &Lab, role: &str, ip: Ipv4Addr, port: u16) -> Duration {
    let role = role.to_string();
    in_ns(&lab.ns(&role.clone()), move || {
        let t = Instant::now();
        let r =
            TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_secs(3));
        let e = r.expect_err("connection to a service without endpoints succeeded");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{ip}:{port} from {role}: {e}"
        );
        t.elapsed()
    })
}

#[test]
fn cluster_ip_node_port_external_ips_spread_and_policies() {
    let lab = Lab::new("paths");
    let all = vec![ep(1, true), ep(2, true), ep(3, false)];
    let r = lab.full_sync(&[web(all.clone())]);
    assert!(r.chains_written > 0 && r.elements_added > 0, "{r:?}");
    let cip = Ipv4Addr::new(10, 96, 0, 10);

    // Cluster IP from a pod keeps the pod's address (except when it reaches itself).
    let (name, peer) = lab.get("p3", cip, 80).expect("pod -> cluster IP");
    if name == "p3" {
        assert_eq!(peer, BRIDGE_IP, "hairpin is masqueraded");
    } else {
        assert_eq!(peer, pod_ip(3), "pod -> cluster IP keeps the source");
    }
    // From the node itself.
    lab.get("node", cip, 80).expect("node -> cluster IP");
    lab.get("node", NODE_IP, 30080)
        .expect("node -> its own node port");

    // Even spread over the three endpoints.
    let c = counts(&lab, "p3", cip, 80, 300);
    assert_eq!(c.len(), 3, "{c:?}");
    for (name, n) in &c {
        assert!((60..=140).contains(n), "uneven spread {c:?} ({name})");
    }

    // From outside: node port, external IP and LB IP, masqueraded (policy Cluster).
    for (ip, port) in [(NODE_IP, 30080), (EXT_IP, 80), (LB_IP, 80)] {
        let (_, peer) = lab
            .get("client", ip, port)
            .unwrap_or_else(|e| panic!("client -> {ip}:{port}: {e}"));
        assert_eq!(
            peer, BRIDGE_IP,
            "{ip}:{port} with policy Cluster is masqueraded"
        );
    }

    // Policy Local: only local endpoints (p1, p2), client address kept.
    let mut local = web(all.clone());
    local.local_only = true;
    let r = lab.update(&[local], &[]);
    assert_eq!(r.transactions, 1);
    for (ip, port) in [(NODE_IP, 30080), (EXT_IP, 80), (LB_IP, 80)] {
        for _ in 0..20 {
            let (name, peer) = lab
                .get("client", ip, port)
                .unwrap_or_else(|e| panic!("client -> {ip}:{port} (Local): {e}"));
            assert_ne!(name, "p3", "Local used a remote endpoint");
            assert_eq!(peer, CLIENT_IP, "Local keeps the client address");
        }
    }
    // Cluster IP traffic still uses every endpoint.
    assert_eq!(counts(&lab, "node", cip, 80, 60).len(), 3);

    // Local without a local endpoint: outside clients are refused at once, pods still
    // reach the service through its external address.
    let mut remote_only = web(vec![ep(3, false)]);
    remote_only.local_only = true;
    lab.update(&[remote_only], &[]);
    for (ip, port) in [(NODE_IP, 30080), (EXT_IP, 80)] {
        let t = refused(&lab, "client", ip, port);
        assert!(t < Duration::from_secs(1), "refusal took {t:?}");
    }
    let (name, _) = lab
        .get("p1", EXT_IP, 80)
        .expect("pod -> external IP (Local)");
    assert_eq!(name, "p3");

    // Full sync twice: the second changes nothing.
    let mut remote_only = web(vec![ep(3, false)]);
    remote_only.local_only = true;
    lab.full_sync(&[remote_only.clone()]);
    let r = lab.full_sync(&[remote_only]);
    assert!(r.changed_nothing(), "{r:?}");
}

#[test]
fn affinity_hairpin_removal_and_no_endpoints() {
    let lab = Lab::new("life");
    let sticky_ip = Ipv4Addr::new(10, 96, 0, 20);
    let mut sticky = tcp_service(
        "sticky",
        sticky_ip,
        Some(30081),
        vec![ep(1, true), ep(2, true), ep(3, true)],
    );
    sticky.affinity_timeout = Some(60);
    let self_ip = Ipv4Addr::new(10, 96, 0, 21);
    let only_p2 = tcp_service("self", self_ip, None, vec![ep(2, true)]);
    let drop_ip = Ipv4Addr::new(10, 96, 0, 22);
    let dropper = tcp_service(
        "drop",
        drop_ip,
        Some(30082),
        vec![ep(1, true), ep(2, true), ep(3, true)],
    );
    lab.full_sync(&[sticky.clone(), only_p2, dropper.clone()]);

    // Affinity: one client always lands on the same endpoint.
    for role in ["client", "p3"] {
        let (ip, port) = if role == "client" {
            (NODE_IP, 30081)
        } else {
            (sticky_ip, 80)
        };
        let c = counts(&lab, role, ip, port, 30);
        assert_eq!(c.len(), 1, "affinity from {role}: {c:?}");
    }

    // Hairpin: p2 reaches itself through the service, masqueraded.
    let (name, peer) = lab.get("p2", self_ip, 80).expect("hairpin");
    assert_eq!((name.as_str(), peer), ("p2", BRIDGE_IP));

    // Removing an endpoint: no new connection goes to it.
    let fewer = tcp_service("drop", drop_ip, Some(30082), vec![ep(1, true), ep(3, true)]);
    let r = lab.update(&[fewer], &[]);
    assert_eq!(r.chains_deleted, 0, "{r:?}");
    // The svc chain (and ext chain) rewritten; the hairpin element of p2 stays: the
    // "self" service still has p2.
    assert!(
        r.chains_written <= 2 && r.elements_deleted == 0 && r.messages <= 8,
        "one endpoint is a small change: {r:?}"
    );
    let c = counts(&lab, "client", NODE_IP, 30082, 60);
    assert!(!c.contains_key("p2"), "removed endpoint still used: {c:?}");
    assert_eq!(c.len(), 2, "{c:?}");

    // No endpoints: refused immediately from a pod, the node and outside.
    let none = tcp_service("drop", drop_ip, Some(30082), vec![]);
    lab.update(&[none], &[]);
    for (role, ip, port) in [
        ("p1", drop_ip, 80),
        ("node", drop_ip, 80),
        ("client", drop_ip, 80),
        ("client", NODE_IP, 30082),
    ] {
        let t = refused(&lab, role, ip, port);
        assert!(t < Duration::from_secs(1), "refusal from {role} took {t:?}");
    }

    // Removing the service removes its chains and elements.
    let r = lab.update(&[], &["default/drop"]);
    assert!(r.elements_deleted >= 2, "{r:?}");
    let r = lab.update(&[], &["default/sticky"]);
    assert!(r.chains_deleted >= 2 && r.sets_deleted == 3, "{r:?}");
    let r = lab.full_sync(&[tcp_service("self", self_ip, None, vec![ep(2, true)])]);
    assert!(r.changed_nothing(), "{r:?}");
}

#[test]
fn affinity_expires_after_its_timeout() {
    let lab = Lab::new("expiry");
    let mut brief = tcp_service(
        "brief",
        Ipv4Addr::new(10, 96, 0, 40),
        Some(30083),
        vec![ep(1, true), ep(2, true), ep(3, true)],
    );
    brief.affinity_timeout = Some(2);
    lab.full_sync(&[brief]);
    // Timed affinity entries in the node's ruleset (each prints its countdown).
    let entries = || {
        lab.sh_in("node", &["nft", "list", "ruleset"])
            .matches(" expires ")
            .count()
    };
    assert_eq!(entries(), 0);
    let c = counts(&lab, "client", NODE_IP, 30083, 10);
    assert_eq!(c.len(), 1, "affinity: {c:?}");
    assert_eq!(entries(), 1, "one client, one affinity entry");
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(entries(), 0, "the entry outlived its 2 s timeout");
    // The next connection is balanced afresh and sticks again.
    let c = counts(&lab, "client", NODE_IP, 30083, 5);
    assert_eq!(c.len(), 1, "affinity after expiry: {c:?}");
    assert_eq!(entries(), 1);
}

/// Reply sources (endpoint addresses) of the UDP conntrack entries to `dst:port`.
fn udp_entries(lab: &Lab, dst: Ipv4Addr, port: u16) -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("node"),
            "conntrack",
            "-L",
            "-p",
            "udp",
        ])
        .args([
            "--orig-dst",
            &dst.to_string(),
            "--orig-port-dst",
            &port.to_string(),
        ])
        .output()
        .expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix("src="))
                .nth(1)
                .and_then(|a| a.parse().ok())
        })
        .collect()
}

#[test]
fn udp_endpoint_removal_deletes_exactly_its_conntrack_entries() {
    let lab = Lab::new("udp");
    let dns_ip = Ipv4Addr::new(10, 96, 0, 53);
    let dns = |eps| ServiceModel {
        key: "kube/dns".into(),
        cluster_ip: Some(dns_ip),
        external_ips: vec![],
        ports: vec![PortModel {
            name: "dns".into(),
            port: 53,
            target_port: 5353,
            protocol: Protocol::Udp,
            node_port: None,
        }],
        affinity_timeout: None,
        local_only: false,
        endpoints: eps,
    };
    lab.full_sync(&[dns(vec![ep(1, true), ep(2, true)])]);

    // Flows from p3 (one source port each) until both endpoints have some.
    let flows = || {
        let seen = in_ns(&lab.ns("p3"), move || {
            let mut seen = std::collections::BTreeMap::new();
            for _ in 0..60 {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send_to(b"q", (dns_ip, 53)).unwrap();
                let mut buf = [0u8; 64];
                let (n, _) = s.recv_from(&mut buf).expect("UDP answer");
                *seen
                    .entry(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .or_insert(0usize) += 1;
                if seen.len() == 2 && seen.values().all(|v| *v >= 3) {
                    break;
                }
            }
            seen
        });
        assert_eq!(seen.len(), 2, "{seen:?}");
        let before = udp_entries(&lab, dns_ip, 53);
        let to_p2 = before.iter().filter(|a| **a == pod_ip(2)).count();
        let to_p1 = before.iter().filter(|a| **a == pod_ip(1)).count();
        assert!(to_p2 >= 3 && to_p1 >= 3, "{before:?}");
        (to_p1, to_p2)
    };
    let check_after = |to_p1: usize| {
        let after = udp_entries(&lab, dns_ip, 53);
        assert!(!after.contains(&pod_ip(2)), "{after:?}");
        assert_eq!(
            after.iter().filter(|a| **a == pod_ip(1)).count(),
            to_p1,
            "entries of the remaining endpoint are kept"
        );
    };

    // A partial update deletes exactly the removed endpoint's entries.
    let (to_p1, to_p2) = flows();
    let r = lab.update(&[dns(vec![ep(1, true)])], &[]);
    assert_eq!(r.conntrack_flushed, to_p2, "{r:?}");
    check_after(to_p1);

    // The endpoint comes back, gets flows, and leaves while no agent runs: the new
    // agent's first full sync finds its entries in the kernel and deletes exactly them.
    lab.update(&[dns(vec![ep(1, true), ep(2, true)])], &[]);
    let (to_p1, to_p2) = flows();
    *lab.proxy.lock().unwrap() = Proxy::new(config());
    let r = lab.full_sync(&[dns(vec![ep(1, true)])]);
    assert_eq!(r.conntrack_flushed, to_p2, "{r:?}");
    check_after(to_p1);
    let r = lab.full_sync(&[dns(vec![ep(1, true)])]);
    assert_eq!(r.conntrack_flushed, 0, "{r:?}");

    // Without conntrack-tools the tables still sync, full and partial (an update is not
    // turned into a failure and a full sync); the report says why the clean-up failed,
    // and the stale flows wait for a sweep that can run.
    lab.update(&[dns(vec![ep(1, true), ep(2, true)])], &[]);
    let (to_p1, to_p2) = flows();
    let mut missing = config();
    missing.conntrack = "/nonexistent/conntrack".into();
    *lab.proxy.lock().unwrap() = Proxy::new(missing);
    let r = lab.full_sync(&[dns(vec![ep(1, true), ep(2, true)])]);
    let why = r.conntrack_error.clone().unwrap_or_default();
    assert!(why.contains("conntrack-tools"), "{r:?}");
    let r = lab.update(&[dns(vec![ep(1, true)])], &[]);
    assert!(r.conntrack_error.is_some(), "{r:?}");
    assert_eq!(r.transactions, 1, "{r:?}");
    let stale = udp_entries(&lab, dns_ip, 53);
    assert_eq!(
        stale.iter().filter(|a| **a == pod_ip(2)).count(),
        to_p2,
        "{stale:?}"
    );
    *lab.proxy.lock().unwrap() = Proxy::new(config());
    let r = lab.full_sync(&[dns(vec![ep(1, true)])]);
    assert_eq!(
        (r.conntrack_flushed, r.conntrack_error.clone()),
        (to_p2, None)
    );
    check_after(to_p1);
}

#[test]
fn restart_adopts_the_tables_and_keeps_connections() {
    let lab = Lab::new("restart");
    let svcs = vec![
        web(vec![ep(1, true), ep(2, true), ep(3, false)]),
        tcp_service(
            "other",
            Ipv4Addr::new(10, 96, 0, 30),
            Some(30090),
            vec![ep(2, true)],
        ),
        tcp_service("empty", Ipv4Addr::new(10, 96, 0, 31), Some(30091), vec![]),
        {
            let mut s = tcp_service(
                "sticky",
                Ipv4Addr::new(10, 96, 0, 32),
                None,
                vec![ep(1, true), ep(3, true)],
            );
            s.affinity_timeout = Some(300);
            s.local_only = true;
            s.external_ips = vec![Ipv4Addr::new(203, 0, 113, 30)];
            s
        },
    ];
    let r = lab.full_sync(&svcs);
    assert!(!r.changed_nothing());
    let r = lab.full_sync(&svcs);
    assert!(r.changed_nothing(), "second full sync: {r:?}");

    // An established connection through the node port.
    let conn = in_ns(&lab.ns("client"), || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(NODE_IP, 30090).into(),
            Duration::from_secs(2),
        )
        .expect("connect")
    });
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut conn_r = BufReader::new(conn.try_clone().unwrap());
    let mut conn_w = conn;
    let mut line = String::new();
    writeln!(conn_w, "hello").unwrap();
    conn_r.read_line(&mut line).unwrap();
    assert!(line.starts_with("p2 "), "{line:?}");

    let ruleset = || lab.sh_in("node", &["nft", "-a", "list", "ruleset"]);
    let before = ruleset();
    // A new Proxy (agent restart) against the existing tables.
    *lab.proxy.lock().unwrap() = Proxy::new(config());
    let r = lab.full_sync(&svcs);
    assert!(r.changed_nothing(), "restart: {r:?}");
    assert_eq!(before, ruleset(), "restart changed the ruleset");

    line.clear();
    writeln!(conn_w, "still there?").unwrap();
    conn_r.read_line(&mut line).expect("connection survived");
    assert!(line.starts_with("p2 "), "{line:?}");

    // And the restarted proxy goes on with small updates.
    let r = lab.update(
        &[tcp_service(
            "other",
            Ipv4Addr::new(10, 96, 0, 30),
            Some(30090),
            vec![ep(2, true), ep(3, true)],
        )],
        &[],
    );
    assert_eq!((r.transactions, r.chains_written), (1, 1), "{r:?}");
    // A new affinity timeout recreates the affinity sets and rewrites their chains in
    // one transaction.
    let mut sticky = svcs[3].clone();
    sticky.affinity_timeout = Some(600);
    let r = lab.update(&[sticky.clone()], &[]);
    assert_eq!((r.sets_deleted, r.sets_added), (2, 2), "{r:?}");
    let mut svcs = svcs.clone();
    svcs[1] = tcp_service(
        "other",
        Ipv4Addr::new(10, 96, 0, 30),
        Some(30090),
        vec![ep(2, true), ep(3, true)],
    );
    svcs[3] = sticky;
    assert!(lab.full_sync(&svcs).changed_nothing());

    // Drift is repaired by a full sync: a lost element, an emptied chain.
    let shard = lab.proxy(|p| p.tables()[1..].to_vec());
    let holder = shard
        .iter()
        .find(|t| {
            lab.sh_in(
                "node",
                &["nft", "list", "map", "ip", t, "service-nodeports"],
            )
            .contains("30090")
        })
        .expect("a shard holds node port 30090")
        .clone();
    lab.sh_in(
        "node",
        &[
            "nft",
            "delete",
            "element",
            "ip",
            &holder,
            "service-nodeports",
            "{ tcp . 30090 }",
        ],
    );
    lab.sh_in(
        "node",
        &["nft", "flush", "chain", "ip", "trprx-svc", "masquerading"],
    );
    let r = lab.full_sync(&svcs);
    assert_eq!((r.elements_added, r.chains_written), (1, 1), "{r:?}");
    assert!(lab.full_sync(&svcs).changed_nothing());
    lab.get("client", NODE_IP, 30090)
        .expect("repaired node port");

    // Another shard count moves every service and deletes the old shard tables.
    let mut two = config();
    two.shards = 2;
    *lab.proxy.lock().unwrap() = Proxy::new(two);
    let r = lab.full_sync(&svcs);
    assert!(r.transactions == 1 && r.chains_written > 0, "{r:?}");
    let tables = lab.sh_in("node", &["nft", "list", "tables"]);
    assert!(
        !tables.contains("trprx-svc-2") && !tables.contains("trprx-svc-3"),
        "{tables}"
    );
    assert!(lab.full_sync(&svcs).changed_nothing());
    lab.get("client", NODE_IP, 30090)
        .expect("node port after resharding");
    lab.get("p1", Ipv4Addr::new(10, 96, 0, 10), 80)
        .expect("cluster IP after resharding");

    // Every table of ours is there, named after the main one.
    let tables = lab.sh_in("node", &["nft", "list", "tables"]);
    for t in lab.proxy(|p| p.tables().to_vec()) {
        assert!(tables.contains(&format!("table ip {t}\n")), "{tables}");
    }
}
