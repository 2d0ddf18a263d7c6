#!/usr/bin/env python3
"""Time from `cocoon vm run --nics 0` to the guest's ready marker, against the
raw VMM launched with the same kernel, disks and command line by a minimal
launcher, for Cloud Hypervisor, Firecracker and QEMU. Both are measured
here, in one run; the difference is the engine's overhead.

Needs the VMMs (COCOON_CH_BINARY / COCOON_FC_BINARY / COCOON_QEMU_BINARY or
PATH), /dev/kvm, a
built cocoon (COCOON_BIN, default target/release/cocoon) and the test guest
kernel built by cocoon-testkit (any `cargo build --workspace` makes it).

    python3 bench/vm-boot.py [iterations]
"""

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
from benchlib import GUEST_IMAGE, READY, cocoon_binary, find_vmm, import_guest, test_kernel, wait_for_marker


def kill_tree(proc):
    proc.kill()
    proc.wait()


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    cocoon = cocoon_binary()
    test_kernel()
    qemu = find_vmm("COCOON_QEMU_BINARY", "qemu-system-x86_64")
    # (label, backend, binary, flags). QEMU twice: with the 8 hot-plug root
    # ports a QEMU VM gets by default (microvm with PCIe), and without
    # (--no-hotplug, the machine the raw launcher starts).
    backends = [
        ("cloud-hypervisor", "cloud-hypervisor", find_vmm("COCOON_CH_BINARY", "cloud-hypervisor"), []),
        ("firecracker", "firecracker", find_vmm("COCOON_FC_BINARY", "firecracker"), ["--fc"]),
        ("qemu", "qemu", qemu, ["--qemu"]),
        ("qemu --no-hotplug", "qemu", qemu, ["--qemu", "--no-hotplug"]),
    ]
    binary_keys = {"cloud-hypervisor": "COCOON_CH_BINARY", "firecracker": "COCOON_FC_BINARY", "qemu": "COCOON_QEMU_BINARY"}
    work = tempfile.mkdtemp(prefix="cocoon-bench-boot-")
    env = dict(os.environ)
    env.update(
        COCOON_ROOT_DIR=f"{work}/root",
        COCOON_LOG_DIR=f"{work}/log",
        COCOON_CONFIG=f"{work}/config.toml",
    )
    open(env["COCOON_CONFIG"], "w").close()
    for _, name, binary, _ in backends:
        if binary:
            env[binary_keys[name]] = binary

    def cocoon_cmd(*args):
        return subprocess.run([cocoon, *args], env=env, check=True, capture_output=True, text=True).stdout

    import_guest(cocoon_cmd, work)

    print(f"boot to ready marker, median (min, max) of {iterations} (test guest kernel, 1 vCPU, 512 MiB, --nics 0)")
    try:
        for label, name, binary, flag in backends:
            if not binary:
                print(f"*** SKIPPED {label}: not on PATH and no {binary_keys[name]} ***")
                continue
            engine, start_only, raw = [], [], []
            engine_cli, start_cli = [], []
            consoles = f"{work}/log/vms/*/console.log"
            for i in range(iterations):
                vm = f"b{i}"
                before = set(glob.glob(consoles))
                new_console = lambda: next(iter(set(glob.glob(consoles)) - before), None)
                ready, done = until_marker(
                    [cocoon, "vm", "run", "--nics", "0", "--cpu", "1", "--memory", "512M", "--name", vm, *flag, GUEST_IMAGE],
                    env, new_console)
                engine.append(ready)
                engine_cli.append(done)
                info = json.loads(cocoon_cmd("vm", "inspect", vm))
                log = os.path.join(info["log_dir"], "console.log")
                cocoon_cmd("vm", "stop", "--force", vm)
                os.remove(log)
                ready, done = until_marker([cocoon, "vm", "start", vm], env, lambda: log)
                start_only.append(ready)
                start_cli.append(done)
                # The raw launch opens the same disks: the VM must be down (VMMs lock their disks).
                cocoon_cmd("vm", "stop", "--force", vm)
                raw.append(raw_boot(name, binary, info, work))
                cocoon_cmd("vm", "rm", "--force", vm)
            me, ms, mr = (statistics.median(x) * 1000 for x in (engine, start_only, raw))
            spread = lambda x: f"(min {min(x) * 1000:.1f}, max {max(x) * 1000:.1f})"
            print(f"{label}:")
            print(f"  raw VMM (minimal launcher)        {mr:8.1f} ms   {spread(raw)}")
            print(f"  cocoon vm run (create + start)    {me:8.1f} ms   overhead {me - mr:+7.1f} ms  ({me / mr:.2f}x)   {spread(engine)}")
            print(f"      the CLI returned after        {statistics.median(engine_cli) * 1000:8.1f} ms   {spread(engine_cli)}")
            print(f"  cocoon vm start (existing VM)     {ms:8.1f} ms   overhead {ms - mr:+7.1f} ms  ({ms / mr:.2f}x)   {spread(start_only)}")
            print(f"      the CLI returned after        {statistics.median(start_cli) * 1000:8.1f} ms   {spread(start_cli)}")
    finally:
        # Never leave a VM running, whatever failed.
        for vm in json.loads(cocoon_cmd("vm", "ls", "-o", "json")):
            subprocess.run([cocoon, "vm", "rm", "--force", vm["id"]], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def until_marker(argv, env, console_log, deadline_s=20.0):
    """Runs a cocoon command and watches the console log it will write
    (`console_log()` names it, or None while it is not there yet) from the
    moment it starts: the seconds to the guest's ready marker, and to the
    command's return. The marker may come first: the guest boots while the
    CLI records that it runs."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready = done = None
    while ready is None:
        if done is None and proc.poll() is not None:
            done = time.monotonic()
        path = console_log()
        try:
            if path:
                with open(path, "rb") as f:
                    if READY in f.read():
                        ready = time.monotonic()
        except FileNotFoundError:
            pass
        if ready is None and time.monotonic() - t0 > deadline_s:
            proc.kill()
            raise SystemExit(f"no ready marker from {' '.join(argv)}: {proc.communicate()[1]}")
        if ready is None:
            time.sleep(0.0005)
    _, err = proc.communicate()
    if done is None:
        done = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err}")
    return ready - t0, done - t0


def raw_boot(name, binary, info, work):
    """The same VM (kernel, initrd, cmdline, disks) launched by hand; the VM is stopped."""
    boot = info["boot_config"]
    disks = info["storage_configs"]
    serial = f"{work}/raw-serial.log"
    if os.path.exists(serial):
        os.remove(serial)
    sock = f"{work}/raw.sock"
    if os.path.exists(sock):
        os.remove(sock)
    with open(serial, "wb") as out:
        t0 = time.monotonic()
        if name == "cloud-hypervisor":
            disk_args = []
            for d in disks:
                arg = f"path={d['path']}" + (",readonly=on" if d["ro"] else "")
                if d.get("serial"):
                    arg += f",serial={d['serial']}"
                disk_args.append(arg)
            proc = subprocess.Popen(
                [binary, "--api-socket", sock, "--cpus", "boot=1", "--memory", "size=512M",
                 "--kernel", boot["kernel_path"], "--initramfs", boot["initrd_path"],
                 "--cmdline", boot["cmdline"], "--disk", *disk_args,
                 "--serial", "file=" + serial, "--console", "off"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif name == "qemu":
            # What a user would type: microvm with qboot, the same kernel,
            # initrd, command line and disks, the serial port to a file.
            argv = [binary, "-machine", "microvm,accel=kvm", "-bios", "qboot.rom",
                    "-cpu", "max,-arch-capabilities", "-smp", "1", "-m", "512M",
                    "-nodefaults", "-no-user-config", "-display", "none",
                    "-kernel", boot["kernel_path"], "-initrd", boot["initrd_path"],
                    "-append", boot["cmdline"], "-serial", "file:" + serial]
            for i, d in enumerate(disks):
                argv += ["-drive", f"file={d['path']},if=none,id=d{i},format=raw,readonly={'on' if d['ro'] else 'off'}",
                         "-device", f"virtio-blk-device,drive=d{i}"]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        else:
            config = {
                "boot-source": {"kernel_image_path": boot["kernel_path"], "initrd_path": boot["initrd_path"],
                                "boot_args": boot["cmdline"]},
                "drives": [{"drive_id": f"drive_{i}", "path_on_host": d["path"], "is_root_device": False,
                            "is_read_only": d["ro"]} for i, d in enumerate(disks)],
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 512},
            }
            with open(f"{work}/fc.json", "w") as f:
                json.dump(config, f)
            # FC's own log to a file (it must exist): on stdout its lines
            # can land inside the guest's ready line.
            open(f"{work}/raw-fc.log", "w").close()
            proc = subprocess.Popen([binary, "--no-api", "--config-file", f"{work}/fc.json",
                                     "--log-path", f"{work}/raw-fc.log"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
        try:
            ready = wait_for_marker(serial)
        finally:
            kill_tree(proc)
    return ready - t0


if __name__ == "__main__":
    main()
