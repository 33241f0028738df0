//! The node's policy table `ip trellis-policy` in the kernel: its chains (built from the
//! ClusterNetworkPolicy layout), its sets (see `compile`), and the reconciler that
//! brings the kernel to the compiled state: [`Table::full_sync`] reads what is there and
//! changes only the difference (a restart with unchanged inputs writes nothing);
//! [`Table::apply`] writes one [`Delta`] as one transaction.
//!
//! ```text
//! postrouting (filter, hook postrouting, priority 200: after DNAT and SNAT)
//!   ct state invalid ip saddr @local drop; ct state invalid ip daddr @local drop
//!   ct original ip saddr @node-addrs return        # the node's own connections (probes)
//!   ct reply ip saddr . ct original protocol . ct reply proto-src @node-dns return
//!   ct original ip saddr @local jump egress        # the source is our pod
//!   ct reply ip saddr @local jump ingress          # the (post-DNAT) destination is ours
//! input (filter, hook input, priority 200)         # a pod talking to its node
//!   (node-dns, invalid, jump egress as above)
//! ingress / egress: the Admin-tier rules in order, then goto ingress-np / egress-np
//! ingress-np / egress-np (subject = our pod, peer = the other end, by address):
//!   subject . peer . proto . port @np-in-port return  # numbered ports: only isolated
//!                                                  # subjects have elements here
//!   subject @np-in-iso goto ingress-allow          # isolated: NetworkPolicies decide
//!   the Baseline-tier rules in order               # reached only when not isolated
//! ingress-allow / egress-allow:
//!   subject . peer @np-in-any return               # every port
//!   subject . peer . proto @np-in-proto return     # every port of a protocol
//!   subject . peer . proto . port @np-in-range return          (endPort ranges)
//!   subject . peer @np-in-cidr-any return                      (ipBlock, every peer)
//!   subject . peer . proto . port @np-in-cidr return
//!   drop                                           # isolated, nothing allowed
//! ```
//!
//! Every packet is judged by its connection's *original* tuple (`ct original ...`, the
//! destination after DNAT from `ct reply ...`): replies pass as their connection does,
//! and a policy that starts denying a connection drops its very next packet, in both
//! directions, with nothing to delete from conntrack. Nothing but the connection's
//! addresses, protocol and port is read, and nothing in the packet is written, so the
//! chains live next to the service proxy and tunnels without side effects; `nft list
//! ruleset` shows them as ordinary rules.

use std::collections::{BTreeMap, BTreeSet};

use trellis_api::naming::fnv1a64;
use trellis_api::objects::{CnpAction, Tier};
use trellis_net::nftnl::expr::{Rule, NFT_GOTO, NFT_JUMP, NFT_RETURN};
use trellis_net::nftnl::{
    attr, attr_be32, attr_str, comment_udata, msg, parse_attrs, udata_comment, Attrs, Message,
    Socket, FAMILY_IP, NLM_F_APPEND, NLM_F_CREATE,
};

use crate::compile::{CnpRuleLayout, Compiler, Delta, Elem, RuleSet};
use crate::elements::np_sets;
use crate::model::Dir;
use crate::PolicyError;

/// The table's name (family `ip`).
pub const TABLE: &str = "trellis-policy";

/// Bumped whenever a rule's encoding changes, so old chains are rewritten.
const FORMAT: &str = "trellis-policy/3";

const SET_INTERVAL: u32 = 0x4;
const SET_MAP: u32 = 0x8;
const SET_CONCAT: u32 = 0x80;

const T_IPV4: u32 = 7;
const T_PROTO: u32 = 12;
const T_SERVICE: u32 = 13;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;

const HOOK_IN: u32 = 1;
const HOOK_POSTROUTING: u32 = 4;

/// After source NAT (100), so the connection's tuples are complete.
const PRIORITY: i32 = 200;

// nft_ct keys and directions.
const CT_STATE: u32 = 0;
const CT_PROTOCOL: u32 = 10;
const CT_PROTO_SRC: u32 = 11;
const CT_SRC_IP: u32 = 19;
const ORIGINAL: u8 = 0;
const REPLY: u8 = 1;

