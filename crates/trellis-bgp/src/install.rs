//! The kernel's share of the RIB: one route per best prefix in the main table, with
//! protocol [`BGP_PROTO`], via the best next hop — or, when several paths are equally
//! good (ECMP), a multipath route via all of them; a prefix with no next hop gets a
//! blackhole route (our own pod subnets); routes of that protocol nothing wants
//! are removed, nothing else is touched. [`sync`] lists the table and is idempotent, so
//! a restart changes nothing; [`apply`] touches only the prefixes that changed since a
//! state known to be in the kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use trellis_net::Netlink;

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

/// Bring the main table's [`BGP_PROTO`] routes to `best` (prefix → next hops: a plain
/// route for one, a multipath route for several), listing the table first. Fails only
/// when the table cannot be listed; refused routes are in the report.
pub async fn sync(
    nl: &Netlink,
    best: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
) -> Result<Report, trellis_net::NetError> {
    let have = nl.next_hops_of(BGP_PROTO).await?;
    Ok(apply(nl, &have, best).await)
}

/// Bring the kernel from `have` (what a previous [`sync`] or [`apply`] left) to `want`,
/// touching only the prefixes whose next hops differ.
pub async fn apply(
    nl: &Netlink,
    have: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
    want: &BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
) -> Report {
    let mut report = Report::default();
    for (dst, hops) in want {
        if have.get(dst) == Some(hops) {
            continue;
        }
        match nl.replace_via(*dst, hops, BGP_PROTO).await {
            Ok(()) => report.set += 1,
            Err(e) => report.failed.push((*dst, e)),
        }
    }
    for dst in have.keys() {
        if !want.contains_key(dst) {
            match nl.del_route_of(*dst, BGP_PROTO).await {
                Err(e) if !e.is_not_found() => report.failed.push((*dst, e)),
                _ => report.removed += 1,
            }
        }
    }
    report
}
