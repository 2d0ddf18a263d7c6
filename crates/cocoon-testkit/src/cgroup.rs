//! A cgroup parent made for one test on the host's real hierarchy, and
//! removed (with every VM group left in it) when the test ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use cocoon_engine::cgroup::{CgroupHost, Controller, VmGroup};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestParent {
    pub host: CgroupHost,
    /// Relative to each hierarchy: what `cgroup_parent` is set to.
    pub name: PathBuf,
}

impl TestParent {
    /// None (after saying so on stderr) where this host's cgroups cannot be
    /// written: no cpu controller, or not root.
    pub fn new(test: &str) -> Option<TestParent> {
        let Some(host) = CgroupHost::detect() else {
            eprintln!("SKIPPED {test}: no cgroup cpu controller on this host");
            return None;
        };
        let name = PathBuf::from(format!(
            "cocoon-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let cpu = host.hierarchy(Controller::Cpu)?.root.join(&name);
        if let Err(e) = std::fs::create_dir(&cpu) {
            eprintln!("SKIPPED {test}: cannot make a cgroup ({e})");
            return None;
        }
        let _ = std::fs::remove_dir(&cpu);
        Some(TestParent { host, name })
    }

    pub fn env(&self) -> (String, String) {
        (
            "COCOON_CGROUP_PARENT".into(),
            self.name.display().to_string(),
        )
    }

    pub fn group(&self, vm_id: &str) -> VmGroup {
        self.host.group(&self.name, vm_id)
    }

    /// The VM groups under the parent, in any hierarchy.
    pub fn vm_groups(&self) -> Vec<String> {
        self.host.vm_groups(&self.name)
    }

    pub fn dir(&self, controller: Controller) -> Option<PathBuf> {
        Some(self.host.hierarchy(controller)?.root.join(&self.name))
    }
}

/// The cgroup path `/proc/<pid>/cgroup` (or its text) gives for `controller`.
pub fn path_in(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        wanted.then(|| path.to_string())
    })
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes an environment's cgroup parent and the empty groups in it (and
/// `cocoon-tests` once no environment uses it); best effort.
pub fn remove_parent(name: &Path) {
    let Some(host) = CgroupHost::detect() else {
        return;
    };
    for h in &host.hierarchies {
        let dir = h.root.join(name);
        // Only the environment's own group: the shared `cocoon-tests` above
        // it stays, or a parallel test creating its group there could find
        // it gone between its two mkdirs.
        if dir.is_dir() {
            remove_tree(&dir);
        }
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        for id in self.vm_groups() {
            let _ = self.group(&id).remove();
        }
        for h in &self.host.hierarchies {
            remove_tree(&h.root.join(&self.name));
        }
    }
}
