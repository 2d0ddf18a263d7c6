//! The VMM control layer against the fake VMMs: always runs, everywhere.
//!
//! The fakes are separate processes launched by the engine's own supervision
//! code, exactly as the real binaries are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_engine::backend::{self, PauseError};
use cocoon_engine::model::{Hypervisor, VmmProcess};
use cocoon_engine::process::ProcessIdentity;
use cocoon_engine::supervise::{self, LaunchSpec, Stdin, StopTimeouts, Stopped, SuperviseError};
use serde_json::json;
use vmm_api::ch::CloudHypervisor;
use vmm_api::ch::models::{
    DiskConfig, NetConfig, RestoreConfig, VmResize, VmSnapshotConfig, VmState, file_url,
};
use vmm_api::fc::Firecracker;
use vmm_api::fc::models::*;
use vmm_api::{ApiError, RetryPolicy, Transition, VmmError};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Harness {
    dir: tempfile::TempDir,
    /// Everything launched, killed when the test ends however it ends.
    launched: std::sync::Mutex<Vec<VmmProcess>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for vmm in self.launched.lock().unwrap().iter() {
            cocoon_testkit::kill_if_running(vmm);
        }
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            dir: tempfile::Builder::new()
                .prefix("cocoon-vmm-")
                .tempdir()
                .unwrap(),
            launched: Default::default(),
        }
    }

    fn track(&self, vmm: VmmProcess) -> VmmProcess {
        self.launched.lock().unwrap().push(vmm.clone());
        vmm
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn faults(&self, rules: serde_json::Value) {
        std::fs::write(self.path("faults.json"), rules.to_string()).unwrap();
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn spec(&self, binary: &str, args: Vec<String>, socket: &Path) -> LaunchSpec {
        LaunchSpec {
            binary: binary.into(),
            args: args.into_iter().map(Into::into).collect(),
            api_socket: socket.to_path_buf(),
            log_file: self.path("vmm.log"),
            stdin: Stdin::Null,
            netns: None,
            socket_timeout: Duration::from_secs(5),
            jail: None,
            cgroup: Vec::new(),
        }
    }

    async fn launch(&self, flavor: Hypervisor) -> VmmProcess {
        // SAFETY of env: the fakes read these from their own environment, set
        // by the launcher's inherited environment below.
        let socket = self.path("api.sock");
        let args = match flavor {
            Hypervisor::CloudHypervisor => vec![
                "--api-socket".into(),
                socket.display().to_string(),
                "--kernel".into(),
                "/boot/vmlinuz".into(),
                "--cpus".into(),
                "boot=1".into(),
            ],
            Hypervisor::Firecracker => vec![
                "--api-sock".into(),
                socket.display().to_string(),
                "--id".into(),
                "t".into(),
            ],
            Hypervisor::Qemu => unreachable!("there is no fake QEMU: its tests run the real one"),
        };
        let mut spec = self.spec(FAKE, args, &socket);
        spec.binary = self.wrapper();
        self.track(supervise::launch(&spec).await.expect("fake VMM starts"))
    }

    /// The launcher passes its environment through; a tiny wrapper script sets
    /// the fake's fault and request files without touching this process's env.
    fn wrapper(&self) -> PathBuf {
        let path = self.path("fake-vmm.sh");
        if !path.exists() {
            let script = format!(
                "#!/bin/sh\nexport COCOON_FAKE_VMM_FAULTS={}\nexport COCOON_FAKE_VMM_REQUESTS={}\nexec {FAKE} \"$@\"\n",
                self.path("faults.json").display(),
                self.path("requests.log").display()
            );
            std::fs::write(&path, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        path
    }

    fn ch(&self) -> CloudHypervisor {
        CloudHypervisor::new(&self.path("api.sock"))
    }

    fn fc(&self) -> Firecracker {
        Firecracker::new(&self.path("api.sock"))
    }
}

fn quick() -> StopTimeouts {
    StopTimeouts {
        graceful: Duration::from_secs(2),
        term: Duration::from_secs(2),
        kill: Duration::from_secs(2),
    }
}

async fn stop(vmm: &VmmProcess) {
    supervise::terminate(vmm, None::<fn() -> std::future::Ready<()>>, quick())
        .await
        .unwrap();
}

#[tokio::test]
async fn seed_scenario_vm_paused_behind_our_back_is_unwedged() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    // A snapshot command died after pausing: the VM is left Paused.
    assert_eq!(h.ch().pause().await.unwrap(), Transition::Applied);
    let before = h.requests().len();

    // The next snapshot goes through the engine's pause window.
    let snap = h.path("snap");
    std::fs::create_dir(&snap).unwrap();
    let socket = h.path("api.sock");
    let ch = h.ch();
    let config = VmSnapshotConfig {
        destination_url: file_url(&snap),
        extra: Default::default(),
    };
    let api = backend::of(Hypervisor::CloudHypervisor);
    backend::while_paused(api, &socket, || {
        ch.snapshot(&config, Duration::from_secs(10))
    })
    .await
    .unwrap();

    // Decided from the error itself: no vm.info round trip inside the window.
    assert_eq!(
        h.requests()[before..],
        [
            "PUT /api/v1/vm.pause",
            "PUT /api/v1/vm.snapshot",
            "PUT /api/v1/vm.resume"
        ]
    );
    assert_eq!(
        h.ch().info().await.unwrap().state,
        VmState::Running,
        "left running"
    );
    assert!(snap.join("config.json").exists() && snap.join("state.json").exists());
    stop(&vmm).await;
}

#[tokio::test]
async fn same_state_transitions_are_success_on_both_vmms() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let ch = h.ch();
    assert_eq!(ch.pause().await.unwrap(), Transition::Applied);
    assert_eq!(ch.pause().await.unwrap(), Transition::AlreadyInState);
    assert_eq!(ch.resume().await.unwrap(), Transition::Applied);
    assert_eq!(ch.resume().await.unwrap(), Transition::AlreadyInState);
    assert_eq!(ch.shutdown().await.unwrap(), Transition::Applied);
    assert_eq!(ch.shutdown().await.unwrap(), Transition::AlreadyInState);
    // A real refusal stays an error: pausing a shut-down VM.
    let err = ch.pause().await.unwrap_err();
    assert!(
        matches!(err.vmm_error(), Some(VmmError::VmNotRunning { .. })),
        "{err}"
    );
    stop(&vmm).await;

    let h = Harness::new();
    let vmm = h.launch(Hypervisor::Firecracker).await;
    let fc = h.fc();
    boot_fc(&fc).await;
    assert_eq!(fc.pause().await.unwrap(), Transition::Applied);
    assert_eq!(
        fc.pause().await.unwrap(),
        Transition::Applied,
        "Firecracker accepts a second pause"
    );
    assert_eq!(fc.describe_instance().await.unwrap().state, "Paused");
    assert_eq!(fc.resume().await.unwrap(), Transition::Applied);
    assert_eq!(fc.resume().await.unwrap(), Transition::Applied);
    assert_eq!(fc.describe_instance().await.unwrap().state, "Running");
    stop(&vmm).await;
}

async fn boot_fc(fc: &Firecracker) {
    fc.put_machine_config(&MachineConfiguration {
        vcpu_count: 1,
        mem_size_mib: 128,
        smt: None,
        track_dirty_pages: None,
        huge_pages: None,
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.put_boot_source(&BootSource {
        kernel_image_path: cocoon_testkit::guest::kernel_path().display().to_string(),
        initrd_path: None,
        boot_args: Some("console=ttyS0".into()),
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.instance_start().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_a_timed_out_but_applied_pause_succeeds() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    // The first pause is applied, but its answer never comes.
    h.faults(json!([{"method": "PUT", "path": "/api/v1/vm.pause", "action": "apply_then_hang", "times": 1}]));
    let ch = h
        .ch()
        .with_timeout(Duration::from_millis(300))
        .with_retry(RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        });
    assert_eq!(ch.pause().await.unwrap(), Transition::AlreadyInState);
    assert_eq!(h.ch().info().await.unwrap().state, VmState::Paused);
    assert_eq!(
        h.requests()
            .iter()
            .filter(|r| r.ends_with("vm.pause"))
            .count(),
        2
    );
    stop(&vmm).await;
}

#[tokio::test]
async fn a_vmm_killed_mid_call_is_a_typed_error_not_a_hang() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    h.ch().pause().await.unwrap();
    h.faults(json!([{"path": "/api/v1/vm.snapshot", "action": "die"}]));
    let started = Instant::now();
    let config = VmSnapshotConfig {
        destination_url: file_url(&h.path("snap")),
        extra: Default::default(),
    };
    let err = h
        .ch()
        .snapshot(&config, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.requests()
            .iter()
            .filter(|r| r.ends_with("vm.snapshot"))
            .count(),
        1,
        "snapshot is never retried"
    );
    // The dead VMM is recognised as gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!supervise::is_running(&vmm));
    let err = h.ch().ping().await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err}");
}

#[tokio::test]
async fn a_vmm_that_never_answers_times_out() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::Firecracker).await;
    h.faults(json!([{"path": "/", "action": "hang"}]));
    let fc = h
        .fc()
        .with_timeout(Duration::from_millis(200))
        .with_retry(RetryPolicy::NONE);
    let started = Instant::now();
    let err = fc.describe_instance().await.unwrap_err();
    assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    stop(&vmm).await;
}

