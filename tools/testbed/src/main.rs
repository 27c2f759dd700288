//! The `lego-testbed` command: run a job script, boot a vNode and run a command in it,
//! or say which mode the testbed would use here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lego_report::error_chain;
use lego_testbed::console::Stream;
use lego_testbed::paths;
use lego_testbed::qemu::{QemuConfig, TcgThreads};
use lego_testbed::vnode::{self, VnodeSpec};
use lego_testbed::{Job, JobOutput, ModeChoice, Outcome, Testbed, TestbedConfig};

/// Exit status when a run is killed at its timeout (as timeout(1) does).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when every try missed its ready marker.
const EXIT_NOT_READY: u8 = 125;
/// Exit status for the testbed's own failures.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "lego-testbed",
    version,
    about = "Runs LegoVMM on a compute host with KVM: this host (direct) or a nested QEMU TCG VM with an emulated AMD SVM CPU (nested)",
    after_help = "Mode: --mode, else $LEGO_TESTBED (auto|direct|nested), else `legovmm probe` (exit 0 = direct).\nExit status: the job's (run) or the guest command's (vnode); 124 on timeout, 125 when every try hung before its ready marker, 1 on testbed failure.\nConsole logs: <cache>/testbed/logs/<job>.console.log."
)]
struct Cli {
    /// The legovmm binary [default: $LEGOVMM_BIN, else <workspace>/target/{release,debug}/legovmm].
    #[arg(long, global = true, value_name = "PATH")]
    legovmm: Option<PathBuf>,
    /// The cache folder shared with lego-image [default: $LEGO_CACHE or <workspace>/.cache].
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Where to run: auto, direct or nested [default: $LEGO_TESTBED, else auto].
    #[arg(long, global = true, value_name = "MODE")]
    mode: Option<String>,
    /// Memory of the nested compute host, in MiB.
    #[arg(long, global = true, default_value_t = 2048, value_name = "MIB")]
    l1_memory: u32,
    /// vCPUs of the nested compute host (more than one makes QEMU's SVM emulation lose
    /// the compute host far more often; see the README).
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    l1_cpus: u32,
    /// Give the nested compute host a user-mode network: jobs reach this machine's
    /// 127.0.0.1 at $LEGO_HOST_ADDR (10.0.2.2; 127.0.0.1 in direct mode, network or not).
    #[arg(long, global = true)]
    network: bool,
    /// Do not stream the console to stderr.
    #[arg(long, global = true, conflicts_with = "progress")]
    quiet: bool,
    /// Instead of the whole console, print only progress lines for a person (phases,
    /// live figures, trouble), each with the time since the start; the console stays in
    /// the log.
    #[arg(long, global = true)]
    progress: bool,
    /// The nested compute host's emulated CPU (QEMU `-cpu`).
    #[arg(long, global = true, default_value = lego_testbed::qemu::CPU, value_name = "MODEL")]
    l1_cpu_model: String,
    /// How TCG runs the nested compute host's vCPUs.
    #[arg(long, global = true, value_enum, default_value_t = TcgThreads::Multi)]
    tcg_threads: TcgThreads,
    /// Extra kernel command line words for the nested compute host (e.g.
    /// `kvm_amd.vgif=0`: `kvm_amd.*` words become kvm-amd module parameters;
    /// `lego.thp=never|madvise|always` and `lego.shmem_thp=...` set its THP policy).
    #[arg(long, global = true, default_value = "", value_name = "WORDS")]
    l1_cmdline_extra: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a job script on the compute host and exit with its status.
    Run(RunArgs),
    /// Boot a vNode (the lego-image guest) with legovmm and run a command in it.
    Vnode(VnodeArgs),
    /// Print the mode the testbed would use here, and why.
    Mode,
}

