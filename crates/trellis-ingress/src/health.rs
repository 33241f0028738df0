//! Endpoint health, shared by every routing table that holds the endpoint: passive
//! (a failed connect ejects it at once, five 5xx answers in a row eject it; it comes back
//! after [`EJECT_FOR`]) and optional active checks (an HTTP GET per interval).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long an ejected endpoint gets no new requests.
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// 5xx answers in a row that eject an endpoint.
pub const EJECT_AFTER_5XX: u32 = 5;

/// One endpoint's state.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    errors_5xx: AtomicU32,
    ejected_until_ms: AtomicU64,
    active_down: AtomicBool,
}

impl EndpointHealth {
    /// Whether it may get new requests at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.active_down.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// A connect failure or timeout: eject.
    pub fn connect_failed(&self, now_ms: u64) {
        self.ejected_until_ms
            .store(now_ms + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
    }

    /// An answer: 5xx in a row eject, anything else resets the count.
    pub fn answered(&self, status: u16, now_ms: u64) {
        if status >= 500 {
            if self.errors_5xx.fetch_add(1, Ordering::Relaxed) + 1 >= EJECT_AFTER_5XX {
                self.errors_5xx.store(0, Ordering::Relaxed);
                self.connect_failed(now_ms);
            }
        } else if self.errors_5xx.load(Ordering::Relaxed) != 0 {
            self.errors_5xx.store(0, Ordering::Relaxed);
        }
    }

    /// Set by the active checker.
    pub fn set_active_down(&self, down: bool) {
        self.active_down.store(down, Ordering::Relaxed);
    }
}

/// The registry: one [`EndpointHealth`] per address while some table holds it.
#[derive(Debug)]
pub struct Health {
    map: Mutex<HashMap<SocketAddr, Weak<EndpointHealth>>>,
    start: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            map: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }
}

impl Health {
    /// The state of `addr` (new, or the one current tables share).
    pub fn of(&self, addr: SocketAddr) -> Arc<EndpointHealth> {
        let mut m = self.map.lock().expect("health lock");
        if let Some(h) = m.get(&addr).and_then(Weak::upgrade) {
            return h;
        }
        let h = Arc::new(EndpointHealth::default());
        m.insert(addr, Arc::downgrade(&h));
        h
    }

    /// Forget addresses no table holds any more (bounded memory under churn).
    pub fn prune(&self) {
        self.map
            .lock()
            .expect("health lock")
            .retain(|_, w| w.strong_count() > 0);
    }

    /// Milliseconds since the registry was made (the clock ejections use).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Every live address and its state.
    pub fn live(&self) -> Vec<(SocketAddr, Arc<EndpointHealth>)> {
        self.map
            .lock()
            .expect("health lock")
            .iter()
            .filter_map(|(a, w)| Some((*a, w.upgrade()?)))
            .collect()
    }
}

/// Probe every live endpoint with `GET path` each `interval`; an endpoint that does not
/// answer 2xx/3xx within the interval is down until it does.
pub async fn active_checks(health: Arc<Health>, path: String, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let probes = health.live().into_iter().map(|(addr, h)| {
            let path = path.clone();
            async move {
                let ok = tokio::time::timeout(interval, probe(addr, &path))
                    .await
                    .unwrap_or(false);
                h.set_active_down(!ok);
            }
        });
        futures::future::join_all(probes).await;
    }
}

async fn probe(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: trellis-ingress-check\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    if s.read_exact(&mut buf).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200"
    matches!(buf.get(9), Some(b'2' | b'3'))
}
