//! The fabric loop: on every informer change (coalesced) and every `resync`, per served
//! network, the peers (other Nodes that are ready and hold a lease in it) → the backend's
//! desired routes, neighbours, FDB entries and devices, merged over the networks → the
//! one shared [`Reconciler`]. It also follows the Networks' MTU and backend, keeps `l2`
//! IPAM off the hosts' addresses, runs the udp pump, and publishes the peers it cannot
//! reach in the Node's status.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde_json::json;
use trellis_api::objects::{Backend, NodeStatus};
use trellis_client::{Client, ClientError};
use trellis_fabric::reconcile::Reconciler;
use trellis_fabric::udp::UdpPump;
use trellis_fabric::{backend, pod_mtu, Desired, Local, NetworkFabric, Peer};
use trellis_net::Netlink;

use super::informer::Informer;
use super::{exclude_hosts, network_spec, node_addresses, ClusterConfig, Served};

/// What the fabric loop works from: every served network with its ready peers, and the
/// addresses of all Nodes (for `l2` IPAM).
#[derive(Debug)]
struct View {
    nets: Vec<(NetworkFabric, Vec<Peer>)>,
    hosts: Vec<Ipv4Addr>,
}

/// Everything the fabric loop owns.
pub(super) struct FabricLoop {
    pub(super) client: Client,
    pub(super) cfg: ClusterConfig,
    pub(super) local: Local,
    pub(super) served: Vec<Served>,
    pub(super) nodes: Informer,
    pub(super) networks: Informer,
    pub(super) reconciler: Reconciler,
    pub(super) nl: Netlink,
    pub(super) pump: Option<UdpPump>,
    pub(super) published_unreachable: Option<BTreeSet<String>>,
}

impl std::fmt::Debug for FabricLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricLoop")
            .field("node", &self.cfg.node)
            .finish()
    }
}

impl FabricLoop {
    /// Every served network with its peers as the informers see them, and every
    /// Node's address; `None` until both have listed (or while a served network is
    /// missing).
    fn view(&self) -> Option<View> {
        let nets = self.networks.snapshot()?;
        let nodes = self.nodes.snapshot()?;
        let mut out = Vec::new();
        for s in &self.served {
            let (spec, vni) = network_spec(nets.get(&s.name)?)?;
            let net = NetworkFabric {
                name: s.name.clone(),
                backend: spec.backend,
                vni,
                mtu: spec.mtu,
                subnet: s.subnet,
            };
            let mut peers = Vec::new();
            for (name, n) in &nodes {
                if name == &self.cfg.node {
                    continue;
                }
                let Ok(status) = serde_json::from_value::<NodeStatus>(n["status"].clone()) else {
                    continue;
                };
                let Some(address) = n["spec"]["address"].as_str().and_then(|a| a.parse().ok())
                else {
                    continue;
                };
                if !status.ready {
                    continue;
                }
                if let Some(l) = status.leases.iter().find(|l| l.network == s.name) {
                    peers.push(Peer {
                        name: name.clone(),
                        address,
                        subnet: l.cidr,
                    });
                }
            }
            out.push((net, peers));
        }
        Some(View {
            nets: out,
            hosts: node_addresses(nodes.values()),
        })
    }

    pub(super) async fn run(mut self) {
        let mut nodes_changed = self.nodes.subscribe();
        let mut nets_changed = self.networks.subscribe();
        let mut last_error = false;
        loop {
            if let Some(view) = self.view() {
                last_error = !self.sync(&view).await;
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

    /// Apply the desired state of every served network once, through the one
    /// reconciler; false on error.
    async fn sync(&mut self, view: &View) -> bool {
        let View { nets: view, hosts } = view;
        for ((net, _), s) in view.iter().zip(&self.served) {
            if (net.backend == Backend::L2) != (s.started_backend == Backend::L2) {
                tracing::error!(
                    network = net.name,
                    from = s.started_backend.as_str(),
                    to = net.backend.as_str(),
                    "switching a live network to or from l2 changes every pod's address; drain the node and restart the agent"
                );
                return false;
            }
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
        let mut desired = Desired::default();
        let mut udp = None;
        for ((net, peers), s) in view.iter().zip(&self.served) {
            if net.backend == Backend::L2 {
                exclude_hosts(&s.node, hosts.clone());
            }
            let d = backend::desired(net, &self.local, peers);
            s.node.set_mtu(pod_mtu(net, &self.local));
            if net.backend == Backend::Udp {
                udp = d
                    .tun
                    .iter()
                    .next()
                    .cloned()
                    .map(|dev| (dev, s.subnet, peers));
            }
            desired.merge(d);
        }
        // The udp backend's pump must exist before routes can point at its device.
        match udp {
            Some((dev, subnet, peers)) => {
                // A pump whose device was deleted from outside has stopped: replace it.
                if self.pump.as_ref().is_some_and(|p| !p.is_running()) {
                    tracing::warn!("udp pump stopped (its device is gone); starting a new one");
                    self.pump = None;
                }
                if self.pump.is_none() {
                    match UdpPump::start(&dev, trellis_fabric::UDP_PORT) {
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
                            .filter(|p| p.subnet != subnet)
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
            None => self.pump = None,
        }
        let ok = match self.reconciler.apply(&desired).await {
            Ok(r) if r.changes() > 0 => {
                let backends: Vec<&str> = view.iter().map(|(n, _)| n.backend.as_str()).collect();
                tracing::info!(?r, networks = view.len(), ?backends, "fabric updated");
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