#[derive(Args)]
struct RunArgs {
    /// The job script (run with sh in nested mode, bash in direct mode, in the job folder,
    /// with $LEGOVMM and $JOB_DIR set).
    #[arg(long, value_name = "FILE")]
    script: PathBuf,
    /// A file to put in the job folder under its own name; repeat for more.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Kill the job after this many seconds (including the compute host's boot).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    /// Retry a try whose console does not show this text within --ready-timeout.
    #[arg(long, value_name = "TEXT")]
    ready_marker: Option<String>,
    /// Seconds to wait for --ready-marker.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    ready_timeout: u64,
    /// Retries after tries that miss --ready-marker.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// After the job, copy this file from the job folder to --out; repeat for more.
    #[arg(long = "collect", value_name = "NAME")]
    collect: Vec<String>,
    /// Where --collect puts files.
    #[arg(long, default_value = ".", value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
struct VnodeArgs {
    /// vCPUs of the vNode.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u32,
    /// Memory of the vNode (e.g. 512M, 2G; a bare number is MiB).
    #[arg(long, default_value = "512M", value_name = "SIZE")]
    memory: String,
    /// A disk image for the vNode (/dev/vda); in nested mode it is copied in and the
    /// changed image is copied back after the run.
    #[arg(long, value_name = "PATH")]
    disk: Option<PathBuf>,
    /// Extra guest kernel command line words.
    #[arg(long, default_value = "", value_name = "TEXT")]
    cmdline_extra: String,
    /// Kill the run after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
    /// Seconds to wait for the guest's init before retrying (early hangs happen under
    /// QEMU's SVM emulation).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    ready_timeout: u64,
    /// Retries after a guest that did not come up.
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: u32,
    /// The command run in the guest with sh -c.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lego-testbed: {}", error_chain(e.as_ref()));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEGO_TESTBED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let legovmm_required = matches!(cli.command, Cmd::Vnode(_));
    let legovmm = match paths::locate_legovmm(cli.legovmm.as_deref()) {
        Ok(p) => Some(p),
        Err(e) if legovmm_required || cli.legovmm.is_some() => return Err(e.into()),
        Err(e) => {
            eprintln!("lego-testbed: {}; $LEGOVMM will be a stub", error_chain(&e));
            None
        }
    };
    let mut config = TestbedConfig::new(legovmm);
    if let Some(c) = cli.cache {
        config.cache = c;
    }
    if let Some(m) = &cli.mode {
        config.mode = m.parse::<ModeChoice>()?;
    }
    config.qemu = QemuConfig {
        memory_mib: cli.l1_memory,
        cpus: cli.l1_cpus.max(1),
        cpu_model: cli.l1_cpu_model.clone(),
        tcg_threads: cli.tcg_threads,
        extra_cmdline: cli.l1_cmdline_extra.clone(),
        ..QemuConfig::default()
    };
    config.stream = if cli.progress {
        Stream::Progress
    } else if cli.quiet {
        Stream::Off
    } else {
        Stream::All
    };
    config.network = cli.network;
    match cli.command {
        Cmd::Mode => {
            let tb = Testbed::new(config)?;
            println!("{}", tb.mode());
            println!("{}", tb.mode_reason());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(args) => run(config, args),
        Cmd::Vnode(args) => run_vnode(config, args),
    }
}

fn run(config: TestbedConfig, args: RunArgs) -> Result<ExitCode> {
    let script = std::fs::read_to_string(&args.script)
        .with_context(|| format!("could not read the script {}", args.script.display()))?;
    let mut job =
        Job::new(job_name(&args.script), script).timeout(Duration::from_secs(args.timeout));
    for f in &args.files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no file name", f.display()))?;
        job = job.file(f, name);
    }
    if let Some(m) = args.ready_marker {
        job = job.ready(m, Duration::from_secs(args.ready_timeout), args.retries);
    }
    if !args.collect.is_empty() {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("could not create {}", args.out.display()))?;
    }
    let tb = Testbed::new(config)?;
    let out = tb.run(&job)?;
    // Collect what there is even from a failed job (its logs say why); a file missing
    // from a job that succeeded fails the run.
    let mut missing = 0;
    for name in &args.collect {
        let dest = args.out.join(name);
        match out.copy_file(name, &dest) {
            Ok(()) => eprintln!("lego-testbed: collected {}", dest.display()),
            Err(e) => {
                missing += 1;
                eprintln!(
                    "lego-testbed: could not collect {name}: {}",
                    error_chain(&e)
                );
            }
        }
    }
    Ok(match out.outcome {
        Outcome::Completed if missing > 0 && out.job_exit == Some(0) => {
            ExitCode::from(EXIT_FAILURE)
        }
        Outcome::Completed => status(out.job_exit.unwrap_or(1)),
        _ => failure(&out),
    })
}

