//! Data path: does the number of programmed services slow down new connections to a
//! cluster IP? (needs root; the root namespace is never touched).
//!
//! `cargo bench -p trellis-proxy --bench datapath`
//! (`TRELLIS_BENCH_ROUNDS=9`, `TRELLIS_BENCH_SECS=2` per measurement, `SHARDS` like the
//! `sync` bench; about 150 s). Single rounds scatter by ±20% on a shared 2-core VM; the
//! median of 9 per-round ratios moved by about ±5% between runs.
//!
//! Two labs side by side, one per case, in named network namespaces
//! `trdp-<pid>-<case>-<role>` (deleted on success, failure, panic and SIGINT/SIGTERM;
//! those of earlier runs whose process is gone are swept at start). Each lab: a "node"
//! namespace running the proxy and forwarding, a "client" pod (10.244.1.2) and a
//! "server" pod (10.244.2.2), each on a routed veth to the node (10.244.1.1 /
//! 10.244.2.1), so both directions of every connection cross the node's conntrack and
//! nftables. The server is a `TcpListener` accept loop on a thread inside the server
//! namespace (accept, close); the clients are threads inside the client namespace.
//!
//! Case A: the node's proxy programs 1 service, 10.96.0.1:80 -> 10.244.2.2:8080. Case
//! B: 10,000 services x 10 endpoints (fake endpoint addresses), the same target service
//! among them with only the real server as endpoint. Both are programmed once; then, in
//! every round, each measurement is taken on A and on B back to back (the order flips
//! every time), so machine noise hits both: sequential connect + close loops from 1 and
//! from 4 client threads, to the cluster IP and, as the reference, straight to the
//! server's pod IP (the same hops through the node, no DNAT). Latency is the time of
//! the blocking `connect()` (SYN -> SYN-ACK, through the DNAT for the cluster IP). The
//! ratios are the medians of the per-round ratios.
//!
//! Client sockets close with `SO_LINGER` 0 (a reset, no TIME_WAIT); the client
//! namespaces get a wide ephemeral port range and `tcp_tw_reuse`; the node namespaces a
//! 1 s conntrack timeout for closed TCP flows (the conntrack entry limit is global and
//! read-only in a namespace: the peak count is printed next to it).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trellis_lab::scratch::{in_ns, run, sh, sweep_stale};
use trellis_net::Netns;
use trellis_proxy::{EndpointModel, PortModel, Protocol, Proxy, ProxyConfig, ServiceModel};

const PREFIX: &str = "trdp-";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const SERVICE_PORT: u16 = 80;
const SERVER_PORT: u16 = 8080;
/// Upper bound of connections per client thread and measurement (the time bound is
/// `TRELLIS_BENCH_SECS`).
const MAX_PER_THREAD: usize = 200_000;
/// `SO_SNDTIMEO` of a client socket: bounds a blocking `connect()`; one lost SYN (resent
/// after 1 s) still connects, and shows in the latency.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// SIGINT / SIGTERM / SIGHUP only set a flag: the loops stop, the lab is dropped.
fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let sa = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &sa) }.expect("sigaction");
    }
}

/// The namespaces, the server and the proxy of one case; everything is deleted on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    accepted: Arc<AtomicU64>,
    proxy: Option<Arc<Mutex<Proxy>>>,
}

