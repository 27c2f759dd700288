//! [`Renewal`]: keeps a vNode's capability fresh on the connections that use it, so that a
//! vNode runs for as long as it lives rather than until its first capability expires.
//!
//! A background thread asks the manager for a new capability once half of the current one's
//! lifetime is gone and attaches it to every connection (the fabric client re-attaches it on
//! every later reconnection too). A manager that does not answer is asked again, more often
//! as the expiry nears; the old capability stays in use meanwhile.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lego_fabric::capability::unix_now;
use lego_fabric::{Capability, Client, Rights};
use lego_report::error_chain;

use super::ManagerClient;

/// The shortest wait between two attempts (so a failing manager is not hammered).
const MIN_WAIT: Duration = Duration::from_millis(200);
/// The longest wait after a failed attempt.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// A running renewal; dropping it stops the thread.
pub struct Renewal {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// When to ask for the next capability: half-way through what is left of `expires_unix`.
fn renew_after(expires_unix: u64, now_unix: u64) -> Duration {
    let left = expires_unix.saturating_sub(now_unix);
    Duration::from_millis(left.saturating_mul(500)).max(MIN_WAIT)
}

/// How long to wait after a failed attempt: a quarter of what is left, within bounds.
fn retry_after(expires_unix: u64, now_unix: u64) -> Duration {
    let left = expires_unix.saturating_sub(now_unix);
    Duration::from_millis(left.saturating_mul(250)).clamp(MIN_WAIT, MAX_RETRY_WAIT)
}

impl Renewal {
    /// Renews `cap` (for `cap.vnode` with `cap.rights`) through `manager` for as long as the
    /// returned handle lives, attaching each new capability to every client in `clients`.
    ///
    /// # Panics
    /// If the operating system cannot create the thread.
    pub fn start(manager: ManagerClient, cap: Capability, clients: Vec<Client>) -> Renewal {
        Self::start_with(manager, cap, move || clients.clone())
    }

    /// [`Renewal::start`] for a set of connections that may grow: `clients` lists them at
    /// each renewal (e.g. [`super::VnodeMemory::fabric_client_list`], which includes a copy
    /// added by a repair).
    ///
    /// # Panics
    /// If the operating system cannot create the thread.
    pub fn start_with(
        manager: ManagerClient,
        cap: Capability,
        clients: impl Fn() -> Vec<Client> + Send + 'static,
    ) -> Renewal {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cap-renew-{}", cap.vnode))
            .spawn(move || run(&manager, cap, &clients, &flag))
            .expect("the OS could not create the capability renewal thread");
        Renewal {
            stop,
            thread: Some(thread),
        }
    }
}

/// Sleeps up to `wait`; true if the renewal was stopped meanwhile.
fn stopped_within(flag: &(Mutex<bool>, Condvar), wait: Duration) -> bool {
    let (lock, cv) = flag;
    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = cv
        .wait_timeout_while(guard, wait, |stop| !*stop)
        .unwrap_or_else(|e| e.into_inner());
    *guard
}

fn renew_once(
    manager: &ManagerClient,
    vnode: u64,
    rights: Rights,
    clients: &[Client],
) -> Result<Capability, String> {
    let cap = manager
        .issue_capability(vnode, rights, Duration::ZERO)
        .map_err(|e| format!("the manager did not issue one: {}", error_chain(&e)))?;
    for c in clients {
        c.attach(&cap).map_err(|e| {
            format!(
                "attaching it at {} failed: {}",
                c.peer_addr(),
                error_chain(&e)
            )
        })?;
    }
    Ok(cap)
}

fn run(
    manager: &ManagerClient,
    mut cap: Capability,
    clients: &dyn Fn() -> Vec<Client>,
    flag: &(Mutex<bool>, Condvar),
) {
    let mut wait = renew_after(cap.expires_unix, unix_now());
    loop {
        if stopped_within(flag, wait) {
            return;
        }
        let clients = clients();
        match renew_once(manager, cap.vnode, cap.rights, &clients) {
            Ok(new) => {
                tracing::info!(
                    vnode = new.vnode,
                    expires_unix = new.expires_unix,
                    connections = clients.len(),
                    "capability renewed"
                );
                cap = new;
                wait = renew_after(cap.expires_unix, unix_now());
            }
            Err(why) => {
                let now = unix_now();
                tracing::warn!(
                    vnode = cap.vnode,
                    expires_in_s = cap.expires_unix.saturating_sub(now),
                    "renewing the capability failed ({why}); trying again"
                );
                wait = retry_after(cap.expires_unix, now);
            }
        }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        // A thread between two waits stops at once; one waiting for the manager's answer
        // (up to the client's timeout) is left to finish on its own rather than delay
        // the shutdown of the device.
        if let Some(t) = self.thread.take() {
            std::thread::sleep(Duration::from_millis(1));
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_half_way_and_retries_come_sooner_within_bounds() {
        assert_eq!(renew_after(1_100, 1_000), Duration::from_secs(50));
        assert_eq!(renew_after(1_000, 1_000), MIN_WAIT, "already expired");
        assert_eq!(renew_after(900, 1_000), MIN_WAIT);
        assert_eq!(retry_after(1_100, 1_000), MAX_RETRY_WAIT);
        assert_eq!(retry_after(1_004, 1_000), Duration::from_secs(1));
        assert_eq!(retry_after(1_000, 1_000), MIN_WAIT);
    }
}
