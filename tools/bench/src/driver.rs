//! What the drivers (`boot-bench`, `swap-bench`, `net-bench`, `soak`) share: the command
//! line options for QEMU, the guest image, the timer, the cache and where to run
//! ([`CommonArgs`]), gathering the files every run needs from them ([`CommonArgs::prepare`]),
//! the compute host's job, keeping what a job left, and the exit status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lego_testbed::console::Stream;
use lego_testbed::{Job, JobOutput, ModeChoice, Testbed, TestbedConfig};

use crate::{assets, report, results, script};

/// vCPUs of the compute host the benchmarks run on (their tables say so).
pub const BENCH_L1_CPUS: u32 = 2;

/// The options both drivers take, flattened into each one's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The QEMU binary run as the L2 VMM.
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// QEMU's machine (-M), e.g. add `,rtc=off` to spare the guest its RTC probe.
    #[arg(long, default_value = script::DEFAULT_QEMU_MACHINE)]
    pub qemu_machine: String,
    /// QEMU's CPU model (-cpu), e.g. `host,pmu=off`.
    #[arg(long, default_value = script::DEFAULT_QEMU_CPU)]
    pub qemu_cpu: String,
    /// QEMU's firmware.
    #[arg(long, default_value = lego_testbed::qemu::DEFAULT_BIOS)]
    pub qboot: PathBuf,
    /// A prebuilt static lego-guest-tools (the timer) instead of building it.
    #[arg(long)]
    pub guest_tools: Option<PathBuf>,
    /// Where to build the static timer [default: $CARGO_TARGET_DIR/guest-tools-static,
    /// else <cache>/guest-tools-target].
    #[arg(long)]
    pub tools_target: Option<PathBuf>,
    /// The cache shared with lego-image and the testbed [default: $LEGO_CACHE or
    /// <workspace>/.cache].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Rebuild the guest image even if one is in the cache.
    #[arg(long)]
    pub rebuild_image: bool,
    /// Where to keep the report, the results and the consoles [default:
    /// <cache>/bench/<benchmark>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to run: auto, direct or nested [default: $LEGO_TESTBED, else probe].
    #[arg(long)]
    pub mode: Option<ModeChoice>,
    /// Extra kernel command line words for the nested compute host. The default leaves it
    /// as Debian configures a host (e.g. no huge pages for shared memory); a report made
    /// with `lego.shmem_thp=advise` (a host tuned for VMs) must say so in its rows.
    #[arg(long, default_value = "")]
    pub l1_cmdline_extra: String,
    /// vCPUs of the nested compute host. The tables so far were measured on 2 (and retry
    /// what QEMU's SVM emulation loses with 2); 1 loses nothing (BENCHMARKS.md, testbed soak)
    /// but is slower: a report says which it used.
    #[arg(long, default_value_t = BENCH_L1_CPUS, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub l1_cpus: u32,
}

/// What [`CommonArgs::prepare`] gathered.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Where the report, the results and the consoles go (created).
    pub out_dir: PathBuf,
    /// The guest image.
    pub guest: assets::Guest,
    /// The legovmm to measure.
    pub legovmm: PathBuf,
    /// The static timer.
    pub timer: PathBuf,
    /// The testbed's configuration: the cache, legovmm and the mode set; the caller adds
    /// the rest (console streaming, the compute host's size).
    pub config: TestbedConfig,
}

