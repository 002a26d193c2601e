//! What keeps Switchboard from hurting the APIs it calls: retry policy
//! (exponential backoff with full jitter, `Retry-After`), a rate limit and a
//! concurrency limit shared by every run, and a circuit breaker.
//!
//! State here is in memory and per process; the *schedule* of a retry is not:
//! the engine stores a waiting run with its due time.

use super::config::{BreakerFile, LimitsFile, Rate, RetryFile};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// When and how often a failed call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// This policy with the fields `file` sets replaced.
    pub fn with(self, file: Option<&RetryFile>) -> RetryPolicy {
        let Some(f) = file else { return self };
        RetryPolicy {
            attempts: f.attempts.unwrap_or(self.attempts).max(1),
            backoff: f.backoff.map(|d| d.0).unwrap_or(self.backoff),
            max_backoff: f.max_backoff.map(|d| d.0).unwrap_or(self.max_backoff),
            max_retry_after: f
                .max_retry_after
                .map(|d| d.0)
                .unwrap_or(self.max_retry_after),
        }
    }

    /// Wait before attempt `attempt + 1`, after `attempt` failed ones (1-based):
    /// full jitter over `min(max_backoff, backoff * 2^(attempt-1))`, but never
    /// less than the server's `Retry-After` (itself capped by `max_retry_after`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let jittered = exp.mul_f64(rand::random::<f64>());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

/// Parse a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// At most `max` calls in any window of `per`, as the far end counts them.
///
/// A call takes one of `max` slots before it starts and gives it back `per`
/// after it ends. Counting from the end rather than the start makes the bound
/// hold at the far end whatever the delivery latency: a call that waited in
/// our runtime or on a new connection after taking its slot cannot arrive in
/// the same window as the call that next uses that slot.
#[derive(Debug)]
pub struct RateLimit {
    pub max: usize,
    pub per: Duration,
    slots: Arc<Semaphore>,
}

/// A slot of a [`RateLimit`], held while a call is in flight; it returns to
/// the limit `per` after it is dropped.
#[derive(Debug)]
pub struct RateSlot {
    permit: Option<OwnedSemaphorePermit>,
    per: Duration,
}

impl Drop for RateSlot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // Outside a runtime (shutting down) nothing calls any more.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let per = self.per;
            rt.spawn(async move {
                tokio::time::sleep(per).await;
                drop(permit);
            });
        }
    }
}

impl RateLimit {
    pub fn new(rate: Rate) -> RateLimit {
        RateLimit {
            max: rate.max,
            per: rate.per,
            slots: Arc::new(Semaphore::new(rate.max)),
        }
    }

    #[cfg(test)]
    fn parse(text: &str) -> Result<RateLimit, String> {
        text.parse().map(RateLimit::new)
    }

    /// A slot now, if one is free.
    pub fn try_acquire(&self) -> Option<RateSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(RateSlot {
            permit: Some(permit),
            per: self.per,
        })
    }

    /// Wait for a slot (first come, first served).
    pub async fn acquire(&self) -> RateSlot {
        // The semaphore is never closed.
        let permit = self.slots.clone().acquire_owned().await.ok();
        RateSlot {
            permit,
            per: self.per,
        }
    }
}

/// Circuit breaker: after `failures` consecutive retryable failures it
/// opens and no call is made for `cooldown`; then it is half-open: exactly
/// one call is let through to probe. The probe's success closes it, its
/// failure opens it for another cool-down; meanwhile every other call is
/// refused. `failures: 0` turns it off.
#[derive(Debug)]
pub struct Breaker {
    pub failures: u32,
    pub cooldown: Duration,
    /// A std Mutex: nothing async happens while it is held.
    state: Mutex<BreakerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    /// Calls go; `consecutive` retryable failures so far.
    Closed { consecutive: u32 },
    /// No call until `until`; the first one then is the probe.
    Open { until: Instant },
    /// The probe is in flight; no other call goes.
    HalfOpen,
}

/// How long a call refused while the probe is in flight waits before it
/// asks again (or the cool-down, if shorter): a probe takes about one call.
const PROBE_RECHECK: Duration = Duration::from_secs(1);

