//! "Bridge over the uplink" for the `l2` backend: the node's uplink becomes a port of the
//! pod bridge and the node's IPv4 addresses and default route move to the bridge, so pods
//! attached to the bridge sit directly on the underlay segment.
//!
//! The move is ordered so that the node never loses its addresses or its default route
//! on the way, and so that every intermediate state is one a rerun can finish from:
//!
//! 1. create the bridge, down, with the uplink's MAC address and MTU;
//! 2. enslave the uplink;
//! 3. add the uplink's IPv4 addresses to the bridge;
//! 4. bring the bridge up;
//! 5. switch each main-table default route that leaves through the uplink to leave through
//!    the bridge (one atomic `NLM_F_REPLACE`, same gateway, metric and flags);
//! 6. delete the addresses from the uplink (the kernel drops the uplink's routes with
//!    them);
//! 7. add a default route through the bridge if there is no default route at all and the
//!    gateway is known.
//!
//! Step 5 runs before step 6 (rather than re-adding the route after the delete) so there
//! is no moment without a default route, and so that a crash at any point leaves the
//! gateway readable from the kernel. The gateway is also remembered in the bridge's
//! interface alias (`trellis uplink eth0 via 192.168.77.1`), which lets a rerun restore a
//! default route that went missing later (for example after the bridge was taken down and
//! up again, which flushes its routes).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::netlink::{format_mac, nl_err};
use crate::{LinkInfo, NetError, Netlink, Result};

/// What `ensure_uplink_bridge` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkBridge {
    /// ifindex of the bridge.
    pub bridge_index: u32,
    /// The bridge did not exist and was created by this call.
    pub created: bool,
    /// IPv4 addresses this call took off the uplink (they are now on the bridge), in the
    /// order the kernel listed them. Empty when the uplink had none left.
    pub moved_addresses: Vec<Ipv4Net>,
    /// Gateway of the default route this call moved from the uplink to the bridge, or
    /// re-added through the bridge because no default route existed.
    pub moved_default_route: Option<Ipv4Addr>,
    /// The bridge's MTU afterwards.
    pub mtu: u32,
}

/// Prefix of the bridge alias that remembers the uplink's gateway.
const MEMO_PREFIX: &str = "trellis uplink ";

impl Netlink {
    /// Make `bridge` carry the uplink: create the bridge if missing (with the uplink's
    /// MAC address and MTU, so the segment sees the same host), enslave `uplink`, move
    /// every IPv4 address of the uplink to the bridge and the default route (same
    /// gateway) to go out of the bridge, bring it up.
    ///
    /// Idempotent: when the uplink is already enslaved to `bridge` and the bridge has the
    /// addresses, nothing changes (`created` is false and nothing is reported moved).
    /// Safe against a crash half-way: a rerun finishes the job from any intermediate
    /// state (see the [module docs](self) for the order). An existing `bridge` is adopted;
    /// if its MAC address differs from the uplink's it is set to the uplink's. The gateway
    /// is remembered in the bridge's interface alias, so a default route lost later (a
    /// down/up of the bridge flushes it) is restored by the next call.
    ///
    /// Refuses (before changing anything) when `uplink` does not exist, when `bridge`
    /// names a link that is not a bridge, or when `uplink` is a port of another master.
    /// Only IPv4 is moved; multipath default routes and other gatewayed routes of the
    /// uplink are not moved (the kernel drops the latter with the uplink's addresses).
    /// Addresses are re-created on the bridge as permanent addresses.
    pub async fn ensure_uplink_bridge(&self, bridge: &str, uplink: &str) -> Result<UplinkBridge> {
        let what = format!("bridge uplink {uplink} into {bridge}");
        let refuse = |msg: String, errno: i32| NetError::Netlink {
            op: what.clone(),
            msg,
            errno: Some(errno),
        };
        if bridge == uplink {
            return Err(refuse(
                "the bridge and the uplink are the same link".into(),
                libc::EINVAL,
            ));
        }
        let up = self
            .link(uplink)
            .await?
            .ok_or_else(|| refuse(format!("no link named {uplink}"), libc::ENODEV))?;
        let existing = self.link(bridge).await?;
        if let Some(b) = &existing {
            if b.kind.as_deref() != Some("bridge") {
                return Err(refuse(
                    format!("a link named {bridge} exists but is a {:?}", b.kind),
                    libc::EEXIST,
                ));
            }
        }
        if let Some(m) = up.master {
            if existing.as_ref().map(|b| b.index) != Some(m) {
                return Err(refuse(
                    format!("{uplink} is already a port of link {m}"),
                    libc::EBUSY,
                ));
            }
        }

        // Snapshot before any change: what has to move.
        let up_addrs = uplink_addr_msgs(self, up.index).await?;
        let defaults = uplink_default_routes(self).await?;

        // 1. The bridge, down, looking like the uplink to the segment.
        let (br, created) = match existing {
            Some(b) => (b, false),
            None => (uplink_create_bridge(self, bridge, &up).await?, true),
        };
        if !created && up.mac.len() == 6 && br.mac != up.mac {
            let msg = LinkUnspec::new_with_index(br.index)
                .address(up.mac.clone())
                .build();
            self.handle.link().set(msg).execute().await.map_err(|e| {
                let mac = format_mac(&up.mac);
                nl_err(
                    format!("set address {mac} of {uplink} on bridge {bridge}"),
                    e,
                )
            })?;
        }

        // 2. Enslave the uplink (and make sure it is up: it is the node's only way out).
        if up.master != Some(br.index) {
            let msg = LinkUnspec::new_with_index(up.index)
                .controller(br.index)
                .build();
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| nl_err(format!("enslave {uplink} to bridge {bridge}"), e))?;
        }
        if !up.up {
            self.set_up(up.index).await?;
        }

