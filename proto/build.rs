//! Generates the gRPC code from `outpost/v1/*.proto` with `protox` (a pure-Rust
//! protobuf compiler), so a build needs no `protoc` on the machine.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["outpost/v1/sync.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("outpost_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    framed_server();
    Ok(())
}

/// The service's side of `outpost.v1.Sync`, with the same routes and wire
/// format, whose stream sends [`SyncFrame`]s: responses the service encodes
/// itself (data batches assembled from the op encodings it stores).
///
/// [`SyncFrame`]: ../src/frame.rs
fn framed_server() {
    use tonic_prost_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let service = Service::builder()
        .name("Sync")
        .package("outpost.v1")
        .method(
            Method::builder()
                .name("sync")
                .route_name("Sync")
                .input_type("crate::v1::SyncRequest")
                .output_type("crate::frame::SyncFrame")
                .codec_path(codec)
                .server_streaming()
                .build(),
        )
        .method(
            Method::builder()
                .name("write")
                .route_name("Write")
                .input_type("crate::v1::WriteRequest")
                .output_type("crate::v1::WriteResponse")
                .codec_path(codec)
                .build(),
        )
        .build();
    Builder::new().build_client(false).compile(&[service]);
}
