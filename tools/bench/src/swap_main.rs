//! `swap-bench`: the same swap-heavy workload in a vNode with remote memory, with swap on
//! an NBD-backed disk under QEMU, and with all-local RAM (legovmm, and optionally QEMU),
//! side by side in one compute host of the testbed; medians and slowdown ratios, and
//! legovmm against QEMU on first touch. See `lego_bench::swap`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lego_bench::assets;
use lego_bench::driver::{self, BenchError, CommonArgs, Prepared};
use lego_bench::script::files;
use lego_bench::swap::report::{self as swap_report, Summaries, Titles};
use lego_bench::swap::script::{
    guest_command, NbdTransport, SwapPlan, LEGO_PROGRAMS, RESULTS_FILE,
};
use lego_bench::swap::{results as swap_results, Setup};
use lego_testbed::Testbed;

/// Run the same memory workload (`lego-guest-tools memtest`: write every page, then verify
/// every page) in a guest with little RAM that swaps to remote memory (legovmm), in the same
/// guest swapping to an NBD-backed virtio-blk disk (QEMU + qemu-nbd), and in a guest with
/// all of it in local RAM (legovmm, and with `--setups` naming qemu-local also QEMU),
/// interleaved in one compute host; print medians and the slowdown ratios as a markdown
/// table, and legovmm against QEMU on first touch (the write pass) when both all-local
/// setups ran.
#[derive(Debug, Parser)]
#[command(name = "swap-bench", version, about)]
#[command(mut_arg("out", |a| a.help(
    "Where to keep the report, the results and the consoles [default: <cache>/bench/swap]"
)))]
struct Cli {
    /// Measured runs per setup (interleaved: local, remote, nbd, local, ...).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// The setups to run, in round order: local (legovmm, all-local RAM, no swap),
    /// qemu-local (QEMU, the same RAM and no swap: first touch against legovmm's), remote
    /// (legovmm + remote memory as swap), remote-relay (the same, interrupts through
    /// legovmm's relay thread), remote-poll (the same, backend and memory monitor polling
    /// `--poll-us`), nbd (QEMU + swap on NBD), paged (legovmm pages guest RAM of the
    /// all-local size, keeping the swapping setups' RAM resident).
    #[arg(long, value_delimiter = ',', default_value = "local,remote,nbd,paged")]
    setups: Vec<Setup>,
    /// Workload size in MiB (memtest --mib).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    workload_mib: u32,
    /// Guest RAM of the swapping setups (remote, nbd), MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(64..=4096))]
    guest_memory_mib: u32,
    /// Guest RAM of the all-local setups (local, qemu-local), MiB (must hold the workload).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=4096))]
    local_memory_mib: u32,
    /// Size of the remote memory and of the NBD disk, MiB (the guest's swap).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=8192))]
    swap_mib: u32,
    /// The remote-poll setup's `--poll-us` for lego-vhost-blk and the memory monitor.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
    poll_us: u32,
    /// The paged setup's `--paging-prefetch` (legovmm's default when not given).
    #[arg(long, value_name = "PAGES")]
    paged_prefetch: Option<u32>,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    vcpus: u32,
    /// Extra guest kernel command line words, the same for every setup (the default skips
    /// the RTC probe, which stalls ~5 s under QEMU in this testbed; see BENCHMARKS.md).
    #[arg(long, default_value = "initcall_blacklist=cmos_init")]
    guest_cmdline_extra: String,
    /// How QEMU reaches qemu-nbd.
    #[arg(long, value_enum, default_value_t = NbdTransport::Tcp)]
    nbd_transport: NbdTransport,
    /// Retries of a run whose guest never prints its ready marker.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Seconds to wait for the guest's ready marker before a try is killed and retried.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// Seconds one try may take in all.
    #[arg(long, default_value_t = 600)]
    run_timeout: u64,
    /// The timer's memory sampling period in milliseconds.
    #[arg(long, default_value_t = 200)]
    sample_ms: u64,
    /// Folder with the workspace's release binaries (legovmm, lego-vhost-blk, lego-manager,
    /// lego-memory-monitor, legoctl) [default: $CARGO_TARGET_DIR/release, else
    /// <workspace>/target/release].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The legovmm binary [default: <bin-dir>/legovmm].
    #[arg(long)]
    legovmm: Option<PathBuf>,
    /// The qemu-nbd binary.
    #[arg(long, default_value = "/usr/bin/qemu-nbd")]
    qemu_nbd: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
    /// The compute host's memory in MiB (nested mode).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1024..=16384))]
    l1_memory_mib: u32,
    /// Print nothing while the runs go (by default: a line per phase and per result; the
    /// whole console is in the output folder's `l1.console.log`).
    #[arg(long, conflicts_with = "stream")]
    quiet: bool,
    /// Stream the compute host's whole console to standard error instead of progress lines.
    #[arg(long)]
    stream: bool,
}

