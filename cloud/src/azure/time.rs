//! The two date formats Azure Storage speaks: RFC 1123 in `x-ms-date`, ISO 8601 in a SAS's
//! `st`/`se` (UTC only; `2026-12-07`, `2026-12-07T18:00Z`, `2026-12-07T18:00:00.1234567Z`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `t` (Unix seconds) as `Mon, 07 Dec 2026 15:47:20 GMT`.
pub fn rfc1123(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `t` (Unix seconds) as `2026-12-07T15:47:20Z`.
pub fn iso8601(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
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

// Howard Hinnant's algorithms (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        // 2026-12-07 15:47:20 UTC, a Monday.
        let t = 1_796_658_440;
        assert_eq!(rfc1123(t), "Mon, 07 Dec 2026 15:47:20 GMT");
        assert_eq!(iso8601(t), "2026-12-07T15:47:20Z");
        assert_eq!(parse_iso8601("2026-12-07T15:47:20Z"), Some(t));
        assert_eq!(parse_iso8601("2026-12-07T15:47:20.1234567Z"), Some(t));
        assert_eq!(parse_iso8601("2026-12-07T15:47Z"), Some(t - 20));
        assert_eq!(parse_iso8601("2026-12-07"), Some(t - 15 * 3600 - 47 * 60 - 20));
        assert_eq!(rfc1123(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(parse_iso8601("2026-13-01"), None);
        assert_eq!(parse_iso8601("2026-12-07T15:47:20+01:00"), None);
    }
}
