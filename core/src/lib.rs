//! Domain types shared by every trackwire component, and the pure logic that
//! works on them: the TOML config document and its validation, conversions to
//! and from the `trackwire.v1` wire types (with field-path errors), and
//! health-map diffing. Nothing here does IO; `time::now_ms` is the one place
//! that reads the wall clock, for callers at the edges.

/// Serializes enums named by strings through their `as_str` and
/// deserializes them through their `FromStr`: each enum's names (and the
/// error for an unknown one) live in one place, used by the TOML document,
/// the CLI's JSON and anything else that reads or writes them.
macro_rules! serde_by_name {
    ($($t:ty),* $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

pub mod backoff;
pub mod config;
pub mod convert;
pub mod duration;
pub mod error;
pub mod hash;
pub mod histogram;
pub mod limits;
pub mod map;
pub mod metrics;
pub mod model;
pub mod time;
pub mod urls;

pub use error::{FieldError, FieldNames};
pub use map::{Endpoint, HealthMap, PoolUpdate};
pub use model::{
    AdminState, BackendSpec, BodyMatch, CheckKind, CheckSpec, DampingSpec, HealthState, PoolSpec,
    Quorum, StatusSet, TlsSpec,
};
