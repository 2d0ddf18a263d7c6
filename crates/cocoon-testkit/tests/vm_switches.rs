//! The device and memory switches (`--hugepages`, `--no-balloon`,
//! `--no-watchdog`, `--mergeable`, `--shared-memory`, `--pci`) through the
//! real `cocoon` binary against the fake VMMs: `vm debug` prints what the
//! VMM then gets, the VM record and its snapshots and clones keep them, and
//! each switch a VMM or a snapshot cannot take is refused with nothing left
//! behind.

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Lab {
    env: CocoonEnv,
    extra_env: Vec<(String, String)>,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
            extra_env: vec![],
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = self.env.fake_vmm_cmd(FAKE);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn fail(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "cocoon {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn inspect(&self, vm: &str) -> Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", vm])).unwrap()
    }

    fn vms(&self) -> Vec<Value> {
        serde_json::from_str::<Vec<Value>>(&self.ok(&["vm", "ls", "-o", "json"])).unwrap()
    }

    fn run_dirs(&self) -> usize {
        std::fs::read_dir(self.env.root_dir().join("run/vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The running VMM's command line (after the binary), from /proc.
fn vmm_argv(vm: &Value) -> Vec<String> {
    let pid = vm["vmm"]["pid"].as_u64().expect("a running VMM");
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .skip(1)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// The words of the launch line `vm debug` printed, after the binary
/// (single quotes as the script writes them).
fn debug_argv(script: &str) -> Vec<String> {
    let line = script
        .lines()
        .skip_while(|l| !l.starts_with("# Launch VM"))
        .nth(1)
        .expect("a launch line");
    let line = line.trim_end_matches(" &");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words.into_iter().skip(1).collect()
}

/// The value after `option` in `argv`.
fn value_of<'a>(argv: &'a [String], option: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == option)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

/// `vm debug` prints the memory options and devices Cloud Hypervisor then
/// gets: KSM, shared memory and huge pages on `--memory`, no watchdog and
/// no balloon; the record keeps each switch.
/// `--memory` without the hot-plug room (the host's RAM less the VM's,
/// so host-dependent), which every launch must have.
fn memory_of(argv: &[String]) -> Option<&str> {
    let memory = value_of(argv, "--memory")?;
    assert!(
        memory.contains(",hotplug_method=acpi,hotplug_size="),
        "{memory}"
    );
    memory.split(",hotplug_method=").next()
}

#[test]
fn cloud_hypervisor_gets_what_debug_prints() {
    let lab = Lab::new();
    let switches = [
        "--no-balloon",
        "--no-watchdog",
        "--mergeable",
        "--hugepages",
    ];
    let debug = |extra: &[&str]| {
        let args = [
            &["vm", "debug", "--nics", "0", "--name", "d"][..],
            extra,
            &["test/guest:1"],
        ]
        .concat();
        debug_argv(&lab.ok(&args))
    };
    let printed = debug(&switches);
    let run = [
        &["vm", "run", "--nics", "0", "--name", "sw"][..],
        &switches,
        &["test/guest:1"],
    ]
    .concat();
    lab.ok(&run);
    let vm = lab.inspect("sw");
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let got = vmm_argv(&vm);
    assert_eq!(
        memory_of(&printed),
        Some("size=1073741824,mergeable=on,hugepages=on"),
        "{printed:?}"
    );
    assert_eq!(memory_of(&printed), memory_of(&got), "{got:?}");
    for absent in ["--watchdog", "--balloon"] {
        assert!(!printed.iter().any(|a| a == absent), "{printed:?}");
        assert!(!got.iter().any(|a| a == absent), "{got:?}");
    }
    for key in ["no_balloon", "no_watchdog", "mergeable", "hugepages"] {
        assert_eq!(vm["config"][key], true, "{key}: {vm}");
    }
    assert_eq!(vm["config"]["pci"], false);
    assert_eq!(vm["config"]["shared_memory"], false);

    // Shared memory (which KSM cannot merge: a VM has one or the other).
    let printed = debug(&["--shared-memory"]);
    assert_eq!(memory_of(&printed), Some("size=1073741824,shared=on"));
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--name",
        "sh",
        "--shared-memory",
        "test/guest:1",
    ]);
    let vm = lab.inspect("sh");
    let _reaper_sh = Reaper(cocoon_testkit::processes_of(&vm));
    assert_eq!(memory_of(&vmm_argv(&vm)), memory_of(&printed));
    assert_eq!(vm["config"]["shared_memory"], true);

    // Without switches: a watchdog, a balloon, plain memory (never huge
    // pages from host state), as the fake VMM gets them.
    let plain = debug(&[]);
    assert_eq!(memory_of(&plain), Some("size=1073741824"));
    assert!(plain.iter().any(|a| a == "--watchdog"), "{plain:?}");
    assert!(
        value_of(&plain, "--balloon").is_some_and(|b| b.starts_with("size=268435456,")),
        "{plain:?}"
    );
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--name",
        "plain",
        "test/guest:1",
    ]);
    let vm = lab.inspect("plain");
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let got = vmm_argv(&vm);
    assert_eq!(memory_of(&got), Some("size=1073741824"));
    assert!(got.iter().any(|a| a == "--watchdog"), "{got:?}");
    assert_eq!(value_of(&got, "--balloon"), value_of(&plain, "--balloon"));
    for vm in ["sw", "sh", "plain"] {
        lab.ok(&["vm", "rm", "--force", vm]);
    }
}

