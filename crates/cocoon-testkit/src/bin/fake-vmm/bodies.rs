//! The request bodies as the real VMMs deserialize them (serde, so the
//! error text is theirs, position included). FC's structs refuse unknown
//! fields (field lists and order as FC v1.16.1 reports them); CH's accept
//! them but refuse mistyped values (CH v53).

use serde::Deserialize;
use serde_json::Value;

type Any = Option<Value>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Drive {
    drive_id: String,
    partuuid: Option<String>,
    is_root_device: bool,
    cache_type: Any,
    is_read_only: Option<bool>,
    path_on_host: Option<String>,
    rate_limiter: Any,
    io_engine: Any,
    socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MachineConfig {
    vcpu_count: u8,
    mem_size_mib: usize,
    smt: Option<bool>,
    cpu_template: Any,
    track_dirty_pages: Option<bool>,
    huge_pages: Any,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct BootSource {
    kernel_image_path: String,
    initrd_path: Option<String>,
    boot_args: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NetworkInterface {
    iface_id: String,
    host_dev_name: String,
    guest_mac: Option<String>,
    mtu: Option<u16>,
    rx_rate_limiter: Any,
    tx_rate_limiter: Any,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Balloon {
    amount_mib: u32,
    deflate_on_oom: bool,
    stats_polling_interval_s: Option<u16>,
    free_page_hinting: Option<bool>,
    free_page_reporting: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Vsock {
    guest_cid: u32,
    uds_path: String,
    vsock_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Entropy {
    rate_limiter: Any,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VmState {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Action {
    action_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SnapshotCreate {
    snapshot_type: Any,
    snapshot_path: String,
    mem_file_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SnapshotLoad {
    snapshot_path: String,
    mem_file_path: Option<String>,
    mem_backend: Any,
    enable_diff_snapshots: Option<bool>,
    track_dirty_pages: Option<bool>,
    resume_vm: Option<bool>,
    network_overrides: Option<Vec<Value>>,
    vsock_override: Any,
    clock_realtime: Option<bool>,
}

fn check<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<T>(body).map(drop)
}

/// Firecracker: the body of `method path`, deserialized.
pub fn fc(method: &str, path: &str, body: &[u8]) -> Result<(), serde_json::Error> {
    match (method, path) {
        ("PUT", p) if p.starts_with("/drives/") => check::<Drive>(body),
        ("PUT", p) if p.starts_with("/network-interfaces/") => check::<NetworkInterface>(body),
        ("PUT", "/machine-config") => check::<MachineConfig>(body),
        ("PUT", "/boot-source") => check::<BootSource>(body),
        ("PUT", "/balloon") => check::<Balloon>(body),
        ("PUT", "/entropy") => check::<Entropy>(body),
        ("PUT", "/vsock") => check::<Vsock>(body),
        ("PATCH", "/vm") => check::<VmState>(body),
        ("PUT", "/actions") => check::<Action>(body),
        ("PUT", "/snapshot/create") => check::<SnapshotCreate>(body),
        ("PUT", "/snapshot/load") => check::<SnapshotLoad>(body),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Cpus {
    boot_vcpus: Option<u32>,
    max_vcpus: Option<u32>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Memory {
    size: Option<u64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct VmConfig {
    cpus: Option<Cpus>,
    memory: Option<Memory>,
    disks: Option<Vec<Disk>>,
    net: Option<Vec<Net>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Disk {
    path: Option<String>,
    readonly: Option<bool>,
    direct: Option<bool>,
    num_queues: Option<usize>,
    queue_size: Option<u16>,
    id: Option<String>,
    serial: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Fs {
    tag: String,
    socket: String,
    num_queues: usize,
    queue_size: u16,
    id: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Device {
    path: Option<String>,
    iommu: Option<bool>,
    id: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Net {
    tap: Option<String>,
    mac: Option<String>,
    num_queues: Option<usize>,
    queue_size: Option<u16>,
    id: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Resize {
    desired_vcpus: Option<u32>,
    desired_ram: Option<i64>,
    desired_balloon: Option<i64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Restore {
    source_url: String,
    prefault: Option<bool>,
    resume: Option<bool>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Snapshot {
    destination_url: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RemoveDevice {
    id: String,
}

/// Cloud Hypervisor: the body of `method path`, deserialized.
pub fn ch(method: &str, path: &str, body: &[u8]) -> Result<(), serde_json::Error> {
    match (method, path.strip_prefix("/api/v1/").unwrap_or(path)) {
        ("PUT", "vm.create") => check::<VmConfig>(body),
        ("PUT", "vm.add-disk") => check::<Disk>(body),
        ("PUT", "vm.add-net") => check::<Net>(body),
        ("PUT", "vm.add-fs") => check::<Fs>(body),
        ("PUT", "vm.add-device") => check::<Device>(body),
        ("PUT", "vm.resize") => check::<Resize>(body),
        ("PUT", "vm.restore") => check::<Restore>(body),
        ("PUT", "vm.snapshot") => check::<Snapshot>(body),
        ("PUT", "vm.remove-device") => check::<RemoveDevice>(body),
        _ => Ok(()),
    }
}
