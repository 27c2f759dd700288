//! A background thread that runs until its handle is dropped: the shape of legovmm's
//! periodic work (announcing the vNode, keeping its claim).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Tells a background thread to stop; it waits on this between rounds.
#[derive(Default)]
pub struct StopFlag {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopFlag {
    /// Waits up to `d` or until stopped; true when stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }
}

/// A running background thread; dropping it stops the thread and joins it.
pub struct Background {
    stop: Arc<StopFlag>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `body` on a thread called `name`; the body waits between rounds with
    /// [`StopFlag::wait`] and returns once it says stop.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(&StopFlag) + Send + 'static,
    ) -> std::io::Result<Background> {
        let stop = Arc::new(StopFlag::default());
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&flag))?;
        Ok(Background {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
