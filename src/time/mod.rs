//! Time for recipes: the clock the engine reads, instants and zones as
//! templates see them, durations with a maximum, cron schedules
//! ([`schedule`]) and business-hours calendars ([`calendar`]).
//!
//! Everything time-dependent in the engine asks a [`Clock`] rather than the
//! OS, so `switchboard test` can run a story of events and waits on a
//! virtual clock in milliseconds, and a replayed run sees the time its step
//! first saw. Zones come from the tz database bundled into the binary (jiff's
//! `tzdb-bundle-always`), so a zone name means the same on every host.
//!
//! This module does no I/O and knows nothing about recipes, the store or HTTP.

pub mod calendar;
pub mod schedule;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

pub use calendar::{Calendar, Calendars};
pub use schedule::Schedule;

/// The engine's source of "now", in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;

    /// For a clock that moves only when told: remember `waker` and wake it
    /// the next time the clock moves, and say `true`. A clock that moves by
    /// itself (the OS's) says `false`: sleep on the runtime's timer instead.
    /// (How the engine sleeps "until T by this clock", without this module
    /// knowing a runtime.)
    fn wake_on_move(&self, _waker: &Waker) -> bool {
        false
    }
}

/// The operating system's clock (`switchboard serve`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }
}

/// A clock that moves only when told (`switchboard test`, unit tests).
/// Moving it wakes whoever sleeps on it ([`Clock::wake_on_move`]).
#[derive(Debug, Clone, Default)]
pub struct VirtualClock(Arc<VirtualInner>);

#[derive(Debug, Default)]
struct VirtualInner {
    now: AtomicI64,
    /// Sleepers to wake at the next move. A std Mutex: held only to push or
    /// take the list.
    sleepers: Mutex<Vec<Waker>>,
}

impl VirtualClock {
    pub fn at(ms: i64) -> VirtualClock {
        let clock = VirtualClock::default();
        clock.0.now.store(ms, Ordering::SeqCst);
        clock
    }

    pub fn advance(&self, ms: i64) {
        self.0.now.fetch_add(ms.max(0), Ordering::SeqCst);
        self.moved();
    }

    pub fn set(&self, ms: i64) {
        self.0.now.store(ms, Ordering::SeqCst);
        self.moved();
    }

