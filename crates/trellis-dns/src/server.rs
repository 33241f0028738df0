//! The UDP + TCP server: cluster names from the current [`Zone`], everything else
//! forwarded.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::iter;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;

use crate::forward::Forwarder;
use crate::records::{Lookup, Zone};
use crate::{DnsError, Records, FORWARD_TIMEOUT, TTL};

/// How long a TCP client may stay silent before its connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How many CNAMEs inside the domain are followed before giving up.
const MAX_CNAME_CHAIN: usize = 8;

/// The node's cluster DNS server (UDP and TCP on one address). It runs on a thread of
/// its own (a single-threaded tokio runtime): the agent's work does not delay answers,
/// and on a small node one thread answers more queries per second than several that
/// hand requests to each other. Dropping it stops it.
pub struct DnsServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Dropped (or sent on): the server thread stops.
    stop: oneshot::Sender<()>,
    /// Closed when the server thread has stopped.
    stopped: oneshot::Receiver<()>,
}

impl fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .field("domain", &self.shared.zone().origin.to_string())
            .field("forwarder", &self.shared.forwarder)
            .finish_non_exhaustive()
    }
}

/// What the request tasks share with the [`DnsServer`].
#[derive(Debug)]
struct Shared {
    /// The current records: swapped whole, read by cloning the `Arc`.
    zone: RwLock<Arc<Zone>>,
    forwarder: Forwarder,
}

impl Shared {
    fn zone(&self) -> Arc<Zone> {
        self.zone
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl DnsServer {
    /// Serves DNS over UDP and TCP on `bind` (port 0: a free port, the same for both;
    /// see [`DnsServer::local_addr`]) on the server's own thread: names under `domain`
    /// (e.g. `cluster.local`) from the current [`Records`] (none until
    /// [`DnsServer::set_records`]), every other query forwarded to `upstreams` in order
    /// (`SERVFAIL` when none answers within [`FORWARD_TIMEOUT`]). An upstream equal to
    /// the bound address is dropped (it would loop).
    pub async fn start(
        bind: SocketAddr,
        domain: &str,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsServer, DnsError> {
        let sockets = DnsServer::bind(bind)?;
        DnsServer::start_on(sockets, domain, upstreams).await
    }

    /// The UDP socket and TCP listener [`DnsServer::start`] binds, for a caller that
    /// binds them somewhere else first (inside another network namespace).
    pub fn bind(
        bind: SocketAddr,
    ) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
        bind_pair(bind)
    }

    /// [`DnsServer::start`] on sockets from [`DnsServer::bind`].
    pub async fn start_on(
        (udp, tcp): (std::net::UdpSocket, std::net::TcpListener),
        domain: &str,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsServer, DnsError> {
        let bind = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let records = Records::try_new(domain)?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr: bind,
            source,
        })?;
        let upstreams: Vec<SocketAddr> = upstreams
            .into_iter()
            .filter(|u| {
                let own = *u == local_addr;
                if own {
                    tracing::warn!(upstream = %u, "upstream is this server; dropped");
                }
                !own
            })
            .collect();
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(records.compile())),
            forwarder: Forwarder::new(upstreams, FORWARD_TIMEOUT),
        });
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = oneshot::channel::<io::Result<()>>();
        let handler = Handler(shared.clone());
        std::thread::Builder::new()
            .name("trellis-dns".into())
            .spawn(move || serve(handler, udp, tcp, ready_tx, stop_rx, stopped_tx))
            .map_err(DnsError::Thread)?;
        match ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DnsError::Thread(e)),
            Err(_) => {
                return Err(DnsError::Thread(io::Error::other(
                    "the DNS server thread ended at start",
                )))
            }
        }
        tracing::info!(%local_addr, domain, "cluster DNS serving");
        Ok(DnsServer {
            shared,
            local_addr,
            stop,
            stopped,
        })
    }

    /// The address served (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the records at once: a query sees either the old set or the new one, never
    /// a mix. The domain served is the new set's ([`Records::new`]'s `domain`).
    pub fn set_records(&self, r: Records) {
        let zone = Arc::new(r.compile());
        *self
            .shared
            .zone
            .write()
            .unwrap_or_else(PoisonError::into_inner) = zone;
    }

    /// Stops serving and waits for the server thread to end (dropping the server stops
    /// it without waiting).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.stopped.await;
    }
}

/// The server thread: serves on a single-threaded runtime until `stop` is sent or
/// dropped.
fn serve(
    handler: Handler,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    ready: oneshot::Sender<io::Result<()>>,
    stop: oneshot::Receiver<()>,
    _stopped: oneshot::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let sockets = UdpSocket::from_std(udp).and_then(|u| Ok((u, TcpListener::from_std(tcp)?)));
        let (udp, tcp) = match sockets {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
        let _ = ready.send(Ok(()));
        let _ = stop.await;
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "DNS server stopped with an error");
        }
    });
}

