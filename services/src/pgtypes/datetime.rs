//! Postgres ISO date/time output → ISO-8601 wire text.
//!
//! Invariants: the fractional seconds are copied digit for digit (no rounding,
//! no padding); years are astronomical (1 BC = `0000`, 44 BC = `-0043`),
//! zero-padded to 4 digits and never truncated; a `timestamptz` printed with a
//! non-zero offset is moved to UTC on the proleptic Gregorian calendar, as
//! Postgres does, so any session time zone gives the same instant.

use crate::schema::datetime::parse_number;
pub(super) use crate::schema::datetime::{civil_from_days, days_from_civil};

const SECS_PER_DAY: i64 = 86_400;

/// `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM[:SS]]][ BC]` → `YYYY-MM-DDTHH:MM:SS[.f][Z]`.
pub(super) fn timestamp_iso(text: &str, with_zone: bool) -> Result<String, String> {
    if matches!(text, "infinity" | "-infinity") {
        return Ok(text.to_string());
    }
    let (body, bc) = split_era(text);
    let (date, rest) = body
        .split_once(' ')
        .ok_or("expected a date and a time separated by a space")?;
    let (year, month, day) = parse_date(date, bc)?;
    let (clock, offset) = if with_zone {
        let at = rest
            .rfind(['+', '-'])
            .ok_or("expected a UTC offset such as +00")?;
        (&rest[..at], parse_offset(&rest[at..])?)
    } else {
        (rest, 0)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            (hms, &clock[hms.len()..])
        }
        Some(_) => return Err("bad fractional seconds".into()),
        None => (clock, ""),
    };
    let (hour, minute, second) = parse_hms(hms)?;
    let (year, month, day, hour, minute, second) = if offset == 0 {
        (year, month, day, hour, minute, second)
    } else {
        let secs = days_from_civil(year, month, day) * SECS_PER_DAY
            + i64::from(hour) * 3600
            + i64::from(minute) * 60
            + i64::from(second)
            - offset;
        let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let tod = secs.rem_euclid(SECS_PER_DAY);
        // tod < 86400, so each part fits in u32.
        (
            y,
            m,
            d,
            (tod / 3600) as u32,
            (tod % 3600 / 60) as u32,
            (tod % 60) as u32,
        )
    };
    // Built by hand: this runs for every timestamp of every replicated row.
    let mut out = String::with_capacity(21 + frac.len());
    push_year(&mut out, year);
    for (sep, n) in [
        ('-', month),
        ('-', day),
        ('T', hour),
        (':', minute),
        (':', second),
    ] {
        out.push(sep);
        push_2digits(&mut out, n);
    }
    out.push_str(frac);
    if with_zone {
        out.push('Z');
    }
    Ok(out)
}

/// Appends `n` (below 100) as two digits.
fn push_2digits(out: &mut String, n: u32) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// Appends a year as `format_year` prints it.
fn push_year(out: &mut String, year: i64) {
    if (0..10_000).contains(&year) {
        let y = year as u32;
        push_2digits(out, y / 100);
        push_2digits(out, y % 100);
    } else {
        out.push_str(&format_year(year));
    }
}

/// `YYYY-MM-DD[ BC]` → `YYYY-MM-DD` with an astronomical year.
pub(super) fn date_iso(text: &str) -> Result<String, String> {
    if matches!(text, "infinity" | "-infinity") {
        return Ok(text.to_string());
    }
    let (body, bc) = split_era(text);
    let (year, month, day) = parse_date(body, bc)?;
    Ok(format!("{}-{month:02}-{day:02}", format_year(year)))
}

fn split_era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

fn format_year(year: i64) -> String {
    if year < 0 {
        format!("-{:04}", -year)
    } else {
        format!("{year:04}")
    }
}

/// 1 to 9 ASCII digits.
fn digits(s: &str, what: &str) -> Result<i64, String> {
    parse_number(s).ok_or_else(|| format!("bad {what} {s:?}"))
}

/// The astronomical year, month and day of `YYYY-MM-DD` (BC when `bc`).
fn parse_date(date: &str, bc: bool) -> Result<(i64, u32, u32), String> {
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad date {date:?}"));
    };
    let year = digits(y, "year")?;
    let month = digits(m, "month")?;
    let day = digits(d, "day")?;
    if year == 0 {
        return Err("year 0 does not exist (1 BC precedes 1 AD)".into());
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(format!("bad date {date:?}"));
    }
    let year = if bc { 1 - year } else { year };
    // Range-checked above.
    Ok((year, month as u32, day as u32))
}

fn parse_hms(hms: &str) -> Result<(u32, u32, u32), String> {
    let mut parts = hms.split(':');
    let (Some(h), Some(m), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad time {hms:?}"));
    };
    let (h, m, s) = (
        digits(h, "hour")?,
        digits(m, "minute")?,
        digits(s, "second")?,
    );
    if h > 24 || m > 59 || s > 60 {
        return Err(format!("bad time {hms:?}"));
    }
    // Range-checked above.
    Ok((h as u32, m as u32, s as u32))
}

/// `±HH[:MM[:SS]]` → seconds east of UTC.
fn parse_offset(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.split_at(1) {
        ("+", rest) => (1, rest),
        ("-", rest) => (-1, rest),
        _ => return Err(format!("bad UTC offset {text:?}")),
    };
    let mut secs = 0;
    let mut count = 0;
    for (i, part) in rest.split(':').enumerate() {
        if i > 2 || part.len() != 2 {
            return Err(format!("bad UTC offset {text:?}"));
        }
        secs += digits(part, "UTC offset")? * [3600, 60, 1][i];
        count += 1;
    }
    if count == 0 {
        return Err(format!("bad UTC offset {text:?}"));
    }
    Ok(sign * secs)
}
