//! gRPC adapters: convert wire types at the edge, map domain and store
//! errors to `tonic::Status`, and end long-lived streams on shutdown.

pub mod admin;
pub mod healthmap;
pub mod probe;
