//! Netlink primitives the multi-host fabric needs on top of [`netlink`](crate::netlink):
//! main-table routes with their protocol, permanent neighbour entries, VXLAN FDB entries
//! and VXLAN devices. Each acts on exactly the object it is given.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo as NlLinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::netlink::{format_mac, nl_err};
use crate::{Netlink, Netns, Result};

/// The metric of the blackhole routes [`Netlink::replace_via`] writes.
pub const BLACKHOLE_METRIC: u32 = 1_000_000;

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output link, if any (none for multipath routes).
    pub oif: Option<u32>,
    /// `rtm_protocol` (who installed it).
    pub protocol: u8,
    /// The `onlink` flag.
    pub onlink: bool,
    /// Metric (`RTA_PRIORITY`); 0 when absent.
    pub metric: u32,
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// Link it is on.
    pub ifindex: u32,
    /// IP address.
    pub ip: Ipv4Addr,
    /// Link-layer address, when resolved.
    pub mac: Option<[u8; 6]>,
    /// `NUD_PERMANENT` (static) rather than learned.
    pub permanent: bool,
}

/// A bridge FDB entry of a device (`bridge fdb show dev ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// Link it is on.
    pub ifindex: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// Remote IPv4 endpoint (`dst`), for VXLAN entries.
    pub dst: Option<Ipv4Addr>,
    /// `NUD_PERMANENT` (static) rather than learned.
    pub permanent: bool,
}

/// A VXLAN device to create: no learning, no group or remote (every destination comes
/// from a static FDB entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Link name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// Local tunnel endpoint.
    pub local: Ipv4Addr,
    /// ifindex of the underlay link (`dev`).
    pub uplink: u32,
    /// UDP destination port.
    pub port: u16,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: [u8; 6],
}

/// The tunnel attributes of an existing VXLAN device, as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanAttrs {
    /// VNI.
    pub vni: Option<u32>,
    /// Local tunnel endpoint.
    pub local: Option<Ipv4Addr>,
    /// Multicast group or default remote.
    pub group: Option<Ipv4Addr>,
    /// Underlay link (`dev`).
    pub link: Option<u32>,
    /// UDP destination port.
    pub port: Option<u16>,
    /// Whether source addresses are learned into the FDB.
    pub learning: bool,
}

