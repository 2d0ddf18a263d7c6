//! Image index and the blobs images pin.

use rusqlite::{OptionalExtension, Transaction, params};

use super::events::append;
use super::{ObjectKind, Result, Store, StoreError, from_json, now, to_json};
use crate::model::Image;

const KIND: ObjectKind = ObjectKind::Image;

/// A digest prefix must carry at least this many hex characters (after
/// `sha256:`) before it may match: short prefixes of content hashes collide.
pub const MIN_DIGEST_PREFIX: usize = 12;

fn load_all(tx: &Transaction<'_>, sql: &str, param: &str) -> Result<Vec<Image>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt
        .query_map([param], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.iter()
        .map(|(name, doc)| from_json(KIND, name, doc))
        .collect()
}

impl Store {
    /// Adds or replaces the index entry `image.name` and pins `blobs` (digest,
    /// kind, size) for it. Replacing moves the pins: blobs only the old version
    /// used become garbage for `gc`.
    pub fn put_image(&mut self, image: &Image, blobs: &[(String, String, u64)]) -> Result<()> {
        self.write(|tx| {
            let doc = to_json(image);
            let existed = tx
                .query_row("SELECT 1 FROM images WHERE name = ?1", [&image.name], |_| Ok(()))
                .optional()?
                .is_some();
            tx.execute(
                "INSERT INTO images (name, kind, digest, size, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET kind = ?2, digest = ?3, size = ?4, created_at = ?5, doc = ?6",
                params![image.name, image.kind.as_str(), image.id.as_str(), image.size as i64, image.created_at.to_string(), doc],
            )?;
            tx.execute("DELETE FROM blob_refs WHERE owner_kind = 'image' AND owner_id = ?1", [&image.name])?;
            let mut blob = tx.prepare_cached(
                "INSERT INTO blobs (digest, kind, size, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (digest) DO NOTHING",
            )?;
            let mut pin = tx.prepare_cached(
                "INSERT OR IGNORE INTO blob_refs (owner_kind, owner_id, digest) VALUES ('image', ?1, ?2)",
            )?;
            let at = now().to_string();
            for (digest, kind, size) in blobs {
                blob.execute(params![digest, kind, *size as i64, at])?;
                pin.execute(params![image.name, digest])?;
            }
            append(tx, KIND, &image.name, if existed { "updated" } else { "created" }, Some(&doc))?;
            Ok(())
        })
    }

    /// All images, oldest first.
    pub fn list_images(&mut self) -> Result<Vec<Image>> {
        self.read(|tx| {
            let mut stmt =
                tx.prepare_cached("SELECT name, doc FROM images ORDER BY created_at, name")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.iter()
                .map(|(name, doc)| from_json(KIND, name, doc))
                .collect()
        })
    }

    /// cocoon's image lookup: the exact name, then each normalised spelling the
    /// caller offers (e.g. `ubuntu` → `docker.io/library/ubuntu:latest`), then a
    /// digest, exact or a prefix of 12+ hex characters. A digest matches every
    /// name that shares it, so `image rm <digest>` removes them all.
    pub fn resolve_images(&mut self, reference: &str, normalized: &[String]) -> Result<Vec<Image>> {
        self.read(|tx| {
            for name in std::iter::once(reference).chain(normalized.iter().map(String::as_str)) {
                let found = load_all(tx, "SELECT name, doc FROM images WHERE name = ?1", name)?;
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            let hex = reference.strip_prefix("sha256:").unwrap_or(reference).to_ascii_lowercase();
            if hex.len() >= MIN_DIGEST_PREFIX && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let found = load_all(
                    tx,
                    "SELECT name, doc FROM images WHERE digest >= ?1 AND digest < ?1 || 'g' ORDER BY name",
                    &format!("sha256:{hex}"),
                )?;
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            Err(StoreError::NotFound {
                kind: KIND,
                reference: reference.to_string(),
            })
        })
    }

    /// Removes index entries (never blobs: `gc` reclaims those no one pins).
    pub fn remove_images(&mut self, names: &[String]) -> Result<Vec<Image>> {
        self.write(|tx| {
            let mut removed = Vec::new();
            for name in names {
                let Some(image) =
                    load_all(tx, "SELECT name, doc FROM images WHERE name = ?1", name)?.pop()
                else {
                    return Err(StoreError::NotFound {
                        kind: KIND,
                        reference: name.clone(),
                    });
                };
                tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
                tx.execute(
                    "DELETE FROM blob_refs WHERE owner_kind = 'image' AND owner_id = ?1",
                    [name],
                )?;
                append(tx, KIND, name, "deleted", Some(&to_json(&image)))?;
                removed.push(image);
            }
            Ok(removed)
        })
    }

    /// Blobs no image, VM or snapshot pins: what `gc` may delete.
    pub fn unpinned_blobs(&mut self) -> Result<Vec<String>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT digest FROM blobs WHERE digest NOT IN (SELECT digest FROM blob_refs) ORDER BY digest",
            )?;
            Ok(stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}
