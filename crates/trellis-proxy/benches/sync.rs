//! Full-sync and per-change cost at scale, in a throwaway network namespace (needs root;
//! the root namespace is never touched: the work runs on a thread that unshares its own).
//!
//! `cargo bench -p trellis-proxy --bench sync [-- SERVICES ENDPOINTS CHANGES]`
//! (default 10000 services x 10 endpoints, 500 changes).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use trellis_proxy::{EndpointModel, PortModel, Protocol, Proxy, ProxyConfig, ServiceModel};

fn service(i: u32, eps: u32) -> ServiceModel {
    let cip = Ipv4Addr::from(0x0a60_0000 + i); // 10.96.x.y
    ServiceModel {
        key: format!("ns{}/svc{i}", i % 50),
        cluster_ip: Some(cip),
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
                ip: Ipv4Addr::from(0x0af4_0000 + i * eps + e), // 10.244.x.y
                local: e == 0,
            })
            .collect(),
    }
}

/// CPU time (user + system) of the calling thread: the cost without the waits a busy
/// machine adds to the wall-clock figures.
fn cpu() -> Duration {
    // SAFETY: rusage is plain data and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000);
    let eps = args.get(1).copied().unwrap_or(10);
    let changes = args.get(2).copied().unwrap_or(500);
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root");
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let mut cfg = ProxyConfig::new(
            "trellis-svc",
            vec!["192.168.93.1".parse().unwrap()],
            vec!["10.244.0.0/16".parse().unwrap()],
        );
        if let Ok(s) = std::env::var("SHARDS") {
            cfg.shards = s.parse().expect("SHARDS");
        }
        let mut services: Vec<ServiceModel> = (0..n).map(|i| service(i, eps)).collect();
        let mut p = Proxy::new(cfg.clone());
        let (t, c) = (Instant::now(), cpu());
        let r = p.full_sync(&services).expect("full sync");
        println!(
            "full sync (empty tables) {n} services x {eps} endpoints: {:?} (cpu {:?}; {} chains, {} rules, {} elements, {} messages)",
            t.elapsed(),
            cpu() - c,
            r.chains_written,
            r.rules_written,
            r.elements_added,
            r.messages
        );
        let (t, c) = (Instant::now(), cpu());
        let r = p.full_sync(&services).expect("full sync");
        println!(
            "full sync again (same Proxy): {:?} (cpu {:?}), changed nothing: {}",
            t.elapsed(),
            cpu() - c,
            r.changed_nothing()
        );
        let mut p = Proxy::new(cfg.clone());
        let (t, c) = (Instant::now(), cpu());
        let r = p.full_sync(&services).expect("full sync");
        println!(
            "full sync after restart (new Proxy, reads the tables): {:?} (cpu {:?}), changed nothing: {}",
            t.elapsed(),
            cpu() - c,
            r.changed_nothing()
        );

        let mut lat = Vec::new();

        for c in 0..changes {
            let i = ((c / 2) * 7919) % n;
            let s = &mut services[i as usize];
            if c % 2 == 0 {
                s.endpoints.pop();
            } else {
                s.endpoints.push(EndpointModel {
                    ip: Ipv4Addr::from(0x0af4_0000 + i * eps + eps - 1),
                    local: false,
                });
            }
            let t = Instant::now();
            let r = p.update(std::slice::from_ref(s), &[]).expect("update");
            lat.push(t.elapsed());

            assert_eq!(r.transactions, 1);
        }
        if !lat.is_empty() {
            let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
            println!(
                "per change (one endpoint added/removed, {changes} changes): mean {:?} p50 {:?} p99 {:?} max {:?}",
                mean,
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99),
                pct(&mut lat, 1.0)
            );

        }
        let t = Instant::now();
        let r = p.full_sync(&services).expect("full sync");
        println!("full sync after the changes: {:?}, changed nothing: {}", t.elapsed(), r.changed_nothing());
    })
    .join()
    .expect("benchmark thread");
}
