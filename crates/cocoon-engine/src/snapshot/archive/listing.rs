//! What export and import need from a manifest: its version and the files
//! it lists. The rest of the document belongs to the engine.

use std::collections::BTreeMap;

use serde_json::Value;

use super::ArchiveError;
use super::names::plain_name;
use crate::snapshot::manifest::{FileSum, MANIFEST, VERSION};

/// Checks the document's `"version"`.
pub(super) fn check_version(doc: &Value, name: &str, expected: u32) -> Result<(), ArchiveError> {
    match doc.get("version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(expected) => Ok(()),
        found => Err(ArchiveError::BadManifest {
            name: name.to_string(),
            reason: match found {
                Some(v) => format!(
                    "version {v} is not supported (this cocoon reads version {expected}); use a newer cocoon"
                ),
                None => "has no numeric \"version\"".into(),
            },
        }),
    }
}

/// cocoon.json's `"files"`: each a plain file name other than the manifest.
pub(crate) fn listed_files(doc: &Value) -> Result<BTreeMap<String, FileSum>, ArchiveError> {
    let bad = |reason: String| ArchiveError::BadManifest {
        name: MANIFEST.to_string(),
        reason,
    };
    check_version(doc, MANIFEST, VERSION)?;
    let files = doc
        .get("files")
        .ok_or_else(|| bad("has no \"files\" map".into()))?;
    // An unsealed snapshot's manifest (`snapshot::seal`) never leaves the
    // engine: an export or a copy seals it first.
    if let Some((name, _)) = files.as_object().and_then(|m| {
        m.iter()
            .find(|(_, f)| f.get("sha256").is_some_and(Value::is_null))
    }) {
        return Err(bad(format!(
            "lists {name:?} without its checksum (an unsealed snapshot's manifest)"
        )));
    }
    let files: BTreeMap<String, FileSum> = serde_json::from_value(files.clone())
        .map_err(|e| bad(format!("bad \"files\" map: {e}")))?;
    for name in files.keys() {
        if let Err(ArchiveError::UnsafeName { reason, .. }) = plain_name(name.as_bytes()) {
            return Err(bad(format!(
                "lists {name:?}, which is not a plain file name ({reason})"
            )));
        }
        if name == MANIFEST || name == super::MANIFEST_SUM {
            return Err(bad(format!("lists {name}, which is the archive's own")));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsealed_manifest_is_never_listed_for_an_archive() {
        let doc = serde_json::json!({
            "version": VERSION,
            "files": {"mem": {"size": 4, "sha256": "ab"}, "vmstate": {"size": 1, "sha256": null}},
        });
        let err = listed_files(&doc).unwrap_err().to_string();
        assert!(
            err.contains(
                "lists \"vmstate\" without its checksum (an unsealed snapshot's manifest)"
            ),
            "{err}"
        );
        let mut sealed = doc.clone();
        sealed["files"]["vmstate"]["sha256"] = "cd".into();
        assert_eq!(listed_files(&sealed).unwrap()["vmstate"].sha256, "cd");
    }
}
