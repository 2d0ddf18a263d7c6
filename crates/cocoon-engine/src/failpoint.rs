//! Failpoints for the crash-consistency test matrix: with the `failpoints`
//! feature, `COCOON_FAILPOINTS="name=kill;other=error"` makes the process
//! SIGKILL itself, or fail, at that step boundary (`name=sleep:MS` pauses
//! there instead, to hold a race window open). Without the feature every
//! call compiles to nothing.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> Result<(), crate::Error> {
    let Ok(spec) = std::env::var("COCOON_FAILPOINTS") else {
        return Ok(());
    };
    for entry in spec.split(';') {
        match entry.split_once('=') {
            Some((n, "kill")) if n == name => {
                // SAFETY: plain syscall; the point is to die here, mid-operation.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            Some((n, "error")) if n == name => {
                return Err(crate::Error::Invalid(format!("failpoint {name} triggered")));
            }
            // `name=sleep:MS` widens a race window for a concurrency test.
            Some((n, action)) if n == name && action.starts_with("sleep:") => {
                let ms = action["sleep:".len()..].parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> Result<(), crate::Error> {
    Ok(())
}

/// Where the host's PCI devices are (`/sys/bus/pci/devices`). Builds with
/// failpoints (the tests') take another directory from
/// `COCOON_TEST_SYSFS_PCI`, so `vm device attach` can be tested on a host
/// without a device bound to vfio-pci; release builds never read it.
pub fn sysfs_pci_devices() -> std::path::PathBuf {
    #[cfg(feature = "failpoints")]
    if let Some(dir) = std::env::var_os("COCOON_TEST_SYSFS_PCI").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    std::path::PathBuf::from("/sys/bus/pci/devices")
}

/// [`hit`] for code whose errors are I/O errors.
pub fn hit_io(name: &str) -> std::io::Result<()> {
    hit(name).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Every failpoint, for the test matrix.
pub const ALL: &[&str] = &[
    "vm.create.recorded",
    "vm.create.network",
    "vm.create.disks",
    "disk.template.written",
    "vm.launch.recorded",
    "vm.launch.booted",
    "vm.stop.stopped",
    "vm.rm.dirs",
    "snapshot.save.paused",
    "snapshot.save.captured",
    "snapshot.seal.summed",
    "vm.hibernate.paused",
    "vm.hibernate.captured",
    "vm.resize.begin",
    "vm.resize.applied",
    "vm.disk.attach.plugged",
    "vm.disk.detach.unplugged",
    "vm.net.add.plumbed",
    "vm.net.add.plugged",
    "vm.net.remove.unplugged",
    "vm.net.remove.released",
    "vm.fs.attach.plugged",
    "vm.fs.detach.unplugged",
    "vm.device.attach.plugged",
    "vm.device.detach.unplugged",
    "vm.cgroup.prepared",
    "vm.clone.files",
    "vm.restore.killed",
    "vm.restore.swapped",
    "image.pull.layers",
    "image.pull.recorded",
    "image.pull.fetched",
    "image.import.unpacked",
    "image.import.layer",
    "image.import.recorded",
    "image.import.staged",
    "image.import.stored",
    "snapshot.import.staged",
    "snapshot.pull.fetched",
    "snapshot.push.blocks",
    "snapshot.import.renamed",
    "gc.read",
    "snapshot.evict.marked",
    "snapshot.evict.removed",
];
