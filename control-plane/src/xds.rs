//! The health map as xDS resources, for Envoy and proxyless gRPC clients
//! (served by `grpc::xds`).
//!
//! Every pool is one `ClusterLoadAssignment` named after it:
//!
//! | trackwire | xDS endpoint |
//! |---|---|
//! | UP, `ready`, weight > 0 | `HEALTHY` |
//! | DOWN | `UNHEALTHY`, still listed: a host that vanishes from discovery but passes the proxy's own checks would still be routed to |
//! | `drain` (or weight 0) | `DRAINING`: no new connections, existing ones kept |
//! | `maint` | not listed |
//! | weight | `load_balancing_weight` (at least 1) |
//! | zone | the locality's `zone`; localities weigh the sum of their healthy endpoints' weights (at least 1) |
//! | backup | priority 1 (priority 0 when the pool lists no other backend); the overprovisioning factor keeps priority 0 whole while any of it is healthy |
//!
//! A backend whose address is a name, or repeats one already listed, is
//! left out (xDS clients reject both), with a warning.
//!
//! A pool with `grpc_xds` also gets the `Listener` (an API listener whose
//! HTTP connection manager takes its routes over ADS and ends in the
//! router filter), `RouteConfiguration` (every path to the cluster) and
//! `Cluster` (EDS over ADS, round robin) a gRPC client resolving
//! `xds:///<pool>` asks for, all named after the pool.
//!
//! [`publish`] converts each new snapshot once, for every stream, reusing
//! the encoding of pools that did not change; a stream compares hashes to
//! find what it must send.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Name;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use trackwire_core::map::PoolMap;
use trackwire_core::model::{AdminState, HealthState, PoolSpec};

use crate::state::{Snapshot, StateRx};

/// The resource types served, in the order a response of each is sent
/// after a change: clusters before their endpoints, listeners before their
/// routes (Envoy's "make before break" order for ADS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cluster,
    Endpoints,
    Listener,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoints, Kind::Listener, Kind::Route];

    pub fn type_url(self) -> String {
        match self {
            Kind::Cluster => cluster::Cluster::type_url(),
            Kind::Endpoints => endpoint::ClusterLoadAssignment::type_url(),
            Kind::Listener => listener::Listener::type_url(),
            Kind::Route => route::RouteConfiguration::type_url(),
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Endpoints => "endpoints",
            Kind::Listener => "listener",
            Kind::Route => "route",
        }
    }

    /// Every response carries every subscribed resource (listeners and
    /// clusters); otherwise only the changed ones.
    pub fn full_state(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }
}

/// One encoded resource and a hash of its encoding.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub any: Any,
    pub hash: u64,
}

impl Resource {
    fn new<M: Name>(m: &M) -> Arc<Resource> {
        let value = m.encode_to_vec();
        let mut h = std::hash::DefaultHasher::new();
        value.hash(&mut h);
        Arc::new(Resource {
            hash: h.finish(),
            any: Any {
                type_url: M::type_url(),
                value,
            },
        })
    }
}

/// Every resource of one snapshot, by kind and name.
#[derive(Debug, Default)]
pub struct Resources {
    /// `version_info` of responses built from it: `<epoch>.<revision>`.
    pub version: String,
    pub revision: u64,
    by_kind: [BTreeMap<String, Arc<Resource>>; 4],
    /// What the assignments were built from (shared with the snapshot, not
    /// copied), to reuse those of pools whose map and spec did not change.
    maps: BTreeMap<String, Arc<PoolMap>>,
    specs: Arc<BTreeMap<String, PoolSpec>>,
}

impl Resources {
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Arc<Resource>> {
        &self.by_kind[kind as usize]
    }

