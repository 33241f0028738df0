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

/// The networks served now, each with its CNI backend, in the agent's order: a request
/// that names no network goes to the first.
pub type Routes = Arc<Vec<(String, Arc<Node>)>>;

/// What an ADD asks the agent to serve (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The network the plugin configuration names.
    Named(String),
    /// The network of this pod namespace's world (its tenant's), when the
    /// configuration names none.
    ForNamespace(String),
}

/// A request to serve a network (cluster mode), and where to answer: the network's
/// name once it is served, or why it cannot be (for the plugin).
pub type Demand = (Want, tokio::sync::oneshot::Sender<Result<String, String>>);

/// The networks the socket serves. In cluster mode the set changes at run time: an ADD
/// naming a network not served yet asks the agent to serve it (see [`Demand`]).
#[derive(Debug, Clone)]
pub struct Networks {
    routes: tokio::sync::watch::Receiver<Routes>,
    demand: Option<tokio::sync::mpsc::Sender<Demand>>,
    /// Host ports are the node's, but each network's IPAM knows only its own: an ADD that
    /// publishes some holds this while it checks the other networks and reserves.
    host_ports: Arc<tokio::sync::Mutex<()>>,
}

impl Networks {
    /// Serve exactly `networks` (at least one).
    pub fn fixed(networks: Vec<(String, Arc<Node>)>) -> Self {
        assert!(!networks.is_empty(), "an agent serves at least one network");
        let (tx, routes) = tokio::sync::watch::channel(Arc::new(networks));
        // Keep the value readable: a watch's receivers read the last value even after
        // the sender is gone.
        drop(tx);
        Networks {
            routes,
            demand: None,
            host_ports: Arc::default(),
        }
    }

    /// Serve what `routes` holds now, asking `demand` for networks it does not hold.
    pub fn dynamic(
        routes: tokio::sync::watch::Receiver<Routes>,
        demand: tokio::sync::mpsc::Sender<Demand>,
    ) -> Self {
        Networks {
            routes,
            demand: Some(demand),
            host_ports: Arc::default(),
        }
    }

    /// Every network's backend now, in order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.routes
            .borrow()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    fn lookup(&self, network: Option<&str>) -> Result<Arc<Node>, String> {
        let routes = self.routes.borrow().clone();
        let found = match network {
            None => routes.first(),
            Some(want) => routes.iter().find(|(name, _)| name == want),
        };
        found.map(|(_, n)| n.clone()).ok_or_else(|| {
            let names: Vec<&str> = routes.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "network {:?} is not served by this node's agent (it serves {}); check the plugin configuration's \"network\" or start the agent with --network {0}",
                network.unwrap_or_default(),
                names.join(", ")
            )
        })
    }

    /// The network whose IPAM holds attachment `a`, else the first.
    fn holder(&self, a: &trellis_api::agent::Attachment) -> Arc<Node> {
        let routes = self.routes.borrow().clone();
        routes
            .iter()
            .find(|(_, n)| n.ipam().get(a).is_some())
            .or(routes.first())
            .map(|(_, n)| n.clone())
            .expect("an agent serves at least one network")
    }

    /// The backend for an ADD to `network` (`None`: in cluster mode the network of
    /// `namespace`'s world, else the first), or why not (for the plugin, with code
    /// [`codes::INVALID_CONFIG`]). In cluster mode a network not served yet is started
    /// first.
    pub async fn route(
        &self,
        network: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Arc<Node>, String> {
        let Some(demand) = &self.demand else {
            return self.lookup(network);
        };
        let want = match (network, namespace) {
            (Some(n), _) => {
                if let Ok(node) = self.lookup(Some(n)) {
                    return Ok(node);
                }
                Want::Named(n.to_string())
            }
            (None, Some(ns)) => Want::ForNamespace(ns.to_string()),
            (None, None) => return self.lookup(None),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        demand
            .send((want, tx))
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        let name = rx
            .await
            .map_err(|_| "the agent is stopping".to_string())??;
        self.lookup(Some(&name))
    }

    /// Handle `op` in `network` (`None`: the first). An ADD publishing host ports that
    /// another served network already publishes fails with [`codes::PORT_IN_USE`] and
    /// changes nothing.
    pub async fn handle(&self, network: Option<&str>, op: Op) -> Response {
        // Only an ADD starts serving a network; DEL and CHECK of one not served have
        // nothing of ours to act on.
        let node = match &op {
            Op::Add(req) => self.route(network, req.pod_namespace.as_deref()).await,
            // Without a network name an attachment may live in any network its
            // namespace chose: the one whose IPAM holds it.
            Op::Del(a) | Op::Check(a) if network.is_none() => Ok(self.holder(a)),
            _ => self.lookup(network),
        };
        let node = match node {
            Ok(node) => node,
            // A network no longer served (deleted) holds nothing to release.
            Err(_) if matches!(op, Op::Del(_)) && self.demand.is_some() => {
                return Response::Released;
            }
            Err(msg) => return Response::error(codes::INVALID_CONFIG, msg),
        };
        let publishes = matches!(&op, Op::Add(req) if !req.port_mappings.is_empty());
        let routes = self.routes.borrow().clone();
        if !publishes || routes.len() == 1 {
            return node.handle(op).await;
        }
        let _held = self.host_ports.lock().await;
        if let Op::Add(req) = &op {
            for (name, other) in routes.iter().filter(|(_, n)| !Arc::ptr_eq(n, &node)) {
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
