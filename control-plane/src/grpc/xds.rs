//! Envoy's Aggregated Discovery Service, state of the world
//! (`StreamAggregatedResources`): Envoy and proxyless gRPC clients follow
//! the health map as xDS resources (built by [`crate::xds`]). Under the
//! same authentication as `Subscribe`: role `proxy`, and a certificate
//! bound to a name may speak only as the node of that id.
//!
//! Per stream and per resource type the stream keeps what it subscribed
//! to (explicit names, or every resource: the wildcard of listeners and
//! clusters when no name is given, or `*`), the hash of each resource it
//! last sent and the nonce of its last response:
//!
//! - a request whose `response_nonce` is not the last one sent is stale
//!   and ignored, as the protocol asks;
//! - a request with `error_detail` is a NACK: logged with the client's
//!   message and counted; nothing is resent until a resource changes, and
//!   the client keeps its last accepted version;
//! - a response goes out only when the stream can take it, built from the
//!   newest resources, so a slow client skips intermediate states as a
//!   slow `Subscribe` does;
//! - listeners and clusters are sent whole, endpoints and routes only
//!   where they changed (or were newly asked for), at most about
//!   [`RESPONSE_BUDGET`] per response; a requested name that does not
//!   exist is left out, for the client's does-not-exist timer;
//! - an empty list of names means every listener or cluster only until
//!   the client names one (then it means none), as the protocol says.
//!
//! Nothing is answered before the replica has loaded the whole map, so a
//! reconnecting client never receives an empty assignment. Delta xDS is
//! not served (`Unimplemented`); clients fall back to state of the world
//! when configured with `ADS`/`GRPC`.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use trackwire_core::time::now_ms;
use trackwire_proto::v1 as pb;

use crate::metrics::Metrics;
use crate::subscribers::Subscribers;
use crate::xds::{Kind, Resources, ResourcesRx};

pub struct XdsSvc {
    pub resources: ResourcesRx,
    pub metrics: Arc<Metrics>,
    pub subscribers: Arc<Subscribers>,
    pub shutdown: CancellationToken,
}

/// Names a stream may subscribe to per type.
pub const MAX_RESOURCE_NAMES: usize = 10_000;
/// How long a new stream may take to send its first request (naming its node).
pub const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Encoded resources per endpoints or routes response, roughly: more go
/// out in the next response (gRPC clients refuse messages over 4 MiB by
/// default). Listeners and clusters are sent whole.
pub const RESPONSE_BUDGET: usize = 2 << 20;

type AdsStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsSvc {
    type StreamAggregatedResourcesStream = AdsStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<AdsStream>, Status> {
        let peer = super::peer_addr(&request);
        let caller = super::caller(&request);
        let mut inbound = request.into_inner();
        // The first request names the node: checked before anything is sent.
        let first = tokio::select! {
            r = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()) => r
                .map_err(|_| Status::deadline_exceeded(format!(
                    "no first request within {FIRST_REQUEST_TIMEOUT:?}"
                )))??,
            () = self.shutdown.cancelled() => return Err(Status::unavailable("control plane shutting down")),
        }
        .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let node = first.node.clone().unwrap_or_default();
        if node.id.is_empty() {
            return Err(Status::invalid_argument(
                "node.id: the first request must name the node",
            ));
        }
        if node.id.len() > 253 {
            return Err(Status::invalid_argument("node.id: at most 253 bytes"));
        }
        if let Some(name) = super::bound_name(&caller)
            && node.id != name
        {
            return Err(Status::permission_denied(format!(
                "node.id {:?}: the certificate {caller} may subscribe only as {name:?}",
                node.id
            )));
        }
        let mut labels = BTreeMap::from([("xds".to_owned(), "ads".to_owned())]);
        if !node.cluster.is_empty() {
            labels.insert(
                "xds.cluster".into(),
                node.cluster.chars().take(253).collect(),
            );
        }
        let id = self.subscribers.add(pb::SubscriberInfo {
            proxy_id: node.id.clone(),
            peer,
            labels: labels.into_iter().collect(),
            connected_ms: now_ms(),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel(1);
        let span = info_span!("xds_stream", node = %node.id);
        let stream = AdsSession {
            id,
            subs: Default::default(),
            nonce: 0,
            metrics: Arc::clone(&self.metrics),
            subscribers: Arc::clone(&self.subscribers),
        };
        let resources = self.resources.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                stream.run(first, inbound, tx, resources, shutdown).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "Delta xDS is not served: use state-of-the-world ADS (api_type: GRPC)",
        ))
    }
}

