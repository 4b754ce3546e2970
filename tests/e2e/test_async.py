"""End to end: asyncpg, which speaks the protocol itself (no libpq), alone and under SQLAlchemy's
AsyncEngine / AsyncSession, traced by PID (tests/apps/async_workload.py, Debian's SQLAlchemy 1.4,
asyncpg 0.27). Ground truth: the server's statement log and the app's own record.

What asyncpg does on the wire (seen with strace): a statement is prepared with
Parse/Describe/Flush (no Sync: no ReadyForQuery ends it), named __asyncpg_stmt_N__ (unnamed above
15 KB), then run with Bind/Execute/Sync; fetchrow/fetchval ask for one row (PortalSuspended, no
CommandComplete); executemany sends Bind/Execute per row and one Sync; a cursor binds a named portal
(Bind/Sync) and runs it with row limits ("execute fetch from ..." in the log); unused statements
are closed with Close/Sync; transactions and argument-less execute() use simple queries; a syntax
error comes back to the Parse, before the Sync asyncpg then sends; COPY runs as a simple query.
"""
import os
import signal
import subprocess

import pytest

from lib import (PY, ROOT, App, Tracer, check_against_record, check_against_server, executed,
                 short)

ASYNC_APP = os.path.join(ROOT, "tests", "apps", "async_workload.py")


class AsyncApp(App):
    """tests/apps/async_workload.py in its own process, waiting for "go" on stdin."""

    def __init__(self, cluster, scenario, tmpdir, connect_first=False):
        self.record_path = os.path.join(tmpdir, "record-%s-%d.json" % (scenario, id(self)))
        cmd = [PY, ASYNC_APP, "--host", cluster.sockdir, "--port", cluster.port,
               "--scenario", scenario, "--record", self.record_path, "--go"]
        if connect_first:
            cmd.append("--connect-first")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line.startswith("PID "):
            self.p.kill()
            raise RuntimeError("app did not start: %r %s" % (line, self.p.stderr.read()))
        self.pid = int(line.split()[1])


def trace_async(cluster, scenario, tmpdir, connect_first=False):
    """Start the app, attach sqlspan --json, let the app run: (record, spans, tracer, pid)."""
    app = AsyncApp(cluster, scenario, tmpdir, connect_first=connect_first)
    tr = Tracer([app.pid])
    try:
        tr.wait_ready()
        app.go()
        record = app.wait()
    except BaseException:
        app.p.kill()
        app.p.wait()
        tr.stop(signal.SIGKILL)
        raise
    rc = tr.stop()
    assert rc == 0, tr.stderr
    return record, tr.spans(), tr, app.pid


def server_view(spans):
    """The spans as the server's log sees statements. A statement that fails at its Parse (a
    syntax error: asyncpg prepares with Parse/Describe/Flush before it binds) is in the log as
    an error; sqlspan may report it as the prepare request it was: count a failed prepare as a
    statement the server ran. Copies; the spans themselves are left as they are."""
    out = []
    for s in spans:
        if s.get("sqlspan.request") == "prepare" and s.get("sqlspan.result") == "error":
            s = dict(s)
            s["sqlspan.request"] = "execute"
        out.append(s)
    return out


def recorded(record):
    """How many statements of the app's record check_against_record must find."""
    return sum(r["many"] or 1 for r in record["records"] if r["text"] is not None)


def app_errors(record):
    return sorted(r["sqlstate"] for r in record["records"] if r.get("outcome") == "error")


def check_clean(tr, spans):
    summ = tr.summary()
    assert summ["lost"] == 0, tr.stderr
    assert summ["open"] == 0, tr.stderr
    assert summ["spans"] == len(spans), tr.stderr
    assert spans, "no spans: %s" % tr.stderr
    bad = [s for s in spans if s["sqlspan.result"] not in ("ok", "error")]
    assert not bad, bad[:3]


