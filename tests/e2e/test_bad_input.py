"""Bad input gets one clear line and a non-zero exit (or the documented wait); never a crash."""
import os
import signal
import subprocess
import time

import pytest

from lib import SQLSPAN, Tracer


def run(args, user=None, timeout=30):
    cmd = [SQLSPAN] + args
    if user:
        cmd = ["setpriv", "--reuid", user, "--regid", "65534", "--clear-groups"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args,msg", [
    ([], "sqlspan: no process given: use -p PID (see --help)"),
    (["-p", "abc"], "sqlspan: invalid PID 'abc' (expected 1..2147483647)"),
    (["-p", "0"], "sqlspan: invalid PID '0' (expected 1..2147483647)"),
    (["-p"], "sqlspan: option '-p' needs a value"),
    (["--pid"], "sqlspan: option '--pid' needs a value"),
    (["-p", "1", "--bogus"], "sqlspan: unknown option '--bogus' (see sqlspan --help)"),
    (["-p", "1", "-x"], "sqlspan: unknown option '-x' (see sqlspan --help)"),
    (["-p", "1", "-d", "-5"], "sqlspan: invalid duration '-5' (expected seconds > 0)"),
    (["-p", "1", "-d", "soon"], "sqlspan: invalid duration 'soon' (expected seconds > 0)"),
    (["-p", "1", "-m", "5parsecs"], "sqlspan: invalid minimum duration '5parsecs' (e.g. 5ms, 250us, 1s)"),
    (["-p", "1", "--max-sql-bytes", "10"],
     "sqlspan: invalid --max-sql-bytes '10' (expected 64..1036065)"),
    (["-p", "1", "stray"], "sqlspan: unexpected argument 'stray'"),
])
def test_malformed_options(args, msg):
    rc, out, err = run(args)
    assert rc == 2
    assert err == msg + "\n"
    assert out == ""


def test_help():
    rc, out, err = run(["--help"])
    assert rc == 0
    assert "USAGE: sqlspan -p PID" in out and "EXAMPLES:" in out and "--json" in out


def test_not_root():
    rc, out, err = run(["-p", str(os.getpid())], user="nobody")
    assert rc == 1
    assert err.count("\n") == 1
    assert err.startswith("sqlspan: must run as root")


def test_no_such_process():
    rc, out, err = run(["-p", "2147483646"])
    assert (rc, err) == (1, "sqlspan: no process with PID 2147483646\n")


def test_process_without_libpq():
    p = subprocess.Popen(["sleep", "60"])
    try:
        rc, out, err = run(["-p", str(p.pid)])
        assert rc == 1
        assert err == "sqlspan: PID %d (sleep) has loaded neither libpq nor asyncpg; use --wait " \
            "to wait for it, --wire for other drivers\n" % p.pid
    finally:
        p.kill()
        p.wait()


def test_wait_then_process_exits():
    """--wait says it waits; when the process exits without ever loading libpq, it stops."""
    p = subprocess.Popen(["sleep", "60"])
    tr = Tracer([p.pid], ["--wait"])
    tr.wait_ready()
    assert "sqlspan: waiting for PID %d (sleep) to load libpq or asyncpg...\n" % p.pid \
        in tr.err_lines
    time.sleep(0.5)
    assert tr.p.poll() is None
    p.kill()
    p.wait()
    assert tr.finish(timeout=10) == 0
    assert "sqlspan: PID %d exited\n" % p.pid in tr.err_lines
    assert tr.summary() == {"spans": 0, "lost": 0, "open": 0}


def test_duration_limit():
    p = subprocess.Popen(["sleep", "60"])
    try:
        t0 = time.monotonic()
        tr = Tracer([p.pid], ["--wait", "-d", "1"])
        assert tr.finish(timeout=20) == 0
        assert 0.9 < time.monotonic() - t0 < 10
        assert tr.summary()["spans"] == 0
    finally:
        p.kill()
        p.wait()


def test_sigterm_stops_cleanly():
    p = subprocess.Popen(["sleep", "60"])
    try:
        tr = Tracer([p.pid], ["--wait"])
        tr.wait_ready()
        assert tr.stop(signal.SIGTERM) == 0
        assert tr.summary() == {"spans": 0, "lost": 0, "open": 0}
    finally:
        p.kill()
        p.wait()
