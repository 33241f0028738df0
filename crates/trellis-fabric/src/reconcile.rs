//! The one reconciler every backend shares: diff [`Desired`] against the kernel, apply
//! the difference, report what changed. Owns only routes with [`ROUTE_PROTO`] and the
//! devices for which [`naming::is_fabric_device`] holds (with their neighbour and FDB
//! entries); everything else in the namespace is left alone.
//!
//! Invariants of [`Reconciler::apply`]:
//!
//! - **Ownership.** Only main-table routes with protocol [`ROUTE_PROTO`] are ever
//!   replaced or deleted; only links for which [`naming::is_fabric_device`] holds are
//!   ever deleted; neighbour and FDB entries are only touched on the devices in
//!   [`Desired::vxlan`], and only permanent ones are deleted. Other links (the pod
//!   bridge, pod veths, the uplink), routes of other protocols and learned entries are
//!   never touched.
//! - **VXLAN devices.** A missing device is created (no learning, the MAC, the MTU, the
//!   `/32` address, up). One with the wrong kind, VNI, local address, port, uplink,
//!   learning or a group is deleted and recreated; a wrong MTU or MAC, a missing or
//!   extra IPv4 address, or being down is fixed in place. A fabric device in neither
//!   [`Desired::vxlan`] nor [`Desired::tun`] is deleted (a switch from vxlan to host-gw
//!   removes the device this way). TUN devices belong to the udp pump: they are never
//!   created or deleted here, only routed to.
//! - **Routes.** Desired routes are compared with the owned ones on destination, next
//!   hop, output device and `onlink`. A missing one is added; when an owned route to the
//!   same destination (metric 0) is stale, it is replaced in one request, so traffic
//!   never loses its route; the other stale owned routes are deleted.
//! - **Order.** Devices, then neighbour and FDB entries, then routes (so a route never
//!   points at a next hop that cannot be resolved yet), then deletion of stale routes,
//!   stale neighbour/FDB entries, stale devices.
//! - **Errors do not stop a pass.** A failed step (e.g. a route whose device does not
//!   exist yet) is skipped and reported in [`FabricError::Apply`] after everything else
//!   was applied.
//! - **Idempotence.** When the kernel already matches, nothing is written and the
//!   report counts zero changes (an agent restart touches nothing).
//! - **Worlds.** A reconciler made with [`Reconciler::in_world`] owns the fabric of a
//!   tenant's namespace: devices, routes and entries live there, while the VXLAN
//!   devices are created from the node's namespace into it, so their UDP sockets and
//!   uplink stay on the node's underlay.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use trellis_net::{LinkInfo, NetError, Netlink, Netns, RouteEntry, VxlanAttrs, VxlanSpec};

use crate::{naming, Desired, FabricError, VxlanDevice, ROUTE_PROTO};

/// Applies a [`Desired`] to the namespace its [`Netlink`] is bound to.
#[derive(Debug, Clone)]
pub struct Reconciler {
    nl: Netlink,
    /// For a tenant's namespace: the node's namespace (its uplink, and where tunnel
    /// devices are created from) and the tenant's namespace itself.
    underlay: Option<(Netlink, Arc<Netns>)>,
}

/// What one [`Reconciler::apply`] changed. A recreated device counts as deleted and
/// created; a replaced route as deleted and added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    /// Devices created.
    pub links_created: usize,
    /// Devices deleted.
    pub links_deleted: usize,
    /// Devices repaired in place (MTU, MAC, address, up).
    pub links_changed: usize,
    /// Routes added.
    pub routes_added: usize,
    /// Routes deleted.
    pub routes_deleted: usize,
    /// Neighbour entries added or corrected.
    pub neighbours_added: usize,
    /// Neighbour entries deleted.
    pub neighbours_deleted: usize,
    /// FDB entries added or corrected.
    pub fdb_added: usize,
    /// FDB entries deleted.
    pub fdb_deleted: usize,
}

impl ApplyReport {
    /// Total number of changes; 0 when the kernel already matched.
    pub fn changes(&self) -> usize {
        self.links_created
            + self.links_deleted
            + self.links_changed
            + self.routes_added
            + self.routes_deleted
            + self.neighbours_added
            + self.neighbours_deleted
            + self.fdb_added
            + self.fdb_deleted
    }
}

