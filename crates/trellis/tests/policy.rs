//! Network policy and anti-spoofing in a cluster lab (2 nodes, vxlan, real agents):
//! policies from the server enforced across nodes, a new pod protected before its ADD
//! returns, the CLI's answers (`policy check|explain`, `get netpol|cnp|ns`), bad input
//! refused with nothing stored, and an agent `kill -9` under an allowed stream.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::cluster::{cluster_lab, http_get, http_get_port};
use common::{plugin, trellis};
use trellis_lab::{wait_for, Lab};

const SETUP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: b}}
---
apiVersion: trellis/v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {ports: [{name: http, containerPort: 8080}]}
---
apiVersion: trellis/v1
kind: Pod
metadata: {name: other, namespace: x, labels: {app: other}}
---
apiVersion: trellis/v1
kind: Pod
metadata: {name: client, namespace: y, labels: {app: client}}
---
apiVersion: trellis/v1
kind: Pod
metadata: {name: fresh, namespace: x, labels: {app: fresh}}
spec: {allowedSourceAddresses: [10.99.0.0/16]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{port: http}]
"#;

/// ADD pod `ns/name` on node `n` (bound to its Pod object) with a web server on 8080
/// started *before* the ADD, so it answers from the pod's first moment.
fn add(lab: &mut Lab, n: usize, ns: &str, name: &str) -> (String, Ipv4Addr) {
    let pod = lab.add_pod(n, name).unwrap();
    let www = lab.dir().join(format!("www-{}", pod.name));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), name).unwrap();
    let mut httpd = std::process::Command::new("busybox");
    httpd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&www);
    lab.spawn(&pod.netns, &format!("httpd {}", pod.name), httpd)
        .unwrap();
    let ip = lab
        .cni_add_pod_with(
            &plugin(),
            &pod.netns,
            &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
        )
        .expect("ADD");
    (pod.netns, ip)
}

fn reaches(lab: &Lab, from: &str, ip: Ipv4Addr) -> bool {
    !http_get(lab, from, ip).is_empty()
}

