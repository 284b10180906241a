//! The store contract: a revisioned key-value store with prefix watches,
//! compare-on-revision transactions and leases, as etcd offers.
//!
//! Two implementations pass one contract suite (`tests/store_contract.rs`):
//! [`EtcdStore`] (production, etcd v3 API) and [`MemStore`] (embedded, in
//! process, for one node and `trackwire dev`). Revisions are global and grow by
//! one per write (a transaction or a lease expiry is one write), like etcd's.

pub mod batch;
mod etcd;
mod mem;
mod metered;

use std::time::Duration;

pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use mem::MemStore;
pub use metered::Metered;

pub type LeaseId = i64;
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// The lease the key is bound to (0: none).
    pub lease: LeaseId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: u64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The events of one or more revisions, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub events: Vec<WatchEvent>,
}

/// Events after the watch's start revision; ends with an error when the
/// watch is cancelled (compaction, a watcher too slow, the store lost).
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<WatchBatch>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key exists and was last modified at exactly this revision.
    ModRevision(String, u64),
    /// The key does not exist.
    Absent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction (unchanged when it failed).
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Compacted { requested: u64, compacted: u64 },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("watch cancelled: {0}")]
    WatchCancelled(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key under `prefix`, sorted, and the store revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)>;
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64>;
    /// Deletes a key; returns the store revision (unchanged when the key was absent).
    async fn delete(&self, key: &str) -> Result<u64>;
    /// Applies `ops` atomically when every compare holds.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult>;
    /// Events for keys under `prefix` from `from_revision` (inclusive) on.
    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream>;
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews the lease for its TTL; `LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends the lease now, deleting every key bound to it.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
    /// The store's current revision.
    async fn revision(&self) -> Result<u64>;
    /// Identifies the store revisions count in: etcd's cluster id, or a
    /// random id per `MemStore`. Revisions of different epochs are unrelated.
    fn epoch(&self) -> u64;
}
