//! Cluster labs: a server, the `default` Network, agents in cluster mode, pods serving
//! HTTP.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{plugin, require, trellis};
use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::{wait_for, Lab};

/// A lab with a server, the `default` Network on `backend`, an agent on each of `nodes`
/// nodes (plus `remote` nodes on a second, routed segment), and `pods` pods per node,
/// each serving HTTP on port 8080 with its own name as the page.
pub fn cluster_lab(nodes: usize, remote: usize, backend: &str, pods: usize) -> Lab {
    cluster_lab_timed(nodes, remote, backend, pods, &Timing::default())
}

/// [`cluster_lab`] with other timings or agent arguments.
pub fn cluster_lab_timed(
    nodes: usize,
    remote: usize,
    backend: &str,
    pods: usize,
    timing: &Timing,
) -> Lab {
    require(&["ip", "nft", "ping", "busybox", "bridge"]);
    let t = trellis();
    let mut lab = Lab::new(nodes).expect("create lab");
    for _ in 0..remote {
        lab.join_remote_node().expect("remote node");
    }
    lab.start_server(&t, timing).expect("server");
    lab.apply(&t, &network_manifest("default", backend))
        .expect("network");
    for n in 0..lab.state.nodes.len() {
        lab.start_cluster_agent(&t, n, "default", timing)
            .expect("agent");
        serve_node(&mut lab, n);
    }
    for n in 0..lab.state.nodes.len() {
        for p in 1..=pods {
            add_pod(&mut lab, n, &format!("p{p}"));
        }
    }
    lab
}

/// The port on which every node's own web server answers with the node's name.
pub const NODE_HTTP_PORT: u16 = 8081;

/// Start node `n`'s web server (port [`NODE_HTTP_PORT`], page: the node's name), so
/// that pod -> node TCP can be checked.
pub fn serve_node(lab: &mut Lab, n: usize) {
    let node = lab.state.nodes[n].clone();
    let www = lab.dir().join(format!("www-node-{}", node.name));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), &node.name).unwrap();
    let mut httpd = std::process::Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", &NODE_HTTP_PORT.to_string(), "-h"])
        .arg(&www);
    lab.spawn(&node.netns, &format!("httpd {}", node.name), httpd)
        .unwrap();
}

/// ADD a pod on node `n` and start its web server; returns its address.
pub fn add_pod(lab: &mut Lab, n: usize, name: &str) -> Ipv4Addr {
    add_pod_with(lab, n, name, "")
}

/// [`add_pod`] with `CNI_ARGS` (e.g. `LABELS=app=web`). The web server answers `/` with
/// the pod's name and `/cgi-bin/ip` with the client address it sees.
pub fn add_pod_with(lab: &mut Lab, n: usize, name: &str, cni_args: &str) -> Ipv4Addr {
    add_pod_in(lab, n, name, cni_args, None)
}

/// [`add_pod_with`] to the Trellis Network `network` (`None`: the agent's first).
pub fn add_pod_in(
    lab: &mut Lab,
    n: usize,
    name: &str,
    cni_args: &str,
    network: Option<&str>,
) -> Ipv4Addr {
    let pod = lab.add_pod(n, name).unwrap();
    let ip = lab
        .cni_add_pod_to(&plugin(), &pod.netns, cni_args, network)
        .expect("ADD");
    let www = lab.dir().join(format!("www-{}", pod.name));
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    std::fs::write(www.join("index.html"), &pod.name).unwrap();
    let cgi = www.join("cgi-bin/ip");
    std::fs::write(
        &cgi,
        format!(
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"{} $REMOTE_ADDR\"\n",
            pod.name
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut httpd = std::process::Command::new("busybox");
    httpd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&www);
    lab.spawn(&pod.netns, &format!("httpd {}", pod.name), httpd)
        .unwrap();
    ip
}

/// Fetch a pod's page from `netns`.
pub fn http_get(lab: &Lab, netns: &str, ip: Ipv4Addr) -> String {
    http_get_port(lab, netns, ip, 8080)
}

/// Fetch `http://ip:port/` from `netns` (empty on failure).
pub fn http_get_port(lab: &Lab, netns: &str, ip: Ipv4Addr, port: u16) -> String {
    let url = format!("http://{ip}:{port}/");
    lab.exec_any(
        netns,
        &["timeout", "2", "busybox", "wget", "-q", "-O-", &url],
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_default()
}

/// Every (source, target) pair that fails: ICMP and TCP (HTTP) from every node and pod
/// to every pod and node (a pod's page or a node's, on [`NODE_HTTP_PORT`]; a node's
/// own address is skipped as its source). Empty when all works.
pub fn mesh_failures(lab: &Lab) -> Vec<String> {
    let sources: Vec<(String, String)> = lab
        .state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.netns.clone()))
        .chain(
            lab.state
                .pods
                .iter()
                .map(|p| (p.name.clone(), p.netns.clone())),
        )
        .collect();
    let pods: Vec<(String, Ipv4Addr)> = lab
        .state
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.ip.expect("pod has an address")))
        .collect();
    let nodes: Vec<(String, Ipv4Addr)> = lab
        .state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr))
        .collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = sources
            .iter()
            .map(|(src, ns)| {
                let (pods, nodes) = (&pods, &nodes);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (dst, ip) in pods.iter().chain(nodes.iter()) {
                        if !lab.ping(ns, *ip) {
                            bad.push(format!("ping {src} -> {dst} ({ip})"));
                        }
                    }
                    for (dst, ip) in pods {
                        let got = http_get(lab, ns, *ip);
                        if got.trim() != dst {
                            bad.push(format!("tcp {src} -> {dst} ({ip}): got {got:?}"));
                        }
                    }
                    for (dst, ip) in nodes.iter().filter(|(dst, _)| dst != src) {
                        let got = http_get_port(lab, ns, *ip, NODE_HTTP_PORT);
                        if got.trim() != dst {
                            bad.push(format!("tcp {src} -> node {dst} ({ip}): got {got:?}"));
                        }
                    }
                    bad
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Wait up to `t` for a full mesh; panic with the failures and the agent logs.
pub fn assert_mesh(lab: &Lab, t: Duration, what: &str) {
    let mut last = Vec::new();
    let ok = wait_for(t, || {
        last = mesh_failures(lab);
        last.is_empty()
    });
    if !ok {
        let logs: String = lab
            .state
            .nodes
            .iter()
            .map(|n| {
                let p = lab.dir().join(format!("agent-{}.log", n.name));
                let log = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- agent {} ---\n{}\n",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        panic!(
            "{what}: {} paths fail:\n{}\n{logs}",
            last.len(),
            last.join("\n")
        );
    }
}