// 4-byte registers.
const R8: u32 = 8;
const R9: u32 = 9;
const R10: u32 = 10;
const R12: u32 = 12;
const R13: u32 = 13;

const MAX_ELEM_BYTES: usize = 48 << 10;

/// A set as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// The key's type (concatenations: 6 bits per field).
    pub key_type: u32,
    /// The key's length in bytes (fields padded to 4).
    pub key_len: u32,
    /// Field lengths of an interval concatenation.
    pub fields: Vec<u32>,
    /// Map value type and length.
    pub data: Option<(u32, u32)>,
}

fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}

fn hash_set(types: &[u32]) -> SetSpec {
    SetSpec {
        flags: 0,
        key_type: concat(types),
        key_len: 4 * types.len() as u32,
        fields: Vec::new(),
        data: None,
    }
}

fn interval_set(types: &[u32]) -> SetSpec {
    let fields = types
        .iter()
        .map(|t| match *t {
            T_PROTO => 1,
            T_SERVICE => 2,
            _ => 4,
        })
        .collect();
    SetSpec {
        flags: SET_INTERVAL | SET_CONCAT,
        key_type: concat(types),
        key_len: 4 * types.len() as u32,
        fields,
        data: None,
    }
}

/// A set's name and the function giving its spec.
pub type StaticSet = (&'static str, fn() -> SetSpec);

/// The sets every policy table has, with their specs (keyed by addresses: subjects are
/// this node's pods, peers any address).
pub static STATIC_SETS: [StaticSet; 17] = [
    ("local", || hash_set(&[T_IPV4])),
    ("node-addrs", || hash_set(&[T_IPV4])),
    ("node-dns", || hash_set(&[T_IPV4, T_PROTO, T_SERVICE])),
    ("np-in-any", || hash_set(&[T_IPV4, T_IPV4])),
    ("np-in-proto", || hash_set(&[T_IPV4, T_IPV4, T_PROTO])),
    ("np-in-port", || {
        hash_set(&[T_IPV4, T_IPV4, T_PROTO, T_SERVICE])
    }),
    ("np-in-range", || {
        interval_set(&[T_IPV4, T_IPV4, T_PROTO, T_SERVICE])
    }),
    ("np-in-cidr-any", || interval_set(&[T_IPV4, T_IPV4])),
    ("np-in-cidr", || {
        interval_set(&[T_IPV4, T_IPV4, T_PROTO, T_SERVICE])
    }),
    ("np-in-iso", || hash_set(&[T_IPV4])),
    ("np-out-any", || hash_set(&[T_IPV4, T_IPV4])),
    ("np-out-proto", || hash_set(&[T_IPV4, T_IPV4, T_PROTO])),
    ("np-out-port", || {
        hash_set(&[T_IPV4, T_IPV4, T_PROTO, T_SERVICE])
    }),
    ("np-out-range", || {
        interval_set(&[T_IPV4, T_IPV4, T_PROTO, T_SERVICE])
    }),
    ("np-out-cidr-any", || interval_set(&[T_IPV4, T_IPV4])),
    ("np-out-cidr", || {
        interval_set(&[T_IPV4, T_IPV4, T_PROTO, T_SERVICE])
    }),
    ("np-out-iso", || hash_set(&[T_IPV4])),
];

/// The spec of a per-rule ClusterNetworkPolicy set.
fn rule_set_spec(kind: RuleSet) -> SetSpec {
    match kind {
        RuleSet::Ids => hash_set(&[T_IPV4]),
        RuleSet::Nets => interval_set(&[T_IPV4, T_PROTO]),
        RuleSet::Ports => interval_set(&[T_PROTO, T_SERVICE]),
        // The destination's address: the subject's (ingress) or the peer's (egress).
        RuleSet::Named => hash_set(&[T_IPV4, T_PROTO, T_SERVICE]),
    }
}

/// Every set the table needs for `layout`, with its spec.
pub fn set_specs(layout: &[CnpRuleLayout]) -> BTreeMap<String, SetSpec> {
    let mut out: BTreeMap<String, SetSpec> = STATIC_SETS
        .iter()
        .map(|(n, f)| (n.to_string(), f()))
        .collect();
    for r in layout {
        out.insert(r.subject_set.clone(), hash_set(&[T_IPV4]));
        for (k, name) in &r.sets {
            out.insert(name.clone(), rule_set_spec(*k));
        }
    }
    out
}

/// A chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// The name.
    pub name: String,
    /// `(hook, priority)` of a base chain.
    pub base: Option<(u32, i32)>,
    /// The rules' expressions.
    pub rules: Vec<Vec<u8>>,
    /// The fingerprint every rule carries as its comment.
    pub comment: String,
}

