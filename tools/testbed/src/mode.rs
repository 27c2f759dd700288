//! Choosing where jobs run: directly on this host, or inside a nested compute host VM.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

/// The environment variable that overrides the mode: `auto`, `direct` or `nested`.
pub const MODE_ENV: &str = "LEGO_TESTBED";

/// How long `legovmm probe` may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors from choosing a mode.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// The override names no known mode.
    #[error("unknown testbed mode {0:?}; expected auto, direct or nested")]
    Unknown(String),
}

/// Where jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This host's KVM boots stock kernels: jobs run here with bash.
    Direct,
    /// Jobs run inside a QEMU TCG compute host VM with an emulated AMD SVM CPU.
    Nested,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::Nested => "nested",
        })
    }
}

/// A mode request: a fixed mode, or `Auto` to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeChoice {
    /// Probe with `legovmm probe`.
    #[default]
    Auto,
    /// Always run directly.
    Direct,
    /// Always run nested.
    Nested,
}

impl FromStr for ModeChoice {
    type Err = ModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(ModeChoice::Auto),
            "direct" => Ok(ModeChoice::Direct),
            "nested" => Ok(ModeChoice::Nested),
            _ => Err(ModeError::Unknown(s.to_string())),
        }
    }
}

impl ModeChoice {
    /// Reads `$LEGO_TESTBED`; unset or empty means `Auto`.
    pub fn from_env() -> Result<Self, ModeError> {
        match std::env::var(MODE_ENV) {
            Ok(v) => v.parse(),
            Err(_) => Ok(ModeChoice::Auto),
        }
    }
}

/// The mode chosen and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeDecision {
    /// The mode.
    pub mode: Mode,
    /// Why it was chosen.
    pub reason: String,
}

/// Decides the mode: an explicit `choice` wins, then `$LEGO_TESTBED`, then
/// `<legovmm> probe` (exit 0 means direct; anything else, including a missing binary,
/// means nested).
pub fn decide(choice: ModeChoice, legovmm: Option<&Path>) -> Result<ModeDecision, ModeError> {
    let (choice, source) = match choice {
        ModeChoice::Auto => (ModeChoice::from_env()?, format!("${MODE_ENV}")),
        c => (c, "the configuration".to_string()),
    };
    Ok(match choice {
        ModeChoice::Direct => ModeDecision {
            mode: Mode::Direct,
            reason: format!("direct was requested by {source}"),
        },
        ModeChoice::Nested => ModeDecision {
            mode: Mode::Nested,
            reason: format!("nested was requested by {source}"),
        },
        ModeChoice::Auto => probe(legovmm),
    })
}

/// Runs `<legovmm> probe` and turns its answer into a decision.
fn probe(legovmm: Option<&Path>) -> ModeDecision {
    let Some(bin) = legovmm else {
        return ModeDecision {
            mode: Mode::Nested,
            reason: "no legovmm binary to probe this host's KVM with".to_string(),
        };
    };
    let mut cmd = Command::new(bin);
    cmd.arg("probe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match crate::proc::output_with_timeout(cmd, PROBE_TIMEOUT) {
        Ok((Some(0), text)) => ModeDecision {
            mode: Mode::Direct,
            reason: format!("`{} probe` says: {}", bin.display(), one_line(&text)),
        },
        Ok((status, text)) => ModeDecision {
            mode: Mode::Nested,
            reason: format!(
                "`{} probe` failed ({}): {}",
                bin.display(),
                status.map_or("timed out or killed".to_string(), |s| format!("exit {s}")),
                one_line(&text)
            ),
        },
        Err(e) => ModeDecision {
            mode: Mode::Nested,
            reason: format!(
                "could not run `{} probe`: {}",
                bin.display(),
                lego_report::error_chain(&e)
            ),
        },
    }
}

/// Squeezes command output into one short line.
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        "(no output)".to_string()
    } else {
        joined.chars().take(500).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!("auto".parse::<ModeChoice>().unwrap(), ModeChoice::Auto);
        assert_eq!("Nested".parse::<ModeChoice>().unwrap(), ModeChoice::Nested);
        assert_eq!(
            " direct ".parse::<ModeChoice>().unwrap(),
            ModeChoice::Direct
        );
        let err = "sideways".parse::<ModeChoice>().unwrap_err();
        assert!(err.to_string().contains("expected auto"), "{err}");
    }

    #[test]
    fn explicit_choice_wins_and_says_so() {
        let d = decide(ModeChoice::Nested, None).unwrap();
        assert_eq!(d.mode, Mode::Nested);
        assert!(d.reason.contains("configuration"));
    }

    #[test]
    fn a_failing_probe_means_nested() {
        let d = probe(Some(Path::new("/bin/false")));
        assert_eq!(d.mode, Mode::Nested);
        assert!(d.reason.contains("exit 1"), "{}", d.reason);
        let d = probe(Some(Path::new("/nonexistent/legovmm")));
        assert_eq!(d.mode, Mode::Nested);
        let d = probe(Some(Path::new("/bin/true")));
        assert_eq!(d.mode, Mode::Direct);
    }
}
