//! Cluster mode: the agent joins a Trellis server. It registers its Node, heartbeats,
//! takes its subnet lease of the network it serves, runs the same CNI backend as
//! single-node mode on that subnet, publishes an Endpoint per attachment
//! ([`endpoints`]), and keeps the fabric (routes, neighbours, FDB entries, tunnel
//! devices) in step with the other nodes' leases through the one shared reconciler of
//! `trellis-fabric`.
//!
//! Invariants:
//! - nothing in the kernel is touched until the first complete list of Nodes and the
//!   Network arrived: an agent restarting while the server is away changes nothing;
//! - a peer counts while its Node is ready and holds a lease: when its lease expires its
//!   routes leave, when it returns with the same subnet they come back unchanged;
//! - the fabric is re-applied after every change and every `resync` (drift repair).

pub mod endpoints;
mod informer;
pub mod services;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use trellis_api::objects::{Backend, NetworkSpec, NodeStatus};
use trellis_client::{Client, ClientError};
use trellis_fabric::reconcile::Reconciler;
use trellis_fabric::udp::UdpPump;
use trellis_fabric::{backend, pod_mtu, Local, NetworkFabric, Peer};
use trellis_net::Netlink;

use crate::node::{L2Uplink, Node, NodeConfig};
use informer::Informer;
use trellis_api::naming::LINK_PREFIX;

/// How the agent joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Server address and credentials.
    pub client: trellis_client::Config,
    /// This node's name (its Node object).
    pub node: String,
    /// The Network this agent serves.
    pub network: String,
    /// The underlay link (default: the one carrying the default route).
    pub uplink: Option<String>,
    /// The underlay address (default: the uplink's first IPv4 address).
    pub address: Option<Ipv4Addr>,
    /// The pod bridge.
    pub bridge: String,
    /// IPAM state directory.
    pub state_dir: PathBuf,
    /// Heartbeat period (keep it well under the server's node lease TTL).
    pub heartbeat: Duration,
    /// Fabric drift re-check and Endpoint re-publication period.
    pub resync: Duration,
    /// See [`NodeConfig::orphan_grace`].
    pub orphan_grace: Duration,
    /// The cluster DNS domain (`cluster.local`).
    pub domain: String,
    /// Where the cluster DNS forwards other names (default: `/etc/resolv.conf`'s).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Period of the service proxy's full sync (drift repair).
    pub proxy_full_resync: Duration,
}

/// Cluster-mode failures.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Talking to the server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The node's own setup failed.
    #[error("{0}")]
    Setup(String),
}

/// What the agent learned while joining.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The node subnet leased from the server.
    pub subnet: Ipv4Net,
    /// The underlay as detected.
    pub local: Local,
}

/// The underlay as found in the kernel.
#[derive(Debug, Clone)]
struct Underlay {
    /// The link carrying the node address (the pod bridge itself once `l2` moved it).
    local: Local,
    /// The physical uplink: `local.uplink`, or the bridge's uplink port under `l2`.
    port: String,
    /// The default route's gateway.
    gateway: Option<Ipv4Addr>,
}

/// The underlay: `uplink` (or the default route's link), its address and MTU.
async fn detect_local(nl: &Netlink, cfg: &ClusterConfig) -> Result<Underlay, ClusterError> {
    let links = nl
        .links()
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let routes = nl
        .routes()
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let default = routes.iter().find(|(d, _, _)| d.prefix_len() == 0);
    let mut link = match &cfg.uplink {
        Some(name) => links.iter().find(|l| &l.name == name),
        None => links
            .iter()
            .find(|l| Some(l.index) == default.and_then(|r| r.2)),
    };
    let mut port = link.map(|l| l.name.clone());
    // Under `l2` the node address lives on the pod bridge and the uplink is its port.
    if let Some(br) = link.filter(|l| l.name == cfg.bridge) {
        port = links
            .iter()
            .find(|l| l.master == Some(br.index) && !l.name.starts_with(LINK_PREFIX))
            .map(|l| l.name.clone());
    } else if let Some(br) = links.iter().find(|l| l.name == cfg.bridge) {
        // `--uplink eth0` given after l2 enslaved it: the address is on the bridge.
        if link.is_some_and(|l| l.master == Some(br.index)) {
            link = Some(br);
        }
    }
    let link = link.ok_or_else(|| {
        ClusterError::Setup(match &cfg.uplink {
            Some(n) => format!("uplink {n} does not exist"),
            None => "no default route to find the uplink by; pass --uplink".into(),
        })
    })?;
    let addrs = nl
        .addrs(link.index)
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let segment = match cfg.address {
        Some(a) => addrs
            .iter()
            .find(|n| n.addr() == a)
            .copied()
            .ok_or_else(|| {
                ClusterError::Setup(format!("{a} is not an address of {}", link.name))
            })?,
        None => *addrs.first().ok_or_else(|| {
            ClusterError::Setup(format!("uplink {} has no IPv4 address", link.name))
        })?,
    };
    Ok(Underlay {
        local: Local {
            name: cfg.node.clone(),
            address: segment.addr(),
            uplink: link.name.clone(),
            segment,
            uplink_mtu: link.mtu,
        },
        port: port.unwrap_or_else(|| link.name.clone()),
        gateway: default.and_then(|r| r.1),
    })
}

