//! What keeps Switchboard from hurting the APIs it calls: retry policy
//! (exponential backoff with full jitter, `Retry-After`), a rate limit and a
//! concurrency limit shared by every run, and a circuit breaker.
//!
//! State here is in memory and per process; the *schedule* of a retry is not:
//! the engine stores a waiting run with its due time.

use super::config::{BreakerFile, LimitsFile, RetryFile};
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
    /// Parse `100/10s`.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let err = || format!("invalid rate `{text}`, expected CALLS/DURATION such as `100/10s`");
        let (n, per) = text.split_once('/').ok_or_else(err)?;
        let max: usize = n.trim().parse().map_err(|_| err())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| err())?;
        if max == 0 || max > Semaphore::MAX_PERMITS || per.is_zero() {
            return Err(err());
        }
        Ok(RateLimit {
            max,
            per,
            slots: Arc::new(Semaphore::new(max)),
        })
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

/// Circuit breaker: after `failures` consecutive retryable failures, calls
/// are not made for `cooldown`; then one call is let through to probe.
#[derive(Debug)]
pub struct Breaker {
    pub failures: u32,
    pub cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(file: Option<&BreakerFile>) -> Breaker {
        Breaker {
            failures: file.and_then(|f| f.failures).unwrap_or(5),
            cooldown: file
                .and_then(|f| f.cooldown)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            state: Mutex::new(BreakerState::default()),
        }
    }

    /// `Err(remaining)` while open.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.open_until {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn record(&self, now: Instant, retryable_failure: bool) {
        if self.failures == 0 {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if retryable_failure {
            s.consecutive += 1;
            if s.consecutive >= self.failures {
                s.open_until = Some(now + self.cooldown);
                // The probe after the cool-down reopens it at once if it fails.
                s.consecutive = self.failures - 1;
            }
        } else {
            *s = BreakerState::default();
        }
    }
}

/// Every limit of one connector.
#[derive(Debug)]
pub struct Limits {
    pub rate: Option<RateLimit>,
    pub concurrency: Option<std::sync::Arc<Semaphore>>,
    pub breaker: Breaker,
}

impl Limits {
    pub fn new(
        limits: Option<&LimitsFile>,
        breaker: Option<&BreakerFile>,
    ) -> Result<Limits, String> {
        let rate = limits
            .and_then(|l| l.rate.as_deref())
            .map(RateLimit::parse)
            .transpose()?;
        let concurrency = match limits.and_then(|l| l.concurrency) {
            Some(0) => return Err("`concurrency` must be at least 1".into()),
            Some(n) => Some(std::sync::Arc::new(Semaphore::new(n))),
            None => None,
        };
        Ok(Limits {
            rate,
            concurrency,
            breaker: Breaker::new(breaker),
        })
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

    #[tokio::test]
    async fn rate_slots_come_back_a_window_after_the_call_ends() {
        let r = RateLimit::parse("2/100ms").unwrap();
        let a = r.try_acquire().unwrap();
        let _b = r.try_acquire().unwrap();
        assert!(r.try_acquire().is_none(), "two calls in flight");
        let ended = Instant::now();
        drop(a);
        assert!(
            r.try_acquire().is_none(),
            "an ended call keeps its slot for a window"
        );
        let _c = r.acquire().await;
        assert!(ended.elapsed() >= Duration::from_millis(100));
        for bad in ["3", "x/1s", "0/1s", "3/0s", "3/soon"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_after_cooldown() {
        let b = Breaker::new(Some(&BreakerFile {
            failures: Some(3),
            cooldown: Some(crate::duration::HumanDuration(Duration::from_secs(10))),
        }));
        let t0 = Instant::now();
        b.record(t0, true);
        b.record(t0, true);
        assert!(b.check(t0).is_ok());
        b.record(t0, true);
        assert!(b.check(t0 + Duration::from_secs(1)).is_err());
        let probe = t0 + Duration::from_secs(11);
        assert!(b.check(probe).is_ok());
        b.record(probe, true); // the probe fails: open again at once
        assert!(b.check(probe + Duration::from_secs(1)).is_err());
        b.record(probe + Duration::from_secs(20), false);
        assert!(b.check(probe + Duration::from_secs(20)).is_ok());
    }
}
