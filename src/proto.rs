//! Generated gRPC code for package `keyrelay.v1` (built from proto/ by build.rs) and its
//! encoded descriptor set, served by reflection.

/// Messages and clients of `keyrelay.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("keyrelay.v1");
}

/// Servers of `keyrelay.v1`; WatchKeys sends pre-encoded events.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/servers/keyrelay.v1.rs"));
}

/// The encoded `FileDescriptorSet` of proto/, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keyrelay_descriptor.bin"));
