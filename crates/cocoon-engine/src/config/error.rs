//! Where a configuration value came from, and what can be wrong with one:
//! every error names the key, the value and its source.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Where a value came from, for error messages and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{origin}: {key:?} is upstream cocoon's key, not supported by this cocoon yet: {reason}"
    )]
    Unsupported {
        origin: Source,
        key: String,
        reason: &'static str,
    },
    #[error("config file {path}: unknown key {key:?} (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("invalid {key} {value:?} from {origin}: {reason}")]
    Value {
        key: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
