//! Services and DNS in a 3-node lab: every service type reached from a pod, from a node
//! and from outside the cluster (the underlay namespace, which routes the service,
//! load-balancer and external ranges to node n1); the spread; session affinity;
//! `externalTrafficPolicy: Local` keeping the client address; endpoint removal; a service
//! without endpoints refusing at once; the cluster DNS; an agent restart changing nothing.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::cluster::{add_pod_with, cluster_lab_timed};
use common::{require, trellis};
use trellis_lab::cluster::Timing;
use trellis_lab::{wait_for, Lab};

/// The lab: 3 nodes, 2 `app=web` pods per node, 1 `app=solo` pod on n2, a pool for
/// load-balancer IPs, routes in the underlay for the service, pool and external ranges.
fn svc_lab() -> Lab {
    require(&["conntrack", "dig", "dnsmasq"]);
    let timing = Timing {
        agent_args: vec![
            "--dns-upstream".into(),
            "192.168.77.1".into(),
            "--proxy-full-resync".into(),
            "3".into(),
        ],
        ..Timing::default()
    };
    let mut lab = cluster_lab_timed(3, 0, "vxlan", 0, &timing);
    // The nodes' upstream resolver: dnsmasq in the underlay.
    let mut dnsmasq = std::process::Command::new("dnsmasq");
    dnsmasq.args([
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=192.168.77.1",
        "--bind-interfaces",
        "--address=/example.org/192.0.2.7",
    ]);
    let u = lab.state.underlay.clone();
    lab.spawn(&u, "dnsmasq", dnsmasq).unwrap();
    for n in 0..3 {
        for p in 1..=2 {
            add_pod_with(&mut lab, n, &format!("w{p}"), "LABELS=app=web");
        }
    }
    let solo = add_pod_with(&mut lab, 1, "solo", "LABELS=app=solo");
    // A UDP server in the solo pod: dnsmasq on 5353 answering x.test.
    let mut udp = std::process::Command::new("dnsmasq");
    udp.args([
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--port=5353",
        &format!("--listen-address={solo}"),
        "--bind-interfaces",
        "--address=/x.test/192.0.2.9",
    ]);
    let solo_ns = lab.resolve("n2-solo").unwrap();
    lab.spawn(&solo_ns, "dnsmasq solo", udp).unwrap();
    lab.apply(
        &trellis(),
        "apiVersion: trellis/v1\nkind: LoadBalancerPool\nmetadata:\n  name: lab\nspec:\n  cidrs: [10.200.0.0/28]\n",
    )
    .unwrap();
    let u = lab.state.underlay.clone();
    for range in ["10.96.0.0/16", "10.200.0.0/28", "10.201.0.0/28"] {
        lab.exec(&u, &["ip", "route", "add", range, "via", "192.168.77.11"])
            .unwrap();
    }
    lab
}

fn apply_service(lab: &Lab, name: &str, spec: &str) -> serde_json::Value {
    lab.apply(
        &trellis(),
        &format!("apiVersion: trellis/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{spec}"),
    )
    .unwrap();
    let out = lab
        .cli(&trellis(), &["get", "service", name, "-o", "json"])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// GET `url` from `netns`: the body, or `Err(what failed)` with how long it took.
fn get(lab: &Lab, netns: &str, url: &str) -> Result<String, (String, Duration)> {
    let t = Instant::now();
    let o = lab
        .exec_any(
            netns,
            &["timeout", "3", "busybox", "wget", "-q", "-O-", url],
        )
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err((
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
            t.elapsed(),
        ))
    }
}

/// Wait until `url` answers from `netns`; its first body.
fn reach(lab: &Lab, netns: &str, url: &str) -> String {
    let mut last = Err((String::new(), Duration::ZERO));
    let ok = wait_for(Duration::from_secs(15), || {
        last = get(lab, netns, url);
        last.is_ok()
    });
    assert!(ok, "{url} from {netns}: {last:?}");
    last.unwrap()
}