/// A UDP socket and a TCP listener on the same address (and port, when `bind` asks for
/// any port), non-blocking.
fn bind_pair(bind: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let udp_err = |source| DnsError::Bind {
        proto: "udp",
        addr: bind,
        source,
    };
    let tcp_err = |source| DnsError::Bind {
        proto: "tcp",
        addr: bind,
        source,
    };
    let mut attempts = 0;
    let (udp, tcp) = loop {
        let udp = std::net::UdpSocket::bind(bind).map_err(udp_err)?;
        let addr = udp.local_addr().map_err(udp_err)?;
        match std::net::TcpListener::bind(addr) {
            Ok(tcp) => break (udp, tcp),
            // The free UDP port was taken for TCP: try another one.
            Err(e) if bind.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && attempts < 16 => {
                attempts += 1;
            }
            Err(e) => return Err(tcp_err(e)),
        }
    };
    udp.set_nonblocking(true).map_err(udp_err)?;
    tcp.set_nonblocking(true).map_err(tcp_err)?;
    Ok((udp, tcp))
}

/// Answers one request.
#[derive(Debug, Clone)]
struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        match self.respond(request, &mut response_handle).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: &mut R,
    ) -> Result<ResponseInfo, NetError> {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, resp_edns.as_ref());
        let error = |mut meta: Metadata, code| {
            meta.response_code = code;
            meta
        };
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            let meta = error(meta, ResponseCode::BADVERS);
            return handle.send_response(builder.build_no_records(meta)).await;
        }
        if request.metadata.op_code != OpCode::Query {
            let meta = error(meta, ResponseCode::NotImp);
            return handle.send_response(builder.build_no_records(meta)).await;
        }
        let [q] = request.queries.queries() else {
            let meta = error(meta, ResponseCode::FormErr);
            return handle.send_response(builder.build_no_records(meta)).await;
        };

        let zone = self.0.zone();
        // A service's address, reversed: answered here; other reverse names go upstream.
        if let Some(ptrs) = zone.reverse(q.name()) {
            meta.authoritative = true;
            let spelled = q.original().name();
            let answers: Vec<Cow<'_, Record>> =
                if matches!(q.query_type(), RecordType::PTR | RecordType::ANY) {
                    ptrs.iter().map(|r| respelled(r, spelled)).collect()
                } else {
                    Vec::new()
                };
            let r = builder.build(
                meta,
                answers.iter().map(AsRef::as_ref),
                iter::empty(),
                iter::empty(),
                iter::empty(),
            );
            return handle.send_response(r).await;
        }
        if !zone.contains(q.name()) {
            let cd = request.metadata.checking_disabled;
            return match self.0.forwarder.forward(q.original(), cd).await {
                Some(m) => {
                    meta.response_code = m.metadata.response_code;
                    meta.truncation = m.metadata.truncation;
                    let r = builder.build(
                        meta,
                        &m.answers,
                        &m.authorities,
                        iter::empty(),
                        &m.additionals,
                    );
                    handle.send_response(r).await
                }
                None => {
                    let meta = error(meta, ResponseCode::ServFail);
                    handle.send_response(builder.build_no_records(meta)).await
                }
            };
        }

        meta.authoritative = true;
        if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
            let meta = error(meta, ResponseCode::Refused);
            return handle.send_response(builder.build_no_records(meta)).await;
        }
        let qtype = q.query_type();
        let mut answers: Vec<Cow<'_, Record>> = Vec::new();
        let mut additionals: Vec<&Record> = Vec::new();
        let mut soa = None;
        // The name looked up (the query's, then CNAME targets inside the domain), with
        // its spelling for the answers' owner names.
        let mut name = q.name().clone();
        let mut spelled: Name = q.original().name().clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            match zone.lookup(&name, qtype) {
                Lookup::Found {
                    answers: found,
                    additionals: extra,
                } => {
                    answers.extend(found.into_iter().map(|r| respelled(r, &spelled)));
                    additionals.extend(extra);
                    break;
                }
                Lookup::Pod(ip) => {
                    answers.push(Cow::Owned(Record::from_rdata(
                        spelled.clone(),
                        TTL,
                        RData::A(A(ip)),
                    )));
                    break;
                }
                Lookup::NoData => {
                    soa = Some(&zone.soa);
                    break;
                }
                Lookup::NxDomain => {
                    meta.response_code = ResponseCode::NXDomain;
                    soa = Some(&zone.soa);
                    break;
                }
                Lookup::Alias(cname, target) => {
                    answers.push(respelled(cname, &spelled));
                    if zone.contains(&LowerName::new(target)) {
                        name = LowerName::new(target);
                        spelled = target.clone();
                        continue;
                    }
                    // Outside the domain: follow it upstream for the client (stub
                    // resolvers do not); without an answer the CNAME alone goes back.
                    let query = Query::query(target.clone(), qtype);
                    let cd = request.metadata.checking_disabled;
                    if let Some(m) = self.0.forwarder.forward(&query, cd).await {
                        if m.metadata.response_code == ResponseCode::NXDomain {
                            meta.response_code = ResponseCode::NXDomain;
                        }
                        answers.extend(m.answers.into_iter().map(Cow::Owned));
                    }
                    break;
                }
            }
        }
        let r = builder.build(
            meta,
            answers.iter().map(AsRef::as_ref),
            iter::empty(),
            soa,
            additionals,
        );
        handle.send_response(r).await
    }
}

/// `r` with the owner name spelled as the client asked, when it differs only in case.
fn respelled<'z>(r: &'z Record, spelled: &Name) -> Cow<'z, Record> {
    if r.name.eq_case(spelled) {
        Cow::Borrowed(r)
    } else {
        let mut r = r.clone();
        r.name = spelled.clone();
        Cow::Owned(r)
    }
}
