//! `trellis lab pod add|del`: pods in a lab made by `trellis lab up`, declared as Pod
//! objects (namespace, labels, named ports) so policies can be tried on them. Each pod
//! serves HTTP (busybox httpd, answering its name) on every TCP port it declares, or
//! on 80 when it declares none.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use trellis_api::objects::{
    ContainerPort, ObjectMeta, Pod, PodSpec, PolicyProtocol, DEFAULT_NAMESPACE,
};
use trellis_lab::Lab;

/// `trellis lab pod ...`.
#[derive(clap::Subcommand, Debug)]
pub enum LabPodCmd {
    /// Add a pod on a node: a Pod object, a namespace plumbed by trellis-cni, and HTTP
    /// servers on its TCP ports.
    Add {
        /// The pod's name (a DNS label).
        name: String,
        /// The node (`n1`, `n2`, ...).
        #[arg(long)]
        node: String,
        /// The pod's namespace.
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// Labels: `k=v,k2=v2`.
        #[arg(long, default_value = "")]
        labels: String,
        /// Named ports: `name:port/proto,...` (proto tcp, udp or sctp; default tcp).
        #[arg(long, default_value = "")]
        ports: String,
        /// The lab.
        #[arg(long, default_value = "demo")]
        lab: String,
    },
    /// Remove a pod added by `add` (CNI DEL, its servers, its namespace, its Pod object).
    Del {
        /// The pod's name (as given to `add`, or `n1-NAME`).
        name: String,
        /// The lab.
        #[arg(long, default_value = "demo")]
        lab: String,
    },
}

/// The Pod object `add` declares; errors name the flag.
pub fn pod_object(name: &str, namespace: &str, labels: &str, ports: &str) -> anyhow::Result<Pod> {
    let mut pod = Pod::new(ObjectMeta::namespaced(namespace, name), PodSpec::default());
    for kv in labels.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--labels {kv:?}: expected key=value"))?;
        pod.metadata.labels.insert(k.to_string(), v.to_string());
    }
    for p in ports.split(',').filter(|s| !s.is_empty()) {
        let (pname, rest) = p
            .split_once(':')
            .ok_or_else(|| anyhow!("--ports {p:?}: expected name:port[/proto]"))?;
        let (num, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
        let container_port: u16 = num
            .parse()
            .map_err(|_| anyhow!("--ports {p:?}: port {num:?} is not a number from 1 to 65535"))?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => PolicyProtocol::Tcp,
            "udp" => PolicyProtocol::Udp,
            "sctp" => PolicyProtocol::Sctp,
            other => bail!("--ports {p:?}: protocol {other:?} is not tcp, udp or sctp"),
        };
        pod.spec.ports.push(ContainerPort {
            name: pname.to_string(),
            container_port,
            protocol,
        });
    }
    pod.validate().map_err(|e| {
        let flag = if e.field.starts_with("spec.ports") {
            "--ports"
        } else if e.field.starts_with("metadata.labels") {
            "--labels"
        } else if e.field.starts_with("metadata.namespace") {
            "--namespace"
        } else {
            "NAME"
        };
        anyhow!("{flag}: {e}")
    })?;
    Ok(pod)
}

