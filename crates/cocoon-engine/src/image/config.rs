//! The part of an OCI image config that says how to run the image
//! (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`), validated: it comes
//! from a registry and ends up as a process in the guest, so every string is
//! bounded and free of NULs, every `Env` entry is `KEY=VALUE`.

use serde::{Deserialize, Serialize};

/// Bounds on what an image config may ask for.
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 4096;
const MAX_STRING_BYTES: usize = 128 << 10;
const MAX_TOTAL_BYTES: usize = 1 << 20;

/// How to run an image. Empty everywhere for an image without a config
/// (a layer import) or one that says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

/// The OCI (and Docker) image config's shape, as far as it is read.
#[derive(Deserialize)]
struct OciConfigFile {
    #[serde(default)]
    config: Option<OciConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OciConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl ImageConfig {
    /// Parses and validates an image config blob.
    pub fn from_oci(body: &[u8]) -> Result<ImageConfig, String> {
        let file: OciConfigFile =
            serde_json::from_slice(body).map_err(|e| format!("not an image config: {e}"))?;
        let Some(c) = file.config else {
            return Ok(ImageConfig::default());
        };
        let config = ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the bounds and shapes (also of a record read back, and of
    /// `vm run` arguments merged in).
    pub fn validate(&self) -> Result<(), String> {
        if self.entrypoint.len() + self.cmd.len() > MAX_ARGS {
            return Err(format!("more than {MAX_ARGS} arguments"));
        }
        if self.env.len() > MAX_ENV {
            return Err(format!("more than {MAX_ENV} environment variables"));
        }
        let all = self
            .entrypoint
            .iter()
            .chain(&self.cmd)
            .chain(&self.env)
            .chain([&self.working_dir, &self.user]);
        let mut total = 0;
        for text in all {
            check_string(text)?;
            total += text.len();
        }
        if total > MAX_TOTAL_BYTES {
            return Err(format!("its strings exceed {MAX_TOTAL_BYTES} bytes"));
        }
        for entry in &self.env {
            check_env(entry)?;
        }
        if !self.working_dir.is_empty() && !self.working_dir.starts_with('/') {
            return Err(format!(
                "WorkingDir {:?} is not an absolute path",
                self.working_dir
            ));
        }
        if self.user.contains(['\n', '\r']) {
            return Err(format!("User {:?} has a line break", self.user));
        }
        Ok(())
    }

    /// The main process's arguments: the entrypoint, then `args` if given
    /// (as `docker run IMAGE ARGS…` replaces `Cmd`), else `Cmd`.
    pub fn command(&self, args: &[String]) -> Vec<String> {
        let tail = if args.is_empty() { &self.cmd } else { args };
        self.entrypoint.iter().chain(tail).cloned().collect()
    }

    /// `Env` with `extra` entries applied over it (same key: the later wins,
    /// in the earlier one's place).
    pub fn env_with(&self, extra: &[String]) -> Vec<String> {
        let mut env = self.env.clone();
        for entry in extra {
            let key = entry.split('=').next().unwrap_or_default();
            match env.iter_mut().find(|e| e.split('=').next() == Some(key)) {
                Some(slot) => slot.clone_from(entry),
                None => env.push(entry.clone()),
            }
        }
        env
    }
}

fn check_string(text: &str) -> Result<(), String> {
    if text.len() > MAX_STRING_BYTES {
        return Err(format!("a string is longer than {MAX_STRING_BYTES} bytes"));
    }
    if text.contains('\0') {
        return Err(format!("{text:?} contains a NUL byte"));
    }
    Ok(())
}

/// `KEY=VALUE` with a non-empty key without `=`.
pub fn check_env(entry: &str) -> Result<(), String> {
    check_string(entry)?;
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(()),
        _ => Err(format!("environment entry {entry:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_config_is_read() {
        let body = br#"{"architecture":"amd64","config":{"Env":["PATH=/usr/bin","A=1"],
            "Entrypoint":["/entry.sh"],"Cmd":["serve","--port","80"],"WorkingDir":"/srv",
            "User":"app:staff","Labels":{"x":"y"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::from_oci(body).unwrap();
        assert_eq!(config.entrypoint, ["/entry.sh"]);
        assert_eq!(config.cmd, ["serve", "--port", "80"]);
        assert_eq!(config.working_dir, "/srv");
        assert_eq!(config.user, "app:staff");
        assert_eq!(config.command(&[]), ["/entry.sh", "serve", "--port", "80"]);
        assert_eq!(config.command(&["x".into()]), ["/entry.sh", "x"]);
        assert_eq!(
            config.env_with(&["A=2".into(), "B=3".into()]),
            ["PATH=/usr/bin", "A=2", "B=3"]
        );
    }

    #[test]
    fn a_config_without_a_config_section_runs_nothing() {
        assert_eq!(
            ImageConfig::from_oci(br#"{"rootfs":{}}"#).unwrap(),
            ImageConfig::default()
        );
        assert_eq!(
            ImageConfig::from_oci(br#"{"config":{"Cmd":null}}"#).unwrap(),
            ImageConfig::default()
        );
    }

    #[test]
    fn hostile_configs_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"config":{"Env":["NOEQUALS"]}}"#, "is not KEY=VALUE"),
            (br#"{"config":{"Env":["=v"]}}"#, "is not KEY=VALUE"),
            (br#"{"config":{"Cmd":["a\u0000b"]}}"#, "contains a NUL byte"),
            (
                br#"{"config":{"WorkingDir":"srv"}}"#,
                "is not an absolute path",
            ),
            (br#"[1,2]"#, "not an image config"),
        ];
        for (body, reason) in cases {
            let err = ImageConfig::from_oci(body).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
        let many = format!(
            r#"{{"config":{{"Cmd":[{}]}}}}"#,
            vec!["\"a\""; MAX_ARGS + 1].join(",")
        );
        assert!(
            ImageConfig::from_oci(many.as_bytes())
                .unwrap_err()
                .contains("arguments")
        );
        let long = format!(
            r#"{{"config":{{"User":"{}"}}}}"#,
            "u".repeat(MAX_STRING_BYTES + 1)
        );
        assert!(
            ImageConfig::from_oci(long.as_bytes())
                .unwrap_err()
                .contains("longer than")
        );
    }
}
