//! Time as the engine sees it: milliseconds since the Unix epoch (UTC), with
//! the compound's time zone used only for calendar days and for display.
//!
//! Nothing here reads a clock; callers pass time in.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Ts = i64;

/// A duration in milliseconds (signed, so that clock re-basing can shift both ways).
pub type Millis = i64;

/// An `Option<Ts>` in 8 bytes instead of 16, for state kept per resident
/// (tens of thousands of them on a gateway with a 20 MB budget).
/// `i64::MIN` (292 million years BC) stands for "none".
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptTs(i64);

impl OptTs {
    pub const NONE: OptTs = OptTs(i64::MIN);

    pub fn get(self) -> Option<Ts> {
        (self != Self::NONE).then_some(self.0)
    }

    pub fn is_none(self) -> bool {
        self == Self::NONE
    }

    pub fn is_some(self) -> bool {
        !self.is_none()
    }

    /// Moves a set time by `delta`; none stays none.
    pub fn shift(&mut self, delta: Millis) {
        if self.is_some() {
            self.0 += delta;
        }
    }
}

impl Default for OptTs {
    fn default() -> Self {
        Self::NONE
    }
}

impl From<Ts> for OptTs {
    fn from(t: Ts) -> Self {
        debug_assert!(t != i64::MIN, "i64::MIN is OptTs's none");
        OptTs(t)
    }
}

impl From<Option<Ts>> for OptTs {
    fn from(t: Option<Ts>) -> Self {
        t.map_or(Self::NONE, Self::from)
    }
}

impl fmt::Debug for OptTs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

