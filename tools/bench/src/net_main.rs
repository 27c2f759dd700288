//! `net-bench`: TCP round trips and throughput between a vNode and its compute host with
//! legovmm's virtio-net (vhost-net and in-process) and with QEMU's (vhost-net), side by side
//! in one compute host of the testbed; medians and the ratios against QEMU. See
//! `lego_bench::net`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lego_bench::assets;
use lego_bench::driver::{self, BenchError, CommonArgs, Prepared};
use lego_bench::net::report::{self as net_report, Summaries};
use lego_bench::net::script::{NetPlan, BRIDGE_SCRIPT, HOST_SUFFIX, RESULTS_FILE};
use lego_bench::net::{self, results as net_results, Setup};
use lego_bench::script::{self, files};
use lego_testbed::Testbed;

/// QEMU's machine by default here: microvm with a PCI Express bus for the virtio-net-pci
/// device (microvm has none unless asked).
const NET_QEMU_MACHINE: &str = "microvm,x-option-roms=off,pcie=on";

/// Boot the same guest with legovmm's virtio-net on the host kernel's vhost-net, with
/// legovmm's virtio-net moving packets in its own threads, and with QEMU's virtio-net on
/// vhost-net, interleaved in one compute host whose bridge joins the guest's tap and the host.
/// In each run the guest times round trips to an echo server on the compute host and sends
/// it a pattern stream, then receives one from it; print the medians and the ratios against
/// QEMU as a markdown table.
#[derive(Debug, Parser)]
#[command(name = "net-bench", version, about)]
#[command(mut_arg("out", |a| a.help(
    "Where to keep the report, the results and the consoles [default: <cache>/bench/net]"
)))]
#[command(mut_arg("qemu_machine", |a| a.default_value(NET_QEMU_MACHINE)))]
struct Cli {
    /// Measured runs per setup (interleaved: legovmm-vhost-net, legovmm-in-process,
    /// qemu-vhost-net, legovmm-vhost-net, ...).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// The setups to run, in round order: legovmm-vhost-net, legovmm-in-process,
    /// qemu-vhost-net.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "legovmm-vhost-net,legovmm-in-process,qemu-vhost-net"
    )]
    setups: Vec<Setup>,
    /// Round trips the guest times (net-rtt --count).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    rtt_count: u32,
    /// Bytes per round-trip message (net-rtt --size).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    rtt_size: u32,
    /// MiB the guest sends to the compute host (net-send --mib).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16384))]
    guest_to_host_mib: u32,
    /// MiB the compute host sends to the guest (0: not measured).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=16384))]
    host_to_guest_mib: u32,
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=4096))]
    memory_mib: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    vcpus: u32,
    /// The guest's MAC, the same in every setup.
    #[arg(long, default_value = net::DEFAULT_MAC, value_parser = net::parse_mac)]
    mac: String,
    /// QEMU's network device (-device driver): virtio-net-pci (needs a PCI bus: the default
    /// machine has `pcie=on`) or virtio-net-device (virtio-mmio, legovmm's transport).
    #[arg(long, default_value = "virtio-net-pci")]
    qemu_net_device: String,
    /// Extra guest kernel command line words, the same for every setup (the default skips
    /// the RTC probe, which stalls ~5 s under QEMU in this testbed; see BENCHMARKS.md).
    #[arg(long, default_value = "initcall_blacklist=cmos_init")]
    guest_cmdline_extra: String,
    /// Retries of a run whose guest never prints its ready marker.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Seconds to wait for the guest's ready marker before a try is killed and retried.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// Seconds one try may take in all.
    #[arg(long, default_value_t = 300)]
    run_timeout: u64,
    /// The timer's memory sampling period in milliseconds.
    #[arg(long, default_value_t = 200)]
    sample_ms: u64,
    /// The legovmm binary [default: <workspace>/target/release/legovmm].
    #[arg(long)]
    legovmm: Option<PathBuf>,
    /// The bridge script run on the compute host [default: <workspace>/tools/vnode-bridge.sh].
    #[arg(long)]
    bridge_script: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
    /// The compute host's memory in MiB (nested mode).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1024..=16384))]
    l1_memory_mib: u32,
    /// Print the job script the compute host would run, and exit (nothing is built or run).
    #[arg(long)]
    print_script: bool,
    /// Render the report of the result lines in this file (the `net-results.txt` an
    /// earlier run kept) with this run's options, and exit (nothing is built or run).
    #[arg(long, value_name = "FILE", conflicts_with = "print_script")]
    from_results: Option<PathBuf>,
    /// Print nothing while the runs go (by default: a line per phase and per result; the
    /// whole console is in the output folder's `l1.console.log`).
    #[arg(long, conflicts_with = "stream")]
    quiet: bool,
    /// Stream the compute host's whole console to standard error instead of progress lines.
    #[arg(long)]
    stream: bool,
}

