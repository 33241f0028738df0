//! One BGP session over TCP: connect to the peer, exchange OPENs and KEEPALIVEs as the
//! state machine ([`crate::fsm`]) says, keep the hold and keepalive timers; once
//! established, send the peer its table ([`Outbox`]: everything, then End-of-RIB, then
//! each change as it comes) and report what the peer announces and withdraws as
//! [`RouteEvent`]s. Messages are encoded and decoded by `netgauze-bgp-pkt`; IPv4
//! unicast, 4-octet AS numbers; a malformed UPDATE withdraws its routes (RFC 7606).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipnet::Ipv4Net;
use netgauze_bgp_pkt::capabilities::{
    AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
    GracefulRestartAddressFamily, GracefulRestartCapability, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::codec::BgpCodec;
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
    OpenMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::attrs::{self, Attrs, Update};
use crate::export::{self, Eligible, Exports};
use crate::fsm::{self, Action, Event, Local, Negotiated, Notify, PeerOpen, State};

/// The hold time before the OPENs are exchanged (RFC 4271 §8: "large", 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// The restart time we announce (RFC 4724) unless told otherwise: how long peers keep
/// our routes while we are gone, in seconds.
pub const RESTART_TIME: u16 = 120;

/// How to reach a peer and what to tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Our AS, identifier and hold time, and the peer's AS.
    pub local: Local,
    /// The peer's address and port (179).
    pub peer: SocketAddrV4,
    /// Our address towards it: the connection's source and the next hop we announce.
    pub local_address: Ipv4Addr,
    /// The session's TCP MD5 password.
    pub password: Option<String>,
    /// The restart time we announce (at most 4095 s).
    pub restart_time: u16,
}

/// What a session reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// The session is established with these parameters.
    Up(Negotiated),
    /// The peer announces a path to `prefix` with these attributes.
    Learned {
        /// The prefix.
        prefix: Ipv4Net,
        /// The path's identifier (add-path, RFC 7911; 0 without).
        path_id: u32,
        /// Its attributes (shared by the prefixes of one UPDATE).
        attrs: Arc<Attrs>,
    },
    /// The peer withdraws a path (its identifier: add-path; 0 without) to a prefix.
    Withdrawn(Ipv4Net, u32),
    /// The peer has sent its whole table (End-of-RIB, RFC 4724).
    EndOfRib,
    /// The session ended, and why.
    Down(String),
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection failed.
    #[error("connection to {peer}: {source}")]
    Io {
        /// The peer.
        peer: SocketAddrV4,
        /// What failed.
        source: std::io::Error,
    },
    /// The peer sent something that does not decode.
    #[error("decoding a message from {peer}: {reason}")]
    Decode {
        /// The peer.
        peer: SocketAddrV4,
        /// Why.
        reason: String,
    },
    /// A message could not be encoded.
    #[error("encoding a message for {peer}: {reason}")]
    Encode {
        /// The peer.
        peer: SocketAddrV4,
        /// Why.
        reason: String,
    },
    /// We closed the session with a NOTIFICATION.
    #[error("{peer}: sent NOTIFICATION {}/{}", .notify.code, .notify.subcode)]
    Sent {
        /// The peer.
        peer: SocketAddrV4,
        /// What we sent.
        notify: Notify,
    },
    /// The peer closed the session (with a NOTIFICATION, or without).
    #[error("{peer}: {reason}")]
    Closed {
        /// The peer.
        peer: SocketAddrV4,
        /// What it said.
        reason: String,
    },
}

