//! How devices tell the VMM that the guest has ended.

use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset or reboot (ACPI reset register, i8042, triple fault).
    Reset,
    /// The guest kernel panicked (pvpanic), or another fatal guest condition, with a reason.
    Crashed(String),
    /// The VMM could not keep the guest running (its guest RAM could not be had), with why.
    VmmFailed(String),
    /// An operator ended the vNode (`vm.shutdown` on the API socket).
    Shutdown,
    /// The operator quit from legovmm's terminal (Ctrl-A x).
    Quit,
}

/// A shared, clonable signal: the first reported exit wins and wakes the VMM's event loop.
#[derive(Clone)]
pub struct ExitNotifier {
    reason: Arc<Mutex<Option<GuestExit>>>,
    event: Arc<EventFd>,
}

impl ExitNotifier {
    /// Creates a notifier with its own non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(Mutex::new(None)),
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Records `exit` (unless one was already recorded) and wakes whoever waits on [`Self::event`].
    pub fn notify(&self, exit: GuestExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
        }
        // A failed write only means the counter is saturated: the waiter is woken anyway.
        let _ = self.event.write(1);
    }

    /// The recorded exit, if any.
    pub fn exit(&self) -> Option<GuestExit> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable once an exit was reported.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins_and_event_fires() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.exit(), None);
        n.clone().notify(GuestExit::PowerOff);
        n.notify(GuestExit::Reset);
        assert_eq!(n.exit(), Some(GuestExit::PowerOff));
        assert!(n.event().read().unwrap() >= 1);
    }
}
