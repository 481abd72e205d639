//! Wire values of local writes → the Postgres text form of the column's
//! type: the inverse of [`crate::pgtypes::to_value`].
//!
//! Every value reaches Postgres as text with an explicit cast
//! (`$1::text::integer`), so Postgres' own input functions have the last
//! word on what is valid; the conversion here only undoes what the replica
//! changed: booleans 0/1, BLOBs, arrays held as JSON, and BC years in
//! astronomical numbering.
//!
//! Invariant: a value that Outpost sent to a client converts back to the
//! same Postgres value; a value that cannot be meant for the column's type
//! is an error (the group is rejected as `invalid_value`), never a panic.

use outpost_proto::v1::Value;
use outpost_proto::v1::value::Kind;
use serde_json::Value as Json;

use crate::pgtypes::{self, TypeKind};

/// Deepest array nesting accepted (Postgres allows 6 dimensions).
const MAX_DEPTH: usize = 16;

/// The Postgres text form of a wire value for a column of `kind` (`None`:
/// a type Outpost does not sync, which takes text as it is). `Ok(None)` is
/// SQL NULL.
pub(crate) fn to_pg_text(kind: Option<&TypeKind>, value: &Value) -> Result<Option<String>, String> {
    let Some(v) = value.kind.as_ref() else {
        return Ok(None);
    };
    let Some(kind) = kind else {
        return match v {
            Kind::Null(_) => Ok(None),
            Kind::Text(s) => Ok(Some(s.clone())),
            _ => Err("this column takes only text values".into()),
        };
    };
    let wrong = |what: &str| Err(format!("{what} is not a value for a {kind:?} column"));
    let text = match (kind, v) {
        (_, Kind::Null(_)) => return Ok(None),
        (TypeKind::Bool, Kind::Integer(0)) => "f".to_string(),
        (TypeKind::Bool, Kind::Integer(1)) => "t".to_string(),
        (TypeKind::Bool, Kind::Integer(i)) => {
            return Err(format!("{i} is not a boolean (expected 0 or 1)"));
        }
        (TypeKind::Bool, Kind::Text(s)) => s.clone(),
        (TypeKind::Bool, Kind::Real(_)) => return wrong("a REAL"),
        (TypeKind::Int, Kind::Integer(i)) => i.to_string(),
        (TypeKind::Int, Kind::Real(f)) => {
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 {
                // Exactly integral and within i64: the cast is exact.
                format!("{}", *f as i64)
            } else {
                return Err(format!("{f} is not an integer"));
            }
        }
        (TypeKind::Float | TypeKind::Numeric, Kind::Real(f)) => float_text(*f),
        (TypeKind::Bytea, Kind::Blob(b)) => format!("\\x{}", hex::encode(b)),
        (TypeKind::Timestamptz | TypeKind::Timestamp | TypeKind::Date, Kind::Text(s)) => {
            astronomical_to_bc(s)
        }
        (TypeKind::Array(element), Kind::Text(s)) => {
            let json: Json =
                serde_json::from_str(s).map_err(|e| format!("not a JSON array: {e}"))?;
            if !json.is_array() {
                return Err("an array column takes a JSON array".into());
            }
            array_literal(element, &json, 0)?
        }
        (TypeKind::Array(_), _) => return wrong("a value other than a JSON array"),
        (_, Kind::Blob(_)) => return wrong("a BLOB"),
        (_, Kind::Text(s)) => s.clone(),
        (_, Kind::Integer(i)) => i.to_string(),
        (_, Kind::Real(f)) => float_text(*f),
    };
    Ok(Some(text))
}

/// A float as `float8in` reads it back exactly.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        // Debug prints the shortest text that reads back as the same f64.
        format!("{f:?}")
    }
}

/// `-0043-03-15…` (astronomical year -43) → `0044-03-15… BC`; other text
/// unchanged.
fn astronomical_to_bc(text: &str) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Ok(year) = rest[..digits].parse::<i64>() else {
        return text.to_string();
    };
    if digits < 4 || (!negative && year != 0) {
        return text.to_string();
    }
    let astronomical = if negative { -year } else { year };
    let tail = &rest[digits..];
    // Postgres reads the BC marker after the whole value, in its own
    // format (a space rather than `T`, `+00` rather than `Z`).
    let tail = tail.replacen('T', " ", 1);
    let tail = match tail.strip_suffix('Z') {
        Some(t) => format!("{t}+00"),
        None => tail,
    };
    format!("{:04}{tail} BC", 1 - astronomical)
}

