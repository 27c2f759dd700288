//! Repair fences: which pages of a vRegion the vNode touched since a repair of that region
//! began on this monitor, so the repair's copy of an older page never overwrites them.
//!
//! A repair copies a region's pages from a surviving copy while the vNode keeps writing to
//! both the survivor and the new copy. A page the vNode wrote (or zeroed, or trimmed) here
//! after the fence opened is newer than anything the repair can bring, whichever arrives
//! first: the repair's put-if-absent (`PageStore::fill_run`) skips a page that is stored or
//! touched. A trim leaves no page behind, so the touched bit is the tombstone that keeps the
//! repair from resurrecting what was trimmed.
//!
//! Writers mark pages *before* they take the page's shard lock, and the repair checks the
//! mark *while* it holds that lock: either the repair sees the mark and skips the page, or
//! it stored the page first and the writer's later update replaces it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

pub use lego_monitor_client::proto::memory::MAX_FENCE_PAGES;

/// Most fences one vNode may have open at once (one per region under repair).
pub const MAX_FENCES_PER_VNODE: usize = 16;

/// Errors from opening or using a fence.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The fence would cover no page or too many.
    #[error("a repair fence covers 1 to {MAX_FENCE_PAGES} pages, not {count}")]
    BadSize {
        /// Pages asked for.
        count: u64,
    },
    /// The range overflows.
    #[error("a repair fence from page {start} with {count} pages overflows")]
    Overflow {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// The vNode already has the most fences allowed.
    #[error(
        "vNode {vnode} already has {MAX_FENCES_PER_VNODE} repair fences open; close one first"
    )]
    TooMany {
        /// The vNode.
        vnode: u64,
    },
    /// No open fence covers the pages of a repair write.
    #[error(
        "no repair is open on this monitor for pages {start}+{count} of vNode {vnode}; \
         a repair write needs FILL_BEGIN over its pages first"
    )]
    NotOpen {
        /// The vNode.
        vnode: u64,
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
}

/// One open fence: a range of pages and a bit per page touched since it opened.
struct Fence {
    start: u64,
    end: u64,
    touched: Box<[AtomicU64]>,
}

impl Fence {
    fn covers(&self, page: u64) -> bool {
        page >= self.start && page < self.end
    }

    fn mark(&self, page: u64) {
        let i = page - self.start;
        self.touched[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::AcqRel);
    }

    fn is_marked(&self, page: u64) -> bool {
        let i = page - self.start;
        self.touched[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }
}

/// The open fences of every vNode on one monitor.
#[derive(Default)]
pub struct Fences {
    /// Fences open in all: writes skip the map entirely while this is zero.
    open: AtomicUsize,
    by_vnode: RwLock<HashMap<u64, Vec<Fence>>>,
}

/// A read view of one vNode's fences, held while a repair write checks its pages.
pub struct FenceView<'a> {
    guard: RwLockReadGuard<'a, HashMap<u64, Vec<Fence>>>,
    vnode: u64,
}

impl FenceView<'_> {
    /// Whether `page` was touched since its fence opened.
    pub fn touched(&self, page: u64) -> bool {
        self.guard
            .get(&self.vnode)
            .into_iter()
            .flatten()
            .any(|f| f.covers(page) && f.is_marked(page))
    }
}

