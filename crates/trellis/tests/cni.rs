//! The CNI plugin against a real agent in a lab node: every command in every supported
//! version, bad input that must change nothing, DEL idempotency, 100 concurrent ADDs,
//! and chaining with the reference `tuning` and `portmap` plugins.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::{cni_env, host_veths, json, lab_with_agents, nft_table, plugin};
use serde_json::json;
use trellis_lab::{netns_path, wait_for, Lab};

fn conf(lab: &Lab, version: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = lab.cni_config(0, version);
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            c[k] = v.clone();
        }
    }
    c
}

fn ns(lab: &Lab, pod: &str) -> String {
    netns_path(&lab.state.pods.iter().find(|p| p.name == pod).unwrap().netns)
        .display()
        .to_string()
}

fn agent_reserved(lab: &Lab) -> u32 {
    common::agent_reserved(lab, 0)
}

fn hostport_elements(lab: &Lab) -> usize {
    common::hostport_elements(lab, &lab.state.nodes[0].netns)
}

fn no_host_veths(lab: &Lab) -> bool {
    wait_for(Duration::from_secs(10), || {
        host_veths(lab, &lab.state.nodes[0].netns).is_empty()
    })
}

#[test]
fn every_command_in_every_version() {
    let mut lab = lab_with_agents(1);
    let node = lab.state.nodes[0].netns.clone();
    for (i, v) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = lab.add_pod(0, &format!("v{i}")).unwrap();
        let path = ns(&lab, &pod.name);
        let id = format!("ver{i}");
        let add = lab
            .cni(
                &plugin(),
                0,
                &cni_env("ADD", &id, &path),
                &conf(&lab, v, json!({"dns": {"nameservers": ["10.96.0.10"]}})),
            )
            .unwrap();
        assert!(
            add.status.success(),
            "ADD {v}: {}",
            String::from_utf8_lossy(&add.stdout)
        );
        let r = json(&add);
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        assert_eq!(r["interfaces"][2]["sandbox"], path.as_str());
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(r["ips"][0].get("version").is_some(), v == "0.4.0", "{r}");
        assert_eq!(r["interfaces"][2].get("mtu").is_some(), v == "1.1.0", "{r}");
        let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(
            addr.starts_with("10.244.1.") && addr.ends_with("/24"),
            "{addr}"
        );
        // the pod really has it and reaches its gateway and the node
        let ip_out = lab
            .exec(&pod.netns, &["ip", "-4", "-o", "addr", "show", "eth0"])
            .unwrap();
        assert!(String::from_utf8_lossy(&ip_out.stdout).contains(&addr));
        assert!(lab.ping(&pod.netns, "10.244.1.1".parse().unwrap()));
        assert!(lab.ping(&pod.netns, lab.state.nodes[0].addr));
        // CHECK with the result as prevResult
        let check = lab
            .cni(
                &plugin(),
                0,
                &cni_env("CHECK", &id, &path),
                &conf(&lab, v, json!({"prevResult": r})),
            )
            .unwrap();
        assert!(
            check.status.success(),
            "CHECK {v}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        // CHECK notices damage
        lab.exec(&pod.netns, &["ip", "addr", "flush", "dev", "eth0"])
            .unwrap();
        let check = lab
            .cni(
                &plugin(),
                0,
                &cni_env("CHECK", &id, &path),
                &conf(&lab, v, json!({"prevResult": r})),
            )
            .unwrap();
        assert!(!check.status.success());
        assert_eq!(json(&check)["code"], 106);
        // DEL twice
        for _ in 0..2 {
            let del = lab
                .cni(
                    &plugin(),
                    0,
                    &cni_env("DEL", &id, &path),
                    &conf(&lab, v, json!({})),
                )
                .unwrap();
            assert!(
                del.status.success(),
                "DEL {v}: {}",
                String::from_utf8_lossy(&del.stdout)
            );
            assert!(del.stdout.is_empty());
        }
    }
    assert_eq!(agent_reserved(&lab), 0);
    assert!(
        no_host_veths(&lab),
        "veths left: {:?}",
        host_veths(&lab, &node)
    );

    // VERSION
    let out = lab
        .cni(
            &plugin(),
            0,
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": "1.0.0"}),
        )
        .unwrap();
    let v = json(&out);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));

    // STATUS: 1.1.0 only; fails with 50 when the agent is unreachable
    let ok = lab
        .cni(
            &plugin(),
            0,
            &[("CNI_COMMAND", "STATUS")],
            &conf(&lab, "1.1.0", json!({})),
        )
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let old = lab
        .cni(
            &plugin(),
            0,
            &[("CNI_COMMAND", "STATUS")],
            &conf(&lab, "1.0.0", json!({})),
        )
        .unwrap();
    assert_eq!(json(&old)["code"], 1);
    let down = lab
        .cni(
            &plugin(),
            0,
            &[("CNI_COMMAND", "STATUS")],
            &conf(&lab, "1.1.0", json!({"agentSocket": "/nonexistent.sock"})),
        )
        .unwrap();
    assert_eq!(json(&down)["code"], 50);

    // GC: three attachments, keep one
    let mut kept = String::new();
    for i in 0..3 {
        let pod = lab.add_pod(0, &format!("gc{i}")).unwrap();
        let path = ns(&lab, &pod.name);
        let add = lab
            .cni(
                &plugin(),
                0,
                &cni_env("ADD", &format!("gc{i}"), &path),
                &conf(&lab, "1.1.0", json!({})),
            )
            .unwrap();
        assert!(add.status.success());
        if i == 0 {
            kept = pod.netns.clone();
        }
    }
    let gc = lab
        .cni(
            &plugin(),
            0,
            &[("CNI_COMMAND", "GC")],
            &conf(
                &lab,
                "1.1.0",
                json!({"cni.dev/valid-attachments": [{"containerID": "gc0", "ifname": "eth0"}]}),
            ),
        )
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stdout)
    );
    assert_eq!(agent_reserved(&lab), 1);
    assert!(wait_for(Duration::from_secs(10), || host_veths(
        &lab, &node
    )
    .len()
        == 1));
    assert!(
        lab.ping(&kept, "10.244.1.1".parse().unwrap()),
        "the kept pod lost its network"
    );
}