impl Lab {
    /// The lab of one case: namespaces `trdp-<pid>-<case>-<role>`.
    fn new(case: &str) -> Lab {
        sweep_stale(PREFIX);
        let mut lab = Lab {
            prefix: format!("{PREFIX}{}-{case}-", std::process::id()),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            accepted: Arc::new(AtomicU64::new(0)),
            proxy: None,
        };
        let node = lab.add("node");
        let client = lab.add("client");
        let server = lab.add("server");
        let ipn = |ns: &str, args: &[&str]| {
            let mut v = vec!["ip", "-n", ns];
            v.extend_from_slice(args);
            sh(&v);
        };
        lab.sysctl("node", "net.ipv4.ip_forward=1");
        for (pod, dev, node_addr, pod_addr) in [
            (&client, "vcl", "10.244.1.1", CLIENT_IP),
            (&server, "vsv", "10.244.2.1", SERVER_IP),
        ] {
            ipn(
                &node,
                &[
                    "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", pod,
                ],
            );
            ipn(
                &node,
                &["addr", "add", &format!("{node_addr}/24"), "dev", dev],
            );
            ipn(&node, &["link", "set", dev, "up"]);
            ipn(
                pod,
                &["addr", "add", &format!("{pod_addr}/24"), "dev", "eth0"],
            );
            ipn(pod, &["link", "set", "eth0", "up"]);
            ipn(pod, &["route", "add", "default", "via", node_addr]);
        }
        lab.sysctl("client", "net.ipv4.ip_local_port_range=1024 65535");
        lab.sysctl("client", "net.ipv4.tcp_tw_reuse=1");
        lab.serve();
        lab.proxy = Some(Arc::new(Mutex::new(Proxy::new(config()))));
        lab
    }

