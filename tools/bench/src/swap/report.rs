//! The swap benchmark's markdown: medians (min–max) per setup and the slowdown ratios of
//! the medians (remote memory and NBD against all-local RAM, remote memory against NBD);
//! legovmm against QEMU on first touch (the write pass with all-local RAM) when both ran
//! cleanly; and every try.

use super::results::SwapTry;
use super::Setup;
use crate::report::{cell, ratio_cell};
use lego_testkit::stats::{self, Summary};

/// The measurements of one setup over its clean tries.
#[derive(Debug, Clone, Default)]
pub struct SetupSummary {
    /// Clean tries.
    pub clean: usize,
    /// Tries killed because the guest never came up (retried).
    pub retries: usize,
    /// Tries that ended otherwise (crash, timeout, workload failed or wrong).
    pub failures: usize,
    /// Write pass + verify pass, ms.
    pub workload: Option<Summary>,
    /// Write pass, ms.
    pub write: Option<Summary>,
    /// Verify pass, ms.
    pub verify: Option<Summary>,
    /// VMM start to VMM exit (boot, workload, power-off), ms.
    pub wall: Option<Summary>,
    /// Pages swapped out.
    pub pswpout: Option<Summary>,
    /// Pages swapped in.
    pub pswpin: Option<Summary>,
    /// Verify pass time per page swapped in, µs: the guest-visible cost of a page-in.
    pub page_in_us: Option<Summary>,
}

/// Summarizes the clean tries of `setup`.
pub fn summarize(tries: &[SwapTry], setup: Setup) -> SetupSummary {
    let mine: Vec<&SwapTry> = tries.iter().filter(|t| t.run.vmm == setup.name()).collect();
    let clean: Vec<&&SwapTry> = mine.iter().filter(|t| t.is_clean()).collect();
    let of = |f: &dyn Fn(&SwapTry) -> Option<u64>| -> Option<Summary> {
        let v: Vec<f64> = clean
            .iter()
            .filter_map(|t| f(t))
            .map(|v| v as f64)
            .collect();
        stats::summarize(&v)
    };
    SetupSummary {
        clean: clean.len(),
        retries: mine.iter().filter(|t| t.is_hang()).count(),
        failures: mine
            .iter()
            .filter(|t| !t.is_clean() && !t.is_hang())
            .count(),
        workload: of(&|t| t.workload_ms()),
        write: of(&|t| t.write_ms),
        verify: of(&|t| t.verify_ms),
        wall: of(&|t| t.run.exit_ms),
        pswpout: of(&|t| t.pswpout),
        pswpin: of(&|t| t.pswpin),
        page_in_us: stats::summarize(
            &clean
                .iter()
                .filter_map(|t| match (t.verify_ms, t.pswpin) {
                    (Some(ms), Some(pages)) if pages > 0 => Some(ms as f64 * 1e3 / pages as f64),
                    _ => None,
                })
                .collect::<Vec<f64>>(),
        ),
    }
}

impl SetupSummary {
    /// The table cell "clean / hang retries / other failures".
    pub fn counts(&self) -> String {
        format!("{} / {} / {}", self.clean, self.retries, self.failures)
    }

    /// True if the setup has a try of any kind (it ran).
    pub fn ran(&self) -> bool {
        self.clean + self.retries + self.failures > 0
    }
}

/// The summaries of the setups.
#[derive(Debug, Clone, Default)]
pub struct Summaries {
    /// All-local RAM.
    pub local: SetupSummary,
    /// All-local RAM under QEMU.
    pub qemu_local: SetupSummary,
    /// Remote memory.
    pub remote: SetupSummary,
    /// Remote memory, interrupts relayed.
    pub remote_relay: SetupSummary,
    /// Remote memory, backend and monitor polling.
    pub remote_poll: SetupSummary,
    /// NBD swap under QEMU.
    pub nbd: SetupSummary,
    /// Guest RAM paged by legovmm.
    pub paged: SetupSummary,
}

