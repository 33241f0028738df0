//! Watch fan-out of one `trellis server` (embedded store, TLS): N simulated agents each
//! hold a watch on Nodes and send a heartbeat every 5 s; a writer changes one Node W
//! times; every watcher timestamps the event. Prints p50/p99 of write → delivery over
//! all deliveries, p50/p99 of write → delivered-on-every-watch, and the server's RSS and
//! CPU. Targets: p99 ≤ 100 ms, RSS ≤ 200 MB.
//!
//! `cargo bench -p trellis --bench server_fanout` (TRELLIS_BENCH_AGENTS=1000,
//! TRELLIS_BENCH_WRITES=50).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use trellis_client::{Client, Config};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

fn proc_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn start_server(bin: &Path, dir: &Path) -> (Server, u16) {
    let out = Command::new(bin)
        .args(["server", "init", "--dir"])
        .arg(dir)
        .output()
        .expect("trellis server init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(bin)
        .args(["server", "run", "--dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("TRELLIS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn trellis server");
    (Server { child }, port)
}

fn main() {
    let agents = env_usize("TRELLIS_BENCH_AGENTS", 1000);
    let writes = env_usize("TRELLIS_BENCH_WRITES", 50);
    raise_nofile();
    let bin = Path::new(env!("CARGO_BIN_EXE_trellis"));
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start_server(bin, dir.path());
    let pid = server.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = Config {
            server: format!("https://127.0.0.1:{port}"),
            ca: Some(dir.path().join("ca.pem")),
            token: Some(std::fs::read_to_string(dir.path().join("admin.token")).unwrap()),
            token_file: None,
        };
        let c = Client::new(&cfg).unwrap();
        let t0 = Instant::now();
        while c.get("/v1/nodes").await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Register the nodes and their first heartbeat (the start-up storm) first.
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut regs = Vec::new();
        for i in 0..agents {
            let c = c.clone();
            let sem = sem.clone();
            regs.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let name = format!("node-{i}");
                c.post(
                    "/v1/nodes",
                    &json!({"apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": name},
                        "spec": {"address": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)}}),
                )
                .await
                .unwrap();
                c.post(&format!("/v1/nodes/{name}/heartbeat"), &json!({})).await.unwrap();
            }));
        }
        for r in regs {
            r.await.unwrap();
        }
        c.post(
            "/v1/nodes",
            &json!({"apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": "probe"}, "spec": {"address": "10.255.0.1"}}),
        )
        .await
        .unwrap();
        let rv = c.get("/v1/nodes").await.unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        println!("registered {agents} nodes in {:.1} s", t0.elapsed().as_secs_f64());

        // The agents: a watch each (from rv) and a heartbeat every 5 s.
        // received[(agent, probe rv)] = instant
        let received: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        let ready = Arc::new(tokio::sync::Barrier::new(agents + 1));
        for i in 0..agents {
            let c = Client::new(&cfg).unwrap();
            let received = received.clone();
            let ready = ready.clone();
            let stop = stop.clone();
            let rv = rv.clone();
            tasks.push(tokio::spawn(async move {
                let mut w = c.watch("/v1/nodes", Some(&rv), false).await.unwrap();
                ready.wait().await;
                let name = format!("node-{i}");
                let mut hb = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_millis((i as u64 * 5000) / agents as u64),
                    Duration::from_secs(5),
                );
                loop {
                    tokio::select! {
                        ev = w.next() => {
                            let Some(Ok(ev)) = ev else { return };
                            if ev["object"]["metadata"]["name"] == "probe" {
                                let at = Instant::now();
                                let rv = ev["object"]["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
                                received.lock().unwrap().entry(rv).or_default().push(at);
                            }
                        }
                        _ = hb.tick() => {
                            let c = c.clone();
                            let name = name.clone();
                            tokio::spawn(async move { let _ = c.post(&format!("/v1/nodes/{name}/heartbeat"), &json!({})).await; });
                        }
                        _ = stop.notified() => return,
                    }
                }
            }));
        }
        ready.wait().await;
        println!("{agents} watches open after {:.1} s", t0.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = cpu_ticks(pid);
        let wall0 = Instant::now();
        // The writer: one change every 200 ms.
        let mut sent: Vec<(String, Instant)> = Vec::new();
        for k in 0..writes {
            let at = Instant::now();
            let mut probe = c.get("/v1/nodes/probe").await.unwrap();
            probe["metadata"]["labels"] = json!({"round": k.to_string()});
            let r = c.put("/v1/nodes/probe", &probe).await.unwrap();
            sent.push((r["metadata"]["resourceVersion"].as_str().unwrap().to_string(), at));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the last deliveries land.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done = {
                let r = received.lock().unwrap();
                sent.iter().all(|(rv, _)| r.get(rv).is_some_and(|v| v.len() == agents))
            };
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = wall0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0;
        let rss_mb = proc_field(pid, "VmRSS:") as f64 / 1024.0;
        let hwm_mb = proc_field(pid, "VmHWM:") as f64 / 1024.0;
        stop.notify_waiters();
        let r = received.lock().unwrap();
        let mut all = Vec::new();
        let mut worst = Vec::new();
        let mut missing = 0;
        for (rv, at) in &sent {
            let got = r.get(rv).cloned().unwrap_or_default();
            missing += agents - got.len().min(agents);
            let d: Vec<f64> = got.iter().map(|t| t.duration_since(*at).as_secs_f64() * 1000.0).collect();
            if let Some(m) = d.iter().cloned().reduce(f64::max) {
                worst.push(m);
            }
            all.extend(d);
        }
        println!();
        println!("watch fan-out, {agents} agents (watch + heartbeat every 5 s), {writes} writes, embedded store, TLS");
        println!("write -> delivery, every watch:     p50 {:7.1} ms   p99 {:7.1} ms   ({} deliveries, {missing} missing)", pct(&mut all.clone(), 0.5), pct(&mut all, 0.99), sent.len() * agents - missing);
        println!("write -> delivered on all watches:  p50 {:7.1} ms   p99 {:7.1} ms", pct(&mut worst.clone(), 0.5), pct(&mut worst, 0.99));
        println!("server RSS {rss_mb:.0} MB (peak {hwm_mb:.0} MB), CPU {:.0}% of one core over {wall:.1} s", cpu / wall * 100.0);
        let p99 = pct(&mut all, 0.99);
        println!(
            "target: fan-out p99 <= 100 ms: {}; RSS <= 200 MB: {}",
            if p99 <= 100.0 && missing == 0 { "PASS" } else { "MISS" },
            if hwm_mb <= 200.0 { "PASS" } else { "MISS" }
        );
        drop(r);
        for t in tasks {
            t.abort();
        }
    });
    drop(server);
}