    fn moved(&self) {
        let sleepers =
            std::mem::take(&mut *self.0.sleepers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in sleepers {
            w.wake();
        }
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> i64 {
        self.0.now.load(Ordering::SeqCst)
    }

    fn wake_on_move(&self, waker: &Waker) -> bool {
        let mut sleepers = self.0.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        // A sleeper polled again (woken by something else) is listed once.
        if !sleepers.iter().any(|w| w.will_wake(waker)) {
            sleepers.push(waker.clone());
        }
        true
    }
}

/// Why a time value, zone, duration or pattern was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(pub String);

/// The time zone `name` from the tz database (`Europe/Berlin`, `UTC`).
pub fn zone(name: &str) -> Result<TimeZone, TimeError> {
    TimeZone::get(name).map_err(|_| {
        TimeError(format!(
            "unknown time zone `{name}`, expected a tz database name such as `Europe/Berlin`, `America/New_York` or `UTC`"
        ))
    })
}

/// Longest a `wait:` may park a run (and a `wait_until:` may lie ahead):
/// 366 days. Longer sleeps are almost always a unit typo (`300d` for `30d`)
/// and would outlive the recipe that started them.
pub const MAX_WAIT_MS: i64 = 366 * 24 * 3_600_000;

/// A duration as recipe authors write it: `90s`, `15m`, `12h`, `3d`, `1w`,
/// `1h 30m`, `2 days`. Units are fixed lengths (a day is 24 h), which is
/// what "wait 3d" means for a timer. Returns milliseconds; zero and negative
/// durations are refused, so are durations over `max_ms`.
pub fn parse_duration(text: &str, max_ms: i64) -> Result<i64, TimeError> {
    let expected = "expected a duration such as `30s`, `15m`, `12h`, `3d` or `1h 30m`";
    let t = text.trim();
    if t.is_empty() {
        return Err(TimeError(format!("empty duration, {expected}")));
    }
    // `ms` is not a jiff unit name in the friendly format's short form list
    // for every version; accept it explicitly.
    let ms = if let Some(n) = t
        .strip_suffix("ms")
        .filter(|n| !n.is_empty() && n.trim().chars().all(|c| c.is_ascii_digit()))
    {
        n.trim()
            .parse::<i64>()
            .map_err(|_| TimeError(format!("invalid duration `{text}`, {expected}")))?
    } else {
        let span: Span = t
            .parse()
            .map_err(|_| TimeError(format!("invalid duration `{text}`, {expected}")))?;
        if span.get_years() != 0 || span.get_months() != 0 {
            return Err(TimeError(format!(
                "invalid duration `{text}`: months and years have no fixed length, {expected}"
            )));
        }
        span_ms(span).ok_or_else(|| TimeError(format!("duration `{text}` is too long")))?
    };
    if ms <= 0 {
        return Err(TimeError(format!(
            "duration `{text}` must be longer than zero"
        )));
    }
    if ms > max_ms {
        return Err(TimeError(format!(
            "duration `{text}` is longer than the maximum of {}",
            describe_ms(max_ms)
        )));
    }
    Ok(ms)
}

/// A span of fixed units (weeks as 7 days, days as 24 h) in milliseconds.
fn span_ms(span: Span) -> Option<i64> {
    let parts: [(i64, i64); 8] = [
        (span.get_weeks() as i64, 7 * 86_400_000),
        (span.get_days() as i64, 86_400_000),
        (span.get_hours() as i64, 3_600_000),
        (span.get_minutes(), 60_000),
        (span.get_seconds(), 1_000),
        (span.get_milliseconds(), 1),
        (span.get_microseconds() / 1_000, 1),
        (span.get_nanoseconds() / 1_000_000, 1),
    ];
    parts.iter().try_fold(0i64, |acc, (n, unit)| {
        acc.checked_add(n.checked_mul(*unit)?)
    })
}

/// `3d`, `12h`, `90s`: the largest whole unit, for messages.
pub fn describe_ms(ms: i64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % len == 0 && ms >= len {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// An instant from a template or event value: milliseconds since the epoch
/// (a number), or a string in RFC 3339 (`2026-11-30T09:00:00Z`,
/// `...+01:00`), RFC 9557 (`...+01:00[Europe/Berlin]`), or a plain date
/// (`2026-11-30`, read as midnight UTC).
pub fn instant(v: &Value) -> Result<Timestamp, TimeError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .ok_or_else(|| TimeError(format!("{n} is not a time in milliseconds since 1970"))),
        Value::String(s) => parse_instant(s),
        other => Err(TimeError(format!(
            "expected a date-time (an RFC 3339 string or milliseconds since 1970), found {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "a list",
                _ => "a mapping",
            }
        ))),
    }
}

/// See [`instant`].
pub fn parse_instant(s: &str) -> Result<Timestamp, TimeError> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(z) = s.parse::<Zoned>() {
        return Ok(z.timestamp());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        if let Ok(z) = d.to_zoned(TimeZone::UTC) {
            return Ok(z.timestamp());
        }
    }
    if let Ok(ms) = s.parse::<i64>() {
        if let Ok(t) = Timestamp::from_millisecond(ms) {
            return Ok(t);
        }
    }
    Err(TimeError(format!(
        "cannot read `{}` as a date-time, expected RFC 3339 such as `2026-11-30T09:00:00Z` or `2026-11-30T10:00:00+01:00`",
        s.chars().take(60).collect::<String>()
    )))
}

/// The zone a value carries: the bracketed name of an RFC 9557 string,
/// else the fixed offset of an RFC 3339 one, else UTC. Lets `weekday` and
/// `format_date` work in the local time of a value `in_tz` produced.
pub fn zoned(v: &Value) -> Result<Zoned, TimeError> {
    let ts = instant(v)?;
    if let Value::String(s) = v {
        let s = s.trim();
        if let Ok(z) = s.parse::<Zoned>() {
            return Ok(z);
        }
        if let Ok(p) = jiff::fmt::temporal::DateTimeParser::new().parse_pieces(s) {
            if let Some(off) = p.to_numeric_offset() {
                return Ok(ts.to_zoned(TimeZone::fixed(off)));
            }
        }
    }
    Ok(ts.to_zoned(TimeZone::UTC))
}