pub const SECOND: Millis = 1_000;
pub const MINUTE: Millis = 60 * SECOND;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-02T08:00:03+08:00`, `...Z`, optional
/// fraction) without allocating. This sits on the replay hot path.
pub fn parse_rfc3339(s: &str) -> Result<Ts, TimeError> {
    let b = s.as_bytes();
    let bad = || TimeError::Rfc3339(s.to_string());
    let year = digits(b, 0, 4).ok_or_else(bad)? as i64;
    let month = digits(b, 5, 2).ok_or_else(bad)?;
    let day = digits(b, 8, 2).ok_or_else(bad)?;
    let hour = digits(b, 11, 2).ok_or_else(bad)?;
    let minute = digits(b, 14, 2).ok_or_else(bad)?;
    let second = digits(b, 17, 2).ok_or_else(bad)?;
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err(bad());
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2).ok_or_else(bad)? as i64;
            let om = digits(b, i + 4, 2).ok_or_else(bad)? as i64;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = oh * 3600 + om * 60;
            if sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour as i64 * 3600 + minute as i64 * 60 + second.min(59) as i64
        - offset_secs;
    Ok(secs * 1000 + millis)
}

/// Parses a humantime duration (`90s`, `2m`, `24h`, `7d`).
pub fn parse_duration(s: &str) -> Result<Duration, TimeError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| TimeError::Duration(s.to_string(), e.to_string()))
}

/// Formats a duration the way users write them in configuration (`24h`, `90s`).
pub fn format_duration(ms: Millis) -> String {
    let ms = ms.max(0);
    if ms % DAY == 0 && ms >= 2 * DAY {
        return format!("{}d", ms / DAY);
    }
    if ms % HOUR == 0 && ms >= HOUR {
        format!("{}h", ms / HOUR)
    } else if ms % MINUTE == 0 && ms >= MINUTE {
        format!("{}m", ms / MINUTE)
    } else if ms % SECOND == 0 {
        format!("{}s", ms / SECOND)
    } else {
        format!("{ms}ms")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("`{0}` is not an RFC 3339 time (expected e.g. 2026-11-02T08:00:03+08:00)")]
    Rfc3339(String),
    #[error("`{0}` is not a duration ({1}); use e.g. 90s, 2m, 24h, 7d")]
    Duration(String, String),
    #[error("`{0}` is not a time zone name (expected e.g. Asia/Shanghai)")]
    Zone(String),
    #[error(
        "`{0}` is not a local time or date (expected RFC 3339, YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)"
    )]
    Local(String),
}

/// A duration read from configuration, written in humantime syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    pub fn millis(&self) -> Millis {
        self.0.as_millis().min(i64::MAX as u128) as Millis
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.millis()))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.millis()))
    }
}

/// Local calendar of the compound: day numbers, midnights and display.
///
/// Keeps the bounds of the last day it computed so that consecutive events
/// on the same day cost two comparisons rather than a zone lookup.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: Tz,
    cached: (Ts, Ts, i32),
}

impl Calendar {
    pub fn new(tz: Tz) -> Self {
        Calendar {
            tz,
            cached: (1, 0, 0),
        }
    }

    pub fn parse_zone(name: &str) -> Result<Tz, TimeError> {
        name.parse::<Tz>()
            .map_err(|_| TimeError::Zone(name.to_string()))
    }

    pub fn zone(&self) -> Tz {
        self.tz
    }

    /// Local calendar day of `ts`, as days since 1970-01-01.
    pub fn day_of(&mut self, ts: Ts) -> i32 {
        let (start, end, day) = self.cached;
        if ts >= start && ts < end {
            return day;
        }
        let day = self.day_of_uncached(ts);
        self.cached = (self.midnight(day), self.midnight(day + 1), day);
        day
    }

    fn day_of_uncached(&self, ts: Ts) -> i32 {
        let utc = DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or_default();
        let local = utc.with_timezone(&self.tz).date_naive();
        days_from_civil(local.year() as i64, local.month(), local.day()) as i32
    }

    /// The instant at which local day `day` begins (its first valid local time).
    pub fn midnight(&self, day: i32) -> Ts {
        let date = NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|d| d.checked_add_signed(chrono::Duration::days(day as i64)))
            .unwrap_or_default();
        let mut t = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        // A zone may skip midnight (DST); step forward to the first local time that exists.
        for _ in 0..(24 * 4) {
            match self.tz.from_local_datetime(&t) {
                LocalResult::Single(dt) => return dt.timestamp_millis(),
                LocalResult::Ambiguous(a, _) => return a.timestamp_millis(),
                LocalResult::None => t += chrono::Duration::minutes(15),
            }
        }
        Utc.from_utc_datetime(&t).timestamp_millis()
    }

    /// The next local midnight strictly after `ts`.
    pub fn next_midnight(&mut self, ts: Ts) -> Ts {
        let d = self.day_of(ts);
        self.midnight(d + 1)
    }

    /// RFC 3339 in the compound's offset, e.g. `2026-11-03T10:05:00+08:00`.
    pub fn format(&self, ts: Ts) -> String {
        format_in(&self.tz, ts)
    }

    /// Interprets a naive local date-time in the compound's zone.
    pub fn from_local(&self, naive: NaiveDateTime) -> Option<Ts> {
        match self.tz.from_local_datetime(&naive) {
            LocalResult::Single(dt) => Some(dt.timestamp_millis()),
            LocalResult::Ambiguous(a, _) => Some(a.timestamp_millis()),
            LocalResult::None => None,
        }
    }

    /// Parses an RFC 3339 time, or a local `YYYY-MM-DD[ HH:MM[:SS]]` in the
    /// compound's zone (a bare date means the end of that day: "away until
    /// the 5th" includes the 5th).
    pub fn parse_time_or_date(&self, s: &str) -> Result<Ts, TimeError> {
        let s = s.trim();
        if let Ok(t) = parse_rfc3339(s) {
            return Ok(t);
        }
        let bad = || TimeError::Local(s.to_string());
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            let next = d.succ_opt().ok_or_else(bad)?;
            let day = days_from_civil(next.year() as i64, next.month(), next.day()) as i32;
            return Ok(self.midnight(day));
        }
        for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"] {
            if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
                return self.from_local(n).ok_or_else(bad);
            }
        }
        Err(bad())
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 of `ts` in zone `tz`, seconds precision unless it has milliseconds.
pub fn format_in(tz: &Tz, ts: Ts) -> String {
    use std::fmt::Write;
    let utc = DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or_default();
    let off = tz
        .offset_from_utc_datetime(&utc.naive_utc())
        .fix()
        .local_minus_utc() as i64;
    let local = ts.div_euclid(1000) + off;
    let (days, sod) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    let mut out = String::with_capacity(29);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    let ms = ts.rem_euclid(1000);
    if ms != 0 {
        let _ = write!(out, ".{ms:03}");
    }
    let sign = if off < 0 { '-' } else { '+' };
    let _ = write!(
        out,
        "{sign}{:02}:{:02}",
        off.abs() / 3600,
        off.abs() % 3600 / 60
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_variants() {
        let base = parse_rfc3339("2026-11-02T00:00:00Z").unwrap();
        assert_eq!(base, 1_793_577_600_000);
        assert_eq!(parse_rfc3339("2026-11-02T08:00:00+08:00").unwrap(), base);
        assert_eq!(parse_rfc3339("2026-11-01T19:00:00-05:00").unwrap(), base);
        assert_eq!(parse_rfc3339("2026-11-02T00:00:00.5Z").unwrap(), base + 500);
        assert_eq!(
            parse_rfc3339("2026-11-02T00:00:00.123456Z").unwrap(),
            base + 123
        );
        for bad in [
            "",
            "2026-11-02",
            "2026-13-02T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-02T00:00:00",
            "2026-11-02T00:00:00+0800",
            "2026-11-02T00:00:00Zjunk",
            "２026-11-02T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agrees_with_chrono() {
        for s in [
            "1999-12-31T23:59:59+14:00",
            "2024-02-29T12:00:00-09:30",
            "2038-01-19T03:14:08Z",
        ] {
            let c = DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
            assert_eq!(parse_rfc3339(s).unwrap(), c, "{s}");
        }
    }

    #[test]
    fn calendar_days_in_shanghai() {
        let mut cal = Calendar::new(Calendar::parse_zone("Asia/Shanghai").unwrap());
        let before = parse_rfc3339("2026-11-02T23:59:59+08:00").unwrap();
        let after = parse_rfc3339("2026-11-03T00:00:00+08:00").unwrap();
        assert_eq!(cal.day_of(after), cal.day_of(before) + 1);
        assert_eq!(cal.next_midnight(before), after);
        let day = cal.day_of(before);
        assert_eq!(cal.midnight(day + 1), after);
        assert_eq!(cal.format(after), "2026-11-03T00:00:00+08:00");
        assert_eq!(cal.format(after + 7), "2026-11-03T00:00:00.007+08:00");
        assert_eq!(cal.parse_time_or_date("2026-11-02").unwrap(), after);
    }

    #[test]
    fn formats_like_chrono_across_zones_and_eras() {
        for zone in ["Asia/Shanghai", "America/New_York", "Asia/Kolkata", "UTC"] {
            let tz: Tz = zone.parse().unwrap();
            for ts in [
                0i64,
                1_793_577_600_123,
                -86_400_000 * 400,
                4_102_444_800_000,
                1_710_054_000_000,
            ] {
                let c = DateTime::<Utc>::from_timestamp_millis(ts)
                    .unwrap()
                    .with_timezone(&tz);
                let want = c.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
                assert_eq!(format_in(&tz, ts), want, "{zone} {ts}");
            }
        }
    }

    #[test]
    fn opt_ts_is_an_option_in_eight_bytes() {
        assert_eq!(std::mem::size_of::<OptTs>(), 8);
        let mut none = OptTs::default();
        none.shift(5);
        assert_eq!(none.get(), None);
        let mut t = OptTs::from(Some(-3));
        t.shift(5);
        assert_eq!(t.get(), Some(2));
        assert_eq!(OptTs::from(None::<Ts>), OptTs::NONE);
        assert_eq!(format!("{t:?}"), "Some(2)");
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(format_duration(24 * HOUR), "24h");
        assert_eq!(format_duration(90 * SECOND), "90s");
        assert_eq!(format_duration(2 * MINUTE), "2m");
        assert_eq!(format_duration(7 * DAY), "7d");
        assert_eq!(format_duration(36 * HOUR), "36h");
        assert_eq!(
            parse_duration("36h").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        assert!(parse_duration("soon").is_err());
    }
}
