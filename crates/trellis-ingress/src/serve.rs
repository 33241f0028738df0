//! The listeners: accept loops for plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge)
//! and TLS (ALPN `h2` / `http/1.1`, SNI certificates from [`crate::tls::SniResolver`]).
//! Listeners never close while the routes change. On [`Drain::start`] the accept loops
//! stop, HTTP/1 answers say `Connection: close`, and a connection that has not ended by
//! itself within a second is asked to (HTTP/2 GOAWAY; HTTP/1 closed when idle);
//! [`Drain::finished`] waits for them and for spliced WebSockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::proxy::{ConnInfo, Proxy};

/// Connections alive and the signal to wind down.
#[derive(Debug, Clone)]
pub struct Drain {
    stop: watch::Sender<bool>,
    deadline: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    live: Arc<AtomicUsize>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a draining connection may end by itself (HTTP/1 clients leave after an
/// answer saying `Connection: close`) before it is told to (GOAWAY, or closed when idle).
const SELF_CLOSE: Duration = Duration::from_secs(1);

impl Drain {
    /// A drain counting the connections of `proxy` and its spliced upgrades.
    pub fn of(proxy: &Proxy) -> Drain {
        Drain {
            stop: watch::channel(false).0,
            deadline: Arc::default(),
            live: proxy.live.clone(),
            draining: proxy.draining.clone(),
        }
    }
}

/// Counts one connection while alive.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// Stop accepting and ask every connection to finish within `limit`.
    pub fn start(&self, limit: Duration) {
        *self.deadline.lock().expect("drain lock") = Some(std::time::Instant::now() + limit);
        self.draining.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
    }

    /// Connections (and upgraded streams) still open.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Whether the drain's time is up.
    pub fn expired(&self) -> bool {
        self.deadline
            .lock()
            .expect("drain lock")
            .is_some_and(|d| std::time::Instant::now() >= d)
    }

    fn track(&self) -> Live {
        self.live.fetch_add(1, Ordering::SeqCst);
        Live(self.live.clone())
    }
}

/// Serve one connection until it ends or, after the drain starts, until it ends by
/// itself within [`SELF_CLOSE`] or finishes after being asked to.
async fn serve_conn<I, S>(io: I, svc: S, stop: &mut watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<crate::proxy::Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let b = builder();
    let conn = b.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(stop) => {
            if tokio::time::timeout(SELF_CLOSE, conn.as_mut()).await.is_err() {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Small answers: one flattened write beats a writev of head and body.
    b.http1()
        .keep_alive(true)
        .writev(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(1000);
    b
}

/// A listening socket and, for HTTPS, its TLS acceptor.
#[derive(Clone)]
pub struct Listener {
    /// The bound socket, already non-blocking (the flag is shared by every clone).
    pub socket: Arc<std::net::TcpListener>,
    /// TLS, for HTTPS.
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("socket", &self.socket.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Run `workers` threads, each a single-threaded runtime accepting on every listener and
/// serving its connections itself (as nginx's worker processes: no request hops between
/// threads, each thread has its own upstream pools). They end when the drain starts and
/// their connections are done.
pub fn run_workers(
    workers: usize,
    listeners: &[Listener],
    proxy: &Arc<Proxy>,
    drain: &Drain,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for w in 0..workers.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut socks = Vec::new();
        for l in listeners {
            socks.push((l.socket.try_clone()?, l.tls.clone()));
        }
        let (proxy, drain) = (proxy.clone(), drain.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("ingress-worker-{w}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let mut tasks = Vec::new();
                        for (s, tls) in socks {
                            match TcpListener::from_std(s) {
                                Ok(l) => tasks.push(tokio::spawn(serve(
                                    l,
                                    tls,
                                    proxy.clone(),
                                    drain.clone(),
                                ))),
                                Err(e) => tracing::error!("worker {w}: listener: {e}"),
                            }
                        }
                        for t in tasks {
                            let _ = t.await;
                        }
                        // Connections of this worker finish on this runtime.
                        while drain.live() > 0 && !drain.expired() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    })
                })?,
        );
    }
    Ok(handles)
}

/// Serve `listener`, over TLS when `tls` is given, until the drain starts.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    drain: Drain,
) {
    let mut stop = drain.stop.subscribe();
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("listener without an address: {e}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(%local, "accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let tls = tls.clone();
        let mut stop = drain.stop.subscribe();
        let live = drain.track();
        tokio::spawn(async move {
            let info = ConnInfo {
                peer,
                local,
                tls: tls.is_some(),
            };
            let svc = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, info).await) }
            });
            match tls {
                None => serve_conn(TokioIo::new(stream), svc, &mut stop).await,
                Some(acc) => {
                    let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)).await
                    else {
                        return;
                    };
                    serve_conn(TokioIo::new(s), svc, &mut stop).await
                }
            }
            drop(live);
        });
    }
}