fn run(cli: Cli) -> Result<bool, BenchError> {
    let setups = driver::distinct(&cli.setups)?;
    script::check_qemu_value("network device", &cli.qemu_net_device)?;
    let bridge_script = cli
        .bridge_script
        .clone()
        .unwrap_or_else(|| lego_testbed::paths::workspace_root().join("tools/vnode-bridge.sh"));
    if !bridge_script.is_file() {
        return Err(BenchError::Usage(format!(
            "the bridge script {} does not exist (give --bridge-script)",
            bridge_script.display()
        )));
    }

    let plan = NetPlan {
        runs: cli.runs,
        tries: cli.retries.saturating_add(1),
        setups: setups.clone(),
        ready_timeout_secs: cli.ready_timeout.max(1),
        run_timeout_secs: cli.run_timeout.max(cli.ready_timeout + 1),
        vcpus: cli.vcpus,
        memory_mib: cli.memory_mib,
        mac: cli.mac.clone(),
        rtt_count: cli.rtt_count,
        rtt_size: cli.rtt_size,
        guest_to_host_mib: cli.guest_to_host_mib,
        host_to_guest_mib: cli.host_to_guest_mib,
        cmdline_extra: cli.guest_cmdline_extra.clone(),
        sample_ms: cli.sample_ms.max(1),
        qemu_machine: cli.common.qemu_machine.clone(),
        qemu_cpu: cli.common.qemu_cpu.clone(),
        qemu_net_device: cli.qemu_net_device.clone(),
    };
    let cmdline = plan.cmdline()?;
    if cli.print_script {
        print!("{}", plan.render()?);
        return Ok(true);
    }
    if let Some(file) = &cli.from_results {
        let text = std::fs::read_to_string(file).map_err(|source| BenchError::Read {
            path: file.clone(),
            source,
        })?;
        let tries = net_results::parse(&text)?;
        let h2g = plan.host_to_guest_mib > 0;
        let summaries = Summaries::of(&tries, &setups, h2g);
        println!(
            "{}\nAll tries:\n\n{}",
            net_report::table(&summaries, plan.guest_to_host_mib, plan.host_to_guest_mib),
            net_report::tries_table(&tries, h2g)
        );
        return Ok(summaries.complete());
    }

    eprintln!("net-bench: gathering the guest image, the guest tools and the VMMs");
    let Prepared {
        out_dir,
        legovmm,
        timer,
        mut config,
        ..
    } = cli.common.prepare("net", cli.legovmm.as_deref())?;
    // The guest runs the network tests of the same lego-guest-tools as the compute host,
    // and needs the virtio-net driver: an image cached by an older workspace may lack both.
    let guest = assets::current_guest(&config.cache, &timer, false)?;
    let mut job_files: Vec<(PathBuf, String)> = vec![
        (guest.kernel.clone(), files::KERNEL.to_string()),
        (guest.initramfs.clone(), files::INITRAMFS.to_string()),
        (timer.clone(), files::TIMER.to_string()),
        (bridge_script.clone(), BRIDGE_SCRIPT.to_string()),
    ];
    if setups.iter().any(|s| s.is_qemu()) {
        job_files.extend(assets::qemu(&cli.common.qemu, &cli.common.qboot)?);
    }
    eprintln!(
        "net-bench: legovmm {}, QEMU {}, guest tools {}, guest {} ({} job files)",
        legovmm.display(),
        cli.common.qemu.display(),
        timer.display(),
        guest.kernel.display(),
        job_files.len()
    );

    let tries = u64::from(plan.runs) * setups.len() as u64 * u64::from(plan.tries);
    let job = driver::nested_job(
        "net-bench",
        plan.render()?,
        job_files,
        tries,
        plan.run_timeout_secs,
    );

    config.stream = driver::stream_choice(cli.quiet, cli.stream);
    config.qemu.memory_mib = cli.l1_memory_mib;
    let testbed = Testbed::new(config)?;
    eprintln!(
        "net-bench: {} runs of {} ({} round trips, {} MiB guest → host, {} MiB host → guest); \
         progress lines follow",
        plan.runs,
        setups
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        plan.rtt_count,
        plan.guest_to_host_mib,
        plan.host_to_guest_mib
    );
    let output = testbed.run(&job)?;
    eprintln!("net-bench: {}", output.summary());

    let h2g = plan.host_to_guest_mib > 0;
    let text = driver::keep_results(&output, RESULTS_FILE, &out_dir)?;
    let tries = net_results::parse(&text)?;
    let names: Vec<&str> = Setup::ALL.iter().map(|s| s.name()).collect();
    driver::remove_stale(&out_dir, &names, &["net-echo.log"]);
    let suffixes = ["", ".err", HOST_SUFFIX, ".host-recv", ".host-send"];
    let consoles = driver::try_files(tries.iter().map(|t| &t.run), &suffixes)
        .chain(["net-echo.log".to_string()]);
    driver::keep_consoles(&output, consoles, &out_dir);

    let summaries = Summaries::of(&tries, &setups, h2g);
    let mut md = format!(
        "TCP between the vNode ({} vCPU, {} MiB) and its compute host over the bridge {}: medians \
         (min–max) over the clean runs; the ratio columns are legovmm / QEMU of the medians (below \
         1 is better for round trips, above 1 for throughput). Round trips: {} messages of {} B \
         timed by the guest; throughput: one pattern stream each way, checked block by block, \
         timed on the compute host (its receiver, its sender).\n\n",
        plan.vcpus,
        plan.memory_mib,
        net::BRIDGE,
        plan.rtt_count,
        plan.rtt_size,
    );
    md.push_str(&net_report::table(
        &summaries,
        plan.guest_to_host_mib,
        plan.host_to_guest_mib,
    ));
    md.push_str(&driver::provenance(&testbed, &output));
    md.push_str(&format!(
        "\nGuest command line (every setup): `{cmdline}`\n\nL2 command lines (in the job folder):\n\n"
    ));
    for setup in &setups {
        match (plan.legovmm_args(*setup), plan.legovmm_net(*setup)) {
            (Some(args), Some(net)) => md.push_str(&format!(
                "- {setup}: `$LEGOVMM {args} '<cmdline>' --net {net}` (legovmm creates the tap and joins it to {})\n",
                net::BRIDGE
            )),
            _ => md.push_str(&format!(
                "- {setup}: `./{} --library-path $JOB_DIR ./{} {} '<cmdline>'` (the tap {} made with busybox tunctl and joined to {} before QEMU starts; QEMU's default RAM: private anonymous memory)\n",
                files::LOADER,
                files::QEMU,
                plan.qemu_args(),
                net::QEMU_TAP,
                net::BRIDGE
            )),
        }
    }
    let host_send = if h2g {
        format!(
            " (then, once it ended, `net-send {}:{} --mib {}`)",
            net::GUEST_IP,
            net::GUEST_RECV_PORT,
            plan.host_to_guest_mib
        )
    } else {
        String::new()
    };
    md.push_str(&format!(
        "\nCompute host: `sh vnode-bridge.sh --bridge {} --gateway {}/{}`, `lego-guest-tools net-echo {}` for the whole job; per run `net-recv {}`{host_send} started before the VMM.\n",
        net::BRIDGE,
        net::HOST_IP,
        net::PREFIX,
        net::ECHO_PORT,
        net::HOST_RECV_PORT,
    ));
    md.push_str("\nAll tries:\n\n");
    md.push_str(&net_report::tries_table(&tries, h2g));
    driver::keep_report("net-bench", &out_dir, &md)?;
    Ok(summaries.complete())
}