/// The (path, body) `PUT` lines of the fake's body log.
fn made_calls(log: &str) -> Vec<(String, Value)> {
    log.lines()
        .filter(|l| l.starts_with("PUT "))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (_, path, body) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
            (path.to_string(), serde_json::from_str(body).unwrap())
        })
        .collect()
}

/// The calls the config file of a debug script stands for.
fn printed_calls(script: &str) -> Vec<(String, Value)> {
    cocoon_testkit::fc_config::calls(&cocoon_testkit::fc_config::printed(script)).unwrap()
}

/// Debug plans a fresh ID: paths and the `--id` differ only there.
fn without_ids(text: &str) -> String {
    let mut out = text.to_string();
    for token in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let id = token.len() == 26
            && token
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if id {
            out = out.replace(token, "<id>");
        }
    }
    out
}

/// Firecracker with `--pci --no-balloon --no-watchdog`: `--enable-pci` on
/// its command line, no `pci=off` for the guest, no balloon call; the
/// debug script shows exactly that.
#[test]
fn firecracker_gets_what_debug_prints() {
    let mut lab = Lab::new();
    let bodies = lab.env.path().join("bodies.log");
    lab.extra_env.push((
        "COCOON_FAKE_VMM_BODIES".into(),
        bodies.display().to_string(),
    ));
    let flags = [
        "--fc",
        "--nics",
        "0",
        "--pci",
        "--no-balloon",
        "--no-watchdog",
    ];
    let script = lab.ok(&[
        &["vm", "debug", "--name", "f"][..],
        &flags,
        &["test/guest:1"],
    ]
    .concat());
    lab.ok(&[&["vm", "run", "--name", "f"][..], &flags, &["test/guest:1"]].concat());
    let vm = lab.inspect("f");
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    let printed = debug_argv(&script);
    let got = vmm_argv(&vm);
    assert!(printed.iter().any(|a| a == "--enable-pci"), "{printed:?}");
    assert_eq!(
        without_ids(&printed.join(" ")),
        without_ids(&got.join(" ")),
        "the launch line"
    );
    let made = made_calls(&std::fs::read_to_string(&bodies).unwrap());
    let shown = printed_calls(&script);
    assert_eq!(made.len(), shown.len(), "made {made:?}\nprinted {shown:?}");
    for ((mp, mb), (pp, pb)) in made.iter().zip(&shown) {
        assert_eq!(mp, pp);
        assert_eq!(without_ids(&mb.to_string()), without_ids(&pb.to_string()));
    }
    assert!(!made.iter().any(|(p, _)| p == "/balloon"), "{made:?}");
    let boot = &made.iter().find(|(p, _)| p == "/boot-source").unwrap().1;
    let cmdline = boot["boot_args"].as_str().unwrap();
    assert!(!cmdline.contains("pci=off"), "{cmdline}");
    let machine = &made.iter().find(|(p, _)| p == "/machine-config").unwrap().1;
    assert_eq!(machine["huge_pages"], "None");
    assert_eq!(vm["config"]["pci"], true);

    // Without --pci: MMIO, and the guest is told so.
    let script = lab.ok(&["vm", "debug", "--fc", "--nics", "0", "test/guest:1"]);
    assert!(!debug_argv(&script).iter().any(|a| a == "--enable-pci"));
    assert!(script.contains("pci=off"), "{script}");
    assert!(script.contains("\"balloon\""), "{script}");
    lab.ok(&["vm", "rm", "--force", "f"]);
}

