//! The `udp` backend's packet pump: TUN device <-> UDP socket, in userspace.
//!
//! This is the slow path, for hosts without VXLAN (as Flannel's `udp` backend): every
//! packet crosses into userspace twice, once on the sending node (TUN read, UDP send)
//! and once on the receiving node (UDP receive, TUN write). The pump lives in the agent,
//! so packets are dropped while the agent is down; the TUN device is persistent, though,
//! so it and the routes into it outlive the agent, and the next agent's pump attaches
//! to it without changing a link, address or route: a restart costs TCP a retransmit,
//! not its connections. The device goes when the fabric no longer wants it (the
//! reconciler deletes fabric devices nobody desires).
//!
//! [`UdpPump::start`] creates (or adopts) the TUN device (`IFF_TUN | IFF_NO_PI`,
//! persistent), configures it and binds a UDP socket; two blocking OS threads then move
//! packets:
//!
//! - tun -> udp: read an IPv4 packet from the TUN device, look its destination up in the
//!   peer table (longest prefix wins), send it as the payload of one UDP datagram to the
//!   peer's endpoint;
//! - udp -> tun: receive a datagram, accept it only from a known peer's address and
//!   only if it is a well-formed IPv4 packet, write it to the TUN device (the kernel
//!   then routes it on to the pod).
//!
//! Outer packets may be fragmented (`IP_PMTUDISC_DONT`, like a VXLAN device's default),
//! so a TUN MTU larger than the path allows degrades instead of black-holing; the
//! right TUN MTU is the uplink's minus [`crate::UDP_OVERHEAD`].
//!
//! Only the outer source address of a datagram is checked, not its port (NAT may rewrite
//! it) nor the inner packet: a known peer can inject any IPv4 packet, as with VXLAN.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;

use crate::{FabricError, TunDevice};

/// Largest IPv4 packet (and so the largest datagram payload the pump handles).
const MAX_PACKET: usize = 65536;

/// Receive buffer of the UDP socket.
const RCVBUF: libc::c_int = 4 << 20;

/// Counters of a [`UdpPump`], since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Packets read from the TUN device and sent to a peer.
    pub tx_packets: u64,
    /// Bytes (inner IPv4 packets) of `tx_packets`.
    pub tx_bytes: u64,
    /// Packets received from a peer and written to the TUN device.
    pub rx_packets: u64,
    /// Bytes (inner IPv4 packets) of `rx_packets`.
    pub rx_bytes: u64,
    /// Packets from the TUN device whose destination is in no peer's subnet.
    pub dropped_no_peer: u64,
    /// Packets (either direction) that are not well-formed IPv4 packets. IPv6 counts
    /// here too: the udp backend carries IPv4 only.
    pub dropped_malformed: u64,
    /// Datagrams whose source address is no known peer's.
    pub dropped_unknown_source: u64,
    /// Packets lost to an I/O error (UDP send or TUN write failed).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    dropped_no_peer: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_unknown_source: AtomicU64,
    errors: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The peer table, immutable once built; [`UdpPump::set_peers`] swaps in a new one.
#[derive(Debug, Default)]
struct PeerTable {
    /// (netmask, network address -> endpoint), longest prefix first.
    by_len: Vec<(u32, HashMap<u32, SocketAddrV4>)>,
    /// Addresses datagrams are accepted from.
    sources: HashSet<Ipv4Addr>,
}

impl PeerTable {
    fn new(peers: &[(Ipv4Net, SocketAddrV4)]) -> PeerTable {
        let mut by_len: HashMap<u8, HashMap<u32, SocketAddrV4>> = HashMap::new();
        let mut sources = HashSet::new();
        for (net, ep) in peers {
            by_len
                .entry(net.prefix_len())
                .or_default()
                .insert(u32::from(net.network()), *ep);
            sources.insert(*ep.ip());
        }
        let mut by_len: Vec<(u8, HashMap<u32, SocketAddrV4>)> = by_len.into_iter().collect();
        by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
        let by_len = by_len
            .into_iter()
            .map(|(len, m)| (u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0), m))
            .collect();
        PeerTable { by_len, sources }
    }

    fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let d = u32::from(dst);
        self.by_len
            .iter()
            .find_map(|(mask, m)| m.get(&(d & mask)).copied())
    }
}

