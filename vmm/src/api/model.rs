//! The API's JSON bodies. Field names are part of the API: `vmm/api/openapi.json` documents
//! each one, and the tests check the two agree.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `vmm.ping`: the VMM is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// legovmm's version.
    pub version: String,
    /// legovmm's process id.
    pub pid: u32,
}

/// Whether the vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// The guest runs.
    Running,
    /// An operator paused it (`vm.pause`).
    Paused,
}

/// `vm.info`: the vNode's configuration and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Running or paused.
    pub state: VmState,
    /// legovmm's process id.
    pub pid: u32,
    /// Milliseconds since the vNode started.
    pub uptime_ms: u64,
    /// What it was started with.
    pub config: ConfigInfo,
    /// Its memory.
    pub memory: MemoryInfo,
    /// Its devices, in the order the guest sees them.
    pub devices: Vec<DeviceInfo>,
}

/// The configuration a vNode runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInfo {
    /// The kernel image.
    pub kernel: String,
    /// The initial ramdisk, if any.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u8,
    /// The vNode id, when it has remote devices.
    pub vnode: Option<u64>,
    /// The manager placing its remote devices, if any.
    pub manager: Option<String>,
}

/// A vNode's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Guest RAM the guest sees.
    pub total_bytes: u64,
    /// How much of it may be resident on this host (`--local-memory`); absent when all of it
    /// is local.
    pub local_limit_bytes: Option<u64>,
    /// Guest RAM resident on this host now (paged guest RAM only).
    pub resident_bytes: Option<u64>,
    /// Guest RAM whose only copy is on the memory monitors now (paged guest RAM only).
    pub remote_bytes: Option<u64>,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its id in the API (`disk0`, `disk1`, ... in the order the guest sees them).
    pub id: String,
    /// `virtio-blk` (served in legovmm) or `vhost-user-blk` (served by a backend).
    pub kind: String,
    /// The backing file, or the backend's socket.
    pub backing: String,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// The guest-physical base of its virtio-mmio window.
    pub mmio_base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// `vm.counters`: what the devices and the pager have done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Per device id, for devices served in legovmm (a vhost-user backend exports its own
    /// with `--metrics`).
    pub devices: BTreeMap<String, DeviceCounters>,
    /// The pager's, when legovmm pages guest RAM.
    pub paging: Option<PagingCounters>,
}

/// A block device's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// Requests completed.
    pub requests: u64,
    /// Requests completed with an error status.
    pub errors: u64,
    /// Bytes read by the guest.
    pub read_bytes: u64,
    /// Bytes written by the guest.
    pub written_bytes: u64,
    /// Total time spent serving request batches, in µs.
    pub latency_us_total: u64,
}

/// The pager's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagingCounters {
    /// Faults served with zeros.
    pub zero_faults: u64,
    /// Faults served by a fetch from the memory monitors.
    pub fetch_faults: u64,
    /// Pages fetched.
    pub fetched_pages: u64,
    /// Pages evicted without a write (the monitors' copy was current).
    pub evicted_clean: u64,
    /// Pages evicted with a write to the monitors.
    pub evicted_dirty: u64,
    /// Zero pages evicted with no write.
    pub evicted_zero: u64,
    /// Eviction rounds (vCPU pauses).
    pub pauses: u64,
    /// The most pages resident at once.
    pub max_resident_pages: u64,
    /// Fetch latency, 50th percentile (upper bucket edge), in µs.
    pub fetch_p50_us: Option<u64>,
    /// Fetch latency, 99th percentile (upper bucket edge), in µs.
    pub fetch_p99_us: Option<u64>,
}

/// Every error's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, as a sentence.
    pub error: String,
}

/// `vm.add-disk`: a disk to attach to the running vNode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDisk {
    /// The backing file or block device, on legovmm's host.
    pub path: String,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub read_only: bool,
}

/// `vm.add-remote-disk`: one of the vNode's volumes to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRemoteDisk {
    /// The volume's name.
    pub volume: String,
    /// Its size when it must be created (e.g. "1G"); absent, the volume must exist.
    #[serde(default)]
    pub size: Option<String>,
}

/// `vm.add-remote-memory`: how much of the vNode's remote memory to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRemoteMemory {
    /// Its size in whole MiB (e.g. "512M", "1G").
    pub size: String,
}

/// How long `vm.shutdown` lets the guest power off by itself unless the request says.
pub const DEFAULT_SHUTDOWN_GRACE_S: u32 = 30;

/// `vm.shutdown`: the body is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// Seconds the guest has to power off by itself after the ACPI power button is pressed
    /// before legovmm stops it; 0 stops it at once.
    #[serde(default = "default_grace")]
    pub grace_s: u32,
}

fn default_grace() -> u32 {
    DEFAULT_SHUTDOWN_GRACE_S
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            grace_s: DEFAULT_SHUTDOWN_GRACE_S,
        }
    }
}

/// `vm.shutdown`'s answer: how the vNode is being ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownStarted {
    /// Whether the guest was asked first (the power button); false when legovmm stops it at
    /// once (a zero grace, a paused vNode, or no power button).
    pub power_button: bool,
    /// Seconds before legovmm stops the guest itself (0: now).
    pub grace_s: u32,
}

/// `vm.remove-device`: the device to detach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDevice {
    /// Its id (`vm.info` lists them).
    pub id: String,
}

