//! Compiles `proto/keyward/v1/*.proto` with the pure-Rust `protox` compiler (no
//! system `protoc`), generates tonic/prost code and writes the descriptor set
//! that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/keyward/v1/api_key.proto",
    "proto/keyward/v1/key_admin_service.proto",
    "proto/keyward/v1/key_validation_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    std::fs::write(
        out_dir.join("keyward_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // They carry a raw key: src/convert.rs implements a redacting Debug.
        .skip_debug([
            "keyward.v1.ValidateKeyRequest",
            "keyward.v1.CreateKeyResponse",
            "keyward.v1.RotateKeyResponse",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
