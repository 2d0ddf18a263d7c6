#!/usr/bin/env python3
"""Snapshot save and clone-to-running against the raw VMM calls, per backend
(Cloud Hypervisor, Firecracker, QEMU) and per filesystem (XFS with reflink and
ext4, each a loop mount made here), all measured in one run.

For every iteration, on the filesystem under test, a VM is booted by cocoon
(test guest kernel, 1 vCPU, --memory, no NICs, plus a raw data disk with
--disk-fill MiB of data written into it) and:

  raw snapshot   the bare API calls on the VM's socket: CH PUT vm.pause,
                 vm.snapshot {destination_url}, vm.resume; FC PATCH /vm
                 Paused, PUT /snapshot/create (Full), PATCH /vm Resumed;
                 QEMU QMP stop, mapped-ram migrate to a file, cont.
                 Pause window = pause sent .. resume answered.
  cocoon save    `cocoon snapshot save -o json`: its pause_ms, total_ms and
                 the CLI's wall time. Its window also holds the disk copies
                 (reflink where the filesystem can, else sparse copy). The
                 checksums are computed after it returns, by the detached
                 sealer it starts: the time until its manifest is sealed is
                 printed too, and the next step waits for it.
  raw restore    a fresh VMM process on the files of cocoon's snapshot,
                 doing the VMM work cocoon's clone does: CH started with
                 only --api-socket, PUT vm.restore {source_url}, vm.resume;
                 FC started with --api-sock, PUT /snapshot/load (resume_vm);
                 QEMU started with the source's command line and
                 `-incoming defer`, migrate-incoming from the file, cont;
                 until the API reports Running. The source VM is stopped
                 first so its disks, which the snapshot names, are free.
                 Staging (CH config.json with the serial set to Null) is
                 done before the clock starts.
  cocoon clone   wall time of `cocoon vm clone SNAPSHOT` (it returns once
                 the clone runs).

Raw and cocoon alternate which goes first. Medians are printed with the
ratio cocoon / raw.

Needs root (loop mounts), mkfs.xfs (xfsprogs) and mkfs.ext4, /dev/kvm, the
real VMMs (COCOON_CH_BINARY / COCOON_FC_BINARY / COCOON_QEMU_BINARY or PATH; it fails if one is
missing), a release cocoon (COCOON_BIN, default target/release/cocoon) and
the test guest kernel (any `cargo build --workspace` builds it).

    python3 bench/snapshot.py [iterations] [--memory MiB] [--disk-fill MiB]
                              [--backends ch,fc,qemu] [--fs xfs,ext4] [--loop-dir DIR]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
from benchlib import GUEST_IMAGE, Qmp, api, cocoon_binary, find_vmm, import_guest, test_kernel, wait_for_marker, wait_for_socket

BACKENDS = {
    "ch": ("cloud-hypervisor", "COCOON_CH_BINARY", []),
    "fc": ("firecracker", "COCOON_FC_BINARY", ["--fc"]),
    "qemu": ("qemu-system-x86_64", "COCOON_QEMU_BINARY", ["--qemu"]),
}
FILESYSTEMS = {
    "xfs": ("xfs-reflink", ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]),
    "ext4": ("ext4", ["mkfs.ext4", "-q", "-F"]),
}
DATA_DISK = "bench"


def sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def syncfs(path):
    subprocess.run(["sync", "-f", path], check=True)


def ms(seconds):
    return seconds * 1000.0


class Bench:
    def __init__(self, args, cocoon, binaries, work):
        self.args = args
        self.cocoon = cocoon
        self.binaries = binaries
        self.work = work
        self.raw_procs = []
        self.env = None
        self.qemu_argv = []

    # cocoon --------------------------------------------------------------

    def run(self, *argv):
        p = subprocess.run([self.cocoon, *argv], env=self.env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"cocoon {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def inspect(self, vm):
        return json.loads(self.run("vm", "inspect", vm))

    def remove_all(self):
        """Every VM and snapshot of this root, whatever state they are in."""
        if self.env is None:
            return
        try:
            for vm in json.loads(self.run("vm", "ls", "-o", "json")):
                subprocess.run([self.cocoon, "vm", "rm", "--force", vm["id"]], env=self.env, capture_output=True)
            for s in json.loads(self.run("snapshot", "ls", "-o", "json")):
                subprocess.run([self.cocoon, "snapshot", "rm", s["id"]], env=self.env, capture_output=True)
        except Exception as e:  # cleanup goes on: the mount's processes are killed next
            print(f"warning: cleanup through cocoon failed: {e}", file=sys.stderr)

    def start(self, vm):
        self.run("vm", "start", vm)

    # raw VMM -------------------------------------------------------------

    def spawn_vmm(self, argv, log):
        with open(log, "ab") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.raw_procs.append(proc)
        return proc

    def reap(self, proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.raw_procs.remove(proc)

    def raw_snapshot(self, backend, sock, dest):
        """(pause window, snapshot call) of the bare API calls, in seconds."""
        os.makedirs(dest)
        if backend == "qemu":
            qmp = Qmp(sock)
            try:
                t0 = time.monotonic()
                qmp("stop")
                try:
                    t1 = time.monotonic()
                    qmp.migrate_file(f"{dest}/state")
                    t2 = time.monotonic()
                finally:
                    qmp("cont")
                t3 = time.monotonic()
            finally:
                qmp.close()
            return t3 - t0, t2 - t1
        if backend == "ch":
            pause = ("PUT", "/api/v1/vm.pause", None)
            snap = ("PUT", "/api/v1/vm.snapshot", {"destination_url": f"file://{dest}"})
            resume = ("PUT", "/api/v1/vm.resume", None)
        else:
            pause = ("PATCH", "/vm", {"state": "Paused"})
            snap = ("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": f"{dest}/vmstate",
                                                "mem_file_path": f"{dest}/mem"})
            resume = ("PATCH", "/vm", {"state": "Resumed"})
        t0 = time.monotonic()
        api(sock, *pause)
        try:
            t1 = time.monotonic()
            api(sock, *snap)
            t2 = time.monotonic()
        finally:
            api(sock, *resume)
        t3 = time.monotonic()
        return t3 - t0, t2 - t1

    def raw_restore(self, backend, snap_dir, scratch):
        """Seconds from spawning a fresh VMM to its API reporting Running.
        Its socket and log are on the filesystem under test, as cocoon's."""
        sock = f"{scratch}/raw.sock"
        log = f"{scratch}/raw-vmm.log"
        if os.path.exists(sock):
            os.remove(sock)
        binary = self.binaries[backend]
        if backend == "qemu":
            return self.raw_qemu_restore(snap_dir, sock, log)
        if backend == "ch":
            # Staged as cocoon stages it (memory hard-linked, state copied,
            # config.json patched), before the clock: the serial port set to
            # Null since this VMM has no terminal; the console is a new PTY.
            stage = f"{scratch}/raw-restore"  # the snapshot's filesystem: hard links
            shutil.rmtree(stage, ignore_errors=True)
            os.makedirs(stage)
            for name in os.listdir(snap_dir):
                if name.startswith("memory-range"):
                    os.link(f"{snap_dir}/{name}", f"{stage}/{name}")
                elif name == "state.json":
                    shutil.copy(f"{snap_dir}/{name}", stage)
            with open(f"{snap_dir}/config.json") as f:
                config = json.load(f)
            config["serial"] = {"mode": "Null"}
            console = config.get("console") or {}
            console.pop("file", None)
            console.pop("socket", None)
            console["mode"] = "Pty"
            config["console"] = console
            with open(f"{stage}/config.json", "w") as f:
                json.dump(config, f)
            t0 = time.monotonic()
            proc = self.spawn_vmm([binary, "--api-socket", sock], log)
            try:
                wait_for_socket(sock, proc)
                api(sock, "PUT", "/api/v1/vm.restore", {"source_url": f"file://{stage}"})
                api(sock, "PUT", "/api/v1/vm.resume")
                state = api(sock, "GET", "/api/v1/vm.info")["state"]
                t1 = time.monotonic()
            finally:
                self.reap(proc)
            shutil.rmtree(stage, ignore_errors=True)
        else:
            t0 = time.monotonic()
            proc = self.spawn_vmm([binary, "--api-sock", sock], log)
            try:
                wait_for_socket(sock, proc)
                api(sock, "PUT", "/snapshot/load", {
                    "snapshot_path": f"{snap_dir}/vmstate",
                    "mem_backend": {"backend_type": "File", "backend_path": f"{snap_dir}/mem"},
                    "resume_vm": True,
                })
                state = api(sock, "GET", "/")["state"]
                t1 = time.monotonic()
            finally:
                self.reap(proc)
        if state != "Running":
            raise RuntimeError(f"raw {backend} restore: the VM is {state}, not Running")
        return t1 - t0

    def raw_qemu_restore(self, snap_dir, sock, log):
        """QEMU: the source's own command line (read from /proc before it
        stopped) with this socket, the serial port nowhere, without `-S`
        and with `-incoming defer`."""
        argv = []
        for arg in self.qemu_argv:
            if arg.startswith("socket,id=qmp,"):
                arg = f"socket,id=qmp,server=on,wait=off,path={sock}"
            elif arg.startswith("stdio,id=serial0"):
                arg = "null,id=serial0"
            if arg == "-S":
                # (A fresh boot with hot-plugged devices to plug starts paused.)
                continue
            argv.append(arg)
        argv += ["-incoming", "defer"]
        t0 = time.monotonic()
        proc = self.spawn_vmm(argv, log)
        try:
            wait_for_socket(sock, proc)
            qmp = Qmp(sock)
            qmp.migrate_file(f"{snap_dir}/state", incoming=True)
            qmp("cont")
            running = qmp("query-status")["running"]
            t1 = time.monotonic()
            qmp.close()
        finally:
            self.reap(proc)
        if not running:
            raise RuntimeError("raw qemu restore: the VM is not running")
        return t1 - t0

    # one filesystem ------------------------------------------------------

    def on_filesystem(self, fs_key):
        label, mkfs = FILESYSTEMS[fs_key]
        mnt = f"{self.work}/{fs_key}"
        backing = os.path.join(self.args.loop_dir, f"cocoon-bench-{os.getpid()}-{fs_key}.img")
        mem, fill = self.args.memory, self.args.disk_fill
        size_mib = max(4096, 6 * mem + 4 * fill + 1024)
        dev = None
        mounted = False
        results = {}
        try:
            with open(backing, "wb") as f:
                f.truncate(size_mib << 20)
            dev = sh("losetup", "--find", "--show", backing)
            sh(*mkfs, dev)
            os.makedirs(mnt)
            sh("mount", dev, mnt)
            mounted = True
            probe = f"{mnt}/reflink-probe"
            with open(probe, "wb") as f:
                f.write(b"x" * 65536)
            reflink = subprocess.run(["cp", "--reflink=always", probe, probe + ".2"],
                                     capture_output=True).returncode == 0
            print(f"{label}: {dev} on {mnt} ({size_mib} MiB, backing file {backing}), reflink {'yes' if reflink else 'no'}",
                  flush=True)
            self.env = dict(os.environ)
            self.env.update(
                COCOON_ROOT_DIR=f"{mnt}/root",
                COCOON_LOG_DIR=f"{mnt}/log",
                COCOON_CONFIG=f"{self.work}/config.toml",
            )
            for backend, binary in self.binaries.items():
                self.env[BACKENDS[backend][1]] = binary
            import_guest(self.run, self.work)
            for backend in self.args.backends:
                results[backend] = self.measure(backend, mnt)
        finally:
            self.remove_all()
            self.kill_leftovers(mnt)
            if mounted:
                if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
                    time.sleep(1)
                    self.kill_leftovers(mnt)
                    subprocess.run(["umount", "-l", mnt], capture_output=True)
            if dev:
                subprocess.run(["losetup", "-d", dev], capture_output=True)
            if os.path.exists(backing):
                os.remove(backing)
            self.env = None
        return label, results

    def kill_leftovers(self, mnt):
        """Kills any process still naming the mount (a VMM cocoon or this
        script started and failed to stop), by pid."""
        for proc in list(self.raw_procs):
            self.reap(proc)
        me = os.getpid()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if mnt.encode() + b"/" in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    shown = cmdline.replace(b"\0", b" ")[:200].decode(errors="replace")
                    print(f"warning: killed leftover process {pid}: {shown}", file=sys.stderr)
                except ProcessLookupError:
                    pass

    def measure(self, backend, mnt):
        flag = BACKENDS[backend][2]
        mem, fill = self.args.memory, self.args.disk_fill
        rows = {k: [] for k in ("raw_pause", "raw_snap", "raw_total", "pause", "total", "save_wall",
                                "sealed", "raw_restore", "clone")}
        for i in range(self.args.iterations):
            src = f"{backend}-src{i}"
            disk = [] if fill == 0 else ["--data-disk", f"size={max(1024, fill)}M,name={DATA_DISK},fstype=none"]
            self.run("vm", "create", "--nics", "0", "--cpu", "1", "--memory", f"{mem}M", "--name", src,
                     *disk, *flag, GUEST_IMAGE)
            info = self.inspect(src)
            if fill:
                path = next(d["path"] for d in info["storage_configs"] if d["path"].endswith(f"data-{DATA_DISK}.raw"))
                block = os.urandom(4 << 20)
                with open(path, "r+b") as f:
                    for _ in range(fill // 4):
                        f.write(block)
                    os.fsync(f.fileno())
            self.start(src)
            info = self.inspect(src)
            wait_for_marker(os.path.join(info["log_dir"], "console.log"))
            sock = info["vmm"]["api_socket"]

            raw_dir = f"{mnt}/raw-snapshot-{i}"

            def raw():
                window, call = self.raw_snapshot(backend, sock, raw_dir)
                rows["raw_pause"].append(window)
                rows["raw_snap"].append(call)
                rows["raw_total"].append(window)

            def cocoon():
                t0 = time.monotonic()
                out = json.loads(self.run("snapshot", "save", "-o", "json", src))
                rows["save_wall"].append(time.monotonic() - t0)
                rows["pause"].append(out["pause_ms"] / 1000)
                rows["total"].append(out["total_ms"] / 1000)
                rows["sealed"].append(wait_sealed(out["data_dir"]) - t0)
                return out["id"]

            # Each timed step starts with the mount's dirty pages written
            # back (syncfs), so none pays for the previous one's writeback.
            if i % 2 == 0:
                syncfs(mnt)
                raw()
                syncfs(mnt)
                snap = cocoon()
            else:
                syncfs(mnt)
                snap = cocoon()
                syncfs(mnt)
                raw()
            shutil.rmtree(raw_dir)
            snap_dir = json.loads(self.run("snapshot", "inspect", snap))["data_dir"]

            if backend == "qemu":
                with open(f"/proc/{info['vmm']['pid']}/cmdline", "rb") as f:
                    self.qemu_argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
            # The raw restore reopens the disks the snapshot names, the source's.
            self.run("vm", "stop", "--force", src)

            def clone():
                t0 = time.monotonic()
                self.run("vm", "clone", "--name", f"{backend}-clone{i}", snap)
                rows["clone"].append(time.monotonic() - t0)
                self.run("vm", "rm", "--force", f"{backend}-clone{i}")

            if i % 2 == 0:
                syncfs(mnt)
                rows["raw_restore"].append(self.raw_restore(backend, snap_dir, mnt))
                syncfs(mnt)
                clone()
            else:
                syncfs(mnt)
                clone()
                syncfs(mnt)
                rows["raw_restore"].append(self.raw_restore(backend, snap_dir, mnt))
            self.run("vm", "rm", "--force", src)
            self.run("snapshot", "rm", snap)
            # Freed blocks back to the sparse backing file, between timed
            # steps (online discard would run inside them).
            subprocess.run(["fstrim", mnt], capture_output=True)
            print(f"  {backend} #{i + 1}: pause {ms(rows['raw_pause'][-1]):.1f} / {ms(rows['pause'][-1]):.1f} ms, "
                  f"restore {ms(rows['raw_restore'][-1]):.1f} / clone {ms(rows['clone'][-1]):.1f} ms", flush=True)
        return {k: (statistics.median(v), min(v)) for k, v in rows.items()}


def wait_sealed(snap_dir, timeout=120):
    """Waits until the manifest in `snap_dir` has every file's digest (the
    background sealer is done); returns the monotonic time it saw that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(snap_dir, "cocoon.json")) as f:
                files = json.load(f)["files"]
            if all(isinstance(v.get("sha256"), str) for v in files.values()):
                return time.monotonic()
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    raise SystemExit(f"snapshot {snap_dir} was not sealed within {timeout} s")


def report(args, results):
    print()
    disk = f"{args.disk_fill} MiB written on a raw data disk" if args.disk_fill else "no data disk"
    print(f"snapshot save and clone, median of {args.iterations}: test guest, 1 vCPU, {args.memory} MiB memory, "
          f"no NICs, {disk}")
    head = (f"{'backend':<17} {'filesystem':<12} {'measure':<36} {'raw VMM':>9} {'(min)':>8} "
            f"{'cocoon':>9} {'(min)':>8} {'ratio':>7}")
    print(head)
    print("-" * len(head))
    lines = [
        ("pause window", "raw_pause", "pause"),
        ("save total (raw: snapshot call)", "raw_snap", "total"),
        ("save, CLI wall (raw: pause..resume)", "raw_total", "save_wall"),
        ("sealed after (raw: pause..resume)", "raw_total", "sealed"),
        ("clone to running (raw: restore)", "raw_restore", "clone"),
    ]
    for backend in args.backends:
        for label, per_backend in results:
            r = per_backend[backend]
            for i, (what, raw, ours) in enumerate(lines):
                first = i == 0
                (rm, rmin), (om, omin) = r[raw], r[ours]
                print(f"{BACKENDS[backend][0] if first else '':<17} {label if first else '':<12} {what:<36} "
                      f"{ms(rm):9.1f} {ms(rmin):8.1f} {ms(om):9.1f} {ms(omin):8.1f} {om / rm:6.2f}x")
    print("(ms, medians with the fastest run in parentheses; ratio = cocoon / raw of the medians, both measured in this run)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("iterations", nargs="?", type=int, default=5)
    p.add_argument("--memory", type=int, default=512, help="guest memory in MiB (default 512)")
    p.add_argument("--disk-fill", type=int, default=512,
                   help="MiB written into the VM's raw data disk before it starts, multiple of 4 (default 512; 0: no data disk)")
    p.add_argument("--backends", default="ch,fc,qemu", help="comma separated: ch, fc, qemu")
    p.add_argument("--fs", default="xfs,ext4", help="comma separated: xfs, ext4")
    p.add_argument("--loop-dir", default=tempfile.gettempdir(), help="where the loop backing files go (sparse)")
    args = p.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    args.fs = [f for f in args.fs.split(",") if f]
    if any(b not in BACKENDS for b in args.backends) or any(f not in FILESYSTEMS for f in args.fs):
        p.error("unknown backend or filesystem")
    if args.disk_fill % 4:
        p.error("--disk-fill must be a multiple of 4")

    binaries = {}
    for b in args.backends:
        name, env, _ = BACKENDS[b]
        path = find_vmm(env, name)
        if not path:
            print(f"error: {name} not found (set {env} or put it on PATH); this benchmark needs the real VMM",
                  file=sys.stderr)
            sys.exit(1)
        binaries[b] = path
    if os.geteuid() != 0:
        sys.exit("error: needs root (loop devices and mounts)")
    for f in args.fs:
        if not shutil.which(FILESYSTEMS[f][1][0]):
            sys.exit(f"error: {FILESYSTEMS[f][1][0]} not found (apt-get install {'xfsprogs' if f == 'xfs' else 'e2fsprogs'})")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("error: /dev/kvm is not usable")
    cocoon = cocoon_binary()
    test_kernel()
    for b in args.backends:
        print(f"{BACKENDS[b][0]}: {binaries[b]}")
    print(f"cocoon: {cocoon}")

    # SIGTERM unwinds like Ctrl+C, so every cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="cbs-", dir="/tmp")
    open(f"{work}/config.toml", "w").close()
    bench = Bench(args, cocoon, binaries, work)
    results = []
    try:
        for f in args.fs:
            results.append(bench.on_filesystem(f))
    finally:
        for proc in list(bench.raw_procs):
            bench.reap(proc)
        shutil.rmtree(work, ignore_errors=True)
    report(args, results)


if __name__ == "__main__":
    main()
