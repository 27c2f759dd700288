//! `soak`: runs the demo-sized swap workload N times, each run in a fresh compute host of
//! the testbed, and reports how many runs were lost and how (L1 panic, silent exit, hang,
//! nested stall, ...), keeping each lost run's console. See `lego_bench::soak`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use lego_bench::assets;
use lego_bench::driver::{self, BenchError, CommonArgs, Prepared};
use lego_bench::script::files;
use lego_bench::soak::{self, Run};
use lego_bench::swap::script::{guest_command, NbdTransport, SwapPlan};
use lego_bench::swap::{results as swap_results, Setup};
use lego_testbed::qemu::TcgThreads;
use lego_testbed::{Job, JobOutput, Testbed};

/// The demo's job script: cluster, a vNode with remote memory and a remote disk through
/// the workload, a relaunch reading the disk back, a summary.
const DEMO_SCRIPT: &str = include_str!("../../demo/remote-vnode.sh");

/// The nested VMM a soak runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Vmm {
    /// legovmm with remote memory as swap (the demo's job, remote disk and relaunch
    /// included).
    Legovmm,
    /// QEMU with swap on an NBD disk served by qemu-nbd in the compute host.
    Qemu,
}

/// Run the demo-sized swap workload N times, each in a fresh nested compute host, with
/// legovmm or QEMU as the nested VMM, and count the runs lost by kind.
#[derive(Debug, Parser)]
// The soak measures the testbed's default compute host (1 vCPU); the shared `--l1-cpus`
// defaults to the benchmarks' 2.
#[command(name = "soak", version, about, mut_arg("l1_cpus", |a| a.default_value("1")))]
struct Cli {
    /// Runs, each in its own compute host.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    runs: u32,
    /// The nested VMM.
    #[arg(long, value_enum, default_value_t = Vmm::Legovmm)]
    vmm: Vmm,
    /// A name for this configuration in the report [default: from the knobs].
    #[arg(long)]
    label: Option<String>,
    /// Workload size in MiB.
    #[arg(long, default_value_t = 512)]
    workload_mib: u32,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 128)]
    guest_memory_mib: u32,
    /// Remote memory (legovmm) or NBD swap disk (QEMU), MiB.
    #[arg(long, default_value_t = 1024)]
    swap_mib: u32,
    /// Seconds one run may take in all (compute host boot included).
    #[arg(long, default_value_t = 900)]
    run_timeout: u64,
    /// Memory of the compute host, MiB.
    #[arg(long, default_value_t = 2048)]
    l1_memory_mib: u32,
    /// How TCG runs the compute host's vCPUs.
    #[arg(long, value_enum, default_value_t = TcgThreads::Multi)]
    tcg_threads: TcgThreads,
    /// The compute host's emulated CPU (QEMU `-cpu`).
    #[arg(long, default_value = lego_testbed::qemu::CPU)]
    l1_cpu_model: String,
    /// Folder with the workspace's release binaries [default: <workspace>/target/release].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The qemu-nbd binary (QEMU runs).
    #[arg(long, default_value = "/usr/bin/qemu-nbd")]
    qemu_nbd: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

impl Cli {
    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            let mut s = format!(
                "{:?}, L1 {} vCPU, TCG {:?}",
                self.vmm, self.common.l1_cpus, self.tcg_threads
            )
            .to_lowercase();
            if self.l1_cpu_model != lego_testbed::qemu::CPU {
                s.push_str(&format!(", -cpu {}", self.l1_cpu_model));
            }
            if !self.common.l1_cmdline_extra.trim().is_empty() {
                s.push_str(&format!(", `{}`", self.common.l1_cmdline_extra.trim()));
            }
            s
        })
    }
}

/// A job for one run, how to tell that it ended cleanly, and the nested guests' files
/// worth keeping when it did not.
struct Plan {
    job: Job,
    clean: fn(&JobOutput) -> bool,
    guest_files: &'static [&'static str],
}

/// The demo's nested guests' consoles, legovmm's standard errors and stall dumps.
const DEMO_GUEST_FILES: &[&str] = &[
    "first.console",
    "first.err",
    "first.stall",
    "second.console",
    "second.err",
    "second.stall",
];

/// The QEMU guest's console and QEMU's and qemu-nbd's logs of the one try a run makes.
const QEMU_GUEST_FILES: &[&str] = &[
    "nbd-1-1.console",
    "nbd-1-1.console.err",
    "nbd-1-1.console.nbd.log",
];

fn demo_clean(out: &JobOutput) -> bool {
    out.console.contains("LEGO_DEMO_DONE first=0 second=0")
        && out.console.contains("written-by-vnode-")
}

fn swap_clean(out: &JobOutput) -> bool {
    let text = out
        .read_file(lego_bench::swap::script::RESULTS_FILE)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    swap_results::parse(&text)
        .map(|tries| !tries.is_empty() && tries.iter().all(|t| t.is_clean()))
        .unwrap_or(false)
}