/// The underlay addresses of these Node objects.
fn node_addresses<'a>(nodes: impl Iterator<Item = &'a Value>) -> Vec<Ipv4Addr> {
    nodes
        .filter_map(|n| n["spec"]["address"].as_str()?.parse().ok())
        .collect()
}

/// Keep IPAM off the hosts' addresses (`l2`); a pod already holding one is an address
/// conflict on the segment, reported loudly.
fn exclude_hosts(node: &Node, hosts: Vec<Ipv4Addr>) {
    for r in node.ipam().set_hosts(hosts) {
        tracing::error!(
            ip = %r.ip,
            container = r.attachment.container_id,
            "a node registered with an address a pod already holds: address conflict on the segment; recreate the pod"
        );
    }
}

/// Create or update our Node with the underlay address.
async fn register(client: &Client, name: &str, address: Ipv4Addr) -> Result<(), ClientError> {
    let path = format!("/v1/nodes/{name}");
    match client.get(&path).await {
        Ok(mut n) => {
            if n["spec"]["address"] != json!(address) {
                n["spec"]["address"] = json!(address);
                client.put(&path, &n).await?;
            }
            Ok(())
        }
        Err(e) if e.status() == Some(404) => {
            let n = json!({"apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": name}, "spec": {"address": address}});
            match client.post("/v1/nodes", &n).await {
                Ok(_) => Ok(()),
                Err(e) if e.status() == Some(409) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn network_spec(obj: &Value) -> Option<(NetworkSpec, Option<u32>)> {
    let spec: NetworkSpec = serde_json::from_value(obj["spec"].clone()).ok()?;
    let vni = spec
        .vni
        .or_else(|| obj["status"]["vni"].as_u64().map(|v| v as u32));
    Some((spec, vni))
}

/// Join the cluster (retrying until the server answers), start the node's CNI backend
/// and the background loops. Returns the node for the CNI socket server.
pub async fn start(cfg: ClusterConfig) -> Result<(Arc<Node>, Joined), ClusterError> {
    let client = Client::new(&cfg.client)?;
    let nl = Netlink::connect().map_err(|e| ClusterError::Setup(e.to_string()))?;
    let underlay = detect_local(&nl, &cfg).await?;
    let local = underlay.local.clone();
    let (subnet, net_obj) = loop {
        match join(&client, &cfg, &local).await {
            Ok(x) => break x,
            // Retry what can heal; a bad configuration ends the agent.
            Err(e @ ClientError::Config(_)) => return Err(e.into()),
            Err(ClientError::Api {
                status, message, ..
            }) if status == 401 || status == 403 => {
                return Err(ClusterError::Setup(format!("server refused us: {message}")))
            }
            Err(e) => {
                tracing::warn!("joining the cluster: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (spec, vni) = network_spec(&net_obj)
        .ok_or_else(|| ClusterError::Setup(format!("network {} is malformed", cfg.network)))?;
    let fabric_net = NetworkFabric {
        name: cfg.network.clone(),
        backend: spec.backend,
        vni,
        mtu: spec.mtu,
        subnet,
    };
    let l2 = if spec.backend == Backend::L2 {
        if local.segment.trunc() != spec.cidr {
            return Err(ClusterError::Setup(format!(
                "network {} (l2) has cidr {} but this node's segment is {}: an l2 network's cidr must be the underlay segment",
                cfg.network,
                spec.cidr,
                local.segment.trunc()
            )));
        }
        let gateway = underlay.gateway.ok_or_else(|| {
            ClusterError::Setup("l2 backend: no default gateway on the uplink to give pods".into())
        })?;
        Some(L2Uplink {
            uplink: underlay.port.clone(),
            gateway,
            prefix_len: spec.cidr.prefix_len(),
        })
    } else {
        None
    };
    let node_cfg = NodeConfig {
        pod_subnet: subnet,
        cluster_cidrs: vec![spec.cidr],
        excluded: spec
            .reserved
            .iter()
            .copied()
            .filter(|r| r.contains(&subnet) || subnet.contains(r))
            .collect(),
        bridge: cfg.bridge.clone(),
        mtu: Some(pod_mtu(&fabric_net, &local)),
        state_dir: cfg.state_dir.clone(),
        orphan_grace: cfg.orphan_grace,
        l2,
    };
    let (node, report) = Node::start(node_cfg)
        .await
        .map_err(|e| ClusterError::Setup(format!("node {subnet}: {e}")))?;
    tracing::info!(%subnet, backend = spec.backend.as_str(), ?report, "joined the cluster");
    if spec.backend == Backend::L2 {
        // Pods share the hosts' segment: no host address may go to a pod, from the
        // first ADD on (the fabric loop follows Nodes registering later).
        match client.get("/v1/nodes").await {
            Ok(list) => {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                exclude_hosts(&node, node_addresses(items.iter()));
            }
            Err(e) => tracing::warn!("listing nodes for l2 address exclusion: {e}"),
        }
    }

    let nodes = Informer::start(client.clone(), "/v1/nodes".into());
    let networks = Informer::start(client.clone(), "/v1/networks".into());
    tokio::spawn(heartbeat_loop(
        client.clone(),
        cfg.clone(),
        subnet,
        local.address,
    ));
    let fabric = FabricLoop {
        client: client.clone(),
        cfg: cfg.clone(),
        local: local.clone(),
        subnet,
        node: node.clone(),
        nodes,
        networks,
        reconciler: Reconciler::new(nl.clone()),
        nl,
        started_backend: spec.backend,
        pump: None,
        published_unreachable: None,
    };
    tokio::spawn(fabric.run());
    let publisher = endpoints::Publisher {
        client: client.clone(),
        node_name: cfg.node.clone(),
        network: cfg.network.clone(),
        node: node.clone(),
    };
    tokio::spawn(publisher.run(cfg.resync));
    start_services(&cfg, &client, &node, &local, &spec).await?;
    Ok((node, Joined { subnet, local }))
}

/// The cluster DNS on the pod gateway (the node address under `l2`) and the service
/// proxy, fed by informers on Services and Endpoints.
async fn start_services(
    cfg: &ClusterConfig,
    client: &Client,
    node: &Arc<Node>,
    local: &Local,
    spec: &NetworkSpec,
) -> Result<(), ClusterError> {
    let dns_ip = if spec.backend == Backend::L2 {
        local.address
    } else {
        node.ipam().gateway()
    };
    let bind = std::net::SocketAddr::from((dns_ip, 53));
    let upstreams = if cfg.dns_upstreams.is_empty() {
        services::upstreams(bind)
    } else {
        cfg.dns_upstreams.clone()
    };
    let dns = trellis_dns::DnsServer::start(bind, &cfg.domain, upstreams)
        .await
        .map_err(|e| ClusterError::Setup(format!("cluster DNS on {bind}: {e}")))?;
    node.set_dns(dns_ip, &cfg.domain);
    // Node ports answer on every address of the node: the underlay one and, unless
    // the pods live on the underlay segment (`l2`), the pod gateway.
    let mut node_ips = vec![local.address];
    if spec.backend != Backend::L2 {
        node_ips.push(node.ipam().gateway());
    }
    let proxy = trellis_proxy::Proxy::new(trellis_proxy::ProxyConfig::new(
        services::PROXY_TABLE,
        node_ips,
        vec![spec.cidr],
    ));
    let svc_loop = services::ServiceLoop {
        node: cfg.node.clone(),
        services: Informer::start(client.clone(), "/v1/services".into()),
        endpoints: Informer::start(client.clone(), "/v1/endpoints".into()),
        proxy,
        dns: Some(Arc::new(dns)),
        domain: cfg.domain.clone(),
        full_resync: cfg.proxy_full_resync,
    };
    tokio::spawn(svc_loop.run());
    Ok(())
}

/// Register, heartbeat, lease the subnet and read the Network.
async fn join(
    client: &Client,
    cfg: &ClusterConfig,
    local: &Local,
) -> Result<(Ipv4Net, Value), ClientError> {
    register(client, &cfg.node, local.address).await?;
    client
        .post(&format!("/v1/nodes/{}/heartbeat", cfg.node), &json!({}))
        .await?;
    let lease = client
        .post(
            &format!("/v1/nodes/{}/subnets/{}", cfg.node, cfg.network),
            &json!({}),
        )
        .await?;
    let subnet: Ipv4Net = serde_json::from_value(lease["cidr"].clone())
        .map_err(|e| ClientError::Decode(format!("subnet lease: {e}")))?;
    let net = client.get(&format!("/v1/networks/{}", cfg.network)).await?;
    Ok((subnet, net))
}

/// Heartbeat forever. After the node's lease lapsed (a partition, a stopped agent) the
/// subnet lease is renewed too; losing the subnet to another node is fatal for the pods
/// and logged loudly.
async fn heartbeat_loop(client: Client, cfg: ClusterConfig, subnet: Ipv4Net, address: Ipv4Addr) {
    let path = format!("/v1/nodes/{}/heartbeat", cfg.node);
    loop {
        tokio::time::sleep(cfg.heartbeat).await;
        match client.post(&path, &json!({})).await {
            Ok(v) if v["renewed"] == json!(true) => {}
            Ok(_) => {
                tracing::info!("node lease had lapsed; renewing the subnet lease");
                let p = format!("/v1/nodes/{}/subnets/{}", cfg.node, cfg.network);
                match client.post(&p, &json!({})).await {
                    Ok(l) if l["cidr"] == json!(subnet) => {}
                    Ok(l) => tracing::error!(
                        "our subnet {subnet} went to another node meanwhile (now offered {}); restart the agent after draining its pods",
                        l["cidr"]
                    ),
                    Err(e) => tracing::warn!("renewing the subnet lease: {e}"),
                }
            }
            Err(e) if e.status() == Some(404) => {
                tracing::warn!("our Node object is gone; registering again");
                if let Err(e) = register(&client, &cfg.node, address).await {
                    tracing::warn!("registering: {e}");
                }
            }
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Everything the fabric loop owns.
struct FabricLoop {
    client: Client,
    cfg: ClusterConfig,
    local: Local,
    subnet: Ipv4Net,
    node: Arc<Node>,
    nodes: Informer,
    networks: Informer,
    reconciler: Reconciler,
    nl: Netlink,
    /// The backend at start (switching to or from `l2` needs a restart).
    started_backend: Backend,
    pump: Option<UdpPump>,
    published_unreachable: Option<BTreeSet<String>>,
}

impl std::fmt::Debug for FabricLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricLoop")
            .field("node", &self.cfg.node)
            .finish()
    }
}

impl FabricLoop {
    /// The network and peers as the informers see them; `None` until both have listed.
    fn view(&self) -> Option<(NetworkFabric, Vec<Peer>)> {
        let nets = self.networks.snapshot()?;
        let nodes = self.nodes.snapshot()?;
        let (spec, vni) = network_spec(nets.get(&self.cfg.network)?)?;
        let net = NetworkFabric {
            name: self.cfg.network.clone(),
            backend: spec.backend,
            vni,
            mtu: spec.mtu,
            subnet: self.subnet,
        };
        let mut peers = Vec::new();
        for (name, n) in &nodes {
            if name == &self.cfg.node {
                continue;
            }
            let Ok(status) = serde_json::from_value::<NodeStatus>(n["status"].clone()) else {
                continue;
            };
            let Some(address) = n["spec"]["address"].as_str().and_then(|a| a.parse().ok()) else {
                continue;
            };
            if !status.ready {
                continue;
            }
            if let Some(l) = status.leases.iter().find(|l| l.network == self.cfg.network) {
                peers.push(Peer {
                    name: name.clone(),
                    address,
                    subnet: l.cidr,
                });
            }
        }
        Some((net, peers))
    }

    async fn run(mut self) {
        let mut nodes_changed = self.nodes.subscribe();
        let mut nets_changed = self.networks.subscribe();
        let mut last_error = false;
        loop {
            if let Some((net, peers)) = self.view() {
                last_error = !self.sync(&net, &peers).await;
            }
            // Coalesce bursts: wait for a change (or the resync tick, sooner after an
            // error), then take everything that arrived meanwhile in one pass.
            let tick = if last_error {
                Duration::from_secs(1)
            } else {
                self.cfg.resync
            };
            tokio::select! {
                _ = nodes_changed.changed() => {}
                _ = nets_changed.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Apply the desired state once; false on error.
    async fn sync(&mut self, net: &NetworkFabric, peers: &[Peer]) -> bool {
        if (net.backend == Backend::L2) != (self.started_backend == Backend::L2) {
            tracing::error!(
                from = self.started_backend.as_str(),
                to = net.backend.as_str(),
                "switching a live network to or from l2 changes every pod's address; drain the node and restart the agent"
            );
            return false;
        }
        // The underlay MTU may have changed: the pod MTU and the tunnel devices follow.
        match self.nl.link(&self.local.uplink).await {
            Ok(Some(l)) if l.mtu != self.local.uplink_mtu => {
                tracing::info!(
                    from = self.local.uplink_mtu,
                    to = l.mtu,
                    uplink = self.local.uplink,
                    "underlay MTU changed"
                );
                self.local.uplink_mtu = l.mtu;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the uplink: {e}"),
        }
        if net.backend == Backend::L2 {
            if let Some(nodes) = self.nodes.snapshot() {
                exclude_hosts(&self.node, node_addresses(nodes.values()));
            }
        }
        let desired = backend::desired(net, &self.local, peers);
        self.node.set_mtu(pod_mtu(net, &self.local));
        // The udp backend's pump must exist before routes can point at its device.
        match (net.backend, desired.tun.iter().next()) {
            (Backend::Udp, Some(dev)) => {
                // A pump whose device was deleted from outside has stopped: replace it.
                if self.pump.as_ref().is_some_and(|p| !p.is_running()) {
                    tracing::warn!("udp pump stopped (its device is gone); starting a new one");
                    self.pump = None;
                }
                if self.pump.is_none() {
                    match UdpPump::start(dev, trellis_fabric::UDP_PORT) {
                        Ok(p) => self.pump = Some(p),
                        Err(e) => {
                            tracing::warn!("udp backend: {e}");
                            return false;
                        }
                    }
                }
                if let Some(p) = &self.pump {
                    p.set_peers(
                        peers
                            .iter()
                            .filter(|p| p.subnet != self.subnet)
                            .map(|p| {
                                (
                                    p.subnet,
                                    SocketAddrV4::new(p.address, trellis_fabric::UDP_PORT),
                                )
                            })
                            .collect(),
                    );
                }
            }
            _ => self.pump = None,
        }
        let ok = match self.reconciler.apply(&desired).await {
            Ok(r) if r.changes() > 0 => {
                tracing::info!(
                    ?r,
                    peers = peers.len(),
                    backend = net.backend.as_str(),
                    "fabric updated"
                );
                true
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("fabric: {e}");
                false
            }
        };
        if self.published_unreachable.as_ref() != Some(&desired.unreachable) {
            match self.publish_unreachable(&desired.unreachable).await {
                Ok(()) => self.published_unreachable = Some(desired.unreachable.clone()),
                Err(e) => tracing::warn!("publishing unreachable peers: {e}"),
            }
        }
        ok
    }

    /// Record in our Node's status which peers the backend cannot reach.
    async fn publish_unreachable(&self, peers: &BTreeSet<String>) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{}", self.cfg.node);
        let want: Vec<&String> = peers.iter().collect();
        for _ in 0..8 {
            let mut n = self.client.get(&path).await?;
            if n["status"]["unreachablePeers"] == json!(want)
                || (want.is_empty() && n["status"]["unreachablePeers"].is_null())
            {
                return Ok(());
            }
            if !want.is_empty() {
                tracing::warn!(peers = ?want, "peers unreachable with this backend (not on our segment)");
            }
            n["status"]["unreachablePeers"] = json!(want);
            match self.client.put(&path, &n).await {
                Err(e) if e.status() == Some(409) => continue,
                r => return r.map(|_| ()),
            }
        }
        Ok(())
    }
}
