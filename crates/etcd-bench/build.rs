//! Compiles the etcd KV subset with protox (no system protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(false)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    Ok(())
}