impl Netlink {
    /// IPv4 routes of the main table (all protocols).
    pub async fn main_routes(&self) -> Result<Vec<RouteEntry>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(filter).execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
            if let Some(r) = main_route(&m) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The main table's routes of `protocol`, each with its next hops: one for a plain
    /// route, several for a multipath (ECMP) one, in order.
    pub async fn next_hops_of(
        &self,
        protocol: u8,
    ) -> Result<std::collections::BTreeMap<Ipv4Net, Vec<Ipv4Addr>>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(filter).execute();
        let mut out = std::collections::BTreeMap::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
            let Some(r) = main_route(&m) else { continue };
            if r.protocol != protocol {
                continue;
            }
            let mut hops: Vec<Ipv4Addr> = r.gateway.into_iter().collect();
            for a in &m.attributes {
                if let RouteAttribute::MultiPath(nhs) = a {
                    hops.extend(nhs.iter().flat_map(|nh| {
                        nh.attributes.iter().filter_map(|a| match a {
                            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                            _ => None,
                        })
                    }));
                }
            }
            hops.sort();
            out.insert(r.dst, hops);
        }
        Ok(out)
    }

    /// Add or replace the main-table route to `dst` of `protocol` via `hops`: a plain
    /// route for one, a multipath (ECMP) route for several, and for none a blackhole
    /// route of metric [`BLACKHOLE_METRIC`] (behind any other route to `dst`: what it
    /// catches is what nothing else routes).
    pub async fn replace_via(&self, dst: Ipv4Net, hops: &[Ipv4Addr], protocol: u8) -> Result<()> {
        let [first, rest @ ..] = hops else {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .protocol(RouteProtocol::from(protocol))
                .scope(RouteScope::Universe)
                .kind(RouteType::BlackHole)
                .priority(BLACKHOLE_METRIC);
            if dst.prefix_len() > 0 {
                b = b.destination_prefix(dst.addr(), dst.prefix_len());
            }
            return self
                .handle
                .route()
                .add(b.build())
                .replace()
                .execute()
                .await
                .map_err(|e| nl_err(format!("blackhole route {dst} proto {protocol}"), e));
        };
        if rest.is_empty() {
            return self
                .replace_route(&RouteEntry {
                    dst,
                    gateway: Some(*first),
                    oif: None,
                    protocol,
                    onlink: false,
                    metric: 0,
                })
                .await;
        }
        let nhs: Vec<RouteNextHop> = hops
            .iter()
            .map(|g| {
                let mut nh = RouteNextHop::default();
                nh.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(*g))];
                nh
            })
            .collect();
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .protocol(RouteProtocol::from(protocol))
            .scope(RouteScope::Universe);
        if dst.prefix_len() > 0 {
            b = b.destination_prefix(dst.addr(), dst.prefix_len());
        }
        self.handle
            .route()
            .add(b.multipath(nhs).build())
            .replace()
            .execute()
            .await
            .map_err(|e| {
                let via: Vec<String> = hops.iter().map(|h| h.to_string()).collect();
                nl_err(
                    format!(
                        "replace route {dst} via {} proto {protocol}",
                        via.join(", ")
                    ),
                    e,
                )
            })
    }

    /// Delete the main-table route to `dst` of `protocol`, whatever its next hops.
    pub async fn del_route_of(&self, dst: Ipv4Net, protocol: u8) -> Result<()> {
        self.del_route(&RouteEntry {
            dst,
            gateway: None,
            oif: None,
            protocol,
            onlink: false,
            metric: 0,
        })
        .await
    }

    /// Add a route to the main table; fails with EEXIST if one with the same
    /// destination and metric exists.
    pub async fn add_route(&self, r: &RouteEntry) -> Result<()> {
        self.handle
            .route()
            .add(route_msg(r))
            .execute()
            .await
            .map_err(|e| nl_err(format!("add route {}", show_route(r)), e))
    }

    /// Add a route to the main table, replacing the one with the same destination and
    /// metric if there is one.
    pub async fn replace_route(&self, r: &RouteEntry) -> Result<()> {
        self.handle
            .route()
            .add(route_msg(r))
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format!("replace route {}", show_route(r)), e))
    }

    /// Delete a main-table route exactly as [`Netlink::main_routes`] listed it.
    pub async fn del_route(&self, r: &RouteEntry) -> Result<()> {
        let mut m = route_msg(r);
        // Wildcards for what `RouteEntry` does not carry, so the listed route matches.
        m.header.scope = RouteScope::NoWhere;
        m.header.kind = RouteType::Unspec;
        self.handle
            .route()
            .del(m)
            .execute()
            .await
            .map_err(|e| nl_err(format!("delete route {}", show_route(r)), e))
    }

    /// IPv4 neighbour entries on link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<NeighbourEntry>> {
        let op = || format!("list neighbours of link {index}");
        let mut req = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet);
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::IfIndex(index));
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl_err(op(), e))? {
            if m.header.ifindex != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                out.push(NeighbourEntry {
                    ifindex: index,
                    ip,
                    mac: lladdr(&m),
                    permanent: is_permanent(&m),
                });
            }
        }
        Ok(out)
    }

    /// Add (or replace) the permanent neighbour entry `ip` -> `mac` on link `index`.
    pub async fn set_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                let op = format!(
                    "set neighbour {ip} lladdr {} on link {index}",
                    format_mac(&mac)
                );
                nl_err(op, e)
            })
    }

    /// Delete the neighbour entry for `ip` on link `index`.
    pub async fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(|e| nl_err(format!("delete neighbour {ip} on link {index}"), e))
    }

    /// The FDB entries of link `index` itself (`bridge fdb show dev <link>`).
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let op = || format!("list fdb of link {index}");
        let mut req = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge);
        // NDA_IFINDEX makes the kernel dump only this device's entries.
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::IfIndex(index));
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| nl_err(op(), e))? {
            if m.header.ifindex != index || m.header.family != AddressFamily::Bridge {
                continue;
            }
            let Some(mac) = lladdr(&m) else { continue };
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                }
                _ => None,
            });
            out.push(FdbEntry {
                ifindex: index,
                mac,
                dst,
                permanent: is_permanent(&m),
            });
        }
        Ok(out)
    }

    /// Point `mac` at remote `dst` on VXLAN link `index` (`bridge fdb replace <mac> dev
    /// <link> dst <dst> self permanent`). Replace rather than append: for a unicast MAC
    /// the kernel ignores an append to an existing entry, so a moved peer would keep its
    /// old destination.
    pub async fn set_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(IpAddr::V4(dst))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                let op = format!("set fdb {} dst {dst} on link {index}", format_mac(&mac));
                nl_err(op, e)
            })
    }

    /// Delete the FDB entry `mac` -> `dst` of link `index` itself.
    pub async fn del_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.header.state = NeighbourState::Permanent;
        m.attributes.extend([
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)),
        ]);
        self.handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(|e| {
                let op = format!("delete fdb {} dst {dst} on link {index}", format_mac(&mac));
                nl_err(op, e)
            })
    }

    /// Create a VXLAN device as `spec` says, up. With `inside`, the device is created
    /// in that namespace while its UDP socket and `uplink` stay in this one (a tenant's
    /// tunnel: the tenant's namespace has no underlay of its own).
    pub async fn create_vxlan(&self, spec: &VxlanSpec, inside: Option<&Netns>) -> Result<()> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.uplink)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .up();
        if let Some(ns) = inside {
            b = b.setns_by_fd(ns.raw_fd());
        }
        let msg = b.build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            let op = format!(
                "create vxlan {} (vni {}, local {}, dev {}, dstport {})",
                spec.name, spec.vni, spec.local, spec.uplink, spec.port
            );
            nl_err(op, e)
        })
    }

    /// The tunnel attributes of link `index`, or `None` when it is not a VXLAN device.
    pub async fn vxlan_attrs(&self, index: u32) -> Result<Option<VxlanAttrs>> {
        let op = || format!("get vxlan attributes of link {index}");
        let mut s = self.handle.link().get().match_index(index).execute();
        let Some(m) = s.try_next().await.map_err(|e| nl_err(op(), e))? else {
            return Ok(None);
        };
        let data = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                NlLinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
                _ => None,
            }),
            _ => None,
        });
        Ok(data.map(|infos| {
            let mut a = VxlanAttrs::default();
            for i in infos {
                match i {
                    InfoVxlan::Id(v) => a.vni = Some(*v),
                    InfoVxlan::Local(v) => a.local = Some(*v),
                    InfoVxlan::Group(v) => a.group = Some(*v),
                    InfoVxlan::Link(v) => a.link = Some(*v),
                    InfoVxlan::Port(v) => a.port = Some(*v),
                    InfoVxlan::Learning(v) => a.learning = *v,
                    _ => {}
                }
            }
            a
        }))
    }

    /// Set a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("set mtu {mtu} on link {index}"), e))
    }

    /// Set a link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            let op = format!("set address {} on link {index}", format_mac(&mac));
            nl_err(op, e)
        })
    }

    /// Remove an IPv4 address from a link.
    pub async fn del_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        self.handle
            .address()
            .del(m)
            .execute()
            .await
            .map_err(|e| nl_err(format!("delete address {addr} from link {index}"), e))
    }
}

