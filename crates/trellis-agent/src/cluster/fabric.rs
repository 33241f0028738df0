//! The fabric loop: on every informer change (coalesced) and every `resync`, per served
//! network, the peers (other Nodes that are ready and hold a lease in it) → the backend's
//! desired routes, neighbours, FDB entries and devices, merged over the networks → the
//! one shared [`Reconciler`]. It also follows the Networks' MTU and backend, keeps `l2`
//! IPAM off the hosts' addresses, runs the udp pump, and publishes the peers it cannot
//! reach in the Node's status.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use serde_json::json;
use trellis_api::objects::{AnyObject, Backend, Network};
use trellis_client::{Client, ClientError};
use trellis_fabric::reconcile::Reconciler;
use trellis_fabric::udp::UdpPump;
use trellis_fabric::{backend, pod_mtu, Desired, Local, NetworkFabric, Peer, TunDevice};
use trellis_net::Netlink;

use super::join::update_node_status;
use super::networks::ServedSet;
use super::world::World;
use super::{exclude_hosts, network_spec, node_addresses, ClusterConfig, Served};
use trellis_client::informer::Informer;

/// What the fabric loop works from: every served network with its ready peers, and the
/// addresses of all Nodes (for `l2` IPAM).
#[derive(Debug, PartialEq)]
struct View {
    nets: Vec<(NetworkFabric, Vec<Peer>)>,
    hosts: Vec<Ipv4Addr>,
}