/// Our OPEN.
fn open_message(local: &Local, restart_time: u16) -> BgpMessage {
    let my_as = u16::try_from(local.asn).unwrap_or(23456); // AS_TRANS (RFC 6793)
    BgpMessage::Open(BgpOpenMessage::new(
        my_as,
        local.hold_time,
        local.router_id,
        vec![BgpOpenMessageParameter::new_capabilities(vec![
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv4Unicast,
            )),
            BgpCapability::RouteRefresh,
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(local.asn)),
            // Several paths per prefix, both ways (RFC 7911).
            BgpCapability::AddPath(AddPathCapability::new(vec![AddPathAddressFamily::new(
                AddressType::Ipv4Unicast,
                true,
                true,
            )])),
            // We keep forwarding across our own restart (the kernel keeps our routes):
            // peers keep ours for the restart time (RFC 4724).
            BgpCapability::GracefulRestartCapability(GracefulRestartCapability::new(
                false,
                false,
                restart_time.min(4095),
                vec![GracefulRestartAddressFamily::new(
                    true,
                    AddressType::Ipv4Unicast,
                )],
            )),
        ])],
    ))
}

/// The parts of an OPEN the state machine judges.
fn peer_open(o: &BgpOpenMessage) -> PeerOpen {
    let caps = o.capabilities();
    let mut mp = caps.iter().filter_map(|c| match c {
        BgpCapability::MultiProtocolExtensions(m) => Some(m.address_type()),
        _ => None,
    });
    let any_mp = caps
        .iter()
        .any(|c| matches!(c, BgpCapability::MultiProtocolExtensions(_)));
    PeerOpen {
        version: o.version(),
        asn: o.my_asn4(),
        hold_time: o.hold_time(),
        router_id: o.bgp_id(),
        four_octet_as: caps
            .iter()
            .any(|c| matches!(c, BgpCapability::FourOctetAs(_))),
        ipv4_unicast: !any_mp || mp.any(|a| a == AddressType::Ipv4Unicast),
        route_refresh: caps.iter().any(|c| {
            matches!(
                c,
                BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh
            )
        }),
        graceful_restart: caps.iter().find_map(|c| match c {
            BgpCapability::GracefulRestartCapability(g) => Some(g.time()),
            _ => None,
        }),
        add_path: caps
            .iter()
            .find_map(|c| match c {
                BgpCapability::AddPath(a) => a
                    .address_families()
                    .iter()
                    .find(|f| f.address_type() == AddressType::Ipv4Unicast)
                    .map(|f| (f.send(), f.receive())),
                _ => None,
            })
            .unwrap_or((false, false)),
    }
}

/// The NOTIFICATION for `n`.
fn notification(n: Notify) -> BgpMessage {
    let value: Box<[u8]> = Box::new([]);
    BgpMessage::Notification(match (n.code, n.subcode) {
        (2, 1) => {
            BgpNotificationMessage::OpenMessageError(OpenMessageError::UnsupportedVersionNumber {
                value: Box::new([0, 4]),
            })
        }
        (2, 2) => BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { value }),
        (2, 3) => {
            BgpNotificationMessage::OpenMessageError(OpenMessageError::BadBgpIdentifier { value })
        }
        (2, 6) => {
            BgpNotificationMessage::OpenMessageError(OpenMessageError::UnacceptableHoldTime {
                value,
            })
        }
        (2, 7) => {
            BgpNotificationMessage::OpenMessageError(OpenMessageError::UnsupportedCapability {
                value,
            })
        }
        (4, _) => {
            BgpNotificationMessage::HoldTimerExpiredError(HoldTimerExpiredError::Unspecific {
                sub_code: 0,
                value,
            })
        }
        (5, _) => {
            BgpNotificationMessage::FiniteStateMachineError(FiniteStateMachineError::Unspecific {
                value,
            })
        }
        _ => BgpNotificationMessage::CeaseError(CeaseError::AdministrativeShutdown { value }),
    })
}

/// What a session sends: its class's table, and what of it this peer may get.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The table of the peer's class, as the speaker publishes it.
    pub table: watch::Receiver<Exports>,
    /// What of it this peer may get.
    pub peer: Eligible,
    /// How many paths the peer has from us now, kept by the session as it sends.
    pub sent: Arc<std::sync::atomic::AtomicUsize>,
}

