//! The guest agent's layer on images built for cocoon, through the real
//! binary and real Cloud Hypervisor and Firecracker VMMs: a VM of such an image gets one more
//! read-only layer on top (cocoon-init as `/usr/local/bin/cocoon-agent`,
//! upstream's systemd unit, enabled), `--no-agent` goes without, gc removes
//! the layer once nothing uses it, and a snapshot imported where the layer
//! is missing gets it rebuilt from the same cocoon-init (never carried).
//!
//! The test guest is not Linux: it boots with the extra disk attached and
//! its heartbeat is the witness that the VMM took it; that systemd starts
//! the unit is systemd's part (the unit is upstream's, at upstream's path).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cocoon_testkit::guest::{HEARTBEAT_PREFIX, last_heartbeat};
use cocoon_testkit::{CocoonEnv, EnvReaper, container, require_real_vmm, skip};
use serde_json::Value;

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

fn install(backend: &Backend, vmm: &Path, init: &Path) -> (CocoonEnv, EnvReaper) {
    let env = CocoonEnv::new(bin());
    let reaper = EnvReaper(env.root_dir());
    let config = format!(
        "{} = {:?}\ndefault_hypervisor = {:?}\ninit_binary = {:?}\n",
        backend.key,
        vmm.display(),
        backend.name,
        init.display()
    );
    std::fs::write(env.config_path(), config).unwrap();
    (env, reaper)
}

fn ok(env: &CocoonEnv, args: &[&str]) -> String {
    cocoon_testkit::run_ok(env.std_cmd(), args)
}

fn inspect(env: &CocoonEnv, vm: &str) -> Value {
    serde_json::from_str(&ok(env, &["vm", "inspect", vm])).unwrap()
}

