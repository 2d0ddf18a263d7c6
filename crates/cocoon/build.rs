//! Build metadata for `cocoon version`.

use std::process::Command;

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let hash =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=COCOON_GIT_HASH={hash}");
    println!("cargo:rustc-env=COCOON_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=COCOON_BUILT_AT={built}");
    // Rerun when the commit changes: the files git itself names for HEAD,
    // the branch HEAD is on and the packed refs. A worktree keeps them
    // elsewhere than ../../.git, and a path that does not exist makes cargo
    // rerun this script, and rebuild the crate, on every build. Outside a
    // git checkout, only when this file changes.
    println!("cargo:rerun-if-changed=build.rs");
    for path in git_paths() {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// The files behind HEAD that exist, as absolute paths; for a branch whose
/// ref is packed (no file of its own until its next commit writes one), the
/// directory that file will be made in.
fn git_paths() -> Vec<String> {
    use std::path::Path;
    let git_path = |name: &str| {
        output(
            "git",
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        )
    };
    let mut paths: Vec<String> = ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(git_path)
        .filter(|p| Path::new(p).exists())
        .collect();
    let branch = output("git", &["symbolic-ref", "-q", "HEAD"]).and_then(|b| git_path(&b));
    if let Some(branch) = branch {
        let branch = Path::new(&branch);
        let watched = if branch.exists() {
            Some(branch)
        } else {
            branch.parent().filter(|dir| dir.exists())
        };
        paths.extend(watched.map(|p| p.display().to_string()));
    }
    paths
}
