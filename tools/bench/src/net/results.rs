//! Parsing the network benchmark's result lines: the boot timer's fields (see
//! [`crate::results`]) followed by the guest's console lines (`LEGO_NET_UP`,
//! `LEGO_NET_CLOCKSOURCE`, `LEGO_NET_RTT`, `LEGO_NET_SENT`, `LEGO_NET_RECV`, `LEGO_RUN_EXIT=`, `LEGO_ERROR`) and
//! the compute host's (`LEGO_HOST_NET_RECV`, `LEGO_HOST_NET_SENT`, `LEGO_HOST_ERROR`).
//! Several of these lines share field names (`mib_s=`, `bytes=`), so each is read as its
//! own segment: from its marker word to the next word starting with `LEGO_`.

use crate::results::{self, number, value, ResultsError, TryResult};
use crate::script::RESULT_MARKER;

/// The guest's round trips (`LEGO_NET_RTT`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rtt {
    /// Round trips timed.
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

/// One side of a pattern stream (`LEGO_NET_SENT` or `LEGO_NET_RECV`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Bytes moved.
    pub bytes: u64,
    /// Milliseconds it took, on this side's clock.
    pub ms: u64,
    /// MiB per second, on this side's clock.
    pub mib_s: f64,
    /// Whether every block held its pattern (receivers only).
    pub pattern_ok: Option<bool>,
}

/// One try of one setup.
#[derive(Debug, Clone, PartialEq)]
pub struct NetTry {
    /// The boot timer's part (the setup's name is `run.vmm`).
    pub run: TryResult,
    /// Whether the guest's init configured its interface (`LEGO_NET_UP`).
    pub net_up: bool,
    /// The guest's round trips.
    pub rtt: Option<Rtt>,
    /// Guest → host, the guest's sender.
    pub guest_sent: Option<Stream>,
    /// Guest → host, the compute host's receiver.
    pub host_received: Option<Stream>,
    /// Host → guest, the compute host's sender.
    pub host_sent: Option<Stream>,
    /// Host → guest, the guest's receiver.
    pub guest_received: Option<Stream>,
    /// The guest command's status (`LEGO_RUN_EXIT=`).
    pub run_exit: Option<i32>,
    /// The guest's clock source, which timed the round trips (`LEGO_NET_CLOCKSOURCE`).
    pub clocksource: Option<String>,
    /// The first error line of the guest or the compute host, marker included.
    pub error: Option<String>,
}

/// True for a word that starts a segment of a result line.
fn is_marker(word: &str) -> bool {
    word.starts_with("LEGO_")
}

/// The marker words of `line` with their byte offsets, in order.
fn markers(line: &str) -> Vec<(usize, &str)> {
    let base = line.as_ptr() as usize;
    line.split_whitespace()
        .filter(|w| is_marker(w))
        .map(|w| (w.as_ptr() as usize - base, w))
        .collect()
}

/// The text after the last marker word `marker` of `line`, up to the next marker word;
/// `None` if there is none.
pub fn segment<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let marks = markers(line);
    let i = marks.iter().rposition(|(_, w)| *w == marker)?;
    let (at, w) = marks[i];
    let start = at + w.len();
    let end = marks.get(i + 1).map_or(line.len(), |(next, _)| *next);
    Some(line[start..end].trim())
}

/// The timer's part of a result line: everything before the first console line's marker.
fn timer_part(line: &str) -> &str {
    let end = markers(line)
        .into_iter()
        .find(|(_, w)| *w != RESULT_MARKER && *w != "LEGO_BOOT_TIMING")
        .map_or(line.len(), |(at, _)| at);
    &line[..end]
}

fn rtt(line: &str) -> Result<Option<Rtt>, ResultsError> {
    let Some(seg) = segment(line, "LEGO_NET_RTT") else {
        return Ok(None);
    };
    Ok(Some(Rtt {
        count: number(seg, "count", true)?.unwrap_or(0),
        p50_us: need(seg, "p50_us")?,
        p99_us: need(seg, "p99_us")?,
    }))
}

fn need<T: std::str::FromStr>(seg: &str, field: &'static str) -> Result<T, ResultsError> {
    number(seg, field, false)?.ok_or_else(|| ResultsError::Field {
        line: seg.to_string(),
        field,
    })
}

fn stream(line: &str, marker: &str) -> Result<Option<Stream>, ResultsError> {
    let Some(seg) = segment(line, marker) else {
        return Ok(None);
    };
    Ok(Some(Stream {
        bytes: need(seg, "bytes")?,
        ms: need(seg, "ms")?,
        mib_s: need(seg, "mib_s")?,
        pattern_ok: value(seg, "pattern").map(|p| p == "ok"),
    }))
}

