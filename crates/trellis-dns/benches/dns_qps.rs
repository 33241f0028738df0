//! Queries per second of the cluster DNS server against dnsmasq serving the same 1000
//! service A records, both measured by dnsperf with the same query file, on loopback.
//!
//! Run: `cargo bench -p trellis-dns --bench dns_qps`
//! Needs `dnsperf` and `dnsmasq` (Debian: `apt-get install -y dnsperf dnsmasq-base`); it
//! fails when either is missing. Knobs (environment): `DNS_BENCH_SECS` (default 5) per
//! server, `DNS_BENCH_CLIENTS` (dnsperf `-c`, default 4), `DNS_BENCH_OUTSTANDING`
//! (dnsperf `-q`, default 100). The server runs on its own thread, as in the agent.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use trellis_dns::{DnsServer, Records, ServiceRecord};

const SERVICES: u32 = 1000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cluster_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8)
}

fn svc_name(n: u32) -> String {
    format!("svc-{n}.default.svc.cluster.local")
}

/// The program's path: found in `PATH` or the sbin directories (dnsmasq lives there).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port free for both UDP and TCP on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The A addresses for `name` from `server`, or why not (one UDP query, 1 s).
fn lookup_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii(name).map_err(|e| e.to_string())?,
        RecordType::A,
    ));
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    sock.send_to(&q.to_vec().map_err(|e| e.to_string())?, server)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    let r = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    if r.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{}", r.metadata.response_code));
    }
    Ok(r.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

/// Every service answers its cluster IP (polls up to 5 s for the server to come up).
fn check_answers(server: SocketAddr, who: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match lookup_a(server, &svc_name(1)) {
            Ok(_) => break,
            Err(e) if start.elapsed() > Duration::from_secs(5) => {
                return Err(format!("{who} does not answer on {server}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    for n in [1, 2, SERVICES / 2, SERVICES] {
        let got = lookup_a(server, &svc_name(n))?;
        if got != [cluster_ip(n)] {
            return Err(format!(
                "{who}: {} answers {got:?}, not {}",
                svc_name(n),
                cluster_ip(n)
            ));
        }
    }
    Ok(())
}

/// The figures of one dnsperf run.
#[derive(Debug)]
struct Run {
    qps: f64,
    completed: u64,
    lost: u64,
    avg_latency_ms: f64,
    rcodes: String,
}

fn dnsperf(dnsperf: &Path, port: u16, queries: &Path, secs: u64) -> Result<Run, String> {
    let clients = env_num("DNS_BENCH_CLIENTS", 4);
    let outstanding = env_num("DNS_BENCH_OUTSTANDING", 100);
    let out = Command::new(dnsperf)
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(["-l", &secs.to_string(), "-c", &clients.to_string()])
        .args(["-q", &outstanding.to_string(), "-T", "1", "-t", "2"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", dnsperf.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "dnsperf failed ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |label: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
    };
    let first_num = |label: &str| -> Result<f64, String> {
        field(label)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {label:?} in dnsperf's output:\n{text}"))
    };
    Ok(Run {
        qps: first_num("Queries per second:")?,
        completed: first_num("Queries completed:")? as u64,
        lost: first_num("Queries lost:")? as u64,
        avg_latency_ms: first_num("Average Latency (s):")? * 1000.0,
        rcodes: field("Response codes:").unwrap_or("?").to_string(),
    })
}

/// A dnsmasq that is killed when dropped.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dns_qps: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    println!("dns_qps: run with `cargo bench -p trellis-dns --bench dns_qps`");
    println!("  (env: DNS_BENCH_SECS, DNS_BENCH_CLIENTS, DNS_BENCH_OUTSTANDING)");
    let missing = "; install it with `apt-get install -y dnsperf dnsmasq-base`";
    let dnsperf_bin = find_tool("dnsperf").ok_or(format!("dnsperf not found{missing}"))?;
    let dnsmasq_bin = find_tool("dnsmasq").ok_or(format!("dnsmasq not found{missing}"))?;
    let secs = env_num("DNS_BENCH_SECS", 5).max(1);

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The same query file for both: one A query per service, in order.
    let queries = dir.path().join("queries.txt");
    let mut text = String::new();
    for n in 1..=SERVICES {
        let _ = writeln!(text, "{} A", svc_name(n));
    }
    std::fs::write(&queries, text).map_err(|e| e.to_string())?;

    // Ours.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut records = Records::new("cluster.local");
    for n in 1..=SERVICES {
        records.add_service(
            "default",
            &format!("svc-{n}"),
            ServiceRecord::ClusterIp {
                ip: cluster_ip(n),
                ports: vec![],
            },
        );
    }
    let server = rt
        .block_on(DnsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            "cluster.local",
            vec![],
        ))
        .map_err(|e| e.to_string())?;
    server.set_records(records);
    let ours_addr = server.local_addr();
    check_answers(ours_addr, "trellis-dns")?;
    println!("trellis-dns on {ours_addr}, {SERVICES} services, dnsperf {secs} s ...");
    let ours = dnsperf(&dnsperf_bin, ours_addr.port(), &queries, secs)?;
    rt.block_on(server.shutdown());

    // dnsmasq with the same records.
    let conf = dir.path().join("dnsmasq.conf");
    let mut text = String::new();
    for n in 1..=SERVICES {
        let _ = writeln!(text, "host-record={},{}", svc_name(n), cluster_ip(n));
    }
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("dnsmasq.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&dnsmasq_bin)
        .arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", conf.display()))
        .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
        .args(["--listen-address=127.0.0.1", "--local=/cluster.local/"])
        .args(["--pid-file", "--log-facility=-"])
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", dnsmasq_bin.display()))?;
    let dnsmasq = Dnsmasq(child);
    let dnsmasq_addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    if let Err(e) = check_answers(dnsmasq_addr, "dnsmasq") {
        let log = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
        return Err(format!("{e}\ndnsmasq's log:\n{log}"));
    }
    println!("dnsmasq on {dnsmasq_addr}, same records and queries, dnsperf {secs} s ...");
    let theirs = dnsperf(&dnsperf_bin, port, &queries, secs)?;
    drop(dnsmasq);

    for (who, r) in [("trellis-dns", &ours), ("dnsmasq", &theirs)] {
        println!(
            "{who:12} {:>10.0} queries/s  completed {} lost {}  avg latency {:.3} ms  rcodes {}",
            r.qps, r.completed, r.lost, r.avg_latency_ms, r.rcodes
        );
        if r.completed == 0 || r.lost * 100 > r.completed || !r.rcodes.starts_with("NOERROR") {
            return Err(format!("{who}: the run is not clean: {r:?}"));
        }
    }
    println!(
        "ratio trellis-dns / dnsmasq: {:.2}",
        ours.qps / theirs.qps.max(f64::MIN_POSITIVE)
    );
    Ok(())
}
