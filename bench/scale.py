#!/usr/bin/env python3
"""Scale and memory: the engine's cost as records pile up.

  * 100 VMs started one after another (`vm run --nics 0`): the per-VM wall
    time by decile, so a cost that grows with the VMs already running shows
    as a slope; the baseline is the first decile, the ratio last / first.
  * `vm ls` with 1,000 VMs recorded (the 100 running plus 900 created),
    against `vm ls` of an empty root (the process's floor), and its peak RSS.
  * `gc` with 1,000 VMs and 10,000 image blob files (pinned by records, so
    gc keeps every one and has to look at each), against `find` walking the
    same directory tree (the bare cost of listing what gc looks at).
  * peak RSS of `vm run` and the console relay's RSS per running VM.

Each figure is min/median/max of `iterations` runs; baseline and cocoon
alternate in the same run.

The VMM is the fake one of cocoon-testkit (`target/release/fake-vmm`,
built here if missing, or FAKE_VMM): 100 real guests that poll would
saturate a small host and measure the CPU, not the engine. The real VMMs'
start path is vm-boot.py's.

    python3 bench/scale.py [iterations=5] [--rows curve,ls,gc] [--keep DIR] [--clean]

`--rows` prints only the rows named (the 1,000 VMs are set up whatever it
says: `vm ls` and `gc` need them). `--keep DIR` sets up in DIR and leaves it
there with its fake VMMs running, and a later run with the same DIR reuses
it (no 100 starts, no 900 creates): for iterating on one row with
`--rows ls`. `--keep DIR --clean` removes its VMs and DIR and measures
nothing.
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
from benchlib import GUEST_IMAGE, ROOT, cocoon_binary, import_guest

RUNNING = 100
RECORDED = 1000
BLOBS = 10_000


def fake_vmm():
    path = os.environ.get("FAKE_VMM", os.path.join(ROOT, "target/release/fake-vmm"))
    if not os.path.isfile(path):
        subprocess.run(["cargo", "build", "--release", "-p", "cocoon-testkit", "--bin", "fake-vmm"],
                       cwd=ROOT, check=True)
    return path


def timed(argv, env):
    """(wall seconds, peak RSS KiB) of one process, which must succeed."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {err}")
    return wall, usage.ru_maxrss


def stats(values, scale=1000.0):
    v = [x * scale for x in values]
    return min(v), statistics.median(v), max(v)


def fmt(triple, unit="ms"):
    return "/".join(f"{x:.1f}" for x in triple) + f" {unit}"


def memory_kib(pid):
    """(VmRSS, RssAnon, Pss) of a process in KiB: resident, its own
    (anonymous) part, and its proportional share of pages it shares (the
    binary's text, mapped by every relay)."""
    fields = {}
    try:
        for name in ("status", "smaps_rollup"):
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("VmRSS", "RssAnon", "Pss") and rest.split():
                        fields[key] = int(rest.split()[0])
    except (FileNotFoundError, PermissionError):
        return None
    return fields.get("VmRSS"), fields.get("RssAnon"), fields.get("Pss")


def parse_args():
    parser = argparse.ArgumentParser(description="scale and memory benchmark on the fake VMM")
    parser.add_argument("iterations", nargs="?", type=int, default=5)
    parser.add_argument("--rows", default="curve,ls,gc",
                        help="comma-separated rows to print: curve, ls, gc (default: all)")
    parser.add_argument("--keep", metavar="DIR",
                        help="set up in DIR and keep it (with its fake VMMs); reuse it if already set up")
    parser.add_argument("--clean", action="store_true",
                        help="with --keep DIR: remove its VMs and DIR, measure nothing")
    args = parser.parse_args()
    args.rows = set(filter(None, args.rows.split(",")))
    unknown = args.rows - {"curve", "ls", "gc"}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}: expected curve, ls, gc")
    if args.clean and not args.keep:
        parser.error("--clean needs --keep DIR")
    return args


