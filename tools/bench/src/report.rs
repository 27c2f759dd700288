//! The markdown report: a summary table per VMM with the legovmm/QEMU ratios against the
//! issue's goals, and every try.

use crate::results::TryResult;
use lego_testkit::stats::{self, Summary};

/// The goal on the boot time ratio legovmm / QEMU.
pub const TIME_RATIO_GOAL: f64 = 0.7;
/// The goal on legovmm's memory overhead, in MiB.
pub const OVERHEAD_GOAL_MIB: f64 = 10.0;

/// The measurements of one VMM.
#[derive(Debug, Clone, Default)]
pub struct VmmSummary {
    /// Clean tries.
    pub clean: usize,
    /// Tries killed because the guest never came up (retried).
    pub retries: usize,
    /// Tries that ended otherwise (crash, timeout, no marker).
    pub failures: usize,
    /// Start to the ready marker, ms.
    pub ready: Option<Summary>,
    /// Start to exit, ms.
    pub exit: Option<Summary>,
    /// Peak `VmRSS - RssShmem`, MiB.
    pub overhead: Option<Summary>,
    /// Peak `VmRSS`, MiB.
    pub rss: Option<Summary>,
}

/// The command line this driver was started with (arguments with spaces or quotes
/// quoted for the shell), for a report.
pub fn invocation() -> String {
    std::env::args()
        .map(|a| {
            if a.contains([' ', '"', '\'']) {
                crate::script::sh_quote(&a)
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders a median with its range, `–` when there is none.
pub fn cell(s: Option<Summary>, decimals: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} ({:.d$}–{:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        ),
        None => "–".to_string(),
    }
}

/// Renders the ratio of two medians with two decimals, `–` when there is none.
pub fn ratio_cell(a: Option<Summary>, b: Option<Summary>) -> String {
    stats::ratio(a, b).map_or("–".to_string(), |r| format!("{r:.2}"))
}

/// Summarizes the clean tries of `vmm`.
pub fn summarize(results: &[TryResult], vmm: &str) -> VmmSummary {
    let mine: Vec<&TryResult> = results.iter().filter(|r| r.vmm == vmm).collect();
    let clean: Vec<&&TryResult> = mine.iter().filter(|r| r.is_clean()).collect();
    let of = |f: &dyn Fn(&TryResult) -> Option<f64>| -> Option<Summary> {
        let v: Vec<f64> = clean.iter().filter_map(|r| f(r)).collect();
        stats::summarize(&v)
    };
    let mib = |kb: u64| kb as f64 / 1024.0;
    VmmSummary {
        clean: clean.len(),
        retries: mine.iter().filter(|r| r.is_hang()).count(),
        failures: mine
            .iter()
            .filter(|r| !r.is_clean() && !r.is_hang())
            .count(),
        ready: of(&|r| r.ready_ms.map(|v| v as f64)),
        exit: of(&|r| r.exit_ms.map(|v| v as f64)),
        overhead: of(&|r| Some(mib(r.overhead_kb))),
        rss: of(&|r| Some(mib(r.rss_kb))),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "missed",
        None => "unknown",
    }
}

/// Renders the summary table of legovmm against QEMU.
pub fn table(lego: &VmmSummary, qemu: &VmmSummary) -> String {
    let time_ok = stats::ratio(lego.ready, qemu.ready).map(|r| r <= TIME_RATIO_GOAL);
    let exit_ok = stats::ratio(lego.exit, qemu.exit).map(|r| r <= TIME_RATIO_GOAL);
    let mem_ok = lego.overhead.map(|s| s.max <= OVERHEAD_GOAL_MIB);
    let mut s = String::new();
    s.push_str("| median (min–max) | legovmm | QEMU microvm | legovmm / QEMU | goal |\n");
    s.push_str("|---|---|---|---|---|\n");
    let goal_time = format!("≤ {TIME_RATIO_GOAL}: {}", verdict(time_ok));
    let goal_exit = format!("≤ {TIME_RATIO_GOAL}: {}", verdict(exit_ok));
    let goal_mem = format!("≤ {OVERHEAD_GOAL_MIB} MiB: {}", verdict(mem_ok));
    let rows = [
        (
            "start → `LEGO_GUEST_READY` (ms)",
            lego.ready,
            qemu.ready,
            0,
            goal_time.as_str(),
        ),
        (
            "start → VMM exit after power-off (ms)",
            lego.exit,
            qemu.exit,
            0,
            &goal_exit,
        ),
        (
            "peak VmRSS − RssShmem (MiB)",
            lego.overhead,
            qemu.overhead,
            1,
            &goal_mem,
        ),
        (
            "peak VmRSS incl. guest RAM (MiB)",
            lego.rss,
            qemu.rss,
            1,
            "",
        ),
    ];
    for (label, ours, theirs, decimals, goal) in rows {
        s.push_str(&format!(
            "| {label} | {} | {} | {} | {goal} |\n",
            cell(ours, decimals),
            cell(theirs, decimals),
            ratio_cell(ours, theirs),
        ));
    }
    s.push_str(&format!(
        "| clean runs / hang retries / other failures | {} / {} / {} | {} / {} / {} | | |\n",
        lego.clean, lego.retries, lego.failures, qemu.clean, qemu.retries, qemu.failures
    ));
    s
}

/// Renders every try, in the order they ran.
pub fn tries_table(results: &[TryResult]) -> String {
    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    let mut s = String::from(
        "| round | VMM | try | status | ready ms | exit ms | exit code | overhead KiB | VmRSS KiB | RssShmem KiB | samples |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.round,
            r.vmm,
            r.attempt,
            r.status,
            opt(r.ready_ms),
            opt(r.exit_ms),
            r.exit_code.map_or("–".to_string(), |c| c.to_string()),
            r.overhead_kb,
            r.rss_kb,
            r.shmem_kb,
            r.samples
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::parse;

    const TEXT: &str = "\
LEGO_BENCH_RESULT vmm=legovmm round=1 try=1 rc=125 LEGO_BOOT_TIMING vmm=legovmm status=hung ready_ms=none exit_ms=60000 exit_code=137 overhead_kb=4096 rss_kb=9000 shmem_kb=5000 samples=3
LEGO_BENCH_RESULT vmm=legovmm round=1 try=2 rc=0 LEGO_BOOT_TIMING vmm=legovmm status=ok ready_ms=3500 exit_ms=4000 exit_code=0 overhead_kb=4096 rss_kb=100000 shmem_kb=95904 samples=200
LEGO_BENCH_RESULT vmm=qemu round=1 try=1 rc=0 LEGO_BOOT_TIMING vmm=qemu status=ok ready_ms=5000 exit_ms=6000 exit_code=0 overhead_kb=40960 rss_kb=140000 shmem_kb=99040 samples=300
";

    #[test]
    fn summarizes_clean_tries_and_counts_retries() {
        let r = parse(TEXT).unwrap();
        let l = summarize(&r, "legovmm");
        assert_eq!((l.clean, l.retries, l.failures), (1, 1, 0));
        assert_eq!(l.ready.unwrap().median, 3500.0);
        assert_eq!(l.overhead.unwrap().median, 4.0);
        let q = summarize(&r, "qemu");
        let t = table(&l, &q);
        assert!(
            t.contains("| 3500 (3500–3500) | 5000 (5000–5000) | 0.70 | ≤ 0.7: met |"),
            "{t}"
        );
        assert!(
            t.contains("| 4.0 (4.0–4.0) | 40.0 (40.0–40.0) | 0.10 | ≤ 10 MiB: met |"),
            "{t}"
        );
        assert!(t.contains("| 1 / 1 / 0 | 1 / 0 / 0 |"), "{t}");
        let all = tries_table(&r);
        assert_eq!(all.lines().count(), 5);
        assert!(
            all.contains("| 1 | legovmm | 1 | hung | – | 60000 | 137 |"),
            "{all}"
        );
    }

    #[test]
    fn missing_data_is_unknown() {
        let t = table(&VmmSummary::default(), &VmmSummary::default());
        assert!(t.contains("unknown"));
    }
}
