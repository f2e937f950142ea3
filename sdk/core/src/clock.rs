//! The time a reconcile pass is judged against.
//!
//! A pass reads the clock once ([`Clock::now`]) and judges every readiness timeout against that
//! instant, so one pass never sees two different "nows". Tests use a [`FixedClock`].
use std::time::Duration;

pub use jiff::Timestamp;

/// Where a pass gets the current time from.
///
/// ```
/// use cuebe_core::clock::{Clock, FixedClock, Timestamp};
/// let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
/// let clock = FixedClock(t);
/// assert_eq!(clock.now(), t);
/// ```
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that always says the same time (for tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// How long before `now` the RFC 3339 `timestamp` was; `None` when it does not parse or lies in
/// the future.
///
/// ```
/// use cuebe_core::clock::{Timestamp, elapsed_since};
/// let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
/// assert_eq!(elapsed_since("2026-01-01T00:00:00Z", now), Some(std::time::Duration::from_secs(60)));
/// assert_eq!(elapsed_since("yesterday", now), None);
/// ```
pub fn elapsed_since(timestamp: &str, now: Timestamp) -> Option<Duration> {
    let then: Timestamp = timestamp.parse().ok()?;
    Duration::try_from(now.duration_since(then)).ok()
}
