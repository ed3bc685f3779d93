//! Compiles berth's protos with protox (pure Rust), so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/berth/images/v1/images.proto",
        "proto/berth/content/v1/content.proto",
        "proto/berth/system/v1/system.proto",
        "proto/berth/snapshots/v1/snapshots.proto",
        "proto/berth/tasks/v1/tasks.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
