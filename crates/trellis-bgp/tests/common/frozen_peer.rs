//! A BIRD 2 that stops answering, and how long its route stays in our kernel (shared by
//! the `bfd` test and the `bfd_detection` bench).

use std::process::Command;
use std::time::{Duration, Instant};

use super::speaker_in;
use trellis_bgp::speaker::{Peer, SpeakerConfig};
use trellis_lab::Lab;

/// Fail unless root with `bird`/`birdc`.
pub fn require() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    for tool in ["bird", "birdc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: apt-get install bird2");
    }
}

/// BIRD in node 2 (AS 65001, graceful restart, BFD at 100 ms × 3), announcing
/// 10.99.0.0/24 to node 1 (AS 65000). Returns its pid and control socket.
fn start_bird(lab: &mut Lab) -> (u32, String) {
    let (n1, n2) = (lab.state.nodes[0].addr, lab.state.nodes[1].addr);
    let dir = lab.dir();
    let conf = dir.join("bird.conf");
    std::fs::write(
        &conf,
        format!(
            "log stderr all;\nrouter id {n2};\nprotocol device {{}}\n\
             protocol static {{ ipv4; route 10.99.0.0/24 blackhole; }}\n\
             protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             protocol bgp trellis {{\n  local {n2} as 65001;\n  neighbor {n1} as 65000;\n  hold time 9;\n  \
             connect retry time 1;\n  error wait time 1, 2;\n  graceful restart on;\n  bfd on;\n  \
             ipv4 {{ import all; export where source = RTS_STATIC; }};\n}}\n"
        ),
    )
    .unwrap();
    let sock = dir.join("bird.ctl").display().to_string();
    let mut c = Command::new("bird");
    c.args(["-f", "-c"]).arg(&conf).args(["-s", &sock]);
    let netns = lab.state.nodes[1].netns.clone();
    let pid = lab.spawn(&netns, "bird", c).unwrap();
    (pid, sock)
}

fn birdc(sock: &str, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .args(["-s", sock])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
    let routes = |lab: &Lab| {
        let out = lab
            .exec(
                &lab.state.nodes[0].netns,
                &["ip", "route", "show", "proto", "119"],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
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