/// The client address in a `/cgi-bin/ip` answer (`pod [::ffff:a.b.c.d]` or `pod a.b.c.d`).
fn client_of(body: &str) -> String {
    let a = body.rsplit(' ').next().unwrap_or_default();
    a.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("::ffff:")
        .to_string()
}

fn pod_ns(lab: &Lab, name: &str) -> String {
    lab.resolve(name).unwrap()
}

fn dig(lab: &Lab, netns: &str, server: Ipv4Addr, args: &[&str]) -> String {
    let mut argv = vec!["dig", "+short", "+time=2", "+tries=1"];
    let at = format!("@{server}");
    argv.push(&at);
    argv.extend_from_slice(args);
    let o = lab.exec_any(netns, &argv).unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn service_types_spread_affinity_policy_and_dns() {
    let mut lab = svc_lab();
    let t = trellis();
    let web = apply_service(
        &lab,
        "web",
        "  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  externalIPs: [10.201.0.5]\n",
    );
    let cip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
    let np = web["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    let lb = web["status"]["loadBalancerIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(lb.starts_with("10.200.0."), "{web}");
    let n1 = lab.state.nodes[0].netns.clone();
    let u = lab.state.underlay.clone();
    let p = pod_ns(&lab, "n2-w1");
    // The pod's gateway: its node's address on the pod bridge.
    let o = lab.exec(&p, &["ip", "route", "show", "default"]).unwrap();
    let gw: Ipv4Addr = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    // ClusterIP from a pod and a node; node port on every node address (underlay and
    // pod gateway) from pod, node, outside; LB and external IP from everywhere.
    for (ns, url) in [
        (&p, format!("http://{cip}/")),
        (&p, format!("http://{gw}:{np}/")),
        (&n1, format!("http://{cip}/")),
        (&u, format!("http://{cip}/")),
        (&p, format!("http://192.168.77.13:{np}/")),
        (&n1, format!("http://192.168.77.12:{np}/")),
        (&u, format!("http://192.168.77.11:{np}/")),
        (&u, format!("http://{lb}/")),
        (&p, format!("http://{lb}/")),
        (&n1, format!("http://{lb}/")),
        (&u, "http://10.201.0.5/".to_string()),
        (&p, "http://10.201.0.5/".to_string()),
        (&n1, "http://10.201.0.5/".to_string()),
    ] {
        let body = reach(&lab, ns, &url);
        assert!(body.contains("-w"), "{url}: {body}");
    }
    // Drift: a shard table deleted behind the agent's back comes back with the next
    // periodic full sync.
    let tables = lab.exec(&n1, &["nft", "list", "tables"]).unwrap();
    let shard = String::from_utf8_lossy(&tables.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .filter(|t| t.starts_with("trellis-svc-"))
        .find(|t| {
            let o = lab.exec(&n1, &["nft", "list", "table", "ip", t]).unwrap();
            String::from_utf8_lossy(&o.stdout).contains(&cip)
        })
        .expect("a shard table holds the web service")
        .to_string();
    lab.exec(&n1, &["nft", "delete", "table", "ip", &shard])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            lab.exec(&n1, &["nft", "list", "table", "ip", &shard])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&cip))
        }),
        "{shard} was not restored"
    );
    let body = reach(&lab, &n1, &format!("http://{cip}/"));
    assert!(body.contains("-w"), "{body}");

    // Even spread over the 6 endpoints: 300 connections from one pod.
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..300 {
        *hits
            .entry(get(&lab, &p, &format!("http://{cip}/")).unwrap())
            .or_default() += 1;
    }
    if hits.len() != 6 {
        let nft = lab
            .exec_any(
                &lab.state.nodes[1].netns,
                &["nft", "list", "table", "ip", "trellis-svc"],
            )
            .unwrap();
        let eps = lab
            .cli(&trellis(), &["get", "endpoints", "-A", "-o", "wide"])
            .unwrap();
        panic!("{hits:?}\n{eps}\n{}", String::from_utf8_lossy(&nft.stdout));
    }
    assert!(
        hits.values().all(|&n| (20..=90).contains(&n)),
        "uneven: {hits:?}"
    );

    // Session affinity: one client keeps one endpoint.
    let sticky = apply_service(
        &lab,
        "sticky",
        "  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n  sessionAffinity: ClientIP\n  sessionAffinityTimeoutSeconds: 60\n",
    );
    let sip = sticky["spec"]["clusterIP"].as_str().unwrap().to_string();
    let first = reach(&lab, &p, &format!("http://{sip}/"));
    for _ in 0..30 {
        assert_eq!(get(&lab, &p, &format!("http://{sip}/")).unwrap(), first);
    }

    // externalTrafficPolicy: Local keeps the client address; Cluster masquerades it.
    let local = apply_service(
        &lab,
        "local",
        "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n  externalTrafficPolicy: Local\n",
    );
    let lnp = local["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    for _ in 0..10 {
        let body = reach(&lab, &u, &format!("http://192.168.77.11:{lnp}/cgi-bin/ip"));
        assert!(body.starts_with("n1-w"), "Local must stay on n1: {body}");
        assert_eq!(
            client_of(&body),
            "192.168.77.1",
            "client address lost: {body}"
        );
    }
    let body = reach(&lab, &u, &format!("http://192.168.77.11:{np}/cgi-bin/ip"));
    assert_ne!(
        client_of(&body),
        "192.168.77.1",
        "Cluster must masquerade: {body}"
    );

    // Hairpin: a pod reaching itself through a service of its own.
    let solo = apply_service(
        &lab,
        "solo",
        "  selector: {app: solo}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let solo_ip = solo["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_eq!(
        reach(
            &lab,
            &pod_ns(&lab, "n2-solo"),
            &format!("http://{solo_ip}/")
        ),
        "n2-solo"
    );

    // No ready endpoint: refused at once, not a timeout.
    let none = apply_service(
        &lab,
        "none",
        "  selector: {app: nothing}\n  ports: [{port: 80}]\n",
    );
    let none_ip = none["spec"]["clusterIP"].as_str().unwrap().to_string();
    let none_np = none["spec"]["ports"][0]["nodePort"].as_u64();
    assert!(none_np.is_none(), "{none}");
    for ns in [&p, &n1, &u] {
        let url = format!("http://{none_ip}/");
        let mut last = Ok(String::new());
        let refused = wait_for(Duration::from_secs(10), || {
            last = get(&lab, ns, &url);
            matches!(&last, Err((msg, took)) if msg.contains("refused") && *took < Duration::from_secs(1))
        });
        assert!(refused, "{url} from {ns} must be refused at once: {last:?}");
    }

    // DNS: A, headless, CNAME, SRV, pod records, and forwarding.
    apply_service(
        &lab,
        "db",
        "  clusterIP: None\n  selector: {app: web}\n  ports: [{name: pg, port: 5432}]\n",
    );
    apply_service(
        &lab,
        "ext",
        "  type: ExternalName\n  externalName: example.org\n",
    );
    // The pod's gateway runs the cluster DNS, and the CNI result hands it to pods.
    let extra = lab.add_pod(1, "dnscheck").unwrap();
    let out = lab
        .cni(
            &common::plugin(),
            1,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &extra.netns),
                ("CNI_NETNS", &format!("/run/netns/{}", extra.netns)),
                ("CNI_IFNAME", "eth0"),
            ],
            &lab.cni_config(1, "1.1.0"),
        )
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["dns"]["nameservers"],
        serde_json::json!([gw.to_string()]),
        "{result}"
    );
    assert_eq!(
        result["dns"]["search"][0], "default.svc.cluster.local",
        "{result}"
    );
    let ok = wait_for(Duration::from_secs(10), || {
        dig(&lab, &p, gw, &["web.default.svc.cluster.local"]) == cip
    });
    assert!(
        ok,
        "A web: {}",
        dig(&lab, &p, gw, &["web.default.svc.cluster.local"])
    );
    let pod_ip = |name: &str| {
        lab.state
            .pods
            .iter()
            .find(|x| x.name == name)
            .unwrap()
            .ip
            .unwrap()
    };
    let solo_pod = pod_ip("n2-solo");
    let web_pods: std::collections::BTreeSet<String> = lab
        .state
        .pods
        .iter()
        .filter(|x| x.name.contains("-w"))
        .map(|x| x.ip.unwrap().to_string())
        .collect();
    assert_eq!(web_pods.len(), 6);
    let mut headless = Default::default();
    let ok = wait_for(Duration::from_secs(10), || {
        headless = dig(&lab, &p, gw, &["db.default.svc.cluster.local"])
            .lines()
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<String>>();
        headless == web_pods
    });
    assert!(ok, "headless db: {headless:?}, want {web_pods:?}");
    assert_eq!(
        dig(&lab, &p, gw, &["ext.default.svc.cluster.local", "CNAME"]),
        "example.org."
    );
    let srv = dig(
        &lab,
        &p,
        gw,
        &["_http._tcp.web.default.svc.cluster.local", "SRV"],
    );
    assert!(srv.contains(" 80 web.default.svc.cluster.local."), "{srv}");
    let dashed = solo_pod.to_string().replace('.', "-");
    assert_eq!(
        dig(
            &lab,
            &p,
            gw,
            &[&format!("{dashed}.default.pod.cluster.local")]
        ),
        solo_pod.to_string()
    );
    // Everything else goes to the node's upstream (dnsmasq in the underlay).
    assert_eq!(dig(&lab, &p, gw, &["example.org"]), "192.0.2.7");
    let _ = t;
}

