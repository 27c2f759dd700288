//! The testbed soak: the same demo-sized swap workload run N times, each in a compute host
//! of its own, and every run that did not end cleanly sorted by how it was lost, so that a
//! knob of the emulated compute host (TCG threads, vCPUs, `kvm_amd` parameters, CPU model,
//! THP) can be judged by its loss rate, with legovmm or QEMU as the nested VMM.

use std::fmt::Write as _;
use std::time::Duration;

use lego_testbed::Outcome;

/// How a run was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The compute host's kernel panicked (the first `BUG:` or `Kernel panic` line).
    L1Panic(String),
    /// The compute host's QEMU exited by itself, without a panic on the console and
    /// before the job reported its status.
    L1SilentExit(Option<i32>),
    /// The compute host's console (which carries a heartbeat) went silent: L1 hung.
    L1Hang,
    /// The nested VMM made no progress and the job's watchdog stopped it.
    L2Stall,
    /// The run overran its whole time limit.
    Timeout,
    /// The nested guest never came up (every try hung before its init).
    NotReady,
    /// The job ended by itself but not cleanly (a failed workload, a crashed guest).
    JobFailed(Option<i32>),
}

impl Loss {
    /// A short name for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Loss::L1Panic(_) => "L1 kernel panic",
            Loss::L1SilentExit(_) => "L1 silent exit",
            Loss::L1Hang => "L1 hang",
            Loss::L2Stall => "L2 stall",
            Loss::Timeout => "timeout",
            Loss::NotReady => "L2 never up",
            Loss::JobFailed(_) => "job failed",
        }
    }

    /// Every kind, in table order.
    pub const KINDS: [&'static str; 7] = [
        "L1 kernel panic",
        "L1 silent exit",
        "L1 hang",
        "L2 stall",
        "timeout",
        "L2 never up",
        "job failed",
    ];

    /// One line of detail.
    pub fn detail(&self) -> String {
        match self {
            Loss::L1Panic(line) => line.clone(),
            Loss::L1SilentExit(code) => format!("QEMU exited with {code:?}"),
            Loss::JobFailed(code) => format!("job exit {code:?}"),
            other => other.kind().to_string(),
        }
    }
}

/// One soak run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// 1-based.
    pub index: u32,
    /// `None` when the run ended cleanly.
    pub loss: Option<Loss>,
    /// Nested guests that triple-faulted and were started again within the run.
    pub l2_triple_faults: u32,
    /// Nested guests that hung before their init and were started again within the run.
    pub l2_early_hangs: u32,
    /// Wall time of the run, compute host boot included.
    pub duration: Duration,
}

/// Sorts a finished run. `clean` says whether the job's own success check passed (it
/// only matters when the job completed with status 0).
pub fn classify(
    outcome: Outcome,
    job_exit: Option<i32>,
    host_exit: Option<i32>,
    console: &str,
    clean: bool,
) -> Option<Loss> {
    let panic_line = || {
        console
            .lines()
            .find(|l| l.contains("Kernel panic") || l.contains("BUG: "))
            .map(|l| l.trim().to_string())
    };
    match outcome {
        Outcome::Completed if console.contains("LEGO_VNODE_STALL") => Some(Loss::L2Stall),
        Outcome::Completed if job_exit == Some(0) && clean => None,
        Outcome::Completed => Some(Loss::JobFailed(job_exit)),
        Outcome::HostFailed => Some(match panic_line() {
            Some(line) => Loss::L1Panic(line),
            None => Loss::L1SilentExit(host_exit),
        }),
        Outcome::Silent => Some(match panic_line() {
            Some(line) => Loss::L1Panic(line),
            None => Loss::L1Hang,
        }),
        Outcome::TimedOut => Some(Loss::Timeout),
        Outcome::NotReady => Some(Loss::NotReady),
    }
}

/// Counts the nested guests restarted within a run, from the job's markers:
/// `(triple faults, early hangs)`.
pub fn l2_restarts(console: &str) -> (u32, u32) {
    let count = |m: &str| console.lines().filter(|l| l.contains(m)).count() as u32;
    (
        count("LEGO_VNODE_TRIPLE_FAULT"),
        count("LEGO_VNODE_HANG") + count("LEGO_BENCH_HANG"),
    )
}

