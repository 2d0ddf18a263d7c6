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
