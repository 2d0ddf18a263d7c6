//! The real VMMs behind what only the fake VMMs covered before: data disks,
//! NICs and the balloon as each VMM reports them, clones that open their own
//! disks and TAPs (inside their own namespaces), clones and restores that
//! keep the snapshot's CPUs and memory, on-demand restore, and the console carrying on
//! across restore and clone. Everything goes through the `cocoon` CLI; the
//! VMMs' own APIs (vmm_api) and /proc are the witnesses. On both Cloud
//! Hypervisor and Firecracker, or the exact refusal where a backend lacks
//! the feature.
//!
//! Every test runs cocoon inside a network namespace it creates, with
//! Debian's CNI plugins (vm_network/netlab.rs), so NICs are real TAPs.
//! Needs the VMMs (PATH or COCOON_CH_BINARY / COCOON_FC_BINARY), /dev/kvm and
//! /usr/lib/cni; says SKIPPED loudly otherwise.

#[path = "vm_network/netlab.rs"]
#[allow(dead_code)]
mod netlab;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cocoon_engine::net::netns;
use cocoon_testkit::guest::{
    COUNT_PREFIX, HEARTBEAT_PREFIX, QUERY, heartbeats, heartbeats_since, last_drop,
};
use cocoon_testkit::{real_vmm, require_real_vmm, skip};
use netlab::{NetLab, sh};
use serde_json::Value;

/// Kills every VMM and relay under the lab's root when a test ends (before
/// the lab removes the VMs and namespaces), whatever the test recorded.
struct KillAll(PathBuf);

impl Drop for KillAll {
    fn drop(&mut self) {
        cocoon_testkit::kill_all_under(&self.0);
    }
}

/// A lab whose cocoon runs the real VMMs; None (after a loud skip) without
/// the backend's VMM, /dev/kvm or the CNI plugins.
fn real_lab(test: &str, fc: bool) -> Option<NetLab> {
    let found = if fc {
        require_real_vmm(test, "COCOON_FC_BINARY", "firecracker")
    } else {
        require_real_vmm(test, "COCOON_CH_BINARY", "cloud-hypervisor")
    };
    found.as_ref()?;
    if !Path::new("/dev/kvm").exists() {
        skip(test, "/dev/kvm is missing");
        return None;
    }
    let mut lab = NetLab::new(test, Value::Null)?;
    lab.ch = real_vmm("COCOON_CH_BINARY", "cloud-hypervisor").unwrap_or_default();
    lab.fc = real_vmm("COCOON_FC_BINARY", "firecracker").unwrap_or_default();
    Some(lab)
}

fn test_name(base: &str, fc: bool) -> String {
    format!(
        "{base}_on_{}",
        if fc {
            "firecracker"
        } else {
            "cloud_hypervisor"
        }
    )
}

/// `cocoon vm run` of the test guest: 1 vCPU, 512 MiB, then `extra`.
fn run_vm(lab: &NetLab, name: &str, fc: bool, extra: &[&str]) -> Value {
    let mut args = vec![
        "vm", "run", "--memory", "512M", "--cpu", "1", "--name", name,
    ];
    args.extend_from_slice(extra);
    if fc {
        args.push("--fc");
    }
    args.push("test/guest:1");
    lab.ok(&args);
    lab.inspect(name)
}

/// The command's stderr; it must fail.
fn refused(lab: &NetLab, args: &[&str]) -> String {
    let out = lab.cmd().args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "cocoon {args:?} should have been refused; it printed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn logs(lab: &NetLab, vm: &str) -> String {
    lab.ok(&["vm", "logs", vm])
}