/// What a stream subscribed to for one type.
#[derive(Debug, Default)]
struct Sub {
    /// `None`: every resource of the type.
    names: Option<BTreeSet<String>>,
    /// Hash of each resource as last sent.
    sent: BTreeMap<String, u64>,
    /// Nonce of the last response (empty: none sent yet).
    nonce: String,
    /// It named resources once: an empty list no longer means every
    /// listener or cluster, but none.
    explicit: bool,
}

impl Sub {
    fn wants(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|n| n.contains(name))
    }

    /// The resources to send now, or `None` when the client has them all.
    fn pending<'r>(
        &self,
        kind: Kind,
        res: &'r Resources,
    ) -> Option<Vec<(&'r String, &'r crate::xds::Resource)>> {
        let current: Vec<_> = res
            .of(kind)
            .iter()
            .filter(|(name, _)| self.wants(name))
            .map(|(n, r)| (n, r.as_ref()))
            .collect();
        if kind.full_state() {
            let same = self.sent.len() == current.len()
                && current
                    .iter()
                    .all(|(n, r)| self.sent.get(*n) == Some(&r.hash));
            // The first response goes out even when empty: a client waits
            // for it to finish its initialization.
            (!same || self.nonce.is_empty()).then_some(current)
        } else {
            let changed: Vec<_> = current
                .into_iter()
                .filter(|(n, r)| self.sent.get(*n) != Some(&r.hash))
                .collect();
            (!changed.is_empty()).then_some(changed)
        }
    }
}

struct AdsSession {
    id: u64,
    subs: [Option<Sub>; 4],
    nonce: u64,
    metrics: Arc<Metrics>,
    subscribers: Arc<Subscribers>,
}

impl AdsSession {
    async fn run(
        mut self,
        first: DiscoveryRequest,
        mut inbound: impl Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        mut resources: ResourcesRx,
        shutdown: CancellationToken,
    ) {
        self.metrics.xds_streams.inc();
        info!("xDS client connected");
        if let Err(e) = self.handle(first) {
            let _ = tx.send(Err(e)).await;
            self.end();
            return;
        }
        loop {
            // Never answer from a partial view (see the module docs).
            let current = resources.borrow_and_update().clone();
            let next = current
                .as_ref()
                .and_then(|res| Kind::ALL.into_iter().find(|k| self.has_pending(*k, res)));
            if next.is_none()
                && let Some(res) = &current
            {
                self.subscribers.synced(self.id, res.revision);
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => {
                        if let Err(e) = self.handle(req) {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    }
                    None => break,
                    Some(Err(e)) => {
                        debug!(error = %e, "xDS stream ended");
                        break;
                    }
                },
                r = resources.changed() => if r.is_err() { break },
                permit = tx.reserve(), if next.is_some() => {
                    let Ok(permit) = permit else { break };
                    // The newest resources, whatever `next` was computed from.
                    let res = resources.borrow_and_update().clone();
                    if let (Some(kind), Some(res)) = (next, res)
                        && let Some(resp) = self.respond(kind, &res)
                    {
                        let bytes = resp.encoded_len();
                        permit.send(Ok(resp));
                        self.subscribers.sent(self.id, res.revision, bytes, now_ms());
                    }
                }
            }
        }
        self.end();
    }

    fn end(&self) {
        self.subscribers.remove(self.id);
        self.metrics.xds_streams.dec();
        info!("xDS client gone");
    }