def check_identity(spans, cluster, backends, early=()):
    """Every span is a wire capture of a PostgreSQL statement on one of the app's connections.
    Connections sqlspan saw start carry their backend PID, database and user; those opened
    before it attached (early) may have none."""
    for s in spans:
        assert s["db.system.name"] == "postgresql", s
        assert s["sqlspan.capture"] == "wire", s
        assert s["server.address"] == cluster.sockpath, s
        assert s.get("network.transport") == "unix", s
        assert "server.port" not in s or s["server.port"] is None, s
        assert s["process.executable.name"].startswith("python3"), s
        b = s.get("postgresql.backend_pid")
        if b is None:
            assert early, ("backend PID unknown on a connection sqlspan saw start", s)
        else:
            assert b in backends, s
        if b is not None and b not in early:
            assert s["db.namespace"] == "postgres", s
            assert s["postgresql.user"] == "postgres", s
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16
        assert s["end_time_unix_nano"] >= s["start_time_unix_nano"]
        assert s["duration_ns"] == s["end_time_unix_nano"] - s["start_time_unix_nano"]


def check_all(cluster, record, spans, tr):
    check_clean(tr, spans)
    backends = record["backends"]
    view = server_view(spans)
    n = check_against_server(cluster, view, backends)
    assert n == len(executed(view))
    assert check_against_record(record, view) == recorded(record)
    check_identity(spans, cluster, backends)
    return view, n


def check_sync_side(record, spans, learning=0):
    """What only the greenlet held by greenlet_spawn knows, and the running stack's call site:
    sqlalchemy.connection.id is id() of the sync Connection the app's own listener saw, and the
    call site is the line of the app's coroutine that awaited the statement. sqlspan learns where
    greenlet_spawn keeps its greenlet on the first statement that runs through it: none may lack
    the connection (but `learning`), none may carry a wrong one."""
    mine = {b: sorted([s for s in spans if s.get("postgresql.backend_pid") == b and
                       (s.get("sqlspan.request") != "prepare" or
                        s.get("sqlspan.result") == "error")],  # failed at Parse
                      key=lambda s: s["start_time_unix_nano"]) for b in record["backends"]}
    pos = {b: 0 for b in record["backends"]}
    total = with_conn = sites = 0
    for r in record["records"]:
        if r.get("text") is None or r.get("conn_id") is None:
            continue
        lst, b = mine[r["backend"]], r["backend"]
        for _ in range(r.get("many") or 1):
            while pos[b] < len(lst) and lst[pos[b]].get("db.query.text") != r["text"]:
                pos[b] += 1
            assert pos[b] < len(lst), "not found: %s" % short(r["text"])
            s = lst[pos[b]]
            pos[b] += 1
            total += 1
            if "sqlalchemy.connection.id" in s:
                assert s["sqlalchemy.connection.id"] == r["conn_id"], (r, s)
                with_conn += 1
            if r.get("await_line") is not None:
                assert s.get("code.line.number") == r["await_line"] and \
                    s.get("code.function.name", "").endswith(r["await_func"]), (r, s)
                sites += 1
    assert total > 20 and with_conn >= total - learning, (with_conn, total)
    assert sites > 20
    return total


def test_async_orm(cluster, tmp_path):
    """AsyncSession ORM and Core over asyncpg: SQLAlchemy's prepared-statement cache (Parse once,
    then Bind/Execute by name), executemany, explicit transactions, errors at execute and at
    parse, non-ASCII, multi-line and 20 KB statements."""
    record, spans, tr, _ = trace_async(cluster, "async-orm", str(tmp_path))
    view, n = check_all(cluster, record, spans, tr)
    assert n > 50 and len(record["backends"]) >= 1
    texts = [s["db.query.text"] for s in executed(view)]
    assert any("Zoë Ærøskøbing 東京 🐘" in t for t in texts)
    assert any(len(t) > 20000 for t in texts)
    assert any("\n  LEFT JOIN a_orders o" in t for t in texts)
    assert any("'a%b'" in t for t in texts)
    ops = {s.get("db.operation.name") for s in executed(view)}
    assert {"SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK",
            "CREATE TABLE", "DROP TABLE"} <= ops, ops
    errs = sorted(s.get("db.response.status_code") for s in spans
                  if s["sqlspan.result"] == "error")
    assert errs == app_errors(record) and len(errs) >= 2, errs
    assert [r for r in record["records"] if r.get("many", 0) > 1]  # executemany ran
    check_sync_side(record, spans)