def main():
    args = parse_args()
    iterations = args.iterations
    cocoon = cocoon_binary()
    fake = fake_vmm()
    if args.keep:
        work = os.path.abspath(args.keep)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="cocoon-bench-scale-")
    ready = os.path.join(work, "set-up")
    env = dict(os.environ)
    env.update(
        COCOON_ROOT_DIR=f"{work}/root",
        COCOON_LOG_DIR=f"{work}/log",
        COCOON_CONFIG=f"{work}/config.toml",
        COCOON_CH_BINARY=fake,
    )
    empty = dict(env, COCOON_ROOT_DIR=f"{work}/empty-root", COCOON_LOG_DIR=f"{work}/empty-log")

    def cocoon_cmd(*args, e=env):
        return subprocess.run([cocoon, *args], env=e, check=True, capture_output=True, text=True).stdout

    def remove_all():
        if os.path.isdir(env["COCOON_ROOT_DIR"]):
            for vm in json.loads(cocoon_cmd("vm", "ls", "-o", "json")):
                if vm.get("state") == "running":
                    subprocess.run([cocoon, "vm", "rm", "--force", vm["id"]], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    if args.clean:
        remove_all()
        return
    reuse = os.path.exists(ready)
    print(f"scale (fake VMM {fake}; min/median/max of {iterations} unless said"
          + (f"; reusing {work}" if reuse else "") + ")")
    try:
        if not reuse:
            open(env["COCOON_CONFIG"], "w").close()
            import_guest(cocoon_cmd, work)
            cocoon_cmd("vm", "ls", e=empty)
            set_up(cocoon, cocoon_cmd, env, "curve" in args.rows)
            add_blobs(work, env)
            open(ready, "w").close()
        if "ls" in args.rows:
            ls_row(cocoon, env, empty, iterations)
        if "gc" in args.rows:
            gc_row(cocoon, env, work, iterations)
    finally:
        if not args.keep:
            remove_all()


def set_up(cocoon, cocoon_cmd, env, print_curve):
    """RUNNING VMs started one after another (the curve), then the rest of
    the RECORDED VMs created."""
    run_args = ["vm", "run", "--nics", "0", "--cpu", "1", "--memory", "512M"]
    costs, run_rss = [], []
    for i in range(RUNNING):
        wall, rss = timed([cocoon, *run_args, "--name", f"r{i}", GUEST_IMAGE], env)
        costs.append(wall)
        run_rss.append(rss)
    if print_curve:
        deciles = [statistics.median(costs[d * 10:(d + 1) * 10]) * 1000 for d in range(RUNNING // 10)]
        print(f"{RUNNING} VMs started one after another (vm run --nics 0), median ms per decile:")
        print("  " + "  ".join(f"{d:6.1f}" for d in deciles))
        print(f"  first decile (baseline) {deciles[0]:.1f} ms, last {deciles[-1]:.1f} ms, "
              f"ratio {deciles[-1] / deciles[0]:.2f}x")
        print(f"  vm run peak RSS: {fmt(stats(run_rss, 1 / 1024), 'MiB')}")
        relay_rows(cocoon_cmd)
    create_args = ["vm", "create", "--nics", "0", "--cpu", "1", "--memory", "512M"]
    for i in range(RECORDED - RUNNING):
        cocoon_cmd(*create_args, "--name", f"c{i}", GUEST_IMAGE)


def relay_rows(cocoon_cmd):
    relays = []
    for vm in json.loads(cocoon_cmd("vm", "ls", "-o", "json")):
        relay = (vm.get("console_relay") or {}).get("pid")
        if relay:
            mem = memory_kib(relay)
            if mem and None not in mem:
                relays.append(mem)
    if relays:
        for i, what in enumerate(("RSS", "anonymous RSS", "PSS")):
            print(f"  console relay {what} per VM ({len(relays)} relays): "
                  f"{fmt(stats([r[i] for r in relays], 1 / 1024), 'MiB')}")
    else:
        print("  console relay RSS: no relay pid in `vm ls -o json`")


def ls_row(cocoon, env, empty, iterations):
    ls, ls_rss, floor = [], [], []
    for _ in range(iterations):
        floor.append(timed([cocoon, "vm", "ls"], empty)[0])
        wall, rss = timed([cocoon, "vm", "ls"], env)
        ls.append(wall)
        ls_rss.append(rss)
    f, m = stats(floor), stats(ls)
    print(f"vm ls, {RECORDED} VMs recorded ({RUNNING} running):")
    print(f"  vm ls, empty root (baseline)   {fmt(f)}")
    print(f"  vm ls, {RECORDED} VMs               {fmt(m)}   ratio {m[1] / f[1]:.2f}x   (target <= 20 ms)")
    print(f"  vm ls peak RSS                 {fmt(stats(ls_rss, 1 / 1024), 'MiB')}")


def gc_row(cocoon, env, work, iterations):
    gc, walk = [], []
    for _ in range(iterations):
        walk.append(timed(["find", f"{work}/root", f"{work}/log", "-printf", ""], env)[0])
        gc.append(timed([cocoon, "gc"], env)[0])
    w, g = stats(walk), stats(gc)
    print(f"gc, {RECORDED} VMs and {BLOBS} blobs (all kept):")
    print(f"  find over the same tree (baseline) {fmt(w)}")
    print(f"  cocoon gc                          {fmt(g)}   ratio {g[1] / w[1]:.2f}x   (target <= 1000 ms)")


def add_blobs(work, env):
    """BLOBS layer files in the image store, each pinned by an image record's
    blob reference (rows written straight into the database: 10,000 pulls
    would take an hour), and older than gc's grace period."""
    blobs = f"{work}/root/images/blobs"
    os.makedirs(blobs, exist_ok=True)
    db = sqlite3.connect(f"{work}/root/cocoon.db")
    old = time.time() - 7200
    with db:
        for i in range(BLOBS):
            hexd = f"{i:064x}"
            path = f"{blobs}/{hexd}.erofs"
            with open(path, "wb") as f:
                f.write(b"x")
            os.utime(path, (old, old))
            db.execute("INSERT OR IGNORE INTO blob_refs (owner_kind, owner_id, digest) VALUES ('image', ?, ?)",
                       (f"bench-image-{i // 10}", f"sha256:{hexd}"))
    db.close()


if __name__ == "__main__":
    main()