    fn has_pending(&self, kind: Kind, res: &Resources) -> bool {
        self.subs[kind as usize]
            .as_ref()
            .is_some_and(|s| s.pending(kind, res).is_some())
    }

    /// The response for `kind` from `res` (recorded as sent), if any is due.
    fn respond(&mut self, kind: Kind, res: &Resources) -> Option<DiscoveryResponse> {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let sub = self.subs[kind as usize].as_mut()?;
        let pending = sub.pending(kind, res)?;
        if kind.full_state() {
            sub.sent.clear();
        }
        let mut out = Vec::with_capacity(pending.len());
        let mut bytes = 0;
        for (name, r) in pending {
            // What does not fit stays pending, for the next response.
            if !kind.full_state() && !out.is_empty() && bytes + r.any.value.len() > RESPONSE_BUDGET
            {
                break;
            }
            bytes += r.any.value.len();
            sub.sent.insert(name.clone(), r.hash);
            out.push(r.any.clone());
        }
        // Forget what no longer exists, so it is sent again if it returns.
        sub.sent.retain(|n, _| res.of(kind).contains_key(n));
        sub.nonce.clone_from(&nonce);
        self.metrics.xds_responses[kind as usize].inc();
        debug!(kind = kind.name(), version = %res.version, %nonce, resources = out.len(), "xDS response");
        Some(DiscoveryResponse {
            version_info: res.version.clone(),
            resources: out,
            type_url: kind.type_url(),
            nonce,
            ..Default::default()
        })
    }

