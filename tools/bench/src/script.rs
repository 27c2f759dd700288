//! The job script run on the compute host: warm the page cache, then boot the guest with
//! each VMM in turn (legovmm, QEMU, legovmm, ...) under `lego-guest-tools boot-timer`,
//! retrying a boot whose guest never came up, and append one result line per try to
//! [`RESULTS_FILE`]. An optional trace round keeps full consoles for analysis.

/// The file in the job folder holding one `LEGO_BENCH_RESULT` line per try.
pub const RESULTS_FILE: &str = "results.txt";
/// The file in the job folder holding the result lines of the trace boots.
pub const TRACE_FILE: &str = "trace.txt";
/// The guest command of the trace boots: the guest's uptime at its ready marker, then
/// the kernel log with its timestamps (the boot itself stays quiet).
pub const TRACE_COMMAND: &str = "echo LEGO_UPTIME $(cat /proc/uptime); dmesg";
/// Prefix of the lines with L1 KVM's counters at the end of each trace boot.
pub const KVM_STATS_MARKER: &str = "LEGO_BENCH_KVM_STATS";
/// The L1 KVM counters (files in `/sys/kernel/debug/kvm`) recorded in trace boots.
pub const KVM_STATS: &str = "exits io_exits mmio_exits pf_taken pf_fixed halt_exits irq_exits";
/// The round name of the trace boots.
pub const TRACE_ROUND: &str = "trace";
/// Printed by the job when its benchmark starts (after L1 booted).
pub const START_MARKER: &str = "LEGO_BENCH_START";
/// Prefix of each result line.
pub const RESULT_MARKER: &str = "LEGO_BENCH_RESULT";

/// Names of the files in the job folder.
pub mod files {
    /// The guest kernel.
    pub const KERNEL: &str = "vmlinuz";
    /// The guest initramfs.
    pub const INITRAMFS: &str = "initramfs.cpio";
    /// The static timer.
    pub const TIMER: &str = "lego-guest-tools";
    /// The QEMU binary.
    pub const QEMU: &str = "qemu-system-x86_64";
    /// QEMU's firmware.
    pub const QBOOT: &str = "qboot.rom";
    /// The dynamic loader QEMU is run through.
    pub const LOADER: &str = "ld-linux-x86-64.so.2";
    /// qemu-nbd (swap-bench), run through the loader like QEMU.
    pub const QEMU_NBD: &str = "qemu-nbd";
}

/// The VMMs compared, in the order each round runs them.
pub const VMMS: [&str; 2] = ["legovmm", "qemu"];

/// What the job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Measured boots per VMM.
    pub runs: u32,
    /// Tries per boot (1 + retries after a guest that never came up).
    pub tries: u32,
    /// Seconds to wait for the ready marker before killing a try.
    pub ready_timeout_secs: u64,
    /// Seconds a try may take in all.
    pub boot_timeout_secs: u64,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The guest kernel command line of the measured boots.
    pub cmdline: String,
    /// The command line of the trace boots (kept consoles, legovmm debug log, the VMMs'
    /// start-up alone); `None` skips them.
    pub trace_cmdline: Option<String>,
    /// Memory sampling period in milliseconds.
    pub sample_ms: u64,
    /// QEMU's `-M` value.
    pub qemu_machine: String,
    /// QEMU's `-cpu` value.
    pub qemu_cpu: String,
}

/// Errors from planning the job.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// A QEMU option value would not survive the shell.
    #[error("the QEMU {what} {value:?} may only contain letters, digits and , = . _ + -")]
    BadQemuValue {
        /// Which option.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// Checks that a QEMU option value (`-M`, `-cpu`) is one plain shell word.
pub fn check_qemu_value(what: &'static str, value: &str) -> Result<(), ScriptError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",=._+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ScriptError::BadQemuValue {
            what,
            value: value.to_string(),
        })
    }
}

/// QEMU's machine by default: microvm without option ROMs, everything else as QEMU sets it.
pub const DEFAULT_QEMU_MACHINE: &str = "microvm,x-option-roms=off";
/// QEMU's CPU by default.
pub const DEFAULT_QEMU_CPU: &str = "host";

