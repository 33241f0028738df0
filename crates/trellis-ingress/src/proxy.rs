//! The request path: look the request up in the current table, apply the route's rate
//! limit, redirects and header changes, pick an endpoint (session cookie, weights,
//! round-robin over healthy endpoints) and forward to it over a pooled connection
//! (HTTP/1.1, or cleartext HTTP/2 for `appProtocol: kubernetes.io/h2c`), retrying
//! another endpoint after a failed connect (and after a listed 5xx for idempotent
//! requests). WebSocket upgrades are spliced once both sides said 101.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::health::Health;
use crate::ratelimit::RateLimiter;
use crate::table::{Action, Backend, Lookup, RequestView, Route, Table, Upstream};

/// The upstream connection pools of one worker thread: each worker keeps its own, so a
/// request never waits on another thread's pool lock or connection task.
struct Clients {
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

impl Clients {
    fn new(connect_timeout: Duration) -> Clients {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(connect_timeout));
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(60))
            .set_host(false)
            .http1_writev(false);
        let http1 = b.build(conn.clone());
        b.http2_only(true);
        let h2c = b.build(conn);
        Clients { http1, h2c }
    }
}

thread_local! {
    static CLIENTS: std::cell::OnceCell<Clients> = const { std::cell::OnceCell::new() };
}

/// Any error a body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of everything the proxy sends and forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// Bodies up to this size are kept, so a request can go to another endpoint after a
/// failed connect.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// Settings of the request path.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time to connect to an endpoint.
    pub connect_timeout: Duration,
    /// The HTTPS listener's port (for redirects to HTTPS); `None`: 443.
    pub https_port: Option<u16>,
    /// Write a JSON access log line per request to stdout.
    pub access_log: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(2),
            https_port: None,
            access_log: true,
        }
    }
}

