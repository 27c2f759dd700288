//! One API request in, one answer out: the method and path pick an action on the
//! [`VmControl`]; every error is a JSON body whose `error` reads as a sentence.

use super::control::{ControlError, HotplugFailure, VmControl};
use super::model::{
    AddDisk, AddRemoteDisk, AddRemoteMemory, ErrorBody, Ping, RemoveDevice, Shutdown,
};

/// The endpoints: method and path. `vmm/api/openapi.json` documents exactly these.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/api/v1/vmm.ping"),
    ("GET", "/api/v1/vm.info"),
    ("GET", "/api/v1/vm.counters"),
    ("PUT", "/api/v1/vm.pause"),
    ("PUT", "/api/v1/vm.resume"),
    ("PUT", "/api/v1/vm.shutdown"),
    ("PUT", "/api/v1/vm.add-disk"),
    ("PUT", "/api/v1/vm.add-remote-disk"),
    ("PUT", "/api/v1/vm.add-remote-memory"),
    ("PUT", "/api/v1/vm.remove-device"),
    ("GET", "/metrics"),
];

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (empty for 204).
    pub body: String,
    /// Its content type.
    pub content_type: &'static str,
}

const JSON: &str = "application/json";

/// The Prometheus text format's content type.
pub const PROMETHEUS: &str = lego_metrics::server::CONTENT_TYPE;

fn json<T: serde::Serialize>(status: u16, value: &T) -> Answer {
    Answer {
        status,
        body: serde_json::to_string(value).unwrap_or_else(|_| "{}".into()),
        content_type: JSON,
    }
}

fn error(status: u16, message: String) -> Answer {
    json(status, &ErrorBody { error: message })
}

fn no_content() -> Answer {
    Answer {
        status: 204,
        body: String::new(),
        content_type: JSON,
    }
}

