//! `powerd`: acts on the ACPI power button the way a full distribution's init does, so that
//! `vm.shutdown` ends a vNode cleanly.
//!
//! legovmm presses the button through its Generic Event Device; Linux's ACPI `button` driver
//! turns the press into a `KEY_POWER` event on the "Power Button" input device. On a press
//! this daemon leaves a marker ([`MARKER`]) for `/init`, asks every process to stop
//! (`SIGTERM`, then `SIGKILL` after [`STOP_PATIENCE`]), and returns: `/init`'s workload has
//! then ended, so it unmounts the disks, turns swap off and powers off, as after any run.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file `/init` looks for to tell a power-button stop from a failed workload.
pub const MARKER: &str = "/run/lego-power-button";
/// How long processes get to exit after `SIGTERM` before `SIGKILL`.
pub const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// The name Linux's ACPI button driver gives the power button's input device.
const BUTTON_NAME: &str = "Power Button";
/// `struct input_event` on 64-bit Linux: a timeval (16 bytes), type, code, value.
const EVENT_SIZE: usize = 24;
/// `EV_KEY`.
const EV_KEY: u16 = 1;
/// `KEY_POWER`.
const KEY_POWER: u16 = 116;

/// Errors of the power-button watcher.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The power button's input device could not be opened or read.
    #[error("cannot read the power button at {path}")]
    Read {
        /// The device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The device node (`/dev/input/eventN`) of the input device named "Power Button", found
/// through `sys` (`/sys`); `None` when there is none (yet).
pub fn find_button(sys: &Path) -> Option<PathBuf> {
    let dir = std::fs::read_dir(sys.join("class/input")).ok()?;
    let mut events: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("event"))
        .collect();
    events.sort();
    events.into_iter().find_map(|n| {
        let name = std::fs::read_to_string(sys.join("class/input").join(&n).join("device/name"));
        (name.ok()?.trim_end() == BUTTON_NAME).then(|| Path::new("/dev/input").join(n))
    })
}

/// Whether one `struct input_event` is a press of the power key.
pub fn is_power_press(event: &[u8]) -> bool {
    if event.len() != EVENT_SIZE {
        return false;
    }
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Waits for the power button to appear, then for a press; on one, stops every process and
/// returns. Never returns on a vNode without a power button.
pub fn run() -> Result<(), PowerError> {
    let sys = Path::new("/sys");
    let path = loop {
        match find_button(sys) {
            Some(p) => break p,
            None => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    let read_err = |source| PowerError::Read {
        path: path.clone(),
        source,
    };
    let mut dev = File::open(&path).map_err(read_err)?;
    let mut event = [0u8; EVENT_SIZE];
    loop {
        match dev.read_exact(&mut event) {
            Ok(()) if is_power_press(&event) => break,
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    println!("lego-power: power button pressed; stopping every process");
    if let Err(e) = std::fs::write(MARKER, b"") {
        println!("lego-power: cannot leave {MARKER}: {e}");
    }
    stop_everything();
    Ok(())
}

/// `SIGTERM` to every process but init and this one, then `SIGKILL` to those still there
/// after [`STOP_PATIENCE`].
fn stop_everything() {
    // SAFETY: kill(2) with pid -1 signals every process we may signal except init and us.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_PATIENCE;
    while Instant::now() < deadline && others_remain() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if others_remain() {
        println!("lego-power: processes left after {STOP_PATIENCE:?}; killing them");
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
}

/// Whether a user process other than init and this one runs (kernel threads have an empty
/// command line and ignore signals).
fn others_remain() -> bool {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != me)
        .any(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(0, 0, 0)), "a sync event");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "another key");
        assert!(!is_power_press(&[0u8; 16]), "a short read");
    }

    #[test]
    fn the_button_is_found_by_its_name() {
        let sys = tempfile::tempdir().unwrap();
        let add = |n: &str, name: &str| {
            let d = sys.path().join("class/input").join(n).join("device");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        };
        assert_eq!(find_button(sys.path()), None);
        add("event0", "AT Translated Set 2 keyboard");
        assert_eq!(find_button(sys.path()), None);
        add("event1", "Power Button");
        add("input1", "Power Button");
        assert_eq!(
            find_button(sys.path()),
            Some(PathBuf::from("/dev/input/event1"))
        );
    }
}