/// `NUD_PERMANENT` is set (`bridge fdb add ... permanent` also sets `NUD_NOARP`).
fn is_permanent(m: &NeighbourMessage) -> bool {
    u16::from(m.header.state) & u16::from(NeighbourState::Permanent) != 0
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

/// The route as a [`RouteEntry`] if it is an IPv4 route of the main table.
fn main_route(m: &RouteMessage) -> Option<RouteEntry> {
    if m.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut r = RouteEntry {
        dst: Ipv4Net::default(),
        gateway: None,
        oif: None,
        protocol: m.header.protocol.into(),
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        metric: 0,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.metric = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    r.dst = Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
    Some(r)
}

/// A main-table route message for `r` (scope link without a next hop, as `ip route`).
fn route_msg(r: &RouteEntry) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .protocol(RouteProtocol::from(r.protocol))
        .scope(if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        });
    if r.dst.prefix_len() > 0 {
        b = b.destination_prefix(r.dst.addr(), r.dst.prefix_len());
    }
    if let Some(g) = r.gateway {
        b = b.gateway(g);
    }
    if let Some(i) = r.oif {
        b = b.output_interface(i);
    }
    if r.onlink {
        b = b.onlink();
    }
    if r.metric != 0 {
        b = b.priority(r.metric);
    }
    b.build()
}

/// `10.0.0.0/24 via 1.2.3.4 dev #3 onlink proto 116 metric 0`, for error messages.
fn show_route(r: &RouteEntry) -> String {
    let mut s = r.dst.to_string();
    if let Some(g) = r.gateway {
        s += &format!(" via {g}");
    }
    if let Some(i) = r.oif {
        s += &format!(" dev #{i}");
    }
    if r.onlink {
        s += " onlink";
    }
    s + &format!(" proto {} metric {}", r.protocol, r.metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_roundtrip() {
        let r = RouteEntry {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 244, 2, 0)),
            oif: Some(7),
            protocol: 116,
            onlink: true,
            metric: 0,
        };
        assert_eq!(main_route(&route_msg(&r)), Some(r.clone()));
        assert_eq!(
            show_route(&r),
            "10.244.2.0/24 via 10.244.2.0 dev #7 onlink proto 116 metric 0"
        );
        let direct = RouteEntry {
            gateway: None,
            onlink: false,
            metric: 5,
            ..r
        };
        let m = route_msg(&direct);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(main_route(&m), Some(direct));
    }
}
