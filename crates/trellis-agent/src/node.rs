//! The node's CNI backend: what happens on the agent side of ADD, DEL, CHECK, GC and
//! STATUS, plus the reconcile loop that repairs whatever a crash left behind.
//!
//! Invariants:
//! - an address is committed to the IPAM file before the plugin learns it;
//! - an attachment's port mappings are in nftables only while it holds its address;
//! - starting never flushes: the bridge, the table and the links are adopted as found.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_api::agent::{
    codes, AddRequest, AgentStatus, Attachment, GcRequest, Lease, LeaseDns, Op, Response,
};
use trellis_api::naming::{fnv1a64, host_veth_name, LINK_PREFIX};
use trellis_net::{sysctl, LinkInfo, Netlink, Netns};

use crate::gate::Gate;
use crate::ipam::{Ipam, IpamError, Reservation};
use crate::nat::{self, NatConfig, PortElement};

/// Device group that marks host veths waiting for deletion ("trl" in ASCII).
pub const RETIRED_GROUP: u32 = 0x0074_726c;

/// How the agent runs on this node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's pod subnet.
    pub pod_subnet: Ipv4Net,
    /// Destinations not masqueraded (defaults to the pod subnet).
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// Addresses never handed out.
    pub excluded: Vec<Ipv4Net>,
    /// The bridge pods attach to.
    pub bridge: String,
    /// The nftables table (family `ip`) for masquerade and host ports
    /// ([`nat::table_name`]).
    pub nat_table: String,
    /// Pod MTU; `None` = the MTU of the link carrying the default route (1500 without one).
    pub mtu: Option<u32>,
    /// Directory of the IPAM file.
    pub state_dir: PathBuf,
    /// A reservation whose veth is missing for longer than this is released by the sweep.
    pub orphan_grace: Duration,
    /// `l2` backend: pods sit on the underlay segment itself (see [`L2Uplink`]).
    pub l2: Option<L2Uplink>,
    /// What an ADD must put in the kernel before it answers (anti-spoofing, policy);
    /// shared by every network of the agent's namespace.
    pub gate: Arc<Gate>,
    /// The tenant world (network namespace) the bridge, its veths and the table live
    /// in; `None`: the node's own namespace.
    pub world: Option<Arc<Netns>>,
}

/// The `l2` backend's "bridge over the uplink": the uplink is a port of the pod bridge,
/// which carries the node's own address; pods get addresses of the segment and the
/// segment's router as their gateway, so machines outside the cluster reach them
/// directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Uplink {
    /// The underlay link to enslave (e.g. `eth0`).
    pub uplink: String,
    /// The segment's router, the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// Prefix length of the segment (the pods' address prefix).
    pub prefix_len: u8,
}

/// The agent's per-node state, shared by the socket server and the reconcile loop.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    ipam: Ipam,
    nl: Netlink,
    /// Pod MTU handed to new attachments (cluster mode changes it with the backend).
    mtu: std::sync::atomic::AtomicU32,
    /// The cluster DNS handed to pods, once cluster mode runs one.
    dns: std::sync::OnceLock<PodDns>,
    /// Bumped whenever the set of reservations changes (cluster mode publishes
    /// Endpoints from it).
    changed: tokio::sync::watch::Sender<u64>,
    /// Wakes the link deleter thread (see [`spawn_link_deleter`]).
    retired: std::sync::mpsc::Sender<()>,
    /// Plugin requests hold it shared, the sweep and GC's link pass exclusively: a
    /// sweep never sees half an ADD or DEL.
    ops: tokio::sync::RwLock<()>,
    /// Serialises requests for the same attachment (by hash); different attachments
    /// proceed in parallel.
    attachment_locks: Vec<tokio::sync::Mutex<()>>,
    /// Set by the first successful sweep since start (which releases orphans without a
    /// grace).
    swept: std::sync::atomic::AtomicBool,
}

