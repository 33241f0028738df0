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

pub mod endpoints;
mod fabric;
mod informer;
mod join;
pub mod policy;
pub mod services;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_api::objects::{self, Backend, NetworkSpec};
use trellis_client::{Client, ClientError};
use trellis_fabric::reconcile::Reconciler;
use trellis_fabric::{pod_mtu, Local, NetworkFabric};
use trellis_net::Netlink;

use crate::node::{L2Uplink, Node, NodeConfig};
use fabric::FabricLoop;
use informer::Informer;
use join::{detect_local, heartbeat_loop, join};

/// How the agent joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Server address and credentials.
    pub client: trellis_client::Config,
    /// This node's name (its Node object).
    pub node: String,
    /// The Networks this agent serves (at least one). The first gets `bridge`, the
    /// state directory itself and the nftables table `ip trellis`; each other one
    /// [`trellis_api::naming::network_bridge`], `state_dir/networks/<name>` and
    /// `ip trellis-net-<name>`. Plugins choose one with their `network` key.
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

/// One network this agent serves: its CNI backend and what the fabric loop needs.
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
/// for every network served and the background loops. Returns the networks for the CNI
/// socket server, in `cfg.networks` order, and the underlay as detected.
pub async fn start(cfg: ClusterConfig) -> Result<(Vec<Served>, Local), ClusterError> {
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

    let mut served = Vec::new();
    for (
        i,
        Leased {
            name,
            subnet,
            spec,
            vni,
        },
    ) in specs.iter().enumerate()
    {
        let fabric_net = NetworkFabric {
            name: name.clone(),
            backend: spec.backend,
            vni: *vni,
            mtu: spec.mtu,
            subnet: *subnet,
        };
        let l2 = if spec.backend == Backend::L2 {
            if local.segment.trunc() != spec.cidr {
                return Err(ClusterError::Setup(format!(
                    "network {name} (l2) has cidr {} but this node's segment is {}: an l2 network's cidr must be the underlay segment",
                    spec.cidr,
                    local.segment.trunc()
                )));
            }
            let gateway = underlay.gateway.ok_or_else(|| {
                ClusterError::Setup(
                    "l2 backend: no default gateway on the uplink to give pods".into(),
                )
            })?;
            Some(L2Uplink {
                uplink: underlay.port.clone(),
                gateway,
                prefix_len: spec.cidr.prefix_len(),
            })
        } else {
            None
        };
        let (bridge, state_dir) = if i == 0 {
            (cfg.bridge.clone(), cfg.state_dir.clone())
        } else {
            (
                trellis_api::naming::network_bridge(name),
                cfg.state_dir.join("networks").join(name),
            )
        };
        let node_cfg = NodeConfig {
            pod_subnet: *subnet,
            cluster_cidrs: specs.iter().map(|s| s.spec.cidr).collect(),
            excluded: spec
                .reserved
                .iter()
                .copied()
                .filter(|r| r.contains(subnet) || subnet.contains(r))
                .collect(),
            bridge,
            nat_table: crate::nat::table_name(i, name),
            mtu: Some(pod_mtu(&fabric_net, &local)),
            state_dir,
            orphan_grace: cfg.orphan_grace,
            l2,
            gate: cfg.gate.clone(),
        };
        let (node, report) = Node::start(node_cfg)
            .await
            .map_err(|e| ClusterError::Setup(format!("network {name}, subnet {subnet}: {e}")))?;
        tracing::info!(network = name, %subnet, backend = spec.backend.as_str(), ?report, "joined the cluster");
        if spec.backend == Backend::L2 {
            // Pods share the hosts' segment: no host address may go to a pod, from the
            // first ADD on (the fabric loop follows Nodes registering later).
            match client.get("/v1/nodes").await {
                Ok(list) => {
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    let nodes: Vec<objects::Node> = items
                        .into_iter()
                        .filter_map(|v| serde_json::from_value(v).ok())
                        .collect();
                    exclude_hosts(&node, node_addresses(nodes.iter()));
                }
                Err(e) => tracing::warn!("listing nodes for l2 address exclusion: {e}"),
            }
        }
        served.push(Served {
            name: name.clone(),
            subnet: *subnet,
            node,
            started_backend: spec.backend,
            cidr: spec.cidr,
        });
    }

    let nodes = Informer::start(client.clone(), "/v1/nodes".into());
    let networks = Informer::start(client.clone(), "/v1/networks".into());
    let endpoints = Informer::start(client.clone(), "/v1/endpoints".into());
    let leases: Vec<(String, Ipv4Net)> =
        served.iter().map(|s| (s.name.clone(), s.subnet)).collect();
    tokio::spawn(heartbeat_loop(
        client.clone(),
        cfg.clone(),
        leases,
        local.address,
    ));
    let fabric = FabricLoop {
        client: client.clone(),
        cfg: cfg.clone(),
        local: local.clone(),
        served: served.clone(),
        nodes: nodes.clone(),
        networks,
        reconciler: Reconciler::new(nl.clone()),
        nl,
        pump: resumed_pump,
        udp_memory,
        published_unreachable: None,
    };
    tokio::spawn(fabric.run());
    for s in &served {
        let publisher = endpoints::Publisher {
            client: client.clone(),
            node_name: cfg.node.clone(),
            network: s.name.clone(),
            node: s.node.clone(),
        };
        tokio::spawn(publisher.run(cfg.resync));
    }
    start_services(&cfg, &client, &served, &local, endpoints.clone()).await?;
    // Network policy: every pod's DNS server (its gateway, or the node under l2) stays
    // reachable whatever the egress policy says.
    let dns: Vec<Ipv4Addr> = served
        .iter()
        .map(|s| {
            if s.started_backend == Backend::L2 {
                local.address
            } else {
                s.node.ipam().gateway()
            }
        })
        .collect();
    // The node's own addresses: its connections to its pods are never policed.
    // (Under l2 the pods' gateway is the segment's router, not the node's.)
    let mut node_addrs = vec![local.address];
    node_addrs.extend(
        served
            .iter()
            .filter(|s| s.started_backend != Backend::L2)
            .map(|s| s.node.ipam().gateway()),
    );
    let policy = policy::PolicyController::new(
        policy::Informers::start(&client, nodes, endpoints),
        &cfg.node,
        served.iter().map(|s| s.node.clone()).collect(),
        &dns,
        &node_addrs,
        cfg.gate.clone(),
        cfg.resync,
    );
    cfg.gate.set_policy(policy.clone());
    tokio::spawn(policy.run());
    Ok((served, local))
}

