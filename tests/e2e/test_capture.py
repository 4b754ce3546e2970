"""End to end: real apps with Debian's SQLAlchemy, psycopg2 and psycopg against a real
PostgreSQL, traced by PID. Ground truth: the server's statement log and the app's own record."""
import os

import pytest

from lib import (check_against_record, check_against_server, check_counted, executed, libpq_capture,
                 skipped_runs, trace_app, uprobe_multi_expected, uprobe_multi_links)


def check_identity(spans, cluster, backends, address, port=None, transport="unix", args=(),
                   unseen_ok=False):
    """unseen_ok: a run with losses, where a connection's StartupMessage may have gone in a
    skipped run and its backend not be found (where the system cannot tell a Unix socket's other
    end: no unix_diag): such spans say so (sqlspan.session_unseen) and have no database, user or
    backend PID; a Unix socket's connect() may have gone in a skipped run: its spans have no
    server.address; and the reply carrying its BackendKeyData may have: no backend PID. The
    kernel matrix's VMs load unix_diag, as a host's kernel does on demand: there sqlspan finds
    all three from the system, and these allowances are what a machine without it would show."""
    for s in spans:
        assert s["db.system.name"] == "postgresql"
        assert s["sqlspan.capture"] == libpq_capture(args), s
        if unseen_ok and s.get("sqlspan.session_unseen"):
            assert s.get("db.namespace") is None and s.get("postgresql.user") is None, s
        else:
            assert "sqlspan.session_unseen" not in s, s
            assert s["db.namespace"] == "postgres", s
            assert s["postgresql.user"] == "postgres", s
            if unseen_ok and s.get("postgresql.backend_pid") is None:
                # the server's BackendKeyData went in a skipped run, and no unix_diag to ask
                # which backend holds the other end: none rather than a wrong one
                assert transport == "unix", s
            else:
                assert s["postgresql.backend_pid"] in backends, s
        if unseen_ok and s["server.address"] is None:
            # its connect() went in a skipped run, and no unix_diag to ask for the socket's
            # other end: no address rather than a wrong one (README, server.address)
            assert transport == "unix" and s.get("network.transport") is None, s
        else:
            assert s["server.address"] == address, s
            assert s.get("network.transport") == transport, s
            if port is not None:
                assert s["server.port"] == port, s
        assert s["process.executable.name"].startswith("python3"), s
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16
        assert s["end_time_unix_nano"] >= s["start_time_unix_nano"]
        assert s["duration_ns"] == s["end_time_unix_nano"] - s["start_time_unix_nano"]


def check_clean(tr, spans):
    summ = tr.summary()
    assert summ["lost"] == 0, tr.stderr
    assert summ["open"] == 0, tr.stderr
    assert summ["spans"] == len(spans)
    bad = [s for s in spans if s["sqlspan.result"] not in ("ok", "error", "aborted")]
    assert not bad, bad[:3]


@pytest.mark.parametrize("args", [(), ("--libpq-uprobes",), ("--libpq-uprobes", "--perf-uprobes")],
                         ids=["default", "libpq-uprobes", "libpq-perf-uprobes"])
def test_sqlalchemy_psycopg2(cluster, tmp_path, args):
    """SQLAlchemy 1.4 ORM and Core over psycopg2, 8 threads on their own connections; libpq's
    statements read off its sockets (bpf_loop kernels), and with its uprobes when asked:
    uprobe_multi links where the kernel has them (6.6+), perf-event uprobes when asked too."""
    record, spans, tr = trace_app(cluster, "sqlalchemy", str(tmp_path), args=args, lossy_ok=True)
    backends = record["backends"]
    assert len(backends) >= 8  # threads on connections of their own
    if "--libpq-uprobes" in args and uprobe_multi_expected(args) is not None:
        multi = uprobe_multi_links(tr)
        assert (multi >= 5) if uprobe_multi_expected(args) else multi == 0, tr.links
    lost = skipped_runs(tr)
    if lost:  # a 7.x kernel skipped runs: what is shown is right, what is missing was counted
        assert tr.summary()["open"] == 0, tr.stderr
        check_counted(cluster, spans, backends, lost)
        check_identity(spans, cluster, backends, cluster.sockpath, args=args, unseen_ok=True)
        return
    check_clean(tr, spans)
    n = check_against_server(cluster, spans, backends)
    assert n > 300
    assert check_against_record(record, spans) > 250
    check_identity(spans, cluster, backends, cluster.sockpath, args=args)
    texts = [s["db.query.text"] for s in executed(spans)]
    assert any("Zoë Ærøskøbing 東京 🐘" in t for t in texts)
    assert any(len(t) > 20000 for t in texts)
    assert any("\n  LEFT JOIN orders o" in t for t in texts)
    ops = {s.get("db.operation.name") for s in spans}
    assert {"SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK",
            "CREATE TABLE", "DROP TABLE"} <= ops, ops
    errs = {s.get("db.response.status_code") for s in spans if s["sqlspan.result"] == "error"}
    assert errs == {"23505", "42601"}, errs
    colls = {s.get("db.collection.name") for s in spans if s.get("db.operation.name") == "INSERT"}
    assert {"users", "orders", "counters"} <= colls


