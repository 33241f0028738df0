//! Tenants on a 3-node lab: two tenants with the same network range (so the same pod
//! addresses, on the same node), each in its own world on every node. Every pod reaches
//! the pods of its tenant by ICMP and TCP; not a packet reaches the other tenant's pods
//! (counted at the receivers, by an nftables counter in every pod); both tenants' pods
//! with the same address reach the same outside server at once; a restarted agent
//! changes nothing; deleting a tenant's network removes its world from every node. A
//! probe matrix (TCP and UDP, from every pod, node and an outside client, to pod
//! addresses, cluster IPs, external IPs and node ports) is checked at the receivers.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::{add_pod_in, http_get, serve_node, NODE_HTTP_PORT};
use common::{pid_of, require, trellis};
use trellis_lab::cluster::{network_manifest, Timing};
use trellis_lab::conformance::probe::{probe_addresses, EchoServers, ProbeConfig, Receipt, Target};
use trellis_lab::conformance::PortProto;
use trellis_lab::{wait_for, Lab};

#[derive(Debug, Clone)]
struct Pod {
    tenant: &'static str,
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

/// Add pod `name` of `tenant`'s namespace on node `n` (CNI args `extra` besides the
/// namespace), with its web server and a counter of the echo requests it receives
/// (see [`echo_requests`]).
fn place(lab: &mut Lab, tenant: &'static str, n: usize, name: &str, extra: &str) -> Pod {
    let ip = add_pod_in(
        lab,
        n,
        name,
        &format!("K8S_POD_NAMESPACE={tenant}-ns{extra}"),
        None,
    );
    let p = lab.state.pods.last().unwrap().clone();
    lab.exec(
        &p.netns,
        &[
            "nft",
            "add table ip probe; add chain ip probe in { type filter hook input priority 0; }; add rule ip probe in icmp type echo-request counter",
        ],
    )
    .unwrap();
    Pod {
        tenant,
        name: p.name,
        netns: p.netns,
        ip,
    }
}

/// Echo requests that reached `pod` (its input hook counts them).
fn echo_requests(lab: &Lab, pod: &Pod) -> u64 {
    let out = lab
        .exec(&pod.netns, &["nft", "list", "table", "ip", "probe"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("packets ").expect("counter") + "packets ".len();
    text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn ping(lab: &Lab, from: &Pod, to: Ipv4Addr) -> bool {
    lab.exec_any(
        &from.netns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", &to.to_string()],
    )
    .is_ok_and(|o| o.status.success())
}

/// What the world of `tenant` holds on node `n`: its links and routes.
fn world_state(lab: &Lab, n: usize, tenant: &str) -> String {
    let path = lab
        .agent_paths(n)
        .state_dir
        .join(format!("worlds/{tenant}/netns"));
    let p = path.display().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={p}"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["ip", "-o", "link"])
        + &run(&["ip", "route"])
        + &run(&["ip", "neigh", "show", "nud", "permanent"])
}

/// The nftables ruleset of `tenant`'s world on node `n` (for failure messages).
fn world_nft(lab: &Lab, n: usize, tenant: &str) -> String {
    let path = lab
        .agent_paths(n)
        .state_dir
        .join(format!("worlds/{tenant}/netns"));
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Who probes: a pod of a tenant, a node, or the outside client (the underlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source<'a> {
    Pod(&'a str),
    Node,
    Outside,
}

/// What is probed, and which tenant's pods it must lead to (for a pod address: the
/// source's own tenant's pod with it, if any).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    PodIp(Ipv4Addr),
    ClusterIp,
    External(&'static str),
    NodePort(&'static str),
}

/// The addresses one round probes (each with what it is) on two columns.
type Round = (Vec<(Ipv4Addr, Dest)>, [PortProto; 2]);

/// The tenants' echo Services: the same cluster IP, an external IP and TCP and UDP
/// node ports each.
const ECHO_PORT: u16 = 7001;
const ECHO_VIP: &str = "10.96.0.60";
const ECHO: [(&str, &str, [u16; 2]); 2] = [
    ("red", "192.0.2.90", [30701, 30702]),
    ("blue", "192.0.2.91", [30703, 30704]),
];

/// Every probe of the matrix must reach exactly what its tenant owns, and the echo
/// servers must have received only probes whose source may reach them.
fn probe_matrix(lab: &Lab, t: &std::path::Path, pods: &[Pod]) {
    let mut svcs = String::new();
    for (tenant, external, [tcp, udp]) in ECHO {
        svcs += &format!(
            "apiVersion: trellis/v1\nkind: Service\nmetadata: {{name: echo, namespace: {tenant}-ns}}\n\
             spec: {{type: NodePort, clusterIP: {ECHO_VIP}, externalIPs: [{external}], selector: {{app: web}}, ports: [\
             {{name: t, protocol: TCP, port: {ECHO_PORT}, targetPort: {ECHO_PORT}, nodePort: {tcp}}}, \
             {{name: u, protocol: UDP, port: {ECHO_PORT}, targetPort: {ECHO_PORT}, nodePort: {udp}}}]}}\n---\n"
        );
        let node1 = lab.state.nodes[0].addr.to_string();
        lab.exec(
            &lab.state.underlay,
            &[
                "ip",
                "route",
                "replace",
                &format!("{external}/32"),
                "via",
                &node1,
            ],
        )
        .unwrap();
    }
    lab.apply(t, &svcs).unwrap();
    // The outside client routes the pods' and services' ranges to the first node too, so
    // its probes of them are real attempts.
    for range in ["10.250.0.0/16", "10.96.0.0/16"] {
        let node1 = lab.state.nodes[0].addr.to_string();
        lab.exec(
            &lab.state.underlay,
            &["ip", "route", "replace", range, "via", &node1],
        )
        .unwrap();
    }
    let targets: Vec<Target> = pods
        .iter()
        .map(|p| Target {
            name: format!("{}/{}", p.tenant, p.name),
            netns: p.netns.clone(),
            ip: p.ip,
        })
        .collect();
    let servers = EchoServers::start(&targets, &[ECHO_PORT]).unwrap();
    let mut sources: Vec<(Target, Source)> = pods
        .iter()
        .map(|p| {
            (
                targets[pods.iter().position(|q| q.name == p.name).unwrap()].clone(),
                Source::Pod(p.tenant),
            )
        })
        .collect();
    for node in &lab.state.nodes {
        let target = Target {
            name: node.name.clone(),
            netns: node.netns.clone(),
            ip: node.addr,
        };
        sources.push((target, Source::Node));
    }
    let outside = Target {
        name: "outside".into(),
        netns: lab.state.underlay.clone(),
        ip: Ipv4Addr::UNSPECIFIED,
    };
    sources.push((outside, Source::Outside));

    let mut pod_ips: Vec<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    pod_ips.sort();
    pod_ips.dedup();
    let vip: Ipv4Addr = ECHO_VIP.parse().unwrap();
    let mut rounds: Vec<Round> = Vec::new();
    let mut round_a: Vec<(Ipv4Addr, Dest)> =
        pod_ips.iter().map(|ip| (*ip, Dest::PodIp(*ip))).collect();
    round_a.push((vip, Dest::ClusterIp));
    for (tenant, external, _) in ECHO {
        round_a.push((external.parse().unwrap(), Dest::External(tenant)));
    }
    rounds.push((
        round_a,
        [PortProto::tcp(ECHO_PORT), PortProto::udp(ECHO_PORT)],
    ));
    for (tenant, _, [tcp, udp]) in ECHO {
        let dests = lab
            .state
            .nodes
            .iter()
            .map(|n| (n.addr, Dest::NodePort(tenant)))
            .collect();
        rounds.push((dests, [PortProto::tcp(tcp), PortProto::udp(udp)]));
    }

    // Whether `source` must reach `dest`, and which pods may receive it.
    let expect = |source: Source, dest: &Dest| -> (bool, Vec<usize>) {
        let of = |tenant: &str| -> Vec<usize> {
            (0..pods.len())
                .filter(|&i| pods[i].tenant == tenant)
                .collect()
        };
        match (source, dest) {
            (Source::Pod(t), Dest::PodIp(ip)) => {
                let at: Vec<usize> = of(t).into_iter().filter(|&i| pods[i].ip == *ip).collect();
                (!at.is_empty(), at)
            }
            (_, Dest::PodIp(_)) => (false, vec![]),
            (Source::Pod(t), Dest::ClusterIp) => (true, of(t)),
            (_, Dest::ClusterIp) => (false, vec![]),
            (Source::Pod(t), Dest::External(owner) | Dest::NodePort(owner)) => {
                (t == *owner, if t == *owner { of(t) } else { vec![] })
            }
            (_, Dest::External(owner) | Dest::NodePort(owner)) => (true, of(owner)),
        }
    };
    let cfg = ProbeConfig {
        timeout: Duration::from_millis(1500),
        udp_resend: Duration::from_millis(500),
    };
    let source_targets: Vec<Target> = sources.iter().map(|(t, _)| t.clone()).collect();
    let mut probes = 0;
    for (dests, columns) in &rounds {
        let ips: Vec<Ipv4Addr> = dests.iter().map(|(ip, _)| *ip).collect();
        // The first round may still resolve neighbours and program the new Services:
        // until the outcomes match, up to 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let check = |outcomes: &trellis_lab::conformance::probe::Outcomes| -> Vec<String> {
            let mut wrong = Vec::new();
            for (c, col) in columns.iter().enumerate() {
                for (s, (src, kind)) in sources.iter().enumerate() {
                    for (d, (ip, dest)) in dests.iter().enumerate() {
                        let got = outcomes.get(c, s, d);
                        if got.reached() != expect(*kind, dest).0 {
                            wrong.push(format!("{} -> {ip} ({dest:?}) {col}: {got}", src.name));
                        }
                    }
                }
            }
            wrong
        };
        let mut wrong;
        loop {
            servers.take_received();
            let outcomes = probe_addresses(&source_targets, &ips, columns, &cfg).unwrap();
            wrong = check(&outcomes);
            if wrong.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(
            wrong.is_empty(),
            "the probe matrix differs:\n{}",
            wrong.join("\n")
        );
        probes += columns.len() * sources.len() * dests.len();
        // Counted at the receivers: every probe arrived only where its source may reach.
        let received: Vec<Receipt> = servers.take_received();
        for r in &received {
            let (src, kind) = &sources[r.source];
            let (ip, dest) = &dests[r.dest];
            let (_, may) = expect(*kind, dest);
            assert!(
                may.contains(&r.at),
                "{} -> {ip} ({dest:?}) {} arrived at {} ({})",
                src.name,
                r.column,
                pods[r.at].name,
                pods[r.at].tenant
            );
        }
        assert!(!received.is_empty());
    }
    assert!(probes > 150, "{probes}");

    // ICMP from the nodes and the outside client to every pod address: not one echo
    // request arrives at any pod (the pods' counters stay).
    let before: Vec<u64> = pods.iter().map(|p| echo_requests(lab, p)).collect();
    let pings: Vec<std::process::Child> = sources
        .iter()
        .filter(|(_, kind)| *kind != Source::Pod("red") && *kind != Source::Pod("blue"))
        .flat_map(|(src, _)| {
            pod_ips.iter().map(move |ip| {
                std::process::Command::new("ip")
                    .args([
                        "netns", "exec", &src.netns, "ping", "-c", "2", "-i", "0.2", "-W", "1",
                    ])
                    .arg(ip.to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
        })
        .collect();
    for mut p in pings {
        assert!(
            !p.wait().unwrap().success(),
            "a node or the outside reached a pod address"
        );
    }
    let after: Vec<u64> = pods.iter().map(|p| echo_requests(lab, p)).collect();
    assert_eq!(
        after, before,
        "echo requests from nodes or the outside arrived at pods"
    );
}

#[test]
fn two_tenants_with_the_same_addresses_never_meet() {
    require(&["ip", "nft", "ping", "busybox", "nsenter", "dig"]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = Lab::new(3).unwrap();
    lab.start_server(&t, &timing).unwrap();
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    for n in 0..3 {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
        serve_node(&mut lab, n);
    }
    let mut manifests = String::new();
    for tenant in ["red", "blue"] {
        manifests += &format!(
            "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {{name: {tenant}}}\nspec: {{serviceCIDR: 10.96.0.0/16}}\n---\n\
             apiVersion: trellis/v1\nkind: Network\nmetadata: {{name: {tenant}-pods}}\nspec: {{cidr: 10.250.0.0/16, tenant: {tenant}}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: {tenant}-ns}}\nspec: {{tenant: {tenant}}}\n---\n"
        );
    }
    lab.apply(&t, &manifests).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // One pod of each tenant on every node; blue has one more on the last node.
    let mut pods = Vec::new();
    let mut place = |lab: &mut Lab, tenant: &'static str, n: usize, name: &str| {
        pods.push(place(lab, tenant, n, name, ";LABELS=app=web"));
    };
    for n in 0..3 {
        place(&mut lab, "red", n, &format!("red{n}"));
        place(&mut lab, "blue", n, &format!("blue{n}"));
    }
    place(&mut lab, "blue", 2, "blue-extra");
    // The same addresses in both worlds, on the same node.
    for n in 0..3 {
        assert_eq!(pods[2 * n].ip, pods[2 * n + 1].ip, "{pods:?}");
        assert!(pods[2 * n].ip.to_string().starts_with("10.250."));
    }
    let extra = pods[6].clone();
    assert!(!pods.iter().any(|p| p.tenant == "red" && p.ip == extra.ip));

    // Every pod reaches every other pod of its tenant (ICMP, and TCP to its web server,
    // which answers with its name: the right world's pod answered).
    let mut sent = vec![0u64; pods.len()];
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i == j || from.tenant != to.tenant {
                continue;
            }
            assert!(
                wait_for(Duration::from_secs(10), || ping(&lab, from, to.ip)),
                "{} cannot ping {} ({})",
                from.name,
                to.name,
                to.ip
            );
            sent[j] += 2;
            let page = http_get(&lab, &from.netns, to.ip);
            assert_eq!(page.trim(), to.name, "{} fetched {}", from.name, to.ip);
        }
    }
    // An address only blue has is not reachable from red.
    assert!(!ping(&lab, &pods[0], extra.ip));
    // Counted at the receivers: exactly what their own tenant sent, nothing more (the
    // failed retries of `wait_for` are counted where they arrived, which must also be
    // the right pod, so allow only more echo requests at the intended receiver).
    for (j, p) in pods.iter().enumerate() {
        let got = echo_requests(&lab, p);
        assert!(
            got >= sent[j],
            "{} got {got} echo requests, {} were sent to it",
            p.name,
            sent[j]
        );
    }
    // Precisely: one more round where every red pod pings every address once, and only
    // red pods' counters move, each by the number of red senders.
    let before: Vec<u64> = pods.iter().map(|p| echo_requests(&lab, p)).collect();
    let reds: Vec<&Pod> = pods.iter().filter(|p| p.tenant == "red").collect();
    for from in &reds {
        for to in &reds {
            if from.name != to.name {
                assert!(ping(&lab, from, to.ip));
            }
        }
        let _ = ping(&lab, from, extra.ip);
    }
    for (j, p) in pods.iter().enumerate() {
        let delta = echo_requests(&lab, p) - before[j];
        let want = if p.tenant == "red" {
            2 * (reds.len() as u64 - 1)
        } else {
            0
        };
        assert_eq!(delta, want, "{} received {delta} echo requests", p.name);
    }

    // Both tenants' pods with the same address reach the same outside server at once
    // (the third node's underlay address), each masqueraded in its own world.
    let server = lab.state.nodes[2].addr;
    let fetch = |p: &Pod| {
        let url = format!("http://{server}:{NODE_HTTP_PORT}/");
        let out = lab
            .exec_any(
                &p.netns,
                &["timeout", "3", "busybox", "wget", "-q", "-O-", &url],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| fetch(&pods[0]));
        let b = s.spawn(|| fetch(&pods[1]));
        let node = lab.state.nodes[2].name.clone();
        assert_eq!(a.join().unwrap(), node);
        assert_eq!(b.join().unwrap(), node);
    });

    // Services: the same cluster IP in both tenants; each leads to its own tenant's
    // pods only. DNS answers a tenant's own names and not the other's.
    let mut svcs = String::new();
    for (tenant, node_port, external) in [("red", 30080, 80), ("blue", 30081, 81)] {
        svcs += &format!(
            "apiVersion: trellis/v1\nkind: Service\nmetadata: {{name: web, namespace: {tenant}-ns}}\n\
             spec: {{type: NodePort, clusterIP: 10.96.0.50, externalIPs: [192.0.2.{external}], selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080, nodePort: {node_port}}}]}}\n---\n"
        );
    }
    lab.apply(&t, &svcs).unwrap();
    let vip: Ipv4Addr = "10.96.0.50".parse().unwrap();
    for from in [&pods[0], &pods[1], &pods[4], &pods[5]] {
        let mine: Vec<&str> = pods
            .iter()
            .filter(|p| p.tenant == from.tenant)
            .map(|p| p.name.as_str())
            .collect();
        assert!(
            wait_for(Duration::from_secs(15), || {
                let page = common::cluster::http_get_port(&lab, &from.netns, vip, 80);
                mine.contains(&page.trim())
            }),
            "{} cannot reach its tenant's service at {vip}; endpoints:\n{}\nnode n1's red world:\n{}\nagent log:\n{}",
            from.name,
            lab.cli(&t, &["get", "ep", "-A", "-o", "yaml"]).unwrap_or_default(),
            world_nft(&lab, 0, "red"),
            std::fs::read_to_string(lab.dir().join("agent-n1.log")).unwrap_or_default()
        );
        for _ in 0..6 {
            let page = common::cluster::http_get_port(&lab, &from.netns, vip, 80);
            assert!(
                mine.contains(&page.trim()),
                "{} got {page:?} from {vip}, not one of {mine:?}",
                from.name
            );
        }
        let gw = {
            let o = from.ip.octets();
            format!("{}.{}.{}.1", o[0], o[1], o[2])
        };
        let other = if from.tenant == "red" { "blue" } else { "red" };
        let lookup = |name: &str| {
            lab.exec_any(&from.netns, &["busybox", "nslookup", name, &gw])
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stdout).into_owned(),
                    )
                })
                .unwrap()
        };
        let own = format!("web.{}-ns.svc.cluster.local", from.tenant);
        assert!(
            wait_for(Duration::from_secs(10), || {
                let (ok, out) = lookup(&own);
                ok && out.contains("10.96.0.50")
            }),
            "{} cannot resolve {own}: {:?}",
            from.name,
            lookup(&own)
        );
        let theirs = format!("web.{other}-ns.svc.cluster.local");
        let (ok, out) = lookup(&theirs);
        assert!(
            !ok && !out.contains("10.96.0.50"),
            "{} resolved {theirs}: {out}",
            from.name
        );
    }

    // A tenant's node port, from outside the cluster (the underlay), leads to that
    // tenant's pods on every node; no tenant's pod reaches another's node port.
    let underlay = lab.state.underlay.clone();
    for (tenant, node_port) in [("red", 30080u16), ("blue", 30081)] {
        let mine: Vec<String> = pods
            .iter()
            .filter(|p| p.tenant == tenant)
            .map(|p| p.name.clone())
            .collect();
        for n in 0..3 {
            let addr = lab.state.nodes[n].addr;
            assert!(
                wait_for(Duration::from_secs(10), || {
                    let page = common::cluster::http_get_port(&lab, &underlay, addr, node_port);
                    mine.contains(&page.trim().to_string())
                }),
                "{tenant}'s node port {node_port} on {addr} does not lead to {mine:?}"
            );
        }
        let other = pods.iter().find(|p| p.tenant != tenant).unwrap();
        let addr = lab.state.nodes[0].addr;
        let page = common::cluster::http_get_port(&lab, &other.netns, addr, node_port);
        assert!(
            page.trim().is_empty(),
            "{} reached {tenant}'s node port: {page}",
            other.name
        );
    }

    // A tenant's external IP, routed to a node by the underlay, leads to that tenant's
    // pods.
    let node1 = lab.state.nodes[0].addr.to_string();
    for (tenant, external) in [("red", "192.0.2.80"), ("blue", "192.0.2.81")] {
        lab.exec(
            &underlay,
            &[
                "ip",
                "route",
                "replace",
                &format!("{external}/32"),
                "via",
                &node1,
            ],
        )
        .unwrap();
        let mine: Vec<String> = pods
            .iter()
            .filter(|p| p.tenant == tenant)
            .map(|p| p.name.clone())
            .collect();
        let vip: Ipv4Addr = external.parse().unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || {
                let page = common::cluster::http_get_port(&lab, &underlay, vip, 80);
                mine.contains(&page.trim().to_string())
            }),
            "{tenant}'s external IP {external} does not lead to {mine:?}"
        );
    }

    // The probe matrix over TCP and UDP: every pod, every node and the outside client
    // probe every pod address, the echo Service's cluster IP, its external IP and its
    // node ports on every node; the echo servers log what reached which pod.
    probe_matrix(&lab, &t, &pods);

    // DNS-based service discovery in each world beyond A records: the same cluster IP
    // reverses to each tenant's own Service, a named port's SRV record answers, the
    // other tenant's does not, and the schema version is there.
    for from in [&pods[0], &pods[1]] {
        let o = from.ip.octets();
        let server = format!("@{}.{}.{}.1", o[0], o[1], o[2]);
        let dig = |args: &[&str]| {
            let mut cmd = vec!["dig", "+short", "+time=2", "+tries=2", &server];
            cmd.extend_from_slice(args);
            let out = lab.exec_any(&from.netns, &cmd).unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let own = format!("echo.{}-ns.svc.cluster.local.", from.tenant);
        assert_eq!(dig(&["-x", ECHO_VIP]), own, "{}: PTR", from.name);
        let srv = dig(&[
            "SRV",
            &format!("_t._tcp.echo.{}-ns.svc.cluster.local", from.tenant),
        ]);
        assert_eq!(
            srv,
            format!("0 100 {ECHO_PORT} {own}"),
            "{}: SRV",
            from.name
        );
        let other = if from.tenant == "red" { "blue" } else { "red" };
        let theirs = dig(&["SRV", &format!("_t._tcp.echo.{other}-ns.svc.cluster.local")]);
        assert!(
            theirs.is_empty(),
            "{}: {other}'s SRV answered: {theirs}",
            from.name
        );
        assert_eq!(dig(&["TXT", "dns-version.cluster.local"]), "\"1.1.0\"");
    }

    // Policy inside each world: a default deny in red's namespace isolates red's pods
    // and leaves blue's alone; `namespaceSelector: {}` then means red's namespaces only.
    let (r0, r1, b0, b1) = (&pods[0], &pods[2], &pods[1], &pods[3]);
    lab.apply(
        &t,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: red-ns}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !ping(&lab, r0, r1.ip)),
        "the default deny does not isolate red"
    );
    assert!(ping(&lab, b0, b1.ip), "red's policy reached blue");
    // `policy check` answers in the world of the namespace: the same addresses, denied
    // in red, allowed in blue; two worlds named at once: no packet crosses.
    let check = |args: &[&str]| {
        let (ok, out, err) = common::policy_check(&lab, &t, args);
        (ok, out + &err)
    };
    let (src, dst) = (r0.ip.to_string(), format!("{}:8080", r1.ip));
    assert_eq!((b0.ip, b1.ip), (r0.ip, r1.ip));
    let (ok, out) = check(&["-n", "red-ns", &src, &dst]);
    assert!(!ok && out.contains("tenant red"), "{out}");
    let (ok, out) = check(&["-n", "blue-ns", &src, &dst]);
    assert!(ok && out.contains("tenant blue"), "{out}");
    let (ok, out) = check(&["red-ns/x", "blue-ns/y:80"]);
    assert!(!ok && out.contains("no packet crosses"), "{out}");
    lab.apply(
        &t,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-all, namespace: red-ns}\n\
         spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || ping(&lab, r0, r1.ip)),
        "red pods do not reach each other again"
    );
    // A ClusterNetworkPolicy scoped to blue denies inside blue only.
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {name: blue-lockdown}\n\
         spec: {tenant: blue, tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !ping(&lab, b0, b1.ip)),
        "the blue-scoped policy does not deny in blue"
    );
    assert!(ping(&lab, r0, r1.ip), "the blue-scoped policy reached red");
    lab.cli(&t, &["delete", "cnp", "blue-lockdown"]).unwrap();
    for name in ["deny", "from-all"] {
        lab.cli(&t, &["delete", "netpol", name, "-n", "red-ns"])
            .unwrap();
    }
    assert!(wait_for(Duration::from_secs(10), || ping(&lab, b0, b1.ip)));

    // kill -9 and restart of an agent under traffic in both tenants (node 1's pods
    // pinging node 2's, 20 per second for 4 s): no echo is lost, and its worlds are
    // adopted unchanged.
    let before = [world_state(&lab, 0, "red"), world_state(&lab, 0, "blue")];
    let streams: Vec<std::process::Child> = [(&pods[0], pods[2].ip), (&pods[1], pods[3].ip)]
        .iter()
        .map(|(from, to)| {
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &from.netns,
                    "ping",
                    "-i",
                    "0.05",
                    "-c",
                    "80",
                    "-W",
                    "1",
                ])
                .arg(to.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let pid = pid_of(&lab, "agent n1");
    lab.stop(pid, true);
    lab.start_cluster_agent(&t, 0, "default", &timing).unwrap();
    for s in streams {
        let out = s.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(" 0% packet loss"),
            "echoes lost across the agent restart:\n{text}"
        );
    }
    assert_eq!(
        [world_state(&lab, 0, "red"), world_state(&lab, 0, "blue")],
        before
    );
    assert!(ping(&lab, &pods[0], pods[2].ip));
    assert!(ping(&lab, &pods[1], pods[3].ip));

    // Deleting blue's network removes blue's world from every node; red carries on.
    for p in pods.iter().filter(|p| p.tenant == "blue") {
        let httpd = pid_of(&lab, &format!("httpd {}", p.name));
        lab.stop(httpd, true);
        lab.remove_pod_netns(&p.netns).unwrap();
    }
    lab.cli(&t, &["delete", "network", "blue-pods"]).unwrap();
    for n in 0..3 {
        let world = lab.agent_paths(n).state_dir.join("worlds/blue");
        assert!(
            wait_for(Duration::from_secs(15), || !world.exists()),
            "node {n} keeps {}",
            world.display()
        );
        let links = lab
            .exec(&lab.state.nodes[n].netns.clone(), &["ip", "-o", "link"])
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert_eq!(links.matches("trlw").count(), 1, "{links}");
    }
    assert!(ping(&lab, &pods[0], pods[4].ip));
}

