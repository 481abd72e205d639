//! Typed values of shape predicates, read from Postgres text and compared
//! with Postgres semantics.
//!
//! Invariants, each as Postgres defines it:
//! - floats: `NaN = NaN`, `NaN` sorts above every other value, `-0 = 0`;
//!   `real` values are read as `f32` and widened, as `real = double` compares;
//! - numeric: exact decimals plus `NaN` (above everything) and `±Infinity`;
//!   integers compare with numerics exactly, and with floats as `f64`;
//! - text: byte order (the `C` collation); `character(n)` ignores trailing
//!   spaces, which the compiler arranges by trimming before comparisons;
//! - uuid: the 16 bytes in order; enums: their sort order;
//! - dates and timestamps: the instant, with `±infinity` at the ends.
//!
//! A datum never holds SQL NULL: callers use `Option<Datum>`.

use std::cmp::Ordering;
use std::str::FromStr;

use bigdecimal::num_bigint::BigInt;
use bigdecimal::{BigDecimal, RoundingMode};

use super::datetime;
use super::types::{IntWidth, SqlType, TextKind};

/// A `numeric` value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Numeric {
    NaN,
    PosInf,
    NegInf,
    Finite(BigDecimal),
}

impl Numeric {
    fn rank(&self) -> u8 {
        match self {
            Numeric::NegInf => 0,
            Numeric::Finite(_) => 1,
            Numeric::PosInf => 2,
            Numeric::NaN => 3,
        }
    }

