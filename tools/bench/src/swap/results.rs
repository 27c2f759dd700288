//! Parsing the swap benchmark's result lines: the boot timer's fields (see
//! [`crate::results`]) followed by the guest's `LEGO_SWAP_ON`, `LEGO_MEMTEST`,
//! `LEGO_SWAPSTAT` and `LEGO_RUN_EXIT=` console lines.

use crate::results::{self, number, ResultsError, TryResult};

/// One try of one setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapTry {
    /// The boot timer's part (the setup's name is `run.vmm`).
    pub run: TryResult,
    /// Pages the workload tested.
    pub pages: Option<u64>,
    /// Pages whose contents were wrong.
    pub bad: Option<u64>,
    /// The workload's write pass, ms.
    pub write_ms: Option<u64>,
    /// The workload's verify pass, ms.
    pub verify_ms: Option<u64>,
    /// Pages the guest swapped in (`/proc/vmstat` pswpin).
    pub pswpin: Option<u64>,
    /// Pages the guest swapped out (pswpout).
    pub pswpout: Option<u64>,
    /// The guest's MemTotal, KiB.
    pub mem_total_kb: Option<u64>,
    /// The guest's SwapTotal, KiB.
    pub swap_total_kb: Option<u64>,
    /// The guest command's status (`LEGO_RUN_EXIT=`).
    pub run_exit: Option<i32>,
    /// Whether the guest's init turned a disk into swap (`LEGO_SWAP_ON`).
    pub swap_on: bool,
}

impl SwapTry {
    /// The workload's time: write pass plus verify pass, ms.
    pub fn workload_ms(&self) -> Option<u64> {
        Some(self.write_ms? + self.verify_ms?)
    }

    /// True if the VMM ran cleanly and the workload finished with every page right.
    pub fn is_clean(&self) -> bool {
        self.run.is_clean()
            && self.run_exit == Some(0)
            && self.bad == Some(0)
            && self.pages.is_some_and(|p| p > 0)
            && self.workload_ms().is_some()
    }

    /// True if the try was killed because the guest never came up (and retried).
    pub fn is_hang(&self) -> bool {
        self.run.is_hang()
    }
}

/// Parses one result line.
pub fn parse_line(line: &str) -> Result<SwapTry, ResultsError> {
    let run = results::parse_line(line)?;
    Ok(SwapTry {
        run,
        pages: number(line, "pages", true)?,
        bad: number(line, "bad", true)?,
        write_ms: number(line, "write_ms", true)?,
        verify_ms: number(line, "verify_ms", true)?,
        pswpin: number(line, "pswpin", true)?,
        pswpout: number(line, "pswpout", true)?,
        mem_total_kb: number(line, "mem_total_kb", true)?,
        swap_total_kb: number(line, "swap_total_kb", true)?,
        run_exit: number(line, "LEGO_RUN_EXIT", true)?,
        swap_on: line.split_whitespace().any(|w| w == "LEGO_SWAP_ON"),
    })
}

/// Parses every result line in `text` (other lines are ignored).
pub fn parse(text: &str) -> Result<Vec<SwapTry>, ResultsError> {
    text.lines()
        .filter_map(|l| {
            l.find(crate::script::RESULT_MARKER)
                .map(|at| l[at..].trim_end())
        })
        .map(parse_line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REMOTE: &str = "LEGO_BENCH_RESULT vmm=remote round=1 try=1 rc=0 LEGO_BOOT_TIMING vmm=remote status=ok ready_ms=7000 exit_ms=81000 exit_code=0 overhead_kb=4000 rss_kb=140000 anon_kb=1 file_kb=2 shmem_kb=131072 samples=400 LEGO_SWAP_ON dev=/dev/vda size_kb=1048576  LEGO_MEMTEST pages=98304 bad=0 first_bad=none write_ms=30000 verify_ms=40000 write_mib_s=13 verify_mib_s=10  LEGO_SWAPSTAT pswpin=70000 pswpout=90000 mem_total_kb=100000 kB swap_total_kb=1048572 kB  LEGO_RUN_EXIT=0 ";

    #[test]
    fn parses_a_clean_swapping_try() {
        let t = parse_line(REMOTE).unwrap();
        assert_eq!(t.run.vmm, "remote");
        assert_eq!(t.run.exit_ms, Some(81000));
        assert_eq!((t.pages, t.bad), (Some(98304), Some(0)));
        assert_eq!(t.workload_ms(), Some(70000));
        assert_eq!((t.pswpin, t.pswpout), (Some(70000), Some(90000)));
        assert_eq!(t.mem_total_kb, Some(100000));
        assert_eq!(t.swap_total_kb, Some(1048572));
        assert_eq!(t.run_exit, Some(0));
        assert!(t.swap_on);
        assert!(t.is_clean() && !t.is_hang());
    }

    #[test]
    fn a_bad_page_or_a_failed_workload_is_not_clean() {
        let bad = REMOTE.replace("bad=0", "bad=7");
        assert!(!parse_line(&bad).unwrap().is_clean());
        let failed = REMOTE.replace("LEGO_RUN_EXIT=0", "LEGO_RUN_EXIT=137");
        assert!(!parse_line(&failed).unwrap().is_clean());
        // The OOM killer took the workload: no LEGO_MEMTEST at all.
        let oom = "LEGO_BENCH_RESULT vmm=nbd round=2 try=1 rc=0 LEGO_BOOT_TIMING vmm=nbd status=ok ready_ms=9000 exit_ms=20000 exit_code=0 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1 LEGO_SWAPSTAT pswpin=0 pswpout=0 mem_total_kb=100000 kB swap_total_kb=0 kB LEGO_RUN_EXIT=137";
        let t = parse_line(oom).unwrap();
        assert_eq!(t.workload_ms(), None);
        assert!(!t.swap_on && !t.is_clean());
    }

    #[test]
    fn parses_qemu_local() {
        let line = REMOTE
            .replace("vmm=remote", "vmm=qemu-local")
            .replace("LEGO_SWAP_ON dev=/dev/vda size_kb=1048576 ", "");
        let t = parse_line(&line).unwrap();
        assert_eq!(t.run.vmm, "qemu-local");
        assert_eq!(
            t.run.vmm.parse::<crate::swap::Setup>(),
            Ok(crate::swap::Setup::QemuLocal)
        );
        assert_eq!((t.write_ms, t.verify_ms), (Some(30000), Some(40000)));
        assert!(t.is_clean() && !t.swap_on);
    }

    #[test]
    fn parses_lines_among_noise() {
        let text = format!("LEGO_BENCH_PROGRESS round 1\n[ 1.0] x {REMOTE}\r\nLEGO_BENCH_DONE\n");
        let all = parse(&text).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].run_exit, Some(0));
        let err = parse(&REMOTE.replace("write_ms=30000", "write_ms=x")).unwrap_err();
        assert!(err.to_string().contains("write_ms"), "{err}");
    }
}
