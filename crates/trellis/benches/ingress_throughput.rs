//! The ingress next to nginx and haproxy, side by side in one run.
//!
//! Run as root: `cargo bench -p trellis --bench ingress_throughput`
//! (`TRELLIS_BENCH_SECS` per measurement, default 10; `TRELLIS_BENCH_ROUTES` routes
//! loaded for the route-change measurement, default 10000; `TRELLIS_BENCH_PROXY_CPUS`,
//! the CPUs every proxy is pinned to with taskset, default `0,1`).
//!
//! A one-node lab: `trellis server` in the underlay, an agent on n1, two pods on n1
//! running `trellis lab echo` (hyper, one thread each; `/bench` answers a fixed 13-byte
//! body), a Service over them. Each proxy in turn runs in n1's namespace on the same CPUs
//! with two workers, listening on 192.168.77.11:80 and :443 with the same ECDSA P-256
//! certificate, sending to the same two pods:
//!
//! - `trellis ingress --threads 2 --no-access-log`, an Ingress (TLS host, no redirect);
//! - nginx `worker_processes 2`, `upstream { keepalive 64; }`, HTTP/1.1 upstream,
//!   `access_log off`;
//! - haproxy `nbthread 2`, `http-reuse always`, no logging.
//!
//! The client is Debian's wrk in the underlay (one thread, 64 connections, --latency):
//! keep-alive, `Connection: close` (a new connection per request) and HTTPS keep-alive.
//! Then every proxy is driven at a fixed rate of half nginx's keep-alive maximum by an
//! open-loop generator in this process (64 keep-alive connections; each request is sent
//! at its scheduled time and its latency counts from that time, so a stall shows; a
//! connection the server closes after an answer is reopened) and its p99 is compared. RSS is the proxy's (nginx: master and workers) after the runs.
//!
//! The ingress alone: ROUTES HTTPRoutes are loaded (each its own host), then 50 new
//! routes are created one at a time through the API; the sample is the time from the
//! create request to the first 200 from the proxy for the new host (polled every 1 ms).
//! RSS is read before and after 1,000 changes of one route, and after 1,000 more.
//!
//! Targets: rps >= 1.2x nginx and >= 1.0x haproxy; p99 at the fixed rate <= nginx's;
//! route change p99 <= 100 ms with 10,000 routes; RSS after 1,000 changes within 10%.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{spawn_in_netns, wait_for, Lab};

const EDGE: &str = "192.168.77.11";

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// wrk's figures.
#[derive(Debug, Default, Clone)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn ms_of(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => f64::NAN,
    }
}

fn wrk(lab: &Lab, url: &str, secs: u64, extra: &[&str]) -> Wrk {
    let mut args = vec![
        "wrk",
        "-t",
        "1",
        "-c",
        "64",
        "--latency",
        "--timeout",
        "5s",
        "-H",
        "Host: bench.test",
    ];
    let d = format!("{secs}s");
    args.extend(["-d", &d]);
    args.extend_from_slice(extra);
    args.push(url);
    let out = lab.exec_any(&lab.state.underlay, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = Wrk::default();
    for l in text.lines().map(str::trim) {
        if let Some(r) = l.strip_prefix("Requests/sec:") {
            w.rps = r.trim().parse().unwrap_or(0.0);
        }
        if let Some(r) = l.strip_prefix("50%") {
            w.p50_ms = ms_of(r);
        }
        if let Some(r) = l.strip_prefix("99%") {
            w.p99_ms = ms_of(r);
        }
        if let Some(r) = l.strip_prefix("Socket errors:") {
            w.errors += r
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(r) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += r.trim().parse::<u64>().unwrap_or(0);
        }
    }
    assert!(
        w.rps > 0.0,
        "wrk {url}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w
}

/// RSS in KiB of `pid` and its children (nginx workers).
fn rss_kib(pid: u32) -> u64 {
    let own = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    own(pid) + children.into_iter().map(own).sum::<u64>()
}

/// One keep-alive GET on an async connection: the status and whether the server
/// closes the connection after it (`Connection: close`, as nginx says after
/// `keepalive_requests`).
async fn get_async(
    s: &mut tokio::net::TcpStream,
    host: &str,
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET /bench HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let close = head
                .lines()
                .any(|l| l.starts_with("connection:") && l.contains("close"));
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, close));
        }
    }
}

