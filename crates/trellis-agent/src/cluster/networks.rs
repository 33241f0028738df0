//! The networks controller: which Networks this agent serves, changing at run time.
//!
//! - Served: every `--network` the agent was started with (pinned), every network that
//!   has a state directory from an earlier run (its pods live on), and every network a
//!   CNI ADD names (started on demand before the ADD is handled: its subnet is leased,
//!   its bridge, IPAM, table, cluster DNS, Endpoint publisher and sweeper started).
//! - Also served: every Network whose `nodeSelector` selects this Node, every network
//!   of a tenant with an entry on every node (a Service with node ports, external or
//!   load-balancer addresses: they lead into its world from any node), and every
//!   network of a tenant peered with a tenant that has a network here for one of the
//!   reasons above (so the peer's world is here to route to).
//! - Retired: a served network (not pinned) whose Network object is deleted, or that
//!   no reason above holds any more (no pod here for [`IDLE_GRACE`], not selected, no
//!   entry, no peering wants it): its Endpoints, host veths, bridge, table and state directory
//!   are removed; the fabric, proxy and policy controllers drop what they had for it at
//!   their next pass, since each reads the served set ([`ServedSet`]) on every pass.
//!   Which networks to serve is one pure function, [`wanted`].
//!
//! One task at a time starts or retires a network (`lock`), so the set and the kernel
//! never disagree about what is being built.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use trellis_api::objects::{self, AnyObject, Backend, NetworkSpec};
use trellis_client::Client;
use trellis_fabric::{pod_mtu, Local, NetworkFabric};

use super::world::{self, World};
use super::{check_combination, endpoints, exclude_hosts, node_addresses, services};
use super::{ClusterConfig, ClusterError, Leased, Served, Underlay};
use crate::cni_server::{Demand, Routes, Want};
use crate::node::{remove_network, L2Uplink, Node, NodeConfig};
use trellis_client::informer::Informer;

/// The networks served now, as every controller reads them.
pub type ServedSet = watch::Receiver<Arc<Vec<Served>>>;

