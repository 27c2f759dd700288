//! The `lego-guest-tools` command line. Every subcommand prints greppable `LEGO_*` marker
//! lines; exit status 1 means a check failed, 2 means the command could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lego_guest_tools::{disk, memtest, sysinfo};

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
}

/// Prints an error marker and returns exit status 2.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    println!("LEGO_ERROR {e}");
    eprintln!("lego-guest-tools: error: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
    }
}
