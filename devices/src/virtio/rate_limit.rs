//! A log throttle so that a misbehaving guest cannot flood the VMM's log.

use std::time::{Duration, Instant};

/// Lets at most one message through per interval and counts the ones it held back.
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// Creates a throttle passing one message per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(n)` when a message may be logged now, `n` being how many were
    /// held back since the last one; `None` when this one must be dropped.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_one_per_interval_and_counts_the_rest() {
        let mut log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), None);
        assert_eq!(log.check(), None);
        let mut fast = RateLimitedLog::new(Duration::ZERO);
        assert_eq!(fast.check(), Some(0));
        assert_eq!(fast.check(), Some(0));
    }
}
