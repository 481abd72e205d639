//! Values of local writes: how they are stored in the replica's own tables,
//! compared, and combined for `counter` columns.
//!
//! The outbox (`columns`, `before`), the server rows kept for rows with local
//! changes (`_outpost_shadow.data`) and the rejections (`attempted`) hold
//! column values as a JSON object, column name → value:
//!
//! | SQLite value | JSON |
//! |---|---|
//! | NULL | `null` |
//! | INTEGER | a number without fraction or exponent (`42`) |
//! | REAL | a number with a fraction or exponent (`1.0`, `1e300`); ±∞ and NaN as `{"$real": "Infinity"}`, `{"$real": "-Infinity"}`, `{"$real": "NaN"}` |
//! | TEXT | a string |
//! | BLOB | `{"$blob": "<lower-case hex>"}` |
//!
//! Invariant: decoding an encoded value gives the same value back (reals bit
//! for bit, except that every NaN reads back as the same NaN), so nothing a
//! local write stored is lost or changes type on its way to the service.

use bigdecimal::BigDecimal;
use outpost_proto::v1::{Value, value::Kind};
use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde_json::{Map, Number, Value as Json};
use std::fmt::Write as _;
use std::str::FromStr;

/// Binds a wire value as an SQLite value without copying it.
pub(crate) struct Sql<'a>(pub(crate) &'a Value);

impl ToSql for Sql<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match &self.0.kind {
            None | Some(Kind::Null(_)) => ValueRef::Null,
            Some(Kind::Integer(i)) => ValueRef::Integer(*i),
            Some(Kind::Real(r)) => ValueRef::Real(*r),
            Some(Kind::Text(t)) => ValueRef::Text(t.as_bytes()),
            Some(Kind::Blob(b)) => ValueRef::Blob(b),
        }))
    }
}

pub(crate) fn null() -> Value {
    Value {
        kind: Some(Kind::Null(true)),
    }
}

/// The wire form of an SQLite value (text that is not UTF-8 is read lossily).
pub(crate) fn from_sql(v: ValueRef<'_>) -> Value {
    let kind = match v {
        ValueRef::Null => Kind::Null(true),
        ValueRef::Integer(i) => Kind::Integer(i),
        ValueRef::Real(r) => Kind::Real(r),
        ValueRef::Text(t) => Kind::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Kind::Blob(b.to_vec()),
    };
    Value { kind: Some(kind) }
}

fn to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::Null(_)) => Json::Null,
        Some(Kind::Integer(i)) => Json::from(*i),
        Some(Kind::Real(r)) => match Number::from_f64(*r) {
            Some(n) => Json::Number(n),
            None => {
                let s = if r.is_nan() {
                    "NaN"
                } else if *r > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                };
                let mut m = Map::new();
                m.insert("$real".into(), Json::from(s));
                Json::Object(m)
            }
        },
        Some(Kind::Text(t)) => Json::from(t.as_str()),
        Some(Kind::Blob(b)) => {
            let mut hex = String::with_capacity(b.len() * 2);
            for byte in b {
                let _ = write!(hex, "{byte:02x}");
            }
            let mut m = Map::new();
            m.insert("$blob".into(), Json::from(hex));
            Json::Object(m)
        }
    }
}

fn from_json(j: &Json) -> Option<Value> {
    let kind = match j {
        Json::Null => Kind::Null(true),
        Json::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => Kind::Integer(i),
            _ => Kind::Real(n.as_f64()?),
        },
        Json::String(s) => Kind::Text(s.clone()),
        Json::Object(m) if m.len() == 1 => match m.iter().next()? {
            (k, Json::String(s)) if k == "$real" => Kind::Real(match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                _ => return None,
            }),
            (k, Json::String(hex)) if k == "$blob" => {
                if hex.len() % 2 != 0 {
                    return None;
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
                Kind::Blob(bytes)
            }
            _ => return None,
        },
        _ => return None,
    };
    Some(Value { kind: Some(kind) })
}

