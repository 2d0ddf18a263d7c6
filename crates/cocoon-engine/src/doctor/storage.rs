//! Files and directories: the state directories (writable, and not planted by
//! someone else), free space under `root_dir`, and the cloud image firmware.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Check, origin, set_key};
use crate::config::Config;
use crate::units::{BinarySize, GIB};

/// Below this, an image pull or a VM's disks soon run out.
const LOW_SPACE: u64 = 2 * GIB;

pub(super) fn state_dirs(config: &Config) -> [Check; 3] {
    let euid = rustix::process::geteuid().as_raw();
    [
        state_dir("root_dir", &config.root_dir, euid),
        state_dir("run_dir", &config.run_dir, euid),
        state_dir("log_dir", &config.log_dir, euid),
    ]
}

/// The deepest of `path` and its ancestors that exists, with its metadata
/// (following symlinks, as cocoon's own opens do).
fn nearest_existing(path: &Path) -> io::Result<(PathBuf, std::fs::Metadata)> {
    for dir in path.ancestors() {
        match std::fs::metadata(dir) {
            Ok(meta) => return Ok((dir.to_path_buf(), meta)),
            // ENOTDIR: an ancestor is a file; going up finds and reports it.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    Err(io::ErrorKind::NotFound.into())
}

/// Whether this process can create a file in `dir`, by doing it: permission
/// bits say nothing for root, and a read-only mount says nothing in them.
fn try_create_file(dir: &Path) -> io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(".cocoon-doctor-{}-{nanos}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// One state directory: an existing one must be a directory this user owns,
/// not writable by everyone, that a file can be created in; a missing one
/// needs its nearest existing ancestor to be a directory it can be created in.
pub(super) fn state_dir(name: &'static str, path: &Path, euid: u32) -> Check {
    let elsewhere = format!("{} to another directory", set_key(name));
    let (existing, meta) = match nearest_existing(path) {
        Ok(found) => found,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot inspect {}: {e}", path.display()),
                elsewhere,
            );
        }
    };
    let shown = path.display();
    if existing != path {
        let parent = existing.display();
        if !meta.is_dir() {
            return Check::fail(
                name,
                format!("{parent} is not a directory, so {shown} cannot be created"),
                format!("remove {parent}, or {elsewhere}"),
            );
        }
        return match try_create_file(&existing) {
            Ok(()) => Check::ok(
                name,
                format!("{shown} does not exist yet; cocoon creates it in {parent}"),
            ),
            Err(e) => Check::fail(
                name,
                format!("{shown} does not exist and cannot be created in {parent}: {e}"),
                format!("create it as root (`mkdir -p -m 0750 {shown}`), or {elsewhere}"),
            ),
        };
    }
    if !meta.is_dir() {
        return Check::fail(
            name,
            format!("{shown} is not a directory"),
            format!("remove {shown}, or {elsewhere}"),
        );
    }
    if meta.uid() != euid {
        return Check::fail(
            name,
            format!(
                "{shown} is owned by uid {}, not by this user (uid {euid})",
                meta.uid()
            ),
            format!("if {shown} is really cocoon's, `chown {euid} {shown}`; otherwise {elsewhere}"),
        );
    }
    let mode = meta.mode() & 0o7777;
    if crate::engine::writable_by_others(mode) {
        return Check::fail(
            name,
            format!(
                "{shown} is writable by other users (mode {mode:04o}), so anyone could plant files in it"
            ),
            format!("`chmod go-w {shown}` if it is cocoon's own directory; otherwise {elsewhere}"),
        );
    }
    match try_create_file(path) {
        Ok(()) => Check::ok(name, format!("{shown} is a writable directory")),
        Err(e) => Check::fail(
            name,
            format!("cannot create a file in {shown}: {e}"),
            format!("make {shown} writable for uid {euid}, or {elsewhere}"),
        ),
    }
}

pub(super) fn disk_space(config: &Config) -> Check {
    let dir = match nearest_existing(&config.root_dir) {
        Ok((dir, _)) => dir,
        Err(e) => {
            return Check::warn(
                "disk_space",
                format!("cannot inspect {}: {e}", config.root_dir.display()),
                "see root_dir above",
            );
        }
    };
    match rustix::fs::statvfs(&dir) {
        Ok(st) => space_check(&dir, st.f_bavail.saturating_mul(st.f_frsize)),
        Err(e) => Check::warn(
            "disk_space",
            format!("cannot read the free space of {}: {e}", dir.display()),
            "see root_dir above",
        ),
    }
}

fn space_check(dir: &Path, free: u64) -> Check {
    let detail = format!("{} free in {}", BinarySize(free), dir.display());
    if free >= LOW_SPACE {
        return Check::ok("disk_space", detail);
    }
    Check::warn(
        "disk_space",
        format!(
            "{detail}, less than {}: image pulls and VM disks may not fit",
            BinarySize(LOW_SPACE)
        ),
        format!(
            "free space on that filesystem, or {} to a directory on a bigger one",
            set_key("root_dir")
        ),
    )
}

pub(super) fn firmware(config: &Config) -> Check {
    const WITHOUT: &str = "cloud images cannot boot (OCI images are unaffected)";
    let path = &config.firmware_path;
    let found = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => return Check::ok("firmware", path.display().to_string()),
        Ok(_) => format!("{} is not a file", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            format!("{} does not exist", path.display())
        }
        Err(e) => format!("cannot read {}: {e}", path.display()),
    };
    Check::warn(
        "firmware",
        format!("{found}{}; {WITHOUT}", origin(config, "firmware_path")),
        format!(
            "run `scripts/fetch-firmware.sh {}` from the cocoon checkout, or {} to an existing CLOUDHV.fd",
            path.display(),
            set_key("firmware_path")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use std::os::unix::fs::PermissionsExt;

    fn euid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn existing_missing_and_blocked_state_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("root");
        let check = state_dir("root_dir", &dir, euid());
        assert_eq!(
            check,
            Check::ok(
                "root_dir",
                format!(
                    "{} does not exist yet; cocoon creates it in {}",
                    dir.display(),
                    tmp.path().display()
                )
            )
        );
        assert!(!dir.exists(), "never created");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(
            state_dir("root_dir", &dir, euid()),
            Check::ok(
                "root_dir",
                format!("{} is a writable directory", dir.display())
            )
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "probe removed");

        let other = state_dir("root_dir", &dir, euid() + 1);
        assert_eq!(other.status, Status::Fail);
        assert!(other.detail.contains("is owned by uid"), "{}", other.detail);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let open = state_dir("root_dir", &dir, euid());
        assert_eq!(open.status, Status::Fail);
        assert!(open.detail.contains("(mode 1777)"), "{}", open.detail);

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let below = file.join("root");
        let check = state_dir("root_dir", &below, euid());
        assert_eq!(check.status, Status::Fail);
        assert_eq!(
            check.detail,
            format!(
                "{} is not a directory, so {} cannot be created",
                file.display(),
                below.display()
            )
        );
        assert_eq!(
            state_dir("log_dir", &file, euid()).detail,
            format!("{} is not a directory", file.display())
        );
    }

    #[test]
    fn low_space_warns() {
        let dir = Path::new("/var/lib");
        assert_eq!(
            space_check(dir, 3 * GIB),
            Check::ok("disk_space", "3GiB free in /var/lib")
        );
        let low = space_check(dir, GIB + GIB / 2);
        assert_eq!(low.status, Status::Warn);
        assert_eq!(
            low.detail,
            "1.5GiB free in /var/lib, less than 2GiB: image pulls and VM disks may not fit"
        );
    }

    #[test]
    fn firmware_missing_warns() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.firmware_path = tmp.path().join("CLOUDHV.fd");
        let check = firmware(&config);
        assert_eq!(check.status, Status::Warn);
        assert!(check.fix.unwrap().starts_with(&format!(
            "run `scripts/fetch-firmware.sh {}`",
            config.firmware_path.display()
        )));
        std::fs::write(&config.firmware_path, "fd").unwrap();
        assert_eq!(firmware(&config).status, Status::Ok);
    }
}
