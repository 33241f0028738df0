//! Running Trellis in a lab: an agent per node, CNI invocations against pod namespaces.
//! Binaries are passed in by path so tests use the ones cargo just built.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{netns_path, wait_for, Lab, LabError, Result};

/// The pod subnet the lab gives node `i` (0-based): `10.244.<i+1>.0/24`.
pub fn pod_cidr(node: usize) -> String {
    format!("10.244.{}.0/24", node + 1)
}

/// The cluster CIDR covering every node's pod subnet.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Paths of one node's agent.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    /// The CNI socket.
    pub socket: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
}

impl Lab {
    /// Where node `node`'s agent keeps its socket and state.
    pub fn agent_paths(&self, node: usize) -> AgentPaths {
        let d = self.dir().join(&self.state.nodes[node].name);
        AgentPaths {
            socket: d.join("agent.sock"),
            state_dir: d.join("state"),
        }
    }

    /// Start `trellis agent` (single-node mode) on node `node` and wait until its socket
    /// answers. Extra arguments are appended. Returns the PID.
    pub fn start_agent(&mut self, trellis: &Path, node: usize, extra: &[&str]) -> Result<u32> {
        let p = self.agent_paths(node);
        std::fs::create_dir_all(&p.state_dir).map_err(|e| LabError::Io(e.to_string()))?;
        let mut c = Command::new(trellis);
        c.arg("agent")
            .args(["--pod-cidr", &pod_cidr(node)])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .arg("--state-dir")
            .arg(&p.state_dir)
            .arg("--socket")
            .arg(&p.socket)
            .args(extra);
        let netns = self.state.nodes[node].netns.clone();
        let what = format!("agent {}", self.state.nodes[node].name);
        let pid = self.spawn(&netns, &what, c)?;
        let sock = p.socket.clone();
        if !wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }) {
            let log =
                std::fs::read_to_string(self.dir().join(format!("{}.log", what.replace(' ', "-"))))
                    .unwrap_or_default();
            return Err(LabError::Io(format!("{what} did not start:\n{log}")));
        }
        Ok(pid)
    }

    /// The network config node `node`'s plugin should get.
    pub fn cni_config(&self, node: usize, version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "trellis",
            "type": "trellis-cni",
            "agentSocket": self.agent_paths(node).socket,
        })
    }

    /// Invoke a CNI plugin binary inside node `node`'s namespace.
    pub fn cni(
        &self,
        plugin: &Path,
        node: usize,
        env: &[(&str, &str)],
        config: &serde_json::Value,
    ) -> Result<Output> {
        // `nsenter --net`, not `ip netns exec`: the plugin must share the host's mount
        // namespace, like a runtime's plugin, to see a tenant world the agent
        // bind-mounts while this plugin runs.
        let mut c = Command::new("nsenter");
        c.arg(format!(
            "--net={}",
            crate::netns_path(&self.state.nodes[node].netns).display()
        ))
        .arg("--")
        .arg(plugin);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| LabError::Io(format!("{plugin:?}: {e}")))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(config.to_string().as_bytes())
            .map_err(|e| LabError::Io(e.to_string()))?;
        child
            .wait_with_output()
            .map_err(|e| LabError::Io(e.to_string()))
    }

    /// ADD a pod namespace to the network with `trellis-cni`; returns its address.
    pub fn cni_add_pod(&mut self, plugin: &Path, pod_netns: &str) -> Result<Ipv4Addr> {
        self.cni_add_pod_with(plugin, pod_netns, "")
    }

    /// [`Lab::cni_add_pod`] with `CNI_ARGS` (e.g. `LABELS=app=web`).
    pub fn cni_add_pod_with(
        &mut self,
        plugin: &Path,
        pod_netns: &str,
        cni_args: &str,
    ) -> Result<Ipv4Addr> {
        self.cni_add_pod_to(plugin, pod_netns, cni_args, None)
    }

    /// [`Lab::cni_add_pod_with`] to the Trellis Network `network` (the plugin
    /// configuration's `network` key; `None`: the agent's first).
    pub fn cni_add_pod_to(
        &mut self,
        plugin: &Path,
        pod_netns: &str,
        cni_args: &str,
        network: Option<&str>,
    ) -> Result<Ipv4Addr> {
        let pod_idx = self
            .state
            .pods
            .iter()
            .position(|p| p.netns == pod_netns)
            .ok_or_else(|| LabError::Invalid(format!("no pod {pod_netns}")))?;
        let node = self.state.pods[pod_idx].node;
        let ns = netns_path(pod_netns).display().to_string();
        let mut config = self.cni_config(node, "1.1.0");
        if let Some(n) = network {
            config["network"] = n.into();
        }
        let out = self.cni(
            plugin,
            node,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", pod_netns),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", cni_args),
            ],
            &config,
        )?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("trellis-cni ADD {pod_netns}"),
                stderr: String::from_utf8_lossy(&out.stdout).to_string(),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| LabError::Io(format!("ADD result: {e}")))?;
        let ip: Ipv4Addr = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| LabError::Io(format!("ADD result has no address: {v}")))?;
        self.state.pods[pod_idx].ip = Some(ip);
        self.save()?;
        Ok(ip)
    }

    /// `ping -c 1` from a namespace; true when answered within a second.
    pub fn ping(&self, from_netns: &str, to: Ipv4Addr) -> bool {
        self.exec_any(from_netns, &["ping", "-c", "1", "-W", "1", &to.to_string()])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}