impl ChainSpec {
    fn new(name: &str, base: Option<(u32, i32)>, rules: Vec<Rule>) -> Self {
        let rules: Vec<Vec<u8>> = rules.into_iter().map(|r| r.into_bytes().to_vec()).collect();
        let base_text = format!("{base:?}");
        let h = fnv1a64(
            [FORMAT.as_bytes(), name.as_bytes(), base_text.as_bytes()]
                .into_iter()
                .chain(rules.iter().flat_map(|r| [b"|".as_slice(), &r[..]])),
        );
        ChainSpec {
            name: name.to_string(),
            base,
            rules,
            comment: format!("{h:016x}"),
        }
    }
}

// ---- expressions

trait RuleExt {
    fn ct(&mut self, dreg: u32, key: u32, dir: Option<u8>) -> &mut Self;
    fn lookup_set(&mut self, sreg: u32, set: &str) -> &mut Self;
    fn verdict_code(&mut self, code: i32, chain: Option<&str>) -> &mut Self;
    fn log_prefix(&mut self, prefix: &str) -> &mut Self;
    fn counter(&mut self) -> &mut Self;
    fn ct_invalid(&mut self) -> &mut Self;
    fn ip_addr(&mut self, dreg: u32, dst: bool) -> &mut Self;
}

impl RuleExt for Rule {
    fn ct(&mut self, dreg: u32, key: u32, dir: Option<u8>) -> &mut Self {
        self.expr("ct", |d| {
            d.put_be32(2, key).put_be32(1, dreg);
            if let Some(dir) = dir {
                d.put(3, &[dir]);
            }
        })
    }

    fn lookup_set(&mut self, sreg: u32, set: &str) -> &mut Self {
        self.lookup(sreg, set, None, false)
    }

    fn verdict_code(&mut self, code: i32, chain: Option<&str>) -> &mut Self {
        self.immediate_verdict(code, chain)
    }

    fn log_prefix(&mut self, prefix: &str) -> &mut Self {
        self.expr("log", |d| {
            d.put_str(2, prefix);
        })
    }

    fn counter(&mut self) -> &mut Self {
        self.expr("counter", |d| {
            d.put_be64(1, 0).put_be64(2, 0);
        })
    }

    fn ct_invalid(&mut self) -> &mut Self {
        self.ct(1, CT_STATE, None)
            .bitwise(1, &1u32.to_ne_bytes(), &[0; 4])
            .cmp(1, 1, &[0; 4])
    }

    fn ip_addr(&mut self, dreg: u32, dst: bool) -> &mut Self {
        self.payload(dreg, 1, if dst { 16 } else { 12 }, 4)
    }
}

/// Where a direction's subject and peer addresses come from.
fn subject_peer(dir: Dir) -> (u8, u8) {
    match dir {
        // The subject is the (post-DNAT) destination, the peer the original source.
        Dir::Ingress => (REPLY, ORIGINAL),
        Dir::Egress => (ORIGINAL, REPLY),
    }
}

fn load_subject(r: &mut Rule, dir: Dir, reg: u32) {
    r.ct(reg, CT_SRC_IP, Some(subject_peer(dir).0));
}

fn load_peer_addr(r: &mut Rule, dir: Dir, reg: u32) {
    r.ct(reg, CT_SRC_IP, Some(subject_peer(dir).1));
}

fn load_proto_port(r: &mut Rule, proto_reg: u32) {
    r.ct(proto_reg, CT_PROTOCOL, Some(ORIGINAL))
        .ct(proto_reg + 1, CT_PROTO_SRC, Some(REPLY));
}

