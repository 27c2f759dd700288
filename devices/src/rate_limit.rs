//! [`RateLimiter`]: lets a warning through at most once per interval and counts the rest, so a
//! misbehaving guest cannot flood the log. Shared by every device and by the vhost-user backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admits one event per interval; remembers how many were held back since the last one.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// A limiter admitting one event per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the event may be logged, `n` being how many were suppressed before it;
    /// `None` when it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_one_per_interval_and_counts_the_rest() {
        let r = RateLimiter::new(Duration::from_secs(3600));
        assert_eq!(r.admit(), Some(0));
        assert_eq!(r.admit(), None);
        assert_eq!(r.admit(), None);
        let r0 = RateLimiter::new(Duration::ZERO);
        assert_eq!(r0.admit(), Some(0));
        assert_eq!(r0.admit(), Some(0));
    }
}
