#!/usr/bin/env python3
"""`cocoon vm create --nics 0` (test guest, default 10 GiB root disk), against
two baselines measured in the same run: `cocoon version` (a process that
starts and exits: the floor of any command) and `truncate` + `mkfs.ext4`
of a disk of the same size with cocoon's mkfs options (what each create
ran before root disks were cloned from a template). The first create (which
makes the template) is reported on its own; the figures are min/median/max
of the rest, the three commands alternating.

    python3 bench/vm-create.py [iterations=20]
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
from benchlib import GUEST_IMAGE, cocoon_binary, import_guest

SIZE = 10 << 30


def wall(argv, env=None):
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {err}")
    return took, usage.ru_maxrss


def triple(values):
    v = [x * 1000 for x in values]
    return f"{min(v):6.1f} / {statistics.median(v):6.1f} / {max(v):6.1f} ms"


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    cocoon = cocoon_binary()
    work = tempfile.mkdtemp(prefix="cocoon-bench-create-")
    env = dict(os.environ)
    env.update(
        COCOON_ROOT_DIR=f"{work}/root",
        COCOON_LOG_DIR=f"{work}/log",
        COCOON_CONFIG=f"{work}/config.toml",
    )
    open(env["COCOON_CONFIG"], "w").close()

    def cocoon_cmd(*args):
        return subprocess.run([cocoon, *args], env=env, check=True, capture_output=True, text=True).stdout

    import_guest(cocoon_cmd, work)
    create = [cocoon, "vm", "create", "--nics", "0", "--cpu", "1", "--memory", "512M"]
    try:
        first, _ = wall([*create, "--name", "first", GUEST_IMAGE], env)
        floor, mkfs, ours, rss = [], [], [], []
        for i in range(iterations):
            floor.append(wall([cocoon, "version"], env)[0])
            disk = f"{work}/mkfs-{i}.raw"
            t0 = time.monotonic()
            subprocess.run(["truncate", "-s", str(SIZE), disk], check=True)
            subprocess.run(["mkfs.ext4", "-F", "-m", "0", "-q", "-E",
                            "lazy_itable_init=1,lazy_journal_init=1,discard", disk], check=True)
            mkfs.append(time.monotonic() - t0)
            os.remove(disk)
            took, peak = wall([*create, "--name", f"c{i}", GUEST_IMAGE], env)
            ours.append(took)
            rss.append(peak)
        med = statistics.median
        print(f"vm create --nics 0 (10 GiB root disk), min / median / max of {iterations}")
        print(f"  cocoon version (process floor)     {triple(floor)}")
        print(f"  truncate + mkfs.ext4 (baseline)    {triple(mkfs)}")
        print(f"  cocoon vm create                   {triple(ours)}   "
              f"{med(ours) / med(mkfs):.2f}x mkfs, {(med(ours) - med(floor)) * 1000:+.1f} ms over the floor "
              f"(target <= 5 ms)")
        print(f"  first create (makes the template)  {first * 1000:6.1f} ms")
        print(f"  vm create peak RSS                 {min(rss) / 1024:.1f} / {med(rss) / 1024:.1f} / "
              f"{max(rss) / 1024:.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
