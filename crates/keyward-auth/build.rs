//! With the `remote` feature, compiles keyward's validation API
//! (`proto/keyward/v1/{api_key,key_validation_service}.proto` at the workspace
//! root) into a tonic client with the pure-Rust `protox` compiler: no system
//! `protoc`, and no server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "remote")]
    {
        const PROTOS: &[&str] = &[
            "../../proto/keyward/v1/api_key.proto",
            "../../proto/keyward/v1/key_validation_service.proto",
        ];
        for proto in PROTOS {
            println!("cargo:rerun-if-changed={proto}");
        }
        let descriptors = protox::compile(PROTOS, ["../../proto"])?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(false)
            // It carries the raw key: remote.rs implements a redacting Debug.
            .skip_debug(["keyward.v1.ValidateKeyRequest"])
            .compile_fds(descriptors)?;
    }
    Ok(())
}
