//! Reading the table as it is in the kernel: chains (with their hooks), the comment of
//! every rule, the sets and the elements of the static sets.

use std::collections::BTreeMap;

use crate::render::{SetSpec, StaticSet};
use crate::ProxyError;
use trellis_net::nftnl::{
    attr, attr_be32, attr_be64, attr_str, msg, parse_attrs, udata_comment, Attrs, Socket, FAMILY_IP,
};

/// A base chain's hook as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveBase {
    pub(crate) kind: String,
    pub(crate) hook: u32,
    pub(crate) priority: i32,
    pub(crate) policy: u32,
}

/// A chain as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LiveChain {
    pub(crate) base: Option<LiveBase>,
    pub(crate) rules: usize,
    /// The comments of the rules, deduplicated (one entry when all agree).
    pub(crate) comments: Vec<String>,
}

/// The table as read back.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveTable {
    pub(crate) exists: bool,
    pub(crate) chains: BTreeMap<String, LiveChain>,
    pub(crate) sets: BTreeMap<String, SetSpec>,
    pub(crate) elems: BTreeMap<(StaticSet, Vec<u8>), Option<String>>,
}

const NFTA_TABLE_NAME: u16 = 1;

fn table_attrs(ty: u16, table: &str) -> Attrs {
    let mut a = Attrs::new();
    a.put_str(ty, table);
    a
}

/// The names of all tables of family `ip`.
pub(crate) fn table_names(sock: &mut Socket) -> Result<Vec<String>, ProxyError> {
    Ok(sock
        .dump(FAMILY_IP, msg::GETTABLE, &Attrs::new())?
        .iter()
        .filter_map(|m| attr_str(m, NFTA_TABLE_NAME))
        .collect())
}

/// Read everything the proxy compares, for each of `tables` (one chain dump for all).
pub(crate) fn read_all(sock: &mut Socket, tables: &[String]) -> Result<Vec<LiveTable>, ProxyError> {
    let existing = table_names(sock)?;
    let mut chains: BTreeMap<String, BTreeMap<String, LiveChain>> = BTreeMap::new();
    if tables.iter().any(|t| existing.contains(t)) {
        // The kernel does not filter chain dumps by table: read them all once.
        for m in sock.dump(FAMILY_IP, msg::GETCHAIN, &Attrs::new())? {
            let m = &m[..];
            let Some(table) = attr_str(m, 1) else {
                continue;
            };
            if !tables.contains(&table) {
                continue;
            }
            let Some(name) = attr_str(m, 3) else { continue };
            let base = attr(m, 4).map(|hook| LiveBase {
                kind: attr_str(m, 7).unwrap_or_default(),
                hook: attr_be32(hook, 1).unwrap_or(u32::MAX),
                priority: attr_be32(hook, 2).map_or(i32::MIN, |p| p as i32),
                policy: attr_be32(m, 5).unwrap_or(1),
            });
            chains.entry(table).or_default().insert(
                name,
                LiveChain {
                    base,
                    ..Default::default()
                },
            );
        }
    }
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        if existing.contains(t) {
            out.push(read(sock, t, chains.remove(t).unwrap_or_default())?);
        } else {
            out.push(LiveTable::default());
        }
    }
    Ok(out)
}

/// Read the rules, sets and elements of `table` (which exists), whose chains are known.
fn read(
    sock: &mut Socket,
    table: &str,
    chains: BTreeMap<String, LiveChain>,
) -> Result<LiveTable, ProxyError> {
    let mut live = LiveTable {
        exists: true,
        chains,
        ..Default::default()
    };

    let mut rule_info: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for m in sock.dump(FAMILY_IP, msg::GETRULE, &table_attrs(1, table))? {
        let m = &m[..];
        if attr_str(m, 1).as_deref() != Some(table) {
            continue;
        }
        let Some(chain) = attr_str(m, 2) else {
            continue;
        };
        let comment = attr(m, 7).and_then(udata_comment).unwrap_or_default();
        let e = rule_info.entry(chain).or_default();
        e.0 += 1;
        if !e.1.contains(&comment) {
            e.1.push(comment);
        }
        let _ = attr_be64(m, 3);
    }
    for (chain, (n, comments)) in rule_info {
        if let Some(c) = live.chains.get_mut(&chain) {
            c.rules = n;
            c.comments = comments;
        }
    }

    let mut sets = BTreeMap::new();
    for m in sock.dump(FAMILY_IP, msg::GETSET, &table_attrs(1, table))? {
        let m = &m[..];
        if attr_str(m, 1).as_deref() != Some(table) {
            continue;
        }
        let Some(name) = attr_str(m, 2) else { continue };
        let flags = attr_be32(m, 3).unwrap_or(0);
        sets.insert(
            name.clone(),
            SetSpec {
                name,
                flags,
                key_type: attr_be32(m, 4).unwrap_or(0),
                key_len: attr_be32(m, 5).unwrap_or(0),
                data_type: attr_be32(m, 6),
                timeout_ms: attr_be64(m, 11),
            },
        );
    }
    live.sets = sets;

    for set in StaticSet::ALL {
        if !live.sets.contains_key(set.name()) {
            continue;
        }
        let mut a = Attrs::new();
        a.put_str(1, table).put_str(2, set.name());
        let mut elems = Vec::new();
        for m in sock.dump(FAMILY_IP, msg::GETSETELEM, &a)? {
            let m = &m[..];
            let Some(list) = attr(m, 3) else { continue };
            for (ty, e) in parse_attrs(list) {
                if ty != 1 {
                    continue;
                }
                let Some(key) = attr(e, 1).and_then(|k| attr(k, 1)) else {
                    continue;
                };
                let goto = attr(e, 2)
                    .and_then(|d| attr(d, 2))
                    .and_then(|v| attr_str(v, 2));
                elems.push((key.to_vec(), goto));
            }
        }
        for (k, v) in elems {
            live.elems.insert((set, k), v);
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_net::nftnl::comment_udata;

    #[test]
    fn comment_round_trip() {
        let u = comment_udata("0123456789abcdef");
        assert_eq!(u[..2], [0, 17]);
        assert_eq!(udata_comment(&u).as_deref(), Some("0123456789abcdef"));
        // nft's encoding of `comment "abc"`
        assert_eq!(udata_comment(b"\x00\x04abc\x00").as_deref(), Some("abc"));
    }
}
