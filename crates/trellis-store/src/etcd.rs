//! The etcd v3 store: [`EtcdStore`] runs the [`Store`] model on an etcd cluster (3.4 or
//! newer) through the `etcd-client` crate.
//!
//! # Mapping
//!
//! - Keys are used as given: there is no namespace prefix, callers put theirs in the keys.
//! - [`Precondition::Absent`] is the etcd compare `version == 0`;
//!   [`Precondition::Revision`]`(r)` is `mod_revision == r` (plus `version > 0` when
//!   `r <= 0`, which etcd would otherwise match on an absent key).
//! - A failed transaction reads every checked key in its failure branch, at the very
//!   revision its compares saw, so [`StoreError::Conflict`] names the first failing check
//!   and that key's actual `mod_revision` without a race.
//! - Lists are paged ([`EtcdOptions::list_page_size`] keys per range) at one revision,
//!   the one of the first page; a page compacted away under the list restarts it.
//! - Lease TTLs are whole seconds, rounded up, at least 1; etcd itself raises any TTL
//!   below its minimum (`1.5 ×` the election timeout: 2 s with the default settings).
//! - [`Store::compact`] of a revision at or below the compaction mark is a no-op; of a
//!   future revision or one below 1 it is [`StoreError::InvalidCompaction`], whose
//!   `compacted` is the oldest revision etcd can still read (found by probing).
//!
//! # Failures and retries
//!
//! One client balances requests over every endpoint (tonic's power-of-two-choices over
//! lazily reconnecting connections, one per endpoint), so a dead member costs only the
//! requests that were on it and the ones sent to it until it comes back. Requests carry
//! etcd's *require leader* flag: a member that lost its leader refuses them up front
//! instead of queueing them, and cancels the watches it serves.
//!
//! Every attempt is bounded by [`EtcdOptions::request_timeout`]; failures are sorted into
//! "not sent" (the connection could not be made, the member had no leader, raft dropped
//! the proposal, too many requests: nothing was applied) and "outcome unknown" (the
//! connection broke or the attempt timed out after the request left). Reads, keep-alives,
//! compactions, lease grants and revokes are retried on both, with a doubling backoff,
//! for up to [`EtcdOptions::retry_for`]. A transaction with writes is retried only when
//! it was not sent: after an unknown outcome it fails with [`StoreError::Unavailable`]
//! and the caller re-reads (a CAS that may have been applied is never blindly repeated).
//! A retried grant whose first attempt was in fact applied leaves a lease with no keys,
//! which expires after its TTL; a retried revoke that finds the lease gone after an
//! unknown first attempt succeeds.
//!
//! # Watch
//!
//! A watch is a task that feeds a channel; it ends when the receiver or the store is
//! dropped. It watches the prefix from the next revision it owes, with `prev_kv`. When
//! the stream breaks, ends, or is canceled (member killed, leader lost), it watches again
//! from the last delivered revision + 1 and skips anything older, so nothing is lost or
//! repeated; etcd never splits one revision's events across responses, and the task
//! only advances after a whole response. When etcd says the revision was compacted, the
//! task lists the prefix and yields [`WatchItem::Resync`] at the list's revision, then
//! watches on from the revision after it. Reconnects back off from 50 ms to 1 s; after
//! [`EtcdOptions::watch_retry_for`] without a working watch the stream yields
//! [`StoreError::Unavailable`] and ends.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, LeaseClient,
    PutOptions, TxnOpResponse, WatchClient, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::{
    Event, KeyValue, LeaseId, Precondition, Result, Revision, Store, StoreError, Txn, TxnOp,
    WatchItem, WatchStream,
};

/// The largest gRPC message the store accepts from etcd (a page of a list, a batch of
/// watch events).
const MAX_MESSAGE: usize = 128 << 20;
/// Watch items buffered between the watch task and the consumer.
const WATCH_BUFFER: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A watch that stayed up this long (or delivered anything) counts as working again.
const WATCH_HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// How many times a list restarts when its revision is compacted under it.
const LIST_RESTARTS: usize = 3;

