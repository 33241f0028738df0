//! A client for the Trellis API server, used by the CLI, the agent and the tests:
//! requests with a bearer token over HTTPS (the cluster CA from `trellis server init`)
//! or plain HTTP, object paths, line-delimited watches, and the CLI's config file.

pub mod informer;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_api::objects::Kind;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The config file or the CA could not be read.
    #[error("config: {0}")]
    Config(String),
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {server}: {msg}")]
    Transport {
        /// The server URL.
        server: String,
        /// What happened.
        msg: String,
    },
    /// The server answered with an error status (its `Status` message).
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `NotFound`, `Conflict`, `Invalid`…
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("bad answer from the server: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Shorthand.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The CLI config file (JSON): where the server is and how to talk to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// `https://host:port` (or `http://` for a server run with `--insecure-http`).
    pub server: String,
    /// The cluster CA (PEM file) that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the bearer token (used when `token` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Config {
    /// The default location: `$TRELLIS_CONFIG`, else `$HOME/.trellis/config.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("TRELLIS_CONFIG") {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        Path::new(&home).join(".trellis/config.json")
    }

    /// Read a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let b = std::fs::read(path)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&b)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
    }

    /// Write it (readable by its owner only: it may hold a token).
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| ClientError::Config(format!("{}: {e}", path.display()));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(err)?;
        }
        let body =
            serde_json::to_vec_pretty(self).map_err(|e| ClientError::Config(e.to_string()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(&body))
            .map_err(err)
    }

    fn token(&self) -> Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        match &self.token_file {
            Some(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| ClientError::Config(format!("tokenFile {}: {e}", p.display()))),
            None => Ok(None),
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connection pool to one server.
#[derive(Clone)]
pub struct Client {
    server: String,
    token: Option<String>,
    http: HyperClient<Https, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish()
    }
}

/// A watch: one JSON event per item.
pub type WatchEvents = Pin<Box<dyn Stream<Item = Result<Value>> + Send>>;

impl Client {
    /// A client for `cfg`.
    pub fn new(cfg: &Config) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &cfg.ca {
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| ClientError::Config(format!("ca {}: {e}", ca.display())))?
            {
                let c = c.map_err(|e| ClientError::Config(format!("ca {}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| ClientError::Config(format!("ca {}: {e}", ca.display())))?;
            }
        } else if cfg.server.starts_with("https://") {
            return Err(ClientError::Config(format!(
                "{}: an https server needs `ca` (the cluster CA file)",
                cfg.server
            )));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Client {
            server: cfg.server.trim_end_matches('/').to_string(),
            token: cfg.token()?,
            http: HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https),
        })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn transport(&self, e: impl std::error::Error) -> ClientError {
        // The outer message ("client error (Connect)") rarely says why: add the causes.
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        ClientError::Transport {
            server: self.server.clone(),
            msg,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some((b, ct)) => {
                req = req.header("content-type", ct);
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| self.transport(e))?;
        self.http.request(req).await.map_err(|e| self.transport(e))
    }

    async fn read_body(&self, resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes())
    }

    /// One request; the JSON answer, or the server's error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Value> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = self.read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.request(Method::GET, path, None).await
    }

    /// POST a JSON value.
    pub async fn post(&self, path: &str, v: &Value) -> Result<Value> {
        self.request(
            Method::POST,
            path,
            Some((json_bytes(v), "application/json")),
        )
        .await
    }

    /// PUT a JSON value.
    pub async fn put(&self, path: &str, v: &Value) -> Result<Value> {
        self.request(Method::PUT, path, Some((json_bytes(v), "application/json")))
            .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.request(Method::DELETE, path, None).await
    }

    /// Watch `path` (a list path, e.g. from [`list_path`]) from `resource_version`
    /// (None: the current objects as ADDED events first).
    pub async fn watch(
        &self,
        path: &str,
        resource_version: Option<&str>,
        bookmarks: bool,
    ) -> Result<WatchEvents> {
        let mut p = format!("{path}?watch=true");
        if let Some(rv) = resource_version {
            p.push_str(&format!("&resourceVersion={rv}"));
        }
        if bookmarks {
            p.push_str("&allowWatchBookmarks=true");
        }
        let resp = self.send(Method::GET, &p, None).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(api_error(status, &self.read_body(resp).await?));
        }
        let server = self.server.clone();
        let body = resp.into_body().into_data_stream();
        let lines = futures::stream::unfold(
            (body, Vec::<u8>::new(), server),
            |(mut body, mut buf, server)| async move {
                loop {
                    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let v = serde_json::from_slice(&line[..line.len() - 1])
                            .map_err(|e| ClientError::Decode(e.to_string()));
                        return Some((v, (body, buf, server)));
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            let err = ClientError::Transport {
                                server: server.clone(),
                                msg: e.to_string(),
                            };
                            return Some((Err(err), (body, Vec::new(), server)));
                        }
                        None => return None,
                    }
                }
            },
        );
        Ok(Box::pin(lines))
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ClientError::Api {
        status: status.as_u16(),
        reason: v["reason"].as_str().unwrap_or("Unknown").to_string(),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}: {}", String::from_utf8_lossy(body))),
    }
}

/// The list path of a kind (namespace `None`: across namespaces for namespaced kinds).
pub fn list_path(kind: Kind, ns: Option<&str>) -> String {
    match (kind.namespaced(), ns) {
        (true, Some(ns)) => format!("/v1/namespaces/{ns}/{}", kind.plural()),
        _ => format!("/v1/{}", kind.plural()),
    }
}

/// The path of one object.
pub fn object_path(kind: Kind, ns: Option<&str>, name: &str) -> String {
    match (kind.namespaced(), ns) {
        (true, Some(ns)) => format!("/v1/namespaces/{ns}/{}/{name}", kind.plural()),
        _ => format!("/v1/{}/{name}", kind.plural()),
    }
}
