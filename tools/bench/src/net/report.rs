//! The network benchmark's markdown: medians (min–max) per setup over its clean runs,
//! the ratios of each legovmm setup's medians to QEMU's, and every try.

use super::results::NetTry;
use super::Setup;
use crate::report::{cell, ratio_cell};
use lego_testkit::stats::{self, Summary};

/// The measurements of one setup over its clean tries.
#[derive(Debug, Clone, Default)]
pub struct SetupSummary {
    /// Clean tries.
    pub clean: usize,
    /// Tries killed because the guest never came up (retried).
    pub retries: usize,
    /// Tries that ended otherwise (crash, timeout, a test failed or a stream was wrong).
    pub failures: usize,
    /// Round trip, median of each run, µs.
    pub rtt_p50: Option<Summary>,
    /// Round trip, 99th percentile of each run, µs.
    pub rtt_p99: Option<Summary>,
    /// Guest → host, MiB/s (the compute host's receiver).
    pub guest_to_host: Option<Summary>,
    /// Host → guest, MiB/s (the compute host's sender).
    pub host_to_guest: Option<Summary>,
    /// VMM start to VMM exit (boot, tests, power-off), ms.
    pub wall: Option<Summary>,
}

impl SetupSummary {
    /// Summarizes the tries of `setup`; `host_to_guest` says whether that stream was part
    /// of a clean run.
    pub fn of(tries: &[NetTry], setup: Setup, host_to_guest: bool) -> Self {
        let mine: Vec<&NetTry> = tries.iter().filter(|t| t.run.vmm == setup.name()).collect();
        let clean: Vec<&&NetTry> = mine.iter().filter(|t| t.is_clean(host_to_guest)).collect();
        let of = |f: &dyn Fn(&NetTry) -> Option<f64>| -> Option<Summary> {
            let v: Vec<f64> = clean.iter().filter_map(|t| f(t)).collect();
            stats::summarize(&v)
        };
        Self {
            clean: clean.len(),
            retries: mine.iter().filter(|t| t.is_hang()).count(),
            failures: mine
                .iter()
                .filter(|t| !t.is_clean(host_to_guest) && !t.is_hang())
                .count(),
            rtt_p50: of(&|t| t.rtt.as_ref().map(|r| r.p50_us)),
            rtt_p99: of(&|t| t.rtt.as_ref().map(|r| r.p99_us)),
            guest_to_host: of(&|t| t.guest_to_host_mib_s()),
            host_to_guest: if host_to_guest {
                of(&|t| t.host_to_guest_mib_s())
            } else {
                None
            },
            wall: of(&|t| t.run.exit_ms.map(|v| v as f64)),
        }
    }
}

/// The summaries of the setups that ran, in their round order.
#[derive(Debug, Clone, Default)]
pub struct Summaries {
    /// Each setup with its summary.
    pub setups: Vec<(Setup, SetupSummary)>,
    /// Whether the host → guest stream was measured.
    pub host_to_guest: bool,
}

impl Summaries {
    /// Summarizes each of `setups`.
    pub fn of(tries: &[NetTry], setups: &[Setup], host_to_guest: bool) -> Self {
        Self {
            setups: setups
                .iter()
                .map(|s| (*s, SetupSummary::of(tries, *s, host_to_guest)))
                .collect(),
            host_to_guest,
        }
    }

    /// The summary of `setup`, if it ran.
    pub fn get(&self, setup: Setup) -> Option<&SetupSummary> {
        self.setups
            .iter()
            .find(|(s, _)| *s == setup)
            .map(|(_, x)| x)
    }

    /// True if every setup had at least one clean try.
    pub fn complete(&self) -> bool {
        self.setups.iter().all(|(_, x)| x.clean > 0)
    }
}

/// Picks one measurement of a setup.
type Field = fn(&SetupSummary) -> Option<Summary>;

