//! Pausing the vCPUs for the few moments an eviction needs the guest to stand still.
//!
//! Each vCPU thread registers with the [`PauseGate`] and calls [`PauseGate::checkpoint`]
//! before every KVM_RUN. [`PauseGate::pause`] asks them to stop, kicks each out of KVM_RUN
//! with the kick signal (again every 200 µs, so a kick that lands just before a thread enters
//! KVM_RUN is not lost), and returns once every registered vCPU is parked; dropping the
//! returned guard lets them run again. A vCPU blocked in a fault on guest RAM parks as soon
//! as that fault is served: a vCPU's fault is never held up by a pause.
//!
//! The same gate carries an operator's pause (`vm.pause` on the API socket,
//! [`PauseGate::hold`]): it parks the vCPUs until [`PauseGate::release`], and an eviction
//! round that ends meanwhile leaves them parked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a pause kicks the vCPUs that have not parked yet.
const KICK_EVERY: Duration = Duration::from_micros(200);

#[derive(Debug, Default)]
struct GateState {
    /// An eviction's pause is wanted or in force.
    pausing: bool,
    /// An operator's pause is in force.
    held: bool,
    /// The registered vCPU threads.
    threads: Vec<libc::pthread_t>,
    /// How many of them are parked.
    parked: usize,
}

/// The gate vCPUs pass before each KVM_RUN.
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// `pausing || held`, read without the lock by every vCPU before KVM_RUN.
    stopping: AtomicBool,
}

/// Errors of an operator's pause.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// The vCPUs did not all park in time.
    #[error("the vCPUs did not stop within {0:?} (one may be blocked on a page of guest RAM); the vNode keeps running")]
    Timeout(Duration),
}

/// Holds the vCPUs parked; they run again when it is dropped.
pub struct Paused<'a> {
    gate: &'a PauseGate,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.pausing = false;
        self.gate.stopping.store(s.held, Ordering::Release);
        drop(s);
        self.gate.changed.notify_all();
    }
}

