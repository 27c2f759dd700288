//! The `lego-guest-tools` command line. Every subcommand prints greppable `LEGO_*` marker
//! lines; exit status 1 means a check failed, 2 means the command could not run.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lego_guest_tools::{boot_timer, disk, memtest, nettest, sysinfo};

/// Helper run inside LegoVMM guests.
#[derive(Debug, Parser)]
#[command(name = "lego-guest-tools", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print LEGO_CPUS=<online cpus> and LEGO_MEM_TOTAL_KB=<MemTotal>.
    Sysinfo,
    /// Run forever: let go of each hot-added device legovmm asks back (unmount, offline its
    /// ACPI slot, eject it), as udev rules would on a full distribution.
    Hotplugd,
    /// Wait for the ACPI power button (vm.shutdown); on a press, stop every process so /init
    /// unmounts the disks and powers off.
    Powerd,
    /// Write the pattern of blocks 0..K under a seed to DEV, then fsync.
    DiskWrite {
        /// Block device or file.
        dev: PathBuf,
        /// Pattern seed.
        #[arg(long)]
        seed: u64,
        /// Number of 4 KiB blocks.
        #[arg(long)]
        blocks: u64,
    },
    /// Verify the pattern of blocks 0..K under a seed on DEV.
    DiskVerify {
        /// Block device or file.
        dev: PathBuf,
        /// Pattern seed.
        #[arg(long)]
        seed: u64,
        /// Number of 4 KiB blocks.
        #[arg(long)]
        blocks: u64,
    },
    /// Map N MiB, write a pattern to every page, verify every page.
    Memtest {
        /// Size in MiB.
        #[arg(long)]
        mib: u64,
        /// Pattern seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a VMM, time its guest's ready marker and its exit, and sample its memory;
    /// prints one LEGO_BOOT_TIMING line. Exit 0 = clean run, 125 = no ready marker in
    /// time (killed), 124 = overall timeout, else the VMM's status.
    BootTimer(BootTimerArgs),
    /// Send a stream of 4 KiB pattern blocks to ADDR (retrying the connection for --wait
    /// seconds); prints LEGO_NET_SENT bytes= crc32c= ms= mib_s=.
    NetSend {
        /// The receiver, IP:PORT.
        addr: std::net::SocketAddr,
        /// Pattern seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Size in MiB.
        #[arg(long)]
        mib: u64,
        /// Seconds to keep trying to connect.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Receive one stream on PORT and check its pattern; prints LEGO_NET_RECV bytes= crc32c=
    /// pattern=ok|bad from= ms= mib_s= (exit 1 when a block is wrong).
    NetRecv {
        /// The port to listen on.
        port: u16,
        /// Pattern seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the sender's IP address to this file.
        #[arg(long)]
        peer_file: Option<PathBuf>,
    },
    /// Serve TCP echo on PORT until killed.
    NetEcho {
        /// The port to listen on.
        port: u16,
    },
    /// Time COUNT round trips of SIZE bytes to an echo server; prints LEGO_NET_RTT count=
    /// p50_us= p99_us=.
    NetRtt {
        /// The echo server, IP:PORT.
        addr: std::net::SocketAddr,
        /// Round trips.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 1)]
        size: usize,
        /// Seconds to keep trying to connect.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

/// Arguments of `boot-timer`.
#[derive(Debug, clap::Args)]
struct BootTimerArgs {
    /// The VMM's name in the timing line (no spaces or '=').
    #[arg(long, default_value = "vmm")]
    label: String,
    /// Console text showing the guest is up.
    #[arg(long, default_value = "LEGO_GUEST_READY")]
    ready: String,
    /// Copy console lines containing this text to standard output ("" for none).
    #[arg(long, default_value = "LEGO_")]
    forward: String,
    /// Keep a copy of the whole console (the VMM's standard output) in this file.
    #[arg(long)]
    console: Option<PathBuf>,
    /// Memory sampling period in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    sample_ms: u64,
    /// Kill the VMM if the ready marker has not appeared after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    ready_timeout: u64,
    /// Kill the VMM if it has not exited after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// The VMM command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Runs `boot-timer` and prints its timing line.
fn boot_timer_main(a: BootTimerArgs) -> ExitCode {
    let secs = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
    let cfg = boot_timer::TimerConfig {
        label: a.label,
        ready_marker: a.ready,
        forward: Some(a.forward).filter(|f| !f.is_empty()),
        console: a.console,
        sample_every: std::time::Duration::from_millis(a.sample_ms),
        ready_timeout: secs(a.ready_timeout),
        timeout: secs(a.timeout),
        command: a.command,
    };
    match boot_timer::run(&cfg) {
        Ok(t) => {
            println!("{}", t.line());
            ExitCode::from(t.tool_exit_code())
        }
        Err(e) => fail(e),
    }
}

/// Prints an error marker and returns exit status 2.
fn fail(e: impl std::error::Error) -> ExitCode {
    let e = lego_report::error_chain(&e);
    println!("LEGO_ERROR {e}");
    eprintln!("lego-guest-tools: error: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Hotplugd => match lego_guest_tools::hotplug::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::Powerd => match lego_guest_tools::power_button::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::Sysinfo => match (sysinfo::online_cpus(), sysinfo::mem_total_kb()) {
            (Ok(cpus), Ok(kb)) => {
                println!("LEGO_CPUS={cpus}");
                println!("LEGO_MEM_TOTAL_KB={kb}");
                ExitCode::SUCCESS
            }
            (Err(e), _) | (_, Err(e)) => fail(e),
        },
        Cmd::DiskWrite { dev, seed, blocks } => match disk::write_pattern(&dev, seed, blocks) {
            Ok(r) => {
                println!("LEGO_DISK_WRITE_OK blocks={} crc={:08x}", r.blocks, r.crc);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::DiskVerify { dev, seed, blocks } => match disk::verify_pattern(&dev, seed, blocks) {
            Ok(disk::Verify::Ok(r)) => {
                println!("LEGO_DISK_VERIFY_OK blocks={} crc={:08x}", r.blocks, r.crc);
                ExitCode::SUCCESS
            }
            Ok(disk::Verify::Bad {
                first_bad,
                bad_blocks,
                blocks,
            }) => {
                println!("LEGO_DISK_VERIFY_BAD block={first_bad} bad={bad_blocks} blocks={blocks}");
                ExitCode::from(1)
            }
            Err(e) => fail(e),
        },
        Cmd::Memtest { mib, seed } => match memtest::run(mib, seed) {
            Ok(r) => {
                let ms = |d: std::time::Duration| d.as_millis();
                let rate = |d: std::time::Duration| mib as f64 / d.as_secs_f64().max(1e-9);
                println!(
                    "LEGO_MEMTEST pages={} bad={} first_bad={} write_ms={} verify_ms={} write_mib_s={:.0} verify_mib_s={:.0}",
                    r.pages,
                    r.bad,
                    r.first_bad.map_or("none".to_string(), |p| p.to_string()),
                    ms(r.write),
                    ms(r.verify),
                    rate(r.write),
                    rate(r.verify)
                );
                if r.bad == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail(e),
        },
        Cmd::BootTimer(a) => boot_timer_main(a),
        Cmd::NetSend {
            addr,
            seed,
            mib,
            wait,
        } => match nettest::send(addr, seed, mib * 256, std::time::Duration::from_secs(wait)) {
            Ok(t) => {
                println!(
                    "LEGO_NET_SENT to={} bytes={} crc32c={:08x} ms={} mib_s={:.1}",
                    t.peer,
                    t.bytes,
                    t.crc,
                    t.elapsed.as_millis(),
                    t.mib_per_sec()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::NetRecv {
            port,
            seed,
            peer_file,
        } => match nettest::receive(port, seed) {
            Ok(t) => {
                if let Some(f) = &peer_file {
                    if let Err(e) = std::fs::write(f, format!("{}\n", t.peer)) {
                        return fail(e);
                    }
                }
                println!(
                    "LEGO_NET_RECV from={} bytes={} crc32c={:08x} pattern={} ms={} mib_s={:.1}",
                    t.peer,
                    t.bytes,
                    t.crc,
                    t.first_bad
                        .map_or("ok".to_string(), |b| format!("bad-at-block-{b}")),
                    t.elapsed.as_millis(),
                    t.mib_per_sec()
                );
                if t.first_bad.is_none() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail(e),
        },
        Cmd::NetEcho { port } => match nettest::echo_server(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::NetRtt {
            addr,
            count,
            size,
            wait,
        } => match nettest::round_trips(addr, count, size, std::time::Duration::from_secs(wait)) {
            Ok(v) => {
                println!(
                    "LEGO_NET_RTT to={addr} count={} size={size} p50_us={:.1} p99_us={:.1}",
                    v.len(),
                    nettest::quantile(&v, 0.5),
                    nettest::quantile(&v, 0.99)
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}
