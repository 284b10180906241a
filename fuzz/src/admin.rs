//! `admin_request`: `AdminService` requests (the CLI's `apply`, `drain`,
//! `delete`, `events`, or any gRPC client reaching the port).

use prost::Message;
use trackwire_control_plane::grpc::admin::{requested_state, validate_pools};
use trackwire_control_plane::grpc::validate_pool_filter;
use trackwire_control_plane::keys;
use trackwire_core::PoolSpec;
use trackwire_core::config::Document;
use trackwire_core::convert::{pool_encoded_len, pool_to_pb};
use trackwire_core::limits::MAX_POOL_SPEC_BYTES;
use trackwire_core::model::validate_name;
use trackwire_proto::v1 as pb;

/// The first byte picks the request (`0` `ApplyPoolsRequest`, `1`
/// `SetBackendStateRequest`, `2` `DeletePoolRequest`, `3`
/// `WatchEventsRequest`, modulo 4); the rest is that request, encoded.
/// Pools the service would accept are stored and served to agents and
/// proxies: they must survive the store's encoding, the wire and the TOML
/// document (`trackwire get pools -o toml`, `apply` of it) unchanged, and
/// fit one etcd value.
pub fn admin_request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let Ok(req) = pb::ApplyPoolsRequest::decode(body) else {
                return;
            };
            let Ok(specs) = validate_pools(&req.pools) else {
                return;
            };
            for spec in &specs {
                check_pool(spec);
            }
            let doc = Document {
                pools: specs,
                listeners: Vec::new(),
            };
            crate::config::check_round_trip(&doc);
        }
        1 => {
            let Ok(req) = pb::SetBackendStateRequest::decode(body) else {
                return;
            };
            match requested_state(req.state) {
                Ok(None) => assert_eq!(req.state, pb::AdminState::Unspecified as i32),
                Ok(Some(s)) => assert_eq!(trackwire_core::convert::admin_to_pb(s), req.state),
                Err(_) => assert!(pb::AdminState::try_from(req.state).is_err()),
            }
        }
        2 => {
            let Ok(req) = pb::DeletePoolRequest::decode(body) else {
                return;
            };
            let _ = validate_name(&req.name);
        }
        _ => {
            let Ok(req) = pb::WatchEventsRequest::decode(body) else {
                return;
            };
            if validate_pool_filter(&req.pools).is_ok() {
                assert!(req.pools.iter().all(|p| !p.contains('/')));
            }
        }
    }
}

/// A valid pool survives the wire and the store's value encoding, and fits
/// one etcd value.
fn check_pool(spec: &PoolSpec) {
    let wire = pool_to_pb(spec);
    match PoolSpec::try_from(&wire) {
        Ok(back) => assert_eq!(&back, spec, "the wire changed a valid pool"),
        Err(e) => panic!("a valid pool does not convert back from the wire: {e}\n{spec:?}"),
    }
    assert!(
        pool_encoded_len(spec) <= MAX_POOL_SPEC_BYTES,
        "a valid pool is over the size limit"
    );
    match keys::decode_pool(&keys::encode_pool(wire.clone())) {
        Ok(stored) => assert_eq!(stored, wire, "the store's encoding changed a pool"),
        Err(e) => panic!("a stored pool does not decode: {e}"),
    }
}