/// Everything the fabric loop owns.
pub(super) struct FabricLoop {
    pub(super) client: Client,
    pub(super) cfg: ClusterConfig,
    pub(super) local: Local,
    pub(super) served: ServedSet,
    pub(super) nodes: Informer,
    pub(super) networks: Informer,
    /// The node's own namespace.
    pub(super) reconciler: Reconciler,
    /// Each tenant world's, made at its first pass.
    pub(super) worlds: BTreeMap<String, Reconciler>,
    pub(super) nl: Netlink,
    pub(super) pump: Option<UdpPump>,
    /// What `STATE_DIR/udp-pump.json` holds (see [`FabricLoop::remember_udp`]), so a pass writes it
    /// only when the pump's device or peers changed.
    pub(super) udp_memory: Option<UdpMemory>,
    pub(super) published_unreachable: Option<BTreeSet<String>>,
    /// What the `direct` sets (tenants' host-gw ranges) hold, as last written.
    pub(super) direct_written: Option<super::world::DirectEntries>,
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
    /// Node's address; `None` until both have listed. A served network whose object
    /// is gone (being retired) is left out.
    fn view(&self, served: &[Served]) -> Option<View> {
        let nets: BTreeMap<String, Network> = self
            .networks
            .snapshot()?
            .iter()
            .filter_map(|o| match &**o {
                AnyObject::Network(n) => Some((n.metadata.name.clone(), n.clone())),
                _ => None,
            })
            .collect();
        let nodes: Vec<trellis_api::objects::Node> = self
            .nodes
            .snapshot()?
            .iter()
            .filter_map(|o| match &**o {
                AnyObject::Node(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for s in served {
            let Some(net) = nets.get(&s.name) else {
                continue;
            };
            let (spec, vni) = network_spec(net);
            let net = NetworkFabric {
                name: s.name.clone(),
                backend: spec.backend,
                vni,
                mtu: spec.mtu,
                subnet: s.subnet,
            };
            let peers = nodes
                .iter()
                .filter(|n| n.metadata.name != self.cfg.node && n.status.ready)
                .filter_map(|n| {
                    let l = n.status.leases.iter().find(|l| l.network == s.name)?;
                    Some(Peer {
                        name: n.metadata.name.clone(),
                        address: n.spec.address,
                        subnet: l.cidr,
                    })
                })
                .collect();
            out.push((net, peers));
        }
        Some(View {
            nets: out,
            hosts: node_addresses(nodes.iter()),
        })
    }

    /// Keep (or forget, with `None`) the udp pump's device and peer table in the state
    /// directory, so a restarted agent can pump before it has joined (see
    /// [`resume_udp_pump`]); the file is touched only when that changed, and written
    /// atomically (temporary file, then rename).
    fn remember_udp(&mut self, now: Option<UdpMemory>) {
        if now == self.udp_memory {
            return;
        }
        match store_udp(&self.cfg.state_dir, now.as_ref()) {
            Ok(()) => self.udp_memory = now,
            Err(e) => tracing::warn!("remember the udp pump's peers: {e}"),
        }
    }

    pub(super) async fn run(mut self) {
        let mut nodes_changed = self.nodes.subscribe();
        let mut nets_changed = self.networks.subscribe();
        let mut served_changed = self.served.clone();
        let mut last_error = false;
        let mut applied: Option<View> = None;
        let mut last_sync: Option<Instant> = None;
        loop {
            let served = served_changed.borrow_and_update().clone();
            if let Some(view) = self.view(&served) {
                // A Node write that changes nothing the fabric reads (its heartbeat,
                // the services it programmed) is not a reason to touch the kernel;
                // drift is repaired once `resync` has passed since the last pass,
                // however busy the Nodes are.
                let due = last_sync.is_none_or(|t| t.elapsed() >= self.cfg.resync);
                if due || last_error || applied.as_ref() != Some(&view) {
                    last_error = !self.sync(&view, &served).await;
                    applied = Some(view);
                    last_sync = Some(Instant::now());
                }
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
                _ = served_changed.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Apply the desired state of every served network once, through the one
    /// reconciler; false on error.
    async fn sync(&mut self, view: &View, served: &[Served]) -> bool {
        let View { nets: view, hosts } = view;
        // The view holds the served networks that still exist, in order.
        let served: Vec<&Served> = view
            .iter()
            .filter_map(|(n, _)| served.iter().find(|s| s.name == n.name))
            .collect();
        for ((net, _), s) in view.iter().zip(&served) {
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
        // Each tenant world's fabric, applied by its own reconciler inside it.
        let mut world_desired: BTreeMap<String, (Desired, Arc<World>)> = BTreeMap::new();
        for s in &served {
            if let Some(w) = &s.world {
                world_desired
                    .entry(w.tenant.clone())
                    .or_insert_with(|| (Desired::default(), w.clone()));
            }
        }
        let mut udp = None;
        for ((net, peers), s) in view.iter().zip(&served) {
            if net.backend == Backend::L2 {
                exclude_hosts(&s.node, hosts.clone());
            }
            let d = backend::desired(net, &self.local, peers);
            s.node.set_mtu(pod_mtu(net, &self.local));
            if let Some(w) = &s.world {
                let mut d = d;
                if matches!(net.backend, Backend::HostGw | Backend::Hybrid) {
                    // Routed as it is (its range is the cluster's only one): the routes
                    // via the uplink (peers on this segment) from the node's namespace,
                    // and this node's subnet into the world; hybrid's tunnel to the
                    // other segments stays in the world.
                    let (direct, tunnelled) = std::mem::take(&mut d.routes)
                        .into_iter()
                        .partition(|r| r.dev == self.local.uplink);
                    d.routes = tunnelled;
                    desired.routes.extend::<BTreeSet<_>>(direct);
                    desired.routes.insert(trellis_fabric::Route {
                        dst: s.subnet,
                        via: Some(w.transit),
                        dev: super::world::node_link(&w.tenant),
                        onlink: false,
                    });
                    desired
                        .unreachable
                        .extend(std::mem::take(&mut d.unreachable));
                }
                if let Some((wd, _)) = world_desired.get_mut(&w.tenant) {
                    wd.merge(d);
                }
                continue;
            }
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
                // One started for another device (a changed MTU, or resumed from an
                // outdated memory) is replaced: the new one adopts and corrects it.
                if self.pump.as_ref().is_some_and(|p| p.device() != &dev) {
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
                let table: Vec<(Ipv4Net, SocketAddrV4)> = peers
                    .iter()
                    .filter(|p| p.subnet != subnet)
                    .map(|p| {
                        (
                            p.subnet,
                            SocketAddrV4::new(p.address, trellis_fabric::UDP_PORT),
                        )
                    })
                    .collect();
                if let Some(p) = &self.pump {
                    p.set_peers(table.clone());
                }
                self.remember_udp(Some((dev, table)));
            }
            None => {
                self.pump = None;
                self.remember_udp(None);
            }
        }
        let mut ok = match self.reconciler.apply(&desired).await {
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
        // Worlds no longer served are gone with their namespace.
        self.worlds.retain(|t, _| world_desired.contains_key(t));
        for (tenant, (d, w)) in &world_desired {
            if !self.worlds.contains_key(tenant) {
                match Netlink::connect_in(&w.ns) {
                    Ok(nl) => {
                        let r = Reconciler::in_world(nl, self.nl.clone(), w.ns.clone());
                        self.worlds.insert(tenant.clone(), r);
                    }
                    Err(e) => {
                        tracing::warn!(tenant, "fabric: {e}");
                        ok = false;
                        continue;
                    }
                }
            }
            match self.worlds[tenant].apply(d).await {
                Ok(r) if r.changes() > 0 => tracing::info!(?r, tenant, "tenant fabric updated"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(tenant, "fabric: {e}");
                    ok = false;
                }
            }
        }
        // The tenants' host-gw ranges: routed as they are, apart from other worlds.
        // (After the worlds' own fabric: a new world's routes come first.)
        if let Some(nets) = self.networks.snapshot() {
            let direct = nets.iter().filter_map(|o| match &**o {
                AnyObject::Network(n)
                    if matches!(n.spec.backend, Backend::HostGw | Backend::Hybrid) =>
                {
                    n.spec.tenant.as_deref().map(|t| (t, n.spec.cidr))
                }
                _ => None,
            });
            let here: BTreeMap<String, Arc<trellis_net::Netns>> = world_desired
                .iter()
                .map(|(t, (_, w))| (t.clone(), w.ns.clone()))
                .collect();
            let want = super::world::direct_entries(direct, here.keys().map(String::as_str));
            let written = &mut self.direct_written;
            if let Err(e) =
                tokio::task::block_in_place(|| super::world::sync_direct(&want, &here, written))
            {
                tracing::warn!("tenant host-gw ranges: {e}");
                self.direct_written = None;
                ok = false;
            }
        }
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
        let want: Vec<String> = peers.iter().cloned().collect();
        let path = format!("/v1/nodes/{}", self.cfg.node);
        update_node_status(&self.client, &path, |st| {
            if st.unreachable_peers == want {
                return false;
            }
            if !want.is_empty() {
                tracing::warn!(peers = ?want, "peers unreachable with this backend (not on our segment)");
            }
            st.unreachable_peers = want.clone();
            true
        })
        .await
    }
}

/// Where the udp pump's last device and peer table are kept between agent runs.
fn udp_memory_path(state_dir: &Path) -> PathBuf {
    state_dir.join("udp-pump.json")
}

/// Write (or, with `None`, remove) `STATE_DIR/udp-pump.json`.
fn store_udp(state_dir: &Path, what: Option<&UdpMemory>) -> std::io::Result<()> {
    let path = udp_memory_path(state_dir);
    let Some((dev, peers)) = what else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    };
    let v = json!({
        "device": {"name": dev.name, "mtu": dev.mtu, "address": dev.address.to_string()},
        "peers": peers.iter().map(|(n, e)| json!([n.to_string(), e.to_string()])).collect::<Vec<_>>(),
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, v.to_string())?;
    std::fs::rename(&tmp, &path)
}

/// What [`store_udp`] kept; `None` when nothing is (an unreadable file is logged).
fn recall_udp(state_dir: &Path) -> Option<UdpMemory> {
    let text = std::fs::read_to_string(udp_memory_path(state_dir)).ok()?;
    let parsed = (|| {
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let d = &v["device"];
        let dev = TunDevice {
            name: d["name"].as_str()?.to_string(),
            mtu: u32::try_from(d["mtu"].as_u64()?).ok()?,
            address: d["address"].as_str()?.parse().ok()?,
        };
        let peers = v["peers"]
            .as_array()?
            .iter()
            .map(|p| Some((p[0].as_str()?.parse().ok()?, p[1].as_str()?.parse().ok()?)))
            .collect::<Option<Vec<(Ipv4Net, SocketAddrV4)>>>()?;
        Some((dev, peers))
    })();
    if parsed.is_none() {
        tracing::warn!(
            "ignoring unreadable {}",
            udp_memory_path(state_dir).display()
        );
    }
    parsed
}

/// The udp pump's device and peer table.
pub(super) type UdpMemory = (TunDevice, Vec<(Ipv4Net, SocketAddrV4)>);

/// Before joining: if the last agent ran a udp pump and its (persistent) device is still
/// there, pump again with the remembered peer table, so udp traffic flows while the
/// server is away. The fabric loop takes the pump over (and replaces it if the device
/// it wants differs). Returns the pump (`None` when there is nothing to resume or it
/// failed, logged) and what the state directory remembers.
pub(super) async fn resume_udp_pump(
    nl: &Netlink,
    state_dir: &Path,
) -> (Option<UdpPump>, Option<UdpMemory>) {
    let Some((dev, peers)) = recall_udp(state_dir) else {
        return (None, None);
    };
    let memory = Some((dev.clone(), peers.clone()));
    if !matches!(nl.link(&dev.name).await, Ok(Some(_))) {
        return (None, memory); // the device is gone: nothing to resume into
    }
    match UdpPump::start(&dev, trellis_fabric::UDP_PORT) {
        Ok(p) => {
            p.set_peers(peers.clone());
            tracing::info!(device = %dev.name, peers = peers.len(), "udp pump resumed before joining");
            (Some(p), memory)
        }
        Err(e) => {
            tracing::warn!("resuming the udp pump: {e}");
            (None, memory)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_memory_round_trips_and_is_forgotten() {
        let dir = std::env::temp_dir().join(format!("trellis-udp-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(recall_udp(&dir).is_none());
        let dev = TunDevice {
            name: "trlu0123abcd".into(),
            mtu: 1472,
            address: "10.244.3.0/32".parse().unwrap(),
        };
        let peers = vec![(
            "10.244.1.0/24".parse().unwrap(),
            "192.168.77.12:8285".parse().unwrap(),
        )];
        let memory = (dev, peers);
        store_udp(&dir, Some(&memory)).unwrap();
        assert_eq!(recall_udp(&dir), Some(memory));
        store_udp(&dir, None).unwrap();
        store_udp(&dir, None).unwrap(); // forgetting twice is fine
        assert!(recall_udp(&dir).is_none());
        std::fs::write(udp_memory_path(&dir), "{not json").unwrap();
        assert!(recall_udp(&dir).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
