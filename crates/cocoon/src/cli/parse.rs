//! Per-value parsers of the flags: a bad value is a usage error (exit 2)
//! with the engine's message, before anything runs.

use cocoon_engine::spec::{self, RawDataDisk};

pub(super) fn parse_cpu(s: &str) -> Result<u32, String> {
    let cpu: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    spec::validate_cpu(cpu, spec::host_cpus()).map_err(|e| e.to_string())?;
    Ok(cpu)
}

/// 0 means "inherit from the snapshot".
pub(super) fn parse_cpu_or_inherit(s: &str) -> Result<u32, String> {
    if s == "0" { Ok(0) } else { parse_cpu(s) }
}

pub(super) fn parse_memory(s: &str) -> Result<u64, spec::SpecError> {
    spec::parse_memory(s)
}

pub(super) fn parse_storage(s: &str) -> Result<u64, spec::SpecError> {
    spec::parse_storage(s)
}

pub(super) fn parse_queue_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    spec::validate_queue_size("--queue-size", n).map_err(|e| e.to_string())?;
    Ok(n)
}

pub(super) fn parse_disk_queue_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    spec::validate_queue_size("--disk-queue-size", n).map_err(|e| e.to_string())?;
    Ok(n)
}

pub(super) fn parse_user(s: &str) -> Result<String, spec::SpecError> {
    spec::validate_user(s).map(|()| s.to_string())
}

pub(super) fn parse_password(s: &str) -> Result<String, spec::SpecError> {
    spec::validate_password(s).map(|()| s.to_string())
}

pub(super) fn parse_data_disk(s: &str) -> Result<RawDataDisk, spec::SpecError> {
    spec::parse_data_disk(s)
}

pub(super) fn parse_escape(s: &str) -> Result<u8, spec::SpecError> {
    spec::parse_escape_char(s)
}

pub(super) fn parse_env(s: &str) -> Result<String, String> {
    cocoon_engine::image::config::check_env(s).map(|()| s.to_string())
}

/// `gc --snapshot-size`: go-units sizes as upstream (`100GB`, `50G`).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    cocoon_engine::units::parse_size(s).map_err(|e| e.to_string())
}

/// `gc --snapshot-age`: Go durations as upstream (`720h`, `1h30m`, `90s`),
/// and days and weeks (`7d`, `2w`) besides.
pub(super) fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration: write e.g. 720h, 90m, 7d or 2w");
    let mut total = 0u64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(seconds)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::parse_age;

    #[test]
    fn ages_read_like_go_durations() {
        let secs = |s: &str| parse_age(s).map(|d| d.as_secs());
        assert_eq!(secs("720h"), Ok(720 * 3600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("7d"), Ok(7 * 86_400));
        assert_eq!(secs("2w"), Ok(14 * 86_400));
        for bad in ["", "h", "10", "10y", "1.5h", "-1h"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }
}