/// A TenantPeering joins two worlds: before it, red's pod cannot reach green's (on
/// another node); with it, they reach each other, each seeing the other's own address;
/// a third tenant with red's range stays apart; deleting the peering parts them again.
#[test]
fn a_peering_joins_two_worlds_and_only_them() {
    require(&["ip", "nft", "ping", "busybox", "nsenter"]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = Lab::new(2).unwrap();
    lab.start_server(&t, &timing).unwrap();
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    for n in 0..2 {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
    }
    let mut manifests = String::new();
    for (tenant, cidr, svc) in [
        ("red", "10.250.0.0/16", "10.96.0.0/16"),
        ("blue", "10.250.0.0/16", "10.96.0.0/16"),
        ("green", "10.60.0.0/16", "10.97.0.0/16"),
    ] {
        manifests += &format!(
            "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {{name: {tenant}}}\nspec: {{serviceCIDR: {svc}}}\n---\n\
             apiVersion: trellis/v1\nkind: Network\nmetadata: {{name: {tenant}-pods}}\nspec: {{cidr: {cidr}, tenant: {tenant}}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: {tenant}-ns}}\nspec: {{tenant: {tenant}}}\n---\n"
        );
    }
    lab.apply(&t, &manifests).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let place = |lab: &mut Lab, tenant: &'static str, n: usize| {
        place(lab, tenant, n, tenant, ";LABELS=app=web")
    };
    let red = place(&mut lab, "red", 0);
    let blue = place(&mut lab, "blue", 0);
    let green = place(&mut lab, "green", 1);
    assert!(
        !ping(&lab, &red, green.ip),
        "red reached green before any peering"
    );
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: TenantPeering\nmetadata: {name: red-green}\nspec: {tenants: [red, green]}\n",
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || ping(&lab, &red, green.ip)),
        "red does not reach green through the peering"
    );
    assert!(ping(&lab, &green, red.ip), "green does not reach red");
    // Each side sees the other's own address (no masquerade between peered worlds).
    let seen = |from: &Pod, to: &Pod| {
        let url = format!("http://{}:8080/cgi-bin/ip", to.ip);
        let out = lab
            .exec_any(
                &from.netns,
                &["timeout", "3", "busybox", "wget", "-q", "-O-", &url],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // (busybox httpd writes the client as `[::ffff:a.b.c.d]`.)
    let saw = seen(&red, &green);
    assert!(
        saw.starts_with(&green.name) && saw.ends_with(&format!(":{}]", red.ip)),
        "{saw}"
    );
    let saw = seen(&green, &red);
    assert!(
        saw.starts_with(&red.name) && saw.ends_with(&format!(":{}]", green.ip)),
        "{saw}"
    );
    // Blue has red's addresses but no peering: it stays apart.
    assert!(!ping(&lab, &blue, green.ip), "blue reached green");
    // The peering deleted: red and green are apart again.
    lab.cli(&t, &["delete", "tenantpeering", "red-green"])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || !ping(&lab, &red, green.ip)),
        "red still reaches green after the peering went"
    );
    // And each node stops serving the peer's network it served only for the peering
    // (green's world on red's node, red's on green's).
    for (n, tenant) in [(0, "green"), (1, "red")] {
        let world = lab
            .agent_paths(n)
            .state_dir
            .join(format!("worlds/{tenant}"));
        assert!(
            wait_for(Duration::from_secs(30), || !world.exists()),
            "node {n} keeps {} after the peering went",
            world.display()
        );
    }
    assert!(lab.agent_paths(0).state_dir.join("worlds/red").exists());
    assert!(!ping(&lab, &red, green.ip));

    // A tenant with a node port is served on every node, pods there or not: blue's
    // node port on the second node (where blue has no pod) leads to blue's pod.
    let blue_world = lab.agent_paths(1).state_dir.join("worlds/blue");
    assert!(!blue_world.exists());
    lab.apply(
        &t,
        "apiVersion: trellis/v1\nkind: Service\nmetadata: {name: web, namespace: blue-ns}\n\
         spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30090}]}\n",
    )
    .unwrap();
    let node2 = lab.state.nodes[1].addr;
    let underlay = lab.state.underlay.clone();
    assert!(
        wait_for(Duration::from_secs(20), || {
            common::cluster::http_get_port(&lab, &underlay, node2, 30090).trim() == blue.name
        }),
        "blue's node port on a node without blue's pods does not lead to blue's pod"
    );
    assert!(blue_world.exists());
}

