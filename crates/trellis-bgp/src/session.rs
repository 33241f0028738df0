//! One BGP session over TCP: connect to the peer, exchange OPENs and KEEPALIVEs as the
//! state machine ([`crate::fsm`]) says, keep the hold and keepalive timers, announce
//! this speaker's prefixes (then End-of-RIB) once established, and report what the peer
//! announces and withdraws as [`RouteEvent`]s. Messages are encoded and decoded by
//! `netgauze-bgp-pkt`; IPv4 unicast, 4-octet AS numbers.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipnet::Ipv4Net;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::codec::BgpCodec;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
    OpenMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As4PathSegment, AsPath, AsPathSegmentType, LocalPreference, NextHop, Origin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::fsm::{self, Action, Event, Local, Negotiated, Notify, PeerOpen, State};

/// The hold time before the OPENs are exchanged (RFC 4271 §8: "large", 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// The restart time we announce (RFC 4724): how long peers keep our routes while we
/// are gone, in seconds.
pub const RESTART_TIME: u16 = 120;
/// The most prefixes in one UPDATE (24 bytes of attributes, up to 5 bytes each: well
/// under the 4,096-byte message).
const PREFIXES_PER_UPDATE: usize = 500;

/// How to reach a peer and what to tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Our AS, identifier and hold time, and the peer's AS.
    pub local: Local,
    /// The peer's address and port (179).
    pub peer: SocketAddrV4,
    /// Our address towards it: the connection's source and the next hop we announce.
    pub local_address: Ipv4Addr,
}

