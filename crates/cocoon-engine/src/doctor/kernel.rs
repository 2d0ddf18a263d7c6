//! What the host kernel must offer: KVM, TUN, network namespaces, and the
//! EROFS and overlay filesystems. The probes touch the real host (tests cannot
//! fake an ioctl); what a probe's answer means is decided by pure functions
//! below them, which the unit tests cover.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{Check, Status};

const KVM_DEVICE: &str = "/dev/kvm";
/// The only KVM API version there has ever been (since Linux 2.6.22).
const KVM_API_VERSION: i32 = 12;
// _IO(KVMIO = 0xAE, nr): no argument, no direction bits.
const KVM_GET_API_VERSION: u64 = 0xAE00;
const KVM_CREATE_VM: u64 = 0xAE01;

const KVM_MODULE_FIX: &str = "enable virtualisation (VT-x/AMD-V) in the firmware settings, then `modprobe kvm_intel` (Intel) or `modprobe kvm_amd` (AMD); in a cloud VM, use an instance type with nested virtualisation";

/// What opening `/dev/kvm` and asking it for a VM came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KvmProbe {
    Usable,
    NoDevice {
        module_loaded: bool,
    },
    Denied,
    /// The node is there but no driver answers it (ENXIO/ENODEV).
    NoDriver(String),
    OpenFailed(String),
    ApiVersion(i32),
    CreateVm(String),
}

pub(super) fn probe_kvm() -> KvmProbe {
    let device = match OpenOptions::new().read(true).write(true).open(KVM_DEVICE) {
        Ok(device) => device,
        Err(e) => {
            return match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::NotFound, _) => KvmProbe::NoDevice {
                    module_loaded: Path::new("/sys/module/kvm").exists(),
                },
                (io::ErrorKind::PermissionDenied, _) => KvmProbe::Denied,
                (_, Some(libc::ENXIO | libc::ENODEV)) => KvmProbe::NoDriver(e.to_string()),
                _ => KvmProbe::OpenFailed(e.to_string()),
            };
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and reads no memory of
    // ours; the fd is open for the call.
    let version = unsafe { libc::ioctl(device.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return KvmProbe::ApiVersion(version);
    }
    // SAFETY: KVM_CREATE_VM takes the machine type by value (0: the default)
    // and reads no memory of ours; on success it returns a new fd that we own.
    let vm = unsafe { libc::ioctl(device.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return KvmProbe::CreateVm(io::Error::last_os_error().to_string());
    }
    // SAFETY: `vm` is a fresh fd nobody else owns; dropping it closes the VM at once.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    KvmProbe::Usable
}

/// The KVM item. Without KVM, Cloud Hypervisor and Firecracker cannot run
/// a VM; QEMU still can by emulating (`qemu_emulates`: found, and
/// `qemu_accel` is not `kvm`), so then it is only a warning.
pub(super) fn kvm_check(probe: KvmProbe, qemu_emulates: bool) -> Check {
    let check = kvm_item(probe);
    if check.status != Status::Fail || !qemu_emulates {
        return check;
    }
    Check::warn(
        check.name,
        format!(
            "{}; VMs run only with --qemu (QEMU), emulated and slow",
            check.detail
        ),
        check.fix.unwrap_or_default(),
    )
}

fn kvm_item(probe: KvmProbe) -> Check {
    let fail = |detail: String, fix: &str| Check::fail("kvm", detail, fix);
    match probe {
        KvmProbe::Usable => Check::ok(
            "kvm",
            format!("{KVM_DEVICE}: API version {KVM_API_VERSION}, a VM can be created"),
        ),
        KvmProbe::NoDevice {
            module_loaded: false,
        } => fail(
            format!("{KVM_DEVICE} does not exist: the kvm module is not loaded"),
            KVM_MODULE_FIX,
        ),
        KvmProbe::NoDevice {
            module_loaded: true,
        } => fail(
            format!("{KVM_DEVICE} does not exist although the kvm module is loaded"),
            "create the device node: `mknod -m 0660 /dev/kvm c 10 232 && chgrp kvm /dev/kvm` (udev normally does this)",
        ),
        KvmProbe::Denied => fail(
            format!("{KVM_DEVICE}: permission denied (it must open read-write)"),
            "run cocoon as root, or add this user to the group that owns /dev/kvm (`usermod -aG kvm $USER`, then log in again)",
        ),
        KvmProbe::NoDriver(e) => fail(
            format!(
                "{KVM_DEVICE} exists but no KVM driver answers ({e}): kvm_intel/kvm_amd is not loaded"
            ),
            KVM_MODULE_FIX,
        ),
        KvmProbe::OpenFailed(e) => fail(
            format!("cannot open {KVM_DEVICE}: {e}"),
            "check `dmesg | grep -i kvm` for the reason",
        ),
        KvmProbe::ApiVersion(v) => fail(
            format!("{KVM_DEVICE}: KVM_GET_API_VERSION answered {v}, expected {KVM_API_VERSION}"),
            "run a Linux kernel with the stable KVM API",
        ),
        KvmProbe::CreateVm(e) => fail(
            format!("{KVM_DEVICE}: KVM_CREATE_VM failed: {e}"),
            "check `dmesg | grep -i kvm`; another hypervisor holding VT-x/AMD-V (VirtualBox, VMware) causes this: stop it",
        ),
    }
}

/// Host filesystems and what goes without them.
const FILESYSTEMS: &[(&str, &str, &str)] = &[
    (
        "kernel_erofs",
        "erofs",
        "EROFS image layers cannot be mounted on this host (to inspect an image); VMs are unaffected",
    ),
    (
        "kernel_overlay",
        "overlay",
        "overlayfs cannot be used on this host (to inspect an image's merged tree); VMs are unaffected",
    ),
];

pub(super) fn filesystems() -> Vec<Check> {
    let proc = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let modules_dir = Path::new("/lib/modules").join(release.trim());
    let modules_dep = std::fs::read_to_string(modules_dir.join("modules.dep")).unwrap_or_default();
    FILESYSTEMS
        .iter()
        .map(|&(name, fs, without)| {
            filesystem_check(name, fs, without, &proc, &modules_dir, &modules_dep)
        })
        .collect()
}

fn filesystem_check(
    name: &'static str,
    fs: &str,
    without: &str,
    proc_filesystems: &str,
    modules_dir: &Path,
    modules_dep: &str,
) -> Check {
    if in_proc_filesystems(proc_filesystems, fs) {
        return Check::ok(name, format!("{fs} is in /proc/filesystems"));
    }
    match module_file(modules_dep, fs).map(|m| modules_dir.join(m)) {
        Some(path) if path.is_file() => Check::ok(
            name,
            format!("{fs} is a loadable module ({})", path.display()),
        ),
        _ => Check::warn(
            name,
            format!(
                "{fs} is neither in /proc/filesystems nor a module in {}; {without}",
                modules_dir.display()
            ),
            format!("`modprobe {fs}`, or run a kernel built with it"),
        ),
    }
}

/// `/proc/filesystems` lines are `[nodev]\tNAME`.
fn in_proc_filesystems(text: &str, fs: &str) -> bool {
    text.lines()
        .any(|line| line.split_whitespace().last() == Some(fs))
}

/// The module file `modules.dep` lists for `module` (`kernel/fs/erofs/erofs.ko.xz: deps`).
fn module_file<'a>(modules_dep: &'a str, module: &str) -> Option<&'a str> {
    modules_dep
        .lines()
        .filter_map(|line| line.split(':').next())
        .find(|file| {
            let base = file.rsplit('/').next().unwrap_or(file);
            base.split_once(".ko")
                .is_some_and(|(stem, _)| stem.replace('-', "_") == module.replace('-', "_"))
        })
}