/// Number of per-attachment lock shards.
const ATTACHMENT_LOCK_SHARDS: usize = 64;

/// The DNS server and domain pods get.
#[derive(Debug, Clone)]
struct PodDns {
    server: Ipv4Addr,
    domain: String,
}

/// What start-up found and did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReport {
    /// Bridge created (false: adopted).
    pub bridge_created: bool,
    /// Gateway address added (false: already there).
    pub gateway_added: bool,
    /// nftables table written (false: adopted unchanged).
    pub table_written: bool,
    /// Reservations loaded from the state file.
    pub reservations: usize,
    /// Of those, released at once because their veth was gone (see [`Node::sweep`]).
    pub orphans_released: usize,
}

fn ipam_response(e: IpamError) -> Response {
    let code = match &e {
        IpamError::Exhausted(_) => codes::POOL_EXHAUSTED,
        IpamError::InUse { .. } => codes::ADDRESS_IN_USE,
        IpamError::NotAllowed { .. } => codes::ADDRESS_NOT_ALLOWED,
        IpamError::PortInUse { .. } => codes::PORT_IN_USE,
        IpamError::SubnetChanged { .. } | IpamError::SubnetTooSmall(_) => codes::INVALID_CONFIG,
        IpamError::Store(_) => codes::IO_FAILURE,
    };
    Response::error(code, e.to_string())
}

/// The host-port elements of a reservation.
fn port_elements(r: &Reservation) -> Vec<PortElement> {
    r.port_mappings
        .iter()
        .map(|pm| PortElement::new(r.ip, pm))
        .collect()
}

fn kernel_response(what: &str, e: impl std::fmt::Display) -> Response {
    Response::error(codes::KERNEL, format!("{what}: {e}"))
}

/// Run `f` (blocking: `nft`, `/proc/sys`) inside `world`, or here when it is `None`.
fn in_world<T>(world: Option<&Netns>, f: impl FnOnce() -> T) -> Result<T, String> {
    Netns::run_in(world, f).map_err(|e| e.to_string())
}

