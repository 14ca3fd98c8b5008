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
    // The server keyward serves for `KeyValidationService`: the same service
    // (name, route, descriptor), but its one method's messages go through
    // `ValidateKeyCodec` (src/validation_api/wire.rs), which decodes the
    // request without copying it and writes a key's cached description into
    // the answer. Clients, tests and reflection keep the generated messages.
    let validate_key = tonic_build::manual::Method::builder()
        .name("validate_key")
        .route_name("ValidateKey")
        .input_type("crate::validation_api::wire::ValidateKeyCall")
        .output_type("crate::validation_api::wire::ValidateKeyReply")
        .codec_path("crate::validation_api::wire::ValidateKeyCodec")
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[tonic_build::manual::Service::builder()
            .name("KeyValidationService")
            .package("keyward.v1")
            .method(validate_key)
            .build()]);
    Ok(())
}
