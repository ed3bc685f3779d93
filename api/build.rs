//! Compiles berth's protos with protox (pure Rust), so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/berth/images/v1/images.proto",
        "proto/berth/content/v1/content.proto",
        "proto/berth/system/v1/system.proto",
        "proto/berth/snapshots/v1/snapshots.proto",
        "proto/berth/tasks/v1/tasks.proto",
        // The Kubernetes CRI (package runtime.v1), kept wire-identical to upstream.
        "proto/runtime/v1/api.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // The CRI file's descriptor (it imports nothing) is also written out and
    // embedded, so tests can check the compiled contract (RPC names, field
    // numbers) and a later CRI reflection service can serve it.
    let mut cri = fds.clone();
    cri.file.retain(|f| f.package() == "runtime.v1");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("runtime_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&cri),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
