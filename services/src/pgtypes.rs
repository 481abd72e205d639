//! The Postgres → SQLite type mapping: which Postgres types Outpost syncs, the
//! SQLite column type each becomes, and the conversion of a value from its
//! Postgres text form (as pgoutput and `COPY … TO STDOUT` print it, in a
//! session with `DateStyle=ISO, TimeZone=UTC, IntervalStyle=postgres,
//! extra_float_digits=3`) to the value the client stores.
//!
//! Invariant: the conversion is lossless and deterministic: the same Postgres
//! value always gives the same wire value, whichever path (snapshot or stream)
//! it came by. The README's type table documents every row of [`TypeKind`].
//! Malformed input is reported as a [`ConvertError`], never a panic.
//!
//! Wire forms:
//! - `boolean` → INTEGER 1/0; integers → INTEGER; `real`/`double` → REAL
//!   (`±Infinity` as REAL ±inf, `NaN` as TEXT `NaN`).
//! - `numeric`, text types, `uuid`, `json(b)`, `time`, `timetz`, `interval`,
//!   network types → TEXT as printed (uuid lower-cased).
//! - `bytea` → BLOB.
//! - `timestamptz` → `YYYY-MM-DDTHH:MM:SS[.f…]Z` in UTC, `timestamp` the same
//!   without `Z`, `date` → `YYYY-MM-DD`; the fractional digits are those
//!   Postgres printed; BC years use astronomical numbering (1 BC = `0000`,
//!   44 BC = `-0043`); years past 9999 keep all their digits; `infinity` and
//!   `-infinity` are kept.
//! - arrays → TEXT holding a JSON array (nested for multi-dimensional arrays,
//!   lower bounds dropped): integers, booleans and finite floats as JSON
//!   numbers/booleans, NULL as `null`, every other element as a JSON string in
//!   the scalar's text form (`NaN`, `Infinity`, numerics, ISO timestamps, and
//!   bytea as `\x` followed by lower-case hex).

mod array;
mod datetime;
#[cfg(test)]
mod pg_tests;
#[cfg(test)]
mod tests;

use outpost_proto::v1::Value;
use outpost_proto::v1::value::Kind;

/// A Postgres type Outpost can sync, reduced to how it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TypeKind {
    /// `boolean` → INTEGER 0/1.
    Bool,
    /// `smallint`, `integer`, `bigint`, `oid` → INTEGER.
    Int,
    /// `real`, `double precision` → REAL (NaN → TEXT 'NaN': SQLite has no NaN).
    Float,
    /// `numeric` → TEXT, exact, as Postgres prints it (`NaN`, `Infinity` kept).
    Numeric,
    /// `text`, `varchar`, `char(n)`, `name`, `citext`, enums → TEXT.
    Text,
    /// `uuid` → TEXT (lower-case, hyphenated).
    Uuid,
    /// `bytea` → BLOB.
    Bytea,
    /// `timestamp with time zone` → TEXT, ISO-8601 in UTC: `2024-05-01T12:00:00.123456Z`.
    Timestamptz,
    /// `timestamp without time zone` → TEXT, ISO-8601 without zone: `2024-05-01T12:00:00`.
    Timestamp,
    /// `date` → TEXT `YYYY-MM-DD`.
    Date,
    /// `time` → TEXT `HH:MM:SS[.ffffff]`.
    Time,
    /// `time with time zone` → TEXT as Postgres prints it.
    Timetz,
    /// `interval` → TEXT as Postgres prints it (`1 day 02:00:00`).
    Interval,
    /// `json`, `jsonb` → TEXT.
    Json,
    /// `inet`, `cidr`, `macaddr`, `macaddr8` → TEXT.
    Network,
    /// One-dimensional or nested arrays of a supported type → TEXT (JSON array).
    Array(Box<TypeKind>),
}

/// Built-in scalar types: (type OID, array type OID, kind).
const BUILTIN: &[(u32, u32, TypeKind)] = &[
    (16, 1000, TypeKind::Bool),
    (21, 1005, TypeKind::Int),
    (23, 1007, TypeKind::Int),
    (20, 1016, TypeKind::Int),
    (26, 1028, TypeKind::Int),
    (700, 1021, TypeKind::Float),
    (701, 1022, TypeKind::Float),
    (1700, 1231, TypeKind::Numeric),
    (25, 1009, TypeKind::Text),
    (1043, 1015, TypeKind::Text),
    (1042, 1014, TypeKind::Text),
    (19, 1003, TypeKind::Text),
    (18, 1002, TypeKind::Text),
    (2950, 2951, TypeKind::Uuid),
    (17, 1001, TypeKind::Bytea),
    (1184, 1185, TypeKind::Timestamptz),
    (1114, 1115, TypeKind::Timestamp),
    (1082, 1182, TypeKind::Date),
    (1083, 1183, TypeKind::Time),
    (1266, 1270, TypeKind::Timetz),
    (1186, 1187, TypeKind::Interval),
    (114, 199, TypeKind::Json),
    (3802, 3807, TypeKind::Json),
    (869, 1041, TypeKind::Network),
    (650, 651, TypeKind::Network),
    (829, 1040, TypeKind::Network),
    (774, 775, TypeKind::Network),
];

