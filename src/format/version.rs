//! Version names: the dated folder names (`YYYYMMDD_HH:MM`, also `YYYYMMDD_HHMM`) that are both
//! a product's build folders on disk and the version keys of the catalog. One grammar serves the
//! scanner, the purge and the catalog, so nothing that one of them accepts is ignored by another.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A valid version name. Holds the name exactly as written (both spellings are kept as they are,
/// since the name is also a path on disk) and the moment it denotes (UTC by convention).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionName {
    raw: String,
    at: DateTime,
}

/// Why a string is not a version name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a version name (expected YYYYMMDD_HH:MM or YYYYMMDD_HHMM): {reason}")]
pub struct VersionNameError {
    /// The rejected string.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl VersionName {
    /// Parses `YYYYMMDD_HH:MM` or `YYYYMMDD_HHMM`, with a real calendar date and a 24-hour time.
    pub fn parse(name: &str) -> Result<Self, VersionNameError> {
        let err = |reason| VersionNameError {
            name: name.to_owned(),
            reason,
        };
        let b = name.as_bytes();
        let (hh, mm) = match b.len() {
            14 if b[11] == b':' => (&b[9..11], &b[12..14]),
            13 => (&b[9..11], &b[11..13]),
            _ => return Err(err("wrong length")),
        };
        if b[8] != b'_' {
            return Err(err("no `_` after the date"));
        }
        let digits = |s: &[u8]| -> Option<i32> {
            s.iter().try_fold(0i32, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + i32::from(c - b'0'))
            })
        };
        let (Some(y), Some(mo), Some(d), Some(h), Some(mi)) = (
            digits(&b[0..4]),
            digits(&b[4..6]),
            digits(&b[6..8]),
            digits(hh),
            digits(mm),
        ) else {
            return Err(err("non-digit where a digit belongs"));
        };
        let date = Date::new(y as i16, mo as i8, d as i8).map_err(|_| err("no such date"))?;
        let time = Time::new(h as i8, mi as i8, 0, 0).map_err(|_| err("no such time"))?;
        Ok(Self {
            raw: name.to_owned(),
            at: date.to_datetime(time),
        })
    }

    /// The canonical name for a moment: `YYYYMMDD_HH:MM`, the form images.linuxcontainers.org
    /// and the original tool use.
    pub fn from_datetime(at: DateTime) -> Self {
        let at = at
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .unwrap_or(at);
        Self {
            raw: at.strftime("%Y%m%d_%H:%M").to_string(),
            at,
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The moment the name denotes.
    pub fn datetime(&self) -> DateTime {
        self.at
    }
}

impl Ord for VersionName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| self.raw.cmp(&other.raw))
    }
}

impl PartialOrd for VersionName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for VersionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for VersionName {
    type Err = VersionNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for VersionName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for VersionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_spellings() {
        let a = VersionName::parse("20240106_03:00").unwrap();
        let b = VersionName::parse("20240106_0300").unwrap();
        assert_eq!(a.datetime(), b.datetime());
        assert_eq!(a.as_str(), "20240106_03:00");
        assert_eq!(b.as_str(), "20240106_0300");
    }

    #[test]
    fn rejects_what_the_original_purge_and_manifest_disagreed_on() {
        for bad in [
            "20240103",
            "20240101_1000-foo",
            "20240101_10:00-foo",
            "2019-01-01",
            "20200101_9:05",
            "20241301_00:00",
            "20240230_00:00",
            "20240101_24:00",
            "20240101_10:60",
            "20240101-10:00",
            "2024010a_10:00",
            "",
            "staging",
        ] {
            assert!(VersionName::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn orders_by_time_not_by_spelling() {
        let mut v: Vec<VersionName> = ["20240106_0300", "20240105_23:59", "20240106_03:01"]
            .iter()
            .map(|s| VersionName::parse(s).unwrap())
            .collect();
        v.sort();
        let names: Vec<_> = v.iter().map(VersionName::as_str).collect();
        assert_eq!(names, ["20240105_23:59", "20240106_0300", "20240106_03:01"]);
    }

    #[test]
    fn formats_utc_datetimes_with_a_colon() {
        let at = jiff::civil::date(2026, 11, 23).at(9, 5, 42, 7);
        assert_eq!(VersionName::from_datetime(at).as_str(), "20261123_09:05");
    }

    #[test]
    fn round_trips_every_minute_of_a_day() {
        let day = jiff::civil::date(2024, 2, 29);
        for h in 0..24 {
            for m in 0..60 {
                let v = VersionName::from_datetime(day.at(h, m, 0, 0));
                assert_eq!(VersionName::parse(v.as_str()).unwrap(), v);
            }
        }
    }
}
