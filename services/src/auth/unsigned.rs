//! The parts of a compact JWT read without a signature check: the header
//! (to pick the algorithm and key) and, for unsigned tokens in insecure dev
//! mode, the claims, which are then checked here as the signed path checks them.

use super::AuthError;
use serde_json::{Map, Value};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The three base64url parts of a compact token.
fn parts(token: &str) -> Result<[&str; 3], AuthError> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Ok([h, p, s]),
        _ => Err(AuthError::Malformed(
            "expected three dot-separated parts (header.payload.signature)".into(),
        )),
    }
}

fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = decode(part).map_err(|e| AuthError::Malformed(format!("{what}: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AuthError::Malformed(format!("{what} is not a JSON object"))),
        Err(e) => Err(AuthError::Malformed(format!("{what} is not JSON: {e}"))),
    }
}

/// The decoded header of `token`.
pub(super) fn header(token: &str) -> Result<Map<String, Value>, AuthError> {
    json_object(parts(token)?[0], "header")
}

/// The decoded, unverified claims of `token`.
pub(super) fn claims(token: &str) -> Result<Map<String, Value>, AuthError> {
    json_object(parts(token)?[1], "payload")
}

/// Checks `exp` (required), `nbf`, and `aud`/`iss` when expected.
pub(super) fn check_claims(
    claims: &Map<String, Value>,
    leeway: u64,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> Result<(), AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let seconds = |name: &str| -> Result<Option<u64>, AuthError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                AuthError::Malformed(format!("the {name} claim has the wrong type"))
            }),
        }
    };
    let exp = seconds("exp")?.ok_or(AuthError::MissingExp)?;
    if exp.saturating_add(leeway) < now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = seconds("nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthError::NotYetValid);
    }
    if let Some(expected) = audience {
        let ok = match claims.get("aud") {
            None => return Err(AuthError::MissingClaim("aud".into())),
            Some(Value::String(aud)) => aud == expected,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expected)),
            Some(_) => false,
        };
        if !ok {
            return Err(AuthError::WrongAudience {
                expected: Some(expected.to_string()),
            });
        }
    }
    if let Some(expected) = issuer {
        match claims.get("iss") {
            None => return Err(AuthError::MissingClaim("iss".into())),
            Some(iss) if iss.as_str() == Some(expected) => {}
            Some(_) => {
                return Err(AuthError::WrongIssuer {
                    expected: Some(expected.to_string()),
                });
            }
        }
    }
    Ok(())
}

/// An unsigned token (`alg: none`, empty signature) carrying `claims`.
pub(super) fn token(claims: &Value) -> String {
    let header = br#"{"alg":"none","typ":"JWT"}"#;
    format!(
        "{}.{}.",
        encode(header),
        encode(claims.to_string().as_bytes())
    )
}

/// Base64url without padding.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// Base64url, padding optional.
fn decode(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return Err("invalid base64url length".into());
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .ok_or_else(|| format!("invalid base64url character {:?}", char::from(c)))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            let encoded = encode(&bytes);
            assert!(!encoded.contains(['+', '/', '=']));
            assert_eq!(decode(&encoded).unwrap(), bytes);
        }
        assert_eq!(encode(b"hi?>"), "aGk_Pg");
        assert_eq!(decode("aGk_Pg==").unwrap(), b"hi?>");
        assert!(decode("a").is_err());
        assert!(decode("a+b/").is_err());
    }
}