/// The routes of an UPDATE, as events (`attr_errors`: attributes the decoder found
/// malformed).
fn update_events(
    u: &netgauze_bgp_pkt::update::BgpUpdateMessage,
    attr_errors: &[String],
    peer: SocketAddrV4,
) -> Vec<RouteEvent> {
    match attrs::read_update(u, attr_errors) {
        Update::EndOfRib => vec![RouteEvent::EndOfRib],
        Update::Routes {
            withdrawn,
            announced,
            attrs,
            malformed,
        } => {
            if let Some(why) = malformed {
                tracing::warn!(%peer, "bgp: UPDATE treated as withdraw (RFC 7606): {why}");
            }
            let mut out: Vec<RouteEvent> = withdrawn
                .into_iter()
                .map(|k| RouteEvent::Withdrawn(k.prefix, k.path_id))
                .collect();
            if let Some(a) = attrs {
                let a = Arc::new(a);
                out.extend(announced.into_iter().map(|k| RouteEvent::Learned {
                    prefix: k.prefix,
                    path_id: k.path_id,
                    attrs: a.clone(),
                }));
            }
            out
        }
    }
}

/// Bring the peer from `sent` (the table it last got; empty at the start) to `table`
/// (only `changed`, when given), and remember `table` as sent.
async fn send_table(
    framed: &mut Framed<TcpStream, BgpCodec>,
    sent: &mut Arc<BTreeMap<Ipv4Net, export::Out>>,
    table: &Exports,
    changed: Option<&std::collections::BTreeSet<Ipv4Net>>,
    out: &Outbox,
    add_path: bool,
    end_of_rib: bool,
) -> Result<(), netgauze_bgp_pkt::wire::serializer::BgpMessageWritingError> {
    use std::sync::atomic::Ordering::Relaxed;
    let peer = &out.peer;
    let (withdraw, announce) = export::diff(sent, &table.routes, changed, peer, add_path);
    // Paths the peer did not have (the others announced replace one in place).
    let added = announce
        .iter()
        .filter(|(k, _)| !export::has(sent, k, peer, add_path))
        .count();
    for m in attrs::updates(&withdraw, announce.iter().map(|(k, a)| (k, &**a)), add_path) {
        framed.feed(m).await?;
    }
    if end_of_rib {
        framed.feed(attrs::end_of_rib()).await?;
    }
    framed.flush().await?;
    *sent = table.routes.clone();
    let _ = out
        .sent
        .fetch_update(Relaxed, Relaxed, |n| Some(n + added - withdraw.len()));
    Ok(())
}

/// The event a received message is.
fn event_of(m: &BgpMessage) -> Event {
    match m {
        BgpMessage::Open(o) => Event::Open(peer_open(o)),
        BgpMessage::KeepAlive => Event::Keepalive,
        BgpMessage::Update(_) => Event::Update,
        BgpMessage::Notification(n) => {
            let (code, subcode) = match n {
                BgpNotificationMessage::MessageHeaderError(_) => (1, 0),
                BgpNotificationMessage::OpenMessageError(_) => (2, 0),
                BgpNotificationMessage::UpdateMessageError(_) => (3, 0),
                BgpNotificationMessage::HoldTimerExpiredError(_) => (4, 0),
                BgpNotificationMessage::FiniteStateMachineError(_) => (5, 0),
                BgpNotificationMessage::CeaseError(_) => (6, 0),
                BgpNotificationMessage::RouteRefreshError(_) => (7, 0),
            };
            Event::Notification(Notify { code, subcode })
        }
        // A refresh request: answered by announcing again (see `run_once`).
        BgpMessage::RouteRefresh(_) => Event::Keepalive,
    }
}

/// Connect to the peer from our address.
async fn connect(cfg: &PeerConfig) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(pw) = &cfg.password {
        use std::os::fd::AsRawFd;
        crate::md5::set_key(s.as_raw_fd(), *cfg.peer.ip(), Some(pw.as_bytes()))?;
    }
    s.bind(SocketAddr::from((cfg.local_address, 0)))?;
    s.connect(SocketAddr::V4(cfg.peer)).await
}