impl NetTry {
    /// Guest → host throughput, MiB/s, on the compute host's clock (its receiver: from the
    /// connection to the end of the stream).
    pub fn guest_to_host_mib_s(&self) -> Option<f64> {
        self.host_received.as_ref().map(|s| s.mib_s)
    }

    /// Host → guest throughput, MiB/s, on the compute host's clock (its sender: from the
    /// connection to the guest's close after it read and checked every byte).
    pub fn host_to_guest_mib_s(&self) -> Option<f64> {
        self.host_sent.as_ref().map(|s| s.mib_s)
    }

    /// True if the VMM ran cleanly, the guest command succeeded, the round trips were
    /// timed and the guest → host stream (and, with `host_to_guest`, the host → guest
    /// stream) arrived whole with its pattern.
    pub fn is_clean(&self, host_to_guest: bool) -> bool {
        let whole = |sent: &Option<Stream>, got: &Option<Stream>| match (sent, got) {
            (Some(s), Some(g)) => s.bytes > 0 && g.bytes == s.bytes && g.pattern_ok == Some(true),
            _ => false,
        };
        self.run.is_clean()
            && self.run_exit == Some(0)
            && self.rtt.as_ref().is_some_and(|r| r.count > 0)
            && whole(&self.guest_sent, &self.host_received)
            && (!host_to_guest || whole(&self.host_sent, &self.guest_received))
    }

    /// True if the try was killed because the guest never came up (and retried).
    pub fn is_hang(&self) -> bool {
        self.run.is_hang()
    }
}

/// Parses one result line.
pub fn parse_line(line: &str) -> Result<NetTry, ResultsError> {
    let run = results::parse_line(timer_part(line).trim_end())?;
    let error = markers(line)
        .into_iter()
        .find(|(_, w)| *w == "LEGO_ERROR" || *w == "LEGO_HOST_ERROR")
        .map(|(_, w)| format!("{w} {}", segment(line, w).unwrap_or_default()));
    Ok(NetTry {
        run,
        net_up: markers(line).iter().any(|(_, w)| *w == "LEGO_NET_UP"),
        rtt: rtt(line)?,
        guest_sent: stream(line, "LEGO_NET_SENT")?,
        host_received: stream(line, "LEGO_HOST_NET_RECV")?,
        host_sent: stream(line, "LEGO_HOST_NET_SENT")?,
        guest_received: stream(line, "LEGO_NET_RECV")?,
        run_exit: number(line, "LEGO_RUN_EXIT", true)?,
        clocksource: segment(line, "LEGO_NET_CLOCKSOURCE")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        error,
    })
}

