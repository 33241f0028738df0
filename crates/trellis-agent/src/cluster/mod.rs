//! Cluster mode: the agent joins a Trellis server. It registers its Node, heartbeats,
//! takes its subnet lease of every network it serves (`join`), runs the same CNI backend
//! as single-node mode on each subnet (one pod bridge, IPAM file and nftables table per
//! network), publishes an Endpoint per attachment ([`endpoints`]), runs the service proxy
//! and DNS ([`services`]), and keeps the fabric (routes, neighbours, FDB entries, tunnel
//! devices) of all its networks in step with the other nodes' leases through the one
//! shared reconciler of `trellis-fabric` (`fabric`). This module starts it all.
//!
//! Invariants:
//! - nothing in the kernel is touched until the first complete list of Nodes and the
//!   Network arrived: an agent restarting while the server is away changes nothing (a
//!   udp pump resumes on its persistent device with the peers the last agent knew,
//!   changing nothing either);
//! - a peer counts while its Node is ready and holds a lease: when its lease expires its
//!   routes leave, when it returns with the same subnet they come back unchanged;
//! - the fabric is re-applied after every change and every `resync` (drift repair).

mod bgp;
pub mod endpoints;
mod fabric;

mod join;
pub mod networks;
mod peering;
pub mod policy;
pub mod services;
pub mod world;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_api::objects::{self, Backend, NetworkSpec};
use trellis_client::{Client, ClientError};
use trellis_fabric::reconcile::Reconciler;
use trellis_fabric::Local;
use trellis_net::Netlink;

use crate::cni_server::Networks;
use crate::node::Node;
use fabric::FabricLoop;
use join::{detect_local, heartbeat_loop, join, Underlay};
use networks::Manager;
use trellis_client::informer::Informer;

/// How the agent joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Server address and credentials.
    pub client: trellis_client::Config,
    /// This node's name (its Node object).
    pub node: String,
    /// The Networks this agent always serves (at least one). The first gets `bridge`,
    /// the state directory itself and the nftables table `ip trellis`; each other one
    /// [`trellis_api::naming::network_bridge`], `state_dir/networks/<name>` and
    /// `ip trellis-net-<name>`. Plugins choose one with their `network` key; a network
    /// not listed here is served from the first ADD that names it until it is deleted
    /// (see [`networks`]).
    pub networks: Vec<String>,
    /// The underlay link (default: the one carrying the default route).
    pub uplink: Option<String>,
    /// The underlay address (default: the uplink's first IPv4 address).
    pub address: Option<Ipv4Addr>,
    /// The first network's pod bridge.
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
    /// Pod admission (anti-spoofing, policy), shared by every network.
    pub gate: Arc<crate::gate::Gate>,
    /// Period of each network's reconcile sweep ([`Node::run_sweeper`]).
    pub sweep_interval: Duration,
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

/// One network this agent serves: its CNI backend and what the controllers need.
#[derive(Debug, Clone)]
pub struct Served {
    /// The Network's name.
    pub name: String,
    /// This node's subnet of it.
    pub subnet: Ipv4Net,
    /// The CNI backend (IPAM, bridge, nftables) on that subnet.
    pub node: Arc<Node>,
    /// The backend at start (switching to or from `l2` needs a restart).
    started_backend: Backend,
    /// Its pod CIDR.
    cidr: Ipv4Net,
    /// The cluster DNS its pods use (stops when the last copy is dropped).
    dns: Option<Arc<trellis_dns::DnsServer>>,
    /// Its pods' gateway and DNS address (the node's address under `l2`).
    gateway: Ipv4Addr,
    /// Started with `--network`: served whatever happens to its Network object.
    pinned: bool,
    /// Its nftables table.
    nat_table: String,
    /// Its state directory.
    state_dir: PathBuf,
    /// The tenant world it lives in (`None`: the node's own namespace).
    world: Option<Arc<world::World>>,
}

impl Served {
    /// The tenant of its world, if any.
    fn tenant(&self) -> Option<&str> {
        self.world.as_ref().map(|w| w.tenant.as_str())
    }
}

impl Served {
    /// What the combination check reads.
    fn leased(&self) -> Leased {
        let mut spec = NetworkSpec::new(self.cidr);
        spec.backend = self.started_backend;
        Leased {
            name: self.name.clone(),
            subnet: self.subnet,
            spec,
            vni: None,
        }
    }
}

