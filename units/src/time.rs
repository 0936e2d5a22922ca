//! systemd time spans (systemd.time(7)): `90`, `5min 20s`, `1.5h`, `2min30s`, `100ms`,
//! `infinity`; and byte sizes with 1024-based suffixes (`64K`, `1.5G`) for `Limit*=`.

use std::fmt;
use std::time::Duration;

use crate::error::ValueError;

/// A time span that may be infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimeSpan {
    Finite(Duration),
    Infinity,
}

impl TimeSpan {
    pub fn finite(self) -> Option<Duration> {
        match self {
            TimeSpan::Finite(d) => Some(d),
            TimeSpan::Infinity => None,
        }
    }
}

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeSpan::Infinity => f.write_str("infinity"),
            TimeSpan::Finite(d) if d.subsec_micros() == 0 => write!(f, "{}s", d.as_secs()),
            TimeSpan::Finite(d) => write!(f, "{}us", d.as_micros()),
        }
    }
}

const USEC_PER_SEC: u128 = 1_000_000;

/// Unit suffixes and their length in microseconds. Longer spellings come first so that `min`
/// is not read as `m` + `in`, and `ms` not as `m` + `s`.
const UNITS: &[(&str, u128)] = &[
    ("seconds", USEC_PER_SEC),
    ("second", USEC_PER_SEC),
    ("sec", USEC_PER_SEC),
    ("s", USEC_PER_SEC),
    ("minutes", 60 * USEC_PER_SEC),
    ("minute", 60 * USEC_PER_SEC),
    ("min", 60 * USEC_PER_SEC),
    ("months", 2_629_800 * USEC_PER_SEC),
    ("month", 2_629_800 * USEC_PER_SEC),
    ("M", 2_629_800 * USEC_PER_SEC),
    ("msec", 1000),
    ("ms", 1000),
    ("m", 60 * USEC_PER_SEC),
    ("hours", 3600 * USEC_PER_SEC),
    ("hour", 3600 * USEC_PER_SEC),
    ("hr", 3600 * USEC_PER_SEC),
    ("h", 3600 * USEC_PER_SEC),
    ("days", 86_400 * USEC_PER_SEC),
    ("day", 86_400 * USEC_PER_SEC),
    ("d", 86_400 * USEC_PER_SEC),
    ("weeks", 604_800 * USEC_PER_SEC),
    ("week", 604_800 * USEC_PER_SEC),
    ("w", 604_800 * USEC_PER_SEC),
    ("years", 31_557_600 * USEC_PER_SEC),
    ("year", 31_557_600 * USEC_PER_SEC),
    ("y", 31_557_600 * USEC_PER_SEC),
    ("usec", 1),
    ("us", 1),
    ("µs", 1),
    ("μs", 1),
];

/// Parses a time span; a number without a unit is in seconds.
pub fn parse_timespan(text: &str) -> Result<TimeSpan, ValueError> {
    parse_with_default(text, USEC_PER_SEC)
}

/// Parses a time span whose bare numbers are microseconds (`LimitRTTIME=`).
pub fn parse_timespan_usec(text: &str) -> Result<TimeSpan, ValueError> {
    parse_with_default(text, 1)
}

/// Like [`parse_timespan`], but `0` means "no limit" (systemd's `parse_sec_fix_0`, used by
/// `TimeoutStartSec=`/`TimeoutStopSec=`/`TimeoutSec=`).
pub fn parse_timeout(text: &str) -> Result<TimeSpan, ValueError> {
    match parse_timespan(text)? {
        TimeSpan::Finite(d) if d.is_zero() => Ok(TimeSpan::Infinity),
        t => Ok(t),
    }
}

