//! `trellis ingress` under load from outside (wrk in the underlay): a minute of requests
//! over HTTP and HTTPS while routes, endpoints and certificates change several times a
//! second loses none; an endpoint killed mid-load costs at most the requests in flight to
//! it; a binary upgrade through `--handover` refuses no connection.

mod common;

use std::time::{Duration, Instant};

use common::ingress::{cert_for, echo_pod, ingress_lab, tls_secret, IngressLab, EDGE};
use common::{plugin, trellis};
use trellis_lab::wait_for;

/// What wrk reported.
#[derive(Debug, Default)]
struct Wrk {
    requests: u64,
    errors: u64,
    non_2xx: u64,
    text: String,
}

fn wrk_start(l: &IngressLab, url: &str, host: &str, secs: u64, conns: u32) -> std::process::Child {
    let mut c = l.lab.command(&l.lab.state.underlay, "wrk");
    c.args([
        "-t",
        "1",
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{secs}s"),
        "--timeout",
        "5s",
        "-H",
        &format!("Host: {host}"),
        url,
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

fn wrk_result(child: std::process::Child) -> Wrk {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = Wrk {
        text: text.clone(),
        ..Default::default()
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l
            .split(" requests in ")
            .next()
            .filter(|_| l.contains(" requests in "))
        {
            w.requests = n.trim().parse().unwrap_or(0);
        }
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            w.errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = rest.trim().parse().unwrap_or(0);
        }
    }
    w
}

fn load_route(gen: usize) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: load, namespace: default}}\nspec:\n  hostnames: [load.test]\n  rules:\n  - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Gen, value: '{gen}'}}]}}}}]\n    backendRefs: [{{name: a, port: 80}}]\n"
    )
}

fn cni_del(l: &IngressLab, node: usize, container: &str) {
    let out = l
        .lab
        .cni(
            &plugin(),
            node,
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", "eth0"),
            ],
            &l.lab.cni_config(node, "1.1.0"),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "DEL {container}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_minute_of_load_through_changes_loses_nothing() {
    common::require(&["wrk"]);
    let mut l = ingress_lab(&["--no-access-log"]);
    let dir = l.lab.dir();
    let certs: Vec<(String, String)> = (0..2)
        .map(|i| cert_for(&dir, &format!("load{i}"), &["load.test"]))
        .collect();
    l.apply(&tls_secret("load", &certs[0].0, &certs[0].1))
        .unwrap();
    l.apply("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: load-tls, namespace: default, annotations: {trellis.io/ssl-redirect: 'false'}}\nspec:\n  tls: [{hosts: [load.test], secretName: load}]\n  rules: [{host: load.test, http: {paths: [{path: /nothing-here, pathType: Exact, backend: {service: {name: b, port: {number: 80}}}}]}}]\n").unwrap();
    l.apply(&load_route(0)).unwrap();
    l.wait_route("load.test", "/", "a");

    let secs = 60;
    let http = wrk_start(&l, &format!("http://{EDGE}/bench"), "load.test", secs, 8);
    let https = wrk_start(&l, &format!("https://{EDGE}/bench"), "load.test", secs, 4);
    let start = Instant::now();
    let mut changes = 0;
    let mut extra_pod: Option<(String, u32)> = None;
    let mut next_pod_change = Instant::now() + Duration::from_secs(5);
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(secs - 2) {
        i += 1;
        // A route change, an unrelated route, a certificate rotation: each a few times a
        // second.
        l.apply(&load_route(i)).unwrap();
        l.apply(&format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: churn-{}, namespace: default}}\nspec:\n  hostnames: [churn{i}.test]\n  rules: [{{backendRefs: [{{name: b, port: 80}}]}}]\n", i % 20)).unwrap();
        let (crt, key) = &certs[i % 2];
        l.apply(&tls_secret("load", crt, key)).unwrap();
        changes += 3;
        std::thread::sleep(Duration::from_millis(300));
        // Endpoints: a third pod of `a` comes and goes (gracefully: its Endpoint goes
        // first, the process a second later).
        if Instant::now() > next_pod_change {
            next_pod_change = Instant::now() + Duration::from_secs(5);
            match extra_pod.take() {
                None => {
                    let name = format!("x{i}");
                    echo_pod(&mut l.lab, 1, &name, "a");
                    let ns = l.lab.resolve(&format!("n2-{name}")).unwrap();
                    let pid = *l
                        .lab
                        .state
                        .procs
                        .iter()
                        .rev()
                        .find(|p| p.what == format!("echo {name}"))
                        .map(|p| &p.pid)
                        .unwrap();
                    extra_pod = Some((ns, pid));
                }
                Some((ns, pid)) => {
                    cni_del(&l, 1, &ns);
                    std::thread::sleep(Duration::from_secs(1));
                    l.lab.stop(pid, false);
                }
            }
            changes += 1;
        }
    }
    let (h, s) = (wrk_result(http), wrk_result(https));
    eprintln!(
        "{changes} changes during the load\nHTTP:\n{}\nHTTPS:\n{}",
        h.text, s.text
    );
    assert!(changes >= 300, "only {changes} changes");
    for (what, w) in [("http", &h), ("https", &s)] {
        assert!(w.requests > 3_000, "{what}: {w:?}");
        assert_eq!(
            (w.errors, w.non_2xx),
            (0, 0),
            "{what} lost requests: {}",
            w.text
        );
    }
    // The last route version is live.
    let want = i.to_string();
    assert!(wait_for(Duration::from_secs(5), || {
        l.get("load.test", "/", &[]).json()["headers"]["x-gen"].as_str() == Some(want.as_str())
    }));
}