/// State shared by the handle and the two threads.
#[derive(Debug)]
struct Shared {
    tun: File,
    sock: UdpSocket,
    /// An eventfd, made readable (and left so) when the pump stops.
    wake: File,
    stop: AtomicBool,
    peers: RwLock<Arc<PeerTable>>,
    /// Bumped after every table swap, so the threads re-read the table only then.
    generation: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The current table, via the thread's cache.
    fn table<'a>(&self, cache: &'a mut (u64, Arc<PeerTable>)) -> &'a PeerTable {
        let g = self.generation.load(Ordering::Acquire);
        if g != cache.0 {
            let t = self
                .peers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            *cache = (g, t);
        }
        &cache.1
    }

    /// Block until `fd` has `events` (true) or the pump stops (false).
    fn wait(&self, fd: RawFd, events: libc::c_short) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let mut fds = [
                libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid, writable array of 2 pollfd for the whole call;
            // both fds are owned by `self`, which outlives the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "udp pump: poll failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            if fds[1].revents != 0 {
                return false;
            }
            if fds[0].revents != 0 {
                return true;
            }
        }
    }
}

/// A running pump. Dropping it stops the threads and removes the TUN device.
pub struct UdpPump {
    dev: TunDevice,
    port: u16,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for UdpPump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpPump")
            .field("name", &self.dev.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FabricError {
    let what = what.into();
    move |source| FabricError::Io { what, source }
}

fn last_err(what: impl Into<String>) -> FabricError {
    io_err(what)(io::Error::last_os_error())
}

/// An all-zero `ifreq` for device `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, sockaddrs
    // and a pointer); all-zero bytes are a valid value of every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr
}

/// An AF_INET `sockaddr` holding `a` (port 0).
fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    for (d, s) in sa_data[2..6].iter_mut().zip(a.octets()) {
        *d = s as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// `ioctl(fd, req, ifr)`.
fn ioctl_ifr(
    fd: RawFd,
    req: libc::Ioctl,
    ifr: &mut libc::ifreq,
    what: &str,
) -> Result<(), FabricError> {
    // SAFETY: every request passed here (TUNSETIFF, SIOC[GS]IF*) reads and/or writes one
    // `struct ifreq`, and `ifr` is a valid, exclusive one for the duration of the call.
    let r = unsafe { libc::ioctl(fd, req, ifr as *mut libc::ifreq) };
    if r < 0 {
        return Err(last_err(what));
    }
    Ok(())
}

/// Open `/dev/net/tun` and attach it to TUN device `name`, creating the device or
/// adopting a persistent one (an earlier pump's); either way it is persistent after.
/// Returns the fd and whether the device was created.
fn open_tun(name: &str) -> Result<(File, bool), FabricError> {
    // (In this thread's network namespace: if_nametoindex asks through a socket, not
    // /sys, which may belong to another namespace.)
    let cname = std::ffi::CString::new(name).map_err(|_| FabricError::Io {
        what: format!("create TUN device {name:?}"),
        source: io::Error::new(io::ErrorKind::InvalidInput, "invalid interface name"),
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
    let existed = unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(io_err("open /dev/net/tun"))?;
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the `ifreq` behind the pointer, which is valid
    // and exclusive for the call.
    let r = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => "; it is in use by another process (another agent?)",
            Some(libc::EINVAL) => {
                "; a device of that name exists and is not a single-queue TUN device"
            }
            _ => "",
        };
        return Err(FabricError::Io {
            what: format!("create TUN device {name}{why}"),
            source: e,
        });
    }
    set_persist(&tun, name, true)?;
    Ok((tun, !existed))
}

/// Set or clear the persist flag of the TUN device `tun` is attached to.
fn set_persist(tun: &File, name: &str, on: bool) -> Result<(), FabricError> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
    let r = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(on),
        )
    };
    if r < 0 {
        return Err(last_err(format!("set persist {on} on TUN device {name}")));
    }
    Ok(())
}

