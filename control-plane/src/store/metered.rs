//! [`Metered`]: any [`Store`] with each operation's latency and errors
//! counted in [`StoreOps`] (`trackwire_store_operation_seconds{op}`,
//! `trackwire_store_errors_total{op}`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Compare, KeyValue, LeaseId, Op, Result, Store, TxnResult, WatchStream};
use crate::metrics::{Metrics, StoreOp};

pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Metered {
        Metered { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: StoreOp,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let r = f.await;
        self.metrics
            .store_ops
            .observe(op, start.elapsed(), r.is_ok());
        r
    }
}

#[async_trait::async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.timed(StoreOp::Get, self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)> {
        self.timed(StoreOp::List, self.inner.list(prefix)).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
        self.timed(StoreOp::Put, self.inner.put(key, value, lease))
            .await
    }
    async fn delete(&self, key: &str) -> Result<u64> {
        self.timed(StoreOp::Delete, self.inner.delete(key)).await
    }
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult> {
        self.timed(StoreOp::Txn, self.inner.txn(compares, ops))
            .await
    }
    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream> {
        self.timed(StoreOp::Watch, self.inner.watch(prefix, from_revision))
            .await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.timed(StoreOp::GrantLease, self.inner.grant_lease(ttl))
            .await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.timed(StoreOp::KeepAlive, self.inner.keep_alive(lease))
            .await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.timed(StoreOp::Revoke, self.inner.revoke(lease)).await
    }
    async fn revision(&self) -> Result<u64> {
        self.timed(StoreOp::Revision, self.inner.revision()).await
    }
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[tokio::test]
    async fn counts_latency_and_errors_by_operation() {
        let metrics = Arc::new(Metrics::default());
        let store = Metered::new(Arc::new(MemStore::new()), Arc::clone(&metrics));
        store.put("/a", b"x".to_vec(), None).await.expect("put");
        assert!(store.keep_alive(12345).await.is_err(), "no such lease");
        assert_eq!(metrics.store_ops.errors(StoreOp::Put), 0);
        assert_eq!(metrics.store_ops.errors(StoreOp::KeepAlive), 1);
        assert_eq!(metrics.store_ops.count(StoreOp::Put), 1);
    }
}
