//! Builds the test guest kernel (guest/kernel.S) with GNU as and ld: Rust has
//! only the host target here, and the kernel is 32-bit PVH code.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
    assert!(status.success(), "{cmd:?} failed");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let object = out.join("kernel.o");
    let kernel = out.join("cocoon-test-guest.elf");
    run(Command::new("as")
        .args(["--64", "-o"])
        .arg(&object)
        .arg("guest/kernel.S"));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-T",
            "guest/kernel.ld",
            "-z",
            "noexecstack",
            "--build-id=none",
            "--no-warn-rwx-segments",
            "-o",
        ])
        .arg(&kernel)
        .arg(&object));
    println!("cargo:rustc-env=COCOON_TEST_KERNEL={}", kernel.display());
    println!("cargo:rerun-if-changed=guest/kernel.S");
    println!("cargo:rerun-if-changed=guest/kernel.ld");
}
