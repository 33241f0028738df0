//! A tenant's world on this node: a network namespace of its own (Neutron's router
//! namespace), so the tenant's ranges may equal another world's. The tenant's bridges,
//! pod veths, tunnel devices, routes, nftables tables and connection tracking all live
//! inside it; the node's namespace only carries its tunnels' UDP packets and its
//! egress.
//!
//! - The namespace is bind-mounted at `STATE_DIR/worlds/<tenant>/netns`, so it outlives
//!   the agent (a restart adopts it; nothing is flushed).
//! - Egress: a veth pair joins it to the node (`trlw<hash>` on the node, `trlup` inside)
//!   on a link-local /30 of its own (`169.254.64.0/18`, one slot per world, kept in
//!   `STATE_DIR/worlds/<tenant>/slot`). Inside, the default route goes to the node's end
//!   and everything leaving by it is masqueraded to the world's transit address; on the
//!   node, the table `ip trellis-worlds` masquerades what comes from any world to the
//!   node's address. So two tenants' pods with the same address reach the same outside
//!   server at once, each connection tracked in its own namespace.
//! - Isolation on the node: that table's forward chain lets a world's traffic out only
//!   to the uplink, and into a world only from the uplink (and replies): a world never
//!   reaches another world, nor the default world's pods, through the node. Nothing a
//!   world sends is DNATed on the node (the default world's proxy would take it to the
//!   default world). Out by the uplink, a world may reach a node's address on a node
//!   port, or an external or load-balancer address, only if its own world owns it
//!   (sets `all-nodeports`/`owned-nodeports`, `all-vips`/`owned-vips`, `nodes`): an
//!   outside client reaches every tenant's entry, another tenant's pods none.
//! - Host-gw networks of a tenant (whose ranges no other world uses) are routed as
//!   they are: the node routes the peers' subnets via their nodes and its own into the
//!   world, nothing is masqueraded between them (set `direct`, in the world and on the
//!   node), a world sends into a direct range only if it is its own (`owned-direct`)
//!   and the uplink brings into one only what comes from the same tenant's ranges
//!   (`direct-pairs`).
//! - Node ports: a tenant Service's node port arriving on the uplink, or opened by the
//!   node itself, is DNATed (map `nodeports`, before the default world's proxy) to the
//!   world's transit address, where the world's own proxy takes it to the tenant's pods.
//!   The world's proxy also takes its pods' connections to this node's address.
//! - Host ports: a world pod's host port (map `hostports`, kept by the networks
//!   controller from the worlds' reservations) is DNATed the same way, from any
//!   interface, to the world's transit address, where the network's own table maps it
//!   to the pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::Ipv4Net;
use trellis_api::naming::{fnv1a64, LINK_PREFIX};
use trellis_api::objects::{Protocol, Service};
use trellis_net::{nft, sysctl, Netlink, Netns};

use crate::gate::Gate;

/// The transit ranges: one /30 per world.
const TRANSIT_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(169, 254, 64, 0), 18);
/// The world's end of the transit veth.
const WORLD_UPLINK: &str = "trlup";
/// The node's table masquerading every world's egress.
const NODE_TABLE: &str = "trellis-worlds";
/// The world's table masquerading its egress to its transit address.
const WORLD_TABLE: &str = "trellis-world";

/// One tenant's world on this node.
#[derive(Debug)]
pub struct World {
    /// The tenant.
    pub tenant: String,
    /// Its namespace.
    pub ns: Arc<Netns>,
    /// Anti-spoofing for its pods, in its own tables.
    pub gate: Arc<Gate>,
    /// Its end of the transit veth: where the node sends its node-port traffic.
    pub transit: Ipv4Addr,
    dir: PathBuf,
}