/// Set the MTU and address of device `dev.name` and bring it up.
fn configure(dev: &TunDevice) -> Result<(), FabricError> {
    let name = &dev.name;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err("socket(AF_INET) for interface ioctls"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = sock.as_raw_fd();

    let mtu = libc::c_int::try_from(dev.mtu).map_err(|_| FabricError::Io {
        what: format!("set MTU of {name}"),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("MTU {} too large", dev.mtu),
        ),
    })?;
    // Only what differs is set: an adopted device that is right sees no change (setting
    // the same address again would delete and re-add it, and its routes with it).
    let mut ifr = ifreq(name);
    ioctl_ifr(
        fd,
        libc::SIOCGIFMTU,
        &mut ifr,
        &format!("get MTU of {name}"),
    )?;
    // SAFETY: SIOCGIFMTU just filled in `ifru_mtu`.
    if unsafe { ifr.ifr_ifru.ifru_mtu } != mtu {
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_mtu = mtu;
        ioctl_ifr(
            fd,
            libc::SIOCSIFMTU,
            &mut ifr,
            &format!("set MTU {mtu} on {name}"),
        )?;
    }

    if current_address(fd, name) != Some(dev.address) {
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_addr = sockaddr_v4(dev.address.addr());
        ioctl_ifr(
            fd,
            libc::SIOCSIFADDR,
            &mut ifr,
            &format!("add address {} to {name}", dev.address),
        )?;
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_netmask = sockaddr_v4(dev.address.netmask());
        ioctl_ifr(
            fd,
            libc::SIOCSIFNETMASK,
            &mut ifr,
            &format!("set prefix {} on {name}", dev.address),
        )?;
    }

    // The device carries IPv4 only: keep the kernel from sending IPv6 router
    // solicitations and MLD reports into it. Best effort (IPv6 may be off entirely).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");

    let mut ifr = ifreq(name);
    ioctl_ifr(
        fd,
        libc::SIOCGIFFLAGS,
        &mut ifr,
        &format!("get flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS just filled in `ifru_flags`.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short == 0 {
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ioctl_ifr(
            fd,
            libc::SIOCSIFFLAGS,
            &mut ifr,
            &format!("bring up {name}"),
        )?;
    }
    Ok(())
}

/// The primary IPv4 address and prefix of device `name`, if it has one.
fn current_address(fd: RawFd, name: &str) -> Option<Ipv4Net> {
    let get = |req| {
        let mut ifr = ifreq(name);
        ioctl_ifr(fd, req, &mut ifr, "").ok()?;
        // SAFETY: SIOCGIFADDR / SIOCGIFNETMASK just filled in `ifru_addr`.
        let sa = unsafe { ifr.ifr_ifru.ifru_addr };
        // A `sockaddr_in` in `sockaddr` clothing: port in data[0..2], address in [2..6].
        let d = sa.sa_data.map(|b| b as u8);
        Some(Ipv4Addr::new(d[2], d[3], d[4], d[5]))
    };
    let addr = get(libc::SIOCGIFADDR)?;
    let mask = get(libc::SIOCGIFNETMASK)?;
    Ipv4Net::with_netmask(addr, mask).ok()
}

/// An eventfd, non-blocking.
fn eventfd() -> Result<File, FabricError> {
    // SAFETY: plain eventfd(2) call; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(last_err("eventfd"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

impl UdpPump {
    /// Create the persistent TUN device `dev.name` (`IFF_TUN | IFF_NO_PI`) in the calling
    /// thread's current network namespace, set its MTU, add `dev.address`, bring it up,
    /// bind a UDP socket on `0.0.0.0:port`, and start the pump threads.
    ///
    /// A TUN device of that name with no pump attached (an earlier pump's: they outlive
    /// it, see the module documentation; or one made by `ip tuntap add`) is adopted: only
    /// what differs from `dev` is changed, so an agent restart changes nothing. If
    /// another process is pumping the device, `start` fails ("in use"); so does it when
    /// a device of that name exists that is not a TUN device. Dropping the pump leaves
    /// the device; deleting it is the reconciler's job once no backend wants it.
    ///
    /// The peer table starts empty: call [`UdpPump::set_peers`].
    pub fn start(dev: &TunDevice, port: u16) -> Result<UdpPump, FabricError> {
        let name = dev.name.clone();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(FabricError::Io {
                what: format!("create TUN device {name:?}"),
                source: io::Error::new(io::ErrorKind::InvalidInput, "invalid interface name"),
            });
        }
        // Bind first: failing on a busy port must not disturb a device someone else uses.
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .map_err(io_err(format!("bind UDP 0.0.0.0:{port}")))?;
        sock.set_nonblocking(true)
            .map_err(io_err(format!("set UDP 0.0.0.0:{port} non-blocking")))?;
        let pmtu = libc::IP_PMTUDISC_DONT;
        // SAFETY: IP_MTU_DISCOVER reads one c_int from the given pointer and length.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                &pmtu as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(last_err(format!(
                "set IP_MTU_DISCOVER on UDP 0.0.0.0:{port}"
            )));
        }
        // A deeper receive queue absorbs the bursts a busy TUN writer cannot keep up
        // with (the default ~200 KiB loses packets under a single TCP flow). Best
        // effort: FORCE needs CAP_NET_ADMIN, plain SO_RCVBUF is capped by rmem_max.
        let rcvbuf: libc::c_int = RCVBUF;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: SO_RCVBUF(FORCE) reads one c_int from the given pointer and length.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &rcvbuf as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(port);

        let (tun, created) = open_tun(&name)?;
        if let Err(e) = configure(dev) {
            // A device made just now goes away with `tun`; an adopted one stays as it was.
            if created {
                let _ = set_persist(&tun, &name, false);
            }
            return Err(e);
        }

        let shared = Arc::new(Shared {
            tun,
            sock,
            wake: eventfd()?,
            stop: AtomicBool::new(false),
            peers: RwLock::new(Arc::new(PeerTable::default())),
            generation: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let mut pump = UdpPump {
            dev: dev.clone(),
            port,
            shared,
            threads: Vec::new(),
        };
        // On a spawn failure, dropping `pump` stops and joins what was started.
        for (dir, f) in [
            ("tx", tun_to_udp as fn(&Shared)),
            ("rx", udp_to_tun as fn(&Shared)),
        ] {
            let s = pump.shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("{name}-{dir}"))
                .spawn(move || f(&s))
                .map_err(io_err(format!("spawn pump thread for {name}")))?;
            pump.threads.push(t);
        }
        tracing::info!(device = %name, port, mtu = dev.mtu, address = %dev.address, "udp pump started");
        Ok(pump)
    }

    /// Replace the peer table: an IPv4 packet whose destination is inside `subnet` is
    /// sent, as the UDP payload, to `endpoint`; datagrams are accepted from the
    /// endpoints' addresses only. The most specific subnet wins; if one subnet appears
    /// twice, the last entry wins.
    pub fn set_peers(&self, peers: Vec<(Ipv4Net, SocketAddrV4)>) {
        let table = Arc::new(PeerTable::new(&peers));
        let mut cur = self
            .shared
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *cur = table;
        self.shared.generation.fetch_add(1, Ordering::Release);
        drop(cur);
        tracing::debug!(device = %self.dev.name, peers = peers.len(), "udp pump peers set");
    }

    /// The device as this pump configured it.
    pub fn device(&self) -> &TunDevice {
        &self.dev
    }

    /// Whether both pump threads are still running. They stop on their own only when
    /// the TUN device is deleted from outside (e.g. `ip link del`); the pump is then
    /// useless and should be dropped and started again.
    pub fn is_running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Counters: packets/bytes sent and received, dropped (no peer, malformed, unknown
    /// source), I/O errors.
    pub fn stats(&self) -> UdpStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UdpStats {
            tx_packets: l(&c.tx_packets),
            tx_bytes: l(&c.tx_bytes),
            rx_packets: l(&c.rx_packets),
            rx_bytes: l(&c.rx_bytes),
            dropped_no_peer: l(&c.dropped_no_peer),
            dropped_malformed: l(&c.dropped_malformed),
            dropped_unknown_source: l(&c.dropped_unknown_source),
            errors: l(&c.errors),
        }
    }
}

