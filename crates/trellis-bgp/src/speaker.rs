//! A speaker: this node's sessions with a set of peers, their routes in one [`Rib`], the
//! tables it sends them ([`crate::export`]) and the best learned paths in the kernel
//! ([`crate::install`]).
//!
//! - One task per peer. Of two speakers that peer with each other, the one with the
//!   lower address connects and the other waits for it (so there is never a connection
//!   collision to resolve); a failed or ended session is tried again after a second.
//! - One listener accepts connections and hands each to its peer's task (an unknown
//!   source is closed).
//! - [`Speaker::set_peers`] starts the tasks of new peers and stops those of removed or
//!   changed ones; a peer that stays keeps its session (a change of peers never resets
//!   another session). A removed peer's routes stay, stale, for [`REMOVAL_GRACE`], so
//!   its replacement's routes arrive before they go (make before break). [`Speaker::set_routes`] changes what we originate without
//!   resetting any session: the peers get UPDATEs for what changed.
//! - One engine task: after every change it recomputes the best paths and the exports
//!   of the changed prefixes only, and brings the kernel to the best paths — except at
//!   the start: until every peer has sent its End-of-RIB (or [`SpeakerConfig::defer`]
//!   has passed) the kernel's routes are left as a previous run left them, so a
//!   restarted speaker changes nothing (RFC 4724, restarting speaker).
//! - Graceful restart, helper side: when a session with a peer that announced the
//!   capability ends, its routes stay (stale) for its restart time; its End-of-RIB in
//!   the next session removes those it did not announce again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::export::{self, Class, Eligible, Exports, LocalRoute, Me};
use crate::fsm::Local;
use crate::policy::{self, Filter};
use crate::rib::{Rib, Source};
use crate::session::{run_on, run_once, Outbox, PeerConfig, RouteEvent, SessionError};

/// How long a failed session waits before the next attempt, for the first
/// [`FAST_RETRIES`] failures in a row: a node that has just joined is known to its peers
/// a moment before its speaker listens. Then each failure doubles the wait, up to
/// [`RETRY_MAX`].
const RETRY: Duration = Duration::from_millis(100);
/// Failures in a row retried after [`RETRY`].
const FAST_RETRIES: u32 = 10;
/// The longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a removed peer's routes stay (stale, behind any fresh path): a change of
/// peers (the mesh replaced by reflectors) makes its new sessions before it breaks the
/// old ones' routes.
pub const REMOVAL_GRACE: Duration = Duration::from_secs(5);

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
    /// Our route-reflector cluster ID: set, we reflect routes to our clients (RFC 4456).
    pub cluster_id: Option<Ipv4Addr>,
    /// At the start, how long the kernel's routes are left alone while not every peer
    /// has sent its End-of-RIB.
    pub defer: Duration,
}

/// A peer: its address and AS, and how we treat it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// Its address.
    pub address: Ipv4Addr,
    /// Its AS.
    pub asn: u32,
    /// It is a route-reflector client of ours.
    pub client: bool,
    /// What we take from it.
    pub import: Filter,
    /// What we send it.
    pub export: Filter,
    /// The session's TCP MD5 password.
    pub password: Option<String>,
    /// The hold time we propose to it (else the speaker's).
    pub hold_time: Option<u16>,
    /// Its port (else the speaker's).
    pub port: Option<u16>,
    /// Run BFD with it: when BFD says it is down, the session ends and its routes go
    /// at once (no graceful restart).
    pub bfd: bool,
    /// The restart time we announce to it (else [`crate::session::RESTART_TIME`]).
    pub restart_time: Option<u16>,
}

impl Peer {
    /// A peer with no filters, no password, not a client, the speaker's timers and port.
    pub fn new(address: Ipv4Addr, asn: u32) -> Self {
        Self {
            address,
            asn,
            client: false,
            import: Filter::default(),
            export: Filter::default(),
            password: None,
            hold_time: None,
            port: None,
            bfd: false,
            restart_time: None,
        }
    }
}

/// Where a session is, for `trellis bgp status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub peer: Peer,
    /// `Established`, `Connect` or `Idle`.
    pub state: String,
    /// Since when it is in that state.
    pub since: SystemTime,
    /// Prefixes received (stale ones included).
    pub received: usize,
    /// Prefixes sent.
    pub sent: usize,
    /// The peer's graceful-restart time, if it announced the capability.
    pub graceful_restart: Option<u16>,
    /// Its routes are kept stale while it restarts.
    pub stale: bool,
    /// The BFD session's state, when BFD runs with the peer.
    pub bfd: Option<String>,
    /// Why the last session ended.
    pub last_error: Option<String>,
}

