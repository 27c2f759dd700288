//! A small fixed pool of worker threads for requests that may block.

use lego_report::error_chain;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A unit of work for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Worker threads taking jobs from one bounded queue, first in first out.
pub(crate) struct WorkerPool {
    inner: std::sync::Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    max_queued: usize,
}

/// Why the pool refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubmitError {
    /// The pool is shut down or has no threads.
    #[error("the server is shutting down")]
    Closed,
    /// Too many jobs are queued.
    #[error("the server is overloaded: too many slow requests are queued")]
    Full,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Jobs run outside the lock, so a poisoned queue is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WorkerPool {
    /// Starts `workers` threads (at least one) with room for `max_queued` waiting jobs.
    pub(crate) fn new(workers: usize, max_queued: usize) -> WorkerPool {
        let inner = std::sync::Arc::new(Inner {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let inner = inner.clone();
            match std::thread::Builder::new()
                .name(format!("fabric-worker-{i}"))
                .spawn(move || work(&inner))
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), "could not start a fabric worker thread")
                }
            }
        }
        WorkerPool {
            inner,
            threads: Mutex::new(threads),
            max_queued,
        }
    }

    /// Queues a job.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let has_threads = !self.threads.lock().map(|t| t.is_empty()).unwrap_or(true);
        let mut q = lock(&self.inner.queue);
        if q.closed || !has_threads {
            return Err(SubmitError::Closed);
        }
        if q.jobs.len() >= self.max_queued {
            return Err(SubmitError::Full);
        }
        q.jobs.push_back(job);
        drop(q);
        self.inner.ready.notify_one();
        Ok(())
    }

    /// Stops taking jobs, drops queued ones and joins the threads.
    pub(crate) fn shutdown(&self) {
        {
            let mut q = lock(&self.inner.queue);
            q.closed = true;
            q.jobs.clear();
        }
        self.inner.ready.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work(inner: &Inner) {
    loop {
        let job = {
            let mut q = lock(&inner.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = inner.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_jobs_and_refuses_after_shutdown() {
        let pool = WorkerPool::new(2, 100);
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..10 {
            let d = done.clone();
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            }))
            .expect("submit");
        }
        for _ in 0..10 {
            rx.recv().expect("job ran");
        }
        assert_eq!(done.load(Ordering::SeqCst), 10);
        pool.shutdown();
        assert_eq!(pool.submit(Box::new(|| {})), Err(SubmitError::Closed));
    }

    #[test]
    fn a_full_queue_refuses() {
        let pool = WorkerPool::new(1, 1);
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        pool.submit(Box::new(move || {
            let _ = started_tx.send(());
            let _ = block_rx.recv();
        }))
        .expect("first");
        started_rx.recv().expect("worker busy");
        pool.submit(Box::new(|| {})).expect("queued");
        assert_eq!(pool.submit(Box::new(|| {})), Err(SubmitError::Full));
        drop(block_tx);
    }
}