/// Leave from the breaker to make one call. Report its outcome with
/// [`Pass::record`]; a probe dropped without an outcome (its call was
/// abandoned) lets the next call probe instead.
#[derive(Debug)]
pub struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Breaker {
    pub fn new(file: Option<&BreakerFile>) -> Breaker {
        Breaker {
            failures: file.and_then(|f| f.failures).unwrap_or(5),
            cooldown: file
                .and_then(|f| f.cooldown)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            state: Mutex::new(BreakerState::Closed { consecutive: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the breaker stands (for `/metrics`): open until a probe passes.
    pub fn position(&self) -> crate::metrics::BreakerPosition {
        use crate::metrics::BreakerPosition as P;
        match *self.state() {
            BreakerState::Closed { .. } => P::Closed,
            BreakerState::Open { .. } => P::Open,
            BreakerState::HalfOpen => P::HalfOpen,
        }
    }

    /// Whether a call could go now (`Err(wait)` if not), without taking the
    /// probe: asked before waiting for the other limits.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match *self.state() {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if until > now => Err(until - now),
            BreakerState::Open { .. } => Ok(()),
            BreakerState::HalfOpen => Err(self.cooldown.min(PROBE_RECHECK)),
        }
    }

    /// Leave to call now, or `Err(wait)`: asked right before the call. The
    /// first call after the cool-down becomes the probe.
    pub fn pass(&self, now: Instant) -> Result<Pass<'_>, Duration> {
        let mut s = self.state();
        let probe = match *s {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } if until > now => return Err(until - now),
            BreakerState::Open { .. } => {
                *s = BreakerState::HalfOpen;
                true
            }
            BreakerState::HalfOpen => return Err(self.cooldown.min(PROBE_RECHECK)),
        };
        Ok(Pass {
            breaker: self,
            probe,
        })
    }
}

impl Pass<'_> {
    /// The call ended: `retryable_failure` counts towards opening the
    /// breaker, anything else resets the count. A probe decides alone:
    /// success closes the breaker, failure opens it again. Other calls count
    /// only while it is closed (they left before it opened).
    pub fn record(mut self, now: Instant, retryable_failure: bool) {
        let b = self.breaker;
        let probe = std::mem::take(&mut self.probe);
        if b.failures == 0 {
            return;
        }
        let mut s = b.state();
        let open = BreakerState::Open {
            until: now + b.cooldown,
        };
        *s = match (*s, probe, retryable_failure) {
            (_, true, true) => open,
            (_, true, false) => BreakerState::Closed { consecutive: 0 },
            (BreakerState::Closed { consecutive }, false, true)
                if consecutive + 1 >= b.failures =>
            {
                open
            }
            (BreakerState::Closed { consecutive }, false, true) => BreakerState::Closed {
                consecutive: consecutive + 1,
            },
            (BreakerState::Closed { .. }, false, false) => BreakerState::Closed { consecutive: 0 },
            (other, false, _) => other,
        };
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            // An abandoned probe: the next call probes.
            let mut s = self.breaker.state();
            if *s == BreakerState::HalfOpen {
                *s = BreakerState::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

/// Every limit of one connector.
#[derive(Debug)]
pub struct Limits {
    pub rate: Option<RateLimit>,
    pub concurrency: Option<std::sync::Arc<Semaphore>>,
    /// The `concurrency:` the semaphore was made with (for [`Limits::usage`]).
    concurrency_max: usize,
    pub breaker: Breaker,
    /// The latest time handed to a refused call to come back
    /// ([`Limits::try_admit`]): refused calls get successive times one
    /// slot's worth apart, so a thousand waiting runs come back one by one
    /// rather than all at once. A std Mutex: nothing async happens while
    /// it is held.
    next_try: Mutex<Option<Instant>>,
}

/// What a connector's limits are doing now (the admin API shows it as
/// `admin::console::LimitUsage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitUsage {
    /// Rate slots taken (in flight or within a window of their end) of `rate_max`.
    pub rate_in_use: Option<usize>,
    pub rate_max: Option<usize>,
    pub rate_per_ms: Option<u64>,
    /// Calls in flight of `concurrency_max`.
    pub concurrency_in_use: Option<usize>,
    pub concurrency_max: Option<usize>,
    pub breaker: BreakerView,
}

/// A circuit breaker's state, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerView {
    /// `failures: 0`: never opens.
    Off,
    /// Calls go; it opens after `opens_after` consecutive retryable failures.
    Closed { failures: u32, opens_after: u32 },
    /// No call goes for `probe_in_ms` more; then one call probes.
    Open { probe_in_ms: u64 },
    /// The probe is in flight.
    HalfOpen,
}

