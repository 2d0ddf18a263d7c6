//! State store: one VM state change, and one `vm ls` read, with N VMs recorded.
//!
//! Baseline: cocoon's design, measured here in the same run: the whole index
//! as one JSON file, every access under an exclusive flock on a sidecar lock
//! file, every change rewriting the file atomically (temp file, fsync, rename,
//! fsync of the directory). Ours: the SQLite store (WAL, one IMMEDIATE
//! transaction per change, synchronous=FULL).
//!
//! Run: `cargo bench -p cocoon-engine --bench state_store` (or bench/run.sh).
// Test inputs: the values are built to fit the fields they fill.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cocoon_engine::id::generate_id;
use cocoon_engine::model::*;
use cocoon_engine::store::Store;

const VMS: usize = 500;
const OPS: usize = 200;

fn vm(id: &str, name: &str) -> Vm {
    let mut config = VmConfig::new(
        name.parse().unwrap(),
        "ghcr.io/cocoonstack/cocoon/ubuntu:24.04",
        ImageType::Oci,
    );
    config.image_digest = format!("sha256:{}", "ab".repeat(32));
    config.network = "cocoon".into();
    let mut vm = Vm::new(
        id,
        Hypervisor::CloudHypervisor,
        config,
        "/var/lib/cocoon/run/x".into(),
        "/var/log/cocoon/x".into(),
    );
    vm.state = VmState::Running;
    vm.first_booted = true;
    vm.started_at = Some(vm.created_at);
    vm.storage_configs = (0..4)
        .map(|i| StorageConfig {
            vmm_path: None,
            external: false,
            slot: None,
            path: format!("/var/lib/cocoon/oci/blobs/{}{i}.erofs", "cd".repeat(31)).into(),
            ro: true,
            serial: format!("cocoon-layer{i}"),
            role: StorageRole::Layer,
            mount_point: String::new(),
            fstype: None,
            direct_io: None,
            directio_mode: None,
        })
        .collect();
    vm
}

/// cocoon's JSON index: `{"vms": {...}, "names": {...}}` behind `vms.lock`.
struct JsonIndex {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Index {
    vms: BTreeMap<String, Vm>,
    names: BTreeMap<String, String>,
}

impl JsonIndex {
    fn lock(&self) -> File {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("vms.lock"))
            .unwrap();
        file.lock().unwrap();
        file
    }

    fn read(&self) -> Index {
        match std::fs::read(self.dir.join("vms.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => Index::default(),
        }
    }

    fn write(&self, index: &Index) {
        let tmp = self.dir.join(".tmp-vms.json");
        let mut file = File::create(&tmp).unwrap();
        serde_json::to_writer(&mut file, index).unwrap();
        file.write_all(b"\n").unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&tmp, self.dir.join("vms.json")).unwrap();
        File::open(&self.dir).unwrap().sync_all().unwrap();
    }

    fn update(&self, f: impl FnOnce(&mut Index)) {
        let _lock = self.lock();
        let mut index = self.read();
        f(&mut index);
        self.write(&index);
    }

    fn list(&self) -> Vec<Vm> {
        let _lock = self.lock();
        self.read().vms.into_values().collect()
    }
}

fn time(mut f: impl FnMut(usize)) -> Duration {
    let start = Instant::now();
    for i in 0..OPS {
        f(i);
    }
    start.elapsed() / OPS as u32
}

fn report(what: &str, baseline: Duration, ours: Duration) {
    println!(
        "{what:<40} baseline {:>10.1} µs   ours {:>10.1} µs   speedup {:>6.2}x",
        baseline.as_secs_f64() * 1e6,
        ours.as_secs_f64() * 1e6,
        baseline.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir_in(
        std::env::var_os("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from),
    )
    .unwrap();
    let ids: Vec<String> = (0..VMS).map(|_| generate_id()).collect();

    let json = JsonIndex {
        dir: dir.path().join("json"),
    };
    std::fs::create_dir_all(&json.dir).unwrap();
    json.update(|index| {
        for (i, id) in ids.iter().enumerate() {
            index.vms.insert(id.clone(), vm(id, &format!("vm-{i}")));
            index.names.insert(format!("vm-{i}"), id.clone());
        }
    });
    let mut store = Store::open(&dir.path().join("sqlite").join("cocoon.db")).unwrap();
    for (i, id) in ids.iter().enumerate() {
        store.insert_vm(&vm(id, &format!("vm-{i}"))).unwrap();
    }

    println!("state store, {VMS} VMs recorded, {OPS} operations each, mean per operation:");
    let base = time(|i| {
        json.update(|index| index.vms.get_mut(&ids[i % VMS]).unwrap().state = VmState::Stopped);
    });
    let ours = time(|i| {
        store
            .update_vm(&ids[i % VMS], "stopped", |v| v.state = VmState::Stopped)
            .unwrap();
    });
    report("one VM state change (durable)", base, ours);

    let base = time(|_| assert_eq!(json.list().len(), VMS));
    let ours = time(|_| assert_eq!(store.list_vms().unwrap().len(), VMS));
    report("list all VMs", base, ours);

    let base = time(|i| {
        let _lock = json.lock();
        let index = json.read();
        assert!(index.vms.contains_key(&ids[i % VMS]));
    });
    let ours = time(|i| {
        assert!(store.resolve_vm(&ids[i % VMS][..6]).is_ok());
    });
    report("resolve one VM (by ID prefix)", base, ours);
}
