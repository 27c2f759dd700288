//! [`LeaseKeeper`]: renews a vNode's lease with the manager while the vNode's backend runs,
//! so that the manager can tell a vNode whose compute host is gone (no renewal for longer
//! than the lease) and reclaim its remote memory, while a backend that merely restarts (a
//! few seconds without renewals) keeps it.
//!
//! A background thread renews every quarter of the lease the manager grants (within
//! bounds) and, after a failure, a second later; failures are logged once per streak.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lego_report::error_chain;

use super::ManagerClient;

/// The shortest wait between two renewals.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two renewals.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// The wait after a failed renewal.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// A running lease renewal; dropping it stops the thread (the lease then lapses).
pub struct LeaseKeeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// How long to wait before the next renewal of a lease of `lease`.
fn renew_every(lease: Duration) -> Duration {
    (lease / 4).clamp(MIN_WAIT, MAX_WAIT)
}

impl LeaseKeeper {
    /// Renews `vnode`'s lease through `manager` for as long as the returned handle lives.
    ///
    /// # Panics
    /// If the operating system cannot create the thread.
    pub fn start(manager: ManagerClient, vnode: u64) -> LeaseKeeper {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lease-{vnode}"))
            .spawn(move || run(&manager, vnode, &flag))
            .expect("the OS could not create the lease renewal thread");
        LeaseKeeper {
            stop,
            thread: Some(thread),
        }
    }
}

fn run(manager: &ManagerClient, vnode: u64, flag: &(Mutex<bool>, Condvar)) {
    let mut failing = false;
    loop {
        let wait = match manager.renew_lease(vnode) {
            Ok(lease) => {
                if failing {
                    tracing::info!(vnode, "the vNode's lease is renewed again");
                    failing = false;
                }
                renew_every(lease)
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        vnode,
                        "cannot renew the vNode's lease with the manager (retrying): {}",
                        error_chain(&e)
                    );
                    failing = true;
                }
                RETRY_WAIT
            }
        };
        let (lock, cv) = flag;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, wait, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        if *guard {
            return;
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_a_quarter_lease_apart_within_bounds() {
        assert_eq!(
            renew_every(Duration::from_secs(120)),
            Duration::from_secs(10)
        );
        assert_eq!(
            renew_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(renew_every(Duration::from_millis(10)), MIN_WAIT);
    }
}
