//! A job (a shell script with files, run on the compute host) and what comes back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::disk::{self, DiskError};
use crate::mode::Mode;

/// Errors from reading a job's results.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The result could not be read from the job disk.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The result could not be read from the job folder.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The result could not be written where it was asked for.
    #[error("could not write {path}")]
    Write {
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A script to run on the compute host, in a job folder holding its files.
///
/// The script runs with `sh` (busybox) in nested mode and `bash` in direct mode, in the
/// job folder, with `$LEGOVMM` (the command that runs legovmm), `$JOB_DIR` (the job
/// folder, where result files go), `$LEGO_TESTBED_MODE` (`nested` or `direct`),
/// `$LEGO_TESTBED_TRY` (1 for the first try, 2 for the first retry, ...) and
/// `$LEGO_TESTBED_LIB` (shell functions such as `lego_vnode`, see [`crate::shell`]) set.
/// `$LEGO_HOST_ADDR` is the address at which the script reaches daemons listening on this
/// machine's `127.0.0.1`: `127.0.0.1` in direct mode, `10.0.2.2` in nested mode with
/// [`Job::network`] (unset in nested mode without it).
#[derive(Debug, Clone)]
pub struct Job {
    /// A short name for logs (`<cache>/testbed/logs/<name>.console.log`).
    pub name: String,
    /// The script's text.
    pub script: String,
    /// Files copied into the job folder: `(host path, name in the job folder)`.
    pub files: Vec<(PathBuf, String)>,
    /// Kill the run after this long (in nested mode this includes L1's boot).
    pub timeout: Duration,
    /// A console line containing this text shows the run got past the point where it may
    /// hang; if it does not appear within `ready_timeout`, the try is killed and retried.
    pub ready_marker: Option<String>,
    /// How long to wait for `ready_marker`, from the start of each try.
    pub ready_timeout: Duration,
    /// How many more tries after a try that missed its ready marker.
    pub retries: u32,
    /// Free space for results on the job disk, in MiB (nested mode).
    pub disk_extra_mib: u64,
    /// Nested mode: give the compute host a user-mode network to this machine's loopback
    /// (see [`crate::qemu::NETDEV`]). Direct mode needs none.
    pub network: bool,
}

impl Job {
    /// A job with a script and defaults: no files, 300 s timeout, no ready marker.
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            files: Vec::new(),
            timeout: Duration::from_secs(300),
            ready_marker: None,
            ready_timeout: Duration::from_secs(120),
            retries: 0,
            disk_extra_mib: 64,
            network: false,
        }
    }

    /// Adds a file to the job folder under `name`.
    pub fn file(mut self, host: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        self.files.push((host.into(), name.into()));
        self
    }

    /// Sets the overall timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Asks for (or not) the compute host's network to this machine's loopback, reached
    /// from the script at `$LEGO_HOST_ADDR`.
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    /// Sets the ready marker, its timeout and the number of retries after a try that misses
    /// it or (nested) loses its compute host.
    pub fn ready(mut self, marker: impl Into<String>, within: Duration, retries: u32) -> Self {
        self.ready_marker = Some(marker.into());
        self.ready_timeout = within;
        self.retries = retries;
        self
    }
}

/// How a job's last try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The script ran to its end; its status is in [`JobOutput::job_exit`].
    Completed,
    /// The run was killed at the job's timeout.
    TimedOut,
    /// Every try missed the ready marker.
    NotReady,
    /// Nested mode: the compute host's console (which carries a heartbeat) went silent
    /// for [`crate::qemu::SILENCE_LIMIT_SECS`]: L1 hung, and was killed after its vCPUs'
    /// registers were written to the console.
    Silent,
    /// The compute host ended without reporting the script's status (e.g. L1 crashed or
    /// QEMU failed to start); see [`JobOutput::host_exit`] and the console.
    HostFailed,
}

/// Where a job's result files are.
#[derive(Debug)]
pub(crate) enum Results {
    /// The ext4 job disk of a nested run (kept in the temporary folder).
    Disk {
        image: PathBuf,
        _dir: tempfile::TempDir,
    },
    /// The job folder of a direct run.
    Dir { dir: tempfile::TempDir },
}