/// Timeouts and sizes of an [`EtcdStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Bound on one attempt of one request.
    pub request_timeout: Duration,
    /// How long a retryable request is retried (over several members) before it fails
    /// with [`StoreError::Unavailable`].
    pub retry_for: Duration,
    /// Bound on opening a connection to one member.
    pub connect_timeout: Duration,
    /// How long a watch keeps trying to reconnect before its stream fails.
    pub watch_retry_for: Duration,
    /// Keys per range when listing a prefix (0: one range, unbounded). Halved on the fly
    /// when a page exceeds the message size limit.
    pub list_page_size: i64,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            watch_retry_for: Duration::from_secs(30),
            list_page_size: 1000,
        }
    }
}

/// A [`Store`] on an etcd v3 cluster. Dropping it ends every watch it started.
pub struct EtcdStore {
    inner: Inner,
    /// Never sent on; watch tasks see it dropped with the store and stop.
    alive: watch::Sender<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to the cluster behind `endpoints` (`http://host:port` or `host:port`,
    /// ideally every member) with [`EtcdOptions::default`], and check that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, EtcdOptions::default()).await
    }

    /// [`EtcdStore::connect`] with explicit options. Fails with
    /// [`StoreError::Unavailable`] when no member answers within
    /// [`EtcdOptions::retry_for`].
    pub async fn connect_with(endpoints: &[String], opts: EtcdOptions) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoints given".into()));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            // HTTP/2 pings only while requests or watches are open (etcd answers idle
            // pings with GOAWAY): a silent member's watch breaks within 15 s.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(|e| classify(&e).into_error())?;
        let inner = Inner {
            endpoints: endpoints.into(),
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            opts,
        };
        inner.revision().await?;
        let (alive, _) = watch::channel(());
        Ok(Self { inner, alive })
    }

    /// The endpoints the store was connected with.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }
}

/// What went wrong with one etcd request, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// Nothing was applied (no connection, no leader, proposal dropped): any request may
    /// be sent again.
    NotSent(String),
    /// The request may or may not have been applied (connection lost after sending,
    /// timeout, etcd's own request timeout).
    Unknown(String),
    /// etcd: requested lease not found.
    LeaseNotFound,
    /// etcd: required revision has been compacted.
    Compacted,
    /// etcd: required revision is a future revision.
    FutureRevision,
    /// A response larger than [`MAX_MESSAGE`].
    TooLarge(String),
    /// Anything else: not retried.
    Other(String),
}

impl Fault {
    fn into_error(self) -> StoreError {
        match self {
            Fault::NotSent(m) | Fault::Unknown(m) => StoreError::Unavailable(m),
            Fault::LeaseNotFound => StoreError::Backend("etcd: requested lease not found".into()),
            Fault::Compacted => {
                StoreError::Backend("etcd: required revision has been compacted".into())
            }
            Fault::FutureRevision => {
                StoreError::Backend("etcd: required revision is a future revision".into())
            }
            Fault::TooLarge(m) | Fault::Other(m) => StoreError::Backend(m),
        }
    }
}

/// Sort an etcd-client error into a [`Fault`].
fn classify(e: &etcd_client::Error) -> Fault {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => classify_status(s),
        E::TransportError(t) => Fault::Unknown(format!("etcd transport: {t}")),
        E::IoError(io) => Fault::Unknown(format!("etcd i/o: {io}")),
        E::LeaseKeepAliveError(m) if m.contains("not found") => Fault::LeaseNotFound,
        E::LeaseKeepAliveError(m) | E::WatchError(m) | E::EndpointError(m) => {
            Fault::Unknown(format!("etcd: {m}"))
        }
        other => Fault::Other(format!("etcd: {other}")),
    }
}