def test_psycopg3_pipeline_prepared(cluster, tmp_path):
    """psycopg 3 (libpq through ctypes) over TCP: auto-prepared statements, executemany in
    pipeline mode, an explicit pipeline with an error, threads."""
    record, spans, tr = trace_app(cluster, "psycopg", str(tmp_path), host="127.0.0.1")
    check_clean(tr, spans)
    backends = record["backends"]
    n = check_against_server(cluster, spans, backends)
    assert n > 250
    assert check_against_record(record, spans) > 250
    check_identity(spans, cluster, backends, "127.0.0.1", int(cluster.port), "tcp")
    prepared = [s for s in spans if s["sqlspan.request"] == "prepare"]
    assert prepared and all(s["postgresql.statement_name"].startswith("_pg3_") for s in prepared)
    execs = [s for s in spans if s["sqlspan.request"] == "execute"]
    assert len(execs) >= 14
    for s in execs:
        assert s["sqlspan.query.text_state"] == "full"
        assert s["postgresql.statement_name"] in {p["postgresql.statement_name"] for p in prepared}
    piped = [s for s in spans if s.get("postgresql.pipeline")]
    assert len(piped) >= 25
    aborted = [s for s in spans if s["sqlspan.result"] == "aborted"]
    assert [s["db.query.text"] for s in aborted] == ["DELETE FROM items WHERE id = $1"]


def test_psycopg3_async(cluster, tmp_path):
    """psycopg's AsyncConnection (non-blocking libpq) with 10 concurrent asyncio tasks."""
    record, spans, tr = trace_app(cluster, "psycopg-async", str(tmp_path))
    check_clean(tr, spans)
    backends = record["backends"]
    assert len(backends) == 10
    assert check_against_server(cluster, spans, backends) == len(executed(spans))
    assert check_against_record(record, spans) == 110
    check_identity(spans, cluster, backends, cluster.sockpath)


@pytest.mark.parametrize("scenario,args", [("psycopg2", ()), ("psycopg2", ("--perf-uprobes",)),
                                           ("connect-first", ())],
                         ids=["psycopg2", "psycopg2-perf-uprobes", "connect-first"])
def test_libpq_over_tls(tls_cluster, tmp_path, scenario, args):
    """libpq's own TLS (sslmode=require, over TCP): its statements read where libssl takes and
    gives the plaintext (SSL_write, SSL_read) on bpf_loop kernels, also on a connection made
    before sqlspan attached (connect-first: its SSL object is tied to its socket by its first
    write after the attach, whose plaintext is walked right then; its identity from the server's
    end of the socket); on older kernels from libpq's uprobes. libssl's probes as uprobe_multi
    links where the kernel has them, as perf events when asked (--perf-uprobes)."""
    record, spans, tr = trace_app(tls_cluster, scenario, str(tmp_path), host="127.0.0.1",
                                  env=dict(os.environ, PGSSLMODE="require"), args=args)
    check_clean(tr, spans)
    backends = record["backends"]
    assert check_against_server(tls_cluster, spans, backends) == len(executed(spans)) >= 5
    assert check_against_record(record, spans) >= 5
    for s in spans:
        assert s["sqlspan.capture"] == libpq_capture(), s
        assert s["postgresql.backend_pid"] in backends, s
        assert s["server.address"] == "127.0.0.1" and s["server.port"] == int(tls_cluster.port), s
        assert s["db.namespace"] == "postgres" and s["postgresql.user"] == "postgres", s
        if s["sqlspan.capture"] == "wire":
            assert s.get("sqlspan.connection.tls") is True, s
    if libpq_capture() == "wire" and uprobe_multi_expected(args) is not None:
        multi = uprobe_multi_links(tr)  # libssl's 7, the dynamic loader's 1
        assert multi == (8 if uprobe_multi_expected(args) else 0), tr.links
