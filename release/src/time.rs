//! Berth's one date and time module: UTC timestamps in RFC 3339 as the index and the
//! configuration write them (`2026-12-06T19:00:00Z`, [`Timestamp`]) and as the journal writes
//! them to the microsecond ([`TimestampUs`]); the proleptic Gregorian calendar under both
//! ([`civil_from_days`], [`days_from_civil`], which the builder's FAT dates use too); and
//! durations, as configuration writes them (`90s`, `10m`, `1h30m`, `7d`: [`parse_duration`],
//! [`format_duration`]) and as people read them in the service manager's messages
//! ([`human_duration`]: `250ms`, `1.5s`, `1min 30s`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds since the Unix epoch, UTC; written as RFC 3339 with a `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// Years outside 0000–9999 are not written by RFC 3339's four-digit year.
const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

impl Timestamp {
    /// The system clock, now.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// `self` plus `d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS` followed by `Z` or `+00:00` (a fraction of a second is
    /// allowed and dropped).
    pub fn parse(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || !(b[10] == b'T' || b[10] == b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let d = &b[r];
            d.iter().all(u8::is_ascii_digit).then(|| d.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
        };
        let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
        let mut rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            rest = &frac[digits..];
        }
        if !(rest == "Z" || rest == "z" || rest == "+00:00") {
            return None;
        }
        if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        Some(Timestamp(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec.min(59)))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.clamp(MIN, MAX);
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// Microseconds since the Unix epoch (`CLOCK_REALTIME` as the journal stores it); written as
/// RFC 3339 with six decimals and a `Z` (`2026-11-22T09:01:02.123456Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampUs(pub u64);

impl fmt::Display for TimestampUs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = i64::try_from(self.0 / 1_000_000).unwrap_or(i64::MAX);
        let micros = if secs > MAX { 999_999 } else { self.0 % 1_000_000 };
        let whole = Timestamp(secs).to_string();
        write!(f, "{}.{micros:06}Z", whole.trim_end_matches('Z'))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not an RFC 3339 UTC time (2026-12-06T19:00:00Z)"))
        })
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian (year, month, day) `z` days after 1970-01-01 (H. Hinnant's
/// `civil_from_days`; `z` may be negative).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses a duration: one or more `<number><unit>` with units `us`, `ms`, `s`, `m` (minutes),
/// `h`, `d`, `w`, optionally separated by spaces (`1h30m`, `90s`, `7d`); `0` alone is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let one = match &rest[..unit] {
            "us" => Duration::from_micros(1),
            "ms" => Duration::from_millis(1),
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "w" => Duration::from_secs(7 * 86_400),
            _ => return None,
        };
        rest = &rest[unit..];
        total = total.checked_add(one.checked_mul(u32::try_from(n).ok()?)?)?;
        any = true;
    }
    any.then_some(total)
}

/// `d` the way [`parse_duration`] reads it back (`1h30m`, `5s`, `0s`, `1s500ms`), exact to the
/// microsecond.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    let (ms, us) = (d.subsec_millis(), d.subsec_micros() % 1000);
    if secs > 0 || (out.is_empty() && ms == 0 && us == 0) {
        out.push_str(&format!("{secs}s"));
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    if us > 0 {
        out.push_str(&format!("{us}us"));
    }
    out
}

/// `d` as the service manager says it to people (as systemd does): `250ms` below a second,
/// `1.5s` with a fraction, else `45s`, `2min` or `2min 5s`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(1000) {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms >= 60_000 && !ms.is_multiple_of(60_000) {
        format!("{}min {}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms >= 60_000 {
        format!("{}min", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for (s, t) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T12:34:56Z", 951_827_696),
            ("2026-12-06T19:00:00Z", 1_796_583_600),
            ("1969-12-31T23:59:59Z", -1),
        ] {
            assert_eq!(Timestamp::parse(s), Some(Timestamp(t)), "{s}");
            assert_eq!(Timestamp(t).to_string(), s);
        }
        assert_eq!(Timestamp::parse("2026-12-06T19:00:00.123+00:00"), Some(Timestamp(1_796_583_600)));
        for bad in
            ["2026-02-30T00:00:00Z", "2026-12-06 19:00:00Z", "2026-12-06T19:00:00+01:00", "x", "2026-13-01T00:00:00Z"]
        {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("2d 12h"), Some(Duration::from_secs(216_000)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "5", "5x", "h", "-1s", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for d in [0, 5, 60, 5400, 90_061] {
            let d = Duration::from_secs(d);
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        for us in [1, 999, 1000, 250_000, 1_500_000, 90_000_001, 86_400_000_123] {
            let d = Duration::from_micros(us);
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{}", format_duration(d));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_micros(250)), "250us");
    }

    #[test]
    fn durations_for_people() {
        for (ms, said) in
            [(0, "0ms"), (250, "250ms"), (1500, "1.5s"), (45_000, "45s"), (120_000, "2min"), (125_000, "2min 5s")]
        {
            assert_eq!(human_duration(Duration::from_millis(ms)), said);
        }
    }

    #[test]
    fn microsecond_timestamps_and_the_calendar() {
        assert_eq!(TimestampUs(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(TimestampUs(951_782_400_000_001).to_string(), "2000-02-29T00:00:00.000001Z");
        assert_eq!(TimestampUs(1_795_338_062_123_456).to_string(), "2026-11-22T09:01:02.123456Z");
        assert_eq!(TimestampUs(4_107_542_399_999_999).to_string(), "2100-02-28T23:59:59.999999Z");
        assert_eq!(TimestampUs(u64::MAX).to_string(), "9999-12-31T23:59:59.999999Z");
        for days in [-719_468, -1, 0, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
