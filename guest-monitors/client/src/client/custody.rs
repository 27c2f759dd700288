//! [`Custody`]: which of a vNode's pages one memory monitor holds for it, and in which
//! incarnation of that monitor, so that pages a restarted monitor lost are answered with an
//! error, never with the zeros the new process would read back.
//!
//! A memory monitor keeps pages in memory only; a new process (a new incarnation, reported in
//! every fabric handshake and carried by every response) starts empty. The fabric client
//! reconnects by itself, so the only place that can tell "never written" (zeros are right)
//! from "written to a process that died" (the data is gone) is the client that wrote it.

use std::collections::BTreeMap;

/// Pages per chunk of a [`PageSet`] (one 4096-bit bitmap, 512 bytes).
const CHUNK_PAGES: u64 = 4096;
const WORDS: usize = (CHUNK_PAGES / 64) as usize;

/// A set of page indexes: a sparse bitmap, allocated 512 bytes per 16 MiB touched.
#[derive(Debug, Default, Clone)]
pub(crate) struct PageSet {
    chunks: BTreeMap<u64, Box<[u64; WORDS]>>,
    len: u64,
}

impl PageSet {
    fn split(page: u64) -> (u64, usize, u64) {
        let within = page % CHUNK_PAGES;
        (
            page / CHUNK_PAGES,
            (within / 64) as usize,
            1 << (within % 64),
        )
    }

    /// Adds `page`.
    pub(crate) fn insert(&mut self, page: u64) {
        let (c, w, bit) = Self::split(page);
        let words = self.chunks.entry(c).or_insert_with(|| Box::new([0; WORDS]));
        if words[w] & bit == 0 {
            words[w] |= bit;
            self.len += 1;
        }
    }

    /// Removes `page`.
    pub(crate) fn remove(&mut self, page: u64) {
        let (c, w, bit) = Self::split(page);
        if let Some(words) = self.chunks.get_mut(&c) {
            if words[w] & bit != 0 {
                words[w] &= !bit;
                self.len -= 1;
                if words.iter().all(|&x| x == 0) {
                    self.chunks.remove(&c);
                }
            }
        }
    }

    /// Removes every page in `start..end`, visiting only the chunks that hold some.
    pub(crate) fn remove_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let touched: Vec<u64> = self
            .chunks
            .range(start / CHUNK_PAGES..=(end - 1) / CHUNK_PAGES)
            .map(|(c, _)| *c)
            .collect();
        for c in touched {
            let lo = start.max(c * CHUNK_PAGES);
            let hi = end.min((c + 1) * CHUNK_PAGES);
            for p in lo..hi {
                self.remove(p);
            }
        }
    }

    /// Whether `page` is in the set.
    pub(crate) fn contains(&self, page: u64) -> bool {
        let (c, w, bit) = Self::split(page);
        self.chunks.get(&c).is_some_and(|words| words[w] & bit != 0)
    }

    /// How many pages are in the set.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Adds every page of `other`.
    fn union_with(&mut self, other: &PageSet) {
        for (c, words) in &other.chunks {
            let mine = self
                .chunks
                .entry(*c)
                .or_insert_with(|| Box::new([0; WORDS]));
            for (m, o) in mine.iter_mut().zip(words.iter()) {
                *m |= o;
            }
        }
        self.len = self
            .chunks
            .values()
            .map(|w| w.iter().map(|x| u64::from(x.count_ones())).sum::<u64>())
            .sum();
    }
}

/// The pages one request named: a run or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pages {
    /// `count` consecutive pages from `start`.
    Run {
        /// First page.
        start: u64,
        /// Page count.
        count: u64,
    },
    /// Listed pages.
    List(Vec<u64>),
}

impl Pages {
    fn for_each(&self, mut f: impl FnMut(u64)) {
        match self {
            Pages::Run { start, count } => (*start..start.saturating_add(*count)).for_each(f),
            Pages::List(pages) => pages.iter().for_each(|&p| f(p)),
        }
    }