/// Renders the summary table: a column per setup, then for each legovmm setup its ratio to
/// QEMU's (when QEMU ran), legovmm / QEMU of the medians.
pub fn table(s: &Summaries, guest_to_host_mib: u32, host_to_guest_mib: u32) -> String {
    let qemu = s.get(Setup::QemuVhostNet);
    let vs: Vec<&(Setup, SetupSummary)> = if qemu.is_some() {
        s.setups.iter().filter(|(x, _)| !x.is_qemu()).collect()
    } else {
        Vec::new()
    };
    let mut out = String::from("| median (min–max) |");
    for (setup, _) in &s.setups {
        out.push_str(&format!(" {} |", setup.title()));
    }
    for (setup, _) in &vs {
        out.push_str(&format!(" {} / QEMU |", setup.title()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(s.setups.len() + vs.len()));
    out.push('\n');
    let g2h = format!("guest → host, {guest_to_host_mib} MiB (MiB/s)");
    let h2g = format!("host → guest, {host_to_guest_mib} MiB (MiB/s)");
    let mut rows: Vec<(&str, Field, usize)> = vec![
        ("round trip, median (µs)", |x| x.rtt_p50, 0),
        ("round trip, 99th percentile (µs)", |x| x.rtt_p99, 0),
        (&g2h, |x| x.guest_to_host, 1),
    ];
    if s.host_to_guest {
        rows.push((&h2g, |x| x.host_to_guest, 1));
    }
    rows.push((
        "VMM start → exit: boot, tests, power-off (ms)",
        |x| x.wall,
        0,
    ));
    for (name, get, decimals) in rows {
        out.push_str(&format!("| {name} |"));
        for (_, x) in &s.setups {
            out.push_str(&format!(" {} |", cell(get(x), decimals)));
        }
        for (_, x) in &vs {
            out.push_str(&format!(" {} |", ratio_cell(get(x), qemu.and_then(get))));
        }
        out.push('\n');
    }
    out.push_str("| clean runs / hang retries / other failures |");
    for (_, x) in &s.setups {
        out.push_str(&format!(" {} / {} / {} |", x.clean, x.retries, x.failures));
    }
    out.push_str(&" |".repeat(vs.len()));
    out.push('\n');
    out
}

/// Renders every try, in the order they ran.
pub fn tries_table(tries: &[NetTry], host_to_guest: bool) -> String {
    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    let f = |v: Option<f64>, d: usize| v.map_or("–".to_string(), |v| format!("{v:.d$}"));
    let mut s = String::from(
        "| round | setup | try | status | clean | RTT p50 µs | RTT p99 µs | guest → host MiB/s (host / guest clock) | host → guest MiB/s (host / guest clock) | VMM start → exit ms | guest exit | guest clock | first error |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in tries {
        let rate = |a: Option<f64>, b: Option<f64>| format!("{} / {}", f(a, 1), f(b, 1));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.run.round,
            t.run.vmm,
            t.run.attempt,
            t.run.status,
            if t.is_clean(host_to_guest) {
                "yes"
            } else {
                "no"
            },
            f(t.rtt.as_ref().map(|r| r.p50_us), 1),
            f(t.rtt.as_ref().map(|r| r.p99_us), 1),
            rate(
                t.guest_to_host_mib_s(),
                t.guest_sent.as_ref().map(|x| x.mib_s)
            ),
            rate(
                t.host_to_guest_mib_s(),
                t.guest_received.as_ref().map(|x| x.mib_s)
            ),
            opt(t.run.exit_ms),
            t.run_exit.map_or("–".to_string(), |c| c.to_string()),
            t.clocksource.as_deref().unwrap_or("–"),
            t.error.as_deref().unwrap_or("").replace('|', "\\|"),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::results::parse;

    fn line(setup: &str, round: u32, p50: f64, p99: f64, g2h: f64, h2g: f64) -> String {
        format!(
            "LEGO_BENCH_RESULT vmm={setup} round={round} try=1 rc=0 LEGO_BOOT_TIMING vmm={setup} status=ok ready_ms=4000 exit_ms=20000 exit_code=0 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1 \
LEGO_NET_UP dev=eth0 ip=10.99.0.10/24 mac=02:4c:47:00:00:0a gw=10.99.0.1 \
LEGO_NET_CLOCKSOURCE kvm-clock LEGO_NET_RTT to=10.99.0.1:9001 count=2000 size=1 p50_us={p50} p99_us={p99} \
LEGO_NET_SENT to=10.99.0.1:9000 bytes=1048576 crc32c=1 ms=10 mib_s=99.0 \
LEGO_NET_RECV from=10.99.0.1 bytes=1048576 crc32c=2 pattern=ok ms=10 mib_s=98.0 LEGO_RUN_EXIT=0 \
LEGO_HOST_NET_RECV from=10.99.0.10 bytes=1048576 crc32c=1 pattern=ok ms=10 mib_s={g2h} \
LEGO_HOST_NET_SENT to=10.99.0.10:9002 bytes=1048576 crc32c=2 ms=10 mib_s={h2g}\n"
        )
    }

    #[test]
    fn medians_and_ratios_against_qemu() {
        let mut text = String::new();
        for (round, k) in [1.0, 1.2, 0.9].into_iter().enumerate() {
            let round = round as u32 + 1;
            text.push_str(&line(
                "legovmm-vhost-net",
                round,
                100.0 * k,
                400.0,
                300.0 * k,
                200.0,
            ));
            text.push_str(&line(
                "legovmm-in-process",
                round,
                150.0 * k,
                600.0,
                100.0 * k,
                80.0,
            ));
            text.push_str(&line(
                "qemu-vhost-net",
                round,
                200.0 * k,
                800.0,
                250.0 * k,
                160.0,
            ));
        }
        // A hang (retried) and a run whose stream came back wrong: neither is measured.
        text.push_str("LEGO_BENCH_RESULT vmm=qemu-vhost-net round=4 try=1 rc=125 LEGO_BOOT_TIMING vmm=qemu-vhost-net status=hung ready_ms=none exit_ms=120000 exit_code=137 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1\n");
        text.push_str(&line("legovmm-in-process", 4, 1.0, 1.0, 1.0, 1.0).replace(
            "pattern=ok ms=10 mib_s=1",
            "pattern=bad-at-block-3 ms=10 mib_s=1",
        ));
        let tries = parse(&text).unwrap();
        let s = Summaries::of(&tries, &Setup::ALL, true);
        assert!(s.complete());
        let v = s.get(Setup::LegovmmVhostNet).unwrap();
        assert_eq!(v.rtt_p50.unwrap().median, 100.0);
        assert_eq!(v.guest_to_host.unwrap().median, 300.0);
        let p = s.get(Setup::LegovmmInProcess).unwrap();
        assert_eq!((p.clean, p.retries, p.failures), (3, 0, 1));
        let q = s.get(Setup::QemuVhostNet).unwrap();
        assert_eq!((q.clean, q.retries, q.failures), (3, 1, 0));
        let t = table(&s, 64, 32);
        assert!(
            t.starts_with("| median (min–max) | legovmm, vhost-net | legovmm, in-process | QEMU, vhost-net | legovmm, vhost-net / QEMU | legovmm, in-process / QEMU |\n|---|---|---|---|---|---|\n"),
            "{t}"
        );
        assert!(
            t.contains("| round trip, median (µs) | 100 (90–120) | 150 (135–180) | 200 (180–240) | 0.50 | 0.75 |"),
            "{t}"
        );
        assert!(
            t.contains("| guest → host, 64 MiB (MiB/s) | 300.0 (270.0–360.0) | 100.0 (90.0–120.0) | 250.0 (225.0–300.0) | 1.20 | 0.40 |"),
            "{t}"
        );
        assert!(
            t.contains("| host → guest, 32 MiB (MiB/s) | 200.0 (200.0–200.0) | 80.0 (80.0–80.0) | 160.0 (160.0–160.0) | 1.25 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| clean runs / hang retries / other failures | 3 / 0 / 0 | 3 / 0 / 1 | 3 / 1 / 0 | | |"),
            "{t}"
        );
        for row in t.lines() {
            assert_eq!(row.matches('|').count(), 7, "{row}");
        }
        let all = tries_table(&tries, true);
        assert_eq!(all.lines().count(), 2 + 11);
        assert!(
            all.contains("| 1 | legovmm-vhost-net | 1 | ok | yes | 100.0 | 400.0 | 300.0 / 99.0 | 200.0 / 98.0 | 20000 | 0 | kvm-clock |  |"),
            "{all}"
        );
        assert!(
            all.contains("| 4 | legovmm-in-process | 1 | ok | no |"),
            "{all}"
        );
    }

    #[test]
    fn without_qemu_or_the_host_to_guest_stream() {
        let text = line("legovmm-vhost-net", 1, 100.0, 400.0, 300.0, 200.0);
        let tries = parse(&text).unwrap();
        let s = Summaries::of(
            &tries,
            &[Setup::LegovmmVhostNet, Setup::LegovmmInProcess],
            false,
        );
        assert!(!s.complete());
        let t = table(&s, 64, 0);
        assert!(!t.contains("QEMU") && !t.contains("host → guest"), "{t}");
        assert!(
            t.contains("| round trip, median (µs) | 100 (100–100) | – |\n"),
            "{t}"
        );
        assert!(t.contains("| 1 / 0 / 0 | 0 / 0 / 0 |\n"), "{t}");
        for row in t.lines() {
            assert_eq!(row.matches('|').count(), 4, "{row}");
        }
    }
}
