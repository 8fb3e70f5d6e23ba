//! Generated gRPC code for package `keyrelay.v1` (built from proto/ by build.rs): messages and
//! clients, and the encoded descriptor set (served by reflection). The servers are generated
//! apart, for the API edge (`api::grpc`).

/// Messages and clients of `keyrelay.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("keyrelay.v1");
}

/// The encoded `FileDescriptorSet` of proto/, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keyrelay_descriptor.bin"));