/// The NetworkPolicy stage of a direction.
fn np_allow(dir: Dir) -> Vec<Rule> {
    let s = np_sets(dir);
    // (set, fields after subject . peer: 0 none, 1 proto, 2 proto . port). Every
    // lookup returns on a match, so the order only sets the cost. The numbered-port
    // set, the commonest rule form, is not here: it is the first rule of `<dir>-np`.
    let lookups = [
        (s.any, 0),
        (s.proto, 1),
        (s.range, 2),
        (s.cidr_any, 0),
        (s.cidr, 2),
    ];
    let mut out = Vec::new();
    for (set, extra) in lookups {
        out.push(np_lookup(dir, set, extra));
    }
    // Isolated and nothing above allowed it.
    let mut r = Rule::new();
    r.verdict_code(NF_DROP, None);
    out.push(r);
    out
}

/// `subject . peer [. protocol [. port]] @set return`: `extra` is 0 (none), 1
/// (protocol) or 2 (protocol . port).
fn np_lookup(dir: Dir, set: &str, extra: u8) -> Rule {
    let mut r = Rule::new();
    load_subject(&mut r, dir, R8);
    load_peer_addr(&mut r, dir, R9);
    match extra {
        1 => {
            r.ct(R10, CT_PROTOCOL, Some(ORIGINAL));
        }
        2 => load_proto_port(&mut r, R10),
        _ => {}
    }
    r.lookup_set(R8, set).verdict_code(NFT_RETURN, None);
    r
}

/// The first two rules of `<dir>-np`. An element of `np-*-port` exists only for a
/// subject some NetworkPolicy isolates, so a match there is an allow by itself: the
/// commonest allowed packet costs this one lookup. Otherwise an isolated subject goes
/// to `<dir>-allow` for the other rule forms, and any other subject passes on to the
/// Baseline tier after these two lookups.
fn np_head(dir: Dir) -> [Rule; 2] {
    let mut iso = Rule::new();
    load_subject(&mut iso, dir, R8);
    iso.lookup_set(R8, np_sets(dir).iso)
        .verdict_code(NFT_GOTO, Some(&format!("{}-allow", dir.as_str())));
    [np_lookup(dir, np_sets(dir).port, 2), iso]
}

