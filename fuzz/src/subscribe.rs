//! `subscribe_request`: what a proxy (or anyone reaching the port) sends to
//! `HealthMapService.Subscribe`.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use trackwire_control_plane::grpc::healthmap::validate_subscribe;
use trackwire_core::map::{PoolMap, wants};
use trackwire_core::{Endpoint, HealthMap};
use trackwire_proto::v1 as pb;

/// Decodes one `SubscribeRequest` and validates it as the service does. For
/// a valid one, the snapshot it would get names only the pools it asked
/// for, and applied to an empty map it rebuilds exactly those pools.
pub fn subscribe_request(data: &[u8]) {
    let Ok(req) = pb::SubscribeRequest::decode(data) else {
        return;
    };
    if validate_subscribe(&req).is_err() {
        return;
    }
    assert!(req.proxy_id.len() <= 253 && req.labels.len() <= 32);
    let map = sample_map();
    let snapshot = map.snapshot(&req.pools);
    assert!(
        snapshot
            .iter()
            .all(|u| wants(&req.pools, &u.pool) && !u.removed)
    );
    let mut rebuilt = HealthMap::default();
    rebuilt.apply(&snapshot);
    let mut expected = map.clone();
    expected.retain(&req.pools);
    assert_eq!(rebuilt.pools, expected.pools);
}

/// Three pools (`web`, `api`, `db`), some endpoints down.
fn sample_map() -> HealthMap {
    let pool = |names: &[&str]| -> Arc<PoolMap> {
        Arc::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let e = Endpoint {
                        state: if i % 2 == 0 {
                            trackwire_core::HealthState::Up
                        } else {
                            trackwire_core::HealthState::Down
                        },
                        ..Endpoint::up(*n, format!("10.0.0.{i}:80"))
                    };
                    (n.to_string(), e)
                })
                .collect(),
        )
    };
    HealthMap {
        epoch: 7,
        revision: 42,
        pools: BTreeMap::from([
            ("web".to_string(), pool(&["w1", "w2", "w3"])),
            ("api".to_string(), pool(&["a1"])),
            ("db".to_string(), pool(&["d1", "d2"])),
        ]),
    }
}