        // 3. The addresses on the bridge, primaries first so they stay primary.
        let on_bridge = self.addrs(br.index).await?;
        for (addr, _) in &up_addrs {
            if on_bridge.contains(addr) {
                continue;
            }
            match self.add_addr(br.index, *addr).await {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => {
                    return Err(NetError::Netlink {
                        op: format!("move address {addr} from {uplink} to bridge {bridge}"),
                        msg: e.to_string(),
                        errno: e.errno(),
                    })
                }
            }
        }

        // 4. Up.
        if !br.up {
            self.set_up(br.index).await?;
        }

        // 5. Default routes through the uplink now leave through the bridge, atomically.
        let mut moved_gw = None;
        let mut memo = uplink_memo(self, br.index).await?;
        for (gw, msg) in defaults
            .iter()
            .filter(|(_, m)| route_oif(m) == Some(up.index))
        {
            if memo.as_ref().map(|(u, g)| (u.as_str(), *g)) != Some((uplink, *gw)) {
                uplink_set_memo(self, br.index, bridge, uplink, *gw).await?;
                memo = Some((uplink.to_string(), *gw));
            }
            let new = retarget_route(msg, br.index);
            self.handle
                .route()
                .add(new)
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    nl_err(
                        format!("move default route via {gw} from {uplink} to bridge {bridge}"),
                        e,
                    )
                })?;
            moved_gw.get_or_insert(*gw);
        }

        // 6. Off the uplink; secondaries first (deleting a primary takes its secondaries).
        for (addr, msg) in up_addrs.iter().rev() {
            match self.handle.address().del(msg.clone()).execute().await {
                Ok(()) => {}
                Err(e) => {
                    let e = nl_err(format!("delete address {addr} from {uplink}"), e);
                    if !matches!(
                        e.errno(),
                        Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                    ) {
                        return Err(e);
                    }
                }
            }
        }

        // 7. No default route at all (e.g. lost after a crash or a bounce of the bridge):
        // restore the remembered one.
        if moved_gw.is_none() {
            let now = uplink_default_routes(self).await?;
            if now.is_empty() {
                if let Some((u, gw)) = memo.filter(|(u, _)| u == uplink) {
                    self.add_default_route(br.index, gw).await.map_err(|e| {
                        NetError::Netlink {
                            op: format!(
                                "restore default route via {gw} (remembered for {u}) on bridge {bridge}"
                            ),
                            msg: e.to_string(),
                            errno: e.errno(),
                        }
                    })?;
                    moved_gw = Some(gw);
                }
            } else if let Some((gw, _)) = now.iter().find(|(_, m)| route_oif(m) == Some(br.index)) {
                // Keep the memo in step with the route the bridge really carries.
                if memo.as_ref().map(|(u, g)| (u.as_str(), *g)) != Some((uplink, *gw)) {
                    uplink_set_memo(self, br.index, bridge, uplink, *gw).await?;
                }
            }
        }

        let mtu = match self.link(bridge).await? {
            Some(l) => l.mtu,
            None => br.mtu,
        };
        Ok(UplinkBridge {
            bridge_index: br.index,
            created,
            moved_addresses: up_addrs.into_iter().map(|(a, _)| a).collect(),
            moved_default_route: moved_gw,
            mtu,
        })
    }
}

/// Create `name` as a bridge, down, with the uplink's MAC address and MTU.
async fn uplink_create_bridge(nl: &Netlink, name: &str, up: &LinkInfo) -> Result<LinkInfo> {
    let op = || {
        format!(
            "create bridge {name} (mac {} mtu {} of {})",
            format_mac(&up.mac),
            up.mtu,
            up.name
        )
    };
    let mut b = LinkBridge::new(name).mtu(up.mtu);
    if up.mac.len() == 6 {
        b = b.address(up.mac.clone());
    }
    nl.handle
        .link()
        .add(b.build())
        .execute()
        .await
        .map_err(|e| nl_err(op(), e))?;
    nl.link(name).await?.ok_or_else(|| NetError::Netlink {
        op: op(),
        msg: "created but not found".into(),
        errno: None,
    })
}

