//! Byte sizes as users type them (`1G`, `512M`, `10GiB`) and as tables show them.
//!
//! Hand-written because cocoon's flags follow docker/go-units `RAMInBytes`, where
//! every suffix is binary (`1G` = 1 GiB, `1GB` = 1 GiB too). `bytesize` and
//! `parse-size` read `G`/`GB` as decimal, which would silently give users 7% less
//! memory than cocoon did for the same flag.

use std::fmt;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;
pub const PIB: u64 = 1 << 50;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 512M, 1G, 1.5GiB, 20G)")]
pub struct SizeError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a size with go-units `RAMInBytes` semantics: a decimal number, optional
/// whitespace, then an optional unit `b`, `k`, `m`, `g`, `t`, `p`, each optionally
/// followed by `b` or `ib`, case-insensitive, all binary multiples.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(err("no number"));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        "p" | "pb" | "pib" => PIB,
        _ => return Err(err("unknown unit")),
    };
    let bytes = if let Some((int, frac)) = number.split_once('.') {
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return Err(err("malformed number"));
        }
        let value: f64 = number.parse().map_err(|_| err("malformed number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(err("too large"));
        }
        // In range (checked above, and never negative: only digits and a
        // dot get here); dropping a fraction of a byte is what is meant.
        #[allow(clippy::cast_possible_truncation)]
        let whole = bytes as u64;
        whole
    } else {
        let value: u64 = number.parse().map_err(|_| err("too large"))?;
        value
            .checked_mul(multiplier)
            .ok_or_else(|| err("too large"))?
    };
    Ok(bytes)
}

/// Binary size for tables, as cocoon's `units.BytesSize`: `1GiB`, `512MiB`, `1.5GiB`.
pub struct BinarySize(pub u64);

impl fmt::Display for BinarySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_scaled(
            f,
            self.0 as f64,
            1024.0,
            &["B", "KiB", "MiB", "GiB", "TiB", "PiB"],
        )
    }
}

/// Decimal size for tables, as cocoon's `units.HumanSize`: `1.2GB`.
pub struct DecimalSize(pub u64);

impl fmt::Display for DecimalSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_scaled(
            f,
            self.0 as f64,
            1000.0,
            &["B", "kB", "MB", "GB", "TB", "PB"],
        )
    }
}

fn fmt_scaled(
    f: &mut fmt::Formatter<'_>,
    mut value: f64,
    base: f64,
    units: &[&str],
) -> fmt::Result {
    let mut unit = 0;
    while value >= base && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    // A whole number below 1000 (the usual size: 512MiB, 10GiB) prints as
    // itself, which is what the general path below makes of it, without
    // its two float formats (`vm ls` shows two sizes per VM).
    if value.fract() == 0.0 && value < 1000.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return write!(f, "{}{}", value as u64, units[unit]);
    }
    // Four significant digits at most, trailing zeros dropped: 1GiB, 1.5GiB, 976.6MiB.
    let text = format!("{value:.4}");
    let text = if text.contains('.') {
        let precision = 4usize.saturating_sub(text.find('.').unwrap_or(0));
        let rounded = format!("{value:.precision$}");
        let trimmed = rounded.trim_end_matches('0').trim_end_matches('.');
        trimmed.to_string()
    } else {
        text
    };
    write!(f, "{text}{}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units_like_go_units() {
        assert_eq!(parse_size("1G").unwrap(), GIB);
        assert_eq!(parse_size("1GB").unwrap(), GIB);
        assert_eq!(parse_size("1gib").unwrap(), GIB);
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_size("1.5G").unwrap(), 3 * GIB / 2);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16k").unwrap(), 16 * KIB);
        assert_eq!(parse_size("2T").unwrap(), 2 * TIB);
    }

    #[test]
    fn rejects_malformed_sizes() {
        for bad in [
            "",
            "G",
            "1X",
            "1.2.3G",
            "-1G",
            "1 G B",
            "99999999999999999999",
            "1e3M",
            ".",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert_eq!(err.input, bad, "{bad}");
        }
        assert_eq!(
            parse_size("1X").unwrap_err().to_string(),
            "invalid size \"1X\": unknown unit (examples: 512M, 1G, 1.5GiB, 20G)"
        );
        assert_eq!(parse_size("20000P").unwrap_err().reason, "too large");
    }

    #[test]
    fn formats_like_cocoon_tables() {
        assert_eq!(BinarySize(GIB).to_string(), "1GiB");
        assert_eq!(BinarySize(10 * GIB).to_string(), "10GiB");
        assert_eq!(BinarySize(3 * GIB / 2).to_string(), "1.5GiB");
        assert_eq!(BinarySize(512 * MIB).to_string(), "512MiB");
        assert_eq!(BinarySize(0).to_string(), "0B");
        // The whole-number shortcut says what the general path says.
        for n in (0..1100u64).chain([1 << 10, 1 << 20]) {
            for scale in [1, 1024, 1 << 20, 1 << 30] {
                let value = n * scale;
                let mut general = String::new();
                let mut f = value as f64;
                let mut unit = 0;
                while f >= 1024.0 && unit < 5 {
                    f /= 1024.0;
                    unit += 1;
                }
                let text = format!("{f:.4}");
                let precision = 4usize.saturating_sub(text.find('.').unwrap_or(0));
                let rounded = format!("{f:.precision$}");
                general.push_str(rounded.trim_end_matches('0').trim_end_matches('.'));
                general.push_str(["B", "KiB", "MiB", "GiB", "TiB", "PiB"][unit]);
                assert_eq!(BinarySize(value).to_string(), general, "{value}");
            }
        }
        assert_eq!(DecimalSize(1_234_000_000).to_string(), "1.234GB");
        assert_eq!(DecimalSize(999).to_string(), "999B");
    }
}
