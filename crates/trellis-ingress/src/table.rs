//! The routing table: a pure function of the Ingresses, HTTPRoutes, Services, Endpoints
//! and Secrets ([`build`]), and the lookup a request makes in it ([`Table::route`]).
//!
//! A table is immutable. The proxy swaps in a new one on every change; a request keeps the
//! table it started with to its end.
//!
//! Hosts: an exact name first, then wildcards (longest domain first), then rules without a
//! host. A request goes to the first host entry that exists for it, with no fallthrough
//! (as each `server` block of nginx). Within a host, routes are tried in the Gateway API's
//! precedence: Exact paths, then prefixes longest first, then regular expressions; then
//! routes with a method, more header matches, more query matches; then the older object,
//! then by namespace/name. Ingress's rules (longest path wins, Exact before Prefix at the
//! same length) are the same order. A request no route matches goes to the oldest
//! Ingress's `defaultBackend`, unless an HTTPRoute serves its host (then 404, as the
//! Gateway API says).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use trellis_api::objects::{
    Endpoint, HeaderModifier, HttpPathModifier, HttpRoute, HttpRouteRule, Ingress, IngressBackend,
    PathMatchType, PathModifierType, PathType, Secret, Service, ValueMatchType,
    RATE_LIMIT_ANNOTATION, SSL_REDIRECT_ANNOTATION, TLS_SECRET_TYPE,
};

use crate::health::Health;
use crate::tls::{certified_key, CertTable, CERT_KEY, KEY_KEY};

/// The `appProtocol` values that make the proxy speak cleartext HTTP/2 to endpoints.
pub const H2C_APP_PROTOCOLS: [&str; 2] = ["kubernetes.io/h2c", "h2c"];

/// What the table is built from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Every Ingress (those of another class are left out here).
    pub ingresses: &'a [&'a Ingress],
    /// Every HTTPRoute.
    pub routes: &'a [&'a HttpRoute],
    /// Every Service.
    pub services: &'a [&'a Service],
    /// Every Endpoint.
    pub endpoints: &'a [&'a Endpoint],
    /// Every Secret (only `kubernetes.io/tls` ones named by an Ingress are used).
    pub secrets: &'a [&'a Secret],
    /// The ingress class served: Ingresses naming another class are left out; those
    /// naming none are served.
    pub class: &'a str,
    /// A per-client limit (requests per second) on every route without its own.
    pub default_rate_limit: Option<u32>,
}

/// How a path matches.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Whole segments; stored without a trailing `/` (`""` for `/`).
    Prefix(String),
    /// A regular expression over the whole path.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (0, usize::MAX - p.len()),
            PathMatch::Prefix(p) => (1, usize::MAX - p.len()),
            PathMatch::Regex(_) => (2, 0),
        }
    }
}

/// How a header or query value matches.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// The whole value matches.
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }

    fn new(kind: ValueMatchType, value: &str) -> Option<Self> {
        Some(match kind {
            ValueMatchType::Exact => ValueMatch::Exact(value.to_string()),
            ValueMatchType::RegularExpression => ValueMatch::Regex(anchored(value)?),
        })
    }
}

fn anchored(r: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{r})$")).ok()
}

/// One match of a route.
#[derive(Debug, Clone)]
pub struct Match {
    /// The path.
    pub path: PathMatch,
    /// The method, when one is required.
    pub method: Option<Method>,
    /// Header name → value.
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query parameter → value.
    pub query: Vec<(String, ValueMatch)>,
}

/// What a request presents to matching.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path (no query).
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a http::HeaderMap,
}

impl Match {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != r.method) || !self.path.matches(r.path) {
            return false;
        }
        for (name, want) in &self.headers {
            let got = r
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            let mut any = false;
            for v in got {
                any |= want.matches(v);
            }
            if !any {
                return false;
            }
        }
        for (name, want) in &self.query {
            let q = r.query.unwrap_or("");
            let v = q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then_some(v)
            });
            if !v.is_some_and(|v| want.matches(v)) {
                return false;
            }
        }
        true
    }
}

