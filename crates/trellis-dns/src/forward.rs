//! Forwarding to the node's resolvers: one query per upstream in turn over UDP (a fresh
//! socket and a random id each), TCP when the answer is truncated, all within
//! [`FORWARD_TIMEOUT`](crate::FORWARD_TIMEOUT).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

/// The UDP payload size we advertise upstream (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

/// The resolvers (`nameserver` lines, port 53) of a resolv.conf file, in order. A missing
/// or unreadable file, and lines that are not an IP address (or a link-local IPv6 address
/// with a zone, which needs an interface), give none.
pub fn upstreams_from_resolv_conf(path: impl AsRef<Path>) -> Vec<SocketAddr> {
    let path = path.as_ref();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read resolv.conf");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        match addr.parse::<IpAddr>() {
            Ok(ip) => {
                let sa = SocketAddr::new(ip, 53);
                if !out.contains(&sa) {
                    out.push(sa);
                }
            }
            Err(_) => {
                tracing::warn!(path = %path.display(), nameserver = addr, "nameserver ignored")
            }
        }
    }
    out
}

/// Sends queries outside the cluster domain to the upstream resolvers.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Forwarder { upstreams, timeout }
    }

    /// The upstreams' answer to `query`: the first NOERROR / NXDOMAIN (or other final)
    /// answer, trying the upstreams in order; else the last SERVFAIL / REFUSED answer;
    /// `None` when no upstream answered in time.
    pub(crate) async fn forward(&self, query: &Query, checking_disabled: bool) -> Option<Message> {
        let deadline = Instant::now() + self.timeout;
        let mut fallback = None;
        for (i, &upstream) in self.upstreams.iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // An equal share of what is left for each upstream not tried yet.
            let share = (deadline - now) / (self.upstreams.len() - i) as u32;
            let outcome = timeout(share, exchange(upstream, query, checking_disabled))
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
            match outcome {
                Ok(m) => match m.metadata.response_code {
                    ResponseCode::ServFail
                    | ResponseCode::Refused
                    | ResponseCode::NotImp
                    | ResponseCode::FormErr => fallback = Some(m),
                    _ => return Some(m),
                },
                Err(e) => tracing::debug!(%upstream, query = %query, error = %e, "upstream failed"),
            }
        }
        fallback
    }
}

/// One query to one upstream: UDP, then TCP when the answer is truncated.
async fn exchange(upstream: SocketAddr, query: &Query, cd: bool) -> io::Result<Message> {
    let mut msg = Message::query(); // random id
    msg.metadata.recursion_desired = true;
    msg.metadata.checking_disabled = cd;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    msg.set_edns(edns);
    let bytes = msg.to_vec().map_err(io::Error::other)?;
    let id = msg.metadata.id;

    let answer = udp_exchange(upstream, &bytes, id, query).await?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    tcp_exchange(upstream, &bytes, id, query).await
}

/// Whether `m` answers our query `id` for `q`.
fn answers(m: &Message, id: u16, q: &Query) -> bool {
    m.metadata.id == id
        && m.queries.len() == 1
        && m.queries[0].name() == q.name()
        && m.queries[0].query_type() == q.query_type()
        && m.queries[0].query_class() == q.query_class()
}

async fn udp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    q: &Query,
) -> io::Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone else.
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Anything else (a stale or forged answer) is ignored; the timeout bounds the wait.
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if answers(&m, id, q) {
                return Ok(m);
            }
        }
    }
}

async fn tcp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    q: &Query,
) -> io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    stream.write_all(&out).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let m = Message::from_vec(&buf).map_err(io::Error::other)?;
    if answers(&m, id, q) {
        Ok(m)
    } else {
        Err(io::Error::other("TCP answer does not match the query"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(
            &p,
            "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver  2001:db8::1 # v6\n\
             nameserver fe80::1%eth0\nnameserver not-an-ip\n;nameserver 192.0.2.9\n\
             nameserver 192.0.2.1\noptions ndots:5\n",
        )
        .unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(&p),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert!(upstreams_from_resolv_conf(dir.path().join("missing")).is_empty());
    }
}