/// The whole nftables ruleset of node `n` (the proxy's main and shard tables, the
/// agent's own), with handles: equal before and after means no element, rule or chain
/// changed.
fn svc_table(lab: &Lab, n: usize) -> String {
    let o = lab
        .exec(&lab.state.nodes[n].netns, &["nft", "-a", "list", "ruleset"])
        .unwrap();
    // Affinity entries count down their expiry: not a change.
    String::from_utf8_lossy(&o.stdout)
        .split(" expires ")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.trim_start_matches(|c: char| !c.is_whitespace() && c != ',' && c != '}')
            }
        })
        .collect()
}

fn cni_del(lab: &Lab, node: usize, container: &str) {
    let out = lab
        .cni(
            &common::plugin(),
            node,
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", "eth0"),
            ],
            &lab.cni_config(node, "1.1.0"),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn endpoint_removal_udp_conntrack_and_agent_restart() {
    require(&["iperf3"]);
    let lab = svc_lab();
    let t = trellis();
    let timing = Timing::default();
    let mut lab = lab;
    // iperf3 behind a ClientIP service (its control and data connections must meet the
    // same endpoint).
    for p in lab.state.pods.clone() {
        if p.name.contains("-w") {
            let mut c = std::process::Command::new("iperf3");
            c.args(["-s"]);
            lab.spawn(&p.netns, &format!("iperf3 {}", p.name), c)
                .unwrap();
        }
    }
    let svc = apply_service(
        &lab,
        "perf",
        "  selector: {app: web}\n  ports: [{port: 5201}]\n  sessionAffinity: ClientIP\n",
    );
    let cip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let udp = apply_service(
        &lab,
        "dns-like",
        "  selector: {app: solo}\n  ports: [{port: 5353, protocol: UDP}]\n",
    );
    let uip = udp["spec"]["clusterIP"].as_str().unwrap().to_string();
    let client = pod_ns(&lab, "n1-w1");
    std::thread::sleep(Duration::from_secs(1));
    // A UDP flow to the solo endpoint leaves a conntrack entry on n1.
    let n1 = lab.state.nodes[0].netns.clone();
    let udp_entries = |lab: &Lab| {
        let o = lab
            .exec_any(&n1, &["conntrack", "-L", "-p", "udp", "--orig-dst", &uip])
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    // The UDP service answers (dnsmasq in the solo pod) and leaves a conntrack entry.
    let mut answer = String::new();
    let answered = wait_for(Duration::from_secs(10), || {
        answer = dig(
            &lab,
            &client,
            uip.parse().unwrap(),
            &["-p", "5353", "x.test"],
        );
        answer == "192.0.2.9"
    });
    assert!(answered, "UDP service {uip}:5353: {answer:?}");
    assert!(udp_entries(&lab) > 0);
    // A stream through the service; find the endpoint serving it.
    let cl = client.clone();
    let cip2 = cip.clone();
    let stream_start = Instant::now();
    let stream = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &cl, "iperf3", "-c", &cip2, "-t", "10", "-J",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(800));
    let o = lab
        .exec(
            &n1,
            &[
                "conntrack",
                "-L",
                "-p",
                "tcp",
                "--orig-dst",
                &cip,
                "--state",
                "ESTABLISHED",
            ],
        )
        .unwrap();
    let ct = String::from_utf8_lossy(&o.stdout).into_owned();
    let serving: Ipv4Addr = ct
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("src="))
        .nth(1)
        .unwrap_or_else(|| panic!("no conntrack entry for the stream: {ct}"))
        .parse()
        .unwrap();
    // Remove another endpoint (its pod is deleted) and the UDP service's only endpoint.
    let victim = lab
        .state
        .pods
        .iter()
        .find(|p| p.name.contains("-w") && p.ip != Some(serving) && p.name != "n1-w1")
        .unwrap()
        .clone();
    cni_del(&lab, victim.node, &victim.netns);
    cni_del(&lab, 1, &pod_ns(&lab, "n2-solo"));
    // The removal reaches every node while the stream runs.
    let vip = victim.ip.unwrap().to_string();
    if !wait_for(Duration::from_secs(10), || {
        (0..3).all(|n| !svc_table(&lab, n).contains(&vip))
    }) {
        let eps = lab
            .cli(&t, &["get", "endpoints", "-A", "-o", "wide"])
            .unwrap();
        let tables: Vec<String> = (0..3).map(|n| svc_table(&lab, n)).collect();
        let log = std::fs::read_to_string(lab.dir().join("agent-n1.log")).unwrap_or_default();
        panic!(
            "{vip} ({}) still programmed:\n{eps}\n{}\n{log}",
            victim.name,
            tables.join("\n-----\n")
        );
    }
    // Exactly the stale UDP entries are gone.
    assert!(wait_for(Duration::from_secs(5), || udp_entries(&lab) == 0));
    // kill -9 and restart every agent while the stream runs: nothing changes.
    let before: Vec<String> = (0..3).map(|n| svc_table(&lab, n)).collect();
    for n in 0..3 {
        let name = format!("agent n{}", n + 1);
        let pid = common::pid_of(&lab, &name);
        lab.stop(pid, true);
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
    }
    let restarted_at = stream_start.elapsed();
    let out = stream.join().unwrap();
    assert!(
        out.status.success(),
        "the stream broke: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for iv in rep["intervals"].as_array().unwrap() {
        assert!(
            iv["sum"]["bytes"].as_f64().unwrap_or(0.0) > 0.0,
            "a second without traffic: {iv}"
        );
    }
    assert!(
        restarted_at < Duration::from_secs(9),
        "the restarts must happen while the 10 s stream runs (done after {restarted_at:?})"
    );
    // The restarted agents have synced (their first full sync) and changed nothing.
    std::thread::sleep(Duration::from_secs(2));
    for (n, b) in before.iter().enumerate() {
        let now = svc_table(&lab, n);
        assert_eq!(&now, b, "node n{} changed on restart", n + 1);
    }
    // New connections reach every remaining endpoint and never the removed one.
    let web2 = apply_service(
        &lab,
        "web2",
        "  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let ip2 = web2["spec"]["clusterIP"].as_str().unwrap().to_string();
    let from = client.clone();
    reach(&lab, &from, &format!("http://{ip2}/"));
    let names: std::collections::BTreeSet<String> = (0..60)
        .map(|_| get(&lab, &from, &format!("http://{ip2}/")).expect("a remaining endpoint answers"))
        .collect();
    assert!(!names.contains(&victim.name), "{names:?}");
    assert_eq!(names.len(), 5, "{names:?}");
}
