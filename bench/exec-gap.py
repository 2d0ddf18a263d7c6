#!/usr/bin/env python3
"""The engine's own share of a VM start, without the guest's boot and its
noise: from the kernel's exec of `cocoon vm start` to its exec of the VMM,
read from the scheduler's `sched_process_exec` tracepoint (perf, system
wide, no ptrace: the processes run at full speed). The baseline, measured
in the same run the same way: `cocoon version` from its exec to its exit,
the floor any cocoon command pays (loading, relocation, argument parsing).

Needs root, perf (Debian: linux-perf), Cloud Hypervisor (COCOON_CH_BINARY
or PATH), /dev/kvm, a built cocoon (COCOON_BIN, default
target/release/cocoon) and the test guest kernel.

    python3 bench/exec-gap.py [iterations=21]
"""

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
        events = traced(["sh", "-c", loop], env, work)
        floor, gap = [], []
        started = {}  # pid of a `version` or `vm start` CLI -> its exec time
        pending = None  # exec time of the last `vm start`, until its VMM's exec
        order = []  # the CLIs in exec order: version, start, stop, version, ...
        for t, event, filename, pid in events:
            if event == "sched:sched_process_exec" and filename == cocoon:
                order.append(pid)
                started[pid] = t
                if len(order) % 3 == 2:  # the `vm start`
                    pending = t
            elif event == "sched:sched_process_exec" and filename == ch and pending is not None:
                gap.append((t - pending) * 1000)
                pending = None
            elif event == "sched:sched_process_exit" and pid in started and len(order) % 3 == 1 and pid == order[-1]:
                floor.append((t - started.pop(pid)) * 1000)
        if len(gap) != iterations or len(floor) != iterations:
            raise SystemExit(f"perf saw {len(gap)} VMM launches and {len(floor)} version runs of {iterations}")
        show = lambda x: f"{statistics.median(x):6.2f} ms   (min {min(x):.2f}, max {max(x):.2f})"
        print(f"cocoon's own path, median of {iterations} (Cloud Hypervisor, test guest, --nics 0)")
        print(f"  cocoon version, exec to exit (floor)    {show(floor)}")
        print(f"  vm start, CLI exec to VMM exec          {show(gap)}   "
              f"{statistics.median(gap) / statistics.median(floor):.2f}x the floor")
    finally:
        subprocess.run([cocoon, "vm", "rm", "--force", "g"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
