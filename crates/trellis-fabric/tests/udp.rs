//! The udp backend's packet pump end to end, in real network namespaces (needs root).
//!
//! Two "node" namespaces joined by a veth pair (192.168.91.1/24 and .2/24), each with a
//! "pod" namespace behind a veth (10.245.1.2/24 via 10.245.1.1 on node 1, 10.245.2.2/24
//! via 10.245.2.1 on node 2), a [`UdpPump`] in each node and a route for the other
//! node's pod subnet into its TUN device. Every namespace is named
//! `trudp-<pid>-<test>-<role>` and removed on success, failure and panic; namespaces of
//! earlier runs whose process is gone are swept at the start. The root namespace is
//! never touched.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use trellis_fabric::naming;
use trellis_fabric::udp::{UdpPump, UdpStats};
use trellis_fabric::{TunDevice, UDP_OVERHEAD, UDP_PORT};
use trellis_lab::scratch::{in_ns, run, sh, sweep_stale};
use trellis_net::Netns;

const PREFIX: &str = "trudp-";

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the udp pump tests create network namespaces and TUN devices: run them as root"
    );
}

/// Namespaces of one test; deleted (with the processes started in them) on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        require_root();
        sweep_stale(PREFIX);
        Lab {
            prefix: format!("{PREFIX}{}-{test}-", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    fn add(&mut self, role: &str) -> String {
        let ns = format!("{}{role}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn spawn(&mut self, ns: &str, argv: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns}: {e}"));
        self.children.push(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
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

/// Start `f` on a thread inside namespace `ns`.
fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let netns = Netns::open(&path).expect("open namespace");
        netns.run(f).expect("enter namespace")
    })
}

/// `ip monitor` of links, addresses and routes in a namespace, until stopped.
struct Monitor(Child);