#[test]
fn a_killed_endpoint_costs_at_most_its_requests_in_flight() {
    common::require(&["wrk"]);
    let l = ingress_lab(&["--no-access-log"]);
    l.apply(&load_route(0)).unwrap();
    l.wait_route("load.test", "/", "a");
    let conns = 8;
    let w = wrk_start(&l, &format!("http://{EDGE}/bench"), "load.test", 10, conns);
    std::thread::sleep(Duration::from_secs(3));
    // kill -9 a2's server: its connections reset, its port refuses.
    let pid = l
        .lab
        .state
        .procs
        .iter()
        .find(|p| p.what == "echo a2")
        .unwrap()
        .pid;
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let r = wrk_result(w);
    eprintln!("{}", r.text);
    assert!(r.requests > 5_000, "{r:?}");
    assert!(
        r.errors + r.non_2xx <= u64::from(conns),
        "more than the in-flight requests failed: {}",
        r.text
    );
    // After ejection, nothing fails: a second run against one pod left.
    let w = wrk_start(&l, &format!("http://{EDGE}/bench"), "load.test", 3, conns);
    let r = wrk_result(w);
    assert_eq!((r.errors, r.non_2xx), (0, 0), "{}", r.text);
}

#[test]
fn a_binary_upgrade_refuses_no_connection() {
    common::require(&["wrk"]);
    let handover = std::env::temp_dir().join(format!(
        "trellis-ingress-handover-{}.sock",
        std::process::id()
    ));
    let hs = handover.display().to_string();
    let mut l = ingress_lab(&["--no-access-log", "--handover", &hs, "--drain-timeout", "5"]);
    l.apply(&load_route(0)).unwrap();
    l.wait_route("load.test", "/", "a");
    let old = l.ingress.pid;
    // New connections for every request, so refused connections would show.
    let mut c = l.lab.command(&l.lab.state.underlay, "wrk");
    c.args([
        "-t",
        "1",
        "-c",
        "8",
        "-d",
        "8s",
        "--timeout",
        "5s",
        "-H",
        "Host: load.test",
        "-H",
        "Connection: close",
        &format!("http://{EDGE}/bench"),
    ])
    .stdout(std::process::Stdio::piped());
    let w = c.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for gen in 0..2 {
        let n1 = l.lab.state.nodes[0].netns.clone();
        let cmd = l
            .lab
            .ingress_command(
                &trellis(),
                "edge",
                format!("{EDGE}:80").parse().unwrap(),
                Some(format!("{EDGE}:443").parse().unwrap()),
                &["--no-access-log", "--handover", &hs, "--drain-timeout", "5"],
            )
            .unwrap();
        let new = l
            .lab
            .spawn(&n1, &format!("ingress edge-{gen}"), cmd)
            .unwrap();
        // The old instance hands over, drains and exits.
        let prev = if gen == 0 { old } else { l.ingress.pid };
        assert!(
            wait_for(Duration::from_secs(15), || !std::path::Path::new(&format!(
                "/proc/{prev}"
            ))
            .exists()
                || std::fs::read_to_string(format!("/proc/{prev}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))),
            "the old instance exits after the handover"
        );
        l.ingress.pid = new;
        std::thread::sleep(Duration::from_secs(2));
    }
    let r = wrk_result(w);
    eprintln!("{}", r.text);
    assert!(r.requests > 500, "{r:?}");
    assert_eq!((r.errors, r.non_2xx), (0, 0), "{}", r.text);
    let _ = std::fs::remove_file(&handover);
}
