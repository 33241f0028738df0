//! Network policy and anti-spoofing in a cluster lab (2 nodes, vxlan, real agents):
//! policies from the server enforced across nodes, a new pod protected before its ADD
//! returns, the CLI's answers (`policy check|explain`, `get netpol|cnp|ns`), bad input
//! refused with nothing stored, and an agent `kill -9` under an allowed stream.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::cluster::{cluster_lab, http_get};
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
    let (client_ns, _client) = add(&mut lab, 1, "y", "client");
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

    // A new pod is protected from its first packet: its address is in the policy sets
    // and its port in the guard before the ADD returns.
    let (fresh_ns, fresh) = add(&mut lab, 1, "x", "fresh");
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
    let sources = set_text(&lab, 1, &["bridge", "trellis-guard", "port-sources"]);
    assert!(
        sources.contains(&fresh.to_string()) && sources.contains("10.99.0.0/16"),
        "the guard lacks fresh's sources (own address, allowedSourceAddresses):\n{sources}"
    );
    let _ = fresh_ns;

    // The CLI computes the same answers from the objects.
    let check = |args: &[&str]| {
        let out = lab
            .command(&lab.state.underlay, &t)
            .args(["policy", "check"])
            .args(args)
            .env("TRELLIS_CONFIG", lab.client_config())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
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