#[cfg(test)]
mod tests {
    //! The OpenAPI document and the code agree: the same endpoints, and every body's fields
    //! are the documented properties (all of them required, as serde always writes them).

    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    const OPENAPI: &str = include_str!("../../api/openapi.json");

    fn doc() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect()
    }

    /// Checks `value` against the schema `name` in the document, recursing into `$ref`s.
    fn check(doc: &Value, name: &str, value: &Value) {
        let schema = &doc["components"]["schemas"][name];
        let props = &schema["properties"];
        assert_eq!(keys(value), keys(props), "fields of {name}");
        let required: BTreeSet<String> = schema["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no required list"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(required, keys(props), "required fields of {name}");
        for (field, spec) in props.as_object().unwrap() {
            let v = &value[field];
            let reference = spec["$ref"]
                .as_str()
                .or_else(|| spec["allOf"][0]["$ref"].as_str())
                .or_else(|| spec["items"]["$ref"].as_str())
                .or_else(|| spec["additionalProperties"]["$ref"].as_str());
            let Some(reference) = reference else { continue };
            let inner = reference.rsplit('/').next().unwrap();
            match v {
                Value::Object(m) if spec["additionalProperties"].is_object() => {
                    m.values().for_each(|x| check(doc, inner, x))
                }
                Value::Array(items) => items.iter().for_each(|x| check(doc, inner, x)),
                Value::Null => assert!(spec["nullable"] == true, "{name}.{field} is null"),
                v => check(doc, inner, v),
            }
        }
    }

    fn sample_info() -> VmInfo {
        VmInfo {
            state: VmState::Paused,
            pid: 7,
            uptime_ms: 1,
            config: ConfigInfo {
                kernel: "vmlinuz".into(),
                initrd: Some("initrd".into()),
                cmdline: "console=ttyS0".into(),
                vcpus: 2,
                vnode: Some(3),
                manager: Some("127.0.0.1:7300".into()),
            },
            memory: MemoryInfo {
                total_bytes: 1 << 30,
                local_limit_bytes: Some(1 << 27),
                resident_bytes: Some(1 << 26),
                remote_bytes: Some(1 << 20),
            },
            devices: vec![DeviceInfo {
                id: "disk0".into(),
                kind: "virtio-blk".into(),
                backing: "/d.img".into(),
                read_only: false,
                mmio_base: 0xd000_0000,
                gsi: 5,
            }],
        }
    }

    #[test]
    fn the_document_lists_exactly_the_endpoints_served() {
        let doc = doc();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in keys(ops) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = crate::api::routes::ENDPOINTS
            .iter()
            .map(|&(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_body_has_the_documented_fields() {
        let doc = doc();
        let info = serde_json::to_value(sample_info()).unwrap();
        check(&doc, "VmInfo", &info);
        assert_eq!(info["state"], "paused");
        let counters = Counters {
            devices: [(
                "disk0".to_string(),
                DeviceCounters {
                    requests: 1,
                    errors: 0,
                    read_bytes: 2,
                    written_bytes: 3,
                    latency_us_total: 4,
                },
            )]
            .into(),
            paging: Some(PagingCounters {
                zero_faults: 1,
                fetch_faults: 2,
                fetched_pages: 3,
                evicted_clean: 4,
                evicted_dirty: 5,
                evicted_zero: 6,
                pauses: 7,
                max_resident_pages: 8,
                fetch_p50_us: Some(16),
                fetch_p99_us: None,
            }),
        };
        check(&doc, "Counters", &serde_json::to_value(counters).unwrap());
        let add = AddDisk {
            path: "/d.img".into(),
            read_only: true,
        };
        // A request body: `read_only` may be left out (it defaults to false).
        let add = serde_json::to_value(add).unwrap();
        let schema = &doc["components"]["schemas"]["AddDisk"];
        assert_eq!(keys(&add), keys(&schema["properties"]));
        assert_eq!(schema["required"], serde_json::json!(["path"]));
        let parsed: AddDisk = serde_json::from_str(r#"{"path": "/d.img"}"#).unwrap();
        assert!(!parsed.read_only);
        let remote = AddRemoteDisk {
            volume: "data".into(),
            size: Some("1G".into()),
        };
        let remote = serde_json::to_value(remote).unwrap();
        let schema = &doc["components"]["schemas"]["AddRemoteDisk"];
        assert_eq!(keys(&remote), keys(&schema["properties"]));
        assert_eq!(schema["required"], serde_json::json!(["volume"]));
        let memory = AddRemoteMemory { size: "1G".into() };
        check(
            &doc,
            "AddRemoteMemory",
            &serde_json::to_value(memory).unwrap(),
        );
        let shutdown = serde_json::to_value(Shutdown::default()).unwrap();
        let schema = &doc["components"]["schemas"]["Shutdown"];
        assert_eq!(keys(&shutdown), keys(&schema["properties"]));
        assert_eq!(schema["required"], serde_json::json!([]));
        let started = ShutdownStarted {
            power_button: true,
            grace_s: 30,
        };
        check(
            &doc,
            "ShutdownStarted",
            &serde_json::to_value(started).unwrap(),
        );
        let remove = RemoveDevice { id: "disk1".into() };
        check(&doc, "RemoveDevice", &serde_json::to_value(remove).unwrap());
        let ping = Ping {
            version: "0".into(),
            pid: 1,
        };
        check(&doc, "Ping", &serde_json::to_value(ping).unwrap());
        let e = ErrorBody {
            error: "No.".into(),
        };
        check(&doc, "ErrorBody", &serde_json::to_value(e).unwrap());
    }
}
