//! `image import` through the real binary: tar layers from files or stdin,
//! gzip-wrapped or not; everything else refused before anything changes.

use std::io::Write;
use std::path::Path;

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::layers::LayerBuilder;

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn images(env: &CocoonEnv) -> serde_json::Value {
    let out = env
        .cmd()
        .args(["image", "ls", "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn blob_count(env: &CocoonEnv) -> usize {
    std::fs::read_dir(env.root_dir().join("images/blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn imports_tar_layers_from_files_and_stdin() {
    let env = CocoonEnv::new(bin());
    let base = LayerBuilder::new()
        .file("etc/os-release", b"ID=imported\n")
        .file("etc/gone", b"x")
        .build();
    let top = LayerBuilder::new()
        .delete("etc/gone")
        .file("boot/vmlinuz-6.1", b"k")
        .file("boot/initrd.img-6.1", b"i")
        .build();
    std::fs::write(env.path().join("base.tar"), &base).unwrap();
    std::fs::write(env.path().join("top.tar.gz"), gzip(&top)).unwrap();

    let out = env
        .cmd()
        .args(["image", "import", "local/dev:1"])
        .arg(env.path().join("base.tar"))
        .arg(env.path().join("top.tar.gz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("imported: local/dev:1"),
        "{}",
        stderr(&out)
    );
    let list = images(&env);
    assert_eq!(list[0]["name"], "local/dev:1");
    assert_eq!(list[0]["type"], "oci");
    assert_eq!(list[0]["layers"].as_array().unwrap().len(), 2);
    assert_eq!(list[0]["kernel_layer"], list[0]["layers"][1]);
    assert_eq!(blob_count(&env), 2);

    // The same top layer again, gzip-wrapped on stdin, under another name: reused.
    let everything = LayerBuilder::new()
        .file("boot/vmlinuz-6.1", b"k")
        .file("boot/initrd.img-6.1", b"i")
        .build();
    let out = env
        .cmd()
        .args(["image", "import", "local/stdin"])
        .write_stdin(gzip(&everything))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(images(&env).as_array().unwrap().len(), 2);
    let again = env
        .cmd()
        .args(["image", "import", "local/again"])
        .write_stdin(top.clone())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        blob_count(&env),
        3,
        "identical layer content is stored once"
    );
}

#[test]
fn non_tar_inputs_are_refused_and_change_nothing() {
    let env = CocoonEnv::new(bin());
    let qcow2 = env.path().join("disk.qcow2");
    std::fs::write(&qcow2, b"QFI\xfb\x00\x00\x00\x03rest-of-header").unwrap();
    let raw = env.path().join("disk.raw");
    std::fs::write(&raw, vec![0xebu8; 4096]).unwrap();
    let hostile = env.path().join("hostile.tar");
    std::fs::write(
        &hostile,
        LayerBuilder::new().raw_entry(b"../../../tmp/owned").build(),
    )
    .unwrap();
    let nokernel = env.path().join("nokernel.tar");
    std::fs::write(
        &nokernel,
        LayerBuilder::new().file("boot/initrd.img-1", b"x").build(),
    )
    .unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec![qcow2.display().to_string()], format!("Error: {} is a qcow2 image with a truncated header; only standalone qcow2 images can be stored", qcow2.display())),
        (vec![raw.display().to_string()], format!("Error: cannot tell what {} is: it is not a tar archive, a qcow2 image or a raw disk image with a partition table (MBR or GPT)", raw.display())),
        (vec!["/nonexistent/layer.tar".into()], "Error: cannot read /nonexistent/layer.tar: No such file or directory (os error 2)".into()),
        (vec![hostile.display().to_string()], format!("Error: {}: layer entry \"../../../tmp/owned\" is not allowed: it contains '..'", hostile.display())),
        (vec![nokernel.display().to_string()], "Error: image local/x has no kernel (a regular file /boot/vmlinuz* or /vmlinuz* in some layer) but has the other boot file: a VM image brings both, a container image neither".into()),
    ];
    for (files, message) in cases {
        let out = env
            .cmd()
            .args(["image", "import", "local/x"])
            .args(&files)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{files:?}");
        assert_eq!(stderr(&out).trim(), message);
    }
    let out = env
        .cmd()
        .args(["image", "import", "bad name", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out).trim(),
        "Error: invalid image name \"bad name\": it must be non-empty, without spaces"
    );
    assert_eq!(images(&env), serde_json::json!([]), "nothing recorded");
    let tmp = env.root_dir().join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "no work directories left"
    );
    assert!(!Path::new("/tmp/owned").exists());
}