/// The report of a soak: one summary row (for a table comparing configurations) and one
/// row per lost run.
pub fn report(config: &str, runs: &[Run]) -> String {
    let lost: Vec<&Run> = runs.iter().filter(|r| r.loss.is_some()).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| configuration | runs | clean | lost | {} | L2 restarts (triple fault / early hang) | median run |",
        Loss::KINDS.join(" | ")
    );
    let _ = writeln!(md, "|{}", "---|".repeat(6 + Loss::KINDS.len()));
    let by_kind: Vec<String> = Loss::KINDS
        .iter()
        .map(|k| {
            lost.iter()
                .filter(|r| r.loss.as_ref().map(Loss::kind) == Some(k))
                .count()
                .to_string()
        })
        .collect();
    let mut secs: Vec<f64> = runs.iter().map(|r| r.duration.as_secs_f64()).collect();
    secs.sort_by(f64::total_cmp);
    let median = secs.get(secs.len() / 2).copied().unwrap_or(0.0);
    let _ = writeln!(
        md,
        "| {config} | {} | {} | {} | {} | {} / {} | {median:.0} s |",
        runs.len(),
        runs.len() - lost.len(),
        lost.len(),
        by_kind.join(" | "),
        runs.iter().map(|r| r.l2_triple_faults).sum::<u32>(),
        runs.iter().map(|r| r.l2_early_hangs).sum::<u32>(),
    );
    if !lost.is_empty() {
        md.push_str("\nLost runs:\n\n");
        for r in lost {
            if let Some(loss) = &r.loss {
                let _ = writeln!(
                    md,
                    "- run {} ({:.0} s): {}: {} (console: run-{:02}.console.log)",
                    r.index,
                    r.duration.as_secs_f64(),
                    loss.kind(),
                    loss.detail(),
                    r.index
                );
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_runs_by_how_they_ended() {
        let panic = "x\n[  145.0] BUG: TASK stack guard page was hit at 0x1\n[ 145.1] Kernel panic - not syncing\n";
        assert_eq!(
            classify(Outcome::HostFailed, None, Some(0), panic, false),
            Some(Loss::L1Panic(
                "[  145.0] BUG: TASK stack guard page was hit at 0x1".into()
            ))
        );
        assert_eq!(
            classify(Outcome::HostFailed, None, Some(0), "quiet", false),
            Some(Loss::L1SilentExit(Some(0)))
        );
        assert_eq!(
            classify(Outcome::Silent, None, None, "LEGO_L1_ALIVE", false),
            Some(Loss::L1Hang)
        );
        assert_eq!(
            classify(Outcome::Completed, Some(0), None, "done", true),
            None
        );
        assert_eq!(
            classify(Outcome::Completed, Some(0), None, "done", false),
            Some(Loss::JobFailed(Some(0)))
        );
        assert_eq!(
            classify(
                Outcome::Completed,
                Some(1),
                None,
                "LEGO_VNODE_STALL name=first",
                false
            ),
            Some(Loss::L2Stall)
        );
        assert_eq!(
            classify(Outcome::TimedOut, None, None, "", false),
            Some(Loss::Timeout)
        );
    }

    #[test]
    fn counts_nested_restarts() {
        let c = "legovmm: vCPU 0 triple-faulted\nLEGO_VNODE_TRIPLE_FAULT name=a try=1\nLEGO_VNODE_HANG name=a try=2\nLEGO_VNODE_HANG name=b\n";
        assert_eq!(l2_restarts(c), (1, 2));
    }

    #[test]
    fn report_counts_each_kind() {
        let run = |i, loss| Run {
            index: i,
            loss,
            l2_triple_faults: 0,
            l2_early_hangs: 1,
            duration: Duration::from_secs(100 + u64::from(i)),
        };
        let runs = [
            run(1, None),
            run(2, Some(Loss::L1Hang)),
            run(3, Some(Loss::L1Panic("BUG: x".into()))),
        ];
        let md = report("baseline", &runs);
        assert!(
            md.contains("| baseline | 3 | 1 | 2 | 1 | 0 | 1 | 0 | 0 | 0 | 0 | 0 / 3 | 102 s |"),
            "{md}"
        );
        assert!(
            md.contains("- run 3 (103 s): L1 kernel panic: BUG: x (console: run-03.console.log)"),
            "{md}"
        );
    }
}
