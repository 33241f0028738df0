//! `trellis ingress`: the L7 HTTP(S) entry (see `trellis-ingress`). Binds (or takes over
//! from a running instance, `--handover`) the listeners, builds the first routing table,
//! then serves; SIGTERM or a handover drains and exits.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use trellis_client::{Client, Config};
use trellis_ingress::controller::{self, ControllerConfig};
use trellis_ingress::proxy::{Proxy, Settings};
use trellis_ingress::serve::{run_workers, Drain, Listener};
use trellis_ingress::tls::{certified_key, self_signed, server_config, CertTable, SniResolver};
use trellis_ingress::{handover, health};

#[derive(clap::Args, Debug)]
pub struct IngressArgs {
    /// The Trellis server (`https://host:6443`).
    #[arg(long)]
    server: String,
    /// The CA certificate that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A file holding the ingress token (`trellis server token --ingress NAME`).
    #[arg(long)]
    token_file: PathBuf,
    /// Plain HTTP listener.
    #[arg(long, default_value = "0.0.0.0:80")]
    listen_http: SocketAddr,
    /// HTTPS listener (none: no TLS).
    #[arg(long)]
    listen_https: Option<SocketAddr>,
    /// The ingress class served (Ingresses naming no class are served too).
    #[arg(long, default_value = "trellis")]
    class: String,
    /// The certificate (PEM) for names no Secret covers (default: a self-signed one).
    #[arg(long, requires = "default_key")]
    default_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "default_cert")]
    default_key: Option<PathBuf>,
    /// Requests per second per client on routes without their own limit.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// An address written into served Ingresses' status (repeatable).
    #[arg(long = "publish-address")]
    publish: Vec<String>,
    /// No JSON access log on stdout.
    #[arg(long)]
    no_access_log: bool,
    /// Active health checks: `GET PATH` on every endpoint.
    #[arg(long)]
    health_check_path: Option<String>,
    /// Seconds between active checks.
    #[arg(long, default_value_t = 2.0)]
    health_check_interval: f64,
    /// Milliseconds to connect to an endpoint before trying another.
    #[arg(long, default_value_t = 2000)]
    connect_timeout_ms: u64,
    /// Unix socket for binary upgrades: a new instance given the same path takes the
    /// listening sockets of the running one, which then drains and exits.
    #[arg(long)]
    handover: Option<PathBuf>,
    /// Seconds a draining instance waits for open connections and WebSockets.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Worker threads serving requests (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
}

/// The control runtime (API watches, table builds, status, signals) is one thread; the
/// requests are served by `--threads` workers of their own.
pub fn run(a: IngressArgs) -> anyhow::Result<ExitCode> {
    crate::init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(main(a))
}

fn to_listener(fd: OwnedFd) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("{flag} {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn main(a: IngressArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&Config {
        server: a.server.clone(),
        ca: a.ca.clone(),
        token: None,
        token_file: Some(a.token_file.clone()),
    })?;

    // Listeners: taken over from the running instance, or bound.
    let taken = match &a.handover {
        Some(p) => handover::take(p).with_context(|| format!("--handover {}", p.display()))?,
        None => None,
    };
    let (http, https) = match &taken {
        Some(t) => {
            let mut http = None;
            let mut https = None;
            for (label, fd) in &t.sockets {
                let fd = fd.try_clone()?;
                match label.as_str() {
                    "http" => http = Some(to_listener(fd)?),
                    "https" => https = Some(to_listener(fd)?),
                    other => bail!("handover: unknown socket {other:?}"),
                }
            }
            let http = http.context("handover: the running instance passed no http listener")?;
            tracing::info!("took the listening sockets over from the running instance");
            (http, https)
        }
        None => {
            let http = bind(a.listen_http, "--listen-http")?;
            let https = match a.listen_https {
                Some(addr) => Some(bind(addr, "--listen-https")?),
                None => None,
            };
            (http, https)
        }
    };

    let default_cert = match (&a.default_cert, &a.default_key) {
        (Some(c), Some(k)) => {
            certified_key(&std::fs::read(c)?, &std::fs::read(k)?).with_context(|| {
                format!(
                    "--default-cert {} / --default-key {}",
                    c.display(),
                    k.display()
                )
            })?
        }
        _ => self_signed()?,
    };
    let certs = Arc::new(SniResolver::default());
    certs.set(CertTable {
        default: Some(Arc::new(default_cert)),
        ..Default::default()
    });
    let proxy = Arc::new(Proxy::new(Settings {
        connect_timeout: Duration::from_millis(a.connect_timeout_ms),
        https_port: https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|x| x.port()),
        access_log: !a.no_access_log,
    }));
    if let Some(path) = a.health_check_path.clone() {
        tokio::spawn(health::active_checks(
            proxy.health.clone(),
            path,
            Duration::from_secs_f64(a.health_check_interval.max(0.1)),
        ));
    }
    let (built_tx, mut built) = tokio::sync::watch::channel(0u64);
    tokio::spawn(controller::run(
        client,
        ControllerConfig {
            class: a.class.clone(),
            default_rate_limit: a.rate_limit,
            publish: a.publish.clone(),
        },
        proxy.clone(),
        certs.clone(),
        built_tx,
    ));
    // The first table before the first request (bounded: an unreachable server must not
    // keep the port closed forever; requests then get 404 until it answers).
    if tokio::time::timeout(Duration::from_secs(30), built.wait_for(|g| *g > 0))
        .await
        .is_err()
    {
        tracing::warn!("no routing table after 30 s (is the server reachable?); serving anyway");
    }

    let drain = Drain::of(&proxy);
    let mut fds = vec![("http".to_string(), http.as_raw_fd())];
    tracing::info!(addr = %http.local_addr()?, "serving HTTP");
    let mut listeners = vec![Listener {
        socket: Arc::new(http),
        tls: None,
    }];
    if let Some(l) = https {
        fds.push(("https".to_string(), l.as_raw_fd()));
        tracing::info!(addr = %l.local_addr()?, "serving HTTPS");
        listeners.push(Listener {
            socket: Arc::new(l),
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
                certs.clone(),
            )))),
        });
    }
    let workers = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = run_workers(workers, &listeners, &proxy, &drain)?;
    if let Some(t) = taken {
        t.ready()?;
    }

    let handed_over = async {
        match a.handover.clone() {
            Some(p) => {
                let fds = fds.clone();
                match tokio::task::spawn_blocking(move || handover::serve(&p, &fds)).await {
                    Ok(Ok(())) => {
                        tracing::info!("a new instance took the listening sockets; draining")
                    }
                    Ok(Err(e)) => {
                        tracing::error!("handover socket: {e}");
                        std::future::pending::<()>().await
                    }
                    Err(e) => tracing::error!("handover task: {e}"),
                }
            }
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = handed_over => {}
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
    }
    drain.start(Duration::from_secs(a.drain_timeout));
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await?;
    if drain.live() > 0 {
        tracing::warn!(
            left = drain.live(),
            "drain timeout: closing the remaining connections"
        );
    }
    drop(listeners);
    Ok(ExitCode::SUCCESS)
}