/// Encodes column values as a JSON object.
pub(crate) fn encode_columns<'a>(
    columns: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> String {
    let map: Map<String, Json> = columns
        .into_iter()
        .map(|(name, value)| (name.to_string(), to_json(value)))
        .collect();
    Json::Object(map).to_string()
}

/// Decodes a JSON object of column values; `None` if it is not one
/// [`encode_columns`] produces.
pub(crate) fn decode_columns(json: &str) -> Option<Vec<(String, Value)>> {
    let Json::Object(map) = serde_json::from_str::<Json>(json).ok()? else {
        return None;
    };
    map.into_iter()
        .map(|(name, v)| Some((name, from_json(&v)?)))
        .collect()
}

/// Merges JSON objects of column values into one (later names win).
pub(crate) fn join_columns<'a>(parts: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut map = Map::new();
    for part in parts {
        let Json::Object(m) = serde_json::from_str::<Json>(part).ok()? else {
            return None;
        };
        map.extend(m);
    }
    Some(Json::Object(map).to_string())
}

/// Whether SQLite considers two values the same (`a IS b` under the BINARY
/// collation): integers and reals compare as numbers, other values by type
/// and content.
pub(crate) fn sqlite_is(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => true,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
        (ValueRef::Real(x), ValueRef::Real(y)) => x == y,
        (ValueRef::Integer(i), ValueRef::Real(r)) | (ValueRef::Real(r), ValueRef::Integer(i)) => {
            (i as f64) == r && (r as i64) == i
        }
        (ValueRef::Text(x), ValueRef::Text(y)) => x == y,
        (ValueRef::Blob(x), ValueRef::Blob(y)) => x == y,
        _ => false,
    }
}

fn decimal(s: &str) -> Option<BigDecimal> {
    BigDecimal::from_str(s.trim()).ok()
}

/// The amount a `counter` column moved: `new − old`, in the type of `new`
/// (a NULL `old` counts as zero). `None` when the values are not numbers of
/// one kind, or the difference does not fit.
pub(crate) fn counter_delta(new: &Value, old: Option<&Value>) -> Option<Value> {
    let kind = match (&new.kind, old.and_then(|o| o.kind.as_ref())) {
        (Some(Kind::Integer(n)), None | Some(Kind::Null(_))) => Kind::Integer(*n),
        (Some(Kind::Integer(n)), Some(Kind::Integer(o))) => Kind::Integer(n.checked_sub(*o)?),
        (Some(Kind::Real(n)), None | Some(Kind::Null(_))) => Kind::Real(*n),
        (Some(Kind::Real(n)), Some(Kind::Real(o))) => Kind::Real(n - o),
        (Some(Kind::Real(n)), Some(Kind::Integer(o))) => Kind::Real(n - *o as f64),
        (Some(Kind::Integer(n)), Some(Kind::Real(o))) => Kind::Real(*n as f64 - o),
        (Some(Kind::Text(n)), None | Some(Kind::Null(_))) => {
            decimal(n)?;
            Kind::Text(n.trim().to_string())
        }
        (Some(Kind::Text(n)), Some(Kind::Text(o))) => {
            Kind::Text((decimal(n)? - decimal(o)?).to_plain_string())
        }
        _ => return None,
    };
    Some(Value { kind: Some(kind) })
}

