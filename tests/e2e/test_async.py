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
import json
import os
import re
import signal
import subprocess
import time

import pytest

from lib import (PY, ROOT, App, Tracer, check_against_record, check_against_server,
                 check_counted, executed, libpq_capture, run_in_rootfs, short, skipped_runs,
                 spans_by_backend)

ASYNC_APP = os.path.join(ROOT, "tests", "apps", "async_workload.py")


class AsyncApp(App):
    """tests/apps/async_workload.py in its own process, waiting for "go" on stdin."""

    def __init__(self, cluster, scenario, tmpdir, connect_first=False, tls=False):
        self.record_path = os.path.join(tmpdir, "record-%s-%d.json" % (scenario, id(self)))
        cmd = [PY, ASYNC_APP, "--host", "127.0.0.1" if tls else cluster.sockdir,
               "--port", cluster.port, "--scenario", scenario, "--record", self.record_path,
               "--go"]
        if connect_first:
            cmd.append("--connect-first")
        if tls:
            cmd.append("--ssl")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line.startswith("PID "):
            self.p.kill()
            raise RuntimeError("app did not start: %r %s" % (line, self.p.stderr.read()))
        self.pid = int(line.split()[1])


def has_bpf_loop():
    """Kernels 5.17+ (bpf_loop): where sqlspan follows the protocol on sockets."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 17)


NEEDS_LOOP = "following the protocol on its sockets needs bpf_loop (kernel 5.17+)"


def trace_async(cluster, scenario, tmpdir, connect_first=False, args=(), tls=False):
    """Start the app, attach sqlspan --json, let the app run: (record, spans, tracer, pid).
    On kernels without bpf_loop (the kernel matrix's 5.10) sqlspan must refuse, saying why, and
    the test ends there (a documented degraded mode): (None, None, tracer, pid)."""
    app = AsyncApp(cluster, scenario, tmpdir, connect_first=connect_first, tls=tls)
    tr = Tracer([app.pid], args)
    if not has_bpf_loop() or "--no-bpf-loop" in args:
        rc = tr.finish(timeout=30)
        app.p.kill()
        app.p.wait()
        assert rc == 1 and NEEDS_LOOP in tr.stderr, tr.stderr
        return None, None, tr, app.pid
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


def check_clean(tr, spans, lost=0):
    summ = tr.summary()
    assert summ["lost"] == lost, tr.stderr
    assert summ["open"] == 0, tr.stderr
    assert summ["spans"] == len(spans), tr.stderr
    assert spans, "no spans: %s" % tr.stderr
    # with counted losses, the spans around them may have an unknown result (marked as such)
    allowed = ("ok", "error", "unknown") if lost else ("ok", "error")
    bad = [s for s in spans if s["sqlspan.result"] not in allowed or
           (s["sqlspan.result"] == "unknown" and not s.get("sqlspan.events_lost"))]
    assert not bad, bad[:3]


def check_identity(spans, cluster, backends, early=(), tcp=False, capture="wire"):
    """Every span is a capture of a PostgreSQL statement on one of the app's connections.
    Connections sqlspan saw start carry their backend PID, database and user; those opened
    before it attached (early) may have none."""
    for s in spans:
        assert s["db.system.name"] == "postgresql", s
        assert s["sqlspan.capture"] == capture, s
        if tcp:
            assert (s["server.address"], s["server.port"]) == ("127.0.0.1", int(cluster.port)), s
        else:
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


def check_all(cluster, record, spans, tr, **identity):
    """The full check; (view, None) when a 7.x kernel skipped runs (see skipped_runs): then only
    that what is shown is right and what is missing was counted."""
    lost = skipped_runs(tr)
    check_clean(tr, spans, lost)
    backends = record["backends"]
    view = server_view(spans)
    if lost:
        check_counted(cluster, view, backends, lost)
        check_identity(spans, cluster, backends, **identity)
        return view, None
    n = check_against_server(cluster, view, backends)
    assert n == len(executed(view))
    assert check_against_record(record, view) == recorded(record)
    check_identity(spans, cluster, backends, **identity)
    return view, n


def check_sync_side(record, spans, learning=0):
    """What only the greenlet held by greenlet_spawn knows, and the running stack's call site:
    sqlalchemy.connection.id is id() of the sync Connection the app's own listener saw (and
    sqlalchemy.engine.url its engine's URL, password hidden, as the app renders it), and the
    call site is the line of the app's coroutine that awaited the statement. sqlspan learns where
    greenlet_spawn keeps its greenlet on the first statement that runs through it: none may lack
    the connection (but `learning`), none may carry a wrong one."""
    mine = {b: sorted([s for s in spans if s.get("postgresql.backend_pid") == b and
                       (s.get("sqlspan.request") != "prepare" or
                        s.get("sqlspan.result") == "error")],  # failed at Parse
                      key=lambda s: s["start_time_unix_nano"]) for b in record["backends"]}
    pos = {b: 0 for b in record["backends"]}
    total = with_conn = with_url = sites = 0
    named, unnamed_first = 0, []
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
            if "sqlalchemy.engine.url" in s:
                # as the app's own url.render_as_string(hide_password=True) shows it
                assert s["sqlalchemy.engine.url"] == r["url"] and ":***@" in r["url"], (r, s)
                with_url += 1
            if r.get("task") is not None:
                # asyncio.task.name: the app's own current_task().get_name() (cut as sqlspan
                # keeps it); none wrong, none missing once sqlspan has learnt where Tasks keep
                # their names (from the first statements)
                if "asyncio.task.name" in s:
                    assert s["asyncio.task.name"] == r["task"][:31], (r, s)
                    named += 1
                else:
                    assert not named, "a task name missing after others were read: " + \
                        json.dumps({k: v for k, v in s.items() if k != "python.stack"})
                    unnamed_first.append(r["task"])
            if r.get("await_line") is not None:
                assert s.get("code.line.number") == r["await_line"] and \
                    s.get("code.function.name", "").endswith(r["await_func"]), (r, s)
                sites += 1
    assert total > 20 and with_conn >= total - learning, (with_conn, total)
    assert with_url >= total - learning, (with_url, total)
    assert named > 20 and len(unnamed_first) <= 5, (named, unnamed_first)
    assert sites > 20
    return total


def test_async_orm(cluster, tmp_path):
    """AsyncSession ORM and Core over asyncpg: SQLAlchemy's prepared-statement cache (Parse once,
    then Bind/Execute by name), executemany, explicit transactions, errors at execute and at
    parse, non-ASCII, multi-line and 20 KB statements."""
    record, spans, tr, _ = trace_async(cluster, "async-orm", str(tmp_path), args=["-v"])
    if record is None:
        return  # no bpf_loop: refused, as checked by trace_async
    view, n = check_all(cluster, record, spans, tr)
    if n is None:
        return  # a 7.x kernel skipped runs: checked as far as they allow
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
    assert "s3cret-Pw" not in "".join(tr.out_lines + tr.err_lines)  # the app's URL password
    # the Connection and its engine were taken, once learnt, from greenlet_spawn's bound method
    # (AsyncConnection) or its Session's one connection (AsyncSession), without walking the
    # greenlet (check_sync_side above holds them to the app's own record); what sqlspan says it
    # learnt, and where the engine URLs came from
    learnt = re.findall(r"greenlets not walked for (\d+) AsyncConnection/AsyncSession methods "
                        r"\(Session type (\w+)\)", tr.stderr)
    assert learnt and int(learnt[-1][0]) >= 2 and learnt[-1][1] != "0", learnt[-1:]
    m = re.search(r"sqlalchemy.engine.url: (\d+) read at the statement, (\d+) from a live "
                  r"Connection, (\d+) remembered by dialect, (\d+) unknown", tr.stderr)
    assert m and int(m.group(4)) == 0 and int(m.group(1)) >= 0.8 * n, m and m.group(0)


@pytest.mark.parametrize("scenario", ["async-orm", "asyncpg-raw"])
def test_asyncpg_over_tls(tls_cluster, tmp_path, scenario):
    """asyncpg with ssl="require" on TCP: asyncio encrypts in memory (ssl.MemoryBIO), so the
    socket carries only TLS records; sqlspan reads the plaintext where libssl takes and gives it
    (SSL_write_ex, SSL_read_ex) and checks out exactly as without TLS: every statement of the
    server's log and of the app's record, SQL, results, errors, identity, and the SQLAlchemy
    side."""
    cluster = tls_cluster
    record, spans, tr, _ = trace_async(cluster, scenario, str(tmp_path), tls=True,
                                       args=["-v"])
    if record is None:
        return  # no bpf_loop: refused, as checked by trace_async
    # every connection of the app was TLS, by the server's own account (log_connections)
    authorized = [e["message"] for e in cluster.entries(record["backends"])
                  if e.get("message", "").startswith("connection authorized")]
    assert len(authorized) == len(record["backends"]) and \
        all("SSL enabled" in m for m in authorized), authorized
    view, n = check_all(cluster, record, spans, tr, tcp=True)
    if n is None:
        return  # a 7.x kernel skipped runs: checked as far as they allow
    assert n > 30
    assert all(s.get("sqlspan.connection.tls") for s in spans), spans[:2]
    assert "TLS plaintext read in" in tr.stderr, tr.stderr[-2000:]
    errs = sorted(s.get("db.response.status_code") for s in spans
                  if s["sqlspan.result"] == "error")
    assert errs == app_errors(record) and errs, errs
    if scenario == "async-orm":
        check_sync_side(record, spans)


@pytest.mark.parametrize("scenario", ["async-orm", "asyncpg-raw"])
def test_asyncpg_over_tls_attach_after_connect(tls_cluster, tmp_path, scenario):
    """A TLS connection whose handshake happened before sqlspan attached: its SSL object is tied
    to its socket by the first write of whole protocol messages followed by a TLS record on that
    thread, whose plaintext is walked then if it is still whole protocol messages (Python's ssl
    writes the TLS record after SSL_write_ex returned). From the first statement after the
    attach on, every statement the server ran is a span, in order, with its result (the first
    may lack its text if its plaintext was gone by then)."""
    cluster = tls_cluster
    record, spans, tr, _ = trace_async(cluster, scenario, str(tmp_path), tls=True,
                                       connect_first=True)
    if record is None:
        return
    if skipped_runs(tr):
        return  # a 7.x kernel skipped runs: not every statement can be asked for
    check_clean(tr, spans)
    assert spans and all(s.get("sqlspan.connection.tls") for s in spans), spans[:2]
    b = record["early_backends"][0]
    want = [(e["text"], e["sqlstate"]) for e in cluster.statements(record["backends"])[b]]
    first = [i for i, w in enumerate(want) if w[0] == record["marker"]]
    assert first, "marker not in the server log"
    m = first[0]
    got = [(x.get("db.query.text"), x.get("db.response.status_code"))
           for x in executed(server_view(spans)) if x.get("postgresql.backend_pid") in (b, None)]
    # every statement sent after the attach, in order: from the marker's on, or from the BEGIN
    # that opened its transaction (sent after the attach too, in the write that ties the SSL
    # object to its socket, whose plaintext is walked then if it is still there)
    start = len(want) - len(got)
    assert start == m or (start == m - 1 and want[start][0].startswith("BEGIN")), \
        (start, m, got[:3], want[max(0, m - 2):m + 2])
    for i, g in enumerate(got):
        if g[0] is None:
            assert i == 0, got[:3]  # only the first may lack its text (its plaintext gone)
            continue
        assert g == want[start + i], "not what the server ran, in order: %s %s" % (
            g, want[start + i])


def test_async_concurrent(cluster, tmp_path):
    """50 asyncio tasks over a pool of 10 asyncpg connections, interleaved on one thread."""
    record, spans, tr, pid = trace_async(cluster, "async-concurrent", str(tmp_path))
    if record is None:
        return
    if check_all(cluster, record, spans, tr)[1] is None:
        return
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
    if record is None:
        return
    view, n = check_all(cluster, record, spans, tr)
    if n is None:
        return
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
    the attach still has its span with its text; that connection's identity comes from its socket
    (the server end's backend process, as the server runs here)."""
    record, spans, tr, _ = trace_async(cluster, scenario, str(tmp_path), connect_first=True)
    if record is None:
        return
    check_clean(tr, spans)
    early = record["early_backends"]
    assert len(early) == 1, early
    backends = record["backends"]
    assert early[0] in backends
    # the server is local: even the connection opened before the attach is known, from the
    # backend process holding the other end of its socket
    assert {s.get("postgresql.backend_pid") for s in spans} <= set(backends), spans[:2]
    assert all(s.get("db.namespace") == "postgres" and s.get("postgresql.user") == "postgres"
               for s in spans), [s for s in spans if s.get("db.namespace") != "postgres"][:2]
    check_identity(spans, cluster, backends, early=early)
    # the statement prepared before the attach: SQLAlchemy runs it again after (async-orm), by
    # name only on the wire; its text comes from SQLAlchemy's frame, and says so
    early_text = [r["text"] for r in record["early"] if r.get("text")][-1]
    again = [s for s in spans if s.get("db.query.text") == early_text]
    if scenario == "async-orm":
        assert [s["sqlspan.query.text_state"] for s in again] == ["from_sqlalchemy"], again
    else:
        assert not again
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
        assert s["sqlspan.query.text_state"] == "full" or s["db.query.text"] == early_text, s