    /// The resources of `snap`, reusing `prev`'s encodings of what did not change.
    pub fn build(snap: &Snapshot, prev: Option<&Resources>) -> Resources {
        let map = &snap.derived.map;
        let mut out = Resources {
            version: format!("{}.{}", map.epoch, map.revision),
            revision: map.revision,
            specs: Arc::clone(&snap.facts.pools),
            ..Resources::default()
        };
        for (name, pool) in &map.pools {
            let Some(spec) = snap.facts.pools.get(name) else {
                continue;
            };
            let reused = prev.and_then(|p| {
                let same_map = Arc::ptr_eq(p.maps.get(name)?, pool);
                let same_spec =
                    Arc::ptr_eq(&p.specs, &snap.facts.pools) || p.specs.get(name) == Some(spec);
                (same_map && same_spec)
                    .then(|| p.of(Kind::Endpoints).get(name).cloned())
                    .flatten()
            });
            let cla = reused.unwrap_or_else(|| Resource::new(&load_assignment(name, pool, spec)));
            out.by_kind[Kind::Endpoints as usize].insert(name.clone(), cla);
            out.maps.insert(name.clone(), Arc::clone(pool));
            if spec.grpc_xds {
                let reuse = |kind: Kind| prev.and_then(|p| p.of(kind).get(name).cloned());
                for (kind, build) in [
                    (Kind::Cluster, cluster_for as fn(&str) -> Arc<Resource>),
                    (Kind::Listener, listener_for),
                    (Kind::Route, route_for),
                ] {
                    let r = reuse(kind).unwrap_or_else(|| build(name));
                    out.by_kind[kind as usize].insert(name.clone(), r);
                }
            }
        }
        out
    }
}

#[cfg(test)]
impl Resources {
    /// Endpoints resources whose encodings are the given bytes (session tests).
    pub(crate) fn for_test(revision: u64, endpoints: &[(&str, &str)]) -> Resources {
        Resources::for_test_kind(Kind::Endpoints, revision, endpoints)
    }

    /// Resources of `kind` whose encodings are the given bytes (session tests).
    pub(crate) fn for_test_kind(kind: Kind, revision: u64, items: &[(&str, &str)]) -> Resources {
        let mut out = Resources {
            version: format!("1.{revision}"),
            revision,
            ..Resources::default()
        };
        for (name, value) in items {
            let mut h = std::hash::DefaultHasher::new();
            value.as_bytes().hash(&mut h);
            let r = Arc::new(Resource {
                hash: h.finish(),
                any: Any {
                    type_url: kind.type_url(),
                    value: value.as_bytes().to_vec(),
                },
            });
            out.by_kind[kind as usize].insert((*name).to_owned(), r);
        }
        out
    }
}

