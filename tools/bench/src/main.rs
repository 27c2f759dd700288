//! `boot-bench`: boot time and memory overhead of legovmm against QEMU microvm, measured
//! side by side in one compute host of the testbed. See the crate documentation.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lego_bench::script::{self, Plan, RESULTS_FILE, START_MARKER, TRACE_FILE, VMMS};
use lego_bench::{assets, report, results};
use lego_testbed::{Job, ModeChoice, Testbed, TestbedConfig};

/// Boot the same guest with legovmm and QEMU microvm, interleaved, in one compute host,
/// and report the time to the guest's ready marker, the time to the VMM's exit and the
/// VMM's peak resident memory beyond guest RAM (VmRSS - RssShmem).
#[derive(Debug, Parser)]
#[command(name = "boot-bench", version, about)]
struct Cli {
    /// Measured boots per VMM.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Retries of a boot whose guest never prints its ready marker (early 2-vCPU hangs
    /// under QEMU's SVM emulation).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Seconds to wait for the ready marker before a try is killed and retried.
    #[arg(long, default_value_t = 90)]
    ready_timeout: u64,
    /// Seconds one try may take in all.
    #[arg(long, default_value_t = 240)]
    boot_timeout: u64,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=1536))]
    memory_mib: u32,
    /// The command the guest's init runs before powering off.
    #[arg(long, default_value = "true")]
    guest_command: String,
    /// Extra guest kernel command line words, for both VMMs (e.g.
    /// `initcall_blacklist=cmos_init` to skip the RTC probe).
    #[arg(long, default_value = "")]
    guest_cmdline_extra: String,
    /// Memory sampling period in milliseconds.
    #[arg(long, default_value_t = 20)]
    sample_ms: u64,
    /// Skip the trace boots (one per VMM, legovmm at debug log level, the guest printing
    /// its uptime and kernel log) and the start-up timings, which show where the time goes.
    #[arg(long)]
    no_trace: bool,
    /// The legovmm binary [default: <workspace>/target/release/legovmm].
    #[arg(long)]
    legovmm: Option<PathBuf>,
    /// The QEMU binary run as the L2 VMM.
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's machine (-M), e.g. add `,rtc=off` to spare the guest its RTC probe.
    #[arg(long, default_value = script::DEFAULT_QEMU_MACHINE)]
    qemu_machine: String,
    /// QEMU's CPU model (-cpu), e.g. `host,pmu=off`.
    #[arg(long, default_value = script::DEFAULT_QEMU_CPU)]
    qemu_cpu: String,
    /// QEMU's firmware.
    #[arg(long, default_value = lego_testbed::qemu::DEFAULT_BIOS)]
    qboot: PathBuf,
    /// A prebuilt static lego-guest-tools (the timer) instead of building it.
    #[arg(long)]
    guest_tools: Option<PathBuf>,
    /// Where to build the static timer [default: $CARGO_TARGET_DIR/guest-tools-static,
    /// else <cache>/guest-tools-target].
    #[arg(long)]
    tools_target: Option<PathBuf>,
    /// The cache shared with lego-image and the testbed [default: $LEGO_CACHE or
    /// <workspace>/.cache].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Rebuild the guest image even if one is in the cache.
    #[arg(long)]
    rebuild_image: bool,
    /// Where to keep the report, the results and the consoles [default: <cache>/bench/boot].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to run: auto, direct or nested [default: $LEGO_TESTBED, else probe].
    #[arg(long)]
    mode: Option<ModeChoice>,
    /// Stream the compute host's console to standard error.
    #[arg(long)]
    stream: bool,
}

