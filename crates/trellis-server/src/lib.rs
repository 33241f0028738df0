//! The Trellis API server: Kubernetes-style objects (Network, Node, Pod, Endpoint,
//! Service) kept in a [`trellis_store::Store`], served as JSON over HTTP(S) with list,
//! get, create, update (optimistic concurrency on `resourceVersion`), delete and watch
//! (newline-delimited JSON), checked by [`auth`] and validated by `trellis-api`.
//! Allocators ([`alloc`]) hand out node subnets, cluster IPs, node ports and VNIs, each
//! in the same store transaction as the object that holds it, so several servers on one
//! etcd never hand out the same value twice.
//!
//! Store layout: objects under `/registry/<plural>/[<namespace>/]<name>`, allocations
//! under `/alloc/<what>/…` (value = the key of the owning object), node liveness under
//! `/leases/nodes/<node>` (attached to a store lease the node's heartbeats renew).

pub mod alloc;
pub mod auth;
pub mod bgp;
pub mod error;
pub mod ingress;
pub mod resources;
pub mod serve;
pub mod tenancy;
pub mod tls;
mod watch;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_store::Store;

pub use error::ApiError;

/// Tunables of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where cluster IPs come from.
    pub service_cidr: Ipv4Net,
    /// Where node ports come from.
    pub node_port_range: RangeInclusive<u16>,
    /// Where VNIs come from.
    pub vni_range: RangeInclusive<u32>,
    /// A node without a heartbeat for this long is not ready and its subnet leases
    /// disappear from the API.
    pub node_lease_ttl: Duration,
    /// ... and after this much longer its subnets may go to other nodes.
    pub subnet_grace: Duration,
    /// Interval of BOOKMARK events on watches that ask for them.
    pub bookmark_interval: Duration,
    /// Store history kept for watches to resume from, in revisions.
    pub history: i64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            service_cidr: "10.96.0.0/16".parse().expect("literal"),
            node_port_range: trellis_api::objects::DEFAULT_NODE_PORT_RANGE,
            vni_range: 1..=16_777_215,
            node_lease_ttl: Duration::from_secs(20),
            subnet_grace: Duration::from_secs(300),
            bookmark_interval: Duration::from_secs(10),
            history: 100_000,
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
pub struct Server {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Who may do what.
    pub tokens: auth::Tokens,
    /// Tunables.
    pub cfg: ServerConfig,
}

/// Open the store named by `spec`: `embedded:PATH` (the default kind; a bare path means
/// the same) or `etcd:URL[,URL…]`.
pub async fn open_store(spec: &str) -> Result<Arc<dyn Store>, String> {
    match spec.split_once(':') {
        Some(("etcd", urls)) => {
            let eps: Vec<String> = urls.split(',').map(str::to_string).collect();
            let s = trellis_store::etcd::EtcdStore::connect(&eps)
                .await
                .map_err(|e| format!("etcd {urls}: {e}"))?;
            Ok(Arc::new(s))
        }
        Some(("embedded", path)) => open_embedded(path),
        _ => open_embedded(spec),
    }
}

fn open_embedded(path: &str) -> Result<Arc<dyn Store>, String> {
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(Arc::new(
        trellis_store::embedded::EmbeddedStore::open(path).map_err(|e| e.to_string())?,
    ))
}

/// Compact the store's history every minute, keeping `cfg.history` revisions. Several
/// servers on one etcd may all do it; a compaction at or below the mark is a no-op.
pub async fn run_compactor(server: Arc<Server>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match server.store.revision().await {
            Ok(rev) if rev > server.cfg.history => {
                if let Err(e) = server.store.compact(rev - server.cfg.history).await {
                    tracing::warn!("compaction: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("compaction: {e}"),
        }
    }
}
