//! The unix socket the CNI plugin talks to (protocol: `trellis_api::agent`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use trellis_api::agent::{codes, Op, Request, RequestError, Response};

use crate::node::Node;

/// Bind the socket. A leftover socket file from a killed agent is replaced; a socket
/// another live agent is listening on is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another agent is already listening on {}",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("remove stale {}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(l)
}

/// The networks the socket serves, each with its CNI backend, in the agent's order: a
/// request that names no network goes to the first.
#[derive(Debug, Clone)]
pub struct Networks {
    list: Arc<Vec<(String, Arc<Node>)>>,
    /// Host ports are the node's, but each network's IPAM knows only its own: an ADD that
    /// publishes some holds this while it checks the other networks and reserves.
    host_ports: Arc<tokio::sync::Mutex<()>>,
}

impl Networks {
    /// Serve `networks` (at least one).
    pub fn new(networks: Vec<(String, Arc<Node>)>) -> Self {
        assert!(!networks.is_empty(), "an agent serves at least one network");
        Networks {
            list: Arc::new(networks),
            host_ports: Arc::default(),
        }
    }

    /// Every network's backend, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.list.iter().map(|(_, n)| n)
    }

    /// The backend of `network` (`None`: the first), or why not (for the plugin, with
    /// code [`codes::INVALID_CONFIG`]).
    pub fn route(&self, network: Option<&str>) -> Result<&Arc<Node>, String> {
        let Some(want) = network else {
            return Ok(&self.list[0].1);
        };
        self.list
            .iter()
            .find(|(name, _)| name == want)
            .map(|(_, n)| n)
            .ok_or_else(|| {
                let names: Vec<&str> = self.list.iter().map(|(n, _)| n.as_str()).collect();
                format!(
                    "network {want:?} is not served by this node's agent (it serves {}); check the plugin configuration's \"network\" or start the agent with --network {want}",
                    names.join(", ")
                )
            })
    }

    /// Handle `op` in `network` (`None`: the first). An ADD publishing host ports that
    /// another served network already publishes fails with [`codes::PORT_IN_USE`] and
    /// changes nothing.
    pub async fn handle(&self, network: Option<&str>, op: Op) -> Response {
        let node = match self.route(network) {
            Ok(node) => node,
            Err(msg) => return Response::error(codes::INVALID_CONFIG, msg),
        };
        let publishes = matches!(&op, Op::Add(req) if !req.port_mappings.is_empty());
        if !publishes || self.list.len() == 1 {
            return node.handle(op).await;
        }
        let _held = self.host_ports.lock().await;
        if let Op::Add(req) = &op {
            for (name, other) in self.list.iter().filter(|(_, n)| !Arc::ptr_eq(n, node)) {
                if let Some(e) = other.ipam().port_clash(&req.port_mappings) {
                    return Response::error(codes::PORT_IN_USE, format!("{e} in network {name}"));
                }
            }
        }
        node.handle(op).await
    }
}

/// Serve requests forever, one task per connection.
pub async fn serve(listener: UnixListener, networks: Networks) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let networks = networks.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &networks).await {
                        tracing::debug!("plugin connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on CNI socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_one(stream: UnixStream, networks: &Networks) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let resp = match Request::from_line(line.trim_end()) {
        Ok(req) => {
            tracing::debug!(?req.op, network = ?req.network, "request");
            networks.handle(req.network.as_deref(), req.op).await
        }
        Err(e @ RequestError::Version(_)) => {
            Response::error(codes::INCOMPATIBLE_VERSION, e.to_string())
        }
        Err(e) => Response::error(codes::DECODE, e.to_string()),
    };
    let mut out = serde_json::to_string(&resp).expect("response serializes");
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    w.shutdown().await
}