fn classify_status(s: &tonic::Status) -> Fault {
    use tonic::Code;
    let msg = s.message();
    // A status with a source was made by the client from a transport error; one etcd
    // sent has none.
    let local = std::error::Error::source(s);
    let mut cause = local;
    while let Some(c) = cause {
        if c.is::<tonic::ConnectError>() {
            return Fault::NotSent(format!("etcd unreachable: {s}"));
        }
        cause = c.source();
    }
    match s.code() {
        Code::NotFound if msg.contains("lease not found") => Fault::LeaseNotFound,
        Code::OutOfRange if msg.contains("has been compacted") => Fault::Compacted,
        Code::OutOfRange if msg.contains("future revision") => Fault::FutureRevision,
        Code::OutOfRange if msg.contains("message length too large") => {
            Fault::TooLarge(format!("etcd: {msg}"))
        }
        _ if local.is_some() => Fault::Unknown(format!("etcd connection: {s}")),
        // Refused before it reached raft (require-leader interceptor, apply backlog) or
        // dropped by raft: nothing was applied.
        Code::Unavailable if msg == "etcdserver: no leader" => {
            Fault::NotSent(format!("etcd: {msg}"))
        }
        Code::ResourceExhausted if msg.contains("too many requests") => {
            Fault::NotSent(format!("etcd: {msg}"))
        }
        _ if msg.contains("raft proposal dropped") => Fault::NotSent(format!("etcd: {msg}")),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Fault::Unknown(format!("etcd: {msg}"))
        }
        code => Fault::Other(format!("etcd: {msg} ({code:?})")),
    }
}

/// Which failures a request may be retried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and idempotent writes: on [`Fault::NotSent`] and [`Fault::Unknown`].
    Always,
    /// Writes: only on [`Fault::NotSent`].
    IfNotSent,
}

/// The clients and settings shared by the store and its watch tasks.
#[derive(Clone)]
struct Inner {
    endpoints: Arc<[String]>,
    opts: EtcdOptions,
    kv: KvClient,
    lease: LeaseClient,
    watch: WatchClient,
}