/// `current + delta` for a `counter` column (a NULL `current` counts as
/// zero); `None` when the values are not numbers of one kind.
pub(crate) fn counter_add(current: &Value, delta: &Value) -> Option<Value> {
    let kind = match (&current.kind, &delta.kind) {
        (None | Some(Kind::Null(_)), d) => d.clone()?,
        (Some(Kind::Integer(c)), Some(Kind::Integer(d))) => Kind::Integer(c.saturating_add(*d)),
        (Some(Kind::Real(c)), Some(Kind::Real(d))) => Kind::Real(c + d),
        (Some(Kind::Real(c)), Some(Kind::Integer(d))) => Kind::Real(c + *d as f64),
        (Some(Kind::Integer(c)), Some(Kind::Real(d))) => Kind::Real(*c as f64 + d),
        (Some(Kind::Text(c)), Some(Kind::Text(d))) => {
            Kind::Text((decimal(c)? + decimal(d)?).to_plain_string())
        }
        _ => return None,
    };
    Some(Value { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    #[test]
    fn column_values_round_trip() {
        let values = vec![
            ("n", v(Kind::Null(true))),
            ("i", v(Kind::Integer(i64::MIN))),
            ("j", v(Kind::Integer(i64::MAX))),
            ("r", v(Kind::Real(1.0))),
            ("neg0", v(Kind::Real(-0.0))),
            ("big", v(Kind::Real(1e300))),
            ("tiny", v(Kind::Real(5e-324))),
            ("inf", v(Kind::Real(f64::INFINITY))),
            ("ninf", v(Kind::Real(f64::NEG_INFINITY))),
            (
                "t",
                v(Kind::Text(
                    "a \"quoted\" \u{1} é {\"$blob\": \"00\"}".into(),
                )),
            ),
            ("b", v(Kind::Blob(vec![0, 1, 255]))),
            ("e", v(Kind::Blob(vec![]))),
        ];
        let json = encode_columns(values.iter().map(|(n, v)| (*n, v)));
        let mut back = decode_columns(&json).expect("decodes");
        back.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = values.clone();
        want.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(back.len(), want.len());
        for ((bn, bv), (wn, wv)) in back.iter().zip(&want) {
            assert_eq!(bn, wn);
            match (&bv.kind, &wv.kind) {
                (Some(Kind::Real(x)), Some(Kind::Real(y))) => {
                    assert_eq!(x.to_bits(), y.to_bits(), "{bn}")
                }
                _ => assert_eq!(bv, wv, "{bn}"),
            }
        }
        let nan = encode_columns([("x", &v(Kind::Real(f64::NAN)))]);
        let back = decode_columns(&nan).expect("decodes");
        assert!(matches!(back[0].1.kind, Some(Kind::Real(r)) if r.is_nan()));
        for bad in [
            "[]",
            "{\"a\": [1]}",
            "{\"a\": {\"$blob\": \"0\"}}",
            "{\"a\": {\"x\": 1}}",
        ] {
            assert!(decode_columns(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn counters_move_by_deltas() {
        let i = |x| v(Kind::Integer(x));
        let r = |x| v(Kind::Real(x));
        let t = |x: &str| v(Kind::Text(x.into()));
        assert_eq!(counter_delta(&i(8), Some(&i(5))), Some(i(3)));
        assert_eq!(counter_delta(&i(8), None), Some(i(8)));
        assert_eq!(counter_delta(&i(8), Some(&null())), Some(i(8)));
        assert_eq!(counter_delta(&r(2.5), Some(&r(1.0))), Some(r(1.5)));
        assert_eq!(
            counter_delta(&t("10.50"), Some(&t("0.25"))),
            Some(t("10.25"))
        );
        assert_eq!(counter_delta(&i(i64::MAX), Some(&i(-1))), None);
        assert_eq!(counter_delta(&t("abc"), Some(&t("1"))), None);
        assert_eq!(counter_add(&i(5), &i(3)), Some(i(8)));
        assert_eq!(counter_add(&null(), &i(3)), Some(i(3)));
        assert_eq!(counter_add(&t("1.5"), &t("-0.5")), Some(t("1.0")));
        assert_eq!(counter_add(&t("x"), &t("1")), None);
    }

    #[test]
    fn sqlite_equality() {
        assert!(sqlite_is(ValueRef::Integer(1), ValueRef::Real(1.0)));
        assert!(!sqlite_is(ValueRef::Integer(1), ValueRef::Text(b"1")));
        assert!(!sqlite_is(ValueRef::Text(b"a"), ValueRef::Blob(b"a")));
        assert!(sqlite_is(ValueRef::Null, ValueRef::Null));
        assert!(!sqlite_is(ValueRef::Null, ValueRef::Integer(0)));
    }
}
