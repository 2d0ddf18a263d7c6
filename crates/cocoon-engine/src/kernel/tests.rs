use super::*;

#[test]
fn releases_are_validated_before_they_name_a_directory() {
    for good in ["6.1.0-41-cloud-amd64", "6.12.9+bpo-cloud-amd64", "5.10.0"] {
        Release::parse(good).unwrap();
    }
    for bad in ["", "../etc", ".hidden", "a/b", "a b", "-x", &"9".repeat(65)] {
        let err = Release::parse(bad).unwrap_err().to_string();
        assert!(err.contains("invalid kernel release"), "{bad}: {err}");
    }
}

fn fake_kernel(dir: &Path, release: &str) {
    let kernel = dir.join(release);
    std::fs::create_dir_all(&kernel).unwrap();
    std::fs::write(kernel.join("vmlinuz"), b"kernel").unwrap();
}

#[test]
fn the_newest_kernel_is_the_default_and_staging_dirs_are_not_kernels() {
    let root = tempfile::tempdir().unwrap();
    let kernels = Kernels::new(root.path().join("kernels"));
    let err = kernels.resolve("").unwrap_err().to_string();
    assert!(err.contains("run `cocoon kernel install`"), "{err}");
    for release in [
        "6.1.0-9-cloud-amd64",
        "6.1.0-41-cloud-amd64",
        "6.1.0-10-cloud-amd64",
    ] {
        fake_kernel(&kernels.dir, release);
    }
    fake_kernel(&kernels.dir, ".staging-6.1.0-99-cloud-amd64");
    std::fs::create_dir_all(kernels.dir.join("6.1.0-50-cloud-amd64")).unwrap();
    let listed: Vec<String> = kernels
        .list()
        .unwrap()
        .iter()
        .map(|k| k.release.to_string())
        .collect();
    assert_eq!(
        listed,
        [
            "6.1.0-41-cloud-amd64",
            "6.1.0-10-cloud-amd64",
            "6.1.0-9-cloud-amd64"
        ]
    );
    assert_eq!(
        kernels.resolve("").unwrap().release.as_str(),
        "6.1.0-41-cloud-amd64"
    );
    assert_eq!(
        kernels.resolve("6.1.0-9-cloud-amd64").unwrap().vmlinuz(),
        kernels.dir.join("6.1.0-9-cloud-amd64/vmlinuz")
    );
    let err = kernels
        .resolve("6.1.0-1-cloud-amd64")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kernel 6.1.0-1-cloud-amd64 is not installed (installed: 6.1.0-41-cloud-amd64, 6.1.0-10-cloud-amd64, 6.1.0-9-cloud-amd64)"),
        "{err}"
    );
    kernels
        .remove(&Release::parse("6.1.0-41-cloud-amd64").unwrap())
        .unwrap();
    assert_eq!(
        kernels.resolve("").unwrap().release.as_str(),
        "6.1.0-10-cloud-amd64"
    );
}

#[test]
fn only_the_engines_own_kernel_files_pass_as_default_kernel_files() {
    let k = Path::new("/r/kernels");
    for ok in [
        "/r/kernels/6.1.0-41-cloud-amd64/vmlinuz",
        "/r/kernels/6.1.0-41-cloud-amd64/vmlinux",
        "/r/kernels/6.1.0-41-cloud-amd64/initramfs-0123456789abcdef.img",
    ] {
        assert!(is_default_kernel_file(k, Path::new(ok)), "{ok}");
    }
    for bad in [
        "/r/kernels/6.1.0-41-cloud-amd64/modules/kernel/fs/erofs/erofs.ko",
        "/r/kernels/../cocoon.db",
        "/r/kernels/6.1.0-41-cloud-amd64/../../cocoon.db",
        "/r/kernels/.staging-1/vmlinuz",
        "/r/kernels/6.1.0-41-cloud-amd64/initramfs-XYZ.img",
        "/r/kernels/6.1.0-41-cloud-amd64/initramfs-0123456789abcdef0.img",
        "/etc/passwd",
        "/r/kernels/vmlinuz",
    ] {
        assert!(!is_default_kernel_file(k, Path::new(bad)), "{bad}");
    }
}