/// Open-loop load at `rate` requests/s for `secs` over 64 keep-alive connections (from
/// the underlay, one thread, async); latencies in ms, counted from each request's
/// scheduled time. A connection the server closes after an answer is opened again
/// before the next request (not an error).
fn fixed_rate(lab: &Lab, rate: f64, secs: u64) -> (Vec<f64>, u64) {
    let total = (rate * secs as f64) as u64;
    spawn_in_netns(&lab.state.underlay, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let next = Arc::new(AtomicU64::new(0));
            let start = tokio::time::Instant::now() + Duration::from_millis(200);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let next = next.clone();
                set.spawn(async move {
                    let connect = || tokio::net::TcpStream::connect((EDGE, 80));
                    let mut s = connect().await?;
                    s.set_nodelay(true)?;
                    let (mut lat, mut errors, mut buf) = (Vec::new(), 0u64, Vec::new());
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok::<_, std::io::Error>((lat, errors));
                        }
                        let at = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(at).await;
                        match get_async(&mut s, "bench.test", &mut buf).await {
                            Ok((200, close)) => {
                                lat.push(at.elapsed().as_secs_f64() * 1e3);
                                if close {
                                    s = connect().await?;
                                    s.set_nodelay(true)?;
                                }
                            }
                            _ => {
                                errors += 1;
                                s = connect().await?;
                                s.set_nodelay(true)?;
                            }
                        }
                    }
                });
            }
            let (mut all, mut errors) = (Vec::new(), 0);
            while let Some(r) = set.join_next().await {
                let (l, e) = r.map_err(std::io::Error::other)??;
                all.extend(l);
                errors += e;
            }
            Ok((all, errors))
        })
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap()
}

struct Proxy {
    name: &'static str,
    /// Its log file in the lab directory (without `.log`).
    log: &'static str,
    start: Box<dyn Fn(&mut Lab) -> u32>,
}

fn taskset(cpus: &str, program: &str) -> std::process::Command {
    let mut c = std::process::Command::new("taskset");
    c.args(["-c", cpus, program]);
    c
}

fn answers(lab: &Lab) -> bool {
    lab.exec_any(
        &lab.state.underlay,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: bench.test",
            &format!("http://{EDGE}/bench"),
        ],
    )
    .is_ok_and(|o| o.stdout == b"200")
}

fn wait_serving(lab: &Lab, name: &str) {
    if !wait_for(Duration::from_secs(20), || answers(lab)) {
        let log =
            std::fs::read_to_string(lab.dir().join(format!("{name}.log"))).unwrap_or_default();
        panic!("{name} does not serve:\n{log}");
    }
}

