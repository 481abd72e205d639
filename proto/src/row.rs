//! Canonical encodings of rows on the wire.
//!
//! A row is identified within a table by its key string (see [`key_string`])
//! and summarised by a 64-bit hash (see [`row_hash`]). A bucket's checksum is
//! the wrapping sum of the hashes of the rows it holds, so it does not depend
//! on the order rows arrived in or on how the op log was compacted.

use crate::v1::{Value, value::Kind};

/// The length of one value as [`encode_value`] writes it.
fn encoded_len(value: &Value) -> usize {
    match &value.kind {
        None | Some(Kind::Null(_)) => 1,
        Some(Kind::Integer(_)) | Some(Kind::Real(_)) => 9,
        Some(Kind::Text(t)) => 9 + t.len(),
        Some(Kind::Blob(b)) => 9 + b.len(),
    }
}

/// Appends one value in a tagged, unambiguous form.
fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match &value.kind {
        None | Some(Kind::Null(_)) => out.push(0),
        Some(Kind::Integer(i)) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Some(Kind::Real(r)) => {
            out.push(2);
            out.extend_from_slice(&r.to_bits().to_le_bytes());
        }
        Some(Kind::Text(t)) => {
            out.push(3);
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        Some(Kind::Blob(b)) => {
            out.push(4);
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// The identity of a row within its table: its primary key values in a stable
/// textual form (a JSON-like array; text is quoted, blobs are hex).
pub fn key_string(key: &[Value]) -> String {
    let mut s = String::from("[");
    for (i, v) in key.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match &v.kind {
            None | Some(Kind::Null(_)) => s.push_str("null"),
            Some(Kind::Integer(n)) => s.push_str(&n.to_string()),
            Some(Kind::Real(r)) => s.push_str(&format!("{r:?}")),
            Some(Kind::Text(t)) => {
                s.push('"');
                for c in t.chars() {
                    match c {
                        '"' => s.push_str("\\\""),
                        '\\' => s.push_str("\\\\"),
                        c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
                        c => s.push(c),
                    }
                }
                s.push('"');
            }
            Some(Kind::Blob(b)) => {
                s.push_str("x'");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s.push('\'');
            }
        }
    }
    s.push(']');
    s
}

/// The hash of one row version: table name, key and every column value.
pub fn row_hash(table: &str, key: &[Value], values: &[Value]) -> u64 {
    let len = 24 + table.len() + key.iter().chain(values).map(encoded_len).sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(table.len() as u64).to_le_bytes());
    buf.extend_from_slice(table.as_bytes());
    buf.extend_from_slice(&(key.len() as u64).to_le_bytes());
    for v in key {
        encode_value(&mut buf, v);
    }
    buf.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        encode_value(&mut buf, v);
    }
    debug_assert_eq!(buf.len(), len);
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// Adds a row hash to a bucket checksum.
pub fn bucket_checksum_add(checksum: u64, hash: u64) -> u64 {
    checksum.wrapping_add(hash)
}

/// Removes a row hash from a bucket checksum.
pub fn bucket_checksum_sub(checksum: u64, hash: u64) -> u64 {
    checksum.wrapping_sub(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value {
            kind: Some(Kind::Text(s.into())),
        }
    }
    fn int(i: i64) -> Value {
        Value {
            kind: Some(Kind::Integer(i)),
        }
    }

    #[test]
    fn key_strings_are_unambiguous() {
        assert_eq!(key_string(&[int(1), text("a\"b")]), r#"[1,"a\"b"]"#);
        assert_ne!(key_string(&[text("1")]), key_string(&[int(1)]));
    }

    #[test]
    fn row_hashes_do_not_change() {
        // Clients and services of different versions must agree.
        let values = [
            int(7),
            text("alice"),
            Value { kind: None },
            Value {
                kind: Some(Kind::Null(true)),
            },
            Value {
                kind: Some(Kind::Real(1.5)),
            },
            Value {
                kind: Some(Kind::Blob(vec![0, 1, 2])),
            },
        ];
        assert_eq!(row_hash("items", &[int(7)], &values), 0x8c81d186068ab360);
    }

    #[test]
    fn hashes_distinguish_values_and_checksums_cancel() {
        let a = row_hash("t", &[int(1)], &[int(1), text("x")]);
        let b = row_hash("t", &[int(1)], &[int(1), text("y")]);
        assert_ne!(a, b);
        let sum = bucket_checksum_add(bucket_checksum_add(0, a), b);
        assert_eq!(bucket_checksum_sub(sum, a), b);
    }
}
