//! A lab as a cluster: the Trellis server in the underlay namespace, a Network, and an
//! agent in cluster mode on each node. Binaries are passed in by path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{wait_for, Lab, LabError, Result, UNDERLAY_PREFIX};

/// Where the lab's server listens (inside the underlay namespace).
pub fn server_url() -> String {
    format!("https://{UNDERLAY_PREFIX}.1:6443")
}

/// Timings of a lab cluster.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Server: seconds without heartbeat before a node is not ready.
    pub node_lease_ttl: u64,
    /// Server: seconds after that before a node's subnet may be reused.
    pub subnet_grace: u64,
    /// Agents: heartbeat period (seconds).
    pub heartbeat: f64,
    /// Agents: fabric drift check period (seconds).
    pub resync: f64,
    /// Agents: further arguments (e.g. `--dns-upstream 192.168.77.1`).
    pub agent_args: Vec<String>,
}

impl Default for Timing {
    /// Short enough for tests to see node loss within seconds.
    fn default() -> Self {
        Timing {
            node_lease_ttl: 3,
            subnet_grace: 120,
            heartbeat: 1.0,
            resync: 5.0,
            agent_args: Vec::new(),
        }
    }
}

impl Lab {
    /// The server's directory (CA, tokens, store).
    pub fn server_dir(&self) -> PathBuf {
        self.dir().join("server")
    }

    /// The admin client config for the lab's server (use with `TRELLIS_CONFIG` inside
    /// the lab's namespaces).
    pub fn client_config(&self) -> PathBuf {
        self.dir().join("admin.json")
    }

