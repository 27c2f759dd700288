//! The swap benchmark's job script (POSIX sh for the compute host's busybox): set up
//! loopback, a cluster key and a tmpfs for qemu-nbd's file, then run each setup in turn per
//! round (local, qemu-local, remote, nbd, local, ...), each boot under `boot-timer` and
//! retried while its guest never comes up, appending one result line per try to
//! [`RESULTS_FILE`].

use super::Setup;
use crate::script::{self, bench_fn, files, sh_quote, START_MARKER};

/// The file in the job folder holding one `LEGO_BENCH_RESULT` line per try.
pub const RESULTS_FILE: &str = "swap-results.txt";
/// Printed by the guest after the workload: swap counters and memory sizes.
pub const SWAPSTAT_MARKER: &str = "LEGO_SWAPSTAT";
/// The console lines each result line carries (besides the timer's).
pub const CONSOLE_GREP: &str = "LEGO_(MEMTEST|SWAPSTAT|RUN_EXIT|SWAP_ON)";
/// Where the compute host mounts the tmpfs holding qemu-nbd's file.
pub const NBD_DIR: &str = "/run/lego-swap-bench";
/// The NBD export name.
pub const NBD_EXPORT: &str = "swap";
/// qemu-nbd's TCP port on the compute host's loopback.
pub const NBD_PORT: u16 = 10809;
/// The manager's address on the compute host's loopback.
pub const MANAGER: &str = "127.0.0.1:7300";
/// The memory monitor's address on the compute host's loopback.
pub const MEMORY_MONITOR: &str = "127.0.0.1:7100";
/// The virtio-blk serial the guest's init makes swap (see tools/lego-image/init).
pub const SWAP_SERIAL: &str = "lego-remote-memory";

/// The workspace programs the remote setup runs (legovmm itself is `$LEGOVMM`).
pub const LEGO_PROGRAMS: [&str; 4] = [
    "lego-vhost-blk",
    "lego-manager",
    "lego-memory-monitor",
    "legoctl",
];

/// How QEMU reaches qemu-nbd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NbdTransport {
    /// TCP on the compute host's loopback (as the fabric reaches the memory monitor).
    Tcp,
    /// A Unix socket.
    Unix,
}

/// What the job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapPlan {
    /// Measured runs per setup.
    pub runs: u32,
    /// Tries per run (1 + retries after a guest that never came up).
    pub tries: u32,
    /// The setups, in the order each round runs them.
    pub setups: Vec<Setup>,
    /// Seconds to wait for the guest's ready marker before killing a try.
    pub ready_timeout_secs: u64,
    /// Seconds a try may take in all.
    pub run_timeout_secs: u64,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Guest RAM of the swapping setups, MiB.
    pub guest_memory_mib: u32,
    /// Guest RAM of the all-local setups (legovmm's and QEMU's), MiB.
    pub local_memory_mib: u32,
    /// Remote memory and NBD disk size, MiB.
    pub swap_mib: u32,
    /// The paged setup's `--paging-prefetch`, if not legovmm's default.
    pub paged_prefetch: Option<u32>,
    /// The guest kernel command line (the same for every setup).
    pub cmdline: String,
    /// Memory sampling period of the timer, ms.
    pub sample_ms: u64,
    /// QEMU's `-M` value.
    pub qemu_machine: String,
    /// QEMU's `-cpu` value.
    pub qemu_cpu: String,
    /// How QEMU reaches qemu-nbd.
    pub nbd: NbdTransport,
    /// The `remote-poll` setup's `--poll-us` (backend and memory monitor).
    pub poll_us: u32,
}

/// The guest command: the workload, then the guest's swap counters and memory sizes on one
/// `LEGO_SWAPSTAT` line; exits with the workload's status. It contains no double quote,
/// so it fits in `lego.run="..."`.
pub fn guest_command(workload_mib: u32) -> String {
    format!(
        "lego-guest-tools memtest --mib {workload_mib}; s=$?; \
         echo {SWAPSTAT_MARKER} $(grep -E '^pswp(in|out) ' /proc/vmstat | tr ' ' =) \
         $(sed -n 's/^MemTotal: */mem_total_kb=/p;s/^SwapTotal: */swap_total_kb=/p' /proc/meminfo); \
         exit $s"
    )
}