    pub(crate) fn compare(&self, other: &Numeric) -> Ordering {
        match (self, other) {
            (Numeric::Finite(a), Numeric::Finite(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// `numeric_out`: plain notation keeping the display scale.
    pub(crate) fn to_text(&self) -> String {
        match self {
            Numeric::NaN => "NaN".into(),
            Numeric::PosInf => "Infinity".into(),
            Numeric::NegInf => "-Infinity".into(),
            Numeric::Finite(d) => d.to_plain_string(),
        }
    }

    /// The value without insignificant zeros: equal numerics give equal text.
    pub(crate) fn canonical_text(&self) -> String {
        match self {
            Numeric::Finite(d) => {
                let n = d.normalized();
                if n.fractional_digit_count() < 0 {
                    n.with_scale(0).to_plain_string()
                } else {
                    n.to_plain_string()
                }
            }
            other => other.to_text(),
        }
    }
}

/// A non-NULL value of a predicate operand.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Datum {
    Bool(bool),
    Int(i64),
    /// `real` and `double precision` (a `real` widened exactly).
    Float(f64),
    Numeric(Numeric),
    /// Every character type (`character(n)` with its padding).
    Text(String),
    Uuid(u128),
    /// Days since 2000-01-01; see [`datetime`].
    Date(i32),
    /// Microseconds since 2000-01-01 00:00 UTC, for both timestamp types.
    Timestamp(i64),
    /// An enum label's position in sort order.
    Enum(u32),
}

/// An error while evaluating a predicate on a row; Postgres would fail the
/// query (e.g. `integer out of range` in a cast).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct EvalError(pub String);

fn invalid(ty: &SqlType, text: &str) -> String {
    format!("invalid input syntax for type {ty}: {text:?}")
}

/// `boolin`: `t`, `true`, `yes`, `on`, `1` and their negations, any case,
/// unambiguous prefixes allowed, surrounding whitespace ignored.
fn parse_bool(text: &str) -> Option<bool> {
    let s = text.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || s == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

fn parse_int(text: &str, width: IntWidth, ty: &SqlType) -> Result<i64, String> {
    let s = text.trim();
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(ty, text));
    }
    let value = s
        .strip_prefix('+')
        .unwrap_or(s)
        .parse::<i64>()
        .map_err(|_| format!("value {s:?} is out of range for type {ty}"))?;
    let (lo, hi) = width.range();
    if value < lo || value > hi {
        return Err(format!("value {s:?} is out of range for type {ty}"));
    }
    Ok(value)
}

/// Whether a decimal text has a non-zero digit before any exponent.
fn has_nonzero_digit(s: &str) -> bool {
    s.bytes()
        .take_while(|b| *b != b'e' && *b != b'E')
        .any(|b| (b'1'..=b'9').contains(&b))
}

fn parse_float(text: &str, single: bool, ty: &SqlType) -> Result<f64, String> {
    let s = text.trim();
    let value = match s.to_ascii_lowercase().as_str() {
        "nan" | "+nan" | "-nan" => return Ok(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(f64::INFINITY),
        "-infinity" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {
            let well_formed = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
            if !well_formed {
                return Err(invalid(ty, text));
            }
            let parsed = if single {
                s.parse::<f32>().map(f64::from)
            } else {
                s.parse::<f64>()
            };
            parsed.map_err(|_| invalid(ty, text))?
        }
    };
    if value.is_infinite() || (value == 0.0 && has_nonzero_digit(s)) {
        return Err(format!("{s:?} is out of range for type {ty}"));
    }
    Ok(value)
}

/// `numeric_in`: `[+-]digits[.digits][e[+-]digits]`, `NaN`, `±Infinity`.
pub(crate) fn parse_numeric(text: &str) -> Result<Numeric, String> {
    let s = text.trim();
    match s.to_ascii_lowercase().as_str() {
        "nan" => return Ok(Numeric::NaN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Numeric::PosInf),
        "-infinity" | "-inf" => return Ok(Numeric::NegInf),
        _ => {}
    }
    let bad = || invalid(&SqlType::Numeric, text);
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => {
            let exp = &body[at + 1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let exp: i64 = exp.parse().map_err(|_| bad())?;
            if exp.abs() > 1000 {
                return Err(format!("value {s:?} overflows numeric format"));
            }
            (&body[..at], exp)
        }
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Err(bad());
    }
    let mut digits = String::with_capacity(int.len() + frac.len() + 1);
    if negative {
        digits.push('-');
    }
    digits.push_str(int);
    digits.push_str(frac);
    let unscaled = BigInt::from_str(&digits).map_err(|_| bad())?;
    // Postgres' display scale: digits after the point, less the exponent, at least 0.
    let scale = frac.len() as i64 - exponent;
    let value = BigDecimal::new(unscaled, scale);
    Ok(Numeric::Finite(if scale < 0 {
        value.with_scale(0)
    } else {
        value
    }))
}

/// `uuid_in`: 32 hex digits, any case, optional `{}` and a `-` after any
/// group of four digits.
pub(crate) fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    let (mut i, braces) = match bytes.first() {
        Some(b'{') => (1, true),
        _ => (0, false),
    };
    let mut value: u128 = 0;
    for n in 0..16 {
        let pair = bytes.get(i..i + 2)?;
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        value = (value << 8) | u128::from(hi * 16 + lo);
        i += 2;
        if bytes.get(i) == Some(&b'-') && n % 2 == 1 && n < 15 {
            i += 1;
        }
    }
    if braces {
        if bytes.get(i) != Some(&b'}') {
            return None;
        }
        i += 1;
    }
    (i == bytes.len()).then_some(value)
}

pub(crate) fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Reads a value of `ty` from its text form, as the type's input function
/// does (the text of a literal, a token claim, or a column from Postgres).
pub(crate) fn parse_input(ty: &SqlType, text: &str) -> Result<Datum, String> {
    Ok(match ty {
        SqlType::Bool => Datum::Bool(parse_bool(text).ok_or_else(|| invalid(ty, text))?),
        SqlType::Int(w) => Datum::Int(parse_int(text, *w, ty)?),
        SqlType::Float { single } => Datum::Float(parse_float(text, *single, ty)?),
        SqlType::Numeric => Datum::Numeric(parse_numeric(text)?),
        SqlType::Text(_) | SqlType::Unknown => Datum::Text(text.to_string()),
        SqlType::Uuid => Datum::Uuid(parse_uuid(text).ok_or_else(|| invalid(ty, text))?),
        SqlType::Timestamptz => Datum::Timestamp(datetime::parse_timestamp(text, true)?),
        SqlType::Timestamp => Datum::Timestamp(datetime::parse_timestamp(text, false)?),
        SqlType::Date => Datum::Date(datetime::parse_date(text)?),
        SqlType::Enum(e) => {
            let at = e
                .labels
                .iter()
                .position(|l| l == text)
                .ok_or_else(|| format!("invalid input value for enum {}: {text:?}", e.name))?;
            // Enums have far fewer than 2^32 labels.
            Datum::Enum(at as u32)
        }
        SqlType::Other(name) => return Err(format!("values of type {name} cannot be compared")),
    })
}

/// Postgres' `float8` order: NaN equals NaN and sorts above everything.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// `numeric → double precision` (or `real`): correctly rounded; an error
/// when the value does not fit, as in Postgres.
pub(crate) fn numeric_to_float(n: &Numeric, single: bool) -> Result<f64, EvalError> {
    match n {
        Numeric::NaN => Ok(f64::NAN),
        Numeric::PosInf => Ok(f64::INFINITY),
        Numeric::NegInf => Ok(f64::NEG_INFINITY),
        Numeric::Finite(d) => {
            let text = d.to_scientific_notation();
            let ty = SqlType::Float { single };
            parse_float(&text, single, &ty).map_err(EvalError)
        }
    }
}

/// `double precision → numeric`: the value printed with 15 significant
/// digits (6 for `real`), as Postgres converts it.
pub(crate) fn float_to_numeric(f: f64, single: bool) -> Numeric {
    if f.is_nan() {
        return Numeric::NaN;
    }
    if f.is_infinite() {
        return if f > 0.0 {
            Numeric::PosInf
        } else {
            Numeric::NegInf
        };
    }
    let digits = if single { 6 } else { 15 };
    let text = format!("{:.*e}", digits - 1, f);
    let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
    // `%g` drops trailing zeros of the fraction.
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    // Both parts come from `format!`, so they parse.
    parse_numeric(&format!("{mantissa}e{exp}")).unwrap_or(Numeric::NaN)
}

/// Compares two values of comparable types (see `types::Category`).
pub(crate) fn compare(a: &Datum, b: &Datum) -> Result<Ordering, EvalError> {
    use Datum as D;
    Ok(match (a, b) {
        (D::Bool(x), D::Bool(y)) => x.cmp(y),
        (D::Int(x), D::Int(y)) => x.cmp(y),
        (D::Float(x), D::Float(y)) => float_cmp(*x, *y),
        (D::Numeric(x), D::Numeric(y)) => x.compare(y),
        (D::Int(x), D::Float(y)) => float_cmp(*x as f64, *y),
        (D::Float(x), D::Int(y)) => float_cmp(*x, *y as f64),
        (D::Int(x), D::Numeric(y)) => Numeric::Finite(BigDecimal::from(*x)).compare(y),
        (D::Numeric(x), D::Int(y)) => x.compare(&Numeric::Finite(BigDecimal::from(*y))),
        (D::Numeric(x), D::Float(y)) => float_cmp(numeric_to_float(x, false)?, *y),
        (D::Float(x), D::Numeric(y)) => float_cmp(*x, numeric_to_float(y, false)?),
        (D::Text(x), D::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (D::Uuid(x), D::Uuid(y)) => x.cmp(y),
        (D::Enum(x), D::Enum(y)) => x.cmp(y),
        (D::Date(x), D::Date(y)) => x.cmp(y),
        (D::Timestamp(x), D::Timestamp(y)) => x.cmp(y),
        (D::Date(x), D::Timestamp(y)) => {
            datetime::date_as_instant(*x).cmp(&datetime::timestamp_as_instant(*y))
        }
        (D::Timestamp(x), D::Date(y)) => {
            datetime::timestamp_as_instant(*x).cmp(&datetime::date_as_instant(*y))
        }
        _ => {
            return Err(EvalError(format!("cannot compare {a:?} with {b:?}")));
        }
    })
}

/// The text that identifies a value of `ty` in a bucket key: equal values
/// (by the type's `=`) give equal text, and the text is the form Postgres
/// prints (what `pgtypes::to_value` reads).
pub(crate) fn key_text(ty: &SqlType, d: &Datum) -> Option<String> {
    Some(match (ty, d) {
        (_, Datum::Bool(b)) => if *b { "t" } else { "f" }.to_string(),
        (_, Datum::Int(i)) => i.to_string(),
        (_, Datum::Numeric(n)) => n.canonical_text(),
        (SqlType::Text(TextKind::Bpchar), Datum::Text(s)) => s.trim_end_matches(' ').to_string(),
        (_, Datum::Text(s)) => s.clone(),
        (_, Datum::Uuid(u)) => format_uuid(*u),
        (_, Datum::Date(days)) => datetime::format_date(*days),
        (SqlType::Timestamptz, Datum::Timestamp(m)) => datetime::format_timestamp(*m, true),
        (_, Datum::Timestamp(m)) => datetime::format_timestamp(*m, false),
        (SqlType::Enum(e), Datum::Enum(at)) => e.labels.get(*at as usize)?.clone(),
        _ => return None,
    })
}

fn out_of_range(ty: &SqlType) -> EvalError {
    EvalError(format!("{ty} out of range"))
}

fn int_in_range(v: i64, width: IntWidth, ty: &SqlType) -> Result<Datum, EvalError> {
    let (lo, hi) = width.range();
    if v < lo || v > hi {
        return Err(out_of_range(ty));
    }
    Ok(Datum::Int(v))
}

fn float_to_width(f: f64, single: bool, ty: &SqlType) -> Result<Datum, EvalError> {
    if !single {
        return Ok(Datum::Float(f));
    }
    let narrowed = f as f32;
    if (narrowed.is_infinite() && f.is_finite()) || (narrowed == 0.0 && f != 0.0) {
        return Err(out_of_range(ty));
    }
    Ok(Datum::Float(f64::from(narrowed)))
}

/// Applies an explicit cast `from::to` (one that `types::cast_exists` allows).
pub(crate) fn cast(d: &Datum, from: &SqlType, to: &SqlType) -> Result<Datum, EvalError> {
    use SqlType as T;
    let input = |text: &str| parse_input(to, text).map_err(EvalError);
    Ok(match (d, to) {
        // From text: the target type's input function (`character(n)` loses its padding first).
        (Datum::Text(s), T::Text(TextKind::Bpchar)) => Datum::Text(s.clone()),
        (Datum::Text(s), _) => {
            let s = match from {
                T::Text(TextKind::Bpchar) => s.trim_end_matches(' '),
                _ => s.as_str(),
            };
            input(s)?
        }
        // To text: the source type's output function.
        (Datum::Bool(b), T::Text(_)) => Datum::Text(if *b { "true" } else { "false" }.into()),
        (Datum::Int(i), T::Text(_)) => Datum::Text(i.to_string()),
        (Datum::Numeric(n), T::Text(_)) => Datum::Text(n.to_text()),
        (Datum::Uuid(u), T::Text(_)) => Datum::Text(format_uuid(*u)),
        (Datum::Enum(at), T::Text(_)) => match from {
            T::Enum(e) => Datum::Text(
                e.labels
                    .get(*at as usize)
                    .cloned()
                    .ok_or_else(|| EvalError("enum label out of range".into()))?,
            ),
            _ => return Err(EvalError("enum cast from a non-enum type".into())),
        },
        (Datum::Bool(b), T::Bool) => Datum::Bool(*b),
        (Datum::Int(i), T::Bool) => Datum::Bool(*i != 0),
        (Datum::Bool(b), T::Int(_)) => Datum::Int(i64::from(*b)),
        (Datum::Int(i), T::Int(w)) => int_in_range(*i, *w, to)?,
        (Datum::Float(f), T::Int(w)) => {
            let r = f.round_ties_even();
            // i64::MAX as f64 rounds up to 2^63, which does not fit.
            if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r) {
                return Err(out_of_range(to));
            }
            int_in_range(r as i64, *w, to)?
        }
        (Datum::Numeric(n), T::Int(w)) => match n {
            Numeric::Finite(v) => {
                let rounded = v.with_scale_round(0, RoundingMode::HalfUp);
                let (digits, _) = rounded.into_bigint_and_exponent();
                let v = i64::try_from(digits).map_err(|_| out_of_range(to))?;
                int_in_range(v, *w, to)?
            }
            _ => return Err(EvalError(format!("cannot convert {} to {to}", n.to_text()))),
        },
        (Datum::Int(i), T::Float { single }) => {
            if *single {
                Datum::Float(f64::from(*i as f32))
            } else {
                Datum::Float(*i as f64)
            }
        }
        (Datum::Float(f), T::Float { single }) => float_to_width(*f, *single, to)?,
        (Datum::Numeric(n), T::Float { single }) => Datum::Float(numeric_to_float(n, *single)?),
        (Datum::Int(i), T::Numeric) => Datum::Numeric(Numeric::Finite(BigDecimal::from(*i))),
        (Datum::Float(f), T::Numeric) => {
            let single = matches!(from, T::Float { single: true });
            Datum::Numeric(float_to_numeric(*f, single))
        }
        (Datum::Numeric(n), T::Numeric) => Datum::Numeric(n.clone()),
        (Datum::Uuid(u), T::Uuid) => Datum::Uuid(*u),
        (Datum::Enum(at), T::Enum(_)) => Datum::Enum(*at),
        (Datum::Date(days), T::Date) => Datum::Date(*days),
        (Datum::Date(days), T::Timestamp | T::Timestamptz) => {
            Datum::Timestamp(datetime::date_to_timestamp(*days).map_err(EvalError)?)
        }
        (Datum::Timestamp(m), T::Date) => Datum::Date(datetime::timestamp_to_date(*m)),
        (Datum::Timestamp(m), T::Timestamp | T::Timestamptz) => Datum::Timestamp(*m),
        _ => return Err(EvalError(format!("cannot cast type {from} to {to}"))),
    })
}
