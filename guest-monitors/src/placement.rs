//! Placement of vRegions and volumes on monitors: by most free capacity, never over-committing,
//! never on a dead monitor. Pure functions over a snapshot, so they are easy to test.

/// A monitor as seen by placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Monitor identity (its fabric address).
    pub id: String,
    /// Capacity offered.
    pub capacity: u64,
    /// Bytes already reserved by placements.
    pub reserved: u64,
    /// Whether it is alive.
    pub alive: bool,
}

impl Candidate {
    fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.reserved)
    }
}

/// Errors from placement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Not enough free capacity on live monitors.
    #[error(
        "cannot place {count} x {unit} bytes: the {alive} live monitor(s) have {free} bytes free \
         in total and no unit may be split or over-committed"
    )]
    NoSpace {
        /// Units asked for.
        count: u64,
        /// Bytes per unit.
        unit: u64,
        /// Live monitors.
        alive: usize,
        /// Total free bytes on live monitors.
        free: u64,
    },
    /// A zero-sized unit was asked for.
    #[error("cannot place units of zero bytes")]
    ZeroUnit,
    /// More units than one request may place.
    #[error("cannot place {0} units in one request; the limit is {MAX_UNITS}")]
    TooMany(u64),
    /// Fewer live monitors with room than copies of each unit.
    #[error(
        "cannot place {copies} copies of a {unit}-byte unit on distinct monitors: only {fit} \
         live monitor(s) have room"
    )]
    TooFewMonitors {
        /// Copies asked for.
        copies: usize,
        /// Bytes per unit.
        unit: u64,
        /// Live monitors that could take one more unit.
        fit: usize,
    },
}

/// Most units one placement may ask for (1 Mi regions: 1 PiB at the default region size).
pub const MAX_UNITS: u64 = 1 << 20;

/// Places `count` units of `unit` bytes, each on the live candidate with the most free capacity
/// at that moment (ties broken by id). All or nothing; returns one candidate id per unit.
pub fn place(cands: &[Candidate], count: u64, unit: u64) -> Result<Vec<String>, PlacementError> {
    if unit == 0 {
        return Err(PlacementError::ZeroUnit);
    }
    if count > MAX_UNITS {
        return Err(PlacementError::TooMany(count));
    }
    let mut live: Vec<Candidate> = cands.iter().filter(|c| c.alive).cloned().collect();
    let no_space = |live: &[Candidate]| PlacementError::NoSpace {
        count,
        unit,
        alive: live.len(),
        free: cands.iter().filter(|c| c.alive).map(Candidate::free).sum(),
    };
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let best = live
            .iter_mut()
            .filter(|c| c.free() >= unit)
            .max_by(|a, b| a.free().cmp(&b.free()).then_with(|| b.id.cmp(&a.id)));
        match best {
            Some(c) => {
                c.reserved += unit;
                out.push(c.id.clone());
            }
            None => return Err(no_space(&live)),
        }
    }
    Ok(out)
}

