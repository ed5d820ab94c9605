//! Compiles the .proto files with protox (pure Rust): no system protoc needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(
        [
            "proto/raftkv.proto",
            "proto/internal.proto",
            "proto/etcd/rpc.proto",
            "proto/etcd/v3lock.proto",
            "proto/etcd/v3election.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
