//! The speaker against a real BIRD 2, each in its own node namespace of a lab: the
//! session comes up; BIRD learns our prefix with our AS in its path and we learn BIRD's;
//! a peer that is not the AS we expect is refused with the OPEN error NOTIFICATION; our
//! session gone without a word (a killed agent), BIRD keeps our route (graceful
//! restart); TCP MD5 passwords; add-path both ways. Needs root and `bird`/`birdc`
//! (Debian's bird2).

mod common;

use common::bird::{self, birdc, require};

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::mpsc;
use trellis_bgp::fsm::Notify;
use trellis_bgp::session::{run_once, RouteEvent, SessionError};
use trellis_lab::Lab;

/// Start BIRD (see [`bird::start`]); returns the control socket's path.
fn start_bird(lab: &mut Lab, peer_as: u32) -> String {
    bird::start(lab, peer_as, "", "", "").1
}

/// [`start_bird`] with more lines in its BGP protocol (`password "..."; `).
fn start_bird_with(lab: &mut Lab, peer_as: u32, extra: &str) -> String {
    bird::start(lab, peer_as, "", extra, "").1
}

/// Run one session from node 1's namespace (a thread inside it, with its own runtime),
/// collecting events for `within`; returns the events and how the session ended.
fn session_from_node1(
    lab: &Lab,
    peer_as: u32,
    prefixes: Vec<Ipv4Net>,
    within: Duration,
) -> (Vec<RouteEvent>, Option<String>) {
    session_with_password(lab, peer_as, prefixes, within, None)
}

/// [`session_from_node1`] with a TCP MD5 password.
fn session_with_password(
    lab: &Lab,
    peer_as: u32,
    prefixes: Vec<Ipv4Net>,
    within: Duration,
    password: Option<&'static str>,
) -> (Vec<RouteEvent>, Option<String>) {
    let netns = lab.state.nodes[0].netns.clone();
    let (n1, n2) = (lab.state.nodes[0].addr, lab.state.nodes[1].addr);
    common::block_on_in(&netns, move || async move {
        let mut cfg = common::peer_config(n1, n2, peer_as);
        cfg.password = password.map(str::to_string);
        let (_table, mut out) = common::outbox(&cfg, &prefixes);
        let (tx, mut rx) = mpsc::channel(64);
        let deadline = Instant::now() + within;
        let mut events = Vec::new();
        let mut ended = None;
        // BIRD may not listen yet: try again until it does.
        while Instant::now() < deadline && ended.is_none() {
            let run = run_once(&cfg, &mut out, &tx);
            let stop = tokio::time::sleep_until(deadline.into());
            tokio::pin!(run);
            let collect = async {
                while let Some(e) = rx.recv().await {
                    events.push(e);
                }
            };
            tokio::select! {
                e = &mut run => {
                    match e {
                        SessionError::Io { .. } => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        e => ended = Some(e.to_string()),
                    }
                }
                _ = stop => break,
                _ = collect => {}
            }
            while let Ok(e) = rx.try_recv() {
                events.push(e);
            }
        }
        (events, ended)
    })
    .join()
    .unwrap()
}