impl TypeKind {
    /// The kind of a built-in scalar or array type by its OID, or `None` when
    /// Outpost does not sync it (enums, domains and arrays of those are
    /// resolved by the catalog, which knows their OIDs).
    pub fn from_builtin_oid(oid: u32) -> Option<TypeKind> {
        BUILTIN.iter().find_map(|(scalar, array, kind)| {
            if *scalar == oid {
                Some(kind.clone())
            } else if *array == oid {
                Some(TypeKind::Array(Box::new(kind.clone())))
            } else {
                None
            }
        })
    }

    /// The SQLite column type: `INTEGER`, `REAL`, `TEXT` or `BLOB`.
    pub fn sqlite_type(&self) -> &'static str {
        match self {
            TypeKind::Bool | TypeKind::Int => "INTEGER",
            TypeKind::Float => "REAL",
            TypeKind::Bytea => "BLOB",
            _ => "TEXT",
        }
    }
}

/// A value whose text form does not parse as its type.
#[derive(Debug, thiserror::Error)]
#[error("cannot convert {text:?} as {kind:?}: {reason}")]
pub struct ConvertError {
    pub kind: TypeKind,
    pub text: String,
    pub reason: String,
}

/// The longest input quoted in a [`ConvertError`].
const ERROR_TEXT_MAX: usize = 200;

impl ConvertError {
    fn new(kind: &TypeKind, text: &str, reason: impl Into<String>) -> Self {
        let mut end = text.len().min(ERROR_TEXT_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut quoted = text[..end].to_string();
        if end < text.len() {
            quoted.push('…');
        }
        ConvertError {
            kind: kind.clone(),
            text: quoted,
            reason: reason.into(),
        }
    }
}

/// Converts a non-NULL value from its Postgres text form to its wire value.
pub fn to_value(kind: &TypeKind, text: &str) -> Result<Value, ConvertError> {
    let fail = |reason: String| ConvertError::new(kind, text, reason);
    let kind_value = match kind {
        TypeKind::Bool => Kind::Integer(i64::from(parse_bool(text).map_err(fail)?)),
        TypeKind::Int => Kind::Integer(parse_int(text).map_err(fail)?),
        TypeKind::Float => match parse_float(text).map_err(fail)? {
            Some(f) => Kind::Real(f),
            None => Kind::Text("NaN".to_string()),
        },
        TypeKind::Numeric => {
            check_numeric(text).map_err(fail)?;
            Kind::Text(text.to_string())
        }
        TypeKind::Uuid => Kind::Text(parse_uuid(text).map_err(fail)?),
        TypeKind::Bytea => Kind::Blob(parse_bytea(text).map_err(fail)?),
        TypeKind::Timestamptz => Kind::Text(datetime::timestamp_iso(text, true).map_err(fail)?),
        TypeKind::Timestamp => Kind::Text(datetime::timestamp_iso(text, false).map_err(fail)?),
        TypeKind::Date => Kind::Text(datetime::date_iso(text).map_err(fail)?),
        TypeKind::Text
        | TypeKind::Time
        | TypeKind::Timetz
        | TypeKind::Interval
        | TypeKind::Json
        | TypeKind::Network => Kind::Text(text.to_string()),
        TypeKind::Array(element) => Kind::Text(array::array_json(element, text)?),
    };
    Ok(Value {
        kind: Some(kind_value),
    })
}

/// The wire value of SQL NULL.
pub fn null_value() -> Value {
    Value {
        kind: Some(outpost_proto::v1::value::Kind::Null(true)),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "t" | "true" => Ok(true),
        "f" | "false" => Ok(false),
        _ => Err("expected t or f".into()),
    }
}

fn parse_int(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|e| format!("not a 64-bit integer: {e}"))
}

/// A float, or `None` for NaN.
fn parse_float(text: &str) -> Result<Option<f64>, String> {
    match text {
        "NaN" => Ok(None),
        "Infinity" => Ok(Some(f64::INFINITY)),
        "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
        _ => {
            // Rust also accepts words such as "inf"; Postgres prints only the three above.
            if !text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
            {
                return Err("not a floating-point number".into());
            }
            text.parse::<f64>()
                .map(Some)
                .map_err(|e| format!("not a floating-point number: {e}"))
        }
    }
}

/// Accepts what `numeric_out` prints: `-?digits[.digits]`, `NaN`, `±Infinity`.
fn check_numeric(text: &str) -> Result<(), String> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Ok(());
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(int) && frac.is_none_or(digits) {
        Ok(())
    } else {
        Err("not a numeric".into())
    }
}

fn parse_uuid(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let well_formed = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if well_formed {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("not a hyphenated uuid".into())
    }
}

/// Decodes `bytea` output: the hex format (`\x0a1b`) or the escape format.
fn parse_bytea(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("\\x") {
        return hex::decode(hex).map_err(|e| format!("bad hex bytea: {e}"));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes
                .get(i + 1..i + 4)
                .filter(|d| d[0] <= b'3' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
                .ok_or_else(|| "bad escape in bytea".to_string())?;
            out.push((octal[0] - b'0') * 64 + (octal[1] - b'0') * 8 + (octal[2] - b'0'));
            i += 4;
        }
    }
    Ok(out)
}
