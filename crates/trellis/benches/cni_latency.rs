//! CNI ADD/DEL latency of `trellis-cni` (with its agent) against the reference `bridge` +
//! `host-local` plugins, measured in the same run and the same lab.
//!
//! Run as root, with containernetworking-plugins installed:
//! `cargo bench -p trellis --bench cni_latency` (`TRELLIS_BENCH_N` sets the invocations
//! per phase, default 200).
//!
//! A two-node `trellis_lab::Lab`: node 0 runs `trellis agent` and is served by
//! `trellis-cni`; node 1 by `/usr/lib/cni/bridge` (bridge `cni0` with gateway, `host-local`
//! IPAM). N pod namespaces per side are made before any timing and reused by every phase
//! (each DEL phase, and the wait after it, leaves them empty). A sample is one plugin process:
//! spawn, enter the node namespace, run, exit. Both sides enter it as `ip netns exec`
//! does (setns, then a private mount namespace with the node's /sys), but in the forked
//! child, saving the extra `ip` process. Order: a warm-up (5 ADD + 5 DEL per side, not
//! counted), VERSION (the fixed per-process cost), then trellis sequential, reference
//! sequential, trellis 16-way parallel, reference 16-way parallel: N ADDs, then N DELs.
//!
//! The reference runs with `ipMasq: false`, so it never touches iptables; with
//! masquerading (the usual bridge setup) its ADD and DEL are slower. The comparison is
//! therefore conservative: it favours the reference.
//!
//! trellis DEL only detaches the host veth (down + a device group); the agent deletes
//! retired links in batches in the background. The time node 0 still holds host veths
//! after each DEL phase is printed as "background link cleanup".

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trellis_lab::{netns_path, wait_for, Lab};

const THREADS: usize = 16;
const WARMUP: usize = 5;
const VERSIONS: usize = 50;

/// One plugin setup: binary, node namespace, config and pod namespaces.
struct Side {
    name: &'static str,
    plugin: PathBuf,
    cni_path: PathBuf,
    node_ns: String,
    node_fd: File,
    config: String,
    pods: Vec<String>,
}

/// In the forked child, what `ip netns exec` does. Short-circuits: no mount change
/// unless the child is already in its own mount namespace.
fn enter_node(fd: RawFd) -> std::io::Result<()> {
    let (null, sysfs) = (std::ptr::null(), c"sysfs".as_ptr());
    let slave = libc::MS_SLAVE | libc::MS_REC;
    // SAFETY: plain syscalls with static C strings and an fd the parent keeps open; all
    // are async-signal-safe, as required between fork and exec.
    let ok = unsafe {
        libc::setns(fd, libc::CLONE_NEWNET) == 0
            && libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(c"none".as_ptr(), c"/".as_ptr(), null, slave, null.cast()) == 0
            && libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) == 0
            && libc::mount(sysfs, c"/sys".as_ptr(), sysfs, 0, null.cast()) == 0
    };
    ok.then_some(()).ok_or_else(std::io::Error::last_os_error)
}

impl Side {
    /// Run the plugin once on pod `i`; panics unless it exits 0. Returns its wall time.
    fn invoke(&self, cmd: &str, tag: &str, i: usize) -> Duration {
        let (id, pod) = (format!("{}-{tag}-{i}", self.name), &self.pods[i]);
        let mut c = Command::new(&self.plugin);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", &self.cni_path)
            .envs([
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", &id),
                ("CNI_IFNAME", "eth0"),
            ])
            .env("CNI_NETNS", netns_path(pod))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = self.node_fd.as_raw_fd();
        // SAFETY: enter_node only makes async-signal-safe syscalls.
        unsafe { c.pre_exec(move || enter_node(fd)) };
        let t = Instant::now();
        let mut child = c.spawn().expect("spawn plugin");
        let config = self.config.as_bytes();
        // stdin closes when the handle (a temporary) drops
        let fed = child.stdin.take().expect("piped").write_all(config);
        let out = child.wait_with_output().expect("wait for plugin");
        let dt = t.elapsed();
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let what = format!("{} {cmd} {id} ({pod})", self.name);
        assert!(
            fed.is_ok() && out.status.success(),
            "{what}: {}\nstdout: {so}\nstderr: {se}",
            out.status
        );
        dt
    }

    /// `cmd` on pods `0..n` from `threads` threads (pod i on thread i % threads), each
    /// invocation timed.
    fn run(&self, cmd: &str, tag: &str, n: usize, threads: usize) -> Vec<Duration> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (t..n)
                            .step_by(threads)
                            .map(|i| self.invoke(cmd, tag, i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("worker panicked"))
                .collect()
        })
    }

    /// Host veths on the node: `trl` + 12 hex (trellis) or `veth*` (reference).
    fn host_veths(&self) -> usize {
        let mut ip = Command::new("ip");
        let out = ip
            .args(["-n", &self.node_ns, "-o", "link", "show"])
            .output();
        let out = out.expect("ip link");
        assert!(out.status.success(), "ip -n {} link failed", self.node_ns);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let names = text
            .lines()
            .filter_map(|l| l.split(": ").nth(1)?.split('@').next());
        if self.name == "trellis" {
            names
                .filter(|n| n.starts_with("trl") && n.len() == 15)
                .count()
        } else {
            names.filter(|n| n.starts_with("veth")).count()
        }
    }

    /// After a DEL phase: how long until node 0 has no host veth left (trellis deletes
    /// them in the background), or a check that none is left (`bridge` deletes them
    /// before it returns).
    fn after_del(&self) -> Option<Duration> {
        let t = Instant::now();
        let done = wait_for(Duration::from_secs(10), || self.host_veths() == 0);
        let left = self.host_veths();
        assert!(done, "{}: {left} host veths left 10 s after DEL", self.name);
        (self.name == "trellis").then(|| t.elapsed())
    }
}

