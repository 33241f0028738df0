//! `kill -9` of the agent with pods running, then a restart: traffic between pods and
//! through a published port keeps flowing, nothing in the kernel is re-created (same
//! link indexes, same nftables rule handles), and no address is handed out twice.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{json, lab_with_agents, nft_table, plugin, trellis};
use serde_json::json;
use trellis_lab::{netns_path, wait_for};

#[test]
fn agent_kill9_and_restart_loses_nothing() {
    common::require(&["busybox", "ping"]);
    let mut lab = lab_with_agents(1);
    let node = lab.state.nodes[0].netns.clone();
    let mut ips = Vec::new();
    let mut pods = Vec::new();
    for i in 0..3 {
        let pod = lab.add_pod(0, &format!("r{i}")).unwrap();
        let path = netns_path(&pod.netns).display().to_string();
        let mut c = lab.cni_config(0, "1.1.0");
        if i == 0 {
            c["runtimeConfig"] =
                json!({"portMappings": [{"hostPort": 18090, "containerPort": 8090}]});
        }
        let out = lab
            .cni(
                &plugin(),
                0,
                &common::cni_env("ADD", &format!("r{i}"), &path),
                &c,
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        ips.push(
            json(&out)["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        pods.push(pod);
    }
    std::fs::create_dir_all(lab.dir().join("www")).unwrap();
    std::fs::write(lab.dir().join("www/index.html"), "still-here").unwrap();
    let mut httpd = std::process::Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", "8090", "-h"])
        .arg(lab.dir().join("www"));
    lab.spawn(&pods[0].netns, "httpd", httpd).unwrap();
    let url = format!("http://{}:18090/", lab.state.nodes[0].addr);
    let underlay = lab.state.underlay.clone();
    let fetch = |lab: &trellis_lab::Lab| {
        lab.exec_any(
            &underlay,
            &["timeout", "2", "busybox", "wget", "-q", "-O", "-", &url],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("still-here"))
        .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(5), || fetch(&lab)),
        "published port unreachable"
    );

    let links_before = lab
        .exec(&node, &["ip", "-o", "link", "show"])
        .unwrap()
        .stdout;
    let nft_before = nft_table(&lab, &node);
    let addrs_before = lab
        .exec(&node, &["ip", "-4", "-o", "addr", "show"])
        .unwrap()
        .stdout;

    // a ping stream between two pods across the restart: 600 packets, 10 ms apart
    let target = ips[1].split('/').next().unwrap().to_string();
    let ping = lab
        .command(&pods[2].netns, "ping")
        .args(["-q", "-i", "0.01", "-c", "600", &target])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let agent_pid = common::pid_of(&lab, "agent n1");
    lab.stop(agent_pid, true); // SIGKILL
    std::thread::sleep(Duration::from_millis(300));
    lab.start_agent(&trellis(), 0, &[]).unwrap();
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        summary.contains("600 packets transmitted, 600 received, 0% packet loss"),
        "{summary}"
    );
    assert!(fetch(&lab), "published port broken after restart");

    // nothing re-created: same links (with indexes), same addresses, same rule handles
    assert_eq!(
        String::from_utf8_lossy(
            &lab.exec(&node, &["ip", "-o", "link", "show"])
                .unwrap()
                .stdout
        ),
        String::from_utf8_lossy(&links_before)
    );
    assert_eq!(
        String::from_utf8_lossy(
            &lab.exec(&node, &["ip", "-4", "-o", "addr", "show"])
                .unwrap()
                .stdout
        ),
        String::from_utf8_lossy(&addrs_before)
    );
    assert_eq!(nft_table(&lab, &node), nft_before);
    let log = std::fs::read_to_string(lab.dir().join("agent-n1.log")).unwrap();
    assert!(
        log.contains(
            "bridge_created: false, gateway_added: false, table_written: false, reservations: 3, orphans_released: 0"
        ),
        "{log}"
    );

    // new pods never get an address already in use
    let mut all: BTreeSet<String> = ips.iter().cloned().collect();
    for i in 3..8 {
        let pod = lab.add_pod(0, &format!("r{i}")).unwrap();
        let path = netns_path(&pod.netns).display().to_string();
        let out = lab
            .cni(
                &plugin(),
                0,
                &common::cni_env("ADD", &format!("r{i}"), &path),
                &lab.cni_config(0, "1.1.0"),
            )
            .unwrap();
        assert!(out.status.success());
        assert!(
            all.insert(
                json(&out)["ips"][0]["address"]
                    .as_str()
                    .unwrap()
                    .to_string()
            ),
            "address handed out twice"
        );
    }
}

/// A crash between the reservation and the plumbing (simulated: an address reserved
/// through the socket, no veth ever made) is repaired by the sweep after the grace
/// period; a stale host veth with no reservation is removed.
#[test]
fn sweep_releases_orphans() {
    let mut lab = common::lab_with_agents(1);
    let node = lab.state.nodes[0].netns.clone();
    // restart the agent with a short grace and sweep interval
    let pid = common::pid_of(&lab, "agent n1");
    lab.stop(pid, false);
    lab.start_agent(
        &trellis(),
        0,
        &["--orphan-grace", "1", "--sweep-interval", "1"],
    )
    .unwrap();
    let call = |line: &str| common::agent_raw(&lab, 0, line);
    let r = call(
        r#"{"version":1,"op":"add","containerId":"crashed","ifname":"eth0","netns":"/x","portMappings":[{"hostPort":18099,"containerPort":80,"protocol":"tcp"}]}"#,
    );
    assert!(r["lease"]["address"].is_string(), "{r}");
    assert!(nft_table(&lab, &node).contains("18099"));
    // a protocol version from the future is refused clearly
    let r = call(r#"{"version":9,"op":"status"}"#);
    assert_eq!(r["error"]["code"], 1, "{r}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            call(r#"{"version":1,"op":"status"}"#)["status"]["reserved"] == 0
        }),
        "orphaned reservation not released"
    );
    assert!(wait_for(Duration::from_secs(5), || !nft_table(&lab, &node)
        .contains("18099")));
}

