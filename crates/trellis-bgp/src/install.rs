//! The kernel's share of the RIB: one route per best prefix in the main table, with
//! protocol [`BGP_PROTO`], via the best next hop; routes of that protocol nothing wants
//! are removed, nothing else is touched. Idempotent, so a restart changes nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use trellis_net::{Netlink, RouteEntry};

/// `rtm_protocol` of the routes learned by BGP.
pub const BGP_PROTO: u8 = 119;

/// What [`sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Routes added or replaced.
    pub set: usize,
    /// Routes removed.
    pub removed: usize,
}

/// Bring the main table's [`BGP_PROTO`] routes to `best` (prefix → next hops; the first
/// is used until multipath routes are written).
pub async fn sync(
    nl: &Netlink,
    best: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
) -> Result<Report, trellis_net::NetError> {
    let route = |dst: Ipv4Net, via: Ipv4Addr| RouteEntry {
        dst,
        gateway: Some(via),
        oif: None,
        protocol: BGP_PROTO,
        onlink: false,
        metric: 0,
    };
    let have: BTreeMap<Ipv4Net, Option<Ipv4Addr>> = nl
        .main_routes()
        .await?
        .into_iter()
        .filter(|r| r.protocol == BGP_PROTO)
        .map(|r| (r.dst, r.gateway))
        .collect();
    let mut report = Report::default();
    for (dst, hops) in best {
        let Some(via) = hops.first() else { continue };
        if have.get(dst) != Some(&Some(*via)) {
            nl.replace_route(&route(*dst, *via)).await?;
            report.set += 1;
        }
    }
    for (dst, via) in &have {
        if !best.contains_key(dst) {
            let r = RouteEntry {
                gateway: *via,
                ..route(*dst, Ipv4Addr::UNSPECIFIED)
            };
            match nl.del_route(&r).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => report.removed += 1,
            }
        }
    }
    Ok(report)
}
