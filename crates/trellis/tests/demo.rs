//! The README's demo: `trellis lab up` brings up a server, agents and pods, prints a
//! full reachability matrix and the demo Service's spread, the lab's CLI works, and
//! `trellis lab down` removes every namespace it made. Labs are named
//! `tdemo<pid>x<backend>`; labs of earlier runs whose process is gone are removed first.

mod common;

use std::process::{Command, Output};

use common::{require, trellis};

fn lab_cmd(args: &[&str]) -> Output {
    Command::new(trellis())
        .arg("lab")
        .args(args)
        .output()
        .expect("run trellis lab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes the lab however the test ends.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab_cmd(&["down", &self.0]);
    }
}

fn namespaces_of(name: &str) -> Vec<String> {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{}{name}-", trellis_lab::NS_PREFIX)))
        .map(str::to_string)
        .collect()
}

/// Remove demo labs of test runs whose process is gone.
fn sweep_stale() {
    for name in trellis_lab::list_persistent() {
        let Some(pid) = name
            .strip_prefix("tdemo")
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale demo lab {name}");
            let _ = lab_cmd(&["down", &name]);
        }
    }
}

fn up_and_down(backend: &str, pods: usize) {
    require(&["ip", "nft", "ping", "busybox", "bridge"]);
    sweep_stale();
    let name = format!("tdemo{}x{}", std::process::id(), backend.replace('-', ""));
    let guard = Down(name.clone());
    let pods_arg = pods.to_string();
    let up = lab_cmd(&[
        "up",
        "--nodes",
        "3",
        "--backend",
        backend,
        "--pods",
        &pods_arg,
        "--name",
        &name,
    ]);
    let out = text(&up);
    assert!(up.status.success(), "lab up failed:\n{out}");
    assert!(
        out.contains(&format!("reachability over {backend}")),
        "{out}"
    );
    // 3 nodes + 3*pods sources, each row all "ok".
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("reachability"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 3 + 3 * pods, "{out}");
    let targets = 3 + 3 * pods;
    for r in &rows {
        assert_eq!(r.matches(" ok").count(), targets, "row {r:?}:\n{out}");
    }
    assert!(out.contains("service demo"), "{out}");
    assert!(out.contains("Where to look"), "{out}");
    assert_eq!(namespaces_of(&name).len(), 1 + 3 + 3 * pods, "{out}");

    // The lab's CLI talks to the lab's server.
    let t = trellis().display().to_string();
    let nodes = lab_cmd(&["exec", &name, "u", "--", &t, "get", "nodes"]);
    let listing = text(&nodes);
    assert!(nodes.status.success(), "{listing}");
    for n in ["n1", "n2", "n3"] {
        assert!(listing.contains(n), "{listing}");
    }
    // The DNS hint names a server that answers for the demo Service.
    let hint = out
        .lines()
        .find(|l| l.contains("nslookup demo.default.svc.cluster.local"))
        .unwrap_or_else(|| panic!("no DNS hint:\n{out}"));
    let dns = hint
        .split("cluster.local ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{hint}"));
    let look = lab_cmd(&[
        "exec",
        &name,
        "n1-p1",
        "--",
        "busybox",
        "nslookup",
        "demo.default.svc.cluster.local",
        dns,
    ]);
    assert!(look.status.success(), "{hint}: {}", text(&look));

    let down = lab_cmd(&["down", &name]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        namespaces_of(&name).is_empty(),
        "left behind: {:?}",
        namespaces_of(&name)
    );
    assert!(!trellis_lab::list_persistent().contains(&name));
    drop(guard);
}

#[test]
fn lab_up_vxlan_shows_a_full_mesh_and_down_removes_it() {
    up_and_down("vxlan", 2);
}

#[test]
fn lab_up_l2_shows_a_full_mesh_and_down_removes_it() {
    up_and_down("l2", 1);
}