#[test]
fn a_session_with_bird_exchanges_routes() {
    require();
    let mut lab = Lab::new(2).unwrap();
    let sock = start_bird(&mut lab, 65000);
    let ours: Ipv4Net = "10.98.0.0/24".parse().unwrap();
    // Keep the session for 4 s: up, routes both ways.
    let (events, ended) = session_from_node1(&lab, 65001, vec![ours], Duration::from_secs(4));
    let n2 = lab.state.nodes[1].addr;
    let up = events.iter().find_map(|e| match e {
        RouteEvent::Up(n) => Some(n.clone()),
        _ => None,
    });
    let up = up.unwrap_or_else(|| panic!("no session: {events:?} {ended:?}"));
    assert_eq!((up.peer_asn, up.peer_id, up.hold_time), (65001, n2, 9));
    assert!(
        events.iter().any(|e| matches!(e, RouteEvent::Learned { prefix, attrs, .. }
            if prefix.to_string() == "10.99.0.0/24" && attrs.next_hop == n2 && attrs.as_path == [65001])),
        "{events:?}"
    );
    assert!(events.contains(&RouteEvent::EndOfRib), "{events:?}");
    assert!(ended.is_none(), "the session ended: {ended:?}");
    // The session gone without a word (its thread ended, the socket closed, as when an
    // agent is killed): BIRD keeps our route, as our graceful-restart capability asks.
    std::thread::sleep(Duration::from_secs(1));
    let kept = birdc(&sock, &["show", "route", "10.98.0.0/24", "all"]);
    assert!(
        kept.contains("10.98.0.0/24"),
        "BIRD dropped our route:\n{kept}"
    );
    let proto = birdc(&sock, &["show", "protocols", "all", "trellis"]);
    assert!(
        proto.contains("Graceful restart") || proto.contains("graceful restart"),
        "{proto}"
    );
}