def test_async_without_bpf_loop(cluster, tmp_path):
    """Where the kernel has no bpf_loop (forced here with --no-bpf-loop) an asyncpg-only process
    is refused with one clear line, not traced half-way."""
    record, _, tr, _ = trace_async(cluster, "asyncpg-raw", str(tmp_path), args=["--no-bpf-loop"])
    assert record is None
    assert [line for line in tr.err_lines if line.startswith("sqlspan: PID")] == [
        line for line in tr.err_lines if NEEDS_LOOP in line]


def expected_checksum(statements, tasks):
    """What async_stress.py must print when every statement returned the right value."""
    per, total = statements // tasks, 0
    for k in range(tasks):
        for done in range(per):
            total = (total + (k * 1000003 + done) % 1000000 + 1) % (1 << 61)
    return per * tasks, total


def test_attach_detach_under_load(cluster):
    """A greenlet-heavy AsyncEngine app runs 200k statements while sqlspan attaches and detaches
    over and over (greenlets switch C stacks; sqlspan's only return probe is on libssl's
    SSL_read_ex, which never switches them): the app finishes with every result right, and
    every sqlspan run ends cleanly."""
    statements, tasks = 200000, 20
    app = subprocess.Popen([PY, os.path.join(ROOT, "tests", "apps", "async_stress.py"), "--host",
                            cluster.sockdir, "--port", cluster.port, "--statements",
                            str(statements), "--tasks", str(tasks)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    pid = int(app.stdout.readline().split()[1])
    app.stdin.write("go\n")
    app.stdin.flush()
    runs = spans = 0
    try:
        while app.poll() is None:
            tr = Tracer([pid], ["--no-python"] if runs % 3 == 2 else [])
            try:
                tr.wait_ready()
            except AssertionError:
                if app.poll() is None:
                    raise
                # the app ended while sqlspan attached: a clear line that says so
                assert re.match(r"sqlspan: (PID %d exited|no process with PID %d)" % (pid, pid),
                                tr.err_lines[-1]), tr.err_lines
                break
            # short and varied: enough runs fit in the app's run on a slow day too
            time.sleep(0.1 + (runs % 5) * 0.1)
            rc = tr.stop()
            if app.poll() is None or rc == 0:
                assert rc == 0, tr.stderr
                spans += len(tr.spans())
            runs += 1
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, err[-3000:]
    assert out.split() == ["OK", *map(str, expected_checksum(statements, tasks))], out
    print("attach/detach runs:", runs, "spans:", spans)
    assert runs >= 5 and spans > 1000, (runs, spans)


def rootfs(suite):
    return subprocess.run([os.path.join(ROOT, "scripts", "rootfs.sh"), suite], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("suite,driver,tls", [("trixie", "asyncpg", False),
                                              ("sid", "asyncpg", False),
                                              ("trixie", "psycopg", False),
                                              ("sid", "psycopg", False),
                                              ("sid", "asyncpg", True)],
                         ids=["trixie-asyncpg", "sid-asyncpg", "trixie-psycopg", "sid-psycopg",
                              "sid-asyncpg-tls"])
def test_async_sa20_in_container(request, tmp_path, suite, driver, tls):
    """SQLAlchemy 2.0's AsyncEngine on trixie's CPython 3.13 (greenlet 3.1, asyncpg 0.30,
    psycopg 3.2) and sid's 3.14 (greenlet 3.3, asyncpg 0.31, psycopg 3.3), each in a root
    filesystem of its own with its own mount and PID namespaces, over TCP: with asyncpg on the
    wire (also over TLS, with sid's own libssl), with psycopg's async connections through libpq;
    the sync Connection read from the greenlet either way, and the awaiting line."""
    cluster = request.getfixturevalue("tls_cluster" if tls else "cluster")
    p, pid, appdir = run_in_rootfs(rootfs(suite), ASYNC_APP,
                                   ["--host", "127.0.0.1", "--port", cluster.port, "--scenario",
                                    "async-orm", "--driver", driver, "--record",
                                    "/app/record.json", "--go"] + (["--ssl"] if tls else []),
                                   str(tmp_path))
    tr = Tracer([pid])
    try:
        tr.wait_ready()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    except BaseException:
        p.kill()
        tr.stop(signal.SIGKILL)
        raise
    assert tr.stop() == 0, tr.stderr
    with open(os.path.join(appdir, "record.json")) as f:
        record = json.load(f)
    spans = tr.spans()
    capture = "wire" if driver == "asyncpg" else libpq_capture()
    if driver == "asyncpg":
        check_all(cluster, record, spans, tr, tcp=True)
        assert all(bool(s.get("sqlspan.connection.tls")) == tls for s in spans), spans[:2]
    else:
        # psycopg sends its own statement texts; the server's log is the truth for them
        check_clean(tr, spans)
        n = check_against_server(cluster, spans, record["backends"])
        assert n == len(executed(spans)) > 30
        check_identity(spans, cluster, record["backends"], tcp=True, capture=capture)
    check_sync_side(record, spans)

