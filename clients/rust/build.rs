//! Generates the keyrelay.v1 client (messages and clients only) from the repository's proto/
//! with the pure-Rust protox compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../../proto/keyrelay/v1/key_service.proto",
        "../../proto/keyrelay/v1/admin_service.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
