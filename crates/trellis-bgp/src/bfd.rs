//! BFD (RFC 5880), single hop over IPv4 (RFC 5881), asynchronous mode: a session per
//! peer tells within a fraction of a second that the peer stopped answering, where
//! BGP's hold timer takes seconds.
//!
//! - [`Packet`] and [`Session`] are pure: the control packet's encoding and the state
//!   machine of RFC 5880 §6.8 (Down → Init → Up, detection time, the Poll/Final
//!   exchange when our transmit interval changes).
//! - [`Bfd`] runs them: one socket receives on port 3784 (only packets with TTL 255,
//!   RFC 5881 §5), each session sends from its own port in 49152–65535 with TTL 255 and
//!   publishes its state on a watch channel.
//!
//! Intervals: 100 ms wanted both ways once up, 1 s before (RFC 5880 §6.8.3), detection
//! multiplier 3: a dead peer is noticed after 3 × max(our 100 ms, its interval).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The port control packets go to (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;
/// Our transmit and receive interval once up.
pub const FAST: Duration = Duration::from_millis(100);
/// Our transmit interval while not up (at least a second, RFC 5880 §6.8.3).
pub const SLOW: Duration = Duration::from_secs(1);
/// Our detection multiplier.
pub const DETECT_MULT: u8 = 3;

/// A session's state (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BfdState {
    /// Held down by its administrator.
    AdminDown = 0,
    /// Down (or never up).
    Down = 1,
    /// The peer's packets arrive; ours not yet confirmed.
    Init = 2,
    /// Both ways.
    Up = 3,
}

impl BfdState {
    fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => BfdState::AdminDown,
            1 => BfdState::Down,
            2 => BfdState::Init,
            _ => BfdState::Up,
        }
    }

    /// The name `trellis bgp status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            BfdState::AdminDown => "AdminDown",
            BfdState::Down => "Down",
            BfdState::Init => "Init",
            BfdState::Up => "Up",
        }
    }
}

/// A control packet (RFC 5880 §4.1, without authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Why the sender's session last went down.
    pub diag: u8,
    /// The sender's state.
    pub state: BfdState,
    /// Poll: the sender changed its parameters and waits for Final.
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub final_: bool,
    /// The sender's detection multiplier.
    pub detect_mult: u8,
    /// The sender's discriminator.
    pub my_disc: u32,
    /// The receiver's discriminator, as the sender knows it (0 when it does not).
    pub your_disc: u32,
    /// The sender's wanted transmit interval, µs.
    pub desired_min_tx: u32,
    /// The slowest rate the sender can receive at, µs.
    pub required_min_rx: u32,
}

impl Packet {
    /// The 24 bytes on the wire.
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = ((self.state as u8) << 6)
            | if self.poll { 0x20 } else { 0 }
            | if self.final_ { 0x10 } else { 0 };
        b[2] = self.detect_mult;
        b[3] = 24;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        // Required Min Echo RX Interval: 0, we do not echo.
        b
    }

    /// Read and check a received packet (RFC 5880 §6.8.6, the checks before any
    /// session is looked up).
    pub fn decode(b: &[u8]) -> Result<Packet, &'static str> {
        if b.len() < 24 {
            return Err("shorter than 24 bytes");
        }
        if b[0] >> 5 != 1 {
            return Err("not version 1");
        }
        let len = usize::from(b[3]);
        if len < 24 || len > b.len() {
            return Err("bad length");
        }
        if b[1] & 0x04 != 0 {
            return Err("authentication is not supported");
        }
        if b[1] & 0x01 != 0 {
            return Err("multipoint bit set");
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = Packet {
            diag: b[0] & 0x1f,
            state: BfdState::from_bits(b[1] >> 6),
            poll: b[1] & 0x20 != 0,
            final_: b[1] & 0x10 != 0,
            detect_mult: b[2],
            my_disc: word(4),
            your_disc: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
        };
        if p.detect_mult == 0 {
            return Err("detection multiplier 0");
        }
        if p.my_disc == 0 {
            return Err("my discriminator 0");
        }
        if p.your_disc == 0 && !matches!(p.state, BfdState::Down | BfdState::AdminDown) {
            return Err("your discriminator 0 in state Init or Up");
        }
        Ok(p)
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One session's state machine (RFC 5880 §6.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Our discriminator.
    pub local_disc: u32,
    /// The peer's (0 until it is known).
    pub remote_disc: u32,
    /// Our state.
    pub state: BfdState,
    /// Why we last went down.
    pub diag: u8,
    remote_desired_min_tx: u32,
    remote_required_min_rx: u32,
    remote_detect_mult: u8,
    /// We sent Poll and wait for Final.
    poll: bool,
}

/// What a received packet asks of the session's runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaction {
    /// The state changed.
    pub changed: bool,
    /// Answer now with Final set.
    pub send_final: bool,
}