impl Node {
    /// Open the IPAM file, adopt or create the bridge and the nftables table. Must run
    /// inside the node's network namespace, on a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<(Arc<Node>, StartReport), String> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| format!("create state dir {}: {e}", cfg.state_dir.display()))?;
        let ipam = Ipam::open(
            &cfg.state_dir.join("ipam.redb"),
            cfg.pod_subnet,
            cfg.excluded.clone(),
        )
        .map_err(|e| e.to_string())?;
        let world = cfg.world.clone();
        let nl = match &world {
            None => Netlink::connect(),
            Some(ns) => Netlink::connect_in(ns),
        }
        .map_err(|e| e.to_string())?;
        let (mtu, bridge_created, had_gw) = match &cfg.l2 {
            Some(l2) => {
                let b = nl
                    .ensure_uplink_bridge(&cfg.bridge, &l2.uplink)
                    .await
                    .map_err(|e| e.to_string())?;
                (cfg.mtu.unwrap_or(b.mtu), b.created, true)
            }
            None => {
                let mtu = match cfg.mtu {
                    Some(m) => m,
                    None => default_route_mtu(&nl).await.unwrap_or(1500),
                };
                let gw = ipam.gateway_net();
                let mac = crate::ipam::mac_of(gw.addr());
                let (br, bridge_created) = nl
                    .ensure_bridge(&cfg.bridge, mtu, mac)
                    .await
                    .map_err(|e| e.to_string())?;
                let had_gw = nl
                    .addrs(br.index)
                    .await
                    .map_err(|e| e.to_string())?
                    .contains(&gw);
                if !had_gw {
                    nl.add_addr(br.index, gw).await.map_err(|e| e.to_string())?;
                }
                (mtu, bridge_created, had_gw)
            }
        };
        in_world(world.as_deref(), || {
            sysctl::ensure("net/ipv4/ip_forward", "1")
        })?
        .map_err(|e| e.to_string())?;
        // Pods on one bridge reach each other without routing: the ip hooks (network
        // policy, and the service proxy's hairpin) see their traffic only through
        // br_netfilter.
        match in_world(world.as_deref(), || {
            sysctl::ensure("net/bridge/bridge-nf-call-iptables", "1")
        })? {
            Ok(_) => {}
            Err(e) => tracing::error!(
                "bridged traffic is not filtered ({e}): traffic between pods of one node escapes network policy; load br_netfilter (modprobe br_netfilter)"
            ),
        }
        let nat_cfg = NatConfig {
            table: cfg.nat_table.clone(),
            pod_subnet: ipam.subnet(),
            cluster_cidrs: if cfg.cluster_cidrs.is_empty() {
                vec![ipam.subnet()]
            } else {
                cfg.cluster_cidrs.clone()
            },
            bridge: cfg.bridge.clone(),
        };
        let action = in_world(world.as_deref(), || nat::ensure_table(&nat_cfg))?
            .map_err(|e| e.to_string())?;
        let mut report = StartReport {
            bridge_created,
            gateway_added: !had_gw,
            table_written: action == nat::TableAction::Written,
            reservations: ipam.len(),
            orphans_released: 0,
        };
        let node = Arc::new(Node {
            cfg,
            ipam,
            nl,
            mtu: std::sync::atomic::AtomicU32::new(mtu),
            changed: tokio::sync::watch::channel(0).0,
            dns: std::sync::OnceLock::new(),
            retired: spawn_link_deleter(world.clone())?,
            ops: tokio::sync::RwLock::new(()),
            attachment_locks: (0..ATTACHMENT_LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            swept: std::sync::atomic::AtomicBool::new(false),
        });
        node.cfg.gate.register(&node);
        // Before anything is served or published: free what a crash left behind.
        match node.sweep().await {
            Ok(r) => report.orphans_released = r.released,
            Err(e) => tracing::warn!("first sweep: {e}"),
        }
        Ok((node, report))
    }

    /// The bridge pods of this network attach to.
    pub fn bridge(&self) -> &str {
        &self.cfg.bridge
    }

    /// Add and remove host-port elements in the network's table (in its world).
    fn update_ports(&self, add: &[PortElement], del: &[PortElement]) -> Result<(), String> {
        in_world(self.cfg.world.as_deref(), || {
            nat::update_ports(&self.cfg.nat_table, add, del)
        })?
        .map_err(|e| e.to_string())
    }

