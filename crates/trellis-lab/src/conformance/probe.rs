//! Echo servers in pods and a prober that measures a full reachability matrix at once.
//!
//! Network namespaces are entered per thread (`setns` on a thread the prober spawns for
//! that purpose and that ends right after): the process and every other thread stay
//! where they are, and only namespaces of a lab ([`crate::NS_PREFIX`]) are entered. A
//! socket belongs to the namespace it was created in, so the servers' sockets, created
//! on such a thread, are served from one ordinary thread.
//!
//! - [`EchoServers`]: for every pod, a TCP and a UDP echo server on each port; stopped
//!   (sockets closed, thread joined) on drop. They log every probe they receive
//!   ([`EchoServers::take_received`]), so a test counts at the receivers which pod a
//!   probe really reached.
//! - [`probe_all`]: one thread per source pod, inside its namespace, opens every probe
//!   of that source at once (non-blocking TCP connects; UDP datagrams, resent once) and
//!   polls them until each is answered or the timeout passes. A probe is *reached* when
//!   the token it sent comes back; anything else (timeout, refused, ICMP unreachable,
//!   `EPERM` from a local filter) is denied.
//! - [`probe_addresses`]: the same from some sources to any addresses (cluster IPs,
//!   node ports, external IPs), not only to the pods themselves.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trellis_api::objects::PolicyProtocol;

use super::{Matrix, PortProto};
use crate::spawn_in_netns;

/// A pod to probe: its name in the matrix, its network namespace and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `namespace/name` (the matrix's row and column name).
    pub name: String,
    /// The lab network namespace it lives in.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

fn join<T>(h: JoinHandle<io::Result<T>>) -> io::Result<T> {
    h.join()
        .map_err(|_| io::Error::other("a namespace thread panicked"))?
}

/// TCP and UDP echo servers on some ports in every target pod.
#[derive(Debug)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    received: Arc<Mutex<Vec<Receipt>>>,
}

/// A probe an echo server received: at which target, and what the prober sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The index (in [`EchoServers::start`]'s targets) of the pod that received it.
    pub at: usize,
    /// The probe's source index (in the prober's sources).
    pub source: usize,
    /// The probe's destination index (in the prober's destinations).
    pub dest: usize,
    /// The column, as written (`tcp/80`).
    pub column: String,
}

impl Receipt {
    /// Parse what a prober sends (`trellis-probe <s>><d> <column>`), received at `at`.
    fn parse(at: usize, token: &[u8]) -> Option<Receipt> {
        let text = std::str::from_utf8(token).ok()?;
        let rest = text.trim_end().strip_prefix("trellis-probe ")?;
        let (pair, column) = rest.split_once(' ')?;
        let (s, d) = pair.split_once('>')?;
        Some(Receipt {
            at,
            source: s.parse().ok()?,
            dest: d.parse().ok()?,
            column: column.to_string(),
        })
    }
}

impl EchoServers {
    /// Bind TCP and UDP `0.0.0.0:<port>` for each of `ports` in each target's namespace
    /// and serve them: a TCP connection gets back what it sent first, then is closed; a
    /// datagram is sent back to its sender.
    pub fn start(targets: &[Target], ports: &[u16]) -> io::Result<EchoServers> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let handles = targets
            .iter()
            .map(|t| {
                let ports = ports.to_vec();
                spawn_in_netns(&t.netns, move || {
                    let mut v = Vec::new();
                    for p in ports {
                        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, p))?;
                        l.set_nonblocking(true)?;
                        let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p))?;
                        u.set_nonblocking(true)?;
                        v.push((l, u));
                    }
                    Ok(v)
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        for (at, h) in handles.into_iter().enumerate() {
            for (l, u) in join(h)? {
                tcp.push((l, at));
                udp.push((u, at));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, log) = (stop.clone(), received.clone());
        let thread = std::thread::Builder::new()
            .name("echo servers".into())
            .spawn(move || serve(tcp, udp, &s, &log))?;
        Ok(EchoServers {
            stop,
            thread: Some(thread),
            received,
        })
    }

