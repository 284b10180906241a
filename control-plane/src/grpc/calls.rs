//! gRPC calls by service, method and code: a tower layer in front of every
//! service (outside the role table, so refused calls count) that records
//! each call's status once — from the response headers (errors, and
//! `Unauthenticated`/`PermissionDenied` from the role table) or from the
//! trailers when the response body ends (`Cancelled` when the client goes
//! away first). Exported as `trackwire_grpc_server_handled_total{grpc_service,
//! grpc_method,grpc_code}`, the name go-grpc-prometheus made familiar.
//!
//! Labels are bounded: a path that is not one of [`METHODS`] counts as
//! `unknown`/`unknown`, so a client inventing method names cannot grow the
//! series. Counting is a relaxed add into a fixed table: no lock.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use trackwire_core::metrics::{DescriptorEncoder, counters};

/// Every method served, as `(service, method)`.
pub const METHODS: [(&str, &str); 17] = [
    ("trackwire.v1.ProbeService", "Connect"),
    ("trackwire.v1.HealthMapService", "Subscribe"),
    ("trackwire.v1.AdminService", "ApplyPools"),
    ("trackwire.v1.AdminService", "ListPools"),
    ("trackwire.v1.AdminService", "GetPool"),
    ("trackwire.v1.AdminService", "DeletePool"),
    ("trackwire.v1.AdminService", "WatchEvents"),
    ("trackwire.v1.AdminService", "GetHealth"),
    ("trackwire.v1.AdminService", "SetBackendState"),
    ("trackwire.v1.AdminService", "ListAgents"),
    ("trackwire.v1.AdminService", "ListSubscribers"),
    (
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "StreamAggregatedResources",
    ),
    (
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "DeltaAggregatedResources",
    ),
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
];

/// The row of unknown paths.
const UNKNOWN: usize = METHODS.len();
/// gRPC status codes 0..=16.
const CODES: usize = 17;

/// Counts per (method, code).
#[derive(Debug)]
pub struct Calls {
    counts: [[AtomicU64; CODES]; METHODS.len() + 1],
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Calls {
    fn record(&self, method: usize, code: i32) {
        let code = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES)
            .unwrap_or(2);
        self.counts[method][code].fetch_add(1, Relaxed);
    }

    /// The count for `(service, method)` and `code`.
    pub fn get(&self, service: &str, method: &str, code: tonic::Code) -> u64 {
        let i = METHODS
            .iter()
            .position(|m| *m == (service, method))
            .unwrap_or(UNKNOWN);
        self.counts[i][code as usize].load(Relaxed)
    }

    /// Encodes the non-zero counts.
    pub fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let rows = self.counts.iter().enumerate().flat_map(|(i, row)| {
            let (service, method) = METHODS.get(i).copied().unwrap_or(("unknown", "unknown"));
            row.iter().enumerate().filter_map(move |(code, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| {
                    (
                        [
                            ("grpc_service", service),
                            ("grpc_method", method),
                            ("grpc_code", code_name(code)),
                        ],
                        n,
                    )
                })
            })
        });
        counters(
            e,
            "trackwire_grpc_server_handled",
            "gRPC calls completed, by service, method and status code.",
            rows,
        )
    }
}

fn code_name(code: usize) -> &'static str {
    const NAMES: [&str; CODES] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code).copied().unwrap_or("Unknown")
}

fn method_index(path: &str) -> usize {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(service), Some(method)) = (parts.next(), parts.next()) else {
        return UNKNOWN;
    };
    METHODS
        .iter()
        .position(|m| *m == (service, method))
        .unwrap_or(UNKNOWN)
}

/// The layer; see the module docs.
#[derive(Clone)]
pub struct CallsLayer(pub Arc<crate::metrics::Metrics>);

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_index(req.uri().path());
        let metrics = Arc::clone(&self.metrics);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(code) = status_of(resp.headers()) {
                metrics.calls.record(method, code);
                return Ok(resp);
            }
            Ok(resp.map(|body| {
                tonic::body::Body::new(CountedBody {
                    inner: body,
                    pending: Some((metrics, method)),
                })
            }))
        })
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that records the call's status from its trailers, or
/// `Cancelled` when dropped before them.
struct CountedBody {
    inner: tonic::body::Body,
    pending: Option<(Arc<crate::metrics::Metrics>, usize)>,
}

impl CountedBody {
    fn finish(&mut self, code: i32) {
        if let Some((metrics, method)) = self.pending.take() {
            metrics.calls.record(method, code);
        }
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled as i32);
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(s))) => self.finish(s.code() as i32),
            // Ended without trailers: nothing said otherwise.
            Poll::Ready(None) => self.finish(tonic::Code::Ok as i32),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn methods_are_every_trackwire_method() {
        let set = prost_types::FileDescriptorSet::decode(trackwire_proto::v1::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut served: Vec<(String, String)> = Vec::new();
        for f in &set.file {
            for s in &f.service {
                for m in &s.method {
                    served.push((format!("{}.{}", f.package(), s.name()), m.name().to_owned()));
                }
            }
        }
        let listed: Vec<(String, String)> = METHODS
            .iter()
            .filter(|(s, _)| s.starts_with("trackwire."))
            .map(|(s, m)| ((*s).to_owned(), (*m).to_owned()))
            .collect();
        served.sort();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(served, listed_sorted);
    }

    #[test]
    fn unknown_paths_share_one_row() {
        assert_eq!(method_index("/trackwire.v1.AdminService/GetHealth"), 7);
        assert_eq!(method_index("/trackwire.v1.AdminService/Nope"), UNKNOWN);
        assert_eq!(method_index("garbage"), UNKNOWN);
        let c = Calls::default();
        c.record(UNKNOWN, 12);
        c.record(UNKNOWN, 99);
        assert_eq!(c.get("x", "y", tonic::Code::Unimplemented), 1);
        assert_eq!(c.get("x", "y", tonic::Code::Unknown), 1);
    }
}
