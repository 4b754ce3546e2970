"""libpq clients nobody here wrote (pgbench, psql), started paused and traced by PID."""
import re
import subprocess

from lib import Tracer, check_against_server, check_counted, executed, skipped_runs


def paused(cmd):
    """A shell that waits for a line, then becomes `cmd` (same PID)."""
    return subprocess.Popen(["sh", "-c", 'read x; exec "$@"', "sh"] + cmd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pgbench_backends(cluster, db):
    return {d["pid"] for d in all_entries(cluster)
            if d.get("application_name") == "pgbench" and d.get("dbname") == db}


def all_entries(cluster):
    import json
    with open(cluster.log, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_paused(cluster, cmd, args=("--wait",)):
    p = paused(cmd)
    tr = Tracer([p.pid], args)
    tr.wait_ready()
    assert "waiting for PID %d" % p.pid in tr.stderr
    p.stdin.write("\n")
    p.stdin.flush()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert tr.finish() == 0, tr.stderr
    return out, tr


def test_pgbench_select_only(cluster):
    cluster.psql("DROP DATABASE IF EXISTS bench")
    cluster.psql("CREATE DATABASE bench")
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", cluster.sockdir, "-p", cluster.port,
                    "-U", "postgres", "bench"], check=True, capture_output=True)
    before = pgbench_backends(cluster, "bench")
    out, tr = run_paused(cluster, ["pgbench", "-S", "-n", "-c", "4", "-j", "2", "-T", "3",
                                   "-h", cluster.sockdir, "-p", cluster.port, "-U", "postgres",
                                   "bench"])
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m, out
    txns = int(m.group(1))
    assert txns > 100
    spans = tr.spans()
    backends = sorted(pgbench_backends(cluster, "bench") - before)
    assert all(s["process.executable.name"] == "pgbench" for s in spans)
    lost = skipped_runs(tr)
    if lost:  # a 7.x kernel skipped runs: what is shown is right, what is missing was counted
        check_counted(cluster, spans, backends, lost)
        return
    assert tr.summary()["lost"] == 0
    selects = [s for s in executed(spans) if s["db.query.text"].startswith("SELECT abalance")]
    # pgbench counts finished transactions; one more per client may be cut off by -T
    assert txns <= len(selects) <= txns + 4, (txns, len(selects))
    assert len(backends) >= 4  # the clients and the one that reads the scale
    assert check_against_server(cluster, spans, backends) == len(executed(spans))
    assert all(s["db.namespace"] == "bench" for s in spans)


def test_pgbench_prepared_mode(cluster):
    """-M prepared: PQprepare once per client, then executions by name."""
    cluster.psql("DROP DATABASE IF EXISTS bench2")
    cluster.psql("CREATE DATABASE bench2")
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", cluster.sockdir, "-p", cluster.port,
                    "-U", "postgres", "bench2"], check=True, capture_output=True)
    before = pgbench_backends(cluster, "bench2")
    out, tr = run_paused(cluster, ["pgbench", "-S", "-n", "-M", "prepared", "-c", "2", "-t",
                                   "200", "-h", cluster.sockdir, "-p", cluster.port, "-U",
                                   "postgres", "bench2"])
    spans = tr.spans()
    execs = [s for s in spans if s["sqlspan.request"] == "execute"]
    assert len(execs) == 400, len(execs)
    assert all(s["db.query.text"].startswith("SELECT abalance") for s in execs)
    assert all(s["sqlspan.query.text_state"] == "full" for s in execs)
    backends = sorted(pgbench_backends(cluster, "bench2") - before)
    assert len(backends) >= 2
    assert check_against_server(cluster, spans, backends) == len(executed(spans))


def test_psql_c(cluster):
    out, tr = run_paused(cluster, ["psql", "-X", "-h", cluster.sockdir, "-p", cluster.port, "-U",
                                   "postgres", "-c", "SELECT 40 + 2 AS answer"])
    assert "42" in out
    spans = [s for s in tr.spans() if s["db.query.text"] == "SELECT 40 + 2 AS answer"]
    assert len(spans) == 1
    s = spans[0]
    assert s["sqlspan.result"] == "ok"
    assert s["db.response.returned_rows"] == 1
    assert s["postgresql.command_tag"] == "SELECT 1"
    assert s["process.executable.name"] == "psql"
    assert s["server.address"] == cluster.sockpath