impl SwapPlan {
    /// The legovmm arguments of the setup after `$LEGOVMM` (the command line follows
    /// `--cmdline`, then remote memory's flags). `None` for QEMU's setups.
    pub fn legovmm_args(&self, setup: Setup) -> Option<String> {
        match setup {
            Setup::Local => Some(script::legovmm_run_args(self.local_memory_mib, self.vcpus)),
            Setup::Remote | Setup::RemoteRelay | Setup::RemotePoll => {
                Some(script::legovmm_run_args(self.guest_memory_mib, self.vcpus))
            }
            Setup::Paged => Some(script::legovmm_run_args(self.local_memory_mib, self.vcpus)),
            Setup::QemuLocal | Setup::Nbd => None,
        }
    }

    /// legovmm's remote memory flags (after the command line).
    pub fn remote_memory_args(&self) -> String {
        format!(
            "--vnode 1 --manager {MANAGER} --remote-memory {}M",
            self.swap_mib
        )
    }

    /// legovmm's paged guest RAM flags (after the command line): the swapping setups' guest
    /// RAM is what stays resident.
    pub fn paged_memory_args(&self) -> String {
        let prefetch = self
            .paged_prefetch
            .map_or(String::new(), |p| format!(" --paging-prefetch {p}"));
        format!(
            "--vnode 1 --manager {MANAGER} --local-memory {}M{prefetch}",
            self.guest_memory_mib
        )
    }

    /// The qemu-nbd arguments (the file follows).
    pub fn qemu_nbd_args(&self) -> String {
        let listen = match self.nbd {
            NbdTransport::Tcp => format!("-b 127.0.0.1 -p {NBD_PORT}"),
            NbdTransport::Unix => format!("-k {NBD_DIR}/nbd.sock"),
        };
        format!(
            "--fork --pid-file {NBD_DIR}/nbd.pid -f raw -x {NBD_EXPORT} -t --cache=writeback {listen}"
        )
    }

    /// QEMU's arguments (the command line follows `-append`): the guest with
    /// `guest_memory_mib` of RAM and the NBD export as a virtio-blk disk with the serial
    /// the guest's init makes swap.
    pub fn qemu_args(&self) -> String {
        let server = match self.nbd {
            NbdTransport::Tcp => {
                format!("server.type=inet,server.host=127.0.0.1,server.port={NBD_PORT}")
            }
            NbdTransport::Unix => format!("server.type=unix,server.path={NBD_DIR}/nbd.sock"),
        };
        let devices = format!(
            "-blockdev driver=nbd,node-name=swap,{server},export={NBD_EXPORT} \
             -device virtio-blk-device,drive=swap,serial={SWAP_SERIAL}"
        );
        script::qemu_vm_args(
            &self.qemu_machine,
            &self.qemu_cpu,
            self.vcpus,
            self.guest_memory_mib,
            &devices,
        )
    }

    /// QEMU's arguments for the all-local setup (the command line follows `-append`): the
    /// guest with `local_memory_mib` of RAM, no disk, and the machine and CPU of the NBD
    /// setup. Its RAM is QEMU's default (`-m` alone: private anonymous memory, transparent
    /// huge pages as the host allows: [`script::qemu_private_ram_args`]), not the shared
    /// memfd of [`script::qemu_vm_args`]: nothing maps it but QEMU, as nothing maps
    /// legovmm's in the `local` setup.
    pub fn qemu_local_args(&self) -> String {
        script::qemu_private_ram_args(
            &self.qemu_machine,
            &self.qemu_cpu,
            self.vcpus,
            self.local_memory_mib,
            "",
        )
    }

    fn uses(&self, setup: Setup) -> bool {
        self.setups.contains(&setup)
    }

