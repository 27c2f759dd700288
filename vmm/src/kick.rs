//! Kicking threads out of blocking ioctls (KVM_RUN) with a real-time signal whose handler
//! does nothing: the ioctl returns EINTR and the thread checks its stop flag.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Once;
use std::thread::JoinHandle;

/// The signal used for kicks (SIGRTMIN + 1).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// The kick signal's number (for `pthread_kill` on threads registered by id).
pub fn signal_number() -> libc::c_int {
    kick_signal()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler once per process.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `on_kick` is async-signal-safe (it does nothing) and the sigaction struct is
        // fully initialised; SA_SIGINFO matches the handler's three-argument signature and no
        // SA_RESTART means interrupted ioctls return EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// Sends the kick signal to a running thread.
pub fn kick<T>(thread: &JoinHandle<T>) {
    // SAFETY: the pthread id comes from a JoinHandle we hold, so the thread has not been
    // joined or detached and the id is valid; the signal's handler is installed by `install`.
    unsafe {
        libc::pthread_kill(thread.as_pthread_t(), kick_signal());
    }
}
