// Test inputs: the values are built to fit the fields they fill.
#![allow(clippy::cast_possible_truncation)]
use super::*;
use crate::model::Hypervisor;
use crate::model::{BootConfig, Snapshot, Vm, VmConfig};
use crate::snapshot::manifest::FileSum;
use std::collections::BTreeMap;

const HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

struct Fixture {
    _tmp: tempfile::TempDir,
    facts: Facts,
    dir: PathBuf,
    manifest: Manifest,
}

fn disk(path: PathBuf, ro: bool, role: StorageRole) -> StorageConfig {
    StorageConfig {
        vmm_path: None,
        external: false,
        slot: None,
        path,
        ro,
        serial: String::new(),
        role,
        mount_point: String::new(),
        fstype: None,
        direct_io: None,
        directio_mode: None,
    }
}

/// A CH snapshot of an OCI VM: one layer, one COW disk, its state files.
fn fixture(hypervisor: Hypervisor) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let facts = Facts {
        root_dir: tmp.path().join("root"),
        run_dir: tmp.path().join("run"),
        firmware_path: tmp.path().join("root/firmware/CLOUDHV.fd"),
    };
    let dir = tmp.path().join("root/snapshots/S");
    std::fs::create_dir_all(&dir).unwrap();
    let dirs = ImageDirs::new(&facts.root_dir);
    let layer = Digest::from_hex(HEX).unwrap();
    let vm_dir = facts.run_dir.join("vms/SRC");
    let storage = vec![
        disk(dirs.blob(&layer), true, StorageRole::Layer),
        disk(vm_dir.join("cow.raw"), false, StorageRole::Cow),
    ];
    let mut files = BTreeMap::new();
    let state: &[&str] = match hypervisor {
        Hypervisor::CloudHypervisor => &["config.json", "state.json", "memory-ranges"],
        Hypervisor::Firecracker => &["vmstate", "mem"],
        Hypervisor::Qemu => &["state"],
    };
    for name in state.iter().chain(&["cow.raw"]) {
        let body: &[u8] = if *name == "config.json" {
            br#"{"disks":[{"path":"/x/l.erofs","readonly":true},{"path":"/x/cow.raw"}],"payload":{"kernel":"/x/vmlinuz","cmdline":"console=hvc0 root=/dev/vda"},"rng":{"src":"/dev/urandom"},"serial":{"mode":"Tty","file":null},"memory":{"size":1073741824,"zones":null},"pmem":null,"fs":[]}"#
        } else {
            b"data"
        };
        std::fs::write(dir.join(name), body).unwrap();
        files.insert(
            name.to_string(),
            FileSum {
                size: body.len() as u64,
                sha256: String::new(),
            }
            .into(),
        );
    }
    let mut source = VmConfig::new("src".parse().unwrap(), "test/guest:1", ImageType::Oci);
    // The root disk's size, as its copy ("data") has it (upstream #230).
    source.storage = 4;
    let vm = Vm::new("SRC", hypervisor, source.clone(), vm_dir.clone(), vm_dir);
    let manifest = Manifest {
        version: manifest::VERSION,
        snapshot: Snapshot::of_vm("S", Some("s".parse().unwrap()), &vm, dir.clone()),
        source,
        storage,
        boot: BootConfig {
            kernel_path: Some(dirs.kernel(&layer)),
            initrd_path: Some(dirs.initrd(&layer)),
            cmdline: String::new(),
            firmware_path: None,
        },
        network: vec![],
        files,
    };
    Fixture {
        _tmp: tmp,
        facts,
        dir,
        manifest,
    }
}

impl Fixture {
    fn check(&self) -> Result<Checked, String> {
        check(&self.manifest, &self.dir, &self.facts)
    }

