//! A speaker: this node's sessions with a set of peers, their routes in one [`Rib`],
//! and the best of them in the kernel ([`crate::install`]).
//!
//! - One task per peer. Of two speakers that peer with each other, the one with the
//!   lower address connects and the other waits for it (so there is never a connection
//!   collision to resolve); a failed or ended session is tried again after a second.
//! - One listener accepts connections and hands each to its peer's task (an unknown
//!   source is closed).
//! - [`Speaker::set_peers`] starts the tasks of new peers and stops those of removed
//!   ones; a peer that stays keeps its session (a change of peers never resets another
//!   session).
//! - After every change of the RIB the kernel is brought to its best paths, except at
//!   the start: until every peer has sent its End-of-RIB (or [`SpeakerConfig::defer`]
//!   has passed) the kernel's routes are left as a previous run left them, so a
//!   restarted speaker changes nothing (RFC 4724, restarting speaker).
//! - Graceful restart, helper side: when a session with a peer that announced the
//!   capability ends, its routes stay (stale) for its restart time; its End-of-RIB in
//!   the next session removes those it did not announce again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::fsm::Local;
use crate::rib::Rib;
use crate::session::{run_on, run_once, PeerConfig, RouteEvent, SessionError};

/// How long a failed session waits before the next attempt.
const RETRY: Duration = Duration::from_secs(1);

/// This speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Our AS.
    pub asn: u32,
    /// Our address: the BGP identifier, the listening address, the source of our
    /// connections and the next hop of our routes.
    pub address: Ipv4Addr,
    /// The port to listen on and to connect to (179).
    pub port: u16,
    /// The hold time we propose.
    pub hold_time: u16,
    /// The prefixes we announce.
    pub prefixes: Vec<Ipv4Net>,
    /// At the start, how long the kernel's routes are left alone while not every peer
    /// has sent its End-of-RIB.
    pub defer: Duration,
}

/// A peer: its address and AS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Its address.
    pub address: Ipv4Addr,
    /// Its AS.
    pub asn: u32,
}

struct PeerTask {
    peer: Peer,
    handle: JoinHandle<()>,
    /// Connections the listener accepted from this peer.
    accepted: mpsc::Sender<TcpStream>,
}

/// A running speaker (its tasks stop when it is dropped).
pub struct Speaker {
    cfg: SpeakerConfig,
    peers: Arc<Mutex<BTreeMap<Ipv4Addr, PeerTask>>>,
    rib: Arc<Mutex<Rib>>,
    /// The peers that have sent End-of-RIB since the start.
    eor: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
    changed: mpsc::UnboundedSender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker").field("cfg", &self.cfg).finish()
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, p) in std::mem::take(&mut *self.peers.lock().unwrap_or_else(|e| e.into_inner())) {
            p.handle.abort();
        }
    }
}

impl Speaker {
    /// Listen on the speaker's address and keep the kernel's routes (in the calling
    /// task's network namespace) at the best paths.
    pub async fn start(cfg: SpeakerConfig) -> std::io::Result<Speaker> {
        let listener = TcpListener::bind(SocketAddr::from((cfg.address, cfg.port))).await?;
        let nl = trellis_net::Netlink::connect().map_err(std::io::Error::other)?;
        let rib = Arc::new(Mutex::new(Rib::default()));
        let eor: Arc<Mutex<BTreeSet<Ipv4Addr>>> = Arc::default();
        let peers: Arc<Mutex<BTreeMap<Ipv4Addr, PeerTask>>> = Arc::default();
        let (changed, mut wake) = mpsc::unbounded_channel::<()>();
        let (r, e, p) = (rib.clone(), eor.clone(), peers.clone());
        let defer_until = tokio::time::Instant::now() + cfg.defer;
        let waker = changed.clone();
        let installer = tokio::spawn(async move {
            // Wake once more when the deferral ends.
            tokio::spawn(async move {
                tokio::time::sleep_until(defer_until).await;
                let _ = waker.send(());
            });
            let mut ready = false;
            while wake.recv().await.is_some() {
                while wake.try_recv().is_ok() {}
                if !ready {
                    let all_eor = {
                        let eor = e.lock().unwrap_or_else(|e| e.into_inner());
                        let peers = p.lock().unwrap_or_else(|e| e.into_inner());
                        !peers.is_empty() && peers.keys().all(|a| eor.contains(a))
                    };
                    ready = all_eor || tokio::time::Instant::now() >= defer_until;
                    if !ready {
                        continue;
                    }
                }
                let best = r.lock().unwrap_or_else(|e| e.into_inner()).best();
                if let Err(e) = crate::install::sync(&nl, &best).await {
                    tracing::warn!("bgp: installing routes: {e}");
                }
            }
        });
        let table = peers.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else {
                    continue;
                };
                let SocketAddr::V4(from) = from else { continue };
                let to = table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(from.ip())
                    .map(|p| p.accepted.clone());
                match to {
                    Some(tx) => {
                        let _ = tx.try_send(stream);
                    }
                    None => {
                        tracing::info!(peer = %from, "bgp: connection from an unknown peer closed")
                    }
                }
            }
        });
        let speaker = Speaker {
            cfg,
            peers,
            rib,
            eor,
            changed,
            tasks: vec![installer, accept],
        };
        Ok(speaker)
    }

    /// Peer with exactly `peers`: start sessions with new ones, stop those removed
    /// (their routes go), leave the others alone.
    pub fn set_peers(&self, peers: &[Peer]) {
        let mut current = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let want: BTreeMap<Ipv4Addr, Peer> = peers.iter().map(|p| (p.address, *p)).collect();
        let gone: Vec<Ipv4Addr> = current
            .iter()
            .filter(|(a, t)| want.get(a) != Some(&t.peer))
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            if let Some(t) = current.remove(&a) {
                t.handle.abort();
                self.rib.lock().unwrap_or_else(|e| e.into_inner()).forget(a);
                let _ = self.changed.send(());
            }
        }
        for (a, p) in want {
            if current.contains_key(&a) || a == self.cfg.address {
                continue;
            }
            let (accepted, rx) = mpsc::channel(4);
            let handle = tokio::spawn(peer_task(
                self.cfg.clone(),
                p,
                rx,
                self.rib.clone(),
                self.eor.clone(),
                self.changed.clone(),
            ));
            current.insert(
                a,
                PeerTask {
                    peer: p,
                    handle,
                    accepted,
                },
            );
        }
    }

    /// Stop for good (no bgp network left here): the sessions end and the kernel's
    /// learned routes go. (Dropping the speaker instead leaves them, as a restart
    /// should.)
    pub async fn shutdown(self) -> Result<(), trellis_net::NetError> {
        drop(self);
        let nl = trellis_net::Netlink::connect()?;
        crate::install::sync(&nl, &BTreeMap::new())
            .await
            .map(|_| ())
    }

    /// The best paths now (prefix → next hops).
    pub fn best(&self) -> BTreeMap<Ipv4Net, Vec<Ipv4Addr>> {
        self.rib.lock().unwrap_or_else(|e| e.into_inner()).best()
    }
}

