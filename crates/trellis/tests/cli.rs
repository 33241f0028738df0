//! The client commands (`trellis apply|get|delete|watch|config`) against a real
//! `trellis server run` on a loopback port (TLS, tokens from `trellis server init`):
//! create / unchanged / configured, the tables of every kind, JSON and YAML round trips,
//! local validation that sends nothing, server errors, NotFound, roles, and watches.
//!
//! Loopback only, nothing in the network configuration is touched; every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any one command or wait may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Network + Service (NodePort) + Pod.
const MANIFEST: &str = "\
apiVersion: trellis/v1
kind: Network
metadata:
  name: pods
spec:
  cidr: 10.244.0.0/16
---
apiVersion: trellis/v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
---
apiVersion: trellis/v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
";

/// A Node and an Endpoint, as a stream of two JSON objects.
const NODE_AND_ENDPOINT: &str = r#"
{"apiVersion": "trellis/v1", "kind": "Node",
 "metadata": {"name": "n1", "labels": {"role": "edge"}}, "spec": {"address": "192.0.2.10"}}
{"apiVersion": "trellis/v1", "kind": "Endpoint", "metadata": {"name": "web-1-eth0"},
 "spec": {"containerId": "c0ffee", "ifname": "eth0", "network": "pods", "node": "n1",
          "ip": "10.244.1.5"}}
"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trellis")
}

/// A child process, killed (by its PID) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished command left.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A running `trellis server` in a temporary directory, and a CLI config file for it.
struct Cluster {
    _server: Proc,
    dir: tempfile::TempDir,
    url: String,
    config: PathBuf,
}

impl Cluster {
    /// `trellis server init`, then `run` on a free loopback port until it accepts
    /// connections; `trellis config set` writes the admin config.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("server");
        let out = Command::new(bin())
            .args(["server", "init", "--dir"])
            .arg(&d)
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {out:?}");
        let (server, port) = start_server(&d);
        let url = format!("https://127.0.0.1:{port}");
        let c = Cluster {
            _server: server,
            config: dir.path().join("config.json"),
            dir,
            url,
        };
        let ca = d.join("ca.pem");
        let token_file = d.join("admin.token");
        let out = c.ok(&[
            "config",
            "set",
            "--server",
            &c.url,
            "--ca",
            ca.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
        ]);
        assert!(out.contains("wrote"), "{out}");
        c
    }

    fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// What the server logged (for failure messages).
    fn server_log(&self) -> String {
        std::fs::read_to_string(self.server_dir().join("server.log")).unwrap_or_default()
    }

    /// A file in the temporary directory.
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// `trellis ARGS` with the cluster's config (`TRELLIS_CONFIG`), `stdin` fed in.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("TRELLIS_CONFIG", &self.config)
            .env("HOME", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Run `trellis ARGS` to its end (bounded by [`TIMEOUT`]).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(TIMEOUT) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: kill(2) on the PID of our own child, which has not been reaped.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("trellis {args:?} did not finish within {TIMEOUT:?}");
            }
        };
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run; expect exit 0; stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    /// Run with `stdin`; expect exit 0; stdout.
    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert_eq!(
            out.code,
            Some(0),
            "trellis {args:?}: {out:?}\nserver log:\n{}",
            self.server_log()
        );
        out.stdout
    }

    /// Run; expect exit 1; stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert_eq!(
            out.code,
            Some(1),
            "trellis {args:?} should fail: {out:?}\nserver log:\n{}",
            self.server_log()
        );
        out.stderr
    }

    /// `trellis get ARGS` as a table.
    fn table(&self, args: &[&str]) -> Table {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        Table::parse(&self.ok(&a))
    }

    /// `trellis get ARGS -o json`.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

