//! The ingress in a lab: `trellis ingress` started in a namespace with its own token,
//! and `trellis lab echo` backends in pods.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cluster::server_url;
use crate::{wait_for, Lab, LabError, Result};

/// A running ingress.
#[derive(Debug, Clone)]
pub struct LabIngress {
    /// Its PID.
    pub pid: u32,
    /// The namespace it runs in.
    pub netns: String,
    /// Plain HTTP address.
    pub http: SocketAddr,
    /// HTTPS address.
    pub https: Option<SocketAddr>,
}

impl Lab {
    /// An ingress token named `name` (made once, kept in the lab directory).
    pub fn ingress_token(&self, trellis: &Path, name: &str) -> Result<std::path::PathBuf> {
        let file = self.dir().join(format!("ingress-{name}.token"));
        if file.exists() {
            return Ok(file);
        }
        let out = Command::new(trellis)
            .args(["server", "token", "--ingress", name, "--dir"])
            .arg(self.server_dir())
            .output()
            .map_err(|e| LabError::Io(format!("trellis server token: {e}")))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: "trellis server token --ingress".into(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        std::fs::write(&file, String::from_utf8_lossy(&out.stdout).trim())
            .map_err(|e| LabError::Io(e.to_string()))?;
        Ok(file)
    }

    /// The `trellis ingress` command for an instance named `name` listening on `http`
    /// (and `https`), with `extra` arguments; not started.
    pub fn ingress_command(
        &self,
        trellis: &Path,
        name: &str,
        http: SocketAddr,
        https: Option<SocketAddr>,
        extra: &[&str],
    ) -> Result<Command> {
        let token = self.ingress_token(trellis, name)?;
        let mut c = Command::new(trellis);
        c.args(["ingress", "--server", &server_url(), "--ca"])
            .arg(self.server_dir().join("ca.pem"))
            .arg("--token-file")
            .arg(token)
            .args(["--listen-http", &http.to_string()]);
        if let Some(s) = https {
            c.args(["--listen-https", &s.to_string()]);
        }
        c.args(extra);
        Ok(c)
    }

    /// Start an ingress in `netns` and wait until its HTTP port accepts connections.
    pub fn start_ingress(
        &mut self,
        trellis: &Path,
        netns: &str,
        name: &str,
        http: SocketAddr,
        https: Option<SocketAddr>,
        extra: &[&str],
    ) -> Result<LabIngress> {
        let c = self.ingress_command(trellis, name, http, https, extra)?;
        let what = format!("ingress {name}");
        let pid = self.spawn(netns, &what, c)?;
        self.wait_port(netns, http, &what)?;
        Ok(LabIngress {
            pid,
            netns: netns.to_string(),
            http,
            https,
        })
    }

    /// The file whose existence makes echo pod `name`'s `/health` answer 503.
    pub fn echo_health_file(&self, name: &str) -> std::path::PathBuf {
        self.dir().join(format!("unhealthy-{name}"))
    }

    /// Wait until `addr` answers HTTP from inside `netns` (20 s).
    pub fn wait_port(&self, netns: &str, addr: SocketAddr, what: &str) -> Result<()> {
        let url = format!("http://{addr}/");
        if wait_for(Duration::from_secs(20), || {
            self.exec_any(
                netns,
                &["curl", "-s", "-o", "/dev/null", "--max-time", "1", &url],
            )
            .is_ok_and(|o| o.status.success())
        }) {
            return Ok(());
        }
        let log =
            std::fs::read_to_string(self.dir().join(format!("{}.log", what.replace(' ', "-"))))
                .unwrap_or_default();
        Err(LabError::Io(format!(
            "{what} does not listen on {addr}:\n{log}"
        )))
    }

    /// Run `trellis lab echo` (the ingress backend) in pod namespace `netns` on port
    /// 8080, answering as `name`; its `/health` fails while [`Lab::echo_health_file`]
    /// exists.
    pub fn start_echo(&mut self, trellis: &Path, netns: &str, name: &str) -> Result<u32> {
        let mut c = Command::new(trellis);
        c.args([
            "lab",
            "echo",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            name,
            "--health-file",
        ])
        .arg(self.echo_health_file(name));
        let what = format!("echo {name}");
        let pid = self.spawn(netns, &what, c)?;
        self.wait_port(netns, "127.0.0.1:8080".parse().expect("valid"), &what)?;
        Ok(pid)
    }
}

/// A self-signed ECDSA P-256 certificate for `hosts` made with openssl, written to
/// `dir/NAME.crt` and `dir/NAME.key`; returns their paths.
pub fn self_signed_cert(
    dir: &Path,
    name: &str,
    hosts: &[&str],
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let san = hosts
        .iter()
        .map(|h| format!("DNS:{h}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!(
            "/CN={}",
            hosts.first().copied().unwrap_or("localhost")
        ))
        .args(["-addext", &format!("subjectAltName={san}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .map_err(|e| LabError::Io(format!("openssl: {e}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: "openssl req -x509".into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok((crt, key))
}