fn plan(cli: &Cli, prepared: &Prepared, bin_dir: &Path) -> Result<Plan, BenchError> {
    let guest = &prepared.guest;
    let timeout = Duration::from_secs(cli.run_timeout);
    match cli.vmm {
        Vmm::Legovmm => {
            let script = format!(
                "export LEGO_CLUSTER_KEY=$(./legoctl keygen)\nexport GUEST_RAM={}M \
                 REMOTE_MEMORY={}M WORKLOAD_MIB={}\n{DEMO_SCRIPT}",
                cli.guest_memory_mib, cli.swap_mib, cli.workload_mib
            );
            let mut job = Job::new("soak", script)
                .timeout(timeout)
                .file(&guest.kernel, files::KERNEL)
                .file(&guest.initramfs, files::INITRAMFS);
            for (path, name) in assets::binaries_in(
                bin_dir,
                &[
                    "lego-vhost-blk",
                    "lego-manager",
                    "lego-memory-monitor",
                    "lego-storage-monitor",
                    "legoctl",
                ],
            )? {
                job = job.file(path, name);
            }
            Ok(Plan {
                job,
                clean: demo_clean,
                guest_files: DEMO_GUEST_FILES,
            })
        }
        Vmm::Qemu => {
            let plan = SwapPlan {
                runs: 1,
                tries: 1,
                setups: vec![Setup::Nbd],
                ready_timeout_secs: 120,
                run_timeout_secs: cli.run_timeout.saturating_sub(60).max(121),
                vcpus: 1,
                guest_memory_mib: cli.guest_memory_mib,
                local_memory_mib: cli.guest_memory_mib,
                swap_mib: cli.swap_mib,
                paged_prefetch: None,
                cmdline: lego_testbed::vnode::guest_cmdline(
                    &guest_command(cli.workload_mib),
                    "quiet",
                )?,
                sample_ms: 500,
                qemu_machine: cli.common.qemu_machine.clone(),
                qemu_cpu: cli.common.qemu_cpu.clone(),
                nbd: NbdTransport::Tcp,
                poll_us: 0,
            };
            let mut job = Job::new("soak", plan.render())
                .timeout(timeout)
                .file(&guest.kernel, files::KERNEL)
                .file(&guest.initramfs, files::INITRAMFS)
                .file(&prepared.timer, files::TIMER);
            for (path, name) in assets::qemu_with(
                &cli.common.qemu,
                &cli.common.qboot,
                &[(cli.qemu_nbd.as_path(), files::QEMU_NBD)],
            )? {
                job = job.file(path, name);
            }
            Ok(Plan {
                job,
                clean: swap_clean,
                guest_files: QEMU_GUEST_FILES,
            })
        }
    }
}

fn run(cli: Cli) -> Result<bool, BenchError> {
    let bin_dir = cli
        .bin_dir
        .clone()
        .unwrap_or_else(|| lego_testbed::paths::workspace_root().join("target/release"));
    let legovmm = bin_dir.join("legovmm");
    let prepared = cli.common.prepare("soak", Some(&legovmm))?;
    let plan = plan(&cli, &prepared, &bin_dir)?;
    let mut config = prepared.config.clone();
    config.qemu.memory_mib = cli.l1_memory_mib;
    config.qemu.tcg_threads = cli.tcg_threads;
    config.qemu.cpu_model = cli.l1_cpu_model.clone();
    let testbed = Testbed::new(config)?;
    let label = cli.label();
    let out_dir = &prepared.out_dir;
    eprintln!(
        "soak: {} runs of {label}; reports and lost runs' consoles in {}",
        cli.runs,
        out_dir.display()
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for index in 1..=cli.runs {
        let t0 = Instant::now();
        let out = testbed.run(&plan.job)?;
        let clean = (plan.clean)(&out);
        let loss = soak::classify(
            out.outcome,
            out.job_exit,
            out.host_exit,
            &out.console,
            clean,
        );
        let (l2_triple_faults, l2_early_hangs) = soak::l2_restarts(&out.console);
        let run = Run {
            index,
            loss,
            l2_triple_faults,
            l2_early_hangs,
            duration: t0.elapsed(),
        };
        // Every run's console is kept: clean runs' nested restarts are worth reading too.
        let _ = std::fs::write(
            out_dir.join(format!("run-{index:02}.console.log")),
            &out.console,
        );
        // A lost run's nested guests tell how it ended (an L2 reset shows only there).
        if run.loss.is_some() {
            for name in plan.guest_files {
                let _ = out.copy_file(name, &out_dir.join(format!("run-{index:02}.{name}")));
            }
        }
        let verdict = match &run.loss {
            None => "clean".to_string(),
            Some(l) => format!("LOST: {}: {}", l.kind(), l.detail()),
        };
        eprintln!(
            "soak: run {index}/{} {verdict} ({:.0} s; L2 restarts {}/{}; {:.0} min so far)",
            cli.runs,
            run.duration.as_secs_f64(),
            l2_triple_faults,
            l2_early_hangs,
            started.elapsed().as_secs_f64() / 60.0
        );
        runs.push(run);
        // Keep the report current, so that an interrupted soak still tells what it saw.
        let md = format!(
            "{}\nCommand: `{}`\n",
            soak::report(&label, &runs),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        driver::keep_report("soak", out_dir, &md)?;
    }
    Ok(runs.iter().all(|r| r.loss.is_none()))
}

fn main() -> ExitCode {
    driver::exit(
        "soak",
        run(Cli::parse()),
        "some runs were lost; see the report",
    )
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
    fn labels_name_the_knobs() {
        let cli = Cli::try_parse_from([
            "soak",
            "--vmm",
            "qemu",
            "--tcg-threads",
            "single",
            "--l1-cmdline-extra",
            "kvm_amd.vgif=0",
        ])
        .unwrap();
        assert_eq!(cli.label(), "qemu, l1 1 vcpu, tcg single, `kvm_amd.vgif=0`");
    }
}
