//! The policy table end to end, in real network namespaces (needs root): the probed
//! reachability must equal [`Inputs::check`] (the verdicts computed from the objects) for
//! every source, destination, port and protocol, after every change.
//!
//! Lab per test: a "node" namespace with the pod bridge `br0` (10.244.1.1/24) and an
//! uplink veth (192.168.94.1/24) to an "outside" namespace (192.168.94.2); four pods
//! p1..p4 (10.244.1.2-5) on the bridge, each serving TCP and UDP on ports 80 and 81
//! (echo). p1, p2 are in namespace `x`, p3 in `y`, p4 in `z`. The policy table runs in
//! the node namespace. Namespaces are named `trpol-<pid>-<test>-<role>` and removed on
//! success, failure and panic; the root namespace is never touched.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trellis_api::objects::{parse_yaml, AnyObject, ContainerPort, PolicyProtocol};
use trellis_lab::scratch::{in_ns, require_root, sh, sweep_stale};
use trellis_policy::compile::Compiler;
use trellis_policy::model::{End, Inputs, PodInfo};
use trellis_policy::table::Table;

const PREFIX: &str = "trpol-";
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 94, 2);
const NODE: &str = "node-1";

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 1 + u8::try_from(i).unwrap())
}

struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Pod namespace names, p1..p4 at 0..3.
    pods: Vec<String>,
    node: String,
    outside: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Lab {
    fn new(test: &str) -> Lab {
        require_root("the policy tests create network namespaces and nftables tables");
        sweep_stale(PREFIX);
        let prefix = format!("{PREFIX}{}-{test}-", std::process::id());
        let mut lab = Lab {
            node: format!("{prefix}node"),
            outside: format!("{prefix}out"),
            prefix,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            pods: Vec::new(),
        };
        for ns in [lab.node.clone(), lab.outside.clone()] {
            sh(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns);
        }
        let (node, out) = (lab.node.clone(), lab.outside.clone());
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
        ipn(&node, &["link", "set", "lo", "up"]);
        ipn(&node, &["link", "add", "br0", "type", "bridge"]);
        ipn(&node, &["addr", "add", "10.244.1.1/24", "dev", "br0"]);
        ipn(&node, &["link", "set", "br0", "up"]);
        ipn(
            &node,
            &[
                "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &out,
            ],
        );
        ipn(&node, &["addr", "add", "192.168.94.1/24", "dev", "up0"]);
        ipn(&node, &["link", "set", "up0", "up"]);
        ipn(&out, &["addr", "add", "192.168.94.2/24", "dev", "eth0"]);
        ipn(&out, &["link", "set", "eth0", "up"]);
        ipn(
            &out,
            &["route", "add", "10.244.0.0/16", "via", "192.168.94.1"],
        );
        for i in 1..=4 {
            let pod = format!("{}p{i}", lab.prefix);
            sh(&["ip", "netns", "add", &pod]);
            lab.namespaces.push(pod.clone());
            let port = format!("vp{i}");
            ipn(
                &node,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &pod,
                ],
            );
            ipn(&node, &["link", "set", &port, "master", "br0", "up"]);
            ipn(
                &pod,
                &["addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"],
            );
            ipn(&pod, &["link", "set", "eth0", "up"]);
            ipn(&pod, &["link", "set", "lo", "up"]);
            ipn(&pod, &["route", "add", "default", "via", "10.244.1.1"]);
            lab.pods.push(pod.clone());
            for port in [80u16, 81] {
                lab.serve(&pod, pod_ip(i), port);
            }
        }
        lab
    }

    /// TCP echo and UDP echo on `ip:port` inside `ns`.
    fn serve(&mut self, ns: &str, ip: Ipv4Addr, port: u16) {
        let (tcp, udp) = in_ns(ns, move || {
            let t = TcpListener::bind(SocketAddrV4::new(ip, port)).expect("bind tcp");
            let u = UdpSocket::bind(SocketAddrV4::new(ip, port)).expect("bind udp");
            (t, u)
        });
        tcp.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let stop = stop.clone();
                        std::thread::spawn(move || {
                            c.set_nonblocking(false).unwrap();
                            c.set_read_timeout(Some(Duration::from_millis(200)))
                                .unwrap();
                            let mut buf = [0u8; 64];
                            while !stop.load(Ordering::SeqCst) {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        }));
    }

    /// Whether `src` (a namespace) reaches `dst:port` over `proto` (6 or 17).
    fn probe(&self, src: &str, dst: Ipv4Addr, port: u16, proto: u8) -> bool {
        in_ns(src, move || {
            let to = SocketAddrV4::new(dst, port);
            if proto == 6 {
                let Ok(mut c) = TcpStream::connect_timeout(&to.into(), Duration::from_millis(250))
                else {
                    return false;
                };
                c.set_read_timeout(Some(Duration::from_millis(250)))
                    .unwrap();
                let mut b = [0u8; 1];
                c.write_all(b"x").is_ok() && c.read_exact(&mut b).is_ok()
            } else {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(150)))
                    .unwrap();
                let mut b = [0u8; 8];
                for _ in 0..2 {
                    let _ = s.send_to(b"x", to);
                    if let Ok((_, from)) = s.recv_from(&mut b) {
                        return from == std::net::SocketAddr::V4(to);
                    }
                }
                false
            }
        })
    }
}

