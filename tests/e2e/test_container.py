"""A process in its own mount and PID namespaces (like a container), whose libpq is a copy at a
path the host does not have (like one bundled in a wheel): found through /proc/PID/root."""
import glob
import os
import shutil
import subprocess
import time

import pytest

from lib import APP, PY, Tracer, check_against_record, check_against_server, executed

WHEEL_DIR = "/opt/sqlspan-wheel/psycopg2_binary.libs"
WHEEL_LIB = "libpq-5e1f2a3b.so.5.15"


@pytest.fixture
def rootfs(tmp_path):
    """An overlay of the host's root with a private copy of libpq in a wheel-like folder."""
    base = "/tmp/sqlspan-ct-%d" % os.getpid()
    upper, work, merged = base + "/upper", base + "/work", base + "/merged"
    for d in (upper, work, merged):
        os.makedirs(d, exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "lowerdir=/,upperdir=%s,workdir=%s" % (upper, work), merged], check=True)
    try:
        libdir = merged + WHEEL_DIR
        os.makedirs(libdir, exist_ok=True)
        real = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libpq.so.5.*"))[-1]
        shutil.copy(real, os.path.join(libdir, WHEEL_LIB))
        os.symlink(WHEEL_LIB, os.path.join(libdir, "libpq.so.5"))
        yield merged
    finally:
        subprocess.run(["umount", "-l", merged])
        shutil.rmtree(base, ignore_errors=True)


def children(pid):
    out = []
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(st.split("/")[2]))
    return out


def test_process_in_namespaces_with_bundled_libpq(cluster, rootfs, tmp_path):
    assert not os.path.exists(os.path.join(WHEEL_DIR, WHEEL_LIB))  # the host has no such file
    record_in = "/tmp/ct-record.json"
    script = ("mount --make-rprivate / && cd %s && mkdir -p .oldroot && pivot_root . .oldroot && "
              "mount -t proc proc /proc && umount -l /.oldroot && "
              "exec env LD_LIBRARY_PATH=%s %s %s --host 127.0.0.1 --port %s --scenario psycopg2 "
              "--record %s --go") % (rootfs, WHEEL_DIR, PY, APP, cluster.port, record_in)
    p = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "sh", "-c", script],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        assert line == "PID 1\n", (line, p.stderr.read() if p.poll() is not None else "")
        kids = children(p.pid)
        assert len(kids) == 1
        host_pid = kids[0]
        tr = Tracer([host_pid])
        tr.wait_ready()
        assert "tracing PID %d (python3.11): %s/%s" % (host_pid, WHEEL_DIR, WHEEL_LIB) in tr.stderr
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert tr.finish() == 0, tr.stderr
    finally:
        if p.poll() is None:
            p.kill()
    import json
    with open(rootfs + record_in) as f:
        record = json.load(f)
    spans = tr.spans()
    assert check_against_server(cluster, spans, record["backends"]) == len(executed(spans)) >= 11
    assert check_against_record(record, spans) == 11
    assert all(s["process.pid"] == host_pid for s in spans)
    assert all(s["server.address"] == "127.0.0.1" for s in spans)
    time.sleep(0)
