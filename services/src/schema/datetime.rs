//! Dates and timestamps as shape predicates compare them.
//!
//! A `date` is a day number and a `timestamp`/`timestamptz` a microsecond
//! count, both counted from 2000-01-01 (UTC for `timestamptz`) on the
//! proleptic Gregorian calendar with astronomical years (1 BC is year 0),
//! exactly as Postgres stores them (so the whole range fits in an `i64`). `±infinity` are the extreme values of the
//! representation, as in Postgres, so plain integer comparison orders them.
//!
//! Input follows what Postgres accepts in a session with `DateStyle=ISO` and
//! `TimeZone=UTC`, restricted to unambiguous ISO 8601 forms:
//! `2024-01-01`, `2024-01-01 10:00`, `2024-01-01T10:00:00.5+02`,
//! `2024-01-01 10:00:00+05:30`, `0044-03-15 BC`, `infinity`, `epoch`.
//! Inputs whose value depends on when they are read (`now`, `today`) or on
//! session settings (`01/02/2024`, zone names) are refused rather than guessed.
//! Output is the text Postgres prints in such a session.

use std::fmt::Write as _;

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;
/// `date` ±infinity (Postgres: `DATEVAL_NOBEGIN` / `DATEVAL_NOEND`).
pub(crate) const DATE_NEG_INF: i32 = i32::MIN;
pub(crate) const DATE_POS_INF: i32 = i32::MAX;
/// `timestamp` ±infinity (Postgres: `DT_NOBEGIN` / `DT_NOEND`).
pub(crate) const TS_NEG_INF: i64 = i64::MIN;
pub(crate) const TS_POS_INF: i64 = i64::MAX;

/// 2000-01-01 in days since 1970-01-01: Postgres' epoch.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Days since 2000-01-01.
fn pg_days(year: i64, month: u32, day: u32) -> i64 {
    days_from_civil(year, month, day) - PG_EPOCH_DAYS
}
/// First valid date: 4714-11-24 BC (Julian day 0).
fn min_date() -> i64 {
    pg_days(-4713, 11, 24)
}
/// Last valid date: 5874897-12-31.
fn max_date() -> i64 {
    pg_days(5_874_897, 12, 31)
}
/// Timestamps end before 294277-01-01 00:00.
fn ts_end_day() -> i64 {
    pg_days(294_277, 1, 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both are small and positive by construction.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The parts of an ISO date/time text.
#[derive(Debug, Default, PartialEq)]
struct Parts {
    year: i64,
    month: u32,
    day: u32,
    /// Microseconds since midnight (may be a whole day for `24:00:00`).
    time: i64,
    /// Seconds east of UTC, when the text names an offset.
    offset: Option<i64>,
}

/// What a date/time text says.
#[derive(Debug, PartialEq)]
enum Parsed {
    PosInfinity,
    NegInfinity,
    At(Parts),
}

/// 1 to 9 ASCII digits (so the value always fits).
pub(crate) fn parse_number(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `HH:MM[:SS[.frac]]` to microseconds since midnight.
fn parse_clock(s: &str) -> Result<i64, String> {
    let mut fields = s.split(':');
    let bad = || format!("invalid time `{s}`");
    let hour = fields.next().and_then(parse_number).ok_or_else(bad)?;
    let minute = fields.next().and_then(parse_number).ok_or_else(bad)?;
    let (second, micros) = match fields.next() {
        None => (0, 0),
        Some(sec) => {
            let (whole, frac) = match sec.split_once('.') {
                Some((w, f)) => (w, f),
                None => (sec, ""),
            };
            let second = parse_number(whole).ok_or_else(bad)?;
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            if frac.len() > 6 {
                return Err(format!(
                    "time `{s}` is more precise than a microsecond; use at most 6 fractional digits"
                ));
            }
            let mut micros = 0i64;
            for (i, b) in frac.bytes().enumerate() {
                micros += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
            }
            (second, micros)
        }
    };
    if fields.next().is_some() {
        return Err(bad());
    }
    let in_range = (hour < 24 && minute < 60 && second <= 60)
        || (hour == 24 && minute == 0 && second == 0 && micros == 0);
    if !in_range {
        return Err(format!("time field value out of range: `{s}`"));
    }
    Ok(((hour * 60 + minute) * 60 + second) * 1_000_000 + micros)
}

/// Parses a UTC offset `Z`, `UTC`, `±HH`, `±HHMM`, `±HH:MM[:SS]` to seconds east.
fn parse_offset(s: &str) -> Option<i64> {
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") || s.eq_ignore_ascii_case("gmt")
    {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m, sec) = if rest.contains(':') {
        let mut it = rest.split(':');
        let h = it.next().and_then(parse_number)?;
        let m = it.next().and_then(parse_number)?;
        let sec = match it.next() {
            Some(x) => parse_number(x)?,
            None => 0,
        };
        if it.next().is_some() {
            return None;
        }
        (h, m, sec)
    } else {
        match rest.len() {
            1 | 2 => (parse_number(rest)?, 0, 0),
            4 => (parse_number(&rest[..2])?, parse_number(&rest[2..])?, 0),
            _ => return None,
        }
    };
    if h > 15 || m > 59 || sec > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60 + sec))
}

fn parse_date_part(s: &str) -> Result<(i64, u32, u32), String> {
    let bad = || {
        format!("invalid date `{s}`: use the ISO form YYYY-MM-DD (other forms depend on DateStyle)")
    };
    let mut it = s.split('-');
    let (y, m, d) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(y), Some(m), Some(d), None) if y.len() >= 4 && m.len() == 2 && d.len() == 2 => {
            (y, m, d)
        }
        _ => return Err(bad()),
    };
    let year = parse_number(y).ok_or_else(bad)?;
    let month = parse_number(m).ok_or_else(bad)?;
    let day = parse_number(d).ok_or_else(bad)?;
    if year == 0 {
        return Err(format!(
            "date `{s}` has year 0, which does not exist (1 BC precedes 1 AD)"
        ));
    }
    Ok((year, month as u32, day as u32))
}