impl Drop for UdpPump {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Err(e) = (&self.shared.wake).write_all(&1u64.to_ne_bytes()) {
            // Cannot happen for an eventfd far from overflow; the threads would hang.
            tracing::error!(device = %self.dev.name, error = %e, "udp pump: cannot signal stop");
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!(device = %self.dev.name, "udp pump thread panicked");
            }
        }
        // The last reference to `shared` goes with `self`: the TUN fd closes and the
        // (persistent) device stays, with its routes, for the next pump.
        tracing::info!(device = %self.dev.name, "udp pump stopped");
    }
}

/// The destination of `p` if it is a well-formed IPv4 packet (header complete, total
/// length matching the buffer).
fn ipv4_dst(p: &[u8]) -> Option<Ipv4Addr> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || ihl > p.len() || total != p.len() {
        return None;
    }
    Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
}

fn is_ebadfd(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADFD)
}

/// TUN -> UDP.
fn tun_to_udp(s: &Shared) {
    let c = &s.counters;
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cache = (0u64, Arc::new(PeerTable::default()));
    while s.wait(s.tun.as_raw_fd(), libc::POLLIN) {
        // Drain the device before polling again.
        while !s.stopped() {
            let n = match (&s.tun).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_ebadfd(&e) => {
                    tracing::error!(error = %e, "udp pump: TUN device gone; tx stopped");
                    return;
                }
                Err(e) => {
                    inc(&c.errors);
                    tracing::warn!(error = %e, "udp pump: TUN read failed");
                    break;
                }
            };
            let pkt = &buf[..n];
            let Some(dst) = ipv4_dst(pkt) else {
                inc(&c.dropped_malformed);
                continue;
            };
            let Some(ep) = s.table(&mut cache).lookup(dst) else {
                inc(&c.dropped_no_peer);
                tracing::trace!(%dst, "udp pump: no peer");
                continue;
            };
            loop {
                match s.sock.send_to(pkt, ep) {
                    Ok(_) => {
                        inc(&c.tx_packets);
                        c.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    // Socket buffer full: wait for room (backpressure, not loss).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if s.wait(s.sock.as_raw_fd(), libc::POLLOUT) {
                            continue;
                        }
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        inc(&c.errors);
                        tracing::debug!(%ep, error = %e, "udp pump: send failed");
                    }
                }
                break;
            }
        }
    }
}

