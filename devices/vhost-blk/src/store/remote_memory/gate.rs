//! [`Gate`]: keeps read-modify-writes of partial pages apart from every other page write.
//!
//! Whole-page writes (and trims) hold a [`SharedTicket`] for as long as they are in flight, so
//! a ticket is owned (it can travel with a pending write); a read-modify-write holds the
//! [`ExclusiveGuard`] while no ticket is out. A waiting read-modify-write does not hold back
//! new tickets: a thread holding tickets may take more without ever waiting for it, so no
//! thread can block on another while holding the gate.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A shared/exclusive gate with owned shared tickets.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct State {
    shared: usize,
    exclusive: bool,
}

/// Admission of a whole-page operation; released when dropped.
#[derive(Debug)]
pub struct SharedTicket(Arc<Gate>);

/// Admission of a read-modify-write; released when dropped.
#[derive(Debug)]
pub struct ExclusiveGuard<'a>(&'a Gate);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the counts consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no read-modify-write runs, then admits a whole-page operation.
    pub fn shared(self: &Arc<Self>) -> SharedTicket {
        let mut s = self.lock();
        while s.exclusive {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.shared += 1;
        SharedTicket(self.clone())
    }

    /// Waits until nothing else holds the gate, then admits a read-modify-write. The caller
    /// must hold no [`SharedTicket`] of this gate.
    pub fn exclusive(&self) -> ExclusiveGuard<'_> {
        let mut s = self.lock();
        while s.exclusive || s.shared > 0 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.exclusive = true;
        ExclusiveGuard(self)
    }
}

impl Drop for SharedTicket {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.shared -= 1;
        if s.shared == 0 {
            self.0.cv.notify_all();
        }
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().exclusive = false;
        self.0.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn exclusive_waits_for_every_ticket_and_tickets_wait_for_exclusive() {
        let g = Arc::new(Gate::default());
        let t1 = g.shared();
        let t2 = g.shared();
        let done = Arc::new(AtomicBool::new(false));
        let h = {
            let (g, done) = (g.clone(), done.clone());
            std::thread::spawn(move || {
                let _x = g.exclusive();
                done.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        // A waiting exclusive does not hold back new tickets.
        let t3 = g.shared();
        drop((t1, t2));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst), "one ticket is still out");
        drop(t3);
        while !done.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // Held exclusively now (for 50 ms): a ticket waits for it.
        let _t = g.shared();
        h.join().expect("exclusive holder");
    }
}
