#!/usr/bin/env python3
"""The engine's own share of a VM start, without the guest's boot and its
noise: from the kernel's exec of `cocoon vm start` to its exec of the VMM,
read from the scheduler's `sched_process_exec` tracepoint (perf, system
wide, no ptrace: the processes run at full speed); and the same for
`vm run` (create and start). The baseline, measured
in the same run the same way: `cocoon version` from its exec to its exit,
the floor any cocoon command pays (loading, relocation, argument parsing).

Needs root, perf (Debian: linux-perf), Cloud Hypervisor (COCOON_CH_BINARY
or PATH), /dev/kvm, a built cocoon (COCOON_BIN, default
target/release/cocoon) and the test guest kernel.

    python3 bench/exec-gap.py [iterations=21]
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in bench/
from benchlib import GUEST_IMAGE, cocoon_binary, find_vmm, import_guest, test_kernel

EVENT = re.compile(r"\s*([\d.]+):\s+(sched:\S+):(.*)")
FILENAME = re.compile(r"filename=(\S+)")
PID = re.compile(r"\bpid=(\d+)")


def traced(argv, env, work):
    """Runs argv under `perf record` of process exec and exit events; the
    events as (seconds, event, filename or None, pid)."""
    data = f"{work}/perf.data"
    subprocess.run(["perf", "record", "-q", "-a", "-o", data,
                    "-e", "sched:sched_process_exec", "-e", "sched:sched_process_exit", "--", *argv],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "script", "-i", data, "-F", "time,event,trace"],
                         check=True, capture_output=True, text=True).stdout
    events = []
    for line in out.splitlines():
        m = EVENT.match(line)
        pid = m and PID.search(m.group(3))
        if pid:
            filename = FILENAME.search(m.group(3))
            events.append((float(m.group(1)), m.group(2), filename and filename.group(1), int(pid.group(1))))
    return events


def measure(events, cocoon, vmm, cycle):
    """The events of a loop of `cycle` cocoon commands per round: with 3,
    `version`, `vm start`, `vm stop`; with 2, `vm run`, `vm rm`. Returns
    `version`'s exec-to-exit times (cycle 3 only) and the starting
    command's exec-to-VMM-exec times."""
    floor, gaps = [], []
    order, started, pending = [], {}, None
    for t, event, filename, pid in events:
        if event == "sched:sched_process_exec" and filename == cocoon:
            order.append(pid)
            started[pid] = t
            position = len(order) % cycle
            if (cycle == 3 and position == 2) or (cycle == 2 and position == 1):
                pending = t
        elif event == "sched:sched_process_exec" and filename == vmm and pending is not None:
            gaps.append((t - pending) * 1000)
            pending = None
        elif (event == "sched:sched_process_exit" and cycle == 3 and order
              and pid == order[-1] and len(order) % 3 == 1 and pid in started):
            floor.append((t - started.pop(pid)) * 1000)
    return floor, gaps


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    if not shutil.which("perf"):
        print("*** SKIPPED exec-gap: perf is not installed (Debian: linux-perf) ***")
        return
    cocoon = os.path.abspath(cocoon_binary())
    test_kernel()
    ch = find_vmm("COCOON_CH_BINARY", "cloud-hypervisor")
    if not ch:
        print("*** SKIPPED exec-gap: no Cloud Hypervisor (COCOON_CH_BINARY or PATH) ***")
        return
    work = tempfile.mkdtemp(prefix="cocoon-bench-gap-")
    env = dict(os.environ, COCOON_ROOT_DIR=f"{work}/root", COCOON_LOG_DIR=f"{work}/log",
               COCOON_CONFIG=f"{work}/config.toml", COCOON_CH_BINARY=ch)
    open(env["COCOON_CONFIG"], "w").close()

    def cocoon_cmd(*args):
        return subprocess.run([cocoon, *args], env=env, check=True, capture_output=True, text=True).stdout

    try:
        import_guest(cocoon_cmd, work)
        cocoon_cmd("vm", "create", "--nics", "0", "--cpu", "1", "--memory", "512M", "--name", "g", GUEST_IMAGE)
        cocoon_cmd("vm", "start", "g")  # warm caches
        cocoon_cmd("vm", "stop", "--force", "g")
        loop = (f"for i in $(seq {iterations}); do {cocoon} version >/dev/null; {cocoon} vm start g >/dev/null; "
                f"sleep 0.3; {cocoon} vm stop --force g >/dev/null; sleep 0.2; done")
        floor, start = measure(traced(["sh", "-c", loop], env, work), cocoon, ch, cycle=3)
        run_argv = f"{cocoon} vm run --nics 0 --cpu 1 --memory 512M --name r$i {GUEST_IMAGE}"
        loop = (f"for i in $(seq {iterations}); do {run_argv} >/dev/null; sleep 0.3; "
                f"{cocoon} vm rm --force r$i >/dev/null; sleep 0.2; done")
        _, run = measure(traced(["sh", "-c", loop], env, work), cocoon, ch, cycle=2)
        for what, got in (("VMM launches", start), ("version runs", floor), ("vm run launches", run)):
            if len(got) != iterations:
                raise SystemExit(f"perf saw {len(got)} {what} of {iterations}")
        show = lambda x: f"{statistics.median(x):6.2f} ms   (min {min(x):.2f}, max {max(x):.2f})"
        ratio = lambda x: f"{statistics.median(x) / statistics.median(floor):.2f}x the floor"
        print(f"cocoon's own path, median of {iterations} (Cloud Hypervisor, test guest, --nics 0)")
        print(f"  cocoon version, exec to exit (floor)    {show(floor)}")
        print(f"  vm start, CLI exec to VMM exec          {show(start)}   {ratio(start)}")
        print(f"  vm run, CLI exec to VMM exec            {show(run)}   {ratio(run)}")
    finally:
        # Never leave a VM running, whatever failed.
        listed = subprocess.run([cocoon, "vm", "ls", "-o", "json"], env=env, capture_output=True, text=True)
        for vm in json.loads(listed.stdout or "[]"):
            subprocess.run([cocoon, "vm", "rm", "--force", vm["id"]], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
