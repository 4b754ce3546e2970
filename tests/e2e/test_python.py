"""Python call sites and SQLAlchemy identity, read by the BPF side from the CPython stack.

Ground truth is the app's own record: in a before_cursor_execute listener it notes id(conn) of
the sync Connection and its call site (the innermost frame of its own file, via the frame
objects `inspect` uses). The matrix covers CPython 3.11 (Debian's static binary, pyenv's shared
libpython), 3.12, and trixie's 3.13 / sid's 3.14 in their own root filesystems, run like
containers (own mount and PID namespaces)."""
import json
import os
import re
import subprocess

import pytest

SECRET_PW = "s3cret-Pw"  # the password in the app's engine URL (tests/apps/workload.py)

from lib import (APP, PY, ROOT, Tracer, check_against_server, executed, run_in_rootfs, short,
                 spans_by_backend)

PYENV = "/root/.pyenv/versions"


def overlay_sa20():
    return subprocess.run([os.path.join(ROOT, "scripts", "pyoverlay.sh"), "sa20", "trixie",
                           "python3-sqlalchemy", "python3-typing-extensions", "python3-psycopg"],
                          check=True, capture_output=True, text=True).stdout.strip()


def rootfs(suite):
    return subprocess.run([os.path.join(ROOT, "scripts", "rootfs.sh"), suite], check=True,
                          capture_output=True, text=True).stdout.strip()


def pyenv(ver):
    exe = os.path.join(PYENV, ver, "bin", "python" + ver.rsplit(".", 1)[0])
    if not os.access(exe, os.X_OK):
        pytest.fail("%s is missing: this kind of machine comes with pyenv %s" % (exe, ver))
    return exe


class Target:
    """How to start the app under one interpreter."""

    def __init__(self, name, driver, python=PY, pythonpath=None, suite=None):
        self.name, self.driver, self.python = name, driver, python
        self.pythonpath, self.suite = pythonpath, suite


TARGETS = [
    ("debian-3.11-sa1.4-psycopg2", lambda: Target("debian-3.11", "psycopg2")),
    ("pyenv-3.11-sa2.0-psycopg2", lambda: Target(
        "pyenv-3.11", "psycopg2", pyenv("3.11.7"),
        overlay_sa20() + ":/usr/lib/python3/dist-packages")),
    ("pyenv-3.11-sa2.0-psycopg", lambda: Target(
        "pyenv-3.11", "psycopg", pyenv("3.11.7"),
        overlay_sa20() + ":/usr/lib/python3/dist-packages")),
    ("pyenv-3.12-sa2.0-psycopg", lambda: Target(
        "pyenv-3.12", "psycopg", pyenv("3.12.1"), overlay_sa20())),
    ("trixie-3.13-sa2.0-psycopg2", lambda: Target("trixie-3.13", "psycopg2", suite="trixie")),
    ("trixie-3.13-sa2.0-psycopg", lambda: Target("trixie-3.13", "psycopg", suite="trixie")),
    ("sid-3.14-sa2.0-psycopg2", lambda: Target("sid-3.14", "psycopg2", suite="sid")),
    ("sid-3.14-sa2.0-psycopg", lambda: Target("sid-3.14", "psycopg", suite="sid")),
]


