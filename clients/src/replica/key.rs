//! Row keys in the replica's own tables, and reading them back.
//!
//! The outbox, the pending ops and the shadow rows identify a row by its key
//! string ([`outpost_proto::key_string`]); `_outpost_row_refs` identifies it
//! by the compact binary form of [`encode_key`], which is cheaper to store and
//! compare, and sorts integer and text keys in their natural order (so rows
//! that arrive in key order are appended to the b-tree). When a whole bucket
//! is dropped, or a local change is re-applied, the rows must be found in
//! their typed tables by primary key, so both forms are read back into values.
//!
//! Invariants: `parse_key(&key_string(k)) == k` for every key (text escapes,
//! blobs as hex, reals in Rust's round-trip `Debug` form, integers in
//! decimal); `decode_key(&encode_key(k)) == k` (every NaN reads back as the
//! same NaN); two keys encode to the same bytes exactly when their key
//! strings are equal; and no encoded key is a prefix of another.

use outpost_proto::v1::{Value, value::Kind};

const TAG_NULL: u8 = 1;
const TAG_INTEGER: u8 = 2;
const TAG_REAL: u8 = 3;
const TAG_TEXT: u8 = 4;
const TAG_BLOB: u8 = 5;

/// Appends bytes so that the result sorts like the bytes and ends where
/// they end: 0x00 is written 0x00 0xFF, the end 0x00 0x01.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.split_inclusive(|&b| b == 0) {
        out.extend_from_slice(chunk);
        if chunk.last() == Some(&0) {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Reads bytes written by [`push_escaped`], returning them and the rest.
fn read_escaped(s: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let zero = rest.iter().position(|&b| b == 0)?;
        out.extend_from_slice(&rest[..zero]);
        match rest.get(zero + 1)? {
            0xFF => out.push(0),
            1 => return Some((out, &rest[zero + 2..])),
            _ => return None,
        }
        rest = &rest[zero + 2..];
    }
}

/// Appends the binary form of a row key to `out`.
pub(crate) fn encode_key(out: &mut Vec<u8>, key: &[Value]) {
    for v in key {
        match &v.kind {
            None | Some(Kind::Null(_)) => out.push(TAG_NULL),
            Some(Kind::Integer(i)) => {
                out.push(TAG_INTEGER);
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
            }
            Some(Kind::Real(r)) => {
                out.push(TAG_REAL);
                // Key strings print every NaN alike.
                let r = if r.is_nan() { f64::NAN } else { *r };
                out.extend_from_slice(&r.to_bits().to_be_bytes());
            }
            Some(Kind::Text(t)) => {
                out.push(TAG_TEXT);
                push_escaped(out, t.as_bytes());
            }
            Some(Kind::Blob(b)) => {
                out.push(TAG_BLOB);
                push_escaped(out, b);
            }
        }
    }
}

/// Reads a key written by [`encode_key`]; `None` if it is not one.
pub(crate) fn decode_key(mut s: &[u8]) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    while let Some((&tag, rest)) = s.split_first() {
        let word = |rest: &[u8]| -> Option<u64> {
            Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
        };
        let kind = match tag {
            TAG_NULL => {
                s = rest;
                Kind::Null(true)
            }
            TAG_INTEGER => {
                s = &rest[8.min(rest.len())..];
                Kind::Integer((word(rest)? ^ (1 << 63)) as i64)
            }
            TAG_REAL => {
                s = &rest[8.min(rest.len())..];
                Kind::Real(f64::from_bits(word(rest)?))
            }
            TAG_TEXT => {
                let (bytes, after) = read_escaped(rest)?;
                s = after;
                Kind::Text(String::from_utf8(bytes).ok()?)
            }
            TAG_BLOB => {
                let (bytes, after) = read_escaped(rest)?;
                s = after;
                Kind::Blob(bytes)
            }
            _ => return None,
        };
        values.push(Value { kind: Some(kind) });
    }
    Some(values)
}

/// Parses a key string; `None` if it is not one `key_string` produces.
pub(crate) fn parse_key(s: &str) -> Option<Vec<Value>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut values = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (value, after) = parse_value(rest)?;
        values.push(Value { kind: Some(value) });
        rest = match after.strip_prefix(',') {
            Some(r) if !r.is_empty() => r,
            Some(_) => return None,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(values)
}

/// Parses one value at the start of `s`, returning the rest.
fn parse_value(s: &str) -> Option<(Kind, &str)> {
    if let Some(rest) = s.strip_prefix('"') {
        return parse_text(rest);
    }
    if let Some(rest) = s.strip_prefix("x'") {
        let end = rest.find('\'')?;
        let hex = &rest[..end];
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        return Some((Kind::Blob(bytes), &rest[end + 1..]));
    }
    let end = s.find(',').unwrap_or(s.len());
    let token = &s[..end];
    let rest = &s[end..];
    if token == "null" {
        return Some((Kind::Null(true), rest));
    }
    let is_integer = !token.is_empty()
        && token
            .strip_prefix('-')
            .unwrap_or(token)
            .bytes()
            .all(|b| b.is_ascii_digit());
    if is_integer {
        return Some((Kind::Integer(token.parse().ok()?), rest));
    }
    Some((Kind::Real(token.parse().ok()?), rest))
}