fn parse_with_default(text: &str, default_unit: u128) -> Result<TimeSpan, ValueError> {
    let bad = |why: &'static str| ValueError::TimeSpan { text: text.to_string(), why };
    let trimmed = text.trim();
    if trimmed == "infinity" {
        return Ok(TimeSpan::Infinity);
    }
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = trimmed;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        if rest.starts_with('-') {
            return Err(bad("negative"));
        }
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad("expected a number"));
        }
        rest = rest[digits..].trim_start();
        let (unit, len) = UNITS
            .iter()
            .find(|(suffix, _)| rest.starts_with(suffix))
            .map(|(s, mult)| (*mult, s.len()))
            .unwrap_or((default_unit, 0));
        rest = &rest[len..];
        // A unit must be followed by a space, a digit or the end: `5mins` is not `5min` + `s`.
        if rest.chars().next().is_some_and(|c| !c.is_whitespace() && !c.is_ascii_digit()) {
            return Err(bad("unknown unit"));
        }
        rest = rest.trim_start();
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad("too large"))? };
        let micros = whole
            .checked_mul(unit)
            .and_then(|m| m.checked_add(fraction(frac, unit)))
            .ok_or_else(|| bad("too large"))?;
        total = total.checked_add(micros).ok_or_else(|| bad("too large"))?;
    }
    let micros = u64::try_from(total).map_err(|_| bad("too large"))?;
    Ok(TimeSpan::Finite(Duration::from_micros(micros)))
}

/// Parses a byte count with an optional 1024-based suffix (`K`, `M`, `G`, `T`, `P`, `E`).
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Size(text.to_string());
    let t = text.trim();
    let (number, shift) = match t.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => {
            let shift = match c {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return Err(bad()),
            };
            (&t[..at], shift)
        }
        _ => (t, 0),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let unit: u128 = 1u128 << shift;
    let value = whole.checked_mul(unit).and_then(|v| v.checked_add(fraction(frac, unit))).ok_or_else(bad)?;
    u64::try_from(value).map_err(|_| bad())
}

/// `0.<digits>` times `unit`, rounded down (digits past the 18th cannot matter).
fn fraction(digits: &str, unit: u128) -> u128 {
    let digits = &digits[..digits.len().min(18)];
    match digits.parse::<u128>() {
        Ok(n) => n * unit / 10u128.pow(digits.len() as u32),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> TimeSpan {
        TimeSpan::Finite(Duration::from_secs(s))
    }

    fn ms(m: u64) -> TimeSpan {
        TimeSpan::Finite(Duration::from_millis(m))
    }

    #[test]
    fn spans() {
        assert_eq!(parse_timespan("90"), Ok(secs(90)));
        assert_eq!(parse_timespan("5min 20s"), Ok(secs(320)));
        assert_eq!(parse_timespan("5min20s"), Ok(secs(320)));
        assert_eq!(parse_timespan("2 h"), Ok(secs(7200)));
        assert_eq!(parse_timespan("1.5h"), Ok(secs(5400)));
        assert_eq!(parse_timespan("100ms"), Ok(ms(100)));
        assert_eq!(parse_timespan("0.5"), Ok(ms(500)));
        assert_eq!(parse_timespan("3m"), Ok(secs(180)));
        assert_eq!(parse_timespan("1d 1w"), Ok(secs(8 * 86_400)));
        assert_eq!(parse_timespan("1y"), Ok(secs(31_557_600)));
        assert_eq!(parse_timespan("2M"), Ok(secs(2 * 2_629_800)));
        assert_eq!(parse_timespan("10us"), Ok(TimeSpan::Finite(Duration::from_micros(10))));
        assert_eq!(parse_timespan("1 minute 1 second"), Ok(secs(61)));
        assert_eq!(parse_timespan(" infinity "), Ok(TimeSpan::Infinity));
        assert_eq!(parse_timespan("0"), Ok(secs(0)));
        assert_eq!(parse_timespan_usec("500"), Ok(TimeSpan::Finite(Duration::from_micros(500))));
    }

    #[test]
    fn bad_spans() {
        for bad in ["", "-5s", "5 parsecs", "5mins", "1.2.3s", "s", "infinite", "99999999999999999999999y"] {
            assert!(parse_timespan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_zero_is_infinity() {
        assert_eq!(parse_timeout("0"), Ok(TimeSpan::Infinity));
        assert_eq!(parse_timeout("0s"), Ok(TimeSpan::Infinity));
        assert_eq!(parse_timeout("90s"), Ok(secs(90)));
    }

    #[test]
    fn display() {
        assert_eq!(secs(5).to_string(), "5s");
        assert_eq!(ms(1).to_string(), "1000us");
        assert_eq!(TimeSpan::Infinity.to_string(), "infinity");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("64K"), Ok(65_536));
        assert_eq!(parse_size("1.5G"), Ok(3 * (1 << 29)));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("20E").is_err());
    }
}
