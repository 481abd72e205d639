//! Values: input parsing, comparison, casts and key text.

use std::cmp::Ordering;

use crate::schema::datetime::{format_date, format_timestamp, parse_date, parse_timestamp};
use crate::schema::datum::{
    Datum, Numeric, cast, compare, float_to_numeric, key_text, parse_input, parse_numeric,
    parse_uuid,
};
use crate::schema::eval::LikePattern;
use crate::schema::types::{CaseFold, IntWidth, SqlType, TextKind};

fn d(ty: &SqlType, text: &str) -> Datum {
    parse_input(ty, text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn floats_order_like_postgres() {
    let f = SqlType::Float { single: false };
    let nan = d(&f, "NaN");
    assert_eq!(compare(&nan, &nan), Ok(Ordering::Equal));
    assert_eq!(compare(&nan, &d(&f, "Infinity")), Ok(Ordering::Greater));
    assert_eq!(compare(&d(&f, "-0"), &d(&f, "0")), Ok(Ordering::Equal));
    assert_eq!(
        compare(&d(&f, "-Infinity"), &Datum::Int(i64::MIN)),
        Ok(Ordering::Less)
    );
    assert!(parse_input(&f, "1e400").is_err());
    assert!(parse_input(&f, "1e-400").is_err());
    assert!(parse_input(&f, "abc").is_err());
    // `real` widens exactly: 0.1::real <> 0.1::float8.
    let r = d(&SqlType::Float { single: true }, "0.1");
    assert_ne!(compare(&r, &d(&f, "0.1")), Ok(Ordering::Equal));
}

#[test]
fn numerics_are_exact() {
    let one_and_half = Datum::Numeric(parse_numeric("1.50").expect("numeric"));
    assert_eq!(
        compare(
            &one_and_half,
            &Datum::Numeric(parse_numeric("1.5e0").expect("n"))
        ),
        Ok(Ordering::Equal)
    );
    assert_eq!(
        compare(&Datum::Int(2), &one_and_half),
        Ok(Ordering::Greater)
    );
    let nan = Datum::Numeric(Numeric::NaN);
    assert_eq!(
        compare(&nan, &Datum::Numeric(Numeric::PosInf)),
        Ok(Ordering::Greater)
    );
    assert_eq!(
        key_text(&SqlType::Numeric, &one_and_half).as_deref(),
        Some("1.5")
    );
    assert_eq!(
        key_text(
            &SqlType::Numeric,
            &Datum::Numeric(parse_numeric("1.2e3").expect("n"))
        )
        .as_deref(),
        Some("1200")
    );
    assert_eq!(
        parse_numeric("1.5e3").expect("n"),
        parse_numeric("1500").expect("n")
    );
    assert!(parse_numeric("1e5000").is_err());
    assert!(parse_numeric("1.2.3").is_err());
    assert!(parse_numeric(".").is_err());
    // float8 → numeric keeps 15 significant digits.
    assert_eq!(
        float_to_numeric(0.1 + 0.2, false),
        parse_numeric("0.3").expect("n")
    );
    assert_eq!(
        float_to_numeric(1e20, false).to_text(),
        "100000000000000000000"
    );
    assert_eq!(float_to_numeric(1.5e-5, false).to_text(), "0.000015");
}

#[test]
fn integers_and_booleans_read_like_postgres() {
    let i4 = SqlType::Int(IntWidth::I4);
    assert_eq!(d(&i4, " +42 "), Datum::Int(42));
    assert!(parse_input(&i4, "2147483648").is_err());
    assert!(parse_input(&i4, "4.0").is_err());
    let b = SqlType::Bool;
    for t in ["t", "TRUE", "ye", "on", "1", " true "] {
        assert_eq!(d(&b, t), Datum::Bool(true), "{t}");
    }
    for f in ["f", "No", "off", "0"] {
        assert_eq!(d(&b, f), Datum::Bool(false), "{f}");
    }
    for bad in ["o", "tru e", "2", ""] {
        assert!(parse_input(&b, bad).is_err(), "{bad}");
    }
}

#[test]
fn uuids_accept_postgres_forms() {
    let canonical = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert!(canonical.is_some());
    for same in [
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
    ] {
        assert_eq!(parse_uuid(same), canonical, "{same}");
    }
    for bad in [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
        "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
    ] {
        assert_eq!(parse_uuid(bad), None, "{bad}");
    }
}

#[test]
fn dates_and_timestamps() {
    let utc = |s: &str| parse_timestamp(s, true).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(utc("2024-01-01T10:00:00+02"), utc("2024-01-01 08:00"));
    assert_eq!(utc("2024-01-01 10:00:00+05:30"), utc("2024-01-01 04:30Z"));
    assert_eq!(utc("2000-01-01"), 0);
    assert_eq!(utc("epoch"), -946_684_800_000_000);
    assert_eq!(utc("2024-01-01 24:00"), utc("2024-01-02"));
    // A timestamp without time zone ignores an offset.
    assert_eq!(
        parse_timestamp("2024-01-01 10:00+02", false),
        parse_timestamp("2024-01-01 10:00", false)
    );
    for bad in [
        "now",
        "today",
        "01/02/2024",
        "2024-02-30",
        "2023-02-29",
        "2024-01-01 10:00 Europe/Paris",
        "2024-01-01 10:00:00.1234567",
        "0000-01-01",
    ] {
        assert!(parse_timestamp(bad, true).is_err(), "{bad}");
    }
    assert_eq!(
        format_timestamp(utc("2024-05-01 12:00:00.5+00"), true),
        "2024-05-01 12:00:00.5+00"
    );
    assert_eq!(
        format_timestamp(utc("0044-03-15 12:00:00 BC"), true),
        "0044-03-15 12:00:00+00 BC"
    );
    assert_eq!(format_timestamp(utc("infinity"), false), "infinity");
    let date = |s: &str| parse_date(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(format_date(date("2024-02-29 23:00+05")), "2024-02-29");
    assert_eq!(format_date(date("0001-01-01 BC")), "0001-01-01 BC");
    assert_eq!(format_date(date("-infinity")), "-infinity");
    assert!(parse_date("5874898-01-01").is_err());
    assert!(parse_timestamp("294277-01-01", false).is_err());
    // A date past the timestamp range sorts between finite timestamps and infinity.
    let far = Datum::Date(date("300000-01-01"));
    assert_eq!(
        compare(&far, &Datum::Timestamp(utc("294276-12-31"))),
        Ok(Ordering::Greater)
    );
    assert_eq!(
        compare(&far, &Datum::Timestamp(utc("infinity"))),
        Ok(Ordering::Less)
    );
    assert!(cast(&far, &SqlType::Date, &SqlType::Timestamptz).is_err());
}

#[test]
fn casts_round_and_check_ranges() {
    let f = SqlType::Float { single: false };
    let i4 = SqlType::Int(IntWidth::I4);
    let n = SqlType::Numeric;
    assert_eq!(cast(&Datum::Float(2.5), &f, &i4), Ok(Datum::Int(2)));
    assert_eq!(cast(&Datum::Float(3.5), &f, &i4), Ok(Datum::Int(4)));
    assert!(cast(&Datum::Float(f64::NAN), &f, &i4).is_err());
    assert!(cast(&Datum::Float(3e9), &f, &i4).is_err());
    let half = Datum::Numeric(parse_numeric("-2.5").expect("n"));
    assert_eq!(cast(&half, &n, &i4), Ok(Datum::Int(-3)));
    assert!(cast(&Datum::Int(1 << 40), &SqlType::Int(IntWidth::I8), &i4).is_err());
    let text = SqlType::Text(TextKind::Text);
    assert_eq!(
        cast(&Datum::Bool(true), &SqlType::Bool, &text),
        Ok(Datum::Text("true".into()))
    );
    assert_eq!(
        cast(
            &Datum::Text("ab  ".into()),
            &SqlType::Text(TextKind::Bpchar),
            &text
        ),
        Ok(Datum::Text("ab".into()))
    );
    assert_eq!(
        cast(&Datum::Text(" 7 ".into()), &text, &i4),
        Ok(Datum::Int(7))
    );
}

#[test]
fn like_patterns() {
    let m = |p: &str, t: &str| {
        LikePattern::compile(p, Some('\\'), None)
            .expect("pattern")
            .matches(t)
    };
    assert!(m("a%", "abc"));
    assert!(m("%", ""));
    assert!(!m("_", ""));
    assert!(m("_é_", "aéb"));
    assert!(m("%b%b", "abxbb"));
    assert!(!m("a\\%", "ab"));
    assert!(m("a\\%", "a%"));
    assert!(m("a\\_%", "a_x"));
    assert!(!m("abc", "abcd"));
    assert!(m("%%a%%", "xa"));
    let ci = LikePattern::compile("ÉCOLE%", Some('\\'), Some(CaseFold::Simple)).expect("pattern");
    assert!(ci.matches("école normale"));
    let ascii = LikePattern::compile("É%", Some('\\'), Some(CaseFold::Ascii)).expect("pattern");
    assert!(!ascii.matches("é"));
    assert!(LikePattern::compile("a#", Some('#'), None).is_err());
    assert!(
        LikePattern::compile("a\\", None, None)
            .expect("no escape")
            .matches("a\\")
    );
}
