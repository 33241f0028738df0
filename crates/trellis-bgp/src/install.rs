//! The kernel's share of the RIB: one route per best prefix in the main table, with
//! protocol [`BGP_PROTO`], via the best next hop; routes of that protocol nothing wants
//! are removed, nothing else is touched. [`sync`] lists the table and is idempotent, so
//! a restart changes nothing; [`apply`] touches only the prefixes that changed since a
//! state known to be in the kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use trellis_net::{Netlink, RouteEntry};

/// `rtm_protocol` of the routes learned by BGP.
pub const BGP_PROTO: u8 = 119;

/// What [`sync`] or [`apply`] changed, and what it could not.
#[derive(Debug, Default)]
pub struct Report {
    /// Routes added or replaced.
    pub set: usize,
    /// Routes removed.
    pub removed: usize,
    /// The routes the kernel refused (a next hop it cannot reach, ...): the others
    /// are programmed all the same.
    pub failed: Vec<(Ipv4Net, trellis_net::NetError)>,
}

impl Report {
    /// The refusals as one line, if any.
    pub fn failures(&self) -> Option<String> {
        (!self.failed.is_empty()).then(|| {
            self.failed
                .iter()
                .map(|(p, e)| format!("{p}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// Bring the main table's [`BGP_PROTO`] routes to `best` (prefix → next hops; the first
/// is used until multipath routes are written), listing the table first. Fails only
/// when the table cannot be listed; refused routes are in the report.
pub async fn sync(
    nl: &Netlink,
    best: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
) -> Result<Report, trellis_net::NetError> {
    let have: BTreeMap<Ipv4Net, Option<Ipv4Addr>> = nl
        .main_routes()
        .await?
        .into_iter()
        .filter(|r| r.protocol == BGP_PROTO)
        .map(|r| (r.dst, r.gateway))
        .collect();
    Ok(program(nl, &have, best).await)
}

/// Bring the kernel from `have` (what a previous [`sync`] or [`apply`] left) to `want`,
/// touching only the prefixes whose first next hop differs.
pub async fn apply(
    nl: &Netlink,
    have: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
    want: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
) -> Report {
    let have = have.iter().map(|(p, h)| (*p, h.first().copied())).collect();
    program(nl, &have, want).await
}

async fn program(
    nl: &Netlink,
    have: &BTreeMap<Ipv4Net, Option<Ipv4Addr>>,
    want: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
) -> Report {
    let mut report = Report::default();
    for (dst, hops) in want {
        let Some(via) = hops.first() else { continue };
        if have.get(dst) != Some(&Some(*via)) {
            match nl.replace_route(&route(*dst, Some(*via))).await {
                Ok(()) => report.set += 1,
                Err(e) => report.failed.push((*dst, e)),
            }
        }
    }
    for (dst, via) in have {
        if !want.contains_key(dst) {
            match nl.del_route(&route(*dst, *via)).await {
                Err(e) if !e.is_not_found() => report.failed.push((*dst, e)),
                _ => report.removed += 1,
            }
        }
    }
    report
}

fn route(dst: Ipv4Net, via: Option<Ipv4Addr>) -> RouteEntry {
    RouteEntry {
        dst,
        gateway: via,
        oif: None,
        protocol: BGP_PROTO,
        onlink: false,
        metric: 0,
    }
}