fn default_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(|t| PathBuf::from(t).join("release"))
        .unwrap_or_else(|| lego_testbed::paths::workspace_root().join("target/release"))
}

fn run(cli: Cli) -> Result<bool, BenchError> {
    let setups = driver::distinct(&cli.setups)?;
    let all_local = setups.contains(&Setup::Local)
        || setups.contains(&Setup::QemuLocal)
        || setups.contains(&Setup::Paged);
    if all_local && cli.local_memory_mib < cli.workload_mib + 64 {
        return Err(BenchError::Usage(format!(
            "the all-local guest needs RAM for the workload and the kernel: give \
             --local-memory-mib at least {} (workload {} MiB + 64)",
            cli.workload_mib + 64,
            cli.workload_mib
        )));
    }
    let bin_dir = cli.bin_dir.clone().unwrap_or_else(default_bin_dir);

    eprintln!("swap-bench: gathering the guest image, the timer, the VMMs and daemons");
    let legovmm = cli
        .legovmm
        .clone()
        .unwrap_or_else(|| bin_dir.join("legovmm"));
    let Prepared {
        out_dir,
        guest,
        legovmm,
        timer,
        mut config,
    } = cli.common.prepare("swap", Some(&legovmm))?;
    let mut job_files: Vec<(PathBuf, String)> = vec![
        (guest.kernel.clone(), files::KERNEL.to_string()),
        (guest.initramfs.clone(), files::INITRAMFS.to_string()),
        (timer.clone(), files::TIMER.to_string()),
    ];
    if setups.iter().any(|s| s.needs_cluster()) {
        job_files.extend(assets::binaries_in(&bin_dir, &LEGO_PROGRAMS)?);
    }
    if setups.contains(&Setup::Nbd) {
        let qemu = assets::qemu_with(
            &cli.common.qemu,
            &cli.common.qboot,
            &[(cli.qemu_nbd.as_path(), files::QEMU_NBD)],
        )?;
        job_files.extend(qemu);
    } else if setups.contains(&Setup::QemuLocal) {
        job_files.extend(assets::qemu(&cli.common.qemu, &cli.common.qboot)?);
    }
    eprintln!(
        "swap-bench: legovmm {}, daemons from {}, QEMU {}, qemu-nbd {}, timer {}, guest {} ({} job files)",
        legovmm.display(),
        bin_dir.display(),
        cli.common.qemu.display(),
        cli.qemu_nbd.display(),
        timer.display(),
        guest.kernel.display(),
        job_files.len()
    );

    let extra = format!("quiet {}", cli.guest_cmdline_extra.trim());
    let plan = SwapPlan {
        runs: cli.runs,
        tries: cli.retries.saturating_add(1),
        setups: setups.clone(),
        ready_timeout_secs: cli.ready_timeout.max(1),
        run_timeout_secs: cli.run_timeout.max(cli.ready_timeout + 1),
        vcpus: cli.vcpus,
        guest_memory_mib: cli.guest_memory_mib,
        local_memory_mib: cli.local_memory_mib,
        swap_mib: cli.swap_mib,
        paged_prefetch: cli.paged_prefetch,
        cmdline: lego_testbed::vnode::guest_cmdline(&guest_command(cli.workload_mib), &extra)?,
        sample_ms: cli.sample_ms.max(1),
        qemu_machine: cli.common.qemu_machine.clone(),
        qemu_cpu: cli.common.qemu_cpu.clone(),
        nbd: cli.nbd_transport,
        poll_us: cli.poll_us,
    };
    let tries = u64::from(plan.runs) * setups.len() as u64 * u64::from(plan.tries);
    let job = driver::nested_job(
        "swap-bench",
        plan.render(),
        job_files,
        tries,
        plan.run_timeout_secs,
    );

    config.stream = driver::stream_choice(cli.quiet, cli.stream);
    config.qemu.memory_mib = cli.l1_memory_mib;
    let testbed = Testbed::new(config)?;
    eprintln!(
        "swap-bench: {} runs of {} (workload {} MiB; one run takes ~1-3 min under nested TCG); \
         progress lines follow",
        plan.runs,
        setups
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        cli.workload_mib
    );
    let output = testbed.run(&job)?;
    eprintln!("swap-bench: {}", output.summary());

    let text = driver::keep_results(&output, RESULTS_FILE, &out_dir)?;
    let tries = swap_results::parse(&text)?;
    let names: Vec<&str> = Setup::ALL.iter().map(|s| s.name()).collect();
    driver::remove_stale(&out_dir, &names, &[]);
    let suffixes = [
        "",
        ".err",
        ".manager.log",
        ".monitor.log",
        ".monitor-stats",
        ".nbd.log",
    ];
    let consoles = driver::try_files(tries.iter().map(|t| &t.run), &suffixes);
    driver::keep_consoles(&output, consoles, &out_dir);

    let summaries = Summaries::of(&tries);
    let titles = Titles {
        local: format!("all-local RAM (legovmm, {} MiB)", plan.local_memory_mib),
        qemu_local: format!("all-local RAM (QEMU, {} MiB)", plan.local_memory_mib),
        remote: format!(
            "remote memory (legovmm, {} MiB + {} MiB remote)",
            plan.guest_memory_mib, plan.swap_mib
        ),
        remote_relay: "remote memory, interrupts relayed".into(),
        remote_poll: format!("remote memory, polling {} µs", plan.poll_us),
        nbd: format!(
            "NBD swap (QEMU, {} MiB + {} MiB NBD disk)",
            plan.guest_memory_mib, plan.swap_mib
        ),
        paged: format!(
            "paged guest RAM (legovmm, {} MiB of which {} MiB resident)",
            plan.local_memory_mib, plan.guest_memory_mib
        ),
    };
    let mut md = String::new();
    md.push_str(&swap_report::table(&summaries, &titles));
    if let Some(paged) = swap_report::paged_table(&summaries, &titles) {
        md.push('\n');
        md.push_str(&paged);
    }
    if let Some(variants) = swap_report::data_path_table(&summaries, &titles) {
        md.push('\n');
        md.push_str(&variants);
    }
    if let Some(first_touch) = swap_report::first_touch_table(&summaries, &titles) {
        md.push('\n');
        md.push_str(&first_touch);
    }
    md.push_str(&driver::provenance(&testbed, &output));
    md.push_str(&format!(
        "\nGuest command line (every setup): `{}`\n\nL2 command lines (in the job folder):\n\n\
         - local: `$LEGOVMM {} '<cmdline>'`\n\
         - remote: `$LEGOVMM {} '<cmdline>' {}` (fresh lego-manager and lego-memory-monitor per run on L1's loopback)\n\
         - nbd: `./{loader} --library-path $JOB_DIR ./{} {} <file on tmpfs>`, then `./{loader} --library-path $JOB_DIR ./{} {} '<cmdline>'`\n",
        plan.cmdline,
        plan.legovmm_args(Setup::Local).unwrap_or_default(),
        plan.legovmm_args(Setup::Remote).unwrap_or_default(),
        plan.remote_memory_args(),
        files::QEMU_NBD,
        plan.qemu_nbd_args(),
        files::QEMU,
        plan.qemu_args(),
        loader = files::LOADER,
    ));
    if setups.contains(&Setup::Paged) {
        md.push_str(&format!(
            "- paged: `$LEGOVMM {} '<cmdline>' {}` (fresh lego-manager and lego-memory-monitor per run on L1's loopback)\n",
            plan.legovmm_args(Setup::Paged).unwrap_or_default(),
            plan.paged_memory_args(),
        ));
    }
    if setups.contains(&Setup::RemoteRelay) {
        md.push_str(
            "- remote-relay: as remote, with `LEGOVMM_VHOST_INTERRUPTS=relay` in legovmm's environment\n",
        );
    }
    if setups.contains(&Setup::RemotePoll) {
        md.push_str(&format!(
            "- remote-poll: as remote, with `LEGO_VHOST_POLL_US={p}` in legovmm's environment (its lego-vhost-blk's `--poll-us`) and `--poll-us {p}` for the memory monitor\n",
            p = plan.poll_us
        ));
    }
    if setups.contains(&Setup::QemuLocal) {
        md.push_str(&format!(
            "- qemu-local: `./{} --library-path $JOB_DIR ./{} {} '<cmdline>'` (QEMU's default RAM: private anonymous memory)\n",
            files::LOADER,
            files::QEMU,
            plan.qemu_local_args(),
        ));
    }
    md.push_str("\nAll tries:\n\n");
    md.push_str(&swap_report::tries_table(&tries));
    driver::keep_report("swap-bench", &out_dir, &md)?;
    Ok(summaries.complete(&setups))
}

fn main() -> ExitCode {
    driver::exit(
        "swap-bench",
        run(Cli::parse()),
        "a setup had no clean run; see the tries above",
    )
}
