//! Skipping a test whose host prerequisite is missing (a VMM binary, root,
//! KVM, CNI plugins, qemu, OVMF, a test asset), so that nobody mistakes the
//! skip for a pass.
//!
//! To the test runner a skipped test is a passing one, and nextest hides the
//! output of passing tests. So a skip
//! - is a failure when `COCOON_TEST_REQUIRE=1` (`.ci/run` sets it), unless its
//!   reason names one of the comma-separated words of `COCOON_TEST_ALLOW_SKIP`
//!   (`.ci/run` allows `cloud-hypervisor,firecracker` where the real VMMs are
//!   absent);
//! - prints a banner on stderr (the `ci` profile shows the output of the tests
//!   that can skip at the end of the run);
//! - appends a line to `<target>/test-skips/`, which `.ci/run` prints as a
//!   summary after the run.
//!
//! Reasons must name the missing thing as a user would install it
//! (`cloud-hypervisor`, `firecracker`, `containernetworking-plugins`, `root`,
//! `/dev/kvm`), which is also what `COCOON_TEST_ALLOW_SKIP` matches.

use std::io::Write;
use std::path::PathBuf;

/// Skips `test` because of `why`, or fails it (panics) when prerequisites are
/// required. Call it and return from the test.
pub fn skip(test: &str, why: &str) {
    let require = std::env::var("COCOON_TEST_REQUIRE").unwrap_or_default();
    let allow = std::env::var("COCOON_TEST_ALLOW_SKIP").unwrap_or_default();
    if is_required(&require, &allow, why) {
        panic!(
            "{test} cannot run: {why}. COCOON_TEST_REQUIRE=1 makes a missing \
             prerequisite a failure: install it (.ci/run shows how) or unset the variable"
        );
    }
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("\n*** {line} ***\n");
    record(&line);
}

/// Whether a skip for `why` must fail, given `COCOON_TEST_REQUIRE` and
/// `COCOON_TEST_ALLOW_SKIP`.
fn is_required(require: &str, allow: &str, why: &str) -> bool {
    if require != "1" {
        return false;
    }
    !allow
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .any(|word| why.contains(word))
}

/// Appends the skip to `<target>/test-skips/<pid>`: test binaries live in
/// `<target>/<profile>/deps/`.
fn record(line: &str) {
    let Some(dir) = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(PathBuf::from))?
    }) else {
        return;
    };
    let dir = dir.join("test-skips");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(std::process::id().to_string()))
    {
        let _ = writeln!(file, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::is_required;

    #[test]
    fn a_skip_fails_only_when_required_and_not_allowed() {
        assert!(!is_required("", "", "cloud-hypervisor not found"));
        assert!(!is_required("0", "", "cloud-hypervisor not found"));
        assert!(is_required("1", "", "cloud-hypervisor not found"));
        assert!(!is_required(
            "1",
            "cloud-hypervisor,firecracker",
            "cloud-hypervisor not found"
        ));
        assert!(!is_required("1", " firecracker ", "firecracker not found"));
        assert!(is_required(
            "1",
            "cloud-hypervisor,firecracker",
            "containernetworking-plugins is not installed"
        ));
        assert!(is_required("1", ",", "root"));
    }
}