/// One ready endpoint of a backend.
#[derive(Debug)]
pub struct Upstream {
    /// The pod address and target port.
    pub addr: SocketAddr,
    /// `addr` as a URI authority (made once, not per request).
    pub authority: http::uri::Authority,
    /// The session-cookie value that pins a client to it ([`session_key`], made once).
    pub session: String,
    /// Its passive (and active) health, shared by every table that has it.
    pub health: Arc<crate::health::EndpointHealth>,
}

/// A Service port and its ready endpoints.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name:port`.
    pub name: String,
    /// Ready endpoints (sorted by address).
    pub upstreams: Vec<Upstream>,
    /// Speak cleartext HTTP/2 to them.
    pub h2c: bool,
    /// Why there is nothing to send to (shown in the 503 body).
    pub missing: Option<String>,
    next: AtomicUsize,
}

impl Backend {
    /// The next endpoint round-robin, skipping ejected ones (and those in `skip`); when
    /// every endpoint is ejected, one of them anyway (better than nothing).
    pub fn pick(&self, now_ms: u64, skip: &[SocketAddr]) -> Option<&Upstream> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for i in 0..n {
            let u = &self.upstreams[(start + i) % n];
            if skip.contains(&u.addr) {
                continue;
            }
            if u.health.usable(now_ms) {
                return Some(u);
            }
            fallback.get_or_insert(u);
        }
        fallback
    }

    /// The endpoint whose session key is `key`, if it is still here and usable.
    pub fn by_session(&self, key: &str, now_ms: u64) -> Option<&Upstream> {
        self.upstreams
            .iter()
            .find(|u| u.session == key && u.health.usable(now_ms))
    }
}

/// The cookie value that pins a session to an endpoint (a hash of its address).
pub fn session_key(addr: SocketAddr) -> String {
    // FNV-1a: stable across processes, so every proxy instance agrees.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A path change (redirect or rewrite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched prefix.
    Prefix(String),
}

impl PathChange {
    fn new(m: &HttpPathModifier) -> Option<Self> {
        match m.kind {
            PathModifierType::ReplaceFullPath => m.replace_full_path.clone().map(PathChange::Full),
            PathModifierType::ReplacePrefixMatch => {
                m.replace_prefix_match.clone().map(PathChange::Prefix)
            }
        }
    }

    /// Apply to `path`, whose matched prefix (when the route matched by prefix) is
    /// `prefix`.
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathChange::Full(p) => p.clone(),
            PathChange::Prefix(p) => {
                let rest = prefix.map_or(path, |pre| &path[pre.len().min(path.len())..]);
                let base = p.trim_end_matches('/');
                match (base.is_empty(), rest.is_empty()) {
                    (true, true) => "/".into(),
                    (true, false) => rest.to_string(),
                    (false, _) => format!("{base}{rest}"),
                }
            }
        }
    }
}

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: Option<PathChange>,
    /// 301, 302, 303, 307, 308.
    pub status: u16,
}

/// Header changes, parsed.
#[derive(Debug, Clone, Default)]
pub struct HeaderChanges {
    /// Replace.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove.
    pub remove: Vec<HeaderName>,
}