/// The job's rounds: `runs` times, each of `setups` in order through the job's `bench`
/// function (results appended to `results_file`), with a progress line before and a sync
/// after each (a compute host that stalls later keeps what ran).
pub fn rounds(runs: u32, setups: &[String], results_file: &str) -> String {
    let mut s = format!("r=0\nwhile [ $r -lt {runs} ]; do\n    r=$((r + 1))\n");
    for setup in setups {
        s.push_str(&format!(
            "    echo \"LEGO_BENCH_PROGRESS round $r of {runs} setup {setup} uptime=$(cut -d' ' -f1 /proc/uptime)\"\n    \
             bench {setup} $r \"$CMDLINE\" {results_file}\n    \
             # On the job disk now: a compute host that stalls later keeps what ran.\n    \
             sync\n"
        ));
    }
    s.push_str("done\n");
    s
}

/// Quotes a string for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The arguments of `$LEGOVMM` booting the guest image from the job folder with
/// `memory_mib` of RAM (the command line follows `--cmdline`).
pub fn legovmm_run_args(memory_mib: u32, vcpus: u32) -> String {
    format!(
        "run --kernel {} --initrd {} --memory {memory_mib}M --vcpus {vcpus} --cmdline",
        files::KERNEL,
        files::INITRAMFS,
    )
}

/// The arguments of QEMU booting the guest image from the job folder with `memory_mib` of
/// RAM in a shared memfd (as legovmm's) and the console on standard output; devices go
/// before the final `-append` (the command line follows it).
pub fn qemu_vm_args(
    machine: &str,
    cpu: &str,
    vcpus: u32,
    memory_mib: u32,
    devices: &str,
) -> String {
    let m = memory_mib;
    let devices = if devices.is_empty() {
        String::new()
    } else {
        format!("{devices} ")
    };
    format!(
        "-accel kvm -M {machine} -cpu {cpu} -smp {vcpus} -m {m}M \
         -object memory-backend-memfd,id=mem,size={m}M,share=on -machine memory-backend=mem \
         -bios {} -kernel {} -initrd {} -nodefaults -no-user-config -display none \
         -serial stdio -no-reboot {devices}-append",
        files::QBOOT,
        files::KERNEL,
        files::INITRAMFS
    )
}

/// The arguments of QEMU as [`qemu_vm_args`] gives them, but with QEMU's default RAM (`-m`
/// alone: private anonymous memory, transparent huge pages as the host allows) instead of
/// a shared memfd: for a guest whose RAM nothing but QEMU maps, as nothing but legovmm maps
/// legovmm's when no vhost-user device needs it.
pub fn qemu_private_ram_args(
    machine: &str,
    cpu: &str,
    vcpus: u32,
    memory_mib: u32,
    devices: &str,
) -> String {
    let m = memory_mib;
    let args = qemu_vm_args(machine, cpu, vcpus, m, devices);
    // The unit tests check that this is found (and so gone).
    args.replace(
        &format!(
            "-object memory-backend-memfd,id=mem,size={m}M,share=on -machine memory-backend=mem "
        ),
        "",
    )
}

/// Renders the shell function `bench VMM ROUND CMDLINE RESULTS [EXTRA ARGS]`: runs
/// `boot_VMM CONSOLE CMDLINE [EXTRA ARGS]` (which the script defines, running the VMM under
/// `boot-timer`) up to `tries` times while its guest never comes up (status 125), and
/// appends one `LEGO_BENCH_RESULT` line per try to RESULTS: the try's identity, the
/// timer's `LEGO_BOOT_TIMING` fields and, with `console_grep` (an extended regular
/// expression), the matching lines of the try's console joined on one line.
pub fn bench_fn(tries: u32, console_grep: Option<&str>) -> String {
    let extra = console_grep.map_or(String::new(), |re| {
        format!(
            " $(grep -E {} \"$vmm-$round-$try.console\" 2> /dev/null | tr '\\r\\n' '  ')",
            sh_quote(re)
        )
    });
    format!(
        "# bench VMM ROUND CMDLINE RESULTS [EXTRA VMM ARGS]: one boot, retried while its\n\
         # guest never comes up; one result line per try goes to RESULTS.\n\
         bench() {{\n    vmm=$1; round=$2; cl=$3; res=$4; shift 4\n    try=0\n    \
         while [ $try -lt {tries} ]; do\n        try=$((try + 1))\n        \
         out=$(boot_$vmm \"$vmm-$round-$try.console\" \"$cl\" \"$@\")\n        rc=$?\n        \
         line=\"{RESULT_MARKER} vmm=$vmm round=$round try=$try rc=$rc $(echo \"$out\" | grep LEGO_BOOT_TIMING){extra}\"\n        \
         echo \"$line\"\n        echo \"$line\" >> \"$res\"\n        \
         [ $rc -eq 125 ] || break\n        cat \"$vmm-$round-$try.console.err\"\n    done\n}}\n",
        tries = tries.max(1)
    )
}