impl Summaries {
    /// Summarizes every setup.
    pub fn of(tries: &[SwapTry]) -> Self {
        Self {
            local: summarize(tries, Setup::Local),
            qemu_local: summarize(tries, Setup::QemuLocal),
            remote: summarize(tries, Setup::Remote),
            remote_relay: summarize(tries, Setup::RemoteRelay),
            remote_poll: summarize(tries, Setup::RemotePoll),
            nbd: summarize(tries, Setup::Nbd),
            paged: summarize(tries, Setup::Paged),
        }
    }

    /// The summary of `setup`.
    pub fn get(&self, setup: Setup) -> &SetupSummary {
        match setup {
            Setup::Local => &self.local,
            Setup::QemuLocal => &self.qemu_local,
            Setup::Remote => &self.remote,
            Setup::RemoteRelay => &self.remote_relay,
            Setup::RemotePoll => &self.remote_poll,
            Setup::Nbd => &self.nbd,
            Setup::Paged => &self.paged,
        }
    }

    /// True if every setup in `setups` had at least one clean try.
    pub fn complete(&self, setups: &[Setup]) -> bool {
        setups.iter().all(|s| self.get(*s).clean > 0)
    }
}

/// Column titles of the setups.
#[derive(Debug, Clone)]
pub struct Titles {
    /// All-local RAM.
    pub local: String,
    /// All-local RAM under QEMU.
    pub qemu_local: String,
    /// Remote memory.
    pub remote: String,
    /// Remote memory, interrupts relayed.
    pub remote_relay: String,
    /// Remote memory, polling.
    pub remote_poll: String,
    /// NBD swap.
    pub nbd: String,
    /// Guest RAM paged by legovmm.
    pub paged: String,
}

/// Picks one measurement of a setup.
type Field = fn(&SetupSummary) -> Option<Summary>;

/// Renders the summary table: a column per setup (QEMU's all-local one only if it ran),
/// then the slowdown ratios.
pub fn table(s: &Summaries, titles: &Titles) -> String {
    let (l, q, r, n) = (&s.local, &s.qemu_local, &s.remote, &s.nbd);
    // QEMU's all-local column goes right after legovmm's, when that setup ran.
    let with_q = q.ran();
    let q_title = if with_q {
        format!(" {} |", titles.qemu_local)
    } else {
        String::new()
    };
    let q_rule = if with_q { "---|" } else { "" };
    let mut out = format!(
        "| median (min–max) | {} |{q_title} {} | {} | remote / local | NBD / local | remote / NBD |\n\
         |---|---|{q_rule}---|---|---|---|---|\n",
        titles.local, titles.remote, titles.nbd
    );
    let rows: [(&str, Field, bool); 6] = [
        ("workload: write + verify (ms)", |x| x.workload, true),
        ("write pass (ms)", |x| x.write, true),
        ("verify pass (ms)", |x| x.verify, true),
        (
            "VMM start → exit: boot, workload, power-off (ms)",
            |x| x.wall,
            true,
        ),
        ("pages swapped out (pswpout)", |x| x.pswpout, false),
        ("pages swapped in (pswpin)", |x| x.pswpin, false),
    ];
    for (name, get, vs_local) in rows {
        let vs = |a: &SetupSummary| {
            if vs_local {
                ratio_cell(get(a), get(l))
            } else {
                String::new()
            }
        };
        let remote_vs_nbd = ratio_cell(get(r), get(n));
        let q_cell = if with_q {
            format!(" {} |", cell(get(q), 0))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {name} | {} |{q_cell} {} | {} | {} | {} | {remote_vs_nbd} |\n",
            cell(get(l), 0),
            cell(get(r), 0),
            cell(get(n), 0),
            vs(r),
            vs(n),
        ));
    }
    let counts = SetupSummary::counts;
    let q_counts = if with_q {
        format!(" {} |", counts(q))
    } else {
        String::new()
    };
    out.push_str(&format!(
        "| clean runs / hang retries / other failures | {} |{q_counts} {} | {} | | | |\n",
        counts(l),
        counts(r),
        counts(n)
    ));
    out
}

