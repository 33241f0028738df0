//! Tenant worlds against a real kernel: two node namespaces joined by a veth underlay;
//! on each, two tenant namespaces ("red" and "blue") made with
//! `Netns::create_persistent`, holding the *same* pod subnet, each with its own VNI. A
//! reconciler per world (`Reconciler::in_world`) builds the tunnels from the node's
//! namespace into the worlds. Traffic flows inside each world, and not a packet crosses
//! to the other world (counted at the receivers). Needs root; every namespace is named
//! `trwld-<pid>-...` and removed on success, failure and panic.

use std::net::Ipv4Addr;
use std::sync::Arc;

use trellis_fabric::reconcile::Reconciler;
use trellis_fabric::{backend, Backend, Local, NetworkFabric, Peer};
use trellis_lab::scratch::{require_root, sh, sweep_stale};
use trellis_net::{Netlink, Netns};

const PREFIX: &str = "trwld-";

/// A namespace of this test under `/run/netns`, removed on drop.
struct Ns {
    name: String,
    persistent: bool,
}

impl Ns {
    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// An underlay node, made by `ip netns add`.
    fn node(tag: &str) -> Ns {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        Ns {
            name,
            persistent: false,
        }
    }

    /// A world, made by `Netns::create_persistent` (twice: the second adopts it).
    fn world(tag: &str) -> Ns {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        let ns = Ns {
            name,
            persistent: true,
        };
        let a = Netns::create_persistent(ns.path()).expect("create world");
        let b = Netns::create_persistent(ns.path()).expect("adopt world");
        let ino = |n: &Netns| {
            std::fs::metadata(format!("/proc/self/fd/{}", n.raw_fd()))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        };
        assert_eq!(
            ino(&a),
            ino(&b),
            "adopting must not make a second namespace"
        );
        ns
    }

    fn ip(&self, args: &str) -> String {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend(args.split_whitespace());
        sh(&a)
    }

    fn open(&self) -> Arc<Netns> {
        Arc::new(Netns::open(self.path()).expect("open"))
    }

    /// Packets received by link `dev`.
    fn rx_packets(&self, dev: &str) -> u64 {
        // `ip netns exec` mounts the namespace's own /sys.
        let file = format!("/sys/class/net/{dev}/statistics/rx_packets");
        sh(&["ip", "netns", "exec", &self.name, "cat", &file])
            .trim()
            .parse()
            .expect("rx_packets")
    }

    fn ping(&self, dst: &str) -> bool {
        (0..3).any(|_| {
            trellis_lab::scratch::run(&[
                "ip", "netns", "exec", &self.name, "ping", "-c1", "-W1", dst,
            ])
            .status
            .success()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.persistent {
            let _ = Netns::remove_persistent(self.path());
        } else {
            let _ = trellis_lab::scratch::run(&["ip", "netns", "del", &self.name]);
        }
    }
}

fn local(i: u8) -> Local {
    Local {
        name: format!("n{i}"),
        address: Ipv4Addr::new(192, 168, 91, i),
        uplink: "eth0".into(),
        segment: format!("192.168.91.{i}/24").parse().unwrap(),
        uplink_mtu: 1500,
    }
}

#[tokio::test]
async fn two_worlds_share_addresses_and_never_meet() {
    require_root("tenant worlds need network namespaces");
    sweep_stale(PREFIX);
    let nodes = [Ns::node("n1"), Ns::node("n2")];
    nodes[0].ip(&format!(
        "link add eth0 type veth peer name eth0 netns {}",
        nodes[1].name
    ));
    let mut worlds = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let i = k as u8 + 1;
        node.ip(&format!("addr add 192.168.91.{i}/24 dev eth0"));
        node.ip("link set eth0 up");
        for (w, vni) in [("red", 100u32), ("blue", 200)] {
            let world = Ns::world(&format!("n{i}-{w}"));
            world.ip("link set lo up");
            // The world's pod gateway, as the agent's bridge would hold it: both worlds
            // use 10.244.i.0/24.
            world.ip("link add trl0 type bridge");
            world.ip(&format!("addr add 10.244.{i}.1/24 dev trl0"));
            world.ip("link set trl0 up");
            let net = NetworkFabric {
                name: w.into(),
                backend: Backend::Vxlan,
                vni: Some(vni),
                mtu: None,
                subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            };
            let j = 3 - i;
            let peer = Peer {
                name: format!("n{j}"),
                address: Ipv4Addr::new(192, 168, 91, j),
                subnet: format!("10.244.{j}.0/24").parse().unwrap(),
            };
            let d = backend::desired(&net, &local(i), &[peer]);
            let ns = world.open();
            let rec = Reconciler::in_world(
                Netlink::connect_in(&ns).unwrap(),
                Netlink::connect_in(&node.open()).unwrap(),
                ns,
            );
            let r = rec.apply(&d).await.expect("apply");
            assert!(r.links_created == 1 && r.routes_added == 1, "{r:?}");
            // Idempotent: a second pass (an agent restart) changes nothing.
            assert_eq!(rec.apply(&d).await.expect("apply again").changes(), 0);
            worlds.push((world, d));
        }
    }
    // The tunnel devices live in the worlds; the node namespaces hold none.
    for node in &nodes {
        assert!(
            !node.ip("-o link").contains("vxlan"),
            "{}",
            node.ip("-o link")
        );
    }
    let dev = |k: usize| worlds[k].1.vxlan.iter().next().unwrap().name.clone();
    // worlds: 0 n1-red, 1 n1-blue, 2 n2-red, 3 n2-blue.
    for (from, to, other) in [(0, 2, 3), (1, 3, 2), (2, 0, 1), (3, 1, 0)] {
        let before = worlds[other].0.rx_packets(&dev(other));
        let to_before = worlds[to].0.rx_packets(&dev(to));
        let dst = if to >= 2 { "10.244.2.1" } else { "10.244.1.1" };
        assert!(
            worlds[from].0.ping(dst),
            "{} cannot reach {dst} in its own world",
            worlds[from].0.name
        );
        assert!(worlds[to].0.rx_packets(&dev(to)) > to_before);
        assert_eq!(
            worlds[other].0.rx_packets(&dev(other)),
            before,
            "a packet of {} reached {}",
            worlds[from].0.name,
            worlds[other].0.name
        );
    }
    // Removing a world leaves nothing behind in its node.
    let (w, _) = worlds.pop().unwrap();
    let path = w.path();
    drop(w);
    assert!(!std::path::Path::new(&path).exists());
}