impl Plan {
    /// The legovmm arguments after `$LEGOVMM` (the command line comes from `$1`).
    pub fn legovmm_args(&self) -> String {
        legovmm_run_args(self.memory_mib, self.vcpus)
    }

    /// The QEMU arguments (the command line follows `-append`).
    pub fn qemu_args(&self) -> String {
        qemu_vm_args(
            &self.qemu_machine,
            &self.qemu_cpu,
            self.vcpus,
            self.memory_mib,
            "",
        )
    }

    /// Renders the job script (POSIX sh for busybox).
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# Generated by boot-bench (lego-bench).\n");
        s.push_str(&format!(
            "T=./{timer}\nCMDLINE={cmdline}\nchmod 755 ./{timer} ./{qemu} ./{loader}\n",
            timer = files::TIMER,
            cmdline = sh_quote(&self.cmdline),
            qemu = files::QEMU,
            loader = files::LOADER
        ));
        s.push_str(
            "# Warm the page cache so that no VMM pays for reading the job disk.\n\
             cat ./* > /dev/null\n",
        );
        s.push_str(&format!(
            "echo \"{START_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(grep -c ^processor /proc/cpuinfo)\"\n"
        ));
        let timer = format!(
            "$T boot-timer --forward '' --sample-ms {} --ready-timeout {} --timeout {}",
            self.sample_ms, self.ready_timeout_secs, self.boot_timeout_secs
        );
        s.push_str(&format!(
            "# boot_VMM CONSOLE CMDLINE [EXTRA VMM ARGS]\n\
             boot_legovmm() {{\n    c=$1; l=$2; shift 2\n    \
             {timer} --label legovmm --console \"$c\" -- $LEGOVMM {} \"$l\" \"$@\" 2> \"$c.err\"\n}}\n",
            self.legovmm_args()
        ));
        s.push_str(&format!(
            "boot_qemu() {{\n    c=$1; l=$2; shift 2\n    \
             {timer} --label qemu --console \"$c\" -- ./{} --library-path \"$JOB_DIR\" ./{} {} \"$l\" \"$@\" 2> \"$c.err\"\n}}\n",
            files::LOADER,
            files::QEMU,
            self.qemu_args()
        ));
        s.push_str(&bench_fn(self.tries, None));
        s.push_str(&format!(
            "r=0\nwhile [ $r -lt {} ]; do\n    r=$((r + 1))\n",
            self.runs
        ));
        for vmm in VMMS {
            s.push_str(&format!("    bench {vmm} $r \"$CMDLINE\" {RESULTS_FILE}\n"));
        }
        s.push_str("done\n");
        if let Some(trace) = &self.trace_cmdline {
            s.push_str(&format!(
                "# Trace boots: the kernel log with its timestamps, legovmm's debug log.\n\
                 TRACE={}\n\
                 mount -t debugfs debugfs /sys/kernel/debug 2> /dev/null\n\
                 # L1 KVM's counters (debugfs) sum over live VMs only: sample them every\n\
                 # 0.2 s during a trace boot and keep the last non-zero sample.\n\
                 kvm_watch() {{\n    rm -f kvm.last\n    while :; do\n        l=\"\"\n        \
                 for f in {KVM_STATS}; do\n            \
                 l=\"$l $f=$(cat /sys/kernel/debug/kvm/$f 2> /dev/null || echo none)\"\n        done\n        \
                 case \"$l\" in *' exits=0 '*) ;; *) echo \"$l\" > kvm.last ;; esac\n        sleep 0.2\n    done\n}}\n\
                 traced() {{\n    kvm_watch &\n    w=$!\n    bench \"$@\"\n    kill $w\n    wait $w 2> /dev/null\n    \
                 echo \"{KVM_STATS_MARKER} vmm=$1$(cat kvm.last 2> /dev/null)\" >> {TRACE_FILE}\n}}\n\
                 traced legovmm {TRACE_ROUND} \"$TRACE\" {TRACE_FILE} --log-level debug\n\
                 traced qemu {TRACE_ROUND} \"$TRACE\" {TRACE_FILE}\n",
                sh_quote(trace)
            ));
            s.push_str(&format!(
                "# Start-up alone: each VMM's --version, timed.\n\
                 out=$($T boot-timer --forward '' --label legovmm-version --ready legovmm -- $LEGOVMM --version)\n\
                 echo \"{RESULT_MARKER} vmm=legovmm-version round=startup try=1 rc=$? $out\" >> {TRACE_FILE}\n\
                 out=$($T boot-timer --forward '' --label qemu-version --ready QEMU -- ./{} --library-path \"$JOB_DIR\" ./{} --version)\n\
                 echo \"{RESULT_MARKER} vmm=qemu-version round=startup try=1 rc=$? $out\" >> {TRACE_FILE}\n\
                 cat {TRACE_FILE}\n",
                files::LOADER,
                files::QEMU
            ));
        }
        s.push_str("echo LEGO_BENCH_DONE\n");
        s
    }
}

