//! The root: the image's layers (read-only EROFS disks, top first) under an
//! overlay whose upper and work directories live on the VM's COW disk (ext4).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cocoon_guest_proto::run::{
    MAX_RUN_CONFIG_BYTES, RUN_CONFIG_PATH, RUN_CONFIG_VERSION, RunConfig,
};
use rustix::mount::MountFlags;

use super::cmdline::{BootArgs, DiskRef};
use super::sys::mount_fs;

const POLL: Duration = Duration::from_millis(50);

/// Finds every disk the command line names, waiting (the virtio devices
/// probe asynchronously) up to its timeout. Layers first, then the COW disk.
pub fn wait_for_disks(
    sys_block: &Path,
    args: &BootArgs,
) -> Result<(Vec<PathBuf>, PathBuf), String> {
    let cow = args
        .cow
        .as_ref()
        .ok_or("no cocoon.cow= on the kernel command line")?;
    if args.layers.is_empty() {
        return Err("no cocoon.layers= on the kernel command line".into());
    }
    let wanted: Vec<&DiskRef> = args.layers.iter().chain([cow]).collect();
    let deadline = Instant::now() + args.timeout;
    loop {
        let found: Vec<Option<PathBuf>> = wanted
            .iter()
            .map(|disk| find_disk(sys_block, disk))
            .collect();
        if found.iter().all(Option::is_some) {
            let mut paths: Vec<PathBuf> = found.into_iter().flatten().collect();
            let cow = paths.pop().expect("the COW disk was wanted");
            return Ok((paths, cow));
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = wanted
                .iter()
                .zip(&found)
                .filter(|(_, path)| path.is_none())
                .map(|(disk, _)| describe(disk))
                .collect();
            return Err(format!(
                "disks not found after {}s: {} (serials present: {})",
                args.timeout.as_secs(),
                missing.join(", "),
                present_serials(sys_block).join(", ")
            ));
        }
        sleep(POLL);
    }
}

fn describe(disk: &DiskRef) -> String {
    match disk {
        DiskRef::Path(path) => path.clone(),
        DiskRef::Serial(serial) => format!("serial {serial}"),
    }
}

fn find_disk(sys_block: &Path, disk: &DiskRef) -> Option<PathBuf> {
    match disk {
        DiskRef::Path(path) => {
            let name = path.strip_prefix("/dev/")?;
            // The block device is usable once sysfs lists it (`class/block`
            // lists partitions too); devtmpfs creates the node in the same step.
            (sys_block.join(name).exists() && Path::new(path).exists()).then(|| PathBuf::from(path))
        }
        DiskRef::Serial(serial) => serials(sys_block)
            .into_iter()
            .find(|(_, s)| s == serial)
            .map(|(name, _)| PathBuf::from("/dev").join(name))
            .filter(|dev| dev.exists()),
    }
}

/// `(vdX, serial)` for every virtio disk.
fn serials(sys_block: &Path) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(sys_block) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !name.starts_with("vd") {
                return None;
            }
            let serial = fs::read_to_string(entry.path().join("serial")).ok()?;
            Some((name, serial.trim_end().to_string()))
        })
        .collect()
}

fn present_serials(sys_block: &Path) -> Vec<String> {
    let mut all: Vec<String> = serials(sys_block)
        .into_iter()
        .map(|(name, serial)| format!("{name}={serial:?}"))
        .collect();
    all.sort();
    if all.is_empty() {
        all.push("none".into());
    }
    all
}

/// Mounts the layers under `/layers/<i>` (i = 0 is the top), the COW disk
/// on `/cow`, and the overlay of both on `/newroot`.
pub fn mount_root(layers: &[PathBuf], cow: &Path) -> Result<(), String> {
    let mut lower = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let target = format!("/layers/{i}");
        fs::create_dir_all(&target).map_err(|e| format!("cannot create {target}: {e}"))?;
        let flags = MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID;
        mount_fs("erofs", &layer.to_string_lossy(), &target, flags, "")?;
        lower.push(target);
    }
    mount_fs(
        "ext4",
        &cow.to_string_lossy(),
        "/cow",
        MountFlags::NOATIME,
        "",
    )?;
    for dir in ["/cow/upper", "/cow/work"] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir} on the COW disk: {e}"))?;
    }
    let options = overlay_options(&lower);
    mount_fs(
        "overlay",
        "overlay",
        "/newroot",
        MountFlags::empty(),
        &options,
    )
}

