//! A full iBGP mesh of three speakers, one in each node namespace of a lab: every node's
//! kernel gets the other two nodes' prefixes (protocol 119, via their addresses), and
//! the prefixes of a speaker that stops leave the others' kernels. Needs root.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use trellis_bgp::speaker::{Peer, Speaker, SpeakerConfig};
use trellis_lab::{netns_path, Lab};

/// A speaker in `netns` until `stop` fires.
fn speaker_in(
    netns: &str,
    cfg: SpeakerConfig,
    peers: Vec<Peer>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let path = netns_path(netns);
    let (stop, stopped) = oneshot::channel::<()>();
    let h = std::thread::spawn(move || {
        let f = File::open(&path).unwrap();
        // SAFETY: setns(2) on this thread only, which ends with the speaker.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = Speaker::start(cfg).await.unwrap();
            s.set_peers(&peers);
            let _ = stopped.await;
            drop(s);
        });
    });
    (stop, h)
}

fn prefix(n: usize) -> Ipv4Net {
    format!("10.200.{}.0/24", n + 1).parse().unwrap()
}

#[test]
fn a_full_mesh_installs_every_nodes_prefix() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let lab = Lab::new(3).unwrap();
    let addrs: Vec<Ipv4Addr> = lab.state.nodes.iter().map(|n| n.addr).collect();
    let peers: Vec<Peer> = addrs
        .iter()
        .map(|a| Peer {
            address: *a,
            asn: 64512,
        })
        .collect();
    let mut running = Vec::new();
    for (n, node) in lab.state.nodes.iter().enumerate() {
        let cfg = SpeakerConfig {
            asn: 64512,
            address: node.addr,
            port: 179,
            hold_time: 9,
            prefixes: vec![prefix(n)],
        };
        running.push(Some(speaker_in(&node.netns, cfg, peers.clone())));
    }
    let routes = |n: usize| {
        let out = lab
            .exec(
                &lab.state.nodes[n].netns,
                &["ip", "route", "show", "proto", "119"],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expect = |n: usize, of: &[usize]| -> Vec<String> {
        of.iter()
            .filter(|m| **m != n)
            .map(|m| format!("{} via {}", prefix(*m), addrs[*m]))
            .collect()
    };
    let settled = |of: &[usize], nodes: &[usize]| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = nodes.iter().all(|n| {
                let have = routes(*n);
                let want = expect(*n, of);
                want.iter().all(|w| have.contains(w.as_str())) && have.lines().count() == want.len()
            });
            if ok || Instant::now() > deadline {
                return ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        settled(&[0, 1, 2], &[0, 1, 2]),
        "the mesh did not converge: {:?}",
        (0..3).map(routes).collect::<Vec<_>>()
    );
    // The third speaker stops: its prefix leaves the others.
    let (stop, h) = running[2].take().unwrap();
    stop.send(()).unwrap();
    h.join().unwrap();
    assert!(
        settled(&[0, 1], &[0, 1]),
        "a stopped speaker's route stayed: {:?}",
        (0..2).map(routes).collect::<Vec<_>>()
    );
    for (stop, h) in running.into_iter().flatten() {
        stop.send(()).unwrap();
        h.join().unwrap();
    }
}