    /// True if some setup needs the manager and a memory monitor.
    fn uses_cluster(&self) -> bool {
        self.setups.iter().any(|s| s.needs_cluster())
    }

    /// The job files the script runs, besides `$LEGOVMM` (made executable).
    fn executables(&self) -> Vec<&'static str> {
        let mut v = vec![files::TIMER];
        if self.uses_cluster() {
            v.extend(LEGO_PROGRAMS);
        }
        if self.setups.iter().any(|s| s.is_qemu()) {
            v.extend([files::LOADER, files::QEMU]);
        }
        if self.uses(Setup::Nbd) {
            v.push(files::QEMU_NBD);
        }
        v
    }

    /// Renders the job script.
    pub fn render(&self) -> String {
        let mut s = String::from("# Generated by swap-bench (lego-bench).\n");
        s.push_str(&format!(
            "T=./{}\nCMDLINE={}\nchmod 755{}\n",
            files::TIMER,
            sh_quote(&self.cmdline),
            self.executables()
                .iter()
                .map(|f| format!(" ./{f}"))
                .collect::<String>()
        ));
        s.push_str(
            "# The daemons and qemu-nbd listen on loopback, which L1's init may leave down.\n\
             ip link set lo up 2> /dev/null || true\n",
        );
        if self.uses_cluster() {
            s.push_str(
                "export LEGO_VHOST_BLK_BIN=\"$JOB_DIR/lego-vhost-blk\"\n\
                 export LEGO_CLUSTER_KEY=$(./legoctl keygen)\n",
            );
        }
        if self.uses(Setup::Nbd) {
            s.push_str(&format!(
                "# qemu-nbd's file lives in RAM, as remote memory's pages do on the memory monitor.\n\
                 mkdir -p {NBD_DIR}\n\
                 mount -t tmpfs -o size={}m tmpfs {NBD_DIR} || echo \"LEGO_BENCH_NOTE no tmpfs at {NBD_DIR}\"\n",
                u64::from(self.swap_mib) + 64
            ));
        }
        s.push_str(
            "# Warm the page cache so that no setup pays for reading the job disk.\n\
             cat ./* > /dev/null\n",
        );
        s.push_str(&format!(
            "echo \"{START_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(grep -c ^processor /proc/cpuinfo) mem_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)\"\n"
        ));
        s.push_str(&format!(
            "TIMER=\"$T boot-timer --forward '' --sample-ms {} --ready-timeout {} --timeout {}\"\n",
            self.sample_ms, self.ready_timeout_secs, self.run_timeout_secs
        ));
        s.push_str("# boot_SETUP CONSOLE CMDLINE: one run, its timer line on standard output.\n");
        if let Some(args) = self
            .legovmm_args(Setup::Local)
            .filter(|_| self.uses(Setup::Local))
        {
            s.push_str(&format!(
                "boot_local() {{\n    c=$1; l=$2; shift 2\n    \
                 $TIMER --label local --console \"$c\" -- $LEGOVMM {args} \"$l\" \"$@\" 2> \"$c.err\"\n}}\n"
            ));
        }
        if self.uses(Setup::QemuLocal) {
            s.push_str(&format!(
                "boot_{name}() {{\n    c=$1; l=$2; shift 2\n    \
                 $TIMER --label {label} --console \"$c\" -- ./{loader} --library-path \"$JOB_DIR\" ./{qemu} {args} \"$l\" \"$@\" 2> \"$c.err\"\n}}\n",
                name = Setup::QemuLocal.shell_name(),
                label = Setup::QemuLocal.name(),
                loader = files::LOADER,
                qemu = files::QEMU,
                args = self.qemu_local_args()
            ));
        }
        let swap_cap = u64::from(self.swap_mib) * 2;
        let poll = self.poll_us;
        for (setup, extra, cap, tuning) in [
            (
                Setup::Remote,
                self.remote_memory_args(),
                swap_cap,
                Tuning::default(),
            ),
            (
                Setup::RemoteRelay,
                self.remote_memory_args(),
                swap_cap,
                Tuning {
                    env: "LEGOVMM_VHOST_INTERRUPTS=relay ".into(),
                    monitor: String::new(),
                },
            ),
            (
                Setup::RemotePoll,
                self.remote_memory_args(),
                swap_cap,
                Tuning {
                    env: format!("LEGO_VHOST_POLL_US={poll} "),
                    monitor: format!(" --poll-us {poll}"),
                },
            ),
            (
                Setup::Paged,
                self.paged_memory_args(),
                u64::from(self.local_memory_mib) * 2,
                Tuning::default(),
            ),
        ] {
            if let Some(args) = self.legovmm_args(setup).filter(|_| self.uses(setup)) {
                s.push_str(&cluster_boot_fn(setup, &args, &extra, cap, &tuning));
            }
        }
        if self.uses(Setup::Nbd) {
            s.push_str(&format!(
                "# A fresh sparse file and qemu-nbd per run (--fork: it serves once the parent exits).\n\
                 boot_nbd() {{\n    c=$1; l=$2; shift 2\n    \
                 rm -f {NBD_DIR}/swap.img {NBD_DIR}/nbd.pid {NBD_DIR}/nbd.sock\n    \
                 dd if=/dev/zero of={NBD_DIR}/swap.img bs=1048576 count=0 seek={swap} 2> /dev/null\n    \
                 if ! ./{loader} --library-path \"$JOB_DIR\" ./{nbd} {nbd_args} {NBD_DIR}/swap.img > \"$c.nbd.log\" 2>&1 < /dev/null; then\n        \
                 echo \"LEGO_BENCH_NOTE qemu-nbd failed: $(tr '\\n' ' ' < \"$c.nbd.log\")\" >&2\n        return 1\n    fi\n    \
                 $TIMER --label nbd --console \"$c\" -- ./{loader} --library-path \"$JOB_DIR\" ./{qemu} {qemu_args} \"$l\" \"$@\" 2> \"$c.err\"\n    \
                 rc=$?\n    p=$(cat {NBD_DIR}/nbd.pid 2> /dev/null)\n    \
                 [ -n \"$p\" ] && kill $p 2> /dev/null\n    n=0\n    \
                 while [ -n \"$p\" ] && kill -0 $p 2> /dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done\n    \
                 rm -f {NBD_DIR}/swap.img\n    return $rc\n}}\n",
                swap = self.swap_mib,
                loader = files::LOADER,
                nbd = files::QEMU_NBD,
                nbd_args = self.qemu_nbd_args(),
                qemu = files::QEMU,
                qemu_args = self.qemu_args()
            ));
        }
        s.push_str(&swap_bench_fn(self.tries));
        let setups: Vec<String> = self.setups.iter().map(ToString::to_string).collect();
        s.push_str(&script::rounds(self.runs, &setups, RESULTS_FILE));
        if self.uses(Setup::Nbd) {
            s.push_str(&format!("umount {NBD_DIR} 2> /dev/null\n"));
        }
        s.push_str("echo LEGO_BENCH_DONE\n");
        s
    }
}

