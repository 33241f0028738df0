//! Fixtures shared by the integration tests: prerequisites that fail loudly, the
//! binaries cargo built, and labs with agents running.
#![allow(dead_code)]

pub mod cluster;
pub mod ingress;

use std::path::{Path, PathBuf};
use std::process::Output;

use trellis_lab::Lab;

/// Fail (not skip) when the machine lacks what the test needs: CI runs as root and
/// installs the packages, so a missing one is a broken setup, not a reason to pass.
pub fn require(tools: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (network namespaces); run the README's test command as root"
    );
    for t in tools {
        let found = if t.starts_with('/') {
            Path::new(t).exists()
        } else {
            std::env::var("PATH")
                .unwrap_or_default()
                .split(':')
                .any(|d| Path::new(d).join(t).exists())
        };
        assert!(
            found,
            "{t} is missing: install the packages listed in the README's test command"
        );
    }
}

/// The `trellis` binary.
pub fn trellis() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trellis"))
}

/// The `trellis-cni` binary.
pub fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trellis-cni"))
}

/// A lab of `nodes` nodes with an agent running on each.
pub fn lab_with_agents(nodes: usize) -> Lab {
    require(&["ip", "nft", "ping"]);
    let mut lab = Lab::new(nodes).expect("create lab");
    for n in 0..nodes {
        lab.start_agent(&trellis(), n, &[]).expect("start agent");
    }
    lab
}

/// Parse a plugin's stdout as JSON (panics with the output on failure).
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout={} stderr={}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The CNI environment for one container on `netns`.
pub fn cni_env<'a>(cmd: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
    ]
}

/// Names of the links in a namespace.
pub fn links(lab: &Lab, netns: &str) -> Vec<String> {
    let out = lab
        .exec(netns, &["ip", "-o", "link", "show"])
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Host veths (trl + 12 hex) in a node namespace.
pub fn host_veths(lab: &Lab, netns: &str) -> Vec<String> {
    links(lab, netns)
        .into_iter()
        .filter(|n| n.starts_with("trl") && n.len() == 15)
        .collect()
}

/// `nft list table ip trellis` in a namespace.
pub fn nft_table(lab: &Lab, netns: &str) -> String {
    let out = lab
        .exec(netns, &["nft", "-a", "list", "table", "ip", "trellis"])
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// How many addresses node `node`'s agent holds, asked through the plugin's own client.
pub fn agent_reserved(lab: &Lab, node: usize) -> u32 {
    use trellis_api::agent::{Op, Response};
    let socket = lab.agent_paths(node).socket;
    match trellis_cni::agent_client::call(&socket.display().to_string(), None, Op::Status) {
        Ok(Response::Status(s)) => s.reserved,
        Ok(other) => panic!("unexpected status answer: {other:?}"),
        Err(e) => panic!("agent status: {:?}", trellis_cni::error::CniError::from(e)),
    }
}

/// Send one raw protocol line to node `node`'s agent (for malformed or future requests
/// the typed client cannot produce) and return the decoded answer.
pub fn agent_raw(lab: &Lab, node: usize, line: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(lab.agent_paths(node).socket)
        .expect("connect agent");
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut out = String::new();
    BufReader::new(&s).read_line(&mut out).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Number of port-mapping elements (both maps) in a node namespace's `ip trellis` table.
pub fn hostport_elements(lab: &Lab, netns: &str) -> usize {
    ["hostport_any", "hostport_ip"]
        .iter()
        .map(|m| {
            let out = lab
                .exec(netns, &["nft", "-j", "list", "map", "ip", "trellis", m])
                .expect("nft list map");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft JSON");
            v["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["map"]["elem"].as_array())
                .map(|e| e.len())
                .sum::<usize>()
        })
        .sum()
}

/// PID of the process the lab recorded as `what` (e.g. `agent n1`).
pub fn pid_of(lab: &Lab, what: &str) -> u32 {
    lab.state
        .procs
        .iter()
        .find(|p| p.what == what)
        .unwrap_or_else(|| panic!("lab runs no {what}"))
        .pid
}

/// `trellis policy check ARGS` run from the lab's underlay: whether it allowed, its
/// standard output and its standard error.
pub fn policy_check(lab: &Lab, trellis: &Path, args: &[&str]) -> (bool, String, String) {
    let out = lab
        .command(&lab.state.underlay, trellis)
        .args(["policy", "check"])
        .args(args)
        .env("TRELLIS_CONFIG", lab.client_config())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (15 s) until `f()` returns text containing `want`.
pub fn wait_for_text(mut f: impl FnMut() -> String, want: &str) -> bool {
    trellis_lab::wait_for(std::time::Duration::from_secs(15), || f().contains(want))
}
