//! [`HolderState`]: what a remote memory backend must remember across its own restarts to
//! keep using a vNode's pages: for each memory monitor holding a copy of a vRegion, the
//! incarnation it had when this vNode's backend first reached it.
//!
//! A backend that restarts (a crash, `kill -9`, a supervisor's restart) gets the same
//! placement from the manager and reconnects. For each holder it then compares the live
//! incarnation with the recorded one: the same means the monitor kept every page this vNode
//! wrote there, so the pages of the regions it held at the first start (recorded too: a
//! placement the manager changed meanwhile moved no page) are all trusted (adopted into the holder's custody, so that a later
//! restart of the monitor turns them into errors too); a different one, or a holder not in
//! the file (the manager placed a copy anew), means those pages are gone: reading them is an
//! error until written again, never zeros.
//!
//! A holder can also miss a write while its process lives on: with two copies, a write that
//! reached one copy completes, and the other copy is told (in memory) to forget those pages.
//! A restarted backend would not know, and could read the older page from that copy. So
//! [`LiveState::check`] runs after every write and trim and before the guest learns of it:
//! a holder that now has pages it does not hold is recorded as *tainted*, durably, and a
//! tainted holder is distrusted by every later restart.
//!
//! The file is written (to a temporary file, fsync, rename, fsync of the folder) before the
//! device is served, so it is on disk before any page is written. A recorded incarnation is
//! never replaced: once a holder restarted, every later restart of the backend distrusts it
//! again (conservative: pages rewritten since would be readable, but the file does not know
//! which they are). The file lives in legovmm's runtime folder and goes with the vNode.
//!
//! Format, one line each: `lego-vhost-blk-state 1`, `vnode N`, then `holder ADDR INCARNATION`
//! (hex) per monitor, `tainted ADDR` per tainted holder and `region INDEX ADDR` per holder of
//! each region at the first start.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use lego_monitor_client::client::MemoryClient;

/// The first line of a state file.
const MAGIC: &str = "lego-vhost-blk-state 1";

/// Errors reading or writing a state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("cannot {what} the state file {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a state file this backend wrote.
    #[error("the state file {path} is damaged at line {line}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The first bad line (1-based).
        line: usize,
    },
    /// The file belongs to another vNode.
    #[error("the state file {path} is for vNode {found}, not vNode {wanted}")]
    OtherVnode {
        /// The file.
        path: PathBuf,
        /// The vNode it records.
        found: u64,
        /// The vNode served.
        wanted: u64,
    },
}

/// The recorded incarnation of each holder of a vNode's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderState {
    /// The vNode.
    pub vnode: u64,
    /// Monitor address → the incarnation it had when first reached.
    pub holders: BTreeMap<String, u64>,
    /// Holders that missed a write or trim while this vNode's backend ran: their pages are
    /// not trusted by a restart.
    pub tainted: BTreeSet<String>,
    /// Region index → the holders it had at the first start: a holder is trusted only with
    /// the regions it held then (a placement that changed meanwhile does not move pages).
    pub regions: BTreeMap<u64, BTreeSet<String>>,
    /// Made by this start, not loaded: every holder is new and holds nothing yet.
    fresh: bool,
}

/// What to do with one holder's pages when the backend starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A first start: nothing was written yet.
    Fresh,
    /// The same incarnation as recorded: the pages are all there.
    Trusted,
    /// Another incarnation (or a holder placed anew): the pages are lost.
    Lost {
        /// The recorded incarnation (`None`: not recorded).
        recorded: Option<u64>,
    },
}

impl HolderState {
    /// The state of `vnode` on its first start.
    pub fn fresh(vnode: u64) -> Self {
        Self {
            vnode,
            holders: BTreeMap::new(),
            tainted: BTreeSet::new(),
            regions: BTreeMap::new(),
            fresh: true,
        }
    }

