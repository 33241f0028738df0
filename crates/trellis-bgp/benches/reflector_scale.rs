//! One route reflector (our speaker, in a process of its own) and many clients: cold
//! start to a full table on every client.
//!
//! Run as root: `cargo bench -p trellis-bgp --bench reflector_scale`
//! (`TRELLIS_BENCH_CLIENTS`, default 1000; `TRELLIS_BENCH_PREFIXES` per client, default
//! 10: 10,000 prefixes in all).
//!
//! One lab namespace holds every address on its loopback: the reflector's and one per
//! client. The reflector is this program run again (`TRELLIS_BENCH_ROLE=reflector`)
//! inside the namespace: `trellis_bgp::speaker::Speaker` with a cluster ID and every
//! client as a reflector client, hold time 90 s. Once it listens, the load generator (a
//! multi-threaded runtime in this process, in the same namespace) opens all client
//! sessions at once with the crate's own session code; each announces its prefixes and
//! counts what it learns. The sample per client: from the moment the clients start to
//! the moment it holds every other client's prefixes. Prints p50/p99/max, the
//! reflector's peak RSS and CPU time, and the target p99 <= 10 s.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use trellis_bgp::export::{self, Class, Eligible, Exports, LocalRoute, Me};
use trellis_bgp::fsm::Local;
use trellis_bgp::session::{run_once, Outbox, PeerConfig, RouteEvent, SessionError};
use trellis_bgp::speaker::{Peer, Speaker, SpeakerConfig};
use trellis_lab::Lab;

const ASN: u32 = 64512;
const TIMEOUT: Duration = Duration::from_secs(120);

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(d)
}

fn reflector_addr() -> Ipv4Addr {
    // The highest address: the clients connect (the lower address connects).
    Ipv4Addr::new(10, 200, 255, 254)
}

fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn prefix(i: usize, k: usize, per: usize) -> Ipv4Net {
    let n = i * per + k;
    Ipv4Net::new(
        Ipv4Addr::new(
            10,
            (64 + n / 65536) as u8,
            (n / 256 % 256) as u8,
            (n % 256) as u8,
        ),
        32,
    )
    .expect("prefix")
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// The reflector process: serve until stdin closes.
fn reflector(clients: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = Speaker::start(SpeakerConfig {
            asn: ASN,
            address: reflector_addr(),
            port: 179,
            hold_time: 90,
            cluster_id: Some(Ipv4Addr::new(244, 0, 0, 1)),
            defer: Duration::ZERO,
        })
        .await
        .expect("reflector listens");
        let peers: Vec<Peer> = (0..clients)
            .map(|i| Peer {
                client: true,
                hold_time: Some(90),
                ..Peer::new(client_addr(i), ASN)
            })
            .collect();
        s.set_peers(&peers);
        println!("ready");
        std::io::stdout().flush().ok();
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await
        .ok();
        drop(s);
    });
}

/// (peak RSS in KiB, CPU seconds) of process `pid`.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 (1-based) of stat, 12 and 13 after ") S".
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (hwm, ticks as f64 / hz)
}