/// Asserts that `sh -n` accepts `text` (a job script): for the tests.
#[cfg(test)]
pub(crate) fn assert_parses_as_sh(text: &str) {
    let out = std::process::Command::new("sh")
        .arg("-n")
        .arg("-c")
        .arg(text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            runs: 3,
            tries: 4,
            ready_timeout_secs: 60,
            boot_timeout_secs: 120,
            vcpus: 2,
            memory_mib: 256,
            cmdline: "console=ttyS0 quiet lego.run=\"true\"".into(),
            trace_cmdline: Some("console=ttyS0 lego.run=\"true\"".into()),
            sample_ms: 20,
            qemu_machine: DEFAULT_QEMU_MACHINE.into(),
            qemu_cpu: DEFAULT_QEMU_CPU.into(),
        }
    }

    #[test]
    fn qemu_values_must_be_plain_words() {
        check_qemu_value("machine", "microvm,x-option-roms=off,rtc=off").unwrap();
        check_qemu_value("cpu", "host,pmu=off").unwrap();
        for bad in ["", "host; rm -rf /", "a b", "$(x)"] {
            assert!(check_qemu_value("cpu", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_script_parses_as_posix_sh() {
        assert_parses_as_sh(&plan().render());
    }

    #[test]
    fn private_ram_drops_only_the_memfd() {
        let shared = qemu_vm_args("microvm", "host", 1, 512, "-device x");
        let private = qemu_private_ram_args("microvm", "host", 1, 512, "-device x");
        assert!(!private.contains("memory-backend"), "{private}");
        assert_eq!(
            private,
            shared.replace(
                "-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem ",
                ""
            )
        );
        assert!(private.contains("-m 512M -bios qboot.rom"), "{private}");
        assert!(private.ends_with("-device x -append"), "{private}");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote("x=\"y\""), "'x=\"y\"'");
    }

    #[test]
    fn renders_both_vmms_with_the_same_guest() {
        let s = plan().render();
        assert!(
            s.contains("CMDLINE='console=ttyS0 quiet lego.run=\"true\"'"),
            "{s}"
        );
        assert!(s.contains("$LEGOVMM run --kernel vmlinuz --initrd initramfs.cpio --memory 256M --vcpus 2 --cmdline \"$l\""), "{s}");
        assert!(s.contains("./ld-linux-x86-64.so.2 --library-path \"$JOB_DIR\" ./qemu-system-x86_64 -accel kvm -M microvm,x-option-roms=off -cpu host -smp 2 -m 256M -object memory-backend-memfd,id=mem,size=256M,share=on"), "{s}");
        assert!(s.contains("while [ $try -lt 4 ]"), "{s}");
        assert!(s.contains("while [ $r -lt 3 ]"), "{s}");
        let lego = s
            .find("    bench legovmm $r \"$CMDLINE\" results.txt")
            .unwrap();
        let qemu = s
            .find("    bench qemu $r \"$CMDLINE\" results.txt")
            .unwrap();
        assert!(lego < qemu);
        assert!(
            s.contains("traced legovmm trace \"$TRACE\" trace.txt --log-level debug"),
            "{s}"
        );
        let mut p = plan();
        p.trace_cmdline = None;
        assert!(!p.render().contains("trace"));
    }
}