/// Splits date/time text into its parts. The input is trimmed; fields are
/// separated by whitespace or a `T` between date and time.
fn parse(text: &str) -> Result<Parsed, String> {
    let trimmed = text.trim();
    match trimmed.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Ok(Parsed::PosInfinity),
        "-infinity" => return Ok(Parsed::NegInfinity),
        "epoch" => {
            return Ok(Parsed::At(Parts {
                year: 1970,
                month: 1,
                day: 1,
                ..Parts::default()
            }));
        }
        "now" | "today" | "tomorrow" | "yesterday" => {
            return Err(format!(
                "`{trimmed}` depends on when it is evaluated; a shape must not depend on the time"
            ));
        }
        _ => {}
    }
    let mut tokens: Vec<&str> = trimmed.split_whitespace().collect();
    // `2024-01-01T10:00` is one token: split it at the `T`.
    if let Some(first) = tokens.first().copied()
        && let Some(at) = first.find(['T', 't'])
    {
        tokens.splice(0..1, [&first[..at], &first[at + 1..]]);
    }
    let mut bc = false;
    if let Some(last) = tokens.last() {
        if last.eq_ignore_ascii_case("bc") {
            bc = true;
            tokens.pop();
        } else if last.eq_ignore_ascii_case("ad") {
            tokens.pop();
        }
    }
    let (date, rest) = tokens
        .split_first()
        .ok_or_else(|| "empty date/time text".to_string())?;
    let (year, month, day) = parse_date_part(date)?;
    let mut parts = Parts {
        year: if bc { 1 - year } else { year },
        month,
        day,
        ..Parts::default()
    };
    if month == 0 || month > 12 || day == 0 || day > days_in_month(parts.year, month) {
        return Err(format!("date/time field value out of range: `{trimmed}`"));
    }
    let mut rest = rest.to_vec();
    // The zone may be glued to the clock (`10:00+02`, `10:00Z`) or separate.
    if let Some(clock) = rest.first().copied() {
        let cut = clock
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == '+' || c == '-' || c == 'Z' || c == 'z')
            .map(|(i, _)| i);
        let (clock, zone) = match cut {
            Some(i) => (&clock[..i], Some(&clock[i..])),
            None => (clock, None),
        };
        parts.time = parse_clock(clock)?;
        rest.remove(0);
        if let Some(zone) = zone {
            rest.insert(0, zone);
        }
    }
    match rest.as_slice() {
        [] => {}
        [zone] => {
            parts.offset = Some(parse_offset(zone).ok_or_else(|| {
                format!("unsupported time zone `{zone}`: use a numeric UTC offset such as +02:00")
            })?);
        }
        _ => return Err(format!("invalid date/time `{trimmed}`")),
    }
    Ok(Parsed::At(parts))
}

/// Reads a `date` (a time of day and zone, if present, are ignored, as Postgres does).
pub(crate) fn parse_date(text: &str) -> Result<i32, String> {
    match parse(text)? {
        Parsed::PosInfinity => Ok(DATE_POS_INF),
        Parsed::NegInfinity => Ok(DATE_NEG_INF),
        Parsed::At(p) => {
            let days = pg_days(p.year, p.month, p.day);
            if days < min_date() || days > max_date() {
                return Err(format!("date out of range: `{}`", text.trim()));
            }
            // Within ±2^31 by the range check.
            Ok(days as i32)
        }
    }
}

