//! Content digests, validated where they enter.
//!
//! Registries, image archives, snapshot archives and the database all hand
//! the engine digest strings, and the image store names files after them. A
//! [`Digest`] is the only thing path-building code accepts: `sha256:`
//! followed by exactly 64 lowercase hex digits, checked by its constructor
//! and by its serde deserialisation, so `sha256:../../victim` never becomes
//! a path component.

use std::fmt;

/// `sha256:` + 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {text:?}: expected \"sha256:\" followed by 64 lowercase hex digits")]
pub struct DigestError {
    /// The refused text, cut to a readable length.
    pub text: String,
}

fn is_hex(hex: &str) -> bool {
    hex.len() == HEX_LEN
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Digest {
    /// Validates `text` (`sha256:<64 lowercase hex>`).
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        match text.strip_prefix(PREFIX) {
            Some(hex) if is_hex(hex) => Ok(Digest(text.to_string())),
            _ => Err(DigestError {
                text: text.chars().take(160).collect(),
            }),
        }
    }

    /// From the bare hex part (a store file name): 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        Digest::parse(&format!("{PREFIX}{hex}"))
    }

    /// The digest of what `hasher` has seen.
    pub fn of(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Digest(format!("{PREFIX}{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits: safe as a single path component.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(text: &str) -> Result<Digest, DigestError> {
        Digest::parse(text)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(text: String) -> Result<Digest, DigestError> {
        Digest::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<Digest> for String {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl PartialEq<Digest> for str {
    fn eq(&self, other: &Digest) -> bool {
        self == other.0
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_only_sha256_and_64_lowercase_hex() {
        let d = Digest::parse(GOOD).unwrap();
        assert_eq!(d.as_str(), GOOD);
        assert_eq!(d.hex(), &GOOD[7..]);
        assert_eq!(Digest::from_hex(d.hex()).unwrap(), d);
        for bad in [
            "sha256:../../../victim",
            &GOOD.to_uppercase(),
            &GOOD.replace("sha256:", "SHA256:"),
            &GOOD.replacen('a', "A", 1),
            &GOOD[..GOOD.len() - 1],
            &format!("{GOOD}0"),
            &format!("{GOOD}/"),
            &GOOD.replace("sha256:", "sha512:"),
            &GOOD[7..],
            "",
            "sha256:",
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid digest {bad:?}: expected \"sha256:\" followed by 64 lowercase hex digits"
                )
            );
        }
    }

    #[test]
    fn serde_is_the_string_and_validates() {
        let d = Digest::parse(GOOD).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{GOOD}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let err = serde_json::from_str::<Digest>("\"sha256:../x\"").unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
    }

    #[test]
    fn of_hashes() {
        use sha2::Digest as _;
        let d = Digest::of(sha2::Sha256::new_with_prefix(b"abc"));
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