impl HeaderChanges {
    fn new(m: &HeaderModifier) -> Self {
        let pair = |h: &trellis_api::objects::HttpHeader| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        };
        HeaderChanges {
            set: m.set.iter().filter_map(pair).collect(),
            add: m.add.iter().filter_map(pair).collect(),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Apply to `h`.
    pub fn apply(&self, h: &mut http::HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

/// Retries.
#[derive(Debug, Clone, Default)]
pub struct Retry {
    /// Tries after the first.
    pub attempts: u32,
    /// Statuses that are retried (idempotent requests only).
    pub codes: Vec<u16>,
    /// Pause between tries.
    pub backoff: Duration,
}

/// Cookie session persistence.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie's name.
    pub cookie: String,
    /// Its `Max-Age`, seconds.
    pub max_age: Option<u64>,
}

/// What a matched rule does.
#[derive(Debug)]
pub struct Action {
    /// `ingress ns/name` or `httproute ns/name rule N`, for logs.
    pub source: Arc<str>,
    /// Answer with a redirect instead of proxying.
    pub redirect: Option<Redirect>,
    /// Plain HTTP to a TLS host of an Ingress: redirect to HTTPS (308).
    pub ssl_redirect: bool,
    /// Request header changes.
    pub request_headers: Option<HeaderChanges>,
    /// Response header changes.
    pub response_headers: Option<HeaderChanges>,
    /// The `Host` sent to the backend.
    pub rewrite_host: Option<String>,
    /// The path sent to the backend.
    pub rewrite_path: Option<PathChange>,
    /// Backends with their weights (weight 0 ones left out).
    pub backends: Vec<(u32, Arc<Backend>)>,
    /// Sum of the weights.
    pub total_weight: u32,
    /// The whole request.
    pub request_timeout: Option<Duration>,
    /// One try.
    pub backend_timeout: Option<Duration>,
    /// Retries.
    pub retry: Retry,
    /// Session persistence.
    pub session: Option<Session>,
    /// Per-client requests per second.
    pub rate_limit: Option<u32>,
    /// An index unique in the table (rate-limit buckets are per action).
    pub id: usize,
    picks: AtomicUsize,
}

impl Action {
    /// The backend for the next request: weighted, spread evenly (a low-discrepancy
    /// sequence over the weights, so 1,000 requests land within a few of their share).
    pub fn pick_backend(&self) -> Option<&Arc<Backend>> {
        if self.total_weight == 0 {
            return None;
        }
        if self.backends.len() == 1 {
            return Some(&self.backends[0].1);
        }
        let n = self.picks.fetch_add(1, Ordering::Relaxed) as f64;
        // Golden-ratio (Weyl) sequence: equidistributed in [0, 1).
        let x = ((n * 0.618_033_988_749_895) % 1.0 * f64::from(self.total_weight)) as u32;
        let mut acc = 0;
        for (w, b) in &self.backends {
            acc += w;
            if x < acc {
                return Some(b);
            }
        }
        self.backends.last().map(|(_, b)| b)
    }
}

/// One route: a match and its action.
#[derive(Debug)]
pub struct Route {
    /// The match.
    pub when: Match,
    /// The action (shared by the matches of one rule).
    pub action: Arc<Action>,
    order: (String, String),
}

impl Route {
    /// The matched prefix (for `ReplacePrefixMatch`), when the route matches by prefix.
    pub fn prefix(&self) -> Option<&str> {
        match &self.when.path {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

/// The routes of one host entry, in precedence order.
#[derive(Debug, Default)]
pub struct HostRoutes {
    routes: Vec<Route>,
    /// An HTTPRoute serves this host: unmatched requests get 404 (Gateway API), not the
    /// Ingress default backend.
    gateway: bool,
}

/// The whole table.
#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, HostRoutes>,
    /// Ingress wildcards: the domain after `*.`, one label in front.
    wildcard_one: HashMap<String, HostRoutes>,
    /// Gateway wildcards: `.domain` suffixes, longest first, any labels in front.
    wildcard_any: Vec<(String, HostRoutes)>,
    any_host: HostRoutes,
    /// Where unmatched requests go (the oldest Ingress's `defaultBackend`).
    pub default_action: Option<Arc<Action>>,
    /// Certificates.
    pub certs: CertTable,
    /// How many routes.
    pub route_count: usize,
    /// Problems met while building (an Ingress's Secret missing, ...), for logs.
    pub warnings: Vec<String>,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup<'t> {
    /// A route matched.
    Route(&'t Route),
    /// None did; the default backend takes it.
    Default(&'t Arc<Action>),
    /// None did and there is no default backend.
    NotFound,
}

impl Table {
    /// The route for a request to `host` (lower-case, no port).
    pub fn route<'t>(&'t self, host: &str, r: &RequestView<'_>) -> Lookup<'t> {
        let entry = self
            .exact
            .get(host)
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(_, d)| self.wildcard_one.get(d))
            })
            .or_else(|| {
                self.wildcard_any
                    .iter()
                    .find(|(suffix, _)| {
                        host.ends_with(suffix.as_str()) && host.len() > suffix.len()
                    })
                    .map(|(_, h)| h)
            })
            .unwrap_or(&self.any_host);
        if let Some(route) = entry.routes.iter().find(|rt| rt.when.matches(r)) {
            return Lookup::Route(route);
        }
        match &self.default_action {
            Some(a) if !entry.gateway => Lookup::Default(a),
            _ => Lookup::NotFound,
        }
    }

    fn host_entry(&mut self, host: Option<&str>, gateway: bool) -> &mut HostRoutes {
        match host {
            None => &mut self.any_host,
            Some(h) => match h.strip_prefix("*.") {
                Some(d) if gateway => {
                    let suffix = format!(".{d}");
                    match self.wildcard_any.iter().position(|(s, _)| *s == suffix) {
                        Some(i) => &mut self.wildcard_any[i].1,
                        None => {
                            self.wildcard_any.push((suffix, HostRoutes::default()));
                            &mut self.wildcard_any.last_mut().expect("just pushed").1
                        }
                    }
                }
                Some(d) => self.wildcard_one.entry(d.to_string()).or_default(),
                None => self.exact.entry(h.to_string()).or_default(),
            },
        }
    }

    /// The host names with routes (exact and wildcard), for status and logs.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.exact.keys().cloned().collect();
        v.extend(self.wildcard_one.keys().map(|d| format!("*.{d}")));
        v.extend(self.wildcard_any.iter().map(|(s, _)| format!("*{s}")));
        v.sort();
        v
    }
}

/// Builds [`Backend`]s once per Service port.
struct Backends<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    endpoints: HashMap<&'a str, Vec<&'a Endpoint>>,
    built: HashMap<(String, String, String), Arc<Backend>>,
    health: &'a Health,
}

/// A Service port named by number or name.
enum PortRef<'a> {
    Number(u16),
    Name(&'a str),
}

impl<'a> Backends<'a> {
    fn get(&mut self, ns: &str, svc: &str, port: PortRef<'_>) -> Arc<Backend> {
        let port_text = match port {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => n.to_string(),
        };
        let key = (ns.to_string(), svc.to_string(), port_text.clone());
        if let Some(b) = self.built.get(&key) {
            return b.clone();
        }
        let name = format!("{ns}/{svc}:{port_text}");
        let mut b = Backend {
            name: name.clone(),
            upstreams: Vec::new(),
            h2c: false,
            missing: None,
            next: AtomicUsize::new(0),
        };
        match self.services.get(&(ns, svc)) {
            None => b.missing = Some(format!("service {ns}/{svc} does not exist")),
            Some(s) => {
                let sp = s.spec.ports.iter().find(|p| match port {
                    PortRef::Number(n) => p.port == n,
                    PortRef::Name(n) => p.name.as_deref() == Some(n),
                });
                match sp {
                    None => b.missing = Some(format!("service {ns}/{svc} has no port {port_text}")),
                    Some(sp) => {
                        b.h2c = sp
                            .app_protocol
                            .as_deref()
                            .is_some_and(|a| H2C_APP_PROTOCOLS.contains(&a));
                        let mut addrs: Vec<SocketAddr> = self
                            .endpoints
                            .get(ns)
                            .into_iter()
                            .flatten()
                            .filter(|e| e.spec.ready && s.selects(e))
                            .map(|e| SocketAddr::new(IpAddr::V4(e.spec.ip), sp.target_port()))
                            .collect();
                        addrs.sort();
                        addrs.dedup();
                        if addrs.is_empty() {
                            b.missing = Some(format!("service {ns}/{svc} has no ready endpoint"));
                        }
                        b.upstreams = addrs
                            .into_iter()
                            .map(|addr| Upstream {
                                addr,
                                authority: addr
                                    .to_string()
                                    .parse()
                                    .expect("an address is an authority"),
                                session: session_key(addr),
                                health: self.health.of(addr),
                            })
                            .collect();
                    }
                }
            }
        }
        let b = Arc::new(b);
        self.built.insert(key, b.clone());
        b
    }
}

fn annotation<'a>(meta: &'a trellis_api::objects::ObjectMeta, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| meta.annotations.get(*k))
        .map(String::as_str)
}