/// Reads a `timestamp` (`with_zone = false`: an offset is ignored) or a
/// `timestamptz` (no offset means UTC, the session time zone).
pub(crate) fn parse_timestamp(text: &str, with_zone: bool) -> Result<i64, String> {
    match parse(text)? {
        Parsed::PosInfinity => Ok(TS_POS_INF),
        Parsed::NegInfinity => Ok(TS_NEG_INF),
        Parsed::At(p) => {
            let days = pg_days(p.year, p.month, p.day);
            let out_of_range = || format!("timestamp out of range: `{}`", text.trim());
            if days < min_date() || days >= ts_end_day() {
                return Err(out_of_range());
            }
            let offset = if with_zone { p.offset.unwrap_or(0) } else { 0 };
            let micros = days * MICROS_PER_DAY + p.time - offset * 1_000_000;
            if micros < min_date() * MICROS_PER_DAY || micros >= ts_end_day() * MICROS_PER_DAY {
                return Err(out_of_range());
            }
            Ok(micros)
        }
    }
}

/// A date as a timestamp at midnight (UTC), or an error past the timestamp range.
pub(crate) fn date_to_timestamp(days: i32) -> Result<i64, String> {
    match days {
        DATE_NEG_INF => Ok(TS_NEG_INF),
        DATE_POS_INF => Ok(TS_POS_INF),
        d if i64::from(d) >= ts_end_day() => Err("date out of range for timestamp".into()),
        d => Ok(i64::from(d) * MICROS_PER_DAY),
    }
}

/// The date of a timestamp (in UTC).
pub(crate) fn timestamp_to_date(micros: i64) -> i32 {
    match micros {
        TS_NEG_INF => DATE_NEG_INF,
        TS_POS_INF => DATE_POS_INF,
        // Timestamps span fewer days than an i32 holds.
        m => m.div_euclid(MICROS_PER_DAY) as i32,
    }
}

/// A date on the scale of timestamps, without overflow: a finite date past
/// the timestamp range sorts between the last finite timestamp and infinity,
/// as Postgres compares them.
pub(crate) fn date_as_instant(days: i32) -> i128 {
    match days {
        DATE_NEG_INF => i128::MIN,
        DATE_POS_INF => i128::MAX,
        d => i128::from(d) * i128::from(MICROS_PER_DAY),
    }
}

/// A timestamp on the same scale as [`date_as_instant`].
pub(crate) fn timestamp_as_instant(micros: i64) -> i128 {
    match micros {
        TS_NEG_INF => i128::MIN,
        TS_POS_INF => i128::MAX,
        m => i128::from(m),
    }
}

fn write_date(out: &mut String, days: i64) -> bool {
    let (year, month, day) = civil_from_days(days + PG_EPOCH_DAYS);
    let (shown, bc) = if year <= 0 {
        (1 - year, true)
    } else {
        (year, false)
    };
    let _ = write!(out, "{shown:04}-{month:02}-{day:02}");
    bc
}

/// `date` output: `2024-01-31`, `0044-03-15 BC`, `infinity`.
pub(crate) fn format_date(days: i32) -> String {
    match days {
        DATE_NEG_INF => "-infinity".into(),
        DATE_POS_INF => "infinity".into(),
        d => {
            let mut out = String::with_capacity(16);
            if write_date(&mut out, i64::from(d)) {
                out.push_str(" BC");
            }
            out
        }
    }
}

/// `timestamp` / `timestamptz` output in a UTC session:
/// `2024-01-31 10:00:00.5`, with `+00` for `timestamptz`.
pub(crate) fn format_timestamp(micros: i64, with_zone: bool) -> String {
    match micros {
        TS_NEG_INF => "-infinity".into(),
        TS_POS_INF => "infinity".into(),
        m => {
            let mut out = String::with_capacity(32);
            let bc = write_date(&mut out, m.div_euclid(MICROS_PER_DAY));
            let tod = m.rem_euclid(MICROS_PER_DAY);
            let secs = tod / 1_000_000;
            let frac = tod % 1_000_000;
            let _ = write!(
                out,
                " {:02}:{:02}:{:02}",
                secs / 3600,
                secs % 3600 / 60,
                secs % 60
            );
            if frac != 0 {
                let digits = format!("{frac:06}");
                out.push('.');
                out.push_str(digits.trim_end_matches('0'));
            }
            if with_zone {
                out.push_str("+00");
            }
            if bc {
                out.push_str(" BC");
            }
            out
        }
    }
}