/// Errors of a driver.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file a run needs is missing or could not be built.
    #[error(transparent)]
    Assets(#[from] assets::AssetsError),
    /// A QEMU option is unfit for the job script.
    #[error(transparent)]
    Script(#[from] script::ScriptError),
    /// The testbed could not be set up or could not run the job.
    #[error(transparent)]
    Testbed(#[from] lego_testbed::TestbedError),
    /// The guest's command line could not be built.
    #[error(transparent)]
    Vnode(#[from] lego_testbed::vnode::VnodeError),
    /// The job's results do not parse.
    #[error(transparent)]
    Results(#[from] results::ResultsError),
    /// The options do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The job left no results file.
    #[error("the job left no results (see the console log {console})")]
    NoResults {
        /// Why the results file could not be had.
        source: lego_testbed::JobError,
        /// The job's console log.
        console: PathBuf,
    },
    /// A file given as input could not be read.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file or folder of the output could not be written.
    #[error("could not write {path}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl CommonArgs {
    /// Checks the QEMU options, creates the output folder (`out`, else
    /// `<cache>/bench/<benchmark>`) and gathers the guest image, legovmm (`legovmm`, else
    /// the default search of [`assets::legovmm`]) and the timer, building what is missing.
    pub fn prepare(&self, benchmark: &str, legovmm: Option<&Path>) -> Result<Prepared, BenchError> {
        script::check_qemu_value("machine", &self.qemu_machine)?;
        script::check_qemu_value("CPU model", &self.qemu_cpu)?;
        let cache = self
            .cache
            .clone()
            .unwrap_or_else(lego_testbed::paths::default_cache);
        let out_dir = self
            .out
            .clone()
            .unwrap_or_else(|| cache.join("bench").join(benchmark));
        std::fs::create_dir_all(&out_dir).map_err(|source| BenchError::Write {
            path: out_dir.clone(),
            source,
        })?;
        let tools_target = self
            .tools_target
            .clone()
            .unwrap_or_else(|| assets::default_tools_target(&cache));

        let guest = assets::guest(&cache, self.rebuild_image)?;
        let legovmm = assets::legovmm(legovmm)?;
        let timer = assets::timer(self.guest_tools.as_deref(), &tools_target)?;

        let mut config = TestbedConfig::new(Some(legovmm.clone()));
        config.cache = cache;
        config.qemu.extra_cmdline = self.l1_cmdline_extra.clone();
        // The benchmarks' tables were measured on a 2-vCPU compute host; they keep it, and
        // retry what the emulation loses (the testbed's default is 1 vCPU, for reliability).
        config.qemu.cpus = self.l1_cpus;
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        Ok(Prepared {
            out_dir,
            guest,
            legovmm,
            timer,
            config,
        })
    }
}

/// The setups chosen, each once, in the order first given; choosing none is a usage error.
pub fn distinct<T: Copy + PartialEq>(chosen: &[T]) -> Result<Vec<T>, BenchError> {
    let mut setups = Vec::new();
    for s in chosen {
        if !setups.contains(s) {
            setups.push(*s);
        }
    }
    if setups.is_empty() {
        return Err(BenchError::Usage("no setup to run".into()));
    }
    Ok(setups)
}

/// What of the compute host's console a run shows on standard error: nothing (`quiet`),
/// all of it (`stream`), or progress lines (the default).
pub fn stream_choice(quiet: bool, stream: bool) -> Stream {
    if quiet {
        Stream::Off
    } else if stream {
        Stream::All
    } else {
        Stream::Progress
    }
}

/// The compute host's job `name`: runs `script` with `files` staged, given 10 minutes plus
/// `run_timeout_secs` for each of its `tries`, and ready once the script says it started.
pub fn nested_job(
    name: &str,
    script: String,
    files: Vec<(PathBuf, String)>,
    tries: u64,
    run_timeout_secs: u64,
) -> Job {
    let mut job = Job::new(name, script)
        .timeout(std::time::Duration::from_secs(
            600 + tries * run_timeout_secs,
        ))
        .ready(script::START_MARKER, std::time::Duration::from_secs(300), 1);
    for (path, name) in files {
        job = job.file(path, name);
    }
    job
}

/// The files each try leaves: `<setup>-<round>-<try>.console` followed by each of
/// `suffixes` (`""` for the console itself).
pub fn try_files<'a>(
    tries: impl IntoIterator<Item = &'a results::TryResult> + 'a,
    suffixes: &'a [&'a str],
) -> impl Iterator<Item = String> + 'a {
    tries.into_iter().flat_map(move |t| {
        let base = format!("{}-{}-{}.console", t.vmm, t.round, t.attempt);
        suffixes.iter().map(move |suffix| format!("{base}{suffix}"))
    })
}

/// The exit status of `benchmark`'s run: 0 when every setup had a clean run, 1 (saying
/// `incomplete`) when one had none, 2 (saying why) when the run failed.
pub fn exit(benchmark: &str, result: Result<bool, BenchError>, incomplete: &str) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{benchmark}: {incomplete}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{benchmark}: error: {}", lego_report::error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// Removes the consoles and logs an earlier run left in `out_dir` (a try that did not run
/// this time must not show an old file): each `<setup>-*.console*` of the `setups` named, the
/// compute host's `l1.console.log`, and the files named in `others`.
pub fn remove_stale(out_dir: &Path, setups: &[&str], others: &[&str]) {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours =
            setups.iter().any(|s| name.starts_with(&format!("{s}-"))) && name.contains(".console");
        if ours || name == "l1.console.log" || others.contains(&name.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `text` to `path`.
pub fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the results file `name` the job left, keeps a copy in `out_dir` and returns it.
pub fn keep_results(output: &JobOutput, name: &str, out_dir: &Path) -> Result<String, BenchError> {
    let text = output
        .read_file(name)
        .map_err(|source| BenchError::NoResults {
            source,
            console: output.console_log.clone(),
        })?;
    let text = String::from_utf8_lossy(&text).into_owned();
    write(&out_dir.join(name), &text)?;
    Ok(text)
}

/// Copies the job files `names` (consoles, logs: for analysis, so a missing one is not an
/// error) and the compute host's console log (as `l1.console.log`) to `out_dir`.
pub fn keep_consoles(output: &JobOutput, names: impl IntoIterator<Item = String>, out_dir: &Path) {
    for name in names {
        let _ = output.copy_file(&name, &out_dir.join(&name));
    }
    let _ = std::fs::copy(&output.console_log, out_dir.join("l1.console.log"));
}

/// The report's lines on how it was made: this driver's command line and the testbed's mode
/// and run.
pub fn provenance(testbed: &Testbed, output: &JobOutput) -> String {
    format!(
        "\nCommand: `{}`\n\nTestbed: {}; {}.\n",
        report::invocation(),
        testbed.mode_reason(),
        output.summary()
    )
}

/// Writes the report `md` to `out_dir/report.md`, prints it on standard output and tells
/// (on standard error, as `benchmark`) where everything is.
pub fn keep_report(benchmark: &str, out_dir: &Path, md: &str) -> Result<(), BenchError> {
    write(&out_dir.join("report.md"), md)?;
    println!("{md}");
    eprintln!(
        "{benchmark}: report, results and consoles in {}",
        out_dir.display()
    );
    Ok(())
}
