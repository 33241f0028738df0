//! The embedded store: one redb file, for single-machine control planes (the default).
//!
//! One writer thread owns every change. It takes the requests waiting in its queue as one
//! batch, applies them in order inside one redb write transaction (each successful
//! [`Txn`] gets its own revision), commits with fsync, and only then answers the callers
//! and broadcasts the batch's events: an acknowledged write survives a crash, and
//! concurrent writers share one fsync. History lives in a `log` table (revision →
//! events) until [`Store::compact`] drops it. Watchers subscribe to the broadcast and,
//! when they start from an older revision or fall behind, catch up from the log.
//!
//! Leases live in memory (their deadlines) and in the file (their TTLs); on open every
//! lease gets a full TTL again, as etcd does after a leader change.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Event, KeyValue, LeaseId, Precondition, Result, Revision, Store, StoreError, Txn, TxnOp,
    WatchItem, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id → TTL in milliseconds.
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// Most requests one commit takes.
const MAX_BATCH: usize = 1024;
/// How often the writer looks for expired leases when idle.
const LEASE_TICK: Duration = Duration::from_millis(100);
/// Batches a slow watcher may fall behind before it catches up from the log.
const BROADCAST_CAPACITY: usize = 4096;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The embedded [`Store`].
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The writer's queue; `None` once dropped.
    writer: Mutex<Option<mpsc::Sender<Request>>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    events: broadcast::Sender<Arc<Batch>>,
    leases: Arc<Mutex<Leases>>,
}

impl Drop for EmbeddedStore {
    /// Stop the writer after it has committed what it already took, so the file can be
    /// opened again as soon as the last watch has ended.
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// The events one commit produced, in revision order, and the newest revision after it.
#[derive(Debug)]
struct Batch {
    events: Vec<Event>,
    revision: Revision,
}

#[derive(Debug)]
enum Request {
    Txn(Txn, oneshot::Sender<Result<Revision>>),
    Grant(Duration, oneshot::Sender<Result<LeaseId>>),
    Revoke(LeaseId, oneshot::Sender<Result<()>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

#[derive(Debug, Default)]
struct Leases {
    by_id: HashMap<LeaseId, LeaseState>,
}

#[derive(Debug)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl Leases {
    fn live(&self, id: LeaseId, now: Instant) -> bool {
        self.by_id.get(&id).is_some_and(|l| l.deadline > now)
    }

    fn expired(&self, now: Instant) -> Vec<LeaseId> {
        self.by_id
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn detach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(l) = lease.and_then(|id| self.by_id.get_mut(&id)) {
            l.keys.remove(key);
        }
    }

    fn attach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(l) = lease.and_then(|id| self.by_id.get_mut(&id)) {
            l.keys.insert(key.to_string());
        }
    }
}

// ---- record encoding: [create i64][mod i64][lease i64, 0 = none][value] (little endian)

fn encode_record(
    create: Revision,
    modr: Revision,
    lease: Option<LeaseId>,
    value: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + value.len());
    b.extend_from_slice(&create.to_le_bytes());
    b.extend_from_slice(&modr.to_le_bytes());
    b.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(value);
    b
}

fn decode_record(key: &str, b: &[u8]) -> Result<KeyValue> {
    if b.len() < 24 {
        return Err(StoreError::Backend(format!("corrupt record for {key}")));
    }
    let i = |n: usize| i64::from_le_bytes(b[n..n + 8].try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: i(0),
        mod_revision: i(8),
        lease: Some(i(16)).filter(|l| *l != 0),
        value: b[24..].to_vec(),
    })
}

// ---- log encoding: a list of events

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        match e {
            Event::Put(kv) => {
                out.push(1);
                put_bytes(&mut out, kv.key.as_bytes());
                put_bytes(
                    &mut out,
                    &encode_record(kv.create_revision, kv.mod_revision, kv.lease, &kv.value),
                );
            }
            Event::Delete {
                key,
                revision,
                prev,
            } => {
                out.push(2);
                put_bytes(&mut out, key.as_bytes());
                out.extend_from_slice(&revision.to_le_bytes());
                match prev {
                    Some(p) => put_bytes(
                        &mut out,
                        &encode_record(p.create_revision, p.mod_revision, p.lease, &p.value),
                    ),
                    None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
                }
            }
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(StoreError::Backend("corrupt log entry".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<Option<&'a [u8]>> {
        match self.u32()? {
            u32::MAX => Ok(None),
            n => self.take(n as usize).map(Some),
        }
    }
    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?.unwrap_or_default();
        String::from_utf8(b.to_vec()).map_err(backend)
    }
}

