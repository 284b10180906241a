//! `EtcdStore`: the production store, on etcd's v3 API through etcd-client.
//!
//! Unary requests carry a client timeout and idempotent ones are retried, so
//! a lost etcd leader costs about one election, not the default ~6 s stall.
//! Watches and lease keep-alives use a second client without that timeout
//! because they are long-lived streams.
//!
//! Requests go to one **pinned member** at a time, as etcd's Go client
//! does: a failure of that member (refused, timed out, reset, no leader)
//! moves the pin to the next endpoint, and the request is retried there
//! at once. etcd-client's own balancing over all endpoints kept sending a
//! share of every kind of request to a killed member (etcd-client#39):
//! lease keep-alives and verdict writes failed at random, agent sessions
//! ended over and over, and a real failure went unseen for seconds
//! (chaos scenario 8).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, warn};

use super::{
    Compare, KeyValue, LeaseId, Op, Result, Store, StoreError, TxnResult, WatchBatch, WatchEvent,
    WatchStream,
};

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// Deadline of one unary request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts for idempotent requests (get, list, put, delete).
    pub attempts: u32,
    /// TLS for `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// PEM material for TLS to etcd: the CA its server certificate chains to,
/// and a client certificate and key for `--client-cert-auth`.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            attempts: 3,
            tls: None,
        }
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
    attempts: u32,
    cluster_id: u64,
}

/// A client pair per endpoint (each connects lazily, to that member
/// only) and the one requests go to.
struct Members {
    endpoints: Vec<String>,
    unary: Vec<Client>,
    streams: Vec<Client>,
    pinned: AtomicUsize,
}

impl Members {
    fn pinned(&self) -> usize {
        self.pinned.load(Relaxed) % self.endpoints.len()
    }

    /// The request to member `i` failed with `e`: when that says the member
    /// (not the request) is at fault, pin the next member — unless another
    /// request already moved the pin. Whether the next attempt goes elsewhere.
    fn failed(&self, i: usize, e: &etcd_client::Error) -> bool {
        member_failure(e) && self.move_pin(i, &e.to_string())
    }

    /// Member `i` did not answer in time (or failed): pin the next one,
    /// unless another request already moved the pin.
    fn move_pin(&self, i: usize, error: &str) -> bool {
        if self.endpoints.len() < 2 {
            return false;
        }
        let next = (i + 1) % self.endpoints.len();
        if self
            .pinned
            .compare_exchange(i, next, Relaxed, Relaxed)
            .is_ok()
        {
            warn!(
                from = %self.endpoints[i],
                to = %self.endpoints[next],
                error,
                "etcd member failed; using the next one"
            );
        }
        true
    }
}

