//! A BIRD 2 that stops answering, and how long its route stays in our kernel (shared by
//! the `bfd` test and the `bfd_detection` bench).

use std::time::{Duration, Instant};

use super::speaker_in;
use trellis_bgp::speaker::{Peer, SpeakerConfig};
use trellis_lab::Lab;

/// BIRD (AS 65001, graceful restart, BFD at 100 ms × 3) announcing 10.99.0.0/24 to
/// node 1 (AS 65000). Returns its pid and control socket.
fn start_bird(lab: &mut Lab) -> (u32, String) {
    super::bird::start(
        lab,
        65000,
        "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }",
        "graceful restart on;\n  bfd on;",
        "",
    )
}

use super::bird::birdc;

/// How long BIRD's route stays in node 1 once BIRD freezes (SIGSTOP: a hung host, its
/// TCP session still open), with or without BFD on our side.
pub fn time_to_withdraw(bfd: bool) -> Duration {
    let mut lab = Lab::new(2).unwrap();
    let (pid, sock) = start_bird(&mut lab);
    let n1 = lab.state.nodes[0].addr;
    let n2 = lab.state.nodes[1].addr;
    let cfg = SpeakerConfig {
        asn: 65000,
        address: n1,
        port: 179,
        hold_time: 9,
        cluster_id: None,
        defer: Duration::ZERO,
    };
    let peer = Peer {
        bfd,
        ..Peer::new(n2, 65001)
    };
    let (tx, h) = speaker_in(
        &lab.state.nodes[0].netns,
        cfg,
        "10.98.0.0/24".parse().unwrap(),
        vec![peer],
    );
    let routes = |lab: &Lab| lab.routes_of_proto(&lab.state.nodes[0].netns, 119);
    let want = format!("10.99.0.0/24 via {n2}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = || {
        routes(&lab).contains(&want)
            && (!bfd || birdc(&sock, &["show", "bfd", "sessions"]).contains(" Up "))
    };
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "no route or BFD session: {} / {}",
            routes(&lab),
            birdc(&sock, &["show", "bfd", "sessions"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let BFD settle at its fast rate.
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: pid is the BIRD this test started.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let frozen = Instant::now();
    while routes(&lab).contains(&want) && frozen.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = frozen.elapsed();
    // SAFETY: as above; BIRD must run again to be stopped with the lab.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    drop(tx);
    h.join().unwrap();
    took
}