/// A JSON array (as the replica holds arrays) → a Postgres array literal.
fn array_literal(element: &TypeKind, json: &Json, depth: usize) -> Result<String, String> {
    if depth > MAX_DEPTH {
        return Err("the array nests too deeply".into());
    }
    let Json::Array(items) = json else {
        return element_literal(element, json);
    };
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&array_literal(element, item, depth + 1)?);
    }
    out.push('}');
    Ok(out)
}

fn element_literal(element: &TypeKind, json: &Json) -> Result<String, String> {
    let text = match json {
        Json::Null => return Ok("NULL".into()),
        Json::Bool(true) => "t".to_string(),
        Json::Bool(false) => "f".to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => match element {
            TypeKind::Timestamptz | TypeKind::Timestamp | TypeKind::Date => astronomical_to_bc(s),
            _ => s.clone(),
        },
        Json::Object(_) => match element {
            // A json element is an object in the replica's JSON.
            TypeKind::Json => json.to_string(),
            _ => return Err("an array element is a JSON object".into()),
        },
        Json::Array(_) => return Err("the array nests too deeply".into()),
    };
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Ok(quoted)
}

/// Whether the column's current value (Postgres text, `None` = NULL) is
/// the wire value a client saw.
pub(crate) fn same_as_seen(kind: Option<&TypeKind>, current: Option<&str>, seen: &Value) -> bool {
    let seen_null = matches!(seen.kind, None | Some(Kind::Null(_)));
    let Some(current) = current else {
        return seen_null;
    };
    match kind {
        Some(kind) => match pgtypes::to_value(kind, current) {
            Ok(v) => v == *seen,
            Err(_) => false,
        },
        None => matches!(&seen.kind, Some(Kind::Text(s)) if s == current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: &TypeKind, v: Kind) -> Result<Option<String>, String> {
        to_pg_text(Some(kind), &Value { kind: Some(v) })
    }

    #[test]
    fn scalars() {
        assert_eq!(
            text(&TypeKind::Bool, Kind::Integer(1)),
            Ok(Some("t".into()))
        );
        assert_eq!(
            text(&TypeKind::Bool, Kind::Integer(0)),
            Ok(Some("f".into()))
        );
        assert!(text(&TypeKind::Bool, Kind::Integer(2)).is_err());
        assert_eq!(
            text(&TypeKind::Int, Kind::Integer(-5)),
            Ok(Some("-5".into()))
        );
        assert_eq!(text(&TypeKind::Int, Kind::Real(3.0)), Ok(Some("3".into())));
        assert!(text(&TypeKind::Int, Kind::Real(3.5)).is_err());
        assert_eq!(
            text(&TypeKind::Float, Kind::Real(0.1)),
            Ok(Some("0.1".into()))
        );
        assert_eq!(
            text(&TypeKind::Float, Kind::Real(f64::NEG_INFINITY)),
            Ok(Some("-Infinity".into()))
        );
        assert_eq!(
            text(&TypeKind::Bytea, Kind::Blob(vec![0, 255])),
            Ok(Some("\\x00ff".into()))
        );
        assert_eq!(text(&TypeKind::Text, Kind::Null(true)), Ok(None));
        assert!(text(&TypeKind::Text, Kind::Blob(vec![1])).is_err());
    }

    #[test]
    fn bc_years() {
        assert_eq!(astronomical_to_bc("2024-05-01"), "2024-05-01");
        assert_eq!(astronomical_to_bc("0000-01-01"), "0001-01-01 BC");
        assert_eq!(
            astronomical_to_bc("-0043-03-15T12:00:00Z"),
            "0044-03-15 12:00:00+00 BC"
        );
        assert_eq!(astronomical_to_bc("infinity"), "infinity");
        assert_eq!(astronomical_to_bc("-infinity"), "-infinity");
    }

    #[test]
    fn arrays() {
        let t = |kind: TypeKind, json: &str| text(&kind, Kind::Text(json.into()));
        assert_eq!(
            t(TypeKind::Array(Box::new(TypeKind::Int)), "[1,null,3]"),
            Ok(Some("{\"1\",NULL,\"3\"}".into()))
        );
        assert_eq!(
            t(
                TypeKind::Array(Box::new(TypeKind::Text)),
                r#"["a \"b\"","c\\d",[]]"#
            ),
            Ok(Some(r#"{"a \"b\"","c\\d",{}}"#.into()))
        );
        assert_eq!(
            t(
                TypeKind::Array(Box::new(TypeKind::Bool)),
                "[[true],[false]]"
            ),
            Ok(Some(r#"{{"t"},{"f"}}"#.into()))
        );
        assert!(t(TypeKind::Array(Box::new(TypeKind::Text)), "{}").is_err());
        assert!(t(TypeKind::Array(Box::new(TypeKind::Text)), "[{\"a\":1}]").is_err());
    }
}
