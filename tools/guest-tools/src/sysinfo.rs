//! Guest facts the tests check: online CPUs and total memory.

use std::path::PathBuf;

/// Errors from reading system facts.
#[derive(Debug, thiserror::Error)]
pub enum SysinfoError {
    /// A proc or sysfs file could not be read.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file did not have the expected format.
    #[error("could not parse {what} from {text:?}")]
    Parse {
        /// What was looked for.
        what: &'static str,
        /// The text (or its start).
        text: String,
    },
}

fn read(path: &str) -> Result<String, SysinfoError> {
    std::fs::read_to_string(path).map_err(|source| SysinfoError::Read {
        path: PathBuf::from(path),
        source,
    })
}

/// Counts the CPUs in a kernel CPU list such as `0-3,5,7-8`.
pub fn parse_cpu_list(text: &str) -> Result<u32, SysinfoError> {
    let bad = || SysinfoError::Parse {
        what: "a CPU list",
        text: text.chars().take(80).collect(),
    };
    let mut count = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo {
            return Err(bad());
        }
        count += hi - lo + 1;
    }
    if count == 0 {
        return Err(bad());
    }
    Ok(count)
}

/// Returns `MemTotal` in KiB from the text of `/proc/meminfo`.
pub fn parse_mem_total_kb(meminfo: &str) -> Result<u64, SysinfoError> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| SysinfoError::Parse {
            what: "MemTotal",
            text: meminfo.chars().take(80).collect(),
        })
}

/// Returns the number of online CPUs from `/sys/devices/system/cpu/online`.
pub fn online_cpus() -> Result<u32, SysinfoError> {
    parse_cpu_list(&read("/sys/devices/system/cpu/online")?)
}

/// Returns `MemTotal` in KiB from `/proc/meminfo`.
pub fn mem_total_kb() -> Result<u64, SysinfoError> {
    parse_mem_total_kb(&read("/proc/meminfo")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0\n").unwrap(), 1);
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), 2);
        assert_eq!(parse_cpu_list("0-3,5,7-8").unwrap(), 7);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a-b").is_err());
    }

    #[test]
    fn parses_meminfo() {
        let t = "MemFree:  100 kB\nMemTotal:        2014532 kB\n";
        assert_eq!(parse_mem_total_kb(t).unwrap(), 2014532);
        assert!(parse_mem_total_kb("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn reads_the_host() {
        assert!(online_cpus().unwrap() >= 1);
        assert!(mem_total_kb().unwrap() > 1024);
    }
}
