//! A real runtime drives `trellis-cni`: podman 4.3 (CNI backend, runc, busybox rootfs)
//! runs two containers on a node of a lab. Each gets an address from the agent's subnet,
//! they ping each other, a port published with `-p` answers from the underlay through
//! the agent's nftables port mapping, and after `podman rm -f` nothing is left behind:
//! no host veth, no address reservation, no port-mapping element.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{host_veths, lab_with_agents, plugin};
use trellis_lab::{netns_path, wait_for};

const PAGE: &str = "hello-from-podman-on-trellis";

/// Runs podman inside the node namespace with all of its state under one directory.
/// Dropping it removes every container and kills the conmons it saw, by PID.
struct Podman {
    netns: PathBuf,
    dir: PathBuf,
    conmons: Vec<u32>,
}

impl Podman {
    fn new(netns: PathBuf, dir: PathBuf, socket: &Path) -> Podman {
        let (cni_bin, cni_conf) = (dir.join("cni-bin"), dir.join("cni-conf"));
        for d in [&cni_bin, &cni_conf, &dir.join("tmp")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(plugin(), cni_bin.join("trellis-cni")).unwrap();
        for e in std::fs::read_dir("/usr/lib/cni").unwrap().flatten() {
            std::os::unix::fs::symlink(e.path(), cni_bin.join(e.file_name())).unwrap();
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": "trellisnet",
            "plugins": [{"type": "trellis-cni", "agentSocket": socket,
                         "capabilities": {"portMappings": true, "ips": true, "mac": true}}],
        });
        std::fs::write(cni_conf.join("trellisnet.conflist"), conflist.to_string()).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/root\"\n"
            ),
        )
        .unwrap();
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{d}/tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{b}"]
network_config_dir = "{c}"
default_network = "trellisnet"
"#,
            b = cni_bin.display(),
            c = cni_conf.display()
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        Podman {
            netns,
            dir,
            conmons: Vec::new(),
        }
    }

    fn run_any(&self, args: &[&str]) -> Output {
        let d = &self.dir;
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    fn run(&self, args: &[&str]) -> String {
        let o = self.run_any(args);
        assert!(o.status.success(), "podman {args:?} failed: {}", out(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `podman exec` of a busybox command line.
    fn exec(&self, ctr: &str, cmd: &str) -> Output {
        let mut args = vec!["exec", ctr, "/bin/busybox"];
        args.extend(cmd.split_whitespace());
        self.run_any(&args)
    }

    /// `podman run -d`, remembering the container's conmon; returns its address.
    fn start(&mut self, name: &str, extra: &[&str], cmd: &[&str]) -> Ipv4Addr {
        let rootfs = self.dir.join("rootfs").display().to_string();
        let mut args = vec!["run", "-d", "--name", name, "--network", "trellisnet"];
        args.extend(extra);
        args.extend(["--rootfs", &rootfs]);
        args.extend(cmd);
        self.run(&args);
        let pid = self.run(&["inspect", "-f", "{{.State.ConmonPid}}", name]);
        self.conmons.push(pid.parse().expect("conmon pid"));
        let f = "{{.NetworkSettings.Networks.trellisnet.IPAddress}}";
        let ip = self.run(&["inspect", "-f", f, name]);
        ip.parse()
            .unwrap_or_else(|_| panic!("{name} has no address: {ip:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let out = self.run_any(&["rm", "-f", "-a", "-t", "0"]);
        if !out.status.success() {
            eprintln!("podman rm -a: {}", String::from_utf8_lossy(&out.stderr));
        }
        for pid in &self.conmons {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "conmon" {
                // SAFETY: kill(2) on a conmon this test started (checked by name).
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn out(o: &Output) -> String {
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    format!("{so}{se}")
}

fn busybox_rootfs(root: &Path) {
    for d in [
        "bin", "proc", "sys", "dev", "tmp", "etc", "root", "run", "www",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for app in [
        "sh", "ping", "nc", "wget", "httpd", "sleep", "true", "ip", "cat", "echo", "ls",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("www/index.html"), PAGE).unwrap();
}

#[test]
fn podman_containers_on_trellis() {
    common::require(&["podman", "runc", "nsenter", "ip", "nft", "/bin/busybox"]);
    let lab = lab_with_agents(1);
    let node = lab.state.nodes[0].netns.clone();
    let socket = lab.agent_paths(0).socket;
    let subnet: ipnet::Ipv4Net = trellis_lab::cni::pod_cidr(0).parse().unwrap();
    let mut podman = Podman::new(netns_path(&node), lab.dir().join("podman"), &socket);
    busybox_rootfs(&lab.dir().join("podman/rootfs"));

    let sleep = ["/bin/busybox", "sleep", "300"];
    let a = podman.start("trl-a", &[], &sleep);
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"];
    let b = podman.start("trl-b", &["-p", "18080:80"], &httpd);
    assert!(
        subnet.contains(&a) && subnet.contains(&b) && a != b,
        "{a} {b} not in {subnet}"
    );
    let in_a = podman.exec("trl-a", "ip -4 -o addr show eth0");
    assert!(
        in_a.status.success() && out(&in_a).contains(&format!("{a}/")),
        "{}",
        out(&in_a)
    );
    assert_eq!(host_veths(&lab, &node).len(), 2);
    let ping = podman.exec("trl-a", &format!("ping -c 2 -W 2 {b}"));
    assert!(
        ping.status.success(),
        "trl-a cannot ping trl-b: {}",
        out(&ping)
    );

    let url = format!("http://{}:18080/", lab.state.nodes[0].addr);
    let underlay = lab.state.underlay.clone();
    let mut last = String::new();
    let served = wait_for(Duration::from_secs(10), || {
        let o = lab
            .exec_any(
                &underlay,
                &["timeout", "2", "/bin/busybox", "wget", "-q", "-O-", &url],
            )
            .unwrap();
        last = out(&o);
        last.contains(PAGE)
    });
    assert!(
        served,
        "published port {url} did not serve the page: {last}"
    );

    podman.run(&["rm", "-f", "-t", "0", "trl-a", "trl-b"]);
    assert_eq!(podman.run(&["ps", "-a", "-q"]), "", "containers left");
    assert!(
        wait_for(Duration::from_secs(5), || host_veths(&lab, &node)
            .is_empty()),
        "host veths left: {:?}",
        host_veths(&lab, &node)
    );
    assert_eq!(
        common::agent_reserved(&lab, 0),
        0,
        "agent still holds reservations"
    );
    assert_eq!(
        common::hostport_elements(&lab, &node),
        0,
        "port mappings left"
    );
    drop(podman);
}