#[test]
fn chained_after_a_previous_plugin_keeps_its_result() {
    let mut lab = lab_with_agents(1);
    let pod = lab.add_pod(0, "p").unwrap();
    let path = ns(&lab, &pod.name);
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "other0", "mac": "00:11:22:33:44:55"}], "ips": [{"address": "192.0.2.5/24", "interface": 0}]});
    let add = lab
        .cni(
            &plugin(),
            0,
            &cni_env("ADD", "chain1", &path),
            &conf(&lab, "1.0.0", json!({"prevResult": prev})),
        )
        .unwrap();
    let r = json(&add);
    assert_eq!(r["interfaces"][0]["name"], "other0");
    assert_eq!(r["interfaces"][3]["name"], "eth0");
    assert_eq!(r["ips"][1]["interface"], 3, "{r}");
}

/// Every bad input gets its code and a message naming the culprit, and changes nothing:
/// no link, no reservation, no nft element.
#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let mut lab = lab_with_agents(1);
    let node = lab.state.nodes[0].netns.clone();
    // one pod holding 10.244.1.50 and host port 8080, to collide with
    let holder = lab.add_pod(0, "holder").unwrap();
    let hpath = ns(&lab, &holder.name);
    let add = lab.cni(&plugin(), 0, &cni_env("ADD", "holder", &hpath), &conf(&lab, "1.1.0", json!({"runtimeConfig": {"ips": ["10.244.1.50/24"], "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}))).unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stdout)
    );
    assert_eq!(json(&add)["ips"][0]["address"], "10.244.1.50/24");

    let pod = lab.add_pod(0, "victim").unwrap();
    let path = ns(&lab, &pod.name);
    let snapshot = |lab: &Lab| {
        (
            common::links(lab, &node),
            nft_table(lab, &node),
            agent_reserved(lab),
            common::links(lab, &pod.netns),
        )
    };
    let before = snapshot(&lab);
    let good_env = cni_env("ADD", "victim", &path);
    let c = |extra: serde_json::Value| conf(&lab, "1.1.0", extra);
    // (what, environment, stdin, expected code, fragment the message must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", good_env.clone(), b"{\"cniVersion\": ".to_vec(), 6, "not valid JSON"),
        ("no CNI_COMMAND", good_env[1..].to_vec(), c(json!({})).to_string().into_bytes(), 4, "CNI_COMMAND"),
        ("bad CNI_COMMAND", vec![("CNI_COMMAND", "ATTACH"), good_env[1], good_env[2], good_env[3]], c(json!({})).to_string().into_bytes(), 4, "CNI_COMMAND"),
        ("no CNI_NETNS", vec![good_env[0], good_env[1], good_env[3]], c(json!({})).to_string().into_bytes(), 4, "CNI_NETNS"),
        ("missing netns", vec![good_env[0], good_env[1], ("CNI_NETNS", "/run/netns/does-not-exist"), good_env[3]], c(json!({})).to_string().into_bytes(), 4, "CNI_NETNS"),
        ("ifname too long", vec![good_env[0], good_env[1], good_env[2], ("CNI_IFNAME", "eth0123456789012")], c(json!({})).to_string().into_bytes(), 4, "CNI_IFNAME"),
        ("bad container id", vec![good_env[0], ("CNI_CONTAINERID", "../x"), good_env[2], good_env[3]], c(json!({})).to_string().into_bytes(), 4, "CNI_CONTAINERID"),
        ("bad CNI_ARGS", [good_env.clone(), vec![("CNI_ARGS", "IP")]].concat(), c(json!({})).to_string().into_bytes(), 4, "CNI_ARGS"),
        ("unknown version", good_env.clone(), conf(&lab, "0.3.1", json!({})).to_string().into_bytes(), 1, "0.3.1"),
        ("unknown field", good_env.clone(), c(json!({"bridgee": "x"})).to_string().into_bytes(), 2, "bridgee"),
        ("ipam given", good_env.clone(), c(json!({"ipam": {"type": "host-local"}})).to_string().into_bytes(), 2, "ipam"),
        ("bad mtu", good_env.clone(), c(json!({"mtu": 20})).to_string().into_bytes(), 7, "mtu"),
        ("bad CIDR", good_env.clone(), c(json!({"runtimeConfig": {"ips": ["10.244.1.300/24"]}})).to_string().into_bytes(), 7, "runtimeConfig.ips"),
        ("ip outside subnet", good_env.clone(), c(json!({"runtimeConfig": {"ips": ["10.9.9.9/24"]}})).to_string().into_bytes(), 102, "outside"),
        ("gateway requested", good_env.clone(), c(json!({"runtimeConfig": {"ips": ["10.244.1.1"]}})).to_string().into_bytes(), 102, "gateway"),
        ("ip taken", good_env.clone(), c(json!({"runtimeConfig": {"ips": ["10.244.1.50/24"]}})).to_string().into_bytes(), 101, "holder"),
        ("bad protocol", good_env.clone(), c(json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "sctp"}]}})).to_string().into_bytes(), 7, "protocol"),
        ("host port taken", good_env.clone(), c(json!({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}})).to_string().into_bytes(), 103, "8080"),
        ("bad mac", good_env.clone(), c(json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}})).to_string().into_bytes(), 7, "multicast"),
        ("agent down", good_env.clone(), c(json!({"agentSocket": "/run/nothing-here.sock"})).to_string().into_bytes(), 11, "not reachable"),
    ];
    for (what, env, stdin, code, frag) in cases {
        let mut cmd = lab.command(&node, plugin());
        cmd.env_clear()
            .env("CNI_PATH", "/usr/lib/cni")
            .envs(env.iter().copied());
        let out = run_with_stdin(cmd, &stdin);
        assert!(!out.status.success(), "{what}: succeeded");
        let e = json(&out);
        assert_eq!(e["code"], code, "{what}: {e}");
        assert!(
            e["msg"].as_str().unwrap().contains(frag),
            "{what}: message {:?} lacks {frag:?}",
            e["msg"]
        );
        assert!(e["cniVersion"].is_string(), "{what}: {e}");
        assert_eq!(snapshot(&lab), before, "{what} changed something");
    }
    // a container-side interface that already exists: the ADD fails after reserving
    // an address, and must roll the reservation and the veth back
    lab.exec(&pod.netns, &["ip", "link", "add", "eth0", "type", "bridge"])
        .unwrap();
    let before = snapshot(&lab);
    let out = lab.cni(&plugin(), 0, &good_env, &c(json!({"runtimeConfig": {"portMappings": [{"hostPort": 9090, "containerPort": 80}]}}))).unwrap();
    assert!(!out.status.success());
    assert_eq!(json(&out)["code"], 105);
    assert!(
        wait_for(Duration::from_secs(5), || snapshot(&lab) == before),
        "rollback left something behind"
    );
}

