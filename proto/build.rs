//! Compiles `proto/**/*.proto` with the pure-Rust `protox` compiler (no system `protoc` needed)
//! and hands the descriptor set to `tonic-prost-build`. The encoded descriptor set is also
//! written to `OUT_DIR` so servers can offer gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/switchyard/mesh/v1/mesh.proto",
    "proto/switchyard/client/v1/client.proto",
    "proto/switchyard/logic/v1/logic.proto",
    "proto/switchyard/gateway/v1/gateway.proto",
    "proto/switchyard/room/v1/room.proto",
    "proto/switchyard/matchmaking/v1/matchmaking.proto",
    "proto/switchyard/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("switchyard_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
