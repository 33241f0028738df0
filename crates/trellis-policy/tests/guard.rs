//! The anti-spoofing guard end to end, in real network namespaces (needs root, `ip`
//! and `nft`; fails, never skips, without them).
//!
//! Lab per test: a "node" namespace with the bridge `br0` (10.77.0.1/24) and three
//! "pod" namespaces p1..p3 (10.77.0.11-13/24, MACs 02:00:00:00:00:11-13) behind veths
//! `vp1`..`vp3` on the bridge. p1 (the attacker) and p2 are guarded ports; p3 is not
//! guarded and listens. Frames are written by hand and sent with AF_PACKET sockets from
//! inside the pods; whether they arrive is seen by an AF_PACKET socket on p3's `eth0`
//! (and, for well-formed datagrams, a UDP socket in p3 or in the node). The guard runs on threads
//! inside the node namespace. Every namespace is named `trgd-<pid>-<test>-<role>` and
//! removed on success, failure and panic; namespaces of earlier runs whose process is
//! gone are swept at the start. The root namespace is never touched.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use trellis_lab::scratch::{in_ns, require_root, run, sh, sweep_stale};
use trellis_policy::guard::{Guard, GuardPort, Report};

const PREFIX: &str = "trgd-";
const BROADCAST: [u8; 6] = [0xff; 6];
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
/// How long a frame that must not arrive is waited for.
const NEGATIVE_WAIT: Duration = Duration::from_millis(300);
/// How long a frame that must arrive may take.
const POSITIVE_WAIT: Duration = Duration::from_secs(3);

fn mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, 0x10 + i]
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i)
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn require_root_and_tools() {
    require_root("the guard tests create network namespaces and nftables tables");
    sh(&["ip", "-V"]);
    sh(&["nft", "--version"]);
}

/// An AF_PACKET socket on a pod's `eth0`: sends frames as written, sees every frame
/// that arrives.
struct Tap {
    fd: OwnedFd,
}

impl Tap {
    fn open(ns: &str) -> Tap {
        in_ns(ns, || {
            let proto = ETH_P_ALL.to_be();
            // SAFETY: plain socket(2) call; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the argument is a NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            assert!(ifindex > 0, "no eth0");
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = proto;
            sa.sll_ifindex = i32::try_from(ifindex).unwrap();
            // SAFETY: `sa` is a valid sockaddr_ll and the length matches it.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&sa).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            Tap { fd }
        })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            usize::try_from(r).ok(),
            Some(frame.len()),
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receive one incoming frame, waiting at most until `deadline`.
    fn recv(&self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: `pfd` is one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `sa` are valid for writes of the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::from_mut(&mut sa).cast(),
                    &mut len,
                )
            };
            let Ok(n) = usize::try_from(n) else { continue };
            if sa.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(buf[..n].to_vec());
        }
    }

    /// Forget every frame received so far.
    fn drain(&self) {
        let now = Instant::now();
        for _ in 0..10_000 {
            if self.recv(now).is_none() {
                break;
            }
        }
    }

    /// Whether an incoming frame containing `needle` arrives within `wait`.
    fn saw(&self, needle: &[u8], wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while let Some(f) = self.recv(deadline) {
            if f.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
        false
    }
}

const ETH_P_ALL: u16 = 0x0003;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 UDP datagram (header checksum set, UDP checksum 0).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let udp_len = 8 + data.len();
    let total = u16::try_from(20 + udp_len).unwrap();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    p
}

/// An Ethernet/IPv4 ARP packet.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    p
}

/// An IPv6 packet (link-local source of MAC `m`) to all nodes with `next` header.
fn ipv6(m: [u8; 6], next: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[next, 255]);
    p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&[m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(body);
    p
}

fn port(i: u8, allowed: &[&str]) -> GuardPort {
    let allowed: Vec<Ipv4Net> = allowed.iter().map(|s| s.parse().unwrap()).collect();
    GuardPort::new(format!("vp{i}"), mac(i), ip(i), &allowed)
}