#[tokio::test]
async fn vmm_errors_are_typed() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::Firecracker).await;
    let fc = h.fc();
    let err = fc.pause().await.unwrap_err();
    assert_eq!(
        err.vmm_error(),
        Some(&VmmError::Fault {
            message: "The requested operation is not supported before starting the microVM.".into()
        })
    );
    assert!(matches!(err, ApiError::Vmm { status: 400, .. }));
    // 500s with a reason are not retried; a bare 503 is, boundedly.
    h.faults(json!([{"path": "/", "action": "error", "status": 503, "body": ""}]));
    let err = h
        .fc()
        .with_retry(RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        })
        .describe_instance()
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Vmm { status: 503, .. }));
    assert_eq!(h.requests().iter().filter(|r| *r == "GET /").count(), 3);
    stop(&vmm).await;
}

#[tokio::test]
async fn snapshot_and_restore_write_and_read_real_files() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let ch = h.ch();
    let snap = h.path("snap");
    std::fs::create_dir(&snap).unwrap();
    let config = VmSnapshotConfig {
        destination_url: file_url(&snap),
        extra: Default::default(),
    };
    let err = ch
        .snapshot(&config, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Trying to snapshot while VM is running"),
        "{err}"
    );
    ch.pause().await.unwrap();
    ch.snapshot(&config, Duration::from_secs(5)).await.unwrap();
    stop(&vmm).await;

    // Restore in a new process.
    let vmm = h.launch_plain_ch().await;
    let restore = RestoreConfig {
        source_url: file_url(&snap),
        prefault: None,
        memory_restore_mode: None,
        resume: None,
        extra: Default::default(),
    };
    ch.restore(&restore, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ch.info().await.unwrap().state, VmState::Paused);
    assert_eq!(ch.resume().await.unwrap(), Transition::Applied);
    // A missing snapshot is a clear refusal.
    let err = ch
        .restore(
            &RestoreConfig {
                source_url: file_url(&h.path("nope")),
                ..restore
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Vmm { status: 500, .. }), "{err}");
    stop(&vmm).await;
}

