//! Does a tenant's world slow the data path? Pod → pod across two nodes inside a
//! tenant's world vs the same across the default world, in one lab, interleaved rounds.
//!
//! Run as root: `cargo bench -p trellis --bench tenant_datapath` (`ROUNDS` 5, `SECS` 3 per
//! measurement). Needs iperf3.
//!
//! A lab with `trellis server` and cluster agents (release build) on two nodes; the
//! `default` Network (vxlan, the node's own namespace) and the Network of tenant `red`
//! (vxlan, `red`'s world namespace on each node). A client pod on node 1 and a server pod
//! on node 2 in each. Per round and world (which goes first alternates): iperf3
//! single-stream TCP throughput, then TCP connections per second (connect + close with
//! `SO_LINGER` 0, one thread; the world's and the node's connection tracking emptied
//! first). The ratio tenant / default per round, median over the rounds. Target ≥ 0.95.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::scratch::in_ns;
use trellis_lab::Lab;

const CONN_PORT: u16 = 8088;

fn env_num<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{k}: not a number")))
        .unwrap_or(d)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct World {
    name: &'static str,
    client: String,
    server: String,
    server_ip: Ipv4Addr,
    /// Where its connection tracking lives on each node (`None`: the node's own).
    worlds: Vec<Option<PathBuf>>,
}

fn flush_conntrack(lab: &Lab, w: &World) {
    for (n, world) in w.worlds.iter().enumerate() {
        let node = lab.state.nodes[n].netns.clone();
        let _ = lab.exec_any(&node, &["conntrack", "-F"]);
        if let Some(p) = world {
            let _ = std::process::Command::new("nsenter")
                .arg(format!("--net={}", p.display()))
                .args(["conntrack", "-F"])
                .output();
        }
    }
}

fn iperf(lab: &Lab, w: &World, secs: u64) -> f64 {
    let out = lab
        .exec_any(
            &w.client,
            &[
                "iperf3",
                "-c",
                &w.server_ip.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )
        .expect("iperf3 -c");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 ({}): {v}", w.name))
        / 1e9
}

fn conns(lab: &Lab, w: &World, secs: u64) -> f64 {
    flush_conntrack(lab, w);
    let ip = w.server_ip;
    let listener = in_ns(&w.server, move || {
        TcpListener::bind(SocketAddrV4::new(ip, CONN_PORT)).expect("bind")
    });
    {
        use std::os::fd::AsRawFd;
        // SAFETY: listen on our own listening socket only raises its backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    }
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let acceptor = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => drop(c),
                // SAFETY: one valid pollfd.
                Err(_) => unsafe {
                    libc::poll(&mut pfd, 1, 100);
                },
            }
        }
    });
    let n = in_ns(&w.client, move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (mut n, mut failed) = (0u64, 0u64);
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(
                &SocketAddrV4::new(ip, CONN_PORT).into(),
                Duration::from_secs(1),
            ) {
                Ok(c) => {
                    // Close with a reset: no TIME_WAIT piles up in a bounded loop.
                    let l = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    use std::os::fd::AsRawFd;
                    // SAFETY: setsockopt on our own socket with a valid linger struct.
                    unsafe {
                        libc::setsockopt(
                            c.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&l as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as u32,
                        );
                    }
                    drop(c);
                    n += 1;
                }
                Err(_) => failed += 1,
            }
        }
        assert!(
            failed * 100 <= n.max(1),
            "{failed} of {n} connections failed"
        );
        n
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = acceptor.join();
    n as f64 / secs as f64
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let rounds: usize = env_num("ROUNDS", 5);
    let secs: u64 = env_num("SECS", 3);
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let timing = Timing::default();
    let mut lab = Lab::new(2).expect("create lab");
    lab.start_server(&trellis, &timing).expect("server");
    lab.apply(&trellis, &network_manifest("default", "vxlan"))
        .expect("network");
    lab.apply(
        &trellis,
        "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: red}\n---\n\
         apiVersion: trellis/v1\nkind: Network\nmetadata: {name: red-pods}\nspec: {cidr: 10.250.0.0/16, tenant: red}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {tenant: red}\n",
    )
    .expect("tenant");
    for n in 0..2 {
        lab.start_cluster_agent(&trellis, n, "default", &timing)
            .expect("agent");
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut worlds = Vec::new();
    for (name, args) in [("default", ""), ("red", "K8S_POD_NAMESPACE=shop")] {
        let mut pods = Vec::new();
        for n in 0..2 {
            let pod = lab.add_pod(n, &format!("{name}{n}")).expect("pod");
            let ip = lab
                .cni_add_pod_with(&plugin, &pod.netns, args)
                .expect("ADD");
            pods.push((pod.netns, ip));
        }
        let (server, server_ip) = pods[1].clone();
        let mut c = std::process::Command::new("iperf3");
        c.args(["-s", "-B", &server_ip.to_string()]);
        lab.spawn(&server, &format!("iperf3 {name}"), c)
            .expect("iperf3 -s");
        worlds.push(World {
            name,
            client: pods[0].0.clone(),
            server,
            server_ip,
            worlds: (0..2)
                .map(|n| {
                    (name != "default")
                        .then(|| lab.agent_paths(n).state_dir.join("worlds/red/netns"))
                })
                .collect(),
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut rt, mut rc) = (Vec::new(), Vec::new());
    let mut figures: Vec<[f64; 4]> = Vec::new();
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut t = [0.0; 2];
        let mut c = [0.0; 2];
        for i in order {
            t[i] = iperf(&lab, &worlds[i], secs);
            c[i] = conns(&lab, &worlds[i], secs);
            println!(
                "round {round} {:>7}: {:.2} Gbit/s, {:.0} conn/s",
                worlds[i].name, t[i], c[i]
            );
        }
        rt.push(t[1] / t[0]);
        rc.push(c[1] / c[0]);
        figures.push([t[0], t[1], c[0], c[1]]);
    }
    let col = |k: usize| median(figures.iter().map(|f| f[k]).collect());
    let (mt, mc) = (median(rt), median(rc));
    println!(
        "throughput: default {:.2}, tenant {:.2} Gbit/s; ratio tenant / default (median of rounds) {mt:.3} {}",
        col(0),
        col(1),
        if mt >= 0.95 { "PASS" } else { "FAIL" }
    );
    println!(
        "connections: default {:.0}/s, tenant {:.0}/s; ratio tenant / default (median of rounds) {mc:.3} {}",
        col(2),
        col(3),
        if mc >= 0.95 { "PASS" } else { "FAIL" }
    );
}