impl Breaker {
    /// Its state at `now`, for people to look at.
    pub fn view(&self, now: Instant) -> BreakerView {
        if self.failures == 0 {
            return BreakerView::Off;
        }
        match *self.state() {
            BreakerState::Closed { consecutive } => BreakerView::Closed {
                failures: consecutive,
                opens_after: self.failures,
            },
            BreakerState::Open { until } => BreakerView::Open {
                probe_in_ms: until.saturating_duration_since(now).as_millis() as u64,
            },
            BreakerState::HalfOpen => BreakerView::HalfOpen,
        }
    }
}

/// How long a call refused by a full concurrency limit waits before it
/// tries again, per call ahead of it (when it frees is unknown).
const CONCURRENCY_SPACING: Duration = Duration::from_millis(50);

impl Limits {
    pub fn new(
        limits: Option<&LimitsFile>,
        breaker: Option<&BreakerFile>,
    ) -> Result<Limits, String> {
        let rate = limits.and_then(|l| l.rate).map(RateLimit::new);
        let concurrency = match limits.and_then(|l| l.concurrency) {
            Some(0) => return Err("`concurrency` must be at least 1".into()),
            Some(n) => Some(std::sync::Arc::new(Semaphore::new(n))),
            None => None,
        };
        Ok(Limits {
            rate,
            concurrency,
            concurrency_max: limits.and_then(|l| l.concurrency).unwrap_or(0),
            breaker: Breaker::new(breaker),
            next_try: Mutex::new(None),
        })
    }

    /// What the limits are doing at `now`.
    pub fn usage(&self, now: Instant) -> LimitUsage {
        LimitUsage {
            rate_in_use: self
                .rate
                .as_ref()
                .map(|r| r.max.saturating_sub(r.slots.available_permits())),
            rate_max: self.rate.as_ref().map(|r| r.max),
            rate_per_ms: self.rate.as_ref().map(|r| r.per.as_millis() as u64),
            concurrency_in_use: self
                .concurrency
                .as_ref()
                .map(|s| self.concurrency_max.saturating_sub(s.available_permits())),
            concurrency_max: self.concurrency.as_ref().map(|_| self.concurrency_max),
            breaker: self.breaker.view(now),
        }
    }

    /// A concurrency permit and a rate slot now, or — without waiting —
    /// how long until the call should try again. A worker never waits for a
    /// limit: the run is rescheduled to that time and the worker moves on,
    /// so a slow connector cannot hold every worker.
    pub fn try_admit(&self, now: Instant) -> Result<Admission, Duration> {
        let permit = match &self.concurrency {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let n = sem.available_permits().max(1) as u32;
                    return Err(self.reserve(now, CONCURRENCY_SPACING / n));
                }
            },
            None => None,
        };
        let rate = match &self.rate {
            Some(rate) => match rate.try_acquire() {
                Some(slot) => Some(slot),
                None => return Err(self.reserve(now, rate.per / rate.max.max(1) as u32)),
            },
            None => None,
        };
        Ok(Admission {
            _permit: permit,
            _rate: rate,
        })
    }

    /// The next free retry time, `spacing` after the last one handed out
    /// (or from now): how long until it.
    fn reserve(&self, now: Instant, spacing: Duration) -> Duration {
        let mut next = self.next_try.lock().unwrap_or_else(|p| p.into_inner());
        let at = next.filter(|t| *t > now).unwrap_or(now) + spacing;
        *next = Some(at);
        at - now
    }

    /// Wait for a concurrency permit and a rate slot (in that order, so a
    /// call holding a rate slot is never stuck behind the concurrency limit).
    /// Hold the answer until the call has ended.
    pub async fn admit(&self) -> Admission {
        let permit = match &self.concurrency {
            Some(sem) => sem.clone().acquire_owned().await.ok(),
            None => None,
        };
        let rate = match &self.rate {
            Some(rate) => Some(rate.acquire().await),
            None => None,
        };
        Admission {
            _permit: permit,
            _rate: rate,
        }
    }
}

