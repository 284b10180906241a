//! Writes of any size within stock etcd's limits.
//!
//! etcd refuses a transaction with more than 128 operations
//! (`--max-txn-ops`) or a request over 1.5 MiB (`--max-request-bytes`). Every
//! write path that writes "all of X" (an agent's verdicts at hello, `apply`
//! of many pools, the delete cascade of a pool) splits its operations into
//! ordered chunks within [`MAX_TXN_OPS`] and [`MAX_TXN_BYTES`], each chunk one
//! transaction guarded by the caller's compares. Both stores enforce
//! [`ETCD_MAX_TXN_OPS`] and [`ETCD_MAX_REQUEST_BYTES`], so a path that forgets
//! to chunk fails in every test, not only on a real etcd.

use super::{Compare, Op, Result, Store, StoreError};

/// Stock etcd's `--max-txn-ops`.
pub const ETCD_MAX_TXN_OPS: usize = 128;
/// Stock etcd's `--max-request-bytes` (1.5 MiB).
pub const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Operations per chunk, a little under etcd's limit.
pub const MAX_TXN_OPS: usize = 120;
/// Bytes of keys and values per chunk: etcd's limit less room for framing
/// and compares.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// Bytes an operation adds to a request (keys and values; framing aside).
pub fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Put { key, value, .. } => key.len() + value.len() + 16,
        Op::Delete(key) => key.len() + 8,
    }
}

/// Refuses what stock etcd would refuse; used by both stores. Like etcd,
/// compares and operations are counted apart (each at most 128).
pub fn check_limits(compares: &[Compare], ops: &[Op]) -> Result<()> {
    if compares.len().max(ops.len()) > ETCD_MAX_TXN_OPS {
        return Err(StoreError::Invalid(format!(
            "too many operations in txn request ({} compares and {} operations; at most {ETCD_MAX_TXN_OPS})",
            compares.len(),
            ops.len()
        )));
    }
    let bytes: usize = ops.iter().map(op_bytes).sum();
    if bytes > ETCD_MAX_REQUEST_BYTES {
        return Err(StoreError::Invalid(format!(
            "request too large ({bytes} bytes; at most {ETCD_MAX_REQUEST_BYTES})"
        )));
    }
    Ok(())
}

/// Splits `ops` in order into chunks of at most [`MAX_TXN_OPS`] operations
/// and [`MAX_TXN_BYTES`] bytes. An operation larger than the byte budget gets
/// a chunk of its own (and fails there if etcd would refuse it: callers
/// validate sizes before writing).
pub fn chunks(ops: Vec<Op>) -> Vec<Vec<Op>> {
    chunks_by(ops, op_bytes)
}

/// [`chunks`] of items carrying an operation (e.g. with its compare).
pub fn chunks_by<T>(items: Vec<T>, bytes_of: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut cur: Vec<T> = Vec::new();
    let mut bytes = 0;
    for op in items {
        let b = bytes_of(&op);
        if !cur.is_empty() && (cur.len() >= MAX_TXN_OPS || bytes + b > MAX_TXN_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += b;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What [`txn_chunked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedResult {
    /// Every chunk's compares held and every chunk was written.
    pub succeeded: bool,
    /// Chunks written before one failed its compares (all of them on success).
    pub written: usize,
    pub chunks: usize,
    /// The store revision after the last chunk written.
    pub revision: u64,
}

/// Writes `ops` as ordered chunks. Each chunk is guarded by the compares
/// `guard(i, revision)` returns, where `i` is the chunk's index and
/// `revision` the store revision after the previous chunk (0 before the
/// first). Stops at the first chunk whose compares fail.
pub async fn txn_chunked(
    store: &dyn Store,
    ops: Vec<Op>,
    mut guard: impl FnMut(usize, u64) -> Vec<Compare>,
) -> Result<ChunkedResult> {
    let chunks = chunks(ops);
    let n = chunks.len();
    let mut revision = 0;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let r = store.txn(guard(i, revision), chunk).await?;
        if !r.succeeded {
            return Ok(ChunkedResult {
                succeeded: false,
                written: i,
                chunks: n,
                revision,
            });
        }
        revision = r.revision;
    }
    Ok(ChunkedResult {
        succeeded: true,
        written: n,
        chunks: n,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: usize, size: usize) -> Op {
        Op::Put {
            key: format!("k{n}"),
            value: vec![0; size],
            lease: None,
        }
    }

    #[test]
    fn chunks_respect_count_and_bytes_and_keep_order() {
        let ops: Vec<Op> = (0..1000).map(|i| put(i, 10)).collect();
        let c = chunks(ops.clone());
        assert!(c.iter().all(|c| c.len() <= MAX_TXN_OPS));
        assert_eq!(c.concat(), ops);
        let big: Vec<Op> = (0..10).map(|i| put(i, 300 * 1024)).collect();
        let c = chunks(big.clone());
        assert!(
            c.iter()
                .all(|c| c.iter().map(op_bytes).sum::<usize>() <= MAX_TXN_BYTES)
        );
        assert_eq!(c.concat(), big);
        assert!(chunks(Vec::new()).is_empty());
    }

    #[test]
    fn limits_are_etcds() {
        let ops: Vec<Op> = (0..129).map(|i| put(i, 1)).collect();
        assert!(check_limits(&[], &ops).is_err());
        assert!(check_limits(&[], &ops[..128]).is_ok());
        assert!(check_limits(&[], &[put(0, 2 * 1024 * 1024)]).is_err());
    }
}