/// (median, p99) in ms, nearest rank.
fn stats(v: &[Duration]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort();
    let q = |p: f64| {
        s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1].as_secs_f64() * 1e3
    };
    (q(0.5), q(0.99))
}

fn side(lab: &Lab, node: usize, name: &'static str, plugin: PathBuf, config: String) -> Side {
    let node_ns = lab.state.nodes[node].netns.clone();
    let pods = lab.state.pods.iter().filter(|p| p.node == node);
    Side {
        name,
        cni_path: plugin.with_file_name(""),
        plugin,
        node_fd: File::open(netns_path(&node_ns)).expect("open node netns"),
        node_ns,
        config,
        pods: pods.map(|p| p.netns.clone()).collect(),
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (network namespaces)"
    );
    let n = std::env::var("TRELLIS_BENCH_N").map_or(Ok(200), |v| v.parse::<usize>());
    let n = n.ok().filter(|n| (WARMUP..=240).contains(n));
    let n = n.expect("TRELLIS_BENCH_N must be 5..=240 (node 0 has a /24)");
    let reference = PathBuf::from("/usr/lib/cni/bridge");
    for p in [&reference, &reference.with_file_name("host-local")] {
        assert!(p.exists(), "install containernetworking-plugins ({p:?})");
    }

    let mut lab = Lab::new(2).expect("create lab");
    let trellis = PathBuf::from(env!("CARGO_BIN_EXE_trellis"));
    lab.start_agent(&trellis, 0, &[]).expect("start agent");
    let t = Instant::now();
    for (node, i) in (0..2).flat_map(|node| (0..n).map(move |i| (node, i))) {
        lab.add_pod(node, &format!("b{i}")).expect("add pod");
    }
    let made = t.elapsed().as_secs_f64();
    eprintln!(
        "lab {}: {} pod namespaces in {made:.1} s",
        lab.state.name,
        2 * n
    );
    let ref_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.0.0/16"}]],
                 "dataDir": lab.dir().join("hostlocal")},
    });
    let trellis_cni = PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"));
    let conf = lab.cni_config(0, "1.1.0").to_string();
    let sides = [
        side(&lab, 0, "trellis", trellis_cni, conf),
        side(&lab, 1, "reference", reference, ref_conf.to_string()),
    ];

    let phases = ["VERSION", "ADD seq", "DEL seq", "ADD par16", "DEL par16"];
    let mut res: Vec<[Vec<Duration>; 2]> = phases.iter().map(|_| Default::default()).collect();
    let mut cleanup = Vec::new();
    for (k, s) in sides.iter().enumerate() {
        s.run("ADD", "warm", WARMUP, 1);
        s.run("DEL", "warm", WARMUP, 1);
        s.after_del();
        res[0][k] = s.run("VERSION", "ver", VERSIONS.min(n), 1);
    }
    for (tag, threads, p) in [("seq", 1, 1), ("par16", THREADS, 3)] {
        for (k, s) in sides.iter().enumerate() {
            res[p][k] = s.run("ADD", tag, n, threads);
            res[p + 1][k] = s.run("DEL", tag, n, threads);
            if let Some(d) = s.after_del() {
                cleanup.push(format!("after DEL {tag} {:.0} ms", d.as_secs_f64() * 1e3));
            }
        }
    }

    println!("\nCNI latency in ms per plugin invocation (whole process), N={n} per phase");
    println!("                     trellis       reference     trellis/reference");
    println!("phase         median     p99  median     p99     median        p99");
    let mut ratio = Vec::new();
    for (p, name) in phases.iter().enumerate() {
        let ((tm, tp), (rm, rp)) = (stats(&res[p][0]), stats(&res[p][1]));
        let (m, q) = (tm / rm, tp / rp);
        println!("{name:<12}{tm:>8.2}{tp:>8.2}{rm:>8.2}{rp:>8.2}{m:>11.2}{q:>11.2}");
        ratio.push(m);
    }
    let v = VERSIONS.min(n);
    println!("VERSION ({v} runs): process start, namespace entry, exit; part of every row");
    let cleanup = cleanup.join(", ");
    println!("background link cleanup (node 0, trellis): {cleanup}");
    println!("reference runs with ipMasq=false (no iptables work): the comparison favours it");
    for (what, max, p) in [("ADD", 1.0, 1), ("DEL", 0.5, 2)] {
        let v = |r: f64| format!("{r:.2} {}", if r <= max { "PASS" } else { "MISS" });
        let (seq, par) = (v(ratio[p]), v(ratio[p + 2]));
        println!("target: {what} median ratio <= {max:.1}: seq {seq}, par16 {par}");
    }
    // The lab (agent, namespaces) goes when `lab` drops, after every DEL above ran.
}