const TUN_DEVICE: &str = "/dev/net/tun";

pub(super) fn tun() -> Check {
    tun_check(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_DEVICE)
            .map(drop),
    )
}

fn tun_check(opened: io::Result<()>) -> Check {
    const WITHOUT: &str = "VMs cannot have network interfaces (only --nics 0 works)";
    match opened {
        Ok(()) => Check::ok("tun", format!("{TUN_DEVICE} opens read-write")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Check::warn(
            "tun",
            format!("{TUN_DEVICE} does not exist; {WITHOUT}"),
            "`modprobe tun`",
        ),
        Err(e) => Check::warn(
            "tun",
            format!("cannot open {TUN_DEVICE}: {e}; {WITHOUT}"),
            "run cocoon as root (it needs CAP_NET_ADMIN for TAP devices)",
        ),
    }
}

/// Really creates a network namespace, on a thread of its own that exits in
/// it (a namespace switch affects only the calling thread), as VM networking does.
pub(super) fn netns() -> Check {
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: only the network namespace is unshared, on a thread
            // that does nothing else and ends right after.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .map_err(io::Error::from)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    netns_check(made)
}

fn netns_check(made: io::Result<()>) -> Check {
    const WITHOUT: &str = "CNI networking does not work (VMs run with --nics 0 or --bridge)";
    match made {
        Ok(()) => Check::ok("netns", "a network namespace can be created"),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Check::warn(
            "netns",
            format!("cannot create a network namespace: {e}; {WITHOUT}"),
            "run cocoon as root (it needs CAP_SYS_ADMIN for network namespaces)",
        ),
        Err(e) => Check::warn(
            "netns",
            format!("cannot create a network namespace: {e}; {WITHOUT}"),
            "run a kernel built with network namespaces (CONFIG_NET_NS)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_outcomes() {
        assert_eq!(kvm_item(KvmProbe::Usable).status, Status::Ok);
        let missing = kvm_item(KvmProbe::NoDevice {
            module_loaded: false,
        });
        assert_eq!(missing.status, Status::Fail);
        assert_eq!(
            missing.detail,
            "/dev/kvm does not exist: the kvm module is not loaded"
        );
        assert!(missing.fix.unwrap().contains("modprobe kvm_intel"));
        let node = kvm_item(KvmProbe::NoDevice {
            module_loaded: true,
        });
        assert!(node.fix.unwrap().contains("mknod"));
        let denied = kvm_item(KvmProbe::Denied);
        assert_eq!(
            denied.detail,
            "/dev/kvm: permission denied (it must open read-write)"
        );
        assert!(denied.fix.unwrap().contains("usermod -aG kvm"));
        for probe in [
            KvmProbe::NoDriver("No such device".into()),
            KvmProbe::OpenFailed("x".into()),
            KvmProbe::ApiVersion(11),
            KvmProbe::CreateVm("Device or resource busy".into()),
        ] {
            assert_eq!(kvm_item(probe).status, Status::Fail);
        }
        assert_eq!(
            kvm_item(KvmProbe::ApiVersion(11)).detail,
            "/dev/kvm: KVM_GET_API_VERSION answered 11, expected 12"
        );
    }

    #[test]
    fn without_kvm_qemu_emulating_turns_the_failure_into_a_warning() {
        let missing = || KvmProbe::NoDevice {
            module_loaded: false,
        };
        assert_eq!(kvm_check(missing(), false), kvm_item(missing()));
        let warned = kvm_check(missing(), true);
        assert_eq!(
            warned,
            Check::warn(
                "kvm",
                "/dev/kvm does not exist: the kvm module is not loaded; VMs run only with --qemu (QEMU), emulated and slow",
                KVM_MODULE_FIX
            )
        );
        // A usable KVM stays ok either way.
        for qemu in [false, true] {
            assert_eq!(
                kvm_check(KvmProbe::Usable, qemu),
                kvm_item(KvmProbe::Usable)
            );
        }
    }

    #[test]
    fn filesystems_from_proc_or_modules() {
        let proc = "nodev\tsysfs\nnodev\toverlay\n\text4\n";
        assert!(in_proc_filesystems(proc, "overlay"));
        assert!(in_proc_filesystems(proc, "ext4"));
        assert!(!in_proc_filesystems(proc, "erofs"));
        let dep =
            "kernel/fs/overlayfs/overlay.ko.xz: \nkernel/fs/erofs/erofs.ko.zst: kernel/lib/x.ko\n";
        assert_eq!(
            module_file(dep, "erofs"),
            Some("kernel/fs/erofs/erofs.ko.zst")
        );
        assert_eq!(
            module_file(dep, "overlay"),
            Some("kernel/fs/overlayfs/overlay.ko.xz")
        );
        assert_eq!(module_file(dep, "tun"), None);

        let modules = tempfile::tempdir().unwrap();
        let check = filesystem_check("kernel_erofs", "erofs", "X", proc, modules.path(), dep);
        assert_eq!(check.status, Status::Warn, "listed but no file");
        assert_eq!(
            check.detail,
            format!(
                "erofs is neither in /proc/filesystems nor a module in {}; X",
                modules.path().display()
            )
        );
        assert_eq!(
            check.fix.as_deref(),
            Some("`modprobe erofs`, or run a kernel built with it")
        );
        std::fs::create_dir_all(modules.path().join("kernel/fs/erofs")).unwrap();
        std::fs::write(modules.path().join("kernel/fs/erofs/erofs.ko.zst"), "").unwrap();
        let check = filesystem_check("kernel_erofs", "erofs", "X", proc, modules.path(), dep);
        assert_eq!(check.status, Status::Ok);
        let check = filesystem_check("kernel_overlay", "overlay", "X", proc, modules.path(), "");
        assert_eq!(
            check,
            Check::ok("kernel_overlay", "overlay is in /proc/filesystems")
        );
    }

    #[test]
    fn tun_and_netns_failures_warn() {
        assert_eq!(tun_check(Ok(())).status, Status::Ok);
        let missing = tun_check(Err(io::ErrorKind::NotFound.into()));
        assert_eq!(missing.status, Status::Warn);
        assert_eq!(missing.fix.as_deref(), Some("`modprobe tun`"));
        let denied = netns_check(Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(denied.status, Status::Warn);
        assert!(denied.fix.unwrap().starts_with("run cocoon as root"));
        assert_eq!(
            netns_check(Err(io::Error::from_raw_os_error(libc::EINVAL)))
                .fix
                .as_deref(),
            Some("run a kernel built with network namespaces (CONFIG_NET_NS)")
        );
    }
}