fn rate_limit_of(meta: &trellis_api::objects::ObjectMeta, default: Option<u32>) -> Option<u32> {
    annotation(
        meta,
        &[
            RATE_LIMIT_ANNOTATION,
            "nginx.ingress.kubernetes.io/limit-rps",
        ],
    )
    .and_then(|v| v.trim().parse().ok())
    .filter(|v| *v > 0)
    .or(default)
}

fn order_of(meta: &trellis_api::objects::ObjectMeta) -> (String, String) {
    (
        meta.creation_timestamp.clone().unwrap_or_default(),
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name
        ),
    )
}

fn new_action(source: String, id: usize) -> Action {
    Action {
        source: source.into(),
        redirect: None,
        ssl_redirect: false,
        request_headers: None,
        response_headers: None,
        rewrite_host: None,
        rewrite_path: None,
        backends: Vec::new(),
        total_weight: 0,
        request_timeout: None,
        backend_timeout: None,
        retry: Retry::default(),
        session: None,
        rate_limit: None,
        id,
        picks: AtomicUsize::new(0),
    }
}

/// Build the table. `health` hands out the shared health state of an endpoint address.
pub fn build(inp: Inputs<'_>, health: &Health) -> Table {
    let mut t = Table::default();
    let mut endpoints: HashMap<&str, Vec<&Endpoint>> = HashMap::new();
    for e in inp.endpoints {
        endpoints
            .entry(e.namespace().unwrap_or_default())
            .or_default()
            .push(e);
    }
    let mut be = Backends {
        services: inp
            .services
            .iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name()), *s))
            .collect(),
        endpoints,
        built: HashMap::new(),
        health,
    };
    let secrets: HashMap<(&str, &str), &Secret> = inp
        .secrets
        .iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name()), *s))
        .collect();
    let mut next_id = 0;
    let mut id = || {
        next_id += 1;
        next_id
    };

    // Ingresses, oldest first (the oldest default backend and certificate win).
    let mut ingresses: Vec<&Ingress> = inp
        .ingresses
        .iter()
        .copied()
        .filter(|i| {
            i.spec
                .ingress_class_name
                .as_deref()
                .is_none_or(|c| c == inp.class)
        })
        .collect();
    ingresses.sort_by_key(|i| order_of(&i.metadata));
    for ing in &ingresses {
        let ns = ing.namespace().unwrap_or_default();
        let src = format!("ingress {ns}/{}", ing.name());
        let rate = rate_limit_of(&ing.metadata, inp.default_rate_limit);
        let ssl_redirect = annotation(
            &ing.metadata,
            &[
                SSL_REDIRECT_ANNOTATION,
                "nginx.ingress.kubernetes.io/ssl-redirect",
            ],
        ) != Some("false");
        let mut tls_hosts: Vec<&str> = Vec::new();
        for tls in &ing.spec.tls {
            tls_hosts.extend(tls.hosts.iter().map(String::as_str));
            let key = match &tls.secret_name {
                None => None,
                Some(name) => match secrets.get(&(ns, name.as_str())) {
                    None => {
                        t.warnings.push(format!("{src}: Secret {ns}/{name} does not exist; its hosts get the default certificate"));
                        None
                    }
                    Some(s) if s.spec.kind.as_deref() != Some(TLS_SECRET_TYPE) => {
                        t.warnings.push(format!(
                            "{src}: Secret {ns}/{name} is not of type {TLS_SECRET_TYPE}"
                        ));
                        None
                    }
                    Some(s) => match (s.spec.get(CERT_KEY), s.spec.get(KEY_KEY)) {
                        (Some(c), Some(k)) => match certified_key(&c, &k) {
                            Ok(ck) => Some(Arc::new(ck)),
                            Err(e) => {
                                t.warnings.push(format!("{src}: Secret {ns}/{name}: {e}"));
                                None
                            }
                        },
                        _ => None,
                    },
                },
            };
            if let Some(key) = key {
                for h in &tls.hosts {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix("*.") {
                        Some(d) => t.certs.wildcard.entry(d.to_string()).or_insert(key.clone()),
                        None => t.certs.exact.entry(h).or_insert(key.clone()),
                    };
                }
            }
        }
        let mk =
            |backend: &IngressBackend, be: &mut Backends<'_>, host: Option<&str>, id: usize| {
                let mut a = new_action(src.clone(), id);
                if let Some(s) = &backend.service {
                    let port = match (&s.port.number, &s.port.name) {
                        (Some(n), _) => PortRef::Number(*n),
                        (None, Some(n)) => PortRef::Name(n),
                        (None, None) => PortRef::Number(0),
                    };
                    a.backends.push((1, be.get(ns, &s.name, port)));
                    a.total_weight = 1;
                }
                a.rate_limit = rate;
                a.ssl_redirect = ssl_redirect
                    && host.is_some_and(|h| tls_hosts.iter().any(|t| t.eq_ignore_ascii_case(h)));
                Arc::new(a)
            };
        if let Some(b) = &ing.spec.default_backend {
            if t.default_action.is_none() {
                t.default_action = Some(mk(b, &mut be, None, id()));
            }
        }
        for rule in &ing.spec.rules {
            let Some(http) = &rule.http else { continue };
            let host = rule.host.as_ref().map(|h| h.to_ascii_lowercase());
            for p in &http.paths {
                let path = p.path.as_deref().unwrap_or("/");
                let when = Match {
                    path: match p.path_type {
                        PathType::Exact => PathMatch::Exact(path.to_string()),
                        PathType::Prefix | PathType::ImplementationSpecific => {
                            PathMatch::Prefix(path.trim_end_matches('/').to_string())
                        }
                    },
                    method: None,
                    headers: Vec::new(),
                    query: Vec::new(),
                };
                let action = mk(&p.backend, &mut be, host.as_deref(), id());
                t.host_entry(host.as_deref(), false).routes.push(Route {
                    when,
                    action,
                    order: order_of(&ing.metadata),
                });
                t.route_count += 1;
            }
        }
    }

    // HTTPRoutes.
    for r in inp.routes {
        let ns = r.namespace().unwrap_or_default();
        let rate = rate_limit_of(&r.metadata, inp.default_rate_limit);
        for (ri, rule) in r.spec.rules.iter().enumerate() {
            let action = Arc::new(route_action(
                rule,
                format!("httproute {ns}/{} rule {ri}", r.name()),
                ns,
                rate,
                &mut be,
                id(),
            ));
            let matches = if rule.matches.is_empty() {
                vec![Default::default()]
            } else {
                rule.matches.clone()
            };
            for m in &matches {
                let Some(when) = to_match(m) else {
                    t.warnings.push(format!(
                        "{}: a match that does not compile is left out",
                        action.source
                    ));
                    continue;
                };
                let hosts: Vec<Option<String>> = if r.spec.hostnames.is_empty() {
                    vec![None]
                } else {
                    r.spec
                        .hostnames
                        .iter()
                        .map(|h| Some(h.to_ascii_lowercase()))
                        .collect()
                };
                for h in hosts {
                    let entry = t.host_entry(h.as_deref(), true);
                    entry.gateway = true;
                    entry.routes.push(Route {
                        when: when.clone(),
                        action: action.clone(),
                        order: order_of(&r.metadata),
                    });
                    t.route_count += 1;
                }
            }
        }
    }

    let sort = |h: &mut HostRoutes| {
        h.routes.sort_by(|a, b| {
            let key = |r: &Route| {
                (
                    r.when.path.rank(),
                    r.when.method.is_none(),
                    usize::MAX - r.when.headers.len(),
                    usize::MAX - r.when.query.len(),
                )
            };
            key(a).cmp(&key(b)).then_with(|| a.order.cmp(&b.order))
        })
    };
    t.exact.values_mut().for_each(sort);
    t.wildcard_one.values_mut().for_each(sort);
    t.wildcard_any.iter_mut().for_each(|(_, h)| sort(h));
    sort(&mut t.any_host);
    t.wildcard_any.sort_by_key(|(s, _)| usize::MAX - s.len());
    t
}

