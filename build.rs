//! Compiles proto/ with the pure-Rust protox compiler (no protoc on the build machine) and
//! generates the code in two passes:
//! - messages and clients of `keyrelay.v1`, the types everyone uses;
//! - the servers, generated apart so that WatchKeys events and Resolve answers are sent as
//!   bytes encoded once per change and shared by every caller (`crate::api::encoded::EncodedEvent`),
//!   through a codec with small per-stream buffers (`crate::api::encoded::LeanCodec`).

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/keyrelay/v1/key_service.proto",
        "proto/keyrelay/v1/admin_service.proto",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("keyrelay_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .bytes(".keyrelay.v1")
        .build_server(false)
        .compile_fds(descriptors.clone())?;

    let servers_dir = out_dir.join("servers");
    fs::create_dir_all(&servers_dir)?;
    let mut services_only = descriptors;
    for file in &mut services_only.file {
        file.message_type.clear();
        file.enum_type.clear();
    }
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(servers_dir)
        .codec_path("crate::api::encoded::LeanCodec")
        .extern_path(".keyrelay.v1", "crate::proto::v1")
        .extern_path(
            ".keyrelay.v1.WatchKeysResponse",
            "crate::api::encoded::EncodedEvent",
        )
        .extern_path(
            ".keyrelay.v1.ResolveResponse",
            "crate::api::encoded::EncodedEvent",
        )
        .compile_fds(services_only)?;
    Ok(())
}
