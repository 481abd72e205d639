//! The gRPC front: the `outpost.v1.Sync` service, plus the standard gRPC
//! health and reflection services so stock tools (grpcurl, grpc_health_probe)
//! can talk to it.
//!
//! Each `Sync` call gets its own task and a bounded channel (see
//! [`session`]): a slow client applies back-pressure to its own task only,
//! and a client that goes away is noticed when the channel closes. The
//! stream carries responses the session encoded itself
//! (`outpost_proto::frame`): data batches are assembled from the op
//! encodings the store keeps, never decoded and encoded again.

mod fanout;
mod session;
mod sync;

pub use fanout::Fanout;
pub use sync::{SyncContext, SyncService};

use outpost_proto::framed::sync_server::SyncServer;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// HTTP/2 receive windows: how much a client may send ahead of what the
/// service has read.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// Largest message the service sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves gRPC on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<SyncContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SyncServer<SyncService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(outpost_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let sync = SyncServer::new(SyncService::new(ctx))
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // The builder's `tcp_nodelay` only reaches sockets it accepts itself:
    // these are set here, or Nagle's algorithm holds small replies back
    // until the peer's delayed acknowledgement (tens of milliseconds).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // Large receive windows for uploads (HTTP/2 defaults to 64 KiB).
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(sync)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
