//! `trellis lab echo`: the lab's HTTP backend for ingress tests and benchmarks. Small and
//! fast (hyper, keep-alive, HTTP/1.1 and cleartext HTTP/2 by prior knowledge):
//!
//! - `/bench…`: a fixed 13-byte body (what benchmarks fetch);
//! - `/status/NNN`: that status;
//! - `/fail-on/NAME`: 503 from the pod called NAME, the JSON below from the others;
//! - `/sleep/MS`: answers after MS milliseconds;
//! - `/health`: 200, or 503 while `--health-file` exists;
//! - `/grpc…`: the request body back, with trailers `grpc-status: 0` and `x-pod`;
//! - a WebSocket upgrade: every text or binary message echoed back;
//! - anything else: JSON naming the pod, method, path, host, protocol and headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The name it answers with (the pod's).
    #[arg(long)]
    name: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `/health` answers 503 while this file exists (200 otherwise).
    #[arg(long)]
    health_file: Option<std::path::PathBuf>,
}

pub fn run(a: EchoArgs) -> anyhow::Result<std::process::ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(a))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve(a: EchoArgs) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(a.listen).await?;
    let name: Arc<str> = a.name.into();
    let health: Arc<Option<std::path::PathBuf>> = Arc::new(a.health_file);
    loop {
        let (s, peer) = l.accept().await?;
        let _ = s.set_nodelay(true);
        let name = name.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let name = name.clone();
                let health = health.clone();
                async move {
                    if req.uri().path() == "/health" {
                        let sick = health.as_ref().as_ref().is_some_and(|f| f.exists());
                        let status = if sick {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        return Ok::<_, std::convert::Infallible>(full(
                            status,
                            format!("{name}\n"),
                        ));
                    }
                    Ok::<_, std::convert::Infallible>(answer(req, &name, peer).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

async fn answer(mut req: Request<Incoming>, name: &str, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/bench") {
        return full(StatusCode::OK, Bytes::from_static(b"hello, world\n"));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let s = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
        let mut r = full(s.unwrap_or(StatusCode::BAD_REQUEST), format!("{name}\n"));
        r.headers_mut()
            .insert("x-pod", name.parse().expect("a pod name is a header value"));
        return r;
    }
    if path.strip_prefix("/fail-on/") == Some(name) {
        return full(StatusCode::SERVICE_UNAVAILABLE, format!("{name}\n"));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return full(StatusCode::OK, format!("{name}\n"));
    }
    if path.starts_with("/grpc") {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut trailers = header::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("valid"));
        trailers.insert("x-pod", name.parse().expect("valid"));
        let frames = futures::stream::iter([
            Ok::<_, hyper::Error>(Frame::data(body)),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut r = Response::new(StreamBody::new(frames).boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/grpc".parse().expect("valid"),
        );
        return r;
    }
    if req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return full(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n");
        };
        let mut h = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        h.update(key.as_bytes());
        h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(h.finish());
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let _ = ws_echo(TokioIo::new(u)).await;
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        let h = r.headers_mut();
        h.insert(header::UPGRADE, "websocket".parse().expect("valid"));
        h.insert(header::CONNECTION, "Upgrade".parse().expect("valid"));
        h.insert(
            "sec-websocket-accept",
            accept.parse().expect("base64 is a header value"),
        );
        return r;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "pod": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "host": req.headers().get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).to_string())
            .or_else(|| req.uri().authority().map(|a| a.to_string())),
        "proto": format!("{:?}", req.version()),
        "peer": peer.ip().to_string(),
        "headers": headers,
    });
    let mut r = full(StatusCode::OK, format!("{body}\n"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    r
}

/// Echo WebSocket data frames (unmasked, as a server sends), answer pings, stop on close.
async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await?;
        let op = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            len = u64::from(s.read_u16().await?);
        } else if len == 127 {
            len = s.read_u64().await?;
        }
        if len > 1 << 20 {
            return Ok(());
        }
        let mut mask = [0u8; 4];
        if masked {
            s.read_exact(&mut mask).await?;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        if masked {
            for (i, b) in data.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply_op = match op {
            0x8 => {
                let _ = s.write_all(&frame(0x8, &data)).await;
                return Ok(());
            }
            0x9 => 0xA,
            0x0..=0x2 => op,
            _ => continue,
        };
        s.write_all(&frame(reply_op, &data)).await?;
    }
}

/// One final, unmasked frame.
pub fn frame(op: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op];
    match data.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(data);
    f
}