/// The lab of one test; every namespace is deleted on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    guard: Arc<Mutex<Guard>>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        require_root_and_tools();
        sweep_stale(PREFIX);
        let mut lab = Lab {
            prefix: format!("{PREFIX}{}-{test}-", std::process::id()),
            namespaces: Vec::new(),
            guard: Arc::new(Mutex::new(Guard::new())),
        };
        let node = lab.add("node");
        sh(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", &node, "link", "set", "br0", "up"]);
        for i in 1..=3u8 {
            let pod = lab.add(&format!("p{i}"));
            let vp = format!("vp{i}");
            sh(&[
                "ip", "-n", &node, "link", "add", &vp, "type", "veth", "peer", "name", "eth0",
                "netns", &pod,
            ]);
            sh(&["ip", "-n", &node, "link", "set", &vp, "master", "br0", "up"]);
            sh(&[
                "ip",
                "-n",
                &pod,
                "link",
                "set",
                "eth0",
                "address",
                &mac_text(mac(i)),
            ]);
            sh(&[
                "ip",
                "-n",
                &pod,
                "addr",
                "add",
                &format!("{}/24", ip(i)),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &pod, "link", "set", "eth0", "up"]);
            sh(&[
                "ip",
                "-n",
                &pod,
                "route",
                "add",
                "default",
                "via",
                "10.77.0.1",
            ]);
        }
        lab
    }

    fn add(&mut self, role: &str) -> String {
        let ns = format!("{}{role}", self.prefix);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        // Quiet pods: no IPv6 of their own (frames are written by hand).
        for k in ["all", "default"] {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
            ]);
        }
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Run `f` with the guard on a thread inside the node namespace.
    fn guard<T: Send + 'static>(&self, f: impl FnOnce(&mut Guard) -> T + Send + 'static) -> T {
        let g = self.guard.clone();
        in_ns(&self.ns("node"), move || f(&mut g.lock().unwrap()))
    }

    fn full_sync(&self, ports: &[GuardPort]) -> Report {
        let ports = ports.to_vec();
        self.guard(move |g| g.full_sync(&ports))
            .unwrap_or_else(|e| panic!("full sync: {e}"))
    }

    fn add_port(&self, p: &GuardPort) -> Report {
        let p = p.clone();
        self.guard(move |g| g.add_port(&p))
            .unwrap_or_else(|e| panic!("add port: {e}"))
    }

    fn remove_port(&self, name: &str) -> Report {
        let name = name.to_string();
        self.guard(move |g| g.remove_port(&name))
            .unwrap_or_else(|e| panic!("remove port: {e}"))
    }

    fn nft(&self, args: &[&str]) -> String {
        let node = self.ns("node");
        let mut v = vec!["ip", "netns", "exec", node.as_str(), "nft"];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn table(&self) -> String {
        self.nft(&["list", "table", "bridge", "trellis-guard"])
    }

    /// The MAC p3 has for `addr` (None without an entry).
    fn neigh_of_p3(&self, addr: Ipv4Addr) -> Option<String> {
        let out = sh(&[
            "ip",
            "-n",
            &self.ns("p3"),
            "neigh",
            "show",
            &addr.to_string(),
            "dev",
            "eth0",
        ]);
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_string);
            }
        }
        None
    }

    fn bridge_fdb(&self) -> String {
        sh(&["bridge", "-n", &self.ns("node"), "fdb", "show", "br", "br0"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
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

/// Everything a check needs: the attacker's tap (p1), the listener's tap (p3) and a
/// UDP socket in p3.
struct Wire {
    p1: Tap,
    p3: Tap,
    udp: UdpSocket,
    /// A UDP socket in the node (on every address).
    node_udp: UdpSocket,
    /// The bridge's MAC (frames to the node itself).
    br_mac: [u8; 6],
    n: std::cell::Cell<u32>,
}

const UDP_PORT: u16 = 9999;

impl Wire {
    fn new(lab: &Lab) -> Wire {
        let udp = in_ns(&lab.ns("p3"), || {
            UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("bind UDP in p3")
        });
        udp.set_nonblocking(true).unwrap();
        let node_udp = in_ns(&lab.ns("node"), || {
            UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("bind UDP in the node")
        });
        node_udp.set_nonblocking(true).unwrap();
        let link = sh(&["ip", "-n", &lab.ns("node"), "link", "show", "br0"]);
        let text = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("bridge MAC");
        let mut br_mac = [0u8; 6];
        for (b, h) in br_mac.iter_mut().zip(text.split(':')) {
            *b = u8::from_str_radix(h, 16).unwrap();
        }
        Wire {
            p1: Tap::open(&lab.ns("p1")),
            p3: Tap::open(&lab.ns("p3")),
            udp,
            node_udp,
            br_mac,
            n: std::cell::Cell::new(0),
        }
    }

    /// A UDP datagram from p1 (its own MAC) to the node's address 10.77.0.1 with
    /// destination MAC `dst` and source `src`: whether the node's socket gets it.
    fn to_node(&self, dst: [u8; 6], src: Ipv4Addr, expect: bool) -> bool {
        let mut buf = [0u8; 512];
        while self.node_udp.recv(&mut buf).is_ok() {}
        let m = self.marker("to-node");
        let f = eth(
            dst,
            mac(1),
            ETH_P_IP,
            &ipv4_udp(src, Ipv4Addr::new(10, 77, 0, 1), 5000, UDP_PORT, &m),
        );
        for _ in 0..3 {
            self.p1.send(&f);
        }
        let deadline = Instant::now() + if expect { POSITIVE_WAIT } else { NEGATIVE_WAIT };
        loop {
            if let Ok(n) = self.node_udp.recv(&mut buf) {
                if buf[..n] == m[..] {
                    return true;
                }
                continue;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn marker(&self, what: &str) -> Vec<u8> {
        self.n.set(self.n.get() + 1);
        format!("trgd-{what}-{}", self.n.get()).into_bytes()
    }

    /// Send a frame from p1 (three times) and tell whether p3 sees `needle`.
    fn arrives(&self, frame: &[u8], needle: &[u8], expect: bool) -> bool {
        self.p3.drain();
        for _ in 0..3 {
            self.p1.send(frame);
        }
        self.p3
            .saw(needle, if expect { POSITIVE_WAIT } else { NEGATIVE_WAIT })
    }

    /// A UDP datagram from p1's wire to p3 with source MAC `smac` and address `src`,
    /// source port `sport`: whether it arrives at p3's link, and whether p3's UDP socket
    /// gets it.
    fn udp(
        &self,
        what: &str,
        smac: [u8; 6],
        src: Ipv4Addr,
        sport: u16,
        expect: bool,
    ) -> (bool, bool) {
        while self.udp.recv(&mut [0u8; 512]).is_ok() {}
        let m = self.marker(what);
        let f = eth(
            mac(3),
            smac,
            ETH_P_IP,
            &ipv4_udp(src, ip(3), sport, UDP_PORT, &m),
        );
        let link = self.arrives(&f, &m, expect);
        let mut got = false;
        let deadline = Instant::now() + if link { POSITIVE_WAIT } else { Duration::ZERO };
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = self.udp.recv(&mut buf) {
                if buf[..n] == m[..] {
                    got = true;
                    break;
                }
                continue;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (link, got)
    }

    /// An ARP packet from p1's wire (source MAC p1's): whether p3 sees it.
    fn arp(
        &self,
        dst: [u8; 6],
        op: u16,
        sha: [u8; 6],
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
        expect: bool,
    ) -> bool {
        let body = arp(op, sha, spa, if op == 2 { dst } else { [0; 6] }, tpa);
        self.arrives(&eth(dst, mac(1), ETH_P_ARP, &body), &body, expect)
    }

    /// A DHCP-shaped broadcast from p1 (its own MAC and address) with source port `sport`.
    fn dhcp_like(&self, sport: u16, expect: bool) -> bool {
        let m = self.marker("dhcp");
        let f = eth(
            BROADCAST,
            mac(1),
            ETH_P_IP,
            &ipv4_udp(ip(1), Ipv4Addr::BROADCAST, sport, 68, &m),
        );
        self.arrives(&f, &m, expect)
    }

    /// A VLAN-tagged (VID 5) UDP datagram from p1 with p2's source address.
    fn vlan(&self, expect: bool) -> bool {
        let m = self.marker("vlan");
        let mut tagged = vec![0, 5];
        tagged.extend_from_slice(&ETH_P_IP.to_be_bytes());
        tagged.extend_from_slice(&ipv4_udp(ip(2), ip(3), 5000, UDP_PORT, &m));
        self.arrives(&eth(mac(3), mac(1), ETH_P_8021Q, &tagged), &m, expect)
    }

    /// An ICMPv6 message of `ty` from p1 (its own MAC) to all nodes.
    fn icmpv6(&self, ty: u8, expect: bool) -> bool {
        let m = self.marker("icmpv6");
        let mut body = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&m);
        let f = eth(
            [0x33, 0x33, 0, 0, 0, 1],
            mac(1),
            ETH_P_IPV6,
            &ipv6(mac(1), 58, &body),
        );
        self.arrives(&f, &m, expect)
    }
}

fn assert_written_nothing(r: &Report, what: &str) {
    assert!(r.changed_nothing(), "{what} wrote something: {r:?}");
    assert_eq!(*r, Report::default(), "{what}");
}

#[test]
fn guard_stops_spoofing_from_pod_ports() {
    let lab = Lab::new("spoof");
    // A table of someone else's in the same family and hook: never touched.
    lab.nft(&[
        "add table bridge bystander; add chain bridge bystander c { type filter hook prerouting priority 0; policy accept; }; add rule bridge bystander c counter",
    ]);
    let bystander = || lab.nft(&["-s", "list", "table", "bridge", "bystander"]);
    let bystander_before = bystander();

    let ports = vec![port(1, &[]), port(2, &[])];
    let r = lab.full_sync(&ports);
    assert_eq!(r.tables_created, 2, "{r:?}");
    assert_eq!(r.transactions, 1, "{r:?}");
    assert_eq!(r.sets_added, 4, "{r:?}");
    assert_eq!(r.chains_written, 6, "{r:?}");
    // Two ports: pod-ports (in both tables), port-macs and one source range each.
    assert_eq!(r.elements_added, 8, "{r:?}");
    assert_eq!(r.elements_deleted, 0, "{r:?}");
    let table = lab.table();
    eprintln!("{table}");
    for line in [
        "type filter hook prerouting priority filter; policy accept;",
        "iifname @pod-ports jump pod-guard",
        "iifname . ether saddr != @port-macs drop",
        "ether type arp goto pod-arp",
        "ether type ip goto pod-ipv4",
        "ether type ip6 goto pod-ipv6",
        "iifname . arp saddr ether @port-macs iifname . arp saddr ip @port-sources return",
        "udp sport 67 drop",
        "iifname . ip saddr @port-sources return",
        "icmpv6 type nd-router-advert drop",
        "icmpv6 type nd-redirect drop",
        "udp sport 547 drop",
        "\"vp1\" . 02:00:00:00:00:11",
        "\"vp2\" . 10.77.0.12",
    ] {
        assert!(table.contains(line), "missing {line:?} in\n{table}");
    }
    let inet = lab.nft(&["list", "table", "inet", "trellis-guard"]);
    eprintln!("{inet}");
    for line in [
        "type filter hook prerouting priority raw; policy accept;",
        "iifname @pod-ports drop",
        "elements = { \"vp1\",",
    ] {
        assert!(inet.contains(line), "missing {line:?} in\n{inet}");
    }

    // p3 knows p2 (the entry a poisoning would overwrite).
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("p3"),
        "ping",
        "-c1",
        "-W2",
        &ip(2).to_string(),
    ]);
    assert_eq!(lab.neigh_of_p3(ip(2)), Some(mac_text(mac(2))));
    let poisoned_at = Instant::now();

    let w = Wire::new(&lab);

    // (1) Another pod's source address is dropped; the right one arrives (and is a
    // well-formed datagram p3's stack takes).
    assert_eq!(
        w.udp("spoofed-ip", mac(1), ip(2), 5000, false),
        (false, false)
    );
    assert_eq!(w.udp("own-ip", mac(1), ip(1), 5000, true), (true, true));
    // Sources outside the port's set, also on the node's subnet and 0.0.0.0.
    assert!(
        !w.udp("node-ip", mac(1), Ipv4Addr::new(10, 77, 0, 1), 5000, false)
            .0
    );
    assert!(!w.udp("zero", mac(1), Ipv4Addr::UNSPECIFIED, 5000, false).0);

    // (2) A forged source MAC is dropped (a made-up one and p2's), and the bridge does
    // not learn it.
    assert!(
        !w.udp("forged-mac", [2, 0, 0, 0, 0, 0x99], ip(1), 5000, false)
            .0
    );
    assert!(!w.udp("p2-mac", mac(2), ip(1), 5000, false).0);
    let fdb = lab.bridge_fdb();
    assert!(!fdb.contains("02:00:00:00:00:99"), "{fdb}");
    assert!(
        !fdb.lines()
            .any(|l| l.contains(&mac_text(mac(2))) && l.contains("vp1")),
        "{fdb}"
    );

    // (3) ARP claiming p2's address: a reply to p3 and a gratuitous request; an ARP
    // whose sender hardware address is not p1's; all dropped. p1's own ARP arrives.
    assert!(
        !w.arp(mac(3), 2, mac(1), ip(2), ip(3), false),
        "forged ARP reply"
    );
    assert!(
        !w.arp(BROADCAST, 1, mac(1), ip(2), ip(2), false),
        "gratuitous ARP"
    );
    assert!(
        !w.arp(mac(3), 2, mac(2), ip(1), ip(3), false),
        "foreign sha"
    );
    assert!(
        w.arp(mac(3), 2, mac(1), ip(1), ip(3), true),
        "own ARP reply"
    );
    assert_eq!(
        lab.neigh_of_p3(ip(2)),
        Some(mac_text(mac(2))),
        "p3 poisoned"
    );

    // (4) A DHCP server answer is dropped; the same datagram from another port arrives.
    assert!(!w.dhcp_like(67, false), "DHCP server");
    assert!(w.dhcp_like(6767, true), "not DHCP");

    // Other ethertypes (a VLAN tag) and IPv6 router advertisements / redirects are
    // dropped; other ICMPv6 passes.
    assert!(!w.vlan(false), "VLAN-tagged");
    assert!(!w.icmpv6(134, false), "router advertisement");
    assert!(!w.icmpv6(137, false), "redirect");
    assert!(w.icmpv6(128, true), "echo request");

    // The node itself: reached from p1's own address through the bridge, not with a
    // forged one; frames to link-local group addresses (which the bridge hands to the
    // port's own stack, LLDP's past every bridge hook) reach it with neither.
    assert!(w.to_node(w.br_mac, ip(1), true), "own address to the node");
    assert!(!w.to_node(w.br_mac, ip(2), false), "forged to the node");
    for last in [0x03, 0x0e] {
        let group = [0x01, 0x80, 0xc2, 0, 0, last];
        assert!(!w.to_node(group, ip(2), false), "forged via {group:02x?}");
        assert!(!w.to_node(group, ip(1), false), "own via {group:02x?}");
    }

    // (5) allowedSourceAddresses: 10.99.0.0/16 added to p1's sources.
    let p1_allowed = port(1, &["10.99.0.0/16"]);
    let r = lab.add_port(&p1_allowed);
    assert_eq!(
        (
            r.elements_added,
            r.elements_deleted,
            r.transactions,
            r.messages
        ),
        (1, 0, 1, 1),
        "{r:?}"
    );
    assert_eq!(
        w.udp("allowed", mac(1), Ipv4Addr::new(10, 99, 3, 4), 5000, true),
        (true, true)
    );
    assert!(
        !w.udp(
            "not-allowed",
            mac(1),
            Ipv4Addr::new(10, 98, 0, 1),
            5000,
            false
        )
        .0
    );
    assert!(!w.udp("still-p2", mac(1), ip(2), 5000, false).0);
    let ports = vec![p1_allowed.clone(), port(2, &[])];

    // (6) A full sync with unchanged ports writes nothing, also from a new guard (an
    // agent restart).
    let before = lab.table();
    assert_written_nothing(&lab.full_sync(&ports), "unchanged full sync");
    let restarted = Arc::new(Mutex::new(Guard::new()));
    let g = restarted.clone();
    let ports2 = ports.clone();
    let r = in_ns(&lab.ns("node"), move || {
        g.lock().unwrap().full_sync(&ports2)
    })
    .unwrap_or_else(|e| panic!("restart full sync: {e}"));
    assert_written_nothing(&r, "full sync after a restart");
    assert_eq!(lab.table(), before);

    // Removing p1's elements lets the forged traffic through: p3 is poisoned.
    let r = lab.remove_port("vp1");
    assert_eq!(
        (r.elements_added, r.elements_deleted, r.transactions),
        (0, 5, 1),
        "{r:?}"
    );
    for last in [0x03, 0x0e] {
        let group = [0x01, 0x80, 0xc2, 0, 0, last];
        assert!(
            w.to_node(group, ip(2), true),
            "forged via {group:02x?}, unguarded"
        );
    }
    assert_eq!(w.udp("unguarded", mac(1), ip(2), 5000, true), (true, true));
    assert!(w.vlan(true), "VLAN-tagged, unguarded");
    assert!(w.dhcp_like(67, true), "DHCP server, unguarded");
    // ARP entries are not overwritten within a second of their last update.
    if let Some(left) = Duration::from_millis(1100).checked_sub(poisoned_at.elapsed()) {
        std::thread::sleep(left);
    }
    // (A timer's state change also counts as an update: try a few times.)
    for attempt in 0..4 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        assert!(
            w.arp(mac(3), 2, mac(1), ip(2), ip(3), true),
            "forged ARP, unguarded"
        );
        let deadline = Instant::now() + Duration::from_millis(300);
        while lab.neigh_of_p3(ip(2)) != Some(mac_text(mac(1))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if lab.neigh_of_p3(ip(2)) == Some(mac_text(mac(1))) {
            break;
        }
    }
    assert_eq!(
        lab.neigh_of_p3(ip(2)),
        Some(mac_text(mac(1))),
        "not poisoned"
    );

    // Adding it back stops it again.
    let r = lab.add_port(&p1_allowed);
    assert_eq!((r.elements_added, r.transactions), (5, 1), "{r:?}");
    assert!(
        !w.to_node([0x01, 0x80, 0xc2, 0, 0, 0x0e], ip(2), false),
        "LLDP again"
    );
    assert_eq!(
        w.udp("guarded-again", mac(1), ip(2), 5000, false),
        (false, false)
    );
    assert!(
        !w.arp(mac(3), 2, mac(1), ip(2), ip(3), false),
        "forged ARP again"
    );
    assert!(w.udp("own-again", mac(1), ip(1), 5000, true).1);
    assert_written_nothing(&lab.full_sync(&ports), "full sync after add back");

    // Without its inet element the bridge table alone misses LLDP-addressed frames
    // (the reason for the inet table); a full sync puts the element back.
    let lldp = [0x01, 0x80, 0xc2, 0, 0, 0x0e];
    lab.nft(&["delete element inet trellis-guard pod-ports { \"vp1\" }"]);
    assert!(
        w.to_node(lldp, ip(2), true),
        "LLDP-addressed, bridge table only"
    );
    assert!(
        !w.to_node(w.br_mac, ip(2), false),
        "forged to the node, bridge table only"
    );
    let r = lab.full_sync(&ports);
    assert_eq!(
        (r.elements_added, r.elements_deleted, r.chains_written),
        (1, 0, 0),
        "{r:?}"
    );
    assert!(
        !w.to_node(lldp, ip(2), false),
        "LLDP-addressed after the repair"
    );

    // The unguarded port p3 is not looked at.
    let p2 = Tap::open(&lab.ns("p2"));
    let p3 = Tap::open(&lab.ns("p3"));
    let m = w.marker("from-p3");
    p2.drain();
    let f = eth(
        mac(2),
        [2, 0, 0, 0, 0, 0x98],
        ETH_P_IP,
        &ipv4_udp(ip(1), ip(2), 5000, UDP_PORT, &m),
    );
    p3.send(&f);
    assert!(p2.saw(&m, POSITIVE_WAIT), "unguarded port filtered");

    assert_eq!(bystander(), bystander_before, "another table changed");
}

#[test]
fn guard_adopts_repairs_and_recovers() {
    let lab = Lab::new("repair");
    let ports = vec![port(1, &["10.99.0.0/16", "10.99.1.0/24"]), port(2, &[])];

    // add_port before any full sync creates the table (a CNI ADD on a fresh node).
    let r = lab.add_port(&ports[1]);
    assert_eq!(r.tables_created, 2, "{r:?}");
    assert_eq!(r.elements_added, 4, "{r:?}");
    let r = lab.full_sync(&ports);
    assert!(r.tables_created == 0 && r.chains_written == 0, "{r:?}");
    // p1: pod-ports twice, port-macs, its address and the (merged) 10.99.0.0/16.
    assert_eq!((r.elements_added, r.elements_deleted), (5, 0), "{r:?}");
    assert_written_nothing(&lab.full_sync(&ports), "unchanged");

    // An element deleted by hand comes back.
    lab.nft(&["delete element bridge trellis-guard port-macs { \"vp2\" . 02:00:00:00:00:12 }"]);
    let r = lab.full_sync(&ports);
    assert_eq!(
        (r.elements_added, r.elements_deleted, r.chains_written),
        (1, 0, 0),
        "{r:?}"
    );

    // A foreign element goes; a rule added by hand makes every chain be rewritten.
    lab.nft(&["add element bridge trellis-guard pod-ports { \"vp3\" }"]);
    lab.nft(&["add rule bridge trellis-guard pod-ipv6 accept"]);
    let r = lab.full_sync(&ports);
    assert_eq!((r.elements_added, r.elements_deleted), (0, 1), "{r:?}");
    assert_eq!(
        (r.chains_written, r.chains_deleted, r.sets_added),
        (5, 0, 0),
        "{r:?}"
    );
    assert_written_nothing(&lab.full_sync(&ports), "after repair");

    // A chain of the wrong priority and a stray chain and set: replaced / deleted.
    lab.nft(&[
        "delete chain bridge trellis-guard prerouting; add chain bridge trellis-guard prerouting { type filter hook prerouting priority 10; policy accept; }; add chain bridge trellis-guard stray; add set bridge trellis-guard stray { type ipv4_addr; }",
    ]);
    let r = lab.full_sync(&ports);
    assert_eq!(
        (
            r.chains_written,
            r.chains_deleted,
            r.sets_deleted,
            r.elements_added
        ),
        (5, 2, 1, 0),
        "{r:?}"
    );
    assert_written_nothing(&lab.full_sync(&ports), "after rewriting chains");

    // The inet table deleted by hand comes back, elements and all.
    lab.nft(&["delete table inet trellis-guard"]);
    let r = lab.full_sync(&ports);
    assert_eq!(
        (
            r.tables_created,
            r.chains_written,
            r.elements_added,
            r.elements_deleted
        ),
        (1, 1, 2, 0),
        "{r:?}"
    );
    assert_written_nothing(&lab.full_sync(&ports), "after recreating the inet table");
    let table = lab.table();
    assert!(
        table.contains("type filter hook prerouting priority filter;") && !table.contains("stray"),
        "{table}"
    );

    // The guard's memory is stale (an element was deleted behind its back): the small
    // transaction fails, the guard reads the table and succeeds.
    lab.nft(&["delete element bridge trellis-guard port-macs { \"vp2\" . 02:00:00:00:00:12 }"]);
    let r = lab.remove_port("vp2");
    assert_eq!(r.elements_deleted, 3, "{r:?}");
    assert!(!lab.table().contains("\"vp2\""));
    // Removing it again changes nothing.
    assert_written_nothing(&lab.remove_port("vp2"), "second remove");
    assert_written_nothing(&lab.remove_port("no/such"), "invalid name");

    // A port with another MAC replaces the old element (veth name reused).
    let mut moved = ports[0].clone();
    moved.mac = [2, 0, 0, 0, 0, 0x21];
    let r = lab.add_port(&moved);
    assert_eq!(
        (r.elements_added, r.elements_deleted, r.transactions),
        (1, 1, 1),
        "{r:?}"
    );
    assert!(lab.table().contains("\"vp1\" . 02:00:00:00:00:21"));

    // Invalid ports are refused before anything is written.
    let before = lab.table();
    let mut bad = port(3, &[]);
    bad.ifname = "much-too-long-name".into();
    let e = lab.guard(move |g| g.add_port(&bad)).unwrap_err();
    assert!(e.to_string().contains("not an interface name"), "{e}");
    let mut bad = port(3, &[]);
    bad.mac = [1, 0, 0x5e, 0, 0, 1];
    let all = vec![ports[0].clone(), bad];
    assert!(lab.guard(move |g| g.full_sync(&all)).is_err());
    assert_eq!(lab.table(), before);

    // The last full sync wins, and an empty one leaves the empty skeleton.
    let r = lab.full_sync(&[]);
    assert_eq!(r.elements_deleted, 5, "{r:?}");
    let table = lab.table();
    assert!(
        !table.contains("vp1") && table.contains("jump pod-guard"),
        "{table}"
    );
}
