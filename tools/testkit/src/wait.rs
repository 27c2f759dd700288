//! Polling until something is ready, with a deadline.

use std::time::{Duration, Instant};

/// Calls `ready` every `interval` until it returns `Some`, and returns that value; `None` once
/// `timeout` has passed (for a caller that explains the failure itself).
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Like [`poll`], but panics with "timed out waiting for {what}" once `timeout` has passed.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    ready: impl FnMut() -> Option<T>,
) -> T {
    poll(timeout, interval, ready).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_and_times_out_otherwise() {
        let mut n = 0;
        let got = until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                (n == 3).then_some(n)
            },
        );
        assert_eq!(got, 3);
        assert_eq!(poll(Duration::ZERO, Duration::ZERO, || None::<()>), None);
        let late = std::panic::catch_unwind(|| {
            until("never", Duration::ZERO, Duration::ZERO, || None::<()>)
        });
        assert!(late.is_err());
    }
}