impl Inner {
    /// Run `attempt` until it succeeds, fails in a way `retry` does not cover, or
    /// [`EtcdOptions::retry_for`] has passed. Also says whether an earlier attempt ended
    /// with an unknown outcome (it may have been applied).
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        retry: Retry,
        mut attempt: F,
    ) -> (Result<T, Fault>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut uncertain = false;
        loop {
            let fault = match tokio::time::timeout(self.opts.request_timeout, attempt()).await {
                Ok(Ok(v)) => return (Ok(v), uncertain),
                Ok(Err(e)) => classify(&e),
                Err(_) => Fault::Unknown(format!(
                    "etcd {what}: no answer within {:?}",
                    self.opts.request_timeout
                )),
            };
            let again = match &fault {
                Fault::NotSent(_) => true,
                Fault::Unknown(_) => retry == Retry::Always,
                _ => false,
            };
            let left = self.opts.retry_for.saturating_sub(started.elapsed());
            if !again || left.is_zero() {
                return (Err(fault), uncertain);
            }
            uncertain |= matches!(fault, Fault::Unknown(_));
            debug!(what, ?fault, ?backoff, "etcd request failed, retrying");
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn revision(&self) -> Result<Revision> {
        let (r, _) = self
            .call("revision", Retry::Always, || {
                let mut kv = self.kv.clone();
                async move {
                    kv.get([0u8], Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await;
        header_revision(r.map_err(Fault::into_error)?.header())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let mut last = Fault::Compacted;
        for _ in 0..LIST_RESTARTS {
            match self.list_once(prefix).await {
                Ok(r) => return Ok(r),
                Err(Fault::Compacted) => last = Fault::Compacted,
                Err(f) => return Err(f.into_error()),
            }
        }
        Err(last.into_error())
    }

    /// One paged list at the revision of its first page.
    async fn list_once(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), Fault> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = if prefix.is_empty() {
            vec![0u8]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut limit = self.opts.list_page_size.max(0);
        let mut items = Vec::new();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let (r, _) = self
                .call("list", Retry::Always, || {
                    let mut kv = self.kv.clone();
                    let (key, opts) = (from.clone(), opts.clone());
                    async move { kv.get(key, Some(opts)).await }
                })
                .await;
            let mut resp = match r {
                Ok(resp) => resp,
                Err(Fault::TooLarge(_)) if limit != 1 => {
                    limit = if limit == 0 { 512 } else { limit / 2 };
                    continue;
                }
                Err(f) => return Err(f),
            };
            if revision == 0 {
                revision =
                    header_revision(resp.header()).map_err(|e| Fault::Other(e.to_string()))?;
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            for kv in kvs {
                items.push(to_kv(kv).map_err(|e| Fault::Other(e.to_string()))?);
            }
            if !more {
                break;
            }
        }
        Ok((items, revision))
    }

    /// Of the leases `txn` attaches keys to, the one etcd no longer has.
    async fn missing_lease(&self, txn: &Txn) -> LeaseId {
        let mut leases: Vec<LeaseId> = Vec::new();
        for op in &txn.ops {
            if let TxnOp::Put { lease: Some(l), .. } = op {
                if !leases.contains(l) {
                    leases.push(*l);
                }
            }
        }
        if leases.len() > 1 {
            for &id in &leases {
                let (r, _) = self
                    .call("lease time-to-live", Retry::Always, || {
                        let mut lease = self.lease.clone();
                        async move { lease.time_to_live(id, None).await }
                    })
                    .await;
                match r {
                    Ok(resp) if resp.ttl() <= 0 => return id,
                    Err(Fault::LeaseNotFound) => return id,
                    _ => {}
                }
            }
        }
        leases.first().copied().unwrap_or(0)
    }

    /// The oldest revision etcd can still read at (binary search with ranges at a
    /// revision; 0 when the probe fails).
    async fn oldest_readable(&self, current: Revision) -> Revision {
        let (mut lo, mut hi) = (1, current.max(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (r, _) = self
                .call("compaction probe", Retry::Always, || {
                    let mut kv = self.kv.clone();
                    let opts = GetOptions::new().with_count_only().with_revision(mid);
                    async move { kv.get([0u8], Some(opts)).await }
                })
                .await;
            match r {
                Ok(_) => hi = mid,
                Err(Fault::Compacted) => lo = mid + 1,
                Err(_) => return 0,
            }
        }
        lo
    }

    async fn open_watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<(etcd_client::Watcher, etcd_client::WatchStream), etcd_client::Error> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_prev_key();
        self.watch.clone().watch(prefix, Some(opts)).await
    }
}

/// The end of the key range `[prefix, end)`: the prefix with its last byte below 0xff
/// incremented (and what follows dropped); `[0]` ("to the end") when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// A lease TTL in etcd's whole seconds: rounded up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    h.map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd response without a header".into()))
}

fn utf8_key(key: Vec<u8>) -> Result<String> {
    String::from_utf8(key).map_err(|e| StoreError::Backend(format!("etcd key is not UTF-8: {e}")))
}

fn to_kv(kv: etcd_client::KeyValue) -> Result<KeyValue> {
    let (create_revision, mod_revision, lease) =
        (kv.create_revision(), kv.mod_revision(), kv.lease());
    let (key, value) = kv.into_key_value();
    Ok(KeyValue {
        key: utf8_key(key)?,
        value,
        create_revision,
        mod_revision,
        lease: (lease != 0).then_some(lease),
    })
}

fn to_event(ev: &etcd_client::Event) -> Result<Event> {
    let kv = ev
        .kv()
        .cloned()
        .ok_or_else(|| StoreError::Backend("etcd watch event without a key".into()))?;
    Ok(match ev.event_type() {
        EventType::Put => Event::Put(to_kv(kv)?),
        EventType::Delete => Event::Delete {
            revision: kv.mod_revision(),
            key: utf8_key(kv.into_key_value().0)?,
            prev: ev.prev_kv().cloned().map(to_kv).transpose()?,
        },
    })
}

/// The etcd transaction for `txn`: its checks as compares, its writes on success, a read
/// of every checked key on failure.
fn etcd_txn(txn: &Txn) -> etcd_client::Txn {
    let mut compares = Vec::with_capacity(txn.checks.len());
    let mut reads = Vec::with_capacity(txn.checks.len());
    for (key, check) in &txn.checks {
        match *check {
            Precondition::Absent => {
                compares.push(Compare::version(key.as_str(), CompareOp::Equal, 0));
            }
            Precondition::Revision(r) => {
                compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, r));
                if r <= 0 {
                    compares.push(Compare::version(key.as_str(), CompareOp::Greater, 0));
                }
            }
        }
        reads.push(etcd_client::TxnOp::get(key.as_str(), None));
    }
    let writes: Vec<etcd_client::TxnOp> = txn
        .ops
        .iter()
        .map(|op| match op {
            TxnOp::Put { key, value, lease } => etcd_client::TxnOp::put(
                key.as_str(),
                value.clone(),
                lease.map(|l| PutOptions::new().with_lease(l)),
            ),
            TxnOp::Delete { key } => etcd_client::TxnOp::delete(key.as_str(), None),
        })
        .collect();
    etcd_client::Txn::new()
        .when(compares)
        .and_then(writes)
        .or_else(reads)
}

/// The `mod_revision` of each key the failure branch read (None: absent).
fn read_revisions(reads: &[TxnOpResponse]) -> Vec<Option<Revision>> {
    reads
        .iter()
        .map(|read| match read {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        })
        .collect()
}

/// The first of `checks` that does not hold for the `actual` revisions of its keys.
fn first_conflict(checks: &[(String, Precondition)], actual: &[Option<Revision>]) -> StoreError {
    for ((key, expected), &actual) in checks.iter().zip(actual) {
        let holds = match *expected {
            Precondition::Absent => actual.is_none(),
            Precondition::Revision(r) => actual == Some(r),
        };
        if !holds {
            return StoreError::Conflict {
                key: key.clone(),
                expected: *expected,
                actual,
            };
        }
    }
    StoreError::Backend("etcd transaction failed although every check holds".into())
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let (r, _) = self
            .inner
            .call("get", Retry::Always, || {
                let mut kv = self.inner.kv.clone();
                async move { kv.get(key, None).await }
            })
            .await;
        let mut resp = r.map_err(Fault::into_error)?;
        resp.take_kvs().into_iter().next().map(to_kv).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.inner.list(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<Revision> {
        let request = etcd_txn(&txn);
        // Without writes the transaction only reads: safe to send again.
        let retry = if txn.ops.is_empty() {
            Retry::Always
        } else {
            Retry::IfNotSent
        };
        let (r, _) = self
            .inner
            .call("txn", retry, || {
                let mut kv = self.inner.kv.clone();
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await;
        match r {
            Ok(resp) if resp.succeeded() => header_revision(resp.header()),
            Ok(resp) => Err(first_conflict(
                &txn.checks,
                &read_revisions(&resp.op_responses()),
            )),
            Err(Fault::LeaseNotFound) => Err(StoreError::LeaseNotFound(
                self.inner.missing_lease(&txn).await,
            )),
            Err(Fault::Unknown(m)) if retry == Retry::IfNotSent => Err(StoreError::Unavailable(
                format!("{m} (the transaction may or may not have been applied)"),
            )),
            Err(f) => Err(f.into_error()),
        }
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner.revision().await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl_secs(ttl);
        let (r, _) = self
            .inner
            .call("lease grant", Retry::Always, || {
                let mut lease = self.inner.lease.clone();
                async move { lease.grant(secs, None).await }
            })
            .await;
        let resp = r.map_err(Fault::into_error)?;
        if !resp.error().is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd lease grant: {}",
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        let (r, _) = self
            .inner
            .call("lease keep-alive", Retry::Always, || {
                let mut lease = self.inner.lease.clone();
                async move {
                    // The client checks the first answer and keeps its TTL to itself:
                    // renew once more on the same stream to read it.
                    let (mut keeper, mut answers) = lease.keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    match answers.message().await? {
                        Some(resp) => Ok(resp.ttl()),
                        None => Err(etcd_client::Error::LeaseKeepAliveError(
                            "keep-alive stream ended".into(),
                        )),
                    }
                }
            })
            .await;
        match r {
            Ok(ttl) if ttl > 0 => Ok(Duration::from_secs(ttl.unsigned_abs())),
            Ok(_) | Err(Fault::LeaseNotFound) => Err(StoreError::LeaseNotFound(id)),
            Err(f) => Err(f.into_error()),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        let (r, uncertain) = self
            .inner
            .call("lease revoke", Retry::Always, || {
                let mut lease = self.inner.lease.clone();
                async move { lease.revoke(id).await }
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // An earlier attempt may have revoked it.
            Err(Fault::LeaseNotFound) if uncertain => Ok(()),
            Err(Fault::LeaseNotFound) => Err(StoreError::LeaseNotFound(id)),
            Err(f) => Err(f.into_error()),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let from = if from <= 0 {
            self.inner.revision().await? + 1
        } else {
            from
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(run_watch(
            self.inner.clone(),
            prefix.to_string(),
            from,
            tx,
            self.alive.subscribe(),
        ));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let invalid = |current, compacted| StoreError::InvalidCompaction {
            requested: revision,
            current,
            compacted,
        };
        if revision < 1 {
            let current = self.inner.revision().await?;
            return Err(invalid(current, self.inner.oldest_readable(current).await));
        }
        let (r, _) = self
            .inner
            .call("compact", Retry::Always, || {
                let mut kv = self.inner.kv.clone();
                async move { kv.compact(revision, None).await }
            })
            .await;
        match r {
            // Already compacted at or past it.
            Ok(_) | Err(Fault::Compacted) => Ok(()),
            Err(Fault::FutureRevision) => {
                let current = self.inner.revision().await?;
                Err(invalid(current, self.inner.oldest_readable(current).await))
            }
            Err(f) => Err(f.into_error()),
        }
    }
}

/// Why a watch stream stopped.
enum Ended {
    /// The consumer or the store is gone.
    Stop,
    /// etcd compacted the start revision away (at this revision).
    Compacted(Revision),
    /// The stream broke: watch again.
    Broken(String),
}

/// The watch task: watch `prefix` from `next`, deliver, and re-watch after failures.
async fn run_watch(
    inner: Inner,
    prefix: String,
    mut next: Revision,
    tx: mpsc::Sender<Result<WatchItem>>,
    mut alive: watch::Receiver<()>,
) {
    let mut backoff = WATCH_BACKOFF_MIN;
    let mut failing_since: Option<Instant> = None;
    loop {
        let opened = tokio::select! {
            _ = tx.closed() => return,
            _ = alive.changed() => return,
            r = tokio::time::timeout(inner.opts.request_timeout, inner.open_watch(&prefix, next)) => r,
        };
        let problem = match opened {
            Ok(Ok((_watcher, mut stream))) => {
                let opened_at = Instant::now();
                let before = next;
                let ended = pump(&tx, &mut alive, &mut stream, &mut next).await;
                if next > before || opened_at.elapsed() >= WATCH_HEALTHY_AFTER {
                    failing_since = None;
                    backoff = WATCH_BACKOFF_MIN;
                }
                match ended {
                    Ended::Stop => return,
                    Ended::Broken(why) => why,
                    Ended::Compacted(at) => {
                        debug!(prefix, next, at, "watch start compacted, resyncing");
                        let listed = tokio::select! {
                            _ = tx.closed() => return,
                            _ = alive.changed() => return,
                            r = inner.list(&prefix) => r,
                        };
                        match listed {
                            Ok((items, revision)) => {
                                let item = WatchItem::Resync { items, revision };
                                if tx.send(Ok(item)).await.is_err() {
                                    return;
                                }
                                next = revision + 1;
                                failing_since = None;
                                backoff = WATCH_BACKOFF_MIN;
                                continue;
                            }
                            Err(StoreError::Unavailable(m)) => m,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) => match classify(&e) {
                Fault::NotSent(m) | Fault::Unknown(m) => m,
                f => {
                    let _ = tx.send(Err(f.into_error())).await;
                    return;
                }
            },
            Err(_) => format!("no watch created within {:?}", inner.opts.request_timeout),
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= inner.opts.watch_retry_for {
            let _ = tx
                .send(Err(StoreError::Unavailable(format!(
                    "watch on {prefix:?} from revision {next}: {problem} (retried for {:?})",
                    inner.opts.watch_retry_for
                ))))
                .await;
            return;
        }
        debug!(
            prefix,
            next,
            problem,
            ?backoff,
            "etcd watch broke, watching again"
        );
        tokio::select! {
            _ = tx.closed() => return,
            _ = alive.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// Deliver the responses of one etcd watch stream; `next` is the first revision not yet
/// delivered and only moves past whole responses.
async fn pump(
    tx: &mpsc::Sender<Result<WatchItem>>,
    alive: &mut watch::Receiver<()>,
    stream: &mut etcd_client::WatchStream,
    next: &mut Revision,
) -> Ended {
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return Ended::Stop,
            _ = alive.changed() => return Ended::Stop,
            m = stream.message() => m,
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ended::Broken("the watch stream ended".into()),
            Err(e) => return Ended::Broken(format!("watch stream: {e}")),
        };
        if resp.compact_revision() > 0 {
            return Ended::Compacted(resp.compact_revision());
        }
        if resp.canceled() {
            return Ended::Broken(format!("watch canceled by etcd: {}", resp.cancel_reason()));
        }
        let floor = *next;
        let mut top = floor - 1;
        for ev in resp.events() {
            let ev = match to_event(ev) {
                Ok(ev) => ev,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return Ended::Stop;
                }
            };
            let rev = ev.revision();
            if rev < floor {
                continue; // delivered before a reconnect
            }
            top = top.max(rev);
            if tx.send(Ok(WatchItem::Event(ev))).await.is_err() {
                return Ended::Stop;
            }
        }
        *next = (*next).max(top + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(300)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ttl_secs(Duration::MAX), i64::MAX);
    }

    #[test]
    fn status_classification() {
        let s = |code, msg: &str| classify_status(&tonic::Status::new(code, msg));
        use tonic::Code;
        assert_eq!(
            s(Code::NotFound, "etcdserver: requested lease not found"),
            Fault::LeaseNotFound
        );
        assert_eq!(
            s(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Fault::Compacted
        );
        assert_eq!(
            s(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            ),
            Fault::FutureRevision
        );
        assert!(matches!(
            s(Code::Unavailable, "etcdserver: no leader"),
            Fault::NotSent(_)
        ));
        assert!(matches!(
            s(Code::Unavailable, "etcdserver: request timed out"),
            Fault::Unknown(_)
        ));
        assert!(matches!(
            s(
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request"
            ),
            Fault::Other(_)
        ));
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        )));
        assert!(
            matches!(classify_status(&refused), Fault::NotSent(_)),
            "{refused:?}"
        );
    }

    #[test]
    fn conflict_names_the_first_failing_check() {
        let checks = vec![
            ("/a".to_string(), Precondition::Absent),
            ("/b".to_string(), Precondition::Revision(7)),
        ];
        assert!(matches!(
            first_conflict(&checks, &[None, Some(7)]),
            StoreError::Backend(_)
        ));
        match first_conflict(&checks, &[None, Some(8)]) {
            StoreError::Conflict {
                key,
                expected,
                actual,
            } => assert_eq!(
                (key.as_str(), expected, actual),
                ("/b", Precondition::Revision(7), Some(8))
            ),
            e => panic!("{e:?}"),
        }
    }
}