fn to_match(m: &trellis_api::objects::HttpRouteMatch) -> Option<Match> {
    let path = match &m.path {
        None => PathMatch::Prefix(String::new()),
        Some(p) => match p.kind {
            PathMatchType::Exact => PathMatch::Exact(p.value.clone()),
            PathMatchType::PathPrefix => {
                PathMatch::Prefix(p.value.trim_end_matches('/').to_string())
            }
            PathMatchType::RegularExpression => PathMatch::Regex(anchored(&p.value)?),
        },
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        headers.push((
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            ValueMatch::new(h.kind, &h.value)?,
        ));
    }
    let mut query = Vec::new();
    for q in &m.query_params {
        query.push((q.name.clone(), ValueMatch::new(q.kind, &q.value)?));
    }
    Some(Match {
        path,
        method: m
            .method
            .map(|x| Method::from_bytes(x.as_str().as_bytes()).expect("a known method")),
        headers,
        query,
    })
}

fn route_action(
    rule: &HttpRouteRule,
    source: String,
    ns: &str,
    rate: Option<u32>,
    be: &mut Backends<'_>,
    id: usize,
) -> Action {
    let mut a = new_action(source, id);
    a.rate_limit = rate;
    for f in &rule.filters {
        if let Some(m) = &f.request_header_modifier {
            a.request_headers = Some(HeaderChanges::new(m));
        }
        if let Some(m) = &f.response_header_modifier {
            a.response_headers = Some(HeaderChanges::new(m));
        }
        if let Some(r) = &f.request_redirect {
            a.redirect = Some(Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                port: r.port,
                path: r.path.as_ref().and_then(PathChange::new),
                status: r.status_code.unwrap_or(302),
            });
        }
        if let Some(r) = &f.url_rewrite {
            a.rewrite_host = r.hostname.clone();
            a.rewrite_path = r.path.as_ref().and_then(PathChange::new);
        }
    }
    for b in &rule.backend_refs {
        let w = b.weight();
        if w == 0 {
            continue;
        }
        let backend = be.get(ns, &b.name, PortRef::Number(b.port.unwrap_or(0)));
        a.backends.push((w, backend));
        a.total_weight += w;
    }
    if let Some(t) = &rule.timeouts {
        a.request_timeout = t.request.as_ref().map(|d| d.get()).filter(|d| !d.is_zero());
        a.backend_timeout = t
            .backend_request
            .as_ref()
            .map(|d| d.get())
            .filter(|d| !d.is_zero());
    }
    if let Some(r) = &rule.retry {
        a.retry = Retry {
            attempts: r.attempts.unwrap_or(2),
            codes: r.codes.clone(),
            backoff: r.backoff.as_ref().map(|d| d.get()).unwrap_or_default(),
        };
    }
    if let Some(s) = &rule.session_persistence {
        a.session = Some(Session {
            cookie: s
                .session_name
                .clone()
                .unwrap_or_else(|| "trellis-session".into()),
            max_age: s.absolute_timeout.as_ref().map(|d| d.get().as_secs()),
        });
    }
    a
}

#[cfg(test)]
mod tests;
