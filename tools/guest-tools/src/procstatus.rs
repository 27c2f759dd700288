//! A process's resident memory from `/proc/<pid>/status`: VmRSS and its split into
//! anonymous, file-backed and shared-memory pages.

use std::path::PathBuf;

/// Errors from reading a process's memory figures.
#[derive(Debug, thiserror::Error)]
pub enum ProcStatusError {
    /// The status file could not be read (e.g. the process has exited).
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A field the caller needs is missing or is not a number of kB.
    #[error("the process status has no usable {field} line (expected e.g. \"{field}:  1234 kB\")")]
    Field {
        /// The field's name.
        field: &'static str,
    },
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemSample {
    /// `VmRSS`: all resident pages.
    pub rss_kb: u64,
    /// `RssAnon`: resident anonymous pages.
    pub anon_kb: u64,
    /// `RssFile`: resident file-backed pages.
    pub file_kb: u64,
    /// `RssShmem`: resident shared memory (memfd, tmpfs, SysV shm).
    pub shmem_kb: u64,
}

impl MemSample {
    /// Memory beyond shared memory: `VmRSS - RssShmem`. With guest RAM in a shared memfd
    /// this is what the VMM itself costs.
    pub fn overhead_kb(&self) -> u64 {
        self.rss_kb.saturating_sub(self.shmem_kb)
    }
}

/// Returns the value in kB of `field` in a status text, if present and numeric.
fn field_kb(text: &str, field: &'static str) -> Result<u64, ProcStatusError> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            let mut words = rest.split_whitespace();
            let value = words.next()?.parse().ok()?;
            matches!(words.next(), Some("kB") | None).then_some(value)
        })
        .ok_or(ProcStatusError::Field { field })
}

/// Parses the text of `/proc/<pid>/status` into a [`MemSample`].
pub fn parse(text: &str) -> Result<MemSample, ProcStatusError> {
    Ok(MemSample {
        rss_kb: field_kb(text, "VmRSS")?,
        anon_kb: field_kb(text, "RssAnon")?,
        file_kb: field_kb(text, "RssFile")?,
        shmem_kb: field_kb(text, "RssShmem")?,
    })
}

/// Reads and parses `/proc/<pid>/status`.
pub fn read(pid: u32) -> Result<MemSample, ProcStatusError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path).map_err(|source| ProcStatusError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text)
}

/// The peak of each figure over a run's samples; `overhead_kb` is the peak of
/// `VmRSS - RssShmem` taken sample by sample, not the difference of the peaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemPeak {
    /// Number of samples taken.
    pub samples: u64,
    /// Peak `VmRSS - RssShmem`.
    pub overhead_kb: u64,
    /// Peak `VmRSS`.
    pub rss_kb: u64,
    /// Peak `RssAnon`.
    pub anon_kb: u64,
    /// Peak `RssFile`.
    pub file_kb: u64,
    /// Peak `RssShmem`.
    pub shmem_kb: u64,
}

impl MemPeak {
    /// Folds one sample into the peaks.
    pub fn add(&mut self, s: &MemSample) {
        self.samples += 1;
        self.overhead_kb = self.overhead_kb.max(s.overhead_kb());
        self.rss_kb = self.rss_kb.max(s.rss_kb);
        self.anon_kb = self.anon_kb.max(s.anon_kb);
        self.file_kb = self.file_kb.max(s.file_kb);
        self.shmem_kb = self.shmem_kb.max(s.shmem_kb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tqemu-system-x86\nVmPeak:\t 1000000 kB\nVmRSS:\t  300000 kB\n\
        RssAnon:\t   30000 kB\nRssFile:\t   10000 kB\nRssShmem:\t  260000 kB\nThreads:\t5\n";

    #[test]
    fn parses_a_status_file() {
        let s = parse(STATUS).unwrap();
        assert_eq!(
            s,
            MemSample {
                rss_kb: 300000,
                anon_kb: 30000,
                file_kb: 10000,
                shmem_kb: 260000
            }
        );
        assert_eq!(s.overhead_kb(), 40000);
    }

    #[test]
    fn rejects_missing_or_bad_fields() {
        let err = parse("VmRSS:\t1 kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n").unwrap_err();
        assert!(err.to_string().contains("RssShmem"), "{err}");
        let bad = STATUS.replace("260000 kB", "lots kB");
        assert!(parse(&bad).is_err());
        let wrong_unit = STATUS.replace("260000 kB", "260000 MB");
        assert!(parse(&wrong_unit).is_err());
        // A field name that only starts like the wanted one does not count.
        assert!(field_kb("VmRSSx: 5 kB\n", "VmRSS").is_err());
    }

    #[test]
    fn peaks_take_the_overhead_per_sample() {
        let mut p = MemPeak::default();
        p.add(&MemSample {
            rss_kb: 100,
            anon_kb: 50,
            file_kb: 40,
            shmem_kb: 10,
        });
        p.add(&MemSample {
            rss_kb: 300,
            anon_kb: 60,
            file_kb: 40,
            shmem_kb: 200,
        });
        assert_eq!(p.samples, 2);
        assert_eq!(p.overhead_kb, 100);
        assert_eq!(p.rss_kb, 300);
        assert_eq!(p.shmem_kb, 200);
    }

    #[test]
    fn reads_this_process() {
        let s = read(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.overhead_kb() <= s.rss_kb);
        assert!(read(u32::MAX).is_err());
    }
}