/// UDP -> TUN.
fn udp_to_tun(s: &Shared) {
    let c = &s.counters;
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cache = (0u64, Arc::new(PeerTable::default()));
    while s.wait(s.sock.as_raw_fd(), libc::POLLIN) {
        while !s.stopped() {
            let (n, src) = match s.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. a queued ICMP error; nothing was lost here.
                    tracing::debug!(error = %e, "udp pump: receive failed");
                    break;
                }
            };
            let known = match src {
                SocketAddr::V4(a) => s.table(&mut cache).sources.contains(a.ip()),
                SocketAddr::V6(_) => false,
            };
            if !known {
                inc(&c.dropped_unknown_source);
                tracing::trace!(%src, "udp pump: datagram from unknown source");
                continue;
            }
            let pkt = &buf[..n];
            if ipv4_dst(pkt).is_none() {
                inc(&c.dropped_malformed);
                continue;
            }
            match (&s.tun).write(pkt) {
                Ok(_) => {
                    inc(&c.rx_packets);
                    c.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if is_ebadfd(&e) => {
                    tracing::error!(error = %e, "udp pump: TUN device gone; rx stopped");
                    return;
                }
                Err(e) => {
                    inc(&c.errors);
                    tracing::debug!(error = %e, "udp pump: TUN write failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = PeerTable::new(&[
            ("10.245.0.0/16".parse().unwrap(), ep("192.168.0.1:8285")),
            ("10.245.2.0/24".parse().unwrap(), ep("192.168.0.2:8285")),
            ("0.0.0.0/0".parse().unwrap(), ep("192.168.0.9:8285")),
        ]);
        assert_eq!(
            t.lookup("10.245.2.7".parse().unwrap()),
            Some(ep("192.168.0.2:8285"))
        );
        assert_eq!(
            t.lookup("10.245.3.7".parse().unwrap()),
            Some(ep("192.168.0.1:8285"))
        );
        assert_eq!(
            t.lookup("8.8.8.8".parse().unwrap()),
            Some(ep("192.168.0.9:8285"))
        );
        assert!(t.sources.contains(&"192.168.0.2".parse().unwrap()));
        assert_eq!(
            PeerTable::default().lookup("10.0.0.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn ipv4_validation() {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 245, 2, 2]);
        assert_eq!(ipv4_dst(&p), Some(Ipv4Addr::new(10, 245, 2, 2)));
        assert_eq!(ipv4_dst(&p[..27]), None, "total length mismatch");
        assert_eq!(ipv4_dst(&p[..19]), None, "short");
        p[0] = 0x60;
        assert_eq!(ipv4_dst(&p), None, "IPv6");
        p[0] = 0x44;
        assert_eq!(ipv4_dst(&p), None, "IHL < 5");
    }
}