/// Stop a proxy and wait until its ports are free for the next one.
fn stop(lab: &mut Lab, pid: u32) {
    lab.stop(pid, false);
    assert!(
        wait_for(Duration::from_secs(10), || !answers(lab)),
        "the proxy still answers after SIGTERM"
    );
    std::thread::sleep(Duration::from_millis(300));
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    for tool in ["wrk", "nginx", "haproxy", "openssl", "taskset", "curl"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is required"
        );
    }
    let secs = env_u64("TRELLIS_BENCH_SECS", 10);
    let routes = env_u64("TRELLIS_BENCH_ROUTES", 10_000);
    let cpus = std::env::var("TRELLIS_BENCH_PROXY_CPUS").unwrap_or_else(|_| "0,1".into());
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));

    let mut lab = Lab::new(1).expect("lab");
    let timing = Timing::default();
    lab.start_server(&trellis, &timing).unwrap();
    lab.apply(&trellis, &network_manifest("default", "vxlan"))
        .unwrap();
    lab.start_cluster_agent(&trellis, 0, "default", &timing)
        .unwrap();
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let mut pods = Vec::new();
    for name in ["e1", "e2"] {
        let pod = lab.add_pod(0, name).unwrap();
        let ip = lab
            .cni_add_pod_to(&plugin, &pod.netns, "LABELS=app=echo", None)
            .unwrap();
        lab.start_echo(&trellis, &pod.netns, name).unwrap();
        pods.push(ip);
    }
    let dir = lab.dir();
    let (crt, key) =
        trellis_lab::ingress::self_signed_cert(&dir, "bench", &["bench.test"]).unwrap();
    let pem = dir.join("bench.pem");
    std::fs::write(
        &pem,
        [std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap()].concat(),
    )
    .unwrap();
    lab.apply(
        &trellis,
        "apiVersion: trellis/v1\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec:\n  selector: {app: echo}\n  ports: [{port: 80, targetPort: 8080}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bench, namespace: default, annotations: {trellis.io/ssl-redirect: 'false'}}\n\
         spec:\n  rules: [{host: bench.test, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}}]\n",
    )
    .unwrap();
    let n1 = lab.state.nodes[0].netns.clone();
    let upstreams: String = pods.iter().map(|p| format!("server {p}:8080; ")).collect();

    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-body; proxy_temp_path {d}/nginx-proxy;\n  fastcgi_temp_path {d}/nginx-fcgi; uwsgi_temp_path {d}/nginx-uwsgi; scgi_temp_path {d}/nginx-scgi;\n\
             upstream be {{ {upstreams} keepalive 64; }}\n\
             server {{ listen {EDGE}:80 reuseport; listen {EDGE}:443 ssl reuseport; ssl_certificate {crt}; ssl_certificate_key {key};\n\
             location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n}}\n",
            d = dir.display(),
            crt = crt.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let haproxy_conf = dir.join("haproxy.cfg");
    let servers: String = pods
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server s{i} {p}:8080\n"))
        .collect();
    std::fs::write(
        &haproxy_conf,
        format!(
            "global\n  nbthread 2\n  maxconn 8000\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  option forwardfor\n  http-reuse always\n\n\
             frontend f\n  bind {EDGE}:80\n  bind {EDGE}:443 ssl crt {pem} alpn h2,http/1.1\n  default_backend b\n\nbackend b\n  balance roundrobin\n{servers}",
            pem = pem.display()
        ),
    )
    .unwrap();

    let ingress_cmd = {
        let trellis = trellis.clone();
        let cpus = cpus.clone();
        let (crt, key) = (crt.clone(), key.clone());
        move |lab: &mut Lab| -> u32 {
            let mut c = lab
                .ingress_command(
                    &trellis,
                    "bench",
                    format!("{EDGE}:80").parse().unwrap(),
                    Some(format!("{EDGE}:443").parse().unwrap()),
                    &["--threads", "2", "--no-access-log"],
                )
                .unwrap();
            c.arg("--default-cert")
                .arg(&crt)
                .arg("--default-key")
                .arg(&key);
            let mut t = taskset(&cpus, c.get_program().to_str().unwrap());
            t.args(c.get_args());
            let n1 = lab.state.nodes[0].netns.clone();
            lab.spawn(&n1, "ingress bench", t).unwrap()
        }
    };
    let proxies: Vec<Proxy> = vec![
        Proxy {
            name: "trellis",
            log: "ingress-bench",
            start: Box::new(ingress_cmd.clone()),
        },
        Proxy {
            name: "nginx",
            log: "nginx",
            start: Box::new({
                let (conf, cpus, n1) = (nginx_conf.clone(), cpus.clone(), n1.clone());
                move |lab: &mut Lab| {
                    let mut c = taskset(&cpus, "nginx");
                    c.arg("-c").arg(&conf).args(["-g", "daemon off;"]);
                    lab.spawn(&n1, "nginx", c).unwrap()
                }
            }),
        },
        Proxy {
            name: "haproxy",
            log: "haproxy",
            start: Box::new({
                let (conf, cpus, n1) = (haproxy_conf.clone(), cpus.clone(), n1.clone());
                move |lab: &mut Lab| {
                    let mut c = taskset(&cpus, "haproxy");
                    c.arg("-db").arg("-f").arg(&conf);
                    lab.spawn(&n1, "haproxy", c).unwrap()
                }
            }),
        },
    ];

    let only =
        std::env::var("TRELLIS_BENCH_PROXIES").unwrap_or_else(|_| "trellis,nginx,haproxy".into());
    let proxies: Vec<Proxy> = proxies
        .into_iter()
        .filter(|p| only.split(',').any(|o| o == p.name))
        .collect();
    println!(
        "ingress throughput: {} s per run, wrk -t1 -c64 from the underlay, proxies on CPUs {cpus}",
        secs
    );
    let mut results: Vec<(&str, Wrk, Wrk, Wrk, u64)> = Vec::new();
    for p in &proxies {
        let pid = (p.start)(&mut lab);
        wait_serving(&lab, p.log);
        wrk(&lab, &format!("http://{EDGE}/bench"), 2, &[]); // warm-up
        let ka = wrk(&lab, &format!("http://{EDGE}/bench"), secs, &[]);
        let nc = wrk(
            &lab,
            &format!("http://{EDGE}/bench"),
            secs,
            &["-H", "Connection: close"],
        );
        let tls = wrk(&lab, &format!("https://{EDGE}/bench"), secs, &[]);
        let rss = rss_kib(pid);
        println!(
            "{:8} keep-alive {:>9.0} rps p50 {:>6.2} ms p99 {:>6.2} ms | new conn {:>8.0} rps p99 {:>6.2} ms | TLS {:>9.0} rps p99 {:>6.2} ms | RSS {:>6} KiB | errors {}",
            p.name, ka.rps, ka.p50_ms, ka.p99_ms, nc.rps, nc.p99_ms, tls.rps, tls.p99_ms, rss, ka.errors + nc.errors + tls.errors
        );
        stop(&mut lab, pid);
        results.push((p.name, ka, nc, tls, rss));
    }
    // Ratios and the fixed rate need all three proxies (TRELLIS_BENCH_PROXIES).
    if results.len() == 3 {
        let by = |n: &str| results.iter().find(|r| r.0 == n).unwrap().clone();
        let (t, n, h) = (by("trellis"), by("nginx"), by("haproxy"));
        println!(
            "\nratios trellis/nginx, trellis/haproxy (target: rps >= 1.2x nginx, >= 1.0x haproxy)"
        );
        for (what, tv, nv, hv) in [
            ("keep-alive rps", t.1.rps, n.1.rps, h.1.rps),
            ("new-conn rps", t.2.rps, n.2.rps, h.2.rps),
            ("TLS rps", t.3.rps, n.3.rps, h.3.rps),
        ] {
            println!("  {what:15} {:.2}x  {:.2}x", tv / nv, tv / hv);
        }

        // p99 at a fixed rate: half of nginx's keep-alive maximum.
        let rate = (n.1.rps * 0.5).round();
        println!("\nfixed rate {rate:.0} rps (half of nginx's keep-alive maximum), 64 connections, open loop, {secs} s (target: trellis p99 <= nginx p99)");
        for p in &proxies {
            let pid = (p.start)(&mut lab);
            wait_serving(&lab, p.log);
            let (mut lat, errors) = fixed_rate(&lab, rate, secs);
            println!(
                "{:8} p50 {:>6.2} ms p99 {:>6.2} ms max {:>7.2} ms ({} answers, {errors} errors)",
                p.name,
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99),
                pct(&mut lat, 1.0),
                lat.len()
            );
            stop(&mut lab, pid);
        }
    }

    // Route changes with ROUTES routes loaded (the ingress alone).
    let pid = ingress_cmd(&mut lab);
    wait_serving(&lab, "ingress-bench");
    let cfg = trellis_client::Config::load(&lab.client_config()).unwrap();
    let u = lab.state.underlay.clone();
    let res = spawn_in_netns(&u, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(route_changes(cfg, routes, pid))
            .map_err(std::io::Error::other)
    })
    .unwrap()
    .join()
    .unwrap();
    let (changes, rss_before, rss_after) = match res {
        Ok(x) => x,
        Err(e) => {
            let log =
                std::fs::read_to_string(lab.dir().join("ingress-bench.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "route changes: {e}\ningress log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    };
    let mut c = changes.clone();
    println!(
        "\nroute change live on the proxy with {routes} routes loaded: p50 {:.1} ms p99 {:.1} ms max {:.1} ms over {} changes (target p99 <= 100 ms)",
        pct(&mut c, 0.5),
        pct(&mut c, 0.99),
        pct(&mut c, 1.0),
        changes.len()
    );
    println!(
        "RSS before / after 1,000 route changes: {rss_before} / {rss_after} KiB ({:+.1}%, target within 10%)",
        (rss_after as f64 / rss_before as f64 - 1.0) * 100.0
    );
    lab.stop(pid, false);
}

fn route(i: u64, gen: u64) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("r{i}"), "namespace": "default"},
        "spec": {"hostnames": [format!("r{i}.test")], "rules": [{
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Gen", "value": gen.to_string()}]}}],
            "backendRefs": [{"name": "echo", "port": 80}]}]}
    })
}

