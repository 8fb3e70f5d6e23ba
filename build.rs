//! Compiles proto/ with the pure-Rust protox compiler (no protoc on the build machine) and
//! generates the tonic services and prost messages from the resulting descriptor set.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/keyrelay/v1/key_service.proto",
        "proto/keyrelay/v1/admin_service.proto",
    ];
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
        .compile_fds(descriptors)?;
    Ok(())
}
