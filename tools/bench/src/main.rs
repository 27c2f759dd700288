//! `boot-bench`: boot time and memory overhead of legovmm against QEMU microvm, measured
//! side by side in one compute host of the testbed. See the crate documentation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lego_bench::driver::{self, BenchError, CommonArgs, Prepared};
use lego_bench::script::{self, Plan, RESULTS_FILE, START_MARKER, TRACE_FILE, VMMS};
use lego_bench::{assets, report, results};
use lego_testbed::console::Stream;
use lego_testbed::{Job, Testbed};

/// Boot the same guest with legovmm and QEMU microvm, interleaved, in one compute host,
/// and report the time to the guest's ready marker, the time to the VMM's exit and the
/// VMM's peak resident memory beyond guest RAM (VmRSS - RssShmem).
#[derive(Debug, Parser)]
#[command(name = "boot-bench", version, about)]
#[command(mut_arg("out", |a| a.help(
    "Where to keep the report, the results and the consoles [default: <cache>/bench/boot]"
)))]
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
    #[command(flatten)]
    common: CommonArgs,
    /// Stream the compute host's console to standard error.
    #[arg(long)]
    stream: bool,
}

fn run(cli: Cli) -> Result<bool, BenchError> {
    let Prepared {
        out_dir,
        guest,
        legovmm,
        timer,
        mut config,
    } = cli.common.prepare("boot", cli.legovmm.as_deref())?;
    let qemu_files = assets::qemu(&cli.common.qemu, &cli.common.qboot)?;
    eprintln!(
        "boot-bench: legovmm {}, QEMU {} ({} files), timer {}, guest {}",
        legovmm.display(),
        cli.common.qemu.display(),
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
        qemu_machine: cli.common.qemu_machine.clone(),
        qemu_cpu: cli.common.qemu_cpu.clone(),
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

    config.stream = if cli.stream { Stream::All } else { Stream::Off };
    let testbed = Testbed::new(config)?;
    let output = testbed.run(&job)?;
    eprintln!("boot-bench: {}", output.summary());

    let text = driver::keep_results(&output, RESULTS_FILE, &out_dir)?;
    let tries = results::parse(&text)?;
    // The trace boots are optional: a missing file just means none ran.
    let trace_text = match output.read_file(TRACE_FILE) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(_) => String::new(),
    };
    driver::write(&out_dir.join(TRACE_FILE), &trace_text)?;
    let traces = results::parse(&trace_text)?;
    let consoles = tries.iter().chain(&traces).flat_map(|t| {
        let name = format!("{}-{}-{}.console", t.vmm, t.round, t.attempt);
        [format!("{name}.err"), name]
    });
    driver::keep_consoles(&output, consoles, &out_dir);

    let lego = report::summarize(&tries, VMMS[0]);
    let qemu = report::summarize(&tries, VMMS[1]);
    let mut md = String::new();
    md.push_str(&report::table(&lego, &qemu));
    md.push_str(&format!(
        "\nRetries (tries killed after {} s without `LEGO_GUEST_READY`, then rerun): legovmm {}, QEMU {}.\n",
        plan.ready_timeout_secs, lego.retries, qemu.retries
    ));
    md.push_str(&driver::provenance(&testbed, &output));
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
    driver::keep_report("boot-bench", &out_dir, &md)?;
    Ok(lego.clean > 0 && qemu.clean > 0)
}

fn main() -> ExitCode {
    driver::exit(
        "boot-bench",
        run(Cli::parse()),
        "a VMM had no clean run; see the tries above",
    )
}