pub fn overlay_options(lower: &[String]) -> String {
    format!(
        "lowerdir={},upperdir=/cow/upper,workdir=/cow/work",
        lower.join(":")
    )
}

/// The run config the engine wrote on the COW disk.
pub fn read_run_config(cow_root: &Path) -> Result<RunConfig, String> {
    let path = cow_root.join(RUN_CONFIG_PATH);
    let file = fs::File::open(&path)
        .map_err(|e| format!("cannot open the run config {}: {e}", path.display()))?;
    let mut text = Vec::new();
    let limit = u64::try_from(MAX_RUN_CONFIG_BYTES).unwrap_or(u64::MAX);
    file.take(limit + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the run config {}: {e}", path.display()))?;
    if text.len() > MAX_RUN_CONFIG_BYTES {
        return Err(format!(
            "the run config {} is over {MAX_RUN_CONFIG_BYTES} bytes",
            path.display()
        ));
    }
    // The version first, so a newer engine's config is refused for its
    // version rather than for a field this code does not know.
    let version = serde_json::from_slice::<serde_json::Value>(&text)
        .map_err(|e| format!("the run config {} is not JSON: {e}", path.display()))?["version"]
        .as_u64();
    if version != Some(u64::from(RUN_CONFIG_VERSION)) {
        return Err(format!(
            "the run config {} has version {version:?}; this cocoon-init reads version {RUN_CONFIG_VERSION}",
            path.display()
        ));
    }
    serde_json::from_slice(&text)
        .map_err(|e| format!("the run config {} is invalid: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_found_by_serial_and_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let block = dir.join("block");
        for (name, serial) in [("vda", "cocoon-layer0\n"), ("vdb", "cocoon-cow")] {
            fs::create_dir_all(block.join(name)).unwrap();
            fs::write(block.join(name).join("serial"), serial).unwrap();
        }
        assert_eq!(serials(&block).len(), 2);
        // /dev/vdX does not exist on the host: a serial match alone is not enough.
        assert_eq!(
            find_disk(&block, &DiskRef::Serial("cocoon-cow".into())),
            None
        );
        assert_eq!(find_disk(&block, &DiskRef::Serial("nope".into())), None);
        let args =
            super::super::cmdline::parse("cocoon.layers=x cocoon.cow=y cocoon.timeout=0").unwrap();
        let err = wait_for_disks(&block, &args).unwrap_err();
        assert!(err.contains("serial x, serial y"), "{err}");
        assert!(
            err.contains("vda=\"cocoon-layer0\", vdb=\"cocoon-cow\""),
            "{err}"
        );
    }

    #[test]
    fn the_overlay_stacks_the_top_layer_first() {
        let lower = ["/layers/0".to_string(), "/layers/1".to_string()];
        assert_eq!(
            overlay_options(&lower),
            "lowerdir=/layers/0:/layers/1,upperdir=/cow/upper,workdir=/cow/work"
        );
    }

    #[test]
    fn the_run_config_is_read_bounded_and_versioned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(read_run_config(dir).unwrap_err().contains("cannot open"));
        let path = dir.join(RUN_CONFIG_PATH);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, r#"{"version":1,"args":["/bin/sh"],"env":[]}"#).unwrap();
        let config = read_run_config(dir).unwrap();
        assert_eq!(config.args, ["/bin/sh"]);
        assert!(config.agent);
        fs::write(&path, r#"{"version":2,"args":[],"env":[],"new":1}"#).unwrap();
        assert!(
            read_run_config(dir)
                .unwrap_err()
                .contains("version Some(2)")
        );
        fs::write(&path, " ".repeat(MAX_RUN_CONFIG_BYTES + 1)).unwrap();
        assert!(read_run_config(dir).unwrap_err().contains("over"));
        fs::write(&path, "{").unwrap();
        assert!(read_run_config(dir).unwrap_err().contains("not JSON"));
    }
}