impl Monitor {
    fn start(ns: &str) -> Monitor {
        let child = Command::new("ip")
            .args([
                "-n", ns, "-ts", "monitor", "label", "link", "address", "route",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ip monitor in {ns}: {e}"));
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(200));
        Monitor(child)
    }

    /// Stop it (our own child, by PID) and return what it printed.
    fn stop(mut self) -> String {
        let _ = self.0.kill();
        let out = self.0.wait_with_output().expect("ip monitor output");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn link_exists(ns: &str, dev: &str) -> bool {
    run(&["ip", "-n", ns, "link", "show", "dev", dev])
        .status
        .success()
}

fn tun_device(node: u8) -> TunDevice {
    TunDevice {
        name: naming::tun_device("udp-test"),
        mtu: 1500 - UDP_OVERHEAD,
        address: format!("10.245.{node}.0/32").parse().unwrap(),
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Two nodes with a pod each and a pump in each node, peered with each other.
struct Fabric {
    // Field order is drop order: the pumps go before the namespaces.
    pump1: UdpPump,
    pump2: UdpPump,
    n1: String,
    n2: String,
    p1: String,
    p2: String,
    tun: String,
    lab: Lab,
}

fn fabric(test: &str) -> Fabric {
    let mut lab = Lab::new(test);
    let n1 = lab.add("n1");
    let n2 = lab.add("n2");
    let p1 = lab.add("p1");
    let p2 = lab.add("p2");

    // Underlay: n1 u1 <-> u2 n2.
    sh(&[
        "ip", "-n", &n1, "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", &n2,
    ]);
    sh(&[
        "ip",
        "-n",
        &n1,
        "addr",
        "add",
        "192.168.91.1/24",
        "dev",
        "u1",
    ]);
    sh(&[
        "ip",
        "-n",
        &n2,
        "addr",
        "add",
        "192.168.91.2/24",
        "dev",
        "u2",
    ]);
    sh(&["ip", "-n", &n1, "link", "set", "u1", "up"]);
    sh(&["ip", "-n", &n2, "link", "set", "u2", "up"]);

    // Pods.
    for (i, node, pod) in [(1, &n1, &p1), (2, &n2, &p2)] {
        let host = format!("vp{i}");
        sh(&[
            "ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", &host, "netns",
            node,
        ]);
        sh(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            &format!("10.245.{i}.2/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            &format!("10.245.{i}.1"),
        ]);
        sh(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("10.245.{i}.1/24"),
            "dev",
            &host,
        ]);
        sh(&["ip", "-n", node, "link", "set", &host, "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }

    let dev1 = tun_device(1);
    let dev2 = tun_device(2);
    let tun = dev1.name.clone();
    let pump1 = in_ns(&n1, move || UdpPump::start(&dev1, UDP_PORT)).expect("start pump on n1");
    let pump2 = in_ns(&n2, move || UdpPump::start(&dev2, UDP_PORT)).expect("start pump on n2");
    sh(&[
        "ip",
        "-n",
        &n1,
        "route",
        "add",
        "10.245.2.0/24",
        "dev",
        &tun,
    ]);
    sh(&[
        "ip",
        "-n",
        &n2,
        "route",
        "add",
        "10.245.1.0/24",
        "dev",
        &tun,
    ]);
    pump1.set_peers(vec![(
        net("10.245.2.0/24"),
        "192.168.91.2:8285".parse().unwrap(),
    )]);
    pump2.set_peers(vec![(
        net("10.245.1.0/24"),
        "192.168.91.1:8285".parse().unwrap(),
    )]);

    Fabric {
        pump1,
        pump2,
        n1,
        n2,
        p1,
        p2,
        tun,
        lab,
    }
}

/// An ICMP echo request 10.245.2.2 -> 10.245.1.2, as node 2's pump would carry it.
fn echo_packet() -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&[10, 245, 2, 2]);
    p[16..20].copy_from_slice(&[10, 245, 1, 2]);
    let sum = |b: &[u8]| {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    };
    let h = sum(&p[..20]);
    p[10..12].copy_from_slice(&h.to_be_bytes());
    p[20] = 8; // echo request
    let i = sum(&p[20..]);
    p[22..24].copy_from_slice(&i.to_be_bytes());
    p
}

/// Send one datagram from `from` (inside `ns`) to node 1's pump.
fn send_to_pump1(ns: &str, from: Ipv4Addr, payload: Vec<u8>) {
    in_ns(ns, move || {
        let s = UdpSocket::bind(SocketAddrV4::new(from, 0)).expect("bind");
        s.send_to(&payload, "192.168.91.1:8285").expect("send");
    });
}

fn wait_stats(pump: &UdpPump, what: &str, f: impl Fn(&UdpStats) -> bool) -> UdpStats {
    let ok = wait_for(Duration::from_secs(3), || f(&pump.stats()));
    let st = pump.stats();
    assert!(ok, "{what}: {st:?}");
    st
}

#[test]
fn pump_carries_pod_traffic() {
    let f = fabric("pod");

    // Ping pod 1 -> pod 2 across the pumps.
    sh(&[
        "ip",
        "netns",
        "exec",
        &f.p1,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "3",
        "10.245.2.2",
    ]);
    let s1 = f.pump1.stats();
    let s2 = f.pump2.stats();
    assert!(s1.tx_packets >= 3 && s1.rx_packets >= 3, "node 1: {s1:?}");
    assert!(s2.tx_packets >= 3 && s2.rx_packets >= 3, "node 2: {s2:?}");
    assert!(
        s1.tx_bytes >= 3 * 84 && s2.rx_bytes >= 3 * 84,
        "{s1:?} {s2:?}"
    );
    assert_eq!(s1.dropped_unknown_source + s2.dropped_unknown_source, 0);
    assert_eq!(s1.errors + s2.errors, 0);

    // 1 MB over TCP pod 1 -> pod 2, byte for byte.
    const LEN: usize = 1 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i * 31 + i / 977) as u8).collect();
    let expect = data.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in_ns(&f.p2, move || {
        let l = TcpListener::bind("10.245.2.2:5001").expect("listen");
        ready_tx.send(()).unwrap();
        let (mut c, peer) = l.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::with_capacity(LEN);
        c.read_to_end(&mut got).expect("read");
        c.write_all(b"ok").expect("reply");
        (got, peer)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener up");
    let before = f.pump1.stats();
    let t0 = Instant::now();
    in_ns(&f.p1, move || {
        let mut c = TcpStream::connect("10.245.2.2:5001").expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(&data).expect("send 1 MB");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut ack = Vec::new();
        c.read_to_end(&mut ack).expect("read reply");
        assert_eq!(ack, b"ok");
    });
    let elapsed = t0.elapsed();
    let (got, peer) = server.join().expect("server");
    assert_eq!(peer.ip(), Ipv4Addr::new(10, 245, 1, 2), "no NAT on the way");
    assert_eq!(got.len(), LEN);
    assert!(got == expect, "1 MB arrived corrupted");
    let after = f.pump1.stats();
    assert!(
        after.tx_bytes - before.tx_bytes >= LEN as u64,
        "the transfer went through pump 1: {before:?} -> {after:?}"
    );
    eprintln!("1 MB over TCP in {elapsed:?}");

    // A well-formed packet from an address that is no peer is dropped and counted...
    std::thread::sleep(Duration::from_millis(200)); // let the TCP teardown settle
    let before = f.pump1.stats();
    sh(&[
        "ip",
        "-n",
        &f.n2,
        "addr",
        "add",
        "192.168.91.3/24",
        "dev",
        "u2",
    ]);
    send_to_pump1(&f.n2, Ipv4Addr::new(192, 168, 91, 3), echo_packet());
    let st = wait_stats(&f.pump1, "unknown source counted", |s| {
        s.dropped_unknown_source == before.dropped_unknown_source + 1
    });
    assert_eq!(
        st.rx_packets, before.rx_packets,
        "nothing from it reached the TUN"
    );

    // ...while the same packet from the peer's address (any port) is delivered, and
    // pod 1's answer goes back through the pump...
    send_to_pump1(&f.n2, Ipv4Addr::new(192, 168, 91, 2), echo_packet());
    wait_stats(&f.pump1, "peer packet delivered and answered", |s| {
        s.rx_packets == before.rx_packets + 1 && s.tx_packets == before.tx_packets + 1
    });

    // ...and garbage from the peer is dropped as malformed.
    send_to_pump1(
        &f.n2,
        Ipv4Addr::new(192, 168, 91, 2),
        b"not an ip packet".to_vec(),
    );
    wait_stats(&f.pump1, "malformed counted", |s| {
        s.dropped_malformed == before.dropped_malformed + 1 && s.rx_packets == before.rx_packets + 1
    });

    // A destination no peer covers (routed into the TUN by hand) is dropped and counted.
    sh(&[
        "ip",
        "-n",
        &f.n1,
        "route",
        "add",
        "10.245.9.0/24",
        "dev",
        &f.tun,
    ]);
    let _ = run(&[
        "ip",
        "netns",
        "exec",
        &f.p1,
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "10.245.9.9",
    ]);
    wait_stats(&f.pump1, "no peer counted", |s| s.dropped_no_peer >= 1);

    // Emptying the peer table stops traffic.
    f.pump1.set_peers(Vec::new());
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &f.p1,
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "10.245.2.2",
    ]);
    assert!(!out.status.success(), "ping must fail without peers");

    // A pump's successor adopts its device: dropping pump1 (an agent stopping) leaves
    // the device, its address and the route through it; a new pump attaches without a
    // single link, address or route change and traffic flows again.
    f.pump1.set_peers(vec![(
        net("10.245.2.0/24"),
        "192.168.91.2:8285".parse().unwrap(),
    )]);
    let Fabric {
        pump1,
        pump2,
        n1,
        n2,
        p1,
        tun,
        lab,
        ..
    } = f;
    let state = |ns: &str| {
        let links = sh(&["ip", "-n", ns, "-o", "link", "show", "dev", &tun]);
        let addrs = sh(&["ip", "-n", ns, "-o", "addr", "show", "dev", &tun]);
        let routes = sh(&["ip", "-n", ns, "route", "show", "dev", &tun]).replace(" linkdown", "");
        // The carrier (and the routes' `linkdown`) follows the attached pump; everything
        // else must stay.
        let links = links.replace("NO-CARRIER,", "").replace(",LOWER_UP", "");
        let mut words = links.split_whitespace();
        let mut kept = Vec::new();
        while let Some(w) = words.next() {
            if w == "state" {
                words.next(); // the operational state, with the carrier
            } else {
                kept.push(w);
            }
        }
        (kept.join(" "), addrs, routes)
    };
    let before = state(&n1);
    assert!(before.2.contains("10.245.2.0/24"), "{before:?}");
    let monitor = Monitor::start(&n1);
    drop(pump1);
    assert!(link_exists(&n1, &tun), "{tun} went with its pump");
    assert_eq!(state(&n1), before, "the device changed while no pump ran");
    let dev1 = tun_device(1);
    let pump1 = in_ns(&n1, move || UdpPump::start(&dev1, UDP_PORT)).expect("adopt on n1");
    pump1.set_peers(vec![(
        net("10.245.2.0/24"),
        "192.168.91.2:8285".parse().unwrap(),
    )]);
    assert_eq!(state(&n1), before, "the new pump changed the device");
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &p1,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.245.2.2",
    ]);
    assert!(
        out.status.success(),
        "no traffic through the adopted device"
    );
    let events = monitor.stop();
    let changes: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("[ADDR]") || l.contains("[ROUTE]") || l.contains("Deleted"))
        .collect();
    assert!(changes.is_empty(), "{changes:?}\n{events}");

