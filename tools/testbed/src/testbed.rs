//! The testbed: runs jobs on a compute host with KVM, directly or in a nested QEMU VM,
//! retrying tries that hang before their ready marker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use crate::console::{self, ConsoleError, Ending, Stream, Watch, Watched};
use crate::disk::{self, DiskError};
use crate::job::{Job, JobOutput, Outcome, Results};
use crate::l1::{self, L1Assets, L1Error};
use crate::markers;
use crate::mode::{self, Mode, ModeChoice, ModeDecision, ModeError};
use crate::qemu::{self, QemuConfig, QemuError};

/// Errors from running jobs.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The mode override is invalid.
    #[error(transparent)]
    Mode(#[from] ModeError),
    /// L1's boot files could not be prepared.
    #[error(transparent)]
    L1(#[from] L1Error),
    /// QEMU is not usable.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// The job folder or disk could not be made.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The run could not be started or watched.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A folder could not be created.
    #[error("could not create {path}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How to set up the testbed.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// The cache folder shared with lego-image (`$LEGO_CACHE` or `<workspace>/.cache`).
    pub cache: PathBuf,
    /// The `legovmm` binary given to jobs as `$LEGOVMM`; with `None`, `$LEGOVMM` is a stub
    /// that fails, and the mode probe answers "nested".
    pub legovmm: Option<PathBuf>,
    /// The mode; `Auto` reads `$LEGO_TESTBED`, then probes.
    pub mode: ModeChoice,
    /// The compute host VM (nested mode).
    pub qemu: QemuConfig,
    /// Which console lines reach standard error as they arrive.
    pub stream: Stream,
    /// Give every job the compute host's network, as [`Job::network`] does for one job.
    pub network: bool,
}

impl TestbedConfig {
    /// The defaults: the default cache, automatic mode, a 2-vCPU 2 GiB compute host.
    pub fn new(legovmm: Option<PathBuf>) -> Self {
        Self {
            cache: crate::paths::default_cache(),
            legovmm,
            mode: ModeChoice::Auto,
            qemu: QemuConfig::default(),
            stream: Stream::Off,
            network: false,
        }
    }
}

/// Runs jobs on a compute host with KVM.
#[derive(Debug)]
pub struct Testbed {
    config: TestbedConfig,
    decision: ModeDecision,
    l1: Mutex<Option<L1Assets>>,
}

impl Testbed {
    /// Decides the mode (printing it and why on standard error).
    pub fn new(config: TestbedConfig) -> Result<Self, TestbedError> {
        let decision = mode::decide(config.mode, config.legovmm.as_deref())?;
        eprintln!("lego-testbed: mode {}: {}", decision.mode, decision.reason);
        Ok(Self {
            config,
            decision,
            l1: Mutex::new(None),
        })
    }

    /// Returns where jobs run.
    pub fn mode(&self) -> Mode {
        self.decision.mode
    }

    /// Returns why that mode was chosen.
    pub fn mode_reason(&self) -> &str {
        &self.decision.reason
    }

    /// Returns the configuration.
    pub fn config(&self) -> &TestbedConfig {
        &self.config
    }

    /// Nested mode: fetches and builds L1's boot files (once per testbed) and returns
    /// them; direct mode: returns `None`.
    pub fn prepare(&self) -> Result<Option<L1Assets>, TestbedError> {
        if self.mode() == Mode::Direct {
            return Ok(None);
        }
        self.l1_assets().map(Some)
    }

    /// Builds (once) and returns L1's boot files.
    fn l1_assets(&self) -> Result<L1Assets, TestbedError> {
        let mut guard = self.l1.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = guard.as_ref() {
            return Ok(a.clone());
        }
        self.config.qemu.check()?;
        let assets = l1::prepare(&self.config.cache)?;
        eprintln!(
            "lego-testbed: compute host kernel {} and initramfs {} ({} KiB{})",
            assets.kernel_version,
            assets.initramfs.display(),
            assets.initramfs_bytes / 1024,
            if assets.rebuilt { ", rebuilt" } else { "" }
        );
        *guard = Some(assets.clone());
        Ok(assets)
    }

    /// Returns the QEMU command line for a job disk at `disk` (nested mode), for reports.
    pub fn qemu_command_line(&self, disk: &Path) -> Result<Option<String>, TestbedError> {
        Ok(self
            .prepare()?
            .map(|a| qemu::describe(&self.config.qemu.command(&a.kernel, &a.initramfs, disk))))
    }

    /// Runs a job: stages its files, runs its script on the compute host, and retries
    /// tries that miss the ready marker, up to `job.retries` times.
    pub fn run(&self, job: &Job) -> Result<JobOutput, TestbedError> {
        let logs = self.config.cache.join("testbed").join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| TestbedError::Io {
            path: logs.clone(),
            source,
        })?;
        let log = logs.join(format!("{}.console.log", file_stem(&job.name)));
        let start = Instant::now();
        let tries = 1 + job.retries;
        let mut staged = match self.mode() {
            Mode::Nested => Some(self.stage_nested(job)?),
            Mode::Direct => None,
        };
        let mut attempt = 1;
        loop {
            eprintln!(
                "lego-testbed: job {:?}, try {attempt} of {tries}, {} mode",
                job.name,
                self.mode()
            );
            let (watched, results) = match staged.take() {
                Some(dir) => {
                    let (w, dir) = self.try_nested(job, &log, dir, attempt)?;
                    let image = dir.path().join("disk.img");
                    (w, Results::Disk { image, _dir: dir })
                }
                None => {
                    let (w, dir) = self.try_direct(job, &log, attempt)?;
                    (w, Results::Dir { dir })
                }
            };
            let retry_because = if attempt >= tries {
                None
            } else if watched.ending == Ending::NotReady {
                Some(format!(
                    "missed the ready marker {:?} within {:.0} s; killed it",
                    job.ready_marker.as_deref().unwrap_or(""),
                    job.ready_timeout.as_secs_f64()
                ))
            } else if self.host_died(&watched) || watched.ending == Ending::Silent {
                // The compute host (an emulated machine under TCG) died under the job: an
                // infrastructure failure, not the job's. Each try gets a fresh job disk.
                let how = match watched.ending {
                    Ending::Silent => "its console went silent: killed as hung".to_string(),
                    e => format!("QEMU exited with {e:?} before the job's status"),
                };
                Some(format!(
                    "lost its compute host ({how}); last console lines:\n{}",
                    crate::job::tail_lines(&watched.console, 40)
                ))
            } else {
                None
            };
            if let Some(why) = retry_because {
                let kept = log.with_extension(format!("try{attempt}.log"));
                let _ = std::fs::copy(&log, &kept);
                if self.config.stream == Stream::Progress {
                    let first = why.lines().next().unwrap_or_default();
                    crate::progress::say(
                        watched.duration,
                        &format!(
                            "testbed: try {attempt} {first}; retrying (console kept in {})",
                            kept.display()
                        ),
                    );
                }
                eprintln!(
                    "lego-testbed: job {:?} try {attempt} {why}\nlego-testbed: its console is kept in {}; retrying",
                    job.name,
                    kept.display()
                );
                if let Results::Disk { _dir, .. } = results {
                    staged = Some(_dir);
                }
                attempt += 1;
                continue;
            }
            let out = self.output(watched, results, attempt, start, log);
            eprintln!("lego-testbed: job {:?}: {}", job.name, out.summary());
            return Ok(out);
        }
    }

    /// Returns true if a nested try's compute host ended without reporting the job's status.
    fn host_died(&self, w: &Watched) -> bool {
        self.mode() == Mode::Nested
            && matches!(w.ending, Ending::Exited(_))
            && markers::last_value(&w.console, markers::L1_JOB_EXIT).is_none()
    }

    /// Builds the staging folder of a nested job: `root/job`, `root/.lego`.
    fn stage_nested(&self, job: &Job) -> Result<tempfile::TempDir, TestbedError> {
        self.l1_assets()?;
        let dir = temp_dir("lego-testbed-")?;
        let root = dir.path().join("root");
        disk::stage_job(&root.join(disk::JOB_DIR), &job.script, &job.files)?;
        // The job's own programs (the cluster's daemons) get their libraries staged too.
        let binaries: Vec<PathBuf> = job
            .files
            .iter()
            .map(|(host, _)| host.clone())
            .filter(|p| disk::is_elf(p))
            .collect();
        disk::stage_vmm(&root, self.config.legovmm.as_deref(), &binaries)?;
        Ok(dir)
    }

    /// One nested try: a fresh disk image from the staging folder, then QEMU.
    fn try_nested(
        &self,
        job: &Job,
        log: &Path,
        dir: tempfile::TempDir,
        attempt: u32,
    ) -> Result<(Watched, tempfile::TempDir), TestbedError> {
        let assets = self.l1_assets()?;
        let image = dir.path().join("disk.img");
        disk::stage_try(&dir.path().join("root"), attempt)?;
        disk::make_image(&dir.path().join("root"), &image, job.disk_extra_mib)?;
        let mut qemu = self.config.qemu.clone();
        qemu.network |= job.network || self.config.network;
        let monitor = dir.path().join("monitor.sock");
        qemu.monitor = Some(monitor.clone());
        tracing::debug!(
            "compute host: {}",
            qemu::describe(&qemu.command(&assets.kernel, &assets.initramfs, &image))
        );
        let mut watch = self.watch(job, log);
        watch.timed_markers = vec![markers::L1_INIT.to_string()];
        // L1's /init prints a heartbeat: a silent console is a hung compute host, found in
        // minutes instead of at the job's timeout.
        watch.silence_timeout = Some(std::time::Duration::from_secs(qemu::SILENCE_LIMIT_SECS));
        let debug_log = dir.path().join("qemu-debug.log");
        qemu.debug_log = Some(debug_log.clone());
        let cmd = qemu.command(&assets.kernel, &assets.initramfs, &image);
        let mut w = console::run_with_dump(cmd, &watch, &|| qemu::dump_registers(&monitor))?;
        if self.host_died(&w) {
            // A compute host that ends by itself without the job's status usually reset
            // (a triple fault, with -no-reboot): QEMU logged its last CPU state.
            let text = std::fs::read_to_string(&debug_log).unwrap_or_default();
            let note = format!(
                "LEGO_TESTBED_HOST_LOG QEMU's log of resets and guest errors (last lines):\n{}",
                crate::job::tail_lines(&text, 60)
            );
            append_to_log(log, &note);
            w.console.push_str(&note);
            w.console.push('\n');
        }
        Ok((w, dir))
    }

    /// One direct try: a job folder in a temporary folder, then bash.
    fn try_direct(
        &self,
        job: &Job,
        log: &Path,
        attempt: u32,
    ) -> Result<(Watched, tempfile::TempDir), TestbedError> {
        let dir = temp_dir("lego-testbed-job-")?;
        disk::stage_job(dir.path(), &job.script, &job.files)?;
        let legovmm = match &self.config.legovmm {
            Some(p) => {
                disk::stage_shell_lib(dir.path())?;
                p.clone()
            }
            None => {
                disk::stage_vmm(dir.path(), None, &[])?;
                dir.path().join(".lego/bin/legovmm")
            }
        };
        let mut cmd = Command::new("bash");
        cmd.arg(disk::JOB_SCRIPT)
            .current_dir(dir.path())
            .env("LEGOVMM", legovmm)
            .env("JOB_DIR", dir.path())
            .env(
                crate::shell::LIB_ENV,
                dir.path().join(crate::shell::LIB_PATH),
            )
            .env("LEGO_TESTBED_MODE", "direct")
            .env("LEGO_TESTBED_TRY", attempt.to_string())
            .env("LEGO_HOST_ADDR", "127.0.0.1");
        let w = console::run(cmd, &self.watch(job, log))?;
        Ok((w, dir))
    }

    fn watch(&self, job: &Job, log: &Path) -> Watch {
        Watch {
            timeout: job.timeout,
            ready_marker: job.ready_marker.clone(),
            ready_timeout: job.ready_timeout,
            timed_markers: Vec::new(),
            stream: self.config.stream.clone(),
            log: Some(log.to_path_buf()),
            silence_timeout: None,
        }
    }

    fn output(
        &self,
        w: Watched,
        results: Results,
        tries: u32,
        start: Instant,
        log: PathBuf,
    ) -> JobOutput {
        let nested = self.mode() == Mode::Nested;
        let host_exit = match (w.ending, nested) {
            (Ending::Exited(code), true) => Some(code),
            _ => None,
        };
        let (outcome, job_exit) = match (w.ending, nested) {
            (Ending::TimedOut, _) => (Outcome::TimedOut, None),
            (Ending::Silent, _) => (Outcome::Silent, None),
            (Ending::NotReady, _) => (Outcome::NotReady, None),
            (Ending::Exited(code), false) => (Outcome::Completed, Some(code)),
            (Ending::Exited(_), true) => {
                match markers::last_value(&w.console, markers::L1_JOB_EXIT) {
                    Some(code) => (Outcome::Completed, Some(code)),
                    None => (Outcome::HostFailed, None),
                }
            }
        };
        let l1_kvm = if !nested {
            None
        } else if w.console.contains(markers::L1_KVM_YES) {
            Some(true)
        } else if w.console.contains(markers::L1_KVM_NO) {
            Some(false)
        } else {
            None
        };
        let l1_net = if !nested {
            None
        } else if w.console.contains(markers::L1_NET_UP) {
            Some(true)
        } else if w.console.contains(markers::L1_NET_DOWN) {
            Some(false)
        } else {
            None
        };
        let l1_init_after = w
            .seen
            .iter()
            .find(|(m, _)| m == markers::L1_INIT)
            .map(|(_, t)| *t);
        JobOutput {
            mode: self.mode(),
            outcome,
            console: w.console,
            job_exit,
            host_exit,
            tries,
            duration: w.duration,
            total_duration: start.elapsed(),
            l1_init_after,
            l1_kvm,
            l1_net,
            ready_after: w.ready_after,
            console_log: log,
            results,
        }
    }
}