fn main() {
    let clients = env_usize("TRELLIS_BENCH_CLIENTS", 1000);
    let per = env_usize("TRELLIS_BENCH_PREFIXES", 10);
    if std::env::var("TRELLIS_BENCH_ROLE").as_deref() == Ok("reflector") {
        return reflector(clients);
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    assert!(clients <= 250 * 250, "at most 62,500 clients");
    let lab = Lab::new(1).expect("lab");
    let ns = lab.state.nodes[0].netns.clone();
    // Every address on the namespace's loopback, in one `ip -batch`.
    let mut batch = format!("addr add {}/32 dev lo\n", reflector_addr());
    for i in 0..clients {
        batch.push_str(&format!("addr add {}/32 dev lo\n", client_addr(i)));
    }
    let mut ipb = Command::new("ip")
        .args(["-n", &ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    ipb.stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("batch");
    assert!(ipb.wait().expect("ip").success(), "adding the addresses");
    // The reflector, in the namespace.
    let exe = std::env::current_exe().expect("own path");
    let mut refl = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .env("TRELLIS_BENCH_ROLE", "reflector")
        .env("TRELLIS_BENCH_CLIENTS", clients.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("reflector process");
    let pid = refl.id();
    let mut out = std::io::BufReader::new(refl.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reflector output");
    assert_eq!(line.trim(), "ready", "the reflector did not start");
    // `ip netns exec` execs the program: the pid is the reflector's.
    let (rss_idle, cpu_idle) = usage(pid);

    let h = trellis_lab::spawn_in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(load(clients, per)))
    })
    .expect("load generator thread");
    let times = h.join().expect("load generator").expect("namespace");
    let (rss, cpu) = usage(pid);
    drop(refl.stdin.take());
    let _ = refl.wait();

    let done: Vec<Duration> = times.iter().flatten().copied().collect();
    let missing = times.iter().filter(|t| t.is_none()).count();
    println!(
        "\nroute reflector scale: {clients} client sessions, {} prefixes ({per} per client), cold start",
        clients * per
    );
    println!("time until a client holds every other client's prefix:");
    if done.is_empty() {
        println!("  no client got its full table within {TIMEOUT:?}");
    } else {
        println!(
            "  p50 {:.2} s   p99 {:.2} s   max {:.2} s",
            pct(&done, 0.5).as_secs_f64(),
            pct(&done, 0.99).as_secs_f64(),
            pct(&done, 1.0).as_secs_f64()
        );
    }
    if missing > 0 {
        println!("  {missing} clients without a full table after {TIMEOUT:?}");
    }
    println!(
        "reflector: peak RSS {:.1} MiB (idle, {} peers configured: {:.1} MiB), CPU {:.2} s during the run",
        rss as f64 / 1024.0,
        clients,
        rss_idle as f64 / 1024.0,
        cpu - cpu_idle
    );
    let pass = missing == 0 && pct(&done, 0.99) <= Duration::from_secs(10);
    println!("target p99 <= 10 s: {}", if pass { "PASS" } else { "FAIL" });
}

/// Every client's session at once; per client, when it had the full table.
async fn load(clients: usize, per: usize) -> Vec<Option<Duration>> {
    let start = Instant::now();
    let want = (clients - 1) * per;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Duration)>();
    let mut keep = Vec::new();
    for i in 0..clients {
        let me = client_addr(i);
        let cfg = PeerConfig {
            local: Local {
                asn: ASN,
                router_id: me,
                peer_asn: ASN,
                hold_time: 90,
            },
            peer: SocketAddrV4::new(reflector_addr(), 179),
            local_address: me,
            password: None,
            restart_time: trellis_bgp::session::RESTART_TIME,
        };
        let mine: BTreeSet<Ipv4Net> = (0..per).map(|k| prefix(i, k, per)).collect();
        let own = Me {
            asn: ASN,
            address: me,
            cluster_id: None,
        };
        let table = Exports::default()
            .next(&mine, |_| {
                export::route_for(&own, Class::Ibgp, Some(&LocalRoute::default()), None)
            })
            .unwrap_or_default();
        let (tx, rx) = watch::channel(table);
        keep.push(tx);
        let mut outbox = Outbox {
            sent: Default::default(),
            table: rx,
            peer: Eligible {
                address: reflector_addr(),
                ebgp_asn: None,
                filter: Default::default(),
            },
        };
        let done = done_tx.clone();
        tokio::spawn(async move {
            let (ev_tx, mut ev_rx) = mpsc::channel::<RouteEvent>(1024);
            let counter = tokio::spawn(async move {
                let mut have: HashSet<Ipv4Net> = HashSet::new();
                let mut reported = false;
                while let Some(e) = ev_rx.recv().await {
                    match e {
                        RouteEvent::Learned { prefix, .. } => {
                            have.insert(prefix);
                        }
                        RouteEvent::Withdrawn(p, _) => {
                            have.remove(&p);
                        }
                        _ => {}
                    }
                    if !reported && have.len() >= want {
                        reported = true;
                        let _ = done.send((i, start.elapsed()));
                    }
                }
            });
            let _counter = counter;
            loop {
                match run_once(&cfg, &mut outbox, &ev_tx).await {
                    SessionError::Io { .. } => tokio::time::sleep(Duration::from_millis(200)).await,
                    e => {
                        eprintln!("client {i}: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
    drop(done_tx);
    let mut times: BTreeMap<usize, Duration> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while times.len() < clients {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((i, t))) => {
                times.insert(i, t);
            }
            _ => break,
        }
    }
    drop(keep);
    (0..clients).map(|i| times.get(&i).copied()).collect()
}