/// The VM's layer disks, bottom first.
fn layers(vm: &Value) -> Vec<Value> {
    vm["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == "layer")
        .cloned()
        .collect()
}

fn blobs(env: &CocoonEnv) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.root_dir().join("images/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits for `n` heartbeats after `after`; the last one.
fn heartbeat_after(env: &CocoonEnv, vm: &str, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = ok(env, &["vm", "logs", vm]);
        if let Some(beat) = last_heartbeat(&log).filter(|b| *b > after) {
            return beat;
        }
        assert!(
            Instant::now() < deadline,
            "no {HEARTBEAT_PREFIX}after {after} from {vm}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unpacks an EROFS image with erofs-utils' own reader.
fn extract(blob: &Path, into: &Path) {
    let out = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", into.display()))
        .arg(blob)
        .output()
        .expect("run fsck.erofs");
    assert!(
        out.status.success(),
        "fsck.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A backend: its binary's variable and name, its config key and name, and
/// how its command line lists the two layers (top first).
struct Backend {
    env: &'static str,
    binary: &'static str,
    key: &'static str,
    name: &'static str,
    layers: &'static str,
}

#[test]
fn the_agent_layer_on_cloud_hypervisor() {
    agent_layer_case(&Backend {
        env: "COCOON_CH_BINARY",
        binary: "cloud-hypervisor",
        key: "ch_binary",
        name: "cloud-hypervisor",
        layers: "cocoon.layers=cocoon-layer1,cocoon-layer0 ",
    });
}

#[test]
fn the_agent_layer_on_firecracker() {
    agent_layer_case(&Backend {
        env: "COCOON_FC_BINARY",
        binary: "firecracker",
        key: "fc_binary",
        name: "firecracker",
        layers: "cocoon.layers=/dev/vdb,/dev/vda cocoon.cow=/dev/vdc ",
    });
}

fn agent_layer_case(backend: &Backend) {
    let test = &format!("the_agent_layer_on_{}", backend.name.replace('-', "_"));
    let Some(vmm) = require_real_vmm(test, backend.env, backend.binary) else {
        return;
    };
    let init: PathBuf = match container::init_binary() {
        Ok(init) => init,
        Err(why) => return skip(test, &why),
    };
    let (a, _reaper_a) = install(backend, &vmm, &init);
    let layer = cocoon_testkit::guest::boot_layer("test", b"unused").build();
    let tar = a.path().join("layer.tar");
    std::fs::write(&tar, layer).unwrap();
    ok(
        &a,
        &["image", "import", "guest/test:1", tar.to_str().unwrap()],
    );
    let image_blob = blobs(&a);
    let flags = ["--nics", "0", "--memory", "512M", "--cpu", "1"];
    let mut run = vec!["vm", "run", "--name", "src"];
    run.extend(flags);
    run.push("guest/test:1");
    ok(&a, &run);

    // The layer is on top: the last layer disk, first in the command line.
    let vm = inspect(&a, "src");
    let disks = layers(&vm);
    assert_eq!(disks.len(), 2, "{vm:#}");
    let agent_blob = PathBuf::from(disks[1]["path"].as_str().unwrap());
    let agent_hex = agent_blob
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(disks[1]["ro"], true);
    let cmdline = vm["boot_config"]["cmdline"].as_str().unwrap();
    assert!(cmdline.contains(backend.layers), "{cmdline}");
    assert!(
        vm["image_blob_ids"]
            .as_object()
            .unwrap()
            .contains_key(&format!("sha256:{agent_hex}")),
        "{vm:#}"
    );
    let first = heartbeat_after(&a, "src", 0);

    // What the guest sees in it.
    let tree = a.path().join("agent-tree");
    extract(&agent_blob, &tree);
    let agent = tree.join("usr/local/bin/cocoon-agent");
    assert_eq!(
        std::fs::read(&agent).unwrap(),
        std::fs::read(&init).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&agent).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let unit =
        std::fs::read_to_string(tree.join("etc/systemd/system/cocoon-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/cocoon-agent serve\n")
            && unit.contains("WantedBy=multi-user.target\n"),
        "{unit}"
    );
    assert_eq!(
        std::fs::read_link(
            tree.join("etc/systemd/system/multi-user.target.wants/cocoon-agent.service")
        )
        .unwrap(),
        Path::new("../cocoon-agent.service")
    );

    // --no-agent: the image's layers only.
    let mut bare = vec!["vm", "create", "--no-agent", "--name", "bare"];
    bare.extend(flags);
    bare.push("guest/test:1");
    ok(&a, &bare);
    assert_eq!(layers(&inspect(&a, "bare")).len(), 1);

    // The snapshot names the layer; once nothing uses the layer, gc
    // removes it (and keeps the image's).
    ok(&a, &["snapshot", "save", "--name", "s", "src"]);
    let archive = a.path().join("s.tar");
    ok(
        &a,
        &["snapshot", "export", "-o", archive.to_str().unwrap(), "s"],
    );
    ok(&a, &["vm", "rm", "--force", "src", "bare"]);
    assert!(
        blobs(&a).contains(&format!("{agent_hex}.erofs")),
        "the snapshot pins it"
    );
    ok(&a, &["snapshot", "rm", "s"]);
    // Past gc's grace for a blob no record names yet (a pull's, just stored).
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for name in blobs(&a) {
        let blob = a.root_dir().join("images/blobs").join(name);
        std::fs::File::options()
            .write(true)
            .open(blob)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    ok(&a, &["gc"]);
    assert_eq!(blobs(&a), image_blob);

    // Imported where the layer is missing (another host, or after that gc):
    // rebuilt from the same cocoon-init, never carried, and the clone runs on.
    ok(&a, &["snapshot", "import", archive.to_str().unwrap()]);
    assert_eq!(blobs(&a), image_blob);
    ok(&a, &["vm", "clone", "--name", "c", "s"]);
    assert!(
        blobs(&a).contains(&format!("{agent_hex}.erofs")),
        "{:?}",
        blobs(&a)
    );
    assert_eq!(layers(&inspect(&a, "c")).len(), 2);
    heartbeat_after(&a, "c", first);
    ok(&a, &["vm", "rm", "--force", "c"]);
}
