//! An in-process API server on a loopback port, and clients with each role.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_client::{Client, Config};
use trellis_server::auth::{Role, Tokens};
use trellis_server::{serve, tls, Server, ServerConfig};
use trellis_store::Store;

pub const ADMIN: &str = "admin-token";
pub const READER: &str = "reader-token";
pub const NODE1: &str = "node1-token";

/// A running server (stops when the test's runtime ends).
pub struct TestServer {
    pub url: String,
    pub ca: Option<std::path::PathBuf>,
    pub server: Arc<Server>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A client with `token`.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&Config {
            server: self.url.clone(),
            ca: self.ca.clone(),
            token: Some(token.to_string()),
            token_file: None,
        })
        .unwrap()
    }
}

pub fn test_config() -> ServerConfig {
    ServerConfig {
        bookmark_interval: Duration::from_millis(200),
        node_lease_ttl: Duration::from_secs(2),
        subnet_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

/// Start a server over `store` (TLS when `tls` is set) with the three test tokens.
pub async fn start(store: Arc<dyn Store>, use_tls: bool, cfg: ServerConfig) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server {
        store,
        tokens: Tokens::fixed([
            (ADMIN.to_string(), Role::Admin),
            (READER.to_string(), Role::ReadOnly),
            (NODE1.to_string(), Role::Node { node: "n1".into() }),
        ]),
        cfg,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tls_cfg, ca, scheme) = if use_tls {
        tls::init(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        (
            Some(tls::server_config(dir.path()).unwrap()),
            Some(dir.path().join(tls::CA_CERT)),
            "https",
        )
    } else {
        (None, None, "http")
    };
    tokio::spawn(serve::serve(
        listener,
        serve::router(server.clone()),
        tls_cfg,
    ));
    tokio::spawn(trellis_server::alloc::run_node_lifecycle(server.clone()));
    tokio::spawn(trellis_server::alloc::run_lb_allocator(server.clone()));
    TestServer {
        url: format!("{scheme}://{addr}"),
        ca,
        server,
        _dir: dir,
    }
}

/// An embedded store in a temp dir (kept alive by the returned guard).
pub fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = trellis_store::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    (Arc::new(s), dir)
}

pub fn network(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": name}, "spec": {"cidr": cidr}})
}

pub fn node(name: &str, addr: &str) -> Value {
    json!({"apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": name}, "spec": {"address": addr}})
}

pub fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "trellis/v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

pub fn endpoint(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "trellis/v1", "kind": "Endpoint", "metadata": {"name": name, "namespace": "default"},
        "spec": {"containerId": format!("c-{name}"), "ifname": "eth0", "network": "pods", "node": node, "ip": ip}})
}

/// The status and message of a request that must fail with an API error.
pub fn refused<T: std::fmt::Debug>(r: Result<T, trellis_client::ClientError>) -> (u16, String) {
    match r {
        Err(trellis_client::ClientError::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}
