//! Timestamps and durations: RFC 3339 and CEL duration text, UTC calendar fields.
//! Both are i64 nanoseconds (timestamps since the Unix epoch).

const NS: i64 = 1_000_000_000;
const DAY_S: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (`m` 1..=12).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Count years from March, so that the leap day is the last day of the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month 1..=12, day 1..=31).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let d = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let m = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let y = year_of_era + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `2024-01-31T12:00:00Z`, `...12:00:00.5+01:00` (RFC 3339).
pub(crate) fn parse_timestamp(s: &str) -> Result<i64, String> {
    let bad =
        || format!("invalid timestamp '{s}' (expected RFC 3339, e.g. '2024-01-31T12:00:00Z')");
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if b.len() < 20
        || !sep(4, b"-")
        || !sep(7, b"-")
        || !sep(10, b"Tt")
        || !sep(13, b":")
        || !sep(16, b":")
    {
        return Err(bad());
    }
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return Err(bad());
    };
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return Err(bad());
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                frac_ns = frac_ns * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        frac_ns *= 10i64.pow((9 - digits) as u32);
    }
    let offset_s = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (Some(oh), Some(om)) = (num(i + 1, 2), num(i + 4, 2)) else {
                return Err(bad());
            };
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * DAY_S + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(NS)
        .and_then(|n| n.checked_add(frac_ns))
        .ok_or_else(|| format!("timestamp '{s}' is out of range (1677-09-21 to 2262-04-11)"))
}

/// Appends RFC 3339 in UTC with the fraction trimmed: `2024-01-31T12:00:00.5Z`.
pub(crate) fn format_timestamp(ns: i64, out: &mut String) {
    let (buf, len) = timestamp_text(ns);
    out.push_str(std::str::from_utf8(&buf[..len]).expect("ASCII"));
}

/// RFC 3339 in UTC with the fraction trimmed, as ASCII bytes: `(buffer, length)`. Built on
/// the stack, so writing a timestamp allocates nothing.
pub(crate) fn timestamp_text(ns: i64) -> ([u8; 32], usize) {
    // hot path
    let secs = ns.div_euclid(NS);
    let frac = ns.rem_euclid(NS);
    let sod = secs.rem_euclid(DAY_S);
    let mut b = [0u8; 32];
    b[..10].copy_from_slice(&date_text(secs.div_euclid(DAY_S)));
    let mut at = 10;
    for (sep, n) in [(b'T', sod / 3600), (b':', sod / 60 % 60), (b':', sod % 60)] {
        b[at] = sep;
        put2(&mut b[at + 1..at + 3], n);
        at += 3;
    }
    at += put_fraction(frac as u64, &mut b[at..]);
    b[at] = b'Z';
    (b, at + 1)
}

thread_local! {
    /// The day [`date_text`] formatted last on this thread, and its text: the events of
    /// a stream mostly share their day with the one before.
    static LAST_DATE: std::cell::Cell<(i64, [u8; 10])> =
        const { std::cell::Cell::new((i64::MIN, [0; 10])) };
}

/// `YYYY-MM-DD` of a day since the Unix epoch (years 1677 to 2262: four digits).
fn date_text(days: i64) -> [u8; 10] {
    LAST_DATE.with(|last| {
        let (day, text) = last.get();
        if day == days {
            return text;
        }
        let text = civil_date_text(days);
        last.set((days, text));
        text
    })
}

fn civil_date_text(days: i64) -> [u8; 10] {
    let (y, m, d) = civil_from_days(days);
    let mut b = [b'-'; 10];
    put2(&mut b[0..2], y / 100);
    put2(&mut b[2..4], y % 100);
    put2(&mut b[5..7], m);
    put2(&mut b[8..10], d);
    b
}

/// `.5`, `.000001`: nothing for 0. Returns the bytes written (at most 10).
fn put_fraction(frac_ns: u64, out: &mut [u8]) -> usize {
    if frac_ns == 0 {
        return 0;
    }
    let mut digits = [b'0'; 9];
    let mut v = frac_ns;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let len = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    out[0] = b'.';
    out[1..=len].copy_from_slice(&digits[..len]);
    len + 1
}