/// The elements of a set, as `nft` lists them.
fn set_text(lab: &Lab, node: usize, family_table_set: &[&str]) -> String {
    let mut argv = vec!["nft", "list", "set"];
    argv.extend_from_slice(family_table_set);
    let out = lab
        .exec(&lab.state.nodes[node].netns, &argv)
        .expect("nft list set");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn policies_from_the_server_are_enforced_across_nodes() {
    common::require(&["nft", "busybox"]);
    let mut lab = cluster_lab(2, 0, "vxlan", 0);
    let t = trellis();
    lab.apply(&t, SETUP).expect("apply the setup");
    let (_web_ns, web) = add(&mut lab, 0, "x", "web");
    let (client_ns, client) = add(&mut lab, 1, "y", "client");
    let (other_ns, other) = add(&mut lab, 1, "x", "other");

    // y's client reaches x's web across nodes once n1 knows the client (its Endpoint).
    assert!(
        wait_for(Duration::from_secs(15), || reaches(&lab, &client_ns, web)),
        "client (y) never reached web (x) on its named port"
    );
    // x is default-deny: its own pods do not reach web, nor does y reach other.
    assert!(!reaches(&lab, &other_ns, web), "other (x) reached web");
    assert!(
        !reaches(&lab, &client_ns, other),
        "client reached other (isolated)"
    );
    // x's policy isolates ingress only: other still reaches y's (unisolated) client.
    assert!(
        reaches(&lab, &other_ns, client),
        "other (x, egress not isolated) did not reach client (y, not isolated)"
    );

    // A new pod is protected from its first packet: its address is in the policy sets
    // and its port in the guard before the ADD returns.
    let (_, fresh) = add(&mut lab, 1, "x", "fresh");
    let local = set_text(&lab, 1, &["ip", "trellis-policy", "local"]);
    assert!(
        local.contains(&fresh.to_string()),
        "fresh {fresh} not in local right after ADD:\n{local}"
    );
    let iso = set_text(&lab, 1, &["ip", "trellis-policy", "np-in-iso"]);
    assert!(
        iso.contains(&fresh.to_string()),
        "fresh {fresh} is not isolated (x's default deny) right after ADD:\n{iso}"
    );
    assert!(
        !reaches(&lab, &client_ns, fresh),
        "client reached the fresh (isolated) pod"
    );
    // Drift: an element deleted by hand comes back with the next full sync (resync 5 s).
    lab.exec(
        &lab.state.nodes[1].netns,
        &[
            "nft",
            "delete",
            "element",
            "ip",
            "trellis-policy",
            "np-in-iso",
            &format!("{{ {fresh} }}"),
        ],
    )
    .expect("delete an element by hand");
    assert!(
        wait_for(Duration::from_secs(15), || set_text(
            &lab,
            1,
            &["ip", "trellis-policy", "np-in-iso"]
        )
        .contains(&fresh.to_string())),
        "the deleted element was not restored"
    );
    let sources = set_text(&lab, 1, &["bridge", "trellis-guard", "port-sources"]);
    assert!(
        sources.contains(&fresh.to_string()) && sources.contains("10.99.0.0/16"),
        "the guard lacks fresh's sources (own address, allowedSourceAddresses):\n{sources}"
    );

    // The CLI computes the same answers from the objects.
    let check = |args: &[&str]| {
        let (ok, out, _) = common::policy_check(&lab, &t, args);
        (ok, out)
    };
    let (ok, text) = check(&["y/client", "x/web:8080/tcp"]);
    assert!(
        ok && text.starts_with("ALLOWED") && text.contains("NetworkPolicy x/web-from-y ingress[0]"),
        "{text}"
    );
    let (ok, text) = check(&["x/other", "x/web:8080"]);
    assert!(
        !ok && text.starts_with("DENIED") && text.contains("isolated for ingress"),
        "{text}"
    );
    let explain = lab.cli(&t, &["policy", "explain", "x/web"]).unwrap();
    assert!(
        explain.contains("NetworkPolicy x/deny")
            && explain.contains("allow from every pod in namespaces team=b on TCP port named http"),
        "{explain}"
    );
    let netpols = lab.cli(&t, &["get", "netpol", "-A"]).unwrap();
    assert!(
        netpols.contains("web-from-y") && netpols.contains("app=web"),
        "{netpols}"
    );
    let nss = lab.cli(&t, &["get", "ns"]).unwrap();
    assert!(
        nss.contains("kubernetes.io/metadata.name=x"),
        "the automatic label: {nss}"
    );

    // Through a Service: policy applies to the pod behind the DNAT (its port 8080).
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .unwrap();
    let svc: serde_json::Value = serde_json::from_str(
        &lab.cli(&t, &["get", "svc", "web", "-n", "x", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || !http_get_port(
            &lab, &client_ns, cluster_ip, 80
        )
        .is_empty()),
        "client (allowed on web's port 8080) never reached web through the Service"
    );
    assert!(
        http_get_port(&lab, &other_ns, cluster_ip, 80).is_empty(),
        "other (x, not allowed) reached web through the Service"
    );

    // Through a NodePort from outside the cluster (the underlay namespace): allowed while
    // an ipBlock admits the underlay segment, denied by x's default deny without it.
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .unwrap();
    let svc: serde_json::Value = serde_json::from_str(
        &lab.cli(&t, &["get", "svc", "web", "-n", "x", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let node_port = u16::try_from(svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap()).unwrap();
    let (outside, n1) = (lab.state.underlay.clone(), lab.state.nodes[0].addr);
    lab.apply(
        &t,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-lan, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 192.168.77.0/24}}], ports: [{port: http}]}]\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !http_get_port(
            &lab, &outside, n1, node_port
        )
        .is_empty()),
        "the outside never reached web through its NodePort once its segment was allowed"
    );
    // The NodePort works; without the ipBlock, x's default deny applies to it.
    lab.cli(&t, &["delete", "netpol", "web-from-lan", "-n", "x"])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || http_get_port(
            &lab, &outside, n1, node_port
        )
        .is_empty()),
        "the outside still reached web (default deny) through its NodePort"
    );

    // Bad input: a clear error naming the field, nothing stored.
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec:\n  ingress: [{ports: [{port: http, endPort: 9000}]}]\n";
    let e = lab.apply(&t, bad).expect_err("endPort with a named port");
    assert!(
        e.to_string().contains("spec.ingress[0].ports[0].endPort"),
        "{e}"
    );
    let bad_cnp = "apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {name: bad}\nspec: {tier: Admin, priority: 1001, subject: {namespaces: {}}}\n";
    let e = lab.apply(&t, bad_cnp).expect_err("priority out of range");
    assert!(e.to_string().contains("spec.priority"), "{e}");
    let head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec:\n";
    for (spec, field) in [
        ("  podSelector: {}\n  ingres: []\n", "ingres"),
        (
            "  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}\n",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]\n",
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.1/16}}]}]\n",
            "spec.egress[0].to[0].ipBlock.cidr",
        ),
    ] {
        let e = lab
            .apply(&t, &format!("{head}{spec}"))
            .expect_err("bad policy refused");
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    assert!(lab.cli(&t, &["get", "netpol", "bad", "-n", "x"]).is_err());
    assert!(lab.cli(&t, &["get", "cnp", "bad"]).is_err());

    // An admin Deny beats the NetworkPolicy allow, on every node, within a second or two.
    let t0 = Instant::now();
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {name: lock}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}\n  ingress: [{name: no-y, action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || !reaches(&lab, &client_ns, web)),
        "the admin Deny was not enforced"
    );
    eprintln!("admin deny enforced after {:?}", t0.elapsed());
    let cnps = lab.cli(&t, &["get", "cnp"]).unwrap();
    assert!(cnps.contains("lock") && cnps.contains("Admin"), "{cnps}");
    lab.cli(&t, &["delete", "cnp", "lock"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || reaches(&lab, &client_ns, web)),
        "removing the admin Deny did not restore the allowed flow"
    );
}