    /// Applies one request: ACK, NACK or a (new) subscription.
    fn handle(&mut self, req: DiscoveryRequest) -> Result<(), Status> {
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            // Types this server does not serve (secrets, runtime, …) get no
            // answer, as from a server that has none of them.
            debug!(type_url = %req.type_url, "xDS request for a type not served");
            return Ok(());
        };
        if req.resource_names.len() > MAX_RESOURCE_NAMES {
            return Err(Status::invalid_argument(format!(
                "resource_names: at most {MAX_RESOURCE_NAMES}"
            )));
        }
        if let Some(n) = req.resource_names.iter().find(|n| n.len() > 253) {
            return Err(Status::invalid_argument(format!(
                "resource_names: {:?}… is longer than 253 bytes",
                n.chars().take(32).collect::<String>()
            )));
        }
        // A nonce other than the last one sent is stale: ignored. Before
        // anything was sent of this type any nonce is accepted (a client's
        // first request on a new stream may carry one from the last).
        let sent_nonce = self.subs[kind as usize]
            .as_ref()
            .map_or("", |s| s.nonce.as_str());
        if !req.response_nonce.is_empty()
            && !sent_nonce.is_empty()
            && req.response_nonce != sent_nonce
        {
            debug!(kind = kind.name(), nonce = %req.response_nonce, "stale xDS request ignored");
            return Ok(());
        }
        let sub = self.subs[kind as usize].get_or_insert_with(Sub::default);
        if !req.response_nonce.is_empty() && req.response_nonce == sub.nonce {
            if let Some(detail) = &req.error_detail {
                self.metrics.xds_nacks[kind as usize].inc();
                // The stream's span names the node.
                warn!(
                    kind = kind.name(),
                    rejected_nonce = %req.response_nonce,
                    kept_version = %req.version_info,
                    error = %detail.message,
                    "xDS client rejected a response (NACK); it keeps its last accepted version"
                );
            } else {
                debug!(kind = kind.name(), version = %req.version_info, "xDS ACK");
            }
        }
        // Legacy wildcard: listeners and clusters with no name, until the
        // client names one; `*` for any type.
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (kind.full_state() && req.resource_names.is_empty() && !sub.explicit);
        if !req.resource_names.is_empty() && !wildcard {
            sub.explicit = true;
        }
        let names =
            (!wildcard).then(|| req.resource_names.iter().cloned().collect::<BTreeSet<_>>());
        if names != sub.names {
            // Unsubscribed names are forgotten, so they are sent again if
            // asked for again.
            if let Some(n) = &names {
                sub.sent.retain(|k, _| n.contains(k));
            }
            sub.names = names;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use tokio::sync::watch;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    type Res = Option<Arc<Resources>>;

    struct Harness {
        requests: mpsc::UnboundedSender<Result<DiscoveryRequest, Status>>,
        responses: mpsc::Receiver<Result<DiscoveryResponse, Status>>,
        resources: watch::Sender<Res>,
        metrics: Arc<Metrics>,
        _stop: tokio_util::sync::DropGuard,
    }

    fn eds(names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: Kind::Endpoints.type_url(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn start(first: DiscoveryRequest, initial: Resources) -> Harness {
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::channel(1);
        let (res_tx, res_rx) = watch::channel(Some(Arc::new(initial)));
        let metrics = Arc::new(Metrics::default());
        let subscribers = Arc::new(Subscribers::default());
        let stop = CancellationToken::new();
        let session = AdsSession {
            id: subscribers.add(Default::default()),
            subs: Default::default(),
            nonce: 0,
            metrics: Arc::clone(&metrics),
            subscribers,
        };
        tokio::spawn(session.run(
            first,
            UnboundedReceiverStream::new(req_rx),
            tx,
            res_rx,
            stop.clone(),
        ));
        Harness {
            requests: req_tx,
            responses: rx,
            resources: res_tx,
            metrics,
            _stop: stop.drop_guard(),
        }
    }

    impl Harness {
        async fn recv(&mut self) -> DiscoveryResponse {
            tokio::time::timeout(std::time::Duration::from_secs(5), self.responses.recv())
                .await
                .expect("a response within 5 s")
                .expect("stream open")
                .expect("not an error")
        }

        fn publish(&self, revision: u64, endpoints: &[(&str, &str)]) {
            self.resources
                .send_replace(Some(Arc::new(Resources::for_test(revision, endpoints))));
        }

        fn send(&self, req: DiscoveryRequest) {
            self.requests.send(Ok(req)).expect("session running");
        }
    }

    /// The resources in a response, as their (test) encodings.
    fn values(r: &DiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn answers_only_the_names_asked_and_only_what_changed() {
        let mut h = start(
            eds(&["a"], ""),
            Resources::for_test(1, &[("a", "a1"), ("b", "b1")]),
        );
        let r = h.recv().await;
        assert_eq!(
            (values(&r), r.version_info.as_str()),
            (vec!["a1".into()], "1.1")
        );
        h.send(DiscoveryRequest {
            version_info: r.version_info.clone(),
            ..eds(&["a"], &r.nonce)
        });
        // Only b changes at 2 (nothing is due); a at 3: the next response
        // is 3's, so none was sent for 2.
        h.publish(2, &[("a", "a1"), ("b", "b2")]);
        h.publish(3, &[("a", "a3"), ("b", "b2")]);
        let r = h.recv().await;
        assert_eq!(
            (values(&r), r.version_info.as_str()),
            (vec!["a3".into()], "1.3")
        );

        // A request with a stale nonce is ignored; with the current one,
        // the newly asked name is sent (alone: a did not change).
        h.send(eds(&["a", "b"], "1"));
        h.send(eds(&["a", "b"], &r.nonce));
        let r = h.recv().await;
        assert_eq!(values(&r), ["b2"]);
        // Unsubscribing from a: its changes are not sent.
        h.send(eds(&["b"], &r.nonce));
        h.publish(4, &[("a", "a4"), ("b", "b2")]);
        h.publish(5, &[("a", "a4"), ("b", "b5")]);
        assert_eq!(values(&h.recv().await), ["b5"]);
    }

    #[tokio::test]
    async fn a_nack_is_counted_and_nothing_is_resent_until_a_change() {
        let mut h = start(eds(&["a"], ""), Resources::for_test(1, &[("a", "a1")]));
        let r = h.recv().await;
        h.send(DiscoveryRequest {
            version_info: String::new(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "endpoint address is not an IP".into(),
                ..Default::default()
            }),
            ..eds(&["a"], &r.nonce)
        });
        h.publish(2, &[("a", "a2")]);
        let r2 = h.recv().await;
        assert_eq!(values(&r2), ["a2"], "the next response is the next change");
        assert_eq!(h.metrics.xds_nacks[Kind::Endpoints as usize].get(), 1);
        assert_eq!(h.metrics.xds_responses[Kind::Endpoints as usize].get(), 2);
    }

    #[tokio::test]
    async fn a_slow_client_skips_intermediate_states() {
        let mut h = start(eds(&["a"], ""), Resources::for_test(1, &[("a", "a1")]));
        let mut got = vec![values(&h.recv().await)[0].clone()];
        // Not read while four changes land: the stream holds at most one
        // response, and the next is built from the newest state.
        for rev in 2..=5 {
            h.publish(rev, &[("a", &format!("a{rev}"))]);
        }
        loop {
            let v = values(&h.recv().await)[0].clone();
            got.push(v.clone());
            if v == "a5" {
                break;
            }
        }
        assert!(got.len() <= 3, "intermediate states were queued: {got:?}");
        // Nothing else is queued behind a5: the next response is 6's.
        h.publish(6, &[("a", "a6")]);
        assert_eq!(values(&h.recv().await), ["a6"]);
    }

    #[tokio::test]
    async fn an_empty_list_after_names_unsubscribes_from_every_cluster() {
        let cds = |names: &[&str], nonce: &str| DiscoveryRequest {
            type_url: Kind::Cluster.type_url(),
            ..eds(names, nonce)
        };
        let clusters = |rev| {
            Resources::for_test_kind(Kind::Cluster, rev, &[("a", &format!("a{rev}")), ("b", "b")])
        };
        // No name: every cluster.
        let mut h = start(cds(&[], ""), clusters(1));
        let r = h.recv().await;
        assert_eq!(values(&r), ["a1", "b"]);
        // Named: only that one (a narrowing needs no response).
        h.send(cds(&["a"], &r.nonce));
        h.resources.send_replace(Some(Arc::new(clusters(2))));
        let r = h.recv().await;
        assert_eq!(values(&r), ["a2"]);
        // Having named one, an empty list means none: a changes at 3 and
        // nothing is sent; the next response is what b's subscription asks.
        h.send(cds(&[], &r.nonce));
        h.resources.send_replace(Some(Arc::new(clusters(3))));
        h.send(cds(&["b"], &r.nonce));
        assert_eq!(values(&h.recv().await), ["b"]);
    }

    #[tokio::test]
    async fn a_first_request_with_an_old_nonce_subscribes_to_what_it_names() {
        let mut h = start(
            eds(&["a"], "41"),
            Resources::for_test(1, &[("a", "a1"), ("b", "b1")]),
        );
        assert_eq!(values(&h.recv().await), ["a1"]);
    }

    #[tokio::test]
    async fn large_endpoint_updates_are_split_across_responses() {
        let big = |c: char| c.to_string().repeat(RESPONSE_BUDGET * 3 / 4);
        let (a, b) = (big('a'), big('b'));
        let mut h = start(
            eds(&["a", "b"], ""),
            Resources::for_test(1, &[("a", &a), ("b", &b)]),
        );
        let r1 = h.recv().await;
        let r2 = h.recv().await;
        assert_eq!((r1.resources.len(), r2.resources.len()), (1, 1));
        assert_ne!(r1.nonce, r2.nonce);
    }

    #[tokio::test]
    async fn listeners_and_clusters_are_sent_whole_and_first_even_when_empty() {
        let mut h = start(
            DiscoveryRequest {
                type_url: Kind::Cluster.type_url(),
                ..Default::default()
            },
            Resources::for_test(1, &[("a", "a1")]),
        );
        let r = h.recv().await;
        assert_eq!(r.type_url, Kind::Cluster.type_url());
        assert!(r.resources.is_empty(), "no pool asks for gRPC resources");
    }
}