    /// The IPAM (for tests and status).
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// A receiver that sees a new value whenever a reservation is made or released.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify_changed(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Names of the host veths that are attached (not retired): an attachment whose
    /// veth is missing is not (or no longer) plumbed.
    pub async fn live_links(&self) -> Result<HashSet<String>, String> {
        Ok(self
            .nl
            .links()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|l| l.group != RETIRED_GROUP)
            .map(|l| l.name)
            .collect())
    }

    /// The MTU new attachments get.
    pub fn mtu(&self) -> u32 {
        self.mtu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Change the MTU for new attachments and the bridge (existing pods keep theirs
    /// until they are recreated; the bridge follows its smallest port anyway).
    pub fn set_mtu(&self, mtu: u32) {
        self.mtu.store(mtu, std::sync::atomic::Ordering::Relaxed);
    }

    /// Handle one plugin request.
    pub async fn handle(&self, op: Op) -> Response {
        match op {
            Op::Add(r) => self.add(r).await,
            Op::Del(a) => self.del(&a).await,
            Op::Check(a) => match self.ipam.get(&a) {
                Some(r) => Response::Lease(self.lease(&r, true)),
                None => Response::error(
                    codes::UNKNOWN_CONTAINER,
                    format!(
                        "no address is reserved for container {} interface {}",
                        a.container_id, a.ifname
                    ),
                ),
            },
            Op::Gc(g) => self.gc(&g).await,
            Op::Status => Response::Status(self.status()),
        }
    }

    /// Free/used counts.
    pub fn status(&self) -> AgentStatus {
        let reserved = self.ipam.len() as u32;
        AgentStatus {
            subnet: self.ipam.subnet(),
            free: self.ipam.capacity().saturating_sub(reserved),
            reserved,
        }
    }

    fn lease(&self, r: &Reservation, existing: bool) -> Lease {
        let (prefix, gateway) = match &self.cfg.l2 {
            Some(l2) => (l2.prefix_len, l2.gateway),
            None => (self.ipam.subnet().prefix_len(), self.ipam.gateway()),
        };
        Lease {
            address: Ipv4Net::new(r.ip, prefix).expect("prefix"),
            gateway,
            bridge: self.cfg.bridge.clone(),
            mtu: self.mtu(),
            port_mappings: r.port_mappings.clone(),
            existing,
            mac: Some(trellis_net::netlink::format_mac(&r.mac())),
            host_netns: self
                .cfg
                .world
                .as_ref()
                .map(|ns| ns.path().display().to_string()),
            dns: self.dns.get().map(|d| {
                let ns = r.namespace();
                LeaseDns {
                    nameservers: vec![d.server],
                    search: vec![
                        format!("{ns}.svc.{}", d.domain),
                        format!("svc.{}", d.domain),
                        d.domain.clone(),
                    ],
                    options: vec!["ndots:5".into()],
                }
            }),
        }
    }

    /// Hand pods the cluster DNS at `server` for `domain` from now on (cluster mode).
    pub fn set_dns(&self, server: Ipv4Addr, domain: &str) {
        let _ = self.dns.set(PodDns {
            server,
            domain: domain.to_string(),
        });
    }

    /// Take the locks a plugin request on `a` needs: the shared side of `ops` and the
    /// attachment's shard.
    async fn lock_attachment(
        &self,
        a: &Attachment,
    ) -> (
        tokio::sync::RwLockReadGuard<'_, ()>,
        tokio::sync::MutexGuard<'_, ()>,
    ) {
        let shared = self.ops.read().await;
        let h = fnv1a64([a.container_id.as_bytes(), b"/", a.ifname.as_bytes()]);
        let shard = (h % self.attachment_locks.len() as u64) as usize;
        (shared, self.attachment_locks[shard].lock().await)
    }

    async fn add(&self, req: AddRequest) -> Response {
        let _g = self.lock_attachment(&req.attachment()).await;
        let host = host_veth_name(&req.container_id, &req.ifname);
        let link = match self.nl.link(&host).await {
            Ok(l) => l,
            Err(e) => return kernel_response("look up host veth", e),
        };
        let held = self.ipam.get(&req.attachment()).is_some();
        if let Some(l) = &link {
            if held && l.group != RETIRED_GROUP {
                return Response::error(
                    codes::ALREADY_ATTACHED,
                    format!(
                        "container {} already has interface {} (host side {host}); DEL it first",
                        req.container_id, req.ifname
                    ),
                );
            }
            // A retired link waiting for the background delete, or debris of a crashed
            // ADD that holds no address: remove it now so the name is free.
            if let Err(e) = self.nl.del_link(l.index).await {
                if !e.is_not_found() {
                    return kernel_response("remove stale host veth", e);
                }
            }
        }
        // A tenant's host ports are opened on every node address (the node's table
        // sends them into the world, which knows only its own addresses): one bound to
        // a node address is refused, before anything is made.
        if self.cfg.world.is_some() {
            if let Some(i) = req.port_mappings.iter().position(|p| p.host_ip.is_some()) {
                return Response::error(
                    codes::INVALID_CONFIG,
                    format!(
                        "runtimeConfig.portMappings[{i}].hostIP: a host port of a pod in a tenant's world (namespace {}) is opened on every node address; leave hostIP out",
                        req.pod_namespace.as_deref().unwrap_or("?")
                    ),
                );
            }
        }
        let ipam_req = req.clone();
        let (r, existing) = match self.ipam.reserve(&ipam_req) {
            Ok(x) => x,
            Err(e) => return ipam_response(e),
        };
        if !existing {
            let add = port_elements(&r);
            if let Err(e) = self.update_ports(&add, &[]) {
                // leave nothing behind
                let _ = self.ipam.release(&req.attachment());
                return kernel_response("program port mappings", e);
            }
        }
        if !existing {
            self.notify_changed();
        }
        // Protected from its first packet: anti-spoofing and policy are in the kernel
        // before the plugin learns the address.
        // Netlink transactions and compiling block: off the async workers' queue.
        if let Err(e) = tokio::task::block_in_place(|| self.cfg.gate.admit(&r)) {
            if !existing {
                let ports = port_elements(&r);
                let _ = self.update_ports(&[], &ports);
                let _ = self.ipam.release(&req.attachment());
                let _ = self.cfg.gate.forget(&r);
                self.notify_changed();
            }
            return Response::error(codes::TRY_AGAIN, format!("admit the pod: {e}"));
        }
        Response::Lease(self.lease(&r, existing))
    }

    async fn del(&self, a: &Attachment) -> Response {
        let _g = self.lock_attachment(a).await;
        let mut errors = Vec::new();
        let name = host_veth_name(&a.container_id, &a.ifname);
        match self.nl.link(&name).await {
            Ok(Some(l)) => self.retire(&l, &mut errors).await,
            Ok(None) => {}
            Err(e) => errors.push(format!("look up {name}: {e}")),
        }
        match self.ipam.release(a) {
            Ok(Some(r)) => {
                let del = port_elements(&r);
                // If this fails the sweep removes the elements: they no longer match
                // any reservation.
                if let Err(e) = self.update_ports(&[], &del) {
                    errors.push(format!("remove port mappings: {e}"));
                }
                // The veth is already detached; a failure here is repaired by the
                // gate's next full sync.
                if let Err(e) = self.cfg.gate.forget(&r) {
                    tracing::warn!("{e}");
                }
                self.notify_changed();
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("release: {e}")),
        }
        if errors.is_empty() {
            Response::Released
        } else {
            Response::error(codes::KERNEL, errors.join("; "))
        }
    }

    /// Detach a host veth at once (down + retired group) and let the deleter thread
    /// delete it: the kernel's delete waits for an RCU grace period (~15 ms each), the
    /// group delete pays it once for many links.
    async fn retire(&self, l: &LinkInfo, errors: &mut Vec<String>) {
        if let Err(e) = self.nl.retire(l.index, RETIRED_GROUP).await {
            if !e.is_not_found() {
                errors.push(format!("detach {}: {e}", l.name));
            }
        }
        let _ = self.retired.send(());
    }

    async fn gc(&self, g: &GcRequest) -> Response {
        let valid: HashSet<&Attachment> = g.valid_attachments.iter().collect();
        let mut released = Vec::new();
        let mut errors = Vec::new();
        for r in self.ipam.list() {
            if valid.contains(&r.attachment) {
                continue;
            }
            match self.del(&r.attachment).await {
                Response::Released => released.push(r.attachment),
                Response::Error(e) => errors.push(e.msg),
                _ => {}
            }
        }
        // Host veths of attachments the runtime no longer knows.
        let keep: HashSet<String> = g
            .valid_attachments
            .iter()
            .map(|a| host_veth_name(&a.container_id, &a.ifname))
            .collect();
        let _g = self.ops.write().await;
        match self.nl.links().await {
            Ok(links) => {
                self.retire_unknown_links(&links, &keep, &mut errors).await;
            }
            Err(e) => errors.push(format!("list links: {e}")),
        }
        if errors.is_empty() {
            Response::Collected(released)
        } else {
            Response::error(codes::KERNEL, errors.join("; "))
        }
    }

    /// Retire the `trl…` veths on the bridge (in `links`, one dump) whose names are not
    /// in `keep`; returns how many.
    async fn retire_unknown_links(
        &self,
        links: &[LinkInfo],
        keep: &HashSet<String>,
        errors: &mut Vec<String>,
    ) -> usize {
        let Some(br) = links.iter().find(|l| l.name == self.cfg.bridge) else {
            return 0;
        };
        let mut n = 0;
        for l in links {
            if l.master == Some(br.index)
                && l.name.starts_with(LINK_PREFIX)
                && l.group != RETIRED_GROUP
                && !keep.contains(&l.name)
            {
                self.retire(l, errors).await;
                n += 1;
            }
        }
        n
    }

    /// One reconcile pass: release reservations whose veth has been gone longer than
    /// the grace period, retire veths on the bridge that hold no reservation, and bring
    /// the port maps to exactly the reservations' mappings.
    ///
    /// The first pass since start ([`Node::start`] runs it before anything is served)
    /// releases every reservation without its veth at once:
    /// no ADD outlives the agent (the plugin's connection dies with it), so such a
    /// reservation is an ADD that never finished or a release the crash lost (releases
    /// are not synced to disk). Waiting out the grace would keep its address and host
    /// ports, refusing a recreated pod that publishes the same port.
    pub async fn sweep(&self) -> Result<SweepReport, String> {
        let _g = self.ops.write().await;
        let grace = if self.swept.load(std::sync::atomic::Ordering::Relaxed) {
            self.cfg.orphan_grace.as_secs()
        } else {
            0
        };
        let links = self.nl.links().await.map_err(|e| e.to_string())?;
        let live: HashSet<&str> = links
            .iter()
            .filter(|l| l.group != RETIRED_GROUP)
            .map(|l| l.name.as_str())
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut report = SweepReport::default();
        let mut kept = Vec::new();
        for r in self.ipam.list() {
            let name = host_veth_name(&r.attachment.container_id, &r.attachment.ifname);
            if !live.contains(name.as_str()) && now.saturating_sub(r.created) >= grace {
                tracing::info!(ip = %r.ip, container = %r.attachment.container_id, "releasing orphaned reservation (its veth is gone)");
                self.ipam
                    .release(&r.attachment)
                    .map_err(|e| e.to_string())?;
                report.released += 1;
                self.notify_changed();
            } else {
                kept.push((name, r));
            }
        }
        let keep: HashSet<String> = kept.iter().map(|(name, _)| name.clone()).collect();
        let mut errors = Vec::new();
        report.links_retired = self.retire_unknown_links(&links, &keep, &mut errors).await;
        let want: BTreeSet<PortElement> = kept.iter().flat_map(|(_, r)| port_elements(r)).collect();
        let (a, d) = in_world(self.cfg.world.as_deref(), || {
            nat::sync_ports(&self.cfg.nat_table, &want)
        })?
        .map_err(|e| e.to_string())?;
        report.ports_added = a;
        report.ports_deleted = d;
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.swept.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Run [`Node::sweep`] every `every`, forever ([`Node::start`] ran the first one).
    pub async fn run_sweeper(self: Arc<Self>, every: Duration) {
        loop {
            // Retired links left by a previous run, or by the last pass, are deleted too.
            let _ = self.retired.send(());
            tokio::time::sleep(every).await;
            match self.sweep().await {
                Ok(r) if r != SweepReport::default() => tracing::info!(?r, "sweep repaired drift"),
                Ok(_) => {}
                Err(e) => tracing::warn!("sweep: {e}"),
            }
        }
    }
}

/// What one sweep changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Reservations released.
    pub released: usize,
    /// Links detached for deletion.
    pub links_retired: usize,
    /// Port elements added.
    pub ports_added: usize,
    /// Port elements deleted.
    pub ports_deleted: usize,
}

/// The deleter deletes once no link has been retired for this long, so a burst of DELs
/// is one kernel batch after the burst (a delete holds the RTNL lock through an RCU
/// grace period, which would stall the burst's own netlink requests).
const DELETE_QUIET: Duration = Duration::from_millis(50);
/// ... but never waits longer than this after the first retirement.
const DELETE_MAX_DELAY: Duration = Duration::from_secs(2);

/// Start the thread that deletes retired links. It has its own OS thread and its own
/// netlink socket because the kernel performs a link delete inside the `sendto` call,
/// waiting for an RCU grace period (~15-20 ms): on the shared connection that wait would
/// stall every ADD and DEL behind it. The thread inherits the caller's network
/// namespace; it ends when the [`Node`] (the only sender) is dropped.
fn spawn_link_deleter(world: Option<Arc<Netns>>) -> Result<std::sync::mpsc::Sender<()>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("link-deleter".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("link deleter runtime: {e}")));
                    return;
                }
            };
            let nl = match rt.block_on(async {
                match &world {
                    None => Netlink::connect(),
                    Some(ns) => Netlink::connect_in(ns),
                }
            }) {
                Ok(nl) => nl,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("link deleter netlink: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while rx.recv().is_ok() {
                let first = std::time::Instant::now();
                while first.elapsed() < DELETE_MAX_DELAY {
                    match rx.recv_timeout(DELETE_QUIET) {
                        Ok(()) => continue,
                        Err(_) => break,
                    }
                }
                if let Err(e) = rt.block_on(nl.del_group(RETIRED_GROUP)) {
                    tracing::warn!("deleting retired links: {e}");
                }
            }
        })
        .map_err(|e| format!("spawn link deleter: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "link deleter thread died".to_string())??;
    Ok(tx)
}

async fn default_route_mtu(nl: &Netlink) -> Option<u32> {
    let routes = nl.routes().await.ok()?;
    let oif = routes
        .iter()
        .find(|(dst, _, _)| dst.prefix_len() == 0 && dst.addr() == Ipv4Addr::UNSPECIFIED)?
        .2?;
    nl.links()
        .await
        .ok()?
        .into_iter()
        .find(|l| l.index == oif)
        .map(|l| l.mtu)
}
/// Remove what [`Node::start`] made for a network that is no longer served: the host
/// veths attached to `bridge` and the bridge itself, the nftables table `nat_table` and
/// the state directory (its IPAM file). Everything is attempted; the errors are
/// collected. Already absent is not an error, so it also cleans up after a crash.
pub async fn remove_network(
    bridge: &str,
    nat_table: &str,
    state_dir: &std::path::Path,
    world: Option<&Netns>,
) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let nl = match world {
        None => Netlink::connect(),
        Some(ns) => Netlink::connect_in(ns),
    };
    match nl {
        Ok(nl) => match nl.links().await {
            Ok(links) => {
                let br = links.iter().find(|l| l.name == bridge).map(|l| l.index);
                if let Some(br) = br {
                    for l in links.iter().filter(|l| l.master == Some(br)) {
                        if let Err(e) = nl.del_link(l.index).await {
                            errors.push(format!("delete pod link {}: {e}", l.name));
                        }
                    }
                    if let Err(e) = nl.del_link(br).await {
                        errors.push(format!("delete bridge {bridge}: {e}"));
                    }
                }
            }
            Err(e) => errors.push(format!("list links: {e}")),
        },
        Err(e) => errors.push(format!("netlink: {e}")),
    }
    match in_world(world, || nat::delete_table(nat_table)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.push(format!("delete table ip {nat_table}: {e}")),
        Err(e) => errors.push(format!("delete table ip {nat_table}: {e}")),
    }
    match std::fs::remove_dir_all(state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errors.push(format!("remove {}: {e}", state_dir.display()));
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