/// The nft rules of one ClusterNetworkPolicy rule (one per peer kind × port kind).
fn cnp_rules(l: &CnpRuleLayout) -> Vec<Rule> {
    let np_chain = format!("{}-np", l.dir.as_str());
    let mut out = Vec::new();
    let peer_kinds: Vec<RuleSet> = [RuleSet::Ids, RuleSet::Nets]
        .into_iter()
        .filter(|k| l.sets.contains_key(k))
        .collect();
    let port_kinds: Vec<Option<RuleSet>> = if l.has_ports {
        [RuleSet::Ports, RuleSet::Named]
            .into_iter()
            .filter(|k| l.sets.contains_key(k))
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    for pk in &peer_kinds {
        for port in &port_kinds {
            let mut r = Rule::new();
            load_subject(&mut r, l.dir, R8);
            r.lookup_set(R8, &l.subject_set);
            load_peer_addr(&mut r, l.dir, R9);
            if *pk == RuleSet::Nets {
                // Nets sets are keyed `address . protocol`.
                r.ct(R10, CT_PROTOCOL, Some(ORIGINAL));
            }
            r.lookup_set(R9, &l.sets[pk]);
            match port {
                Some(RuleSet::Ports) => {
                    load_proto_port(&mut r, R10);
                    r.lookup_set(R10, &l.sets[&RuleSet::Ports]);
                }
                Some(_) => {
                    // The destination's address: the peer's for egress, the subject's
                    // for ingress; either way the connection's (post-DNAT) reply source.
                    r.ct(R12, CT_SRC_IP, Some(REPLY));
                    load_proto_port(&mut r, R13);
                    r.lookup_set(R12, &l.sets[&RuleSet::Named]);
                }
                None => {}
            }
            match l.action {
                CnpAction::Accept => {
                    r.counter().verdict_code(NFT_RETURN, None);
                }
                CnpAction::Deny => {
                    r.counter().verdict_code(NF_DROP, None);
                }
                CnpAction::Pass => {
                    r.counter().verdict_code(NFT_GOTO, Some(&np_chain));
                }
                CnpAction::Log => {
                    let prefix: String =
                        format!("trellis {} ", l.label).chars().take(127).collect();
                    r.counter().log_prefix(&prefix);
                }
            }
            out.push(r);
        }
    }
    out
}

/// Every chain of the table for `layout`.
pub fn chains(layout: &[CnpRuleLayout]) -> Vec<ChainSpec> {
    let dns = || {
        let mut r = Rule::new();
        r.ct(R8, CT_SRC_IP, Some(REPLY));
        load_proto_port(&mut r, R9);
        r.lookup_set(R8, "node-dns").verdict_code(NFT_RETURN, None);
        r
    };
    let invalid = |dst: bool| {
        let mut r = Rule::new();
        r.ct_invalid()
            .ip_addr(R8, dst)
            .lookup_set(R8, "local")
            .verdict_code(NF_DROP, None);
        r
    };
    let to_egress = || {
        let mut r = Rule::new();
        r.ct(R8, CT_SRC_IP, Some(ORIGINAL))
            .lookup_set(R8, "local")
            .verdict_code(NFT_JUMP, Some("egress"));
        r
    };
    let mut own = Rule::new();
    own.ct(R8, CT_SRC_IP, Some(ORIGINAL))
        .lookup_set(R8, "node-addrs")
        .verdict_code(NFT_RETURN, None);
    let mut to_ingress = Rule::new();
    to_ingress
        .ct(R8, CT_SRC_IP, Some(REPLY))
        .lookup_set(R8, "local")
        .verdict_code(NFT_JUMP, Some("ingress"));
    let postrouting = vec![
        invalid(false),
        invalid(true),
        own,
        dns(),
        to_egress(),
        to_ingress,
    ];
    let input = vec![dns(), invalid(false), to_egress()];
    let mut out = vec![
        ChainSpec::new(
            "postrouting",
            Some((HOOK_POSTROUTING, PRIORITY)),
            postrouting,
        ),
        ChainSpec::new("input", Some((HOOK_IN, PRIORITY)), input),
    ];
    for dir in [Dir::Ingress, Dir::Egress] {
        let np_chain = format!("{}-np", dir.as_str());
        let mut admin: Vec<Rule> = layout
            .iter()
            .filter(|l| l.tier == Tier::Admin && l.dir == dir)
            .flat_map(cnp_rules)
            .collect();
        let mut g = Rule::new();
        g.verdict_code(NFT_GOTO, Some(&np_chain));
        admin.push(g);
        let mut np = np_head(dir).to_vec();
        np.extend(
            layout
                .iter()
                .filter(|l| l.tier == Tier::Baseline && l.dir == dir)
                .flat_map(cnp_rules),
        );
        out.push(ChainSpec::new(dir.as_str(), None, admin));
        out.push(ChainSpec::new(&np_chain, None, np));
        out.push(ChainSpec::new(
            &format!("{}-allow", dir.as_str()),
            None,
            np_allow(dir),
        ));
    }
    out
}

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Chains (re)written.
    pub chains: usize,
    /// Sets created or recreated.
    pub sets: usize,
    /// Elements added.
    pub added: usize,
    /// Elements deleted.
    pub deleted: usize,
}

impl SyncReport {
    /// Whether nothing was written.
    pub fn changed_nothing(&self) -> bool {
        *self == SyncReport::default()
    }
}

/// The table as read from the kernel.
#[derive(Debug, Default)]
struct Live {
    exists: bool,
    chains: BTreeMap<String, Vec<String>>,
    /// `(hook, priority)` of the base chains.
    hooks: BTreeMap<String, (u32, i32)>,
    sets: BTreeMap<String, (u32, u32)>,
    elems: BTreeMap<String, BTreeSet<Elem>>,
}

/// The policy table of the calling thread's network namespace.
#[derive(Debug, Default)]
pub struct Table {
    sock: Option<Socket>,
    /// Whether the kernel is known to equal the last synced state.
    synced: bool,
}

