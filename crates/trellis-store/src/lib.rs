//! The key-value store under the Trellis API server: one [`Store`] trait with two
//! implementations, [`embedded`] (redb, one file, the default) and [`etcd`] (etcd v3, for
//! several servers), held to the same behaviour by one [`conformance`] suite.
//!
//! The model is etcd's: every committed write bumps one global revision; each key
//! remembers the revision that created it and the one that last changed it; a
//! transaction applies several writes atomically when all its preconditions hold; a
//! watch streams changes under a prefix from a revision, and answers with a
//! [`WatchItem::Resync`] snapshot when that revision was compacted away; leases delete
//! their keys when they are not kept alive.

pub mod conformance;
pub mod embedded;
pub mod etcd;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

/// A store revision: 1, 2, 3… in commit order. 0 means "none" / "now" where noted.
pub type Revision = i64;
/// A lease handle.
pub type LeaseId = i64;

/// One key and its value, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The value bytes (the API server stores JSON).
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key (the API's `resourceVersion`).
    pub mod_revision: Revision,
    /// The lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// A condition on one key, checked atomically with a transaction's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key must exist and its `mod_revision` must be exactly this.
    Revision(Revision),
}

/// One write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Create or replace `key`, attached to `lease` (or to none).
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Delete `key` (deleting an absent key is not an error and writes nothing).
    Delete {
        /// The key.
        key: String,
    },
}

/// Preconditions plus writes: either every check holds and every write is applied at
/// one new revision, or nothing changes and the first failing check is reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions on keys.
    pub checks: Vec<(String, Precondition)>,
    /// Writes applied when all checks hold.
    pub ops: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a condition.
    pub fn check(mut self, key: impl Into<String>, p: Precondition) -> Self {
        self.checks.push((key.into(), p));
        self
    }

    /// Add a put.
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>, lease: Option<LeaseId>) -> Self {
        self.ops.push(TxnOp::Put {
            key: key.into(),
            value,
            lease,
        });
        self
    }

    /// Add a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(TxnOp::Delete { key: key.into() });
        self
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or changed; `kv.mod_revision` is the change's revision.
    Put(KeyValue),
    /// A key was deleted (explicitly or by its lease expiring).
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete.
        revision: Revision,
        /// The value the key had before the delete.
        prev: Option<KeyValue>,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change, in revision order; the events of one transaction arrive together.
    Event(Event),
    /// The requested start revision was compacted: here is every key under the prefix
    /// at `revision`; events after it follow. A consumer replaces its state with this.
    Resync {
        /// The keys under the prefix.
        items: Vec<KeyValue>,
        /// The snapshot's revision.
        revision: Revision,
    },
}

/// A watch: ends only when the store is dropped or on an error it cannot recover from.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem, StoreError>> + Send>>;

/// What can go wrong.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A precondition did not hold; nothing was written.
    #[error("conflict on {key}: expected {expected:?}, found revision {actual:?}")]
    Conflict {
        /// The first key whose check failed.
        key: String,
        /// What the transaction required.
        expected: Precondition,
        /// The key's `mod_revision` (None: absent).
        actual: Option<Revision>,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The store cannot be reached now; retrying later may work. For a transaction with
    /// writes the outcome is unknown: re-read before assuming nothing happened.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A compaction was asked for a revision the store does not have.
    #[error("invalid compaction revision {requested}: current {current}, compacted {compacted}")]
    InvalidCompaction {
        /// Asked for.
        requested: Revision,
        /// The newest revision.
        current: Revision,
        /// The compaction mark: the oldest revision still readable.
        compacted: Revision,
    },
    /// Anything else the backend reports.
    #[error("store: {0}")]
    Backend(String),
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store every API server runs on. Implementations must be safe to share between
/// tasks; several handles (or servers) may write concurrently.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix`, sorted, and the revision the list is consistent at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Apply a transaction; returns its revision (the current revision when it has no
    /// writes). The same key twice among the writes is a [`StoreError::Backend`] error.
    async fn txn(&self, txn: Txn) -> Result<Revision>;

    /// The newest revision.
    async fn revision(&self) -> Result<Revision>;

    /// Grant a lease that expires `ttl` after its last keep-alive. A backend may round
    /// the TTL up (etcd: whole seconds, at least its minimum of about 2 s).
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renew a lease; returns its TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration>;

    /// End a lease now, deleting its keys.
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;

    /// Changes under `prefix` with revision ≥ `from` (0: from the next revision on).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;

    /// Forget history before `revision`: a later watch from an older revision gets a
    /// [`WatchItem::Resync`]. Compacting at or below the current mark is a no-op; a
    /// future revision, or one below 1, is [`StoreError::InvalidCompaction`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Create `key`; fails with [`StoreError::Conflict`] if it exists.
    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.txn(
            Txn::new()
                .check(key, Precondition::Absent)
                .put(key, value, lease),
        )
        .await
    }

    /// Replace `key` if it is still at `revision`.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        self.txn(
            Txn::new()
                .check(key, Precondition::Revision(revision))
                .put(key, value, lease),
        )
        .await
    }

    /// Delete `key` if it is still at `revision`.
    async fn delete(&self, key: &str, revision: Revision) -> Result<Revision> {
        self.txn(
            Txn::new()
                .check(key, Precondition::Revision(revision))
                .delete(key),
        )
        .await
    }
}
