//! gRPC adapters: convert wire types at the edge, map domain and store
//! errors to `tonic::Status`, and end long-lived streams on shutdown.

pub mod admin;
pub mod healthmap;
pub mod probe;

use tonic::Status;

/// Checks a pool filter (`SubscribeRequest.pools`, `WatchEventsRequest.pools`):
/// each a valid pool name.
pub fn validate_pool_filter(pools: &[String]) -> Result<(), Status> {
    for (i, p) in pools.iter().enumerate() {
        trackwire_core::model::validate_name(p)
            .map_err(|e| Status::invalid_argument(format!("pools[{i}]: {e}")))?;
    }
    Ok(())
}
