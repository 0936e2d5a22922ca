//! Dates as the three clouds write them, from Unix seconds and back, in UTC on the proleptic
//! Gregorian calendar, so that no date crate is needed for a few timestamps:
//!
//! - AWS SigV4: `20261207` and `20261207T154720Z` ([`amz_date`], [`amz_datetime`]);
//! - Azure Storage: RFC 1123 in `x-ms-date` ([`rfc1123`]), ISO 8601 in a SAS's `st`/`se`
//!   ([`iso8601`], [`parse_iso8601`]: UTC only; `2026-12-07`, `2026-12-07T18:00Z`,
//!   `2026-12-07T18:00:00.1234567Z`);
//! - Google: a JWT's `iat`/`exp` are plain Unix seconds ([`now`]).

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Unix seconds now (0 if the clock is before 1970).
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds of `t`, `None` if it is before 1970.
pub fn unix_seconds(t: SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_secs()).ok())
}

/// A moment split into its civil parts (UTC).
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    /// 0 = Sunday.
    weekday: i64,
}

impl Civil {
    fn of(t: i64) -> Civil {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let weekday = (days + 4).rem_euclid(7);
        Civil { year, month, day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60, weekday }
    }
}

/// `t` (Unix seconds) as `Mon, 07 Dec 2026 15:47:20 GMT`.
pub fn rfc1123(t: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let c = Civil::of(t);
    // Both indexes are in range by construction (weekday 0..7, month 1..=12).
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[c.weekday as usize],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// Unix seconds of an RFC 1123 date (`Mon, 07 Dec 2026 15:47:20 GMT`), `None` if it is not one.
pub fn parse_rfc1123(s: &str) -> Option<i64> {
    let p: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = p.as_slice() else { return None };
    let m = MONTHS.iter().position(|m| m == month)? + 1;
    parse_iso8601(&format!("{year}-{m:02}-{day:0>2}T{time}Z"))
}

/// `t` (Unix seconds) as `2026-12-07T15:47:20Z`.
pub fn iso8601(t: i64) -> String {
    let c = Civil::of(t);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// `t` (Unix seconds) as SigV4's date, `20261207`.
pub fn amz_date(t: i64) -> String {
    let c = Civil::of(t);
    format!("{:04}{:02}{:02}", c.year, c.month, c.day)
}

/// `t` (Unix seconds) as SigV4's `X-Amz-Date`, `20261207T154720Z`.
pub fn amz_datetime(t: i64) -> String {
    let c = Civil::of(t);
    format!("{}T{:02}{:02}{:02}Z", amz_date(t), c.hour, c.minute, c.second)
}

/// Unix seconds of an ISO 8601 UTC date or date-time, `None` if it is not one.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = 0;
    if !time.is_empty() {
        let time = time.strip_suffix('Z')?;
        let time = time.split('.').next()?;
        let mut t = time.split(':');
        let h: i64 = t.next()?.parse().ok()?;
        let mi: i64 = t.next()?.parse().ok()?;
        let sec: i64 = t.next().map_or(Some(0), |v| v.parse().ok())?;
        if t.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        secs = h * 3600 + mi * 60 + sec;
    }
    Some(days_from_civil(y, m, day) * 86_400 + secs)
}

// The calendar arithmetic (Howard Hinnant's algorithms) is berth-release's, which dates releases
// and indexes with it.
use berth_release::time::{civil_from_days, days_from_civil};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates_round_trip() {
        // 2026-12-07 15:47:20 UTC, a Monday.
        let t = 1_796_658_440;
        assert_eq!(rfc1123(t), "Mon, 07 Dec 2026 15:47:20 GMT");
        assert_eq!(parse_rfc1123("Mon, 07 Dec 2026 15:47:20 GMT"), Some(t));
        assert_eq!(parse_rfc1123("Mon, 7 Dec 2026 15:47:20 GMT"), Some(t));
        assert_eq!(parse_rfc1123("Mon, 07 Dec 2026 15:47:20 UTC"), None);
        assert_eq!(parse_rfc1123("Mon, 07 Foo 2026 15:47:20 GMT"), None);
        assert_eq!(iso8601(t), "2026-12-07T15:47:20Z");
        assert_eq!(parse_iso8601("2026-12-07T15:47:20Z"), Some(t));
        assert_eq!(parse_iso8601("2026-12-07T15:47:20.1234567Z"), Some(t));
        assert_eq!(parse_iso8601("2026-12-07T15:47Z"), Some(t - 20));
        assert_eq!(parse_iso8601("2026-12-07"), Some(t - 15 * 3600 - 47 * 60 - 20));
        assert_eq!(rfc1123(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(parse_iso8601("2026-13-01"), None);
        assert_eq!(parse_iso8601("2026-12-07T15:47:20+01:00"), None);
        // Before 1970 the weekday and date still come out right.
        assert_eq!(rfc1123(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
    }

    #[test]
    fn amz_dates_in_utc() {
        assert_eq!((amz_date(0), amz_datetime(0)), ("19700101".to_string(), "19700101T000000Z".to_string()));
        assert_eq!(amz_datetime(951_782_400), "20000229T000000Z"); // a leap day of a /400 year
        assert_eq!(amz_datetime(4_107_542_399), "21000228T235959Z"); // 2100 is not a leap year
        assert_eq!(amz_datetime(4_107_542_400), "21000301T000000Z");
        assert_eq!(amz_datetime(1_440_938_160), "20150830T123600Z");
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_secs(1_440_938_160)), Some(1_440_938_160));
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(1)), None);
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let start = days_from_civil(1900, 1, 1);
        for days in start..start + 146_097 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert_eq!(parse_iso8601(&iso8601(days * 86_400)), Some(days * 86_400));
        }
        assert_eq!(civil_from_days(days_from_civil(2100, 2, 28) + 1), (2100, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 28) + 1), (2000, 2, 29));
    }
}