/// How long a network started here stays served with no pod (an ADD that started it
/// has not reserved its address yet).
pub(super) const IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A served network, as [`wanted`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServedView {
    /// The Network's name.
    pub name: String,
    /// Started with `--network`.
    pub pinned: bool,
    /// It has pods here, or was started or asked for by a CNI ADD less than
    /// [`IDLE_GRACE`] ago.
    pub busy: bool,
    /// The Networks this agent sees are as new as the Network object it started from:
    /// absent from them now, it was deleted (a network started for an ADD may not have
    /// reached the informer yet).
    pub known: bool,
}

/// The networks this node should serve: the pinned ones, those with pods here (or just
/// started), those whose `nodeSelector` matches this node's `labels`, every network of
/// a tenant with an entry on every node (`exposed`: a Service with node ports, external
/// or load-balancer addresses), and every network of a tenant peered (`peerings`) with
/// the tenant of one of those. Only networks that exist count, except pinned ones.
pub(super) fn wanted(
    networks: &[&objects::Network],
    peerings: &[(String, String)],
    exposed: &std::collections::BTreeSet<String>,
    labels: &BTreeMap<String, String>,
    served: &[ServedView],
) -> std::collections::BTreeSet<String> {
    let tenant = |name: &str| {
        networks
            .iter()
            .find(|n| n.metadata.name == name)
            .map(|n| n.spec.tenant.clone())
    };
    let mut want: std::collections::BTreeSet<String> = served
        .iter()
        .filter(|v| v.pinned || (v.busy && (tenant(&v.name).is_some() || !v.known)))
        .map(|v| v.name.clone())
        .collect();
    want.extend(
        networks
            .iter()
            .filter(|n| {
                n.spec
                    .node_selector
                    .as_ref()
                    .is_some_and(|s| s.matches(labels))
                    || n.spec.tenant.as_ref().is_some_and(|t| exposed.contains(t))
            })
            .map(|n| n.metadata.name.clone()),
    );
    let tenants: std::collections::BTreeSet<String> =
        want.iter().filter_map(|n| tenant(n).flatten()).collect();
    let peers: std::collections::BTreeSet<&String> = peerings
        .iter()
        .flat_map(|(a, b)| [(a, b), (b, a)])
        .filter(|(have, _)| tenants.contains(*have))
        .map(|(_, peer)| peer)
        .collect();
    want.extend(
        networks
            .iter()
            .filter(|n| n.spec.tenant.as_ref().is_some_and(|t| peers.contains(t)))
            .map(|n| n.metadata.name.clone()),
    );
    want
}

/// Starts and retires the networks this agent serves.
#[derive(Debug)]
pub(super) struct Manager {
    client: Client,
    cfg: ClusterConfig,
    local: Local,
    underlay: Underlay,
    served: watch::Sender<Arc<Vec<Served>>>,
    routes: watch::Sender<Routes>,
    /// The background tasks of each served network (Endpoint publisher, sweeper).
    tasks: Mutex<BTreeMap<String, Vec<JoinHandle<()>>>>,
    /// The tenant worlds with a served network on this node.
    worlds: Mutex<BTreeMap<String, Arc<World>>>,
    /// Network policy, for the gates of worlds (set once it runs).
    policy: std::sync::OnceLock<Arc<dyn crate::gate::PodPolicy>>,
    /// Serialises starting and retiring.
    lock: tokio::sync::Mutex<()>,
    /// When each network was last started or asked for by a CNI ADD: for
    /// [`IDLE_GRACE`] after, it is not retired for want of pods (the ADD has not
    /// reserved its address yet).
    touched: Mutex<BTreeMap<String, std::time::Instant>>,
    /// The revision of the Network object each network was started from (for an ADD):
    /// the informer shows it, or its deletion, from that revision on.
    started_at: Mutex<BTreeMap<String, u64>>,
}

impl Manager {
    /// A manager serving nothing yet.
    pub(super) fn new(
        client: Client,
        cfg: ClusterConfig,
        local: Local,
        underlay: Underlay,
    ) -> Self {
        Manager {
            client,
            cfg,
            local,
            underlay,
            served: watch::channel(Arc::new(Vec::new())).0,
            routes: watch::channel(Arc::new(Vec::new())).0,
            tasks: Mutex::default(),
            worlds: Mutex::default(),
            policy: std::sync::OnceLock::new(),
            lock: tokio::sync::Mutex::new(()),
            touched: Mutex::new(BTreeMap::new()),
            started_at: Mutex::new(BTreeMap::new()),
        }
    }

    /// The served set, for the controllers.
    pub(super) fn subscribe(&self) -> ServedSet {
        self.served.subscribe()
    }

    /// The served set, for the CNI socket.
    pub(super) fn routes(&self) -> watch::Receiver<Routes> {
        self.routes.subscribe()
    }

    /// The networks served now.
    pub(super) fn current(&self) -> Arc<Vec<Served>> {
        self.served.borrow().clone()
    }

    fn publish(&self, list: Vec<Served>) {
        let routes: Vec<(String, Arc<Node>)> = list
            .iter()
            .map(|s| (s.name.clone(), s.node.clone()))
            .collect();
        self.served.send_replace(Arc::new(list));
        self.routes.send_replace(Arc::new(routes));
    }

    /// The state directory of network number `index` (the first pinned one keeps the
    /// agent's own directory).
    fn state_dir(&self, index: usize, name: &str) -> PathBuf {
        if index == 0 {
            self.cfg.state_dir.clone()
        } else {
            networks_dir(&self.cfg.state_dir).join(name)
        }
    }

    fn bridge(&self, index: usize, name: &str) -> String {
        if index == 0 {
            self.cfg.bridge.clone()
        } else {
            trellis_api::naming::network_bridge(name)
        }
    }

    /// Start serving `leased` as network number `index` of the agent (0: the first
    /// pinned one, which keeps the agent's bridge, state directory and table names).
    /// `cluster_cidrs`: the ranges its pods reach without masquerade.
    pub(super) async fn start_one(
        &self,
        index: usize,
        leased: &Leased,
        cluster_cidrs: Vec<Ipv4Net>,
        world: Option<Arc<World>>,
    ) -> Result<(), ClusterError> {
        let Leased {
            name,
            subnet,
            spec,
            vni,
        } = leased;
        let fabric_net = NetworkFabric {
            name: name.clone(),
            backend: spec.backend,
            vni: *vni,
            mtu: spec.mtu,
            subnet: *subnet,
        };
        let l2 = if spec.backend == Backend::L2 {
            if self.local.segment.trunc() != spec.cidr {
                return Err(ClusterError::Setup(format!(
                    "network {name} (l2) has cidr {} but this node's segment is {}: an l2 network's cidr must be the underlay segment",
                    spec.cidr,
                    self.local.segment.trunc()
                )));
            }
            let gateway = self.underlay.gateway.ok_or_else(|| {
                ClusterError::Setup(
                    "l2 backend: no default gateway on the uplink to give pods".into(),
                )
            })?;
            Some(L2Uplink {
                uplink: self.underlay.port.clone(),
                gateway,
                prefix_len: spec.cidr.prefix_len(),
            })
        } else {
            None
        };
        let node_cfg = NodeConfig {
            pod_subnet: *subnet,
            cluster_cidrs,
            excluded: spec
                .reserved
                .iter()
                .copied()
                .filter(|r| r.contains(subnet) || subnet.contains(r))
                .collect(),
            bridge: self.bridge(index, name),
            nat_table: crate::nat::table_name(index, name),
            mtu: Some(pod_mtu(&fabric_net, &self.local)),
            state_dir: self.state_dir(index, name),
            orphan_grace: self.cfg.orphan_grace,
            l2,
            gate: world
                .as_ref()
                .map_or_else(|| self.cfg.gate.clone(), |w| w.gate.clone()),
            world: world.as_ref().map(|w| w.ns.clone()),
        };
        let (node, report) = Node::start(node_cfg)
            .await
            .map_err(|e| ClusterError::Setup(format!("network {name}, subnet {subnet}: {e}")))?;
        tracing::info!(network = name, %subnet, backend = spec.backend.as_str(), ?report, "serving network");
        if spec.backend == Backend::L2 {
            // Pods share the hosts' segment: no host address may go to a pod, from the
            // first ADD on (the fabric loop follows Nodes registering later).
            match self.client.get("/v1/nodes").await {
                Ok(list) => {
                    let nodes: Vec<objects::Node> =
                        serde_json::from_value::<trellis_api::watch::List<serde_json::Value>>(list)
                            .map(|l| l.items)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|v| serde_json::from_value(v).ok())
                            .collect();
                    exclude_hosts(&node, node_addresses(nodes.iter()));
                }
                Err(e) => tracing::warn!("listing nodes for l2 address exclusion: {e}"),
            }
        }
        // The cluster DNS on the pods' gateway (the node's address under l2), bound
        // inside the network's world; it answers that world's names.
        let dns_ip = if spec.backend == Backend::L2 {
            self.local.address
        } else {
            node.ipam().gateway()
        };
        let bind = std::net::SocketAddr::from((dns_ip, 53));
        let upstreams = if self.cfg.dns_upstreams.is_empty() {
            services::upstreams(bind)
        } else {
            self.cfg.dns_upstreams.clone()
        };
        let dns_err = |e: String| ClusterError::Setup(format!("cluster DNS on {bind}: {e}"));
        let sockets = match &world {
            None => trellis_dns::DnsServer::bind(bind).map_err(|e| dns_err(e.to_string()))?,
            Some(w) => {
                w.ns.run(|| trellis_dns::DnsServer::bind(bind))
                    .map_err(|e| dns_err(e.to_string()))?
                    .map_err(|e| dns_err(e.to_string()))?
            }
        };
        let dns = trellis_dns::DnsServer::start_on(sockets, &self.cfg.domain, upstreams)
            .await
            .map_err(|e| dns_err(e.to_string()))?;
        node.set_dns(dns_ip, &self.cfg.domain);
        let dns = Some(Arc::new(dns));
        let publisher = endpoints::Publisher {
            client: self.client.clone(),
            node_name: self.cfg.node.clone(),
            network: name.clone(),
            node: node.clone(),
        };
        let mut tasks = vec![
            tokio::spawn(publisher.run(self.cfg.resync)),
            tokio::spawn(node.clone().run_sweeper(self.cfg.sweep_interval)),
        ];
        if let Some(w) = &world {
            // The world's anti-spoofing tables hold exactly its reservations: now and
            // every sweep.
            let (gate, every) = (w.gate.clone(), self.cfg.sweep_interval);
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = tokio::task::block_in_place(|| gate.sync()) {
                        tracing::warn!("{e}");
                    }
                    tokio::time::sleep(every).await;
                }
            }));
        }
        self.tasks
            .lock()
            .expect("tasks lock")
            .insert(name.clone(), tasks);
        self.touch(name);
        let mut list = (*self.current()).clone();
        list.push(Served {
            name: name.clone(),
            subnet: *subnet,
            node,
            started_backend: spec.backend,
            cidr: spec.cidr,
            dns,
            gateway: dns_ip,
            pinned: index < self.cfg.networks.len(),
            nat_table: crate::nat::table_name(index, name),
            state_dir: self.state_dir(index, name),
            world,
        });
        self.publish(list);
        Ok(())
    }

    /// Lease a subnet of network `name`, read it and start serving it (a network not
    /// served yet; `Err`: why it cannot be, for the plugin).
    async fn serve(&self, name: &str) -> Result<(), String> {
        let _one = self.lock.lock().await;
        if self.current().iter().any(|s| s.name == name) {
            return Ok(()); // another ADD started it meanwhile
        }
        let net = match self.client.get(&format!("/v1/networks/{name}")).await {
            Ok(v) => v,
            Err(e) if e.status() == Some(404) => {
                return Err(format!(
                    "network {name:?} does not exist (check the plugin configuration's \"network\")"
                ))
            }
            Err(e) => return Err(format!("reading network {name:?}: {e}")),
        };
        let net: objects::Network = serde_json::from_value(net)
            .map_err(|e| format!("network {name:?} is malformed: {e}"))?;
        if net.spec.backend == Backend::L2 {
            return Err(format!(
                "network {name:?} uses the l2 backend, which takes over the uplink: start the agent with --network {name} first"
            ));
        }
        let (spec, vni) = (net.spec.clone(), net.vni());
        if let Some(r) = net.metadata.revision() {
            self.started_at
                .lock()
                .expect("started_at lock")
                .insert(name.to_string(), r);
        }
        if spec.tenant.is_some()
            && !matches!(
                spec.backend,
                Backend::Vxlan | Backend::HostGw | Backend::Hybrid
            )
        {
            return Err(format!(
                "network {name:?} of tenant {:?} uses the {} backend; a tenant's network uses vxlan (its own VNI keeps the worlds apart), or host-gw or hybrid (in a range no other world uses)",
                spec.tenant.as_deref().unwrap_or_default(),
                spec.backend
            ));
        }
        // Check against what is served in the same world before anything is leased or
        // made: worlds may overlap each other.
        let mut all: Vec<Leased> = self
            .current()
            .iter()
            .filter(|s| s.tenant() == spec.tenant.as_deref())
            .map(Served::leased)
            .collect();
        let candidate = Leased {
            name: name.to_string(),
            subnet: spec.cidr,
            spec: spec.clone(),
            vni,
        };
        all.push(candidate);
        check_combination(&all).map_err(|e| e.to_string())?;
        let lease = self
            .client
            .post(
                &format!("/v1/nodes/{}/subnets/{name}", self.cfg.node),
                &json!({}),
            )
            .await
            .map_err(|e| format!("leasing a subnet of {name:?}: {e}"))?;
        let subnet: Ipv4Net = serde_json::from_value::<trellis_api::watch::SubnetLease>(lease)
            .map_err(|e| format!("subnet lease of {name:?}: {e}"))?
            .cidr;
        let leased = Leased {
            name: name.to_string(),
            subnet,
            spec: spec.clone(),
            vni,
        };
        let world = match &spec.tenant {
            None => None,
            Some(t) => Some(self.world(t).await?),
        };
        let cidrs = world_cidrs(&self.current(), &spec);
        // Never index 0: that is the first pinned network's names.
        let index = self.current().len().max(1);
        self.start_one(index, &leased, cidrs, world)
            .await
            .map_err(|e| e.to_string())
    }

    /// Enforce network policy in every world, present and future.
    pub(super) fn set_policy(&self, p: Arc<dyn crate::gate::PodPolicy>) {
        for w in self.worlds.lock().expect("worlds lock").values() {
            w.gate.set_policy(p.clone());
        }
        let _ = self.policy.set(p);
    }

    /// Tenant `t`'s world on this node, made (or adopted) at its first network.
    async fn world(&self, t: &str) -> Result<Arc<World>, String> {
        if let Some(w) = self.worlds.lock().expect("worlds lock").get(t) {
            return Ok(w.clone());
        }
        let w = World::ensure(&self.cfg.state_dir, t, &self.local.uplink).await?;
        if let Some(p) = self.policy.get() {
            w.gate.set_policy(p.clone());
        }
        tracing::info!(tenant = t, netns = %w.netns_path().display(), "tenant world ready");
        self.worlds
            .lock()
            .expect("worlds lock")
            .insert(t.to_string(), w.clone());
        Ok(w)
    }

    /// Stop serving `name` and remove what was made for it.
    async fn retire(&self, name: &str) {
        let _one = self.lock.lock().await;
        let list = self.current();
        let Some(gone) = list.iter().find(|s| s.name == name).cloned() else {
            return;
        };
        if let Some(tasks) = self.tasks.lock().expect("tasks lock").remove(name) {
            for t in tasks {
                t.abort();
            }
        }
        self.publish(list.iter().filter(|s| s.name != name).cloned().collect());
        self.started_at
            .lock()
            .expect("started_at lock")
            .remove(name);
        // Its Endpoints go from the server.
        let publisher = endpoints::Publisher {
            client: self.client.clone(),
            node_name: self.cfg.node.clone(),
            network: name.to_string(),
            node: gone.node.clone(),
        };
        if let Err(e) = publisher.withdraw().await {
            tracing::warn!(network = name, "deleting its endpoints: {e}");
        }
        let bridge = gone.node.bridge().to_string();
        let (table, dir) = (gone.nat_table.clone(), gone.state_dir.clone());
        let world = gone.world.clone();
        drop(gone);
        match remove_network(&bridge, &table, &dir, world.as_ref().map(|w| &*w.ns)).await {
            Ok(()) => tracing::info!(network = name, "network deleted: no longer served"),
            Err(errors) => tracing::warn!(network = name, ?errors, "removing the network"),
        }
        match world {
            None => {
                if let Err(e) = tokio::task::block_in_place(|| self.cfg.gate.sync()) {
                    tracing::warn!("{e}");
                }
            }
            // The world's last network: the world goes too.
            Some(w) if !self.current().iter().any(|s| s.tenant() == Some(&w.tenant)) => {
                self.worlds.lock().expect("worlds lock").remove(&w.tenant);
                let tenant = w.tenant.clone();
                drop(w);
                match World::remove(&self.cfg.state_dir, &tenant).await {
                    Ok(()) => tracing::info!(tenant, "tenant world removed"),
                    Err(errors) => tracing::warn!(tenant, ?errors, "removing the tenant world"),
                }
            }
            Some(_) => {}
        }
    }

    fn touch(&self, name: &str) {
        self.touched
            .lock()
            .expect("touched lock")
            .insert(name.to_string(), std::time::Instant::now());
    }

    fn recently_touched(&self, name: &str) -> bool {
        let mut t = self.touched.lock().expect("touched lock");
        t.retain(|_, at| at.elapsed() < IDLE_GRACE);
        t.contains_key(name)
    }

    /// Serve what [`wanted`] says and retire the rest (never a pinned network), from
    /// the Networks, this Node's labels and the TenantPeerings. Does nothing until all
    /// three are known.
    async fn follow(
        &self,
        networks: &Informer,
        nodes: &Informer,
        peerings: &Informer,
        services: &Informer,
        namespaces: &Informer,
    ) {
        let (
            Some((networks, revision)),
            Some(nodes),
            Some(peerings),
            Some(services),
            Some(namespaces),
        ) = (
            networks.snapshot_at(),
            nodes.snapshot(),
            peerings.snapshot(),
            services.snapshot(),
            namespaces.snapshot(),
        )
        else {
            return;
        };
        let tenant_of = world::tenants_of(&namespaces);
        let exposed: std::collections::BTreeSet<String> = services
            .iter()
            .filter_map(|o| match &**o {
                AnyObject::Service(s) if s.is_entry() => s
                    .metadata
                    .namespace
                    .as_ref()
                    .and_then(|ns| tenant_of.get(ns))
                    .cloned(),
                _ => None,
            })
            .collect();
        let Some(labels) = nodes.iter().find_map(|o| match &**o {
            AnyObject::Node(n) if n.metadata.name == self.cfg.node => Some(&n.metadata.labels),
            _ => None,
        }) else {
            return;
        };
        let networks: Vec<&objects::Network> = networks
            .iter()
            .filter_map(|o| match &**o {
                AnyObject::Network(n) => Some(n),
                _ => None,
            })
            .collect();
        let pairs = world::peering_pairs(&peerings);
        let current = self.current();
        let views: Vec<ServedView> = current
            .iter()
            .map(|s| ServedView {
                name: s.name.clone(),
                pinned: s.pinned,
                busy: self.recently_touched(&s.name) || !s.node.ipam().is_empty(),
                known: self
                    .started_at
                    .lock()
                    .expect("started_at lock")
                    .get(&s.name)
                    .is_none_or(|r| *r <= revision),
            })
            .collect();
        drop(current);
        let want = wanted(&networks, &pairs, &exposed, labels, &views);
        for name in &want {
            if !views.iter().any(|v| &v.name == name) {
                if let Err(e) = self.serve(name).await {
                    tracing::warn!(
                        network = name,
                        "serving a network this node is wanted for: {e}"
                    );
                }
            }
        }
        for v in views
            .iter()
            .filter(|v| !v.pinned && !want.contains(&v.name))
        {
            self.retire(&v.name).await;
        }
    }

    /// Follow the Networks, Node labels and TenantPeerings ([`Manager::follow`]); start
    /// networks the CNI socket asks for. Runs forever.
    pub(super) async fn run(
        self: Arc<Self>,
        networks: Informer,
        namespaces: Informer,
        nodes: Informer,
        peerings: Informer,
        services: Informer,
        mut demands: mpsc::Receiver<Demand>,
    ) {
        let mut changed = networks.subscribe();
        let mut nodes_changed = nodes.subscribe();
        let mut peerings_changed = peerings.subscribe();
        let mut services_changed = services.subscribe();
        let mut namespaces_changed = namespaces.subscribe();
        // Pods go without a word to this loop: look again now and then.
        let mut tick = tokio::time::interval(self.cfg.resync);
        // Whether an input of `follow` changed (a CNI demand is not one: it is
        // answered without walking every object again).
        let mut dirty = true;
        loop {
            if std::mem::take(&mut dirty) {
                self.follow(&networks, &nodes, &peerings, &services, &namespaces)
                    .await;
            }
            tokio::select! {
                _ = changed.changed() => dirty = true,
                _ = nodes_changed.changed() => dirty = true,
                _ = peerings_changed.changed() => dirty = true,
                _ = services_changed.changed() => dirty = true,
                _ = namespaces_changed.changed() => dirty = true,
                _ = tick.tick() => dirty = true,
                d = demands.recv() => {
                    let Some((want, answer)) = d else { return };
                    let name = match want {
                        Want::Named(n) => Ok(n),
                        Want::ForNamespace(ns) => {
                            choose_network(&ns, &networks, &namespaces, &self.cfg.networks[0])
                        }
                    };
                    let name = match name {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = answer.send(Err(e));
                            continue;
                        }
                    };
                    // Served already (every ADD of the default world comes this way):
                    // answer now, not behind a network another ADD is starting.
                    self.touch(&name);
                    if self.current().iter().any(|s| s.name == name) {
                        let _ = answer.send(Ok(name));
                        continue;
                    }
                    // Start it in its own task: a slow server must not hold up retiring.
                    let me = self.clone();
                    tokio::spawn(async move {
                        let r = me.serve(&name).await;
                        if let Err(e) = &r {
                            tracing::warn!(network = name, "cannot serve: {e}");
                        }
                        let _ = answer.send(r.map(|()| name));
                    });
                }
            }
        }
    }

    /// At start: the networks that have a state directory but are not pinned. Those
    /// whose Network still exists are served again (their pods live on); the others'
    /// leftovers are removed.
    pub(super) async fn adopt_earlier(&self) {
        self.adopt_networks().await;
        // Worlds none of whose networks is served any more.
        let worlds = world::worlds_dir(&self.cfg.state_dir);
        let names: Vec<String> = std::fs::read_dir(&worlds)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        for t in names {
            if !self
                .current()
                .iter()
                .any(|s| s.tenant() == Some(t.as_str()))
            {
                match World::remove(&self.cfg.state_dir, &t).await {
                    Ok(()) => tracing::info!(tenant = t, "removed a tenant world left unused"),
                    Err(errors) => tracing::warn!(tenant = t, ?errors, "removing a tenant world"),
                }
            }
        }
    }

    async fn adopt_networks(&self) {
        let dir = networks_dir(&self.cfg.state_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !self.cfg.networks.contains(n))
            .collect();
        names.sort();
        for name in names {
            match self.client.get(&format!("/v1/networks/{name}")).await {
                Ok(_) => {
                    if let Err(e) = self.serve(&name).await {
                        tracing::warn!(network = name, "serving again after a restart: {e}");
                    }
                }
                Err(e) if e.status() == Some(404) => {
                    // In the node's namespace; a world's leftovers go with the world.
                    let bridge = trellis_api::naming::network_bridge(&name);
                    let table = crate::nat::table_name(1, &name);
                    match remove_network(&bridge, &table, &dir.join(&name), None).await {
                        Ok(()) => {
                            tracing::info!(network = name, "removed what a deleted network left")
                        }
                        Err(errors) => tracing::warn!(
                            network = name,
                            ?errors,
                            "removing a deleted network's leftovers"
                        ),
                    }
                }
                Err(e) => tracing::warn!(network = name, "reading a network served before: {e}"),
            }
        }
    }
}