/// One peer's sessions, one after the other, forever.
async fn peer_task(
    cfg: SpeakerConfig,
    peer: Peer,
    mut accepted: mpsc::Receiver<TcpStream>,
    rib: Arc<Mutex<Rib>>,
    eor: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
    changed: mpsc::UnboundedSender<()>,
) {
    let pc = PeerConfig {
        local: Local {
            asn: cfg.asn,
            router_id: cfg.address,
            peer_asn: peer.asn,
            hold_time: cfg.hold_time,
        },
        peer: SocketAddrV4::new(peer.address, cfg.port),
        local_address: cfg.address,
    };
    let ebgp = cfg.asn != peer.asn;
    let active = cfg.address < peer.address;
    let take = |ev: &RouteEvent| {
        if *ev == RouteEvent::EndOfRib {
            eor.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer.address);
        }
        rib.lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(peer.address, ebgp, false, ev);
        let _ = changed.send(());
    };
    // The peer's routes kept stale after its session ended, until then.
    let mut stale_until: Option<tokio::time::Instant> = None;
    loop {
        let (tx, mut rx) = mpsc::channel(256);
        let session = async {
            if active {
                run_once(&pc, &cfg.prefixes, &tx).await
            } else {
                match accepted.recv().await {
                    Some(stream) => run_on(stream, &pc, &cfg.prefixes, &tx).await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::pin!(session);
        let mut restart: Option<u16> = None;
        let ended: SessionError = loop {
            let stale_over = async {
                match stale_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = &mut session => break e,
                Some(ev) = rx.recv() => {
                    if let RouteEvent::Up(n) = &ev {
                        restart = n.graceful_restart;
                    }
                    if ev == RouteEvent::EndOfRib {
                        stale_until = None;
                    }
                    // The session's Down is handled below, once it has ended.
                    if !matches!(ev, RouteEvent::Down(_)) {
                        take(&ev);
                    }
                }
                _ = stale_over => {
                    stale_until = None;
                    rib.lock().unwrap_or_else(|e| e.into_inner()).drop_stale(peer.address);
                    let _ = changed.send(());
                }
            }
        };
        while let Ok(ev) = rx.try_recv() {
            if !matches!(ev, RouteEvent::Down(_)) {
                take(&ev);
            }
        }
        // The session is over: with graceful restart its routes stay, stale, for the
        // peer's restart time; without, or when either side ended it with a
        // NOTIFICATION (a deliberate end, RFC 4724 §4.2), they go.
        let deliberate = matches!(&ended, SessionError::Sent { .. })
            || matches!(&ended, SessionError::Closed { reason, .. } if reason.contains("NOTIFICATION"));
        if deliberate {
            restart = None;
            stale_until = None;
        }
        match restart {
            Some(secs) => {
                rib.lock().unwrap_or_else(|e| e.into_inner()).apply(
                    peer.address,
                    ebgp,
                    true,
                    &RouteEvent::Down(ended.to_string()),
                );
                stale_until =
                    Some(tokio::time::Instant::now() + Duration::from_secs(u64::from(secs)));
            }
            None if stale_until.is_none() => {
                rib.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(peer.address);
                let _ = changed.send(());
            }
            None => {}
        }
        if !matches!(ended, SessionError::Io { .. }) {
            tracing::info!(peer = %peer.address, "bgp: session ended: {ended}");
        }
        // Wait for the retry, dropping stale routes if their time runs out meanwhile.
        let retry = tokio::time::sleep(RETRY);
        tokio::pin!(retry);
        loop {
            let stale_over = async {
                match stale_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut retry => break,
                _ = stale_over => {
                    stale_until = None;
                    rib.lock().unwrap_or_else(|e| e.into_inner()).drop_stale(peer.address);
                    let _ = changed.send(());
                }
            }
        }
    }
}
