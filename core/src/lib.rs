//! Domain types shared by every trackwire component, and the pure logic that
//! works on them: the TOML config document and its validation, conversions to
//! and from the `trackwire.v1` wire types (with field-path errors), and
//! health-map diffing. Nothing here does IO; `time::now_ms` is the one place
//! that reads the wall clock, for callers at the edges.

pub mod backoff;
pub mod config;
pub mod convert;
pub mod duration;
pub mod error;
pub mod hash;
pub mod histogram;
pub mod limits;
pub mod map;
pub mod model;
pub mod time;
pub mod urls;

pub use error::{FieldError, FieldNames};
pub use map::{Endpoint, HealthMap, PoolUpdate};
pub use model::{
    AdminState, BackendSpec, BodyMatch, CheckKind, CheckSpec, DampingSpec, HealthState, PoolSpec,
    Quorum, StatusSet, TlsSpec,
};
