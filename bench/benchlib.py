"""Helpers shared by the VM benchmarks (vm-boot.py, snapshot.py): finding the
VMMs, cocoon and the test guest kernel, importing the guest as an image,
waiting for its ready marker, and talking HTTP to a VMM's API socket."""

import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time

READY = b"COCOON-TEST-GUEST READY"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_IMAGE = "bench/guest:1"


def find_vmm(env, name):
    path = os.environ.get(env) or shutil.which(name)
    return path if path and os.path.isfile(path) else None


def cocoon_binary():
    """COCOON_BIN, or target/release/cocoon (built if missing)."""
    cocoon = os.environ.get("COCOON_BIN", os.path.join(ROOT, "target/release/cocoon"))
    if not os.path.isfile(cocoon):
        subprocess.run(["cargo", "build", "--release", "-p", "cocoon"], cwd=ROOT, check=True)
    return cocoon


def test_kernel():
    kernels = glob.glob(os.path.join(ROOT, "target/*/build/cocoon-testkit-*/out/cocoon-test-guest.elf"))
    if not kernels:
        raise SystemExit("test guest kernel not built: run `cargo build --workspace` first")
    return sorted(kernels)[0]


def import_guest(run, work):
    """Imports the test guest kernel as image GUEST_IMAGE; `run` runs cocoon."""
    layer = f"{work}/layer.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(test_kernel(), arcname="boot/vmlinuz-test")
        initrd = f"{work}/initrd"
        with open(initrd, "wb") as f:
            f.write(b"unused")
        tar.add(initrd, arcname="boot/initrd.img-test")
    run("image", "import", GUEST_IMAGE, layer)
    os.remove(layer)
    os.remove(initrd)


def wait_for_marker(path, deadline_s=20.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with open(path, "rb") as f:
                if READY in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    raise SystemExit(f"no ready marker in {path}")


def wait_for_socket(path, proc, deadline_s=10.0):
    """Polls until `path` accepts connections (the VMM's API is up)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"VMM exited ({proc.returncode}) before its API socket {path} was up")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.0002)
    raise RuntimeError(f"no API socket at {path}")


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def api(sock, method, path, body=None, timeout=120.0):
    """One request to a VMM API socket; returns the decoded JSON body (or
    None). A status >= 300 raises, with the VMM's message."""
    conn = _UnixHTTP(sock, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text.decode(errors='replace')}")
        return json.loads(text) if text.strip() else None
    finally:
        conn.close()


class Qmp:
    """A minimal QMP session: the greeting, `qmp_capabilities`, then one
    command at a time (events in between are skipped)."""

    def __init__(self, sock, timeout=120.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(sock)
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self("qmp_capabilities")

    def __call__(self, command, **arguments):
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            return reply["return"]

    def migrate_file(self, path, incoming=False):
        """A mapped-ram migration to (or from) a file, until completed."""
        self("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram", "state": True}])
        channels = [{"channel-type": "main", "addr": {"transport": "file", "filename": path, "offset": 0}}]
        if incoming:
            self("migrate-incoming", channels=channels)
        else:
            self("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
            self("migrate", channels=channels)
        while True:
            status = self("query-migrate").get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"QEMU migration {status}")
            time.sleep(0.002)

    def close(self):
        self.file.close()
        self.sock.close()