/// What a job produced.
#[derive(Debug)]
pub struct JobOutput {
    /// Where it ran.
    pub mode: Mode,
    /// How the last try ended.
    pub outcome: Outcome,
    /// The console of the last try (L1's serial console in nested mode; the script's
    /// merged output in direct mode).
    pub console: String,
    /// The script's exit status, when it completed.
    pub job_exit: Option<i32>,
    /// Nested mode: the exit status of the compute host's QEMU, when it exited by itself.
    pub host_exit: Option<i32>,
    /// How many tries ran (1 + retries used).
    pub tries: u32,
    /// Wall time of the last try.
    pub duration: Duration,
    /// Wall time of all tries.
    pub total_duration: Duration,
    /// Nested mode: time from QEMU's start to L1's `/init`.
    pub l1_init_after: Option<Duration>,
    /// Nested mode: whether L1 had `/dev/kvm` (None if it never said).
    pub l1_kvm: Option<bool>,
    /// Nested mode with the network: whether L1 brought it up (None if it never said).
    pub l1_net: Option<bool>,
    /// When the ready marker appeared in the last try.
    pub ready_after: Option<Duration>,
    /// The console log file of the last try.
    pub console_log: PathBuf,
    pub(crate) results: Results,
}

impl JobOutput {
    /// Returns true if the script completed with status 0.
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Completed && self.job_exit == Some(0)
    }

    /// Reads a file the job left in its job folder (`$JOB_DIR/<name>`); in nested mode it
    /// is read from the job disk with debugfs.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, JobError> {
        match &self.results {
            Results::Disk { image, .. } => Ok(disk::read_file(image, name)?),
            Results::Dir { dir } => {
                let path = existing(dir.path(), name)?;
                std::fs::read(&path).map_err(|source| JobError::Read { path, source })
            }
        }
    }

    /// Copies a file the job left in its job folder to `dest` on this host.
    pub fn copy_file(&self, name: &str, dest: &Path) -> Result<(), JobError> {
        match &self.results {
            Results::Disk { image, .. } => Ok(disk::dump_file(image, name, dest)?),
            Results::Dir { dir } => {
                let path = existing(dir.path(), name)?;
                std::fs::copy(path, dest)
                    .map(|_| ())
                    .map_err(|source| JobError::Write {
                        path: dest.to_path_buf(),
                        source,
                    })
            }
        }
    }

    /// Returns the job disk image (nested mode only), valid while `self` lives.
    pub fn disk_image(&self) -> Option<&Path> {
        match &self.results {
            Results::Disk { image, .. } => Some(image),
            Results::Dir { .. } => None,
        }
    }

    /// Returns a one-line summary of the run.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "mode {}, {:?}, exit {}, {} tr{}, {:.1} s",
            self.mode,
            self.outcome,
            self.job_exit.map_or("none".to_string(), |c| c.to_string()),
            self.tries,
            if self.tries == 1 { "y" } else { "ies" },
            self.duration.as_secs_f64()
        );
        if let Some(t) = self.l1_init_after {
            s.push_str(&format!(", L1 init after {:.2} s", t.as_secs_f64()));
        }
        if let Some(t) = self.ready_after {
            s.push_str(&format!(", ready after {:.2} s", t.as_secs_f64()));
        }
        if let (Outcome::HostFailed, Some(code)) = (self.outcome, self.host_exit) {
            s.push_str(&format!(", compute host's QEMU exited with status {code}"));
        }
        s
    }

    /// Returns the last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> &str {
        tail_lines(&self.console, lines)
    }

    /// Returns what a failed job's report should show: the summary, where the whole
    /// console is, and the console's last 120 lines (where a failure usually is).
    pub fn failure_report(&self) -> String {
        format!(
            "{}\nwhole console: {}\n--- last lines of the console ---\n{}",
            self.summary(),
            self.console_log.display(),
            self.console_tail(120)
        )
    }
}

/// Returns the last `lines` lines of `text`.
pub(crate) fn tail_lines(text: &str, lines: usize) -> &str {
    if lines == 0 {
        return "";
    }
    let trimmed = text.trim_end_matches('\n');
    match trimmed.rmatch_indices('\n').nth(lines - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

/// Returns the path of the job file `name` in `dir`, if the job left it there.
fn existing(dir: &Path, name: &str) -> Result<PathBuf, JobError> {
    disk::check_name(name)?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(DiskError::NotFound {
            name: name.to_string(),
            image: dir.to_path_buf(),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_keeps_the_end() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 1), "c");
        assert_eq!(tail_lines("a\nb", 5), "a\nb");
        assert_eq!(tail_lines("a\nb", 0), "");
        assert_eq!(tail_lines("", 3), "");
    }

    #[test]
    fn builder_sets_fields() {
        let j = Job::new("n", "true")
            .file("/etc/hostname", "h")
            .timeout(Duration::from_secs(5))
            .ready("R", Duration::from_secs(2), 3)
            .network(true);
        assert!(j.network);
        assert!(!Job::new("m", "true").network);
        assert_eq!(j.files.len(), 1);
        assert_eq!(j.ready_marker.as_deref(), Some("R"));
        assert_eq!(j.retries, 3);
        assert_eq!(j.timeout, Duration::from_secs(5));
    }
}
