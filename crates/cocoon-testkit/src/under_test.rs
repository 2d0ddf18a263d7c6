//! The `cocoon` binary the end-to-end tests run, built for the test run.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the binary under test is built from: every package's binaries,
/// `cocoon` with failpoints. `--workspace` so that features resolve over the
/// same packages as `cargo nextest run --workspace`; cocoon-testkit's
/// Cargo.toml asks for what that test build's dev-dependencies switch on, so
/// both resolve alike (`tests::the_build_of_the_binary_under_test_resolves_as_the_test_build`)
/// and after that test build this one finds everything fresh.
const SELECTION: [&str; 4] = ["--workspace", "--bins", "--features", "cocoon/failpoints"];

/// The `cocoon` binary under test, built for this test run.
///
/// Cargo sets `CARGO_BIN_EXE_<name>` only for its own package's binaries, and
/// `cargo nextest run -p cocoon-testkit` does not build `cocoon` at all: a
/// `target/debug/cocoon` found lying there may be any old build. So the first
/// test of a run builds it explicitly ([`SELECTION`]: after a workspace test
/// build there is nothing left to compile) and records the path for the rest
/// of the run (`NEXTEST_RUN_ID`; under `cargo test`, once per test process).
/// `COCOON_TEST_BIN` names a binary instead (a release build, say).
pub fn cocoon_bin() -> String {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("COCOON_TEST_BIN").filter(|b| !b.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "COCOON_TEST_BIN={} is not a file",
                bin.display()
            );
            return bin.to_string_lossy().into_owned();
        }
        build_cocoon()
    })
    .clone()
}

fn build_cocoon() -> String {
    // Test binaries live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let target = profile_dir.parent().expect("<target>");
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let marks = target.join("cocoon-under-test");
    std::fs::create_dir_all(&marks).expect("create the build mark directory");
    let lock = std::fs::File::create(marks.join("lock")).expect("build lock");
    // One build per run: the others wait here, then read its mark. The
    // wait is said, so a test that times out meanwhile shows why.
    if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
        eprintln!("waiting for another test's build of the cocoon binary under test");
        lock.lock().expect("lock the build");
    }
    let run = std::env::var("NEXTEST_RUN_ID").ok();
    let mark = run.as_ref().map(|id| marks.join(format!("run-{id}")));
    if let Some(bin) = mark.as_ref().and_then(|m| std::fs::read_to_string(m).ok()) {
        return bin;
    }
    let bin = cargo_build(target, &profile);
    if let Some(mark) = mark {
        // Marks of earlier runs are of no use any more.
        for old in std::fs::read_dir(&marks).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().starts_with("run-") {
                let _ = std::fs::remove_file(old.path());
            }
        }
        std::fs::write(mark, &bin).expect("write the build mark");
    }
    bin
}

/// Runs the build and returns the `cocoon` executable it reports. Says on
/// stderr what it compiled, if anything: after a workspace test build it
/// should be nothing.
fn cargo_build(target: &Path, profile: &str) -> String {
    let mut cmd = std::process::Command::new(cargo());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("build")
        .args(SELECTION)
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--target-dir",
        ])
        .arg(target);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let started = Instant::now();
    let out = cmd.output().expect("run cargo to build cocoon");
    assert!(
        out.status.success(),
        "building the cocoon binary under test failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let artifacts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .collect();
    let compiled: Vec<&str> = artifacts
        .iter()
        .filter(|m| m["fresh"] == false)
        .filter_map(|m| m["target"]["name"].as_str())
        .collect();
    if !compiled.is_empty() {
        eprintln!(
            "built the cocoon binary under test in {:.1} s, compiling {}",
            started.elapsed().as_secs_f64(),
            compiled.join(", ")
        );
    }
    artifacts
        .iter()
        .filter(|m| m["target"]["name"] == "cocoon")
        .find_map(|m| m["executable"].as_str().map(str::to_string))
        .expect("cargo reported no cocoon executable")
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every package with the features `cargo tree` resolves for `args`
    /// (`--prefix none`: one `name version [features]` line each).
    fn resolved(args: &[&str]) -> BTreeSet<String> {
        let out = std::process::Command::new(cargo())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["tree", "--offline", "--locked", "--no-dedupe"])
            .args(["--prefix", "none", "--format", "{p} [{f}]"])
            .args(args)
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A package whose features differ between the two builds is compiled
    /// twice, and so is everything above it: the binary under test then
    /// costs a second build of cocoon-engine and cocoon inside the first
    /// end-to-end test of every run (over 3 minutes on a loaded CI machine,
    /// where it timed out a cloud image test that had not started yet).
    #[test]
    fn the_build_of_the_binary_under_test_resolves_as_the_test_build() {
        // `cargo build SELECTION` has no dev-dependencies: `-e no-dev`.
        let mut plain = vec!["-e", "no-dev"];
        plain.extend(SELECTION.iter().copied().filter(|a| *a != "--bins"));
        let build = resolved(&plain);
        // `cargo nextest run --workspace`: dev-dependencies included.
        let test = resolved(&["--workspace"]);
        let differ: Vec<&String> = build.difference(&test).collect();
        assert!(
            differ.is_empty(),
            "the binary under test resolves these packages' features unlike the \
             workspace test build (ask for the test build's features in \
             cocoon-testkit's [dependencies]):\n{differ:#?}\nthe test build has:\n{:#?}",
            test.iter()
                .filter(|t| differ
                    .iter()
                    .any(|d| d.split(" [").next() == t.split(" [").next()))
                .collect::<Vec<_>>()
        );
        assert!(build.iter().any(|p| p.starts_with("cocoon v")), "{build:?}");
    }
}