/// The underlay addresses of these Node objects.
fn node_addresses<'a>(nodes: impl Iterator<Item = &'a objects::Node>) -> Vec<Ipv4Addr> {
    nodes.map(|n| n.spec.address).collect()
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

/// A Network object's spec and VNI (`spec.vni`, else the allocated one).
fn network_spec(net: &objects::Network) -> (NetworkSpec, Option<u32>) {
    (net.spec.clone(), net.vni())
}

/// Join the cluster (retrying until the server answers), start the node's CNI backend
/// for every pinned network and every network served before the restart, and the
/// background loops. Returns the CNI socket's view of the served networks (which grows
/// and shrinks at run time) and the underlay as detected.
pub async fn start(cfg: ClusterConfig) -> Result<(Networks, Local), ClusterError> {
    if cfg.networks.is_empty() {
        return Err(ClusterError::Setup("no network to serve".into()));
    }
    let client = Client::new(&cfg.client)?;
    let nl = Netlink::connect().map_err(|e| ClusterError::Setup(e.to_string()))?;
    let underlay = detect_local(&nl, &cfg).await?;
    let local = underlay.local.clone();
    // The kernel keeps forwarding for every backend but udp, whose packets need a pump:
    // start it now with what the last agent knew, not only once the server answers.
    let (resumed_pump, udp_memory) = fabric::resume_udp_pump(&nl, &cfg.state_dir).await;
    let joined = loop {
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
    let mut specs = Vec::new();
    for (name, (subnet, obj)) in cfg.networks.iter().zip(&joined) {
        let net: objects::Network = serde_json::from_value(obj.clone())
            .map_err(|e| ClusterError::Setup(format!("network {name} is malformed: {e}")))?;
        let (spec, vni) = network_spec(&net);
        specs.push(Leased {
            name: name.clone(),
            subnet: *subnet,
            spec,
            vni,
        });
    }
    check_combination(&specs)?;

    let manager = Arc::new(Manager::new(
        client.clone(),
        cfg.clone(),
        local.clone(),
        underlay.clone(),
    ));
    let cidrs: Vec<Ipv4Net> = specs.iter().map(|s| s.spec.cidr).collect();
    for (i, leased) in specs.iter().enumerate() {
        // A pinned network of a tenant still lives in the node's namespace.
        manager.start_one(i, leased, cidrs.clone(), None).await?;
    }
    tracing::info!(networks = ?cfg.networks, "joined the cluster");
    // Networks served before a restart (their pods live on), or their leftovers.
    manager.adopt_earlier().await;
    let served = manager.subscribe();

    let nodes = Informer::start(client.clone(), "/v1/nodes".into());
    let networks = Informer::start(client.clone(), "/v1/networks".into());
    let endpoints = Informer::start(client.clone(), "/v1/endpoints".into());
    let namespaces = Informer::start(client.clone(), "/v1/namespaces".into());
    let services = Informer::start(client.clone(), "/v1/services".into());
    tokio::spawn(heartbeat_loop(
        client.clone(),
        cfg.clone(),
        served.clone(),
        local.address,
    ));
    let nodes_for_manager = nodes.clone();
    let fabric = FabricLoop {
        client: client.clone(),
        cfg: cfg.clone(),
        local: local.clone(),
        served: served.clone(),
        nodes: nodes.clone(),
        networks: networks.clone(),
        reconciler: Reconciler::new(nl.clone()),
        worlds: Default::default(),
        nl,
        pump: resumed_pump,
        udp_memory,
        published_unreachable: None,
        direct_written: None,
    };
    tokio::spawn(fabric.run());
    tokio::spawn(
        bgp::BgpLoop {
            client: client.clone(),
            node: cfg.node.clone(),
            address: local.address,
            served: served.clone(),
            nodes: nodes.clone(),
            networks: networks.clone(),
            configs: Informer::start(client.clone(), "/v1/bgpconfigurations".into()),
            peers: Informer::start(client.clone(), "/v1/bgppeers".into()),
            filters: Informer::start(client.clone(), "/v1/bgpfilters".into()),
            secrets: Informer::start(
                client.clone(),
                format!(
                    "/v1/namespaces/{}/secrets",
                    trellis_api::objects::BGP_SECRET_NAMESPACE
                ),
            ),
            namespaces: namespaces.clone(),
            services: services.clone(),
            endpoints: endpoints.clone(),
            resync: cfg.resync,
        }
        .run(),
    );
    // The service proxy and every served network's cluster DNS.
    let svc_loop = services::ServiceLoop {
        client: client.clone(),
        node: cfg.node.clone(),
        services: services.clone(),
        endpoints: endpoints.clone(),
        nodes: nodes.clone(),
        namespaces: namespaces.clone(),
        served: served.clone(),
        local: local.clone(),
        domain: cfg.domain.clone(),
        full_resync: cfg.proxy_full_resync,
    };
    tokio::spawn(svc_loop.run());
    let policy = policy::PolicyController::new(
        policy::Informers::start(&client, nodes, endpoints, namespaces.clone()),
        &cfg.node,
        served,
        local.address,
        cfg.gate.clone(),
        cfg.resync,
    );
    cfg.gate.set_policy(policy.clone());
    manager.set_policy(policy.clone());
    tokio::spawn(policy.run());
    let tenant_peerings = Informer::start(client.clone(), "/v1/tenantpeerings".into());
    let peerings = peering::PeeringLoop {
        served: manager.subscribe(),
        peerings: tenant_peerings.clone(),
        resync: cfg.resync,
    };
    tokio::spawn(peerings.run());
    tokio::spawn(networks::host_port_loop(manager.subscribe(), cfg.resync));
    let (demand_tx, demand_rx) = tokio::sync::mpsc::channel(64);
    let routes = manager.routes();
    tokio::spawn(manager.run(
        networks,
        namespaces,
        nodes_for_manager,
        tenant_peerings,
        services,
        demand_rx,
    ));
    Ok((Networks::dynamic(routes, demand_tx), local))
}

/// A network as joined: its name, our leased subnet, its spec and VNI.
#[derive(Debug, Clone)]
pub(super) struct Leased {
    name: String,
    subnet: Ipv4Net,
    spec: NetworkSpec,
    vni: Option<u32>,
}

/// Refuse network combinations one node cannot serve: overlapping CIDRs (their routes
/// would collide), more than one `udp` network (one pump port), an `l2` network that is
/// not the first or not alone of its kind (it takes over the uplink).
fn check_combination(specs: &[Leased]) -> Result<(), ClusterError> {
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[i + 1..] {
            if a.name == b.name {
                return Err(ClusterError::Setup(format!(
                    "network {} is listed twice",
                    a.name
                )));
            }
            let (x, y) = (a.spec.cidr, b.spec.cidr);
            if x.contains(&y) || y.contains(&x) {
                return Err(ClusterError::Setup(format!(
                    "networks {} ({x}) and {} ({y}) overlap: one agent cannot route both",
                    a.name, b.name
                )));
            }
        }
    }
    let of = |b: Backend| -> Vec<&str> {
        specs
            .iter()
            .filter(|s| s.spec.backend == b)
            .map(|s| s.name.as_str())
            .collect()
    };
    if of(Backend::Udp).len() > 1 {
        return Err(ClusterError::Setup(format!(
            "networks {} all use the udp backend; one agent runs one udp pump (port {})",
            of(Backend::Udp).join(", "),
            trellis_fabric::UDP_PORT
        )));
    }
    let l2 = of(Backend::L2);
    if l2.len() > 1 || (l2.len() == 1 && specs[0].spec.backend != Backend::L2) {
        return Err(ClusterError::Setup(format!(
            "l2 network {} must be the agent's only l2 network and come first (--network {} first): its bridge takes over the uplink",
            l2.join(", "),
            l2[0]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, cidr: &str, backend: Backend) -> Leased {
        let spec: NetworkSpec = serde_json::from_value(json!({
            "cidr": cidr,
            "backend": backend.as_str(),
        }))
        .unwrap();
        Leased {
            name: name.into(),
            subnet: cidr.parse().unwrap(),
            spec,
            vni: None,
        }
    }

    fn refused(specs: &[Leased]) -> String {
        match check_combination(specs) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted {specs:?}"),
        }
    }

    #[test]
    fn network_combinations_one_node_can_serve() {
        let ok = [
            spec("a", "10.244.0.0/16", Backend::Vxlan),
            spec("b", "10.245.0.0/16", Backend::HostGw),
            spec("c", "10.246.0.0/16", Backend::Udp),
        ];
        check_combination(&ok).unwrap();
        let e = refused(&[
            spec("a", "10.244.0.0/16", Backend::Vxlan),
            spec("b", "10.244.128.0/17", Backend::Vxlan),
        ]);
        assert!(
            e.contains("overlap") && e.contains("10.244.128.0/17"),
            "{e}"
        );
        let e = refused(&[
            spec("a", "10.244.0.0/16", Backend::Udp),
            spec("b", "10.245.0.0/16", Backend::Udp),
        ]);
        assert!(e.contains("udp"), "{e}");
        let e = refused(&[
            spec("a", "10.244.0.0/16", Backend::Vxlan),
            spec("lan", "192.168.1.0/24", Backend::L2),
        ]);
        assert!(e.contains("lan") && e.contains("first"), "{e}");
        check_combination(&[
            spec("lan", "192.168.1.0/24", Backend::L2),
            spec("a", "10.244.0.0/16", Backend::Vxlan),
        ])
        .unwrap();
        let e = refused(&[
            spec("a", "10.244.0.0/16", Backend::Vxlan),
            spec("a", "10.245.0.0/16", Backend::Vxlan),
        ]);
        assert!(e.contains("twice"), "{e}");
    }
}
