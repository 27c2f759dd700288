//! The `legovmm` command.

use clap::{Args, Parser, Subcommand};
use lego_devices::exit::GuestExit;
use lego_report::error_chain;
use legovmm::config::{FileConfig, Overrides, VmConfig};
use legovmm::console_input::RawTerminal;
use legovmm::memory::MemoryBacking;
use legovmm::vm::{self, Outcome};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the VMM itself could not start or run the vNode.
const EXIT_VMM_ERROR: u8 = 1;
/// Exit status when the guest crashed (kernel panic, triple fault, KVM failure).
const EXIT_GUEST_CRASHED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "legovmm",
    version,
    about = "LegoVMM's KVM virtual machine monitor: boots a stock Linux vNode",
    after_help = "Exit status of `run`: 0 when the guest powers off or reboots, 1 when legovmm cannot start or run it, 2 for bad usage, 3 when the guest crashes (kernel panic, triple fault), 128+N when stopped by signal N.\nLogs go to stderr (RUST_LOG or --log-level); the guest's serial console goes to stdout unless --serial says otherwise."
)]
struct Cli {
    /// Log level for legovmm's own messages on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "LEGOVMM_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a vNode and run it until the guest powers off.
    Run(Box<RunArgs>),
    /// Check whether this host's KVM can boot stock kernels (exit 0 if it can).
    Probe {
        /// The KVM device.
        #[arg(long, default_value = "/dev/kvm")]
        kvm_device: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML file with the same fields as the flags (kernel, initrd, cmdline, memory, memory_backing, vcpus, [[disks]], [[vhost_user_blk]], [[net]], serial, api_socket, events, ...); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel image: a bzImage or an ELF vmlinux (PVH entry used when present).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (initramfs).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0].
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Guest memory, e.g. 512M or 2G; a bare number is MiB [default: 512M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// How guest RAM is backed: auto (private anonymous memory, or a shared memfd when a
    /// vhost-user device must map it), private, shared, or hugetlb (2 MiB pages the host
    /// has reserved) [default: auto].
    #[arg(long, value_name = "BACKING", value_parser = parse_backing)]
    memory_backing: Option<MemoryBacking>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
    /// A virtio-blk disk backed by a local file; repeat for more (vda, vdb, ...).
    #[arg(long, value_name = "PATH[,readonly]")]
    disk: Vec<String>,
    /// A virtio-blk disk served by a vhost-user-blk backend (e.g. lego-vhost-blk) listening on the Unix socket PATH; repeat for more. The guest sees them after the --disk disks. When the backend hangs up (it crashed or restarts), legovmm reconnects to the same path with backoff and re-submits the requests that were in flight, so the guest sees a delay, no error; reconnect=SECS fails the device after that many seconds instead of waiting for as long as it takes (the default). Backends legovmm starts itself (--remote-memory, --remote-disk) are restarted when they die.
    #[arg(long = "vhost-user-blk", value_name = "socket=PATH[,reconnect=SECS]")]
    vhost_user_blk: Vec<String>,
    /// A virtio-net device on the tap NAME (created when missing and legovmm may), joined to bridge BR when given; its MAC and the guest's address come from the manager when the vNode has an id (repeatable).
    #[arg(
        long,
        value_name = "tap=NAME[,mac=MAC][,queues=N][,bridge=BR][,backend=auto|vhost-net|in-process]"
    )]
    net: Vec<String>,
    /// Where the serial console goes: stdout, none, file:PATH or socket:PATH (listen; its clients also type into the guest) [default: stdout]. On stdout with a terminal on stdin, the terminal types into the guest in raw mode; Ctrl-A x quits.
    #[arg(long, value_name = "OUTPUT")]
    serial: Option<String>,
    /// Remote memory for the vNode, e.g. 1G: placed by the manager on memory monitors, served by a lego-vhost-blk that legovmm starts; the guest's init makes it swap.
    #[arg(long, value_name = "SIZE")]
    remote_memory: Option<String>,
    /// Page guest RAM to the vNode's remote memory, keeping at most SIZE of it resident on this host (e.g. 512M; needs --vnode and a manager): the guest sees all of --memory as ordinary RAM, legovmm fetches what it touches from the memory monitors and writes cold pages back. Needs a KVM that runs guests on userfaultfd-registered memory (any stock KVM; not PVM).
    #[arg(long, value_name = "SIZE")]
    local_memory: Option<String>,
    /// With --local-memory: pages fetched after the faulting one when guest RAM is touched in order (0 turns prefetch off; at most 255) [default: 15].
    #[arg(long, value_name = "PAGES")]
    paging_prefetch: Option<u64>,
    /// A remote disk: a volume on a storage monitor (created with SIZE if it does not exist); the guest's init mounts it at /mnt/remote.
    #[arg(long, value_name = "NAME[,SIZE]")]
    remote_disk: Option<String>,
    /// The manager placing remote devices [default: 127.0.0.1:7300].
    #[arg(long, value_name = "ADDR", env = "LEGO_MANAGER")]
    manager: Option<String>,
    /// The vNode id owning the remote devices (needed with --remote-memory/--remote-disk/--local-memory). With an id, legovmm also announces the running vNode to the manager (host, pid, API socket, devices: `legoctl vnode list`) and says when it stops.
    #[arg(long, value_name = "N")]
    vnode: Option<u64>,
    /// Cluster key or credential file (legoctl credential issue --role compute) for the vNode and its remote devices [default: $LEGO_CLUSTER_KEY or $LEGO_CLUSTER_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Serve the API (HTTP/1.1 REST: vm.info, vm.counters, vm.pause, vm.resume, vm.shutdown, vmm.ping, and Prometheus metrics at /metrics; see vmm/api/openapi.json) on the Unix socket PATH; e.g. `curl --unix-socket PATH http://localhost/api/v1/vm.info`.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Write lifecycle events (started, device_added, device_removed, paused, resumed, backend_lost, backend_reconnected, backend_failed, guest_panic, stopped) as JSON lines to PATH: a file (appended to) or a FIFO that already has a reader.
    #[arg(long, value_name = "PATH")]
    events: Option<PathBuf>,
    /// The KVM device.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
}