impl Reconciler {
    /// A reconciler acting through `nl`.
    pub fn new(nl: Netlink) -> Self {
        Reconciler { nl, underlay: None }
    }

    /// A reconciler for the tenant namespace `world`: `nl` is bound to it, `underlay`
    /// to the node's namespace.
    pub fn in_world(nl: Netlink, underlay: Netlink, world: Arc<Netns>) -> Self {
        Reconciler {
            nl,
            underlay: Some((underlay, world)),
        }
    }

    /// Bring the kernel to `d`: create, repair and delete fabric devices, add and delete
    /// owned routes, neighbour and FDB entries (see the module documentation for the
    /// rules). Idempotent: a second apply of the same `d` changes nothing and reports
    /// zero changes. Failed steps are skipped and returned together, with the report of
    /// what was applied, as [`FabricError::Apply`]; only a failure to list links stops
    /// the pass early.
    pub async fn apply(&self, d: &Desired) -> Result<ApplyReport, FabricError> {
        let mut p = Pass {
            nl: &self.nl,
            underlay: self.underlay.as_ref(),
            report: ApplyReport::default(),
            failures: Vec::new(),
        };

        let links = self.nl.links().await?;
        let uplinks = match &self.underlay {
            Some((u, _)) => u.links().await?,
            None => links.clone(),
        };
        for dev in &d.vxlan {
            let r = p.ensure_vxlan(dev, &links, &uplinks).await;
            p.check(r);
        }
        let links = self.nl.links().await?;
        let index: HashMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();

        let stale_entries = p.add_entries(d, &index).await;
        let stale_routes = p.add_routes(d, &index).await;

        for r in stale_routes {
            let res = p.nl.del_route(&r).await;
            if p.check_del(res) {
                tracing::info!(dst = %r.dst, "fabric: deleted stale route");
                p.report.routes_deleted += 1;
            }
        }
        for e in stale_entries {
            match e {
                Stale::Neighbour { index, ip } => {
                    let res = p.nl.del_neighbour(index, ip).await;
                    if p.check_del(res) {
                        tracing::info!(%ip, index, "fabric: deleted stale neighbour");
                        p.report.neighbours_deleted += 1;
                    }
                }
                Stale::Fdb { index, mac, dst } => {
                    let res = p.nl.del_fdb(index, mac, dst).await;
                    if p.check_del(res) {
                        tracing::info!(%dst, index, "fabric: deleted stale fdb entry");
                        p.report.fdb_deleted += 1;
                    }
                }
            }
        }

        let wanted: BTreeSet<&str> = (d.vxlan.iter().map(|v| v.name.as_str()))
            .chain(d.tun.iter().map(|t| t.name.as_str()))
            .collect();
        for l in &links {
            if naming::is_fabric_device(&l.name) && !wanted.contains(l.name.as_str()) {
                let res = p.nl.del_link(l.index).await;
                if p.check_del(res) {
                    tracing::info!(link = %l.name, "fabric: deleted stale device");
                    p.report.links_deleted += 1;
                }
            }
        }

        if p.failures.is_empty() {
            Ok(p.report)
        } else {
            Err(FabricError::Apply {
                report: p.report,
                failures: p.failures,
            })
        }
    }
}

/// An owned neighbour or FDB entry found but not desired, deleted at the end of a pass.
enum Stale {
    Neighbour {
        index: u32,
        ip: Ipv4Addr,
    },
    Fdb {
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    },
}

/// The state of one [`Reconciler::apply`].
struct Pass<'a> {
    nl: &'a Netlink,
    underlay: Option<&'a (Netlink, Arc<Netns>)>,
    report: ApplyReport,
    failures: Vec<String>,
}