/// Parses every result line in `text` (other lines are ignored).
pub fn parse(text: &str) -> Result<Vec<NetTry>, ResultsError> {
    text.lines()
        .filter_map(|l| l.find(RESULT_MARKER).map(|at| l[at..].trim_end()))
        .map(parse_line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "LEGO_BENCH_RESULT vmm=legovmm-vhost-net round=1 try=1 rc=0 LEGO_BOOT_TIMING vmm=legovmm-vhost-net status=ok ready_ms=4000 exit_ms=21000 exit_code=0 overhead_kb=4000 rss_kb=140000 anon_kb=1 file_kb=2 shmem_kb=0 samples=100 \
LEGO_NET_UP dev=eth0 ip=10.99.0.10/24 mac=02:4c:47:00:00:0a gw=10.99.0.1  \
LEGO_NET_CLOCKSOURCE kvm-clock \
LEGO_NET_RTT to=10.99.0.1:9001 count=2000 size=1 p50_us=212.5 p99_us=980.1  \
LEGO_NET_SENT to=10.99.0.1:9000 bytes=67108864 crc32c=0a0b0c0d ms=2000 mib_s=32.0  \
LEGO_NET_RECV from=10.99.0.1 bytes=67108864 crc32c=01020304 pattern=ok ms=2500 mib_s=25.6  \
LEGO_RUN_EXIT=0  \
LEGO_HOST_NET_RECV from=10.99.0.10 bytes=67108864 crc32c=0a0b0c0d pattern=ok ms=1990 mib_s=32.2 \
LEGO_HOST_NET_SENT to=10.99.0.10:9002 bytes=67108864 crc32c=01020304 ms=2510 mib_s=25.5";

    #[test]
    fn parses_a_clean_try() {
        let t = parse_line(CLEAN).unwrap();
        assert_eq!(t.run.vmm, "legovmm-vhost-net");
        assert_eq!(t.run.exit_ms, Some(21000));
        assert!(t.run.is_clean());
        assert!(t.net_up);
        let r = t.rtt.as_ref().unwrap();
        assert_eq!((r.count, r.p50_us, r.p99_us), (2000, 212.5, 980.1));
        assert_eq!(t.guest_sent.as_ref().unwrap().mib_s, 32.0);
        assert_eq!(t.guest_sent.as_ref().unwrap().pattern_ok, None);
        assert_eq!(t.guest_to_host_mib_s(), Some(32.2));
        assert_eq!(t.host_to_guest_mib_s(), Some(25.5));
        assert_eq!(t.guest_received.as_ref().unwrap().ms, 2500);
        assert_eq!(t.host_received.as_ref().unwrap().pattern_ok, Some(true));
        assert_eq!(t.run_exit, Some(0));
        assert_eq!(t.error, None);
        assert_eq!(t.clocksource.as_deref(), Some("kvm-clock"));
        assert!(t.is_clean(true) && t.is_clean(false) && !t.is_hang());
    }

    #[test]
    fn a_broken_stream_or_a_failed_command_is_not_clean() {
        let bad = CLEAN.replace("pattern=ok ms=1990", "pattern=bad-at-block-7 ms=1990");
        let t = parse_line(&bad).unwrap();
        assert_eq!(t.host_received.as_ref().unwrap().pattern_ok, Some(false));
        assert!(!t.is_clean(false));
        let short = CLEAN.replace(
            "LEGO_NET_RECV from=10.99.0.1 bytes=67108864",
            "LEGO_NET_RECV from=10.99.0.1 bytes=4096",
        );
        let t = parse_line(&short).unwrap();
        assert!(t.is_clean(false) && !t.is_clean(true));
        // The guest's sender could not connect: an error, no stream, the command failed.
        let failed = "LEGO_BENCH_RESULT vmm=qemu-vhost-net round=2 try=1 rc=0 LEGO_BOOT_TIMING vmm=qemu-vhost-net status=ok ready_ms=5000 exit_ms=70000 exit_code=0 overhead_kb=1 rss_kb=1 shmem_kb=1 samples=1 \
LEGO_NET_RTT to=10.99.0.1:9001 count=2000 size=1 p50_us=300.0 p99_us=900.0 \
LEGO_ERROR cannot connect to 10.99.0.1:9000 within 60.0 s: Connection refused (os error 111) LEGO_RUN_EXIT=2 \
LEGO_HOST_ERROR cannot listen on port 9000: Address in use";
        let t = parse_line(failed).unwrap();
        assert_eq!(t.run_exit, Some(2));
        assert!(!t.net_up && !t.is_clean(false));
        assert_eq!(
            t.error.as_deref(),
            Some("LEGO_ERROR cannot connect to 10.99.0.1:9000 within 60.0 s: Connection refused (os error 111)")
        );
        assert_eq!(t.guest_to_host_mib_s(), None);
    }

    #[test]
    fn segments_keep_shared_field_names_apart() {
        assert_eq!(
            segment("LEGO_A x=1 LEGO_B x=2 LEGO_A x=3 LEGO_C", "LEGO_A"),
            Some("x=3")
        );
        assert_eq!(segment("LEGO_A x=1", "LEGO_B"), None);
        assert_eq!(
            timer_part("LEGO_BENCH_RESULT vmm=a LEGO_BOOT_TIMING status=ok LEGO_NET_RTT p50_us=1"),
            "LEGO_BENCH_RESULT vmm=a LEGO_BOOT_TIMING status=ok "
        );
        // A field of a console line (status=) does not leak into the timer's.
        let t = parse_line(&format!("{CLEAN} LEGO_ERROR status=weird")).unwrap();
        assert_eq!(t.run.status, "ok");
    }

    #[test]
    fn a_try_whose_timer_printed_nothing_fails() {
        let t = parse_line("LEGO_BENCH_RESULT vmm=qemu-vhost-net round=1 try=1 rc=2 ").unwrap();
        assert_eq!(t.run.status, "failed");
        assert!(t.rtt.is_none() && !t.is_clean(false));
    }

    #[test]
    fn parses_lines_among_noise() {
        let text = format!("LEGO_BENCH_PROGRESS round 1\n[ 1.0] x {CLEAN}\r\nLEGO_BENCH_DONE\n");
        let all = parse(&text).unwrap();
        assert_eq!(all.len(), 1);
        let err = parse(&CLEAN.replace("p99_us=980.1", "p99_us=x")).unwrap_err();
        assert!(err.to_string().contains("p99_us"), "{err}");
    }
}
