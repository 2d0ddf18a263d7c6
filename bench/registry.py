#!/usr/bin/env python3
"""`snapshot push` / `snapshot pull` against `skopeo copy` of the same bytes as
one layer, through one local docker-registry, in the same run.

A VM (Cloud Hypervisor if COCOON_CH_BINARY or PATH has it, else the testkit's
fake VMM) gets SIZE MiB of random data written into its root disk, then is
snapshotted: the snapshot's data is those bytes plus what the VMM wrote. The
baseline is skopeo pushing (oci: layout -> docker://) and pulling back
(docker:// -> oci:) one layer holding the snapshot's data bytes. Then a
second snapshot of the same VM, with 4 MiB of its disk changed, is pushed
(the incremental push: only changed blocks go).

Usage: COCOON_BIN=target/release/cocoon python3 bench/registry.py [runs] [MiB]
"""

import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SIZE_MIB = int(sys.argv[2]) if len(sys.argv) > 2 else 512


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_registry(work):
    addr = f"127.0.0.1:{free_port()}"
    config = f"{work}/registry.yml"
    with open(config, "w") as f:
        f.write(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {work}/registry\nhttp:\n  addr: {addr}\n"
        )
    log = open(f"{work}/registry.log", "w")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=log, stderr=log)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            socket.create_connection(tuple([addr.split(":")[0], int(addr.split(":")[1])])).close()
            return proc, addr
        except OSError:
            time.sleep(0.02)
    raise SystemExit("docker-registry did not start")


def timed(cmd, env=None):
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - t, out


def oci_layout(path, data_files):
    """An OCI image layout with one layer: the concatenated data bytes."""
    os.makedirs(f"{path}/blobs/sha256")
    h = hashlib.sha256()
    size = 0
    tmp = f"{path}/layer"
    with open(tmp, "wb") as out:
        for name in data_files:
            with open(name, "rb") as f:
                while chunk := f.read(1 << 20):
                    if chunk.count(0) != len(chunk):  # the data, not the holes
                        out.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
    layer = h.hexdigest()
    os.rename(tmp, f"{path}/blobs/sha256/{layer}")

    def blob(doc):
        raw = json.dumps(doc).encode()
        digest = hashlib.sha256(raw).hexdigest()
        with open(f"{path}/blobs/sha256/{digest}", "wb") as f:
            f.write(raw)
        return {"digest": f"sha256:{digest}", "size": len(raw)}

    config = blob({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]}})
    manifest = blob({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer}", "size": size}],
    })
    with open(f"{path}/oci-layout", "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(f"{path}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}]}, f)
    return size


def one_run(cocoon, vmm_env, run_no):
    work = tempfile.mkdtemp(prefix="cocoon-bench-registry-")
    registry, addr = start_registry(work)
    open(f"{work}/config.toml", "w").close()
    env = dict(os.environ, COCOON_ROOT_DIR=f"{work}/a", COCOON_CONFIG=f"{work}/config.toml", **vmm_env)
    env_b = dict(env, COCOON_ROOT_DIR=f"{work}/b")

    def run(*args, e=env):
        return subprocess.run([cocoon, *args], env=e, check=True, capture_output=True, text=True).stdout

    try:
        benchlib.import_guest(lambda *a: run(*a), work)
        benchlib.import_guest(lambda *a: run(*a, e=env_b), work)
        run("vm", "run", "--nics", "0", "--memory", "512M", "--name", "src", benchlib.GUEST_IMAGE)
        vm = json.loads(run("vm", "inspect", "src"))
        cow = next(d["path"] for d in vm["storage_configs"] if d["role"] == "cow")
        with open(cow, "r+b") as f:
            f.seek(64 << 20)
            for _ in range(SIZE_MIB):
                f.write(os.urandom(1 << 20))
        run("snapshot", "save", "--name", "s", "src")
        snap = json.loads(run("snapshot", "inspect", "s"))
        files = [os.path.join(snap["data_dir"], n) for n in sorted(os.listdir(snap["data_dir"])) if n != "cocoon.json"]
        size = oci_layout(f"{work}/oci", files)

        ref = f"{addr}/bench/snap:v1"
        t_push, out = timed([cocoon, "snapshot", "push", "-o", "json", "s", ref], env)
        pushed = json.loads(out)
        t_pull, _ = timed([cocoon, "snapshot", "pull", "-o", "json", ref], env_b)
        skopeo = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--src-tls-verify=false"]
        t_sk_push, _ = timed([*skopeo, f"oci:{work}/oci", f"docker://{addr}/bench/layer:v1"])
        t_sk_pull, _ = timed([*skopeo, f"docker://{addr}/bench/layer:v1", f"oci:{work}/oci-back"])

        with open(cow, "r+b") as f:
            f.seek(64 << 20)
            f.write(os.urandom(4 << 20))
        run("snapshot", "save", "--name", "s2", "src")
        t_incr, out = timed([cocoon, "snapshot", "push", "-o", "json", "s2", f"{addr}/bench/snap:v2"], env)
        incr = json.loads(out)
        print(f"run {run_no}: data {size >> 20} MiB; push {t_push:.2f}s (skopeo {t_sk_push:.2f}s), "
              f"pull {t_pull:.2f}s (skopeo {t_sk_pull:.2f}s), incremental push {t_incr:.2f}s "
              f"sending {incr['sent_bytes'] >> 20} of {incr['bytes'] >> 20} MiB", flush=True)
        return t_push, t_sk_push, t_pull, t_sk_pull, t_incr, pushed["bytes"], incr["sent_bytes"]
    finally:
        for root in (f"{work}/a", f"{work}/b"):
            subprocess.run([cocoon, "vm", "rm", "--force", "src"], env=dict(env, COCOON_ROOT_DIR=root), capture_output=True)
        registry.terminate()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    cocoon = benchlib.cocoon_binary()
    ch = benchlib.find_vmm("COCOON_CH_BINARY", "cloud-hypervisor")
    if ch is None:
        fake = os.path.join(benchlib.ROOT, "target/release/fake-vmm")
        subprocess.run(["cargo", "build", "--release", "-p", "cocoon-testkit", "--bin", "fake-vmm"], cwd=benchlib.ROOT, check=True)
        ch = fake
    if shutil.which("skopeo") is None or shutil.which("docker-registry") is None:
        raise SystemExit("needs skopeo and docker-registry (apt-get install skopeo docker-registry)")
    rows = [one_run(cocoon, {"COCOON_CH_BINARY": ch}, i + 1) for i in range(RUNS)]
    cols = list(zip(*rows))

    def stat(xs):
        return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f} s"

    print(f"\nsnapshot through a registry, {SIZE_MIB} MiB of disk data, {RUNS} runs (min / median / max):")
    print(f"  {'':28} {'cocoon':>24} {'skopeo (one layer)':>24} {'ratio':>7}")
    for name, ours, theirs in (("push", cols[0], cols[1]), ("pull", cols[2], cols[3])):
        print(f"  {name:28} {stat(ours):>24} {stat(theirs):>24} {statistics.median(ours) / statistics.median(theirs):>6.2f}x")
    print(f"  {'incremental push (4 MiB)':28} {stat(cols[4]):>24} {stat(cols[1]):>24} "
          f"{statistics.median(cols[4]) / statistics.median(cols[1]):>6.2f}x")
    print(f"  incremental push sent {statistics.median(cols[6]) / (1 << 20):.0f} MiB of {statistics.median(cols[5]) / (1 << 20):.0f} MiB")


if __name__ == "__main__":
    main()
