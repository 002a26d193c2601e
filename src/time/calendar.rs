//! Business-hours calendars, defined once per team in `recipes/_shared.yaml`:
//!
//! ```yaml
//! calendars:
//!   support-eu:
//!     timezone: Europe/Berlin
//!     hours:
//!       mon-fri: "09:00-17:00"
//!       sat: ["10:00-12:00", "13:00-15:00"]
//!     holidays: ["2025-12-25", "2025-12-26"]
//! ```
//!
//! A calendar answers two questions for recipes: is an instant within
//! business hours (the condition `within_business_hours`), and when do the
//! business hours next open ("we will answer by Monday 09:00"). Hours are
//! wall-clock times in the calendar's zone; a holiday closes the whole day.

use super::{zone, TimeError};
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Every calendar by name.
pub type Calendars = BTreeMap<String, Arc<Calendar>>;

/// One calendar as written in `_shared.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    /// tz database name; the hours are wall-clock times there.
    timezone: String,
    /// Day (`mon`), day range (`mon-fri`) or list (`sat,sun`) → `"HH:MM-HH:MM"`
    /// or a list of them. Days not named are closed.
    hours: BTreeMap<String, OneOrMany>,
    /// Closed days, `YYYY-MM-DD`.
    #[serde(default)]
    holidays: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A compiled calendar.
#[derive(Debug, Clone)]
pub struct Calendar {
    pub name: String,
    pub zone_name: String,
    zone: TimeZone,
    /// Open intervals per weekday (Monday = 0), sorted, `[start, end)`.
    week: [Vec<(Time, Time)>; 7],
    holidays: BTreeSet<Date>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Compile one calendar; an error carries a pointer relative to the calendar's value.
pub fn compile(name: &str, value: &Value) -> Result<Calendar, (String, String)> {
    let file: CalendarFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let ptr = e
            .path()
            .iter()
            .map(|seg| format!("/{seg}"))
            .collect::<String>();
        (
            ptr,
            format!(
                "{} (a calendar has `timezone`, `hours` and optional `holidays`)",
                e.inner()
            ),
        )
    })?;
    let tz = zone(&file.timezone).map_err(|e| ("/timezone".to_string(), e.0))?;
    let mut week: [Vec<(Time, Time)>; 7] = Default::default();
    for (days, ranges) in &file.hours {
        let ptr = format!("/hours/{}", crate::yaml::escape(days));
        let idx = parse_days(days).map_err(|m| (ptr.clone(), m))?;
        let list = match ranges {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        for r in &list {
            let range = parse_range(r).map_err(|m| (ptr.clone(), m))?;
            for &d in &idx {
                week[d].push(range);
            }
        }
    }
    for (d, ranges) in week.iter_mut().enumerate() {
        ranges.sort();
        if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err((
                "/hours".to_string(),
                format!("the hours of `{}` overlap", DAYS[d]),
            ));
        }
    }
    let mut holidays = BTreeSet::new();
    for (i, h) in file.holidays.iter().enumerate() {
        let d: Date = h.trim().parse().map_err(|_| {
            (
                format!("/holidays/{i}"),
                format!("invalid holiday `{h}`, expected a date `YYYY-MM-DD`"),
            )
        })?;
        holidays.insert(d);
    }
    if week.iter().all(Vec::is_empty) {
        return Err((
            "/hours".to_string(),
            "a calendar must be open on at least one day".to_string(),
        ));
    }
    Ok(Calendar {
        name: name.to_string(),
        zone_name: file.timezone,
        zone: tz,
        week,
        holidays,
    })
}

/// `mon`, `mon-fri`, `sat,sun`, `fri-mon` (wrapping) → weekday indexes.
fn parse_days(spec: &str) -> Result<Vec<usize>, String> {
    let day = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        let short: String = s.chars().take(3).collect();
        DAYS.iter()
            .position(|d| *d == short && (s.len() == 3 || full_name(d) == s))
            .ok_or_else(|| {
                format!("unknown day `{s}`, expected mon, tue, wed, thu, fri, sat or sun (or a range like mon-fri)")
            })
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    out.push(d);
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out.push(day(part)?),
        }
    }
    Ok(out)
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

/// `"09:00-17:30"` → times; `24:00` ends a day.
fn parse_range(s: &str) -> Result<(Time, Time), String> {
    let bad = || format!("invalid hours `{s}`, expected `HH:MM-HH:MM` such as `09:00-17:00`");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let t = |x: &str| -> Result<Time, String> {
        let x = x.trim();
        if x == "24:00" {
            return Ok(Time::MAX);
        }
        let (h, m) = x.split_once(':').ok_or_else(bad)?;
        let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        Time::new(h, m, 0, 0).map_err(|_| bad())
    };
    let (start, end) = (t(a)?, t(b)?);
    if end <= start {
        return Err(format!(
            "invalid hours `{s}`: the end must be after the start (split a range over midnight into two days)"
        ));
    }
    Ok((start, end))
}

