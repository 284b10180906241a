//! `map_delta`: the health-map stream as a proxy receives it
//! (`data-plane/src/subscribe.rs`): each `HealthMapUpdate` is converted
//! with `PoolUpdate::try_from` and folded by the `Assembler`, whose result
//! routing reads. A proxy trusts the control plane it is pointed at, but a
//! bug or a man in the middle must not crash it.

use std::net::{IpAddr, Ipv4Addr};

use prost::Message;
use trackwire_core::config::{Balance, NoBackend};
use trackwire_core::{HealthMap, PoolUpdate};
use trackwire_data_plane::assemble::{Assembler, Held, Message as Update};
use trackwire_data_plane::balance::Balancer;
use trackwire_data_plane::routing::candidates;
use trackwire_proto::v1 as pb;

/// The pools a proxy serves, picked by the first byte (empty: all pools).
const FILTERS: [&[&str]; 4] = [&[], &["web"], &["web", "api"], &["a", "b", "web"]];

/// The first byte picks the served pools and the held map (an empty one,
/// or one whose pools are partly stale); the rest is length-delimited
/// `HealthMapUpdate`s, folded in order. Every complete result is
/// consistent: only served pools, stale pools present, the message's
/// revision, a diff from the held map that rebuilds it, and routing that
/// picks only candidates.
pub fn map_delta(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let filter: Vec<String> = FILTERS[usize::from(first & 3)]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut held = if first & 4 != 0 {
        stale_start(&filter)
    } else {
        Held::default()
    };
    let mut asm = Assembler::new(filter.clone());
    while !rest.is_empty() {
        let Ok(msg) = pb::HealthMapUpdate::decode_length_delimited(&mut rest) else {
            return;
        };
        let Ok(pools) = msg
            .pools
            .iter()
            .map(PoolUpdate::try_from)
            .collect::<Result<Vec<_>, _>>()
        else {
            // The proxy drops the stream on an invalid update.
            return;
        };
        let update = Update {
            epoch: msg.epoch,
            revision: msg.revision,
            snapshot: msg.snapshot,
            more: msg.more,
            pools,
        };
        let Some(new) = asm.push(&held, update) else {
            continue;
        };
        check(&held, &new, &filter, &msg);
        held = new;
    }
}

fn check(old: &Held, new: &Held, filter: &[String], msg: &pb::HealthMapUpdate) {
    let map = &new.map;
    assert_eq!((map.epoch, map.revision), (msg.epoch, msg.revision));
    for name in map.pools.keys() {
        assert!(
            trackwire_core::map::wants(filter, name),
            "pool {name:?} is not served"
        );
    }
    for s in &new.stale {
        assert!(
            map.pools.contains_key(s),
            "stale pool {s:?} is not in the map"
        );
    }
    for pool in map.pools.values() {
        for (name, e) in pool.iter() {
            assert_eq!(name, &e.backend, "an endpoint under another name");
        }
    }
    // The control plane's diff from what was held rebuilds the new map.
    let mut rebuilt = HealthMap::clone(&old.map);
    rebuilt.apply(&map.diff_from(&old.map, &[]));
    rebuilt.epoch = map.epoch;
    rebuilt.revision = map.revision;
    assert_eq!(&rebuilt, map.as_ref(), "diff and apply disagree");
    route(map);
}

/// Every listener policy picks, if anything, one of its candidates.
fn route(map: &HealthMap) {
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    for pool in map.pools.keys() {
        for policy in [NoBackend::Refuse, NoBackend::Panic] {
            let eps = candidates(map, pool, policy);
            for algorithm in [
                Balance::RoundRobin,
                Balance::LeastConn,
                Balance::Random,
                Balance::Source,
            ] {
                let mut b = Balancer::new(algorithm);
                for units in [(0.0, 0.5), (0.999, 0.1)] {
                    let pick = b.pick(&eps, &[], client, |_| 0, units);
                    assert_eq!(pick.is_some(), !eps.is_empty());
                    if let Some(i) = pick {
                        assert!(i < eps.len(), "picked {i} of {}", eps.len());
                    }
                }
            }
        }
    }
}

/// A held map from an earlier epoch whose served pools are flagged stale.
fn stale_start(filter: &[String]) -> Held {
    use std::sync::Arc;
    use trackwire_core::Endpoint;
    let pools = ["web", "api", "a"]
        .iter()
        .filter(|p| trackwire_core::map::wants(filter, p))
        .map(|p| {
            let eps = [("x", "127.0.0.1:1"), ("y", "127.0.0.1:2")]
                .iter()
                .map(|(b, a)| (b.to_string(), Endpoint::up(*b, *a)))
                .collect();
            (p.to_string(), Arc::new(eps))
        })
        .collect();
    let map = HealthMap {
        epoch: 1,
        revision: 5,
        pools,
    };
    let stale = map
        .pools
        .keys()
        .filter(|p| p.as_str() != "api")
        .cloned()
        .collect();
    Held {
        map: Arc::new(map),
        stale,
    }
}