/// Parses the body of a quoted text (after the opening quote).
fn parse_text(s: &str) -> Option<(Kind, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Kind::Text(out), &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'u' => {
                    let mut code = 0u32;
                    for _ in 0..4 {
                        code = code * 16 + chars.next()?.1.to_digit(16)?;
                    }
                    out.push(char::from_u32(code)?);
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::key_string;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    #[test]
    fn key_strings_round_trip() {
        let keys = vec![
            vec![],
            vec![v(Kind::Integer(42))],
            vec![v(Kind::Integer(i64::MIN)), v(Kind::Integer(i64::MAX))],
            vec![v(Kind::Text(String::new()))],
            vec![v(Kind::Text("a,\"b\"\\c\n\t\u{1}é]".into()))],
            vec![v(Kind::Text("[1,2]".into())), v(Kind::Integer(-1))],
            vec![v(Kind::Blob(vec![])), v(Kind::Blob(vec![0, 255, 16]))],
            vec![
                v(Kind::Real(1.0)),
                v(Kind::Real(-0.0)),
                v(Kind::Real(1e300)),
            ],
            vec![
                v(Kind::Real(f64::INFINITY)),
                v(Kind::Real(f64::NEG_INFINITY)),
            ],
            vec![v(Kind::Real(1.5e-7)), v(Kind::Null(true))],
        ];
        for key in keys {
            let s = key_string(&key);
            let parsed = parse_key(&s).unwrap_or_else(|| panic!("cannot parse {s}"));
            assert_eq!(key_string(&parsed), s);
            assert_eq!(parsed.len(), key.len());
        }
        let nan = parse_key(&key_string(&[v(Kind::Real(f64::NAN))])).expect("NaN parses");
        assert!(matches!(nan[0].kind, Some(Kind::Real(r)) if r.is_nan()));
    }

    #[test]
    fn binary_keys_round_trip_and_match_key_strings() {
        let keys = vec![
            vec![],
            vec![v(Kind::Integer(42))],
            vec![v(Kind::Integer(i64::MIN)), v(Kind::Integer(i64::MAX))],
            vec![v(Kind::Text(String::new()))],
            vec![v(Kind::Text("a\0b\0".into())), v(Kind::Integer(-1))],
            vec![v(Kind::Blob(vec![])), v(Kind::Blob(vec![0, 255, 0, 1, 16]))],
            vec![
                v(Kind::Real(1.0)),
                v(Kind::Real(-0.0)),
                v(Kind::Real(f64::NAN)),
            ],
            vec![v(Kind::Null(true)), Value { kind: None }],
        ];
        let mut seen = std::collections::HashMap::new();
        for key in &keys {
            let mut bytes = Vec::new();
            encode_key(&mut bytes, key);
            let back = decode_key(&bytes).unwrap_or_else(|| panic!("cannot decode {bytes:?}"));
            assert_eq!(key_string(&back), key_string(key));
            assert_eq!(back.len(), key.len());
            assert_eq!(seen.insert(bytes, key_string(key)), None);
        }
        let enc = |key: &[Value]| {
            let mut b = Vec::new();
            encode_key(&mut b, key);
            b
        };
        // NaNs with other payloads are the same key, as in key strings.
        let other_nan = f64::from_bits(f64::NAN.to_bits() | 1);
        assert_eq!(
            enc(&[v(Kind::Real(other_nan))]),
            enc(&[v(Kind::Real(f64::NAN))])
        );
        // Integers and texts sort in their natural order.
        assert!(enc(&[v(Kind::Integer(-5))]) < enc(&[v(Kind::Integer(3))]));
        assert!(enc(&[v(Kind::Integer(9))]) < enc(&[v(Kind::Integer(10))]));
        assert!(enc(&[v(Kind::Text("a".into()))]) < enc(&[v(Kind::Text("a\0".into()))]));
        assert!(enc(&[v(Kind::Text("ab".into()))]) < enc(&[v(Kind::Text("b".into()))]));
        for bad in [
            &[9u8][..],
            &[2, 0, 0],
            &[4, b'a', 0],
            &[4, 0, 7],
            &[4, 0xFF, 0xFE, 0, 1],
        ] {
            assert!(decode_key(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        for s in [
            "",
            "[",
            "1",
            "[1,]",
            "[\"a]",
            "[x'0']",
            "[x'zz']",
            "[\"\\q\"]",
            "[1 2]",
        ] {
            assert!(parse_key(s).is_none(), "{s}");
        }
    }
}
