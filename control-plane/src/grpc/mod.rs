//! gRPC adapters: convert wire types at the edge, map domain and store
//! errors to `tonic::Status`, and end long-lived streams on shutdown.

pub mod admin;
pub mod calls;
pub mod healthmap;
pub mod probe;
pub mod xds;

use tonic::Status;
use trackwire_transport::auth::{Allow, Rule};
use trackwire_transport::{Caller, Peer, Role};

/// Who may call what on the control plane's gRPC port; any method not
/// listed is denied. Enforced by `trackwire_transport::AuthLayer` before a
/// request reaches a service.
pub const ROLE_TABLE: &[Rule] = &[
    ("/trackwire.v1.AdminService/", Allow::Roles(&[Role::Admin])),
    (
        "/trackwire.v1.ProbeService/Connect",
        Allow::Roles(&[Role::Agent]),
    ),
    (
        "/trackwire.v1.HealthMapService/Subscribe",
        Allow::Roles(&[Role::Proxy]),
    ),
    (
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/",
        Allow::Roles(&[Role::Proxy]),
    ),
    ("/grpc.health.v1.Health/", Allow::AnyPeer),
    ("/grpc.reflection.v1.ServerReflection/", Allow::AnyPeer),
    ("/grpc.reflection.v1alpha.ServerReflection/", Allow::AnyPeer),
];

/// The caller the auth layer established (anonymous when a request did not
/// pass through it, as in unit tests).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}

/// The peer's address, for logs and listings.
pub fn peer_addr<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Peer>()
        .map(|p| p.addr.to_string())
        .or_else(|| request.remote_addr().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// The name a caller's certificate binds it to (agents and proxies speak
/// only for themselves); `None` without a certificate.
pub fn bound_name(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Peer(id) => Some(&id.name),
        _ => None,
    }
}

/// Checks a pool filter (`SubscribeRequest.pools`, `WatchEventsRequest.pools`):
/// each a valid pool name.
pub fn validate_pool_filter(pools: &[String]) -> Result<(), Status> {
    for (i, p) in pools.iter().enumerate() {
        trackwire_core::model::validate_name(p)
            .map_err(|e| Status::invalid_argument(format!("pools[{i}]: {e}")))?;
    }
    Ok(())
}
