//! The phases of a running vNode: start the vCPU threads, wait for the end, tear down.

use super::{signals, Outcome, VmError};
use crate::cpu::vcpu::Vcpu;
use crate::device_manager::Devices;
use crate::kick;
use lego_devices::exit::ExitNotifier;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running vCPU threads and the flag that tells them to stop.
pub struct RunningVcpus {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// Start vCPUs: installs the kick and stop-signal handlers, then runs each vCPU on its own
/// thread (`vcpu<N>`).
pub fn start_vcpus(
    vcpus: Vec<Vcpu>,
    exit: &ExitNotifier,
    started: Instant,
) -> Result<RunningVcpus, VmError> {
    kick::install();
    signals::install(exit.event().as_raw_fd());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let stop = stop.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu.run(stop))
            .map_err(VmError::Thread)?;
        threads.push(t);
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "vCPUs running"
    );
    Ok(RunningVcpus { threads, stop })
}

/// Wait: blocks until the guest ends itself or a stop signal arrives, and says which.
pub fn wait_for_end(exit: &ExitNotifier) -> Outcome {
    wait_readable(exit.event().as_raw_fd());
    match exit.exit() {
        Some(e) => Outcome::Guest(e),
        None => Outcome::Signal(signals::received()),
    }
}

/// Tear down: stops every vCPU (kicking it out of KVM_RUN), joins the threads, detaches the
/// stop signals, then drops the devices. Returns false if a vCPU did not stop within
/// [`STOP_PATIENCE`] (it is blocked on a page of paged guest RAM that cannot be had): it is
/// left behind, and guest RAM must not be unmapped under it.
pub fn tear_down(
    vcpus: RunningVcpus,
    devices: Devices,
    outcome: &Outcome,
    started: Instant,
) -> bool {
    let RunningVcpus { threads, stop } = vcpus;
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_PATIENCE;
    let mut all_stopped = true;
    for (id, t) in threads.iter().enumerate() {
        while !t.is_finished() {
            if Instant::now() > deadline {
                tracing::warn!(
                    vcpu = id,
                    "the vCPU does not stop: it waits for a page of guest RAM that cannot be had"
                );
                all_stopped = false;
                break;
            }
            kick::kick(t);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
    signals::detach();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        ?outcome,
        "vNode stopped"
    );
    drop(devices);
    all_stopped
}

/// How long tear-down waits for a vCPU to stop.
pub const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// Blocks until `fd` is readable, riding out signal interruptions.
fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}