/// The policy table and the guard, as `nft -a` lists them (rule handles and elements):
/// equal listings mean nothing was rewritten.
fn policy_snapshot(lab: &Lab, node: usize) -> String {
    let ns = &lab.state.nodes[node].netns;
    let mut s = String::new();
    for table in [
        &["ip", "trellis-policy"][..],
        &["bridge", "trellis-guard"],
        &["inet", "trellis-guard"],
    ] {
        let mut argv = vec!["nft", "-a", "list", "table"];
        argv.extend_from_slice(table);
        let out = lab.exec(ns, &argv).expect("nft list table");
        s.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    s
}

/// `kill -9` of both ends' agents while an allowed iperf3 stream crosses nodes through
/// policies on both sides, then a restart: the stream never stalls and neither node's
/// policy or guard table changes (same rule handles, same elements).
#[test]
fn agent_kill9_under_an_allowed_stream_changes_nothing() {
    common::require(&["nft", "busybox", "iperf3"]);
    let mut lab = cluster_lab(2, 0, "vxlan", 0);
    let t = trellis();
    lab.apply(
        &t,
        r#"
apiVersion: trellis/v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
---
apiVersion: trellis/v1
kind: Pod
metadata: {name: client, namespace: y, labels: {app: client}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}], ports: [{port: 5201}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}], ports: [{port: 5201}]}]
"#,
    )
    .unwrap();
    let srv = lab.add_pod(0, "server").unwrap();
    let server_ip = lab
        .cni_add_pod_with(
            &plugin(),
            &srv.netns,
            "K8S_POD_NAMESPACE=x;K8S_POD_NAME=server",
        )
        .unwrap();
    let cli = lab.add_pod(1, "client").unwrap();
    lab.cni_add_pod_with(
        &plugin(),
        &cli.netns,
        "K8S_POD_NAMESPACE=y;K8S_POD_NAME=client",
    )
    .unwrap();
    for port in ["5201", "5202"] {
        let mut iperf = std::process::Command::new("iperf3");
        iperf.args(["-s", "-p", port]);
        lab.spawn(&srv.netns, &format!("iperf3 server {port}"), iperf)
            .unwrap();
    }
    // Both nodes know both pods and the stream is allowed (and only it: port 5202,
    // served as well, is not). Without `-J`: with it iperf3 exits 0 on errors too.
    let probe = |lab: &Lab, port: &str| {
        lab.exec_any(
            &cli.netns,
            &[
                "iperf3",
                "-c",
                &server_ip.to_string(),
                "-p",
                port,
                "-t",
                "1",
                "--connect-timeout",
                "1000",
            ],
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(15), || probe(&lab, "5201")),
        "the allowed stream never worked"
    );
    assert!(
        !probe(&lab, "5202"),
        "a stream to the port no policy allows worked"
    );
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<String> = (0..2).map(|n| policy_snapshot(&lab, n)).collect();
    let cli_ns = cli.netns.clone();
    let stream_start = std::time::Instant::now();
    let client = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &cli_ns,
                "iperf3",
                "-c",
                &server_ip.to_string(),
                "-t",
                "6",
                "-J",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_secs(1));
    let timing = trellis_lab::cluster::Timing::default();
    for name in ["agent n1", "agent n2"] {
        let pid = common::pid_of(&lab, name);
        lab.stop(pid, true);
    }
    lab.start_cluster_agent(&t, 0, "default", &timing).unwrap();
    lab.start_cluster_agent(&t, 1, "default", &timing).unwrap();
    let restarted_at = stream_start.elapsed();
    let out = client.join().unwrap();
    assert!(
        restarted_at < Duration::from_millis(5500),
        "the agents must be back while the 6 s stream runs (back after {restarted_at:?})"
    );
    assert!(
        out.status.success(),
        "iperf3 broke: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let intervals = report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 5, "{report}");
    for iv in intervals {
        assert!(
            iv["sum"]["bytes"].as_f64().unwrap_or(0.0) > 0.0,
            "a second without traffic: {iv}"
        );
    }
    // Once both restarted agents have made their first full sync, compare.
    for name in ["agent-n1", "agent-n2"] {
        let log = lab.dir().join(format!("{name}.log"));
        assert!(
            wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("network policy: table in sync")),
            "{name} never synced its policy table after the restart"
        );
    }
    for (n, b) in before.iter().enumerate() {
        assert_eq!(
            &policy_snapshot(&lab, n),
            b,
            "node n{}'s policy or guard table changed",
            n + 1
        );
    }
}