/// Places `count` units of `unit` bytes, each as `copies` copies on distinct live candidates
/// (the ones with the most free capacity at that moment, ties broken by id), none of them in
/// `avoid`. All or nothing; returns the holders of each unit, most free first.
pub fn place_copies(
    cands: &[Candidate],
    count: u64,
    unit: u64,
    copies: usize,
    avoid: &[String],
) -> Result<Vec<Vec<String>>, PlacementError> {
    if unit == 0 {
        return Err(PlacementError::ZeroUnit);
    }
    if count.saturating_mul(copies as u64) > MAX_UNITS {
        return Err(PlacementError::TooMany(count.saturating_mul(copies as u64)));
    }
    let mut live: Vec<Candidate> = cands
        .iter()
        .filter(|c| c.alive && !avoid.contains(&c.id))
        .cloned()
        .collect();
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let mut order: Vec<usize> = (0..live.len())
            .filter(|&i| live[i].free() >= unit)
            .collect();
        order.sort_by(|&a, &b| {
            live[b]
                .free()
                .cmp(&live[a].free())
                .then_with(|| live[a].id.cmp(&live[b].id))
        });
        if order.len() < copies.max(1) {
            if copies <= 1 || order.is_empty() {
                return Err(PlacementError::NoSpace {
                    count,
                    unit,
                    alive: live.len(),
                    free: live.iter().map(Candidate::free).sum(),
                });
            }
            return Err(PlacementError::TooFewMonitors {
                copies,
                unit,
                fit: order.len(),
            });
        }
        let holders: Vec<String> = order[..copies.max(1)]
            .iter()
            .map(|&i| {
                live[i].reserved += unit;
                live[i].id.clone()
            })
            .collect();
        out.push(holders);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, capacity: u64, reserved: u64, alive: bool) -> Candidate {
        Candidate {
            id: id.into(),
            capacity,
            reserved,
            alive,
        }
    }

    #[test]
    fn spreads_by_free_capacity() {
        let c = [cand("a", 4, 0, true), cand("b", 2, 0, true)];
        // a has more free until both have 2 free; ties go to the lower id.
        let p = place(&c, 4, 1).expect("place");
        assert_eq!(p, vec!["a", "a", "a", "b"]);
        let p = place(&c, 6, 1).expect("place all");
        assert_eq!(p.iter().filter(|x| *x == "a").count(), 4);
    }

    #[test]
    fn never_over_commits() {
        let c = [cand("a", 10, 8, true), cand("b", 3, 0, true)];
        assert!(matches!(
            place(&c, 2, 3),
            Err(PlacementError::NoSpace { .. })
        ));
        assert_eq!(place(&c, 1, 3).expect("one fits"), vec!["b"]);
        // Units are never split across monitors even if the sum would fit.
        let c = [cand("a", 5, 0, true), cand("b", 5, 0, true)];
        assert!(place(&c, 1, 6).is_err());
        assert!(place(&c, 1, 0).is_err());
        assert!(matches!(
            place(&c, MAX_UNITS + 1, 1),
            Err(PlacementError::TooMany(_))
        ));
    }

    #[test]
    fn copies_go_to_distinct_monitors_and_never_over_commit() {
        let c = [
            cand("a", 4, 0, true),
            cand("b", 3, 0, true),
            cand("c", 2, 0, true),
            cand("d", 9, 0, false),
        ];
        let p = place_copies(&c, 3, 1, 2, &[]).expect("place");
        assert_eq!(p.len(), 3);
        for holders in &p {
            assert_eq!(holders.len(), 2);
            assert_ne!(holders[0], holders[1], "{p:?}");
            assert!(!holders.contains(&"d".to_string()), "dead monitor used");
        }
        // a takes 3 units of 4, b 2 of 3, c 1 of 2: by most free each time.
        let count = |id: &str| p.iter().flatten().filter(|h| *h == id).count();
        assert_eq!((count("a"), count("b"), count("c")), (3, 2, 1));
        // Three copies need three monitors with room; avoided ones do not count.
        assert!(matches!(
            place_copies(&c, 1, 1, 4, &[]),
            Err(PlacementError::TooFewMonitors { fit: 3, .. })
        ));
        assert!(matches!(
            place_copies(&c, 1, 1, 3, &["a".into()]),
            Err(PlacementError::TooFewMonitors { fit: 2, .. })
        ));
        assert!(matches!(
            place_copies(&c, 1, 5, 1, &[]),
            Err(PlacementError::NoSpace { .. })
        ));
        let e = place_copies(&c, 1, 1, 4, &[]).expect_err("too few");
        assert!(e.to_string().contains("only 3 live monitor(s)"), "{e}");
    }

    #[test]
    fn dead_monitors_excluded() {
        let c = [cand("a", 100, 0, false), cand("b", 1, 0, true)];
        assert_eq!(place(&c, 1, 1).expect("live one"), vec!["b"]);
        let e = place(&c, 2, 1).expect_err("dead ignored");
        assert!(e.to_string().contains("1 live monitor"), "{e}");
    }

    #[test]
    fn property_random_never_over_commit() {
        // Deterministic pseudo-random cases.
        let mut x = 0x1234_5678_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let n = (next() % 5 + 1) as usize;
            let cands: Vec<Candidate> = (0..n)
                .map(|i| cand(&format!("m{i}"), next() % 20, next() % 10, next() % 4 != 0))
                .collect();
            let unit = next() % 4 + 1;
            let count = next() % 8;
            if let Ok(p) = place(&cands, count, unit) {
                for c in &cands {
                    let used = p.iter().filter(|id| **id == c.id).count() as u64 * unit;
                    assert!(used == 0 || c.alive);
                    assert!(c.reserved.saturating_add(used) <= c.capacity.max(c.reserved));
                    if used > 0 {
                        assert!(c.reserved + used <= c.capacity);
                    }
                }
            }
        }
    }
}