    fn find(&self, mut f: impl FnMut(u64) -> bool) -> Option<u64> {
        match self {
            Pages::Run { start, count } => (*start..start.saturating_add(*count)).find(|&p| f(p)),
            Pages::List(pages) => pages.iter().copied().find(|&p| f(p)),
        }
    }
}

/// Why an answer cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The answer came from an incarnation that has since been replaced: what it read or
    /// stored is gone.
    Stale {
        /// The incarnation that answered.
        answered: u64,
        /// The live one.
        live: u64,
    },
    /// `page` was stored in an earlier incarnation and has not been written since.
    PageLost {
        /// The first such page of the request.
        page: u64,
        /// The live incarnation.
        live: u64,
    },
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Stale { answered, live } => write!(
                f,
                "the answer came from incarnation {answered:#018x}, which {live:#018x} has replaced"
            ),
            Loss::PageLost { page, live } => write!(
                f,
                "page {page} was stored before the restart and not written since; \
                 incarnation {live:#018x} does not have it"
            ),
        }
    }
}

/// A monitor restart this client noticed: how many stored pages it took with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// The incarnation that held the pages.
    pub from: u64,
    /// The new one.
    pub to: u64,
    /// Pages that were stored in `from`.
    pub pages_lost: u64,
}

/// One vNode's pages on one memory monitor, by incarnation.
#[derive(Debug, Default)]
pub struct Custody {
    /// The incarnation that holds `stored` (`None` before the first answer).
    live: Option<u64>,
    /// Incarnations that were replaced (a handful over a vNode's life).
    replaced: Vec<u64>,
    /// Pages written to the live incarnation.
    stored: PageSet,
    /// Pages written to a replaced incarnation and not written since: reading one is an error.
    lost: PageSet,
}

impl Custody {
    /// Custody of a client whose first connection reached `incarnation`.
    pub fn new(incarnation: Option<u64>) -> Custody {
        Custody {
            live: incarnation,
            ..Custody::default()
        }
    }

    /// Takes note of an answer from `incarnation`: a new one replaces the live one (every
    /// stored page becomes lost, returned as a [`Restart`]); one already replaced is stale.
    fn observe(&mut self, incarnation: u64) -> Result<Option<Restart>, Loss> {
        match self.live {
            Some(live) if live == incarnation => Ok(None),
            Some(live) if self.replaced.contains(&incarnation) => Err(Loss::Stale {
                answered: incarnation,
                live,
            }),
            Some(live) => {
                self.lost.union_with(&self.stored);
                let restart = Restart {
                    from: live,
                    to: incarnation,
                    pages_lost: self.stored.len(),
                };
                self.stored = PageSet::default();
                self.replaced.push(live);
                self.live = Some(incarnation);
                Ok(Some(restart))
            }
            None => {
                self.live = Some(incarnation);
                Ok(None)
            }
        }
    }

    /// A write of `pages` was answered by `incarnation`. On success the pages are stored
    /// there; if that incarnation is already replaced, the write's data is gone with it and
    /// the pages are lost.
    pub fn wrote(
        &mut self,
        incarnation: u64,
        pages: &Pages,
    ) -> (Option<Restart>, Result<(), Loss>) {
        match self.observe(incarnation) {
            Ok(restart) => {
                pages.for_each(|p| {
                    self.stored.insert(p);
                    self.lost.remove(p);
                });
                (restart, Ok(()))
            }
            Err(loss) => {
                pages.for_each(|p| {
                    if !self.stored.contains(p) {
                        self.lost.insert(p);
                    }
                });
                (None, Err(loss))
            }
        }
    }

    /// A repair copy of `pages` was answered by `incarnation` (a put-if-absent: each page
    /// there is now either the survivor's copy or something newer the vNode wrote). Pages are
    /// stored from now on, except those already lost: a page whose last write missed this
    /// monitor may still hold an older version the repair did not overwrite, so it stays an
    /// error to read here until it is written again.
    pub fn filled(
        &mut self,
        incarnation: u64,
        pages: &Pages,
    ) -> (Option<Restart>, Result<(), Loss>) {
        match self.observe(incarnation) {
            Ok(restart) => {
                pages.for_each(|p| {
                    if !self.lost.contains(p) {
                        self.stored.insert(p);
                    }
                });
                (restart, Ok(()))
            }
            Err(loss) => (None, Err(loss)),
        }
    }