fn socket_address(addr: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn health_status(e: &trackwire_core::Endpoint) -> core::HealthStatus {
    match (e.state, e.admin_state) {
        (HealthState::Down, _) => core::HealthStatus::Unhealthy,
        (HealthState::Up, AdminState::Drain) => core::HealthStatus::Draining,
        (HealthState::Up, _) if e.weight == 0 => core::HealthStatus::Draining,
        (HealthState::Up, _) => core::HealthStatus::Healthy,
    }
}

/// Envoy's overprovisioning factor, in percent: a priority (or locality)
/// counts as fully available while any endpoint in it is healthy, so
/// backups take traffic only when no primary is healthy, as in HAProxy
/// (Envoy's default, 140, starts spilling to them once a primary is DOWN).
pub const OVERPROVISIONING_FACTOR: u32 = 1_000_000;

/// A pool's `ClusterLoadAssignment` (see the module docs for the mapping).
/// Endpoints whose host is not an IP address (xDS clients do not resolve
/// names here, and Envoy would reject the whole response) and repeats of
/// an address already listed are left out, with a warning.
pub fn load_assignment(
    name: &str,
    pool: &PoolMap,
    spec: &PoolSpec,
) -> endpoint::ClusterLoadAssignment {
    let zone_of = |backend: &str| {
        spec.backends
            .iter()
            .find(|b| b.name == backend)
            .map_or("", |b| b.zone.as_str())
    };
    let mut seen = std::collections::HashSet::new();
    let listed: Vec<(&trackwire_core::Endpoint, std::net::SocketAddr)> = pool
        .values()
        .filter(|e| e.admin_state != AdminState::Maint)
        .filter_map(|e| match e.address.parse::<std::net::SocketAddr>() {
            Ok(a) if seen.insert(a) => Some((e, a)),
            Ok(_) => {
                warn!(pool = name, backend = %e.backend, address = %e.address,
                    "left out of the xDS assignment: another backend has the same address");
                None
            }
            Err(_) => {
                warn!(pool = name, backend = %e.backend, address = %e.address,
                    "left out of the xDS assignment: xDS clients need an IP address, not a name");
                None
            }
        })
        .collect();
    let any_primary = listed.iter().any(|(e, _)| !e.backup);
    // (priority, zone) → endpoints, so localities come out sorted.
    let mut groups: BTreeMap<(u32, &str), Vec<endpoint::LbEndpoint>> = BTreeMap::new();
    // A locality weighs what its healthy endpoints weigh (at least 1):
    // gRPC clients pick localities by weight without looking at health.
    let mut weights: BTreeMap<(u32, &str), u32> = BTreeMap::new();
    for (e, addr) in listed {
        let priority = u32::from(e.backup && any_primary);
        let key = (priority, zone_of(&e.backend));
        let weight = e.weight.max(1);
        let status = health_status(e);
        let w = weights.entry(key).or_default();
        if status == core::HealthStatus::Healthy {
            *w += weight;
        }
        groups.entry(key).or_default().push(endpoint::LbEndpoint {
            health_status: status as i32,
            load_balancing_weight: Some(UInt32Value { value: weight }),
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: Some(socket_address(addr)),
                    hostname: e.backend.clone(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
    }
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: groups
            .into_iter()
            .map(|(key, lb_endpoints)| endpoint::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    zone: key.1.to_owned(),
                    ..Default::default()
                }),
                lb_endpoints,
                // gRPC clients ignore localities without a weight.
                load_balancing_weight: Some(UInt32Value {
                    value: weights[&key].max(1),
                }),
                priority: key.0,
                ..Default::default()
            })
            .collect(),
        policy: Some(endpoint::cluster_load_assignment::Policy {
            overprovisioning_factor: Some(UInt32Value {
                value: OVERPROVISIONING_FACTOR,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn cluster_for(name: &str) -> Arc<Resource> {
    Resource::new(&cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_owned(),
        }),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    })
}

fn listener_for(name: &str) -> Arc<Resource> {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: name.to_owned(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::new(&listener::Listener {
        name: name.to_owned(),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(any(&manager)),
        }),
        ..Default::default()
    })
}

fn route_for(name: &str) -> Arc<Resource> {
    Resource::new(&route::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![route::VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        name.to_owned(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

pub type ResourcesRx = watch::Receiver<Option<Arc<Resources>>>;

/// Converts every snapshot `state` publishes into [`Resources`], once for
/// all streams; a burst of snapshots is converted once, at its end.
pub async fn publish(
    mut state: StateRx,
    tx: watch::Sender<Option<Arc<Resources>>>,
    shutdown: CancellationToken,
) {
    let mut prev: Option<Arc<Resources>> = None;
    loop {
        let snap = state.borrow_and_update().clone();
        if let Some(snap) = snap {
            let next = Arc::new(Resources::build(&snap, prev.as_deref()));
            tx.send_replace(Some(Arc::clone(&next)));
            prev = Some(next);
        }
        tokio::select! {
            r = state.changed() => if r.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackwire_core::Endpoint;
    use trackwire_core::model::BackendSpec;

    fn spec(zones: &[(&str, &str)]) -> PoolSpec {
        PoolSpec::new(
            "web",
            zones
                .iter()
                .map(|(b, z)| BackendSpec {
                    zone: (*z).into(),
                    ..BackendSpec::new(*b, "10.0.0.1:80")
                })
                .collect(),
        )
    }

    fn endpoints(cla: &endpoint::ClusterLoadAssignment) -> Vec<(u32, String, String, i32, u32)> {
        let mut out = Vec::new();
        for l in &cla.endpoints {
            for e in &l.lb_endpoints {
                let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier
                else {
                    panic!("endpoint without address")
                };
                out.push((
                    l.priority,
                    l.locality
                        .as_ref()
                        .map(|l| l.zone.clone())
                        .unwrap_or_default(),
                    ep.hostname.clone(),
                    e.health_status,
                    e.load_balancing_weight.map_or(0, |w| w.value),
                ));
            }
        }
        out
    }

    #[test]
    fn states_map_to_health_status_and_maint_is_not_listed() {
        let mut pool = PoolMap::new();
        for e in [
            Endpoint::up("up", "10.0.0.1:80"),
            Endpoint {
                state: HealthState::Down,
                ..Endpoint::up("down", "10.0.0.2:80")
            },
            Endpoint {
                admin_state: AdminState::Drain,
                weight: 3,
                ..Endpoint::up("drain", "10.0.0.3:80")
            },
            Endpoint {
                admin_state: AdminState::Maint,
                ..Endpoint::up("maint", "10.0.0.4:80")
            },
            Endpoint {
                weight: 0,
                ..Endpoint::up("zero", "[::1]:81")
            },
        ] {
            pool.insert(e.backend.clone(), e);
        }
        let cla = load_assignment("web", &pool, &spec(&[("up", "a"), ("down", "b")]));
        assert_eq!(cla.cluster_name, "web");
        let h = |s: core::HealthStatus| s as i32;
        assert_eq!(
            endpoints(&cla),
            vec![
                (
                    0,
                    String::new(),
                    "drain".into(),
                    h(core::HealthStatus::Draining),
                    3
                ),
                (
                    0,
                    String::new(),
                    "zero".into(),
                    h(core::HealthStatus::Draining),
                    1
                ),
                (
                    0,
                    "a".into(),
                    "up".into(),
                    h(core::HealthStatus::Healthy),
                    1
                ),
                (
                    0,
                    "b".into(),
                    "down".into(),
                    h(core::HealthStatus::Unhealthy),
                    1
                ),
            ]
        );
        // Locality weights: what their healthy endpoints weigh, at least 1.
        let weights: Vec<u32> = cla
            .endpoints
            .iter()
            .map(|l| l.load_balancing_weight.map_or(0, |w| w.value))
            .collect();
        assert_eq!(weights, [1, 1, 1]);
        assert_eq!(
            cla.policy
                .and_then(|p| p.overprovisioning_factor)
                .map(|f| f.value),
            Some(OVERPROVISIONING_FACTOR)
        );
        let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) =
            &cla.endpoints[0].lb_endpoints[1].host_identifier
        else {
            panic!()
        };
        let Some(core::address::Address::SocketAddress(sa)) =
            ep.address.as_ref().and_then(|a| a.address.clone())
        else {
            panic!()
        };
        assert_eq!(sa.address, "::1");
        assert_eq!(
            sa.port_specifier,
            Some(core::socket_address::PortSpecifier::PortValue(81))
        );
    }

    #[test]
    fn names_and_repeated_addresses_are_left_out() {
        let mut pool = PoolMap::new();
        for e in [
            Endpoint {
                weight: 5,
                ..Endpoint::up("a", "10.0.0.1:80")
            },
            Endpoint::up("b", "10.0.0.1:80"),
            Endpoint::up("c", "db.internal:5432"),
            Endpoint::up("d", "10.0.0.2:80"),
        ] {
            pool.insert(e.backend.clone(), e);
        }
        let cla = load_assignment("web", &pool, &spec(&[]));
        let names: Vec<String> = endpoints(&cla).into_iter().map(|e| e.2).collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(
            cla.endpoints[0].load_balancing_weight.map(|w| w.value),
            Some(6)
        );
    }

    #[test]
    fn backups_take_priority_one_unless_alone() {
        let mut pool = PoolMap::new();
        pool.insert("a".into(), Endpoint::up("a", "10.0.0.1:80"));
        pool.insert(
            "b".into(),
            Endpoint {
                backup: true,
                ..Endpoint::up("b", "10.0.0.2:80")
            },
        );
        let prio = |pool: &PoolMap| {
            endpoints(&load_assignment("web", pool, &spec(&[])))
                .into_iter()
                .map(|e| (e.2, e.0))
                .collect::<Vec<_>>()
        };
        assert_eq!(prio(&pool), [("a".into(), 0), ("b".into(), 1)]);
        pool.get_mut("a").expect("a").admin_state = AdminState::Maint;
        assert_eq!(prio(&pool), [("b".into(), 0)]);
    }

    #[test]
    fn type_urls_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_type_url(&k.type_url()), Some(k));
        }
        assert_eq!(
            Kind::Endpoints.type_url(),
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
        assert_eq!(Kind::from_type_url("type.googleapis.com/nope"), None);
    }
}
