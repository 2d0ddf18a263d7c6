//! The state directories (`root_dir`, `run_dir`, `log_dir`): created
//! private when missing, refused when someone else could have planted files
//! in them. `Engine::open` runs these checks; `cocoon doctor` reports them.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::create_private_dir;

/// How to point the engine elsewhere, as `cocoon doctor` words it.
fn set_elsewhere(name: &str) -> String {
    match crate::config::key(name) {
        Some(key) => match key.flag {
            Some(flag) => format!("set {name} ({flag} or {}) to another directory", key.env),
            None => format!(
                "set {name} in the config file (or {}) to another directory",
                key.env
            ),
        },
        None => format!("set {name} to another directory"),
    }
}

/// Refuses a state directory someone else could have planted: one that is
/// a symbolic link, not a directory, owned by another user, or writable by
/// group or others (with the sticky bit too: others could still create the
/// names cocoon is about to create). Checked on the directory's own
/// descriptor (opened `O_DIRECTORY | O_NOFOLLOW`, then `fstat`), never on a
/// path looked up twice.
fn check_state_dir(name: &'static str, path: &Path) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let shown = path.display();
    let refuse = |why: String, fix: String| {
        Error::Invalid(format!("refusing to use {name} {shown}: {why}; {fix}"))
    };
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            let why = if link {
                "it is a symbolic link".to_string()
            } else {
                "it is not a directory".to_string()
            };
            let fix = if link {
                format!(
                    "set {name} to the directory it points to, or {}",
                    set_elsewhere(name)
                )
            } else {
                format!("remove {shown}, or {}", set_elsewhere(name))
            };
            return Err(refuse(why, fix));
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot open {name} {shown}"),
                std::io::Error::from(e),
            ));
        }
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io(format!("cannot inspect {name} {shown}"), e.into()))?;
    let euid = rustix::process::geteuid().as_raw();
    if stat.st_uid != euid {
        return Err(refuse(
            format!(
                "it is owned by uid {}, not by this user (uid {euid}), so another user could have planted files in it",
                stat.st_uid
            ),
            format!(
                "if {shown} is really cocoon's, `chown {euid} {shown}`; otherwise {}",
                set_elsewhere(name)
            ),
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if writable_by_others(mode) {
        return Err(refuse(
            format!(
                "it is writable by other users (mode {mode:04o}), so anyone could plant files in it"
            ),
            format!(
                "`chmod go-w {shown}` if it is cocoon's own directory; otherwise {}",
                set_elsewhere(name)
            ),
        ));
    }
    Ok(())
}

/// The missing directories among `path` and its ancestors, outermost first.
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|dir| {
            !dir.as_os_str().is_empty()
                && std::fs::symlink_metadata(dir)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

/// `root_dir` checked if it exists, else created 0750 with the parents it
/// needs, each of which is then checked too (nobody swapped one in between);
/// `run_dir` and `log_dir`, created when first used, are checked if they exist.
/// Whether a directory of this mode lets other users plant files in it:
/// writable by group or others, sticky or not (the sticky bit only keeps
/// them from removing others' files, not from creating the names cocoon is
/// about to create). `Engine::open` refuses such a state directory and
/// `cocoon doctor` reports it.
pub(crate) fn writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

pub(crate) fn prepare(config: &Config) -> Result<()> {
    let created = missing_dirs(&config.root_dir);
    if !created.is_empty() {
        create_private_dir(&config.root_dir).map_err(|e| {
            Error::io(
                format!("cannot create root directory {}", config.root_dir.display()),
                e,
            )
        })?;
    }
    for dir in &created {
        check_state_dir("root_dir", dir)?;
    }
    if created.is_empty() {
        check_state_dir("root_dir", &config.root_dir)?;
    }
    for (name, dir) in [("run_dir", &config.run_dir), ("log_dir", &config.log_dir)] {
        if std::fs::symlink_metadata(dir).is_ok() {
            check_state_dir(name, dir)?;
        }
    }
    Ok(())
}
