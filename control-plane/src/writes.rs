//! The control plane's store writes as domain operations: `apply` of pool
//! specs, the delete cascade, and admin-state overrides. They return
//! [`WriteError`]; the gRPC adapter (`grpc/admin.rs`) maps it to a status
//! at the edge, and the CLI's start-up apply and the tests call these
//! functions directly.
//!
//! Both stay within stock etcd's limits at any size the README promises
//! (1,000 pools, 10,000 backends per pool): operations are written in
//! ordered chunks ([`crate::store::batch`]). `apply` writes each pool whole
//! and guarded by its key's revision, so a concurrent writer fails it rather
//! than interleaving; an apply that fits one transaction (up to 120 pools
//! and 1 MiB) is atomic, a larger one is applied in order, chunk by chunk,
//! and a failure part-way says which pools were written (applying the same
//! document again completes it: apply is idempotent). Records kept about a
//! backend (admin override, damping state, last decision) are removed when
//! the backend leaves its pool, so none of them returns with a later
//! backend of the same name.

use std::collections::{BTreeMap, BTreeSet};

use trackwire_core::convert::{admin_to_pb, pool_to_pb};
use trackwire_core::{AdminState, PoolSpec};
use trackwire_proto::v1 as pb;

use crate::keys::{self, KeyKind, Keys};
use crate::store::{Compare, Op, Store, StoreError, batch};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A request field out of bounds.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// `expected_revision` is older than a stored pool: nothing written.
    #[error("{0}")]
    Stale(String),
    /// Another writer got there first: nothing written.
    #[error("{0}")]
    Conflict(String),
    /// Some chunks of a large apply were written, then a conflict stopped it.
    #[error("{0}")]
    Partial(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `apply` did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub revision: u64,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Backends of `old` that `new` no longer has.
fn removed_backends(old: &[u8], new: &PoolSpec) -> Vec<String> {
    let Ok(old) = keys::decode_pool(old) else {
        return Vec::new();
    };
    let keep: BTreeSet<&str> = new.backends.iter().map(|b| b.name.as_str()).collect();
    old.backends
        .into_iter()
        .map(|b| b.name)
        .filter(|b| !keep.contains(b.as_str()))
        .collect()
}

/// Keys of every record kept about the named backends of each pool (all of
/// the pool's when `None`), read from the store.
async fn record_keys(
    store: &dyn Store,
    keys: &Keys,
    wanted: &BTreeMap<String, Option<BTreeSet<String>>>,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for (pool, backends) in wanted {
        for prefix in [
            keys.admin_prefix(pool),
            keys.damping_prefix(pool),
            keys.decision_prefix(pool),
        ] {
            let (kvs, _) = store.list(&prefix).await?;
            for kv in kvs {
                let hit = match (keys.parse(&kv.key), backends) {
                    (_, None) => true,
                    (
                        KeyKind::Admin { backend, .. }
                        | KeyKind::Damping { backend, .. }
                        | KeyKind::Decision { backend, .. },
                        Some(backends),
                    ) => backends.contains(backend),
                    _ => false,
                };
                if hit {
                    out.push(kv.key);
                }
            }
        }
    }
    Ok(out)
}

/// Creates or replaces `specs` (already validated); pools not named are
/// left as they are. Fails with [`WriteError::Conflict`] (nothing written)
/// when `expected_revision` is set and any pool changed after it.
pub async fn apply(
    store: &dyn Store,
    keys: &Keys,
    specs: &[PoolSpec],
    expected_revision: u64,
    dry_run: bool,
) -> Result<Applied, WriteError> {
    let (existing, revision) = store.list(&keys.pools()).await?;
    if expected_revision != 0
        && let Some(newer) = existing
            .iter()
            .find(|kv| kv.mod_revision > expected_revision)
    {
        return Err(WriteError::Stale(format!(
            "expected_revision: pools changed since revision {expected_revision} ({} at revision {})",
            newer.key, newer.mod_revision
        )));
    }
    let existing: BTreeMap<&str, _> = existing.iter().map(|kv| (kv.key.as_str(), kv)).collect();
    let mut out = Applied {
        revision,
        ..Default::default()
    };
    // (pool name, put, its compare)
    let mut puts: Vec<(String, Op, Compare)> = Vec::new();
    let mut removed: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    for spec in specs {
        let key = keys.pool(&spec.name);
        let value = keys::encode_pool(pool_to_pb(spec));
        let compare = match existing.get(key.as_str()) {
            Some(kv) if kv.value == value => {
                out.unchanged.push(spec.name.clone());
                continue;
            }
            Some(kv) => {
                let gone = removed_backends(&kv.value, spec);
                if !gone.is_empty() {
                    removed.insert(spec.name.clone(), Some(gone.into_iter().collect()));
                }
                out.updated.push(spec.name.clone());
                Compare::ModRevision(key.clone(), kv.mod_revision)
            }
            None => {
                out.created.push(spec.name.clone());
                Compare::Absent(key.clone())
            }
        };
        let op = Op::Put {
            key,
            value,
            lease: None,
        };
        puts.push((spec.name.clone(), op, compare));
    }
    if puts.is_empty() || dry_run {
        return Ok(out);
    }
    let chunks = batch::chunks_by(puts, |(_, op, _)| batch::op_bytes(op));
    let n = chunks.len();
    let mut written: Vec<String> = Vec::new();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let names: Vec<String> = chunk.iter().map(|(n, _, _)| n.clone()).collect();
        let (ops, compares): (Vec<Op>, Vec<Compare>) =
            chunk.into_iter().map(|(_, op, c)| (op, c)).unzip();
        let r = store.txn(compares, ops).await?;
        if !r.succeeded {
            return Err(if i == 0 {
                WriteError::Conflict(
                    "pools changed concurrently; nothing was written, apply again".into(),
                )
            } else {
                WriteError::Partial(format!(
                    "pools changed concurrently after {i} of {n} chunks: {} written ({}), the rest not; apply again to complete",
                    written.len(),
                    written.join(", ")
                ))
            });
        }
        out.revision = r.revision;
        written.extend(names);
    }
    // The pools are written; now the records of backends that left them.
    let stale = record_keys(store, keys, &removed).await?;
    if !stale.is_empty() {
        let ops = stale.into_iter().map(Op::Delete).collect();
        let r = batch::txn_chunked(store, ops, |_, _| Vec::new()).await?;
        out.revision = out.revision.max(r.revision);
    }
    Ok(out)
}