async fn route_changes(
    cfg: trellis_client::Config,
    routes: u64,
    pid: u32,
) -> Result<(Vec<f64>, u64, u64), String> {
    let client = trellis_client::Client::new(&cfg).map_err(|e| e.to_string())?;
    let path = "/v1/namespaces/default/httproutes";
    // Load the routes, 16 requests at a time.
    let load = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..routes {
        if set.len() >= 16 {
            set.join_next()
                .await
                .unwrap()
                .map_err(|e| e.to_string())??;
        }
        let c = client.clone();
        set.spawn(async move {
            c.post(path, &route(i, 0))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let last = format!("r{}.test", routes - 1);
    let serves = |host: String| async move {
        let Ok(mut s) = tokio::net::TcpStream::connect((EDGE, 80)).await else {
            return false;
        };
        let mut buf = Vec::new();
        get_async(&mut s, &host, &mut buf)
            .await
            .is_ok_and(|(st, _)| st == 200)
    };
    let t = Instant::now();
    while !serves(last.clone()).await {
        if t.elapsed() > Duration::from_secs(120) {
            return Err("the loaded routes never showed".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "\nloaded {routes} routes in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    // New routes, one at a time: create -> first 200.
    let mut samples = Vec::new();
    for j in 0..50u64 {
        let i = routes + j;
        let host = format!("r{i}.test");
        let t0 = Instant::now();
        client
            .post(path, &route(i, 0))
            .await
            .map_err(|e| e.to_string())?;
        let connect = || tokio::net::TcpStream::connect((EDGE, 80));
        let mut s = connect().await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        loop {
            match get_async(&mut s, &host, &mut buf).await {
                Ok((200, _)) => break,
                Ok((_, false)) => {}
                Ok((_, true)) | Err(_) => s = connect().await.map_err(|e| e.to_string())?,
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("route {host} never served"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // RSS across 1,000 changes of one route.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let one = "/v1/namespaces/default/httproutes/r0";
    for gen in 1..=1000u64 {
        client
            .put(one, &route(0, gen))
            .await
            .map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    // A second thousand tells a leak (still growing) from an allocator that kept what it
    // grew to once.
    for gen in 1001..=2000u64 {
        client
            .put(one, &route(0, gen))
            .await
            .map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("RSS after 2,000 route changes: {} KiB", rss_kib(pid));
    Ok((samples, before, after))
}