/// Setups side by side: a column per setup, then ratio columns of two setups' medians, then
/// (if asked) each setup's run counts.
struct Comparison<'a> {
    /// Column title and setup.
    columns: Vec<(&'a str, &'a SetupSummary)>,
    /// Column title, numerator column, denominator column.
    ratios: Vec<(&'static str, usize, usize)>,
    /// Whether to end with the clean / retried / failed counts.
    counts: bool,
}

impl Comparison<'_> {
    /// Renders the header, a row per `(name, field)` and the counts.
    fn render(&self, rows: &[(&str, Field)]) -> String {
        let mut out = String::from("| median (min–max) |");
        for (title, _) in &self.columns {
            out.push_str(&format!(" {title} |"));
        }
        for (title, _, _) in &self.ratios {
            out.push_str(&format!(" {title} |"));
        }
        out.push('\n');
        out.push_str(&"|---".repeat(1 + self.columns.len() + self.ratios.len()));
        out.push_str("|\n");
        for (name, get) in rows {
            out.push_str(&format!("| {name} |"));
            for (_, setup) in &self.columns {
                out.push_str(&format!(" {} |", cell(get(setup), 0)));
            }
            for (_, a, b) in &self.ratios {
                let ratio = ratio_cell(get(self.columns[*a].1), get(self.columns[*b].1));
                out.push_str(&format!(" {ratio} |"));
            }
            out.push('\n');
        }
        if self.counts {
            out.push_str("| clean runs / hang retries / other failures |");
            for (_, setup) in &self.columns {
                out.push_str(&format!(" {} |", setup.counts()));
            }
            out.push_str(&" |".repeat(self.ratios.len()));
            out.push('\n');
        }
        out
    }
}

/// Renders the remote-memory data path's variants side by side: interrupts straight to KVM
/// (`remote`, the default), through legovmm's relay thread, and with polling, against swap on
/// NBD under QEMU; the page-in cost is the verify pass per page swapped in. `None` unless
/// `remote` and one variant have a clean try.
pub fn data_path_table(s: &Summaries, titles: &Titles) -> Option<String> {
    if s.remote.clean == 0 || (s.remote_relay.clean == 0 && s.remote_poll.clean == 0) {
        return None;
    }
    let table = Comparison {
        columns: vec![
            (&titles.remote, &s.remote),
            (&titles.remote_relay, &s.remote_relay),
            (&titles.remote_poll, &s.remote_poll),
            (&titles.nbd, &s.nbd),
        ],
        ratios: vec![
            ("relayed / direct", 1, 0),
            ("polling / direct", 2, 0),
            ("NBD / direct", 3, 0),
        ],
        counts: true,
    };
    let rows: [(&str, Field); 4] = [
        ("page-in: verify pass per page swapped in (µs)", |x| {
            x.page_in_us
        }),
        ("verify pass (ms)", |x| x.verify),
        ("workload: write + verify (ms)", |x| x.workload),
        ("pages swapped in (pswpin)", |x| x.pswpin),
    ];
    Some(format!(
        "The remote-memory data path: interrupts straight to KVM (the default), relayed, and polling; against NBD swap under QEMU.\n\n{}",
        table.render(&rows)
    ))
}

/// The paged-memory goal: NBD swap's workload time at least this many times paged guest
/// RAM's.
pub const PAGED_GOAL: f64 = 2.0;

/// Renders guest RAM paged by legovmm against the swapping setups and all-local RAM, medians
/// (min–max) and ratios of the medians. `None` unless the paged setup has a clean try.
pub fn paged_table(s: &Summaries, titles: &Titles) -> Option<String> {
    if s.paged.clean == 0 {
        return None;
    }
    let table = Comparison {
        columns: vec![
            (&titles.paged, &s.paged),
            (&titles.remote, &s.remote),
            (&titles.nbd, &s.nbd),
            (&titles.local, &s.local),
        ],
        ratios: vec![
            ("NBD / paged", 2, 0),
            ("remote / paged", 1, 0),
            ("paged / local", 0, 3),
        ],
        counts: true,
    };
    let rows: [(&str, Field); 4] = [
        ("workload: write + verify (ms)", |x| x.workload),
        ("write pass (ms)", |x| x.write),
        ("verify pass (ms)", |x| x.verify),
        ("VMM start → exit: boot, workload, power-off (ms)", |x| {
            x.wall
        }),
    ];
    Some(format!(
        "Guest RAM paged by legovmm (no swap in the guest) against swap on remote memory, swap on NBD under QEMU and all-local RAM (goal: NBD / paged ≥ {PAGED_GOAL:.1} on the workload).\n\n{}",
        table.render(&rows)
    ))
}