/// The pairs of tenants the TenantPeerings among `objects` join.
pub(super) fn peering_pairs(
    objects: &[Arc<trellis_api::objects::AnyObject>],
) -> Vec<(String, String)> {
    objects
        .iter()
        .filter_map(|o| match &**o {
            trellis_api::objects::AnyObject::TenantPeering(p) => {
                p.spec.pair().map(|(a, b)| (a.to_string(), b.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// The tenant of every namespace that has one, from a snapshot of Namespaces.
pub(super) fn tenants_of(
    namespaces: &[Arc<trellis_api::objects::AnyObject>],
) -> BTreeMap<String, String> {
    trellis_policy::model::tenants_of(namespaces.iter().map(|o| &**o))
}

/// The node's end of a world's transit veth.
pub(super) fn node_link(tenant: &str) -> String {
    let h = fnv1a64([b"world/".as_slice(), tenant.as_bytes()]);
    format!("{LINK_PREFIX}w{:08x}", h >> 32)
}

/// The `/30` of transit slot `slot`: (node end, world end).
fn transit(slot: u32) -> (Ipv4Net, Ipv4Net) {
    let base = u32::from(TRANSIT_POOL.0) + slot * 4;
    (
        Ipv4Net::new(Ipv4Addr::from(base + 1), 30).expect("/30"),
        Ipv4Net::new(Ipv4Addr::from(base + 2), 30).expect("/30"),
    )
}

/// How many /30 slots the pool holds.
fn slots() -> u32 {
    1 << (32 - u32::from(TRANSIT_POOL.1) - 2)
}

/// The directory of the worlds' state.
pub(super) fn worlds_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("worlds")
}

/// This world's transit slot: the one it had, else the lowest no other world holds.
fn slot_of(dir: &Path, worlds: &Path) -> Result<u32, String> {
    let file = dir.join("slot");
    if let Ok(s) = std::fs::read_to_string(&file) {
        if let Ok(n) = s.trim().parse() {
            return Ok(n);
        }
    }
    let taken: BTreeSet<u32> = std::fs::read_dir(worlds)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("slot")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let slot = (0..slots())
        .find(|n| !taken.contains(n))
        .ok_or("no transit slot left for another world")?;
    std::fs::write(&file, slot.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(slot)
}

impl World {
    /// Make (or adopt, after a restart) tenant `tenant`'s world: its namespace, its
    /// transit veth, routes and masquerade, forwarding on. Idempotent.
    pub(super) async fn ensure(
        state_dir: &Path,
        tenant: &str,
        uplink: &str,
    ) -> Result<Arc<World>, String> {
        let worlds = worlds_dir(state_dir);
        let dir = worlds.join(tenant);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ns = Arc::new(
            Netns::create_persistent(dir.join("netns"))
                .map_err(|e| format!("world {tenant}: {e}"))?,
        );
        let slot = slot_of(&dir, &worlds)?;
        let (node_end, world_end) = transit(slot);
        let node_nl = Netlink::connect().map_err(|e| e.to_string())?;
        let world_nl = Netlink::connect_in(&ns).map_err(|e| e.to_string())?;
        let link = node_link(tenant);
        if node_nl
            .link(&link)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            node_nl
                .create_veth_pair(&link, WORLD_UPLINK, &ns)
                .await
                .map_err(|e| format!("world {tenant}: transit veth: {e}"))?;
        }
        let n = node_nl
            .link(&link)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("transit veth vanished")?;
        node_nl
            .ensure_addr(n.index, node_end)
            .await
            .map_err(|e| e.to_string())?;
        node_nl.set_up(n.index).await.map_err(|e| e.to_string())?;
        for name in ["lo", WORLD_UPLINK] {
            let l = world_nl
                .link(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("world {tenant}: {name} missing"))?;
            if name == WORLD_UPLINK {
                world_nl
                    .ensure_addr(l.index, world_end)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            world_nl.set_up(l.index).await.map_err(|e| e.to_string())?;
        }
        let has_default = world_nl
            .routes()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .any(|(d, _, _)| d.prefix_len() == 0);
        if !has_default {
            let l = world_nl
                .link(WORLD_UPLINK)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("world uplink missing")?;
            world_nl
                .add_default_route(l.index, node_end.addr())
                .await
                .map_err(|e| e.to_string())?;
        }
        let world_rules = format!(
            "table ip {WORLD_TABLE} {{\n  comment \"{TABLE_FORMAT}\"\n  set direct {{ type ipv4_addr; flags interval; }}\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    oifname \"{WORLD_UPLINK}\" ip daddr @direct return\n    oifname \"{WORLD_UPLINK}\" masquerade\n  }}\n}}\n"
        );
        ns.run(|| -> Result<(), String> {
            sysctl::ensure("net/ipv4/ip_forward", "1").map_err(|e| e.to_string())?;
            ensure_table(WORLD_TABLE, &world_rules)
        })
        .map_err(|e| e.to_string())??;
        ensure_table(NODE_TABLE, &node_table(uplink))?;
        Ok(Arc::new(World {
            tenant: tenant.to_string(),
            gate: Gate::for_world(ns.clone(), tenant),
            ns,
            transit: world_end.addr(),
            dir,
        }))
    }

    /// The path plugins open to reach the world.
    pub fn netns_path(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// Remove the world: its transit veth and the namespace (with whatever is left in
    /// it), and its state. Errors are collected.
    pub(super) async fn remove(state_dir: &Path, tenant: &str) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let dir = worlds_dir(state_dir).join(tenant);
        match Netlink::connect() {
            Ok(nl) => match nl.link(&node_link(tenant)).await {
                Ok(Some(l)) => {
                    if let Err(e) = nl.del_link(l.index).await {
                        errors.push(format!("delete transit veth: {e}"));
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(e.to_string()),
        }
        if let Err(e) = Netns::remove_persistent(dir.join("netns")) {
            errors.push(e.to_string());
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.push(format!("remove {}: {e}", dir.display()))
            }
            _ => {}
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The node's table for every world: node ports into worlds, isolation, egress
/// masquerade. `uplink`: the node's underlay link. Its sets are kept by
/// [`sync_node_table`].
fn node_table(uplink: &str) -> String {
    let w = format!("{LINK_PREFIX}w*");
    format!(
        "table ip {NODE_TABLE} {{
  comment \"{TABLE_FORMAT}\"
  map nodeports {{ type inet_proto . inet_service : ipv4_addr; }}
  map hostports {{ type inet_proto . inet_service : ipv4_addr; }}
  set all-nodeports {{ type inet_proto . inet_service; }}
  set owned-nodeports {{ type ifname . inet_proto . inet_service; }}
  set all-vips {{ type ipv4_addr; }}
  set owned-vips {{ type ifname . ipv4_addr; }}
  set nodes {{ type ipv4_addr; }}
  set direct {{ type ipv4_addr; flags interval; }}
  set owned-direct {{ type ifname . ipv4_addr; flags interval; }}
  set direct-pairs {{ type ipv4_addr . ipv4_addr; flags interval; }}
  chain prerouting {{
    type nat hook prerouting priority -110;
    iifname \"{uplink}\" fib daddr type local dnat ip to meta l4proto . th dport map @nodeports
    fib daddr type local dnat ip to meta l4proto . th dport map @hostports
  }}
  chain output {{
    type nat hook output priority -110;
    ip daddr != 127.0.0.0/8 fib daddr type local dnat ip to meta l4proto . th dport map @nodeports
    ip daddr != 127.0.0.0/8 fib daddr type local dnat ip to meta l4proto . th dport map @hostports
  }}
  chain postrouting {{
    type nat hook postrouting priority 100;
    iifname \"{w}\" ip daddr @direct return
    iifname \"{w}\" oifname != \"{w}\" masquerade
  }}
  chain forward {{
    type filter hook forward priority -5;
    ct state established,related accept
    iifname \"{w}\" ip daddr @direct iifname . ip daddr != @owned-direct drop
    iifname \"{uplink}\" ip daddr @direct ip saddr . ip daddr != @direct-pairs drop
    iifname \"{w}\" oifname != \"{uplink}\" drop
    oifname \"{w}\" iifname != \"{uplink}\" drop
    iifname \"{w}\" ct status dnat drop
    iifname \"{w}\" ip daddr @nodes meta l4proto . th dport @all-nodeports iifname . meta l4proto . th dport != @owned-nodeports drop
    iifname \"{w}\" ip daddr @all-vips iifname . ip daddr != @owned-vips drop
  }}
}}
"
    )
}

/// The version of the tables' static rules; a table without it is rewritten.
const TABLE_FORMAT: &str = "trellis-worlds/5";

/// Write table `ip <name>` as `script` says unless it exists with this version of the
/// static rules (its elements, if any, are kept by their owner's next pass).
fn ensure_table(name: &str, script: &str) -> Result<(), String> {
    if let Some(cur) = nft::list_json(&format!("table ip {name}")).map_err(|e| e.to_string())? {
        if cur.to_string().contains(TABLE_FORMAT) || !script.contains(TABLE_FORMAT) {
            return Ok(());
        }
        // An older layout: replaced in one transaction.
        return nft::apply(&format!(
            "table ip {name} {{}}\ndelete table ip {name}\n{script}"
        ))
        .map_err(|e| e.to_string());
    }
    nft::apply(script).map_err(|e| e.to_string())
}

/// `rtm_protocol` of the node's routes sending a tenant's external and load-balancer
/// addresses to its world.
pub const VIP_PROTO: u8 = 118;

/// Bring the node's routes for tenants' external and load-balancer addresses to exactly
/// `want` (address → the world's transit address), in the node's namespace: traffic to
/// them from the uplink goes into the world, whose proxy takes it to the tenant's pods.
pub(super) async fn sync_vip_routes(
    want: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    written: &mut Option<BTreeMap<Ipv4Addr, Ipv4Addr>>,
) -> Result<(), String> {
    if written.as_ref() == Some(want) {
        return Ok(());
    }
    let nl = Netlink::connect().map_err(|e| e.to_string())?;
    let route = |ip: Ipv4Addr, via: Ipv4Addr| trellis_net::RouteEntry {
        dst: Ipv4Net::new(ip, 32).expect("/32"),
        gateway: Some(via),
        oif: None,
        protocol: VIP_PROTO,
        onlink: false,
        metric: 0,
    };
    let have: BTreeMap<Ipv4Addr, Ipv4Addr> = nl
        .main_routes()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.protocol == VIP_PROTO && r.dst.prefix_len() == 32)
        .filter_map(|r| r.gateway.map(|g| (r.dst.addr(), g)))
        .collect();
    for (ip, via) in want {
        if have.get(ip) != Some(via) {
            nl.replace_route(&route(*ip, *via))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    for (ip, via) in &have {
        if !want.contains_key(ip) {
            match nl.del_route(&route(*ip, *via)).await {
                Err(e) if !e.is_not_found() => return Err(e.to_string()),
                _ => {}
            }
        }
    }
    *written = Some(want.clone());
    Ok(())
}

/// The tenants' host-gw ranges, routed as they are: what the node's and the worlds'
/// `direct` sets hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DirectEntries {
    /// Every tenant host-gw range of the cluster.
    pub direct: BTreeSet<Ipv4Net>,
    /// `(node link of a world served here, one of its tenant's host-gw ranges)`.
    pub owned: BTreeSet<(String, Ipv4Net)>,
    /// `(source range, destination range)` of the same tenant.
    pub pairs: BTreeSet<(Ipv4Net, Ipv4Net)>,
    /// Per world served here: its tenant's host-gw ranges.
    pub worlds: BTreeMap<String, BTreeSet<Ipv4Net>>,
}

/// The [`DirectEntries`] of `networks` (`(tenant, range)` of every tenant host-gw
/// network) for the worlds served here (`tenants`).
pub(super) fn direct_entries<'a>(
    networks: impl Iterator<Item = (&'a str, Ipv4Net)>,
    tenants: impl Iterator<Item = &'a str>,
) -> DirectEntries {
    let mut by_tenant: BTreeMap<&str, BTreeSet<Ipv4Net>> = BTreeMap::new();
    for (t, cidr) in networks {
        by_tenant.entry(t).or_default().insert(cidr);
    }
    let mut e = DirectEntries::default();
    for ranges in by_tenant.values() {
        e.direct.extend(ranges);
        for a in ranges {
            for b in ranges {
                e.pairs.insert((*a, *b));
            }
        }
    }
    for t in tenants {
        let ranges = by_tenant.get(t).cloned().unwrap_or_default();
        for r in &ranges {
            e.owned.insert((node_link(t), *r));
        }
        e.worlds.insert(t.to_string(), ranges);
    }
    e
}

/// The `nft` lines that make `kind` (`set` or `map`) `name` of table `ip <table>` hold
/// exactly `elems`.
fn refill(table: &str, kind: &str, name: &str, elems: impl IntoIterator<Item = String>) -> String {
    let elems: Vec<String> = elems.into_iter().collect();
    let mut script = format!("flush {kind} ip {table} {name}\n");
    if !elems.is_empty() {
        script += &format!("add element ip {table} {name} {{ {} }}\n", elems.join(", "));
    }
    script
}

/// Whether the node's table `ip trellis-worlds` exists (it does once a world does).
fn node_table_exists() -> Result<bool, String> {
    Ok(nft::list_json(&format!("table ip {NODE_TABLE}"))
        .map_err(|e| e.to_string())?
        .is_some())
}

/// Bring the node's `direct` sets and each world's to `want` (`worlds`: each world
/// served here, by tenant). Nothing when it matches what was last written.
pub(super) fn sync_direct(
    want: &DirectEntries,
    worlds: &BTreeMap<String, Arc<Netns>>,
    written: &mut Option<DirectEntries>,
) -> Result<(), String> {
    if written.as_ref() == Some(want) {
        return Ok(());
    }
    if node_table_exists()? {
        let script = refill(
            NODE_TABLE,
            "set",
            "direct",
            want.direct.iter().map(|r| r.to_string()),
        ) + &refill(
            NODE_TABLE,
            "set",
            "owned-direct",
            want.owned.iter().map(|(l, r)| format!("\"{l}\" . {r}")),
        ) + &refill(
            NODE_TABLE,
            "set",
            "direct-pairs",
            want.pairs.iter().map(|(a, b)| format!("{a} . {b}")),
        );
        nft::apply(&script).map_err(|e| e.to_string())?;
    }
    for (tenant, ns) in worlds {
        let ranges = want.worlds.get(tenant).cloned().unwrap_or_default();
        let script = refill(
            WORLD_TABLE,
            "set",
            "direct",
            ranges.iter().map(|r| r.to_string()),
        );
        ns.run(|| nft::apply(&script).map_err(|e| e.to_string()))
            .map_err(|e| format!("world {tenant}: {e}"))?
            .map_err(|e| format!("world {tenant}: {e}"))?;
    }
    *written = Some(want.clone());
    Ok(())
}

/// The host ports of the pods of the worlds served here: `(protocol, port)` → the
/// transit address of the pod's world. A port two worlds both want goes to the first
/// (by tenant); the others are returned, to be reported.
pub(super) fn host_ports<'a>(
    pods: impl Iterator<Item = (&'a str, Ipv4Addr, &'a trellis_api::agent::PortMapping)>,
) -> (BTreeMap<(Protocol, u16), Ipv4Addr>, Vec<String>) {
    let mut want: BTreeMap<(Protocol, u16), (&str, Ipv4Addr)> = BTreeMap::new();
    let mut clashes = Vec::new();
    let mut all: Vec<_> = pods.collect();
    all.sort_by_key(|(t, ip, pm)| (*t, *ip, pm.host_port));
    for (tenant, transit, pm) in all {
        let proto = match pm.protocol {
            trellis_api::agent::Protocol::Tcp => Protocol::Tcp,
            trellis_api::agent::Protocol::Udp => Protocol::Udp,
        };
        match want.get(&(proto, pm.host_port)) {
            Some((owner, _)) if *owner != tenant => clashes.push(format!(
                "host port {}/{} of tenant {tenant} is taken by tenant {owner}",
                pm.host_port,
                proto.as_str()
            )),
            Some(_) => {}
            None => {
                want.insert((proto, pm.host_port), (tenant, transit));
            }
        }
    }
    (
        want.into_iter().map(|(k, (_, ip))| (k, ip)).collect(),
        clashes,
    )
}

/// Bring the node table's `hostports` map to exactly `want`: one `nft` transaction;
/// nothing when it matches what this agent last wrote, or when there is no world.
pub(super) fn sync_host_ports(
    want: &BTreeMap<(Protocol, u16), Ipv4Addr>,
    written: &mut Option<BTreeMap<(Protocol, u16), Ipv4Addr>>,
) -> Result<(), String> {
    if written.as_ref() == Some(want) {
        return Ok(());
    }
    if !node_table_exists()? {
        *written = Some(want.clone());
        return Ok(());
    }
    let script = refill(
        NODE_TABLE,
        "map",
        "hostports",
        want.iter()
            .map(|((p, port), ip)| format!("{} . {port} : {ip}", p.as_str().to_lowercase())),
    );
    nft::apply(&script).map_err(|e| e.to_string())?;
    *written = Some(want.clone());
    Ok(())
}

/// What the node's table `ip trellis-worlds` holds besides its static rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NodeEntries {
    /// `(protocol, node port)` → the transit address of the world served here that
    /// owns it: where the node sends it.
    pub node_ports: BTreeMap<(Protocol, u16), Ipv4Addr>,
    /// Every node port of the cluster, of any world (the default one too).
    pub all_node_ports: BTreeSet<(Protocol, u16)>,
    /// `(node link of a world served here, protocol, node port)`: the world's own.
    pub owned_node_ports: BTreeSet<(String, Protocol, u16)>,
    /// Every external and load-balancer address of the cluster.
    pub all_vips: BTreeSet<Ipv4Addr>,
    /// `(node link of a world served here, address)`: the world's own.
    pub owned_vips: BTreeSet<(String, Ipv4Addr)>,
    /// Every node's underlay address.
    pub nodes: BTreeSet<Ipv4Addr>,
}

/// The node table's entries for `services` (with the world of each: `None` for the
/// default world), the worlds served here (tenant → transit address) and the cluster's
/// `nodes`. A world's pods may reach, at a node's address or an entry address, only
/// their own world's node ports and addresses; an outside client reaches every one.
pub(super) fn node_entries<'a>(
    services: impl Iterator<Item = (&'a Service, Option<&'a str>)>,
    served: &BTreeMap<&str, Ipv4Addr>,
    nodes: impl Iterator<Item = Ipv4Addr>,
) -> NodeEntries {
    let mut e = NodeEntries {
        nodes: nodes.collect(),
        ..Default::default()
    };
    for (svc, tenant) in services {
        let here = tenant.and_then(|t| served.get(t).map(|ip| (node_link(t), *ip)));
        for vip in svc
            .spec
            .external_ips
            .iter()
            .chain(&svc.status.load_balancer_ip)
        {
            e.all_vips.insert(*vip);
            if let Some((link, _)) = &here {
                e.owned_vips.insert((link.clone(), *vip));
            }
        }
        if !svc.spec.type_.has_node_ports() {
            continue;
        }
        for p in &svc.spec.ports {
            let Some(np) = p.node_port else { continue };
            e.all_node_ports.insert((p.protocol, np));
            if let Some((link, ip)) = &here {
                e.node_ports.insert((p.protocol, np), *ip);
                e.owned_node_ports.insert((link.clone(), p.protocol, np));
            }
        }
    }
    e
}

/// The node's routes for tenants' external and load-balancer addresses: address → the
/// transit address of its world (served here).
pub(super) fn vip_routes(
    e: &NodeEntries,
    served: &BTreeMap<&str, Ipv4Addr>,
) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
    let by_link: BTreeMap<String, Ipv4Addr> =
        served.iter().map(|(t, ip)| (node_link(t), *ip)).collect();
    e.owned_vips
        .iter()
        .filter_map(|(link, vip)| by_link.get(link).map(|ip| (*vip, *ip)))
        .collect()
}

/// Bring the node table's map and sets to exactly `want`: one `nft` transaction;
/// nothing when it already matches what this agent last wrote.
pub(super) fn sync_node_table(
    want: &NodeEntries,
    written: &mut Option<NodeEntries>,
) -> Result<(), String> {
    if written.as_ref() == Some(want) {
        return Ok(());
    }
    if !node_table_exists()? {
        // No world on this node yet.
        *written = Some(want.clone());
        return Ok(());
    }
    let proto = |p: &Protocol| p.as_str().to_lowercase();
    let t = NODE_TABLE;
    let script = [
        refill(
            t,
            "map",
            "nodeports",
            want.node_ports
                .iter()
                .map(|((p, port), ip)| format!("{} . {port} : {ip}", proto(p))),
        ),
        refill(
            t,
            "set",
            "all-nodeports",
            want.all_node_ports
                .iter()
                .map(|(p, port)| format!("{} . {port}", proto(p))),
        ),
        refill(
            t,
            "set",
            "owned-nodeports",
            want.owned_node_ports
                .iter()
                .map(|(link, p, port)| format!("\"{link}\" . {} . {port}", proto(p))),
        ),
        refill(
            t,
            "set",
            "all-vips",
            want.all_vips.iter().map(|ip| ip.to_string()),
        ),
        refill(
            t,
            "set",
            "owned-vips",
            want.owned_vips
                .iter()
                .map(|(link, ip)| format!("\"{link}\" . {ip}")),
        ),
        refill(
            t,
            "set",
            "nodes",
            want.nodes.iter().map(|ip| ip.to_string()),
        ),
    ]
    .concat();
    nft::apply(&script).map_err(|e| e.to_string())?;
    *written = Some(want.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_slots_and_names() {
        assert_eq!(
            transit(0),
            (
                "169.254.64.1/30".parse().unwrap(),
                "169.254.64.2/30".parse().unwrap()
            )
        );
        assert_eq!(transit(1).0.to_string(), "169.254.64.5/30");
        assert_eq!(slots(), 4096);
        let last = transit(slots() - 1).1;
        assert_eq!(last.to_string(), "169.254.127.254/30");
        let n = node_link("red");
        assert!(n.starts_with("trlw") && n.len() == 12, "{n}");
        assert_ne!(node_link("red"), node_link("blue"));
    }

    fn service(ns: &str, node_port: u16, external: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "trellis/v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "externalIPs": [external],
                     "ports": [{"port": 80, "protocol": "UDP", "nodePort": node_port}]}
        }))
        .unwrap()
    }

    /// A world served here owns its node ports and addresses; another tenant's (served
    /// elsewhere) and the default world's are known but owned by no world here.
    #[test]
    fn node_entries_own_only_a_worlds_own() {
        let (red, blue, dflt) = (
            service("red-ns", 30001, "192.0.2.1"),
            service("blue-ns", 30002, "192.0.2.2"),
            service("default", 30003, "192.0.2.3"),
        );
        let served: BTreeMap<&str, Ipv4Addr> = [("red", Ipv4Addr::new(169, 254, 64, 2))].into();
        let e = node_entries(
            [(&red, Some("red")), (&blue, Some("blue")), (&dflt, None)].into_iter(),
            &served,
            [Ipv4Addr::new(10, 0, 0, 1)].into_iter(),
        );
        let udp = Protocol::Udp;
        assert_eq!(
            e.node_ports,
            [((udp, 30001), Ipv4Addr::new(169, 254, 64, 2))].into()
        );
        assert_eq!(
            e.all_node_ports,
            [(udp, 30001), (udp, 30002), (udp, 30003)].into()
        );
        assert_eq!(e.owned_node_ports, [(node_link("red"), udp, 30001)].into());
        assert_eq!(e.all_vips.len(), 3);
        let vip = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(e.owned_vips, [(node_link("red"), vip)].into());
        assert_eq!(
            vip_routes(&e, &served),
            [(vip, Ipv4Addr::new(169, 254, 64, 2))].into()
        );
        assert_eq!(e.nodes, [Ipv4Addr::new(10, 0, 0, 1)].into());
    }

    #[test]
    fn host_ports_go_to_their_world_and_clashes_are_reported() {
        use trellis_api::agent::{PortMapping, Protocol as P};
        let pm = |port, protocol| PortMapping {
            host_port: port,
            container_port: 80,
            protocol,
            host_ip: None,
        };
        let (red, blue) = (
            Ipv4Addr::new(169, 254, 64, 2),
            Ipv4Addr::new(169, 254, 64, 6),
        );
        let (a, b, c, d) = (
            pm(8080, P::Tcp),
            pm(8080, P::Udp),
            pm(8080, P::Tcp),
            pm(9090, P::Tcp),
        );
        let (want, clashes) = host_ports(
            [
                ("red", red, &a),
                ("red", red, &b),
                ("blue", blue, &c),
                ("blue", blue, &d),
            ]
            .into_iter(),
        );
        // Both want tcp/8080: the first by tenant name (blue) has it, red's is reported.
        assert_eq!(
            want,
            [
                ((Protocol::Tcp, 8080), blue),
                ((Protocol::Tcp, 9090), blue),
                ((Protocol::Udp, 8080), red)
            ]
            .into()
        );
        assert_eq!(clashes.len(), 1, "{clashes:?}");
        assert!(
            clashes[0].contains("tenant red is taken by tenant blue"),
            "{clashes:?}"
        );
    }

    #[test]
    fn direct_ranges_pair_only_within_a_tenant() {
        let net = |s: &str| -> Ipv4Net { s.parse().unwrap() };
        let e = direct_entries(
            [
                ("green", net("10.70.0.0/16")),
                ("green", net("10.71.0.0/16")),
                ("gold", net("10.90.0.0/16")),
            ]
            .into_iter(),
            ["green", "red"].into_iter(),
        );
        assert_eq!(e.direct.len(), 3);
        assert_eq!(e.pairs.len(), 5, "{:?}", e.pairs);
        assert!(e
            .pairs
            .contains(&(net("10.70.0.0/16"), net("10.71.0.0/16"))));
        assert!(!e
            .pairs
            .contains(&(net("10.70.0.0/16"), net("10.90.0.0/16"))));
        assert_eq!(
            e.owned,
            [
                (node_link("green"), net("10.70.0.0/16")),
                (node_link("green"), net("10.71.0.0/16"))
            ]
            .into()
        );
        assert!(e.worlds["red"].is_empty());
        assert_eq!(e.worlds["green"].len(), 2);
    }
}
