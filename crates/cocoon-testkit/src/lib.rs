//! Test support for cocoon: run the real `cocoon` binary against a private
//! temporary root, with no trace of the host's configuration leaking in.

use std::path::{Path, PathBuf};

pub use assert_cmd;

pub mod cloud_guest;
pub mod guest;
pub mod linux_guest;
pub mod registry;

/// A real VMM binary for end-to-end tests: `$<env>` if set, else `name` on PATH.
/// Tests that need one and find none must say so loudly and skip.
pub fn real_vmm(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// SIGKILLs a VMM a test started if it still runs (identity verified first):
/// called from test guards' `Drop`, so a failing test leaves no VMM behind.
pub fn kill_if_running(vmm: &cocoon_engine::model::VmmProcess) {
    if cocoon_engine::supervise::is_running(vmm) {
        // SAFETY: plain syscall on a pid whose identity was just verified.
        unsafe { libc::kill(vmm.identity.pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// The VMM and console relay a `vm inspect` document records.
pub fn processes_of(vm: &serde_json::Value) -> Vec<cocoon_engine::model::VmmProcess> {
    use cocoon_engine::model::VmmProcess;
    let mut found = Vec::new();
    if let Ok(vmm) = serde_json::from_value::<VmmProcess>(vm["vmm"].clone()) {
        found.push(vmm);
    }
    if let Ok(relay) = serde_json::from_value::<cocoon_engine::process::ProcessIdentity>(
        vm["console_relay"].clone(),
    ) {
        found.push(VmmProcess {
            identity: relay,
            api_socket: PathBuf::from(vm["run_dir"].as_str().unwrap_or_default())
                .join("console.sock"),
        });
    }
    found
}

/// SIGKILLs every VMM and console relay still running under a cocoon root's
/// run directory (`<root>/run/vms/*`), recorded or not: for test guards'
/// `Drop`, so a test that fails half-way leaves no process behind.
pub fn kill_all_under(root_dir: &Path) {
    for entry in std::fs::read_dir(root_dir.join("run/vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for socket in ["api.sock", "console.sock"] {
            for p in cocoon_engine::supervise::find_by_socket(&entry.path().join(socket)) {
                kill_if_running(&p);
            }
        }
    }
}

/// Prints a skip notice that stands out in test output.
pub fn skip(test: &str, why: &str) {
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// A private cocoon installation: root, run and log directories and an empty
/// config file under one temporary directory, removed on drop.
pub struct CocoonEnv {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl CocoonEnv {
    /// `bin` is the binary under test, e.g. `env!("CARGO_BIN_EXE_cocoon")`.
    pub fn new(bin: impl Into<PathBuf>) -> CocoonEnv {
        let dir = tempfile::Builder::new()
            .prefix("cocoon-test-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("config.toml"), "").expect("write config");
        CocoonEnv {
            dir,
            bin: bin.into(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.root_dir().join("cocoon.db")
    }

    /// `cocoon` with this environment's directories, the host's `COCOON_*`
    /// variables and `RUST_LOG` removed, and an empty config file.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = self.bare_cmd();
        cmd.env("COCOON_ROOT_DIR", self.root_dir())
            .env("COCOON_LOG_DIR", self.log_dir())
            .env("COCOON_CNI_CONF_DIR", self.path().join("cni"))
            .env("COCOON_CONFIG", self.config_path());
        cmd
    }

    /// `cocoon` with no directories set at all: for precedence tests.
    pub fn bare_cmd(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("COCOON_") || key == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd
    }

    /// [`Self::std_cmd`] with `fake` (the testkit's fake-vmm binary) as both
    /// VMMs and a 1 s graceful-stop wait, as every fake-VMM test runs it.
    pub fn fake_vmm_cmd(&self, fake: &str) -> std::process::Command {
        let mut cmd = self.std_cmd();
        cmd.env("COCOON_CH_BINARY", fake)
            .env("COCOON_FC_BINARY", fake)
            .env("COCOON_TERMINATE_GRACE_PERIOD_SECONDS", "1");
        cmd
    }

    /// The same command as a `std::process::Command`, for long-running children.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("COCOON_") || key == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("COCOON_ROOT_DIR", self.root_dir())
            .env("COCOON_LOG_DIR", self.log_dir())
            .env("COCOON_CNI_CONF_DIR", self.path().join("cni"))
            .env("COCOON_CONFIG", self.config_path());
        cmd
    }
}