    fn refused(&self, expected: &str) {
        let err = self.check().expect_err("accepted");
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn a_snapshot_as_the_engine_writes_it_passes_and_pins_its_layer() {
    for hypervisor in [Hypervisor::CloudHypervisor, Hypervisor::Firecracker] {
        let f = fixture(hypervisor);
        let checked = f.check().unwrap();
        assert_eq!(
            checked.blobs.into_iter().collect::<Vec<_>>(),
            [Digest::from_hex(HEX).unwrap()]
        );
    }
}

#[test]
fn a_read_only_disk_must_be_an_image_layer_blob() {
    let mut f = fixture(Hypervisor::CloudHypervisor);
    for path in [
        f.facts.run_dir.join("vms/OTHER/cow.raw"),
        f.facts.root_dir.join("cocoon.db"),
        f.facts
            .root_dir
            .join(format!("images/blobs/../blobs/{HEX}.erofs")),
        f.facts.root_dir.join("images/blobs/notadigest.erofs"),
        PathBuf::from(format!("/elsewhere/images/blobs/{HEX}.erofs")),
    ] {
        f.manifest.storage[0].path = path;
        f.refused("is read-only but not an image layer of this engine");
    }
    // A read-only disk of another role.
    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.storage[1].ro = true;
    f.refused("is a read-only Cow disk, which the engine never makes");
    // cidata only where the clone makes it anew (a cloud image).
    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.storage.push(disk(
        f.facts.root_dir.join("cocoon.db"),
        true,
        StorageRole::Cidata,
    ));
    f.refused("is a read-only Cidata disk");
}

#[test]
fn a_writable_disk_is_its_copy_inside_the_snapshot_directory() {
    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.files.remove("cow.raw");
    f.refused("no copy of it in the snapshot");

    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.storage[1].path = PathBuf::from("/x/state.json");
    f.refused("is not a plain disk file name");

    // The copy is a symlink out of the directory: never followed.
    let f = fixture(Hypervisor::CloudHypervisor);
    std::fs::remove_file(f.dir.join("cow.raw")).unwrap();
    std::os::unix::fs::symlink(f.facts.root_dir.join("cocoon.db"), f.dir.join("cow.raw")).unwrap();
    f.refused("cannot be opened inside the snapshot directory");

    // Two disks, one copy.
    let mut f = fixture(Hypervisor::CloudHypervisor);
    let twin = f.manifest.storage[1].clone();
    f.manifest.storage.push(twin);
    f.refused("two disks share the copy");

    // Firecracker binds the copy over the source path: a VM disk path only.
    let mut f = fixture(Hypervisor::Firecracker);
    f.manifest.storage[1].path = f.facts.root_dir.join("cow.raw");
    f.refused("is not a VM disk in this engine's run directory");
    // Another installation's VM disk path is shown only outside the host's paths.
    let mut f = fixture(Hypervisor::Firecracker);
    f.manifest.storage[1].path = PathBuf::from("/srv/other/run/vms/SRC/cow.raw");
    f.check().expect("another run_dir's VM disk");
    f.manifest.storage[1].path = PathBuf::from("/usr/lib/vms/SRC/cow.raw");
    f.refused("is not a VM disk in this engine's run directory");
}

#[test]
fn only_state_files_and_disk_copies_are_listed() {
    let mut f = fixture(Hypervisor::CloudHypervisor);
    std::fs::write(f.dir.join("lock"), b"").unwrap();
    f.manifest.files.insert(
        "lock".into(),
        FileSum {
            size: 0,
            sha256: String::new(),
        }
        .into(),
    );
    f.refused("it lists \"lock\", which is neither");
}

#[test]
fn boot_files_are_its_layers_and_firmware_is_the_engines() {
    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.boot.kernel_path = Some(f.facts.root_dir.join("cocoon.db"));
    f.refused("its kernel");
    let mut f = fixture(Hypervisor::CloudHypervisor);
    let other = Digest::from_hex(&"2".repeat(64)).unwrap();
    f.manifest.boot.initrd_path = Some(ImageDirs::new(&f.facts.root_dir).initrd(&other));
    f.refused("its initrd");
    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.boot.firmware_path = Some(PathBuf::from("/etc/shadow"));
    f.refused("its firmware /etc/shadow is not this engine's firmware");
    f.manifest.boot.firmware_path = Some(f.facts.firmware_path.clone());
    f.check().unwrap();
}

/// A manifest cannot even carry a bad name to these checks: reading it
/// refuses the snapshot's and the source VM's names.
#[test]
fn a_manifest_naming_a_path_is_not_read() {
    let f = fixture(Hypervisor::CloudHypervisor);
    let good = serde_json::to_value(&f.manifest).unwrap();
    serde_json::from_value::<Manifest>(good.clone()).unwrap();
    for (pointer, what) in [("/snapshot/name", "snapshot"), ("/source/name", "VM")] {
        for bad in ["../../etc/cron.d/x", ".hidden", "a\0b"] {
            let mut doc = good.clone();
            *doc.pointer_mut(pointer).unwrap() = Value::from(bad);
            let err = serde_json::from_value::<Manifest>(doc).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid {what} name {bad:?}: must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)"
                )
            );
        }
    }
    // No name at all is a snapshot without one; a VM always has one.
    let mut doc = good.clone();
    *doc.pointer_mut("/snapshot/name").unwrap() = Value::from("");
    let read: Manifest = serde_json::from_value(doc).unwrap();
    assert_eq!(read.snapshot.name, None);
    let mut doc = good;
    *doc.pointer_mut("/source/name").unwrap() = Value::from("");
    assert!(serde_json::from_value::<Manifest>(doc).is_err());
}

