//! The reconciler against a real kernel: two node namespaces joined by a veth "underlay",
//! each with a pod namespace behind a bridge, all created by the test under a per-run
//! prefix and removed on success, failure and panic. Needs root; never touches the root
//! network namespace (every link is created from inside the test's namespaces).

use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;
use trellis_fabric::reconcile::{ApplyReport, Reconciler};
use trellis_fabric::{backend, naming, Backend, Desired, FabricError, Local, NetworkFabric, Peer};
use trellis_net::{Netlink, Netns};

const PREFIX: &str = "trfab-";

/// A network namespace created by this test, deleted on drop (also while panicking).
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Ns(name);
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n <ns> <args>`; panics on failure.
    fn ip(&self, args: &str) -> String {
        let mut a = vec!["-n", &self.0];
        a.extend(args.split_whitespace());
        run("ip", &a)
    }

    /// `bridge -n <ns> <args>`; panics on failure.
    fn bridge(&self, args: &str) -> String {
        let mut a = vec!["-n", &self.0];
        a.extend(args.split_whitespace());
        run("bridge", &a)
    }

    /// Run a command inside the namespace; panics on failure.
    fn exec(&self, args: &str) -> String {
        let mut a = vec!["netns", "exec", &self.0];
        a.extend(args.split_whitespace());
        run("ip", &a)
    }

    fn netlink(&self) -> Netlink {
        let ns = Netns::open(format!("/run/netns/{}", self.0)).expect("open test namespace");
        Netlink::connect_in(&ns).expect("netlink in test namespace")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fail loudly without root, and remove namespaces left by earlier runs that died.
fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces: run them as root"
    );
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// One node: its namespace, the pod namespace behind it, and a reconciler there.
struct Node {
    i: u8,
    ns: Ns,
    pod: Ns,
    rec: Reconciler,
}

fn subnet(i: u8) -> Ipv4Net {
    format!("10.244.{i}.0/24").parse().unwrap()
}

/// Two nodes on 192.168.90.0/24 (`eth0`), node i with pod 10.244.i.5 behind the bridge
/// `trl0` (10.244.i.1) and its host veth `trl1a2b3c4d`, like the CNI plugin builds them.
fn two_nodes(tag: &str) -> (Node, Node) {
    preflight();
    let n1 = Ns::new(&format!("{tag}-n1"));
    let n2 = Ns::new(&format!("{tag}-n2"));
    n1.ip(&format!(
        "link add eth0 type veth peer name eth0 netns {}",
        n2.0
    ));
    let node = |i: u8, ns: Ns| {
        let pod = Ns::new(&format!("{tag}-p{i}"));
        ns.ip(&format!("addr add 192.168.90.{i}/24 dev eth0"));
        ns.ip("link set eth0 up");
        ns.ip("link add trl0 type bridge");
        ns.ip(&format!(
            "link add trl1a2b3c4d type veth peer name eth0 netns {}",
            pod.0
        ));
        ns.ip("link set trl1a2b3c4d master trl0 up");
        ns.ip(&format!("addr add 10.244.{i}.1/24 dev trl0"));
        ns.ip("link set trl0 up");
        ns.exec("sysctl -qw net.ipv4.ip_forward=1");
        pod.ip(&format!("addr add 10.244.{i}.5/24 dev eth0"));
        pod.ip("link set eth0 up");
        pod.ip(&format!("route add default via 10.244.{i}.1"));
        let rec = Reconciler::new(ns.netlink());
        Node { i, ns, pod, rec }
    };
    (node(1, n1), node(2, n2))
}

impl Node {
    /// What `backend` wants on this node for the other one.
    fn desired(&self, backend: Backend) -> Desired {
        let i = self.i;
        let local = Local {
            name: format!("n{i}"),
            address: Ipv4Addr::new(192, 168, 90, i),
            uplink: "eth0".into(),
            segment: format!("192.168.90.{i}/24").parse().unwrap(),
            uplink_mtu: 1500,
        };
        let net = NetworkFabric {
            name: "pods".into(),
            backend,
            vni: Some(1),
            mtu: None,
            subnet: subnet(i),
        };
        let j = 3 - i;
        let peer = Peer {
            name: format!("n{j}"),
            address: Ipv4Addr::new(192, 168, 90, j),
            subnet: subnet(j),
        };
        backend::desired(&net, &local, &[peer])
    }

    async fn apply(&self, backend: Backend) -> ApplyReport {
        let d = self.desired(backend);
        self.rec.apply(&d).await.expect("apply")
    }

    /// Our pod can ping the other node's pod.
    fn ping_peer_pod(&self) -> bool {
        let dst = format!("10.244.{}.5", 3 - self.i);
        (0..3).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", &self.pod.0, "ping", "-c1", "-W1", &dst])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }

    fn owned_routes(&self) -> String {
        self.ns.ip("route show proto 116").trim().to_string()
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns.0, "link", "show", "dev", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

#[tokio::test]
async fn vxlan_fabric_converges_repairs_drift_and_switches_to_host_gw() {
    let (a, b) = two_nodes("vx");
    // Things the fabric does not own; they must survive every apply.
    a.ns.ip("route add 10.99.0.0/24 via 192.168.90.2 dev eth0 proto static");
    a.ns.ip("link add vx9 type vxlan id 9 dstport 4790 dev eth0");
    assert!(
        !a.ping_peer_pod(),
        "pods must not reach each other before the fabric"
    );

    let created = ApplyReport {
        links_created: 1,
        routes_added: 1,
        neighbours_added: 1,
        fdb_added: 1,
        ..Default::default()
    };
    for n in [&a, &b] {
        assert_eq!(n.apply(Backend::Vxlan).await, created);
    }
    assert!(a.ping_peer_pod(), "pod 1 -> pod 2 over vxlan");
    assert!(b.ping_peer_pod(), "pod 2 -> pod 1 over vxlan");

    // What the kernel holds, as the tools show it.
    let link = a.ns.ip("-d link show trl.1");
    for want in [
        "mtu 1450",
        "UP",
        "0e:74:0a:f4:01:00",
        "vxlan id 1 local 192.168.90.1 dev eth0",
        "dstport 4789 nolearning",
    ] {
        assert!(link.contains(want), "trl.1 lacks {want:?}: {link}");
    }
    assert!(a
        .ns
        .ip("addr show dev trl.1")
        .contains("inet 10.244.1.0/32"));
    assert_eq!(
        a.owned_routes(),
        "10.244.2.0/24 via 10.244.2.0 dev trl.1 onlink"
    );
    let fdb = a.ns.bridge("fdb show dev trl.1");
    assert!(
        fdb.contains("0e:74:0a:f4:02:00 dst 192.168.90.2 self permanent"),
        "{fdb}"
    );
    let neigh = a.ns.ip("neigh show dev trl.1");
    assert!(
        neigh.contains("10.244.2.0 lladdr 0e:74:0a:f4:02:00 PERMANENT"),
        "{neigh}"
    );

    // An agent restart: nothing to do.
    for n in [&a, &b] {
        assert_eq!(n.apply(Backend::Vxlan).await.changes(), 0);
    }

    // Drift on node 1: owned entries deleted by hand, stale owned ones added by hand.
    a.ns.ip("route del 10.244.2.0/24 proto 116");
    a.ns.bridge("fdb del 0e:74:0a:f4:02:00 dev trl.1 dst 192.168.90.2 self");
    a.ns.ip("route add 10.55.0.0/24 via 192.168.90.2 dev eth0 proto 116");
    a.ns.ip("neigh add 10.244.9.0 lladdr 0e:74:0a:f4:09:00 dev trl.1 nud permanent");
    a.ns.bridge("fdb append 0e:74:0a:f4:09:00 dev trl.1 dst 192.168.90.9 self permanent");
    // ... and on node 2: the device itself.
    b.ns.ip("link set trl.1 mtu 1400 down");
    assert!(!a.ping_peer_pod());
    let repaired = ApplyReport {
        routes_added: 1,
        routes_deleted: 1,
        neighbours_deleted: 1,
        fdb_added: 1,
        fdb_deleted: 1,
        ..Default::default()
    };
    assert_eq!(a.apply(Backend::Vxlan).await, repaired);
    // Taking a link down flushes its routes and neighbour entries (not the FDB).
    let changed = ApplyReport {
        links_changed: 1,
        routes_added: 1,
        neighbours_added: 1,
        ..Default::default()
    };
    assert_eq!(b.apply(Backend::Vxlan).await, changed);
    assert_eq!(
        a.owned_routes(),
        "10.244.2.0/24 via 10.244.2.0 dev trl.1 onlink"
    );
    assert!(!a.ns.ip("neigh show dev trl.1").contains("10.244.9.0"));
    assert!(!a
        .ns
        .bridge("fdb show dev trl.1")
        .contains("0e:74:0a:f4:09:00"));
    assert!(b.ns.ip("link show trl.1").contains("mtu 1450"));
    assert!(a.ping_peer_pod(), "after repairing drift");

    // A device with the wrong VNI is recreated.
    b.ns.ip("link del trl.1");
    b.ns.ip("link add trl.1 type vxlan id 2 local 192.168.90.2 dev eth0 dstport 4789 nolearning");
    let recreated = ApplyReport {
        links_deleted: 1,
        ..created
    };
    assert_eq!(b.apply(Backend::Vxlan).await, recreated);
    assert!(b.ns.ip("-d link show trl.1").contains("vxlan id 1 "));
    assert!(b.ping_peer_pod(), "after recreating the device");
    for n in [&a, &b] {
        assert_eq!(n.apply(Backend::Vxlan).await.changes(), 0);
    }

    // Switch to host-gw: the device goes, the route is replaced in place.
    let switched = ApplyReport {
        links_deleted: 1,
        routes_added: 1,
        routes_deleted: 1,
        ..Default::default()
    };
    for n in [&a, &b] {
        assert_eq!(n.apply(Backend::HostGw).await, switched);
        assert!(!n.has_link("trl.1"));
        assert_eq!(n.apply(Backend::HostGw).await.changes(), 0);
    }
    assert_eq!(a.owned_routes(), "10.244.2.0/24 via 192.168.90.2 dev eth0");
    assert!(a.ping_peer_pod(), "pod 1 -> pod 2 over host-gw");
    assert!(b.ping_peer_pod(), "pod 2 -> pod 1 over host-gw");

    // Nothing else was touched.
    for l in ["eth0", "trl0", "trl1a2b3c4d", "vx9"] {
        assert!(a.has_link(l), "{l} was deleted");
    }
    assert!(a
        .ns
        .ip("route show proto static")
        .contains("10.99.0.0/24 via 192.168.90.2"));
}

#[tokio::test]
async fn route_on_a_missing_tun_device_is_reported_after_the_rest() {
    let (a, _b) = two_nodes("tun");
    // A stale fabric device: deleted although another step fails.
    a.ns.ip("link add trl.7 type vxlan id 7 dstport 4789 dev eth0");

    let udp = NetworkFabric {
        name: "slow".into(),
        backend: Backend::Udp,
        vni: None,
        mtu: None,
        subnet: "10.245.1.0/24".parse().unwrap(),
    };
    let peer = Peer {
        name: "n2".into(),
        address: Ipv4Addr::new(192, 168, 90, 2),
        subnet: "10.245.2.0/24".parse().unwrap(),
    };
    let local = Local {
        name: "n1".into(),
        address: Ipv4Addr::new(192, 168, 90, 1),
        uplink: "eth0".into(),
        segment: "192.168.90.1/24".parse().unwrap(),
        uplink_mtu: 1500,
    };
    let mut d = a.desired(Backend::Vxlan);
    d.merge(backend::desired(&udp, &local, &[peer]));
    let tun = naming::tun_device("slow");

    match a.rec.apply(&d).await {
        Err(FabricError::Apply { report, failures }) => {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(failures[0].contains("10.245.2.0/24"), "{failures:?}");
            assert!(failures[0].contains(&tun), "{failures:?}");
            let rest = ApplyReport {
                links_created: 1,
                links_deleted: 1,
                routes_added: 1,
                neighbours_added: 1,
                fdb_added: 1,
                ..Default::default()
            };
            assert_eq!(report, rest);
        }
        other => panic!("expected a partial apply, got {other:?}"),
    }
    assert!(a.has_link("trl.1") && !a.has_link("trl.7"));
    assert_eq!(
        a.owned_routes(),
        "10.244.2.0/24 via 10.244.2.0 dev trl.1 onlink"
    );

    // The udp pump creates its device: the route follows, and the device is kept.
    a.ns.ip(&format!("tuntap add dev {tun} mode tun"));
    a.ns.ip(&format!("link set {tun} up"));
    let report = a.rec.apply(&d).await.expect("apply with the TUN device");
    assert_eq!(
        report,
        ApplyReport {
            routes_added: 1,
            ..Default::default()
        }
    );
    assert!(a.has_link(&tun));
    assert!(a
        .owned_routes()
        .contains(&format!("10.245.2.0/24 dev {tun}")));
    assert_eq!(a.rec.apply(&d).await.expect("apply").changes(), 0);
}