/// Errors of the driver itself.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Assets(#[from] assets::AssetsError),
    #[error(transparent)]
    Testbed(#[from] lego_testbed::TestbedError),
    #[error(transparent)]
    Vnode(#[from] lego_testbed::vnode::VnodeError),
    #[error(transparent)]
    Results(#[from] results::ResultsError),
    #[error(transparent)]
    Script(#[from] script::ScriptError),
    #[error("the job left no results ({0}); see the console log {1}")]
    NoResults(lego_testbed::JobError, PathBuf),
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn run(cli: Cli) -> Result<bool, BenchError> {
    let cache = cli
        .cache
        .clone()
        .unwrap_or_else(lego_testbed::paths::default_cache);
    let out_dir = cli.out.clone().unwrap_or_else(|| cache.join("bench/boot"));
    std::fs::create_dir_all(&out_dir).map_err(|source| BenchError::Write {
        path: out_dir.clone(),
        source,
    })?;
    let tools_target = cli
        .tools_target
        .clone()
        .unwrap_or_else(|| assets::default_tools_target(&cache));

    script::check_qemu_value("machine", &cli.qemu_machine)?;
    script::check_qemu_value("CPU model", &cli.qemu_cpu)?;
    let guest = assets::guest(&cache, cli.rebuild_image)?;
    let legovmm = assets::legovmm(cli.legovmm.as_deref())?;
    let timer = assets::timer(cli.guest_tools.as_deref(), &tools_target)?;
    let qemu_files = assets::qemu(&cli.qemu, &cli.qboot)?;
    eprintln!(
        "boot-bench: legovmm {}, QEMU {} ({} files), timer {}, guest {}",
        legovmm.display(),
        cli.qemu.display(),
        qemu_files.len(),
        timer.display(),
        guest.kernel.display()
    );

    let extra = format!("quiet {}", cli.guest_cmdline_extra.trim());
    let plan = Plan {
        runs: cli.runs,
        tries: cli.retries.saturating_add(1),
        ready_timeout_secs: cli.ready_timeout.max(1),
        boot_timeout_secs: cli.boot_timeout.max(cli.ready_timeout + 1),
        vcpus: cli.vcpus,
        memory_mib: cli.memory_mib,
        cmdline: lego_testbed::vnode::guest_cmdline(&cli.guest_command, &extra)?,
        trace_cmdline: (!cli.no_trace)
            .then(|| lego_testbed::vnode::guest_cmdline(script::TRACE_COMMAND, &extra))
            .transpose()?,
        sample_ms: cli.sample_ms.max(1),
        qemu_machine: cli.qemu_machine.clone(),
        qemu_cpu: cli.qemu_cpu.clone(),
    };
    let boots = u64::from(plan.runs * 2 + 2) * u64::from(plan.tries);
    let mut job = Job::new("boot-bench", plan.render())
        .file(&guest.kernel, script::files::KERNEL)
        .file(&guest.initramfs, script::files::INITRAMFS)
        .file(&timer, script::files::TIMER)
        .timeout(Duration::from_secs(300 + boots * plan.boot_timeout_secs))
        .ready(START_MARKER, Duration::from_secs(300), 1);
    for (path, name) in qemu_files {
        job = job.file(path, name);
    }

    let mut config = TestbedConfig::new(Some(legovmm.clone()));
    config.cache = cache.clone();
    config.stream_console = cli.stream;
    if let Some(mode) = cli.mode {
        config.mode = mode;
    }
    let testbed = Testbed::new(config)?;
    let output = testbed.run(&job)?;
    eprintln!("boot-bench: {}", output.summary());

    let text = output
        .read_file(RESULTS_FILE)
        .map_err(|e| BenchError::NoResults(e, output.console_log.clone()))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    write(&out_dir.join(RESULTS_FILE), &text)?;
    let tries = results::parse(&text)?;
    // The trace boots are optional: a missing file just means none ran.
    let trace_text = match output.read_file(TRACE_FILE) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(_) => String::new(),
    };
    write(&out_dir.join(TRACE_FILE), &trace_text)?;
    let traces = results::parse(&trace_text)?;
    for t in tries.iter().chain(&traces) {
        let name = format!("{}-{}-{}.console", t.vmm, t.round, t.attempt);
        for name in [format!("{name}.err"), name] {
            // Consoles are for analysis: a missing one is not an error.
            let _ = output.copy_file(&name, &out_dir.join(&name));
        }
    }
    let _ = std::fs::copy(&output.console_log, out_dir.join("l1.console.log"));

    let lego = report::summarize(&tries, VMMS[0]);
    let qemu = report::summarize(&tries, VMMS[1]);
    let mut md = String::new();
    md.push_str(&report::table(&lego, &qemu));
    md.push_str(&format!(
        "\nRetries (tries killed after {} s without `LEGO_GUEST_READY`, then rerun): legovmm {}, QEMU {}.\n",
        plan.ready_timeout_secs, lego.retries, qemu.retries
    ));
    md.push_str(&format!("\nCommand: `{}`\n", report::invocation()));
    md.push_str(&format!(
        "\nTestbed: {}; {}.\n",
        testbed.mode_reason(),
        output.summary()
    ));
    md.push_str(&format!(
        "\nL2 command lines (in the job folder; guest command line `{}`):\n\n- `$LEGOVMM {} '<cmdline>'`\n- `./{} --library-path $JOB_DIR ./{} {} '<cmdline>'`\n",
        plan.cmdline,
        plan.legovmm_args(),
        script::files::LOADER,
        script::files::QEMU,
        plan.qemu_args()
    ));
    md.push_str("\nAll tries:\n\n");
    md.push_str(&report::tries_table(&tries));
    if !traces.is_empty() {
        md.push_str(&format!(
            "\nTrace boots (not measured: guest command line `{}`, legovmm at debug log level; consoles in {}):\n\n",
            plan.trace_cmdline.as_deref().unwrap_or(""),
            out_dir.display()
        ));
        md.push_str(&report::tries_table(&traces));
        let stats: Vec<&str> = trace_text
            .lines()
            .filter(|l| l.starts_with(script::KVM_STATS_MARKER))
            .collect();
        if !stats.is_empty() {
            md.push_str("\nL1 KVM counters of each trace boot (last 0.2 s sample before the VM went away):\n\n```\n");
            for l in stats {
                md.push_str(l);
                md.push('\n');
            }
            md.push_str("```\n");
        }
    }
    write(&out_dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!(
        "boot-bench: report, results and consoles in {}",
        out_dir.display()
    );
    Ok(lego.clean > 0 && qemu.clean > 0)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("boot-bench: a VMM had no clean run; see the tries above");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("boot-bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
