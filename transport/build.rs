//! Generates the gRPC service and messages from `proto/` with a vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate: a fresh machine needs nothing but cargo.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Addresses decode as `Bytes` slices of the received message, not a `Vec` each.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &["proto/flowlog/ingest/v1/ingest.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