/// What a session reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// The session is established with these parameters.
    Up(Negotiated),
    /// The peer announces `prefix` via `next_hop` with this AS path.
    Learned {
        /// The prefix.
        prefix: Ipv4Net,
        /// Its next hop.
        next_hop: Ipv4Addr,
        /// The AS path, nearest AS first.
        as_path: Vec<u32>,
    },
    /// The peer withdraws `prefix`.
    Withdrawn(Ipv4Net),
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
fn open_message(local: &Local) -> BgpMessage {
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
            // We keep forwarding across our own restart (the kernel keeps our routes):
            // peers keep ours for the restart time (RFC 4724).
            BgpCapability::GracefulRestartCapability(GracefulRestartCapability::new(
                false,
                false,
                RESTART_TIME,
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

/// The UPDATEs announcing `prefixes` from `local` (eBGP: our AS in the path; iBGP: an
/// empty path and LOCAL_PREF 100), then End-of-RIB.
fn announcements(local: &Local, next_hop: Ipv4Addr, prefixes: &[Ipv4Net]) -> Vec<BgpMessage> {
    let ebgp = local.asn != local.peer_asn;
    let well_known =
        |v| PathAttribute::from(false, true, false, false, v).expect("well-known attribute flags");
    let path = if ebgp {
        vec![As4PathSegment::new(
            AsPathSegmentType::AsSequence,
            vec![local.asn],
        )]
    } else {
        vec![]
    };
    let mut attrs = vec![
        well_known(PathAttributeValue::Origin(Origin::IGP)),
        well_known(PathAttributeValue::AsPath(AsPath::As4PathSegments(
            path.into(),
        ))),
        well_known(PathAttributeValue::NextHop(NextHop::new(next_hop))),
    ];
    if !ebgp {
        attrs.push(well_known(PathAttributeValue::LocalPreference(
            LocalPreference::new(100),
        )));
    }
    let mut out: Vec<BgpMessage> = prefixes
        .chunks(PREFIXES_PER_UPDATE)
        .map(|chunk| {
            let nlri: Vec<Ipv4UnicastAddress> = chunk
                .iter()
                .filter_map(|p| Ipv4Unicast::from_net(p.trunc()).ok())
                .map(Ipv4UnicastAddress::new_no_path_id)
                .collect();
            BgpMessage::Update(BgpUpdateMessage::new(vec![], attrs.clone(), nlri))
        })
        .collect();
    out.push(BgpMessage::Update(BgpUpdateMessage::new(
        vec![],
        vec![],
        vec![],
    )));
    out
}

/// The routes of an UPDATE, as events.
fn update_events(u: &BgpUpdateMessage) -> Vec<RouteEvent> {
    if u.end_of_rib().is_some() {
        return vec![RouteEvent::EndOfRib];
    }
    let mut out: Vec<RouteEvent> = u
        .withdraw_routes()
        .iter()
        .map(|w| RouteEvent::Withdrawn(w.network().address()))
        .collect();
    let mut next_hop = None;
    let mut as_path = Vec::new();
    for a in u.path_attributes() {
        match a.value() {
            PathAttributeValue::NextHop(n) => next_hop = Some(n.next_hop()),
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs)) => {
                as_path = segs.iter().flat_map(|s| s.as_numbers().to_vec()).collect();
            }
            PathAttributeValue::AsPath(AsPath::As2PathSegments(segs)) => {
                as_path = segs
                    .iter()
                    .flat_map(|s| s.as_numbers().iter().map(|a| u32::from(*a)))
                    .collect();
            }
            _ => {}
        }
    }
    if let Some(next_hop) = next_hop {
        out.extend(u.nlri().iter().map(|n| RouteEvent::Learned {
            prefix: n.network().address(),
            next_hop,
            as_path: as_path.clone(),
        }));
    }
    out
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
    s.bind(SocketAddr::from((cfg.local_address, 0)))?;
    s.connect(SocketAddr::V4(cfg.peer)).await
}

/// One connection's life: connect, bring the session up, announce `prefixes`, report
/// the peer's routes on `events`, until the session ends. The error says why it ended.
pub async fn run_once(
    cfg: &PeerConfig,
    prefixes: &[Ipv4Net],
    events: &mpsc::Sender<RouteEvent>,
) -> SessionError {
    match connect(cfg).await {
        Ok(stream) => run_on(stream, cfg, prefixes, events).await,
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
    prefixes: &[Ipv4Net],
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
    loop {
        let (next, actions) = fsm::step(local, state, event.clone());
        if let Event::Open(open) = &event {
            if next == State::OpenConfirm {
                let n = fsm::accept_open(local, open).expect("accepted by step");
                hold = Duration::from_secs(u64::from(n.hold_time));
                negotiated = Some(n);
            }
        }
        state = next;
        for a in actions {
            let sent = match a {
                Action::Connect => Ok(()),
                Action::SendOpen => framed.send(open_message(local)).await,
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
                    let mut r = Ok(());
                    for m in announcements(local, cfg.local_address, prefixes) {
                        r = framed.feed(m).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    match r {
                        Ok(()) => framed.flush().await,
                        e => e,
                    }
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
                    Some(Ok((msg, _ignored))) => {
                        if let BgpMessage::Update(u) = &msg {
                            if state == State::Established {
                                for e in update_events(u) {
                                    let _ = events.send(e).await;
                                }
                            }
                        }
                        if matches!(msg, BgpMessage::RouteRefresh(_)) && state == State::Established {
                            for m in announcements(local, cfg.local_address, prefixes) {
                                if let Err(e) = framed.send(m).await {
                                    return SessionError::Encode { peer, reason: e.to_string() };
                                }
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
    fn announcements_carry_our_path_and_end_with_end_of_rib() {
        let nh = Ipv4Addr::new(192, 0, 2, 1);
        let p: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let msgs = announcements(&local(65001), nh, &[p]);
        assert_eq!(msgs.len(), 2);
        let BgpMessage::Update(u) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        let ev = update_events(u);
        assert_eq!(
            ev,
            vec![RouteEvent::Learned {
                prefix: p,
                next_hop: nh,
                as_path: vec![65000]
            }]
        );
        let BgpMessage::Update(eor) = &msgs[1] else {
            panic!()
        };
        assert_eq!(update_events(eor), vec![RouteEvent::EndOfRib]);
        // iBGP: no AS of ours in the path, LOCAL_PREF present.
        let msgs = announcements(&local(65000), nh, &[p]);
        let BgpMessage::Update(u) = &msgs[0] else {
            panic!()
        };
        assert!(u
            .path_attributes()
            .iter()
            .any(|a| matches!(a.value(), PathAttributeValue::LocalPreference(_))));
        assert_eq!(
            update_events(u),
            vec![RouteEvent::Learned {
                prefix: p,
                next_hop: nh,
                as_path: vec![]
            }]
        );
    }

    #[test]
    fn our_open_is_one_we_would_accept() {
        let l = local(65001);
        let BgpMessage::Open(o) = open_message(&l) else {
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
        let BgpMessage::Open(o) = open_message(&Local {
            asn: 4_200_000_000,
            ..l
        }) else {
            panic!()
        };
        assert_eq!(o.my_as(), 23456);
        assert_eq!(peer_open(&o).asn, 4_200_000_000);
    }
}
