//! Which kernel modules the test initramfs must carry, and in which order to
//! `insmod` them. A kernel package unpacked with `dpkg-deb -x` has no
//! `modules.dep` (depmod writes it on install), so dependencies come from
//! each module's own `.modinfo` section, as `modinfo` reads them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
}

/// The modules among `wanted` (and their dependencies) that the kernel does
/// not have built in, dependencies first.
pub fn load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, String> {
    let builtin = builtin(modules_dir)?;
    let shipped = shipped(&modules_dir.join("kernel"))?;
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        visit(&normalise(name), &builtin, &shipped, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    builtin: &HashSet<String>,
    shipped: &HashMap<String, PathBuf>,
    seen: &mut HashSet<String>,
    order: &mut Vec<Module>,
) -> Result<(), String> {
    if builtin.contains(name) || !seen.insert(name.to_string()) {
        return Ok(());
    }
    let path = shipped
        .get(name)
        .ok_or_else(|| format!("module {name} is neither built in nor shipped"))?;
    let image = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for dep in depends(&image).map_err(|e| format!("{}: {e}", path.display()))? {
        visit(&dep, builtin, shipped, seen, order)?;
    }
    order.push(Module {
        name: name.to_string(),
        path: path.clone(),
    });
    Ok(())
}

/// Module names use `_` where file names may use `-` (`crc32c-intel.ko`).
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    Some(normalise(file.strip_suffix(".ko")?))
}

fn builtin(modules_dir: &Path) -> Result<HashSet<String>, String> {
    let list = modules_dir.join("modules.builtin");
    let text = std::fs::read_to_string(&list).map_err(|e| format!("{}: {e}", list.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| module_name(Path::new(line)))
        .collect())
}

/// Every `.ko` under `dir`, by module name.
fn shipped(dir: &Path) -> Result<HashMap<String, PathBuf>, String> {
    let mut found = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            // The entry's own type: a symlink in the package is never followed.
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && let Some(name) = module_name(&path)
            {
                found.insert(name, path);
            }
        }
    }
    Ok(found)
}

/// The `depends=` list of a module's `.modinfo` section (ELF64 little endian).
pub fn depends(image: &[u8]) -> Result<Vec<String>, String> {
    let info = section(image, ".modinfo")?;
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(normalise)
                .collect::<Vec<_>>()
        })
        .filter(|dep| !dep.is_empty())
        .collect())
}

fn section<'a>(image: &'a [u8], wanted: &str) -> Result<&'a [u8], String> {
    if image.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not an ELF64 file".into());
    }
    let u16_at = |at: usize| -> Result<usize, String> {
        let bytes = image.get(at..at + 2).ok_or("truncated ELF")?;
        Ok(usize::from(u16::from_le_bytes(
            bytes.try_into().expect("2 bytes"),
        )))
    };
    let u32_at = |at: usize| -> Result<usize, String> {
        let bytes = image.get(at..at + 4).ok_or("truncated ELF")?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize)
    };
    let u64_at = |at: usize| -> Result<usize, String> {
        let bytes = image.get(at..at + 8).ok_or("truncated ELF")?;
        usize::try_from(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            .map_err(|e| e.to_string())
    };
    let (sh_off, sh_size, sh_count, names_index) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| sh_off + i * sh_size;
    let bytes_of = |i: usize| -> Result<&'a [u8], String> {
        let (offset, size) = (u64_at(header(i) + 0x18)?, u64_at(header(i) + 0x20)?);
        image
            .get(offset..offset + size)
            .ok_or_else(|| "section out of bounds".to_string())
    };
    let names = bytes_of(names_index)?;
    for i in 0..sh_count {
        let name = names
            .get(u32_at(header(i))?..)
            .ok_or("section name out of bounds")?;
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if name == wanted.as_bytes() {
            return bytes_of(i);
        }
    }
    Err(format!("no {wanted} section"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_rejects_what_is_not_an_elf64_module() {
        assert!(depends(b"MZ not an ELF").is_err());
        assert!(depends(b"\x7fELF\x02").is_err(), "truncated header");
    }

    /// Debian's cloud kernel, when scripts/fetch-test-assets.sh has run.
    #[test]
    fn debian_modules_load_after_their_dependencies() {
        let Some(modules_dir) = crate::kernel::test_assets::debian_modules() else {
            cocoon_test_skip::skip(
                "debian_modules_load_after_their_dependencies",
                "run scripts/fetch-test-assets.sh first",
            );
            return;
        };
        let order = load_order(&modules_dir, &["virtio_blk", "ext4"]).unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        // ext4 is built into the cloud kernel; virtio_blk needs the virtio core.
        assert!(!names.contains(&"ext4"), "{names:?}");
        let at = |name: &str| names.iter().position(|n| *n == name);
        assert_eq!(names.last(), Some(&"virtio_blk"), "{names:?}");
        assert!(
            at("virtio").is_some() && at("virtio_ring").is_some(),
            "{names:?}"
        );
        assert!(at("virtio") < at("virtio_blk") && at("virtio_ring") < at("virtio_blk"));
        assert!(load_order(&modules_dir, &["no_such_module"]).is_err());
    }
}