impl Pass<'_> {
    /// Record a failure and go on.
    fn check<T>(&mut self, r: Result<T, NetError>) -> Option<T> {
        r.map_err(|e| self.failures.push(e.to_string())).ok()
    }

    /// Like [`Pass::check`] for a delete: true when it deleted something; something
    /// already gone is no failure.
    fn check_del(&mut self, r: Result<(), NetError>) -> bool {
        match r {
            Err(e) if e.is_not_found() => false,
            r => self.check(r).is_some(),
        }
    }

    /// Create, recreate or repair one VXLAN device.
    async fn ensure_vxlan(
        &mut self,
        dev: &VxlanDevice,
        links: &[LinkInfo],
        uplinks: &[LinkInfo],
    ) -> Result<(), NetError> {
        let Some(uplink) = uplinks.iter().find(|l| l.name == dev.uplink) else {
            return Err(NetError::Netlink {
                op: format!("create vxlan {}", dev.name),
                msg: format!("uplink {} does not exist", dev.uplink),
                errno: Some(libc::ENODEV),
            });
        };
        let spec = VxlanSpec {
            name: dev.name.clone(),
            vni: dev.vni,
            local: dev.local,
            uplink: uplink.index,
            port: dev.port,
            mtu: dev.mtu,
            mac: dev.mac,
        };
        let want = VxlanAttrs {
            vni: Some(dev.vni),
            local: Some(dev.local),
            group: None,
            link: Some(uplink.index),
            port: Some(dev.port),
            learning: false,
        };

        let existing = links.iter().find(|l| l.name == dev.name);
        let mut link = None;
        if let Some(l) = existing {
            if l.kind.as_deref() == Some("vxlan")
                && self.nl.vxlan_attrs(l.index).await?.as_ref() == Some(&want)
            {
                link = Some(l.clone());
            } else {
                tracing::info!(link = %dev.name, "fabric: recreating mismatched device");
                self.nl.del_link(l.index).await?;
                self.report.links_deleted += 1;
            }
        }
        let created = link.is_none();
        let link = match link {
            Some(l) => l,
            None => {
                match self.underlay {
                    Some((u, world)) => u.create_vxlan(&spec, Some(world)).await?,
                    None => self.nl.create_vxlan(&spec, None).await?,
                }
                tracing::info!(link = %dev.name, vni = dev.vni, "fabric: created vxlan device");
                self.report.links_created += 1;
                self.nl
                    .link(&dev.name)
                    .await?
                    .ok_or_else(|| NetError::Netlink {
                        op: format!("create vxlan {}", dev.name),
                        msg: "created but not found".into(),
                        errno: None,
                    })?
            }
        };

        let mut changed = false;
        if link.mtu != dev.mtu {
            self.nl.set_mtu(link.index, dev.mtu).await?;
            changed = true;
        }
        if link.mac != dev.mac {
            self.nl.set_mac(link.index, dev.mac).await?;
            changed = true;
        }
        let addrs = self.nl.addrs(link.index).await?;
        for a in addrs.iter().filter(|a| **a != dev.address) {
            self.nl.del_addr(link.index, *a).await?;
            changed = true;
        }
        if !addrs.contains(&dev.address) {
            self.nl.add_addr(link.index, dev.address).await?;
            changed = true;
        }
        if !link.up {
            self.nl.set_up(link.index).await?;
            changed = true;
        }
        if changed && !created {
            tracing::info!(link = %dev.name, "fabric: repaired device");
            self.report.links_changed += 1;
        }
        Ok(())
    }

    /// Add the missing neighbour and FDB entries; return the stale ones.
    async fn add_entries(&mut self, d: &Desired, index: &HashMap<&str, u32>) -> Vec<Stale> {
        let mut stale = Vec::new();
        let devices: BTreeSet<&str> = d.vxlan.iter().map(|v| v.name.as_str()).collect();
        for n in d
            .neighbours
            .iter()
            .filter(|n| !devices.contains(n.dev.as_str()))
        {
            let msg = format!(
                "neighbour {} on {}: not a VXLAN device of this state",
                n.ip, n.dev
            );
            self.failures.push(msg);
        }
        for f in d.fdb.iter().filter(|f| !devices.contains(f.dev.as_str())) {
            let msg = format!(
                "fdb entry {} on {}: not a VXLAN device of this state",
                f.dst, f.dev
            );
            self.failures.push(msg);
        }

        for dev in &d.vxlan {
            // A device that could not be created has already been reported.
            let Some(&ix) = index.get(dev.name.as_str()) else {
                continue;
            };
            let want: Vec<_> = d.neighbours.iter().filter(|n| n.dev == dev.name).collect();
            let have = self.nl.neighbours(ix).await;
            if let Some(have) = self.check(have) {
                for n in &want {
                    if !have
                        .iter()
                        .any(|h| h.permanent && h.ip == n.ip && h.mac == Some(n.mac))
                    {
                        let r = self.nl.set_neighbour(ix, n.ip, n.mac).await;
                        if self.check(r).is_some() {
                            tracing::info!(ip = %n.ip, link = %dev.name, "fabric: set neighbour");
                            self.report.neighbours_added += 1;
                        }
                    }
                }
                // A permanent entry for a desired IP with another MAC was just replaced.
                stale.extend(
                    (have.iter())
                        .filter(|h| h.permanent && !want.iter().any(|n| n.ip == h.ip))
                        .map(|h| Stale::Neighbour {
                            index: ix,
                            ip: h.ip,
                        }),
                );
            }

            let want: Vec<_> = d.fdb.iter().filter(|f| f.dev == dev.name).collect();
            let have = self.nl.fdb(ix).await;
            if let Some(have) = self.check(have) {
                for f in &want {
                    if !have
                        .iter()
                        .any(|h| h.permanent && h.mac == f.mac && h.dst == Some(f.dst))
                    {
                        let r = self.nl.set_fdb(ix, f.mac, f.dst).await;
                        if self.check(r).is_some() {
                            tracing::info!(dst = %f.dst, link = %dev.name, "fabric: set fdb entry");
                            self.report.fdb_added += 1;
                        }
                    }
                }
                // An entry for a desired MAC with another destination was just replaced.
                stale.extend(have.iter().filter_map(|h| match h.dst {
                    Some(dst) if h.permanent && !want.iter().any(|f| f.mac == h.mac) => {
                        Some(Stale::Fdb {
                            index: ix,
                            mac: h.mac,
                            dst,
                        })
                    }
                    _ => None,
                }));
            }
        }
        stale
    }

    /// Add (or replace) the missing routes; return the owned routes that are stale.
    async fn add_routes(&mut self, d: &Desired, index: &HashMap<&str, u32>) -> Vec<RouteEntry> {
        let routes = self.nl.main_routes().await;
        let Some(routes) = self.check(routes) else {
            return Vec::new();
        };
        let owned: Vec<RouteEntry> = routes
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTO)
            .collect();
        let mut keep = vec![false; owned.len()];
        let mut missing = Vec::new();
        for r in &d.routes {
            let Some(&oif) = index.get(r.dev.as_str()) else {
                let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
                let msg = format!(
                    "route {}{via} dev {}: device {} does not exist",
                    r.dst, r.dev, r.dev
                );
                self.failures.push(msg);
                continue;
            };
            let want = RouteEntry {
                dst: r.dst,
                gateway: r.via,
                oif: Some(oif),
                protocol: ROUTE_PROTO,
                onlink: r.onlink,
                metric: 0,
            };
            let same = |(i, o): &(usize, &RouteEntry)| {
                !keep[*i]
                    && (o.dst, o.gateway, o.oif, o.onlink)
                        == (want.dst, want.gateway, want.oif, want.onlink)
            };
            match owned.iter().enumerate().find(same) {
                Some((i, _)) => keep[i] = true,
                None => missing.push(want),
            }
        }
        for want in missing {
            // A stale owned route to the same destination is replaced in place, so the
            // destination never goes without a route.
            let stale = (0..owned.len())
                .find(|&i| !keep[i] && owned[i].dst == want.dst && owned[i].metric == 0);
            let r = match stale {
                Some(_) => self.nl.replace_route(&want).await,
                None => self.nl.add_route(&want).await,
            };
            if self.check(r).is_some() {
                tracing::info!(dst = %want.dst, "fabric: added route");
                self.report.routes_added += 1;
                if let Some(i) = stale {
                    keep[i] = true;
                    self.report.routes_deleted += 1;
                }
            }
        }
        owned
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| !k)
            .map(|(r, _)| r)
            .collect()
    }
}