impl Session {
    /// A new session, down.
    pub fn new(local_disc: u32) -> Self {
        Session {
            local_disc,
            remote_disc: 0,
            state: BfdState::Down,
            diag: 0,
            remote_desired_min_tx: 0,
            remote_required_min_rx: 1,
            remote_detect_mult: 0,
            poll: false,
        }
    }

    fn desired_min_tx(&self) -> Duration {
        if self.state == BfdState::Up {
            FAST
        } else {
            SLOW
        }
    }

    /// Our next packet (`final_`: answering a Poll).
    pub fn packet(&self, final_: bool) -> Packet {
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.poll && !final_,
            final_,
            detect_mult: DETECT_MULT,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: micros(self.desired_min_tx()),
            required_min_rx: micros(FAST),
        }
    }

    /// How often we send: the slower of our wish and the peer's receive limit
    /// (before jitter).
    pub fn tx_interval(&self) -> Duration {
        self.desired_min_tx().max(Duration::from_micros(u64::from(
            self.remote_required_min_rx,
        )))
    }

    /// How long without a packet means the peer is gone (`None` while down: nothing
    /// to lose).
    pub fn detection_time(&self) -> Option<Duration> {
        if matches!(self.state, BfdState::Down | BfdState::AdminDown) {
            return None;
        }
        let interval = FAST.max(Duration::from_micros(u64::from(self.remote_desired_min_tx)));
        Some(interval * u32::from(self.remote_detect_mult.max(1)))
    }

    /// Take a packet from the peer (RFC 5880 §6.8.6).
    pub fn receive(&mut self, p: &Packet) -> Reaction {
        self.remote_disc = p.my_disc;
        self.remote_desired_min_tx = p.desired_min_tx;
        self.remote_required_min_rx = p.required_min_rx.max(1);
        self.remote_detect_mult = p.detect_mult;
        if p.final_ {
            self.poll = false;
        }
        let before = self.state;
        match (self.state, p.state) {
            (BfdState::AdminDown, _) => {}
            (_, BfdState::AdminDown) => {
                if self.state != BfdState::Down {
                    self.diag = 3; // neighbor signaled session down
                }
                self.state = BfdState::Down;
            }
            (BfdState::Down, BfdState::Down) => self.state = BfdState::Init,
            (BfdState::Down, BfdState::Init) => self.state = BfdState::Up,
            (BfdState::Init, BfdState::Init | BfdState::Up) => self.state = BfdState::Up,
            (BfdState::Up, BfdState::Down) => {
                self.diag = 3;
                self.state = BfdState::Down;
            }
            _ => {}
        }
        let changed = self.state != before;
        if changed && (self.state == BfdState::Up || before == BfdState::Up) {
            // Our transmit interval changes with Up: tell the peer (Poll).
            self.poll = true;
        }
        Reaction {
            changed,
            send_final: p.poll,
        }
    }

    /// No packet within the detection time.
    pub fn expire(&mut self) -> bool {
        if matches!(self.state, BfdState::Init | BfdState::Up) {
            self.state = BfdState::Down;
            self.diag = 1; // control detection time expired
            self.remote_disc = 0;
            self.poll = false;
            return true;
        }
        false
    }
}

/// A pseudo-random number (jitter, discriminators): std's per-process random keys.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// The sessions of one address, run.
pub struct Bfd {
    local: Ipv4Addr,
    sessions: Arc<Mutex<HashMap<Ipv4Addr, Running>>>,
    rx_task: JoinHandle<()>,
}

impl std::fmt::Debug for Bfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bfd").field("local", &self.local).finish()
    }
}

struct Running {
    disc: u32,
    packets: mpsc::Sender<Packet>,
    state: watch::Receiver<BfdState>,
    task: JoinHandle<()>,
}

impl Drop for Bfd {
    fn drop(&mut self) {
        self.rx_task.abort();
        for (_, r) in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            r.task.abort();
        }
    }
}