    fn add(&mut self, role: &str) -> String {
        let ns = self.ns(role);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn sysctl(&self, role: &str, setting: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns(role),
            "sysctl",
            "-qw",
            setting,
        ]);
    }

    fn read_sysctl(&self, role: &str, key: &str) -> Option<u64> {
        let out = run(&["ip", "netns", "exec", &self.ns(role), "sysctl", "-n", key]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// The server: accept and close, on a thread inside the server namespace.
    fn serve(&mut self) {
        let path = format!("/run/netns/{}", self.ns("server"));
        let (stop, accepted) = (self.stop.clone(), self.accepted.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            let netns = Netns::open(&path).expect("open namespace");
            let _guard = netns.enter().expect("enter namespace");
            let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT))
                .expect("bind 8080");
            // SAFETY: listen on our own listening socket only raises its backlog.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            l.set_nonblocking(true).unwrap();
            let _ = ready_tx.send(());
            let mut pfd = libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        drop(s);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut pfd, 1, 100) };
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server listening");
    }

    /// Full sync of the proxy in the node namespace: (wall time, summary).
    fn sync(&self, services: Vec<ServiceModel>) -> (Duration, String) {
        let p = self.proxy.clone().expect("proxy");
        in_ns(&self.ns("node"), move || {
            let t = Instant::now();
            let r = p
                .lock()
                .unwrap()
                .full_sync(&services)
                .unwrap_or_else(|e| panic!("full sync: {e}"));
            (
                t.elapsed(),
                format!(
                    "{} chains written, {} deleted, {} elements added, {} deleted",
                    r.chains_written, r.chains_deleted, r.elements_added, r.elements_deleted
                ),
            )
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The proxy's netlink socket keeps the node namespace alive: close it first.
        self.proxy = None;
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

fn config() -> ProxyConfig {
    let mut cfg = ProxyConfig::new(
        "trdp-svc",
        vec![Ipv4Addr::new(10, 244, 1, 1)],
        vec!["10.244.0.0/16".parse().unwrap()],
    );
    if let Ok(s) = std::env::var("SHARDS") {
        cfg.shards = s.parse().expect("SHARDS");
    }
    cfg
}

/// The measured service: 10.96.0.1:80 -> the server pod's 8080.
fn target() -> ServiceModel {
    ServiceModel {
        key: "bench/target".into(),
        cluster_ip: Some(CLUSTER_IP),
        external_ips: vec![],
        ports: vec![PortModel {
            name: "http".into(),
            port: SERVICE_PORT,
            target_port: SERVER_PORT,
            protocol: Protocol::Tcp,
            node_port: None,
        }],
        affinity_timeout: None,
        local_only: false,
        endpoints: vec![EndpointModel {
            ip: SERVER_IP,
            local: true,
        }],
    }
}

/// Filler service `i` (1..): cluster IP 10.96.0.1 + i, `eps` fake endpoints in
/// 10.248.0.0/14 (nothing listens there), a node port on every 10th, as in `sync`.
fn filler(i: u32, eps: u32) -> ServiceModel {
    ServiceModel {
        key: format!("ns{}/svc{i}", i % 50),
        cluster_ip: Some(Ipv4Addr::from(u32::from(CLUSTER_IP) + i)),
        external_ips: vec![],
        ports: vec![PortModel {
            name: "http".into(),
            port: 80,
            target_port: 8080,
            protocol: Protocol::Tcp,
            node_port: if i.is_multiple_of(10) {
                Some(u16::try_from(30000 + i / 10).unwrap())
            } else {
                None
            },
        }],
        affinity_timeout: None,
        local_only: false,
        endpoints: (0..eps)
            .map(|e| EndpointModel {
                ip: Ipv4Addr::from(0x0af8_0000 + i * eps + e),
                local: e == 0,
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    /// One service.
    A,
    /// 10,000 services x 10 endpoints.
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// Through the cluster IP (DNAT).
    ClusterIp,
    /// Straight to the server's pod IP.
    Direct,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::ClusterIp => "ClusterIP",
            Path::Direct => "pod IP (ref)",
        }
    }

    fn addr(self) -> SocketAddrV4 {
        match self {
            Path::ClusterIp => SocketAddrV4::new(CLUSTER_IP, SERVICE_PORT),
            Path::Direct => SocketAddrV4::new(SERVER_IP, SERVER_PORT),
        }
    }
}

/// One connect + close with a reset (no TIME_WAIT): the outcome (errno on failure) and
/// the time of the `connect()` call alone.
fn connect_once(sa: &libc::sockaddr_in) -> (Result<(), i32>, Duration) {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return (Err(errno()), Duration::ZERO);
    }
    // SAFETY: `fd` is a new socket that nothing else owns; it is closed on drop.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let tv = libc::timeval {
        tv_sec: CONNECT_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: the option values are the types the kernel expects, with their sizes.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let t = Instant::now();
    // SAFETY: `sa` is a valid sockaddr_in of the given size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let dt = t.elapsed();
    let res = if r == 0 { Ok(()) } else { Err(errno()) };
    drop(fd);
    (res, dt)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all zeroes is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

/// One measurement: `threads` client threads, each a sequential connect + close loop
/// for `dur` (at most `max` connections each).
#[derive(Debug, Clone)]
struct Sample {
    rate: f64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    p50: Duration,
    p99: Duration,
}

fn measure(lab: &Lab, path: Path, threads: usize, dur: Duration, max: usize) -> Sample {
    let ns_path = format!("/run/netns/{}", lab.ns("client"));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (ns_path, barrier) = (ns_path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let netns = Netns::open(&ns_path).expect("open namespace");
                let _guard = netns.enter().expect("enter namespace");
                let sa = sockaddr(path.addr());
                let mut lat = Vec::with_capacity(max.min(100_000));
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                barrier.wait();
                let start = Instant::now();
                while lat.len() < max && start.elapsed() < dur && !interrupted() {
                    let (r, dt) = connect_once(&sa);
                    lat.push(dt);
                    match r {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                std::io::Error::from_raw_os_error(e).to_string()
                            });
                        }
                    }
                }
                (start.elapsed(), ok, errors, first_error, lat)
            })
        })
        .collect();
    let (mut wall, mut ok, mut errors, mut first_error, mut lat) =
        (Duration::ZERO, 0, 0, None, Vec::new());
    for h in handles {
        let (w, o, e, f, l) = h.join().expect("client thread");
        wall = wall.max(w);
        ok += o;
        errors += e;
        first_error = first_error.or(f);
        lat.extend(l);
    }
    lat.sort_unstable();
    Sample {
        rate: ok as f64 / wall.as_secs_f64().max(1e-9),
        ok,
        errors,
        first_error,
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= 0.95 {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Pause after a full sync before measuring.
const SETTLE: Duration = Duration::from_secs(2);
const SERVICES_B: u32 = 10_000;
const ENDPOINTS_B: u32 = 10;
const MEASUREMENTS: [(Path, usize); 4] = [
    (Path::ClusterIp, 1),
    (Path::Direct, 1),
    (Path::ClusterIp, 4),
    (Path::Direct, 4),
];

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the benchmark creates network namespaces: run it as root"
    );
    install_signal_handlers();
    let rounds = env_u64("TRELLIS_BENCH_ROUNDS", 9).clamp(1, 20) as usize;
    let dur = Duration::from_secs(env_u64("TRELLIS_BENCH_SECS", 2).clamp(1, 60));

    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("load average at start: {}", load());
    // Two labs side by side, A and B: switching between the cases costs nothing, so the
    // measurements of A and B can alternate closely.
    let lab_a = Lab::new("a");
    let lab_b = Lab::new("b");
    let services_b: Vec<ServiceModel> = std::iter::once(target())
        .chain((1..SERVICES_B).map(|i| filler(i, ENDPOINTS_B)))
        .collect();
    for (case, lab, svcs) in [
        (Case::A, &lab_a, vec![target()]),
        (Case::B, &lab_b, services_b),
    ] {
        let (t, what) = lab.sync(svcs);
        println!("case {case:?}: full sync {t:.2?} ({what})");
        // The conntrack sysctls of the node namespace exist once its tables use
        // conntrack.
        lab.sysctl("node", "net.netfilter.nf_conntrack_tcp_timeout_close=1");
    }
    // Let the deferred work of the syncs (set resizes, RCU frees) finish: the steady
    // state is measured, not the aftermath of a sync.
    std::thread::sleep(SETTLE);
    // Warm up and check every path works (and the DNAT reaches the server).
    for (case, lab) in [(Case::A, &lab_a), (Case::B, &lab_b)] {
        for path in [Path::ClusterIp, Path::Direct] {
            let before = lab.accepted.load(Ordering::Relaxed);
            let s = measure(lab, path, 1, Duration::from_secs(2), 500);
            if interrupted() {
                eprintln!("interrupted: cleaning up");
                return;
            }
            assert!(
                s.ok > 0 && s.errors == 0,
                "case {case:?}: {} does not work: {s:?}",
                path.label()
            );
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                lab.accepted.load(Ordering::Relaxed) > before,
                "case {case:?}: the server saw none of the warm-up connections"
            );
        }
    }

    let mut results: BTreeMap<(Case, Path, usize), Vec<Sample>> = BTreeMap::new();
    let mut ct_peak = 0u64;
    println!(
        "datapath: {rounds} rounds, {}s per measurement, case A = 1 service, case B = {SERVICES_B} services x {ENDPOINTS_B} endpoints; {} shards",
        dur.as_secs(),
        config().shards
    );
    println!(
        "{:>5} {:>4} {:<13} {:>3} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "round", "case", "path", "thr", "conn/s", "p50 us", "p99 us", "errors", "conntrack"
    );
    'rounds: for round in 0..rounds {
        for (m, (path, threads)) in MEASUREMENTS.into_iter().enumerate() {
            let order = if (round + m) % 2 == 0 {
                [Case::A, Case::B]
            } else {
                [Case::B, Case::A]
            };
            for case in order {
                if interrupted() {
                    break 'rounds;
                }
                let lab = match case {
                    Case::A => &lab_a,
                    Case::B => &lab_b,
                };
                let s = measure(lab, path, threads, dur, MAX_PER_THREAD);
                let ct = lab
                    .read_sysctl("node", "net.netfilter.nf_conntrack_count")
                    .unwrap_or(0);
                ct_peak = ct_peak.max(ct);
                println!(
                    "{:>5} {:>4} {:<13} {:>3} {:>9.0} {:>9.1} {:>9.1} {:>7} {:>9}",
                    round + 1,
                    format!("{case:?}"),
                    path.label(),
                    threads,
                    s.rate,
                    us(s.p50),
                    us(s.p99),
                    s.errors,
                    ct
                );
                if let Some(e) = &s.first_error {
                    eprintln!("  first error: {e} ({} ok)", s.ok);
                }
                results.entry((case, path, threads)).or_default().push(s);
            }
        }
    }
    println!("load average at end: {}", load());
    if interrupted() {
        eprintln!("interrupted: cleaning up");
        return;
    }
    let ct_max = lab_b
        .read_sysctl("node", "net.netfilter.nf_conntrack_max")
        .unwrap_or(0);
    println!(
        "node conntrack: peak {ct_peak} entries after a measurement (limit {ct_max}; closed TCP flows expire after 1 s)"
    );

    let get = |c: Case, p: Path, t: usize| results.get(&(c, p, t)).cloned().unwrap_or_default();
    println!();
    println!("Median over {rounds} rounds (A = 1 service, B = {SERVICES_B} services x {ENDPOINTS_B} endpoints):");
    println!(
        "| path | threads | conn/s A | conn/s B | B / A | p50 us A / B | p99 us A / B | errors A / B |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (path, threads) in MEASUREMENTS {
        let (a, b) = (get(Case::A, path, threads), get(Case::B, path, threads));
        let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let ratio = median(a.iter().zip(&b).map(|(a, b)| b.rate / a.rate).collect());
        println!(
            "| {} | {threads} | {:.0} | {:.0} | {ratio:.3} | {:.1} / {:.1} | {:.1} / {:.1} | {} / {} |",
            path.label(),
            med(&a, |s| s.rate),
            med(&b, |s| s.rate),
            med(&a, |s| us(s.p50)),
            med(&b, |s| us(s.p50)),
            med(&a, |s| us(s.p99)),
            med(&b, |s| us(s.p99)),
            a.iter().map(|s| s.errors).sum::<u64>(),
            b.iter().map(|s| s.errors).sum::<u64>(),
        );
    }

    // Per-round ratios (each round measured A and B back to back), then their median.
    let ratios = |threads: usize, f: fn(&Sample, &Sample) -> f64| -> (f64, Vec<f64>) {
        let (a, b) = (
            get(Case::A, Path::ClusterIp, threads),
            get(Case::B, Path::ClusterIp, threads),
        );
        let v: Vec<f64> = a.iter().zip(&b).map(|(a, b)| f(a, b)).collect();
        (median(v.clone()), v)
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    for (label, threads, f) in [
        (
            "ClusterIP conn/s with 10,000 services / with 1 service, 1 thread ",
            1,
            (|a, b| b.rate / a.rate) as fn(&Sample, &Sample) -> f64,
        ),
        (
            "ClusterIP conn/s with 10,000 services / with 1 service, 4 threads",
            4,
            |a, b| b.rate / a.rate,
        ),
        (
            "ClusterIP p99 latency 1 / 10,000, 1 thread                      ",
            1,
            |a, b| a.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9),
        ),
        (
            "ClusterIP p99 latency 1 / 10,000, 4 threads                     ",
            4,
            |a, b| a.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9),
        ),
    ] {
        let (m, v) = ratios(threads, f);
        println!(
            "{label}: {m:.3} (rounds: {})  target >= 0.95: {}",
            fmt(&v),
            verdict(m)
        );
    }
    // The proxy's own overhead: the cluster IP against the pod IP, per case.
    for case in [Case::A, Case::B] {
        let (c, d) = (get(case, Path::ClusterIp, 1), get(case, Path::Direct, 1));
        let rate = median(c.iter().zip(&d).map(|(c, d)| c.rate / d.rate).collect());
        let p50 = median(
            c.iter()
                .zip(&d)
                .map(|(c, d)| us(c.p50) - us(d.p50))
                .collect(),
        );
        println!(
            "proxy overhead, case {case:?}, 1 thread: ClusterIP / pod IP conn/s {rate:.3}, p50 {p50:+.1} us"
        );
    }
}
