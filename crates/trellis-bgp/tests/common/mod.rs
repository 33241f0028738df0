//! Helpers of the speaker's lab tests (each test file uses some of them).
#![allow(dead_code)]

pub mod bird;
pub mod frozen_peer;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::JoinHandle;

use trellis_bgp::fsm::Local;
use trellis_bgp::session::PeerConfig;
use trellis_bgp::speaker::{Peer, Speaker, SpeakerConfig};

/// Run the future `f` makes on a runtime of its own, on a thread inside lab namespace
/// `netns` (the test's other threads stay where they are).
pub fn block_on_in<T, F>(netns: &str, f: impl FnOnce() -> F + Send + 'static) -> JoinHandle<T>
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let h = trellis_lab::spawn_in_netns(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .expect("a thread in the lab namespace");
    std::thread::spawn(move || {
        h.join()
            .expect("the namespace thread")
            .expect("entering the namespace")
    })
}

/// Our session from `local` (AS 65000, hold time 9 s) to `peer` (AS `peer_asn`, port 179).
pub fn peer_config(local: Ipv4Addr, peer: Ipv4Addr, peer_asn: u32) -> PeerConfig {
    PeerConfig {
        local: Local {
            asn: 65000,
            router_id: local,
            peer_asn,
            hold_time: 9,
        },
        peer: SocketAddrV4::new(peer, 179),
        local_address: local,
        password: None,
        restart_time: trellis_bgp::session::RESTART_TIME,
    }
}

/// A session's outbox announcing `prefixes` as our own (eBGP form when `cfg`'s peer AS
/// is another), and the sender that keeps its table alive.
pub fn outbox(
    cfg: &PeerConfig,
    prefixes: &[ipnet::Ipv4Net],
) -> (
    tokio::sync::watch::Sender<trellis_bgp::export::Exports>,
    trellis_bgp::session::Outbox,
) {
    use trellis_bgp::export::{self, Class, Eligible, Exports, LocalRoute, Me};
    let ebgp = cfg.local.asn != cfg.local.peer_asn;
    let me = Me {
        asn: cfg.local.asn,
        address: cfg.local_address,
        cluster_id: None,
    };
    let class = if ebgp { Class::Ebgp } else { Class::Ibgp };
    let all = prefixes.iter().copied().collect();
    let table = Exports::default()
        .next(&all, |_| {
            export::route_for(&me, class, Some(&LocalRoute::default()), None)
        })
        .unwrap_or_default();
    let tx = tokio::sync::watch::Sender::new(table);
    let out = trellis_bgp::session::Outbox {
        sent: Default::default(),
        table: tx.subscribe(),
        peer: Eligible {
            address: *cfg.peer.ip(),
            ebgp_asn: ebgp.then_some(cfg.local.peer_asn),
            filter: Default::default(),
        },
    };
    (tx, out)
}

/// What a test tells a speaker started by [`speaker_in`].
pub enum Cmd {
    /// [`Speaker::set_peers`].
    SetPeers(Vec<Peer>),
    /// [`Speaker::set_routes`] with these prefixes.
    SetRoutes(Vec<ipnet::Ipv4Net>),
    /// Stop, leaving the kernel as it is.
    Stop,
}

/// A speaker in `netns` originating `prefix`, driven by commands until [`Cmd::Stop`] (or
/// its sender's drop: the speaker dies with its sockets, as a killed agent's would).
pub fn speaker_in(
    netns: &str,
    cfg: SpeakerConfig,
    prefix: ipnet::Ipv4Net,
    peers: Vec<Peer>,
) -> (tokio::sync::mpsc::UnboundedSender<Cmd>, JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
    let routes = |ps: &[ipnet::Ipv4Net]| {
        ps.iter()
            .map(|p| (*p, trellis_bgp::export::LocalRoute::default()))
            .collect()
    };
    let h = block_on_in(netns, move || async move {
        let s = Speaker::start(cfg).await.unwrap();
        s.set_routes(&routes(&[prefix]));
        s.set_peers(&peers);
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::SetPeers(p) => s.set_peers(&p),
                Cmd::SetRoutes(r) => s.set_routes(&routes(&r)),
                Cmd::Stop => break,
            }
        }
    });
    (tx, h)
}

/// A node's speaker in AS 64512 at `address` (hold time 9 s, 5 s deferral at start),
/// reflecting routes for cluster `cluster_id` when given.
pub fn node_speaker(address: Ipv4Addr, cluster_id: Option<Ipv4Addr>) -> SpeakerConfig {
    SpeakerConfig {
        asn: 64512,
        address,
        port: 179,
        hold_time: 9,
        cluster_id,
        defer: std::time::Duration::from_secs(5),
    }
}
