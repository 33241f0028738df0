//! [`Proxy`]: the desired table in memory, full syncs against the kernel and small
//! incremental transactions.

use std::collections::{BTreeMap, BTreeSet};

use crate::conntrack;
use crate::live::{self, LiveTable};
use crate::render::{self, BaseSpec, ChainSpec, Rendered, SetSpec, StaticSet};
use crate::{ProxyConfig, ProxyError, ServiceModel};
use trellis_api::naming::fnv1a64;
use trellis_net::nftnl::comment_udata;
use trellis_net::nftnl::expr::{value_data, verdict_data, NFT_GOTO};
use trellis_net::nftnl::{msg, Attrs, Message, Socket, FAMILY_IP, NLM_F_APPEND, NLM_F_CREATE};

/// What a [`Proxy::full_sync`] or [`Proxy::update`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map and set elements added (a changed element counts as deleted and added).
    pub elements_added: usize,
    /// Map and set elements deleted.
    pub elements_deleted: usize,
    /// Chains created or rewritten (all their rules replaced).
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Rules written (in the chains written).
    pub rules_written: usize,
    /// Sets created (affinity sets, and the fixed sets of a new table).
    pub sets_added: usize,
    /// Sets deleted.
    pub sets_deleted: usize,
    /// UDP conntrack entries deleted (flows to endpoints that went away, and flows
    /// that were not translated while a service port had no endpoint).
    pub conntrack_flushed: usize,
    /// Why the UDP conntrack clean-up failed, if it did (every deletion was still
    /// tried). The tables are synced regardless; the next full sync sweeps again.
    pub conntrack_error: Option<String>,
    /// nf_tables transactions committed (0 when nothing had to change).
    pub transactions: usize,
    /// netlink messages in those transactions.
    pub messages: usize,
}

impl SyncReport {
    /// True when the table was left exactly as it was.
    pub fn changed_nothing(&self) -> bool {
        self.transactions == 0
    }

    fn record_conntrack(&mut self, (deleted, error): conntrack::Outcome) {
        self.conntrack_flushed = deleted;
        self.conntrack_error = error.map(|e| e.to_string());
    }
}

/// One step of a transaction.
#[derive(Debug, Clone)]
enum Op {
    NewTable,
    DelTable,
    FlushChain(String),
    DelElem(StaticSet, Vec<u8>),
    DelSetEarly(String),
    DelChainEarly(String),
    NewSet(SetSpec),
    NewChain(String, Option<BaseSpec>),
    NewRule {
        chain: String,
        expr: std::sync::Arc<[u8]>,
        comment: String,
    },
    NewElem(StaticSet, Vec<u8>, Option<String>),
    DelChain(String),
}

impl Op {
    /// Order inside one transaction: references are dropped before what they point to
    /// is deleted, and created before they are used.
    fn phase(&self) -> u8 {
        match self {
            Op::NewTable => 0,
            Op::FlushChain(_) => 1,
            Op::DelElem(..) => 2,
            Op::DelSetEarly(_) | Op::DelChainEarly(_) => 3,
            Op::NewSet(_) | Op::NewChain(..) => 4,
            Op::NewRule { .. } => 5,
            Op::NewElem(..) => 6,
            Op::DelChain(_) => 7,
            Op::DelTable => 8,
        }
    }

