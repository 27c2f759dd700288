//! The rig the request tests share: guest memory, a store the test keeps a handle on, and a
//! [`RequestHandler`] serving from that store. Each test file adds its own chain builders.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::RequestHandler;
use crate::virtio::block::store::BlockStore;

pub(super) struct Rig<S> {
    pub mem: GuestMemoryMmap,
    pub store: Arc<S>,
    pub handler: RequestHandler,
}

impl<S: BlockStore + 'static> Rig<S> {
    /// `mem_len` bytes of guest memory from address 0 and a handler on `store`.
    pub fn with_memory(store: S, mem_len: usize) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_len)])
            .expect("guest memory");
        let store = Arc::new(store);
        let handler = RequestHandler::new(store.clone());
        Self {
            mem,
            store,
            handler,
        }
    }
}