/// The pods of the lab as policy inputs (p4 runs "on another node").
fn pods() -> BTreeMap<Ipv4Addr, PodInfo> {
    let ns = ["x", "x", "y", "z"];
    let mut m = BTreeMap::new();
    for i in 1..=4 {
        let mut labels = BTreeMap::new();
        labels.insert("pod".to_string(), format!("p{i}"));
        if i <= 2 {
            labels.insert("app".to_string(), "web".into());
        }
        m.insert(
            pod_ip(i),
            PodInfo {
                namespace: ns[i - 1].into(),
                name: format!("p{i}"),
                ip: pod_ip(i),
                labels,
                ports: vec![
                    ContainerPort {
                        name: "http".into(),
                        container_port: 80,
                        protocol: PolicyProtocol::Tcp,
                    },
                    ContainerPort {
                        name: "alt".into(),
                        container_port: 81,
                        protocol: PolicyProtocol::Tcp,
                    },
                ],
                node: if i == 4 { "node-2".into() } else { NODE.into() },
            },
        );
    }
    m
}

fn inputs(yaml: &str) -> Inputs {
    let mut i = Inputs {
        pods: pods(),
        ..Default::default()
    };
    if yaml.trim().is_empty() {
        return i;
    }
    for o in parse_yaml(yaml).expect("test manifest parses") {
        o.validate()
            .unwrap_or_else(|e| panic!("test manifest: {e}"));
        match o {
            AnyObject::NetworkPolicy(p) => {
                i.netpols.insert(
                    (
                        p.metadata.namespace.clone().unwrap(),
                        p.metadata.name.clone(),
                    ),
                    p.spec,
                );
            }
            AnyObject::ClusterNetworkPolicy(p) => {
                i.cnps.insert(p.metadata.name.clone(), p.spec);
            }
            AnyObject::Namespace(n) => {
                i.namespaces
                    .insert(n.metadata.name.clone(), n.metadata.labels);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    i
}

/// Probe every source (the local pods p1..p3 and the outside) to every pod on 80 and
/// 81, TCP and UDP, and compare with the model. p4 is another node's pod: this node
/// enforces only its own pods' rules, so it is probed as a destination only for
/// sources whose egress this node decides.
fn check_matrix(lab: &Lab, inp: &Inputs, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut wrong = Vec::new();
        let mut sources: Vec<(String, Ipv4Addr, Option<Ipv4Addr>)> = (1..=3)
            .map(|i| (lab.pods[i - 1].clone(), pod_ip(i), Some(pod_ip(i))))
            .collect();
        sources.push((lab.outside.clone(), OUTSIDE, None));
        for (ns, src_ip, pod) in &sources {
            for d in 1..=4 {
                if d == 4 && pod.is_none() {
                    continue;
                }
                for port in [80u16, 81] {
                    for proto in [6u8, 17] {
                        let src_end = match pod {
                            Some(ip) => End::Pod(&inp.pods[ip]),
                            None => End::Addr(*src_ip),
                        };
                        let dst = &inp.pods[&pod_ip(d)];
                        let mut v = inp.check(src_end, End::Pod(dst), proto, port);
                        if d == 4 {
                            // Another node's ingress is not ours to enforce.
                            v.ingress = None;
                        }
                        let want = v.allowed();
                        let got = lab.probe(ns, pod_ip(d), port, proto);
                        if want != got {
                            wrong.push(format!(
                                "{src_ip} -> p{d}:{port}/{proto}: want {want} got {got} ({v:?})"
                            ));
                        }
                    }
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} wrong probes:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Node {
    compiler: Compiler,
    table: Table,
}

/// Apply `inp` in the node namespace: compile the change, write it.
fn apply(
    lab: &Lab,
    node: Node,
    inp: Inputs,
    full: bool,
) -> (Node, trellis_policy::table::SyncReport) {
    in_ns(&lab.node, move || {
        let mut node = node;
        let delta = node.compiler.update(inp);
        let r = if full {
            node.table.full_sync(&node.compiler)
        } else {
            node.table.apply(&node.compiler, &delta)
        }
        .expect("policy sync");
        (node, r)
    })
}

#[test]
fn probed_reachability_equals_the_model() {
    let lab = Lab::new("matrix");
    let mut node = Node {
        compiler: Compiler::new(
            NODE,
            &[],
            &[Ipv4Addr::new(10, 244, 1, 1), Ipv4Addr::new(192, 168, 94, 1)],
        ),
        table: Table::new(),
    };
    let steps: Vec<(&str, &str)> = vec![
        ("no policy", ""),
        (
            "default deny ingress in x",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
        ),
        (
            "allow y to web on TCP 80 (named), everyone on UDP 81",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: http}]
  - ports: [{protocol: UDP, port: 81}]
"#,
        ),
        (
            "egress of p3: only ipBlock 10.244.1.0/24 except p2, ports 80-81",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.3/32]}}]
    ports: [{port: 80, endPort: 81, protocol: TCP}]
"#,
        ),
        (
            "admin tier: deny z's pods from x, pass y, baseline deny all ingress of y",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: p1}}}]}]