fn run_vnode(config: TestbedConfig, args: VnodeArgs) -> Result<ExitCode> {
    let image = vnode::guest_image(&config.cache)?;
    let spec = VnodeSpec {
        vcpus: args.vcpus,
        memory: args.memory,
        disk: args.disk.clone(),
        command: args.command.join(" "),
        extra_cmdline: args.cmdline_extra,
        timeout: Duration::from_secs(args.timeout),
        ready_timeout: Duration::from_secs(args.ready_timeout),
        retries: args.retries,
    };
    let job = vnode::job(&spec, &image)?;
    let retries = args.retries;
    let tb = Testbed::new(config)?;
    let out = tb.run(&job)?;
    if let (Some(disk), Some(_)) = (&args.disk, out.disk_image()) {
        if out.outcome == Outcome::Completed {
            write_back(&out, disk)?;
        }
    }
    if out.outcome != Outcome::Completed {
        return Ok(failure(&out));
    }
    match vnode::run_exit(&out.console) {
        Some(code) => {
            eprintln!("lego-testbed: the guest command exited {code}");
            Ok(status(code))
        }
        None if out.job_exit == Some(i32::from(EXIT_NOT_READY)) => {
            eprintln!(
                "lego-testbed: the guest never came up in {} tries; see {}",
                retries.saturating_add(1),
                out.console_log.display()
            );
            Ok(ExitCode::from(EXIT_NOT_READY))
        }
        None => {
            eprintln!(
                "lego-testbed: the guest printed no LEGO_RUN_EXIT (legovmm exited {}); see {}",
                out.job_exit.map_or("?".to_string(), |c| c.to_string()),
                out.console_log.display()
            );
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// Copies the vNode disk changed in the nested compute host back over the host's copy.
fn write_back(out: &JobOutput, disk: &Path) -> Result<()> {
    let tmp = disk.with_extension("testbed-tmp");
    out.copy_file(vnode::DISK_NAME, &tmp)
        .context("could not read the vNode disk back from the compute host")?;
    std::fs::rename(&tmp, disk).with_context(|| format!("could not replace {}", disk.display()))?;
    eprintln!(
        "lego-testbed: wrote the vNode disk back to {}",
        disk.display()
    );
    Ok(())
}

fn job_name(script: &Path) -> String {
    script
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".to_string())
}

fn status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE))
}

fn failure(out: &JobOutput) -> ExitCode {
    let (what, code) = match out.outcome {
        Outcome::TimedOut => ("timed out", EXIT_TIMEOUT),
        Outcome::NotReady => ("missed its ready marker on every try", EXIT_NOT_READY),
        Outcome::HostFailed => (
            "ended without the job's exit status (the compute host failed)",
            EXIT_FAILURE,
        ),
        Outcome::Silent => (
            "was killed: the compute host's console went silent (it hung)",
            EXIT_TIMEOUT,
        ),
        Outcome::Completed => return status(out.job_exit.unwrap_or(1)),
    };
    eprintln!(
        "lego-testbed: the job {what}; console in {}",
        out.console_log.display()
    );
    if let Some(false) = out.l1_kvm {
        eprintln!("lego-testbed: the compute host had no /dev/kvm");
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_vnode_command_after_dashes() {
        let cli =
            Cli::try_parse_from(["lego-testbed", "vnode", "--vcpus", "2", "--", "echo", "hi"])
                .unwrap();
        match cli.command {
            Cmd::Vnode(a) => {
                assert_eq!(a.vcpus, 2);
                assert_eq!(a.command, ["echo", "hi"]);
            }
            _ => panic!("not vnode"),
        }
    }
}
