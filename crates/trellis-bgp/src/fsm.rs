//! The session state machine of RFC 4271 §8 as a pure function: a state and an event in,
//! the next state and the actions to take out. No sockets, no timers: the session task
//! ([`crate::session`]) turns bytes and clocks into [`Event`]s and carries out the
//! [`Action`]s.

use std::net::Ipv4Addr;

/// Where a session is (RFC 4271 §8.2.2; Active is folded into Connect: the task keeps
/// one connection attempt at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected.
    Idle,
    /// Waiting for the TCP connection.
    Connect,
    /// Our OPEN sent; waiting for the peer's.
    OpenSent,
    /// OPENs exchanged; waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
}

/// What this speaker asks of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Our AS (4 octets).
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer's AS we expect.
    pub peer_asn: u32,
    /// The hold time we propose (0, or at least 3 s).
    pub hold_time: u16,
}

/// The parts of the peer's OPEN the state machine judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOpen {
    /// The BGP version (4).
    pub version: u8,
    /// Its AS (from the 4-octet AS capability; the 2-octet field otherwise).
    pub asn: u32,
    /// Its proposed hold time.
    pub hold_time: u16,
    /// Its BGP identifier.
    pub router_id: Ipv4Addr,
    /// Whether it has the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
    /// Whether it has the IPv4 unicast multiprotocol capability (RFC 4760), or no
    /// multiprotocol capability at all (IPv4 unicast implied).
    pub ipv4_unicast: bool,
    /// Whether it can refresh routes (RFC 2918).
    pub route_refresh: bool,
    /// Its graceful-restart capability (RFC 4724): its restart time, if announced.
    pub graceful_restart: Option<u16>,
    /// Its add-path capability for IPv4 unicast (RFC 7911): (it sends path
    /// identifiers, it receives them).
    pub add_path: (bool, bool),
}

/// What both sides agreed on, once the session is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's AS.
    pub peer_asn: u32,
    /// The peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// The smaller of the two hold times (0: no keepalives).
    pub hold_time: u16,
    /// One third of it.
    pub keepalive: u16,
    /// The peer can refresh routes.
    pub route_refresh: bool,
    /// The peer's graceful-restart time, if it announced the capability.
    pub graceful_restart: Option<u16>,
    /// Its UPDATEs carry path identifiers (it sends them; we receive them).
    pub add_path_rx: bool,
    /// Ours carry them: we may send several paths per prefix.
    pub add_path_tx: bool,
}

/// A NOTIFICATION's error code and subcode (RFC 4271 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    /// The code (1 header, 2 OPEN, 3 UPDATE, 4 hold timer, 5 FSM, 6 cease).
    pub code: u8,
    /// The subcode.
    pub subcode: u8,
}

impl Notify {
    /// OPEN error: unsupported version number.
    pub const BAD_VERSION: Notify = Notify {
        code: 2,
        subcode: 1,
    };
    /// OPEN error: bad peer AS.
    pub const BAD_PEER_AS: Notify = Notify {
        code: 2,
        subcode: 2,
    };
    /// OPEN error: bad BGP identifier.
    pub const BAD_BGP_ID: Notify = Notify {
        code: 2,
        subcode: 3,
    };
    /// OPEN error: unacceptable hold time.
    pub const BAD_HOLD_TIME: Notify = Notify {
        code: 2,
        subcode: 6,
    };
    /// OPEN error: unsupported capability (we need 4-octet AS numbers).
    pub const UNSUPPORTED_CAPABILITY: Notify = Notify {
        code: 2,
        subcode: 7,
    };
    /// Hold timer expired.
    pub const HOLD_TIMER_EXPIRED: Notify = Notify {
        code: 4,
        subcode: 0,
    };
    /// Finite state machine error: a message unexpected in this state.
    pub const FSM_ERROR: Notify = Notify {
        code: 5,
        subcode: 0,
    };
    /// Cease: administrative shutdown.
    pub const SHUTDOWN: Notify = Notify {
        code: 6,
        subcode: 2,
    };
}

