//! A host path the user hands a running VM (`vm disk attach --path`, `vm fs
//! attach --socket`): absolute, no symbolic link, `.` or `..` anywhere in
//! it (the engine never follows a link it did not make), of a kind the
//! caller takes, and outside the engine's own directories (whose files it
//! makes and removes).

use std::fs::FileType;
use std::path::{Path, PathBuf};

use crate::context::Ctx;

/// What the checks need to say of the path in their refusals.
pub(super) struct Wanted<'a> {
    /// "file", "socket": `give the path of the {noun} itself`.
    pub noun: &'a str,
    /// The kind check: the refusal's reason when `kind` is not taken.
    pub kind: fn(&FileType) -> Option<&'static str>,
    /// What to do instead when the path is inside an engine directory.
    pub elsewhere: &'a str,
}

/// The path as checked, with its file type; the error is the reason.
pub(super) fn check(
    ctx: &Ctx,
    path: &Path,
    wanted: &Wanted<'_>,
) -> Result<(PathBuf, FileType), String> {
    if !path.is_absolute() {
        return Err("must be an absolute path".into());
    }
    let kind = std::fs::symlink_metadata(path)
        .map_err(|e| e.to_string())?
        .file_type();
    if kind.is_symlink() {
        return Err(format!(
            "is a symbolic link; give the path of the {} itself",
            wanted.noun
        ));
    }
    if let Some(reason) = (wanted.kind)(&kind) {
        return Err(reason.into());
    }
    let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    if real != path {
        return Err(format!(
            "goes through a symbolic link, `.` or `..`; give the path of the {} itself ({})",
            wanted.noun,
            real.display()
        ));
    }
    let config = ctx.config();
    for own in [&config.root_dir, &config.run_dir, &config.log_dir] {
        let own = std::fs::canonicalize(own).unwrap_or_else(|_| own.clone());
        if real.starts_with(&own) {
            return Err(format!(
                "is inside cocoon's own directory {}, whose files the engine makes and removes; {}",
                own.display(),
                wanted.elsewhere
            ));
        }
    }
    Ok((real, kind))
}
