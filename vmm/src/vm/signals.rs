//! SIGINT and SIGTERM end the vNode: the handler records the signal and wakes the thread
//! waiting on the exit eventfd.

use std::sync::atomic::{AtomicI32, Ordering};

/// The eventfd that SIGINT/SIGTERM write to, and which signal arrived.
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    SIGNAL_RECEIVED.store(signal, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live u64 of 8 bytes and the
        // fd is the exit eventfd, which stays open for the life of the run.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Makes SIGINT and SIGTERM write to `event_fd` (the exit eventfd).
pub(super) fn install(event_fd: i32) {
    SIGNAL_EVENT_FD.store(event_fd, Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only performs async-signal-safe operations (atomics and write).
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// Stops the handlers from writing to the exit eventfd, which is about to close.
pub(super) fn detach() {
    SIGNAL_EVENT_FD.store(-1, Ordering::SeqCst);
}

/// The stop signal that arrived (0 if none).
pub(super) fn received() -> i32 {
    SIGNAL_RECEIVED.load(Ordering::SeqCst)
}