---
apiVersion: trellis/v1
kind: ClusterNetworkPolicy
metadata: {name: admin-a}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - name: outside-81
    action: Deny
    from: [{networks: [192.168.94.0/24]}]
    ports: [{portNumber: {protocol: TCP, port: 81}}]
  - action: Log
    from: [{namespaces: {}}]
  - action: Accept
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: p3}}}}]
    ports: [{namedPort: alt}]
  - action: Pass
    from: [{namespaces: {}}]
---
apiVersion: trellis/v1
kind: ClusterNetworkPolicy
metadata: {name: base}
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}, {networks: [0.0.0.0/0]}]
    ports: [{portRange: {protocol: UDP, start: 1, end: 100}}]
"#,
        ),
        ("back to nothing", ""),
    ];
    for (what, yaml) in steps {
        let inp = inputs(yaml);
        let (n, report) = apply(&lab, node, inp.clone(), false);
        node = n;
        eprintln!("{what}: {report:?}");
        // nft itself can read every rule (operators list the ruleset).
        let listing = sh(&["ip", "netns", "exec", &lab.node, "nft", "list", "ruleset"]);
        assert!(
            listing.contains("table ip trellis-policy"),
            "{what}: {listing}"
        );
        check_matrix(&lab, &inp, what);
        // The compiled state equals what a fresh full sync finds: nothing to write.
        let (n, again) = apply(&lab, node, inp.clone(), true);
        node = n;
        assert!(
            again.changed_nothing(),
            "{what}: a full sync after a delta wrote {again:?}"
        );
    }
}

#[test]
fn a_denied_established_connection_stops_at_once_and_replies_need_no_rule() {
    let lab = Lab::new("estab");
    let node = Node {
        compiler: Compiler::new(
            NODE,
            &[],
            &[Ipv4Addr::new(10, 244, 1, 1), Ipv4Addr::new(192, 168, 94, 1)],
        ),
        table: Table::new(),
    };
    let (node, _) = apply(&lab, node, inputs(""), false);
    // p3 (y) holds a connection to p1 (x) port 80.
    let p3 = lab.pods[2].clone();
    let mut conn = in_ns(&p3, || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(pod_ip(1), 80).into(),
            Duration::from_secs(1),
        )
        .expect("connect before policy")
    });
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    conn.write_all(b"a").unwrap();
    conn.read_exact(&mut b).expect("echo before policy");
    // Egress deny on p1 does not stop p1 answering (replies belong to p3's connection,
    // judged by its original direction: p3's egress, p1's ingress).
    let egress_deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
    let (node, _) = apply(&lab, node, inputs(egress_deny), false);
    conn.write_all(b"b").unwrap();
    conn.read_exact(&mut b)
        .expect("a reply is not egress of the answering pod");
    // Ingress deny on x: the established connection stops within a second.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: x}\nspec: {podSelector: {}}\n";
    let t0 = Instant::now();
    let (_node, _) = apply(&lab, node, inputs(deny), false);
    let _ = conn.write_all(b"c");
    let r = conn.read_exact(&mut b);
    assert!(r.is_err(), "the connection still echoes after the deny");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
}

/// A set of another type and a base chain on another priority (left by hand, or by an
/// older agent) are replaced by a full sync, and the data path is right again.
#[test]
fn full_sync_replaces_a_retyped_set_and_a_moved_base_chain() {
    let lab = Lab::new("retype");
    let node = Node {
        compiler: Compiler::new(
            NODE,
            &[],
            &[Ipv4Addr::new(10, 244, 1, 1), Ipv4Addr::new(192, 168, 94, 1)],
        ),
        table: Table::new(),
    };
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
    let (node, _) = apply(&lab, node, inputs(deny), true);
    let nft = |cmd: &str| sh(&["ip", "netns", "exec", &lab.node, "nft", cmd]);
    nft("flush chain ip trellis-policy ingress-np");
    nft("delete set ip trellis-policy np-in-iso");
    nft("add set ip trellis-policy np-in-iso { type ipv4_addr . ipv4_addr; }");
    nft("flush chain ip trellis-policy input");
    nft("delete chain ip trellis-policy input");
    nft("add chain ip trellis-policy input { type filter hook input priority 0; }");
    let (node, r) = apply(&lab, node, inputs(deny), true);
    assert!(r.sets >= 1 && r.chains >= 1, "{r:?}");
    let listing = nft("list chain ip trellis-policy input");
    assert!(listing.contains("priority 200"), "{listing}");
    check_matrix(&lab, &inputs(deny), "after the repair");
    let (_, again) = apply(&lab, node, inputs(deny), true);
    assert!(again.changed_nothing(), "{again:?}");
}
