//! BIRD 2 in node 2 of a lab, peering with node 1: the tests' reference peer.

use std::process::Command;

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

/// Start BIRD in node 2's namespace: AS 65001, peering with node 1 (AS `peer_as`),
/// announcing 10.99.0.0/24. `protocols` adds protocols (`protocol bfd {...}`), `extra`
/// lines inside the BGP protocol (`password "..."; `, `bfd on;`), `channel` lines
/// inside its IPv4 channel (`add paths on;`). Returns its pid and control socket.
pub fn start(
    lab: &mut Lab,
    peer_as: u32,
    protocols: &str,
    extra: &str,
    channel: &str,
) -> (u32, String) {
    let (n1, n2) = (lab.state.nodes[0].addr, lab.state.nodes[1].addr);
    let dir = lab.dir();
    let conf = dir.join("bird.conf");
    std::fs::write(
        &conf,
        format!(
            "log stderr all;\nrouter id {n2};\nprotocol device {{}}\n\
             protocol static {{ ipv4; route 10.99.0.0/24 blackhole; }}\n{protocols}\n\
             protocol bgp trellis {{\n  local {n2} as 65001;\n  neighbor {n1} as {peer_as};\n  \
             hold time 9;\n  connect retry time 1;\n  error wait time 1, 2;\n  {extra}\n  \
             ipv4 {{ import all; export where source = RTS_STATIC; {channel} }};\n}}\n"
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

/// `birdc ARGS` on the control socket.
pub fn birdc(sock: &str, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .args(["-s", sock])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
