//! `Netlink::ensure_uplink_bridge` in real network namespaces: an "underlay" namespace
//! with a bridge (192.168.92.1/24) and node namespaces attached to it by veths (`eth0`,
//! 192.168.92.1x/24, default route via .1). Needs root; never touches the root namespace.
//!
//! Every namespace is named `trupl-<pid>-<seq>-<role>` and removed when the test ends,
//! whether it passes, fails or panics; namespaces left by a killed run (whose pid is
//! gone) are swept at the start of every test.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::Ipv4Net;
use serde_json::Value;
use trellis_net::{Netlink, Netns, UplinkBridge};

const PREFIX: &str = "trupl-";
const GW: &str = "192.168.92.1";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the uplink tests create network namespaces and must run as root (euid is {euid})"
    );
}

/// Delete namespaces with our prefix whose owning process is gone.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            eprintln!("sweeping stale namespace {name}");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn ip(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut v = vec!["-j"];
    v.extend_from_slice(args);
    let out = ip(ns, &v);
    serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
        .unwrap_or_else(|e| panic!("ip -n {ns} {v:?}: {e}: {out}"))
}

/// `ping` from `ns`, a few tries (ARP and bridge learning may take the first).
fn ping(ns: &str, to: &str) -> bool {
    ping_tries(ns, to, 5)
}