impl Harness {
    async fn launch_plain_ch(&self) -> VmmProcess {
        let socket = self.path("api.sock");
        let mut spec = self.spec(
            FAKE,
            vec!["--api-socket".into(), socket.display().to_string()],
            &socket,
        );
        spec.binary = self.wrapper();
        self.track(supervise::launch(&spec).await.unwrap())
    }
}

#[tokio::test]
async fn every_client_endpoint_reaches_the_vmm() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let ch = h.ch();
    ch.ping().await.unwrap();
    ch.info().await.unwrap();
    ch.counters().await.unwrap();
    let disk = ch
        .add_disk(&DiskConfig {
            path: Some("/tmp/x.raw".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let net = ch
        .add_net(&NetConfig {
            tap: Some("tap0".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    ch.remove_device(&net.id).await.unwrap();
    ch.remove_device(&disk.id).await.unwrap();
    // vhost-user needs shared memory, which this VM lacks; a VFIO device
    // needs its IOMMU group.
    let fs = vmm_api::ch::models::FsConfig {
        tag: "t".into(),
        socket: h.path("vfs.sock").display().to_string(),
        num_queues: 1,
        queue_size: 1024,
        id: Some("cocoon-fs-t".into()),
        extra: Default::default(),
    };
    let err = ch.add_fs(&fs).await.unwrap_err().to_string();
    assert!(
        err.contains("Using vhost-user requires using shared memory"),
        "{err}"
    );
    let device = vmm_api::ch::models::DeviceConfig {
        path: Some("/sys/bus/pci/devices/0000:ff:1f.7/".into()),
        ..Default::default()
    };
    let err = ch.add_device(&device).await.unwrap_err().to_string();
    assert!(err.contains("Failed to open VFIO group"), "{err}");
    ch.resize(&VmResize {
        desired_vcpus: Some(2),
        ..Default::default()
    })
    .await
    .unwrap();
    ch.pause().await.unwrap();
    let snap = h.path("s");
    std::fs::create_dir(&snap).unwrap();
    ch.snapshot(
        &VmSnapshotConfig {
            destination_url: file_url(&snap),
            extra: Default::default(),
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    ch.resume().await.unwrap();
    ch.power_button().await.unwrap();
    ch.boot().await.unwrap();
    ch.shutdown().await.unwrap();
    ch.shutdown_vmm().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let vmm2 = h.launch_plain_ch().await;
    ch.restore(
        &RestoreConfig {
            source_url: file_url(&snap),
            prefault: Some(false),
            memory_restore_mode: None,
            resume: Some(true),
            extra: Default::default(),
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let seen: std::collections::BTreeSet<String> = h.requests().into_iter().collect();
    for (method, path) in vmm_api::ch::ENDPOINTS {
        assert!(
            seen.contains(&format!("{method} /api/v1{path}")),
            "{method} {path} was never called"
        );
    }
    stop(&vmm2).await;
    let _ = vmm;

    let h = Harness::new();
    let vmm = h.launch(Hypervisor::Firecracker).await;
    let fc = h.fc();
    fc.describe_instance().await.unwrap();
    std::fs::write(h.path("rootfs.img"), b"disk").unwrap();
    fc.put_drive(&Drive {
        drive_id: "rootfs".into(),
        is_root_device: false,
        // Firecracker reopens its drives on snapshot load: a real file.
        path_on_host: Some(h.path("rootfs.img").display().to_string()),
        is_read_only: Some(true),
        cache_type: None,
        io_engine: None,
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.put_network_interface(&NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: Some("02:00:00:00:00:01".into()),
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.put_balloon(&Balloon {
        amount_mib: 64,
        deflate_on_oom: true,
        stats_polling_interval_s: None,
        free_page_reporting: None,
        extra: Default::default(),
    })
    .await
    .unwrap();
    fc.put_entropy(&EntropyDevice::default()).await.unwrap();
    fc.put_vsock(&Vsock {
        guest_cid: 3,
        uds_path: "/run/vms/x/vsock.sock".into(),
        extra: Default::default(),
    })
    .await
    .unwrap();
    boot_fc(&fc).await;
    let config = fc.vm_config().await.unwrap();
    assert_eq!(config.drives[0].drive_id, "rootfs");
    assert_eq!(config.network_interfaces[0].host_dev_name, "tap0");
    assert_eq!(config.machine_config.as_ref().unwrap().mem_size_mib, 128);
    // A running VM's balloon target (`vm resize` below its RAM).
    fc.update_balloon(32).await.unwrap();
    assert_eq!(
        fc.vm_config().await.unwrap().balloon.unwrap().amount_mib,
        32
    );
    fc.pause().await.unwrap();
    let (state, mem) = (h.path("vmstate"), h.path("mem"));
    fc.snapshot_create(
        &SnapshotCreateParams {
            snapshot_path: state.display().to_string(),
            mem_file_path: mem.display().to_string(),
            snapshot_type: Some(SnapshotType::Full),
            extra: Default::default(),
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    fc.resume().await.unwrap();
    fc.send_ctrl_alt_del().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !supervise::is_running(&vmm),
        "Firecracker exits when the guest resets"
    );
    let vmm = h.launch(Hypervisor::Firecracker).await;
    fc.snapshot_load(
        &SnapshotLoadParams {
            snapshot_path: state.display().to_string(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem.display().to_string(),
                extra: Default::default(),
            }),
            track_dirty_pages: None,
            resume_vm: Some(true),
            vsock_override: None,
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap9".into(),
                extra: Default::default(),
            }],
            extra: Default::default(),
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        fc.vm_config().await.unwrap().network_interfaces[0].host_dev_name,
        "tap9"
    );
    let seen: std::collections::BTreeSet<String> = h.requests().into_iter().collect();
    for (method, path) in vmm_api::fc::ENDPOINTS {
        let path = path
            .replace("{drive_id}", "rootfs")
            .replace("{iface_id}", "eth0");
        assert!(
            seen.contains(&format!("{method} {path}")),
            "{method} {path} was never called"
        );
    }
    stop(&vmm).await;
}

#[tokio::test]
async fn launch_fails_fast_when_the_vmm_dies_and_leaves_nothing_running() {
    let h = Harness::new();
    // A "VMM" that prints an error and exits at once.
    let spec = h.spec(
        "/bin/sh",
        vec!["-c".into(), "echo 'Error: bad kernel' >&2; exit 3".into()],
        &h.path("api.sock"),
    );
    let started = Instant::now();
    let err = supervise::launch(&spec).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails fast, not at the socket timeout"
    );
    match &err {
        SuperviseError::ExitedEarly { status, log, .. } => {
            assert!(status.contains('3'), "{status}");
            assert!(log.contains("Error: bad kernel"), "{log}");
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("last output:\nError: bad kernel"),
        "{err}"
    );

    // A process that never opens its socket is killed at the deadline.
    let socket = h.path("never.sock");
    let mut spec = h.spec(
        "/usr/bin/python3",
        vec![
            "-c".into(),
            "import time; time.sleep(30)".into(),
            socket.display().to_string(),
        ],
        &socket,
    );
    spec.socket_timeout = Duration::from_millis(300);
    let err = supervise::launch(&spec).await.unwrap_err();
    assert!(matches!(err, SuperviseError::SocketTimeout { .. }), "{err}");
    assert!(
        supervise::find_by_socket(&socket).is_empty(),
        "the stuck process was killed"
    );
}

#[tokio::test]
async fn pid_reuse_never_makes_a_stranger_look_like_our_vmm() {
    let h = Harness::new();
    let socket = h.path("api.sock");
    // A live, unrelated process with the recorded pid but another start time.
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let real = ProcessIdentity::of(stranger.id()).unwrap();
    let recorded = VmmProcess {
        identity: ProcessIdentity {
            pid: real.pid,
            start_time: real.start_time - 1,
        },
        api_socket: socket.clone(),
    };
    assert!(!supervise::is_running(&recorded));
    assert_eq!(
        supervise::terminate(&recorded, None::<fn() -> std::future::Ready<()>>, quick())
            .await
            .unwrap(),
        Stopped::AlreadyGone
    );
    // Same pid and start time, but it is not serving our socket.
    let same = VmmProcess {
        identity: real,
        api_socket: socket,
    };
    assert!(!supervise::is_running(&same));
    assert_eq!(
        supervise::terminate(&same, None::<fn() -> std::future::Ready<()>>, quick())
            .await
            .unwrap(),
        Stopped::AlreadyGone
    );
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was never signalled"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[tokio::test]
async fn an_orphan_vmm_with_no_record_is_found_and_terminated() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let socket = h.path("api.sock");
    // The record (pidfile) is lost: only the socket path is known.
    let found = supervise::find_by_socket(&socket);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].identity, vmm.identity);
    assert_eq!(
        supervise::terminate_all_by_socket(&socket, quick())
            .await
            .unwrap(),
        1
    );
    assert!(!supervise::is_running(&vmm));
    assert!(supervise::find_by_socket(&socket).is_empty());
    assert_eq!(
        supervise::terminate_all_by_socket(&socket, quick())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn termination_escalates_graceful_then_term_then_kill() {
    // Graceful: Firecracker exits when its guest handles Ctrl-Alt-Del.
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::Firecracker).await;
    let fc = h.fc();
    boot_fc(&fc).await;
    let outcome = supervise::terminate(
        &vmm,
        Some(|| async { fc.send_ctrl_alt_del().await.unwrap() }),
        quick(),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Stopped::Graceful);

    // SIGTERM: a guest that ignores the graceful request.
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let timeouts = StopTimeouts {
        graceful: Duration::from_millis(200),
        ..quick()
    };
    let outcome = supervise::terminate(&vmm, Some(|| async {}), timeouts)
        .await
        .unwrap();
    assert_eq!(outcome, Stopped::Terminated);
    assert!(!supervise::is_running(&vmm));

    // SIGKILL: a process that ignores SIGTERM.
    let socket = h.path("stubborn.sock");
    let spec = LaunchSpec {
        socket_timeout: Duration::from_secs(5),
        jail: None,
        cgroup: Vec::new(),
        ..h.spec(
            "/usr/bin/python3",
            vec![
                "-c".into(),
                "import signal,socket,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(60)".into(),
                socket.display().to_string(),
            ],
            &socket,
        )
    };
    let vmm = h.track(supervise::launch(&spec).await.unwrap());
    let started = Instant::now();
    let timeouts = StopTimeouts {
        graceful: Duration::ZERO,
        term: Duration::from_millis(300),
        kill: Duration::from_secs(2),
    };
    assert_eq!(
        supervise::terminate(&vmm, None::<fn() -> std::future::Ready<()>>, timeouts)
            .await
            .unwrap(),
        Stopped::Killed
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!supervise::is_running(&vmm));
}

#[tokio::test]
async fn the_vmm_survives_its_launcher_in_its_own_session() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let sid = std::fs::read_to_string(format!("/proc/{}/stat", vmm.identity.pid)).unwrap();
    let fields: Vec<&str> = sid[sid.rfind(')').unwrap() + 2..].split(' ').collect();
    // Field 6 (session) equals the pid: setsid ran.
    assert_eq!(fields[3], vmm.identity.pid.to_string(), "session id");
    let stdin = std::fs::read_link(format!("/proc/{}/fd/0", vmm.identity.pid)).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    let stdout = std::fs::read_link(format!("/proc/{}/fd/1", vmm.identity.pid)).unwrap();
    assert_eq!(stdout, h.path("vmm.log"));
    assert!(
        std::fs::read_to_string(h.path("vmm.log"))
            .unwrap()
            .contains("listening on")
    );
    stop(&vmm).await;
}

#[tokio::test]
async fn the_vmm_can_be_launched_inside_a_network_namespace() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return cocoon_testkit::skip(
            "the_vmm_can_be_launched_inside_a_network_namespace",
            "network namespaces need root",
        );
    }
    let name = format!("cocoon-test-{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return cocoon_testkit::skip(
            "the_vmm_can_be_launched_inside_a_network_namespace",
            "`ip netns add` is not available (iproute2)",
        );
    }
    let netns = PathBuf::from("/var/run/netns").join(&name);
    let h = Harness::new();
    let socket = h.path("api.sock");
    let mut spec = h.spec(
        FAKE,
        vec!["--api-socket".into(), socket.display().to_string()],
        &socket,
    );
    spec.netns = Some(netns.clone());
    let vmm = supervise::launch(&spec).await.map(|v| h.track(v));
    let result = vmm.as_ref().map(|vmm| {
        use std::os::unix::fs::MetadataExt;
        let inside = std::fs::metadata(format!("/proc/{}/ns/net", vmm.identity.pid))
            .unwrap()
            .ino();
        let wanted = std::fs::metadata(&netns).unwrap().ino();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        (inside, wanted, ours)
    });
    if let Ok(vmm) = &vmm {
        stop(vmm).await;
    }
    std::process::Command::new("ip")
        .args(["netns", "del", &name])
        .status()
        .unwrap();
    let (inside, wanted, ours) = result.unwrap();
    assert_eq!(inside, wanted, "the VMM runs in the VM's namespace");
    assert_ne!(ours, wanted, "the launcher stayed in its own");
}

#[tokio::test]
async fn while_paused_resumes_after_a_failed_operation() {
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::CloudHypervisor).await;
    let socket = h.path("api.sock");
    let api = backend::of(Hypervisor::CloudHypervisor);
    let result: Result<(), PauseError<std::io::Error>> =
        backend::while_paused(api, &socket, || async {
            Err(std::io::Error::other("disk copy failed"))
        })
        .await;
    assert!(matches!(result, Err(PauseError::Work(_))));
    assert_eq!(
        h.ch().info().await.unwrap().state,
        VmState::Running,
        "resumed despite the failure"
    );
    stop(&vmm).await;
}

/// The fake CH parses `--disk`, `--net`, `--cpus`, `--memory`, `--serial`,
/// `--console` and `--balloon` as CH v53 does: each input CH refuses
/// (unknown keys, values it cannot convert, max below boot CPUs) makes the
/// fake exit 1 with CH's error chain (tests/vmm_real.rs checks the real CH
/// still gives exactly these).
#[test]
fn fake_ch_refuses_the_command_lines_ch_refuses() {
    use cocoon_testkit::vmm_refusals::{CH_CLI_CASES, ch_chain};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    for case in CH_CLI_CASES {
        let out = std::process::Command::new(FAKE)
            .arg("--api-socket")
            .arg(&socket)
            .args(["--kernel", "/nonexistent"])
            .args(case.args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "fake CH with {:?}: {stderr}",
            case.args
        );
        assert_eq!(
            ch_chain(&stderr),
            case.chain,
            "fake CH with {:?}: {stderr}",
            case.args
        );
        assert!(!socket.exists(), "{:?}: the fake served anyway", case.args);
    }
}

/// The fake FC refuses unknown, missing and mistyped fields in every body
/// the engine sends, and a drive whose file is missing at `PUT /drives`,
/// with FC's status and fault message (position included).
#[tokio::test]
async fn fake_fc_refuses_the_bodies_fc_refuses() {
    use cocoon_testkit::vmm_refusals::{FC_API_CASES, http};
    let h = Harness::new();
    let vmm = h.launch(Hypervisor::Firecracker).await;
    let socket = h.path("api.sock");
    for case in FC_API_CASES {
        let (status, body) = http(&socket, case.method, case.path, case.body);
        assert_eq!(
            (status, body.as_str()),
            (case.status, case.response),
            "fake FC: {} {} {}",
            case.method,
            case.path,
            case.body
        );
    }
    // Nothing refused was configured.
    let (_, config) = http(&socket, "GET", "/vm/config", "");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(
        config["drives"].as_array().is_none_or(Vec::is_empty),
        "{config}"
    );
    stop(&vmm).await;
}

/// The fake CH refuses mistyped fields with CH's 400 ("Failed to
/// deserialize JSON") and, as CH does, ignores unknown ones.
#[tokio::test]
async fn fake_ch_refuses_the_bodies_ch_refuses() {
    use cocoon_testkit::vmm_refusals::{CH_API_CASES, http};
    let h = Harness::new();
    let vmm = h.launch_plain_ch().await;
    let socket = h.path("api.sock");
    for case in CH_API_CASES {
        let (status, body) = http(&socket, case.method, case.path, case.body);
        assert_eq!(
            (status, body.as_str()),
            (case.status, case.response),
            "fake CH: {} {} {}",
            case.method,
            case.path,
            case.body
        );
    }
    stop(&vmm).await;
}