enum Op<'a> {
    NewTable,
    FlushChain(&'a str),
    DelChain(&'a str),
    DelSet(&'a str),
    NewSet(&'a str, &'a SetSpec),
    NewChain(&'a ChainSpec),
    Elems(&'a str, bool, Vec<&'a Elem>),
    NewRule(&'a ChainSpec, &'a [u8]),
}

impl Table {
    /// A table not yet read or written.
    pub fn new() -> Self {
        Table::default()
    }

    fn socket(&mut self) -> Result<&mut Socket, PolicyError> {
        if self.sock.is_none() {
            self.sock = Some(Socket::open()?);
        }
        Ok(self.sock.as_mut().expect("just opened"))
    }

    /// Make the kernel table exactly the compiled state: create what is missing,
    /// rewrite chains whose fingerprint differs, bring every set's elements to the
    /// desired ones, delete stale chains and sets. Writes nothing when it is equal.
    pub fn full_sync(&mut self, c: &Compiler) -> Result<SyncReport, PolicyError> {
        self.synced = false;
        let want_chains = chains(c.cnp_layout());
        let want_sets = set_specs(c.cnp_layout());
        let want_elems = c.desired();
        let live = self.read()?;
        let mut ops: Vec<Op<'_>> = Vec::new();
        let mut report = SyncReport::default();
        if !live.exists {
            ops.push(Op::NewTable);
        }
        // A set of another type is deleted and made again; the rules naming it go
        // first, so then every chain is rewritten.
        let set_ok = |name: &String, spec: &SetSpec| {
            live.sets.get(name).is_some_and(|(flags, key_len)| {
                (spec.flags & (SET_INTERVAL | SET_MAP)) == (*flags & (SET_INTERVAL | SET_MAP))
                    && spec.key_len == *key_len
            })
        };
        let stale_sets: Vec<&String> = live
            .sets
            .keys()
            .filter(|n| want_sets.get(*n).is_none_or(|spec| !set_ok(n, spec)))
            .collect();
        let retyped = stale_sets.iter().any(|n| want_sets.contains_key(*n));
        // A base chain on another hook or priority is deleted and made again.
        let rehooked = |ch: &ChainSpec| {
            live.chains.contains_key(&ch.name) && live.hooks.get(&ch.name).copied() != ch.base
        };
        let rewrite: Vec<&ChainSpec> = want_chains
            .iter()
            .filter(|ch| {
                retyped
                    || rehooked(ch)
                    || live.chains.get(&ch.name) != Some(&vec![ch.comment.clone(); ch.rules.len()])
            })
            .collect();
        for ch in &rewrite {
            if live.chains.contains_key(&ch.name) {
                ops.push(Op::FlushChain(&ch.name));
            }
            if rehooked(ch) {
                ops.push(Op::DelChain(&ch.name));
            }
        }
        let wanted_chain_names: BTreeSet<&str> =
            want_chains.iter().map(|c| c.name.as_str()).collect();
        for name in live.chains.keys() {
            if !wanted_chain_names.contains(name.as_str()) {
                ops.push(Op::FlushChain(name));
                ops.push(Op::DelChain(name));
            }
        }
        let mut fresh_sets: BTreeSet<&str> = BTreeSet::new();
        for name in stale_sets {
            ops.push(Op::DelSet(name));
        }
        for (name, spec) in &want_sets {
            if !set_ok(name, spec) {
                ops.push(Op::NewSet(name, spec));
                fresh_sets.insert(name);
                report.sets += 1;
            }
        }
        for ch in &rewrite {
            if !live.chains.contains_key(&ch.name) || rehooked(ch) {
                ops.push(Op::NewChain(ch));
            }
        }
        let empty = BTreeSet::new();
        for (set, want) in &want_elems {
            let have = if fresh_sets.contains(set.as_str()) {
                &empty
            } else {
                live.elems.get(set).unwrap_or(&empty)
            };
            let del: Vec<&Elem> = have.difference(want).collect();
            let add: Vec<&Elem> = want.difference(have).collect();
            report.deleted += del.len();
            report.added += add.len();
            if !del.is_empty() {
                ops.push(Op::Elems(set, false, del));
            }
            if !add.is_empty() {
                ops.push(Op::Elems(set, true, add));
            }
        }
        for ch in &rewrite {
            for r in &ch.rules {
                ops.push(Op::NewRule(ch, r));
            }
        }
        report.chains = rewrite.len();
        // Deleting a set must wait until the rules naming it are gone (flushed above,
        // in the same transaction): order the ops by phase.
        ops.sort_by_key(|op| match op {
            Op::NewTable => 0,
            Op::FlushChain(_) => 1,
            Op::DelChain(_) => 2,
            Op::DelSet(_) => 3,
            Op::NewSet(..) => 4,
            Op::NewChain(_) => 5,
            Op::Elems(_, false, _) => 6,
            Op::Elems(_, true, _) => 7,
            Op::NewRule(..) => 8,
        });
        let msgs = encode(&ops);
        self.socket()?
            .transact(&msgs, &|i| format!("policy table sync, message {i}"))?;
        self.synced = true;
        Ok(report)
    }

    /// Write one delta (a full sync when the layout changed or the last write failed;
    /// after any failure the next call is a full sync).
    pub fn apply(&mut self, c: &Compiler, delta: &Delta) -> Result<SyncReport, PolicyError> {
        if !self.synced || delta.layout_changed {
            return self.full_sync(c);
        }
        if delta.add.is_empty() && delta.del.is_empty() {
            return Ok(SyncReport::default());
        }
        let mut ops = Vec::new();
        for (set, es) in &delta.del {
            ops.push(Op::Elems(set, false, es.iter().collect()));
        }
        for (set, es) in &delta.add {
            ops.push(Op::Elems(set, true, es.iter().collect()));
        }
        let msgs = encode(&ops);
        // The compiler has moved on: until this delta is in the kernel, only a full
        // sync can bring the two together again.
        self.synced = false;
        self.socket()?
            .transact(&msgs, &|i| format!("policy element update, message {i}"))?;
        self.synced = true;
        Ok(SyncReport {
            added: delta.add.values().map(Vec::len).sum(),
            deleted: delta.del.values().map(Vec::len).sum(),
            ..Default::default()
        })
    }

    fn read(&mut self) -> Result<Live, PolicyError> {
        let sock = self.socket()?;
        let mut live = Live::default();
        let tables = sock.dump(FAMILY_IP, msg::GETTABLE, &Attrs::new())?;
        live.exists = tables
            .iter()
            .any(|m| attr_str(m, 1).as_deref() == Some(TABLE));
        if !live.exists {
            return Ok(live);
        }
        let mut ta = Attrs::new();
        ta.put_str(1, TABLE);
        for m in sock.dump(FAMILY_IP, msg::GETCHAIN, &ta)? {
            if attr_str(&m, 1).as_deref() != Some(TABLE) {
                continue;
            }
            if let Some(name) = attr_str(&m, 3) {
                if let Some(h) = attr(&m, 4) {
                    let hook = (
                        attr_be32(h, 1).unwrap_or(u32::MAX),
                        attr_be32(h, 2).map_or(i32::MIN, |p| p as i32),
                    );
                    live.hooks.insert(name.clone(), hook);
                }
                live.chains.entry(name).or_default();
            }
        }
        for m in sock.dump(FAMILY_IP, msg::GETRULE, &ta)? {
            if attr_str(&m, 1).as_deref() != Some(TABLE) {
                continue;
            }
            let Some(chain) = attr_str(&m, 2) else {
                continue;
            };
            let comment = attr(&m, 7).and_then(udata_comment).unwrap_or_default();
            let e = live.chains.entry(chain).or_default();
            e.push(comment);
        }
        for m in sock.dump(FAMILY_IP, msg::GETSET, &ta)? {
            if attr_str(&m, 1).as_deref() != Some(TABLE) {
                continue;
            }
            let Some(name) = attr_str(&m, 2) else {
                continue;
            };
            live.sets.insert(
                name,
                (attr_be32(&m, 3).unwrap_or(0), attr_be32(&m, 5).unwrap_or(0)),
            );
        }
        let names: Vec<String> = live.sets.keys().cloned().collect();
        for set in names {
            let mut a = Attrs::new();
            a.put_str(1, TABLE).put_str(2, &set);
            let mut elems = BTreeSet::new();
            for m in sock.dump(FAMILY_IP, msg::GETSETELEM, &a)? {
                let Some(list) = attr(&m, 3) else { continue };
                for (ty, e) in parse_attrs(list) {
                    if ty != 1 {
                        continue;
                    }
                    let value = |t: u16| attr(e, t).and_then(|k| attr(k, 1)).map(<[u8]>::to_vec);
                    let Some(key) = value(1) else { continue };
                    elems.insert(Elem {
                        key,
                        key_end: value(10),
                    });
                }
            }
            live.elems.insert(set, elems);
        }
        Ok(live)
    }
}

fn encode(ops: &[Op<'_>]) -> Vec<Message> {
    let mut msgs = Vec::new();
    let m = |kind: u8, flags: u16, attrs: Attrs| Message {
        family: FAMILY_IP,
        kind,
        flags,
        attrs,
    };
    for (i, op) in ops.iter().enumerate() {
        let mut a = Attrs::new();
        match op {
            Op::NewTable => {
                a.put_str(1, TABLE).put_be32(2, 0);
                msgs.push(m(msg::NEWTABLE, NLM_F_CREATE, a));
            }
            Op::FlushChain(c) => {
                a.put_str(1, TABLE).put_str(2, c);
                msgs.push(m(msg::DELRULE, 0, a));
            }
            Op::DelChain(c) => {
                a.put_str(1, TABLE).put_str(3, c);
                msgs.push(m(msg::DELCHAIN, 0, a));
            }
            Op::DelSet(s) => {
                a.put_str(1, TABLE).put_str(2, s);
                msgs.push(m(msg::DELSET, 0, a));
            }
            Op::NewSet(name, s) => {
                a.put_str(1, TABLE)
                    .put_str(2, name)
                    .put_be32(3, s.flags)
                    .put_be32(4, s.key_type)
                    .put_be32(5, s.key_len);
                if let Some((t, len)) = s.data {
                    a.put_be32(6, t).put_be32(7, len);
                }
                if !s.fields.is_empty() {
                    a.nest(9, |d| {
                        d.nest(2, |c| {
                            for f in &s.fields {
                                c.nest(1, |e| {
                                    e.put_be32(1, *f);
                                });
                            }
                        });
                    });
                }
                a.put_be32(10, u32::try_from(i).unwrap_or(0));
                msgs.push(m(msg::NEWSET, NLM_F_CREATE, a));
            }
            Op::NewChain(c) => {
                a.put_str(1, TABLE).put_str(3, &c.name);
                if let Some((hook, prio)) = c.base {
                    a.nest(4, |h| {
                        h.put_be32(1, hook).put_be32(2, prio as u32);
                    })
                    .put_be32(5, NF_ACCEPT as u32)
                    .put_str(7, "filter");
                }
                msgs.push(m(msg::NEWCHAIN, NLM_F_CREATE, a));
            }
            Op::NewRule(c, expr) => {
                a.put_str(1, TABLE)
                    .put_str(2, &c.name)
                    .nest_raw(4, expr)
                    .put(7, &comment_udata(&c.comment));
                msgs.push(m(msg::NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a));
            }
            Op::Elems(set, add, elems) => {
                for chunk in chunks(elems) {
                    let mut a = Attrs::new();
                    a.put_str(1, TABLE).put_str(2, set);
                    let mut list = Attrs::new();
                    for e in chunk {
                        list.nest(1, |x| {
                            x.nest(1, |k| {
                                k.put(1, &e.key);
                            });
                            if let Some(end) = &e.key_end {
                                x.nest(10, |k| {
                                    k.put(1, end);
                                });
                            }
                        });
                    }
                    a.nest_raw(3, list.bytes());
                    let (kind, flags) = if *add {
                        (msg::NEWSETELEM, NLM_F_CREATE)
                    } else {
                        (msg::DELSETELEM, 0)
                    };
                    msgs.push(m(kind, flags, a));
                }
            }
        }
    }
    msgs
}

/// Split elements so that each message stays under [`MAX_ELEM_BYTES`].
fn chunks<'a>(elems: &'a [&'a Elem]) -> Vec<&'a [&'a Elem]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, e) in elems.iter().enumerate() {
        let n = 24 + e.key.len() * 2;
        if size + n > MAX_ELEM_BYTES && i > start {
            out.push(&elems[start..i]);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < elems.len() {
        out.push(&elems[start..]);
    }
    out
}
