//! The Outpost wire protocol: the generated gRPC code for `outpost.v1`, and the
//! canonical row encoding that the service and the client must agree on (row
//! keys and row hashes, from which bucket checksums are summed).
//!
//! Invariant: `row_hash` and `key_string` are pure functions of the values as
//! they travel on the wire, so a client can recompute every checksum the
//! service sends from the rows it holds.

/// Generated messages and services of the `outpost.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("outpost.v1");
}

/// The service's side of `outpost.v1.Sync`, whose stream sends
/// [`frame::SyncFrame`]s (same routes, same wire format).
#[allow(clippy::all, missing_docs)]
pub mod framed {
    include!(concat!(env!("OUT_DIR"), "/outpost.v1.Sync.rs"));
}

pub mod frame;
mod row;

pub use row::{bucket_checksum_add, bucket_checksum_sub, key_string, row_hash};

/// The encoded `FileDescriptorSet` of every proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/outpost_descriptor.bin"));