/// A network as joined: its name, our leased subnet, its spec and VNI.
#[derive(Debug, Clone)]
struct Leased {
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

/// The cluster DNS on every network's pod gateway (the node address under `l2`) and
/// the service proxy, fed by informers on Services and Endpoints.
async fn start_services(
    cfg: &ClusterConfig,
    client: &Client,
    served: &[Served],
    local: &Local,
    endpoints: Informer,
) -> Result<(), ClusterError> {
    let upstreams_for = |bind| {
        if cfg.dns_upstreams.is_empty() {
            services::upstreams(bind)
        } else {
            cfg.dns_upstreams.clone()
        }
    };
    let mut dns = Vec::new();
    // Node ports answer on every address of the node: the underlay one and every pod
    // gateway (except under `l2`, whose pods use the segment's router).
    let mut node_ips = vec![local.address];
    for s in served {
        let dns_ip = if s.started_backend == Backend::L2 {
            local.address
        } else {
            let gw = s.node.ipam().gateway();
            node_ips.push(gw);
            gw
        };
        let bind = std::net::SocketAddr::from((dns_ip, 53));
        let server = trellis_dns::DnsServer::start(bind, &cfg.domain, upstreams_for(bind))
            .await
            .map_err(|e| ClusterError::Setup(format!("cluster DNS on {bind}: {e}")))?;
        s.node.set_dns(dns_ip, &cfg.domain);
        dns.push(Arc::new(server));
    }
    let proxy = trellis_proxy::Proxy::new(trellis_proxy::ProxyConfig::new(
        services::PROXY_TABLE,
        node_ips,
        served.iter().map(|s| s.cidr).collect(),
    ));
    let svc_loop = services::ServiceLoop {
        client: client.clone(),
        node: cfg.node.clone(),
        services: Informer::start(client.clone(), "/v1/services".into()),
        endpoints,
        proxy,
        dns,
        domain: cfg.domain.clone(),
        full_resync: cfg.proxy_full_resync,
    };
    tokio::spawn(svc_loop.run());
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