#[test]
fn bird_sees_our_route_with_our_as() {
    require();
    let mut lab = Lab::new(2).unwrap();
    let sock = start_bird(&mut lab, 65000);
    let ours: Ipv4Net = "10.98.0.0/24".parse().unwrap();
    let netns = lab.state.nodes[0].netns.clone();
    let (n1, n2) = (lab.state.nodes[0].addr, lab.state.nodes[1].addr);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let speaker = common::block_on_in(&netns, move || async move {
        let cfg = common::peer_config(n1, n2, 65001);
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let (_table, mut out) = common::outbox(&cfg, &[ours]);
        loop {
            if stop_rx.try_recv().is_ok() {
                return;
            }
            let run = run_once(&cfg, &mut out, &tx);
            tokio::pin!(run);
            let tick = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stop_rx.try_recv().is_ok() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = &mut run => tokio::time::sleep(Duration::from_millis(200)).await,
                _ = tick => return,
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = birdc(&sock, &["show", "route", "10.98.0.0/24", "all"]);
        if seen.contains("BGP.as_path: 65000") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_tx.send(()).unwrap();
    speaker.join().unwrap();
    assert!(
        seen.contains("10.98.0.0/24") && seen.contains("BGP.as_path: 65000"),
        "BIRD does not have our route:\n{seen}\n{}",
        birdc(&sock, &["show", "protocols", "all", "trellis"])
    );
    assert!(seen.contains(&format!("BGP.next_hop: {n1}")), "{seen}");
}

#[test]
fn a_peer_of_another_as_is_refused() {
    require();
    let mut lab = Lab::new(2).unwrap();
    // BIRD (AS 65001) expects us as 65000; we expect AS 65002: our OPEN judgement
    // refuses BIRD's OPEN with Bad Peer AS.
    let _sock = start_bird(&mut lab, 65000);
    let (events, ended) = session_from_node1(&lab, 65002, vec![], Duration::from_secs(8));
    assert!(
        !events.iter().any(|e| matches!(e, RouteEvent::Up(_))),
        "{events:?}"
    );
    let ended = ended.expect("the session should end");
    let bad = Notify::BAD_PEER_AS;
    assert!(
        ended.contains(&format!("sent NOTIFICATION {}/{}", bad.code, bad.subcode)),
        "{ended}"
    );
}

/// Learned routes reach the kernel of node 1 (protocol 119, via BIRD's node) and leave
/// it when BIRD stops (no graceful restart announced by BIRD here: removed at once).
#[test]
fn learned_routes_reach_the_kernel_and_leave_with_the_session() {
    require();
    let mut lab = Lab::new(2).unwrap();
    let _sock = start_bird(&mut lab, 65000);
    let netns = lab.state.nodes[0].netns.clone();
    let (n1, n2) = (lab.state.nodes[0].addr, lab.state.nodes[1].addr);
    let speaker = common::block_on_in(&netns, move || async move {
        let nl = trellis_net::Netlink::connect().unwrap();
        let cfg = common::peer_config(n1, n2, 65001);
        let (_table, mut out) = common::outbox(&cfg, &[]);
        let (tx, mut rx) = mpsc::channel(64);
        let installer = tokio::spawn(async move {
            let mut rib = trellis_bgp::rib::Rib::default();
            while let Some(e) = rx.recv().await {
                let ebgp = trellis_bgp::rib::Source {
                    ebgp: true,
                    client: false,
                };
                rib.apply(n2, ebgp, false, &e);
                rib.settle();
                trellis_bgp::install::sync(&nl, &rib.next_hops())
                    .await
                    .unwrap();
                if matches!(e, RouteEvent::Down(_)) {
                    return;
                }
            }
        });
        // Until the session ends (BIRD is stopped by the test).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match run_once(&cfg, &mut out, &tx).await {
                SessionError::Io { .. } => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => break,
            }
        }
        drop(tx);
        let _ = installer.await;
    });
    let node1 = lab.state.nodes[0].netns.clone();
    let routes = |lab: &Lab| {
        let out = lab
            .exec(&node1, &["ip", "route", "show", "proto", "119"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = format!("10.99.0.0/24 via {n2}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !routes(&lab).contains(&want) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(routes(&lab).contains(&want), "{}", routes(&lab));
    let bird = lab
        .state
        .procs
        .iter()
        .find(|p| p.what == "bird")
        .map(|p| p.pid)
        .unwrap();
    lab.stop(bird, false);
    speaker.join().unwrap();
    assert_eq!(
        routes(&lab).trim(),
        "",
        "the route stayed after the session"
    );
}

/// With a TCP MD5 password (RFC 2385) on both sides the session comes up; with none on
/// ours, or another, BIRD's kernel drops our segments and it never does.
#[test]
fn a_password_protected_session_with_bird() {
    require();
    let mut lab = Lab::new(2).unwrap();
    let _sock = start_bird_with(&mut lab, 65000, "password \"s3cret-pw\";");
    let up = |events: &[RouteEvent]| events.iter().any(|e| matches!(e, RouteEvent::Up(_)));
    let (events, _) = session_with_password(&lab, 65001, vec![], Duration::from_secs(3), None);
    assert!(!up(&events), "up without the password: {events:?}");
    let (events, _) =
        session_with_password(&lab, 65001, vec![], Duration::from_secs(3), Some("wrong"));
    assert!(!up(&events), "up with a wrong password: {events:?}");
    let (events, ended) = session_with_password(
        &lab,
        65001,
        vec![],
        Duration::from_secs(4),
        Some("s3cret-pw"),
    );
    assert!(
        up(&events),
        "no session with the password: {events:?} {ended:?}"
    );
}

/// Add-path (RFC 7911) with BIRD (`add paths on`): both sides send path identifiers;
/// BIRD's route reaches us and ours reaches BIRD.
#[test]
fn add_path_with_bird() {
    require();
    let mut lab = Lab::new(2).unwrap();
    let (_, sock) = bird::start(&mut lab, 65000, "", "", "add paths on;");
    let ours: Ipv4Net = "10.98.0.0/24".parse().unwrap();
    let (events, ended) = session_from_node1(&lab, 65001, vec![ours], Duration::from_secs(4));
    let up = events.iter().find_map(|e| match e {
        RouteEvent::Up(n) => Some(n.clone()),
        _ => None,
    });
    let up = up.unwrap_or_else(|| panic!("no session: {events:?} {ended:?}"));
    assert!(
        up.add_path_rx && up.add_path_tx,
        "add-path not negotiated: {up:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RouteEvent::Learned { prefix, .. }
            if prefix.to_string() == "10.99.0.0/24")),
        "{events:?}"
    );
    let seen = birdc(&sock, &["show", "route", "10.98.0.0/24", "all"]);
    assert!(
        seen.contains("10.98.0.0/24"),
        "BIRD lacks our route: {seen}"
    );
}