impl Calendar {
    /// Is `at` within business hours?
    pub fn is_open(&self, at: Timestamp) -> bool {
        let z = at.to_zoned(self.zone.clone());
        let date = z.date();
        if self.holidays.contains(&date) {
            return false;
        }
        let t = z.time();
        self.week[weekday_index(date.weekday())]
            .iter()
            .any(|(a, b)| *a <= t && (t < *b || *b == Time::MAX))
    }

    /// The first instant at or after `at` within business hours (`at`
    /// itself when open). None if nothing opens within two years (every day
    /// a holiday).
    pub fn next_open(&self, at: Timestamp) -> Option<Timestamp> {
        if self.is_open(at) {
            return Some(at);
        }
        let z = at.to_zoned(self.zone.clone());
        let mut date = z.date();
        let now_t = z.time();
        for day in 0..(2 * 366) {
            if !self.holidays.contains(&date) {
                for (start, _) in &self.week[weekday_index(date.weekday())] {
                    if day > 0 || *start > now_t {
                        // A start in a DST gap resolves forward, which is still "when it opens".
                        if let Ok(open) = date.to_datetime(*start).to_zoned(self.zone.clone()) {
                            return Some(open.timestamp());
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The instant when `ms` milliseconds of business hours have passed
    /// since `at` (counting starts at the next opening when `at` is closed):
    /// "12 business hours after the ticket came in". None if the calendar
    /// does not open for that long within two years.
    pub fn add_open_time(&self, at: Timestamp, ms: i64) -> Option<Timestamp> {
        let mut left = ms.max(0);
        let mut t = self.next_open(at)?;
        let zoned = t.to_zoned(self.zone.clone());
        let mut date = zoned.date();
        for _ in 0..(2 * 366) {
            if !self.holidays.contains(&date) {
                for (start, end) in &self.week[weekday_index(date.weekday())] {
                    let local = |time: Time| date.to_datetime(time).to_zoned(self.zone.clone());
                    let open = local(*start).ok()?.timestamp();
                    let close = if *end == Time::MAX {
                        date.tomorrow()
                            .ok()?
                            .to_zoned(self.zone.clone())
                            .ok()?
                            .timestamp()
                    } else {
                        local(*end).ok()?.timestamp()
                    };
                    let from = if open > t { open } else { t };
                    if close <= from {
                        continue;
                    }
                    let span = close.as_millisecond() - from.as_millisecond();
                    if left <= span {
                        return Timestamp::from_millisecond(from.as_millisecond() + left).ok();
                    }
                    left -= span;
                    t = close;
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The zone, for presenting [`Calendar::next_open`] in local time.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

/// Compile a `calendars:` mapping; errors carry pointers relative to it.
pub fn compile_all(value: &Value) -> Result<Calendars, Vec<(String, String)>> {
    let mut out = Calendars::new();
    let mut errors = Vec::new();
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (name, v) in map {
                match compile(name, v) {
                    Ok(c) => {
                        out.insert(name.clone(), Arc::new(c));
                    }
                    Err((p, m)) => errors.push((
                        format!("/{}{p}", crate::yaml::escape(name)),
                        format!("calendar `{name}`: {m}"),
                    )),
                }
            }
        }
        _ => errors.push((
            String::new(),
            "`calendars:` must be a mapping of names to calendars".to_string(),
        )),
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The error for a calendar name that is not defined.
pub fn unknown(name: &str, calendars: &Calendars) -> TimeError {
    let names: Vec<String> = calendars.keys().map(|k| format!("`{k}`")).collect();
    TimeError(format!(
        "unknown calendar `{name}`, expected one of the `calendars:` in recipes/_shared.yaml ({})",
        if names.is_empty() {
            "none are defined".to_string()
        } else {
            names.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_instant;
    use serde_json::json;

    fn eu() -> Calendar {
        compile(
            "support-eu",
            &json!({
                "timezone": "Europe/Berlin",
                "hours": {"mon-fri": "09:00-17:00", "sat": ["10:00-12:00", "13:00-14:00"]},
                "holidays": ["2025-12-25"]
            }),
        )
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        parse_instant(s).unwrap()
    }

    #[test]
    fn open_and_closed() {
        let c = eu();
        assert!(c.is_open(at("2025-12-01T09:00:00+01:00")), "Monday 09:00");
        assert!(!c.is_open(at("2025-12-01T08:59:59+01:00")));
        assert!(
            !c.is_open(at("2025-12-01T17:00:00+01:00")),
            "end is exclusive"
        );
        assert!(
            c.is_open(at("2025-12-06T13:30:00+01:00")),
            "Saturday afternoon"
        );
        assert!(
            !c.is_open(at("2025-12-06T12:30:00+01:00")),
            "Saturday lunch"
        );
        assert!(!c.is_open(at("2025-12-07T10:00:00+01:00")), "Sunday");
        assert!(!c.is_open(at("2025-12-25T10:00:00+01:00")), "holiday");
        // The zone matters: 08:30Z is 09:30 in Berlin.
        assert!(c.is_open(at("2025-12-01T08:30:00Z")));
    }

    #[test]
    fn next_open() {
        let c = eu();
        // Friday evening → Saturday 10:00.
        assert_eq!(
            c.next_open(at("2025-12-05T18:00:00+01:00")),
            Some(at("2025-12-06T10:00:00+01:00"))
        );
        // Saturday lunch → 13:00 the same day.
        assert_eq!(
            c.next_open(at("2025-12-06T12:10:00+01:00")),
            Some(at("2025-12-06T13:00:00+01:00"))
        );
        // Christmas Eve after hours → the 26th (the 25th is a holiday).
        assert_eq!(
            c.next_open(at("2025-12-24T20:00:00+01:00")),
            Some(at("2025-12-26T09:00:00+01:00"))
        );
        let open = at("2025-12-01T10:00:00+01:00");
        assert_eq!(c.next_open(open), Some(open));
    }

    #[test]
    fn business_time_counts_only_open_hours() {
        let c = eu();
        let h = 3_600_000;
        // Monday 10:00 + 4 h = Monday 14:00.
        assert_eq!(
            c.add_open_time(at("2025-12-01T10:00:00+01:00"), 4 * h),
            Some(at("2025-12-01T14:00:00+01:00"))
        );
        // Monday 10:00 + 12 h: 7 h on Monday, 5 h on Tuesday → Tuesday 14:00.
        assert_eq!(
            c.add_open_time(at("2025-12-01T10:00:00+01:00"), 12 * h),
            Some(at("2025-12-02T14:00:00+01:00"))
        );
        // Friday 16:00 + 12 h: 1 h Friday, 3 h Saturday (two ranges), 8 h Monday → Monday 17:00.
        assert_eq!(
            c.add_open_time(at("2025-12-05T16:00:00+01:00"), 12 * h),
            Some(at("2025-12-08T17:00:00+01:00"))
        );
        // Created at night: counting starts at the next opening; the holiday is skipped.
        assert_eq!(
            c.add_open_time(at("2025-12-24T20:00:00+01:00"), 2 * h),
            Some(at("2025-12-26T11:00:00+01:00"))
        );
        // Zero is the next opening.
        assert_eq!(
            c.add_open_time(at("2025-12-07T10:00:00+01:00"), 0),
            Some(at("2025-12-08T09:00:00+01:00"))
        );
        // Round the clock: plain arithmetic.
        let always = compile(
            "always",
            &json!({"timezone": "UTC", "hours": {"mon-sun": "00:00-24:00"}}),
        )
        .unwrap();
        assert_eq!(
            always.add_open_time(at("2025-12-05T16:00:00Z"), 12 * h),
            Some(at("2025-12-06T04:00:00Z"))
        );
    }

    #[test]
    fn bad_calendars_point_at_the_field() {
        let err = |v: Value| compile("c", &v).unwrap_err();
        assert_eq!(
            err(json!({"timezone": "Europe/Nowhere", "hours": {"mon": "09:00-17:00"}})).0,
            "/timezone"
        );
        let (p, m) = err(json!({"timezone": "UTC", "hours": {"mon": "9-5"}}));
        assert_eq!(p, "/hours/mon");
        assert!(m.contains("HH:MM-HH:MM"), "{m}");
        let (p, m) = err(json!({"timezone": "UTC", "hours": {"funday": "09:00-17:00"}}));
        assert_eq!(p, "/hours/funday");
        assert!(m.contains("unknown day"), "{m}");
        assert_eq!(
            err(
                json!({"timezone": "UTC", "hours": {"mon": "09:00-17:00"}, "holidays": ["25.12."]})
            )
            .0,
            "/holidays/0"
        );
        assert_eq!(
            err(json!({"timezone": "UTC", "hours": {"mon": "17:00-09:00"}})).0,
            "/hours/mon"
        );
        let (p, m) = err(json!({"timezone": "UTC", "hours": {"mon": "09:00-17:00"}, "open": 1}));
        assert_eq!(p, "/open");
        assert!(m.contains("unknown field"), "{m}");
        let errs = compile_all(&json!({"a": {"timezone": "UTC"}})).unwrap_err();
        assert!(errs[0].1.contains("calendar `a`"), "{errs:?}");
    }

    #[test]
    fn day_specs() {
        assert_eq!(parse_days("mon-fri").unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(parse_days("fri-mon").unwrap(), vec![4, 5, 6, 0]);
        assert_eq!(parse_days("Saturday,sun").unwrap(), vec![5, 6]);
        assert!(parse_days("mo").is_err());
    }

    proptest::proptest! {
        #[test]
        fn hours_parser_never_panics(s in ".{0,20}", d in ".{0,12}") {
            let _ = parse_range(&s);
            let _ = parse_days(&d);
        }
    }
}
