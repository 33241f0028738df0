//! A full iBGP mesh of three speakers, one in each node namespace of a lab: every node's
//! kernel gets the other two nodes' prefixes (protocol 119, via their addresses). A
//! speaker that dies is restarted gracefully: the others keep its prefix meanwhile
//! (stale, RFC 4724) and its own kernel keeps its routes; a peer removed takes its
//! prefix with it. A prefix two speakers announce gets a multipath route. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{speaker_in, Cmd};
use ipnet::Ipv4Net;
use trellis_bgp::speaker::Peer;
use trellis_lab::Lab;

fn prefix(n: usize) -> Ipv4Net {
    format!("10.200.{}.0/24", n + 1).parse().unwrap()
}

#[test]
fn a_full_mesh_survives_a_restart_and_forgets_a_removed_peer() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let lab = Lab::new(3).unwrap();
    let addrs: Vec<Ipv4Addr> = lab.state.nodes.iter().map(|n| n.addr).collect();
    let peers =
        |of: &[usize]| -> Vec<Peer> { of.iter().map(|n| Peer::new(addrs[*n], 64512)).collect() };
    let cfg = |n: usize| common::node_speaker(addrs[n], None);
    let mut running: Vec<_> = (0..3)
        .map(|n| {
            speaker_in(
                &lab.state.nodes[n].netns,
                cfg(n),
                prefix(n),
                peers(&[0, 1, 2]),
            )
        })
        .collect();
    let routes = |n: usize| lab.routes_of_proto(&lab.state.nodes[n].netns, 119);
    let expect = |n: usize, of: &[usize]| -> Vec<String> {
        of.iter()
            .filter(|m| **m != n)
            .map(|m| format!("{} via {}", prefix(*m), addrs[*m]))
            .collect()
    };
    let holds = |n: usize, of: &[usize]| {
        let have = routes(n);
        let want = expect(n, of);
        want.iter().all(|w| have.contains(w.as_str())) && have.lines().count() == want.len()
    };
    let settled = |of: &[usize], nodes: &[usize]| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if nodes.iter().all(|n| holds(*n, of)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        settled(&[0, 1, 2], &[0, 1, 2]),
        "the mesh did not converge: {:?}",
        (0..3).map(routes).collect::<Vec<_>>()
    );
    // The first two both announce one /32 (a Service address): the third routes it over
    // both (a multipath route), and over the other alone when one stops.
    let vip: Ipv4Net = "10.96.0.10/32".parse().unwrap();
    for (n, (tx, _)) in running.iter().enumerate().take(2) {
        tx.send(Cmd::SetRoutes(vec![prefix(n), vip])).unwrap();
    }
    let vip_routes = || {
        let out = lab
            .exec(
                &lab.state.nodes[2].netns,
                &["ip", "route", "show", "10.96.0.10/32", "proto", "119"],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ecmp = |via: &[usize]| {
        let r = vip_routes();
        via.iter()
            .all(|n| r.contains(&format!("nexthop via {} ", addrs[*n])))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ecmp(&[0, 1]) {
        assert!(
            Instant::now() < deadline,
            "no multipath route: {}",
            vip_routes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    running[1].0.send(Cmd::SetRoutes(vec![prefix(1)])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vip_routes().contains(&format!("via {} dev", addrs[0]))
        || vip_routes().contains("nexthop")
    {
        assert!(
            Instant::now() < deadline,
            "still multipath: {}",
            vip_routes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    running[0].0.send(Cmd::SetRoutes(vec![prefix(0)])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vip_routes().trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the /32 stayed: {}",
            vip_routes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The third speaker dies (its sockets closed, no NOTIFICATION): the others keep its
    // prefix, and its own kernel keeps its routes, while it is gone and as it comes
    // back; then the mesh is whole again.
    let (tx, h) = running.remove(2);
    drop(tx);
    h.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for n in 0..3 {
        assert!(
            holds(n, &[0, 1, 2]),
            "node {n} changed while the third speaker was gone: {}",
            routes(n)
        );
    }
    running.push(speaker_in(
        &lab.state.nodes[2].netns,
        cfg(2),
        prefix(2),
        peers(&[0, 1, 2]),
    ));
    for _ in 0..20 {
        for n in 0..3 {
            assert!(
                holds(n, &[0, 1, 2]),
                "node {n} changed during the restart: {}",
                routes(n)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first two remove the third as a peer: its prefix goes from them.
    for tx in running.iter().take(2).map(|(tx, _)| tx) {
        tx.send(Cmd::SetPeers(peers(&[0, 1]))).unwrap();
    }
    assert!(
        settled(&[0, 1], &[0, 1]),
        "a removed peer's route stayed: {:?}",
        (0..2).map(routes).collect::<Vec<_>>()
    );
    for (tx, h) in running {
        tx.send(Cmd::Stop).unwrap();
        h.join().unwrap();
    }
}