struct PeerTask {
    peer: Peer,
    /// Paths its session has sent (kept by the session).
    sent: Arc<std::sync::atomic::AtomicUsize>,
    handle: JoinHandle<()>,
    /// Connections the listener accepted from this peer.
    accepted: mpsc::Sender<TcpStream>,
}

/// What the tasks share. Locks: the peer table (`Speaker::peers`) may be held while
/// this is taken, never the other way round.
struct Shared {
    rib: Rib,
    local: BTreeMap<Ipv4Net, LocalRoute>,
    /// Prefixes whose origination changed since the engine last ran.
    local_dirty: BTreeSet<Ipv4Net>,
    /// The peers that have sent End-of-RIB since the start.
    eor: BTreeSet<Ipv4Addr>,
    status: BTreeMap<Ipv4Addr, PeerStatus>,
}

type State = Arc<Mutex<Shared>>;

fn lock(s: &State) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running speaker (its tasks stop when it is dropped).
pub struct Speaker {
    cfg: SpeakerConfig,
    /// The listener's descriptor, for the peers' MD5 keys (the listener lives in the
    /// accept task, which the speaker outlives only while dropping).
    listener_fd: std::os::fd::RawFd,
    peers: Arc<Mutex<BTreeMap<Ipv4Addr, PeerTask>>>,
    state: State,
    exports: Arc<BTreeMap<Class, watch::Sender<Exports>>>,
    changed: mpsc::UnboundedSender<()>,
    tasks: Vec<JoinHandle<()>>,
    /// BFD sessions, when port 3784 could be had.
    bfd: Option<Arc<crate::bfd::Bfd>>,
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
        let addr = SocketAddr::from((cfg.address, cfg.port));
        let listener = crate::bind_retrying(|| TcpListener::bind(addr)).await?;
        let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let bfd = match crate::bfd::Bfd::start(cfg.address).await {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                tracing::warn!("bfd: no sessions ({}:3784: {e})", cfg.address);
                None
            }
        };
        let nl = trellis_net::Netlink::connect().map_err(std::io::Error::other)?;
        let state: State = Arc::new(Mutex::new(Shared {
            rib: Rib::default(),
            local: BTreeMap::new(),
            local_dirty: BTreeSet::new(),
            eor: BTreeSet::new(),
            status: BTreeMap::new(),
        }));
        let exports: Arc<BTreeMap<Class, watch::Sender<Exports>>> = Arc::new(
            [Class::Ebgp, Class::Ibgp, Class::Client]
                .into_iter()
                .map(|c| (c, watch::Sender::new(Exports::default())))
                .collect(),
        );
        let peers: Arc<Mutex<BTreeMap<Ipv4Addr, PeerTask>>> = Arc::default();
        let (changed, wake) = mpsc::unbounded_channel::<()>();
        let me = Me {
            asn: cfg.asn,
            address: cfg.address,
            cluster_id: cfg.cluster_id,
        };
        let engine = tokio::spawn(engine(
            me,
            cfg.defer,
            state.clone(),
            exports.clone(),
            peers.clone(),
            nl,
            changed.clone(),
            wake,
        ));
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
        Ok(Speaker {
            cfg,
            listener_fd,
            peers,
            state,
            exports,
            changed,
            tasks: vec![engine, accept],
            bfd,
        })
    }

    /// Originate exactly `routes`: the peers get UPDATEs for what changed.
    pub fn set_routes(&self, routes: &BTreeMap<Ipv4Net, LocalRoute>) {
        let mut s = lock(&self.state);
        let keys: BTreeSet<Ipv4Net> = s.local.keys().chain(routes.keys()).copied().collect();
        let changed: Vec<Ipv4Net> = keys
            .into_iter()
            .filter(|p| s.local.get(p) != routes.get(p))
            .collect();
        if changed.is_empty() {
            return;
        }
        s.local_dirty.extend(changed);
        s.local = routes.clone();
        drop(s);
        let _ = self.changed.send(());
    }

    /// Peer with exactly `peers`: start sessions with new ones, stop those removed
    /// or changed (their routes go), leave the others alone.
    pub fn set_peers(&self, peers: &[Peer]) {
        let mut current = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let want: BTreeMap<Ipv4Addr, &Peer> = peers.iter().map(|p| (p.address, p)).collect();
        let gone: Vec<Ipv4Addr> = current
            .iter()
            .filter(|(a, t)| want.get(a) != Some(&&t.peer))
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            if let Some(t) = current.remove(&a) {
                t.handle.abort();
                if let Some(b) = &self.bfd {
                    b.remove(a);
                }
                if t.peer.password.is_some() {
                    if let Err(e) = crate::md5::set_key(self.listener_fd, a, None) {
                        tracing::warn!(peer = %a, "bgp: removing the MD5 key: {e}");
                    }
                }
                let mut s = lock(&self.state);
                s.rib.mark_stale(a);
                s.status.remove(&a);
                drop(s);
                let _ = self.changed.send(());
                let (state, peers, changed) =
                    (self.state.clone(), self.peers.clone(), self.changed.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(REMOVAL_GRACE).await;
                    // Unless it came back meanwhile (its End-of-RIB then sorts them).
                    if !peers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(&a)
                    {
                        lock(&state).rib.drop_stale(a);
                        let _ = changed.send(());
                    }
                });
            }
        }
        for (a, p) in want {
            if current.contains_key(&a) || a == self.cfg.address {
                continue;
            }
            if let Some(pw) = &p.password {
                if let Err(e) = crate::md5::set_key(self.listener_fd, a, Some(pw.as_bytes())) {
                    tracing::warn!(peer = %a, "bgp: setting the MD5 key: {e}");
                }
            }
            let (accepted, rx) = mpsc::channel(4);
            let class = class_of(&self.cfg, p);
            let sent: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
            let outbox = Outbox {
                sent: sent.clone(),
                table: self.exports[&class].subscribe(),
                peer: Eligible {
                    address: p.address,
                    ebgp_asn: (class == Class::Ebgp).then_some(p.asn),
                    filter: p.export.clone(),
                },
            };
            lock(&self.state).status.insert(
                a,
                PeerStatus {
                    peer: p.clone(),
                    state: "Idle".into(),
                    since: SystemTime::now(),
                    received: 0,
                    sent: 0,
                    graceful_restart: None,
                    stale: false,
                    bfd: None,
                    last_error: None,
                },
            );
            let handle = tokio::spawn(peer_task(
                self.cfg.clone(),
                p.clone(),
                rx,
                outbox,
                self.state.clone(),
                self.changed.clone(),
                self.bfd.clone().filter(|_| p.bfd),
            ));
            current.insert(
                a,
                PeerTask {
                    peer: p.clone(),
                    sent,
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

    /// The best learned next hops now (prefix → next hops).
    pub fn best(&self) -> BTreeMap<Ipv4Net, Vec<Ipv4Addr>> {
        lock(&self.state).rib.next_hops()
    }

    /// Every session's state.
    pub fn status(&self) -> Vec<PeerStatus> {
        // Lock order: the peer table, then the state.
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let s = lock(&self.state);
        let received = s.rib.received_by_peer();
        s.status
            .values()
            .map(|st| {
                let mut st = st.clone();
                st.received = received.get(&st.peer.address).copied().unwrap_or(0);
                st.sent = match peers.get(&st.peer.address) {
                    Some(t) if st.state == "Established" => {
                        t.sent.load(std::sync::atomic::Ordering::Relaxed)
                    }
                    _ => 0,
                };
                st
            })
            .collect()
    }
}

/// The table a peer gets.
fn class_of(cfg: &SpeakerConfig, p: &Peer) -> Class {
    if p.asn != cfg.asn {
        Class::Ebgp
    } else if p.client && cfg.cluster_id.is_some() {
        Class::Client
    } else {
        Class::Ibgp
    }
}

/// After every change: settle the RIB, publish the changed exports, program the kernel.
#[allow(clippy::too_many_arguments)]
async fn engine(
    me: Me,
    defer: Duration,
    state: State,
    exports: Arc<BTreeMap<Class, watch::Sender<Exports>>>,
    peers: Arc<Mutex<BTreeMap<Ipv4Addr, PeerTask>>>,
    nl: trellis_net::Netlink,
    waker: mpsc::UnboundedSender<()>,
    mut wake: mpsc::UnboundedReceiver<()>,
) {
    let defer_until = tokio::time::Instant::now() + defer;
    // Wake once more when the deferral ends.
    tokio::spawn(async move {
        tokio::time::sleep_until(defer_until).await;
        let _ = waker.send(());
    });
    let mut ready = false;
    // What the kernel has, as far as we know: `None` until a full sync succeeded.
    let mut installed: Option<BTreeMap<Ipv4Net, Vec<Ipv4Addr>>> = None;
    while wake.recv().await.is_some() {
        while wake.try_recv().is_ok() {}
        // Lock order: the peer table is never taken while the state is held
        // (`set_peers` takes the state while holding the peer table).
        let peer_addrs: Vec<Ipv4Addr> = peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        let want = {
            let mut s = lock(&state);
            let mut changed = s.rib.settle();
            changed.extend(std::mem::take(&mut s.local_dirty));
            if !changed.is_empty() {
                for (class, tx) in exports.iter() {
                    let next = tx.borrow().next(&changed, |p| {
                        export::route_for(&me, *class, s.local.get(&p), s.rib.best().get(&p))
                    });
                    if let Some(next) = next {
                        tx.send_replace(next);
                    }
                }
            }
            if !ready {
                let all_eor =
                    !peer_addrs.is_empty() && peer_addrs.iter().all(|a| s.eor.contains(a));
                ready = all_eor || tokio::time::Instant::now() >= defer_until;
            }
            if !ready {
                continue;
            }
            // Our own prefixes are never routed elsewhere; those that ask for it get a
            // blackhole route (no next hop).
            let mut want = s.rib.next_hops();
            want.retain(|p, _| !s.local.contains_key(p));
            for (p, l) in &s.local {
                if l.blackhole {
                    want.insert(*p, Vec::new());
                }
            }
            want
        };
        let result = match &installed {
            Some(have) => Ok(crate::install::apply(&nl, have, &want).await),
            None => crate::install::sync(&nl, &want).await,
        };
        installed = match result {
            Ok(report) => match report.failures() {
                // Those are tried again at the next change, with a full sync.
                Some(f) => {
                    tracing::warn!("bgp: routes the kernel refused: {f}");
                    None
                }
                None => Some(want),
            },
            Err(e) => {
                tracing::warn!("bgp: listing the kernel's routes: {e}");
                None
            }
        };
    }
}

/// One peer's sessions, one after the other, forever.
async fn peer_task(
    cfg: SpeakerConfig,
    peer: Peer,
    mut accepted: mpsc::Receiver<TcpStream>,
    mut outbox: Outbox,
    state: State,
    changed: mpsc::UnboundedSender<()>,
    bfd: Option<Arc<crate::bfd::Bfd>>,
) {
    let pc = PeerConfig {
        local: Local {
            asn: cfg.asn,
            router_id: cfg.address,
            peer_asn: peer.asn,
            hold_time: peer.hold_time.unwrap_or(cfg.hold_time),
        },
        peer: SocketAddrV4::new(peer.address, peer.port.unwrap_or(cfg.port)),
        local_address: cfg.address,
        password: peer.password.clone(),
        restart_time: peer.restart_time.unwrap_or(crate::session::RESTART_TIME),
    };
    let source = Source {
        ebgp: cfg.asn != peer.asn,
        client: peer.client && cfg.cluster_id.is_some(),
    };
    let active = cfg.address < peer.address;
    let set_status = |f: &dyn Fn(&mut PeerStatus)| {
        if let Some(st) = lock(&state).status.get_mut(&peer.address) {
            f(st);
        }
    };
    let mut bfd_state = match &bfd {
        Some(b) => match b.add(peer.address).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(peer = %peer.address, "bfd: {e}");
                None
            }
        },
        None => None,
    };
    let mut bfd_seen = crate::bfd::BfdState::Down;
    if bfd_state.is_some() {
        set_status(&|st| st.bfd = Some("Down".into()));
    }
    let take = |ev: &RouteEvent| {
        let mut s = lock(&state);
        let ev = match ev {
            RouteEvent::EndOfRib => {
                s.eor.insert(peer.address);
                ev.clone()
            }
            // A route refused (a loop, or the import filter) replaces any accepted one.
            RouteEvent::Learned {
                prefix,
                path_id,
                attrs,
            } => {
                match policy::loop_check(cfg.asn, cfg.address, cfg.cluster_id, source.ebgp, attrs) {
                    Some(why) => {
                        tracing::debug!(peer = %peer.address, %prefix, "bgp: route refused: {why}");
                        RouteEvent::Withdrawn(*prefix, *path_id)
                    }
                    None if !peer.import.accepts(*prefix) => {
                        RouteEvent::Withdrawn(*prefix, *path_id)
                    }
                    None => ev.clone(),
                }
            }
            _ => ev.clone(),
        };
        s.rib.apply(peer.address, source, false, &ev);
        drop(s);
        let _ = changed.send(());
    };
    // The peer's routes kept stale after its session ended, until then.
    let mut stale_until: Option<tokio::time::Instant> = None;
    let mut failures: u32 = 0;
    let drop_stale = |stale_until: &mut Option<tokio::time::Instant>| {
        *stale_until = None;
        lock(&state).rib.drop_stale(peer.address);
        set_status(&|st| st.stale = false);
        let _ = changed.send(());
    };
    loop {
        let (tx, mut rx) = mpsc::channel(256);
        set_status(&|st| {
            st.state = "Connect".into();
        });
        let session = async {
            if active {
                run_once(&pc, &mut outbox, &tx).await
            } else {
                match accepted.recv().await {
                    Some(stream) => run_on(stream, &pc, &mut outbox, &tx).await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::pin!(session);
        let mut restart: Option<u16> = None;
        let mut bfd_down = false;
        let ended: SessionError = loop {
            let stale_over = async {
                match stale_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let bfd_changed = async {
                match bfd_state.as_mut() {
                    Some(rx) => {
                        let unchanged = *rx.borrow() == bfd_seen;
                        if unchanged && rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        *rx.borrow_and_update()
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = &mut session => break e,
                now = bfd_changed => {
                    let before = std::mem::replace(&mut bfd_seen, now);
                    set_status(&|st| st.bfd = Some(now.as_str().into()));
                    if before == crate::bfd::BfdState::Up && now != crate::bfd::BfdState::Up {
                        bfd_down = true;
                        break SessionError::Closed {
                            peer: pc.peer,
                            reason: "BFD: the peer stopped answering".into(),
                        };
                    }
                }
                Some(ev) = rx.recv() => {
                    if let RouteEvent::Up(n) = &ev {
                        tracing::info!(peer = %peer.address, asn = n.peer_asn, hold = n.hold_time, "bgp: session established");
                        failures = 0;
                        restart = n.graceful_restart;
                        set_status(&|st| {
                            st.state = "Established".into();
                            st.since = SystemTime::now();
                            st.graceful_restart = restart;
                        });
                    }
                    if ev == RouteEvent::EndOfRib {
                        stale_until = None;
                        set_status(&|st| st.stale = false);
                    }
                    // The session's Down is handled below, once it has ended.
                    if !matches!(ev, RouteEvent::Down(_)) {
                        take(&ev);
                    }
                }
                _ = stale_over => drop_stale(&mut stale_until),
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
        let deliberate = bfd_down
            || matches!(&ended, SessionError::Sent { .. })
            || matches!(&ended, SessionError::Closed { reason, .. } if reason.contains("NOTIFICATION"));
        if deliberate {
            restart = None;
            stale_until = None;
        }
        let was_up = lock(&state)
            .status
            .get(&peer.address)
            .is_some_and(|st| st.state == "Established");
        let reason = ended.to_string();
        set_status(&|st| {
            if st.state == "Established" {
                st.since = SystemTime::now();
            }
            st.state = "Idle".into();
            st.last_error = Some(reason.clone());
        });
        match restart {
            Some(secs) => {
                lock(&state).rib.apply(
                    peer.address,
                    source,
                    true,
                    &RouteEvent::Down(ended.to_string()),
                );
                set_status(&|st| st.stale = true);
                stale_until =
                    Some(tokio::time::Instant::now() + Duration::from_secs(u64::from(secs)));
            }
            None if stale_until.is_none() => {
                lock(&state).rib.forget(peer.address);
                let _ = changed.send(());
            }
            None => {}
        }
        if was_up || !matches!(ended, SessionError::Io { .. }) {
            tracing::info!(peer = %peer.address, "bgp: session ended: {ended}");
        }
        // Wait for the retry, dropping stale routes if their time runs out meanwhile.
        let retry_in = match failures.checked_sub(FAST_RETRIES) {
            None => RETRY,
            Some(n) => RETRY
                .saturating_mul(2u32.saturating_pow(n.min(16)))
                .min(RETRY_MAX),
        };
        failures = failures.saturating_add(1);
        let retry = tokio::time::sleep(retry_in);
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
                _ = stale_over => drop_stale(&mut stale_until),
            }
        }
    }
}
