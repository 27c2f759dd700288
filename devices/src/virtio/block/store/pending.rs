//! Store operations started without waiting: [`StoreOp`] names one, [`Later`] is its result
//! to be collected afterwards (already there for stores that complete synchronously).

use super::StoreError;

/// One data operation handed to [`super::BlockStore::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp<'a> {
    /// Read `len` bytes at `offset`.
    Read {
        /// First byte.
        offset: u64,
        /// Bytes to read.
        len: usize,
    },
    /// Write `data` at `offset`.
    Write {
        /// First byte.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
}

impl StoreOp<'_> {
    /// The bytes the operation moves.
    pub fn len(&self) -> usize {
        match self {
            StoreOp::Read { len, .. } => *len,
            StoreOp::Write { data, .. } => data.len(),
        }
    }

    /// Whether the operation moves no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Waiter<E> = Box<dyn FnOnce() -> Result<Vec<u8>, E>>;

/// The result of an operation in flight: the bytes read (empty for a write) or the error.
/// Dropping it without [`Later::wait`] abandons the operation's answer.
pub struct Later<E>(State<E>);

enum State<E> {
    Ready(Result<Vec<u8>, E>),
    Waiting(Waiter<E>),
}

/// A store operation in flight.
pub type StorePending = Later<StoreError>;

impl<E: 'static> Later<E> {
    /// An operation that has already finished.
    pub fn ready(result: Result<Vec<u8>, E>) -> Self {
        Later(State::Ready(result))
    }

    /// An operation whose result `wait` collects.
    pub fn deferred(wait: impl FnOnce() -> Result<Vec<u8>, E> + 'static) -> Self {
        Later(State::Waiting(Box::new(wait)))
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<Vec<u8>, E> {
        match self.0 {
            State::Ready(r) => r,
            State::Waiting(w) => w(),
        }
    }

    /// Whether the result is already there (waiting will not block).
    pub fn is_ready(&self) -> bool {
        matches!(self.0, State::Ready(_))
    }

    /// Transforms the result once it is there.
    pub fn then<F: 'static>(
        self,
        f: impl FnOnce(Result<Vec<u8>, E>) -> Result<Vec<u8>, F> + 'static,
    ) -> Later<F> {
        match self.0 {
            State::Ready(r) => Later::ready(f(r)),
            State::Waiting(w) => Later::deferred(move || f(w())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_deferred_results_are_collected_and_mapped() {
        let r: Later<String> = Later::ready(Ok(vec![1, 2]));
        assert!(r.is_ready());
        assert_eq!(r.wait(), Ok(vec![1, 2]));
        let called = std::rc::Rc::new(std::cell::Cell::new(false));
        let c = called.clone();
        let l: Later<String> = Later::deferred(move || {
            c.set(true);
            Err("gone".to_string())
        });
        assert!(!l.is_ready());
        let mapped = l.then(|r| r.map_err(|e| e.len()));
        assert!(!called.get(), "nothing runs before wait");
        assert_eq!(mapped.wait(), Err(4));
        assert!(called.get());
        let op = StoreOp::Write {
            offset: 0,
            data: &[0; 512],
        };
        assert_eq!(op.len(), 512);
        assert!(StoreOp::Read { offset: 0, len: 0 }.is_empty());
    }
}