fn set_ttl(s: &UdpSocket, opt: libc::c_int) -> std::io::Result<()> {
    let v: libc::c_int = 255;
    // SAFETY: a valid socket and an int option.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Bfd {
    /// Listen for control packets to `local` (in the calling task's namespace).
    pub async fn start(local: Ipv4Addr) -> std::io::Result<Bfd> {
        let addr = SocketAddrV4::new(local, CONTROL_PORT);
        let rx = crate::bind_retrying(|| UdpSocket::bind(addr)).await?;
        // Single hop: only packets sent with TTL 255 (RFC 5881 §5).
        set_ttl(&rx, libc::IP_MINTTL)?;
        let sessions: Arc<Mutex<HashMap<Ipv4Addr, Running>>> = Arc::default();
        let table = sessions.clone();
        let rx_task = tokio::spawn(async move {
            let mut buf = [0u8; 128];
            loop {
                let Ok((n, SocketAddr::V4(from))) = rx.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(p) = Packet::decode(&buf[..n]) else {
                    continue;
                };
                let to = {
                    let t = table.lock().unwrap_or_else(|e| e.into_inner());
                    t.get(from.ip())
                        .filter(|r| p.your_disc == 0 || p.your_disc == r.disc)
                        .map(|r| r.packets.clone())
                };
                if let Some(tx) = to {
                    let _ = tx.try_send(p);
                }
            }
        });
        Ok(Bfd {
            local,
            sessions,
            rx_task,
        })
    }

    /// Run a session with `peer` (or keep the one running); its state as it changes.
    pub async fn add(&self, peer: Ipv4Addr) -> std::io::Result<watch::Receiver<BfdState>> {
        if let Some(r) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
        {
            return Ok(r.state.clone());
        }
        // A source port of our own in 49152–65535 (RFC 5881 §4).
        let mut tx = None;
        let start = 49152 + (random() % 16384) as u16;
        for i in 0..16384u16 {
            let port = 49152 + (start - 49152 + i) % 16384;
            if let Ok(s) = UdpSocket::bind(SocketAddrV4::new(self.local, port)).await {
                tx = Some(s);
                break;
            }
        }
        let tx = tx.ok_or_else(|| std::io::Error::other("no free BFD source port"))?;
        set_ttl(&tx, libc::IP_TTL)?;
        let disc = (random() as u32).max(1);
        let (packets, inbox) = mpsc::channel(16);
        let (state_tx, state) = watch::channel(BfdState::Down);
        let task = tokio::spawn(run_session(
            Session::new(disc),
            tx,
            SocketAddrV4::new(peer, CONTROL_PORT),
            inbox,
            state_tx,
        ));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                peer,
                Running {
                    disc,
                    packets,
                    state: state.clone(),
                    task,
                },
            );
        Ok(state)
    }

    /// Stop the session with `peer`.
    pub fn remove(&self, peer: Ipv4Addr) {
        if let Some(r) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer)
        {
            r.task.abort();
        }
    }
}

async fn run_session(
    mut s: Session,
    sock: UdpSocket,
    to: SocketAddrV4,
    mut inbox: mpsc::Receiver<Packet>,
    state: watch::Sender<BfdState>,
) {
    let send = |s: &Session, final_: bool| {
        let b = s.packet(final_).encode();
        let _ = sock.try_send_to(&b, SocketAddr::V4(to));
    };
    let jittered = |d: Duration| d.mul_f64(0.75 + (random() % 250) as f64 / 1000.0);
    let mut next_tx = Instant::now();
    let mut last_rx = Instant::now();
    loop {
        let deadline = s.detection_time().map(|d| last_rx + d);
        tokio::select! {
            Some(p) = inbox.recv() => {
                last_rx = Instant::now();
                let r = s.receive(&p);
                if r.send_final {
                    send(&s, true);
                }
                if r.changed {
                    state.send_replace(s.state);
                    // The new rate at once (a faster one is allowed right away; the
                    // peer learns it from our Poll).
                    next_tx = Instant::now();
                }
            }
            _ = tokio::time::sleep_until(next_tx) => {
                send(&s, false);
                next_tx = Instant::now() + jittered(s.tx_interval());
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                if s.expire() {
                    state.send_replace(s.state);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_bad_ones_are_refused() {
        let p = Packet {
            diag: 1,
            state: BfdState::Init,
            poll: true,
            final_: false,
            detect_mult: 3,
            my_disc: 7,
            your_disc: 9,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
        };
        let b = p.encode();
        assert_eq!(b[0], 0x21);
        assert_eq!(Packet::decode(&b).unwrap(), p);
        let mut bad = b;
        bad[0] = 0x41;
        assert!(Packet::decode(&bad).is_err(), "version 2");
        let mut bad = b;
        bad[8..12].copy_from_slice(&[0; 4]);
        assert!(Packet::decode(&bad).is_err(), "your disc 0 in Init");
        assert!(Packet::decode(&b[..20]).is_err());
    }

    #[test]
    fn a_three_way_handshake_then_detection() {
        let (mut a, mut b) = (Session::new(1), Session::new(2));
        // a → b (Down): b goes Init; b → a (Init): a goes Up; a → b (Up): b goes Up.
        assert!(b.receive(&a.packet(false)).changed);
        assert_eq!(b.state, BfdState::Init);
        assert!(a.receive(&b.packet(false)).changed);
        assert_eq!(a.state, BfdState::Up);
        b.receive(&a.packet(false));
        assert_eq!(b.state, BfdState::Up);
        // Up: 100 ms each way, a Poll out for the new rate, answered with Final.
        assert_eq!(a.tx_interval(), FAST);
        let polled = a.packet(false);
        assert!(polled.poll);
        let r = b.receive(&polled);
        assert!(r.send_final);
        a.receive(&b.packet(true));
        assert!(!a.packet(false).poll, "the Poll ended with Final");
        assert_eq!(a.detection_time(), Some(FAST * 3));
        // Silence: down, with the diagnostic; the peer's Down packet then takes b down.
        assert!(a.expire());
        assert_eq!((a.state, a.diag), (BfdState::Down, 1));
        assert_eq!(a.detection_time(), None);
        b.receive(&a.packet(false));
        assert_eq!(b.state, BfdState::Down);
    }
}