/// Whether `e` says the member could not serve (so another one may):
/// transport failures, timeouts, resets and `Unavailable` (also "no
/// leader"), not answers about the request itself.
fn member_failure(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Whether the request never reached the member (so even a
/// non-idempotent one may be sent again elsewhere).
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("ConnectError") || text.contains("tcp connect error")
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    // etcd answers requests over its limits with InvalidArgument; retrying
    // cannot help, so they are not "unavailable".
    if let etcd_client::Error::GRpcStatus(s) = &e
        && s.code() == tonic::Code::InvalidArgument
    {
        return StoreError::Invalid(s.message().to_string());
    }
    StoreError::Unavailable(e.to_string())
}

fn rev(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> u64 {
    h.map(|h| rev(h.revision())).unwrap_or(0)
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: rev(kv.create_revision()),
        mod_revision: rev(kv.mod_revision()),
        lease: kv.lease(),
    }
}

impl EtcdStore {
    /// Makes a lazy client pair per endpoint and pins the first (see the module docs).
    pub async fn connect(opts: &EtcdOptions) -> Result<Self> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoints".into()));
        }
        let base = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from its peers still answers pings: with
            // this its watches end with "no leader" instead of going
            // silent, and the pin moves on.
            .with_require_leader(true);
        let base = match &opts.tls {
            Some(t) => {
                let mut tls = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem));
                if let Some((cert, key)) = &t.identity {
                    tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
                }
                base.with_tls(tls)
            }
            None => base,
        };
        let mut unary = Vec::new();
        let mut streams = Vec::new();
        for e in &opts.endpoints {
            // Lazy: a member down at start costs nothing until it is pinned.
            unary.push(
                Client::connect([e], Some(base.clone().with_timeout(opts.request_timeout)))
                    .await
                    .map_err(unavailable)?,
            );
            streams.push(
                Client::connect([e], Some(base.clone()))
                    .await
                    .map_err(unavailable)?,
            );
        }
        let mut store = EtcdStore {
            members: Arc::new(Members {
                endpoints: opts.endpoints.clone(),
                unary,
                streams,
                pinned: AtomicUsize::new(0),
            }),
            // Two rounds over the members, a pause between them: a request
            // outlives an election, when every member answers "no leader".
            attempts: opts.attempts.max(1).max(2 * opts.endpoints.len() as u32),
            cluster_id: 0,
        };
        let resp = store
            .retry("cluster id", |mut c| async move {
                c.get("\0trackwire-revision-probe", None).await
            })
            .await?;
        store.cluster_id = resp.header().map(|h| h.cluster_id()).unwrap_or(0);
        Ok(store)
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        let mut moved = false;
        let members = self.members.endpoints.len() as u32;
        for attempt in 0..self.attempts {
            // Another member is tried at once; the same one, or the first
            // again after a full round (an election), after a pause.
            if attempt > 0 && (!moved || attempt % members == 0) {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            let i = self.members.pinned();
            match f(self.members.unary[i].clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    debug!(attempt, member = %self.members.endpoints[i], error = %e, "etcd {what} failed");
                    moved = self.members.failed(i, &e);
                    last = Some(e);
                }
            }
        }
        Err(last
            .map(unavailable)
            .unwrap_or_else(|| StoreError::Unavailable(what.into())))
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .retry("get", |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.kvs().first().map(convert_kv))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)> {
        let resp = self
            .retry("list", |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let mut kvs: Vec<KeyValue> = resp.kvs().iter().map(convert_kv).collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((kvs, header_revision(resp.header())))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
        let resp = self
            .retry("put", |mut c| {
                let value = value.clone();
                async move {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l));
                    c.put(key, value, opts).await
                }
            })
            .await
            .map_err(|e| lease_error(e, lease))?;
        Ok(header_revision(resp.header()))
    }

    async fn delete(&self, key: &str) -> Result<u64> {
        let resp = self
            .retry("delete", |mut c| async move { c.delete(key, None).await })
            .await?;
        Ok(header_revision(resp.header()))
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult> {
        super::batch::check_limits(&compares, &ops)?;
        let when: Vec<EtcdCompare> = compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision(k, r) => {
                    EtcdCompare::mod_revision(k.as_str(), CompareOp::Equal, *r as i64)
                }
                Compare::Absent(k) => EtcdCompare::create_revision(k.as_str(), CompareOp::Equal, 0),
            })
            .collect();
        let leases: Vec<LeaseId> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Put { lease: Some(l), .. } => Some(*l),
                _ => None,
            })
            .collect();
        let then: Vec<TxnOp> = ops
            .into_iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => {
                    TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l)))
                }
                Op::Delete(key) => TxnOp::delete(key, None),
            })
            .collect();
        // Retried only when it never reached a member: a commit whose
        // response was lost would then fail its compares.
        let txn = Txn::new().when(when).and_then(then);
        let mut attempt = 0;
        let resp = loop {
            let i = self.members.pinned();
            match self.members.unary[i].clone().txn(txn.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    attempt += 1;
                    let moved = self.members.failed(i, &e);
                    if !(moved && never_sent(&e) && attempt < self.attempts) {
                        return Err(lease_error(unavailable(e), leases.first().copied()));
                    }
                }
            }
        };
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision as i64);
        let i = self.members.pinned();
        let members = Arc::clone(&self.members);
        let fail = |e: etcd_client::Error| {
            members.failed(i, &e);
            unavailable(e)
        };
        let mut stream = self.members.streams[i]
            .clone()
            .watch(prefix, Some(opts))
            .await
            .map_err(fail)?;
        // The first message confirms creation, or says the start revision is compacted.
        match stream.message().await.map_err(fail)? {
            Some(m) if m.canceled() => {
                return Err(if m.compact_revision() > 0 {
                    StoreError::Compacted {
                        requested: from_revision,
                        compacted: rev(m.compact_revision()),
                    }
                } else {
                    StoreError::WatchCancelled(m.cancel_reason().to_string())
                });
            }
            Some(_) => {}
            None => return Err(StoreError::WatchCancelled("stream closed".into())),
        }
        let (tx, rx) = mpsc::channel(1024);
        let span = info_span!("etcd_watch", prefix);
        tokio::spawn(
            async move {
                loop {
                    let item = tokio::select! {
                        m = stream.message() => m,
                        () = tx.closed() => return,
                    };
                    let batch = match item {
                        Ok(Some(m)) if m.canceled() => Err(if m.compact_revision() > 0 {
                            StoreError::Compacted {
                                requested: from_revision,
                                compacted: rev(m.compact_revision()),
                            }
                        } else {
                            StoreError::WatchCancelled(m.cancel_reason().to_string())
                        }),
                        Ok(Some(m)) => {
                            let events: Vec<WatchEvent> = m
                                .events()
                                .iter()
                                .filter_map(|e| {
                                    let kv = e.kv()?;
                                    Some(match e.event_type() {
                                        EventType::Put => WatchEvent::Put(convert_kv(kv)),
                                        EventType::Delete => WatchEvent::Delete {
                                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                                            mod_revision: rev(kv.mod_revision()),
                                        },
                                    })
                                })
                                .collect();
                            if events.is_empty() {
                                continue;
                            }
                            Ok(WatchBatch { events })
                        }
                        Ok(None) => Err(StoreError::WatchCancelled("stream closed".into())),
                        Err(e) => {
                            members.failed(i, &e);
                            Err(unavailable(e))
                        }
                    };
                    let end = batch.is_err();
                    if tx.send(batch).await.is_err() || end {
                        return;
                    }
                }
            }
            .instrument(span),
        );
        Ok(rx)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = self
            .retry("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let i = self.members.pinned();
        let err = |e: etcd_client::Error| {
            self.members.failed(i, &e);
            lease_error(unavailable(e), Some(lease))
        };
        let fut = async {
            let (mut keeper, mut responses) = self.members.streams[i]
                .clone()
                .lease_keep_alive(lease)
                .await
                .map_err(err)?;
            keeper.keep_alive().await.map_err(err)?;
            match responses.message().await.map_err(err)? {
                Some(r) if r.ttl() > 0 => Ok(()),
                _ => Err(StoreError::LeaseNotFound(lease)),
            }
        };
        tokio::time::timeout(Duration::from_secs(3), fut)
            .await
            .unwrap_or_else(|_| {
                // A blackholed member: its connection's pings have not
                // failed yet, but it is not answering.
                self.members.move_pin(i, "lease keep-alive timed out");
                Err(StoreError::Unavailable("lease keep-alive timed out".into()))
            })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let i = self.members.pinned();
        self.members.unary[i]
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| {
                self.members.failed(i, &e);
                lease_error(unavailable(e), Some(lease))
            })?;
        Ok(())
    }

    async fn revision(&self) -> Result<u64> {
        // A get of an unused key returns the store revision in its header.
        let resp = self
            .retry("revision", |mut c| async move {
                c.get("\0trackwire-revision-probe", None).await
            })
            .await?;
        Ok(header_revision(resp.header()))
    }

    fn epoch(&self) -> u64 {
        self.cluster_id
    }
}

/// etcd reports a missing lease as an error string; map it to `LeaseNotFound`.
fn lease_error(e: StoreError, lease: Option<LeaseId>) -> StoreError {
    match (&e, lease) {
        (StoreError::Unavailable(m), Some(l)) if m.contains("lease not found") => {
            StoreError::LeaseNotFound(l)
        }
        _ => e,
    }
}