/// How dates leave the time functions: RFC 3339 with the local offset
/// (`2026-11-30T09:00:00+01:00`), which every API accepts, and which reads
/// back to the same local time.
pub fn rfc3339(z: &Zoned) -> String {
    let off = z.offset();
    let civil = z.datetime();
    let frac = if civil.subsec_nanosecond() == 0 {
        String::new()
    } else {
        format!(".{:03}", civil.subsec_nanosecond() / 1_000_000)
    };
    let secs = off.seconds();
    let offset = if secs == 0 {
        "Z".to_string()
    } else {
        let sign = if secs < 0 { '-' } else { '+' };
        let a = secs.abs();
        format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
    };
    format!("{}{frac}{offset}", civil.strftime("%Y-%m-%dT%H:%M:%S"))
}

/// Add a signed duration (`3d`, `-2h`, `1h 30m`) to a zoned time. Days and
/// weeks are calendar days in the value's zone (so `+1d` across a DST change
/// keeps the wall-clock time); hours and smaller are exact.
pub fn add(z: &Zoned, text: &str) -> Result<Zoned, TimeError> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim()),
        None => (false, t.strip_prefix('+').unwrap_or(t).trim()),
    };
    let span: Span = body.parse().map_err(|_| {
        TimeError(format!(
            "invalid duration `{text}`, expected e.g. `3d`, `-2h`, `1h 30m`"
        ))
    })?;
    let span = if neg { span.negate() } else { span };
    z.checked_add(span)
        .map_err(|e| TimeError(format!("cannot add `{text}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        let max = MAX_WAIT_MS;
        assert_eq!(parse_duration("3d", max), Ok(3 * 86_400_000));
        assert_eq!(parse_duration("1h 30m", max), Ok(5_400_000));
        assert_eq!(parse_duration("90s", max), Ok(90_000));
        assert_eq!(parse_duration("250ms", max), Ok(250));
        assert_eq!(parse_duration("2 days", max), Ok(2 * 86_400_000));
        assert_eq!(parse_duration("1w", max), Ok(7 * 86_400_000));
        for bad in ["", "soon", "3 fortnights", "0s", "-1h", "1mo", "2y"] {
            assert!(parse_duration(bad, max).is_err(), "{bad}");
        }
        let e = parse_duration("400d", max).unwrap_err();
        assert!(e.0.contains("maximum of 366d"), "{e}");
    }

    #[test]
    fn zones() {
        assert!(zone("Europe/Berlin").is_ok());
        assert!(zone("UTC").is_ok());
        let e = zone("Mars/Olympus").unwrap_err();
        assert!(e.0.contains("unknown time zone `Mars/Olympus`"), "{e}");
    }

    #[test]
    fn instants_from_values() {
        let want = Timestamp::from_millisecond(1_764_489_600_000).unwrap(); // 2025-11-30T08:00:00Z
        assert_eq!(instant(&json!(1_764_489_600_000i64)), Ok(want));
        assert_eq!(instant(&json!("2025-11-30T08:00:00Z")), Ok(want));
        assert_eq!(instant(&json!("2025-11-30T09:00:00+01:00")), Ok(want));
        assert_eq!(
            instant(&json!("2025-11-30T09:00:00+01:00[Europe/Berlin]")),
            Ok(want)
        );
        assert!(instant(&json!("2025-11-30")).is_ok());
        assert!(instant(&json!("last tuesday")).is_err());
        assert!(instant(&json!(true)).is_err());
    }

    #[test]
    fn local_time_survives_a_round_trip() {
        let z = zoned(&json!("2025-11-30T09:00:00+01:00")).unwrap();
        assert_eq!(z.hour(), 9);
        assert_eq!(rfc3339(&z), "2025-11-30T09:00:00+01:00");
        let utc = zoned(&json!(0)).unwrap();
        assert_eq!(rfc3339(&utc), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn adding_days_keeps_the_wall_clock_across_dst() {
        let berlin = zone("Europe/Berlin").unwrap();
        // 2025-03-29 12:00 CET; DST starts on the 30th.
        let z = parse_instant("2025-03-29T11:00:00Z")
            .unwrap()
            .to_zoned(berlin);
        let next = add(&z, "1d").unwrap();
        assert_eq!(rfc3339(&next), "2025-03-30T12:00:00+02:00");
        let back = add(&next, "-24h").unwrap();
        assert_eq!(rfc3339(&back), "2025-03-29T11:00:00+01:00");
        assert!(add(&z, "soon").is_err());
    }

    #[test]
    fn virtual_clock_moves_only_when_told() {
        let c = VirtualClock::at(1000);
        assert_eq!(c.now_ms(), 1000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1500);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = parse_duration(&s, MAX_WAIT_MS);
            let _ = parse_instant(&s);
            let _ = zone(&s);
        }
    }
}
