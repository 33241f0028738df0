//! Network-namespace labs for tests, benchmarks and the demo.
//!
//! A lab is an underlay namespace holding a bridge, N node namespaces attached to it by
//! veth (`eth0` in the node, `nI` in the underlay), pod namespaces, and the processes
//! started inside any of them. Every name carries the lab's unique prefix
//! (`trlab-<pid>-<seq>` or `trlab-<name>` for a named lab), so labs of concurrent runs
//! never collide, and a lab never creates, changes or deletes anything in the root
//! network namespace: links are created from inside the lab's namespaces (`ip -n`).
//!
//! Cleanup: [`Lab`] removes its processes (by PID) and namespaces on drop — success,
//! failure or panic. [`sweep_stale`] removes labs whose owning process is gone.

pub mod cluster;
pub mod cni;
pub mod conformance;
pub mod ingress;
pub mod routed;
pub mod routers;
pub mod scratch;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Every lab namespace name starts with this.
pub const NS_PREFIX: &str = "trlab-";
/// Where lab state lives.
pub const STATE_ROOT: &str = "/run/trellis-lab";
/// The underlay subnet (the same inside every lab: labs are isolated from each other).
pub const UNDERLAY_PREFIX: &str = "192.168.77";
/// The second underlay segment of [`Lab::join_remote_node`], routed by the underlay.
pub const REMOTE_PREFIX: &str = "192.168.78";

/// Lab failures.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An I/O failure.
    #[error("{0}")]
    Io(String),
    /// A lab of that name already exists / does not exist / bad input.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// A node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Short name (`n1`).
    pub name: String,
    /// Network namespace name.
    pub netns: String,
    /// Underlay address.
    pub addr: Ipv4Addr,
}

/// A pod namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Short name (`n1-p1`).
    pub name: String,
    /// Index of its node in [`LabState::nodes`].
    pub node: usize,
    /// Network namespace name.
    pub netns: String,
    /// Address, once known.
    pub ip: Option<Ipv4Addr>,
}

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabProc {
    /// PID.
    pub pid: u32,
    /// What it is, e.g. `agent n1`.
    pub what: String,
    /// Namespace it runs in.
    pub netns: String,
}

/// Everything about a lab; stored as JSON in its state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name (the namespace prefix without [`NS_PREFIX`]).
    pub name: String,
    /// PID of the owning process; `None` for a lab meant to outlive it (`trellis lab up`).
    pub owner: Option<u32>,
    /// The underlay namespace.
    pub underlay: String,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Processes.
    pub procs: Vec<LabProc>,
    /// Free-form facts for `lab status` (e.g. pod CIDRs).
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
    /// Racks of a routed underlay ([`routed`]).
    #[serde(default)]
    pub racks: Vec<routed::Rack>,
}