/// The first-touch goal: legovmm's write pass with all-local RAM at most this many times
/// QEMU's.
pub const FIRST_TOUCH_GOAL: f64 = 1.1;

/// Renders legovmm against QEMU with all-local RAM and no swap: the workload's write pass
/// (the guest's first touch of every page) and the whole workload, medians (min–max) and
/// the ratio legovmm / QEMU of the medians. `None` unless both all-local setups have a
/// clean try.
pub fn first_touch_table(s: &Summaries, titles: &Titles) -> Option<String> {
    if s.local.clean == 0 || s.qemu_local.clean == 0 {
        return None;
    }
    let table = Comparison {
        columns: vec![
            (&titles.local, &s.local),
            (&titles.qemu_local, &s.qemu_local),
        ],
        ratios: vec![("legovmm / QEMU", 0, 1)],
        counts: false,
    };
    let rows: [(&str, Field); 2] = [
        ("first-touch write pass (ms)", |x| x.write),
        ("workload: write + verify (ms)", |x| x.workload),
    ];
    Some(format!(
        "First touch, all-local RAM and no swap: legovmm against QEMU (goal: legovmm / QEMU ≤ {FIRST_TOUCH_GOAL:.2} on the write pass).\n\n{}",
        table.render(&rows)
    ))
}

