//! Test support for cocoon: run the real `cocoon` binary against a private
//! temporary root, with no trace of the host's configuration leaking in.

use std::path::{Path, PathBuf};

pub use assert_cmd;

pub mod cgroup;
pub mod cloud_guest;
pub mod console;
pub mod container;
pub mod fc_config;
pub mod guest;
pub mod linux_guest;
pub mod registry;
mod under_test;
pub mod vmm_refusals;

pub use under_test::cocoon_bin;

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

/// [`real_vmm`], or a skip naming the VMM (`cloud-hypervisor`, `firecracker`:
/// the words `COCOON_TEST_ALLOW_SKIP` matches) and how to provide it.
pub fn require_real_vmm(test: &str, env: &str, name: &str) -> Option<PathBuf> {
    match real_vmm(env, name) {
        Some(path) if path.is_file() => Some(path),
        Some(path) => {
            skip(
                test,
                &format!("{name} not found: {env}={} is not a file", path.display()),
            );
            None
        }
        None => {
            skip(
                test,
                &format!("{name} not found: not on PATH and {env} is unset"),
            );
            None
        }
    }
}

/// SIGKILLs a VMM a test started if it still runs (identity verified first):
/// called from test guards' `Drop`, so a failing test leaves no VMM behind.
pub fn kill_if_running(vmm: &cocoon_engine::model::VmmProcess) {
    if cocoon_engine::supervise::is_running(vmm) {
        // SAFETY: plain syscall on a pid whose identity was just verified.
        unsafe { libc::kill(vmm.identity.pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Kills the VMM processes it holds when dropped ([`kill_if_running`]), so
/// a test that fails half-way leaves no VMM or console relay running.
pub struct Reaper(pub Vec<cocoon_engine::model::VmmProcess>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for vmm in &self.0 {
            kill_if_running(vmm);
        }
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
        for socket in ["api.sock", "console.sock", "vhost-vsock.sock"] {
            for p in cocoon_engine::supervise::find_by_socket(&entry.path().join(socket)) {
                kill_if_running(&p);
            }
        }
    }
}

/// A test's guard: [`kill_all_under`] its root when the test ends, passed
/// or failed.
pub struct EnvReaper(pub PathBuf);

impl Drop for EnvReaper {
    fn drop(&mut self) {
        kill_all_under(&self.0);
    }
}

pub use cocoon_test_skip::skip;

/// Whether the snapshot manifest `doc` has every file's digest.
pub fn is_sealed(doc: &serde_json::Value) -> bool {
    doc["files"]
        .as_object()
        .is_some_and(|files| files.values().all(|f| f["sha256"].is_string()))
}

/// Waits (up to 30 s) until the snapshot in `dir` is sealed (`snapshot
/// save` returns before its background sealer has computed the digests);
/// returns its manifest. A test that changes a snapshot's files behind the
/// engine's back waits for this first: a change before the seal is what
/// the digests then describe.
pub fn wait_sealed(dir: &Path) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(raw) = std::fs::read(dir.join("cocoon.json"))
            && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&raw)
            && is_sealed(&doc)
        {
            return doc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot {} was not sealed within 30 s",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Runs `cmd` (a cocoon command) with `args`, asserts that it succeeded
/// (its stderr in the message), and returns its stdout: what every test
/// lab's `ok` does.
pub fn run_ok(mut cmd: std::process::Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cocoon {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The argv of the launch line of a `vm debug` script (the line after
/// `# Launch VM: ...`, without its trailing ` &`), as `sh` splits it: what
/// running the script runs.
pub fn debug_launch_argv(script: &str) -> Vec<String> {
    let mut lines = script.lines();
    lines
        .find(|l| l.starts_with("# Launch VM: "))
        .unwrap_or_else(|| panic!("no launch line in:\n{script}"));
    let line = lines.next().expect("a command after # Launch VM");
    let line = line.strip_suffix(" &").unwrap_or(line);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\0' {line}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sh cannot split {line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut argv: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .map(str::to_string)
        .collect();
    assert_eq!(argv.pop().as_deref(), Some(""), "NUL-terminated");
    argv
}

/// A GNU tar header owned by root (mode `mode`) with a fixed mtime, so the
/// archives tests build are the same bytes on every run.
pub(crate) fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A private cocoon installation: root, run and log directories and an empty
/// config file under one temporary directory, removed on drop.
pub struct CocoonEnv {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Drop for CocoonEnv {
    fn drop(&mut self) {
        cgroup::remove_parent(Path::new(&self.cgroup_parent()));
    }
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

    /// `cgroup_parent` of this environment's VMs.
    pub fn cgroup_parent(&self) -> String {
        let name = self.dir.path().file_name().unwrap_or_default();
        format!("cocoon-tests/{}", name.to_string_lossy())
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
        // Each environment's VM cgroups under a parent of its own, removed
        // with it: a test that kills its VMMs and ends leaves no empty
        // group in the host's hierarchy.
        cmd.env("COCOON_CGROUP_PARENT", self.cgroup_parent());
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
        cmd.env("COCOON_CGROUP_PARENT", self.cgroup_parent());
        cmd.env("COCOON_ROOT_DIR", self.root_dir())
            .env("COCOON_LOG_DIR", self.log_dir())
            .env("COCOON_CNI_CONF_DIR", self.path().join("cni"))
            .env("COCOON_CONFIG", self.config_path());
        cmd
    }
}