/// Two decimal digits.
fn put2(out: &mut [u8], n: i64) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Parses CEL (Go) duration text: `1h30m`, `-1.5s`, `100ms`, `2us`, `3ns`, `0`.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration '{s}' (expected e.g. '1h30m', '1.5s', '100ms')");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            rest = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit: i128 = match &rest[..unit_len] {
            "h" => 3600 * NS as i128,
            "m" => 60 * NS as i128,
            "s" => NS as i128,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            "" => {
                return Err(format!(
                    "invalid duration '{s}': missing unit (h, m, s, ms, us, ns)"
                ));
            }
            u => {
                return Err(format!(
                    "invalid duration '{s}': unknown unit '{u}' (h, m, s, ms, us, ns)"
                ));
            }
        };
        rest = &rest[unit_len..];
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(unit).ok_or_else(bad)?;
        let mut scale = unit;
        for c in frac_part.bytes().take(18) {
            scale /= 10;
            part += i128::from(c - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        if total > i64::MAX as i128 + 1 {
            return Err(format!("duration '{s}' is out of range (about ±292 years)"));
        }
    }
    let total = if neg { -total } else { total };
    i64::try_from(total).map_err(|_| format!("duration '{s}' is out of range (about ±292 years)"))
}

/// Appends a duration as CEL prints it: seconds with a trimmed fraction, `1.5s`.
pub(crate) fn format_duration(ns: i64, out: &mut String) {
    use std::fmt::Write;
    if ns < 0 {
        out.push('-');
    }
    let abs = ns.unsigned_abs();
    let _ = write!(out, "{}", abs / NS as u64);
    let mut frac = [0u8; 10];
    let len = put_fraction(abs % NS as u64, &mut frac);
    out.push_str(std::str::from_utf8(&frac[..len]).expect("ASCII"));
    out.push('s');
}

/// A UTC calendar field of a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    FullYear,
    /// 0-based.
    Month,
    /// Day of month, 1-based (`getDate`).
    Date,
    /// Day of month, 0-based (`getDayOfMonth`).
    DayOfMonth,
    /// 0-based.
    DayOfYear,
    /// 0 = Sunday.
    DayOfWeek,
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

/// The field of a timestamp, in UTC.
pub(crate) fn timestamp_field(ns: i64, f: Field) -> i64 {
    let secs = ns.div_euclid(NS);
    let days = secs.div_euclid(DAY_S);
    let sod = secs.rem_euclid(DAY_S);
    let (y, m, d) = civil_from_days(days);
    match f {
        Field::FullYear => y,
        Field::Month => m - 1,
        Field::Date => d,
        Field::DayOfMonth => d - 1,
        Field::DayOfYear => days - days_from_civil(y, 1, 1),
        // 1970-01-01 was a Thursday.
        Field::DayOfWeek => (days + 4).rem_euclid(7),
        Field::Hours => sod / 3600,
        Field::Minutes => sod / 60 % 60,
        Field::Seconds => sod % 60,
        Field::Milliseconds => ns.rem_euclid(NS) / 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in (-200_000..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }

    #[test]
    fn dates_alternating_on_one_thread_are_each_right() {
        // The last formatted day is remembered per thread: alternate days and times of
        // day and compare each with the date computed afresh.
        let t = parse_timestamp("2026-01-31T23:59:59.5Z").unwrap();
        for i in 0..2000i64 {
            let ns = t + (i % 3 - 1) * 3_600 * NS + (i / 7) * 86_399 * NS + i;
            let (buf, len) = timestamp_text(ns);
            let text = std::str::from_utf8(&buf[..len]).unwrap();
            let days = ns.div_euclid(NS).div_euclid(DAY_S);
            assert_eq!(text.as_bytes()[..10], civil_date_text(days), "{text}");
            assert_eq!(parse_timestamp(text).unwrap(), ns, "{text}");
        }
    }

    #[test]
    fn text_round_trip() {
        let mut s = String::new();
        let t = parse_timestamp("2024-02-29T23:59:58.120+01:00").unwrap();
        format_timestamp(t, &mut s);
        assert_eq!(s, "2024-02-29T22:59:58.12Z");
        s.clear();
        format_timestamp(-1, &mut s);
        assert_eq!(s, "1969-12-31T23:59:59.999999999Z");
        s.clear();
        format_timestamp(0, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00Z");
        let mut json = Vec::new();
        crate::expr::Val::Timestamp(1_500_000).write_json(&mut json);
        assert_eq!(json, b"\"1970-01-01T00:00:00.0015Z\"");
        assert!(parse_timestamp("2023-02-29T00:00:00Z").is_err());
        assert!(parse_timestamp("9999-01-01T00:00:00Z").is_err());
        assert_eq!(parse_duration("1h30m").unwrap(), 5400 * NS);
        assert_eq!(parse_duration("-1.5s").unwrap(), -1_500_000_000);
        assert_eq!(parse_duration("1.5µs").unwrap(), 1_500);
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("99999999999h").is_err());
        s.clear();
        format_duration(-1_500_000_000, &mut s);
        assert_eq!(s, "-1.5s");
    }
}
