//! Store operations per second: the embedded store, and the etcd store next to a plain
//! `etcd-client` doing the same requests on the same 3-member cluster (loopback), in one
//! run. Operations: create (put if absent), get, CAS update, each N times from C
//! concurrent tasks. Target: the etcd store within 2x of the plain client.
//!
//! `cargo bench -p trellis-store --bench store_ops` (TRELLIS_BENCH_N=4000,
//! TRELLIS_BENCH_CONCURRENCY=32).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use etcd_client::{Compare, CompareOp, Txn as ETxn, TxnOp as ETxnOp};
use trellis_store::embedded::EmbeddedStore;
use trellis_store::etcd::EtcdStore;
use trellis_store::Store;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Get,
    Update,
}

const OPS: [Op; 3] = [Op::Create, Op::Get, Op::Update];

/// Run `n` operations over `c` tasks; ops/s.
async fn run<F, Fut>(n: usize, c: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let f = f.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    f(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn bench_store(s: Arc<dyn Store>, prefix: &str, op: Op, n: usize, c: usize) -> f64 {
    let prefix = prefix.to_string();
    run(n, c, move |i| {
        let s = s.clone();
        let key = format!("{prefix}{i}");
        async move {
            match op {
                Op::Create => {
                    s.create(&key, vec![b'x'; 200], None).await.unwrap();
                }
                Op::Get => {
                    s.get(&key).await.unwrap().unwrap();
                }
                Op::Update => {
                    let kv = s.get(&key).await.unwrap().unwrap();
                    s.update(&key, vec![b'y'; 200], kv.mod_revision, None)
                        .await
                        .unwrap();
                }
            }
        }
    })
    .await
}

async fn bench_plain(c0: etcd_client::Client, prefix: &str, op: Op, n: usize, c: usize) -> f64 {
    let prefix = prefix.to_string();
    run(n, c, move |i| {
        let mut cl = c0.clone();
        let key = format!("{prefix}{i}");
        async move {
            match op {
                Op::Create => {
                    let r = cl
                        .txn(
                            ETxn::new()
                                .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                                .and_then([ETxnOp::put(key.as_str(), vec![b'x'; 200], None)]),
                        )
                        .await
                        .unwrap();
                    assert!(r.succeeded());
                }
                Op::Get => {
                    let r = cl.get(key.as_str(), None).await.unwrap();
                    assert_eq!(r.kvs().len(), 1);
                }
                Op::Update => {
                    let r = cl.get(key.as_str(), None).await.unwrap();
                    let m = r.kvs()[0].mod_revision();
                    let r = cl
                        .txn(
                            ETxn::new()
                                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, m)])
                                .and_then([ETxnOp::put(key.as_str(), vec![b'y'; 200], None)]),
                        )
                        .await
                        .unwrap();
                    assert!(r.succeeded());
                }
            }
        }
    })
    .await
}

fn main() {
    let n = env_usize("TRELLIS_BENCH_N", 4000);
    let c = env_usize("TRELLIS_BENCH_CONCURRENCY", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let emb: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("bench.redb")).unwrap());
        let cluster = common::EtcdCluster::start(3).await;
        let eps = cluster.endpoints();
        let ets: Arc<dyn Store> = Arc::new(EtcdStore::connect(&eps).await.unwrap());
        let plain = etcd_client::Client::connect(&eps, None).await.unwrap();
        println!(
            "store operations per second, N={n} per op, {c} concurrent tasks, 200-byte values"
        );
        println!(
            "{:<8} {:>12} {:>12} {:>12} {:>14}",
            "op", "embedded", "etcd store", "plain etcd", "store/plain"
        );
        let mut worst: f64 = f64::INFINITY;
        for op in OPS {
            let e = bench_store(emb.clone(), "/bench/emb/", op, n, c).await;
            // Interleave the two etcd clients' runs on fresh key ranges.
            let t = bench_store(ets.clone(), "/bench/trl/", op, n, c).await;
            let p = bench_plain(plain.clone(), "/bench/plain/", op, n, c).await;
            worst = worst.min(t / p);
            println!(
                "{:<8} {:>12.0} {:>12.0} {:>12.0} {:>14.2}",
                format!("{op:?}").to_lowercase(),
                e,
                t,
                p,
                t / p
            );
        }
        println!(
            "target: etcd store within 2x of the plain client (ratio >= 0.5): worst {:.2} {}",
            worst,
            if worst >= 0.5 { "PASS" } else { "MISS" }
        );
        drop(cluster);
    });
}