fn decode_events(b: &[u8]) -> Result<Vec<Event>> {
    let mut r = Reader { b };
    let mut out = Vec::new();
    while !r.b.is_empty() {
        let tag = r.take(1)?[0];
        let key = r.string()?;
        match tag {
            1 => {
                let rec = r.bytes()?.unwrap_or_default();
                out.push(Event::Put(decode_record(&key, rec)?));
            }
            2 => {
                let revision = i64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
                let prev = match r.bytes()? {
                    Some(p) => Some(decode_record(&key, p)?),
                    None => None,
                };
                out.push(Event::Delete {
                    key,
                    revision,
                    prev,
                });
            }
            t => return Err(StoreError::Backend(format!("corrupt log entry (tag {t})"))),
        }
    }
    Ok(out)
}

impl EmbeddedStore {
    /// Open (or create) the store file at `path` and start its writer thread.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        let w = db.begin_write().map_err(backend)?;
        {
            w.open_table(KV).map_err(backend)?;
            w.open_table(LOG).map_err(backend)?;
            w.open_table(META).map_err(backend)?;
            w.open_table(LEASES).map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        let db = Arc::new(db);
        let leases = Arc::new(Mutex::new(load_leases(&db)?));
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            leases: leases.clone(),
            events: events.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(backend)?;
        Ok(Self {
            db,
            writer: Mutex::new(Some(tx)),
            writer_thread: Some(thread),
            events,
            leases,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Unavailable("store writer stopped".into());
        self.writer
            .lock()
            .map_err(|_| backend("writer lock poisoned"))?
            .as_ref()
            .ok_or_else(stopped)?
            .send(make(tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// The lease table as the file has it, every deadline a full TTL from now; and the keys
/// attached to each.
fn load_leases(db: &Database) -> Result<Leases> {
    let r = db.begin_read().map_err(backend)?;
    let now = Instant::now();
    let mut leases = Leases::default();
    for row in r
        .open_table(LEASES)
        .map_err(backend)?
        .iter()
        .map_err(backend)?
    {
        let (id, ttl) = row.map_err(backend)?;
        let ttl = Duration::from_millis(ttl.value());
        leases.by_id.insert(
            id.value(),
            LeaseState {
                ttl,
                deadline: now + ttl,
                keys: BTreeSet::new(),
            },
        );
    }
    for row in r.open_table(KV).map_err(backend)?.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let kv = decode_record(k.value(), v.value())?;
        leases.attach(&kv.key, kv.lease);
    }
    Ok(leases)
}

fn meta(t: &impl ReadableTable<&'static str, i64>, key: &str) -> Result<i64> {
    Ok(t.get(key).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
}

struct Writer {
    db: Arc<Database>,
    leases: Arc<Mutex<Leases>>,
    events: broadcast::Sender<Arc<Batch>>,
}

/// A request's answer, sent only after the commit.
enum Reply {
    Txn(oneshot::Sender<Result<Revision>>, Result<Revision>),
    Grant(oneshot::Sender<Result<LeaseId>>, Result<LeaseId>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn fail(self, e: StoreError) {
        match self {
            Reply::Txn(tx, _) => drop(tx.send(Err(e))),
            Reply::Grant(tx, _) => drop(tx.send(Err(e))),
            Reply::Unit(tx, _) => drop(tx.send(Err(e))),
        }
    }
    fn send(self) {
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Grant(tx, r) => drop(tx.send(r)),
            Reply::Unit(tx, r) => drop(tx.send(r)),
        }
    }
}

/// The tables of one write transaction and the revision counter.
struct Tables<'t> {
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    log: redb::Table<'t, i64, &'static [u8]>,
    meta: redb::Table<'t, &'static str, i64>,
    leases_t: redb::Table<'t, i64, u64>,
    revision: Revision,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Request>) {
        loop {
            let mut batch = Vec::new();
            match rx.recv_timeout(LEASE_TICK) {
                Ok(r) => batch.push(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let expired = match self.leases.lock() {
                Ok(l) => l.expired(Instant::now()),
                Err(_) => return,
            };
            if batch.is_empty() && expired.is_empty() {
                continue;
            }
            self.commit(batch, expired);
        }
    }

    fn commit(&self, batch: Vec<Request>, expired: Vec<LeaseId>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let result = (|| -> Result<Revision> {
            let w = self.db.begin_write().map_err(backend)?;
            let revision;
            {
                // Held while the batch is applied, released before the fsync below so
                // keep-alives do not wait for the disk.
                let mut leases = self
                    .leases
                    .lock()
                    .map_err(|_| backend("lease lock poisoned"))?;
                let meta_t = w.open_table(META).map_err(backend)?;
                let current = meta(&meta_t, META_REVISION)?;
                let mut t = Tables {
                    kv: w.open_table(KV).map_err(backend)?,
                    log: w.open_table(LOG).map_err(backend)?,
                    meta: meta_t,
                    leases_t: w.open_table(LEASES).map_err(backend)?,
                    revision: current,
                };
                for id in expired {
                    tracing::debug!(lease = id, "lease expired");
                    t.end_lease(id, &mut leases, &mut events)?;
                }
                for req in batch {
                    replies.push(match req {
                        Request::Txn(txn, tx) => {
                            Reply::Txn(tx, t.txn(txn, &mut leases, &mut events))
                        }
                        Request::Grant(ttl, tx) => Reply::Grant(tx, t.grant(ttl, &mut leases)),
                        Request::Revoke(id, tx) => {
                            let r = if leases.by_id.contains_key(&id) {
                                t.end_lease(id, &mut leases, &mut events)
                            } else {
                                Err(StoreError::LeaseNotFound(id))
                            };
                            Reply::Unit(tx, r)
                        }
                        Request::Compact(rev, tx) => Reply::Unit(tx, t.compact(rev)),
                    });
                }
                t.meta.insert(META_REVISION, t.revision).map_err(backend)?;
                revision = t.revision;
            }
            w.commit().map_err(backend)?;
            Ok(revision)
        })();
        match result {
            Ok(revision) => {
                if !events.is_empty() {
                    // No receivers is fine.
                    let _ = self.events.send(Arc::new(Batch { events, revision }));
                }
                replies.into_iter().for_each(Reply::send);
            }
            Err(e) => {
                tracing::error!("store commit failed: {e}");
                // The in-memory lease index may hold changes that were not committed.
                match (load_leases(&self.db), self.leases.lock()) {
                    (Ok(l), Ok(mut leases)) => *leases = l,
                    (Err(e), _) => tracing::error!("reloading leases: {e}"),
                    (_, Err(_)) => tracing::error!("lease lock poisoned"),
                }
                replies.into_iter().for_each(|r| r.fail(e.clone()));
            }
        }
    }
}

impl Tables<'_> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        match self.kv.get(key).map_err(backend)? {
            Some(v) => decode_record(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn txn(&mut self, txn: Txn, leases: &mut Leases, events: &mut Vec<Event>) -> Result<Revision> {
        for (key, p) in &txn.checks {
            let actual = self.get(key)?.map(|kv| kv.mod_revision);
            let ok = match p {
                Precondition::Absent => actual.is_none(),
                Precondition::Revision(r) => actual == Some(*r),
            };
            if !ok {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *p,
                    actual,
                });
            }
        }
        let mut seen = BTreeSet::new();
        let now = Instant::now();
        for op in &txn.ops {
            let key = match op {
                TxnOp::Put { key, lease, .. } => {
                    if let Some(id) = lease {
                        if !leases.live(*id, now) {
                            return Err(StoreError::LeaseNotFound(*id));
                        }
                    }
                    key
                }
                TxnOp::Delete { key } => key,
            };
            if !seen.insert(key.as_str()) {
                return Err(StoreError::Backend(format!(
                    "key {key} appears twice in one transaction"
                )));
            }
        }
        let rev = self.revision + 1;
        let mut changed = Vec::new();
        for op in txn.ops {
            match op {
                TxnOp::Put { key, value, lease } => {
                    let old = self.get(&key)?;
                    let create = old.as_ref().map_or(rev, |o| o.create_revision);
                    self.kv
                        .insert(
                            key.as_str(),
                            encode_record(create, rev, lease, &value).as_slice(),
                        )
                        .map_err(backend)?;
                    leases.detach(&key, old.and_then(|o| o.lease));
                    leases.attach(&key, lease);
                    changed.push(Event::Put(KeyValue {
                        key,
                        value,
                        create_revision: create,
                        mod_revision: rev,
                        lease,
                    }));
                }
                TxnOp::Delete { key } => {
                    if let Some(old) = self.get(&key)? {
                        self.kv.remove(key.as_str()).map_err(backend)?;
                        leases.detach(&key, old.lease);
                        changed.push(Event::Delete {
                            key,
                            revision: rev,
                            prev: Some(old),
                        });
                    }
                }
            }
        }
        self.record(changed, events)
    }

    /// Write `changed` (all at revision + 1) to the log, if anything changed.
    fn record(&mut self, changed: Vec<Event>, events: &mut Vec<Event>) -> Result<Revision> {
        if changed.is_empty() {
            return Ok(self.revision);
        }
        self.revision += 1;
        self.log
            .insert(self.revision, encode_events(&changed).as_slice())
            .map_err(backend)?;
        events.extend(changed);
        Ok(self.revision)
    }

    fn grant(&mut self, ttl: Duration, leases: &mut Leases) -> Result<LeaseId> {
        let id = meta(&self.meta, META_NEXT_LEASE)?.max(0) + 1;
        self.meta.insert(META_NEXT_LEASE, id).map_err(backend)?;
        let ttl = ttl.max(Duration::from_millis(1));
        self.leases_t
            .insert(id, ttl.as_millis() as u64)
            .map_err(backend)?;
        leases.by_id.insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    /// Remove a lease and delete its keys at one revision.
    fn end_lease(
        &mut self,
        id: LeaseId,
        leases: &mut Leases,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        self.leases_t.remove(id).map_err(backend)?;
        let Some(state) = leases.by_id.remove(&id) else {
            return Ok(());
        };
        let rev = self.revision + 1;
        let mut changed = Vec::new();
        for key in state.keys {
            if let Some(old) = self.get(&key)? {
                if old.lease == Some(id) {
                    self.kv.remove(key.as_str()).map_err(backend)?;
                    changed.push(Event::Delete {
                        key,
                        revision: rev,
                        prev: Some(old),
                    });
                }
            }
        }
        self.record(changed, events).map(|_| ())
    }

    fn compact(&mut self, revision: Revision) -> Result<()> {
        let compacted = meta(&self.meta, META_COMPACTED)?;
        if revision > self.revision || revision < 1 {
            return Err(StoreError::InvalidCompaction {
                requested: revision,
                current: self.revision,
                compacted,
            });
        }
        if revision <= compacted {
            return Ok(());
        }
        self.log
            .retain_in(..revision, |_, _| false)
            .map_err(backend)?;
        self.meta
            .insert(META_COMPACTED, revision)
            .map_err(backend)?;
        Ok(())
    }
}

/// Whether `from` can be served from the log, given the compaction mark.
fn needs_resync(from: Revision, compacted: Revision) -> bool {
    from < compacted
}

/// Read everything a watcher at `next` has missed, up to the newest revision: events
/// from the log, or a resync snapshot when the log no longer reaches back to `next`.
/// Returns the items and the next revision to watch from.
fn catch_up(db: &Database, prefix: &str, next: Revision) -> Result<(Vec<WatchItem>, Revision)> {
    let r = db.begin_read().map_err(backend)?;
    let meta_t = r.open_table(META).map_err(backend)?;
    let current = meta(&meta_t, META_REVISION)?;
    let compacted = meta(&meta_t, META_COMPACTED)?;
    let next = if next <= 0 { current + 1 } else { next };
    if next > current {
        return Ok((Vec::new(), next));
    }
    if needs_resync(next, compacted) {
        let items = scan_prefix(&r.open_table(KV).map_err(backend)?, prefix)?;
        return Ok((
            vec![WatchItem::Resync {
                items,
                revision: current,
            }],
            current + 1,
        ));
    }
    let mut out = Vec::new();
    for row in r
        .open_table(LOG)
        .map_err(backend)?
        .range(next..=current)
        .map_err(backend)?
    {
        let (_, v) = row.map_err(backend)?;
        for e in decode_events(v.value())? {
            if e.key().starts_with(prefix) {
                out.push(WatchItem::Event(e));
            }
        }
    }
    Ok((out, current + 1))
}

fn scan_prefix(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<KeyValue>> {
    let mut items = Vec::new();
    for row in kv.range(prefix..).map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        items.push(decode_record(k.value(), v.value())?);
    }
    Ok(items)
}

type WatchSender = tokio::sync::mpsc::Sender<Result<WatchItem>>;

async fn send_all(tx: &WatchSender, items: Vec<WatchItem>) -> bool {
    for i in items {
        if tx.send(Ok(i)).await.is_err() {
            return false;
        }
    }
    true
}

/// One watcher: history first, then the live broadcast; back to the log when it lags.
async fn run_watch(
    db: Arc<Database>,
    mut rx: broadcast::Receiver<Arc<Batch>>,
    tx: WatchSender,
    prefix: String,
    from: Revision,
) {
    let mut next = from;
    let mut catching_up = true;
    loop {
        if catching_up {
            let db2 = db.clone();
            let p = prefix.clone();
            let r = tokio::task::spawn_blocking(move || catch_up(&db2, &p, next)).await;
            match r {
                Ok(Ok((items, n))) => {
                    next = n;
                    if !send_all(&tx, items).await {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(backend(e))).await;
                    return;
                }
            }
            catching_up = false;
        }
        match rx.recv().await {
            Ok(batch) => {
                if batch.revision < next {
                    continue;
                }
                let items: Vec<WatchItem> = batch
                    .events
                    .iter()
                    .filter(|e| e.revision() >= next && e.key().starts_with(prefix.as_str()))
                    .cloned()
                    .map(WatchItem::Event)
                    .collect();
                next = batch.revision + 1;
                if !send_all(&tx, items).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => catching_up = true,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(KV).map_err(backend)?;
        let v = t.get(key).map_err(backend)?;
        match v {
            Some(v) => decode_record(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let db = self.db.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let r = db.begin_read().map_err(backend)?;
            let revision = meta(&r.open_table(META).map_err(backend)?, META_REVISION)?;
            let items = scan_prefix(&r.open_table(KV).map_err(backend)?, &prefix)?;
            Ok((items, revision))
        })
        .await
        .map_err(backend)?
    }

    async fn txn(&self, txn: Txn) -> Result<Revision> {
        self.call(|tx| Request::Txn(txn, tx)).await
    }

    async fn revision(&self) -> Result<Revision> {
        let r = self.db.begin_read().map_err(backend)?;
        meta(&r.open_table(META).map_err(backend)?, META_REVISION)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.call(|tx| Request::Grant(ttl, tx)).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        let mut l = self
            .leases
            .lock()
            .map_err(|_| backend("lease lock poisoned"))?;
        let now = Instant::now();
        match l.by_id.get_mut(&id) {
            Some(s) if s.deadline > now => {
                s.deadline = now + s.ttl;
                Ok(s.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.call(|tx| Request::Revoke(id, tx)).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        // Subscribe before reading history, so nothing falls between the two.
        let rx = self.events.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(run_watch(self.db.clone(), rx, tx, prefix.to_string(), from));
        Ok(Box::pin(futures::stream::unfold(
            out,
            |mut out| async move { out.recv().await.map(|item| (item, out)) },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.call(|tx| Request::Compact(revision, tx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let ev = vec![
            Event::Put(KeyValue {
                key: "/a".into(),
                value: b"x".to_vec(),
                create_revision: 3,
                mod_revision: 7,
                lease: Some(9),
            }),
            Event::Delete {
                key: "/b".into(),
                revision: 7,
                prev: None,
            },
            Event::Delete {
                key: "/c".into(),
                revision: 7,
                prev: Some(KeyValue {
                    key: "/c".into(),
                    value: Vec::new(),
                    create_revision: 1,
                    mod_revision: 2,
                    lease: None,
                }),
            },
        ];
        assert_eq!(decode_events(&encode_events(&ev)).unwrap(), ev);
        assert!(decode_events(&[1, 5, 0]).is_err());
    }
}
