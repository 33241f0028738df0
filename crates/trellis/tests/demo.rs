//! The README's demo: `trellis lab up` brings up a server, agents and pods, prints a
//! full reachability matrix and the demo Service's spread (every request answered), the
//! lab's CLI works, and `trellis lab down` removes every namespace it made. Labs are
//! named `tdemo<pid>x<backend><nodes><pods>`; labs of earlier runs whose process is gone
//! are removed first.

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

/// The rows of the reachability matrix `lab up` prints.
fn matrix_rows(out: &str) -> Vec<&str> {
    out.lines()
        .skip_while(|l| !l.starts_with("reachability"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .collect()
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

/// `lab up` with `nodes` nodes and `pods` pods each on `backend`: a full reachability
/// matrix, every one of the 60 demo requests answered (the lab measures only once the
/// client's node has programmed the Service), PROGRAMMED `N/N`, the lab's CLI and DNS;
/// `lab down` removes everything.
fn up_and_down(backend: &str, nodes: usize, pods: usize) {
    require(&["ip", "nft", "ping", "busybox", "bridge"]);
    sweep_stale();
    // At most 20 characters: tdemo + PID (up to 7 digits) + x + backend + nodes + pods.
    let name = format!(
        "tdemo{}x{}{nodes}{pods}",
        std::process::id(),
        backend.replace('-', "")
    );
    let guard = Down(name.clone());
    let pods_arg = pods.to_string();
    let nodes_arg = nodes.to_string();
    let up = lab_cmd(&[
        "up",
        "--nodes",
        &nodes_arg,
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
    // nodes + nodes*pods sources, each row all "ok".
    let rows = matrix_rows(&out);
    let targets = nodes + nodes * pods;
    assert_eq!(rows.len(), targets, "{out}");
    for r in &rows {
        assert_eq!(r.matches(" ok").count(), targets, "row {r:?}:\n{out}");
    }
    // The demo Service: 60 requests, every one answered, by every pod.
    let spread: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("service demo"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(!spread.is_empty(), "no demo spread:\n{out}");
    assert!(
        !out.contains("failed") && !out.contains("not programmed"),
        "{out}"
    );
    let answered: u32 = spread
        .iter()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("spread line {l:?}:\n{out}"))
        })
        .sum();
    assert_eq!(answered, 60, "{out}");
    assert_eq!(spread.len(), nodes * pods, "every pod answers:\n{out}");
    assert!(out.contains("Where to look"), "{out}");
    assert_eq!(
        namespaces_of(&name).len(),
        1 + nodes + nodes * pods,
        "{out}"
    );

    // The lab's CLI talks to the lab's server.
    let t = trellis().display().to_string();
    let get = lab_cmd(&["exec", &name, "u", "--", &t, "get", "nodes"]);
    let listing = text(&get);
    assert!(get.status.success(), "{listing}");
    for n in 1..=nodes {
        assert!(listing.contains(&format!("n{n}")), "{listing}");
    }
    // Every ready node reports the demo Service programmed (bounded: the other
    // nodes may publish up to a second after the client's node).
    let want = format!("{nodes}/{nodes}");
    let mut svc = String::new();
    let programmed = trellis_lab::wait_for(std::time::Duration::from_secs(10), || {
        let o = lab_cmd(&[
            "exec", &name, "u", "--", &t, "get", "svc", "demo", "-o", "wide",
        ]);
        svc = text(&o);
        let header: Vec<&str> = svc
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let row: Vec<&str> = svc
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        header.last() == Some(&"PROGRAMMED") && row.last() == Some(&want.as_str())
    });
    assert!(programmed, "PROGRAMMED is not {want}:\n{svc}");
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
    up_and_down("vxlan", 3, 2);
}

/// The smallest lab a new user tries: before the demo waited for the client's node to
/// program the Service, a third or more of its requests failed.
#[test]
fn lab_up_two_nodes_one_pod_answers_every_demo_request() {
    up_and_down("vxlan", 2, 1);
}

#[test]
fn lab_up_l2_shows_a_full_mesh_and_down_removes_it() {
    up_and_down("l2", 3, 1);
}

/// Trying policies in a lab, as docs/policy.md walks through it: `lab pod add` declares
/// Pods with namespaces, labels and named ports and serves HTTP on their TCP ports; a
/// default-deny policy and `policy check` agree with what the pods see; bad flags
/// change nothing; `lab pod del` removes a pod and its Pod object.
#[test]
fn lab_pods_to_try_policies() {
    require(&["ip", "nft", "busybox"]);
    sweep_stale();
    let name = format!("tdemo{}xpol", std::process::id());
    let _guard = Down(name.clone());
    let up = lab_cmd(&["up", "--nodes", "2", "--pods", "1", "--name", &name]);
    assert!(up.status.success(), "lab up: {}", text(&up));
    let t = trellis().display().to_string();
    let add = |args: &[&str]| {
        let mut v = vec!["pod", "add"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--lab", &name]);
        lab_cmd(&v)
    };
    let web = add(&[
        "web",
        "--node",
        "n1",
        "--namespace",
        "x",
        "--labels",
        "app=web",
        "--ports",
        "http:8080/tcp",
    ]);
    assert!(web.status.success(), "{}", text(&web));
    let web_ip = text(&web)
        .split_whitespace()
        .find_map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<std::net::Ipv4Addr>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no address in {}", text(&web)));
    let client = add(&[
        "client",
        "--node",
        "n2",
        "--namespace",
        "y",
        "--labels",
        "app=client",
    ]);
    assert!(client.status.success(), "{}", text(&client));
    let fetch = || {
        let o = lab_cmd(&[
            "exec",
            &name,
            "n2-client",
            "--",
            "timeout",
            "2",
            "busybox",
            "wget",
            "-q",
            "-O-",
            &format!("http://{web_ip}:8080/"),
        ]);
        text(&o).contains("x/web")
    };
    assert!(
        trellis_lab::wait_for(std::time::Duration::from_secs(10), fetch),
        "client never reached web"
    );

    // Bad flags: an error naming the flag, and no pod made.
    let before = namespaces_of(&name).len();
    for (args, flag) in [
        (vec!["bad", "--node", "n9"], "--node"),
        (vec!["bad", "--node", "n1", "--labels", "a b=1"], "--labels"),
        (
            vec!["bad", "--node", "n1", "--ports", "http:99999"],
            "--ports",
        ),
    ] {
        let o = add(&args);
        assert!(
            !o.status.success() && text(&o).contains(flag),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert_eq!(
        namespaces_of(&name).len(),
        before,
        "a refused pod left a namespace"
    );

    // x becomes default-deny for ingress: check and the data path agree.
    let manifest = std::env::temp_dir().join(format!("{name}-deny.yaml"));
    std::fs::write(
        &manifest,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
    )
    .unwrap();
    let apply = lab_cmd(&[
        "exec",
        &name,
        "u",
        "--",
        &t,
        "apply",
        "-f",
        &manifest.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&manifest);
    assert!(apply.status.success(), "{}", text(&apply));
    // The pods are known to policy once their Endpoints are published.
    let mut verdict = String::new();
    let denied = trellis_lab::wait_for(std::time::Duration::from_secs(10), || {
        let check = lab_cmd(&[
            "exec",
            &name,
            "u",
            "--",
            &t,
            "policy",
            "check",
            "y/client",
            "x/web:8080/tcp",
        ]);
        verdict = text(&check);
        !check.status.success() && verdict.starts_with("DENIED")
    });
    assert!(denied, "{verdict}");
    assert!(
        trellis_lab::wait_for(std::time::Duration::from_secs(10), || !fetch()),
        "the deny was not enforced"
    );

    let del = lab_cmd(&["pod", "del", "web", "--lab", &name]);
    assert!(del.status.success(), "{}", text(&del));
    assert_eq!(namespaces_of(&name).len(), before - 1);
    let get = lab_cmd(&["exec", &name, "u", "--", &t, "get", "pod", "web", "-n", "x"]);
    assert!(
        !get.status.success(),
        "the Pod object outlived lab pod del: {}",
        text(&get)
    );
}

/// `trellis lab tenants`: two tenants with the same range side by side in a lab; every
/// pod is answered only by its own tenant's pods, and `lab down` leaves no namespace and
/// no mount (the tenants' worlds are bind mounts) behind.
#[test]
fn lab_tenants_side_by_side() {
    require(&["ip", "nft", "busybox", "nsenter"]);
    sweep_stale();
    let name = format!("tdemo{}xten", std::process::id());
    let guard = Down(name.clone());
    let up = lab_cmd(&["up", "--nodes", "2", "--pods", "1", "--name", &name]);
    assert!(up.status.success(), "lab up: {}", text(&up));
    let bad = lab_cmd(&["tenants", "--lab", &name, "--tenants", "red"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--tenants"), "{}", text(&bad));
    let out = lab_cmd(&["tenants", "--lab", &name]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("every pod reached only its own tenant's pods"),
        "{t}"
    );
    for row in [
        "red/n1         red/n1",
        "blue/n1        blue/n1",
        "blue/n2        blue/n1",
    ] {
        assert!(t.contains(row), "{row:?} missing:\n{t}");
    }
    let down = lab_cmd(&["down", &name]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(namespaces_of(&name).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "mounts left:\n{mounts}");
    drop(guard);
}

/// `lab up --racks 2,2`: two racks joined only by BIRD and FRR top-of-rack routers, a
/// full reachability matrix over bgp, every demo request answered, each node's session
/// with its rack's router established (`trellis bgp status`), the routers reachable
/// with `lab exec r1`; `lab down` removes the routers' namespaces too.
#[test]
fn lab_up_racks_routes_pods_through_bird_and_frr() {
    require(&[
        "ip", "nft", "ping", "busybox", "bridge", "bird", "birdc", "vtysh",
    ]);
    sweep_stale();
    let name = format!("tdemo{}xracks", std::process::id());
    let guard = Down(name.clone());
    let up = lab_cmd(&["up", "--racks", "2,2", "--pods", "1", "--name", &name]);
    let out = text(&up);
    assert!(up.status.success(), "lab up --racks failed:\n{out}");
    assert!(out.contains("reachability over bgp"), "{out}");
    let rows = matrix_rows(&out);
    assert_eq!(rows.len(), 8, "{out}");
    for r in &rows {
        assert_eq!(r.matches(" ok").count(), 8, "row {r:?}:\n{out}");
    }
    assert!(
        !out.contains("failed") && !out.contains("not programmed"),
        "{out}"
    );
    // Underlay, two routers, four nodes, four pods.
    assert_eq!(namespaces_of(&name).len(), 1 + 2 + 4 + 4, "{out}");
    let t = trellis().display().to_string();
    let status = text(&lab_cmd(&["exec", &name, "u", "--", &t, "bgp", "status"]));
    let established: Vec<&str> = status
        .lines()
        .filter(|l| l.contains("Established"))
        .collect();
    assert_eq!(established.len(), 4, "{status}");
    assert!(
        status.contains("192.168.91.1") && status.contains("192.168.92.1"),
        "{status}"
    );
    let sock = format!("{}/{name}/bird-r1/bird.ctl", trellis_lab::STATE_ROOT);
    let bird = text(&lab_cmd(&[
        "exec", &name, "r1", "--", "birdc", "-s", &sock, "show", "route",
    ]));
    assert!(bird.contains("10.244."), "{bird}");
    let down = lab_cmd(&["down", &name]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        namespaces_of(&name).is_empty(),
        "left behind: {:?}",
        namespaces_of(&name)
    );
    drop(guard);
}