/// Every switch a VMM cannot take is refused before anything is made.
#[test]
fn switches_a_vmm_cannot_take_are_refused() {
    let lab = Lab::new();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--mergeable", "--shared-memory"],
            "VM r: --mergeable and --shared-memory exclude each other (KSM merges only private guest memory, and Cloud Hypervisor refuses both); create it with one of them",
        ),
        (
            &["--fc", "--hugepages"],
            "VM r: Firecracker cannot take --hugepages: its snapshots of huge-page memory cannot be mapped back on restore or clone; create it without --hugepages, or on another VMM (--hypervisor)",
        ),
        (
            &["--fc", "--mergeable"],
            "VM r: Firecracker cannot take --mergeable: it has no switch to make guest memory KSM-mergeable; create it without --mergeable, or on another VMM (--hypervisor)",
        ),
        (
            &["--fc", "--shared-memory"],
            "VM r: Firecracker cannot take --shared-memory: it has no shared guest memory option; create it without --shared-memory, or on another VMM (--hypervisor)",
        ),
        (
            &["--pci"],
            "VM r: Cloud Hypervisor cannot take --pci: its devices are always on virtio-pci (--pci switches Firecracker's transport); create it without --pci, or on another VMM (--hypervisor)",
        ),
        (
            &["--no-hotplug"],
            "VM r: Cloud Hypervisor cannot take --no-hotplug: it hot-plugs on its own PCI bus, with no slots made at launch to leave out (--no-hotplug is QEMU's); create it without --no-hotplug, or on another VMM (--hypervisor)",
        ),
        (
            &["--fc", "--no-hotplug"],
            "VM r: Firecracker cannot take --no-hotplug: it makes no hot-plug slots to leave out (--no-hotplug is QEMU's); create it without --no-hotplug, or on another VMM (--hypervisor)",
        ),
        (
            &["--qemu", "--pci"],
            "VM r: QEMU cannot take --pci: its transport follows the machine (virtio-mmio for OCI images, virtio-pci for cloud images); --pci switches Firecracker's; create it without --pci, or on another VMM (--hypervisor)",
        ),
    ];
    for (flags, message) in cases {
        for verb in ["create", "run", "debug"] {
            let args = [
                &["vm", verb, "--nics", "0", "--name", "r"][..],
                flags,
                &["test/guest:1"],
            ]
            .concat();
            let err = lab.fail(&args);
            assert!(err.contains(message), "{args:?}: {err}");
        }
    }
    assert!(lab.vms().is_empty());
    assert_eq!(lab.run_dirs(), 0);
}

