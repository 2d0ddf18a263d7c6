//! Concurrency through the real `cocoon` binary against the fake VMMs: the
//! same operation from several processes at once (two `vm start X`, a
//! `snapshot save` racing a `vm stop`, clone storms of one snapshot, `gc`
//! while a pull runs), and a stress run of 16 CLI processes doing every
//! lifecycle operation on shared images for 60 seconds. After each, the
//! installation must hold exactly what its records say.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::registry::layers::LayerBuilder;
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");

fn bin() -> String {
    cocoon_testkit::cocoon_bin()
}

struct Lab {
    env: CocoonEnv,
}

impl Drop for Lab {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.env.root_dir());
    }
}

fn layer(tag: &str) -> Vec<u8> {
    cocoon_testkit::guest::boot_layer("6.1", tag.as_bytes())
        .file("etc/tag", tag.as_bytes())
        .build()
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(bin()),
        };
        for (name, tag) in [("test/a:1", "a"), ("test/b:1", "b")] {
            let file = lab.env.path().join(format!("{tag}.tar"));
            std::fs::write(&file, layer(tag)).unwrap();
            lab.ok(&["image", "import", name, file.to_str().unwrap()]);
        }
        lab
    }

    fn cmd(&self) -> std::process::Command {
        self.env.fake_vmm_cmd(FAKE)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.cmd(), args)
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn vms(&self) -> Vec<Value> {
        self.json(&["vm", "ls", "-o", "json"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// Makes everything in the image store look two hours old: past gc's
    /// grace period for unpinned blobs (it spares young ones, which a pull
    /// may be about to record), as if that time had passed.
    fn age_images(&self) {
        let aged = std::process::Command::new("find")
            .arg(self.env.root_dir().join("images"))
            .args(["-exec", "touch", "-h", "-d", "2 hours ago", "{}", "+"])
            .status()
            .unwrap();
        assert!(aged.success());
    }

    /// Runs every command at once, one process each; returns their outputs.
    fn all_at_once(&self, commands: &[Vec<&str>]) -> Vec<Output> {
        let barrier = std::sync::Barrier::new(commands.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = commands
                .iter()
                .map(|args| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut cmd = self.cmd();
                        cmd.args(args);
                        barrier.wait();
                        cmd.output().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// What a converged installation satisfies: no intent, no pending
    /// snapshot, running VMs have exactly one live VMM, stopped ones none,
    /// and every directory has its record.
    fn assert_consistent(&self, case: &str) {
        let vms = self.vms();
        let mut store = cocoon_engine::store::Store::open(&self.env.db_path()).unwrap();
        assert_eq!(store.intents().unwrap().len(), 0, "{case}: intents left");
        assert_eq!(
            store.pending_snapshots().unwrap().len(),
            0,
            "{case}: pending snapshot"
        );
        let ids: BTreeSet<String> = vms
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        for vm in &vms {
            let run_dir = PathBuf::from(vm["run_dir"].as_str().unwrap());
            let live = cocoon_engine::supervise::find_by_socket(&run_dir.join("api.sock"));
            match vm["state"].as_str().unwrap() {
                "running" => assert_eq!(live.len(), 1, "{case}: VMMs of {vm}"),
                "stopped" | "created" => assert!(live.is_empty(), "{case}: VMM of stopped {vm}"),
                other => panic!("{case}: VM in state {other}: {vm}"),
            }
        }
        assert_eq!(
            names(&self.env.root_dir().join("run/vms")),
            ids,
            "{case}: run dirs"
        );
        assert_eq!(
            names(&self.env.log_dir().join("vms")),
            ids,
            "{case}: log dirs"
        );
        let snapshots: BTreeSet<String> = store
            .list_snapshots(None)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            names(&self.env.root_dir().join("snapshots")),
            snapshots,
            "{case}: snapshot dirs"
        );
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_starts_of_one_vm_make_one_vmm() {
    let lab = Lab::new();
    for backend in [&[][..], &["--fc"][..]] {
        let mut args = vec!["vm", "create", "--nics", "0", "--name", "m"];
        args.extend_from_slice(backend);
        args.push("test/a:1");
        lab.ok(&args);
        let outs = lab.all_at_once(&[vec!["vm", "start", "m"], vec!["vm", "start", "m"]]);
        for out in &outs {
            assert!(out.status.success(), "{backend:?}: {}", stderr(out));
        }
        let vm = lab.json(&["vm", "inspect", "m"]);
        assert_eq!(vm["state"], "running");
        lab.assert_consistent(&format!("two starts {backend:?}"));
        lab.ok(&["vm", "rm", "--force", "m"]);
    }
}

#[test]
fn snapshot_save_racing_a_stop() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "m", "test/a:1"]);
    let mut saved = 0;
    for round in 0..4 {
        lab.ok(&["vm", "start", "m"]);
        let name = format!("s{round}");
        let outs = lab.all_at_once(&[
            vec!["snapshot", "save", "--name", &name, "m"],
            vec!["vm", "stop", "m"],
        ]);
        assert!(outs[1].status.success(), "stop: {}", stderr(&outs[1]));
        if outs[0].status.success() {
            // The save won the lock: a complete, listed snapshot.
            saved += 1;
            let snapshot = lab.json(&["snapshot", "inspect", &name]);
            assert_eq!(snapshot["name"], name.as_str());
        } else {
            // The stop won: the save found a stopped VM and says so.
            assert!(
                stderr(&outs[0]).contains("not running"),
                "round {round}: {}",
                stderr(&outs[0])
            );
        }
        assert_eq!(lab.json(&["vm", "inspect", "m"])["state"], "stopped");
        lab.assert_consistent(&format!("save vs stop, round {round}"));
    }
    eprintln!("save won {saved} of 4 races");
}

#[test]
fn clone_storm_of_one_snapshot() {
    let lab = Lab::new();
    for (backend, flags) in [("ch", &[][..]), ("fc", &["--fc"][..])] {
        let vm = format!("src-{backend}");
        let mut args = vec!["vm", "run", "--nics", "0", "--name", &vm];
        args.extend_from_slice(flags);
        args.push("test/a:1");
        lab.ok(&args);
        let snapshot = format!("s-{backend}");
        lab.ok(&["snapshot", "save", "--name", &snapshot, &vm]);
        let names: Vec<String> = (0..8).map(|i| format!("clone-{backend}-{i}")).collect();
        let commands: Vec<Vec<&str>> = names
            .iter()
            .map(|n| vec!["vm", "clone", "--name", n.as_str(), snapshot.as_str()])
            .collect();
        for (out, name) in lab.all_at_once(&commands).iter().zip(&names) {
            assert!(out.status.success(), "{name}: {}", stderr(out));
        }
        let vms = lab.vms();
        let clones: Vec<&Value> = vms
            .iter()
            .filter(|v| names.contains(&v["config"]["name"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(clones.len(), 8, "{backend}");
        let pids: BTreeSet<u64> = clones
            .iter()
            .map(|v| {
                assert_eq!(v["state"], "running", "{v}");
                v["pid"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(pids.len(), 8, "{backend}: each clone has its own VMM");
        lab.assert_consistent(&format!("clone storm {backend}"));
    }
}

/// Firecracker clones bind their disks over the paths the snapshot names,
/// in the source VM's run directory; with the source VM removed those are
/// made as mount targets. A storm of clones of such a snapshot, with gc
/// running beside it, must all come up (before the fix, one clone removed
/// the targets another was about to bind over), and leave no directory of
/// the removed VM behind.
#[test]
fn fc_clone_storm_of_a_removed_vms_snapshot_beside_gc() {
    let lab = Lab::new();
    lab.ok(&[
        "vm", "run", "--fc", "--nics", "0", "--name", "gone", "test/a:1",
    ]);
    let gone = lab.json(&["vm", "inspect", "gone"]);
    lab.ok(&["snapshot", "save", "--name", "s", "gone"]);
    lab.ok(&["vm", "rm", "--force", "gone"]);
    let source_dir = PathBuf::from(gone["run_dir"].as_str().unwrap());
    assert!(!source_dir.exists());
    for round in 0..3 {
        let names: Vec<String> = (0..6).map(|i| format!("c{round}-{i}")).collect();
        let mut commands: Vec<Vec<&str>> = names
            .iter()
            .map(|n| vec!["vm", "clone", "--name", n.as_str(), "s"])
            .collect();
        commands.push(vec!["gc"]);
        commands.push(vec!["gc"]);
        let outs = lab.all_at_once(&commands);
        for (out, args) in outs.iter().zip(&commands) {
            assert!(
                out.status.success(),
                "round {round} {args:?}: {}",
                stderr(out)
            );
        }
        for name in &names {
            assert_eq!(
                lab.json(&["vm", "inspect", name])["state"],
                "running",
                "{name}"
            );
        }
        lab.assert_consistent(&format!("FC clone storm, round {round}"));
        assert!(
            !source_dir.exists(),
            "round {round}: the removed VM's directory is back"
        );
    }
}

/// gc in a loop while a pull runs: every gc succeeds, and the pulled image
/// is whole and boots. (Freshly stored layers are also inside gc's grace
/// period; the race on old, reused layers is the next test.)
#[test]
fn gc_during_a_pull_keeps_what_the_pull_makes() {
    let Some(registry) = cocoon_testkit::registry::Registry::start() else {
        return cocoon_testkit::skip(
            "gc_during_a_pull_keeps_what_the_pull_makes",
            "docker-registry is not installed",
        );
    };
    let lab = Lab::new();
    let layers: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let mut noise = vec![0u8; 4 << 20];
            for (j, b) in noise.iter_mut().enumerate() {
                // Noise from a multiplicative hash: the truncations are the point.
                #[allow(clippy::cast_possible_truncation)]
                let noise_byte = (j as u32).wrapping_mul(2654435761).wrapping_add(i) as u8;
                *b = noise_byte;
            }
            LayerBuilder::new()
                .file(&format!("data/{i}"), &noise)
                .build()
        })
        .chain([layer("pulled")])
        .collect();
    registry.push("vm/gc:1", &layers, "amd64");
    let reference = registry.reference("vm/gc:1");
    let done = std::sync::atomic::AtomicBool::new(false);
    let gcs = std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = lab.run(&["gc"]);
                assert!(out.status.success(), "gc: {}", stderr(&out));
                runs += 1;
            }
            runs
        });
        lab.ok(&["image", "pull", &reference]);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        collector.join().unwrap()
    });
    assert!(gcs > 0);
    // The image the pull recorded is whole and usable.
    lab.ok(&["vm", "run", "--nics", "0", "--name", "p", &reference]);
    lab.assert_consistent("gc during pull");
    let image = lab.json(&["image", "inspect", &reference]);
    let dirs = cocoon_engine::image::store::ImageDirs::new(&lab.env.root_dir());
    for layer in image["layers"].as_array().unwrap() {
        assert!(
            dirs.blob(&layer.as_str().unwrap().parse().unwrap())
                .is_file(),
            "{layer}"
        );
    }
}

/// A pull that reuses stored layers nothing pins any more (their image was
/// removed long ago) while gc runs: gc must not delete them between the
/// pull finding them and recording its image. The pull is held there by a
/// failpoint; before the fix gc removed the layers and the image was
/// recorded without its blobs.
#[test]
fn gc_keeps_old_layers_a_pull_is_reusing() {
    let test = "gc_keeps_old_layers_a_pull_is_reusing";
    let Some(registry) = cocoon_testkit::registry::Registry::start() else {
        return cocoon_testkit::skip(test, "docker-registry is not installed");
    };
    let lab = Lab::new();
    if !lab.ok(&["version"]).contains("failpoints") {
        return cocoon_testkit::skip(
            test,
            "the cocoon binary under test (COCOON_TEST_BIN) was built without failpoints",
        );
    }
    registry.push("vm/old:1", &[layer("old")], "amd64");
    let reference = registry.reference("vm/old:1");
    lab.ok(&["image", "pull", &reference]);
    let layers = lab.json(&["image", "inspect", &reference])["layers"].clone();
    lab.ok(&["image", "rm", &reference]);
    // Unpinned and past gc's grace period.
    lab.age_images();
    let pull = lab
        .cmd()
        .args(["image", "pull", &reference])
        .env("COCOON_FAILPOINTS", "image.pull.layers=sleep:1500")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.ok(&["gc"]);
    let out = pull.wait_with_output().unwrap();
    assert!(out.status.success(), "pull: {}", stderr(&out));
    // The race was really run: the pull reused the stored layer.
    assert!(
        stderr(&out).contains("0 of 1 layers fetched"),
        "the pull did not reuse the old layer: {}",
        stderr(&out)
    );
    let dirs = cocoon_engine::image::store::ImageDirs::new(&lab.env.root_dir());
    for layer in layers.as_array().unwrap() {
        assert!(
            dirs.blob(&layer.as_str().unwrap().parse().unwrap())
                .is_file(),
            "the pulled image lost layer {layer}"
        );
    }
    lab.ok(&["vm", "run", "--nics", "0", "--name", "p", &reference]);
    // Once the pull is over and the image removed again, gc does take them.
    lab.ok(&["vm", "rm", "--force", "p"]);
    lab.ok(&["image", "rm", &reference]);
    lab.age_images();
    lab.ok(&["gc"]);
    for layer in layers.as_array().unwrap() {
        assert!(
            !dirs
                .blob(&layer.as_str().unwrap().parse().unwrap())
                .exists(),
            "{layer} kept"
        );
    }
}

/// gc reads the records, then removes what they do not name: a clone or a
/// save that starts in between must keep its directories. (gc is held
/// between its read and its removals by a failpoint; before the fix it
/// removed the new VM's and snapshot's directories, as the stress run saw.)
#[test]
fn gc_never_takes_what_an_operation_starting_meanwhile_makes() {
    let lab = Lab::new();
    let version = lab.ok(&["version"]);
    if !version.contains("failpoints") {
        return cocoon_testkit::skip(
            "gc_never_takes_what_an_operation_starting_meanwhile_makes",
            "the cocoon binary under test (COCOON_TEST_BIN) was built without failpoints",
        );
    }
    lab.ok(&["vm", "run", "--nics", "0", "--name", "m", "test/a:1"]);
    lab.ok(&["snapshot", "save", "--name", "s", "m"]);
    let gc = lab
        .cmd()
        .args(["gc", "-o", "json"])
        .env("COCOON_FAILPOINTS", "gc.read=sleep:1500")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.ok(&["vm", "clone", "--name", "c", "s"]);
    lab.ok(&["snapshot", "save", "--name", "s2", "m"]);
    let out = gc.wait_with_output().unwrap();
    assert!(out.status.success(), "gc: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["removed"],
        serde_json::json!([]),
        "gc took: {report}"
    );
    let clone = lab.json(&["vm", "inspect", "c"]);
    assert_eq!(clone["state"], "running");
    for key in ["run_dir", "log_dir"] {
        assert!(Path::new(clone[key].as_str().unwrap()).is_dir(), "{key}");
    }
    let s2 = lab.json(&["snapshot", "inspect", "s2"]);
    assert!(
        Path::new(s2["data_dir"].as_str().unwrap())
            .join("cocoon.json")
            .is_file()
    );
    lab.assert_consistent("gc racing a clone and a save");
}

/// Failures a concurrent workload may see by design, each with the message
/// that explains it: another process removed the VM first, or stopped it
/// before this one could snapshot or restore it.
const EXPECTED_CONFLICTS: &[&str] = &[" not found", "is not running"];

/// 16 CLI processes at any moment, for 60 seconds: each worker loops over
/// create → start → snapshot → clone (of its own or a shared snapshot) →
/// (restore, gc, or stop/start of another worker's VM) → stop → rm, and
/// removes its snapshot half the time. Only the conflicts above may fail;
/// a round that meets one cleans up what it made and goes on. Afterwards the
/// installation is consistent, and once everything is removed a final gc
/// leaves exactly the blobs the images still reference.
#[test]
fn stress_sixteen_clis_for_sixty_seconds() {
    let lab = Lab::new();
    let seconds: u64 = std::env::var("COCOON_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    lab.ok(&["vm", "run", "--nics", "0", "--name", "base", "test/a:1"]);
    lab.ok(&["snapshot", "save", "--name", "shared", "base"]);
    lab.ok(&["vm", "stop", "base"]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let results = std::sync::Mutex::new(BTreeMap::<String, usize>::new());
    let unexpected = std::sync::Mutex::new(Vec::<String>::new());
    let conflicts = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for worker in 0..16u32 {
            let (lab, results, unexpected, conflicts) = (&lab, &results, &unexpected, &conflicts);
            s.spawn(move || {
                let mut seed = 0x9e3779b9u32.wrapping_mul(worker + 1);
                let mut rand = move |n: u32| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed % n
                };
                // Runs one command; false when it failed (as expected or not).
                let run = |args: &[&str], foreign: bool| -> bool {
                    let out = lab.run(args);
                    let op = format!("{} {}", args[0], args.get(1).unwrap_or(&""));
                    *results.lock().unwrap().entry(op).or_default() += 1;
                    if out.status.success() {
                        return true;
                    }
                    let err = stderr(&out);
                    // Only commands on another worker's VM (which may be gone
                    // or stopped), or a save or restore of one of ours that
                    // another worker may have stopped, meet conflicts.
                    let expected = if foreign {
                        EXPECTED_CONFLICTS.iter().any(|c| err.contains(c))
                    } else {
                        matches!(args[..2], ["snapshot", "save"] | ["vm", "restore"])
                            && err.contains("is not running")
                    };
                    if expected {
                        conflicts.lock().unwrap().push(format!("{args:?}: {err}"));
                    } else {
                        unexpected.lock().unwrap().push(format!("{args:?}: {err}"));
                    }
                    false
                };
                let mut round = 0;
                while Instant::now() < deadline {
                    let vm = format!("w{worker}-{round}");
                    let snap = format!("w{worker}-{round}-s");
                    let clone = format!("w{worker}-{round}-c");
                    let other = format!("w{}-{}", rand(16), round.max(1) - 1);
                    let image = if rand(2) == 0 { "test/a:1" } else { "test/b:1" };
                    let mut create = vec!["vm", "create", "--nics", "0", "--name", &vm];
                    if rand(3) == 0 {
                        create.push("--fc");
                    }
                    create.push(image);
                    round += 1;
                    if !run(&create, false) {
                        continue;
                    }
                    let mut saved = false;
                    let mut cloned = false;
                    let ok = run(&["vm", "start", &vm], false)
                        && {
                            saved = run(&["snapshot", "save", "--name", &snap, &vm], false);
                            saved
                        }
                        && {
                            let source = if rand(2) == 0 {
                                "shared"
                            } else {
                                snap.as_str()
                            };
                            cloned = run(&["vm", "clone", "--name", &clone, source], false);
                            cloned
                        }
                        && match rand(4) {
                            // Another worker's VM: a conflict there does not end our round.
                            0 => {
                                run(&["vm", "stop", &other], true);
                                true
                            }
                            1 => {
                                run(&["vm", "start", &other], true);
                                true
                            }
                            2 => run(&["gc"], false),
                            _ => run(&["vm", "restore", &vm, &snap], false),
                        };
                    if ok {
                        run(&["vm", "stop", &vm], false);
                    }
                    run(&["vm", "rm", "--force", &vm], false);
                    if cloned {
                        run(&["vm", "rm", "--force", &clone], false);
                    }
                    if saved && rand(2) == 0 {
                        run(&["snapshot", "rm", &snap], false);
                    }
                }
            });
        }
    });
    let unexpected = unexpected.into_inner().unwrap();
    let conflicts = conflicts.into_inner().unwrap();
    let results = results.into_inner().unwrap();
    let total: usize = results.values().sum();
    eprintln!(
        "stress: {total} commands in {seconds} s ({results:?}), {} expected conflicts, {} unexpected failures",
        conflicts.len(),
        unexpected.len()
    );
    for c in conflicts.iter().take(5) {
        eprintln!("  expected conflict: {c}");
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected failures, first ones:\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(total > 16 * 7, "the workload barely ran: {total} commands");
    lab.assert_consistent("after the stress run");

    // Remove everything but the images, then gc: only referenced blobs stay.
    for vm in lab.vms() {
        lab.ok(&["vm", "rm", "--force", vm["id"].as_str().unwrap()]);
    }
    let snapshots = lab.json(&["snapshot", "ls", "-o", "json"]);
    for s in snapshots.as_array().unwrap() {
        lab.ok(&["snapshot", "rm", s["id"].as_str().unwrap()]);
    }
    lab.ok(&["image", "rm", "test/b:1"]);
    lab.age_images();
    let images_dir = lab.env.root_dir().join("images");
    lab.ok(&["gc"]);
    lab.assert_consistent("after the final gc");
    let image = lab.json(&["image", "inspect", "test/a:1"]);
    let referenced: BTreeSet<String> = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let digest = l.as_str().unwrap();
            format!("{}.erofs", digest.trim_start_matches("sha256:"))
        })
        .collect();
    assert_eq!(
        names(&images_dir.join("blobs")),
        referenced,
        "blobs after the final gc"
    );
    assert!(names(&images_dir.join("tmp")).is_empty(), "work files left");
    assert!(lab.vms().is_empty());
}