/// Something that happened to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start (or restart after a failure).
    Start,
    /// The TCP connection is up.
    Connected,
    /// The connection failed or closed.
    ConnectionLost,
    /// The peer's OPEN.
    Open(PeerOpen),
    /// A KEEPALIVE.
    Keepalive,
    /// An UPDATE (its routes go to the RIB; only the state matters here).
    Update,
    /// A NOTIFICATION from the peer.
    Notification(Notify),
    /// Nothing from the peer for the hold time.
    HoldTimerExpired,
    /// Stop the session (peer removed, speaker shutting down).
    Stop,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open the TCP connection.
    Connect,
    /// Send our OPEN.
    SendOpen,
    /// Send a KEEPALIVE.
    SendKeepalive,
    /// Send this NOTIFICATION, then close.
    SendNotification(Notify),
    /// Close the connection.
    Close,
    /// The session is up (with what [`accept_open`] negotiated): send our routes, then
    /// End-of-RIB.
    Up,
    /// Take the UPDATE's routes.
    TakeUpdate,
    /// The session went down (its routes are to be withdrawn or kept stale).
    Down,
}

/// Judge the peer's OPEN (RFC 4271 §6.2): the parameters, or the NOTIFICATION to send.
pub fn accept_open(local: &Local, open: &PeerOpen) -> Result<Negotiated, Notify> {
    if open.version != 4 {
        return Err(Notify::BAD_VERSION);
    }
    if !open.four_octet_as {
        return Err(Notify::UNSUPPORTED_CAPABILITY);
    }
    if open.asn != local.peer_asn {
        return Err(Notify::BAD_PEER_AS);
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(Notify::BAD_HOLD_TIME);
    }
    let ibgp = open.asn == local.asn;
    if open.router_id.is_unspecified() || (ibgp && open.router_id == local.router_id) {
        return Err(Notify::BAD_BGP_ID);
    }
    let hold_time = local.hold_time.min(open.hold_time);
    Ok(Negotiated {
        peer_asn: open.asn,
        peer_id: open.router_id,
        hold_time,
        keepalive: hold_time / 3,
        route_refresh: open.route_refresh,
        graceful_restart: open.graceful_restart,
        // We announce both directions.
        add_path_rx: open.add_path.0,
        add_path_tx: open.add_path.1,
    })
}