impl Fences {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<u64, Vec<Fence>>> {
        // Fences hold plain bits; a panic elsewhere leaves them usable.
        self.by_vnode.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Vec<Fence>>> {
        self.by_vnode.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a fence over `start..start+count` of `vnode`, replacing one that starts at the
    /// same page (a repair that starts over begins with nothing touched).
    pub fn open(&self, vnode: u64, start: u64, count: u64) -> Result<(), FenceError> {
        if count == 0 || count > MAX_FENCE_PAGES {
            return Err(FenceError::BadSize { count });
        }
        let end = start
            .checked_add(count)
            .ok_or(FenceError::Overflow { start, count })?;
        let fence = Fence {
            start,
            end,
            touched: (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        };
        let mut map = self.write();
        let list = map.entry(vnode).or_default();
        if let Some(i) = list.iter().position(|f| f.start == start) {
            list[i] = fence;
            return Ok(());
        }
        if list.len() >= MAX_FENCES_PER_VNODE {
            return Err(FenceError::TooMany { vnode });
        }
        list.push(fence);
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Closes the fence of `vnode` that starts at `start`; true if one was open.
    pub fn close(&self, vnode: u64, start: u64) -> bool {
        let mut map = self.write();
        let Some(list) = map.get_mut(&vnode) else {
            return false;
        };
        let before = list.len();
        list.retain(|f| f.start != start);
        let closed = before - list.len();
        if list.is_empty() {
            map.remove(&vnode);
        }
        self.open.fetch_sub(closed, Ordering::AcqRel);
        closed > 0
    }

    /// Closes every fence of `vnode` (its pages were all freed).
    pub fn close_vnode(&self, vnode: u64) {
        if let Some(list) = self.write().remove(&vnode) {
            self.open.fetch_sub(list.len(), Ordering::AcqRel);
        }
    }

    /// Fences open in all.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Marks `pages` of `vnode` touched in every fence that covers them (a no-op, without
    /// any lock, while no fence is open anywhere).
    pub fn touch(&self, vnode: u64, pages: impl Iterator<Item = u64>) {
        if self.open_count() == 0 {
            return;
        }
        let map = self.read();
        let Some(list) = map.get(&vnode) else {
            return;
        };
        for p in pages {
            for f in list.iter().filter(|f| f.covers(p)) {
                f.mark(p);
            }
        }
    }

    /// Marks `start..end` of `vnode` touched, visiting only the part each fence covers.
    pub fn touch_range(&self, vnode: u64, start: u64, end: u64) {
        if self.open_count() == 0 {
            return;
        }
        let map = self.read();
        for f in map.get(&vnode).into_iter().flatten() {
            for p in start.max(f.start)..end.min(f.end) {
                f.mark(p);
            }
        }
    }

    /// A view of `vnode`'s fences for a repair write of `start..start+count`, which one open
    /// fence must cover whole.
    pub fn view(&self, vnode: u64, start: u64, count: u64) -> Result<FenceView<'_>, FenceError> {
        let guard = self.read();
        let end = start.checked_add(count);
        let covered = end.is_some_and(|end| {
            guard
                .get(&vnode)
                .into_iter()
                .flatten()
                .any(|f| f.start <= start && end <= f.end)
        });
        if !covered {
            return Err(FenceError::NotOpen {
                vnode,
                start,
                count,
            });
        }
        Ok(FenceView { guard, vnode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_mark_only_what_they_cover_and_are_bounded() {
        let f = Fences::default();
        f.touch(1, [5].into_iter());
        assert_eq!(f.open_count(), 0);
        f.open(1, 100, 100).expect("open");
        f.touch(1, [5, 150].into_iter());
        f.touch(2, [150].into_iter());
        f.touch_range(1, 190, 1 << 40);
        let v = f.view(1, 100, 100).expect("view");
        assert!(v.touched(150) && v.touched(199) && !v.touched(151) && !v.touched(5));
        drop(v);
        assert!(f.view(1, 150, 51).is_err(), "past the fence");
        assert!(f.view(2, 150, 1).is_err(), "another vNode");
        // Opening again at the same start starts over.
        f.open(1, 100, 100).expect("reopen");
        assert!(!f.view(1, 100, 1).expect("view").touched(150));
        assert_eq!(f.open_count(), 1);
        assert!(f.open(1, 0, 0).is_err());
        assert!(f.open(1, 0, MAX_FENCE_PAGES + 1).is_err());
        assert!(f.open(1, u64::MAX, 2).is_err());
        for i in 1..MAX_FENCES_PER_VNODE as u64 {
            f.open(1, i * 1000, 10).expect("open");
        }
        assert!(matches!(
            f.open(1, 1 << 30, 1),
            Err(FenceError::TooMany { .. })
        ));
        assert!(f.close(1, 100));
        assert!(!f.close(1, 100));
        f.close_vnode(1);
        assert_eq!(f.open_count(), 0);
    }
}