def start_app(target, cluster, tmpdir, threads=8):
    """Start the call-site app; returns (Popen, host pid, record path on the host, app file)."""
    args = ["--host", "127.0.0.1", "--port", cluster.port, "--scenario", "callsite", "--driver",
            target.driver, "--threads", str(threads), "--go"]
    if not target.suite:
        record = os.path.join(tmpdir, "record.json")
        env = dict(os.environ)
        if target.pythonpath:
            env["PYTHONPATH"] = target.pythonpath
        p = subprocess.Popen([target.python, APP, "--record", record] + args,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        line = p.stdout.readline()
        assert line.startswith("PID "), (line, p.poll() is not None and p.stderr.read())
        return p, int(line.split()[1]), record, APP
    # a root filesystem of its own, own mount and PID namespaces; the app bound in at /app
    p, pid, appdir = run_in_rootfs(rootfs(target.suite), APP,
                                   ["--record", "/app/record.json"] + args)
    return p, pid, os.path.join(appdir, "record.json"), "/app/workload.py"


def compare_sites(record, spans):
    """Join the app's records to sqlspan's spans (same backend, same text, in order) and count
    exact call sites, connection ids and engine URLs."""
    mine = spans_by_backend(spans, record["backends"])
    pos = {b: 0 for b in record["backends"]}
    n = site_ok = conn_ok = url_ok = 0
    misses, url_misses = [], []
    for r in record["records"]:
        if r["text"] is None or r.get("site") is None:
            continue
        lst, b = mine[r["backend"]], r["backend"]
        while pos[b] < len(lst) and (lst[pos[b]]["db.query.text"] != r["text"] or
                                     lst[pos[b]]["sqlspan.request"] == "prepare"):
            pos[b] += 1
        assert pos[b] < len(lst), "no span for %s on backend %d" % (short(r["text"]), b)
        s = lst[pos[b]]
        pos[b] += 1
        n += 1
        if (s.get("code.file.path"), s.get("code.line.number")) == (r["site"][0], r["site"][1]):
            site_ok += 1
        else:
            misses.append((r["site"], s.get("code.file.path"), s.get("code.line.number"),
                           s.get("code.function.name"), s.get("sqlspan.python.problem"),
                           s.get("python.stack"), s.get("python.stack.cut"), short(r["text"], 60)))
        if s.get("sqlalchemy.connection.id") == r["conn_id"]:
            conn_ok += 1
        if s.get("sqlalchemy.engine.url") == r["url"]:
            url_ok += 1
        else:
            url_misses.append((r["url"], s.get("sqlalchemy.engine.url"), short(r["text"], 50)))
    return n, site_ok, conn_ok, (url_ok, url_misses), misses


def check_transactions(record, spans, sa14):
    """Statements the app ran between its own begin and commit/rollback (SQLAlchemy's events, per
    sync Connection) share one sqlspan transaction, whose span has the outcome the app saw."""
    txns = {s["span_id"]: s for s in spans if s.get("sqlspan.span_type") == "transaction"}
    stmt_span = {}
    mine = spans_by_backend(spans, record["backends"])
    pos = {b: 0 for b in record["backends"]}
    for idx, r in enumerate(record["records"]):
        if r.get("event") or r["text"] is None:
            continue
        lst, b = mine[r["backend"]], r["backend"]
        while pos[b] < len(lst) and (lst[pos[b]]["db.query.text"] != r["text"] or
                                     lst[pos[b]]["sqlspan.request"] == "prepare"):
            pos[b] += 1
        stmt_span[idx] = lst[pos[b]]
        pos[b] += 1
    open_groups, groups = {}, []
    for idx, r in enumerate(record["records"]):
        ev = r.get("event")
        if ev == "begin":
            open_groups[r["conn_id"]] = {"stmts": [], "outcome": None}
        elif ev in ("commit", "rollback") and r["conn_id"] in open_groups:
            g = open_groups.pop(r["conn_id"])
            g["outcome"] = ev
            groups.append(g)
        elif not ev and idx in stmt_span and r["conn_id"] in open_groups:
            open_groups[r["conn_id"]]["stmts"].append(stmt_span[idx])
    checked = 0
    for g in groups:
        if not g["stmts"]:
            continue
        ids = {s.get("sqlspan.transaction.id") for s in g["stmts"]}
        assert len(ids) == 1 and None not in ids, (ids, g["outcome"], [
            (x["db.query.text"][:50], x.get("postgresql.transaction_status"),
             x.get("sqlspan.transaction.id")) for x in g["stmts"]])
        tx = txns[ids.pop()]
        assert tx["sqlspan.transaction.outcome"] == g["outcome"], (tx, g["outcome"])
        assert tx["sqlspan.transaction.statements"] >= len(g["stmts"])
        assert all(s["parent_span_id"] == tx["span_id"] and s["trace_id"] == tx["trace_id"]
                   for s in g["stmts"])
        checked += 1
    assert checked >= 8 * 21, checked
    assert sum(1 for g in groups if g["outcome"] == "rollback") >= 8
    # rollbacks SQLAlchemy's pool issues on checkin are pool resets, not the app's rollbacks
    resets = [t for t in txns.values() if t["sqlspan.transaction.outcome"] == "pool_reset"]
    app_resets = sum(1 for r in record["records"] if r.get("event") == "pool_reset")
    assert len(resets) <= app_resets, (len(resets), app_resets)
    if sa14:  # 1.4 leaves deep()'s transaction to the pool's reset; 2.0 rolls it back itself
        assert len(resets) >= 1
    app_rollbacks = sum(1 for r in record["records"] if r.get("event") == "rollback")
    rollbacks = [t for t in txns.values() if t["sqlspan.transaction.outcome"] == "rollback"]
    # the app's own, plus the ones SQLAlchemy issues itself when it first connects
    assert app_rollbacks <= len(rollbacks) <= app_rollbacks + 4, (len(rollbacks), app_rollbacks)
    return checked


@pytest.mark.parametrize("name,make", TARGETS, ids=[t[0] for t in TARGETS])
def test_call_sites(cluster, tmp_path, name, make):
    target = make()
    p, pid, record_path, app_file = start_app(target, cluster, str(tmp_path))
    tr = Tracer([pid], ["--stack", "-v"])
    try:
        tr.wait_ready()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    assert tr.finish() == 0, tr.stderr
    assert "CPython 3.1" in tr.stderr, tr.stderr
    with open(record_path) as f:
        record = json.load(f)
    spans = tr.spans(transactions=True)
    assert tr.summary()["lost"] == 0
    assert check_against_server(cluster, spans, record["backends"]) == len(executed(spans))
    n, site_ok, conn_ok, (url_ok, url_misses), misses = compare_sites(record, spans)
    assert n >= 8 * 20 * 3
    assert conn_ok == n, "sqlalchemy.connection.id right for %d of %d" % (conn_ok, n)
    # the engine's URL as the app's own render_as_string(hide_password=True) shows it
    assert url_ok == n, "sqlalchemy.engine.url right for %d of %d: %s" % (url_ok, n,
                                                                         url_misses[:3])
    assert all(":***@" in r["url"] for r in record["records"] if "url" in r)
    # and, past the first statements, from the engine the BPF side read at the statement (a
    # short-lived Connection is often gone by the time userspace reads the record)
    m = re.search(r"sqlalchemy.engine.url: (\d+) read at the statement, (\d+) from a live "
                  r"Connection, (\d+) remembered by dialect, (\d+) unknown", tr.stderr)
    assert m, tr.stderr[-2000:]
    at_stmt, live, remembered, unknown = map(int, m.groups())
    assert unknown == 0 and at_stmt >= 0.9 * n, m.group(0)
    # the walk never reads memory that is not there routinely: a failed read is a page fault
    # (a probe trap's price on some hypervisors); the bottom of a data stack chunk makes one
    # per thread and chunk (its page is then remembered; 1-5 a thread seen with --stack's deep
    # walks, the most on 3.13+, whose chunks come and go), never one a statement
    m = re.search(r"Python stack reads that failed: (\d+)", tr.stderr)
    assert m and int(m.group(1)) * 5 <= n, (m and m.group(0), n)
    assert SECRET_PW not in "".join(tr.out_lines + tr.err_lines)
    assert site_ok * 1000 >= n * 999, "call site exact for %d of %d; first misses: %s" % (
        site_ok, n, misses[:5])
    # every statement span has a Python view; the app's own lines are named
    for s in executed(spans):
        assert s.get("code.file.path") == app_file, s
        assert s.get("python.stack"), s
    check_transactions(record, spans, "sa1.4" in name)
    deep = [s for s in spans if s.get("db.query.text") == "SELECT 'deep' AS d"]
    assert len(deep) == 1 and deep[0].get("python.stack.cut") is True
    assert deep[0]["python.stack"][-1] == "..."
    assert deep[0]["code.function.name"] == "deep"


def test_not_python_and_no_python(cluster):
    """pgbench gets spans without Python keys; --no-python turns stacks off for Python too."""
    import test_clients
    out, tr = test_clients.run_paused(cluster, ["psql", "-X", "-h", cluster.sockdir, "-p",
                                                cluster.port, "-U", "postgres", "-c",
                                                "SELECT 1"])
    spans = tr.spans()
    assert spans and not any(k.startswith(("code.", "python.", "sqlalchemy.")) for s in spans
                             for k in s)


def test_unsupported_interpreter(cluster, tmp_path):
    """CPython 3.9 (bullseye's, in a root filesystem of its own, like a container): sqlspan says
    once that it cannot read its stacks, and the statements still get their driver-level spans."""
    fs = subprocess.run([os.path.join(ROOT, "scripts", "rootfs.sh"), "bullseye",
                         "python3,python3-psycopg2,libpq5,mount,util-linux"], check=True,
                        capture_output=True, text=True).stdout.strip()
    sql = ["SELECT 1", "SELECT 'old interpreter' AS what", "SELECT 2"]
    p, pid, _ = run_in_rootfs(fs, APP, ["--host", "127.0.0.1", "--port", cluster.port,
                                        "--scenario", "sql", "--go", "--record",
                                        "/app/record.json"] + [x for q in sql
                                                               for x in ("--sql", q)],
                              str(tmp_path))
    tr = Tracer([pid])
    try:
        tr.wait_ready()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    except BaseException:
        p.kill()
        tr.stop()
        raise
    assert tr.stop() == 0, tr.stderr
    warnings = [x for x in tr.err_lines if "warning" in x]
    assert warnings == ["sqlspan: warning: PID %d: CPython older than 3.11 (no Py_Version): "
                        "spans will have no Python call sites\n" % pid], tr.err_lines
    spans = tr.spans()
    assert [s["db.query.text"] for s in executed(spans)] == sql
    assert not any(k.startswith(("code.", "python.", "sqlalchemy.")) for s in spans for k in s)


def test_code_objects_torn_down(cluster, tmp_path):
    """Every statement made by a function compiled for it and freed right after, in 4 threads, with
    --stack: sqlspan reads frames and names code objects that may be gone or reused by then. It
    must never crash or lose a statement; a "<churn T:N>" frame whose code object was freed and
    its address reused is left unnamed (sqlspan compares the code object's identity as read with
    the stack: its strings' addresses, its file name's length, hash and end), never misnamed."""
    import re
    from lib import App
    app = App(cluster, "churn", str(tmp_path), threads=4)
    tr = Tracer([app.pid], ["--stack"])
    try:
        tr.wait_ready()
        app.go()
        record = app.wait(timeout=300)
    except BaseException:
        app.p.kill()
        tr.stop()
        raise
    assert tr.finish() == 0, tr.stderr  # it ends with the app
    spans = tr.spans()
    assert check_against_server(cluster, spans, record["backends"]) == 4 * 2000
    named = wrong = 0
    for s in executed(spans):
        m = re.match(r"SELECT (\d+), (\d+)\Z", s["db.query.text"])
        assert m, s["db.query.text"]
        for frame in s.get("python.stack", []):
            f = re.search(r"\(<churn (\d+):(\d+)>:\d+\)", frame)
            if f:
                named += 1
                wrong += f.groups() != m.groups()
    # a code object freed and another allocated at its address, with its strings at the
    # addresses of the old one's (same sizes: this test's pattern), is told apart by its file
    # name's length and last bytes (each function here has a file name of its own, never
    # hashed): left unnamed, never misnamed
    assert named > 300, named
    assert wrong == 0, (named, wrong)
