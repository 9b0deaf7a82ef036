//! Support durations (`expiry: 1w2d`) and the `support_eol` date they give.
//!
//! The original tool took only the last number+unit pair (`1w2d` became 2 days) and wrote Unix
//! seconds, which clients cannot parse. Here every pair counts, unknown units are refused, and
//! the date is written as `YYYY-MM-DD`, the only form LXD and Incus read.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::{Span, Timestamp, tz::TimeZone};

/// A positive duration such as `30d`, `1w2d`, `3h30m` or `1y`: support periods (`expiry`),
/// retention (`max_age`) and build timeouts (`timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration {
    seconds: i64,
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a duration: {reason} (use number+unit pairs such as 30d, 1w2d, 3h30m; units s, m, h, d, w, y)"
)]
pub struct DurationError {
    input: String,
    reason: String,
}

impl HumanDuration {
    /// Parses a sum of number+unit pairs: `s`, `m` (minutes), `h`, `d`, `w`, `y` (365 days).
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let fail = |reason: String| DurationError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(fail("it is empty".into()));
        }
        let mut total: i64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail(format!("expected a number at `{rest}`")));
            }
            let n: i64 = rest[..digits]
                .parse()
                .map_err(|_| fail("number too large".into()))?;
            let unit = rest[digits..].chars().next();
            let per = match unit {
                Some('s') => 1,
                Some('m') => 60,
                Some('h') => 3600,
                Some('d') => 86_400,
                Some('w') => 7 * 86_400,
                Some('y') => 365 * 86_400,
                Some(c) => return Err(fail(format!("unknown unit `{c}`"))),
                None => return Err(fail(format!("`{n}` has no unit"))),
            };
            total = n
                .checked_mul(per)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| fail("too large".into()))?;
            rest = &rest[digits + 1..];
        }
        if total == 0 {
            return Err(fail("it is zero".into()));
        }
        Ok(Self { seconds: total })
    }

    /// The length in seconds.
    pub fn seconds(self) -> i64 {
        self.seconds
    }

    /// As a standard duration.
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds.unsigned_abs())
    }

    /// The end-of-support date for something built at `built` (UTC).
    pub fn eol_after(self, built: DateTime) -> Option<Date> {
        let ts = TimeZone::UTC.to_timestamp(built).ok()?;
        let end = ts.checked_add(Span::new().seconds(self.seconds)).ok()?;
        Some(end.to_zoned_datetime(TimeZone::UTC).date())
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for HumanDuration {
    /// Days, hours, minutes and seconds, largest first: `30d`, `3h30m`, `1d12h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.seconds;
        for (unit, per) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if rest >= per {
                write!(f, "{}{unit}", rest / per)?;
                rest %= per;
            }
        }
        Ok(())
    }
}

/// A `support_eol` value as clients read it.
pub fn format_eol(date: Date) -> String {
    date.strftime("%Y-%m-%d").to_string()
}

/// Reads an expiry as manifests carry it: `YYYY-MM-DD` (ours) or Unix seconds (the original
/// tool's), and returns it as `YYYY-MM-DD`. `None` for anything else.
pub fn normalize_eol(value: &str) -> Option<String> {
    let v = value.trim();
    if let Ok(date) = v.parse::<Date>() {
        return Some(format_eol(date));
    }
    let secs: i64 = v.parse().ok()?;
    let ts = Timestamp::from_second(secs).ok()?;
    Some(format_eol(ts.to_zoned_datetime(TimeZone::UTC).date()))
}

/// A Unix time as a `support_eol` date.
pub fn eol_from_unix(secs: i64) -> Option<String> {
    normalize_eol(&secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_counts() {
        assert_eq!(HumanDuration::parse("1w2d").unwrap().seconds(), 9 * 86_400);
        assert_eq!(
            HumanDuration::parse("3h30m").unwrap().seconds(),
            3 * 3600 + 30 * 60
        );
        assert_eq!(HumanDuration::parse("30d").unwrap().seconds(), 30 * 86_400);
        assert_eq!(HumanDuration::parse("1y").unwrap().seconds(), 365 * 86_400);
    }

    #[test]
    fn refuses_what_cannot_be_meant() {
        for bad in ["", "abc", "10", "0d", "5x", "d", "1d 2h", "-1d"] {
            let err = HumanDuration::parse(bad).unwrap_err().to_string();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn displays_in_the_largest_units() {
        for (input, shown) in [
            ("30d", "30d"),
            ("1w2d", "9d"),
            ("3h30m", "3h30m"),
            ("90m", "1h30m"),
            ("1d1s", "1d1s"),
        ] {
            assert_eq!(HumanDuration::parse(input).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn eol_is_a_calendar_date_after_the_build() {
        let built = jiff::civil::date(2024, 1, 6).at(3, 0, 0, 0);
        let d = HumanDuration::parse("10d")
            .unwrap()
            .eol_after(built)
            .unwrap();
        assert_eq!(format_eol(d), "2024-01-16");
    }

    #[test]
    fn reads_the_original_tools_unix_seconds() {
        assert_eq!(normalize_eol("1796314639").as_deref(), Some("2026-12-03"));
        assert_eq!(normalize_eol("2026-12-03").as_deref(), Some("2026-12-03"));
        assert_eq!(normalize_eol("soon"), None);
    }
}