/// Deletes a pool and every record kept about its backends. The pool key
/// goes first (guarded by its revision), the records after it.
pub async fn delete(store: &dyn Store, keys: &Keys, name: &str) -> Result<u64, WriteError> {
    let key = keys.pool(name);
    let Some(kv) = store.get(&key).await? else {
        return Err(WriteError::NotFound(format!(
            "pool {name:?} does not exist"
        )));
    };
    let r = store
        .txn(
            vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
            vec![Op::Delete(key)],
        )
        .await?;
    if !r.succeeded {
        return Err(WriteError::Conflict(
            "the pool changed concurrently; nothing was deleted".into(),
        ));
    }
    let mut revision = r.revision;
    let wanted = BTreeMap::from([(name.to_string(), None)]);
    let stale = record_keys(store, keys, &wanted).await?;
    if !stale.is_empty() {
        let ops = stale.into_iter().map(Op::Delete).collect();
        let r = batch::txn_chunked(store, ops, |_, _| Vec::new()).await?;
        revision = revision.max(r.revision);
    }
    Ok(revision)
}

/// Who set an override and why, as operators see it in `describe`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverrideNote {
    pub reason: String,
    pub set_by: String,
}

/// Sets (`Some`) or clears (`None`) the admin-state override of
/// `pool/backend`. Written only while the backend exists: the write is
/// guarded by the pool key's revision, so an `apply` removing the backend
/// meanwhile makes it fail rather than leave an orphan.
pub async fn set_admin_state(
    store: &dyn Store,
    keys: &Keys,
    pool: &str,
    backend: &str,
    state: Option<AdminState>,
    note: OverrideNote,
) -> Result<u64, WriteError> {
    if note.reason.len() > 256 {
        return Err(WriteError::Invalid {
            field: "reason",
            message: "at most 256 bytes".into(),
        });
    }
    if note.set_by.len() > 128 {
        return Err(WriteError::Invalid {
            field: "set_by",
            message: "at most 128 bytes".into(),
        });
    }
    let missing = || WriteError::NotFound(format!("backend {pool}/{backend} does not exist"));
    let pool_key = keys.pool(pool);
    let kv = store.get(&pool_key).await?.ok_or_else(missing)?;
    let spec = keys::decode_pool(&kv.value).map_err(|_| missing())?;
    if !spec.backends.iter().any(|b| b.name == backend) {
        return Err(missing());
    }
    let key = keys.admin(pool, backend);
    let op = match state {
        None => Op::Delete(key),
        Some(state) => Op::Put {
            key,
            value: keys::encode_admin(pb::StoredAdmin {
                schema: keys::SCHEMA,
                state: admin_to_pb(state),
                reason: note.reason,
                set_by: note.set_by,
                at_ms: trackwire_core::time::now_ms(),
            }),
            lease: None,
        },
    };
    let r = store
        .txn(
            vec![Compare::ModRevision(pool_key, kv.mod_revision)],
            vec![op],
        )
        .await?;
    if !r.succeeded {
        return Err(WriteError::Conflict(format!(
            "pool {pool} changed concurrently; nothing was written, try again"
        )));
    }
    Ok(r.revision)
}