/// `trellis server run` on a free port, once it logged that it is ready; retried on
/// another port when that one was taken meanwhile (the server then exits).
fn start_server(dir: &Path) -> (Proc, u16) {
    let log_path = dir.join("server.log");
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut server = Proc(
            Command::new(bin())
                .args(["server", "run", "--dir"])
                .arg(dir)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("TRELLIS_LOG", "info,trellis_server=debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if server.0.try_wait().unwrap().is_some() {
                break;
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("trellis server ready") {
                return (server, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!(
        "the server did not start: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

/// A `get` table: header cells and rows (no cell holds a space).
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(text: &str) -> Table {
        let mut lines = text
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        let header = lines.next().expect("a header line");
        let rows: Vec<Vec<String>> = lines.collect();
        for r in &rows {
            assert_eq!(r.len(), header.len(), "{text}");
        }
        Table { header, rows }
    }

    /// The value in column `col` of the row whose NAME is `name`.
    fn cell(&self, name: &str, col: &str) -> &str {
        let c = self.col(col);
        let n = self.col("NAME");
        let row = self
            .rows
            .iter()
            .find(|r| r[n] == name)
            .unwrap_or_else(|| panic!("no row {name}: {self:?}"));
        &row[c]
    }

    fn col(&self, col: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == col)
            .unwrap_or_else(|| panic!("no column {col}: {:?}", self.header))
    }

    fn assert_header(&self, want: &[&str]) {
        assert_eq!(self.header, want, "{self:?}");
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// An AGE cell of something just made: seconds.
fn assert_young(age: &str) {
    let secs = age.strip_suffix('s').and_then(|n| n.parse::<u64>().ok());
    assert!(secs.is_some_and(|s| s < 120), "AGE {age}");
}

#[test]
fn apply_get_delete() {
    let c = Cluster::start();
    let file = c.write("app.yaml", MANIFEST);
    assert_eq!(
        lines(&c.ok(&["apply", "-f", &file])),
        [
            "network/pods created",
            "service/web created",
            "pod/web-1 created"
        ]
    );
    assert_eq!(
        lines(&c.ok(&["apply", "-f", &file])),
        [
            "network/pods unchanged",
            "service/web unchanged",
            "pod/web-1 unchanged"
        ]
    );
    let changed = MANIFEST.replace("port: 80", "port: 8080");
    assert_eq!(
        lines(&c.ok_in(&["apply", "-f", "-"], Some(&changed))),
        [
            "network/pods unchanged",
            "service/web configured",
            "pod/web-1 unchanged"
        ]
    );
    assert_eq!(
        lines(&c.ok_in(&["apply", "-f", "-"], Some(NODE_AND_ENDPOINT))),
        ["node/n1 created", "endpoint/web-1-eth0 created"]
    );

    // Tables, kinds by any name.
    let t = c.table(&["networks"]);
    t.assert_header(&[
        "NAME",
        "CIDR",
        "BACKEND",
        "VNI",
        "SUBNET-PREFIX",
        "TENANT",
        "AGE",
    ]);
    assert_eq!(t.cell("pods", "CIDR"), "10.244.0.0/16");
    assert_eq!(t.cell("pods", "TENANT"), "<none>");
    assert_eq!(t.cell("pods", "BACKEND"), "vxlan");
    assert!(t.cell("pods", "VNI").parse::<u32>().unwrap() > 0);
    assert_eq!(t.cell("pods", "SUBNET-PREFIX"), "/24");
    assert_young(t.cell("pods", "AGE"));
    assert_eq!(c.table(&["NET"]).cell("pods", "CIDR"), "10.244.0.0/16");

    let t = c.table(&["no"]);
    t.assert_header(&["NAME", "ADDRESS", "READY", "SUBNETS", "AGE"]);
    assert_eq!(t.cell("n1", "ADDRESS"), "192.0.2.10");
    assert_eq!(t.cell("n1", "READY"), "False");
    assert_eq!(t.cell("n1", "SUBNETS"), "<none>");
    let t = c.table(&["node", "n1", "-o", "wide"]);
    t.assert_header(&["NAME", "ADDRESS", "READY", "SUBNETS", "AGE", "LABELS"]);
    assert_eq!(t.cell("n1", "LABELS"), "role=edge");

    let t = c.table(&["po"]);
    t.assert_header(&["NAME", "LABELS", "AGE"]);
    assert_eq!(t.cell("web-1", "LABELS"), "app=web");
    let t = c.table(&["Pods", "-A"]);
    t.assert_header(&["NAMESPACE", "NAME", "LABELS", "AGE"]);
    assert_eq!(t.cell("web-1", "NAMESPACE"), "default");

    let t = c.table(&["ep"]);
    t.assert_header(&["NAME", "NODE", "IP", "READY", "AGE"]);
    assert_eq!(t.cell("web-1-eth0", "NODE"), "n1");
    assert_eq!(t.cell("web-1-eth0", "IP"), "10.244.1.5");
    assert_eq!(t.cell("web-1-eth0", "READY"), "True");
    let t = c.table(&["endpoint", "-o", "wide", "-A"]);
    t.assert_header(&[
        "NAMESPACE",
        "NAME",
        "NODE",
        "IP",
        "READY",
        "AGE",
        "CONTAINER",
        "IFNAME",
        "NETWORK",
        "TENANT",
    ]);
    assert_eq!(t.cell("web-1-eth0", "TENANT"), "<none>");
    assert_eq!(t.cell("web-1-eth0", "CONTAINER"), "c0ffee");
    assert_eq!(t.cell("web-1-eth0", "IFNAME"), "eth0");
    assert_eq!(t.cell("web-1-eth0", "NETWORK"), "pods");

    let t = c.table(&["svc"]);
    t.assert_header(&[
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ]);
    assert_eq!(t.cell("web", "TYPE"), "NodePort");
    let ip: Ipv4Addr = t.cell("web", "CLUSTER-IP").parse().unwrap();
    assert_eq!(
        ip.octets()[..2],
        [10, 96],
        "cluster IP {ip} from 10.96.0.0/16"
    );
    assert_eq!(t.cell("web", "EXTERNAL-IP"), "<none>");
    let ports = t.cell("web", "PORT(S)");
    let node_port: u16 = ports
        .strip_prefix("8080:")
        .and_then(|p| p.strip_suffix("/TCP"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("PORT(S) {ports}"));
    assert!((30000..=32767).contains(&node_port), "{ports}");
    let t = c.table(&["service", "web", "-o", "wide"]);
    assert_eq!(t.cell("web", "SELECTOR"), "app=web");
    // Programmed on 0 of 0 ready nodes (n1 never heartbeat).
    assert_eq!(t.cell("web", "PROGRAMMED"), "0/0");
    assert_eq!(
        c.ok(&["get", "svc", "-o", "name"]).trim(),
        "service/web",
        "-o name"
    );

    // JSON and YAML round trips: what `get` prints applies unchanged.
    let svc = c.json(&["svc", "web"]);
    assert_eq!(svc["kind"], "Service");
    assert_eq!(svc["spec"]["clusterIP"], ip.to_string());
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], node_port);
    let text = svc.to_string();
    assert_eq!(
        c.ok_in(&["apply", "-f", "-"], Some(&text)).trim(),
        "service/web unchanged"
    );
    let yaml = c.ok(&["get", "svc", "web", "-o", "yaml"]);
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, svc);
    assert_eq!(
        c.ok_in(&["apply", "-f", "-"], Some(&yaml)).trim(),
        "service/web unchanged"
    );
    let list = c.json(&["po"]);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let list_yaml = c.ok(&["get", "pods", "-o", "yaml"]);
    assert_eq!(
        c.ok_in(&["apply", "-f", "-"], Some(&list_yaml)).trim(),
        "pod/web-1 unchanged"
    );
    // A changed field in a round-tripped object: configured, the allocations kept.
    let bumped = text.replace("\"port\":8080", "\"port\":8081");
    assert_eq!(
        c.ok_in(&["apply", "-f", "-"], Some(&bumped)).trim(),
        "service/web configured"
    );
    assert_eq!(
        c.table(&["svc"]).cell("web", "PORT(S)"),
        format!("8081:{node_port}/TCP")
    );

    // Missing objects and empty lists.
    let err = c.fails(&["get", "svc", "missing"], None);
    assert!(
        err.starts_with("Error from server (NotFound):") && err.contains("missing"),
        "{err}"
    );
    let out = c.run(&["get", "svc", "-n", "other"], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("No resources found"), "{out:?}");

    // Delete by name, by KIND/NAME, and by manifest.
    assert_eq!(
        c.ok(&["delete", "svc", "web"]).trim(),
        "service/web deleted"
    );
    assert!(c.fails(&["get", "svc", "web"], None).contains("(NotFound)"));
    assert_eq!(
        lines(&c.ok(&[
            "delete",
            "ep/web-1-eth0",
            "endpoint/nope",
            "--ignore-not-found"
        ])),
        ["endpoint/web-1-eth0 deleted"]
    );
    assert_eq!(
        lines(&c.ok(&["delete", "-f", &file, "--ignore-not-found"])),
        ["network/pods deleted", "pod/web-1 deleted"]
    );
    let err = c.fails(&["delete", "no", "n1", "n2"], None);
    assert!(err.contains("(NotFound)") && err.contains("n2"), "{err}");
    for kind in ["net", "no", "po", "ep", "svc"] {
        let out = c.run(&["get", kind, "-A"], None);
        assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{kind}");
    }
}

/// A manifest naming `metadata.resourceVersion` (what `get -o yaml` prints) is applied
/// at that version only: a stale one is a kubectl-like Conflict naming the object, exit
/// 1, and the concurrent change stays; the current one applies; a manifest without one
/// goes over whatever is current.
#[test]
fn apply_honours_an_explicit_resource_version() {
    let c = Cluster::start();
    c.ok_in(&["apply", "-f", "-"], Some(MANIFEST));
    let read = c.ok(&["get", "svc", "web", "-o", "yaml"]);
    let rv = c.json(&["svc", "web"])["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(read.contains(&format!("resourceVersion: '{rv}'")), "{read}");

    // Someone else changes the Service (a manifest without resourceVersion).
    let theirs = MANIFEST.replace("port: 80", "port: 81");
    assert!(c
        .ok_in(&["apply", "-f", "-"], Some(&theirs))
        .contains("service/web configured"));
    // Our edit of the copy read before: refused, theirs kept.
    let ours = c.write("ours.yaml", &read.replace("port: 80", "port: 82"));
    let err = c.fails(&["apply", "-f", &ours], None);
    assert!(
        err.starts_with("Error from server (Conflict): service/web (")
            && err.contains("ours.yaml: document 1")
            && err.contains(&format!("resourceVersion {rv} is stale")),
        "{err}"
    );
    assert_eq!(c.json(&["svc", "web"])["spec"]["ports"][0]["port"], 81);
    // Unchanged at a stale version writes nothing: unchanged, not an error.
    let mut same = c.json(&["svc", "web"]);
    same["metadata"]["resourceVersion"] = rv.clone().into();
    assert_eq!(
        c.ok_in(&["apply", "-f", "-"], Some(&same.to_string()))
            .trim(),
        "service/web unchanged"
    );

    // At the current version it applies.
    let fresh = c.ok(&["get", "svc", "web", "-o", "yaml"]);
    let fresh = c.write("fresh.yaml", &fresh.replace("port: 81", "port: 82"));
    assert_eq!(
        c.ok(&["apply", "-f", &fresh]).trim(),
        "service/web configured"
    );
    assert_eq!(c.json(&["svc", "web"])["spec"]["ports"][0]["port"], 82);
    // Applying the same file again: its version is stale now, its content current.
    assert_eq!(
        c.ok(&["apply", "-f", &fresh]).trim(),
        "service/web unchanged"
    );

    // An object deleted meanwhile is not created again from a stale manifest.
    c.ok(&["delete", "svc", "web"]);
    let err = c.fails(&["apply", "-f", &fresh], None);
    assert!(
        err.starts_with("Error from server (Conflict): service/web")
            && err.contains("does not exist"),
        "{err}"
    );
    assert!(c.fails(&["get", "svc", "web"], None).contains("NotFound"));
    // Without a resourceVersion it is created, as before.
    assert!(c
        .ok_in(&["apply", "-f", "-"], Some(&theirs))
        .contains("service/web created"));
}

/// `trellis api-resources` lists every kind the way kubectl does, and the help of the
/// commands taking a kind names them all with their short names.
#[test]
fn api_resources_and_kind_help() {
    let c = Cluster::start();
    let t = Table::parse(&c.ok(&["api-resources"]));
    t.assert_header(&["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]);
    assert_eq!(t.rows.len(), 17, "{t:?}");
    assert_eq!(t.cell("ingresses", "SHORTNAMES"), "ing");
    assert_eq!(
        t.cell("httproutes", "APIVERSION"),
        "trellis/v1,gateway.networking.k8s.io/v1"
    );
    assert_eq!(t.cell("tenants", "SHORTNAMES"), "tn");
    assert_eq!(t.cell("bgppeers", "SHORTNAMES"), "-");
    assert_eq!(
        t.cell("bgppeers", "APIVERSION"),
        "trellis/v1,projectcalico.org/v3"
    );
    assert_eq!(t.cell("secrets", "NAMESPACED"), "true");
    assert_eq!(t.cell("services", "SHORTNAMES"), "svc");
    assert_eq!(t.cell("services", "NAMESPACED"), "true");
    assert_eq!(t.cell("nodes", "NAMESPACED"), "false");
    assert_eq!(t.cell("nodes", "KIND"), "Node");
    assert_eq!(
        t.cell("networkpolicies", "APIVERSION"),
        "trellis/v1,networking.k8s.io/v1"
    );
    // Every row names a kind `get` accepts by its plural and its short name (`-`: none;
    // the help then lists the plural twice).
    let short = |row: &[String]| {
        if row[1] == "-" {
            row[0].clone()
        } else {
            row[1].clone()
        }
    };
    for row in &t.rows {
        for name in [row[0].clone(), short(row)] {
            let out = c.run(&["get", &name], None);
            assert_eq!(out.code, Some(0), "get {name}: {out:?}");
        }
    }
    for cmd in ["get", "delete", "watch"] {
        let help = c.ok(&[cmd, "--help"]);
        for row in &t.rows {
            let s = short(row);
            assert!(
                help.lines()
                    .any(|l| l.split_whitespace().eq([row[0].as_str(), s.as_str()])),
                "{cmd} --help lacks {} {s}:\n{help}",
                row[0],
            );
        }
    }
}

#[test]
fn invalid_manifests_send_nothing() {
    let c = Cluster::start();
    let bad = "\
apiVersion: trellis/v1
kind: Pod
metadata: {name: fine}
---
apiVersion: trellis/v1
kind: Service
metadata: {name: s}
spec:
  portz: [{port: 80}]
---
apiVersion: trellis/v1
kind: Network
metadata: {name: n}
spec: {cidr: 10.300.0.0/16}
";
    let file = c.write("bad.yaml", bad);
    let err = c.fails(&["apply", "-f", &file], None);
    assert!(
        err.contains("bad.yaml: document 2") && err.contains("spec.portz"),
        "{err}"
    );
    assert!(
        err.contains("document 3") && err.contains("spec.cidr"),
        "{err}"
    );
    assert!(!err.contains("document 1"), "{err}");
    let out = c.run(&["get", "pods", "-A"], None);
    assert_eq!(out.stdout, "", "nothing created: {out:?}");
    // Rules only the server knows: its message names the field.
    c.ok_in(&["apply", "-f", "-"], Some(MANIFEST));
    let overlapping = MANIFEST
        .split("---")
        .next()
        .unwrap()
        .replace("name: pods", "name: other")
        .replace("10.244.0.0/16", "10.244.128.0/17");
    let err = c.fails(&["apply", "-f", "-"], Some(&overlapping));
    assert!(
        err.starts_with("error: ") && err.contains("spec.cidr") && err.contains("overlaps"),
        "{err}"
    );
    assert!(c.fails(&["get", "net", "other"], None).contains("NotFound"));
    // Syntax errors, unknown kinds, a namespace that contradicts -n.
    let err = c.fails(&["apply", "-f", "-"], Some("kind: [unclosed"));
    assert!(err.contains("<stdin>: document 1: invalid YAML"), "{err}");
    let err = c.fails(&["get", "gateways"], None);
    assert!(err.contains("unknown resource type"), "{err}");
    let pod = "apiVersion: trellis/v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n";
    let err = c.fails(&["apply", "-n", "b", "-f", "-"], Some(pod));
    assert!(err.contains("metadata.namespace"), "{err}");
}

#[test]
fn tokens_and_config() {
    let c = Cluster::start();
    let file = c.write("app.yaml", MANIFEST);
    // Read-only: reads work, writes are Forbidden and change nothing.
    let ro = std::fs::read_to_string(c.server_dir().join("readonly.token")).unwrap();
    let ro = ro.trim();
    let err = c.fails(&["apply", "-f", &file, "--token", ro], None);
    assert!(err.contains("Forbidden"), "{err}");
    let out = c.run(&["get", "net", "--token", ro], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("No resources found"), "{out:?}");
    assert!(c
        .fails(&["get", "net", "--token", "wrong"], None)
        .contains("Unauthorized"));

    // The config file: 0600, the token redacted in `view`; flags override it.
    let other = c.dir.path().join("other.json");
    let other = other.to_str().unwrap();
    let admin = std::fs::read_to_string(c.server_dir().join("admin.token")).unwrap();
    let admin = admin.trim();
    let ca = c.server_dir().join("ca.pem");
    c.ok(&[
        "config",
        "set",
        "--config",
        other,
        "--server",
        "https://127.0.0.1:1",
        "--ca",
        ca.to_str().unwrap(),
        "--token",
        admin,
    ]);
    let mode = std::fs::metadata(other).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let view = c.ok(&["config", "view", "--config", other]);
    assert!(!view.contains(admin) && view.contains("REDACTED"), "{view}");
    let view: Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["server"], "https://127.0.0.1:1");
    let err = c.fails(&["get", "net", "--config", other], None);
    assert!(err.contains("cannot reach https://127.0.0.1:1"), "{err}");
    let out = c.run(&["get", "net", "--config", other, "--server", &c.url], None);
    assert_eq!(out.code, Some(0), "--server overrides: {out:?}");
    let err = c.fails(&["get", "net", "--config", "/nonexistent/cfg.json"], None);
    assert!(err.contains("config set"), "{err}");
}

#[test]
fn watch_prints_changes() {
    let c = Cluster::start();
    let sentinel = MANIFEST
        .split("---")
        .nth(1)
        .unwrap()
        .replace("name: web", "name: first");
    c.ok_in(&["apply", "-f", "-"], Some(&sentinel));
    let (mut watch, rx) = spawn_lines(&c, &["watch", "svc"]);
    let (_raw, raw_rx) = spawn_lines(&c, &["watch", "networks", "-o", "json"]);
    // The watch starts with the existing objects: once this shows, it is live.
    wait_line(&rx, "ADDED service/default/first rv=");
    let file = c.write("app.yaml", MANIFEST);
    c.ok(&["apply", "-f", &file]);
    let added = wait_line(&rx, "ADDED service/default/web rv=");
    c.ok_in(
        &["apply", "-f", "-"],
        Some(&MANIFEST.replace("port: 80", "port: 81")),
    );
    let modified = wait_line(&rx, "MODIFIED service/default/web rv=");
    c.ok(&["delete", "service", "web"]);
    let deleted = wait_line(&rx, "DELETED service/default/web rv=");
    let rv = |l: &str| -> u64 { l.rsplit_once("rv=").unwrap().1.parse().unwrap() };
    assert!(rv(&added) < rv(&modified) && rv(&modified) < rv(&deleted));
    let ev: Value = serde_json::from_str(&wait_line(&raw_rx, "{")).unwrap();
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "pods");

    // Ctrl-C ends it cleanly; the raw watcher is killed by its guard.
    // SAFETY: kill(2) on the PID of our own running child.
    unsafe { libc::kill(watch.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = watch.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

/// Spawn `trellis ARGS`, its stdout lines sent to the returned channel.
fn spawn_lines(c: &Cluster, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Proc(c.command(args).stdin(Stdio::null()).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next line starting with `prefix` (earlier ones skipped), within [`TIMEOUT`].
fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(l) => seen.push(l),
            Err(e) => panic!("no line {prefix:?} ({e}); saw {seen:?}"),
        }
    }
}

/// `get tenants` shows each tenant's world; namespaces, networks and endpoints show
/// their tenant.
#[test]
fn tenants_and_their_worlds() {
    let c = Cluster::start();
    let manifests = "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: red}\nspec: {serviceCIDR: 10.100.0.0/16}\n---\n\
        apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: blue}\n---\n\
        apiVersion: trellis/v1\nkind: Network\nmetadata: {name: red-pods}\nspec: {cidr: 10.244.0.0/16, tenant: red}\n---\n\
        apiVersion: trellis/v1\nkind: Network\nmetadata: {name: blue-pods}\nspec: {cidr: 10.244.0.0/16, tenant: blue}\n---\n\
        apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {tenant: red}\n---\n\
        apiVersion: trellis/v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n---\n\
        apiVersion: trellis/v1\nkind: Endpoint\nmetadata: {name: web-1, namespace: shop, labels: {app: web}}\n\
        spec: {containerId: c1, ifname: eth0, network: red-pods, node: n1, ip: 10.244.1.5}\n";
    c.ok_in(&["apply", "-f", "-"], Some(manifests));
    let t = c.table(&["tenants"]);
    t.assert_header(&[
        "NAME",
        "SERVICE-CIDR",
        "NETWORKS",
        "NAMESPACES",
        "PODS",
        "SERVICES",
        "AGE",
    ]);
    assert_eq!(t.cell("red", "SERVICE-CIDR"), "10.100.0.0/16");
    assert_eq!(t.cell("red", "NETWORKS"), "red-pods");
    assert_eq!(t.cell("red", "NAMESPACES"), "shop");
    assert_eq!(t.cell("red", "PODS"), "1");
    assert_eq!(t.cell("red", "SERVICES"), "1");
    assert_eq!(t.cell("blue", "SERVICE-CIDR"), "<cluster>");
    assert_eq!(t.cell("blue", "NETWORKS"), "blue-pods");
    assert_eq!(t.cell("blue", "NAMESPACES"), "<none>");
    assert_eq!(t.cell("blue", "PODS"), "0");
    // The Service's cluster IP comes from red's range.
    let svc = c.json(&["svc", "web", "-n", "shop"]);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.100."),
        "{svc}"
    );
    assert_eq!(c.table(&["ns"]).cell("shop", "TENANT"), "red");
    assert_eq!(c.table(&["net"]).cell("blue-pods", "TENANT"), "blue");
    let t = c.table(&["ep", "-n", "shop", "-o", "wide"]);
    assert_eq!(t.cell("web-1", "TENANT"), "red");
    // A refused change names the field and changes nothing.
    let err = c.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {tenant: blue}\n"),
    );
    assert!(
        err.contains("spec.tenant") && err.contains("1 endpoint, 1 service"),
        "{err}"
    );
    assert_eq!(c.table(&["ns"]).cell("shop", "TENANT"), "red");
}
