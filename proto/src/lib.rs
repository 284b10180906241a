//! Generated `trackwire.v1` messages and service stubs.
//!
//! The code is generated at build time from `proto/trackwire/v1/*.proto` by
//! protox + tonic-prost-build (no system `protoc`). Other crates convert these
//! wire types into `trackwire-core` domain types at the edge and never pass
//! them further in.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("trackwire.v1");

    /// Encoded `FileDescriptorSet` of the trackwire.v1 protos, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/trackwire_descriptor.bin"));
}
