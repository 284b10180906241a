//! Fuzz harnesses: one `pub fn TARGET(data: &[u8])` per input a stranger
//! controls. Each must return normally on every input; a panic is a bug,
//! either in the code under test or in an invariant the harness asserts
//! (only cheap ones: round trips, bounds, consistency of a result).
//!
//! | target | input | entry points |
//! |---|---|---|
//! | `config_toml` | a config file | `Document::parse`, `Document::to_toml` |
//! | `haproxy_import` | a HAProxy configuration | `trackwire_cli::import::haproxy` |
//! | `agent_message` | one `AgentMessage` (protobuf) | `grpc::probe::validate_hello`, `validate_report`, `heartbeat_results` |
//! | `subscribe_request` | one `SubscribeRequest` (protobuf) | `grpc::healthmap::validate_subscribe`, `HealthMap::snapshot` |
//! | `admin_request` | a selector byte, then an admin request (protobuf) | `grpc::admin::validate_pools`, `requested_state`, `grpc::validate_pool_filter`, wire ↔ domain |
//! | `map_delta` | a filter byte, then length-delimited `HealthMapUpdate`s | `PoolUpdate::try_from`, `assemble::Assembler::push`, routing |
//! | `http_match` | flags, a status, expectations and body chunks | `check::expect` (the HTTP check's verdict) |
//!
//! `tests/replay.rs` runs every file of `corpus/TARGET/` and
//! `regressions/TARGET/` through its harness on every test run;
//! `src/bin/afl.rs` (feature `afl`) is the AFL++ driver `scripts/fuzz` runs.

mod admin;
mod agent;
mod config;
mod delta;
mod haproxy;
mod http;
pub mod seeds;
mod subscribe;

pub use admin::admin_request;
pub use agent::agent_message;
pub use config::config_toml;
pub use delta::map_delta;
pub use haproxy::haproxy_import;
pub use http::http_match;
pub use subscribe::subscribe_request;

/// A harness: any bytes in, a panic only on a bug.
pub type Harness = fn(&[u8]);

/// Every target by name (the names of the corpus directories).
pub const TARGETS: &[(&str, Harness)] = &[
    ("config_toml", config_toml),
    ("haproxy_import", haproxy_import),
    ("agent_message", agent_message),
    ("subscribe_request", subscribe_request),
    ("admin_request", admin_request),
    ("map_delta", map_delta),
    ("http_match", http_match),
];

/// The harness named `name`.
pub fn target(name: &str) -> Option<Harness> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
}
