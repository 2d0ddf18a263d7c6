//! `image ls`, `image inspect`, `image rm`: reading and removing image
//! records by name or digest. Removing a record unpins its blobs; gc frees them.

use crate::context::Ctx;
use crate::error::Result;
use crate::image::oci;
use crate::model::Image;
use crate::store::{Candidate, ObjectKind, StoreError};

pub(crate) fn list(ctx: &mut Ctx) -> Result<Vec<Image>> {
    Ok(ctx.store().list_images()?)
}

/// One image; a digest prefix shared by several names is ambiguous here.
pub(crate) fn inspect(ctx: &mut Ctx, reference: &str) -> Result<Image> {
    let mut found = ctx
        .store()
        .resolve_images(reference, &normalized(reference))?;
    if found.len() > 1 {
        return Err(StoreError::Ambiguous {
            kind: ObjectKind::Image,
            reference: reference.to_string(),
            candidates: found
                .iter()
                .map(|i| Candidate {
                    id: i.id.to_string(),
                    name: i.name.clone(),
                })
                .collect(),
        }
        .into());
    }
    Ok(found.remove(0))
}

/// Removes index entries; a digest removes every name that shares it. All
/// references are resolved before anything is removed.
pub(crate) fn remove(ctx: &mut Ctx, references: &[String]) -> Result<Vec<Image>> {
    let mut names: Vec<String> = Vec::new();
    for reference in references {
        for image in ctx
            .store()
            .resolve_images(reference, &normalized(reference))?
        {
            if !names.contains(&image.name) {
                names.push(image.name);
            }
        }
    }
    Ok(ctx.store().remove_images(&names)?)
}

/// The normalised spelling of an OCI reference (`ubuntu` → `docker.io/library/ubuntu:latest`).
fn normalized(reference: &str) -> Vec<String> {
    if let Some(name) = quick_normalize(reference) {
        return vec![name];
    }
    oci::parse_reference(reference)
        .map(|r| vec![r.whole()])
        .unwrap_or_default()
}

/// Docker's name normalisation for the plain `[host/]path[:tag]` shapes,
/// without building oci-client's reference regex, which costs ~40 ms per
/// process even in release builds and sat on every `vm create`. Anything
/// unusual (digests, upper case, odd characters) returns None and goes through
/// the full parser; a test checks both agree.
fn quick_normalize(reference: &str) -> Option<String> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c);
    if reference.is_empty() || !reference.chars().all(valid) || reference.contains("//") {
        return None;
    }
    let (domain, path) = match reference.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        Some(_) => ("docker.io", reference.to_string()),
        None => ("docker.io", format!("library/{reference}")),
    };
    if domain == "index.docker.io" || domain.ends_with(':') || path.is_empty() {
        return None;
    }
    let last = path.rsplit('/').next()?;
    let (repo_tail, tag) = match last.split_once(':') {
        Some((_, "")) => return None,
        Some((name, tag)) if !tag.contains(':') => (name, Some(tag)),
        Some(_) => return None,
        None => (last, None),
    };
    if repo_tail.is_empty() || path[..path.len() - last.len()].contains(':') {
        return None;
    }
    Some(format!(
        "{domain}/{path}{}",
        if tag.is_some() { "" } else { ":latest" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_normalisation_agrees_with_the_parser() {
        for reference in [
            "ubuntu",
            "ubuntu:24.04",
            "library/ubuntu",
            "cocoonstack/cocoon/ubuntu:24.04",
            "ghcr.io/cocoonstack/cocoon/ubuntu:24.04",
            "localhost/foo",
            "localhost:5000/foo/bar:v1.2-rc_3",
            "127.0.0.1:5000/guest/test:1",
            "docker.io/library/busybox:latest",
            "registry.example.com:443/a/b/c/d",
        ] {
            let quick = quick_normalize(reference).expect(reference);
            let full = oci::parse_reference(reference).unwrap().whole();
            assert_eq!(quick, full, "{reference}");
        }
        for odd in [
            "Ubuntu",
            "a@sha256:abc",
            "",
            "a:",
            "index.docker.io/x",
            "a//b",
            "h:1/x:y:z",
        ] {
            assert_eq!(quick_normalize(odd), None, "{odd}");
        }
    }
}
