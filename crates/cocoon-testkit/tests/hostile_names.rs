//! Hostile names in the state database, through the real `cocoon` binary
//! against the fake VMMs. A VM or snapshot record whose name was rewritten
//! behind the engine's back (`../../etc/cron.d/x`, in the name column and
//! the document) is refused when it is read, with the exact name rule, by
//! every command that reads it: it never becomes a path (`snapshot export`
//! without -o names its file after the snapshot), a hostname or a table
//! cell. The working directory and a sentinel tree beside the engine's
//! directories stay as they were, and nothing named after it appears.

mod hostile_support;

use std::path::{Path, PathBuf};

use cocoon_testkit::CocoonEnv;
use cocoon_testkit::Reaper;
use hostile_support::{assert_success, assert_unchanged, plant, snapshot};
use serde_json::Value;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vmm");
const BAD: &str = "../../etc/cron.d/x";
const RULE: &str = "must start with a letter or digit and contain only letters, digits, '.', '_' or '-' (at most 63 characters)";

struct Lab {
    env: CocoonEnv,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            env: CocoonEnv::new(cocoon_testkit::cocoon_bin()),
        };
        let layer = cocoon_testkit::guest::boot_layer("6.1", b"initrd").build();
        let tar = lab.env.path().join("layer.tar");
        std::fs::write(&tar, layer).unwrap();
        lab.ok(&["image", "import", "test/guest:1", tar.to_str().unwrap()]);
        lab
    }

    fn ok(&self, args: &[&str]) -> String {
        cocoon_testkit::run_ok(self.env.fake_vmm_cmd(FAKE), args)
    }

    /// Runs `args` in `cwd`, asserts it failed, returns its stderr.
    fn fail_in(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self
            .env
            .fake_vmm_cmd(FAKE)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(!out.status.success(), "cocoon {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn id_of(&self, kind: &str, name: &str) -> String {
        let doc: Value = serde_json::from_str(&self.ok(&[kind, "inspect", name])).unwrap();
        doc["id"].as_str().unwrap().to_string()
    }

    /// Rewrites one record's name, column and document, as an attacker
    /// with write access to cocoon.db (or an old bug) would.
    fn doctor(&self, sql: &str, id: &str) {
        let mut store = cocoon_engine::store::Store::open(&self.env.db_path()).unwrap();
        store
            .write(|tx| {
                assert_eq!(tx.execute(sql, [id, BAD])?, 1);
                Ok(())
            })
            .unwrap();
    }
}

/// Every path under `dir` whose name mentions the hostile name (by name
/// only: the VMs' disks are large sparse files, not to be read).
fn named_after_it(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().contains("cron") {
                found.push(entry.path());
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// Runs each command, expecting the corrupt-record refusal of `kind` `id`.
fn all_refused(lab: &Lab, cwd: &Path, kind: &str, id: &str, commands: &[&[&str]]) {
    let expected = format!(
        "Error: corrupt {kind} record {id} in the state database: invalid {kind} name {BAD:?}: {RULE}"
    );
    for args in commands {
        let err = lab.fail_in(cwd, args);
        assert!(err.starts_with(&expected), "{args:?}: {err}");
    }
}

#[test]
fn a_vm_record_with_a_bad_name_is_refused_when_read() {
    let lab = Lab::new();
    lab.ok(&["vm", "create", "--nics", "0", "--name", "v", "test/guest:1"]);
    let id = lab.id_of("vm", "v");
    lab.doctor(
        "UPDATE vms SET name = ?2, doc = json_set(doc, '$.config.name', ?2) WHERE id = ?1",
        &id,
    );
    let host = plant(lab.env.path());
    let before = snapshot(&host, &[]);
    let cwd = lab.env.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    all_refused(
        &lab,
        &cwd,
        "VM",
        &id,
        &[
            &["vm", "inspect", &id],
            &["vm", "ls"],
            &["vm", "start", &id],
            &["vm", "rm", "--force", &id],
            &["vm", "logs", &id],
            &["snapshot", "save", "--name", "s", &id],
        ],
    );
    // Not started, not removed: the record and its directories are as they were.
    let run_dir = lab.env.root_dir().join("run/vms").join(&id);
    assert!(run_dir.is_dir(), "{}", run_dir.display());
    assert_unchanged(&before, &snapshot(&host, &[]));
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
    assert_eq!(named_after_it(lab.env.path()), Vec::<PathBuf>::new());
}

/// `snapshot export` without -o writes `<name>.tar.zst` in the working
/// directory; of a record whose name was made a path, it writes nothing.
#[test]
fn export_without_output_names_its_file_only_after_a_valid_name() {
    let lab = Lab::new();
    lab.ok(&["vm", "run", "--nics", "0", "--name", "e", "test/guest:1"]);
    let vm: Value = serde_json::from_str(&lab.ok(&["vm", "inspect", "e"])).unwrap();
    let _reaper = Reaper(cocoon_testkit::processes_of(&vm));
    lab.ok(&["snapshot", "save", "--name", "s", "e"]);
    let id = lab.id_of("snapshot", "s");
    let cwd = lab.env.path().join("a/b/cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = lab
        .env
        .fake_vmm_cmd(FAKE)
        .args(["snapshot", "export", &id])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert_success(&out);
    let names: Vec<String> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["s.tar.zst"]);
    std::fs::remove_file(cwd.join("s.tar.zst")).unwrap();

    lab.doctor(
        "UPDATE snapshots SET name = ?2, doc = json_set(doc, '$.name', ?2) WHERE id = ?1",
        &id,
    );
    let host = plant(lab.env.path());
    let before = snapshot(&host, &[]);
    all_refused(
        &lab,
        &cwd,
        "snapshot",
        &id,
        &[
            &["snapshot", "export", &id],
            &["snapshot", "export", "-o", "-", &id],
            &["snapshot", "inspect", &id],
            &["snapshot", "ls"],
            &["vm", "clone", "--name", "c", &id],
        ],
    );
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
    assert_unchanged(&before, &snapshot(&host, &[]));
    assert_eq!(named_after_it(lab.env.path()), Vec::<PathBuf>::new());
    assert!(!lab.env.path().join("a/etc").exists());
    assert!(!lab.env.path().join("etc").exists());
    // The VM's own record is untouched by its snapshot's.
    lab.ok(&["vm", "rm", "--force", "e"]);
}