fn parse_backing(s: &str) -> Result<MemoryBacking, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match cli.command {
        Command::Probe { kvm_device } => probe(&kvm_device),
        Command::Run(args) => run(*args),
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn probe(kvm_device: &std::path::Path) -> ExitCode {
    let result = legovmm::kvm::open(kvm_device)
        .and_then(|kvm| legovmm::kvm::probe_stock_kernel_support(&kvm));
    match result {
        Ok(()) => {
            println!("KVM at {} can boot stock kernels", kvm_device.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => return fail(&e),
        },
        None => FileConfig::default(),
    };
    let flags = Overrides {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        vcpus: args.vcpus,
        disks: args.disk,
        vhost_user_blk: args.vhost_user_blk,
        net: args.net,
        serial: args.serial,
        remote_memory: args.remote_memory,
        local_memory: args.local_memory,
        paging_prefetch: args.paging_prefetch,
        remote_disk: args.remote_disk,
        manager: args.manager,
        vnode: args.vnode,
        key_file: args.key_file,
        memory_backing: args.memory_backing,
        api_socket: args.api_socket,
        events: args.events,
    };
    let config = match VmConfig::resolve(file, flags) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // The guest's console is this terminal: raw mode while it runs, restored on every return.
    let _terminal = match console_on_terminal(&config) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    match vm::run(&config, &args.kvm_device) {
        Ok(Outcome::Guest(GuestExit::PowerOff)) => {
            eprintln!("legovmm: the guest powered off");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Guest(GuestExit::Reset)) => {
            eprintln!("legovmm: the guest rebooted; the vNode ends here");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Guest(GuestExit::Crashed(reason))) => {
            eprintln!("legovmm: the guest crashed: {reason}");
            ExitCode::from(EXIT_GUEST_CRASHED)
        }
        Ok(Outcome::Guest(GuestExit::Shutdown)) => {
            eprintln!("legovmm: the vNode was shut down through the API");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Guest(GuestExit::Quit)) => {
            eprintln!("legovmm: quit from the console (Ctrl-A x)");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Guest(GuestExit::VmmFailed(reason))) => {
            eprintln!("legovmm: the vNode was stopped: {reason}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
        Ok(Outcome::Signal(signal)) => {
            eprintln!("legovmm: stopped by signal {signal}");
            ExitCode::from(128u8.saturating_add(signal as u8))
        }
        Err(e) => fail(&e),
    }
}

/// Switches standard input to raw mode when it is a terminal and the console is on stdout;
/// the serial port then reads it (see `console_input`).
fn console_on_terminal(
    config: &legovmm::config::VmConfig,
) -> Result<Option<RawTerminal>, legovmm::console_input::InputError> {
    if !legovmm::console::reads_stdin(&config.serial) {
        return Ok(None);
    }
    let raw = RawTerminal::enter(std::io::stdin().as_raw_fd())?;
    eprintln!("legovmm: the guest's console is on this terminal; Ctrl-A x quits");
    Ok(Some(raw))
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("legovmm: {}", error_chain(e));
    ExitCode::from(EXIT_VMM_ERROR)
}
