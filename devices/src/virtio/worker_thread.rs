//! The thread a device serves its queues on, stopped through an eventfd in its epoll set:
//! [`WorkerThread::spawn`] adds the stop eventfd under the caller's token and starts the
//! thread; [`WorkerThread::stop`] (or dropping it) signals it and joins the thread.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A running device thread; stopping or dropping it stops and joins the thread.
pub struct WorkerThread {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    what: String,
}

impl WorkerThread {
    /// Adds a new stop eventfd to `epoll` under `stop_token`, then runs `run(epoll)` on a
    /// thread named `name` (at most 15 bytes show in `ps`). `run` must return once it sees
    /// `stop_token`.
    pub fn spawn(
        name: &str,
        epoll: Epoll,
        stop_token: u64,
        run: impl FnOnce(Epoll) + Send + 'static,
    ) -> io::Result<WorkerThread> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(epoll))?;
        Ok(WorkerThread {
            stop,
            thread: Some(thread),
            what: name.into(),
        })
    }

    /// Stops the thread and waits for it (it finishes the batch it is serving).
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            tracing::error!(
                "could not signal the device thread {} to stop: {e}",
                self.what
            );
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the device thread {} panicked", self.what);
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_token_ends_the_thread_and_stop_joins_it() {
        let epoll = Epoll::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut t = WorkerThread::spawn("test-worker", epoll, 7, move |epoll| {
            let mut events = [EpollEvent::default(); 1];
            loop {
                let n = epoll.wait(-1, &mut events).unwrap();
                if events[..n].iter().any(|e| e.data() == 7) {
                    tx.send(()).unwrap();
                    return;
                }
            }
        })
        .unwrap();
        t.stop();
        rx.try_recv()
            .expect("the thread saw its stop token before the join");
        t.stop(); // a second stop is harmless
    }
}