fn ping_tries(ns: &str, to: &str, tries: usize) -> bool {
    (0..tries).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// IPv4 addresses of `dev` in `ns`, as `a.b.c.d/len`.
fn addrs(ns: &str, dev: &str) -> Vec<String> {
    ip_json(ns, &["-4", "addr", "show", "dev", dev])
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn exists(ns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .output()
        .map(|o| o.status.success())
        .unwrap_or_else(|e| panic!("ip: {e}"))
}

fn link(ns: &str, dev: &str) -> Value {
    ip_json(ns, &["-d", "link", "show", "dev", dev])[0].clone()
}

/// Default routes of the main table as (gateway, device).
fn defaults(ns: &str) -> Vec<(String, String)> {
    ip_json(ns, &["-4", "route", "show", "default"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// An underlay segment and its nodes, all in namespaces this process owns.
struct Segment {
    tag: String,
    underlay: String,
    made: Vec<String>,
    rt: tokio::runtime::Runtime,
}

impl Segment {
    fn new() -> Segment {
        require_root();
        sweep_stale();
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut s = Segment {
            underlay: format!("{tag}-u"),
            tag,
            made: Vec::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        let u = s.underlay.clone();
        s.netns(&u);
        ip(&u, &["link", "add", "br0", "type", "bridge"]);
        ip(&u, &["addr", "add", &format!("{GW}/24"), "dev", "br0"]);
        ip(&u, &["link", "set", "br0", "up"]);
        s
    }

    /// Create (and own) a namespace with `lo` up.
    fn netns(&mut self, name: &str) {
        sh(&["ip", "netns", "add", name]);
        self.made.push(name.to_string());
        ip(name, &["link", "set", "lo", "up"]);
    }

    /// A node `n<i>` with `eth0` = 192.168.92.(10+i)/24 on the underlay, default via .1.
    fn node(&mut self, i: u8, mtu: u32) -> String {
        let ns = format!("{}-n{i}", self.tag);
        self.netns(&ns);
        let u = self.underlay.clone();
        let port = format!("n{i}");
        let mtu = mtu.to_string();
        ip(
            &u,
            &[
                "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &ns,
            ],
        );
        ip(&u, &["link", "set", &port, "master", "br0", "up"]);
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("192.168.92.{}/24", 10 + i),
                "dev",
                "eth0",
            ],
        );
        ip(&ns, &["link", "set", "eth0", "up"]);
        ip(&ns, &["route", "add", "default", "via", GW]);
        ns
    }

    /// A pod namespace whose `eth0` is a veth into `bridge` of `node`, with `addr`/24 and
    /// a default route via the underlay gateway.
    fn pod(&mut self, node: &str, bridge: &str, addr: &str) -> String {
        let ns = format!("{}-pod", self.tag);
        self.netns(&ns);
        ip(
            node,
            &[
                "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        ip(node, &["link", "set", "vpod", "master", bridge, "up"]);
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&ns, &["link", "set", "eth0", "up"]);
        ip(&ns, &["route", "add", "default", "via", GW]);
        ns
    }

    fn netlink(&self, ns: &str) -> Netlink {
        let _g = self.rt.enter();
        Netlink::connect_in(&Netns::open(format!("/run/netns/{ns}")).unwrap()).unwrap()
    }

    fn ensure(&self, ns: &str, bridge: &str, uplink: &str) -> trellis_net::Result<UplinkBridge> {
        let nl = self.netlink(ns);
        self.rt.block_on(nl.ensure_uplink_bridge(bridge, uplink))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = Command::new("ip").args(["netns", "del", ns]).status() {
                eprintln!("cannot delete namespace {ns}: {e}");
            }
        }
    }
}

/// The node's address, default route and MAC address now belong to `trl0`, `eth0` is its
/// port, and the node keeps its reachability.
fn assert_moved(seg: &Segment, node: &str, addr: &str, eth0_mac: &str) {
    let eth0 = link(node, "eth0");
    let trl0 = link(node, "trl0");
    assert_eq!(eth0["master"], "trl0", "eth0 is a port of trl0: {eth0}");
    assert_eq!(trl0["address"], eth0_mac, "trl0 has eth0's MAC address");
    assert!(
        trl0["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "trl0 is up: {trl0}"
    );
    assert_eq!(addrs(node, "trl0"), vec![addr.to_string()]);
    assert!(
        addrs(node, "eth0").is_empty(),
        "eth0 has no IPv4 address left"
    );
    assert_eq!(defaults(node), vec![(GW.to_string(), "trl0".to_string())]);
    assert!(ping(node, GW), "{node} reaches the underlay gateway");
    let host = addr.split('/').next().unwrap();
    assert!(ping(&seg.underlay, host), "underlay reaches {node}");
}

#[test]
fn moves_the_node_onto_the_bridge_and_pods_onto_the_segment() {
    let mut seg = Segment::new();
    let n1 = seg.node(1, 1450);
    let n2 = seg.node(2, 1500);
    let eth0 = link(&n1, "eth0");
    let mac = eth0["address"].as_str().unwrap().to_string();

    let r = seg.ensure(&n1, "trl0", "eth0").unwrap();
    let trl0 = link(&n1, "trl0");
    assert_eq!(
        r,
        UplinkBridge {
            bridge_index: trl0["ifindex"].as_u64().unwrap() as u32,
            created: true,
            moved_addresses: vec![net("192.168.92.11/24")],
            moved_default_route: Some(GW.parse().unwrap()),
            mtu: 1450,
        }
    );
    assert_eq!(trl0["mtu"], 1450, "trl0 has eth0's MTU");
    assert_eq!(trl0["linkinfo"]["info_kind"], "bridge");
    assert_moved(&seg, &n1, "192.168.92.11/24", &mac);
    assert!(ping(&n1, "192.168.92.12"), "node1 reaches node2");
    assert!(ping(&n2, "192.168.92.11"), "node2 reaches node1");

    // A pod on node1's bridge is a host of the segment: no NAT, no routes on the nodes.
    let pod = seg.pod(&n1, "trl0", "192.168.92.50");
    assert!(ping(&pod, "192.168.92.12"), "pod reaches node2 directly");
    assert!(ping(&pod, GW), "pod reaches the underlay directly");
    assert!(ping(&pod, "192.168.92.11"), "pod reaches its node");
    assert!(ping(&n2, "192.168.92.50"), "node2 reaches the pod directly");
    let neigh = ip(&n2, &["neigh", "show", "192.168.92.50"]);
    let pod_mac = link(&pod, "eth0")["address"].as_str().unwrap().to_string();
    assert!(
        neigh.contains(&pod_mac),
        "node2 sees the pod's own MAC address (no proxy, no NAT): {neigh}"
    );

    // Idempotent: nothing changes, the same bridge is kept.
    let again = seg.ensure(&n1, "trl0", "eth0").unwrap();
    assert_eq!(
        again,
        UplinkBridge {
            bridge_index: r.bridge_index,
            created: false,
            moved_addresses: vec![],
            moved_default_route: None,
            mtu: 1450,
        }
    );
    assert_moved(&seg, &n1, "192.168.92.11/24", &mac);
    assert!(ping(&pod, "192.168.92.12"));

    // A default route lost later (here: deleted; a down/up of trl0 does the same) is
    // restored with the remembered gateway.
    ip(&n1, &["route", "del", "default"]);
    assert!(defaults(&n1).is_empty());
    let fixed = seg.ensure(&n1, "trl0", "eth0").unwrap();
    assert_eq!(fixed.moved_default_route, Some(GW.parse().unwrap()));
    assert!(!fixed.created);
    assert!(fixed.moved_addresses.is_empty());
    assert_eq!(fixed.bridge_index, r.bridge_index);
    assert_moved(&seg, &n1, "192.168.92.11/24", &mac);
    ip(&n1, &["link", "set", "trl0", "down"]);
    ip(&n1, &["link", "set", "trl0", "up"]);
    assert!(
        defaults(&n1).is_empty(),
        "a bounce of trl0 flushes its routes"
    );
    let fixed = seg.ensure(&n1, "trl0", "eth0").unwrap();
    assert_eq!(fixed.moved_default_route, Some(GW.parse().unwrap()));
    assert_moved(&seg, &n1, "192.168.92.11/24", &mac);
    assert!(ping(&pod, "192.168.92.12"));
}

#[test]
fn a_rerun_finishes_a_half_done_move() {
    let mut seg = Segment::new();
    let n1 = seg.node(1, 1500);
    let n2 = seg.node(2, 1500);
    let n3 = seg.node(3, 1500);

    // Node 2: trl0 exists (down, its own random MAC) and already has the address, but
    // eth0 is not enslaved and still has the address and the default route.
    let mac2 = link(&n2, "eth0")["address"].as_str().unwrap().to_string();
    ip(&n2, &["link", "add", "trl0", "type", "bridge"]);
    ip(&n2, &["addr", "add", "192.168.92.12/24", "dev", "trl0"]);
    assert_ne!(link(&n2, "trl0")["address"], mac2.as_str());
    let idx2 = link(&n2, "trl0")["ifindex"].as_u64().unwrap() as u32;
    let r = seg.ensure(&n2, "trl0", "eth0").unwrap();
    assert_eq!(
        r,
        UplinkBridge {
            bridge_index: idx2,
            created: false,
            moved_addresses: vec![net("192.168.92.12/24")],
            moved_default_route: Some(GW.parse().unwrap()),
            mtu: 1500,
        }
    );
    assert_moved(&seg, &n2, "192.168.92.12/24", &mac2);
    assert!(ping(&n2, "192.168.92.11"));

    // Node 3: trl0 exists with the address, eth0 is not enslaved and has already lost
    // its address (and with it the default route, whose gateway nothing remembers).
    let mac3 = link(&n3, "eth0")["address"].as_str().unwrap().to_string();
    ip(&n3, &["link", "add", "trl0", "type", "bridge"]);
    ip(&n3, &["addr", "add", "192.168.92.13/24", "dev", "trl0"]);
    ip(&n3, &["addr", "del", "192.168.92.13/24", "dev", "eth0"]);
    assert!(defaults(&n3).is_empty());
    assert!(!ping_tries(&n3, GW, 1), "half-done node 3 is cut off");
    let r = seg.ensure(&n3, "trl0", "eth0").unwrap();
    assert!(!r.created);
    assert!(r.moved_addresses.is_empty());
    assert_eq!(r.moved_default_route, None, "no gateway known to restore");
    assert_eq!(link(&n3, "eth0")["master"], "trl0");
    assert_eq!(link(&n3, "trl0")["address"], mac3.as_str());
    assert_eq!(addrs(&n3, "trl0"), vec!["192.168.92.13/24".to_string()]);
    assert!(ping(&n3, GW), "node 3 is back on the segment");
    assert!(ping(&n3, "192.168.92.11"));
    assert!(ping(&n1, "192.168.92.13"));

    // Node 1: stopped after the default route was switched to trl0 but before the
    // address was deleted from eth0 (by hand here, so nothing remembers the gateway).
    let mac1 = link(&n1, "eth0")["address"].as_str().unwrap().to_string();
    ip(
        &n1,
        &["link", "add", "trl0", "address", &mac1, "type", "bridge"],
    );
    ip(&n1, &["link", "set", "eth0", "master", "trl0"]);
    ip(&n1, &["addr", "add", "192.168.92.11/24", "dev", "trl0"]);
    ip(&n1, &["link", "set", "trl0", "up"]);
    ip(
        &n1,
        &["route", "replace", "default", "via", GW, "dev", "trl0"],
    );
    let idx1 = link(&n1, "trl0")["ifindex"].as_u64().unwrap() as u32;
    let r1 = seg.ensure(&n1, "trl0", "eth0").unwrap();
    assert_eq!(
        (
            r1.bridge_index,
            r1.created,
            r1.moved_addresses,
            r1.moved_default_route
        ),
        (idx1, false, vec![net("192.168.92.11/24")], None)
    );
    assert_moved(&seg, &n1, "192.168.92.11/24", &mac1);
    // The run learnt the gateway from the route trl0 carries: a lost route comes back.
    ip(&n1, &["route", "del", "default"]);
    let r1 = seg.ensure(&n1, "trl0", "eth0").unwrap();
    assert_eq!(r1.moved_default_route, Some(GW.parse().unwrap()));
    assert_moved(&seg, &n1, "192.168.92.11/24", &mac1);

    // All are now steady: a rerun changes nothing.
    for (ns, idx) in [(&n1, idx1), (&n2, idx2), (&n3, r.bridge_index)] {
        let again = seg.ensure(ns, "trl0", "eth0").unwrap();
        assert_eq!(
            (
                again.bridge_index,
                again.created,
                again.moved_addresses,
                again.moved_default_route
            ),
            (idx, false, vec![], None)
        );
    }
}

#[test]
fn refuses_with_what_was_attempted_and_changes_nothing() {
    let mut seg = Segment::new();
    let n1 = seg.node(1, 1500);
    let before = (addrs(&n1, "eth0"), defaults(&n1));

    let e = seg.ensure(&n1, "trl0", "eth9").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(
        e.to_string(),
        "bridge uplink eth9 into trl0: no link named eth9"
    );

    ip(
        &n1,
        &[
            "link", "add", "trl0", "type", "veth", "peer", "name", "trl0p",
        ],
    );
    let e = seg.ensure(&n1, "trl0", "eth0").unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(
        e.to_string()
            .starts_with("bridge uplink eth0 into trl0: a link named trl0 exists"),
        "{e}"
    );
    ip(&n1, &["link", "del", "trl0"]);

    ip(&n1, &["link", "add", "other0", "type", "bridge"]);
    ip(&n1, &["link", "set", "eth0", "master", "other0"]);
    let e = seg.ensure(&n1, "trl0", "eth0").unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    assert!(
        e.to_string().contains("eth0 is already a port of link"),
        "{e}"
    );
    assert!(!exists(&n1, "trl0"), "no bridge was created");
    assert_eq!((addrs(&n1, "eth0"), defaults(&n1)), before);

    let e = seg.ensure(&n1, "eth0", "eth0").unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
}