fn qcow2(backing: Option<&str>, incompatible: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(QCOW2_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if let Some(b) = backing {
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
        h.extend_from_slice(b.as_bytes());
    }
    h[72..80].copy_from_slice(&incompatible.to_be_bytes());
    h
}

#[test]
fn a_qcow2_copy_may_be_backed_only_by_its_own_cloud_image() {
    let f = fixture(Hypervisor::CloudHypervisor);
    std::fs::write(f.dir.join("cow.raw"), qcow2(Some("/etc/shadow"), 0)).unwrap();
    f.refused("is a qcow2 image with backing file \"/etc/shadow\"");
    std::fs::write(f.dir.join("cow.raw"), qcow2(None, 0b100)).unwrap();
    f.refused("an external data file");
    std::fs::write(f.dir.join("cow.raw"), qcow2(None, 0)).unwrap();
    f.check().unwrap();

    // A cloud image overlay backed by its image's blob: accepted and pinned.
    let mut f = fixture(Hypervisor::CloudHypervisor);
    let image = Digest::from_hex(&"3".repeat(64)).unwrap();
    f.manifest.source.image_type = ImageType::Cloudimg;
    f.manifest.source.image_digest = image.to_string();
    f.manifest.storage.remove(0);
    f.manifest.boot = BootConfig {
        firmware_path: Some(f.facts.firmware_path.clone()),
        ..Default::default()
    };
    f.manifest.storage[0].path = f.facts.run_dir.join("vms/SRC/overlay.qcow2");
    let body = std::fs::read(f.dir.join("cow.raw")).unwrap();
    std::fs::remove_file(f.dir.join("cow.raw")).unwrap();
    let sum = f.manifest.files.remove("cow.raw").unwrap();
    f.manifest.files.insert("overlay.qcow2".into(), sum);
    drop(body);
    let base = crate::image::cloud::blob_path(&ImageDirs::new(&f.facts.root_dir), &image);
    std::fs::write(
        f.dir.join("overlay.qcow2"),
        qcow2(Some(&base.display().to_string()), 0),
    )
    .unwrap();
    f.manifest.files.get_mut("overlay.qcow2").unwrap().size =
        std::fs::metadata(f.dir.join("overlay.qcow2"))
            .unwrap()
            .len();
    // config.json's disks: one (the overlay).
    std::fs::write(
        f.dir.join("config.json"),
        br#"{"disks":[{"path":"/x/overlay.qcow2","backing_files":true}]}"#,
    )
    .unwrap();
    assert_eq!(
        f.check().unwrap().blobs.into_iter().collect::<Vec<_>>(),
        [image]
    );
}

#[test]
fn ch_config_fields_the_engine_does_not_rewrite_are_refused() {
    let storage = fixture(Hypervisor::CloudHypervisor).manifest.storage;
    let base: Value = serde_json::from_str(
        r#"{"disks":[{"path":"/a"},{"path":"/b"}],"payload":{"kernel":"/k","initramfs":"/i","cmdline":"root=/dev/vda"},"rng":{"src":"/dev/urandom"},"serial":{"mode":"Tty","file":null},"console":{"mode":"Pty","file":"/dev/pts/3"},"memory":{"size":1,"zones":null},"pmem":null,"fs":[],"vsock":null,"platform":{"num_pci_segments":1}}"#,
    )
    .unwrap();
    check_ch_config(&base, &storage).unwrap();
    let mut with_vsock = base.clone();
    with_vsock["vsock"] = serde_json::json!({"cid": 3, "socket": "/run/other/vsock.sock"});
    check_ch_config(&with_vsock, &storage).unwrap();
    let cases: &[(&str, &str)] = &[
        (r#"{"pmem":[{"file":"/etc/shadow"}]}"#, "\"pmem\" is set"),
        (r#"{"fs":[{"socket":"/s","tag":"t"}]}"#, "\"fs\" is set"),
        // The vsock socket is rewritten; nothing else of it may name a path.
        (
            r#"{"vsock":{"cid":3,"socket":"/s","id":"/etc/shadow"}}"#,
            "\"vsock.id\" names a path",
        ),
        (
            r#"{"devices":[{"path":"/sys/bus/pci/devices/x"}]}"#,
            "\"devices\" is set",
        ),
        (
            r#"{"landlock_rules":[{"path":"/","access":"rw"}]}"#,
            "\"landlock_rules\" is set",
        ),
        (
            r#"{"memory":{"size":1,"zones":[{"id":"z","size":1,"file":"/etc/shadow"}]}}"#,
            "memory zone 0 has a backing \"file\"",
        ),
        (
            r#"{"disks":[{"path":"/a","backing_files":true},{"path":"/b"}]}"#,
            "disk 0 has \"backing_files\" but is not a cloud image overlay",
        ),
        (
            r#"{"disks":[{"path":"/a"},{"path":"/b","vhost_user":true,"vhost_socket":"/s"}]}"#,
            "disk 1 has \"vhost_user\"",
        ),
        (
            r#"{"net":[{"tap":"t","vhost_socket":"/s"}]}"#,
            "net 0 has \"vhost_socket\"",
        ),
        (
            r#"{"rng":{"src":"/dev/urandom"},"future":{"where":"/etc/shadow"}}"#,
            "\"future.where\" names a path",
        ),
        (
            r#"{"platform":{"oem_strings":["../../x"]}}"#,
            "\"platform.oem_strings.*\" names a path",
        ),
    ];
    for (patch, expected) in cases {
        let mut config = base.clone();
        for (k, v) in serde_json::from_str::<serde_json::Map<String, Value>>(patch).unwrap() {
            config[&k] = v;
        }
        let err = check_ch_config(&config, &storage).expect_err(patch);
        assert!(err.contains(expected), "{patch}: {err}");
    }
}

#[test]
fn config_json_is_read_with_a_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.json");
    let mut big = b"{\"x\":\"".to_vec();
    big.resize(MAX_CH_CONFIG as usize + 10, b'a');
    std::fs::write(&path, &big).unwrap();
    let err = read_bounded_json(std::fs::File::open(&path).unwrap(), "config.json").unwrap_err();
    assert!(err.contains("over the limit"), "{err}");
}

#[test]
fn payload_and_entropy_are_rewritten_from_the_vms_record() {
    let f = fixture(Hypervisor::CloudHypervisor);
    let dirs = ImageDirs::new(&f.facts.root_dir);
    let layer = Digest::from_hex(HEX).unwrap();
    let mut vm = Vm::new(
        "C",
        Hypervisor::CloudHypervisor,
        f.manifest.source.clone(),
        f.facts.run_dir.join("vms/C"),
        f.facts.run_dir.join("vms/C"),
    );
    vm.storage_configs = f.manifest.storage.clone();
    vm.boot_config = Some(f.manifest.boot.clone());
    vm.config.no_agent = true;
    let mut config: Value = serde_json::from_str(
        r#"{"disks":[{"path":"/a"},{"path":"/b"}],"payload":{"kernel":"/etc/shadow","initramfs":"/etc/shadow","firmware":"/etc/shadow"},"rng":{"src":"/etc/shadow"},"cpus":{},"memory":{}}"#,
    )
    .unwrap();
    crate::backend::ch::patch_ch_config(&mut config, &vm).unwrap();
    assert_eq!(config["payload"]["kernel"], json_path(&dirs.kernel(&layer)));
    assert_eq!(
        config["payload"]["initramfs"],
        json_path(&dirs.initrd(&layer))
    );
    assert!(config["payload"].get("firmware").is_none());
    assert_eq!(config["rng"]["src"], "/dev/urandom");
}

#[test]
fn the_vsock_socket_becomes_the_vms_own_and_the_device_must_agree() {
    let f = fixture(Hypervisor::CloudHypervisor);
    let mut vm = Vm::new(
        "C",
        Hypervisor::CloudHypervisor,
        f.manifest.source.clone(),
        f.facts.run_dir.join("vms/C"),
        f.facts.run_dir.join("vms/C"),
    );
    vm.storage_configs = f.manifest.storage.clone();
    let source = r#"{"disks":[{"path":"/a"},{"path":"/b"}],"vsock":{"cid":3,"socket":"/run/vms/SRC/vsock.sock","iommu":false,"id":"_vsock0"}}"#;
    let mut config: Value = serde_json::from_str(source).unwrap();
    crate::backend::ch::patch_ch_config(&mut config, &vm).unwrap();
    assert_eq!(
        config["vsock"]["socket"],
        json_path(&f.facts.run_dir.join("vms/C/vsock.sock"))
    );
    assert_eq!(config["vsock"]["cid"], 3);
    assert_eq!(config["vsock"]["id"], "_vsock0");
    // CH restores the devices its state has: none added, none removed.
    let mut config: Value = serde_json::from_str(source).unwrap();
    vm.config.no_agent = true;
    let err = crate::backend::ch::patch_ch_config(&mut config, &vm).unwrap_err();
    assert!(err.contains("has a vsock device"), "{err}");
    let mut config: Value =
        serde_json::from_str(r#"{"disks":[{"path":"/a"},{"path":"/b"}],"vsock":null}"#).unwrap();
    vm.config.no_agent = false;
    let err = crate::backend::ch::patch_ch_config(&mut config, &vm).unwrap_err();
    assert!(err.contains("has no vsock device"), "{err}");
}

fn json_path(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

#[test]
fn the_path_a_vmm_saw_a_layer_at_is_the_same_layer_outside_the_hosts_paths() {
    let other = format!("/srv/other/images/blobs/{HEX}.erofs");
    let mut f = fixture(Hypervisor::Firecracker);
    f.manifest.storage[0].vmm_path = Some(PathBuf::from(&other));
    f.check().expect("another root_dir's copy of the layer");
    // Where the jail shows the host's libraries, or another layer's name.
    for seen in [
        "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        format!("/usr/images/blobs/{HEX}.erofs"),
        format!("/srv/other/images/blobs/{}.erofs", "2".repeat(64)),
        format!("/srv/other/../images/blobs/{HEX}.erofs"),
    ] {
        f.manifest.storage[0].vmm_path = Some(PathBuf::from(&seen));
        f.refused("which is not the same layer in an image store outside the system's paths");
    }
    // A VMM that does not reopen its paths has no use for one.
    let mut f = fixture(Hypervisor::CloudHypervisor);
    f.manifest.storage[0].vmm_path = Some(PathBuf::from(&other));
    f.refused("which is not the same layer");
}