/// Releases are not synced to disk, so a `kill -9` right after a DEL can bring the
/// reservation back. The agent's first sweep, before it serves, releases it (its veth is
/// gone) instead of waiting out the orphan grace: a recreated pod publishing the same
/// host port is served straight away and the address count is right.
#[test]
fn release_lost_in_a_crash_does_not_hold_its_host_port() {
    let mut lab = lab_with_agents(1);
    let node = lab.state.nodes[0].netns.clone();
    let add = |lab: &trellis_lab::Lab, id: &str, netns: &str| {
        let path = netns_path(netns).display().to_string();
        let mut c = lab.cni_config(0, "1.1.0");
        c["runtimeConfig"] = json!({"portMappings": [{"hostPort": 18095, "containerPort": 80}]});
        lab.cni(&plugin(), 0, &common::cni_env("ADD", id, &path), &c)
            .unwrap()
    };
    let first = lab.add_pod(0, "gone").unwrap();
    let out = add(&lab, "gone", &first.netns);
    assert!(out.status.success(), "{}", json(&out));
    let path = netns_path(&first.netns).display().to_string();
    let out = lab
        .cni(
            &plugin(),
            0,
            &common::cni_env("DEL", "gone", &path),
            &lab.cni_config(0, "1.1.0"),
        )
        .unwrap();
    assert!(out.status.success());
    let pid = common::pid_of(&lab, "agent n1");
    lab.stop(pid, true);
    lab.start_agent(&trellis(), 0, &[]).unwrap();
    let log = std::fs::read_to_string(lab.dir().join("agent-n1.log")).unwrap();
    assert!(
        log.contains("reservations: 1, orphans_released: 1"),
        "the DEL's release survived the crash, nothing was tested: {log}"
    );
    // The agent sweeps before it serves: the first ADD is served.
    let second = lab.add_pod(0, "again").unwrap();
    let out = add(&lab, "again", &second.netns);
    assert!(out.status.success(), "host port still held: {}", json(&out));
    let status = common::agent_raw(&lab, 0, r#"{"version":1,"op":"status"}"#);
    assert_eq!(status["status"]["reserved"], 1, "{status}");
    let table = nft_table(&lab, &node);
    assert_eq!(table.matches("18095").count(), 1, "{table}");
}