/// One connection's life: connect, bring the session up, send the peer its table from
/// `out` and report the peer's routes on `events`, until the session ends. The error
/// says why it ended.
pub async fn run_once(
    cfg: &PeerConfig,
    out: &mut Outbox,
    events: &mpsc::Sender<RouteEvent>,
) -> SessionError {
    match connect(cfg).await {
        Ok(stream) => run_on(stream, cfg, out, events).await,
        Err(source) => SessionError::Io {
            peer: cfg.peer,
            source,
        },
    }
}

/// [`run_once`] on a connection already made (accepted from the peer, or connected).
pub async fn run_on(
    stream: TcpStream,
    cfg: &PeerConfig,
    out: &mut Outbox,
    events: &mpsc::Sender<RouteEvent>,
) -> SessionError {
    let peer = cfg.peer;
    let local = &cfg.local;
    let mut state = State::Idle;
    let (s, _) = fsm::step(local, state, Event::Start);
    state = s;
    let mut framed = Framed::new(stream, BgpCodec::new(true));
    let mut negotiated: Option<Negotiated> = None;
    let mut hold = OPEN_HOLD;
    let mut hold_deadline = Instant::now() + hold;
    let mut keepalive_at: Option<Instant> = None;
    let mut event = Event::Connected;
    // What the peer has from us, and the version of the table it came from.
    let mut sent: Arc<BTreeMap<Ipv4Net, export::Out>> = Arc::default();
    let mut add_path_tx = false;
    out.sent.store(0, std::sync::atomic::Ordering::Relaxed);
    let mut version = 0;
    loop {
        let (next, actions) = fsm::step(local, state, event.clone());
        if let Event::Open(open) = &event {
            if next == State::OpenConfirm {
                let n = fsm::accept_open(local, open).expect("accepted by step");
                hold = Duration::from_secs(u64::from(n.hold_time));
                add_path_tx = n.add_path_tx;
                if n.add_path_rx {
                    // The peer's UPDATEs carry path identifiers from now on.
                    let mut add_path = std::collections::HashMap::new();
                    add_path.insert(AddressType::Ipv4Unicast, true);
                    let ctx = netgauze_bgp_pkt::wire::deserializer::BgpParsingContext::new(
                        true,
                        std::collections::HashMap::new(),
                        add_path,
                        false,
                        false,
                        false,
                        false,
                    );
                    *framed.codec_mut() = BgpCodec::new_from_ctx(true, ctx);
                }
                negotiated = Some(n);
            }
        }
        state = next;
        for a in actions {
            let sent = match a {
                Action::Connect => Ok(()),
                Action::SendOpen => framed.send(open_message(local, cfg.restart_time)).await,
                Action::SendKeepalive => framed.send(BgpMessage::KeepAlive).await,
                Action::SendNotification(n) => {
                    let _ = framed.send(notification(n)).await;
                    return SessionError::Sent { peer, notify: n };
                }
                Action::Close => {
                    let reason = match &event {
                        Event::Notification(n) => {
                            format!("the peer sent NOTIFICATION {}/{}", n.code, n.subcode)
                        }
                        _ => "the connection closed".to_string(),
                    };
                    let _ = events.send(RouteEvent::Down(reason.clone())).await;
                    return SessionError::Closed { peer, reason };
                }
                Action::Up => {
                    let n = negotiated.clone().expect("negotiated before up");
                    if n.keepalive > 0 {
                        keepalive_at =
                            Some(Instant::now() + Duration::from_secs(u64::from(n.keepalive)));
                    }
                    let _ = events.send(RouteEvent::Up(n)).await;
                    let table = out.table.borrow_and_update().clone();
                    version = table.version;
                    send_table(&mut framed, &mut sent, &table, None, out, add_path_tx, true).await
                }
                Action::TakeUpdate | Action::Down => Ok(()),
            };
            if let Err(e) = sent {
                return SessionError::Encode {
                    peer,
                    reason: e.to_string(),
                };
            }
        }
        // The next event: a message, the hold timer, or our keepalive.
        let keepalive = async {
            match keepalive_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = framed.next() => {
                hold_deadline = Instant::now() + if hold.is_zero() { OPEN_HOLD * 1000 } else { hold };
                event = match m {
                    Some(Ok((msg, ignored))) => {
                        if let BgpMessage::Update(u) = &msg {
                            if state == State::Established {
                                let errors: Vec<String> = ignored
                                    .path_attr_errors()
                                    .iter()
                                    .map(|e| format!("{e:?}"))
                                    .collect();
                                for e in update_events(u, &errors, peer) {
                                    let _ = events.send(e).await;
                                }
                            }
                        }
                        if matches!(msg, BgpMessage::RouteRefresh(_)) && state == State::Established {
                            // Everything again (RFC 2918).
                            sent = Arc::default();
                            out.sent.store(0, std::sync::atomic::Ordering::Relaxed);
                            let table = out.table.borrow().clone();
                            version = table.version;
                            if let Err(e) = send_table(&mut framed, &mut sent, &table, None, out, add_path_tx, true,).await {
                                return SessionError::Encode { peer, reason: e.to_string() };
                            }
                        }
                        event_of(&msg)
                    }
                    Some(Err(e)) => {
                        let reason = format!("{e:?}");
                        let _ = framed.send(notification(Notify { code: 1, subcode: 0 })).await;
                        let _ = events.send(RouteEvent::Down(reason.clone())).await;
                        return SessionError::Decode { peer, reason };
                    }
                    None => Event::ConnectionLost,
                };
            }
            _ = tokio::time::sleep_until(hold_deadline) => {
                event = Event::HoldTimerExpired;
            }
            Ok(()) = out.table.changed(), if state == State::Established => {
                let table = out.table.borrow_and_update().clone();
                // Only what changed when this is the next version; everything when
                // versions were skipped.
                let only = (table.version == version + 1).then_some(&*table.changed);
                version = table.version;
                if let Err(e) = send_table(&mut framed, &mut sent, &table, only, out, add_path_tx, false,).await {
                    return SessionError::Encode { peer, reason: e.to_string() };
                }
                continue;
            }
            _ = keepalive => {
                if let Err(e) = framed.send(BgpMessage::KeepAlive).await {
                    return SessionError::Encode { peer, reason: e.to_string() };
                }
                let every = negotiated.as_ref().map_or(30, |n| n.keepalive.max(1));
                keepalive_at = Some(Instant::now() + Duration::from_secs(u64::from(every)));
                event = Event::Keepalive;
                // Our own keepalive is no event for the state machine.
                if state == State::Established {
                    continue;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(peer_asn: u32) -> Local {
        Local {
            asn: 65000,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            peer_asn,
            hold_time: 9,
        }
    }

    #[test]
    fn our_open_is_one_we_would_accept() {
        let l = local(65001);
        let BgpMessage::Open(o) = open_message(&l, RESTART_TIME) else {
            panic!()
        };
        let mut seen = peer_open(&o);
        assert_eq!(seen.asn, 65000);
        assert!(seen.four_octet_as && seen.ipv4_unicast && seen.route_refresh);
        // As the peer would judge it.
        seen.router_id = Ipv4Addr::new(10, 0, 0, 9);
        let peer = Local {
            asn: 65001,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            peer_asn: 65000,
            hold_time: 90,
        };
        assert_eq!(fsm::accept_open(&peer, &seen).unwrap().hold_time, 9);
        // A 4-octet AS goes as AS_TRANS in the 2-octet field.
        let BgpMessage::Open(o) = open_message(
            &Local {
                asn: 4_200_000_000,
                ..l
            },
            RESTART_TIME,
        ) else {
            panic!()
        };
        assert_eq!(o.my_as(), 23456);
        assert_eq!(peer_open(&o).asn, 4_200_000_000);
    }
}