/// What a setup changes in the remote-memory data path: environment for legovmm (and the
/// backend it starts) and extra memory monitor flags.
#[derive(Debug, Default)]
struct Tuning {
    /// `NAME=VALUE ` words put before the timer (which passes them on to legovmm).
    env: String,
    /// Flags appended to the memory monitor's command line.
    monitor: String,
}

/// The boot function of a setup that needs the cluster on L1's loopback (a fresh manager
/// and memory monitor of `cap` MiB per run, so every run starts empty): `$LEGOVMM args
/// '<cmdline>' extra`, with `tuning`'s environment and monitor flags.
fn cluster_boot_fn(setup: Setup, args: &str, extra: &str, cap: u64, tuning: &Tuning) -> String {
    format!(
        "# A fresh manager and memory monitor per run, so every run starts empty.\n\
         boot_{name}() {{\n    c=$1; l=$2; shift 2\n    \
         rm -rf remote-state; mkdir -p remote-state\n    \
         ./lego-manager --state-dir remote-state --listen {MANAGER} --heartbeat-ms 200 > \"$c.manager.log\" 2>&1 < /dev/null &\n    \
         m=$!\n    sleep 0.5\n    \
         ./lego-memory-monitor --listen {MEMORY_MONITOR} --capacity {cap}M --manager {MANAGER} --heartbeat-ms 200{monitor} > \"$c.monitor.log\" 2>&1 < /dev/null &\n    \
         mm=$!\n    n=0\n    \
         while [ \"$(./legoctl --manager {MANAGER} status 2> /dev/null | grep -c alive)\" -lt 1 ] && [ $n -lt 300 ]; do\n        \
         sleep 0.1; n=$((n + 1))\n    done\n    \
         {env}$TIMER --label {label} --console \"$c\" -- $LEGOVMM {args} \"$l\" {extra} \"$@\" 2> \"$c.err\"\n    \
         rc=$?\n    \
         ./legoctl --manager {MANAGER} monitor-stats --kind memory --addr {MEMORY_MONITOR} > \"$c.monitor-stats\" 2>&1\n    \
         kill $m $mm 2> /dev/null\n    wait $m $mm 2> /dev/null\n    return $rc\n}}\n",
        name = setup.shell_name(),
        label = setup.name(),
        env = tuning.env,
        monitor = tuning.monitor,
    )
}

