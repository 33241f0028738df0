//! Tenant peerings on this node: two peered tenants' worlds joined directly.
//!
//! - Wherever one of two peered tenants has a network for its own sake, the other's
//!   networks are served too (the networks controller decides that, see
//!   `networks::wanted`): its world, tunnels and routes exist here, and a peer's pod on
//!   another node is reached through the peer's own world.
//! - The two worlds are joined by a veth pair (`trlp<hash of the other tenant>` in
//!   each), with proxy ARP on both ends and, in each world, a route to every network of
//!   the other (protocol [`PEER_PROTO`]) through it. No address is needed and the node's
//!   namespace is not crossed, so its isolation rules stay as they are.
//! - A pair or route no peering wants any more is removed; everything is re-checked
//!   on every change and every `resync` (drift repair), and adopted after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_api::naming::{fnv1a64, LINK_PREFIX};
use trellis_net::{sysctl, Netlink, RouteEntry};

use super::networks::ServedSet;
use super::world::World;
use trellis_client::informer::Informer;

/// `rtm_protocol` of the routes between peered worlds.
pub const PEER_PROTO: u8 = 117;

/// The name, in one world, of its end of the pair leading to tenant `to`'s world.
fn peer_link(to: &str) -> String {
    let h = fnv1a64([b"peer/".as_slice(), to.as_bytes()]);
    format!("{LINK_PREFIX}p{:08x}", h >> 32)
}

/// Keeps the peerings of this node's worlds.
pub(super) struct PeeringLoop {
    pub(super) served: ServedSet,
    pub(super) peerings: Informer,
    pub(super) resync: Duration,
}

impl PeeringLoop {
    pub(super) async fn run(self) {
        let mut served_changed = self.served.clone();
        let mut peerings_changed = self.peerings.subscribe();
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!("tenant peering: {e}");
            }
            tokio::select! {
                _ = served_changed.changed() => {}
                _ = peerings_changed.changed() => {}
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }

    async fn pass(&self) -> Result<(), String> {
        let Some(peerings) = self.peerings.snapshot() else {
            return Ok(());
        };
        let pairs = super::world::peering_pairs(&peerings);
        // The worlds here now, with their networks' ranges.
        let served = self.served.borrow().clone();
        let mut worlds: BTreeMap<String, (Arc<World>, Vec<Ipv4Net>)> = BTreeMap::new();
        for s in served.iter() {
            if let Some(w) = &s.world {
                worlds
                    .entry(w.tenant.clone())
                    .or_insert_with(|| (w.clone(), Vec::new()))
                    .1
                    .push(s.cidr);
            }
        }
        // Per world: the links it should have (name → the other tenant).
        let mut want: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (a, b) in &pairs {
            if worlds.contains_key(a) && worlds.contains_key(b) {
                want.entry(a.clone())
                    .or_default()
                    .insert(peer_link(b), b.clone());
                want.entry(b.clone())
                    .or_default()
                    .insert(peer_link(a), a.clone());
            }
        }
        let mut errors = Vec::new();
        for (tenant, (world, _)) in &worlds {
            let links = want.get(tenant).cloned().unwrap_or_default();
            if let Err(e) = self.sync_world(world, &links, &worlds).await {
                errors.push(format!("world {tenant}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Bring `world`'s peer links and routes to `links` (its link name → the peer).
    async fn sync_world(
        &self,
        world: &Arc<World>,
        links: &BTreeMap<String, String>,
        worlds: &BTreeMap<String, (Arc<World>, Vec<Ipv4Net>)>,
    ) -> Result<(), String> {
        let nl = Netlink::connect_in(&world.ns).map_err(|e| e.to_string())?;
        let have = nl.links().await.map_err(|e| e.to_string())?;
        let prefix = format!("{LINK_PREFIX}p");
        for l in have.iter().filter(|l| l.name.starts_with(&prefix)) {
            if !links.contains_key(&l.name) {
                match nl.del_link(l.index).await {
                    Ok(()) => {
                        tracing::info!(tenant = world.tenant, link = l.name, "peering removed")
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        let mut routes_want: BTreeSet<(Ipv4Net, u32)> = BTreeSet::new();
        for (name, peer) in links {
            let Some((peer_world, peer_cidrs)) = worlds.get(peer) else {
                continue;
            };
            if nl.link(name).await.map_err(|e| e.to_string())?.is_none() {
                // The pair is made once, from the side whose name sorts first; the other
                // side finds its end in place.
                if world.tenant < *peer {
                    nl.create_veth_pair(name, &peer_link(&world.tenant), &peer_world.ns)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(tenant = world.tenant, peer, "peering joined");
                } else {
                    continue;
                }
            }
            let l = nl
                .link(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("peer link vanished")?;
            let key = format!("net/ipv4/conf/{name}/proxy_arp");
            world
                .ns
                .run(|| sysctl::ensure(&key, "1"))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if !l.up {
                nl.set_up(l.index).await.map_err(|e| e.to_string())?;
            }
            for c in peer_cidrs {
                routes_want.insert((*c, l.index));
            }
        }
        let routes = nl.main_routes().await.map_err(|e| e.to_string())?;
        let have: BTreeSet<(Ipv4Net, u32)> = routes
            .iter()
            .filter(|r| r.protocol == PEER_PROTO)
            .filter_map(|r| r.oif.map(|o| (r.dst, o)))
            .collect();
        for (dst, oif) in routes_want.difference(&have) {
            nl.add_route(&peer_route(*dst, *oif))
                .await
                .map_err(|e| e.to_string())?;
        }
        for (dst, oif) in have.difference(&routes_want) {
            match nl.del_route(&peer_route(*dst, *oif)).await {
                Err(e) if !e.is_not_found() => return Err(e.to_string()),
                _ => {}
            }
        }
        Ok(())
    }
}

fn peer_route(dst: Ipv4Net, oif: u32) -> RouteEntry {
    RouteEntry {
        dst,
        gateway: None,
        oif: Some(oif),
        protocol: PEER_PROTO,
        onlink: false,
        metric: 0,
    }
}