    /// Every probe received since the last call (a UDP probe sent twice counts twice).
    pub fn take_received(&self) -> Vec<Receipt> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> usize {
    let ms = timeout.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of that length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    usize::try_from(n).unwrap_or(0)
}

/// How long an accepted connection may stay without sending anything.
const CONN_IDLE: Duration = Duration::from_secs(3);
/// Most connections accepted or datagrams answered per socket and round.
const BURST: usize = 256;

fn serve(
    tcp: Vec<(TcpListener, usize)>,
    udp: Vec<(UdpSocket, usize)>,
    stop: &AtomicBool,
    log: &Mutex<Vec<Receipt>>,
) {
    // An accepted connection: its stream, when it was accepted, the target it reached.
    // It is echoed its first read (a whole token) and closed.
    let mut conns: Vec<(TcpStream, Instant, usize)> = Vec::new();
    let mut buf = [0u8; 512];
    let record = |at: usize, bytes: &[u8]| {
        if let Some(r) = Receipt::parse(at, bytes) {
            log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<libc::pollfd> = tcp
            .iter()
            .map(|(l, _)| l.as_raw_fd())
            .chain(udp.iter().map(|(u, _)| u.as_raw_fd()))
            .chain(conns.iter().map(|(c, ..)| c.as_raw_fd()))
            .map(|fd| pollfd(fd, libc::POLLIN))
            .collect();
        if poll(&mut fds, Duration::from_millis(50)) > 0 {
            let ready = |i: usize| fds[i].revents != 0;
            // Connections first (their indices follow the sockets'), then new ones.
            let base = tcp.len() + udp.len();
            let mut keep = Vec::with_capacity(conns.len());
            for (i, (mut c, since, at)) in std::mem::take(&mut conns).into_iter().enumerate() {
                if !ready(base + i) {
                    keep.push((c, since, at));
                    continue;
                }
                match c.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        record(at, &buf[..n]);
                        let _ = c.write_all(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => keep.push((c, since, at)),
                    Err(_) => {}
                }
            }
            conns = keep;
            for (i, (l, at)) in tcp.iter().enumerate() {
                if !ready(i) {
                    continue;
                }
                for _ in 0..BURST {
                    match l.accept() {
                        Ok((c, _)) => {
                            if c.set_nonblocking(true).is_ok() {
                                conns.push((c, Instant::now(), *at));
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            for (i, (u, at)) in udp.iter().enumerate() {
                if !ready(tcp.len() + i) {
                    continue;
                }
                for _ in 0..BURST {
                    match u.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            record(*at, &buf[..n]);
                            let _ = u.send_to(&buf[..n], from);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        conns.retain(|(_, since, ..)| since.elapsed() < CONN_IDLE);
    }
}

/// Timings of [`probe_all`].
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// How long a probe may take before it counts as dropped.
    pub timeout: Duration,
    /// When an unanswered UDP probe is sent once more.
    pub udp_resend: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            timeout: Duration::from_millis(1000),
            udp_resend: Duration::from_millis(350),
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The echo came back.
    Reached,
    /// Nothing came back in time (dropped).
    Timeout,
    /// Refused (TCP reset, ICMP port unreachable).
    Refused,
    /// ICMP unreachable / prohibited, or a local filter (`EPERM`).
    Unreachable,
    /// The connection closed before the echo came back.
    Closed,
    /// Another error (errno).
    Failed(i32),
}

impl Outcome {
    /// Whether the probe counts as allowed.
    pub fn reached(self) -> bool {
        self == Outcome::Reached
    }

    fn from_errno(e: i32) -> Outcome {
        match e {
            libc::ECONNREFUSED | libc::ECONNRESET => Outcome::Refused,
            libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::EACCES
            | libc::EPERM => Outcome::Unreachable,
            libc::ETIMEDOUT => Outcome::Timeout,
            e => Outcome::Failed(e),
        }
    }

    fn from_io(e: &io::Error) -> Outcome {
        Outcome::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reached => f.write_str("reached"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Unreachable => f.write_str("unreachable"),
            Outcome::Closed => f.write_str("closed without echo"),
            Outcome::Failed(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
        }
    }
}

/// The outcome of every probe of a matrix.
#[derive(Debug, Clone)]
pub struct Probed {
    /// The pods, in target order.
    pub pods: Vec<String>,
    /// The columns.
    pub columns: Vec<PortProto>,
    /// `outcomes[(column * n + from) * n + to]`.
    outcomes: Vec<Outcome>,
    /// How long the whole matrix took.
    pub took: Duration,
}

impl Probed {
    /// The outcome of `from` → `to` on column `column`.
    pub fn outcome(&self, column: usize, from: usize, to: usize) -> Outcome {
        let n = self.pods.len();
        self.outcomes[(column * n + from) * n + to]
    }

    /// Reached or not, as a [`Matrix`].
    pub fn matrix(&self) -> Matrix {
        let mut m = Matrix::filled(self.pods.clone(), self.columns.clone(), false);
        let n = self.pods.len();
        for c in 0..self.columns.len() {
            for s in 0..n {
                for d in 0..n {
                    m.set(c, s, d, self.outcome(c, s, d).reached());
                }
            }
        }
        m
    }
}

/// Probe every target from every target on every column, all at once. Needs
/// [`EchoServers`] on the columns' ports in every target.
pub fn probe_all(
    targets: &[Target],
    columns: &[PortProto],
    cfg: &ProbeConfig,
) -> io::Result<Probed> {
    let started = Instant::now();
    let dests: Vec<Ipv4Addr> = targets.iter().map(|t| t.ip).collect();
    let outcomes = probe_addresses(targets, &dests, columns, cfg)?;
    Ok(Probed {
        pods: targets.iter().map(|t| t.name.clone()).collect(),
        columns: columns.to_vec(),
        outcomes: outcomes.outcomes,
        took: started.elapsed(),
    })
}

/// The outcomes of [`probe_addresses`]: every source → every address on every column.
#[derive(Debug, Clone)]
pub struct Outcomes {
    sources: usize,
    dests: usize,
    /// `outcomes[(column * sources + from) * dests + to]`.
    outcomes: Vec<Outcome>,
}

impl Outcomes {
    /// The outcome of source `from` → address `to` on column `column`.
    pub fn get(&self, column: usize, from: usize, to: usize) -> Outcome {
        assert!(from < self.sources && to < self.dests);
        self.outcomes[(column * self.sources + from) * self.dests + to]
    }
}

/// Probe every address in `dests` from every source on every column, all at once (one
/// thread per source, inside its namespace). The probes carry the source's and the
/// address's index, which the [`EchoServers`] log as [`Receipt`]s.
pub fn probe_addresses(
    sources: &[Target],
    dests: &[Ipv4Addr],
    columns: &[PortProto],
    cfg: &ProbeConfig,
) -> io::Result<Outcomes> {
    let handles = sources
        .iter()
        .enumerate()
        .map(|(s, t)| {
            let dests = dests.to_vec();
            let columns = columns.to_vec();
            let cfg = cfg.clone();
            spawn_in_netns(&t.netns, move || Ok(probe_from(s, &dests, &columns, &cfg)))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let (ns, nd) = (sources.len(), dests.len());
    let mut outcomes = vec![Outcome::Timeout; columns.len() * ns * nd];
    for (s, h) in handles.into_iter().enumerate() {
        let row = join(h)?;
        for c in 0..columns.len() {
            for d in 0..nd {
                outcomes[(c * ns + s) * nd + d] = row[c * nd + d];
            }
        }
    }
    Ok(Outcomes {
        sources: ns,
        dests: nd,
        outcomes,
    })
}

/// One probe in flight.
enum State {
    Connecting(OwnedFd),
    Echo(TcpStream, Vec<u8>),
    Udp(UdpSocket, bool),
    Done(Outcome),
}

struct InFlight {
    token: Vec<u8>,
    state: State,
}

impl InFlight {
    fn fd(&self) -> Option<(RawFd, i16)> {
        match &self.state {
            State::Connecting(fd) => Some((fd.as_raw_fd(), libc::POLLOUT)),
            State::Echo(s, _) => Some((s.as_raw_fd(), libc::POLLIN)),
            State::Udp(u, _) => Some((u.as_raw_fd(), libc::POLLIN)),
            State::Done(_) => None,
        }
    }

    /// Go on after poll reported the socket.
    fn advance(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Done(Outcome::Timeout));
        self.state = match state {
            State::Connecting(fd) => match socket_error(&fd) {
                0 => {
                    let mut s = TcpStream::from(fd);
                    // A fresh socket takes a token this small whole.
                    match s.write(&self.token) {
                        Ok(n) if n == self.token.len() => State::Echo(s, Vec::new()),
                        Ok(_) => State::Done(Outcome::Failed(libc::EIO)),
                        Err(e) => State::Done(Outcome::from_io(&e)),
                    }
                }
                e => State::Done(Outcome::from_errno(e)),
            },
            State::Echo(mut s, mut got) => {
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    Ok(0) => State::Done(Outcome::Closed),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.len() < self.token.len() {
                            State::Echo(s, got)
                        } else if got == self.token {
                            State::Done(Outcome::Reached)
                        } else {
                            State::Done(Outcome::Closed)
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => State::Echo(s, got),
                    Err(e) => State::Done(Outcome::from_io(&e)),
                }
            }
            State::Udp(u, resent) => {
                let mut buf = [0u8; 256];
                match u.recv(&mut buf) {
                    Ok(n) if buf[..n] == self.token[..] => State::Done(Outcome::Reached),
                    Ok(_) => State::Udp(u, resent),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => State::Udp(u, resent),
                    Err(e) => State::Done(Outcome::from_io(&e)),
                }
            }
            done @ State::Done(_) => done,
        };
    }
}

fn socket_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on an open socket with a buffer of the stated length.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        err
    }
}

/// Start a non-blocking TCP connect (on the calling thread's namespace).
fn tcp_connect(ip: Ipv4Addr, port: u16) -> State {
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return State::Done(Outcome::from_io(&io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a sockaddr_in of the stated length.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r == 0 {
        // Connected at once; the POLLOUT round finds SO_ERROR 0 and sends.
        return State::Connecting(fd);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EINPROGRESS) => State::Connecting(fd),
        Some(e) => State::Done(Outcome::from_errno(e)),
        None => State::Done(Outcome::Failed(libc::EIO)),
    }
}

fn udp_send(ip: Ipv4Addr, port: u16, token: &[u8]) -> State {
    let start = || -> io::Result<UdpSocket> {
        let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        u.connect((ip, port))?;
        u.set_nonblocking(true)?;
        u.send(token)?;
        Ok(u)
    };
    match start() {
        Ok(u) => State::Udp(u, false),
        Err(e) => State::Done(Outcome::from_io(&e)),
    }
}

/// Every probe of source `s` (on the calling thread's namespace): outcomes in
/// `[column][destination]` order.
fn probe_from(
    s: usize,
    dests: &[Ipv4Addr],
    columns: &[PortProto],
    cfg: &ProbeConfig,
) -> Vec<Outcome> {
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let resend_at = started + cfg.udp_resend;
    let mut probes: Vec<InFlight> = Vec::with_capacity(columns.len() * dests.len());
    for col in columns {
        for (d, ip) in dests.iter().enumerate() {
            let token = format!("trellis-probe {s}>{d} {col}\n").into_bytes();
            let state = match col.protocol {
                PolicyProtocol::Tcp => tcp_connect(*ip, col.port),
                PolicyProtocol::Udp => udp_send(*ip, col.port, &token),
                PolicyProtocol::Sctp => State::Done(Outcome::Failed(libc::EPROTONOSUPPORT)),
            };
            probes.push(InFlight { token, state });
        }
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= resend_at {
            for p in &mut probes {
                if let State::Udp(u, resent @ false) = &mut p.state {
                    *resent = true;
                    if let Err(e) = u.send(&p.token) {
                        p.state = State::Done(Outcome::from_io(&e));
                    }
                }
            }
        }
        let mut fds = Vec::new();
        let mut which = Vec::new();
        for (i, p) in probes.iter().enumerate() {
            if let Some((fd, ev)) = p.fd() {
                fds.push(pollfd(fd, ev));
                which.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        let until = if now < resend_at
            && probes
                .iter()
                .any(|p| matches!(p.state, State::Udp(_, false)))
        {
            resend_at
        } else {
            deadline
        };
        if poll(&mut fds, until.saturating_duration_since(now)) == 0 {
            continue;
        }
        for (f, i) in fds.iter().zip(&which) {
            if f.revents != 0 {
                probes[*i].advance();
            }
        }
    }
    probes
        .into_iter()
        .map(|p| match p.state {
            State::Done(o) => o,
            _ => Outcome::Timeout,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lab;

    fn sh(lab: &Lab, ns: &str, cmd: &str) {
        lab.exec(ns, &["sh", "-c", cmd])
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }

    /// The prober against a hand-made lab: three pods routed by one node (no Trellis),
    /// first with nothing in the way, then with drops and rejects in the node's own
    /// namespace. Needs root, `ip` and `nft`.
    #[test]
    fn the_prober_sees_reachability_drops_and_rejects() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let mut lab = Lab::new(1).expect("lab");
        let node = lab.state.nodes[0].netns.clone();
        sh(&lab, &node, "sysctl -qw net.ipv4.ip_forward=1");
        let mut targets = Vec::new();
        for i in 1..=3u8 {
            let pod = lab.add_pod(0, &format!("p{i}")).expect("pod");
            let host = format!("vp{i}");
            sh(
                &lab,
                &node,
                &format!(
                    "ip link add {host} type veth peer name eth0 netns {} && ip addr add 10.9.{i}.1/24 dev {host} && ip link set {host} up",
                    pod.netns
                ),
            );
            let ip = Ipv4Addr::new(10, 9, i, 2);
            sh(
                &lab,
                &pod.netns,
                &format!("ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip route add default via 10.9.{i}.1"),
            );
            targets.push(Target {
                name: format!("x/p{i}"),
                netns: pod.netns,
                ip,
            });
        }
        let servers = EchoServers::start(&targets, &[80, 81]).expect("servers");
        let columns = super::super::PROBE_COLUMNS;
        let cfg = ProbeConfig {
            timeout: Duration::from_millis(700),
            udp_resend: Duration::from_millis(250),
        };
        // Nothing in the way: everything reached (the first round may still resolve
        // neighbours; allow a retry).
        let mut probed = probe_all(&targets, &columns, &cfg).unwrap();
        for _ in 0..3 {
            if probed.matrix().allowed_count() == probed.matrix().len() {
                break;
            }
            probed = probe_all(&targets, &columns, &cfg).unwrap();
        }
        let m = probed.matrix();
        assert_eq!(
            m.allowed_count(),
            m.len(),
            "{}",
            super::super::render_matrix(&m)
        );
        // The receivers logged every probe, at the pod it was sent to.
        let got = servers.take_received();
        assert!(got.len() >= m.len(), "{got:?}");
        assert!(got.iter().all(|r| r.at == r.dest), "{got:?}");
        assert!(servers.take_received().is_empty());
        assert!(
            probed.took < Duration::from_millis(1500),
            "{:?}",
            probed.took
        );
        // Routed traffic through the node's filter: drop TCP 81 to p2, reject UDP 80 to
        // p3, reject TCP 80 from p1 to p3 with a reset.
        sh(
            &lab,
            &node,
            "nft -f - <<'EOF'\ntable ip trlabtest {\n  chain filt {\n    type filter hook forward priority 0;\n    ip daddr 10.9.2.2 tcp dport 81 drop\n    ip daddr 10.9.3.2 udp dport 80 reject with icmp type admin-prohibited\n    ip saddr 10.9.1.2 ip daddr 10.9.3.2 tcp dport 80 reject with tcp reset\n  }\n}\nEOF",
        );
        let probed = probe_all(&targets, &columns, &cfg).unwrap();
        let m = probed.matrix();
        let n = targets.len();
        for (c, &col) in columns.iter().enumerate() {
            for s in 0..n {
                for d in 0..n {
                    let local = s == d; // a pod's own address never leaves the pod
                    let (reached, outcome) = (m.get(c, s, d), probed.outcome(c, s, d));
                    let expect = local
                        || !((d == 1 && col == PortProto::tcp(81))
                            || (d == 2 && col == PortProto::udp(80))
                            || (s == 0 && d == 2 && col == PortProto::tcp(80)));
                    assert_eq!(reached, expect, "{s}->{d} {col}: {outcome}");
                    if !expect && col == PortProto::tcp(81) {
                        assert_eq!(outcome, Outcome::Timeout);
                    }
                    if !expect && col == PortProto::udp(80) {
                        assert_eq!(outcome, Outcome::Unreachable, "{s}->{d} {col}");
                    }
                    if !expect && col == PortProto::tcp(80) {
                        assert_eq!(outcome, Outcome::Refused, "{s}->{d} {col}");
                    }
                }
            }
        }
        assert!(
            probed.took < Duration::from_millis(1500),
            "{:?}",
            probed.took
        );
    }

    #[test]
    fn only_lab_namespaces_are_entered() {
        let e = spawn_in_netns("default", || Ok(())).unwrap_err();
        assert!(e.to_string().contains("not a lab namespace"), "{e}");
        assert!(spawn_in_netns("trlab-../x", || Ok(())).is_err());
    }
}