    /// Pages of `start..start+count` lost here (stored in a replaced incarnation, or whose
    /// last write missed this monitor).
    pub fn lost_in(&self, start: u64, count: u64) -> u64 {
        (start..start.saturating_add(count))
            .filter(|&p| self.lost.contains(p))
            .count() as u64
    }

    /// The pages of `start..start+count` lost here.
    pub fn lost_pages(&self, start: u64, count: u64) -> std::collections::BTreeSet<u64> {
        (start..start.saturating_add(count))
            .filter(|&p| self.lost.contains(p))
            .collect()
    }

    /// A read of `pages` was answered by `incarnation`: usable only if that incarnation is
    /// live and none of the pages was lost.
    pub fn read(&mut self, incarnation: u64, pages: &Pages) -> (Option<Restart>, Result<(), Loss>) {
        let restart = match self.observe(incarnation) {
            Ok(r) => r,
            Err(loss) => return (None, Err(loss)),
        };
        let live = self.live.unwrap_or(incarnation);
        let lost = pages.find(|p| self.lost.contains(p));
        (
            restart,
            lost.map_or(Ok(()), |page| Err(Loss::PageLost { page, live })),
        )
    }

    /// `pages` were freed (trimmed) by an answer from `incarnation`: they read as zeros now,
    /// rightly, wherever they were.
    pub fn freed(&mut self, incarnation: u64, pages: &Pages) -> Option<Restart> {
        let restart = self.observe(incarnation).ok().flatten();
        match pages {
            Pages::Run { start, count } => {
                let end = start.saturating_add(*count);
                self.stored.remove_range(*start, end);
                self.lost.remove_range(*start, end);
            }
            Pages::List(list) => list.iter().for_each(|&p| {
                self.stored.remove(p);
                self.lost.remove(p);
            }),
        }
        restart
    }

    /// The monitor may not hold what was last written to `pages` (a write or trim of them
    /// failed or skipped it): reading them from it is an error until they are written again.
    pub fn forget(&mut self, pages: &Pages) {
        pages.for_each(|p| {
            self.stored.remove(p);
            self.lost.insert(p);
        });
    }

    /// `pages` were stored in the live incarnation by an earlier process of this client (a
    /// backend that restarted and found the monitor's incarnation unchanged): they are held,
    /// and lost with it if it restarts.
    pub fn adopt(&mut self, pages: &Pages) {
        pages.for_each(|p| {
            self.stored.insert(p);
            self.lost.remove(p);
        });
    }

    /// Every page was freed.
    pub fn freed_all(&mut self) {
        self.stored = PageSet::default();
        self.lost = PageSet::default();
    }

