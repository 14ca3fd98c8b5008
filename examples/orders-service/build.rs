//! Compiles `proto/orders/v1/orders.proto` with the pure-Rust `protox`
//! compiler (no system `protoc`) into a tonic server and client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: &[&str] = &["proto/orders/v1/orders.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
