//! The `lego-image` command line: build the guest image or print its paths.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lego_image::guest::{self, GuestOptions};

/// Builds the LegoVMM guest image (stock Debian kernel + busybox initramfs).
#[derive(Debug, Parser)]
#[command(name = "lego-image", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Fetch the Debian packages and build <cache>/guest/{vmlinuz,initramfs.cpio,manifest.json}.
    Build {
        /// Cache folder (default: $LEGO_CACHE, else <workspace>/.cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Rebuild even if the outputs are up to date.
        #[arg(long)]
        force: bool,
        /// Use this static lego-guest-tools binary instead of building it with cargo.
        #[arg(long, value_name = "PATH")]
        guest_tools: Option<PathBuf>,
    },
    /// Print the output paths (kernel, initramfs, manifest), one per line.
    Path {
        /// Cache folder (default: $LEGO_CACHE, else <workspace>/.cache).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Build {
            cache,
            force,
            guest_tools,
        } => {
            let mut opts = GuestOptions::new(cache.unwrap_or_else(lego_image::default_cache));
            opts.force = force;
            opts.guest_tools = guest_tools;
            match guest::build(&opts) {
                Ok(img) => {
                    println!("{}", img.kernel.display());
                    println!("{}", img.initramfs.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lego-image: error: {}", lego_report::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Path { cache } => {
            let img = guest::output_paths(&cache.unwrap_or_else(lego_image::default_cache));
            println!("kernel={}", img.kernel.display());
            println!("initramfs={}", img.initramfs.display());
            println!("manifest={}", img.manifest.display());
            ExitCode::SUCCESS
        }
    }
}
