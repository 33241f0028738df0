//! A throwaway etcd cluster on 127.0.0.1 for the etcd tests: `/usr/bin/etcd` (Debian's
//! etcd-server) members on free ports, data and logs in a temporary directory. Dropping
//! the guard kills the members it started (by PID) and removes the directory; when the
//! test is panicking it first prints the tail of every member's log.

#![allow(dead_code)] // each test binary uses its own part of the fixture

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, StatusResponse};

/// Where Debian's etcd-server package puts the server.
pub const ETCD: &str = "/usr/bin/etcd";

/// How long a cluster (or a restarted member) may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// One member.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    /// The running process, when it runs.
    child: Option<Child>,
}

/// A running etcd cluster, killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    initial_cluster: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Start `n` members and wait until they agree on a leader and serve a write.
    /// Panics (with the fix) when etcd is not installed.
    pub async fn start(n: usize) -> Self {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} not found: the etcd tests need a real etcd server; \
             install it with `apt-get install -y etcd-server`"
        );
        let dir = tempfile::Builder::new()
            .prefix("trellis-etcd-")
            .tempdir()
            .expect("temporary directory");
        let ports = free_ports(2 * n);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!("trellis-test-{}-{nanos}", std::process::id());
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    data_dir: dir.path().join(format!("{name}.etcd")),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            token,
            initial_cluster,
            members,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// The client URL of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Kill member `i` with SIGKILL (its own PID only) and reap it.
    pub fn kill9(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut child = m.child.take().expect("member is not running");
        child.kill().expect("kill -9 etcd member");
        child.wait().expect("reap etcd member");
    }

    /// Start member `i` again on its data directory and wait until it has a leader and
    /// has caught up with it.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} still runs");
        self.spawn(i);
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let caught_up = match (self.status(i).await, self.leader_status().await) {
                (Some(me), Some((_, leader))) => {
                    me.leader() != 0
                        && me.raft_applied_index() >= leader.raft_index().saturating_sub(1)
                }
                _ => false,
            };
            if caught_up {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "restarted member {i} did not catch up within {HEALTHY_WITHIN:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status member `i` reports about itself (None: it does not answer within 1 s).
    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        self.members[i].child.as_ref()?;
        let call = async {
            let mut c = member_client(&self.endpoint(i)).await?;
            c.status().await.ok()
        };
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .ok()
            .flatten()
    }

    /// The member every running member names as leader, with its status; None while
    /// they do not agree or the leader does not answer.
    pub async fn leader_status(&self) -> Option<(usize, StatusResponse)> {
        let mut leader = None;
        let mut by_id = Vec::new();
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let s = self.status(i).await?;
            if s.leader() == 0 || leader.is_some_and(|l| l != s.leader()) {
                return None;
            }
            leader = Some(s.leader());
            by_id.push((i, s));
        }
        let leader = leader?;
        by_id
            .into_iter()
            .find(|(_, s)| s.header().map(|h| h.member_id()) == Some(leader))
    }

    /// The index of the leader member (panics when there is none within 30 s).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some((i, _)) = self.leader_status().await {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Hand leadership to member `to` (no-op if it leads already).
    pub async fn move_leader(&self, to: usize) {
        let from = self.leader().await;
        if from == to {
            return;
        }
        let target = self
            .status(to)
            .await
            .and_then(|s| s.header().map(|h| h.member_id()))
            .expect("target member status");
        let mut c = member_client(&self.endpoint(from))
            .await
            .expect("client to the leader");
        c.move_leader(target).await.expect("move leader");
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while self.leader().await != to {
            assert!(
                Instant::now() < deadline,
                "leadership did not move to m{to}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Watch streams member `i` serves (its `etcd_debugging_mvcc_watch_stream_total`).
    pub async fn watch_streams(&self, i: usize) -> u64 {
        let body = http_get(self.members[i].client_port, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watch_stream_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Wait until every running member agrees on a leader and a write then a
    /// linearizable read through every running member succeed.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let mut last = String::from("no leader agreed on");
        loop {
            if self.leader_status().await.is_some() {
                match self.probe_every_member().await {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy within {HEALTHY_WITHIN:?}: {last}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn probe_every_member(&self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let probe = async {
                let mut c = member_client(&self.endpoint(i)).await.ok_or("no client")?;
                let key = format!("/health/{}", self.members[i].name);
                c.put(key.as_str(), "ok", None)
                    .await
                    .map_err(|e| e.to_string())?;
                c.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            };
            tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .map_err(|_| format!("m{i}: probe timed out"))?
                .map_err(|e| format!("m{i}: {e}"))?;
        }
        Ok(())
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!("---- {} ({}) ----\n", m.name, m.log.display()));
            out.push_str(&tail(&m.log, 40));
        }
        out
    }

    /// Panic with the logs when a member that should run has exited.
    fn assert_running(&self) {
        for m in &self.members {
            if let Some(child) = &m.child {
                assert!(
                    process_alive(child.id()),
                    "etcd member {} exited\n{}",
                    m.name,
                    self.logs()
                );
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("member log file");
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(ETCD);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. The member dies with the thread that
        // started it (the test's), so a test process killed before its destructors run
        // leaves no etcd behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start etcd");
        self.members[i].child = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd member logs:\n{}", self.logs());
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A client to one member only, or None when it cannot be built.
pub async fn member_client(endpoint: &str) -> Option<Client> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    Client::connect([endpoint], Some(opts)).await.ok()
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
/// `n` distinct ports free now, below the kernel's ephemeral range: a port etcd will bind
/// a moment later must not be handed meanwhile to some outgoing connection (a port from
/// `bind(0)` is in that range, and was: "bind: address already in use").
fn free_ports(n: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    let mut seed = std::process::id() as u64
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut out = Vec::new();
    while out.len() < n {
        // xorshift: a different sequence per run and per call.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = from + (seed % u64::from(to - from)) as u16;
        if !out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

/// Whether `pid` runs (exists and is not a zombie), from `/proc/<pid>/stat`.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::from("(no log)\n");
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let s = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = s.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// GET `path` from 127.0.0.1:`port` over plain HTTP/1.0 (etcd's metrics).
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}