    fn describe(&self, table: &str) -> String {
        match self {
            Op::NewTable => format!("add table ip {table}"),
            Op::DelTable => format!("delete table ip {table}"),
            Op::FlushChain(c) => format!("flush chain ip {table} {c}"),
            Op::DelElem(s, k) => format!("delete element ip {table} {} {k:02x?}", s.name()),
            Op::DelSetEarly(s) => format!("delete set ip {table} {s}"),
            Op::DelChainEarly(c) | Op::DelChain(c) => format!("delete chain ip {table} {c}"),
            Op::NewSet(s) => format!("add set ip {table} {}", s.name),
            Op::NewChain(c, _) => format!("add chain ip {table} {c}"),
            Op::NewRule { chain, .. } => format!("add rule ip {table} {chain}"),
            Op::NewElem(s, k, v) => format!(
                "add element ip {table} {} {k:02x?}{}",
                s.name(),
                v.as_ref()
                    .map(|c| format!(" : goto {c}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// An op on table `t` (index into [`Proxy::tables`]).
#[derive(Debug, Clone)]
struct TOp {
    t: usize,
    op: Op,
}

/// Ops plus the counts they stand for.
#[derive(Debug, Default)]
struct Plan {
    ops: Vec<TOp>,
    report: SyncReport,
}

impl Plan {
    fn push(&mut self, t: usize, op: Op) {
        self.ops.push(TOp { t, op });
    }

    fn write_chain(&mut self, t: usize, spec: &ChainSpec, exists: bool, recreate: bool) {
        if exists {
            self.push(t, Op::FlushChain(spec.name.clone()));
        }
        if recreate {
            self.push(t, Op::DelChainEarly(spec.name.clone()));
        }
        if !exists || recreate {
            self.push(t, Op::NewChain(spec.name.clone(), spec.base));
        }
        for r in &spec.rules {
            self.push(
                t,
                Op::NewRule {
                    chain: spec.name.clone(),
                    expr: r.clone(),
                    comment: spec.comment.clone(),
                },
            );
        }
        self.report.chains_written += 1;
        self.report.rules_written += spec.rules.len();
    }

    fn delete_chain(&mut self, t: usize, name: &str) {
        self.push(t, Op::FlushChain(name.to_string()));
        self.push(t, Op::DelChain(name.to_string()));
        self.report.chains_deleted += 1;
    }

    fn add_set(&mut self, t: usize, spec: &SetSpec) {
        self.push(t, Op::NewSet(spec.clone()));
        self.report.sets_added += 1;
    }

    fn delete_set(&mut self, t: usize, name: &str) {
        self.push(t, Op::DelSetEarly(name.to_string()));
        self.report.sets_deleted += 1;
    }

    /// Bring element `key` of `set` from `old` to `new` (value and table).
    fn set_elem(&mut self, set: StaticSet, key: &[u8], old: Option<&Placed>, new: Option<&Placed>) {
        if old == new {
            return;
        }
        if let Some((_, t)) = old {
            self.push(*t, Op::DelElem(set, key.to_vec()));
            self.report.elements_deleted += 1;
        }
        if let Some((v, t)) = new {
            self.push(*t, Op::NewElem(set, key.to_vec(), v.clone()));
            self.report.elements_added += 1;
        }
    }
}

/// An element's value (the verdict's chain for a map) and the table it is in.
type Placed = (Option<String>, usize);

/// Who claims an element: service key -> value and table.
type Claims = BTreeMap<(StaticSet, Vec<u8>), BTreeMap<String, Placed>>;

/// The element as programmed: the first claimant's (services in key order).
fn winner(claims: &Claims, k: &(StaticSet, Vec<u8>)) -> Option<Placed> {
    claims.get(k).and_then(|c| c.values().next()).cloned()
}

/// How many shard tables hold the per-service chains unless configured otherwise.
pub const DEFAULT_SHARDS: u16 = 16;

/// The service proxy of one node: owns the tables `ip <table>` (filtering, masquerade)
/// and `ip <table>-0` .. `ip <table>-<shards-1>` (the services, spread by key).
#[derive(Debug)]
pub struct Proxy {
    cfg: ProxyConfig,
    /// `tables[0]` is the main table, `tables[1..]` the shards.
    tables: Vec<String>,
    main_skeleton: Vec<ChainSpec>,
    shard_skeleton: Vec<ChainSpec>,
    services: BTreeMap<String, ServiceModel>,
    rendered: BTreeMap<String, Rendered>,
    claims: Claims,
    /// A full sync succeeded at least once.
    synced: bool,
    /// The kernel may differ from `rendered` (a transaction failed): the next change
    /// is a full sync.
    dirty: bool,
    /// The netlink socket and the network namespace it was opened in. Kept open:
    /// closing a netfilter netlink socket waits for an RCU grace period (~15 ms).
    sock: Option<(Socket, (u64, u64))>,
}

/// Identity (device, inode) of the calling thread's network namespace.
fn current_netns() -> Result<(u64, u64), ProxyError> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| ProxyError::Netlink {
            what: "read /proc/thread-self/ns/net".into(),
            source,
        })?;
    Ok((m.dev(), m.ino()))
}

fn valid_table(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Proxy {
    /// A proxy for `cfg`; nothing is read or written before the first sync.
    pub fn new(cfg: ProxyConfig) -> Self {
        let (main_skeleton, shard_skeleton) = render::skeleton(&cfg);
        let shards = usize::from(cfg.shards.max(1));
        let mut tables = vec![cfg.table.clone()];
        tables.extend((0..shards).map(|i| format!("{}-{i}", cfg.table)));
        Proxy {
            cfg,
            tables,
            main_skeleton,
            shard_skeleton,
            services: BTreeMap::new(),
            rendered: BTreeMap::new(),
            claims: Claims::new(),
            synced: false,
            dirty: false,
            sock: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// The names of the tables the proxy owns: the main table, then the shards.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// The index in [`Proxy::tables`] of the shard holding service `key`.
    fn shard_of(&self, key: &str) -> usize {
        let n = (self.tables.len() - 1) as u64;
        1 + usize::try_from(fnv1a64([key.as_bytes()]) % n).unwrap_or(0)
    }

    /// Make the tables exactly the desired state for `services` (creating tables,
    /// chains and sets when missing). Reads the live tables and changes only what
    /// differs, in one transaction: on tables that already match (an agent restart)
    /// nothing is written. Never flushes a table; affinity sets that stay keep their
    /// entries. UDP conntrack entries the services no longer allow (to endpoints that
    /// went away, also while no agent ran) are deleted.
    pub fn full_sync(&mut self, services: &[ServiceModel]) -> Result<SyncReport, ProxyError> {
        let mut next = BTreeMap::new();
        for s in services {
            next.insert(s.key.clone(), s.clone());
        }
        self.services = next;
        let mut report = self.sync_all()?;
        let allowed = conntrack::UdpState::of(self.services.values());
        let outcome = conntrack::sweep(&self.cfg.conntrack, &allowed, &self.cfg.node_ips);
        report.record_conntrack(outcome);
        Ok(report)
    }

    /// Apply the change of a few services: `changed` are added or replaced, `removed`
    /// (service keys) are deleted. One transaction that touches only those services'
    /// chains, affinity sets and elements (an endpoint added or removed rewrites one
    /// chain and adds or deletes a few elements) in their shard. Requires an earlier
    /// successful [`Proxy::full_sync`]; after a failed transaction it runs a full sync
    /// instead.
    pub fn update(
        &mut self,
        changed: &[ServiceModel],
        removed: &[String],
    ) -> Result<SyncReport, ProxyError> {
        if !self.synced {
            return Err(ProxyError::NotSynced);
        }
        let mut old_models: BTreeMap<String, ServiceModel> = BTreeMap::new();
        let mut new_models: BTreeMap<String, ServiceModel> = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for k in removed {
            if let Some(m) = self.services.remove(k) {
                old_models.entry(k.clone()).or_insert(m);
            }
            keys.insert(k.clone());
        }
        for s in changed {
            if let Some(m) = self.services.insert(s.key.clone(), s.clone()) {
                old_models.entry(s.key.clone()).or_insert(m);
            }
            new_models.insert(s.key.clone(), s.clone());
            keys.insert(s.key.clone());
        }
        for k in removed {
            new_models.remove(k);
        }
        let mut report = if self.dirty {
            self.sync_all()?
        } else {
            self.sync_keys(&keys)?
        };
        let outcome = conntrack::clean(
            &self.cfg.conntrack,
            &conntrack::UdpState::of(old_models.values()),
            &conntrack::UdpState::of(new_models.values()),
            &self.cfg.node_ips,
        );
        report.record_conntrack(outcome);
        Ok(report)
    }

    fn claim(&mut self, key: &str, r: &Rendered) {
        let shard = self.shard_of(key);
        for (e, _) in &r.elems {
            let t = if e.set.in_shard() { shard } else { 0 };
            self.claims
                .entry((e.set, e.key.clone()))
                .or_default()
                .insert(key.to_string(), (e.goto.clone(), t));
        }
    }

    fn unclaim(&mut self, key: &str, r: &Rendered) {
        for (e, _) in &r.elems {
            let ck = (e.set, e.key.clone());
            if let Some(c) = self.claims.get_mut(&ck) {
                c.remove(key);
                if c.is_empty() {
                    self.claims.remove(&ck);
                }
            }
        }
    }

    /// Compare everything with the kernel and apply the difference.
    fn sync_all(&mut self) -> Result<SyncReport, ProxyError> {
        if !valid_table(&self.cfg.table) {
            return Err(ProxyError::InvalidTable(self.cfg.table.clone()));
        }
        self.rendered.clear();
        self.claims.clear();
        let keys: Vec<String> = self.services.keys().cloned().collect();
        for k in keys {
            let r = render::render(&self.cfg, &self.services[&k]);
            self.claim(&k, &r);
            self.rendered.insert(k, r);
        }
        self.dirty = true;
        let mut sock = self.take_socket()?;
        let res = self.read_and_apply(&mut sock.0);
        self.sock = Some(sock);
        let report = res?;
        self.synced = true;
        self.dirty = false;
        Ok(report)
    }

    fn read_and_apply(&self, sock: &mut Socket) -> Result<SyncReport, ProxyError> {
        let lives = live::read_all(sock, &self.tables)?;
        let prefix = format!("{}-", self.cfg.table);
        let stale: Vec<String> = live::table_names(sock)?
            .into_iter()
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                    && !self.tables.contains(n)
            })
            .collect();
        let plan = self.plan_full(&lives, stale.len());
        let mut tables = self.tables.clone();
        tables.extend(stale);
        self.apply(sock, plan, &tables)
    }

    /// The plan for a full sync; tables `self.tables.len()..+stale` are to be deleted.
    fn plan_full(&self, lives: &[LiveTable], stale: usize) -> Plan {
        let mut plan = Plan::default();
        let mut by_table: Vec<Vec<&Rendered>> = vec![Vec::new(); self.tables.len()];
        for (k, r) in &self.rendered {
            by_table[self.shard_of(k)].push(r);
        }
        for (t, live) in lives.iter().enumerate() {
            if !live.exists {
                plan.push(t, Op::NewTable);
            }
            let main = t == 0;

            // Sets.
            let statics: Vec<SetSpec> = StaticSet::ALL
                .iter()
                .filter(|s| s.in_shard() != main)
                .map(|s| s.spec())
                .collect();
            let mut want_sets: BTreeMap<&str, &SetSpec> = BTreeMap::new();
            for s in &statics {
                want_sets.insert(&s.name, s);
            }
            for r in &by_table[t] {
                for s in &r.sets {
                    want_sets.insert(&s.name, s);
                }
            }
            let mut recreated_static = BTreeSet::new();
            for (name, spec) in &want_sets {
                match live.sets.get(*name) {
                    None => plan.add_set(t, spec),
                    Some(l) if l != *spec => {
                        plan.delete_set(t, name);
                        plan.add_set(t, spec);
                        if let Some(s) = StaticSet::from_name(name) {
                            recreated_static.insert(s);
                        }
                    }
                    Some(_) => {}
                }
            }
            for name in live.sets.keys() {
                if !want_sets.contains_key(name.as_str()) {
                    plan.delete_set(t, name);
                }
            }

            // Chains.
            let skeleton = if main {
                &self.main_skeleton
            } else {
                &self.shard_skeleton
            };
            let mut want_chains: BTreeMap<&str, &ChainSpec> = BTreeMap::new();
            for c in skeleton {
                want_chains.insert(&c.name, c);
            }
            for r in &by_table[t] {
                for c in &r.chains {
                    want_chains.insert(&c.name, c);
                }
            }
            let force_skeleton = !recreated_static.is_empty();
            for (name, spec) in &want_chains {
                match live.chains.get(*name) {
                    None => plan.write_chain(t, spec, false, false),
                    Some(l) => {
                        let base_ok = match (&spec.base, &l.base) {
                            (None, None) => true,
                            (Some(b), Some(lb)) => {
                                b.kind == lb.kind
                                    && b.hook == lb.hook
                                    && b.priority == lb.priority
                                    && lb.policy == 1
                            }
                            _ => false,
                        };
                        let rules_ok = l.rules == spec.rules.len()
                            && (spec.rules.is_empty() || l.comments == [spec.comment.clone()]);
                        let is_skeleton = skeleton.iter().any(|c| c.name == *name);
                        if !base_ok {
                            plan.write_chain(t, spec, true, true);
                        } else if !rules_ok || (force_skeleton && is_skeleton) {
                            plan.write_chain(t, spec, true, false);
                        }
                    }
                }
            }
            for name in live.chains.keys() {
                if !want_chains.contains_key(name.as_str()) {
                    plan.delete_chain(t, name);
                }
            }

            // Elements of the static sets in this table.
            for ((set, key), v) in &live.elems {
                if recreated_static.contains(set) {
                    continue;
                }
                let want = winner(&self.claims, &(*set, key.clone()));
                if want.as_ref().is_some_and(|(wv, wt)| *wt == t && wv == v) {
                    continue;
                }
                plan.push(t, Op::DelElem(*set, key.clone()));
                plan.report.elements_deleted += 1;
            }
            let _ = &recreated_static;
        }
        for (k, c) in &self.claims {
            let Some((v, t)) = c.values().next() else {
                continue;
            };
            let live = &lives[*t];
            let have = if live.sets.get(k.0.name()) == Some(&k.0.spec()) {
                live.elems.get(k)
            } else {
                None
            };
            if have != Some(v) {
                plan.push(*t, Op::NewElem(k.0, k.1.clone(), v.clone()));
                plan.report.elements_added += 1;
            }
        }
        for i in 0..stale {
            plan.push(self.tables.len() + i, Op::DelTable);
        }
        plan
    }

    /// Re-render `keys` (their models are already in `self.services`) and apply the
    /// difference to what was rendered before.
    fn sync_keys(&mut self, keys: &BTreeSet<String>) -> Result<SyncReport, ProxyError> {
        let mut plan = Plan::default();
        let mut touched: BTreeMap<(StaticSet, Vec<u8>), Option<Placed>> = BTreeMap::new();
        for k in keys {
            let t = self.shard_of(k);
            let old = self.rendered.remove(k).unwrap_or_default();
            let new = self
                .services
                .get(k)
                .map(|s| render::render(&self.cfg, s))
                .unwrap_or_default();
            for (e, _) in old.elems.iter().chain(new.elems.iter()) {
                let ck = (e.set, e.key.clone());
                if let std::collections::btree_map::Entry::Vacant(v) = touched.entry(ck) {
                    let w = winner(&self.claims, v.key());
                    v.insert(w);
                }
            }
            self.unclaim(k, &old);
            self.claim(k, &new);

            let old_sets: BTreeMap<&str, &SetSpec> =
                old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
            let new_sets: BTreeMap<&str, &SetSpec> =
                new.sets.iter().map(|s| (s.name.as_str(), s)).collect();
            for (name, spec) in &new_sets {
                match old_sets.get(name) {
                    None => plan.add_set(t, spec),
                    Some(o) if o != spec => {
                        plan.delete_set(t, name);
                        plan.add_set(t, spec);
                    }
                    Some(_) => {}
                }
            }
            for name in old_sets.keys() {
                if !new_sets.contains_key(name) {
                    plan.delete_set(t, name);
                }
            }
            let old_chains: BTreeMap<&str, &ChainSpec> =
                old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
            let new_chains: BTreeMap<&str, &ChainSpec> =
                new.chains.iter().map(|c| (c.name.as_str(), c)).collect();
            for (name, spec) in &new_chains {
                match old_chains.get(name) {
                    None => plan.write_chain(t, spec, false, false),
                    Some(o) if o.comment != spec.comment => plan.write_chain(t, spec, true, false),
                    Some(_) => {}
                }
            }
            for name in old_chains.keys() {
                if !new_chains.contains_key(name) {
                    plan.delete_chain(t, name);
                }
            }
            if self.services.contains_key(k) {
                self.rendered.insert(k.clone(), new);
            }
        }
        for (k, before) in &touched {
            let after = winner(&self.claims, k);
            plan.set_elem(k.0, &k.1, before.as_ref(), after.as_ref());
        }
        self.dirty = true;
        let mut sock = self.take_socket()?;
        let res = self.apply(&mut sock.0, plan, &self.tables);
        self.sock = Some(sock);
        let report = res?;
        self.dirty = false;
        Ok(report)
    }

    /// The socket for the calling thread's network namespace (reopened when the thread
    /// is in another namespace than the socket).
    fn take_socket(&mut self) -> Result<(Socket, (u64, u64)), ProxyError> {
        let ns = current_netns()?;
        match self.sock.take() {
            Some((s, n)) if n == ns => Ok((s, n)),
            _ => Ok((Socket::open()?, ns)),
        }
    }

    /// Encode and commit `plan` as one transaction.
    fn apply(
        &self,
        sock: &mut Socket,
        mut plan: Plan,
        tables: &[String],
    ) -> Result<SyncReport, ProxyError> {
        if plan.ops.is_empty() {
            return Ok(plan.report);
        }
        plan.ops.sort_by_key(|o| o.op.phase());
        let (msgs, first_op) = encode(tables, &plan.ops);
        let ops = &plan.ops;
        sock.transact(&msgs, &|i| {
            first_op
                .get(i)
                .and_then(|o| ops.get(*o))
                .map(|o| o.op.describe(&tables[o.t]))
                .unwrap_or_else(|| format!("message {i}"))
        })?;
        plan.report.transactions = 1;
        plan.report.messages = msgs.len();
        Ok(plan.report)
    }
}

/// Largest element list put in one message (a nested attribute's length is 16 bits).
const MAX_ELEM_BYTES: usize = 48 << 10;

/// Encode `ops` (already in phase order) as messages; consecutive element operations on
/// one set share a message. Also returns, per message, the index of its first op.
fn encode(tables: &[String], ops: &[TOp]) -> (Vec<Message>, Vec<usize>) {
    let mut msgs = Vec::new();
    let mut first = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let TOp { t, op } = &ops[i];
        let table = tables[*t].as_str();
        first.push(i);
        let mut a = Attrs::new();
        let (kind, flags) = match op {
            Op::NewTable => {
                a.put_str(1, table).put_be32(2, 0);
                (msg::NEWTABLE, NLM_F_CREATE)
            }
            Op::DelTable => {
                a.put_str(1, table);
                (msg::DELTABLE, 0)
            }
            Op::FlushChain(c) => {
                a.put_str(1, table).put_str(2, c);
                (msg::DELRULE, 0)
            }
            Op::DelSetEarly(s) => {
                a.put_str(1, table).put_str(2, s);
                (msg::DELSET, 0)
            }
            Op::DelChainEarly(c) | Op::DelChain(c) => {
                a.put_str(1, table).put_str(3, c);
                (msg::DELCHAIN, 0)
            }
            Op::NewSet(s) => {
                a.put_str(1, table)
                    .put_str(2, &s.name)
                    .put_be32(3, s.flags)
                    .put_be32(4, s.key_type)
                    .put_be32(5, s.key_len);
                if let Some(dt) = s.data_type {
                    a.put_be32(6, dt).put_be32(7, 0);
                }
                if let Some(t) = s.timeout_ms {
                    a.put_be64(11, t);
                }
                a.put_be32(10, u32::try_from(i).unwrap_or(0));
                (msg::NEWSET, NLM_F_CREATE)
            }
            Op::NewChain(c, base) => {
                a.put_str(1, table).put_str(3, c);
                if let Some(b) = base {
                    a.nest(4, |h| {
                        h.put_be32(1, b.hook).put_be32(2, b.priority as u32);
                    })
                    .put_be32(5, 1)
                    .put_str(7, b.kind);
                }
                (msg::NEWCHAIN, NLM_F_CREATE)
            }
            Op::NewRule {
                chain,
                expr,
                comment,
            } => {
                a.put_str(1, table)
                    .put_str(2, chain)
                    .nest_raw(4, expr)
                    .put(7, &comment_udata(comment));
                (msg::NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
            }
            Op::NewElem(set, ..) | Op::DelElem(set, ..) => {
                let add = matches!(op, Op::NewElem(..));
                a.put_str(1, table).put_str(2, set.name());
                let mut list = Attrs::new();
                while i < ops.len() && list.len() < MAX_ELEM_BYTES {
                    if ops[i].t != *t {
                        break;
                    }
                    match (&ops[i].op, add) {
                        (Op::NewElem(s, key, goto), true) if s == set => {
                            list.nest(1, |e| {
                                e.nest(1, |k| value_data(k, key));
                                if let Some(c) = goto {
                                    e.nest(2, |d| verdict_data(d, NFT_GOTO, Some(c)));
                                }
                            });
                        }
                        (Op::DelElem(s, key), false) if s == set => {
                            list.nest(1, |e| {
                                e.nest(1, |k| value_data(k, key));
                            });
                        }
                        _ => break,
                    }
                    i += 1;
                }
                a.nest_raw(3, list.bytes());
                msgs.push(Message {
                    family: FAMILY_IP,
                    kind: if add {
                        msg::NEWSETELEM
                    } else {
                        msg::DELSETELEM
                    },
                    flags: if add { NLM_F_CREATE } else { 0 },
                    attrs: a,
                });
                continue;
            }
        };
        msgs.push(Message {
            family: FAMILY_IP,
            kind,
            flags,
            attrs: a,
        });
        i += 1;
    }
    (msgs, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_share_messages() {
        let ops: Vec<TOp> = (0..3000u16)
            .map(|p| {
                Op::NewElem(
                    StaticSet::NoEndpointNodeports,
                    render::key_proto_port(6, p),
                    None,
                )
            })
            .chain([Op::DelChain("x".into())])
            .map(|op| TOp { t: 0, op })
            .collect();
        let (msgs, first) = encode(&["t".to_string()], &ops);
        assert!(msgs.len() >= 2 && msgs.len() < 10, "{}", msgs.len());
        assert_eq!(first.len(), msgs.len());
        assert_eq!(*first.last().unwrap(), 3000);
    }

    #[test]
    fn phases_order_dependencies() {
        let mut ops = [
            Op::DelChain("a".into()),
            Op::NewElem(StaticSet::Hairpin, vec![], None),
            Op::NewRule {
                chain: "a".into(),
                expr: std::sync::Arc::from(Vec::new()),
                comment: String::new(),
            },
            Op::NewChain("a".into(), None),
            Op::FlushChain("a".into()),
        ];
        ops.sort_by_key(Op::phase);
        assert!(matches!(ops[0], Op::FlushChain(_)));
        assert!(matches!(ops[4], Op::DelChain(_)));
        let _ = render::Elem {
            set: StaticSet::Hairpin,
            key: vec![],
            goto: None,
        };
    }
}