/// Renders every try, in the order they ran.
pub fn tries_table(tries: &[SwapTry]) -> String {
    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    let mut s = String::from(
        "| round | setup | try | status | clean | write ms | verify ms | workload ms | VMM start → exit ms | pswpout | pswpin | MemTotal KiB | SwapTotal KiB | guest exit |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in tries {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.run.round,
            t.run.vmm,
            t.run.attempt,
            t.run.status,
            if t.is_clean() { "yes" } else { "no" },
            opt(t.write_ms),
            opt(t.verify_ms),
            opt(t.workload_ms()),
            opt(t.run.exit_ms),
            opt(t.pswpout),
            opt(t.pswpin),
            opt(t.mem_total_kb),
            opt(t.swap_total_kb),
            t.run_exit.map_or("–".to_string(), |c| c.to_string()),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swap::results::parse;

    fn line(setup: &str, round: u32, write: u64, verify: u64, exit: u64, pswp: u64) -> String {
        format!(
            "LEGO_BENCH_RESULT vmm={setup} round={round} try=1 rc=0 LEGO_BOOT_TIMING vmm={setup} status=ok ready_ms=5000 exit_ms={exit} exit_code=0 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1 LEGO_MEMTEST pages=98304 bad=0 first_bad=none write_ms={write} verify_ms={verify} LEGO_SWAPSTAT pswpin={pswp} pswpout={pswp} mem_total_kb=1 kB swap_total_kb=1 kB LEGO_RUN_EXIT=0\n"
        )
    }

    fn titles() -> Titles {
        Titles {
            local: "local".into(),
            qemu_local: "qemu-local".into(),
            remote: "remote".into(),
            remote_relay: "remote-relay".into(),
            remote_poll: "remote-poll".into(),
            nbd: "nbd".into(),
            paged: "paged".into(),
        }
    }

    #[test]
    fn medians_and_slowdown_ratios() {
        let mut text = String::new();
        for (round, (lw, rw, nw)) in [(1000, 4000, 8000), (1200, 5000, 9000), (900, 6000, 7000)]
            .into_iter()
            .enumerate()
        {
            let round = round as u32 + 1;
            text.push_str(&line("local", round, lw, lw, lw * 3, 0));
            text.push_str(&line("remote", round, rw, rw, rw * 3, 100));
            text.push_str(&line("nbd", round, nw, nw, nw * 3, 120));
        }
        // A hang (retried) and a run whose workload failed: neither counts.
        text.push_str("LEGO_BENCH_RESULT vmm=nbd round=4 try=1 rc=125 LEGO_BOOT_TIMING vmm=nbd status=hung ready_ms=none exit_ms=120000 exit_code=137 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1\n");
        text.push_str(&line("remote", 4, 1, 1, 1, 1).replace("LEGO_RUN_EXIT=0", "LEGO_RUN_EXIT=1"));
        let tries = parse(&text).unwrap();
        let s = Summaries::of(&tries);
        assert_eq!(s.local.workload.unwrap().median, 2000.0);
        assert_eq!(s.remote.workload.unwrap().median, 10000.0);
        assert_eq!(s.nbd.workload.unwrap().median, 16000.0);
        assert_eq!((s.remote.clean, s.remote.failures), (3, 1));
        assert_eq!((s.nbd.clean, s.nbd.retries), (3, 1));
        assert!(s.complete(&[Setup::Local, Setup::Remote, Setup::Nbd]));
        assert!(!s.complete(&Setup::ALL));
        // QEMU's all-local setup did not run: no column, no first-touch table.
        assert!(first_touch_table(&s, &titles()).is_none());
        let t = table(&s, &titles());
        assert!(!t.contains("qemu-local"), "{t}");
        assert!(
            t.contains("| workload: write + verify (ms) | 2000 (1800–2400) | 10000 (8000–12000) | 16000 (14000–18000) | 5.00 | 8.00 | 0.62 |"),
            "{t}"
        );
        assert!(
            t.contains("| pages swapped out (pswpout) | 0 (0–0) | 100 (100–100) | 120 (120–120) |  |  | 0.83 |"),
            "{t}"
        );
        assert!(t.contains("| 3 / 0 / 0 | 3 / 0 / 1 | 3 / 1 / 0 |"), "{t}");
        let all = tries_table(&tries);
        assert_eq!(all.lines().count(), 2 + 11);
        assert!(all.contains("| 4 | remote | 1 | ok | no |"), "{all}");
    }

    #[test]
    fn paged_guest_ram_is_compared_with_the_swapping_setups() {
        let mut text = String::new();
        for round in 1..=3 {
            text.push_str(&line("local", round, 1000, 1000, 3000, 0));
            text.push_str(&line("remote", round, 4000, 4000, 9000, 100));
            text.push_str(&line("nbd", round, 8000, 8000, 17000, 120));
            text.push_str(&line("paged", round, 2000, 2000, 5000, 0));
        }
        let s = Summaries::of(&parse(&text).unwrap());
        assert!(s.complete(&[Setup::Local, Setup::Remote, Setup::Nbd, Setup::Paged]));
        let t = paged_table(&s, &titles()).expect("the paged setup ran");
        assert!(
            t.contains("| workload: write + verify (ms) | 4000 (4000–4000) | 8000 (8000–8000) | 16000 (16000–16000) | 2000 (2000–2000) | 4.00 | 2.00 | 2.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| 3 / 0 / 0 | 3 / 0 / 0 | 3 / 0 / 0 | 3 / 0 / 0 |"),
            "{t}"
        );
        let without = Summaries::of(&parse(&line("local", 1, 10, 10, 50, 0)).unwrap());
        assert!(paged_table(&without, &titles()).is_none());
    }

    #[test]
    fn the_data_path_variants_are_compared_per_page_in() {
        let mut text = String::new();
        for round in 1..=2 {
            // Verify passes of 800, 880 and 1000 ms over 1000 pages swapped in.
            text.push_str(&line("remote", round, 500, 800, 2000, 1000));
            text.push_str(&line("remote-relay", round, 500, 880, 2000, 1000));
            text.push_str(&line("remote-poll", round, 500, 1000, 2000, 1000));
        }
        let s = Summaries::of(&parse(&text).unwrap());
        let t = data_path_table(&s, &titles()).expect("remote and two variants ran");
        assert!(
            t.contains("| median (min–max) | remote | remote-relay | remote-poll | nbd | relayed / direct | polling / direct | NBD / direct |\n|---|---|---|---|---|---|---|---|\n"),
            "{t}"
        );
        assert!(
            t.contains("| page-in: verify pass per page swapped in (µs) | 800 (800–800) | 880 (880–880) | 1000 (1000–1000) | – | 1.10 | 1.25 | – |"),
            "{t}"
        );
        assert!(
            t.contains("| clean runs / hang retries / other failures | 2 / 0 / 0 | 2 / 0 / 0 | 2 / 0 / 0 | 0 / 0 / 0 | | | |"),
            "{t}"
        );
        let only_remote = Summaries::of(&parse(&line("remote", 1, 5, 8, 20, 10)).unwrap());
        assert!(data_path_table(&only_remote, &titles()).is_none());
    }

    #[test]
    fn a_setup_without_clean_runs_is_incomplete() {
        let tries = parse(&line("local", 1, 10, 10, 50, 0)).unwrap();
        let s = Summaries::of(&tries);
        assert!(s.complete(&[Setup::Local]));
        assert!(!s.complete(&Setup::ALL));
        let t = table(&s, &titles());
        assert!(t.contains("| 20 (20–20) | – | – | – | – | – |"), "{t}");
        assert!(first_touch_table(&s, &titles()).is_none());
    }

    #[test]
    fn first_touch_legovmm_against_qemu() {
        let mut text = String::new();
        for (round, (lw, qw)) in [(1000, 900), (1100, 1000), (1300, 1100)]
            .into_iter()
            .enumerate()
        {
            let round = round as u32 + 1;
            text.push_str(&line("local", round, lw, 500, 9000, 0));
            text.push_str(&line("qemu-local", round, qw, 600, 9500, 0));
        }
        // A qemu-local try that hung (retried): counted, not measured.
        text.push_str("LEGO_BENCH_RESULT vmm=qemu-local round=4 try=1 rc=125 LEGO_BOOT_TIMING vmm=qemu-local status=hung ready_ms=none exit_ms=120000 exit_code=137 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1\n");
        let tries = parse(&text).unwrap();
        let s = Summaries::of(&tries);
        assert_eq!((s.qemu_local.clean, s.qemu_local.retries), (3, 1));
        assert_eq!(s.qemu_local.write.unwrap().median, 1000.0);
        assert!(s.complete(&[Setup::Local, Setup::QemuLocal]));
        let f = first_touch_table(&s, &titles()).unwrap();
        assert!(
            f.contains(
                "| median (min–max) | local | qemu-local | legovmm / QEMU |\n|---|---|---|---|\n"
            ),
            "{f}"
        );
        assert!(
            f.contains(
                "| first-touch write pass (ms) | 1100 (1000–1300) | 1000 (900–1100) | 1.10 |"
            ),
            "{f}"
        );
        assert!(
            f.contains(
                "| workload: write + verify (ms) | 1600 (1500–1800) | 1600 (1500–1700) | 1.00 |"
            ),
            "{f}"
        );
        assert!(f.contains("goal: legovmm / QEMU ≤ 1.10"), "{f}");
        // The main table gains QEMU's all-local column after legovmm's; remote and NBD
        // did not run and stay as they always did (–).
        let t = table(&s, &titles());
        assert!(
            t.starts_with("| median (min–max) | local | qemu-local | remote | nbd | remote / local | NBD / local | remote / NBD |\n|---|---|---|---|---|---|---|---|\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "| write pass (ms) | 1100 (1000–1300) | 1000 (900–1100) | – | – | – | – | – |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| 3 / 0 / 0 | 3 / 1 / 0 | 0 / 0 / 0 | 0 / 0 / 0 | | | |"),
            "{t}"
        );
        for row in t.lines() {
            assert_eq!(row.matches('|').count(), 9, "{row}");
        }
        let all = tries_table(&tries);
        assert!(all.contains("| 4 | qemu-local | 1 | hung | no |"), "{all}");
    }
}
