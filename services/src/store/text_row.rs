//! The stored form of a row as Postgres printed it: one optional text value
//! per column, in the table's column order.
//!
//! Encoding: for each column a tag byte (`0` NULL, `1` text) followed, for
//! text, by a LEB128 length and the UTF-8 bytes. Decoding validates every
//! length, so a damaged blob gives an error rather than a panic.

/// A row version: the Postgres text form of each column (None = NULL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRow(pub Vec<Option<String>>);

/// A stored row that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("stored row is damaged at byte {offset}: {reason}")]
pub struct DecodeRowError {
    offset: usize,
    reason: &'static str,
}

impl TextRow {
    /// Borrowed column values, the form predicates and routing take.
    pub fn as_refs(&self) -> Vec<Option<&str>> {
        self.0.iter().map(|v| v.as_deref()).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .0
            .iter()
            .map(|v| 1 + v.as_ref().map_or(0, |s| s.len() + 5))
            .sum();
        let mut out = Vec::with_capacity(size);
        for value in &self.0 {
            match value {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    let mut n = s.len();
                    loop {
                        let byte = (n & 0x7f) as u8;
                        n >>= 7;
                        if n == 0 {
                            out.push(byte);
                            break;
                        }
                        out.push(byte | 0x80);
                    }
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TextRow, DecodeRowError> {
        let mut values = Vec::new();
        let mut pos = 0;
        let err = |offset, reason| DecodeRowError { offset, reason };
        while pos < bytes.len() {
            let tag = bytes[pos];
            pos += 1;
            match tag {
                0 => values.push(None),
                1 => {
                    let mut len: usize = 0;
                    let mut shift = 0;
                    loop {
                        let byte = *bytes.get(pos).ok_or(err(pos, "truncated length"))?;
                        pos += 1;
                        if shift > 56 {
                            return Err(err(pos, "length too large"));
                        }
                        len |= ((byte & 0x7f) as usize) << shift;
                        shift += 7;
                        if byte & 0x80 == 0 {
                            break;
                        }
                    }
                    let end = pos.checked_add(len).filter(|&e| e <= bytes.len());
                    let end = end.ok_or(err(pos, "truncated value"))?;
                    let s = std::str::from_utf8(&bytes[pos..end])
                        .map_err(|_| err(pos, "invalid UTF-8"))?;
                    values.push(Some(s.to_string()));
                    pos = end;
                }
                _ => return Err(err(pos - 1, "unknown tag")),
            }
        }
        Ok(TextRow(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(values in proptest::collection::vec(proptest::option::of(".{0,300}"), 0..12)) {
            let row = TextRow(values);
            prop_assert_eq!(TextRow::decode(&row.encode()).unwrap(), row);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TextRow::decode(&bytes);
        }
    }
}