/// What the listener knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// The proxy: the current table and the shared state of the request path.
#[derive(Debug)]
pub struct Proxy {
    table: ArcSwap<Table>,
    /// Endpoint health (shared with the table builder).
    pub health: Arc<Health>,
    limiter: RateLimiter,
    settings: Settings,
    /// Connections and spliced upgrades alive (what a drain waits for).
    pub live: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when draining: HTTP/1 responses say `Connection: close`, so clients leave
    /// after the answer instead of meeting a closed idle connection.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

fn full(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty_body() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_headers(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed.iter().chain(HOP.iter()) {
        h.remove(n);
    }
    // `TE: trailers` is what gRPC needs end to end; anything else goes.
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request's host (lower-case, no port) and port, from the URI (HTTP/2) or `Host`.
fn host_of(req: &Request<Incoming>) -> (String, Option<u16>) {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let (h, p) = match raw.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || raw.starts_with('[') => {
            (h.to_string(), p.parse().ok())
        }
        _ => (raw.clone(), None),
    };
    (h.to_ascii_lowercase(), p)
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The request as it can be sent (again): head and, when kept, the body.
struct Outgoing {
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    headers: HeaderMap,
    body: Option<Body>,
    kept: Option<Bytes>,
}

impl Outgoing {
    fn replayable(&self) -> bool {
        self.body.is_none()
    }

    fn build(&mut self, up: &Upstream) -> Request<Body> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(up.authority.clone());
        uri.path_and_query = Some(self.path_and_query.clone());
        let uri = Uri::from_parts(uri).expect("a valid URI");
        let body = match self.body.take() {
            Some(b) => b,
            None => match &self.kept {
                Some(b) => Full::new(b.clone()).map_err(|e| match e {}).boxed(),
                None => empty_body(),
            },
        };
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = uri;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// One access log line.
struct LogLine<'a> {
    start: Instant,
    info: &'a ConnInfo,
    method: &'a Method,
    host: &'a str,
    path: &'a str,
    version: Version,
}

impl LogLine<'_> {
    fn write(&self, status: u16, route: Option<&str>, upstream: Option<SocketAddr>) {
        use std::io::Write as _;
        let line = serde_json::json!({
            "time": trellis_api::objects::format_rfc3339(SystemTime::now()),
            "client": self.info.peer.ip().to_string(),
            "method": self.method.as_str(),
            "host": self.host,
            "path": self.path,
            "proto": format!("{:?}", self.version),
            "tls": self.info.tls,
            "status": status,
            "duration_ms": self.start.elapsed().as_secs_f64() * 1000.0,
            "route": route,
            "upstream": upstream.map(|u| u.to_string()),
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

impl Proxy {
    /// A proxy with an empty table.
    pub fn new(settings: Settings) -> Proxy {
        Proxy {
            table: ArcSwap::from_pointee(Table::default()),
            health: Arc::new(Health::default()),
            limiter: RateLimiter::default(),
            settings,
            live: Arc::default(),
            draining: Arc::default(),
        }
    }

    /// Swap in a new table (requests under way keep theirs).
    pub fn set_table(&self, t: Table) {
        self.table.store(Arc::new(t));
        self.health.prune();
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Serve one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, info: ConnInfo) -> Response<Body> {
        let table = self.table.load_full();
        let (host, port) = host_of(&req);
        let start = Instant::now();
        let log_on = self.settings.access_log;
        let path = if log_on {
            req.uri().path().to_string()
        } else {
            String::new()
        };
        let method = req.method().clone();
        let version = req.version();
        let (mut resp, route, upstream) = self.route(&table, req, &host, port, &info).await;
        if version < Version::HTTP_2 && self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if log_on {
            let log = LogLine {
                start,
                info: &info,
                method: &method,
                host: &host,
                path: &path,
                version,
            };
            log.write(resp.status().as_u16(), route.as_deref(), upstream);
        }
        resp
    }

    async fn route(
        &self,
        table: &Table,
        req: Request<Incoming>,
        host: &str,
        port: Option<u16>,
        info: &ConnInfo,
    ) -> (Response<Body>, Option<Arc<str>>, Option<SocketAddr>) {
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let (action, route): (&Arc<Action>, Option<&Route>) = match table.route(host, &view) {
            Lookup::Route(r) => (&r.action, Some(r)),
            Lookup::Default(a) => (a, None),
            Lookup::NotFound => {
                let msg = format!(
                    "404 Not Found: no route for host {host:?} and path {:?} (trellis ingress)\n",
                    req.uri().path()
                );
                return (full(StatusCode::NOT_FOUND, msg), None, None);
            }
        };
        let source = Some(action.source.clone());
        if let Some(rps) = action.rate_limit {
            if !self.limiter.allow(action.id, info.peer.ip(), rps) {
                let mut r = full(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "429 Too Many Requests: more than {rps} requests per second from {}\n",
                        info.peer.ip()
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return (r, source, None);
            }
        }
        if action.ssl_redirect && !info.tls {
            let port = self.settings.https_port.filter(|p| *p != 443);
            let loc = format!(
                "https://{host}{}{}",
                port.map(|p| format!(":{p}")).unwrap_or_default(),
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            return (redirect(StatusCode::PERMANENT_REDIRECT, &loc), source, None);
        }
        if let Some(rd) = &action.redirect {
            let scheme = rd.scheme.clone().unwrap_or_else(|| {
                if info.tls {
                    "https".into()
                } else {
                    "http".into()
                }
            });
            let port = match (rd.port, &rd.scheme) {
                (Some(p), _) => Some(p),
                (None, Some(_)) => None,
                (None, None) => Some(port.unwrap_or(info.local.port())),
            };
            let default_port = if scheme == "https" { 443 } else { 80 };
            let path = match &rd.path {
                Some(c) => c.apply(req.uri().path(), route.and_then(Route::prefix)),
                None => req.uri().path().to_string(),
            };
            let loc = format!(
                "{scheme}://{}{}{path}{}",
                rd.hostname.as_deref().unwrap_or(host),
                port.filter(|p| *p != default_port)
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default(),
                req.uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            );
            let status = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::FOUND);
            return (redirect(status, &loc), source, None);
        }
        let (resp, up) = self.forward(action, route, req, host, info).await;
        (resp, source, up)
    }

    async fn forward(
        &self,
        action: &Action,
        route: Option<&Route>,
        mut req: Request<Incoming>,
        host: &str,
        info: &ConnInfo,
    ) -> (Response<Body>, Option<SocketAddr>) {
        let Some(first) = action.pick_backend() else {
            return (
                full(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("500: route {} has no backend\n", action.source),
                ),
                None,
            );
        };
        let now = self.health.now_ms();
        let session_cookie: Option<String> = action
            .session
            .as_ref()
            .and_then(|s| cookie(req.headers(), &s.cookie))
            .map(str::to_string);
        let pinned: Option<(&Arc<Backend>, &Upstream)> =
            session_cookie.as_deref().and_then(|key| {
                action
                    .backends
                    .iter()
                    .find_map(|(_, b)| b.by_session(key, now).map(|u| (b, u)))
            });
        let backend = pinned.map_or(first, |(b, _)| b);
        if backend.upstreams.is_empty() {
            let why = backend.missing.as_deref().unwrap_or("no endpoint");
            return (
                full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("503 Service Unavailable: {why} (route {})\n", action.source),
                ),
                None,
            );
        }

        // The request head as the backend gets it.
        let upgrade = is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        strip_hop_headers(&mut headers);
        if let Some(v) = upgrade_value.filter(|_| upgrade) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, v);
        }
        let orig_host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let client_ip = info.peer.ip().to_string();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {client_ip}"),
            None => client_ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        if let Ok(v) = HeaderValue::from_str(&client_ip) {
            headers.insert("x-real-ip", v);
        }
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if info.tls { "https" } else { "http" }),
        );
        if let Some(h) = &orig_host {
            headers.insert("x-forwarded-host", h.clone());
        }
        let host_header = match &action.rewrite_host {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => orig_host.or_else(|| HeaderValue::from_str(host).ok()),
        };
        if let Some(h) = host_header {
            headers.insert(header::HOST, h);
        }
        if let Some(c) = &action.request_headers {
            c.apply(&mut headers);
        }
        let path_and_query = match (&action.rewrite_path, parts.uri.path_and_query()) {
            (None, Some(pq)) => pq.clone(),
            (None, None) => http::uri::PathAndQuery::from_static("/"),
            (Some(c), _) => {
                let path = c.apply(parts.uri.path(), route.and_then(Route::prefix));
                let pq = match parts.uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                match pq.parse() {
                    Ok(pq) => pq,
                    Err(e) => {
                        return (
                            full(
                                StatusCode::BAD_REQUEST,
                                format!("400: rewritten path {pq:?}: {e}\n"),
                            ),
                            None,
                        )
                    }
                }
            }
        };
        let (body, kept) = if body.is_end_stream() {
            (None, None)
        } else if body.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT) {
            match body.collect().await {
                Ok(b) => (None, Some(b.to_bytes())),
                Err(e) => {
                    return (
                        full(
                            StatusCode::BAD_REQUEST,
                            format!("400: reading the request body: {e}\n"),
                        ),
                        None,
                    )
                }
            }
        } else {
            (Some(body.map_err(BoxError::from).boxed()), None)
        };
        let mut out = Outgoing {
            method: parts.method.clone(),
            path_and_query,
            headers,
            body,
            kept,
        };

        let whole = self.attempts(action, backend, pinned.map(|(_, u)| u), &mut out, upgrade);
        let result = match action.request_timeout {
            Some(t) => match tokio::time::timeout(t, whole).await {
                Ok(r) => r,
                Err(_) => Err((
                    full(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "504 Gateway Timeout: no answer within {t:?} (route {})\n",
                            action.source
                        ),
                    ),
                    None,
                )),
            },
            None => whole.await,
        };
        let (mut resp, up) = match result {
            Ok(x) => x,
            Err((r, up)) => return (r, up),
        };
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, resp.status())
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let live = self.live.clone();
            live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b))
                            .await;
                }
                live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
            let (p, _) = resp.into_parts();
            return (Response::from_parts(p, empty_body()), Some(up));
        }
        let (mut p, body) = resp.into_parts();
        strip_hop_headers(&mut p.headers);
        if let Some(c) = &action.response_headers {
            c.apply(&mut p.headers);
        }
        if let Some(s) = &action.session {
            let key = backend
                .upstreams
                .iter()
                .find(|u| u.addr == up)
                .map(|u| u.session.as_str());
            if let Some(key) = key.filter(|k| session_cookie.as_deref() != Some(*k)) {
                let max_age = s
                    .max_age
                    .map(|a| format!("; Max-Age={a}"))
                    .unwrap_or_default();
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{}={key}; Path=/; HttpOnly{max_age}", s.cookie))
                {
                    p.headers.append(header::SET_COOKIE, v);
                }
            }
        }
        (
            Response::from_parts(p, body.map_err(BoxError::from).boxed()),
            Some(up),
        )
    }

    /// Send to endpoints of `backend` until one answers (or the retries are spent).
    async fn attempts(
        &self,
        action: &Action,
        backend: &Backend,
        pinned: Option<&Upstream>,
        out: &mut Outgoing,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, SocketAddr), (Response<Body>, Option<SocketAddr>)> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        // A failed connect always tries another endpoint (up to three in all).
        let max = 1 + action.retry.attempts.max(2) as usize;
        let retry_5xx = !upgrade && idempotent(&out.method) && !action.retry.codes.is_empty();
        let mut last: Option<(Response<Body>, Option<SocketAddr>)> = None;
        for attempt in 0..max {
            let now = self.health.now_ms();
            let up = match (attempt, pinned) {
                (0, Some(u)) => u,
                _ => match backend.pick(now, &tried) {
                    Some(u) if !tried.contains(&u.addr) => u,
                    _ => break,
                },
            };
            tried.push(up.addr);
            if attempt > 0 && !action.retry.backoff.is_zero() {
                tokio::time::sleep(action.retry.backoff).await;
            }
            let replayable = out.replayable();
            let req = out.build(up);
            let h2c = backend.h2c && !upgrade;
            let timeout = self.settings.connect_timeout;
            let sent = CLIENTS.with(|c| {
                let c = c.get_or_init(|| Clients::new(timeout));
                if h2c {
                    c.h2c.request(req)
                } else {
                    c.http1.request(req)
                }
            });
            let res = match action.backend_timeout {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        up.health.answered(504, self.health.now_ms());
                        return Err((
                            full(
                                StatusCode::GATEWAY_TIMEOUT,
                                format!(
                                    "504 Gateway Timeout: {} did not answer within {t:?}\n",
                                    up.addr
                                ),
                            ),
                            Some(up.addr),
                        ));
                    }
                },
                None => sent.await,
            };
            match res {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    up.health.answered(status, self.health.now_ms());
                    if retry_5xx
                        && action.retry.codes.contains(&status)
                        && attempt + 1 < max
                        && replayable
                    {
                        last = Some((
                            full(
                                resp.status(),
                                format!("{status} from {} (retried)\n", up.addr),
                            ),
                            Some(up.addr),
                        ));
                        if (attempt as u32) < action.retry.attempts {
                            continue;
                        }
                    }
                    return Ok((resp, up.addr));
                }
                // Nothing reached the endpoint (a failed connect), or an idempotent request
                // we can send again lost its connection (a pod going away closes its
                // keep-alive connections): try another endpoint.
                Err(e) if e.is_connect() || (replayable && idempotent(&out.method) && !upgrade) => {
                    if e.is_connect() {
                        up.health.connect_failed(self.health.now_ms());
                    } else {
                        up.health.answered(502, self.health.now_ms());
                    }
                    last = Some((
                        full(
                            StatusCode::BAD_GATEWAY,
                            format!("502 Bad Gateway: {} failed: {}\n", up.addr, error_chain(&e)),
                        ),
                        Some(up.addr),
                    ));
                    if !replayable {
                        break;
                    }
                }
                Err(e) => {
                    up.health.answered(502, self.health.now_ms());
                    return Err((
                        full(
                            StatusCode::BAD_GATEWAY,
                            format!("502 Bad Gateway: {} failed: {}\n", up.addr, error_chain(&e)),
                        ),
                        Some(up.addr),
                    ));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            (
                full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "503 Service Unavailable: no usable endpoint of {}\n",
                        backend.name
                    ),
                ),
                None,
            )
        }))
    }
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = full(status, format!("{} {location}\n", status.as_u16()));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
