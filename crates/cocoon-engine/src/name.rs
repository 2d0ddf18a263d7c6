//! VM and snapshot names: one validated type, whatever the source (a flag,
//! an archive's `cocoon.json`, a record read back from the database).
//!
//! The rule is cocoon's `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$` (`types/vm.go`):
//! at most 63 ASCII characters, letters, digits, `.`, `_` and `-`, starting
//! with a letter or digit. So a name is always one plain file name (never
//! empty, `.`, `..`, a `/`, a NUL or a leading `-`), a valid hostname label
//! prefix and a table cell without surprises.
//!
//! VM and snapshot names share that one rule and one implementation,
//! [`Name`], and differ only in a marker type ([`VmName`] = `Name<VmKind>`,
//! [`SnapshotName`] = `Name<SnapshotKind>`). The marker says which kind of
//! name a refusal is about ("invalid VM name" / "invalid snapshot name"),
//! including when serde refuses a stored record, and keeps a snapshot name
//! from being passed where a VM name is meant.
//!
//! The only ways to make a `Name` validate: [`FromStr`], `TryFrom<String>`,
//! `TryFrom<&str>` and serde's `Deserialize`. Lookup *queries* ("name, ID or
//! ID prefix") are not names and stay `&str`; they only ever select a record.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spec::SpecError;

/// Which kind of object a [`Name`] names.
pub trait Kind {
    /// How refusals call it: "invalid {WHAT} name ...".
    const WHAT: &'static str;
}

/// Marker of [`VmName`].
#[derive(Debug)]
pub enum VmKind {}

impl Kind for VmKind {
    const WHAT: &'static str = "VM";
}

/// Marker of [`SnapshotName`].
#[derive(Debug)]
pub enum SnapshotKind {}

impl Kind for SnapshotKind {
    const WHAT: &'static str = "snapshot";
}

/// A validated name (see the module documentation).
pub struct Name<K: Kind> {
    text: String,
    kind: PhantomData<fn() -> K>,
}

/// A VM's name.
pub type VmName = Name<VmKind>;
/// A snapshot's name.
pub type SnapshotName = Name<SnapshotKind>;

/// The rule itself, `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`.
fn valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl<K: Kind> Name<K> {
    /// Validates `text` as a name of kind `K`.
    pub fn new(text: String) -> Result<Self, SpecError> {
        if valid(&text) {
            Ok(Name {
                text,
                kind: PhantomData,
            })
        } else {
            Err(SpecError::Name {
                what: K::WHAT,
                name: text,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The same text as a name of another kind: the rule is the same, so
    /// this cannot fail (a snapshot named after the VM it came from, say).
    pub fn to_kind<L: Kind>(&self) -> Name<L> {
        Name {
            text: self.text.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Kind> FromStr for Name<K> {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, SpecError> {
        Self::new(text.to_string())
    }
}

impl<K: Kind> TryFrom<String> for Name<K> {
    type Error = SpecError;
    fn try_from(text: String) -> Result<Self, SpecError> {
        Self::new(text)
    }
}

impl<K: Kind> TryFrom<&str> for Name<K> {
    type Error = SpecError;
    fn try_from(text: &str) -> Result<Self, SpecError> {
        text.parse()
    }
}

impl<K: Kind> From<Name<K>> for String {
    fn from(name: Name<K>) -> String {
        name.text
    }
}

impl<K: Kind> Deref for Name<K> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl<K: Kind> AsRef<str> for Name<K> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl<K: Kind> Borrow<str> for Name<K> {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl<K: Kind> fmt::Display for Name<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K: Kind> fmt::Debug for Name<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<K: Kind> Clone for Name<K> {
    fn clone(&self) -> Self {
        Name {
            text: self.text.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Kind> PartialEq for Name<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<K: Kind> Eq for Name<K> {}

impl<K: Kind> PartialEq<str> for Name<K> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<K: Kind> PartialEq<&str> for Name<K> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<K: Kind> PartialEq<String> for Name<K> {
    fn eq(&self, other: &String) -> bool {
        &self.text == other
    }
}

impl<K: Kind> Hash for Name<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<K: Kind> PartialOrd for Name<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Kind> Ord for Name<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<K: Kind> Serialize for Name<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, K: Kind> Deserialize<'de> for Name<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::new(text).map_err(serde::de::Error::custom)
    }
}

/// An optional name stored as cocoon does: `""` for none (the key is always
/// written). For `#[serde(default, with = "crate::name::or_empty")]`.
pub mod or_empty {
    use super::{Kind, Name};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<K: Kind, S: Serializer>(
        name: &Option<Name<K>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(name.as_deref().unwrap_or(""))
    }

    pub fn deserialize<'de, K: Kind, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Name<K>>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::optional(text).map_err(serde::de::Error::custom)
    }
}

/// `""` as no name, anything else validated.
pub fn optional<K: Kind>(text: String) -> Result<Option<Name<K>>, SpecError> {
    if text.is_empty() {
        Ok(None)
    } else {
        Name::new(text).map(Some)
    }
}

/// The name of a disk `vm disk attach` adds: the data-disk rule
/// (`^[a-z][a-z0-9_-]{0,19}$`, not `cocoon-...`,
/// [`crate::spec::valid_data_disk_name`]), as upstream. It is the guest's
/// `/dev/disk/by-id/virtio-<name>`, the VMM device id's suffix and the
/// detach key, so never a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskName(String);

impl DiskName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DiskName {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        if crate::spec::valid_data_disk_name(text) {
            Ok(DiskName(text.to_string()))
        } else {
            Err(SpecError::DiskName(text.to_string()))
        }
    }
}

impl fmt::Display for DiskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tag of a virtio-fs share `vm fs attach` adds: upstream's rule
/// `^[A-Za-z0-9][A-Za-z0-9_-]{0,35}$`. It is the guest's mount tag, the VMM
/// device id's suffix (`cocoon-fs-<tag>`) and the detach key, never a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsTag(String);

impl FsTag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FsTag {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let bytes = text.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 36
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if valid {
            Ok(FsTag(text.to_string()))
        } else {
            Err(SpecError::FsTag(text.to_string()))
        }
    }
}

impl fmt::Display for FsTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host PCI address as `vm device attach --pci` takes it (upstream's
/// forms): `01:00.0`, `0000:01:00.0` or `/sys/bus/pci/devices/0000:01:00.0`;
/// kept as the full lower-case BDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciAddress(String);

impl PciAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `text` is `dddd:bb:dd.f` (hex, lower case, function 0-7).
fn full_bdf(text: &str) -> bool {
    let b = text.as_bytes();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

impl FromStr for PciAddress {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let low = text.trim().to_ascii_lowercase();
        let bdf = match low.strip_prefix("/sys/bus/pci/devices/") {
            Some(rest) => rest.trim_end_matches('/').to_string(),
            None if low.len() == 7 => format!("0000:{low}"),
            None => low,
        };
        if full_bdf(&bdf) {
            Ok(PciAddress(bdf))
        } else {
            Err(SpecError::PciAddress(text.to_string()))
        }
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A passed-through device's id as `--id` takes it: upstream's rule
/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, not `cocoon-...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let b = text.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
            && !text.starts_with("cocoon-");
        if valid {
            Ok(DeviceId(text.to_string()))
        } else {
            Err(SpecError::DeviceId(text.to_string()))
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests;
