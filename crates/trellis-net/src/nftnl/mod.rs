//! nf_tables over a raw netfilter netlink socket: attribute encoding, transactions
//! (batches) and dumps.
//!
//! The `nft` tool reads the kernel's whole chain list before every command it runs; on a
//! table with thousands of chains that read alone costs tens of milliseconds to seconds
//! (the kernel restarts a chain dump from the beginning for every 32 KiB it returns).
//! Speaking netlink directly, a change is one `sendmsg` of exactly the messages it needs.
//! The socket is opened in the calling thread's network namespace, like `nft` would be.
//!
//! Shared by every owner of nftables tables (the service proxy, policy, anti-spoofing):
//! [`Attrs`] encodes attributes, [`expr::Rule`] a rule's expressions, [`Socket`] runs
//! transactions and dumps; [`comment_udata`] / [`udata_comment`] carry the fingerprint
//! comment a rule is compared by.

pub mod expr;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A failed nf_tables request.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A netlink socket operation failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a transaction or a request.
    #[error("nftables: {0}")]
    Nft(String),
}

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NFPROTO_IPV4`: the `ip` family.
pub const FAMILY_IP: u8 = 2;
/// `NFPROTO_INET`: the `inet` family.
pub const FAMILY_INET: u8 = 1;
/// `NFPROTO_BRIDGE`: the `bridge` family.
pub const FAMILY_BRIDGE: u8 = 7;

/// nf_tables message types.
pub mod msg {
    pub const NEWTABLE: u8 = 0;
    pub const GETTABLE: u8 = 1;
    pub const DELTABLE: u8 = 2;
    pub const NEWCHAIN: u8 = 3;
    pub const GETCHAIN: u8 = 4;
    pub const DELCHAIN: u8 = 5;
    pub const NEWRULE: u8 = 6;
    pub const GETRULE: u8 = 7;
    pub const DELRULE: u8 = 8;
    pub const NEWSET: u8 = 9;
    pub const GETSET: u8 = 10;
    pub const DELSET: u8 = 11;
    pub const NEWSETELEM: u8 = 12;
    pub const GETSETELEM: u8 = 13;
    pub const DELSETELEM: u8 = 14;
}

/// A buffer of netlink attributes.
#[derive(Debug, Default, Clone)]
pub struct Attrs {
    buf: Vec<u8>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Attrs {
    pub fn new() -> Self {
        Attrs::default()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).expect("attribute fits").to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn put_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    pub fn put_be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    pub fn put_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v)
    }

    /// A nested attribute whose contents `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        let mut inner = Attrs {
            buf: std::mem::take(&mut self.buf),
        };
        f(&mut inner);
        self.buf = inner.buf;
        let len = u16::try_from(self.buf.len() - start).expect("nested attribute fits");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Append already encoded attributes as the contents of a nested attribute.
    pub fn nest_raw(&mut self, ty: u16, inner: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + inner.len()).expect("nested attribute fits");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self.buf.extend_from_slice(inner);
        self
    }
}

/// Iterate over the attributes in `buf`: (type without flags, payload).
pub fn parse_attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[off], buf[off + 1]]));
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let data = &buf[off + 4..off + len];
        off += align4(len);
        Some((ty, data))
    })
}

/// The first attribute of type `ty` in `buf`.
pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    parse_attrs(buf).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

pub fn attr_str(buf: &[u8], ty: u16) -> Option<String> {
    let d = attr(buf, ty)?;
    let d = d.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(d).into_owned())
}

pub fn attr_be32(buf: &[u8], ty: u16) -> Option<u32> {
    let d = attr(buf, ty)?;
    Some(u32::from_be_bytes(d.get(..4)?.try_into().ok()?))
}

pub fn attr_be64(buf: &[u8], ty: u16) -> Option<u64> {
    let d = attr(buf, ty)?;
    Some(u64::from_be_bytes(d.get(..8)?.try_into().ok()?))
}

/// One nf_tables message of a transaction.
#[derive(Debug, Clone)]
pub struct Message {
    /// The table family (`FAMILY_IP`, `FAMILY_BRIDGE`, ...).
    pub family: u8,
    /// The nf_tables message type (`msg::NEWRULE`, ...).
    pub kind: u8,
    /// Extra netlink flags (`NLM_F_CREATE`, ...).
    pub flags: u16,
    /// The message's attributes.
    pub attrs: Attrs,
}

fn push_header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