    /// Pages stored in the live incarnation, and pages lost.
    pub fn counts(&self) -> (u64, u64) {
        (self.stored.len(), self.lost.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, count: u64) -> Pages {
        Pages::Run { start, count }
    }

    #[test]
    fn page_sets_count_and_drop_empty_chunks() {
        let mut s = PageSet::default();
        for p in [0, 63, 64, 4095, 4096, 1 << 40] {
            s.insert(p);
            s.insert(p);
        }
        assert_eq!(s.len(), 6);
        assert!(s.contains(4096) && s.contains(1 << 40) && !s.contains(1));
        s.remove(1 << 40);
        s.remove(7);
        assert_eq!(s.len(), 5);
        assert_eq!(s.chunks.len(), 2, "the emptied chunk is dropped");
        let mut r = s.clone();
        r.remove_range(60, u64::MAX);
        assert_eq!(r.len(), 1, "only page 0 stays");
        let mut t = PageSet::default();
        t.insert(0);
        t.insert(5);
        t.union_with(&s);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn a_restart_turns_stored_pages_into_errors_and_leaves_unwritten_ones_zero() {
        let mut c = Custody::new(Some(1));
        assert_eq!(c.wrote(1, &run(10, 4)), (None, Ok(())));
        assert_eq!(c.read(1, &run(10, 4)), (None, Ok(())));
        // The monitor restarted: the first answer from incarnation 2 reports it.
        let (restart, ok) = c.read(2, &run(100, 1));
        assert_eq!(
            restart,
            Some(Restart {
                from: 1,
                to: 2,
                pages_lost: 4
            })
        );
        assert_eq!(ok, Ok(()), "page 100 was never written: zeros are right");
        assert_eq!(
            c.read(2, &run(9, 3)).1,
            Err(Loss::PageLost { page: 10, live: 2 })
        );
        // Writing a lost page again makes it good; the others stay lost.
        assert_eq!(c.wrote(2, &Pages::List(vec![10, 11])).1, Ok(()));
        assert_eq!(c.read(2, &run(10, 2)).1, Ok(()));
        assert_eq!(
            c.read(2, &run(10, 4)).1,
            Err(Loss::PageLost { page: 12, live: 2 })
        );
        assert_eq!(c.counts(), (2, 2));
        // Trimmed pages read as zeros rightly.
        c.freed(2, &run(12, 2));
        assert_eq!(c.read(2, &run(10, 4)).1, Ok(()));
        // A page whose last write missed this monitor is an error until written again.
        c.forget(&run(10, 1));
        assert!(matches!(
            c.read(2, &run(10, 1)).1,
            Err(Loss::PageLost { page: 10, .. })
        ));
        assert_eq!(c.wrote(2, &run(10, 1)).1, Ok(()));
        assert_eq!(c.read(2, &run(10, 1)).1, Ok(()));
    }

    #[test]
    fn a_repair_copy_stores_pages_but_never_clears_a_lost_one() {
        let mut c = Custody::new(Some(1));
        c.forget(&run(3, 1));
        assert_eq!(c.filled(1, &run(0, 8)), (None, Ok(())));
        assert_eq!(c.counts(), (7, 1));
        assert_eq!(c.lost_in(0, 8), 1);
        assert!(
            c.read(1, &run(3, 1)).1.is_err(),
            "page 3 may be older there"
        );
        // After a restart, the copied pages are lost like any other.
        assert!(c.read(2, &run(100, 1)).0.is_some());
        assert!(c.read(2, &run(0, 1)).1.is_err());
        assert!(c.filled(1, &run(0, 1)).1.is_err(), "stale answer");
    }

    #[test]
    fn answers_from_a_replaced_incarnation_are_stale() {
        let mut c = Custody::new(Some(1));
        assert_eq!(c.wrote(1, &run(0, 2)).1, Ok(()));
        assert!(c.read(2, &run(5, 1)).0.is_some());
        // A read answered by the old process before it died, collected after the switch.
        assert_eq!(
            c.read(1, &run(0, 1)).1,
            Err(Loss::Stale {
                answered: 1,
                live: 2
            })
        );
        // A write it acknowledged is gone with it: the page is lost, not stored.
        assert_eq!(
            c.wrote(1, &run(7, 1)).1,
            Err(Loss::Stale {
                answered: 1,
                live: 2
            })
        );
        assert!(matches!(
            c.read(2, &run(7, 1)).1,
            Err(Loss::PageLost { page: 7, .. })
        ));
    }

    #[test]
    fn adopted_pages_are_held_and_lost_with_a_restart() {
        let mut c = Custody::new(Some(1));
        c.adopt(&run(0, 8));
        assert_eq!(c.read(1, &run(0, 8)).1, Ok(()));
        let (restart, _) = c.read(2, &run(100, 1));
        assert_eq!(restart.map(|r| r.pages_lost), Some(8));
        assert!(matches!(
            c.read(2, &run(3, 1)).1,
            Err(Loss::PageLost { page: 3, .. })
        ));
    }

    #[test]
    fn the_first_answer_sets_the_incarnation_and_freeing_all_forgets() {
        let mut c = Custody::new(None);
        assert_eq!(c.wrote(5, &run(0, 1)), (None, Ok(())));
        assert!(c.read(6, &run(0, 1)).1.is_err());
        c.freed_all();
        assert_eq!(c.read(6, &run(0, 1)).1, Ok(()));
        assert_eq!(c.counts(), (0, 0));
    }
}
