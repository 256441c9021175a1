//! Compiles `proto/*.proto` with protox (a pure-Rust protobuf compiler), so building Ferry
//! never needs `protoc` on the machine.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "ferry/wire.proto",
        "ferry/state.proto",
        "ferry/peer.proto",
        "raft/eraftpb.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root]).expect("proto/ files must compile");
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("prost code generation must succeed");
}