/// A tenant's host-gw network, in a range no other world uses, is routed as it is: its
/// pods on two nodes reach each other with their own addresses and no tunnel; another
/// tenant's pod and the outside client (routed to it) reach none of them (counted at
/// the receiver); overlapping it, or a tenant network on a backend that cannot keep
/// worlds apart, is refused naming the field.
#[test]
fn a_host_gw_tenant_is_routed_as_it_is() {
    direct_tenant("host-gw");
}

/// The same with hybrid and a third node on another segment: routed as it is on the
/// first segment, through the tenant's own tunnel (in its world) to the other.
#[test]
fn a_hybrid_tenant_is_routed_as_it_is_on_its_segment() {
    direct_tenant("hybrid");
}

fn direct_tenant(backend: &str) {
    require(&["ip", "nft", "ping", "busybox", "nsenter"]);
    let t = trellis();
    let timing = Timing::default();
    let mut lab = Lab::new(2).unwrap();
    let hybrid = backend == "hybrid";
    if hybrid {
        lab.join_remote_node().unwrap();
    }
    lab.start_server(&t, &timing).unwrap();
    lab.apply(&t, &network_manifest("default", "vxlan"))
        .unwrap();
    for n in 0..lab.state.nodes.len() {
        lab.start_cluster_agent(&t, n, "default", &timing).unwrap();
    }
    let mut manifests = String::new();
    for (tenant, cidr, svc, backend) in [
        ("green", "10.70.0.0/16", "10.97.0.0/16", backend),
        ("red", "10.250.0.0/16", "10.96.0.0/16", "vxlan"),
    ] {
        manifests += &format!(
            "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {{name: {tenant}}}\nspec: {{serviceCIDR: {svc}}}\n---\n\
             apiVersion: trellis/v1\nkind: Network\nmetadata: {{name: {tenant}-pods}}\nspec: {{cidr: {cidr}, tenant: {tenant}, backend: {backend}}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: {tenant}-ns}}\nspec: {{tenant: {tenant}}}\n---\n"
        );
    }
    lab.apply(&t, &manifests).unwrap();
    // Bad input: refused, naming the field; nothing stored.
    for (manifest, field) in [
        (
            "apiVersion: trellis/v1\nkind: Network\nmetadata: {name: red-more}\nspec: {cidr: 10.70.0.0/20, tenant: red}\n",
            "spec.cidr",
        ),
        (
            "apiVersion: trellis/v1\nkind: Network\nmetadata: {name: red-udp}\nspec: {cidr: 10.80.0.0/16, tenant: red, backend: udp}\n",
            "spec.backend",
        ),
    ] {
        let e = lab.apply(&t, manifest).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    let nets = lab.cli(&t, &["get", "networks"]).unwrap();
    assert!(
        !nets.contains("red-more") && !nets.contains("red-udp"),
        "{nets}"
    );

    let place =
        |lab: &mut Lab, tenant: &'static str, n: usize, name: &str| place(lab, tenant, n, name, "");
    let g0 = place(&mut lab, "green", 0, "g0");
    let g1 = place(&mut lab, "green", 1, "g1");
    let red = place(&mut lab, "red", 0, "r0");
    assert!(g0.ip.to_string().starts_with("10.70.") && g1.ip.to_string().starts_with("10.70."));
    assert!(
        wait_for(Duration::from_secs(15), || ping(&lab, &g0, g1.ip)),
        "green's pods do not reach each other"
    );
    assert!(ping(&lab, &g1, g0.ip));
    // Their own addresses, no masquerade, and no tunnel in green's world.
    let url = format!("http://{}:8080/cgi-bin/ip", g1.ip);
    let out = lab
        .exec_any(
            &g0.netns,
            &["timeout", "3", "busybox", "wget", "-q", "-O-", &url],
        )
        .unwrap();
    let saw = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(saw.ends_with(&format!(":{}]", g0.ip)), "{saw}");
    let links = world_state(&lab, 0, "green");
    // (Tunnel devices are named `trl.<vni>`.)
    assert_eq!(links.contains(": trl."), hybrid, "{links}");
    // Hybrid: the pod on the other segment, through the tenant's tunnel.
    if hybrid {
        let g2 = place(&mut lab, "green", 2, "g2");
        assert!(
            wait_for(Duration::from_secs(15), || ping(&lab, &g2, g0.ip)),
            "green's pod on the other segment does not reach g0"
        );
        assert!(!ping(&lab, &red, g2.ip), "red reached green's remote pod");
    }
    // Not from red's pod, nor from the outside client routed to the range.
    let before = echo_requests(&lab, &g1);
    let before0 = echo_requests(&lab, &g0);
    assert!(!ping(&lab, &red, g1.ip), "red reached green's host-gw pod");
    let node1 = lab.state.nodes[0].addr.to_string();
    lab.exec(
        &lab.state.underlay,
        &["ip", "route", "replace", "10.70.0.0/16", "via", &node1],
    )
    .unwrap();
    let underlay = lab.state.underlay.clone();
    let outside = lab
        .exec_any(
            &underlay,
            &[
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                &g0.ip.to_string(),
            ],
        )
        .unwrap();
    assert!(!outside.status.success(), "the outside reached green's pod");
    assert_eq!(
        echo_requests(&lab, &g1),
        before,
        "echo requests crossed into green"
    );
    assert_eq!(
        echo_requests(&lab, &g0),
        before0,
        "echo requests from the outside reached g0"
    );
}