impl PauseGate {
    /// A gate with no vCPUs.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the calling thread as a vCPU (call on the vCPU's thread before it runs).
    pub fn register(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    /// Unregisters the calling vCPU thread (it will not run again).
    pub fn unregister(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.retain(|&t| t != me);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before each KVM_RUN: parks while a pause is in force.
    pub fn checkpoint(&self) {
        if !self.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        if !(s.pausing || s.held) {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.pausing || s.held {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
    }

    /// True while an eviction's pause is wanted or in force (fault threads must not wait
    /// then).
    pub fn pausing(&self) -> bool {
        self.lock().pausing
    }

    /// True while an operator's pause is in force.
    pub fn held(&self) -> bool {
        self.lock().held
    }

    /// An operator's pause: parks every vCPU (kicking them) and keeps them parked until
    /// [`PauseGate::release`]. Fails, resuming them, if they do not all park within `patience`.
    pub fn hold(&self, kick: i32, patience: Duration) -> Result<(), PauseError> {
        let deadline = Instant::now() + patience;
        let mut s = self.lock();
        s.held = true;
        self.stopping.store(true, Ordering::Release);
        if self.kick_until_parked(s, kick, &|| Instant::now() >= deadline) {
            return Ok(());
        }
        self.release();
        Err(PauseError::Timeout(patience))
    }

    /// Ends an operator's pause (the vCPUs run again unless an eviction holds them).
    pub fn release(&self) {
        let mut s = self.lock();
        s.held = false;
        self.stopping.store(s.pausing, Ordering::Release);
        drop(s);
        self.changed.notify_all();
    }

    /// Parks every registered vCPU, kicking them with `kick` (the kick signal's number) until
    /// they are; gives up (resuming them) when `give_up` says so. Returns the guard holding
    /// them, and how long the pause took to take hold.
    pub fn pause(&self, kick: i32, give_up: &dyn Fn() -> bool) -> Option<(Paused<'_>, Duration)> {
        let started = Instant::now();
        let mut s = self.lock();
        s.pausing = true;
        self.stopping.store(true, Ordering::Release);
        let paused = Paused { gate: self };
        if self.kick_until_parked(s, kick, give_up) {
            Some((paused, started.elapsed()))
        } else {
            None // `paused` drops here and resumes them
        }
    }

    /// Kicks the registered vCPUs out of KVM_RUN with `kick` every [`KICK_EVERY`] until all
    /// are parked (true), or until `give_up` says so (false). Called with the state locked.
    fn kick_until_parked(
        &self,
        mut s: MutexGuard<'_, GateState>,
        kick: i32,
        give_up: &dyn Fn() -> bool,
    ) -> bool {
        loop {
            if s.parked >= s.threads.len() {
                return true;
            }
            if give_up() {
                return false;
            }
            for &t in &s.threads {
                // SAFETY: every registered id is a live vCPU thread: threads unregister (under
                // this lock) before they end.
                unsafe { libc::pthread_kill(t, kick) };
            }
            s = self
                .changed
                .wait_timeout(s, KICK_EVERY)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Threads that pass a gate in a loop as vCPUs do, counting their steps.
    struct FakeVcpus {
        gate: Arc<PauseGate>,
        steps: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl FakeVcpus {
        /// Starts `n` of them on a new gate, once all are registered.
        fn start(n: usize) -> Self {
            crate::kick::install();
            let gate = Arc::new(PauseGate::new());
            let stop = Arc::new(AtomicBool::new(false));
            let steps = Arc::new(AtomicU64::new(0));
            let threads = (0..n)
                .map(|_| {
                    let (gate, stop, steps) = (gate.clone(), stop.clone(), steps.clone());
                    std::thread::spawn(move || {
                        gate.register();
                        while !stop.load(Ordering::Acquire) {
                            gate.checkpoint();
                            steps.fetch_add(1, Ordering::AcqRel);
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        gate.unregister();
                    })
                })
                .collect();
            while gate.lock().threads.len() < n {
                std::thread::yield_now();
            }
            Self {
                gate,
                steps,
                stop,
                threads,
            }
        }

        fn stop(self) {
            self.stop.store(true, Ordering::Release);
            for t in self.threads {
                t.join().unwrap();
            }
        }
    }

    #[test]
    fn a_pause_holds_every_vcpu_until_it_is_dropped() {
        let vcpus = FakeVcpus::start(2);
        let (gate, steps) = (&vcpus.gate, &vcpus.steps);
        let (held, _) = gate
            .pause(crate::kick::signal_number(), &|| false)
            .expect("paused");
        let before = steps.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            steps.load(Ordering::Acquire),
            before,
            "a vCPU ran while paused"
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(20));
        assert!(steps.load(Ordering::Acquire) > before);
        vcpus.stop();
    }

    #[test]
    fn an_operator_hold_outlasts_an_eviction_pause() {
        let vcpus = FakeVcpus::start(1);
        let (gate, steps) = (&vcpus.gate, &vcpus.steps);
        let kick = crate::kick::signal_number();
        gate.hold(kick, Duration::from_secs(5)).expect("held");
        assert!(gate.held());
        let (evicting, _) = gate.pause(kick, &|| false).expect("paused");
        drop(evicting);
        let before = steps.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(steps.load(Ordering::Acquire), before, "ran while held");
        gate.release();
        std::thread::sleep(Duration::from_millis(20));
        assert!(steps.load(Ordering::Acquire) > before, "did not resume");
        vcpus.stop();
    }

    #[test]
    fn a_pause_with_no_vcpus_holds_at_once_and_can_give_up() {
        let gate = PauseGate::new();
        assert!(gate.pause(0, &|| false).is_some());
        assert!(!gate.pausing());
        gate.lock().threads.push(0);
        assert!(gate.pause(0, &|| true).is_none());
        assert!(!gate.pausing());
    }
}
