//! Every VM's hybrid vsock, on the real VMMs: `vm run` gives it
//! `<run_dir>/vsock.sock` (shown as `vsock_socket`), which accepts a
//! connection and answers `CONNECT 1024\n` (the test guest has no vsock
//! driver, so nothing answers in the guest: each VMM's behaviour is
//! pinned); a clone gets
//! its own socket while the source's keeps working; stop and rm leave no
//! socket and no vhost-device-vsock; `--no-agent` gives no device.
//!
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY /
//! COCOON_QEMU_BINARY), /dev/kvm, and for QEMU vhost-device-vsock; says
//! SKIPPED loudly otherwise.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cocoon_testkit::guest::HEARTBEAT_PREFIX;
use cocoon_testkit::{CocoonEnv, kill_all_under, real_vmm, require_real_vmm, skip};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ch,
    Fc,
    Qemu,
}

struct Lab {
    env: CocoonEnv,
    ch: Option<PathBuf>,
    fc: Option<PathBuf>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        kill_all_under(&self.env.root_dir());
    }
}

impl Lab {
    fn new(test: &str, vmm: Vmm) -> Option<Lab> {
        let found = match vmm {
            Vmm::Ch => require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor"),
            Vmm::Fc => require_real_vmm(test, "COCOON_FC_BINARY", "firecracker"),
            Vmm::Qemu => require_real_vmm(test, "COCOON_QEMU_BINARY", "qemu-system-x86_64"),
        };
        found.as_ref()?;
        if !Path::new("/dev/kvm").exists() {
            skip(test, "/dev/kvm is missing");
            return None;
        }
        if vmm == Vmm::Qemu && vhost_device_vsock().is_none() {
            skip(test, "vhost-device-vsock is not installed");
            return None;
        }
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            ch: real_vmm("COCOON_CH_BINARY", "cloud-hypervisor"),
            fc: real_vmm("COCOON_FC_BINARY", "firecracker"),
        };
        let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "guest/test:1", tar.to_str().unwrap()]);
        Some(lab)
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.std_cmd();
        for (var, path) in [
            ("COCOON_CH_BINARY", &self.ch),
            ("COCOON_FC_BINARY", &self.fc),
        ] {
            if let Some(path) = path {
                cmd.env(var, path);
            }
        }
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn run(&self, vmm: Vmm, name: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "vm", "run", "--nics", "0", "--memory", "512M", "--cpu", "1", "--name", name,
        ];
        args.extend(match vmm {
            Vmm::Ch => None,
            Vmm::Fc => Some("--fc"),
            Vmm::Qemu => Some("--qemu"),
        });
        args.extend(extra);
        args.push("guest/test:1");
        self.ok(&args);
        self.wait_heartbeat(name);
        self.inspect(name)
    }

    fn wait_heartbeat(&self, vm: &str) {
        for _ in 0..200 {
            if self
                .ok(&["vm", "logs", vm])
                .contains(&format!("{HEARTBEAT_PREFIX}1"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{vm} never ran");
    }
}

fn vhost_device_vsock() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(home)
        .chain([PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("vhost-device-vsock"))
        .find(|p| p.is_file())
}

fn run_dir(vm: &Value) -> PathBuf {
    PathBuf::from(vm["run_dir"].as_str().unwrap())
}

/// What the VMM answers a `CONNECT 1024` no guest port listens on: the
/// bytes it wrote before closing (or resetting) the connection.
fn connect_1024(socket: &Path) -> Result<Vec<u8>, std::io::Error> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"CONNECT 1024\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map(|_| answer)
}

/// Whether any process names `socket` on its command line.
fn named(socket: &Path) -> bool {
    !cocoon_engine::supervise::find_by_socket(socket).is_empty()
}

/// The answer each VMM gives: none of them invents an `OK`. CH and FC
/// forward the request to a guest that never takes it (no driver): no
/// answer, the connection stays open. vhost-device-vsock resets it.
fn assert_refused(vmm: Vmm, socket: &Path) {
    match (vmm, connect_1024(socket)) {
        (Vmm::Ch | Vmm::Fc, Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        (Vmm::Qemu, Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        (vmm, other) => panic!("{vmm:?}: unexpected answer {other:?}"),
    }
}

fn vsock_on(vmm: Vmm) {
    let test = &format!("vsock_on_{vmm:?}").to_lowercase();
    let Some(lab) = Lab::new(test, vmm) else {
        return;
    };
    let src = lab.run(vmm, "src", &[]);
    let dir = run_dir(&src);
    let socket = dir.join("vsock.sock");
    if vmm == Vmm::Qemu {
        // On QEMU only container images get the device (their agent is the
        // one the engine knows; vm_container.rs covers it): this VM image
        // gets none, so it keeps its snapshots.
        assert!(src.get("vsock_socket").is_none(), "{src}");
        assert!(!named(&dir.join("vhost-vsock.sock")));
        lab.ok(&["snapshot", "save", "--name", "s", "src"]);
        lab.ok(&["vm", "rm", "--force", "src"]);
        return;
    }
    assert_eq!(src["vsock_socket"], socket.display().to_string());
    assert!(socket.exists());
    assert_refused(vmm, &socket);
    if vmm == Vmm::Qemu {
        assert!(
            named(&dir.join("vhost-vsock.sock")),
            "no vhost-device-vsock"
        );
        // QEMU cannot migrate vhost-user-vsock: refused before any pause.
        let err = lab.err(&["snapshot", "save", "--name", "s", "src"]);
        assert!(err.contains("not migratable"), "{err}");
        assert_eq!(lab.inspect("src")["state"], "running");
        assert_refused(vmm, &socket);
    } else {
        lab.ok(&["snapshot", "save", "--name", "s", "src"]);
        lab.ok(&["vm", "clone", "--name", "c", "s"]);
        let clone = lab.inspect("c");
        let own = run_dir(&clone).join("vsock.sock");
        assert_ne!(own, socket);
        assert_eq!(clone["vsock_socket"], own.display().to_string());
        assert_refused(vmm, &own);
        assert_refused(vmm, &socket);
        lab.ok(&["vm", "rm", "--force", "c"]);
        assert!(!own.exists());
    }
    lab.ok(&["vm", "stop", "src"]);
    assert!(!socket.exists(), "vm stop left {}", socket.display());
    assert!(
        !named(&dir.join("vhost-vsock.sock")),
        "vm stop left a helper"
    );
    assert!(lab.inspect("src").get("vsock_socket").is_none());
    lab.ok(&["vm", "start", "src"]);
    lab.wait_heartbeat("src");
    assert_refused(vmm, &socket);
    lab.ok(&["vm", "rm", "--force", "src"]);
    assert!(!socket.exists());
    assert!(!named(&dir.join("vhost-vsock.sock")), "vm rm left a helper");
}

fn no_agent_on(vmm: Vmm) {
    let test = &format!("no_agent_on_{vmm:?}").to_lowercase();
    let Some(lab) = Lab::new(test, vmm) else {
        return;
    };
    let vm = lab.run(vmm, "bare", &["--no-agent"]);
    let dir = run_dir(&vm);
    assert!(vm.get("vsock_socket").is_none(), "{vm}");
    assert!(!dir.join("vsock.sock").exists());
    assert!(!named(&dir.join("vhost-vsock.sock")));
    let pid = vm["vmm"]["pid"].as_u64().unwrap();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&argv).contains("vsock"));
    if vmm == Vmm::Fc {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let api = vmm_api::fc::Firecracker::new(&dir.join("api.sock"));
        let config = rt.block_on(api.vm_config()).unwrap();
        assert!(
            config.extra.get("vsock").is_none_or(Value::is_null),
            "{config:?}"
        );
    }
    lab.ok(&["vm", "rm", "--force", "bare"]);
}

#[test]
fn vsock_on_cloud_hypervisor() {
    vsock_on(Vmm::Ch);
}

#[test]
fn vsock_on_firecracker() {
    vsock_on(Vmm::Fc);
}

#[test]
fn vsock_on_qemu() {
    vsock_on(Vmm::Qemu);
}

#[test]
fn no_agent_on_cloud_hypervisor() {
    no_agent_on(Vmm::Ch);
}

#[test]
fn no_agent_on_firecracker() {
    no_agent_on(Vmm::Fc);
}

#[test]
fn no_agent_on_qemu() {
    no_agent_on(Vmm::Qemu);
}
