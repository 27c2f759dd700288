//! Adaptive polling of a queue's available ring after a batch: [`PollWindow`] decides how
//! long a queue worker keeps looking for the driver's next request before it sleeps on the
//! kick eventfd again, the way KVM's halt polling decides how long a halted vCPU spins.
//!
//! A wake-up costs a sleep, a cross-CPU interrupt and a schedule (tens of µs on a virtual
//! CPU); a poll costs CPU. The window starts closed. It opens (to an eighth of the limit,
//! then doubling up to the limit) when a kick arrives shortly after the worker went to sleep,
//! that is, when a poll of the limit's length would have caught the request; it halves each
//! time a poll ends with nothing found, and closes below an eighth of the limit. So a worker
//! polls while requests follow each other closely, and an idle device costs no CPU: after the
//! last request one window at most is spent, then the worker sleeps until the next kick.

use std::time::{Duration, Instant};

/// One queue's polling window, owned by the queue's worker.
#[derive(Debug)]
pub struct PollWindow {
    /// The largest window (`--poll-us`); zero turns polling off.
    limit: Duration,
    /// The window the next poll uses.
    current: Duration,
    /// When the worker last went to sleep on its kick eventfd (after a batch).
    slept_at: Option<Instant>,
}

impl PollWindow {
    /// A closed window that may open up to `limit` (zero: never poll).
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            current: Duration::ZERO,
            slept_at: None,
        }
    }

    /// Whether polling is on at all.
    pub fn enabled(&self) -> bool {
        !self.limit.is_zero()
    }

    /// The window the next poll would use.
    pub fn current(&self) -> Duration {
        self.current
    }

    fn floor(&self) -> Duration {
        (self.limit / 8)
            .max(Duration::from_micros(1))
            .min(self.limit)
    }

    /// The worker was woken by a kick at `now`: if it had gone to sleep less than the limit
    /// before, a poll would have caught this request, so the window grows.
    pub fn woken(&mut self, now: Instant) {
        let Some(slept) = self.slept_at.take() else {
            return;
        };
        if self.enabled() && now.saturating_duration_since(slept) < self.limit {
            self.current = if self.current.is_zero() {
                self.floor()
            } else {
                (self.current * 2).min(self.limit)
            };
        }
    }

    /// The worker goes to sleep on its kick eventfd at `now`.
    pub fn sleeping(&mut self, now: Instant) {
        self.slept_at = Some(now);
    }

    /// Polls `ready` for up to the current window; returns whether it held. A poll that
    /// finds nothing shrinks the window. `stop` ends the poll early (the queue was stopped).
    pub fn poll(
        &mut self,
        mut ready: impl FnMut() -> bool,
        mut stop: impl FnMut() -> bool,
    ) -> bool {
        if self.current.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            if ready() {
                return true;
            }
            if stop() || start.elapsed() >= self.current {
                break;
            }
            std::hint::spin_loop();
        }
        self.current /= 2;
        if self.current < self.floor() {
            self.current = Duration::ZERO;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_micros(800);

    #[test]
    fn a_window_of_zero_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        assert!(!w.enabled());
        let t = Instant::now();
        w.sleeping(t);
        w.woken(t + Duration::from_micros(1));
        assert_eq!(w.current(), Duration::ZERO);
        let mut asked = 0;
        assert!(!w.poll(
            || {
                asked += 1;
                true
            },
            || false
        ));
        assert_eq!(asked, 0, "a closed window does not even look");
    }

    #[test]
    fn quick_kicks_open_the_window_up_to_the_limit() {
        let mut w = PollWindow::new(LIMIT);
        let mut t = Instant::now();
        // The first wake-up has no sleep before it: nothing to learn.
        w.woken(t);
        assert_eq!(w.current(), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..6 {
            w.sleeping(t);
            t += Duration::from_micros(20);
            w.woken(t);
            seen.push(w.current().as_micros());
        }
        assert_eq!(seen, vec![100, 200, 400, 800, 800, 800]);
    }

    #[test]
    fn slow_kicks_leave_the_window_closed() {
        let mut w = PollWindow::new(LIMIT);
        let mut t = Instant::now();
        for _ in 0..5 {
            w.sleeping(t);
            t += LIMIT + Duration::from_micros(1);
            w.woken(t);
            assert_eq!(w.current(), Duration::ZERO);
        }
    }

    #[test]
    fn empty_polls_halve_the_window_then_close_it() {
        let mut w = PollWindow::new(Duration::from_micros(80));
        let t = Instant::now();
        for _ in 0..4 {
            w.sleeping(t);
            w.woken(t);
        }
        assert_eq!(w.current(), Duration::from_micros(80));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let start = Instant::now();
            assert!(!w.poll(|| false, || false));
            assert!(start.elapsed() >= Duration::from_micros(10));
            seen.push(w.current().as_micros());
        }
        assert_eq!(seen, vec![40, 20, 10, 0]);
    }

    #[test]
    fn a_poll_that_finds_work_keeps_the_window_and_stop_ends_it() {
        let mut w = PollWindow::new(Duration::from_secs(5));
        let t = Instant::now();
        w.sleeping(t);
        w.woken(t);
        let open = w.current();
        let mut n = 0;
        assert!(w.poll(
            || {
                n += 1;
                n == 100
            },
            || false
        ));
        assert_eq!(w.current(), open);
        // A stopped queue ends the poll at once, not after the window (625 ms here).
        let start = Instant::now();
        assert!(!w.poll(|| false, || true));
        assert!(start.elapsed() < Duration::from_millis(600));
    }
}