/// Keep the node's `hostports` map (the host ports of the worlds' pods → their world)
/// in step with the worlds' reservations: after every reservation change in a world,
/// every change of the served set, and every `resync`. Runs forever.
pub(super) async fn host_port_loop(mut served: ServedSet, resync: std::time::Duration) {
    let mut written = None;
    loop {
        let list = served.borrow_and_update().clone();
        // Subscribed before reading, so no change falls between.
        let mut changes: Vec<_> = list
            .iter()
            .filter(|s| s.world.is_some())
            .map(|s| s.node.subscribe())
            .collect();
        let mut pods = Vec::new();
        for s in list.iter() {
            let Some(w) = &s.world else { continue };
            for r in s.node.ipam().list() {
                pods.push((w.tenant.clone(), w.transit, r.port_mappings));
            }
        }
        let (want, clashes) = world::host_ports(
            pods.iter()
                .flat_map(|(t, ip, pms)| pms.iter().map(move |pm| (t.as_str(), *ip, pm))),
        );
        for c in clashes {
            tracing::error!("{c}: that mapping does not work on this node");
        }
        if let Err(e) = tokio::task::block_in_place(|| world::sync_host_ports(&want, &mut written))
        {
            tracing::warn!("tenant host ports: {e}");
            written = None;
        }
        drop(list);
        let any_world = async {
            if changes.is_empty() {
                std::future::pending::<()>().await;
            }
            let waits = changes.iter_mut().map(|c| Box::pin(c.changed()));
            let _ = futures::future::select_all(waits).await;
        };
        tokio::select! {
            _ = served.changed() => {}
            _ = any_world => {}
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

/// The network a pod of namespace `ns` attaches to when the plugin names none: its
/// tenant's network (the first by name), or `default` (the agent's first network) for a
/// namespace of the default world.
fn choose_network(
    ns: &str,
    networks: &Informer,
    namespaces: &Informer,
    default: &str,
) -> Result<String, String> {
    let later =
        "the agent has not received the cluster's namespaces and networks yet; try again later";
    let tenant = world::tenants_of(&namespaces.snapshot().ok_or(later)?).remove(ns);
    let Some(tenant) = tenant else {
        return Ok(default.to_string());
    };
    let mut names: Vec<String> = networks
        .snapshot()
        .ok_or(later)?
        .iter()
        .filter_map(|o| match &**o {
            AnyObject::Network(n) if n.spec.tenant.as_deref() == Some(tenant.as_str()) => {
                Some(n.metadata.name.clone())
            }
            _ => None,
        })
        .collect();
    names.sort();
    names.into_iter().next().ok_or_else(|| {
        format!("namespace {ns:?} belongs to tenant {tenant:?}, which has no Network yet")
    })
}

/// Where the state directories of networks after the first live.
fn networks_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("networks")
}

/// The ranges pods of a network reach without masquerade: those of every served
/// network of its world, and its own.
fn world_cidrs(served: &[Served], spec: &NetworkSpec) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = served
        .iter()
        .filter(|s| s.tenant() == spec.tenant.as_deref())
        .map(|s| s.cidr)
        .collect();
    out.push(spec.cidr);
    out
}

/// The addresses of the node the service proxy answers node ports on: the underlay
/// address and every pod gateway (not under `l2`, whose pods use the segment's router).
pub(super) fn node_ips(local: &Local, served: &[Served]) -> Vec<Ipv4Addr> {
    let mut ips = vec![local.address];
    ips.extend(
        served
            .iter()
            .filter(|s| s.started_backend != Backend::L2 && s.world.is_none())
            .map(|s| s.gateway),
    );
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(name: &str, tenant: Option<&str>, selector: Option<&str>) -> objects::Network {
        let mut spec = json!({"cidr": "10.1.0.0/16"});
        if let Some(t) = tenant {
            spec["tenant"] = json!(t);
        }
        if let Some(role) = selector {
            spec["nodeSelector"] = json!({"matchLabels": {"role": role}});
        }
        serde_json::from_value(json!({
            "apiVersion": "trellis/v1", "kind": "Network",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    }

    fn view(name: &str, pinned: bool, busy: bool) -> ServedView {
        ServedView {
            name: name.into(),
            pinned,
            busy,
            known: true,
        }
    }

    fn names(set: std::collections::BTreeSet<String>) -> Vec<String> {
        set.into_iter().collect()
    }

    #[test]
    fn wanted_networks_have_a_reason() {
        let nets = [
            network("default", None, None),
            network("red", Some("red"), None),
            network("green", Some("green"), None),
            network("edge", None, Some("edge")),
        ];
        let nets: Vec<&objects::Network> = nets.iter().collect();
        let none = BTreeMap::new();
        let edge: BTreeMap<String, String> = [("role".into(), "edge".into())].into();
        let peered = [("green".to_string(), "red".to_string())];
        let no = std::collections::BTreeSet::new();
        // Pinned is kept even when its object is gone; idle networks go.
        let served = [
            view("default", true, false),
            view("red", false, false),
            view("gone", true, false),
        ];
        assert_eq!(
            names(wanted(&nets, &[], &no, &none, &served)),
            ["default", "gone"]
        );
        // Pods (or a fresh start) keep a network, unless its object is gone; one the
        // informer has not shown yet stays.
        let served = [view("red", false, true), view("deleted", false, true)];
        assert_eq!(names(wanted(&nets, &[], &no, &none, &served)), ["red"]);
        let mut new = view("new", false, true);
        new.known = false;
        assert_eq!(names(wanted(&nets, &[], &no, &none, &[new])), ["new"]);
        // A peer of a busy tenant is wanted too; not the other way round.
        assert_eq!(
            names(wanted(&nets, &peered, &no, &none, &served)),
            ["green", "red"]
        );
        let served = [view("red", false, false), view("green", false, false)];
        assert!(wanted(&nets, &peered, &no, &none, &served).is_empty());
        // A nodeSelector that matches this node's labels: served; no longer: not.
        assert_eq!(names(wanted(&nets, &[], &no, &edge, &[])), ["edge"]);
        assert!(wanted(&nets, &[], &no, &none, &[view("edge", false, false)]).is_empty());
        // A tenant with a node port (or an external address) is served on every node.
        let exposed = ["green".to_string()].into();
        assert_eq!(names(wanted(&nets, &[], &exposed, &none, &[])), ["green"]);
    }
}
