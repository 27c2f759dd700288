//! Progress lines for a person: which console lines of a run say something a user wants to
//! see while it runs (phases, live figures, trouble), and how they are printed.
//!
//! A job speaks to the user with `LEGO_SAY <text>` (a phase or a result line) and
//! `LEGO_PROGRESS <text>` (a live figure); the compute host's and the vNode's own markers
//! are turned into short sentences. Everything else stays in the console log.

use std::io::Write;
use std::time::Duration;

/// A job's line for the user: the text after it is printed as it is.
pub const SAY: &str = "LEGO_SAY ";
/// A job's live figure (e.g. pages swapped so far): printed as it is.
pub const PROGRESS: &str = "LEGO_PROGRESS ";
/// A benchmark job's phase line (`round R of N setup S`): printed as it is.
pub const BENCH_PROGRESS: &str = "LEGO_BENCH_PROGRESS ";
/// A benchmark job's result line: shown as the run, its exit and its main figures.
pub const BENCH_RESULT: &str = "LEGO_BENCH_RESULT ";

/// Returns the text to show a person for this console line, or `None` if the line is
/// detail for the log only.
pub fn for_person(line: &str) -> Option<String> {
    if let Some(at) = line.find(SAY) {
        return Some(line[at + SAY.len()..].trim_end().to_string());
    }
    if let Some(at) = line.find(PROGRESS) {
        return Some(format!("  {}", line[at + PROGRESS.len()..].trim_end()));
    }
    let word = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or("?")
            .to_string()
    };
    if let Some(at) = line.find(BENCH_PROGRESS) {
        return Some(line[at + BENCH_PROGRESS.len()..].trim_end().to_string());
    }
    if line.contains(BENCH_RESULT) {
        let mut text = format!(
            "  {} round {} try {}: exit {}",
            word("vmm="),
            word("round="),
            word("try="),
            word("rc=")
        );
        for (key, label) in [
            ("write_ms=", "write"),
            ("verify_ms=", "verify"),
            ("exit_ms=", "VMM start to exit"),
        ] {
            if line.contains(key) {
                text.push_str(&format!(", {label} {} ms", word(key)));
            }
        }
        return Some(text);
    }
    if line.contains(crate::markers::L1_KVM_YES) {
        return Some("compute host up, with KVM".into());
    }
    if line.contains(crate::markers::L1_KVM_NO) {
        return Some("compute host up, but WITHOUT KVM (kvm-amd did not load)".into());
    }
    if line.contains(crate::markers::GUEST_READY) {
        return Some("vNode: guest booted, its init is up".into());
    }
    if line.contains("LEGO_VNODE_START") && word("try=") != "1" {
        return Some(format!(
            "vNode {}: starting again (try {})",
            word("name="),
            word("try=")
        ));
    }
    if line.contains("LEGO_VNODE_HANG") {
        return Some(format!(
            "vNode {}: its guest hung before its init (try {}), killed",
            word("name="),
            word("try=")
        ));
    }
    if line.contains("LEGO_VNODE_TRIPLE_FAULT") {
        return Some(format!(
            "vNode {}: its guest triple-faulted (try {})",
            word("name="),
            word("try=")
        ));
    }
    if line.contains("LEGO_VNODE_STALL") {
        return Some(format!(
            "vNode {}: no progress for {}, state dumped to the log, stopped",
            word("name="),
            word("after=")
        ));
    }
    if line.contains("Kernel panic") || line.contains("BUG: ") {
        return Some(format!("compute host kernel: {}", line.trim()));
    }
    if line.contains("LEGO_TESTBED_KILL") {
        return Some(format!(
            "testbed: {}",
            line.trim()
                .trim_start_matches("LEGO_TESTBED_KILL ")
                .trim_end_matches("; state before the kill follows")
        ));
    }
    None
}

/// The environment variable that sets the start of the clock progress lines show, in
/// seconds since the Unix epoch (a caller's own start, so that its lines and ours agree).
pub const EPOCH_ENV: &str = "LEGO_PROGRESS_EPOCH";

/// Prints a progress line on standard output with the time since the run started (or
/// since [`EPOCH_ENV`]).
pub fn say(at: Duration, text: &str) {
    let shown = since_epoch().unwrap_or(at);
    let _ = writeln!(
        std::io::stdout().lock(),
        "[{:>6.1} s] {text}",
        shown.as_secs_f64()
    );
}

/// Returns the time since [`EPOCH_ENV`], if it is set and in the past.
fn since_epoch() -> Option<Duration> {
    let epoch: f64 = std::env::var(EPOCH_ENV).ok()?.trim().parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    (now >= epoch).then(|| Duration::from_secs_f64(now - epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_lines_pass_through() {
        assert_eq!(
            for_person("LEGO_SAY cluster up: 2 monitors").as_deref(),
            Some("cluster up: 2 monitors")
        );
        assert_eq!(
            for_person("[  3.1] x LEGO_PROGRESS swapped out 12 MiB").as_deref(),
            Some("  swapped out 12 MiB")
        );
    }

    #[test]
    fn markers_become_sentences() {
        assert_eq!(
            for_person("LEGO_L1_KVM=yes uptime=1.2").as_deref(),
            Some("compute host up, with KVM")
        );
        assert_eq!(for_person("LEGO_VNODE_START name=first try=1"), None);
        assert_eq!(
            for_person("LEGO_VNODE_START name=first try=2").as_deref(),
            Some("vNode first: starting again (try 2)")
        );
        assert!(
            for_person("[ 145.0] Kernel panic - not syncing: Fatal exception")
                .unwrap()
                .contains("Kernel panic")
        );
        assert_eq!(
            for_person("LEGO_BENCH_PROGRESS round 1 of 3 setup paged uptime=3.6").as_deref(),
            Some("round 1 of 3 setup paged uptime=3.6")
        );
        assert_eq!(
            for_person(
                "LEGO_BENCH_RESULT vmm=paged round=1 try=1 rc=0 LEGO_BOOT_TIMING vmm=paged \
                 exit_ms=59031 LEGO_MEMTEST pages=65536 bad=0 write_ms=17785 verify_ms=29035"
            )
            .as_deref(),
            Some(
                "  paged round 1 try 1: exit 0, write 17785 ms, verify 29035 ms, \
                 VMM start to exit 59031 ms"
            )
        );
        assert_eq!(for_person("[    0.000000] Linux version 6.1"), None);
        assert_eq!(for_person("random detail"), None);
    }
}
