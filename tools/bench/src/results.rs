//! Parsing the job's result lines:
//! `LEGO_BENCH_RESULT vmm=V round=R try=T rc=N LEGO_BOOT_TIMING vmm=V status=S ready_ms=..`.

use crate::script::RESULT_MARKER;

/// Errors from parsing result lines.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A result line lacks a field or has an unreadable value.
    #[error("the result line {line:?} has no usable {field} field")]
    Field {
        /// The line.
        line: String,
        /// The field.
        field: &'static str,
    },
}

/// One try of one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryResult {
    /// Which VMM.
    pub vmm: String,
    /// The round (1-based, or `trace`).
    pub round: String,
    /// The try within the round (1-based).
    pub attempt: u32,
    /// The timer's exit status (125: the guest never came up and the try was killed).
    pub rc: i32,
    /// The timer's status word (`ok`, `noready`, `hung`, `timeout`).
    pub status: String,
    /// Milliseconds to the ready marker.
    pub ready_ms: Option<u64>,
    /// Milliseconds to the VMM's exit.
    pub exit_ms: Option<u64>,
    /// The VMM's exit code.
    pub exit_code: Option<i32>,
    /// Peak `VmRSS - RssShmem` in KiB.
    pub overhead_kb: u64,
    /// Peak `VmRSS` in KiB.
    pub rss_kb: u64,
    /// Peak `RssShmem` in KiB.
    pub shmem_kb: u64,
    /// Memory samples taken.
    pub samples: u64,
}

impl TryResult {
    /// True if the guest came up, powered off and the VMM exited 0.
    pub fn is_clean(&self) -> bool {
        self.status == "ok" && self.exit_code == Some(0) && self.rc == 0
    }

    /// True if the try was killed because the guest never came up.
    pub fn is_hang(&self) -> bool {
        self.status == "hung" || self.rc == 125
    }
}

/// Returns the value of `key=` in a line of `key=value` words (the last one wins).
pub fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .rev()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Parses a number field; `none` (or absent, when `optional`) gives `None`.
pub fn number<T: std::str::FromStr>(
    line: &str,
    field: &'static str,
    optional: bool,
) -> Result<Option<T>, ResultsError> {
    let err = || ResultsError::Field {
        line: line.to_string(),
        field,
    };
    match value(line, field) {
        Some("none") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| err()),
        None if optional => Ok(None),
        None => Err(err()),
    }
}

/// Parses one result line. A try whose timer printed nothing (it could not start the
/// VMM) has no `status=`; it is reported as status `failed`.
pub fn parse_line(line: &str) -> Result<TryResult, ResultsError> {
    let need = |field: &'static str| ResultsError::Field {
        line: line.to_string(),
        field,
    };
    let vmm = value(line, "vmm").ok_or_else(|| need("vmm"))?.to_string();
    Ok(TryResult {
        vmm,
        round: value(line, "round")
            .ok_or_else(|| need("round"))?
            .to_string(),
        attempt: number(line, "try", false)?.ok_or_else(|| need("try"))?,
        rc: number(line, "rc", false)?.ok_or_else(|| need("rc"))?,
        status: value(line, "status").unwrap_or("failed").to_string(),
        ready_ms: number(line, "ready_ms", true)?,
        exit_ms: number(line, "exit_ms", true)?,
        exit_code: number(line, "exit_code", true)?,
        overhead_kb: number(line, "overhead_kb", true)?.unwrap_or(0),
        rss_kb: number(line, "rss_kb", true)?.unwrap_or(0),
        shmem_kb: number(line, "shmem_kb", true)?.unwrap_or(0),
        samples: number(line, "samples", true)?.unwrap_or(0),
    })
}

/// Parses every result line in `text` (other lines are ignored).
pub fn parse(text: &str) -> Result<Vec<TryResult>, ResultsError> {
    text.lines()
        .filter_map(|l| l.find(RESULT_MARKER).map(|at| &l[at..]))
        .map(parse_line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "LEGO_BENCH_RESULT vmm=qemu round=2 try=1 rc=0 LEGO_BOOT_TIMING vmm=qemu status=ok ready_ms=6100 exit_ms=6900 exit_code=0 overhead_kb=30000 rss_kb=300000 anon_kb=25000 file_kb=5000 shmem_kb=270000 samples=300";

    #[test]
    fn parses_a_clean_try() {
        let r = parse_line(OK).unwrap();
        assert_eq!(r.vmm, "qemu");
        assert_eq!((r.round.as_str(), r.attempt, r.rc), ("2", 1, 0));
        assert_eq!(r.ready_ms, Some(6100));
        assert_eq!(r.exit_ms, Some(6900));
        assert_eq!(r.overhead_kb, 30000);
        assert_eq!(r.shmem_kb, 270000);
        assert!(r.is_clean() && !r.is_hang());
    }

    #[test]
    fn parses_hangs_and_silent_failures() {
        let hang = "LEGO_BENCH_RESULT round=1 try=1 rc=125 LEGO_BOOT_TIMING vmm=legovmm status=hung ready_ms=none exit_ms=60010 exit_code=137 overhead_kb=9000 rss_kb=1 shmem_kb=1 samples=9";
        let r = parse_line(hang).unwrap();
        assert!(r.is_hang() && !r.is_clean());
        assert_eq!(r.ready_ms, None);
        assert!(parse_line("LEGO_BENCH_RESULT round=1 try=1 rc=2 ").is_err());
        let r = parse_line("LEGO_BENCH_RESULT vmm=qemu round=1 try=1 rc=2 ").unwrap();
        assert_eq!(r.status, "failed");
    }

    #[test]
    fn parses_a_console_with_noise() {
        let text = format!("[ 3.1] kvm: something\nx {OK}\r\nLEGO_BENCH_DONE\n");
        let all = parse(text.trim_end_matches('\n')).unwrap();
        assert_eq!(all.len(), 1);
        let bad = "LEGO_BENCH_RESULT round=1 try=x rc=0 vmm=qemu";
        let err = parse(bad).unwrap_err();
        assert!(err.to_string().contains("try"), "{err}");
    }
}
