//! Compiles `proto/*.proto` with prost-build into `OUT_DIR` (one `<package>.rs` per proto package,
//! included by `src/openrtb/proto.rs`). Uses the protoc binary vendored by `protoc-bin-vendored`, so no
//! system protoc is needed.

use std::error::Error;

const PROTOS: [&str; 2] = ["proto/openrtb.proto", "proto/uid2_enrichment.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    // The same as setting PROTOC for prost-build, without mutating the process environment (which is
    // `unsafe` in edition 2024).
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    prost_build::Config::new()
        .protoc_executable(protoc)
        .compile_protos(&PROTOS, &["proto/"])?;
    Ok(())
}