    // Deleting the device (the reconciler's job once no backend wants it) stops the
    // pump; the other node's device is untouched.
    sh(&["ip", "-n", &n1, "link", "del", "dev", &tun]);
    assert!(wait_for(Duration::from_secs(2), || !pump1.is_running()));
    drop(pump1);
    assert!(!link_exists(&n1, &tun));
    assert!(
        link_exists(&n2, &tun),
        "the other node's device is untouched"
    );
    drop(pump2);
    drop(lab);
}

#[test]
fn device_lifecycle() {
    let mut lab = Lab::new("dev");
    let ns = lab.add("n");
    let dev = tun_device(1);
    let name = dev.name.clone();

    // A persistent device without a pump (as `ip tuntap add` makes, or an earlier pump
    // leaves) is adopted, configured, and stays persistent.
    sh(&[
        "ip", "-n", &ns, "tuntap", "add", "dev", &name, "mode", "tun",
    ]);
    assert!(sh(&["ip", "-n", &ns, "-d", "link", "show", "dev", &name]).contains("persist on"));
    let d = dev.clone();
    let pump = in_ns(&ns, move || UdpPump::start(&d, 18285)).expect("adopt leftover");
    let show = sh(&["ip", "-n", &ns, "-d", "addr", "show", "dev", &name]);
    assert!(show.contains("persist on"), "{show}");
    assert!(show.contains("mtu 1472"), "{show}");
    assert!(show.contains("inet 10.245.1.0/32"), "{show}");
    assert!(show.contains(",UP"), "{show}");

    // A device in use by a running pump is not taken over.
    let d = dev.clone();
    let err = in_ns(&ns, move || UdpPump::start(&d, 18286)).expect_err("device busy");
    assert!(err.to_string().contains("in use"), "{err}");
    // Nor is the port.
    let d = dev.clone();
    let err = in_ns(&ns, move || UdpPump::start(&d, 18285)).expect_err("port busy");
    assert!(err.to_string().contains("18285"), "{err}");

    drop(pump);
    assert!(
        link_exists(&ns, &name),
        "{name} went with the pump: it must outlive it"
    );

    // A device deleted from outside stops the pump, which says so. (The port can stay
    // held for a moment after the drop: a process another test thread forks meanwhile
    // holds a copy of the socket until it execs.)
    let mut again = None;
    let started = wait_for(Duration::from_secs(3), || {
        let d = dev.clone();
        match in_ns(&ns, move || UdpPump::start(&d, 18285)) {
            Ok(p) => {
                again = Some(p);
                true
            }
            Err(e) if e.to_string().contains("in use") => false,
            Err(e) => panic!("start again: {e}"),
        }
    });
    assert!(started, "port 18285 stayed busy after the pump was dropped");
    let pump = again.expect("started");
    assert!(pump.is_running());
    sh(&["ip", "-n", &ns, "link", "del", "dev", &name]);
    assert!(
        wait_for(Duration::from_secs(2), || !pump.is_running()),
        "the pump did not notice its device going away"
    );
    drop(pump);

    // A device of that name that is not a TUN device is refused, and left alone.
    sh(&[
        "ip", "-n", &ns, "link", "add", &name, "type", "veth", "peer", "name", "other",
    ]);
    let d = dev.clone();
    let err = in_ns(&ns, move || UdpPump::start(&d, 18285)).expect_err("not a TUN");
    assert!(err.to_string().contains("not a single-queue TUN"), "{err}");
    assert!(link_exists(&ns, &name));
    drop(lab);
}

/// Pod-to-pod throughput over the pumps (iperf3, 5 s). `cargo test -- --ignored`.
#[test]
#[ignore = "benchmark"]
fn iperf3_throughput() {
    let mut f = fabric("iperf");
    let p2 = f.p2.clone();
    f.lab
        .spawn(&p2, &["iperf3", "-s", "-1", "-B", "10.245.2.2"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &f.p1,
        "iperf3",
        "-c",
        "10.245.2.2",
        "-t",
        "5",
    ]);
    eprintln!("{out}");
    eprintln!(
        "{}",
        sh(&["ip", "-n", &f.n1, "-s", "link", "show", "dev", &f.tun])
    );
    eprintln!(
        "{}",
        sh(&["ip", "-n", &f.n2, "-s", "link", "show", "dev", &f.tun])
    );
    eprintln!(
        "node 1: {:?}\nnode 2: {:?}",
        f.pump1.stats(),
        f.pump2.stats()
    );
}