/// Run a `lab pod` subcommand.
pub fn run(cmd: LabPodCmd) -> anyhow::Result<ExitCode> {
    let trellis = std::env::current_exe()?;
    let plugin = crate::lab_cmd::sibling("trellis-cni")?;
    match cmd {
        LabPodCmd::Add {
            name,
            node,
            namespace,
            labels,
            ports,
            lab,
        } => {
            // Everything is checked before anything is made.
            let pod = pod_object(&name, &namespace, &labels, &ports)?;
            let mut lab = Lab::load(&lab)?;
            let n = lab
                .state
                .nodes
                .iter()
                .position(|x| x.name == node)
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        lab.state.nodes.iter().map(|x| x.name.as_str()).collect();
                    anyhow!(
                        "--node {node:?}: lab {} has nodes {}",
                        lab.state.name,
                        names.join(", ")
                    )
                })?;
            let short = format!("{node}-{name}");
            if lab.state.pods.iter().any(|p| p.name == short) {
                bail!("lab {} already has a pod {short}", lab.state.name);
            }
            let manifest = String::from_utf8(pod.to_json())?;
            lab.apply(&trellis, &manifest).context("declare the Pod")?;
            let added = (|| -> anyhow::Result<std::net::Ipv4Addr> {
                let lp = lab.add_pod(n, &name)?;
                let ip = lab.cni_add_pod_with(
                    &plugin,
                    &lp.netns,
                    &format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
                )?;
                let www = lab.dir().join(format!("www-{short}"));
                std::fs::create_dir_all(&www)?;
                std::fs::write(www.join("index.html"), format!("{namespace}/{name}\n"))?;
                let mut tcp: Vec<u16> = pod
                    .spec
                    .ports
                    .iter()
                    .filter(|p| p.protocol == PolicyProtocol::Tcp)
                    .map(|p| p.container_port)
                    .collect();
                if pod.spec.ports.is_empty() {
                    tcp.push(80);
                }
                for port in tcp {
                    let mut httpd = std::process::Command::new("busybox");
                    httpd
                        .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
                        .arg(&www);
                    lab.spawn(&lp.netns, &format!("httpd {short} {port}"), httpd)?;
                }
                lab.state
                    .notes
                    .insert(format!("pod {short}"), format!("{namespace}/{name}"));
                lab.save()?;
                Ok(ip)
            })();
            match added {
                Ok(ip) => {
                    println!("pod {namespace}/{name} on {node}: {ip} (lab target {short})");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    let _ = remove(&mut lab, &trellis, &plugin, &short, &namespace, &name);
                    Err(e.context(format!("add pod {short}")))
                }
            }
        }
        LabPodCmd::Del { name, lab } => {
            let mut lab = Lab::load(&lab)?;
            let short = if lab.state.pods.iter().any(|p| p.name == name) {
                name.clone()
            } else {
                let found: Vec<String> = lab
                    .state
                    .pods
                    .iter()
                    .filter(|p| p.name.split_once('-').map(|x| x.1) == Some(name.as_str()))
                    .map(|p| p.name.clone())
                    .collect();
                match found.as_slice() {
                    [one] => one.clone(),
                    [] => bail!("lab {} has no pod {name}", lab.state.name),
                    _ => bail!(
                        "{name} is on several nodes: say which ({})",
                        found.join(", ")
                    ),
                }
            };
            let declared = lab.state.notes.get(&format!("pod {short}")).cloned();
            let (namespace, pod_name) = declared
                .as_deref()
                .and_then(|d| d.split_once('/'))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap_or_default();
            remove(&mut lab, &trellis, &plugin, &short, &namespace, &pod_name)?;
            println!("pod {short} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// CNI DEL, stop its servers, remove its namespace and its Pod object; every step is
/// tried, the errors collected.
fn remove(
    lab: &mut Lab,
    trellis: &Path,
    plugin: &Path,
    short: &str,
    namespace: &str,
    name: &str,
) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Some(p) = lab.state.pods.iter().find(|p| p.name == short).cloned() {
        let ns_path = trellis_lab::netns_path(&p.netns).display().to_string();
        let config = lab.cni_config(p.node, "1.1.0");
        match lab.cni(
            plugin,
            p.node,
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", &p.netns),
                ("CNI_NETNS", &ns_path),
                ("CNI_IFNAME", "eth0"),
            ],
            &config,
        ) {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!("CNI DEL: {}", String::from_utf8_lossy(&o.stdout))),
            Err(e) => errors.push(format!("CNI DEL: {e}")),
        }
        let pids: Vec<u32> = lab
            .state
            .procs
            .iter()
            .filter(|x| x.netns == p.netns)
            .map(|x| x.pid)
            .collect();
        for pid in pids {
            lab.stop(pid, false);
        }
        if let Err(e) = lab.remove_pod_netns(&p.netns) {
            errors.push(format!("remove namespace: {e}"));
        }
    }
    if !name.is_empty() {
        if let Err(e) = lab.cli(trellis, &["delete", "pod", name, "-n", namespace]) {
            errors.push(format!("delete Pod object: {e}"));
        }
    }
    lab.state.notes.remove(&format!("pod {short}"));
    if let Err(e) = lab.save() {
        errors.push(format!("save lab state: {e}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_valid_pod_or_an_error_naming_the_flag() {
        let p = pod_object("web", "x", "app=web,tier=a", "http:80,dns:53/udp").unwrap();
        assert_eq!(p.metadata.labels.len(), 2);
        assert_eq!(p.spec.named_port("dns", PolicyProtocol::Udp), Some(53));
        let e = pod_object("web", "x", "app", "").unwrap_err().to_string();
        assert!(e.contains("--labels"), "{e}");
        let e = pod_object("web", "x", "bad key=1", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--labels") && e.contains("metadata.labels"),
            "{e}"
        );
        let e = pod_object("web", "x", "", "HTTP:80")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--ports") && e.contains("spec.ports[0].name"),
            "{e}"
        );
        let e = pod_object("web", "x", "", "http:99999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ports"), "{e}");
        let e = pod_object("web", "x", "", "http:80/icmp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("icmp"), "{e}");
        let e = pod_object("Web", "x", "", "").unwrap_err().to_string();
        assert!(e.contains("NAME"), "{e}");
        let e = pod_object("web", "X", "", "").unwrap_err().to_string();
        assert!(e.contains("--namespace"), "{e}");
    }
}