/// The uplink's IPv4 addresses with the kernel's messages (to delete them exactly),
/// primaries first.
async fn uplink_addr_msgs(nl: &Netlink, index: u32) -> Result<Vec<(Ipv4Net, AddressMessage)>> {
    let mut out = Vec::new();
    let mut s = nl
        .handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| nl_err(format!("list addresses of link {index}"), e))?
    {
        if m.header.family != AddressFamily::Inet || m.header.index != index {
            continue;
        }
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        });
        if let Some(Ok(net)) = addr.map(|ip| Ipv4Net::new(ip, m.header.prefix_len)) {
            out.push((net, m));
        }
    }
    out.sort_by_key(|(_, m)| is_secondary(m));
    Ok(out)
}

fn is_secondary(m: &AddressMessage) -> bool {
    let attr = m.attributes.iter().any(|a| match a {
        AddressAttribute::Flags(f) => f.contains(AddressFlags::Secondary),
        _ => false,
    });
    attr || m.header.flags.contains(AddressHeaderFlags::Secondary)
}

/// Unicast IPv4 default routes of the main table that have a single gateway, with their
/// messages.
async fn uplink_default_routes(nl: &Netlink) -> Result<Vec<(Ipv4Addr, RouteMessage)>> {
    let filter = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut s = nl.handle.route().get(filter).execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
        if m.header.address_family != AddressFamily::Inet
            || m.header.destination_prefix_length != 0
            || m.header.kind != RouteType::Unicast
        {
            continue;
        }
        let mut table = u32::from(m.header.table);
        let mut gw = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        if let Some(gw) = gw {
            out.push((gw, m));
        }
    }
    Ok(out)
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// The same route (gateway, metric, protocol, scope, source, metrics, onlink) out of
/// `oif`. Only attributes a route can be created with are kept; state flags the kernel
/// reports (`linkdown`, `dead`, offload) are dropped, it refuses them.
fn retarget_route(m: &RouteMessage, oif: u32) -> RouteMessage {
    let mut new = RouteMessage::default();
    new.header = m.header.clone();
    new.header.flags = m.header.flags & RouteFlags::Onlink;
    new.attributes = m
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Gateway(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::PrefSource(_)
                    | RouteAttribute::Metrics(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::Realm(_)
            )
        })
        .cloned()
        .collect();
    new.attributes.push(RouteAttribute::Oif(oif));
    new
}

/// The (uplink, gateway) remembered in the bridge's alias, if any.
async fn uplink_memo(nl: &Netlink, index: u32) -> Result<Option<(String, Ipv4Addr)>> {
    let mut s = nl.handle.link().get().match_index(index).execute();
    let m = s
        .try_next()
        .await
        .map_err(|e| nl_err(format!("get link {index}"), e))?;
    Ok(m.and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfAlias(s) => parse_memo(s),
            _ => None,
        })
    }))
}

async fn uplink_set_memo(
    nl: &Netlink,
    index: u32,
    bridge: &str,
    uplink: &str,
    gw: Ipv4Addr,
) -> Result<()> {
    let alias = format_memo(uplink, gw);
    let msg = LinkUnspec::new_with_index(index)
        .alias(alias.clone())
        .build();
    nl.handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(format!("set alias {alias:?} on bridge {bridge}"), e))
}

fn format_memo(uplink: &str, gw: Ipv4Addr) -> String {
    format!("{MEMO_PREFIX}{uplink} via {gw}")
}

fn parse_memo(s: &str) -> Option<(String, Ipv4Addr)> {
    let rest = s.strip_prefix(MEMO_PREFIX)?;
    let (uplink, gw) = rest.split_once(" via ")?;
    if uplink.is_empty() || uplink.contains(' ') {
        return None;
    }
    Some((uplink.to_string(), gw.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_roundtrip() {
        let gw: Ipv4Addr = "192.168.77.1".parse().unwrap();
        let s = format_memo("eth0", gw);
        assert_eq!(s, "trellis uplink eth0 via 192.168.77.1");
        assert_eq!(parse_memo(&s), Some(("eth0".to_string(), gw)));
        assert_eq!(parse_memo("uplink to the rack"), None);
        assert_eq!(parse_memo("trellis uplink eth0 via nowhere"), None);
        assert_eq!(parse_memo("trellis uplink  via 1.2.3.4"), None);
    }

    #[test]
    fn retarget_keeps_the_route_and_drops_state_flags() {
        let mut m = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway("10.0.0.1".parse().unwrap())
            .output_interface(2)
            .priority(100)
            .build();
        m.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        let n = retarget_route(&m, 7);
        assert_eq!(route_oif(&n), Some(7));
        assert_eq!(n.header.flags, RouteFlags::Onlink);
        assert!(n.attributes.contains(&RouteAttribute::Priority(100)));
        assert!(n
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                "10.0.0.1".parse().unwrap()
            ))));
        assert_eq!(
            n.attributes
                .iter()
                .filter(|a| matches!(a, RouteAttribute::Oif(_)))
                .count(),
            1
        );
    }
}