/// A snapshot's switches go into its clones and restores; asking a clone
/// or a restore for one the snapshot was taken without is refused, and
/// leaves the source and every VM as they were.
#[test]
fn clones_and_restores_keep_the_snapshot_switches() {
    let lab = Lab::new();
    lab.ok(&[
        "vm",
        "run",
        "--nics",
        "0",
        "--name",
        "src",
        "--no-balloon",
        "--no-watchdog",
        "--mergeable",
        "test/guest:1",
    ]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&lab.inspect("src")));
    lab.ok(&["snapshot", "save", "--name", "s", "src"]);
    let snapshot: Value = serde_json::from_str(&lab.ok(&["snapshot", "inspect", "s"])).unwrap();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(snapshot["data_dir"].as_str().unwrap()).join("cocoon.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["source"]["no_balloon"], true, "{manifest}");
    assert_eq!(manifest["source"]["mergeable"], true, "{manifest}");

    lab.ok(&["vm", "clone", "--name", "c1", "s"]);
    let c1 = lab.inspect("c1");
    let _reaper1 = Reaper(cocoon_testkit::processes_of(&c1));
    for key in ["no_balloon", "no_watchdog", "mergeable"] {
        assert_eq!(c1["config"][key], true, "{key}: {c1}");
    }
    assert_eq!(c1["config"]["hugepages"], false);
    // The clone's VMM state is the snapshot's: no balloon, no watchdog.
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(c1["run_dir"].as_str().unwrap()).join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(config["balloon"].is_null(), "{config}");
    assert_ne!(config["watchdog"], true, "{config}");
    // Restating the snapshot's switches is fine.
    lab.ok(&[
        "vm",
        "clone",
        "--name",
        "c2",
        "--no-balloon",
        "--mergeable",
        "s",
    ]);
    let _reaper2 = Reaper(cocoon_testkit::processes_of(&lab.inspect("c2")));

    let before = lab.vms().len();
    let dirs = lab.run_dirs();
    let err = lab.fail(&["vm", "clone", "--name", "c3", "--shared-memory", "s"]);
    assert!(
        err.contains("snapshot s was taken without --shared-memory: a VM restored or cloned from it keeps the snapshot's devices and memory backing; leave out --shared-memory, or create a new VM with it"),
        "{err}"
    );
    let err = lab.fail(&["vm", "restore", "--hugepages", "src", "s"]);
    assert!(
        err.contains("snapshot s was taken without --hugepages: a VM restored or cloned from it keeps the snapshot's devices and memory backing; leave out --hugepages, or create a new VM with it"),
        "{err}"
    );
    assert_eq!(lab.vms().len(), before);
    assert_eq!(lab.run_dirs(), dirs);
    let src = lab.inspect("src");
    assert_eq!(src["state"], "running");
    assert_eq!(src["config"]["hugepages"], false);
    assert!(cocoon_engine::supervise::is_running(
        &cocoon_testkit::processes_of(&src)[0]
    ));

    // A restore keeps them too.
    lab.ok(&["vm", "restore", "--no-watchdog", "src", "s"]);
    let src = lab.inspect("src");
    let _reaper3 = Reaper(cocoon_testkit::processes_of(&src));
    assert_eq!(src["config"]["no_watchdog"], true);
    for vm in ["src", "c1", "c2"] {
        lab.ok(&["vm", "rm", "--force", vm]);
    }
}

/// A snapshot directory whose manifest claims a switch its VMM cannot take
/// (edited, or from elsewhere) is refused by clone, and nothing is made.
#[test]
fn a_snapshot_claiming_a_switch_its_vmm_refuses_is_not_cloned() {
    let lab = Lab::new();
    lab.ok(&["vm", "run", "--nics", "0", "--name", "src", "test/guest:1"]);
    let _reaper = Reaper(cocoon_testkit::processes_of(&lab.inspect("src")));
    lab.ok(&["snapshot", "save", "--name", "s", "src"]);
    let dir = lab.env.path().join("exported");
    lab.ok(&["snapshot", "export", "--to-dir", dir.to_str().unwrap(), "s"]);
    let manifest_path = dir.join("cocoon.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["source"]["pci"] = Value::Bool(true);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let before = lab.vms().len();
    let dirs = lab.run_dirs();
    let err = lab.fail(&["vm", "clone", "--from-dir", dir.to_str().unwrap()]);
    assert!(
        err.contains("records --pci, which Cloud Hypervisor cannot take (its devices are always on virtio-pci (--pci switches Firecracker's transport)); it cannot be restored or cloned"),
        "{err}"
    );
    assert_eq!(lab.vms().len(), before);
    assert_eq!(lab.run_dirs(), dirs);
    let snapshots: Vec<Value> =
        serde_json::from_str(&lab.ok(&["snapshot", "ls", "-o", "json"])).unwrap();
    assert_eq!(snapshots.len(), 1, "the import was dropped: {snapshots:?}");
    lab.ok(&["vm", "rm", "--force", "src"]);
}
