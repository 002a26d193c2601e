//! Cron schedules in a time zone: `on: { schedule: "0 9 * * MON-FRI",
//! timezone: Europe/Berlin }`.
//!
//! Patterns are read by croner (POSIX/Vixie cron: five fields, or six with
//! leading seconds; `MON-FRI`, `JAN`, `L`, `#`, `@daily`) and evaluated on
//! the zone's wall clock through jiff, so "09:00 Berlin" stays 09:00 across
//! DST changes. A slot is an instant in milliseconds.

use super::{zone, TimeError};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A parsed cron pattern with its zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub pattern: String,
    pub zone_name: String,
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parse `pattern` in zone `zone_name` (default `UTC`).
    pub fn parse(pattern: &str, zone_name: Option<&str>) -> Result<Schedule, TimeError> {
        let zone_name = zone_name.unwrap_or("UTC");
        let tz = zone(zone_name)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| {
                // croner's "Number out of bounds" names no field: say which.
                let why = out_of_range(pattern).unwrap_or_else(|| e.to_string());
                TimeError(format!(
                    "invalid cron expression `{pattern}`: {why} (expected five fields `minute hour day-of-month month day-of-week`, e.g. `0 9 * * MON-FRI`, or six with leading seconds)"
                ))
            })?;
        let s = Schedule {
            pattern: pattern.to_string(),
            zone_name: zone_name.to_string(),
            cron,
            zone: tz,
        };
        // A pattern that never matches (`0 0 30 2 *`) is an error now, not a silent recipe.
        if s.next_after(0).is_none() {
            return Err(TimeError(format!(
                "cron expression `{pattern}` never matches a real date"
            )));
        }
        Ok(s)
    }

    /// The first slot strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let z = Timestamp::from_millisecond(ms)
            .ok()?
            .to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&z, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The latest slot at or before `ms`.
    pub fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        let z = Timestamp::from_millisecond(ms)
            .ok()?
            .to_zoned(self.zone.clone());
        let prev = self.cron.find_previous_occurrence(&z, true).ok()?;
        Some(prev.timestamp().as_millisecond())
    }
}

/// The first number of a cron field outside its range, said with the
/// field's name (`hour 25 is out of range 0-23`); `None` when every number
/// is in range (or the pattern has not five or six fields).
fn out_of_range(pattern: &str) -> Option<String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day-of-month", 1, 31),
        ("month", 1, 12),
        ("day-of-week", 0, 7),
    ];
    let parts: Vec<&str> = pattern.split_whitespace().collect();
    let fields = match parts.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        _ => return None,
    };
    for (part, (name, lo, hi)) in parts.iter().zip(fields) {
        for item in part.split(',') {
            // `a-b/step`: the step is a count, not a value of the field.
            let values = item.split('/').next().unwrap_or(item);
            for v in values.split('-') {
                if let Ok(n) = v.parse::<u32>() {
                    if n < *lo || n > *hi {
                        return Some(format!("{name} {n} is out of range {lo}-{hi}"));
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_instant;

    fn ms(s: &str) -> i64 {
        parse_instant(s).unwrap().as_millisecond()
    }

    #[test]
    fn weekday_mornings_in_berlin() {
        let s = Schedule::parse("0 9 * * MON-FRI", Some("Europe/Berlin")).unwrap();
        // Saturday 2025-11-29 → Monday 2025-12-01 09:00 CET = 08:00Z.
        assert_eq!(
            s.next_after(ms("2025-11-29T12:00:00Z")),
            Some(ms("2025-12-01T08:00:00Z"))
        );
        // Summer time: 09:00 CEST = 07:00Z.
        assert_eq!(
            s.next_after(ms("2025-07-01T06:00:00Z")),
            Some(ms("2025-07-01T07:00:00Z"))
        );
        // The latest slot at or before a Sunday is Friday's.
        assert_eq!(
            s.latest_at_or_before(ms("2025-11-30T12:00:00Z")),
            Some(ms("2025-11-28T08:00:00Z"))
        );
        let slot = ms("2025-11-28T08:00:00Z");
        assert_eq!(s.latest_at_or_before(slot), Some(slot), "inclusive");
    }

    #[test]
    fn seconds_field_is_optional() {
        let s = Schedule::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(s.next_after(1_000), Some(2_000));
        assert_eq!(s.latest_at_or_before(3_999), Some(2_000));
    }

    #[test]
    fn bad_patterns_and_zones_are_refused() {
        for bad in ["", "every day", "61 * * * *", "0 9 * * MOO", "* * *"] {
            let e = Schedule::parse(bad, None).unwrap_err();
            assert!(e.0.contains("cron expression"), "{bad}: {e}");
        }
        let e = Schedule::parse("0 9 * * *", Some("Europe/Berln")).unwrap_err();
        assert!(e.0.contains("unknown time zone"), "{e}");
        // A number out of range names its field.
        for (bad, why) in [
            ("0 25 * * MON-FRI", "hour 25 is out of range 0-23"),
            ("61 * * * *", "minute 61 is out of range 0-59"),
            ("0 9 1-32/2 * *", "day-of-month 32 is out of range 1-31"),
            ("0 0 9 * 13 *", "month 13 is out of range 1-12"),
        ] {
            let e = Schedule::parse(bad, None).unwrap_err();
            assert!(
                e.0.starts_with(&format!("invalid cron expression `{bad}`: {why} (expected")),
                "{bad}: {e}"
            );
        }
        assert_eq!(out_of_range("*/90 9 * * *"), None, "a step is not a value");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(p in "[0-9*/,LW#A-Z@ -]{0,30}") {
            if let Ok(s) = Schedule::parse(&p, None) {
                let _ = s.next_after(1_700_000_000_000);
                let _ = s.latest_at_or_before(1_700_000_000_000);
            }
        }
    }
}
