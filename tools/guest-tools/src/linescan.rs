//! Scanning a VMM's console output line by line: spotting the guest's ready marker the
//! first time it appears, choosing the lines worth forwarding, and keeping a copy.

use std::io::{self, BufRead, Write};

/// What to do with one console line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineAction {
    /// This line holds the ready marker for the first time.
    pub ready: bool,
    /// The line should be forwarded (it holds the forward prefix).
    pub forward: bool,
}

/// Decides, line by line, when the ready marker first appears and which lines to forward.
#[derive(Debug, Clone)]
pub struct Scanner {
    marker: Vec<u8>,
    forward: Option<Vec<u8>>,
    seen_ready: bool,
}

/// Returns true if `needle` occurs in `hay` (an empty needle never does).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Scanner {
    /// A scanner for `marker`, forwarding lines that contain `forward` (none if `None`).
    pub fn new(marker: &str, forward: Option<&str>) -> Self {
        Self {
            marker: marker.as_bytes().to_vec(),
            forward: forward
                .filter(|f| !f.is_empty())
                .map(|f| f.as_bytes().to_vec()),
            seen_ready: false,
        }
    }

    /// Classifies one line (its bytes, with or without the line end). Text around the
    /// marker on the same line (interleaved kernel messages, `\r`) does not matter.
    pub fn line(&mut self, line: &[u8]) -> LineAction {
        let ready = !self.seen_ready && contains(line, &self.marker);
        self.seen_ready |= ready;
        let forward = self.forward.as_deref().is_some_and(|f| contains(line, f));
        LineAction { ready, forward }
    }

    /// Returns true once the marker has been seen.
    pub fn seen_ready(&self) -> bool {
        self.seen_ready
    }
}

/// Reads `input` to its end, copying every line to `copy` (if any) and the forwarded
/// lines, without `\r`, to `forward_to`; calls `on_ready` when the marker first appears.
/// Returns the number of lines read.
pub fn pump<R: BufRead, C: Write, F: Write>(
    mut input: R,
    scanner: &mut Scanner,
    mut copy: Option<C>,
    mut forward_to: F,
    mut on_ready: impl FnMut(),
) -> io::Result<u64> {
    let mut line = Vec::with_capacity(256);
    let mut lines = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        lines += 1;
        let action = scanner.line(&line);
        if action.ready {
            on_ready();
        }
        if let Some(c) = copy.as_mut() {
            c.write_all(&line)?;
        }
        if action.forward {
            let text: Vec<u8> = line
                .iter()
                .copied()
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect();
            forward_to.write_all(&text)?;
            forward_to.write_all(b"\n")?;
            forward_to.flush()?;
        }
    }
    if let Some(c) = copy.as_mut() {
        c.flush()?;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker_once_amid_other_text() {
        let mut s = Scanner::new("LEGO_GUEST_READY", Some("LEGO_"));
        assert_eq!(
            s.line(b"[ 1.0] booting\r\n"),
            LineAction {
                ready: false,
                forward: false
            }
        );
        assert!(!s.seen_ready());
        let a = s.line(b"[ 2.0] x LEGO_GUEST_READY\r\n");
        assert!(a.ready && a.forward);
        let again = s.line(b"LEGO_GUEST_READY\n");
        assert!(!again.ready && again.forward);
        assert!(s.seen_ready());
        assert!(!s.line(b"LEGO_GUEST_READ\n").ready);
    }

    #[test]
    fn an_empty_forward_prefix_forwards_nothing() {
        let mut s = Scanner::new("READY", Some(""));
        assert!(!s.line(b"anything\n").forward);
        let mut s = Scanner::new("READY", None);
        assert!(!s.line(b"READY\n").forward);
    }

    #[test]
    fn pump_copies_forwards_and_reports_ready() {
        let input: &[u8] = b"noise\r\nLEGO_GUEST_READY\r\nmore\nLEGO_RUN_EXIT=0\r\npartial";
        let mut s = Scanner::new("LEGO_GUEST_READY", Some("LEGO_"));
        let mut copy = Vec::new();
        let mut fwd = Vec::new();
        let mut ready = 0;
        let n = pump(input, &mut s, Some(&mut copy), &mut fwd, || ready += 1).unwrap();
        assert_eq!(n, 5);
        assert_eq!(ready, 1);
        assert_eq!(copy, input);
        assert_eq!(fwd, b"LEGO_GUEST_READY\nLEGO_RUN_EXIT=0\n");
    }

    #[test]
    fn pump_handles_binary_noise() {
        let input: &[u8] = b"\xff\xfe\x00\nLEGO_GUEST_READY\n";
        let mut s = Scanner::new("LEGO_GUEST_READY", None);
        let mut ready = false;
        pump(input, &mut s, None::<Vec<u8>>, io::sink(), || ready = true).unwrap();
        assert!(ready);
    }
}
