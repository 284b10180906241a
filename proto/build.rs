//! Compiles `trackwire/v1/*.proto` with protox (pure Rust) and feeds the
//! descriptors to tonic-prost-build, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["trackwire/v1/trackwire.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("trackwire_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // ProbeService has an RPC named `Connect`, which would clash with the
        // generated `connect` constructor; clients build on a `Channel` instead.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