/// Appends `text` and a newline to the console log at `path` (best effort).
fn append_to_log(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "{text}");
    }
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, TestbedError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| TestbedError::Io {
            path: std::env::temp_dir(),
            source,
        })
}

/// Turns a job name into a safe file name stem.
fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "job".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn direct() -> Testbed {
        let dir = std::env::temp_dir().join("lego-testbed-unit-cache");
        let mut cfg = TestbedConfig::new(None);
        cfg.cache = dir;
        cfg.mode = ModeChoice::Direct;
        Testbed::new(cfg).unwrap()
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("a b/c"), "a_b_c");
        assert_eq!(file_stem(""), "job");
    }

    #[test]
    fn direct_job_returns_exit_and_files() {
        let tb = direct();
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), "input").unwrap();
        let job = Job::new(
            "unit-direct",
            "cat in.txt > out.txt; echo \"$LEGO_TESTBED_MODE host=$LEGO_HOST_ADDR\"; $LEGOVMM; echo vmm=$?; exit 5",
        )
        .file(src.path(), "in.txt")
        .timeout(Duration::from_secs(20));
        let out = tb.run(&job).unwrap();
        assert_eq!(out.outcome, Outcome::Completed);
        assert_eq!(out.job_exit, Some(5));
        assert_eq!(out.read_file("out.txt").unwrap(), b"input");
        let err = out.read_file("absent").unwrap_err();
        assert!(err.to_string().contains("left no file"), "{err}");
        assert!(
            out.console.contains("direct host=127.0.0.1"),
            "{}",
            out.console
        );
        assert!(out.console.contains("vmm=127"), "{}", out.console);
    }

    #[test]
    fn lego_vnode_restarts_a_guest_that_hangs() {
        let tb = direct();
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-legovmm");
        // First start hangs silently; the second boots, runs and exits 0.
        std::fs::write(
            &fake,
            "#!/bin/sh\nif [ ! -e started ]; then touch started; sleep 1000; fi\n\
             echo LEGO_GUEST_READY; echo \"args: $*\"; echo LEGO_RUN_EXIT=4; echo bye >&2\n",
        )
        .unwrap();
        let mut cfg = tb.config().clone();
        cfg.legovmm = Some(fake.clone());
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let tb = Testbed::new(cfg).unwrap();
        let job = Job::new(
            "unit-lego-vnode",
            ". \"$LEGO_TESTBED_LIB\"\nlego_vnode g 3 2 --vcpus 2 --cmdline 'a b'\n",
        )
        .timeout(Duration::from_secs(60));
        let out = tb.run(&job).unwrap();
        assert_eq!(out.job_exit, Some(0), "{}", out.console);
        assert!(
            out.console.contains("LEGO_VNODE_HANG name=g try=1"),
            "{}",
            out.console
        );
        assert!(
            out.console.contains("args: run --vcpus 2 --cmdline a b"),
            "{}",
            out.console
        );
        assert!(out
            .console
            .contains("LEGO_VNODE_DONE name=g exit=0 tries=2"));
        assert_eq!(crate::vnode::run_exit(&out.console), Some(4));
        assert_eq!(out.read_file("g.tries").unwrap(), b"2\n");
        assert!(
            String::from_utf8_lossy(&out.read_file("g.console").unwrap())
                .contains("LEGO_RUN_EXIT=4")
        );
    }

    /// A fake legovmm whose first guest triple-faults after coming up, and whose second runs.
    fn triple_fault_once(dir: &Path) -> Testbed {
        let fake = dir.join("fake-legovmm");
        std::fs::write(
            &fake,
            "#!/bin/sh\nif [ ! -e crashed ]; then touch crashed; echo LEGO_GUEST_READY; \
             echo 'legovmm: the guest crashed: vCPU 0 triple-faulted (KVM_EXIT_SHUTDOWN)' >&2; \
             exit 3; fi\necho LEGO_GUEST_READY; echo LEGO_RUN_EXIT=0\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut cfg = direct().config().clone();
        cfg.legovmm = Some(fake);
        Testbed::new(cfg).unwrap()
    }

    #[test]
    fn lego_vnode_retries_a_triple_fault_only_on_the_nested_testbed() {
        let dir = tempfile::tempdir().unwrap();
        let tb = triple_fault_once(dir.path());
        let nested = Job::new(
            "unit-triple-fault-nested",
            ". \"$LEGO_TESTBED_LIB\"\nexport LEGO_TESTBED_MODE=nested\nlego_vnode g 2 5 --x\n",
        )
        .timeout(Duration::from_secs(60));
        let out = tb.run(&nested).unwrap();
        assert_eq!(out.job_exit, Some(0), "{}", out.console);
        assert!(
            out.console.contains("LEGO_VNODE_TRIPLE_FAULT name=g try=1"),
            "{}",
            out.console
        );
        assert!(out
            .console
            .contains("LEGO_VNODE_DONE name=g exit=0 tries=2"));
        assert!(out.read_file("g.try1.console").is_ok());

        let dir = tempfile::tempdir().unwrap();
        let tb = triple_fault_once(dir.path());
        let direct = Job::new(
            "unit-triple-fault-direct",
            ". \"$LEGO_TESTBED_LIB\"\nlego_vnode g 2 5 --x\n",
        )
        .timeout(Duration::from_secs(60));
        let out = tb.run(&direct).unwrap();
        assert_eq!(out.job_exit, Some(3), "{}", out.console);
        assert!(out
            .console
            .contains("LEGO_VNODE_DONE name=g exit=3 tries=1"));
    }

    #[test]
    fn direct_job_retries_a_missed_ready_marker() {
        let tb = direct();
        let job = Job::new("unit-retry", "sleep 100")
            .timeout(Duration::from_secs(20))
            .ready("NEVER", Duration::from_millis(200), 2);
        let out = tb.run(&job).unwrap();
        assert_eq!(out.outcome, Outcome::NotReady);
        assert_eq!(out.tries, 3);
    }
}