fn main() -> ExitCode {
    driver::exit(
        "net-bench",
        run(Cli::parse()),
        "a setup had no clean run; see the tries above",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_measure_all_three_with_a_pci_bus_for_qemu() {
        let cli = Cli::try_parse_from(["net-bench"]).unwrap();
        assert_eq!(cli.setups, Setup::ALL.to_vec());
        assert_eq!(cli.common.qemu_machine, NET_QEMU_MACHINE);
        assert_eq!(cli.qemu_net_device, "virtio-net-pci");
        assert_eq!(cli.mac, net::DEFAULT_MAC);
        assert_eq!(
            (cli.rtt_count, cli.guest_to_host_mib, cli.host_to_guest_mib),
            (2000, 64, 64)
        );
        let cli = Cli::try_parse_from([
            "net-bench",
            "--mac",
            "02:AA:00:00:00:01",
            "--setups",
            "qemu-vhost-net",
        ])
        .unwrap();
        assert_eq!(cli.mac, "02:aa:00:00:00:01");
        assert_eq!(cli.setups, vec![Setup::QemuVhostNet]);
        assert!(Cli::try_parse_from(["net-bench", "--mac", "01:00:00:00:00:01"]).is_err());
        assert!(Cli::try_parse_from(["net-bench", "--setups", "qemu"]).is_err());
    }
}