fn run_with_stdin(mut cmd: std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn del_after_the_netns_is_gone() {
    let mut lab = lab_with_agents(1);
    let pod = lab.add_pod(0, "gone").unwrap();
    let path = ns(&lab, &pod.name);
    let add = lab
        .cni(
            &plugin(),
            0,
            &cni_env("ADD", "gone", &path),
            &conf(&lab, "1.1.0", json!({})),
        )
        .unwrap();
    assert!(add.status.success());
    lab.remove_pod_netns(&pod.netns).unwrap();
    for env in [
        cni_env("DEL", "gone", &path),
        vec![
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "gone"),
            ("CNI_IFNAME", "eth0"),
        ],
    ] {
        let del = lab
            .cni(&plugin(), 0, &env, &conf(&lab, "1.1.0", json!({})))
            .unwrap();
        assert!(
            del.status.success(),
            "{}",
            String::from_utf8_lossy(&del.stdout)
        );
    }
    assert_eq!(agent_reserved(&lab), 0);
    assert!(no_host_veths(&lab));
}

#[test]
fn hundred_concurrent_adds_then_dels() {
    let mut lab = lab_with_agents(1);
    let n = 100;
    let mut paths = Vec::new();
    for i in 0..n {
        let p = lab.add_pod(0, &format!("c{i}")).unwrap();
        paths.push(ns(&lab, &p.name));
    }
    let lab = &lab;
    let results: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                s.spawn(move || {
                    let id = format!("conc{i}");
                    let pm = json!({"runtimeConfig": {"portMappings": [{"hostPort": 20000 + i, "containerPort": 80, "protocol": if i % 2 == 0 { "tcp" } else { "udp" }}]}});
                    let out = lab.cni(&plugin(), 0, &cni_env("ADD", &id, path), &conf(lab, "1.1.0", pm)).unwrap();
                    assert!(out.status.success(), "ADD {i}: {}", String::from_utf8_lossy(&out.stdout));
                    json(&out)["ips"][0]["address"].as_str().unwrap().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = results.iter().collect();
    assert_eq!(distinct.len(), n, "duplicate addresses handed out");
    assert_eq!(agent_reserved(lab), n as u32);
    assert_eq!(host_veths(lab, &lab.state.nodes[0].netns).len(), n);
    assert_eq!(
        hostport_elements(lab),
        n,
        "{}",
        nft_table(lab, &lab.state.nodes[0].netns)
    );
    std::thread::scope(|s| {
        for (i, path) in paths.iter().enumerate() {
            s.spawn(move || {
                let out = lab
                    .cni(
                        &plugin(),
                        0,
                        &cni_env("DEL", &format!("conc{i}"), path),
                        &conf(lab, "1.1.0", json!({})),
                    )
                    .unwrap();
                assert!(
                    out.status.success(),
                    "DEL {i}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            });
        }
    });
    assert_eq!(agent_reserved(lab), 0);
    assert_eq!(hostport_elements(lab), 0);
    assert!(no_host_veths(lab), "veths left");
}

/// trellis-cni -> tuning -> portmap, as a runtime runs a conflist: each plugin gets the
/// previous result; DEL runs in reverse order.
#[test]
fn chained_with_reference_tuning_and_portmap() {
    common::require(&[
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/tuning",
        "iptables",
        "busybox",
    ]);
    let mut lab = lab_with_agents(1);
    let pod = lab.add_pod(0, "web").unwrap();
    let path = ns(&lab, &pod.name);
    let env = cni_env("ADD", "chained", &path);
    let pm =
        json!({"portMappings": [{"hostPort": 18081, "containerPort": 8081, "protocol": "tcp"}]});
    let mut prev = serde_json::Value::Null;
    let plugins = [
        (plugin(), conf(&lab, "1.0.0", json!({}))),
        (
            "/usr/lib/cni/tuning".into(),
            json!({"cniVersion": "1.0.0", "name": "trellis", "type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}}),
        ),
        (
            "/usr/lib/cni/portmap".into(),
            json!({"cniVersion": "1.0.0", "name": "trellis", "type": "portmap", "capabilities": {"portMappings": true}, "runtimeConfig": pm}),
        ),
    ];
    for (bin, c) in &plugins {
        let mut c = c.clone();
        if !prev.is_null() {
            c["prevResult"] = prev.clone();
        }
        let out = lab.cni(bin, 0, &env, &c).unwrap();
        assert!(
            out.status.success(),
            "{bin:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        prev = json(&out);
    }
    assert_eq!(
        prev["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse::<Ipv4Addr>()
            .unwrap()
            .octets()[..3],
        [10, 244, 1]
    );
    let sysctl = lab
        .exec(
            &pod.netns,
            &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sysctl.stdout).trim(),
        "1",
        "tuning did not apply"
    );
    // a server in the pod, reached through portmap's DNAT from outside the node
    std::fs::create_dir_all(lab.dir().join("www")).unwrap();
    std::fs::write(lab.dir().join("www/index.html"), "chained-ok").unwrap();
    let mut httpd = std::process::Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", "8081", "-h"])
        .arg(lab.dir().join("www"));
    lab.spawn(&pod.netns, "httpd", httpd).unwrap();
    let url = format!("http://{}:18081/", lab.state.nodes[0].addr);
    let underlay = lab.state.underlay.clone();
    let got = wait_for(Duration::from_secs(5), || {
        lab.exec_any(
            &underlay,
            &["timeout", "2", "busybox", "wget", "-q", "-O", "-", &url],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("chained-ok"))
        .unwrap_or(false)
    });
    assert!(got, "port 18081 via portmap did not reach the pod");
    for (bin, c) in plugins.iter().rev() {
        let mut c = c.clone();
        c["prevResult"] = prev.clone();
        let out = lab
            .cni(bin, 0, &cni_env("DEL", "chained", &path), &c)
            .unwrap();
        assert!(
            out.status.success(),
            "DEL {bin:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(agent_reserved(&lab), 0);
    assert!(no_host_veths(&lab));
}