def test_async_concurrent(cluster, tmp_path):
    """50 asyncio tasks over a pool of 10 asyncpg connections, interleaved on one thread."""
    record, spans, tr, pid = trace_async(cluster, "async-concurrent", str(tmp_path))
    check_all(cluster, record, spans, tr)
    assert len(record["backends"]) == 10
    assert len({r["task"] for r in record["records"]
                if (r.get("task") or "").startswith("worker-")}) == 50
    assert {s["thread.id"] for s in spans} == {pid}
    check_sync_side(record, spans)


def test_asyncpg_raw(cluster, tmp_path):
    """asyncpg without SQLAlchemy: its statement cache, simple-query strings of several
    statements, executemany, prepared statements (auto-named and named), a cursor's portal run
    with row limits, COPY in and out, errors at bind, at parse and in a simple query."""
    record, spans, tr, _ = trace_async(cluster, "asyncpg-raw", str(tmp_path))
    view, n = check_all(cluster, record, spans, tr)
    texts = [s["db.query.text"] for s in executed(view)]
    assert any(t.startswith("DROP TABLE IF EXISTS raw_items;\nCREATE TABLE") for t in texts)
    assert any(len(t) > 20000 for t in texts)
    assert 'COPY "raw_items" FROM STDIN (FORMAT binary)' in texts
    # the cursors' portals ran with row limits: "execute fetch from" in the log, each a statement
    fetches = [d for d in cluster.entries(record["backends"])
               if d.get("message", "").startswith("execute fetch from ")]
    assert len(fetches) >= 2
    errs = sorted(s.get("db.response.status_code") for s in spans
                  if s["sqlspan.result"] == "error")
    assert errs == app_errors(record) and len(errs) >= 3, errs


@pytest.mark.parametrize("scenario", ["async-orm", "asyncpg-raw"])
def test_async_attach_after_connect(cluster, tmp_path, scenario):
    """The app connected (and ran a statement) before sqlspan attached: every statement after
    the attach still has its span with its text (none reuses a statement prepared before); the
    backend PID of that connection may be unknown, its socket is not."""
    record, spans, tr, _ = trace_async(cluster, scenario, str(tmp_path), connect_first=True)
    check_clean(tr, spans)
    early = record["early_backends"]
    assert len(early) == 1, early
    backends = record["backends"]
    assert early[0] in backends
    check_identity(spans, cluster, backends, early=early)
    assert not [s for s in spans if s.get("db.query.text") == record["early"][-1]["text"]]
    # the one connection opened before the attach: its spans without a backend PID are its own
    view = []
    for s in server_view(spans):
        if s.get("postgresql.backend_pid") is None:
            s = dict(s)
            s["postgresql.backend_pid"] = early[0]
        view.append(s)
    # ground truth: the server's log of that backend from the first statement after the attach
    truth = cluster.statements(backends)
    mine = truth[early[0]]
    first = [i for i, e in enumerate(mine) if e["text"] == record["marker"]]
    assert first, "marker not in the server log: %s" % [short(e["text"], 60) for e in mine]
    # what sqlspan shows of that connection before the marker (SQLAlchemy's BEGIN, sent after
    # the attach) must be what the server ran just before it
    spans_early = [s for s in view if s.get("postgresql.backend_pid") == early[0] and
                   s in executed(view)]
    before = 0
    for s in sorted(spans_early, key=lambda s: s["start_time_unix_nano"]):
        if s.get("db.query.text") == record["marker"]:
            break
        before += 1
    assert before <= first[0], "sqlspan shows %d statements before the marker" % before
    truth[early[0]] = mine[first[0] - before:]

    class After:
        def statements(self, b):
            return truth

    n = check_against_server(After(), view, backends)
    assert n == len(executed(view)) > 10
    assert check_against_record(record, view) == recorded(record)
    for s in executed(view):
        assert s["sqlspan.query.text_state"] == "full", s