    /// Initialise and start `trellis server` in the underlay namespace; waits until it
    /// answers. Returns its PID.
    pub fn start_server(&mut self, trellis: &Path, t: &Timing) -> Result<u32> {
        let dir = self.server_dir();
        let out = Command::new(trellis)
            .args(["server", "init", "--san", &format!("{UNDERLAY_PREFIX}.1")])
            .arg("--dir")
            .arg(&dir)
            .output()
            .map_err(|e| LabError::Io(format!("trellis server init: {e}")))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: "trellis server init".into(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        let cfg = serde_json::json!({
            "server": server_url(),
            "ca": dir.join("ca.pem"),
            "tokenFile": dir.join("admin.token"),
        });
        std::fs::write(self.client_config(), cfg.to_string())
            .map_err(|e| LabError::Io(format!("write client config: {e}")))?;
        self.run_server(trellis, t)
    }

    /// Run `trellis server run` on the server directory [`Lab::start_server`] made (a
    /// restart keeps its CA, tokens and store); returns its pid once it answers.
    pub fn run_server(&mut self, trellis: &Path, t: &Timing) -> Result<u32> {
        let dir = self.server_dir();
        let mut c = Command::new(trellis);
        c.args([
            "server",
            "run",
            "--listen",
            &format!("{UNDERLAY_PREFIX}.1:6443"),
        ])
        .arg("--dir")
        .arg(&dir)
        .args(["--node-lease-ttl", &t.node_lease_ttl.to_string()])
        .args(["--subnet-grace", &t.subnet_grace.to_string()]);
        let u = self.state.underlay.clone();
        let pid = self.spawn(&u, "server", c)?;
        self.state.notes.insert("server".into(), server_url());
        self.save()?;
        if !wait_for(Duration::from_secs(15), || {
            self.cli(trellis, &["get", "nodes"]).is_ok()
        }) {
            let log = std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default();
            return Err(LabError::Io(format!("server did not start:\n{log}")));
        }
        Ok(pid)
    }

    /// Run the `trellis` CLI as admin against the lab's server (from the underlay);
    /// returns stdout. `stdin` feeds `apply -f -`.
    pub fn cli_with_input(&self, trellis: &Path, args: &[&str], stdin: &str) -> Result<String> {
        let mut c = self.command(&self.state.underlay, trellis);
        c.args(args)
            .env("TRELLIS_CONFIG", self.client_config())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| LabError::Io(format!("trellis {args:?}: {e}")))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.as_bytes())
            .map_err(|e| LabError::Io(e.to_string()))?;
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::Io(e.to_string()))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("trellis {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Lab::cli_with_input`] without input.
    pub fn cli(&self, trellis: &Path, args: &[&str]) -> Result<String> {
        self.cli_with_input(trellis, args, "")
    }

    /// Create or update a Network from a manifest (`trellis apply -f -`).
    pub fn apply(&self, trellis: &Path, manifest: &str) -> Result<String> {
        self.cli_with_input(trellis, &["apply", "-f", "-"], manifest)
    }

    /// Prepare node `node`'s agent (state directory, node token, no stale socket) and
    /// return the `trellis agent` cluster-mode command [`Lab::start_cluster_agent`] runs,
    /// without starting it (for callers that time the start themselves).
    pub fn cluster_agent_command(
        &self,
        trellis: &Path,
        node: usize,
        network: &str,
        t: &Timing,
    ) -> Result<Command> {
        let p = self.agent_paths(node);
        std::fs::create_dir_all(&p.state_dir).map_err(|e| LabError::Io(e.to_string()))?;
        let name = self.state.nodes[node].name.clone();
        let token_file = p.state_dir.join("node.token");
        if !token_file.exists() {
            let out = Command::new(trellis)
                .args(["server", "token", "--node", &name])
                .arg("--dir")
                .arg(self.server_dir())
                .output()
                .map_err(|e| LabError::Io(format!("trellis server token: {e}")))?;
            if !out.status.success() {
                return Err(LabError::Command {
                    cmd: "trellis server token".into(),
                    stderr: String::from_utf8_lossy(&out.stderr).into(),
                });
            }
            std::fs::write(&token_file, String::from_utf8_lossy(&out.stdout).trim())
                .map_err(|e| LabError::Io(e.to_string()))?;
        }
        let _ = std::fs::remove_file(&p.socket);
        let mut c = Command::new(trellis);
        c.arg("agent")
            .args([
                "--server",
                &server_url(),
                "--node",
                &name,
                "--network",
                network,
            ])
            .arg("--ca")
            .arg(self.server_dir().join("ca.pem"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--state-dir")
            .arg(&p.state_dir)
            .arg("--socket")
            .arg(&p.socket)
            .args(["--heartbeat", &t.heartbeat.to_string()])
            .args(["--resync", &t.resync.to_string()])
            .args(&t.agent_args);
        Ok(c)
    }

    /// Start `trellis agent` in cluster mode on node `node` for `network` and wait until
    /// it serves the CNI socket (it has joined and leased its subnet). Returns the PID.
    pub fn start_cluster_agent(
        &mut self,
        trellis: &Path,
        node: usize,
        network: &str,
        t: &Timing,
    ) -> Result<u32> {
        let c = self.cluster_agent_command(trellis, node, network, t)?;
        let p = self.agent_paths(node);
        let name = self.state.nodes[node].name.clone();
        let netns = self.state.nodes[node].netns.clone();
        let what = format!("agent {name}");
        let pid = self.spawn_sharing_mounts(&netns, &what, c)?;
        let sock = p.socket.clone();
        if !wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }) {
            let log =
                std::fs::read_to_string(self.dir().join(format!("{}.log", what.replace(' ', "-"))))
                    .unwrap_or_default();
            return Err(LabError::Io(format!("{what} did not join:\n{log}")));
        }
        Ok(pid)
    }
}

/// A Network manifest for the lab: `10.244.0.0/16`, /24 per node, the given backend.
/// An `l2` network is the underlay segment itself (`192.168.77.0/24`), /28 per node,
/// with the router and the first nodes' addresses (`.0/28`) reserved.
pub fn network_manifest(name: &str, backend: &str) -> String {
    let head = format!("apiVersion: trellis/v1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  backend: {backend}\n");
    if backend == "l2" {
        format!("{head}  cidr: {UNDERLAY_PREFIX}.0/24\n  nodeSubnetPrefix: 28\n  reserved: [\"{UNDERLAY_PREFIX}.0/28\"]\n")
    } else {
        format!("{head}  cidr: 10.244.0.0/16\n")
    }
}