fn patch_len(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).expect("message fits");
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// An open `NETLINK_NETFILTER` socket.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn os_err(what: &str) -> NftError {
    NftError::Netlink {
        what: what.to_string(),
        source: io::Error::last_os_error(),
    }
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` outlives the call and the length matches its type.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Socket {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(os_err("open a netfilter netlink socket"));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (kernel picks the
        // port id).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(os_err("bind the netfilter netlink socket"));
        }
        let raw = fd.as_raw_fd();
        // Errors carry a human-readable reason (extended ACK) and no copy of the request.
        let _ = setsockopt_int(raw, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
        let _ = setsockopt_int(raw, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        // Room for the errors of a large transaction.
        if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20).is_err() {
            let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        }
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and the length matches its type.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let seq = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() & 0xffff)
                .unwrap_or(1),
        )
        .unwrap_or(1)
            << 16;
        Ok(Socket {
            fd,
            seq,
            buf: vec![0; 256 << 10],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, data: &[u8]) -> Result<(), NftError> {
        let raw = self.fd.as_raw_fd();
        // The whole transaction goes in one datagram: make the send buffer big enough.
        let need = i32::try_from(data.len() + (64 << 10)).unwrap_or(i32::MAX);
        if data.len() > (200 << 10)
            && setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, need).is_err()
        {
            let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, need);
        }
        // SAFETY: sockaddr_nl is plain data; all-zero addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `data` and `addr` are valid for the duration of the call.
            let r = unsafe {
                libc::sendto(
                    raw,
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    std::ptr::from_ref(&addr).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NftError::Netlink {
                    what: format!("send {} bytes to nf_tables", data.len()),
                    source: e,
                });
            }
        }
    }

    /// Receive one datagram; `Ok(None)` when `nonblock` and nothing is queued.
    fn recv(&mut self, nonblock: bool) -> Result<Option<usize>, NftError> {
        let flags = if nonblock { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: `self.buf` is valid for writes of its length.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    flags,
                )
            };
            if r >= 0 {
                return Ok(Some(usize::try_from(r).unwrap_or(0)));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if nonblock => return Ok(None),
                _ => {
                    return Err(NftError::Netlink {
                        what: "receive from nf_tables".into(),
                        source: e,
                    })
                }
            }
        }
    }

    /// Run `msgs` as one transaction. `describe(i)` names message `i` in an error.
    pub fn transact(
        &mut self,
        msgs: &[Message],
        describe: &dyn Fn(usize) -> String,
    ) -> Result<(), NftError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let total: usize = msgs.iter().map(|m| 20 + m.attrs.len()).sum::<usize>() + 40;
        let mut out = Vec::with_capacity(total);
        let begin_seq = self.next_seq();
        let s = push_header(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin_seq,
            0,
            SUBSYS,
        );
        patch_len(&mut out, s);
        let first_seq = begin_seq.wrapping_add(1);
        let mut last_seq = begin_seq;
        for (i, m) in msgs.iter().enumerate() {
            last_seq = self.next_seq();
            let mut flags = m.flags | NLM_F_REQUEST;
            if i + 1 == msgs.len() {
                flags |= NLM_F_ACK;
            }
            let s = push_header(
                &mut out,
                (SUBSYS << 8) | u16::from(m.kind),
                flags,
                last_seq,
                m.family,
                0,
            );
            out.extend_from_slice(m.attrs.bytes());
            patch_len(&mut out, s);
        }
        let end_seq = self.next_seq();
        let s = push_header(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            SUBSYS,
        );
        patch_len(&mut out, s);
        self.send(&out)?;
        drop(out);

        // The kernel answers while processing the send, so everything is queued now;
        // the blocking read only guards against a kernel that would answer later.
        let mut errors: Vec<(u32, i32, String)> = Vec::new();
        let mut acked = false;
        let mut got_any = false;
        while let Some(n) = self.recv(got_any)? {
            got_any = true;
            for (ty, flags, seq, payload) in split_messages(&self.buf[..n]) {
                if ty != NLMSG_ERROR {
                    continue;
                }
                let (code, text) = parse_error(flags, payload);
                if code != 0 {
                    errors.push((seq, code, text));
                } else if seq == last_seq {
                    acked = true;
                }
            }
            if acked {
                // Drain anything else already queued without blocking.
                while let Some(n) = self.recv(true)? {
                    for (ty, flags, seq, payload) in split_messages(&self.buf[..n]) {
                        if ty == NLMSG_ERROR {
                            let (code, text) = parse_error(flags, payload);
                            if code != 0 {
                                errors.push((seq, code, text));
                            }
                        }
                    }
                }
                break;
            }
        }
        if let Some((seq, code, text)) = errors.first() {
            let what = if *seq >= first_seq && *seq <= last_seq {
                describe(usize::try_from(seq - first_seq).unwrap_or(0))
            } else {
                "commit of the transaction".to_string()
            };
            let mut msg = format!("{what}: {}", io::Error::from_raw_os_error(-code));
            if !text.is_empty() {
                msg.push_str(&format!(" ({text})"));
            }
            if errors.len() > 1 {
                msg.push_str(&format!(" (and {} more errors)", errors.len() - 1));
            }
            return Err(NftError::Nft(msg));
        }
        if !acked {
            return Err(NftError::Nft(
                "nf_tables did not acknowledge the transaction".into(),
            ));
        }
        Ok(())
    }

    /// A dump request: the attributes of every answer. Repeated (up to 3 times) when the
    /// kernel reports that a change interrupted it.
    pub fn dump(&mut self, family: u8, kind: u8, attrs: &Attrs) -> Result<Vec<Vec<u8>>, NftError> {
        for _ in 0..3 {
            let mut out = Vec::new();
            if self.dump_once(family, kind, attrs, &mut |m| out.push(m.to_vec()))? {
                return Ok(out);
            }
        }
        Err(NftError::Nft(
            "the table kept changing while it was being read".into(),
        ))
    }

    /// Returns false when the dump was interrupted.
    fn dump_once(
        &mut self,
        family: u8,
        kind: u8,
        attrs: &Attrs,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, NftError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        let s = push_header(
            &mut out,
            (SUBSYS << 8) | u16::from(kind),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
        );
        out.extend_from_slice(attrs.bytes());
        patch_len(&mut out, s);
        self.send(&out)?;
        let mut intr = false;
        loop {
            let n = self.recv(false)?.unwrap_or(0);
            if n == 0 {
                return Err(NftError::Nft("nf_tables closed a dump".into()));
            }
            let mut done = false;
            let mut err = None;
            for (ty, flags, mseq, payload) in split_messages(&self.buf[..n]) {
                if mseq != seq {
                    continue;
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    intr = true;
                }
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let (code, text) = parse_error(flags, payload);
                        if code != 0 {
                            err = Some((code, text));
                        }
                        done = true;
                    }
                    _ => {
                        if payload.len() >= 4 {
                            each(&payload[4..]);
                        }
                    }
                }
            }
            if let Some((code, text)) = err {
                if code == -libc::ENOENT {
                    return Ok(true);
                }
                return Err(NftError::Nft(format!(
                    "dump: {} {text}",
                    io::Error::from_raw_os_error(-code)
                )));
            }
            if done {
                return Ok(!intr);
            }
        }
    }
}

/// The comment in a rule's user data (nft's `NFTNL_UDATA_RULE_COMMENT` TLV).
pub fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= udata.len() {
        let ty = udata[off];
        let len = usize::from(udata[off + 1]);
        let v = udata.get(off + 2..off + 2 + len)?;
        if ty == 0 {
            let v = v.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        off += 2 + len;
    }
    None
}

/// Encode `comment` (at most 254 bytes) as rule user data.
pub fn comment_udata(comment: &str) -> Vec<u8> {
    let mut v = vec![0u8, u8::try_from(comment.len() + 1).expect("short comment")];
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// Split a datagram into messages: (type, flags, seq, payload after the header).
fn split_messages(buf: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
        out.push((ty, flags, seq, &buf[off + 16..off + len]));
        off += align4(len);
    }
    out
}

/// The error code of an `NLMSG_ERROR` payload and the extended-ACK message, if any.
fn parse_error(flags: u16, payload: &[u8]) -> (i32, String) {
    let Some(code) = payload.get(..4) else {
        return (-libc::EIO, String::new());
    };
    let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
    let mut text = String::new();
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 20 {
        // With NETLINK_CAP_ACK only the original header (16 bytes) follows the code.
        let orig_len = if flags & 0x100 != 0 {
            16 // NLM_F_CAPPED
        } else {
            u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes")) as usize
        };
        if let Some(tlvs) = payload.get(4 + align4(orig_len)..) {
            if let Some(s) = attr_str(tlvs, NLMSGERR_ATTR_MSG) {
                text = s;
            }
        }
    }
    (code, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut a = Attrs::new();
        a.put_str(1, "t").put_be32(2, 7).nest(3, |n| {
            n.put(1, &[1, 2, 3]);
        });
        let v: Vec<(u16, Vec<u8>)> = parse_attrs(a.bytes())
            .map(|(t, d)| (t, d.to_vec()))
            .collect();
        assert_eq!(v.len(), 3);
        assert_eq!(attr_str(a.bytes(), 1).as_deref(), Some("t"));
        assert_eq!(attr_be32(a.bytes(), 2), Some(7));
        let inner = attr(a.bytes(), 3).unwrap();
        assert_eq!(attr(inner, 1), Some(&[1u8, 2, 3][..]));
        assert_eq!(a.len() % 4, 0);
    }
}