/// Leave to make one call: released when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
    _rate: Option<RateSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(5),
        };
        for attempt in 1..=10 {
            let cap = Duration::from_millis((100u64 << (attempt - 1)).min(1000));
            for _ in 0..50 {
                assert!(p.delay(attempt, None) <= cap);
            }
        }
        // Retry-After is a floor, bounded by max_retry_after.
        assert!(p.delay(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
        assert!(
            p.delay(40, None) <= Duration::from_millis(1000),
            "no overflow"
        );
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_slots_come_back_a_window_after_the_call_ends() {
        let r = RateLimit::parse("2/100ms").unwrap();
        let a = r.try_acquire().unwrap();
        let _b = r.try_acquire().unwrap();
        assert!(r.try_acquire().is_none(), "two calls in flight");
        let ended = tokio::time::Instant::now();
        drop(a);
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert!(
            r.try_acquire().is_none(),
            "an ended call keeps its slot for a window"
        );
        let _c = r.acquire().await;
        assert_eq!(ended.elapsed(), Duration::from_millis(100));
    }

    #[test]
    fn rates_are_calls_per_duration() {
        for bad in ["3", "x/1s", "0/1s", "3/0s", "3/soon"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        let r = RateLimit::parse("100/10s").unwrap();
        assert_eq!((r.max, r.per), (100, Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn admit_waits_for_concurrency_then_rate() {
        let limits = Limits::new(
            Some(&LimitsFile {
                rate: Some("1/1s".parse().unwrap()),
                concurrency: Some(1),
            }),
            None,
        )
        .unwrap();
        let start = tokio::time::Instant::now();
        drop(limits.admit().await);
        // The rate slot of the first call returns a window after it ended.
        drop(limits.admit().await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(Some(&BreakerFile {
            failures: Some(failures),
            cooldown: Some(crate::duration::HumanDuration(Duration::from_secs(10))),
        }))
    }

    /// One call through the breaker at `at`, failing or not.
    fn call(b: &Breaker, at: Instant, fails: bool) {
        b.pass(at)
            .expect("breaker lets the call go")
            .record(at, fails);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_after_cooldown() {
        let b = breaker(3);
        let t0 = Instant::now();
        call(&b, t0, true);
        call(&b, t0, true);
        call(&b, t0, false); // a success resets the count
        call(&b, t0, true);
        call(&b, t0, true);
        assert!(b.check(t0).is_ok());
        call(&b, t0, true);
        assert_eq!(
            b.check(t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(9))
        );
        assert!(b.pass(t0 + Duration::from_secs(1)).is_err());
        let later = t0 + Duration::from_secs(11);
        assert!(b.check(later).is_ok());
        call(&b, later, true); // the probe fails: open again at once
        assert!(b.check(later + Duration::from_secs(1)).is_err());
        let probe_at = later + Duration::from_secs(20);
        call(&b, probe_at, false); // the probe succeeds: closed
        call(&b, probe_at, true);
        assert!(b.check(probe_at).is_ok(), "one failure after closing");
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let b = breaker(1);
        let t0 = Instant::now();
        call(&b, t0, true);
        let after = t0 + Duration::from_secs(10);
        assert!(b.check(after).is_ok(), "asking does not take the probe");
        assert_eq!(
            b.view(t0 + Duration::from_secs(4)),
            BreakerView::Open { probe_in_ms: 6000 }
        );
        let probe = b.pass(after).expect("the first call probes");
        assert_eq!(b.view(after), BreakerView::HalfOpen);
        assert_eq!(b.check(after), Err(PROBE_RECHECK));
        assert!(b.pass(after).is_err(), "a second call waits for the probe");
        // A call that left before the breaker opened changes nothing.
        let old = Pass {
            breaker: &b,
            probe: false,
        };
        old.record(after, false);
        assert!(b.pass(after).is_err());
        probe.record(after, false);
        assert!(b.pass(after).is_ok(), "the probe closed it");
        assert_eq!(
            b.view(after),
            BreakerView::Closed {
                failures: 0,
                opens_after: 1
            }
        );
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let b = breaker(1);
        let t0 = Instant::now();
        call(&b, t0, true);
        let after = t0 + Duration::from_secs(10);
        drop(b.pass(after).expect("probe"));
        let next = b.pass(Instant::now() + Duration::from_secs(10));
        assert!(next.is_ok_and(|p| p.probe), "the next call is the probe");
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let b = breaker(0);
        let t0 = Instant::now();
        for _ in 0..10 {
            call(&b, t0, true);
        }
        assert!(b.pass(t0).is_ok());
    }
}