/// The script's `bench` function ([`bench_fn`]), calling the boot function of a setup by
/// its shell name ([`Setup::shell_name`]: `boot_qemu_local` for `qemu-local`, whose name
/// stays the label of its result lines and files).
fn swap_bench_fn(tries: u32) -> String {
    let f = bench_fn(tries, Some(CONSOLE_GREP));
    let call = "out=$(boot_$vmm ";
    debug_assert!(f.contains(call), "bench_fn no longer calls boot_$vmm: {f}");
    f.replace(call, "out=$(boot_$(echo \"$vmm\" | tr - _) ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::assert_parses_as_sh;

    fn plan() -> SwapPlan {
        SwapPlan {
            runs: 3,
            tries: 2,
            setups: Setup::ALL.to_vec(),
            ready_timeout_secs: 120,
            run_timeout_secs: 600,
            vcpus: 1,
            guest_memory_mib: 128,
            local_memory_mib: 1024,
            swap_mib: 1024,
            paged_prefetch: None,
            cmdline: lego_testbed::vnode::guest_cmdline(&guest_command(384), "quiet").unwrap(),
            sample_ms: 200,
            qemu_machine: script::DEFAULT_QEMU_MACHINE.into(),
            qemu_cpu: script::DEFAULT_QEMU_CPU.into(),
            nbd: NbdTransport::Tcp,
            poll_us: 50,
        }
    }

    #[test]
    fn the_remote_variants_differ_only_in_their_tuning() {
        let mut p = plan();
        p.setups = vec![Setup::Remote, Setup::RemoteRelay, Setup::RemotePoll];
        let s = p.render();
        assert_parses_as_sh(&s);
        let body = |name: &str| {
            let start = s.find(&format!("boot_{name}() {{")).expect(name);
            let end = s[start..].find("\n}\n").expect("end") + start;
            s[start..end].to_string()
        };
        let remote = body("remote");
        assert!(!remote.contains("LEGO_VHOST_POLL_US") && !remote.contains("relay"));
        assert_eq!(
            body("remote_relay")
                .replace("LEGOVMM_VHOST_INTERRUPTS=relay $TIMER", "$TIMER")
                .replace("--label remote-relay", "--label remote")
                .replace("boot_remote_relay", "boot_remote"),
            remote
        );
        assert_eq!(
            body("remote_poll")
                .replace("LEGO_VHOST_POLL_US=50 $TIMER", "$TIMER")
                .replace(" --poll-us 50 >", " >")
                .replace("--label remote-poll", "--label remote")
                .replace("boot_remote_poll", "boot_remote"),
            remote
        );
        assert!(s.contains("bench remote-poll $r"), "{s}");
    }

    #[test]
    fn the_script_parses_as_posix_sh() {
        assert_parses_as_sh(&plan().render());
        let mut p = plan();
        p.nbd = NbdTransport::Unix;
        p.setups = vec![Setup::Nbd];
        assert_parses_as_sh(&p.render());
    }

    #[test]
    fn the_guest_command_fits_in_lego_run_and_reports_swap() {
        let c = guest_command(384);
        assert!(!c.contains('"'), "{c}");
        assert!(
            c.starts_with("lego-guest-tools memtest --mib 384; s=$?;"),
            "{c}"
        );
        assert!(c.ends_with("exit $s"), "{c}");
        // Run it with a stand-in memtest: one LEGO_SWAPSTAT line with the counters, and
        // the workload's status.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("lego-guest-tools");
        std::fs::write(&fake, "#!/bin/sh\necho LEGO_MEMTEST pages=1\nexit 3\n").unwrap();
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&fake)
            .status()
            .unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&c)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", dir.path().to_str().unwrap()),
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with(SWAPSTAT_MARKER))
            .unwrap();
        for key in ["pswpin=", "pswpout=", "mem_total_kb=", "swap_total_kb="] {
            assert!(line.contains(key), "{key} in {line}");
        }
    }

    #[test]
    fn each_setup_gets_its_vmm_and_memory() {
        let s = plan().render();
        assert!(
            s.contains("$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 1024M --vcpus 1 --cmdline \"$l\" \"$@\""),
            "{s}"
        );
        assert!(
            s.contains("--memory 128M --vcpus 1 --cmdline \"$l\" --vnode 1 --manager 127.0.0.1:7300 --remote-memory 1024M"),
            "{s}"
        );
        assert!(s.contains("./qemu-system-x86_64 -accel kvm -M microvm,x-option-roms=off -cpu host -smp 1 -m 128M -object memory-backend-memfd,id=mem,size=128M,share=on"), "{s}");
        assert!(s.contains("-blockdev driver=nbd,node-name=swap,server.type=inet,server.host=127.0.0.1,server.port=10809,export=swap -device virtio-blk-device,drive=swap,serial=lego-remote-memory -append \"$l\""), "{s}");
        assert!(s.contains("./qemu-nbd --fork --pid-file /run/lego-swap-bench/nbd.pid -f raw -x swap -t --cache=writeback -b 127.0.0.1 -p 10809 /run/lego-swap-bench/swap.img"), "{s}");
        assert!(s.contains("seek=1024"), "{s}");
        assert!(s.contains("--capacity 2048M"), "{s}");
        assert!(s.contains("chmod 755 ./lego-guest-tools ./lego-vhost-blk ./lego-manager ./lego-memory-monitor ./legoctl ./ld-linux-x86-64.so.2 ./qemu-system-x86_64 ./qemu-nbd\n"), "{s}");
        // QEMU with the local setup's RAM, QEMU's default (private), no disk.
        assert!(
            s.contains("boot_qemu_local() {\n    c=$1; l=$2; shift 2\n    $TIMER --label qemu-local --console \"$c\" -- ./ld-linux-x86-64.so.2 --library-path \"$JOB_DIR\" ./qemu-system-x86_64 -accel kvm -M microvm,x-option-roms=off -cpu host -smp 1 -m 1024M -bios qboot.rom -kernel vmlinuz -initrd initramfs.cpio -nodefaults -no-user-config -display none -serial stdio -no-reboot -append \"$l\" \"$@\" 2> \"$c.err\"\n}\n"),
            "{s}"
        );
        assert!(
            s.contains("out=$(boot_$(echo \"$vmm\" | tr - _) \"$vmm-$round-$try.console\""),
            "{s}"
        );
        // Interleaved: local, qemu-local, remote, nbd within each round.
        let l = s.find("bench local $r").unwrap();
        let q = s.find("bench qemu-local $r").unwrap();
        let r = s.find("bench remote $r").unwrap();
        let n = s.find("bench nbd $r").unwrap();
        assert!(l < q && q < r && r < n, "{s}");
        assert!(s.contains("while [ $r -lt 3 ]"), "{s}");
        assert!(
            s.contains("bench nbd $r \"$CMDLINE\" swap-results.txt\n    # On the job disk now"),
            "{s}"
        );
        assert!(s.contains("while [ $try -lt 2 ]"), "{s}");
        assert!(
            s.contains("grep -E 'LEGO_(MEMTEST|SWAPSTAT|RUN_EXIT|SWAP_ON)'"),
            "{s}"
        );
    }

    #[test]
    fn unused_setups_are_left_out() {
        let mut p = plan();
        p.setups = vec![Setup::Local];
        let s = p.render();
        assert!(!s.contains("qemu-system") && !s.contains("boot_nbd"), "{s}");
        assert!(!s.contains("tmpfs"), "{s}");
        assert!(!s.contains("lego-manager"), "{s}");
        assert!(!s.contains("boot_remote"), "{s}");
        assert!(s.contains("bench local $r"), "{s}");
        p.setups = vec![Setup::Remote];
        let s = p.render();
        assert!(
            !s.contains("boot_local") && s.contains("boot_remote"),
            "{s}"
        );
        p.nbd = NbdTransport::Unix;
        p.setups = vec![Setup::Nbd];
        let s = p.render();
        assert!(s.contains("-k /run/lego-swap-bench/nbd.sock"), "{s}");
        assert!(
            s.contains("server.type=unix,server.path=/run/lego-swap-bench/nbd.sock"),
            "{s}"
        );
        assert!(!s.contains("legoctl"), "{s}");
        assert!(!s.contains("boot_qemu_local"), "{s}");
        // QEMU alone, all local: no qemu-nbd, no tmpfs, no daemons.
        p.setups = vec![Setup::QemuLocal];
        let s = p.render();
        assert_parses_as_sh(&s);
        assert!(s.contains("boot_qemu_local()"), "{s}");
        assert!(s.contains("bench qemu-local $r"), "{s}");
        assert!(
            s.contains(
                "chmod 755 ./lego-guest-tools ./ld-linux-x86-64.so.2 ./qemu-system-x86_64\n"
            ),
            "{s}"
        );
        for absent in [
            "./qemu-nbd",
            "tmpfs",
            "boot_nbd",
            "boot_local",
            "lego-manager",
            "memory-backend",
        ] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
    }

    #[test]
    fn qemu_local_differs_from_nbd_only_in_ram_and_disk() {
        let p = plan();
        let local = p.qemu_local_args();
        assert!(!local.contains("memory-backend"), "{local}");
        assert!(local.contains("-m 1024M -bios"), "{local}");
        // The NBD setup's arguments without its RAM size, memfd and disk.
        let nbd = p
            .qemu_args()
            .replace("-m 128M -object memory-backend-memfd,id=mem,size=128M,share=on -machine memory-backend=mem", "-m 1024M");
        let disk = nbd.find("-blockdev").unwrap();
        let append = nbd.find("-append").unwrap();
        let nbd = format!("{}{}", &nbd[..disk], &nbd[append..]);
        assert_eq!(local, nbd);
    }

    #[test]
    fn bench_runs_a_hyphenated_setup_under_its_own_name() {
        // The script's bench function with a stand-in boot_qemu_local.
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "boot_qemu_local() {{ echo \"LEGO_BOOT_TIMING vmm=qemu-local status=ok args=$*\"; echo LEGO_MEMTEST pages=1 > \"$1\"; }}\n{}bench qemu-local 1 'a b' {RESULTS_FILE}\n",
            swap_bench_fn(2)
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let res = std::fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap();
        assert_eq!(
            res.trim_end(),
            "LEGO_BENCH_RESULT vmm=qemu-local round=1 try=1 rc=0 LEGO_BOOT_TIMING vmm=qemu-local status=ok args=qemu-local-1-1.console a b LEGO_MEMTEST pages=1",
            "{res}"
        );
    }
}
