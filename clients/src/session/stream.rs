//! Opening the `Sync` stream with a codec that decodes each response from
//! one contiguous buffer. The transport hands a message over as a chain of
//! chunks; prost decoding through that chain costs a bounds check and an
//! advance per byte, so the message is first taken whole (without a copy
//! when it arrived in one chunk) and decoded from the slice, which is
//! several times faster for large data batches. Data batches are not
//! decoded here at all: they go on encoded, with their op count, to be
//! decoded on the replica's decode thread.

use outpost_proto::frame::data_op_count;
use outpost_proto::v1::{SyncRequest, SyncResponse};
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Encodes requests with prost; decodes responses from a contiguous copy.
#[derive(Debug, Default, Clone, Copy)]
struct SliceCodec;

#[derive(Debug, Default, Clone, Copy)]
struct RequestEncoder;

#[derive(Debug, Default, Clone, Copy)]
struct ResponseDecoder;

/// A response as the session sees it.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A data batch, still encoded (the whole `SyncResponse`), and how many
    /// ops it carries.
    Data { encoded: Bytes, ops: u64 },
    /// Any other response, decoded.
    Message(SyncResponse),
}

impl Codec for SliceCodec {
    type Encode = SyncRequest;
    type Decode = Incoming;
    type Encoder = RequestEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for RequestEncoder {
    type Item = SyncRequest;
    type Error = Status;

    fn encode(&mut self, item: SyncRequest, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for ResponseDecoder {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        let whole = buf.copy_to_bytes(buf.remaining());
        if let Some(ops) = data_op_count(&whole) {
            return Ok(Some(Incoming::Data {
                encoded: whole,
                ops,
            }));
        }
        SyncResponse::decode(whole.as_ref())
            .map(|m| Some(Incoming::Message(m)))
            .map_err(|e| Status::internal(format!("a response from the service is damaged: {e}")))
    }
}

/// Calls `Sync` on `channel`.
pub(super) async fn open(
    channel: Channel,
    request: Request<SyncRequest>,
    max_message_bytes: usize,
) -> Result<Streaming<Incoming>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(max_message_bytes);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/outpost.v1.Sync/Sync");
    let mut request = request;
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("outpost.v1.Sync", "Sync"));
    grpc.server_streaming(request, path, SliceCodec)
        .await
        .map(tonic::Response::into_inner)
}