/// The next state and the actions for `event` in `state`.
pub fn step(local: &Local, state: State, event: Event) -> (State, Vec<Action>) {
    use Action::*;
    match (state, event) {
        (_, Event::Stop) if state == State::Idle => (State::Idle, vec![]),
        (State::Idle, Event::Start) => (State::Connect, vec![Connect]),
        (State::Idle, _) => (State::Idle, vec![]),
        (_, Event::Stop) => (
            State::Idle,
            vec![SendNotification(Notify::SHUTDOWN), Close, Down],
        ),
        (State::Connect, Event::Connected) => (State::OpenSent, vec![SendOpen]),
        (State::Connect, Event::ConnectionLost) => (State::Idle, vec![]),
        (State::Connect, _) => (State::Connect, vec![]),
        (State::OpenSent, Event::Open(open)) => match accept_open(local, &open) {
            Ok(_) => (State::OpenConfirm, vec![SendKeepalive]),
            Err(n) => (State::Idle, vec![SendNotification(n), Close]),
        },
        (State::OpenConfirm, Event::Keepalive) => (State::Established, vec![Up]),
        (State::Established, Event::Keepalive) => (State::Established, vec![]),
        (State::Established, Event::Update) => (State::Established, vec![TakeUpdate]),
        (State::Established | State::OpenSent | State::OpenConfirm, Event::HoldTimerExpired) => {
            let mut a = vec![SendNotification(Notify::HOLD_TIMER_EXPIRED), Close];
            if state == State::Established {
                a.push(Down);
            }
            (State::Idle, a)
        }
        (s, Event::Notification(_) | Event::ConnectionLost) => {
            let mut a = vec![Close];
            if s == State::Established {
                a.push(Down);
            }
            (State::Idle, a)
        }
        // Anything else is out of order (RFC 4271 §8.2.2: FSM error).
        (s, _) => {
            let mut a = vec![SendNotification(Notify::FSM_ERROR), Close];
            if s == State::Established {
                a.push(Down);
            }
            (State::Idle, a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        Local {
            asn: 65000,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            peer_asn: 65001,
            hold_time: 90,
        }
    }

    fn open() -> PeerOpen {
        PeerOpen {
            version: 4,
            asn: 65001,
            hold_time: 30,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            four_octet_as: true,
            ipv4_unicast: true,
            route_refresh: true,
            graceful_restart: Some(120),
            add_path: (false, false),
        }
    }

    #[test]
    fn a_session_comes_up_and_goes_down() {
        let l = local();
        let (s, a) = step(&l, State::Idle, Event::Start);
        assert_eq!((s, a), (State::Connect, vec![Action::Connect]));
        let (s, a) = step(&l, s, Event::Connected);
        assert_eq!((s, a), (State::OpenSent, vec![Action::SendOpen]));
        let (s, a) = step(&l, s, Event::Open(open()));
        assert_eq!((s, a), (State::OpenConfirm, vec![Action::SendKeepalive]));
        let (s, a) = step(&l, s, Event::Keepalive);
        assert_eq!((s, a), (State::Established, vec![Action::Up]));
        let (s, a) = step(&l, s, Event::Update);
        assert_eq!((s, a), (State::Established, vec![Action::TakeUpdate]));
        let (s, a) = step(&l, s, Event::HoldTimerExpired);
        assert_eq!(s, State::Idle);
        assert_eq!(
            a,
            vec![
                Action::SendNotification(Notify::HOLD_TIMER_EXPIRED),
                Action::Close,
                Action::Down
            ]
        );
        // An UPDATE before the session is up is an FSM error.
        let (s, a) = step(&l, State::OpenConfirm, Event::Update);
        assert_eq!(s, State::Idle);
        assert_eq!(a[0], Action::SendNotification(Notify::FSM_ERROR));
    }

    #[test]
    fn opens_are_judged() {
        let l = local();
        let n = accept_open(&l, &open()).unwrap();
        assert_eq!((n.hold_time, n.keepalive), (30, 10));
        assert_eq!(n.graceful_restart, Some(120));
        let bad = |f: &dyn Fn(&mut PeerOpen)| {
            let mut o = open();
            f(&mut o);
            accept_open(&l, &o).unwrap_err()
        };
        assert_eq!(bad(&|o| o.asn = 65002), Notify::BAD_PEER_AS);
        assert_eq!(bad(&|o| o.version = 3), Notify::BAD_VERSION);
        assert_eq!(bad(&|o| o.hold_time = 2), Notify::BAD_HOLD_TIME);
        assert_eq!(
            bad(&|o| o.four_octet_as = false),
            Notify::UNSUPPORTED_CAPABILITY
        );
        assert_eq!(
            bad(&|o| o.router_id = Ipv4Addr::UNSPECIFIED),
            Notify::BAD_BGP_ID
        );
        // iBGP with our own identifier.
        let ibgp = Local {
            peer_asn: 65000,
            ..local()
        };
        let mut o = open();
        o.asn = 65000;
        o.router_id = ibgp.router_id;
        assert_eq!(accept_open(&ibgp, &o).unwrap_err(), Notify::BAD_BGP_ID);
        // Hold time 0 on either side: no keepalives.
        let mut o = open();
        o.hold_time = 0;
        assert_eq!(accept_open(&l, &o).unwrap().keepalive, 0);
    }
}