/// Waits (20 s at most) until `vm logs` of `vm` satisfies `done`; returns that log.
fn wait_log(lab: &NetLab, vm: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = logs(lab, vm);
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{vm}: never saw {what} in `vm logs`:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `vm`'s log shows a heartbeat of at least `n`.
fn wait_beat(lab: &NetLab, vm: &str, n: u64) -> String {
    wait_log(lab, vm, &format!("a heartbeat >= {n}"), |log| {
        heartbeats(log).last().is_some_and(|b| *b >= n)
    })
}

/// After an operation that replaced `vm`'s guest with the snapshot's (whose
/// count was in `lo..=hi`): the log since `before` (the log's length before
/// the operation) has the count go down, to the snapshot's, then go on
/// counting. Returns the beats seen since the operation.
fn wait_count_back(lab: &NetLab, vm: &str, before: usize, lo: u64, hi: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = logs(lab, vm);
        // From the first whole line after what was there before, preceded by
        // the last beat before it, so a drop right at the operation shows.
        let beats = heartbeats_since(&log, before);
        if let Some(k) = last_drop(&beats) {
            assert!(
                beats[k] >= lo && beats[k] <= hi + 1,
                "{vm}: the restored guest counts from {}, the snapshot's count was {lo}..={hi}: {beats:?}",
                beats[k]
            );
            // ...and goes on counting from there.
            if beats.len() >= k + 2 {
                assert!(
                    beats[k..].windows(2).all(|w| w[1] == w[0] + 1),
                    "{vm}: the count after the restore skips or repeats: {beats:?}"
                );
                return beats[k..].to_vec();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{vm}: the count never went back to {lo}..={hi} and on: {beats:?} in the log since the operation:\n{}",
            &log[before.min(log.len())..]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// For a clone: its log shows a first heartbeat of the snapshot's count
/// (`lo..=hi`, +1 for the beat due) and then at least two more, in order.
fn wait_clone_counts(lab: &NetLab, vm: &str, lo: u64, hi: u64) -> Vec<u64> {
    let log = wait_log(lab, vm, "three heartbeats", |log| {
        heartbeats(log).len() >= 3
    });
    let beats = heartbeats(&log);
    assert!(
        beats[0] >= lo && beats[0] <= hi + 1,
        "{vm}: the clone counts from {}, the snapshot's count was {lo}..={hi}: {beats:?}",
        beats[0]
    );
    assert!(
        beats.windows(2).all(|w| w[1] == w[0] + 1),
        "{vm}: the clone's count skips or repeats: {beats:?}"
    );
    beats
}

/// `cocoon vm console VM` on a fresh PTY, as a user's terminal would run it.
struct ConsoleSession {
    child: std::process::Child,
    master: std::fs::File,
    seen: Vec<u8>,
    vm: String,
}

impl ConsoleSession {
    fn open(lab: &NetLab, vm: &str) -> ConsoleSession {
        let (master, slave) = pty();
        let mut cmd = lab.cmd();
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        cmd.args(["vm", "console", vm])
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        let child = cmd.spawn().unwrap();
        drop(slave);
        // Non-blocking reads so waits can time out.
        // SAFETY: fcntl(F_SETFL) on the PTY master this session owns and keeps open.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut session = ConsoleSession {
            child,
            master: std::fs::File::from(master),
            seen: Vec::new(),
            vm: vm.to_string(),
        };
        session.wait_for(&format!("Connected to {vm}"), |s| {
            s.contains(&format!("Connected to {vm}"))
        });
        session
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while !done(&self.text()) {
            assert!(
                Instant::now() < deadline,
                "the console of {} never showed {what}; saw:\n{}",
                self.vm,
                self.text()
            );
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Asks the guest for its count (`?` → `count=<n>`) and returns the
    /// answer. A `?` typed while `vm console` is still setting its terminal
    /// up is lost (the terminal discards it), so it is sent again every 2 s
    /// until the guest answers.
    fn count(&mut self) -> u64 {
        let before = cocoon_testkit::guest::counts(&self.text()).len();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            self.master.write_all(&[QUERY]).unwrap();
            let resend = Instant::now() + Duration::from_secs(2);
            while Instant::now() < resend {
                let answers = cocoon_testkit::guest::counts(&self.text());
                if answers.len() > before {
                    return answers[before];
                }
                match self.master.read(&mut buf) {
                    Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            assert!(
                Instant::now() < deadline,
                "the console of {} never showed a {COUNT_PREFIX} answer; saw:\n{}",
                self.vm,
                self.text()
            );
        }
    }

    fn close(mut self) {
        self.master.write_all(&[0x1d, b'.']).unwrap();
        let vm = self.vm.clone();
        self.wait_for("the detach", |t| {
            t.contains(&format!("Disconnected from {vm}"))
        });
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: plain libc PTY calls on fds we take ownership of.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(slave >= 0);
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    }
}

/// Saves `vm` as snapshot `name`, asking the guest its count just before
/// and just after: the snapshot's count lies between the two answers.
fn save(lab: &NetLab, vm: &str, name: &str) -> (u64, u64) {
    let mut console = ConsoleSession::open(lab, vm);
    let lo = console.count();
    lab.ok(&["snapshot", "save", "--name", name, vm]);
    let hi = console.count();
    console.close();
    assert!(lo <= hi, "{vm}: count {lo} before the save, {hi} after");
    (lo, hi)
}

fn pid_of(vm: &Value) -> u32 {
    vm["vmm"]["identity"]["pid"]
        .as_u64()
        .or_else(|| vm["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("no VMM pid in {vm:#}"))
}

fn api_socket(vm: &Value) -> PathBuf {
    PathBuf::from(vm["run_dir"].as_str().unwrap()).join("api.sock")
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// CH's `vm.info` config, or FC's `GET /vm/config`, as JSON.
fn vmm_config(fc: bool, vm: &Value) -> Value {
    let socket = api_socket(vm);
    if fc {
        serde_json::to_value(block_on(vmm_api::fc::Firecracker::new(&socket).vm_config()).unwrap())
            .unwrap()
    } else {
        block_on(vmm_api::ch::CloudHypervisor::new(&socket).info())
            .unwrap()
            .config
    }
}

/// (vCPUs, memory in bytes) as the VMM itself reports them.
fn vmm_cpu_memory(fc: bool, vm: &Value) -> (u64, u64) {
    let config = vmm_config(fc, vm);
    if fc {
        let m = &config["machine-config"];
        (
            m["vcpu_count"].as_u64().unwrap(),
            m["mem_size_mib"].as_u64().unwrap() << 20,
        )
    } else {
        (
            config["cpus"]["boot_vcpus"].as_u64().unwrap(),
            config["memory"]["size"].as_u64().unwrap(),
        )
    }
}

/// A regular file a process holds open.
#[derive(Debug)]
struct OpenFile {
    link: PathBuf,
    dev: u64,
    ino: u64,
    /// Opened O_RDONLY (fdinfo `flags`).
    read_only: bool,
}

/// The regular files `pid` holds open (`/proc/<pid>/fd`, stat'ed through
/// the link, so a file bind-mounted in the VMM's mount namespace shows as
/// the file it really is).
fn open_files(pid: u32) -> Vec<OpenFile> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.is_file() {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(libc::O_RDWR as u32);
            files.push(OpenFile {
                link: std::fs::read_link(entry.path()).unwrap_or_default(),
                dev: meta.dev(),
                ino: meta.ino(),
                read_only: flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32,
            });
        }
    }
    files
}

/// The TAP devices `pid` holds open (`iff:` of its tun fds' fdinfo).
fn open_taps(pid: u32) -> BTreeSet<String> {
    let mut taps = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in info.lines() {
            if let Some(name) = line.strip_prefix("iff:") {
                taps.insert(name.trim().to_string());
            }
        }
    }
    taps
}

fn file_id(path: &str) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.dev(), meta.ino())
}

fn storage(vm: &Value) -> Vec<Value> {
    vm["storage_configs"].as_array().unwrap().clone()
}

fn taps_of(vm: &Value) -> BTreeSet<String> {
    vm["network_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["tap"].as_str().unwrap().to_string())
        .collect()
}

fn netns_inode(vm: &Value) -> u64 {
    let ns = netns::path_for(vm["id"].as_str().unwrap());
    std::fs::metadata(&ns)
        .unwrap_or_else(|e| panic!("{}: {e}", ns.display()))
        .ino()
}

/// The VMM of `vm` runs in the VM's namespace and holds the VM's TAPs open,
/// which are up (carrier: a process has them open) in there, and none of
/// `foreign` (another VM's TAP names). `throwaway` (a CH clone): CH restored
/// the snapshot's NIC on a TAP it made itself under the source's name inside
/// the clone's namespace before cocoon hot-swapped it; CH keeps that one
/// open while the guest has not acknowledged the unplug (the test kernel has
/// no ACPI). It is allowed when it is such a throwaway: a non-persistent
/// TAP in the clone's own namespace, not the source's (cocoon's are
/// persistent), and no longer in the VMM's config.
fn assert_own_taps(what: &str, vm: &Value, foreign: &BTreeSet<String>, throwaway: bool) {
    let pid = pid_of(vm);
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let id = vm["id"].as_str().unwrap();
    assert_eq!(
        ns,
        netns_inode(vm),
        "{what}: the VMM (pid {pid}) is not in the VM's namespace cocoon-{id}"
    );
    let open = open_taps(pid);
    let own = taps_of(vm);
    assert!(
        open.is_superset(&own),
        "{what}: the VMM (pid {pid}) holds TAPs {open:?} open, the VM's are {own:?}"
    );
    for tap in &own {
        let link = sh(&[
            "ip",
            "-n",
            &format!("cocoon-{id}"),
            "-d",
            "link",
            "show",
            tap,
        ]);
        assert!(
            link.contains("LOWER_UP") && link.contains("persist on"),
            "{what}: {tap} in cocoon-{id} is not cocoon's TAP with a carrier: {link}"
        );
    }
    let extra: BTreeSet<&String> = open.difference(&own).collect();
    if !throwaway {
        assert!(
            extra.is_empty(),
            "{what}: the VMM (pid {pid}) holds TAPs {open:?} open, the VM's are {own:?}"
        );
    }
    for tap in extra {
        // Only a CH clone gets here.
        let configured = vmm_config(false, vm)["net"].to_string();
        assert!(
            foreign.contains(tap),
            "{what}: the VMM (pid {pid}) holds TAP {tap} open, neither the VM's {own:?} nor the snapshot's {foreign:?}"
        );
        let link = sh(&[
            "ip",
            "-n",
            &format!("cocoon-{id}"),
            "-d",
            "link",
            "show",
            tap,
        ]);
        assert!(
            link.contains("persist off"),
            "{what}: the VMM (pid {pid}) holds {tap} open, which in cocoon-{id} is not CH's own throwaway TAP: {link}"
        );
        assert!(
            !configured.contains(tap.as_str()),
            "{what}: the VMM still has {tap} configured: {configured}"
        );
        eprintln!(
            "{what}: note: CH still holds the hot-unplugged NIC's throwaway TAP {tap} (in cocoon-{id}) open"
        );
    }
}

/// Item by item, the VMM reports the VM's disks, NICs and balloon. A
/// Firecracker clone's VMM names its writable disks by the paths in the
/// snapshot (`cloned_from`'s, bind-mounted over by the clone's copies in its
/// mount namespace; the open files are checked by inode elsewhere).
fn assert_vmm_devices(what: &str, fc: bool, vm: &Value, cloned_from: Option<&Value>) {
    let config = vmm_config(fc, vm);
    let mut want_disks: Vec<String> = storage(vm)
        .iter()
        .map(|d| {
            let path = d["path"].as_str().unwrap();
            match cloned_from {
                Some(src) if fc && d["ro"] != true => {
                    let name = Path::new(path).file_name().unwrap();
                    Path::new(src["run_dir"].as_str().unwrap())
                        .join(name)
                        .display()
                        .to_string()
                }
                _ => path.to_string(),
            }
        })
        .collect();
    want_disks.sort();
    let (mut disks, taps, balloon) = if fc {
        (
            config["drives"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|d| d["path_on_host"].as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
            config["network-interfaces"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .map(|n| n["host_dev_name"].as_str().unwrap_or_default().to_string())
                        .collect::<BTreeSet<_>>()
                })
                .unwrap_or_default(),
            config["balloon"]["amount_mib"].as_u64().map(|m| m << 20),
        )
    } else {
        (
            config["disks"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|d| d["path"].as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
            config["net"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .map(|n| n["tap"].as_str().unwrap_or_default().to_string())
                        .collect::<BTreeSet<_>>()
                })
                .unwrap_or_default(),
            config["balloon"]["size"].as_u64(),
        )
    };
    disks.sort();
    assert_eq!(
        disks, want_disks,
        "{what}: the VMM's disks (left) are not the VM's; VMM config: {config:#}"
    );
    assert_eq!(
        taps,
        taps_of(vm),
        "{what}: the VMM's NICs (left) are not the VM's; VMM config: {config:#}"
    );
    let memory = vm["config"]["memory"].as_u64().unwrap();
    assert_eq!(
        balloon,
        Some(memory / 4),
        "{what}: the VMM's balloon (left) is not a quarter of {memory}; VMM config: {config:#}"
    );
}

/// A VM with a data disk, a NIC and a balloon boots on the real VMM, which
/// reports the devices; its snapshot's clone (`--nics 1`) then opens its
/// own disks (never the source's COW or data disk) and its own TAP inside
/// its own namespace, and its console goes on after the clone.
fn clone_opens_its_own_devices(fc: bool) {
    let test = test_name("clone_opens_its_own_devices", fc);
    let Some(lab) = real_lab(&test, fc) else {
        return;
    };
    let _kill = KillAll(lab.env.root_dir());
    let src = run_vm(
        &lab,
        "src",
        fc,
        &["--nics", "1", "--data-disk", "size=1G,name=db"],
    );
    wait_beat(&lab, "src", 2);
    let roles: Vec<&str> = src["storage_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"data") && roles.contains(&"cow"),
        "{test}: the source's disks: {src:#}"
    );
    assert_eq!(taps_of(&src).len(), 1, "{test}: {src:#}");
    assert_vmm_devices(&format!("{test}: src"), fc, &src, None);
    assert_own_taps(&format!("{test}: src"), &src, &BTreeSet::new(), false);

    let (lo, hi) = save(&lab, "src", "s");
    lab.ok(&["vm", "clone", "--nics", "1", "--name", "c", "s"]);
    let clone = lab.inspect("c");
    let src = lab.inspect("src");
    assert_eq!(clone["state"], "running", "{test}: {clone:#}");
    let beats = wait_clone_counts(&lab, "c", lo, hi);
    eprintln!("{test}: snapshot at {lo}..={hi}, the clone counts {beats:?}");

    // Disks: the clone's VMM holds its own copies, never the source's.
    let pid = pid_of(&clone);
    let files = open_files(pid);
    let source_writable: Vec<((u64, u64), String)> = storage(&src)
        .iter()
        .filter(|d| d["ro"] != true)
        .map(|d| {
            let p = d["path"].as_str().unwrap();
            (file_id(p), p.to_string())
        })
        .collect();
    let clone_disks: Vec<((u64, u64), bool, String)> = storage(&clone)
        .iter()
        .map(|d| {
            let p = d["path"].as_str().unwrap();
            (file_id(p), d["ro"] == true, p.to_string())
        })
        .collect();
    for f in &files {
        if let Some((_, p)) = source_writable.iter().find(|(id, _)| *id == (f.dev, f.ino)) {
            panic!(
                "{test}: the clone's VMM (pid {pid}) has the source's disk {p} open (as {}); it holds: {files:#?}",
                f.link.display()
            );
        }
    }
    let clone_dirs = [
        PathBuf::from(clone["run_dir"].as_str().unwrap()),
        PathBuf::from(clone["log_dir"].as_str().unwrap()),
    ];
    // Besides: the shared image store (read-only layers, kernel, initrd).
    let images = lab.env.root_dir().join("images");
    for f in &files {
        let own_disk = clone_disks.iter().any(|(id, _, _)| *id == (f.dev, f.ino));
        let own_dir = clone_dirs.iter().any(|d| f.link.starts_with(d));
        let shared_ro = f.read_only && f.link.starts_with(&images);
        assert!(
            own_disk || own_dir || shared_ro,
            "{test}: the clone's VMM (pid {pid}) has {} open, neither one of its disks {clone_disks:?} nor under {clone_dirs:?} nor read-only under {}; it holds: {files:#?}",
            f.link.display(),
            images.display()
        );
    }
    for (id, ro, path) in &clone_disks {
        assert!(
            files.iter().any(|f| (f.dev, f.ino) == *id),
            "{test}: the clone's VMM (pid {pid}) does not hold its disk {path} (ro: {ro}) open; it holds: {files:#?}"
        );
        if !ro {
            assert!(
                clone_dirs.iter().any(|d| Path::new(path).starts_with(d)),
                "{test}: the clone's writable disk {path} is outside its directories {clone_dirs:?}"
            );
        }
    }
    if fc {
        assert_jailed(&test, pid, &lab, &src, &clone);
        // The jailed VMM saves through its run directory; a clone of that
        // snapshot of the clone comes up.
        lab.ok(&["snapshot", "save", "--name", "s2", "c"]);
        lab.ok(&["vm", "clone", "--nics", "0", "--name", "c2", "s2"]);
        assert_eq!(
            lab.inspect("c2")["state"],
            "running",
            "{test}: the clone of the clone"
        );
        let staging = Path::new(clone["run_dir"].as_str().unwrap()).join("snapshot");
        assert!(!staging.exists(), "{test}: {} left", staging.display());
        lab.ok(&["vm", "rm", "--force", "c2"]);
    }
    let clone_data = storage(&clone)
        .iter()
        .filter(|d| d["role"] == "data")
        .count();
    assert_eq!(clone_data, 1, "{test}: the clone's data disk: {clone:#}");

    // NICs: its own TAP, in its own namespace; the source keeps its own.
    let src_taps = taps_of(&src);
    assert_own_taps(&format!("{test}: clone"), &clone, &src_taps, !fc);
    assert_own_taps(
        &format!("{test}: src after the clone"),
        &src,
        &taps_of(&clone),
        false,
    );
    assert_vmm_devices(&format!("{test}: clone"), fc, &clone, Some(&src));

    // The console: `vm console` on the clone shows heartbeats printed after
    // it was attached.
    let last = *heartbeats(&logs(&lab, "c")).last().unwrap();
    let mut console = ConsoleSession::open(&lab, "c");
    let next = format!("{HEARTBEAT_PREFIX}{}", last + 2);
    console.wait_for(&format!("{next:?}"), |t| {
        t.lines().any(|l| l.trim() == next)
    });
    let answer = console.count();
    assert!(
        answer >= last + 2,
        "{test}: the clone answered count={answer} after heartbeat {}",
        last + 2
    );
    console.close();
    // The source goes on counting too.
    wait_beat(&lab, "src", hi + 2);

    if fc {
        // After a fresh boot the clone sees its disks at its own paths, and
        // a restore of s2 (whose vmstate names the source's) still comes up.
        lab.ok(&["vm", "stop", "c"]);
        lab.ok(&["vm", "start", "c"]);
        lab.ok(&["vm", "restore", "c", "s2"]);
        assert_eq!(lab.inspect("c")["state"], "running", "{test}: c restored");
    }
    lab.ok(&["vm", "rm", "--force", "src", "c"]);
    for vm in [&src, &clone] {
        assert!(
            !netns::path_for(vm["id"].as_str().unwrap()).exists(),
            "{test}: namespace of {} left",
            vm["id"]
        );
    }
}

/// A Firecracker clone's VMM runs in its jail (its root is a tmpfs holding
/// only its own files): the host's files and the engine's database are not
/// there, its run directory is, and the source VM's disk paths its vmstate
/// names are the clone's own copies.
fn assert_jailed(test: &str, pid: u32, lab: &NetLab, src: &Value, clone: &Value) {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let seen = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    for hidden in [
        Path::new("/etc/passwd"),
        &lab.env.db_path(),
        &lab.env.config_path(),
    ] {
        assert!(
            Path::new(hidden).exists(),
            "{test}: {} is on the host",
            hidden.display()
        );
        assert!(
            !seen(hidden).exists(),
            "{test}: the clone's VMM (pid {pid}) sees {}",
            hidden.display()
        );
    }
    assert!(
        seen(Path::new(clone["run_dir"].as_str().unwrap())).is_dir(),
        "{test}: no run dir in the jail"
    );
    let copies: Vec<(String, (u64, u64))> = storage(clone)
        .iter()
        .filter(|d| d["ro"] != true)
        .map(|d| {
            (
                d["role"].as_str().unwrap().to_string(),
                file_id(d["path"].as_str().unwrap()),
            )
        })
        .collect();
    for disk in storage(src).iter().filter(|d| d["ro"] != true) {
        let role = disk["role"].as_str().unwrap();
        let path = seen(Path::new(disk["path"].as_str().unwrap()));
        let shown = file_id(path.to_str().unwrap());
        assert!(
            copies.iter().any(|(r, id)| r == role && *id == shown),
            "{test}: in the jail, the source's {role} disk {} is not the clone's copy",
            path.display()
        );
    }
}

#[test]
fn clone_opens_its_own_devices_on_cloud_hypervisor() {
    clone_opens_its_own_devices(false);
}

#[test]
fn clone_opens_its_own_devices_on_firecracker() {
    clone_opens_its_own_devices(true);
}

/// `vm restore` brings the guest back to the snapshot's count, which goes
/// on (`vm logs` shows it); `--restore-mode ondemand` (userfaultfd) does the
/// same on CH, and FC refuses it with the engine's message, untouched.
fn restore_modes(fc: bool) {
    let test = test_name("restore_modes", fc);
    let Some(lab) = real_lab(&test, fc) else {
        return;
    };
    let _kill = KillAll(lab.env.root_dir());
    run_vm(&lab, "src", fc, &["--nics", "1"]);
    wait_beat(&lab, "src", 2);
    let (lo, hi) = save(&lab, "src", "s");

    // The default mode (CH copies the memory in, FC maps it).
    wait_beat(&lab, "src", hi + 3);
    let before = logs(&lab, "src").len();
    lab.ok(&["vm", "restore", "src", "s"]);
    let vm = lab.inspect("src");
    assert_eq!(vm["state"], "running", "{test}: {vm:#}");
    let beats = wait_count_back(&lab, "src", before, lo, hi);
    eprintln!("{test}: snapshot at {lo}..={hi}; restored, counts {beats:?}");
    assert_own_taps(
        &format!("{test}: after restore"),
        &vm,
        &BTreeSet::new(),
        false,
    );

    // On demand.
    wait_beat(&lab, "src", hi + 3);
    let before = logs(&lab, "src").len();
    let args = ["vm", "restore", "--restore-mode", "ondemand", "src", "s"];
    if fc {
        let pid = pid_of(&vm);
        let err = refused(&lab, &args);
        assert!(
            err.contains(
                "Firecracker restores memory by mapping the snapshot file (--restore-mode mmap); copy and ondemand are Cloud Hypervisor modes"
            ),
            "{test}: the refusal of ondemand: {err}"
        );
        let after = lab.inspect("src");
        assert_eq!(after["state"], "running", "{test}: {after:#}");
        assert_eq!(pid_of(&after), pid, "{test}: the VMM was replaced");
        let last = *heartbeats(&logs(&lab, "src")).last().unwrap();
        let log = wait_beat(&lab, "src", last + 2);
        let beats = heartbeats(&log[before.min(log.len())..]);
        assert!(
            beats.windows(2).all(|w| w[1] == w[0] + 1),
            "{test}: the count went back although the restore was refused: {beats:?}"
        );
    } else {
        lab.ok(&args);
        let vm = lab.inspect("src");
        assert_eq!(vm["state"], "running", "{test}: {vm:#}");
        let beats = wait_count_back(&lab, "src", before, lo, hi);
        eprintln!("{test}: restored on demand, counts {beats:?}");
        assert_own_taps(
            &format!("{test}: after the on-demand restore"),
            &vm,
            &BTreeSet::new(),
            false,
        );
    }
    // The console attached after the restores shows new beats.
    let last = *heartbeats(&logs(&lab, "src")).last().unwrap();
    let mut console = ConsoleSession::open(&lab, "src");
    let next = format!("{HEARTBEAT_PREFIX}{}", last + 1);
    console.wait_for(&format!("{next:?}"), |t| {
        t.lines().any(|l| l.trim() == next)
    });
    console.close();
    lab.ok(&["vm", "rm", "--force", "src"]);
}

#[test]
fn restore_modes_on_cloud_hypervisor() {
    restore_modes(false);
}

#[test]
fn restore_modes_on_firecracker() {
    restore_modes(true);
}

/// `vm clone` and `vm restore` take the snapshot's CPUs, memory and storage
/// (upstream #26/#27): other values are refused with the reason on both VMMs
/// and nothing changes; the snapshot's own values (what vk-cocoon passes)
/// are taken and the VMM has them.
fn clone_and_restore_keep_the_snapshot_size(fc: bool) {
    let test = test_name("clone_and_restore_keep_the_snapshot_size", fc);
    let Some(lab) = real_lab(&test, fc) else {
        return;
    };
    let _kill = KillAll(lab.env.root_dir());
    let src = run_vm(&lab, "src", fc, &["--nics", "0"]);
    wait_beat(&lab, "src", 2);
    assert_eq!(
        vmm_cpu_memory(fc, &src),
        (1, 512 << 20),
        "{test}: the source as its VMM has it"
    );
    let (lo, hi) = save(&lab, "src", "s");
    let storage = src["config"]["storage"].as_u64().unwrap();
    let why = "a clone or restore takes the snapshot's vCPUs, memory and storage, since the restored guest never sees more; leave the flag out (or give the snapshot's value) and grow the running VM with `cocoon vm resize`";
    let bigger = format!("{}G", (storage >> 30) + 1);
    for (flags, said) in [
        (
            vec!["--cpu", "2"],
            "--cpu 2 differs from the snapshot's 1 vCPUs".to_string(),
        ),
        (
            vec!["--memory", "1G"],
            "--memory 1.0 GiB differs from the snapshot's 512.0 MiB memory".to_string(),
        ),
        (
            vec!["--storage", bigger.as_str()],
            format!(
                "--storage {}.0 GiB differs from the snapshot's {}.0 GiB storage",
                (storage >> 30) + 1,
                storage >> 30
            ),
        ),
    ] {
        let mut args = vec!["vm", "clone", "--name", "big"];
        args.extend_from_slice(&flags);
        args.push("s");
        let err = refused(&lab, &args);
        assert_eq!(err.trim_end(), format!("Error: {said}: {why}"), "{test}");
        let mut args = vec!["vm", "restore"];
        args.extend_from_slice(&flags);
        args.extend(["src", "s"]);
        let err = refused(&lab, &args);
        assert_eq!(err.trim_end(), format!("Error: {said}: {why}"), "{test}");
    }
    let vms: Value = serde_json::from_str(&lab.ok(&["vm", "ls", "-o", "json"])).unwrap();
    assert_eq!(
        vms.as_array().unwrap().len(),
        1,
        "{test}: a refused clone left a VM: {vms:#}"
    );
    let after = lab.inspect("src");
    assert_eq!(pid_of(&after), pid_of(&src), "{test}: the VMM was replaced");
    assert_eq!(vmm_cpu_memory(fc, &after), (1, 512 << 20), "{test}");
    wait_beat(&lab, "src", hi + 2);

    // The snapshot's own values, as vk-cocoon passes its pod's: taken.
    let same = ["--cpu", "1", "--memory", "512M"];
    let mut args = vec!["vm", "clone", "--name", "same"];
    args.extend_from_slice(&same);
    args.push("s");
    lab.ok(&args);
    let clone = lab.inspect("same");
    assert_eq!(vmm_cpu_memory(fc, &clone), (1, 512 << 20), "{test}");
    wait_clone_counts(&lab, "same", lo, hi);
    lab.ok(&["vm", "rm", "--force", "same"]);

    wait_beat(&lab, "src", hi + 3);
    let before = logs(&lab, "src").len();
    let mut args = vec!["vm", "restore"];
    args.extend_from_slice(&same);
    args.extend(["src", "s"]);
    lab.ok(&args);
    let vm = lab.inspect("src");
    assert_eq!(vmm_cpu_memory(fc, &vm), (1, 512 << 20), "{test}");
    wait_count_back(&lab, "src", before, lo, hi);
    lab.ok(&["vm", "rm", "--force", "src"]);
}

#[test]
fn clone_and_restore_keep_the_snapshot_size_on_cloud_hypervisor() {
    clone_and_restore_keep_the_snapshot_size(false);
}

#[test]
fn clone_and_restore_keep_the_snapshot_size_on_firecracker() {
    clone_and_restore_keep_the_snapshot_size(true);
}
