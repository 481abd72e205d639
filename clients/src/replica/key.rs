//! Reading back the key strings of [`outpost_proto::key_string`].
//!
//! `_outpost_rows` identifies a row by its key string. When a whole bucket is
//! dropped, the rows it held must be deleted from their typed tables by
//! primary key, so the key string is parsed back into values. Invariant:
//! `parse_key(&key_string(k)) == k` for every key (text escapes, blobs as hex,
//! reals in Rust's round-trip `Debug` form, integers in decimal).

use outpost_proto::v1::{Value, value::Kind};

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