    /// Whether this is a first start (no state file was found).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Reads the state of `vnode` from `path`, or [`HolderState::fresh`] when there is no
    /// file yet.
    pub fn load(path: &Path, vnode: u64) -> Result<Self, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::fresh(vnode)),
            Err(source) => {
                return Err(StateError::Io {
                    what: "read",
                    path: path.into(),
                    source,
                })
            }
        };
        let state = Self::parse(&text).map_err(|line| StateError::Damaged {
            path: path.into(),
            line,
        })?;
        if state.vnode != vnode {
            return Err(StateError::OtherVnode {
                path: path.into(),
                found: state.vnode,
                wanted: vnode,
            });
        }
        Ok(state)
    }

    /// Parses a file's text; the error is the 1-based number of the first bad line.
    fn parse(text: &str) -> Result<Self, usize> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(1);
        }
        let mut state = HolderState::fresh(0);
        state.fresh = false;
        let mut vnode = None;
        for (i, line) in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["vnode", n] if vnode.is_none() => {
                    vnode = Some(n.parse().map_err(|_| i + 1)?);
                }
                ["tainted", addr] => {
                    state.tainted.insert((*addr).to_string());
                }
                ["region", index, addr] => {
                    let index = index.parse().map_err(|_| i + 1)?;
                    state
                        .regions
                        .entry(index)
                        .or_default()
                        .insert((*addr).to_string());
                }
                ["holder", addr, inc] => {
                    let inc =
                        u64::from_str_radix(inc.trim_start_matches("0x"), 16).map_err(|_| i + 1)?;
                    state.holders.insert((*addr).to_string(), inc);
                }
                [] => {}
                _ => return Err(i + 1),
            }
        }
        state.vnode = vnode.ok_or(2usize)?;
        Ok(state)
    }

    fn render(&self) -> String {
        let mut s = format!("{MAGIC}\nvnode {}\n", self.vnode);
        for (addr, inc) in &self.holders {
            s.push_str(&format!("holder {addr} {inc:#018x}\n"));
        }
        for addr in &self.tainted {
            s.push_str(&format!("tainted {addr}\n"));
        }
        for (index, holders) in &self.regions {
            for addr in holders {
                s.push_str(&format!("region {index} {addr}\n"));
            }
        }
        s
    }

    /// The verdict on holder `addr`, now at incarnation `live`; records `live` for a holder
    /// not yet in the state.
    pub fn judge(&mut self, addr: &str, live: u64) -> Verdict {
        match self.holders.get(addr) {
            _ if self.fresh => {
                self.holders.insert(addr.to_string(), live);
                Verdict::Fresh
            }
            Some(&recorded) if self.tainted.contains(addr) => Verdict::Lost {
                recorded: Some(recorded),
            },
            Some(&recorded) if recorded == live => Verdict::Trusted,
            Some(&recorded) => Verdict::Lost {
                recorded: Some(recorded),
            },
            None => {
                self.holders.insert(addr.to_string(), live);
                Verdict::Lost { recorded: None }
            }
        }
    }

    /// Whether holder `addr` of region `index` may be trusted with its pages, given the
    /// holder's [`Verdict`]: on a first start it is recorded as the region's holder (and
    /// holds nothing yet); later only a trusted holder that held the region at the first
    /// start is.
    pub fn trust_region(&mut self, verdict: Verdict, index: u64, addr: &str) -> bool {
        match verdict {
            Verdict::Fresh => {
                self.regions
                    .entry(index)
                    .or_default()
                    .insert(addr.to_string());
                true
            }
            Verdict::Trusted => self.regions.get(&index).is_some_and(|h| h.contains(addr)),
            Verdict::Lost { .. } => false,
        }
    }

    /// Writes the state to `path` durably: a temporary file, fsync, rename, fsync of the
    /// folder.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |what| {
            move |source| StateError::Io {
                what,
                path: path.into(),
                source,
            }
        };
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io("create"))?;
        f.write_all(self.render().as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place"))?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the folder of"))?;
        Ok(())
    }
}

/// The state file while the device is served: records a holder that missed a write or a
/// trim before the guest learns of the write (see the module's documentation).
pub struct LiveState {
    path: PathBuf,
    state: Mutex<HolderState>,
    clients: Vec<(String, MemoryClient)>,
}

impl LiveState {
    /// Keeps `state` (already saved at `path`) current for the holders `clients` (address,
    /// client).
    pub fn new(path: PathBuf, state: HolderState, clients: Vec<(String, MemoryClient)>) -> Self {
        Self {
            path,
            state: Mutex::new(state),
            clients,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HolderState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records, durably, every holder that has pages it does not hold (its custody counts
    /// lost pages) and is not yet tainted. Cheap when nothing changed.
    pub fn check(&self) -> Result<(), StateError> {
        for (addr, client) in &self.clients {
            if client.custody_counts().1 == 0 {
                continue;
            }
            let mut state = self.lock();
            if !state.tainted.insert(addr.clone()) {
                continue;
            }
            if let Err(e) = state.save(&self.path) {
                state.tainted.remove(addr);
                return Err(e);
            }
            tracing::warn!(
                vnode = state.vnode,
                monitor = %addr,
                "a memory monitor missed a write or trim of this vNode's pages: recorded, so a \
                 restart of this backend will not trust the pages it holds"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_trusts_unchanged_holders_and_distrusts_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.state");
        let mut state = HolderState::load(&path, 7).unwrap();
        assert!(state.is_fresh());
        assert_eq!(state.judge("a:1", 10), Verdict::Fresh);
        assert_eq!(state.judge("b:1", 20), Verdict::Fresh);
        state.save(&path).unwrap();

        let mut again = HolderState::load(&path, 7).unwrap();
        assert!(!again.is_fresh());
        assert_eq!(again.holders, state.holders);
        assert_eq!(again.judge("a:1", 10), Verdict::Trusted);
        assert_eq!(again.judge("b:1", 21), Verdict::Lost { recorded: Some(20) });
        assert_eq!(again.judge("c:1", 30), Verdict::Lost { recorded: None });
        assert_eq!(again.holders["b:1"], 20, "a recorded incarnation is kept");
        assert_eq!(again.holders["c:1"], 30);

        // Regions: trusted only where the holder held them at the first start.
        assert!(state.trust_region(Verdict::Fresh, 0, "a:1"));
        state.save(&path).unwrap();
        let mut again = HolderState::load(&path, 7).unwrap();
        assert!(again.trust_region(Verdict::Trusted, 0, "a:1"));
        assert!(
            !again.trust_region(Verdict::Trusted, 1, "a:1"),
            "a region it never held"
        );
        assert!(!again.trust_region(Verdict::Lost { recorded: None }, 0, "a:1"));

        again.tainted.insert("a:1".into());
        again.save(&path).unwrap();
        let mut third = HolderState::load(&path, 7).unwrap();
        assert_eq!(
            third.judge("a:1", 10),
            Verdict::Lost { recorded: Some(10) },
            "a tainted holder is not trusted although its incarnation is the same"
        );

        assert!(matches!(
            HolderState::load(&path, 8),
            Err(StateError::OtherVnode { found: 7, .. })
        ));
        std::fs::write(&path, "lego-vhost-blk-state 1\nvnode 7\nholder x\n").unwrap();
        assert!(matches!(
            HolderState::load(&path, 7),
            Err(StateError::Damaged { line: 3, .. })
        ));
    }
}
