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