/// A lab. Dropping it tears everything down unless [`Lab::persist`] was called.
#[derive(Debug)]
pub struct Lab {
    /// Its state.
    pub state: LabState,
    children: Vec<Child>,
    persistent: bool,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Io(format!("{line}: {e}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Path of a named network namespace.
pub fn netns_path(netns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(netns)
}

/// Run `f` on a new thread inside lab namespace `netns` (`setns` on that thread only;
/// the process and its other threads stay where they are); the thread ends with `f`.
/// Only lab namespaces ([`NS_PREFIX`]) are entered.
pub fn spawn_in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<JoinHandle<io::Result<T>>> {
    if !netns.starts_with(NS_PREFIX) || netns.contains('/') {
        return Err(io::Error::other(format!(
            "{netns:?} is not a lab namespace; only {NS_PREFIX}* namespaces are entered"
        )));
    }
    let path = netns_path(netns);
    let name = format!("netns {netns}");
    std::thread::Builder::new().name(name).spawn(move || {
        let file = File::open(&path)?;
        // SAFETY: setns(2) with a valid fd; it switches only this thread, which this
        // function spawned and which ends when `f` returns.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
}

impl Lab {
    /// Create a lab with `nodes` nodes, owned by this process (removed on drop).
    pub fn new(nodes: usize) -> Result<Lab> {
        if nodes == 0 {
            return Err(LabError::Invalid(
                "a lab needs 1 to 200 nodes, not 0".to_string(),
            ));
        }
        Self::owned(nodes)
    }

    /// A lab owned by this process with `nodes` nodes on the core segment (maybe none).
    pub(crate) fn owned(nodes: usize) -> Result<Lab> {
        sweep_stale();
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        Self::create(name, nodes, Some(std::process::id()))
    }

    /// Create a lab that outlives this process (`trellis lab up`), named `name`.
    pub fn new_persistent(name: &str, nodes: usize) -> Result<Lab> {
        if name.is_empty()
            || name.len() > 20
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(LabError::Invalid(format!(
                "lab name {name:?} must be 1-20 letters, digits or '-'"
            )));
        }
        if nodes == 0 {
            return Err(LabError::Invalid(
                "a lab needs 1 to 200 nodes, not 0".to_string(),
            ));
        }
        Self::persistent_with(name, nodes)
    }

    /// A persistent lab with no node yet (nodes come in racks, [`routed`]).
    pub(crate) fn persistent_empty(name: &str) -> Result<Lab> {
        if name.is_empty()
            || name.len() > 20
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(LabError::Invalid(format!(
                "lab name {name:?} must be 1-20 letters, digits or '-'"
            )));
        }
        Self::persistent_with(name, 0)
    }

    fn persistent_with(name: &str, nodes: usize) -> Result<Lab> {
        if Path::new(STATE_ROOT).join(name).exists() {
            return Err(LabError::Invalid(format!(
                "lab {name} already exists; `trellis lab down {name}` first"
            )));
        }
        sweep_stale();
        let mut lab = Self::create(name.to_string(), nodes, None)?;
        lab.persistent = true;
        lab.save()?;
        Ok(lab)
    }

    fn create(name: String, nodes: usize, owner: Option<u32>) -> Result<Lab> {
        if nodes > 200 {
            return Err(LabError::Invalid(format!(
                "a lab needs 1 to 200 nodes, not {nodes}"
            )));
        }
        let underlay = format!("{NS_PREFIX}{name}-u");
        let mut lab = Lab {
            state: LabState {
                name: name.clone(),
                owner,
                underlay: underlay.clone(),
                nodes: Vec::new(),
                pods: Vec::new(),
                procs: Vec::new(),
                notes: BTreeMap::new(),
                racks: Vec::new(),
            },
            children: Vec::new(),
            persistent: false,
        };
        std::fs::create_dir_all(lab.dir()).map_err(|e| LabError::Io(e.to_string()))?;
        lab.save()?;
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &underlay])?;
        lab.ns_up(&underlay)?;
        ip(&["-n", &underlay, "link", "add", "trlu0", "type", "bridge"])?;
        ip(&[
            "-n",
            &underlay,
            "addr",
            "add",
            &format!("{UNDERLAY_PREFIX}.1/24"),
            "dev",
            "trlu0",
        ])?;
        ip(&["-n", &underlay, "link", "set", "trlu0", "up"])?;
        for i in 1..=nodes {
            lab.add_node(i)?;
        }
        lab.save()?;
        Ok(lab)
    }

    pub(crate) fn ns_up(&self, ns: &str) -> Result<()> {
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Add one more node on the underlay segment; returns its index.
    pub fn join_node(&mut self) -> Result<usize> {
        let i = self.state.nodes.len() + 1;
        self.add_node(i)?;
        self.save()?;
        Ok(i - 1)
    }

    /// Add one more node on a second, routed segment ([`REMOTE_PREFIX`]`.0/24`, the
    /// underlay namespace routes between the two): a peer that is not on the others' L2
    /// segment. Returns its index.
    pub fn join_remote_node(&mut self) -> Result<usize> {
        let u = self.state.underlay.clone();
        let gw = format!("{REMOTE_PREFIX}.1/24");
        let has_gw = run(Command::new("ip").args(["-n", &u, "-br", "addr", "show", "trlu0"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&gw))
            .unwrap_or(false);
        if !has_gw {
            ip(&["-n", &u, "addr", "add", &gw, "dev", "trlu0"])?;
            self.exec(&u, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        let i = self.state.nodes.len() + 1;
        self.add_node_at(i, REMOTE_PREFIX)?;
        self.save()?;
        Ok(i - 1)
    }

    fn add_node(&mut self, i: usize) -> Result<()> {
        self.add_node_at(i, UNDERLAY_PREFIX)
    }

    fn add_node_at(&mut self, i: usize, prefix: &str) -> Result<()> {
        let u = self.state.underlay.clone();
        self.add_node_on(i, prefix, &u, "trlu0")
    }

    /// Add node `i` at `prefix.(10+i)/24`, its veth's other end a port of `bridge` in
    /// namespace `segment_ns`, its default route via `prefix.1`.
    pub(crate) fn add_node_on(
        &mut self,
        i: usize,
        prefix: &str,
        segment_ns: &str,
        bridge: &str,
    ) -> Result<()> {
        let name = format!("n{i}");
        let netns = format!("{NS_PREFIX}{}-{name}", self.state.name);
        if i > 200 {
            return Err(LabError::Invalid(format!("node index {i} too large")));
        }
        let addr: Ipv4Addr = format!("{prefix}.{}", 10 + i)
            .parse()
            .map_err(|_| LabError::Invalid(format!("node index {i} too large")))?;
        ip(&["netns", "add", &netns])?;
        self.state.nodes.push(LabNode {
            name: name.clone(),
            netns: netns.clone(),
            addr,
        });
        self.ns_up(&netns)?;
        ip(&[
            "-n", segment_ns, "link", "add", &name, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ip(&[
            "-n", segment_ns, "link", "set", &name, "master", bridge, "up",
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &format!("{prefix}.1"),
        ])?;
        Ok(())
    }

    /// Create an empty pod namespace on node `node` (0-based); plumbing it is the CNI
    /// plugin's job.
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<LabPod> {
        let n = self
            .state
            .nodes
            .get(node)
            .ok_or_else(|| LabError::Invalid(format!("no node {node}")))?;
        let netns = format!("{NS_PREFIX}{}-{}-{name}", self.state.name, n.name);
        ip(&["netns", "add", &netns])?;
        let pod = LabPod {
            name: format!("{}-{name}", n.name),
            node,
            netns: netns.clone(),
            ip: None,
        };
        self.state.pods.push(pod.clone());
        self.ns_up(&netns)?;
        self.save()?;
        Ok(pod)
    }

    /// Remove a pod namespace (as a runtime would after DEL).
    pub fn remove_pod_netns(&mut self, netns: &str) -> Result<()> {
        ip(&["netns", "del", netns])?;
        self.state.pods.retain(|p| p.netns != netns);
        self.save()
    }

    /// The lab's state directory.
    pub fn dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.state.name)
    }

    /// A command that runs inside namespace `netns`.
    pub fn command(&self, netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]).arg(program);
        c
    }

    /// Run a command inside `netns` and wait; fails on a non-zero exit.
    pub fn exec(&self, netns: &str, argv: &[&str]) -> Result<Output> {
        let mut c = self.command(netns, argv[0]);
        c.args(&argv[1..]);
        run(&mut c)
    }

    /// `ip route show proto PROTO` inside `netns`, as text (empty when it fails).
    pub fn routes_of_proto(&self, netns: &str, proto: u8) -> String {
        self.exec_any(netns, &["ip", "route", "show", "proto", &proto.to_string()])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Run a command inside `netns` and return its output whatever the exit status.
    pub fn exec_any(&self, netns: &str, argv: &[&str]) -> Result<Output> {
        let mut c = self.command(netns, argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null());
        c.output()
            .map_err(|e| LabError::Io(format!("{argv:?}: {e}")))
    }

    /// [`Lab::spawn`] through `nsenter --net` instead of `ip netns exec`: the process
    /// shares the host's mount namespace, so the namespaces it bind-mounts (a tenant's
    /// world) are visible to other processes and outlive it, as on a real node. The
    /// lab unmounts whatever is mounted under its directory when it is torn down.
    pub fn spawn_sharing_mounts(&mut self, netns: &str, what: &str, cmd: Command) -> Result<u32> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns_path(netns).display()))
            .arg("--")
            .arg(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        self.spawn_command(netns, what, c)
    }

    /// Start a long-running process inside `netns`; the lab stops it (by PID) when it
    /// is torn down.
    pub fn spawn(&mut self, netns: &str, what: &str, cmd: Command) -> Result<u32> {
        let prog = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut c = self.command(netns, prog);
        c.args(args);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        // `cmd` is only a description; the real child runs through `ip netns exec`.
        drop(cmd);
        self.spawn_command(netns, what, c)
    }

    /// Start `c` (already wrapped to run in `netns`) with its output in the lab's log
    /// for `what`, and record it.
    fn spawn_command(&mut self, netns: &str, what: &str, mut c: Command) -> Result<u32> {
        let log = std::fs::File::create(self.dir().join(format!("{}.log", what.replace(' ', "-"))))
            .map_err(|e| LabError::Io(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| LabError::Io(e.to_string()))?;
        c.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = c
            .spawn()
            .map_err(|e| LabError::Io(format!("spawn {what}: {e}")))?;
        let pid = child.id();
        self.state.procs.push(LabProc {
            pid,
            what: what.to_string(),
            netns: netns.to_string(),
        });
        self.children.push(child);
        self.save()?;
        Ok(pid)
    }

    /// Stop a process this lab started: SIGTERM, or SIGKILL when `kill` is set.
    pub fn stop(&mut self, pid: u32, kill: bool) {
        signal(pid, if kill { libc::SIGKILL } else { libc::SIGTERM });
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(pos);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    signal(pid, libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.state.procs.retain(|p| p.pid != pid);
        let _ = self.save();
    }

    /// Keep the lab after this process exits (for `trellis lab up`).
    pub fn persist(&mut self) -> Result<()> {
        self.persistent = true;
        self.state.owner = None;
        // Children keep running; forget them without waiting.
        self.children.clear();
        self.save()
    }

    /// Write the state file.
    pub fn save(&self) -> Result<()> {
        let p = self.dir().join("lab.json");
        let tmp = self.dir().join("lab.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&self.state).expect("serializes"),
        )
        .and_then(|_| std::fs::rename(&tmp, &p))
        .map_err(|e| LabError::Io(format!("write {}: {e}", p.display())))
    }

    /// Load a lab by name (for `trellis lab down|exec|status` and the stale sweep).
    pub fn load(name: &str) -> Result<Lab> {
        let p = Path::new(STATE_ROOT).join(name).join("lab.json");
        let data = std::fs::read(&p)
            .map_err(|e| LabError::Invalid(format!("no lab {name} ({}: {e})", p.display())))?;
        let state: LabState = serde_json::from_slice(&data)
            .map_err(|e| LabError::Io(format!("{}: {e}", p.display())))?;
        // A loaded lab is a view: dropping it never tears anything down; only an
        // explicit destroy() does.
        Ok(Lab {
            persistent: true,
            state,
            children: Vec::new(),
        })
    }

    /// Find a namespace by short name: `u`/`underlay`, a node (`n1`) or a pod (`n1-p1`).
    pub fn resolve(&self, target: &str) -> Option<String> {
        if target == "u" || target == "underlay" {
            return Some(self.state.underlay.clone());
        }
        if let Some(r) = self
            .state
            .racks
            .iter()
            .find(|r| format!("r{}", r.index) == target)
        {
            return Some(r.router.clone());
        }
        self.state
            .nodes
            .iter()
            .find(|n| n.name == target)
            .map(|n| n.netns.clone())
            .or_else(|| {
                self.state
                    .pods
                    .iter()
                    .find(|p| p.name == target)
                    .map(|p| p.netns.clone())
            })
    }

    /// Tear down: stop processes (by PID), delete namespaces, remove the state dir.
    /// Collects every error and keeps going.
    pub fn destroy(mut self) -> Vec<String> {
        self.persistent = false;
        self.teardown()
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for p in std::mem::take(&mut self.state.procs) {
            if owned_process_alive(&p) {
                signal(p.pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.children.clear();
        // Namespaces the agents bind-mounted under the lab's directory (tenant worlds).
        errors.extend(unmount_below(&self.dir()));
        for ns in lab_namespaces(&self.state.name) {
            // kill anything still running inside (processes we started may have forked)
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<u32>() {
                        signal(pid, libc::SIGKILL);
                    }
                }
            }
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(self.dir()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("remove {}: {e}", self.dir().display()));
            }
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.persistent {
            for e in self.teardown() {
                eprintln!("trellis-lab: cleanup: {e}");
            }
        }
    }
}

/// Unmount (lazily) every mount point under `dir`, deepest first.
fn unmount_below(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut errors = Vec::new();
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            errors.push(format!("unmount {}: {e}", p.display()));
        }
    }
    errors
}

fn signal(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a pid we recorded when we started the process.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// The recorded process is still the one we started (its PID was not reused): it runs
/// inside the lab namespace it was started in.
fn owned_process_alive(p: &LabProc) -> bool {
    let Ok(ns) = std::fs::metadata(format!("/proc/{}/ns/net", p.pid)) else {
        return false;
    };
    let Ok(want) = std::fs::metadata(netns_path(&p.netns)) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    ns.ino() == want.ino()
}

/// Names of the namespaces belonging to lab `name`.
fn lab_namespaces(name: &str) -> Vec<String> {
    let prefix = format!("{NS_PREFIX}{name}-");
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    // pods and nodes before the underlay, longest names first
    v.sort_by_key(|n| std::cmp::Reverse(n.len()));
    v
}

/// Remove labs whose owning process has exited (a crashed or killed test run).
/// Persistent labs (`trellis lab up`) are left alone.
pub fn sweep_stale() -> usize {
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir(STATE_ROOT) else {
        return 0;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(lab) = Lab::load(&name) else { continue };
        if let Some(owner) = lab.state.owner {
            if !Path::new(&format!("/proc/{owner}")).exists() {
                for e in lab.destroy() {
                    eprintln!("trellis-lab: sweeping stale lab {name}: {e}");
                }
                n += 1;
            }
        }
    }
    n
}

/// Names of all persistent labs.
pub fn list_persistent() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            Lab::load(&name)
                .ok()
                .filter(|l| l.state.owner.is_none())
                .map(|_| name)
        })
        .collect();
    v.sort();
    v
}

/// Wait until `f` returns true, polling every 10 ms; false after `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