/// Answers `method` on `path` (query string ignored) with body `body`.
pub fn answer(method: &str, path: &str, body: &[u8], vm: &dyn VmControl) -> Answer {
    let path = path.split('?').next().unwrap_or("");
    let method = if method == "HEAD" { "GET" } else { method };
    if !ENDPOINTS.iter().any(|&(_, p)| p == path) {
        return error(
            404,
            format!(
                "There is no endpoint at {path}; the API's endpoints are {}.",
                ENDPOINTS
                    .iter()
                    .map(|(m, p)| format!("{m} {p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if !ENDPOINTS.contains(&(method, path)) {
        let allowed: Vec<&str> = ENDPOINTS
            .iter()
            .filter(|&&(_, p)| p == path)
            .map(|&(m, _)| m)
            .collect();
        return error(
            405,
            format!("{path} answers {}, not {method}.", allowed.join(" or ")),
        );
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
            return error(400, format!("The request body is not valid JSON: {e}."));
        }
    }
    match path {
        "/api/v1/vmm.ping" => json(
            200,
            &Ping {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            },
        ),
        "/api/v1/vm.info" => json(200, &vm.info()),
        "/api/v1/vm.counters" => json(200, &vm.counters()),
        "/api/v1/vm.pause" => acted(vm.pause()),
        "/api/v1/vm.resume" => acted(vm.resume()),
        "/api/v1/vm.shutdown" => {
            let empty = body.iter().all(u8::is_ascii_whitespace);
            let act = |s: Shutdown| {
                let grace = std::time::Duration::from_secs(s.grace_s.into());
                Ok(json(202, &vm.shutdown(grace)))
            };
            if empty {
                act(Shutdown::default()).unwrap_or_else(failed)
            } else {
                with_body(body, "vm.shutdown", act)
            }
        }
        "/api/v1/vm.add-disk" => with_body(body, "vm.add-disk", |d: AddDisk| {
            vm.add_disk(&d).map(|info| json(200, &info))
        }),
        "/api/v1/vm.add-remote-disk" => {
            with_body(body, "vm.add-remote-disk", |d: AddRemoteDisk| {
                vm.add_remote_disk(&d).map(|info| json(200, &info))
            })
        }
        "/api/v1/vm.add-remote-memory" => {
            with_body(body, "vm.add-remote-memory", |m: AddRemoteMemory| {
                vm.add_remote_memory(&m).map(|info| json(200, &info))
            })
        }
        "/api/v1/vm.remove-device" => with_body(body, "vm.remove-device", |r: RemoveDevice| {
            vm.remove_device(&r.id).map(|()| no_content())
        }),
        "/metrics" => Answer {
            status: 200,
            body: vm.metrics(),
            content_type: PROMETHEUS,
        },
        _ => error(500, format!("{path} is listed but has no handler.")),
    }
}

/// Reads a request body as `T` and acts on it; a body that is not a `what` request gets 400
/// saying what is wrong with it, a failed action its status and sentence.
fn with_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
    act: impl FnOnce(T) -> Result<Answer, ControlError>,
) -> Answer {
    match serde_json::from_slice(body) {
        Ok(request) => act(request).unwrap_or_else(failed),
        Err(e) => error(400, format!("The body is not a {what} request: {e}.")),
    }
}

fn acted(result: Result<(), ControlError>) -> Answer {
    match result {
        Ok(()) => no_content(),
        Err(e) => failed(e),
    }
}

/// The answer for a failed action: its status from the kind of failure, its sentence.
fn failed(e: ControlError) -> Answer {
    let status = match &e {
        ControlError::AlreadyPaused | ControlError::NotPaused | ControlError::NoHotplug => 409,
        ControlError::BadSize(_) => 400,
        ControlError::Hotplug(h) => match h.kind {
            HotplugFailure::BadRequest => 400,
            HotplugFailure::NotFound => 404,
            HotplugFailure::Conflict => 409,
            HotplugFailure::GuestTimeout => 504,
            HotplugFailure::Upstream => 502,
            HotplugFailure::Internal => 500,
        },
        ControlError::Pause(_) => 500,
    };
    let text = e.to_string();
    let text = text.trim_end_matches('.');
    error(status, format!("{}.", capitalized(text)))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::HotplugErrorText;
    use crate::api::model::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A vNode that records what it was asked to do (the layer under the routes).
    #[derive(Default)]
    struct Fake {
        paused: Mutex<bool>,
        shut_down: Mutex<bool>,
        disks: Mutex<Vec<String>>,
    }

    impl VmControl for Fake {
        fn info(&self) -> VmInfo {
            VmInfo {
                state: if *self.paused.lock().unwrap() {
                    VmState::Paused
                } else {
                    VmState::Running
                },
                pid: 1,
                uptime_ms: 2,
                config: ConfigInfo {
                    kernel: "k".into(),
                    initrd: None,
                    cmdline: "c".into(),
                    vcpus: 3,
                    vnode: Some(4),
                    manager: None,
                },
                memory: MemoryInfo {
                    total_bytes: 5,
                    local_limit_bytes: None,
                    resident_bytes: None,
                    remote_bytes: None,
                },
                devices: vec![],
            }
        }
        fn counters(&self) -> Counters {
            Counters {
                devices: BTreeMap::new(),
                paging: None,
            }
        }
        fn pause(&self) -> Result<(), ControlError> {
            let mut p = self.paused.lock().unwrap();
            if *p {
                return Err(ControlError::AlreadyPaused);
            }
            *p = true;
            Ok(())
        }
        fn resume(&self) -> Result<(), ControlError> {
            let mut p = self.paused.lock().unwrap();
            if !*p {
                return Err(ControlError::NotPaused);
            }
            *p = false;
            Ok(())
        }
        fn shutdown(&self, grace: Duration) -> ShutdownStarted {
            *self.shut_down.lock().unwrap() = true;
            ShutdownStarted {
                power_button: !grace.is_zero(),
                grace_s: grace.as_secs() as u32,
            }
        }
        fn metrics(&self) -> String {
            "lego_vm_paused 0\n".into()
        }
        fn add_disk(&self, disk: &AddDisk) -> Result<DeviceInfo, ControlError> {
            if disk.path == "/missing" {
                return Err(ControlError::Hotplug(HotplugErrorText {
                    kind: HotplugFailure::BadRequest,
                    message: "cannot add the disk /missing: no such file or directory".into(),
                }));
            }
            let mut disks = self.disks.lock().unwrap();
            disks.push(disk.path.clone());
            Ok(DeviceInfo {
                id: format!("disk{}", disks.len()),
                kind: "virtio-blk".into(),
                backing: disk.path.clone(),
                read_only: disk.read_only,
                mmio_base: 0xd000_1000,
                gsi: 6,
            })
        }
        fn add_remote_disk(&self, disk: &AddRemoteDisk) -> Result<DeviceInfo, ControlError> {
            Err(ControlError::Hotplug(HotplugErrorText {
                kind: HotplugFailure::Conflict,
                message: format!("volume {} cannot be attached by this fake", disk.volume),
            }))
        }
        fn add_remote_memory(&self, m: &AddRemoteMemory) -> Result<DeviceInfo, ControlError> {
            Err(ControlError::Hotplug(HotplugErrorText {
                kind: HotplugFailure::Conflict,
                message: format!(
                    "{} of remote memory cannot be attached by this fake",
                    m.size
                ),
            }))
        }
        fn remove_device(&self, id: &str) -> Result<(), ControlError> {
            let mut disks = self.disks.lock().unwrap();
            let n: usize = id.trim_start_matches("disk").parse().unwrap_or(0);
            if n == 0 || n > disks.len() {
                return Err(ControlError::Hotplug(HotplugErrorText {
                    kind: HotplugFailure::NotFound,
                    message: format!("there is no device {id} (vm.info lists the devices)"),
                }));
            }
            disks.remove(n - 1);
            Ok(())
        }
    }

    fn error_of(a: &Answer) -> String {
        serde_json::from_str::<ErrorBody>(&a.body)
            .unwrap_or_else(|e| panic!("not an error body ({e}): {}", a.body))
            .error
    }

    #[test]
    fn info_and_ping_answer_json() {
        let vm = Fake::default();
        let a = answer("GET", "/api/v1/vm.info", b"", &vm);
        assert_eq!((a.status, a.content_type), (200, JSON));
        let info: VmInfo = serde_json::from_str(&a.body).unwrap();
        assert_eq!(info, vm.info());
        let a = answer("GET", "/api/v1/vmm.ping?x=1", b"", &vm);
        let ping: Ping = serde_json::from_str(&a.body).unwrap();
        assert_eq!(ping.pid, std::process::id());
    }

    #[test]
    fn pause_resume_and_shutdown_act_once_each() {
        let vm = Fake::default();
        assert_eq!(answer("PUT", "/api/v1/vm.pause", b"", &vm).status, 204);
        let again = answer("PUT", "/api/v1/vm.pause", b"", &vm);
        assert_eq!(again.status, 409);
        assert_eq!(error_of(&again), "The vNode is already paused.");
        assert_eq!(answer("PUT", "/api/v1/vm.resume", b"{}", &vm).status, 204);
        assert_eq!(answer("PUT", "/api/v1/vm.resume", b"", &vm).status, 409);
        assert!(!*vm.shut_down.lock().unwrap());
        let a = answer("PUT", "/api/v1/vm.shutdown", b"", &vm);
        assert_eq!(a.status, 202);
        let started: ShutdownStarted = serde_json::from_str(&a.body).unwrap();
        assert_eq!(
            started.grace_s, DEFAULT_SHUTDOWN_GRACE_S,
            "the default grace"
        );
        assert!(*vm.shut_down.lock().unwrap());
        let a = answer("PUT", "/api/v1/vm.shutdown", br#"{"grace_s": 0}"#, &vm);
        let started: ShutdownStarted = serde_json::from_str(&a.body).unwrap();
        assert!(
            !started.power_button,
            "a zero grace stops the vNode at once"
        );
    }

    #[test]
    fn bad_requests_are_json_errors_and_change_nothing() {
        let vm = Fake::default();
        let a = answer("GET", "/api/v1/vm.nothing", b"", &vm);
        assert_eq!(a.status, 404);
        assert!(error_of(&a).contains("no endpoint at /api/v1/vm.nothing"));
        let a = answer("GET", "/api/v1/vm.shutdown", b"", &vm);
        assert_eq!(a.status, 405);
        assert_eq!(error_of(&a), "/api/v1/vm.shutdown answers PUT, not GET.");
        let a = answer("PUT", "/api/v1/vm.shutdown", br#"{"grace": 5}"#, &vm);
        assert_eq!(a.status, 400);
        assert!(error_of(&a).starts_with("The body is not a vm.shutdown request"));
        let a = answer("PUT", "/api/v1/vm.shutdown", b"{not json", &vm);
        assert_eq!(a.status, 400);
        assert!(error_of(&a).starts_with("The request body is not valid JSON"));
        assert!(!*vm.shut_down.lock().unwrap(), "a bad request acted");
    }

    #[test]
    fn disks_are_added_and_removed_and_bad_ones_get_sentences() {
        let vm = Fake::default();
        let a = answer(
            "PUT",
            "/api/v1/vm.add-disk",
            br#"{"path": "/d.img", "read_only": true}"#,
            &vm,
        );
        assert_eq!(a.status, 200, "{}", a.body);
        let info: DeviceInfo = serde_json::from_str(&a.body).unwrap();
        assert_eq!((info.id.as_str(), info.read_only), ("disk1", true));
        let a = answer(
            "PUT",
            "/api/v1/vm.add-disk",
            br#"{"path": "/missing"}"#,
            &vm,
        );
        assert_eq!(a.status, 400);
        assert_eq!(
            error_of(&a),
            "Cannot add the disk /missing: no such file or directory."
        );
        let a = answer("PUT", "/api/v1/vm.add-disk", br#"{"file": "/d.img"}"#, &vm);
        assert_eq!(a.status, 400);
        assert!(
            error_of(&a).starts_with("The body is not a vm.add-disk request: unknown field `file`"),
            "{}",
            a.body
        );
        let a = answer("PUT", "/api/v1/vm.add-disk", b"", &vm);
        assert_eq!(a.status, 400, "an empty body names no disk");
        assert_eq!(
            vm.disks.lock().unwrap().len(),
            1,
            "bad requests added nothing"
        );
        let a = answer(
            "PUT",
            "/api/v1/vm.add-remote-disk",
            br#"{"volume": "v"}"#,
            &vm,
        );
        assert_eq!(a.status, 409);
        let a = answer(
            "PUT",
            "/api/v1/vm.add-remote-disk",
            br#"{"size": "1G"}"#,
            &vm,
        );
        assert_eq!(a.status, 400, "a volume is required");
        let a = answer(
            "PUT",
            "/api/v1/vm.remove-device",
            br#"{"id": "disk7"}"#,
            &vm,
        );
        assert_eq!(a.status, 404);
        assert!(error_of(&a).starts_with("There is no device disk7"));
        let a = answer(
            "PUT",
            "/api/v1/vm.remove-device",
            br#"{"id": "disk1"}"#,
            &vm,
        );
        assert_eq!(a.status, 204);
        assert!(vm.disks.lock().unwrap().is_empty());
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let a = answer("GET", "/metrics", b"", &Fake::default());
        assert_eq!((a.status, a.content_type), (200, PROMETHEUS));
    }
}
