//! Route reflection (RFC 4456) between our own speakers, one in each node namespace of
//! a lab: two reflectors (one cluster) and two clients that peer only with them. Each
//! client gets the other's prefix with the other as next hop; a prefix a client starts
//! or stops originating reaches the other client without resetting any session; with
//! both reflectors gone, the clients keep their routes (graceful restart's stale
//! time). With add-path, a reflector passes on every equal path. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{speaker_in, Cmd};
use ipnet::Ipv4Net;
use trellis_bgp::speaker::Peer;
use trellis_lab::Lab;

fn prefix(n: usize) -> Ipv4Net {
    format!("10.201.{}.0/24", n + 1).parse().unwrap()
}

#[test]
fn two_reflectors_carry_their_clients_routes() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let lab = Lab::new(4).unwrap();
    let addrs: Vec<Ipv4Addr> = lab.state.nodes.iter().map(|n| n.addr).collect();
    let cluster = Ipv4Addr::new(10, 255, 0, 1);
    let (rr, clients) = ([0usize, 1], [2usize, 3]);
    let cfg = |n: usize| common::node_speaker(addrs[n], rr.contains(&n).then_some(cluster));
    // Reflectors peer with each other and with every client (as clients); clients
    // peer with the two reflectors only.
    let peers = |n: usize| -> Vec<Peer> {
        if rr.contains(&n) {
            (0..4)
                .filter(|m| *m != n)
                .map(|m| Peer {
                    client: clients.contains(&m),
                    ..Peer::new(addrs[m], 64512)
                })
                .collect()
        } else {
            rr.iter().map(|m| Peer::new(addrs[*m], 64512)).collect()
        }
    };
    let mut running: Vec<_> = (0..4)
        .map(|n| speaker_in(&lab.state.nodes[n].netns, cfg(n), prefix(n), peers(n)))
        .collect();
    let routes = |n: usize| lab.routes_of_proto(&lab.state.nodes[n].netns, 119);
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                (0..4).map(routes).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // As `ip route` prints them: a /32 without its length.
    let has = |n: usize, p: Ipv4Net, via: usize| {
        let p = if p.prefix_len() == 32 {
            p.addr().to_string()
        } else {
            p.to_string()
        };
        routes(n).contains(&format!("{p} via {} ", addrs[via]))
    };
    // Each client learns the other's prefix through the reflectors, next hop unchanged;
    // the reflectors learn both.
    wait("clients did not get each other's prefix", &|| {
        has(2, prefix(3), 3) && has(3, prefix(2), 2)
    });
    wait("the reflectors did not get the clients' prefixes", &|| {
        rr.iter()
            .all(|r| has(*r, prefix(2), 2) && has(*r, prefix(3), 3))
    });
    // Reflectors' own prefixes reach the clients as well.
    wait("clients did not get the reflectors' prefixes", &|| {
        clients
            .iter()
            .all(|c| has(*c, prefix(0), 0) && has(*c, prefix(1), 1))
    });
    // A /32 client 2 starts originating reaches client 3, and leaves with it.
    let vip: Ipv4Net = "10.96.0.10/32".parse().unwrap();
    running[2]
        .0
        .send(Cmd::SetRoutes(vec![prefix(2), vip]))
        .unwrap();
    wait("a new prefix did not reach the other client", &|| {
        has(3, vip, 2)
    });
    running[2].0.send(Cmd::SetRoutes(vec![prefix(2)])).unwrap();
    wait("a withdrawn prefix stayed", &|| {
        !routes(3).contains("10.96.0.10") && has(3, prefix(2), 2)
    });
    // Both reflectors die (their sockets closed, no NOTIFICATION): the clients keep
    // every route for the restart time.
    for (tx, h) in running.drain(..2) {
        drop(tx);
        h.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        has(2, prefix(3), 3) && has(3, prefix(2), 2) && has(2, prefix(0), 0),
        "clients lost routes with their reflectors: {:?}",
        (0..4).map(routes).collect::<Vec<_>>()
    );
    for (tx, h) in running {
        tx.send(Cmd::Stop).unwrap();
        h.join().unwrap();
    }
}

/// Add-path (RFC 7911): two clients announce the same /32 to one reflector; a third
/// client gets both paths through it and routes the /32 over both (a multipath route),
/// where without add-path a reflector passes on one path only.
#[test]
fn a_reflector_passes_every_equal_path_with_add_path() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let lab = Lab::new(4).unwrap();
    let addrs: Vec<Ipv4Addr> = lab.state.nodes.iter().map(|n| n.addr).collect();
    let cfg =
        |n: usize| common::node_speaker(addrs[n], (n == 0).then_some(Ipv4Addr::new(10, 255, 0, 1)));
    let peers = |n: usize| -> Vec<Peer> {
        if n == 0 {
            (1..4)
                .map(|m| Peer {
                    client: true,
                    ..Peer::new(addrs[m], 64512)
                })
                .collect()
        } else {
            vec![Peer::new(addrs[0], 64512)]
        }
    };
    let running: Vec<_> = (0..4)
        .map(|n| speaker_in(&lab.state.nodes[n].netns, cfg(n), prefix(n), peers(n)))
        .collect();
    let vip: Ipv4Net = "10.96.0.10/32".parse().unwrap();
    for n in [1, 2] {
        running[n]
            .0
            .send(Cmd::SetRoutes(vec![prefix(n), vip]))
            .unwrap();
    }
    let vip_route = || {
        let out = lab
            .exec(
                &lab.state.nodes[3].netns,
                &["ip", "route", "show", "10.96.0.10/32", "proto", "119"],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let both = || {
        let r = vip_route();
        [1, 2]
            .iter()
            .all(|n| r.contains(&format!("nexthop via {} ", addrs[*n])))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !both() {
        assert!(
            Instant::now() < deadline,
            "client 3 did not get both paths: {}",
            vip_route()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (tx, h) in running {
        tx.send(Cmd::Stop).unwrap();
        h.join().unwrap();
    }
}
