//! Responses of the `Sync` stream as the service sends them: encoded once,
//! by the service. A data batch is assembled from the encodings of its ops
//! as the service stores them, without decoding and encoding them again.
//!
//! Invariant: a frame's bytes are exactly the protobuf encoding of a
//! [`SyncResponse`] (what the client decodes). An op stored without its
//! `op_id` (field 1 left at zero, so absent) gets the field appended after
//! its other fields, which protobuf decoders accept in any order.

use crate::v1::{RowOp, SyncResponse};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};

/// `SyncResponse.data` (field 2, length-delimited).
const RESPONSE_DATA: u32 = 2;
/// `DataBatch.bucket` and `DataBatch.ops`.
const BATCH_BUCKET: u32 = 1;
const BATCH_OPS: u32 = 2;
/// `RowOp.op_id` (varint).
const OP_ID: u32 = 1;

/// An encoded `SyncResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncFrame(Vec<u8>);

impl SyncFrame {
    /// A response encoded as it is.
    pub fn message(response: &SyncResponse) -> Self {
        SyncFrame(response.encode_to_vec())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Only sent, never received: decoding reads nothing into a frame.
impl Message for SyncFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A `DataBatch` response being assembled.
#[derive(Debug)]
pub struct DataFrame {
    bucket: String,
    /// The encoded `ops` entries so far.
    ops: Vec<u8>,
    count: usize,
}

impl DataFrame {
    pub fn new(bucket: &str) -> Self {
        DataFrame {
            bucket: bucket.to_string(),
            ops: Vec::new(),
            count: 0,
        }
    }

    /// Adds an op stored as `encoded` (a `RowOp` whose `op_id` is zero),
    /// with `op_id`.
    pub fn push_encoded(&mut self, op_id: u64, encoded: &[u8]) {
        let id_len = if op_id == 0 {
            0
        } else {
            1 + encoded_len_varint(op_id)
        };
        encode_key(BATCH_OPS, WireType::LengthDelimited, &mut self.ops);
        encode_varint((encoded.len() + id_len) as u64, &mut self.ops);
        self.ops.extend_from_slice(encoded);
        if op_id != 0 {
            encode_key(OP_ID, WireType::Varint, &mut self.ops);
            encode_varint(op_id, &mut self.ops);
        }
        self.count += 1;
    }

    /// Adds a decoded op.
    pub fn push(&mut self, op: &RowOp) {
        prost::encoding::message::encode(BATCH_OPS, op, &mut self.ops);
        self.count += 1;
    }

    /// Ops added so far.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the ops added so far.
    pub fn bytes(&self) -> usize {
        self.ops.len()
    }

    /// The `SyncResponse` carrying the batch.
    pub fn finish(self) -> SyncFrame {
        let bucket_len = self.bucket.len();
        let batch_len = 1 + encoded_len_varint(bucket_len as u64) + bucket_len + self.ops.len();
        let mut out = Vec::with_capacity(batch_len + 1 + encoded_len_varint(batch_len as u64));
        encode_key(RESPONSE_DATA, WireType::LengthDelimited, &mut out);
        encode_varint(batch_len as u64, &mut out);
        encode_key(BATCH_BUCKET, WireType::LengthDelimited, &mut out);
        encode_varint(bucket_len as u64, &mut out);
        out.extend_from_slice(self.bucket.as_bytes());
        out.extend_from_slice(&self.ops);
        SyncFrame(out)
    }
}

/// When `encoded` is a `SyncResponse` carrying a data batch, the number of
/// ops in it, read from the framing alone (nothing is decoded).
pub fn data_op_count(encoded: &[u8]) -> Option<u64> {
    let mut buf = encoded;
    let (tag, wire_type) = prost::encoding::decode_key(&mut buf).ok()?;
    if tag != RESPONSE_DATA || wire_type != WireType::LengthDelimited {
        return None;
    }
    let len = prost::encoding::decode_varint(&mut buf).ok()? as usize;
    let mut batch = buf.get(..len)?;
    let mut ops = 0;
    while !batch.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut batch).ok()?;
        if tag == BATCH_OPS && wire_type == WireType::LengthDelimited {
            ops += 1;
        }
        prost::encoding::skip_field(wire_type, tag, &mut batch, DecodeContext::default()).ok()?;
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{DataBatch, Value, sync_response, value::Kind};

    fn op(id: i64, op_id: u64) -> RowOp {
        RowOp {
            op_id,
            kind: 1,
            table: "todos".into(),
            key: vec![Value {
                kind: Some(Kind::Integer(id)),
            }],
            values: vec![
                Value {
                    kind: Some(Kind::Integer(id)),
                },
                Value {
                    kind: Some(Kind::Text(format!("title {id}"))),
                },
            ],
        }
    }

    #[test]
    fn assembled_batches_decode_as_data_batches() {
        let ops: Vec<RowOp> = (1..=3).map(|i| op(i, 1000 + i as u64)).collect();
        let mut frame = DataFrame::new("todos[\"alice\"]");
        for o in &ops[..2] {
            let stored = RowOp {
                op_id: 0,
                ..o.clone()
            };
            frame.push_encoded(o.op_id, &stored.encode_to_vec());
        }
        frame.push(&ops[2]);
        assert_eq!(frame.len(), 3);
        let frame = frame.finish();
        let decoded = SyncResponse::decode(frame.as_bytes()).expect("decodes");
        let expected = SyncResponse {
            message: Some(sync_response::Message::Data(DataBatch {
                bucket: "todos[\"alice\"]".into(),
                ops,
            })),
        };
        assert_eq!(decoded, expected);
        assert_eq!(frame.encoded_len(), frame.as_bytes().len());
        assert_eq!(data_op_count(frame.as_bytes()), Some(3));
        assert_eq!(data_op_count(&expected.encode_to_vec()), Some(3));
    }

    #[test]
    fn a_message_frame_is_its_encoding() {
        let response = SyncResponse {
            message: Some(sync_response::Message::Keepalive(crate::v1::Keepalive {
                lsn: 7,
            })),
        };
        let frame = SyncFrame::message(&response);
        assert_eq!(frame.encode_to_vec(), response.encode_to_vec());
        assert_eq!(DataFrame::new("b").finish().as_bytes().len(), 5);
        assert_eq!(
            data_op_count(DataFrame::new("b").finish().as_bytes()),
            Some(0)
        );
        assert_eq!(data_op_count(frame.as_bytes()), None);
        assert_eq!(data_op_count(&[0x12, 0x05, 0x0a]), None, "truncated");
    }
}
