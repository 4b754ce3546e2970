"""Helpers for sqlspan's end-to-end tests: a throwaway PostgreSQL, real apps, sqlspan itself,
and the ground truth (the server's JSON statement log, the app's own record)."""
import json
import glob
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SQLSPAN = os.path.join(ROOT, "sqlspan")
PY = "/usr/bin/python3"  # Debian's interpreter, with Debian's SQLAlchemy and drivers
APP = os.path.join(ROOT, "tests", "apps", "workload.py")
PGCLUSTER = os.path.join(ROOT, "scripts", "pgcluster.sh")


class Cluster:
    """A PostgreSQL cluster started by scripts/pgcluster.sh, every statement logged as JSON."""

    def __init__(self, ssl=False):
        self.dir = tempfile.mkdtemp(prefix="sqlspan-pg-")
        out = subprocess.run([PGCLUSTER, "start", self.dir] + (["ssl"] if ssl else []),
                             check=True, capture_output=True, text=True).stdout.split()
        self.port, self.sockdir = out[0], out[1]
        self.log = os.path.join(self.dir, "data", "log", "postgresql.json")
        self.sockpath = os.path.join(self.sockdir, ".s.PGSQL.%s" % self.port)

    def stop(self):
        subprocess.run([PGCLUSTER, "stop", self.dir], capture_output=True)

    def psql(self, sql, db="postgres"):
        return subprocess.run(["psql", "-X", "-q", "-At", "-h", self.sockdir, "-p", self.port,
                               "-U", "postgres", "-d", db, "-c", sql], check=True,
                              capture_output=True, text=True).stdout

    def entries(self, backends, settle=0.5):
        """The JSON log entries of these backend PIDs, once the log stops growing."""
        backends = set(backends)
        last = -1
        for _ in range(50):
            size = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            if size == last:
                break
            last = size
            time.sleep(settle / 5)
        out = []
        with open(self.log, encoding="utf-8") as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if d.get("pid") in backends:
                    out.append(d)
        return out

    def statements(self, backends):
        """Per backend PID: the statements it ran, in order, as [{"text", "sqlstate"}]."""
        res = {b: [] for b in backends}
        for d in self.entries(backends):
            msg = d.get("message", "")
            pid = d["pid"]
            if d.get("error_severity") == "LOG":
                m = re.match(r"statement: (.*)\Z", msg, re.S) or \
                    re.match(r"execute [^:]*: (.*)\Z", msg, re.S)
                if m:
                    res[pid].append({"text": m.group(1), "sqlstate": None})
            elif d.get("error_severity") == "ERROR" and "statement" in d:
                prev = res[pid][-1] if res[pid] else None
                if prev and prev["text"] == d["statement"] and prev["sqlstate"] is None:
                    prev["sqlstate"] = d["state_code"]
                else:  # failed before it could be logged (syntax error)
                    res[pid].append({"text": d["statement"], "sqlstate": d["state_code"]})
        return res


class App:
    """tests/apps/workload.py in its own process."""

    def __init__(self, cluster, scenario, tmpdir, host=None, go=True, threads=8, python=PY,
                 env=None, wrap=None, sql=()):
        self.record_path = os.path.join(tmpdir, "record-%s-%d.json" % (scenario, id(self)))
        cmd = [python, APP, "--host", host or cluster.sockdir, "--port", cluster.port,
               "--scenario", scenario, "--record", self.record_path, "--threads", str(threads)]
        if go:
            cmd.append("--go")
        for q in sql:
            cmd += ["--sql", q]
        if wrap:
            cmd = wrap + cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        if not line.startswith("PID "):
            self.p.kill()
            raise RuntimeError("app did not start: %r %s" % (line, self.p.stderr.read()))
        self.pid = int(line.split()[1])

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def wait(self, timeout=120):
        out, err = self.p.communicate(timeout=timeout)
        if self.p.returncode != 0:
            raise AssertionError("app failed (%d): %s" % (self.p.returncode, err[-3000:]))
        with open(self.record_path) as f:
            return json.load(f)


class Tracer:
    """sqlspan attached to processes, collecting its NDJSON spans and its stderr."""

    def __init__(self, pids, args=(), json_out=True, user=None):
        cmd = [SQLSPAN] + ([] if not json_out else ["--json"])
        for p in pids:
            cmd += ["-p", str(p)]
        cmd += list(args)
        if user:
            cmd = ["setpriv", "--reuid", user, "--regid", "65534", "--clear-groups"] + cmd
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, encoding="utf-8")
        self.err_lines = []
        self.out_lines = []
        self.ready = threading.Event()
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        self._t_err.start()
        self._t_out.start()

    def _read_err(self):
        for line in self.p.stderr:
            self.err_lines.append(line)
            if "tracing PID" in line or "waiting for PID" in line:
                self.ready.set()
        self.ready.set()

    def _read_out(self):
        for line in self.p.stdout:
            self.out_lines.append(line)

    def wait_ready(self, timeout=30):
        if not self.ready.wait(timeout):
            raise AssertionError("sqlspan did not get ready: %s" % "".join(self.err_lines))
        if self.p.poll() is not None and self.p.returncode != 0:
            self._t_err.join(5)
            raise AssertionError("sqlspan failed: %s" % "".join(self.err_lines))

    def stop(self, sig=signal.SIGINT):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return self.finish()

    def finish(self, timeout=60):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("sqlspan did not exit: %s" % "".join(self.err_lines))
        self._t_err.join(10)
        self._t_out.join(10)
        return self.p.returncode

    @property
    def stderr(self):
        return "".join(self.err_lines)

    def spans(self, transactions=False):
        """Statement spans (and, if asked, transaction spans) from the NDJSON output."""
        out = [json.loads(line) for line in self.out_lines if line.strip()]
        return [s for s in out if transactions or s.get("sqlspan.span_type") != "transaction"]

    def summary(self):
        """Numbers from the summary line: spans, events lost, spans open at exit."""
        for line in self.err_lines:
            m = re.search(r"(\d+) spans \(.*; (\d+) events lost; (\d+) spans open at exit", line)
            if m:
                return {"spans": int(m.group(1)), "lost": int(m.group(2)),
                        "open": int(m.group(3))}
        raise AssertionError("no summary from sqlspan: %s" % self.stderr)


def skipped_runs(tr):
    """Kernels 7.x run syscall tracepoint programs preemptible and skip a run of a program while
    another run of it is preempted on that CPU (its recursion_misses): sqlspan counts those as
    lost events and says so. There, statements may be missing, but never silently: returns the
    events lost on such a kernel (0 elsewhere, where none may be lost)."""
    lost = tr.summary()["lost"]
    return lost if int(os.uname().release.split(".")[0]) >= 7 else 0


def check_counted(cluster, spans, backends, lost, pipelines_unsure=False):
    """With `lost` events reported (a 7.x kernel skipped runs): what sqlspan shows is what the
    server ran, in order, and nothing is missing unless losses were reported (one lost run can
    hide several statements: no count bound). Spans sqlspan marks as near a loss
    (sqlspan.events_lost) may carry another statement's result, or none; a statement whose Parse
    was lost says its text is unknown or SQLAlchemy's (text_state), so its text is not the
    server's; with pipelines_unsure, pipelined spans may carry another's result, also one the
    server skipped after an error in its pipeline (README: a documented limit on such kernels).
    All else is exact."""
    truth = cluster.statements(backends)
    mine = spans_by_backend(spans, backends)
    missing = 0
    for b in backends:
        want = [(e["text"], e["sqlstate"]) for e in truth[b]]
        got = [s for s in mine[b] if s.get("sqlspan.request") in STATEMENT_REQUESTS and
               (s.get("sqlspan.result") in ("ok", "error") or
                (s.get("sqlspan.events_lost") and s.get("sqlspan.result") == "unknown"))]
        pos = shown = 0
        for s in got:
            text, status = s.get("db.query.text"), s.get("db.response.status_code")
            piped = pipelines_unsure and s.get("postgresql.pipeline")
            unsure = bool(s.get("sqlspan.events_lost")) or piped
            if s.get("sqlspan.query.text_state") in ("unknown", "incomplete", "from_sqlalchemy"):
                continue  # not the server's text, and says so
            assert text is not None, ("a span without its text that does not say so", s)
            j = next((k for k in range(pos, len(want))
                      if want[k][0] == text and (unsure or want[k][1] == status)), None)
            if j is None and piped:
                continue  # a request the server skipped after an error, credited another's reply
            assert j is not None, \
                "backend %d: a span the server did not run: %s" % (b, (text[:80], status, unsure))
            pos = j + 1
            shown += 1
        missing += len(want) - shown
    assert missing >= 0 and (missing == 0 or lost > 0), (missing, lost)


def trace_app(cluster, scenario, tmpdir, args=(), host=None, threads=8, sql=(), json_out=True,
              lossy_ok=False, env=None):
    """Start an app, attach sqlspan, let the app run, return (record, spans, tracer). Where a
    7.x kernel skipped runs, the test is skipped unless it says it checks that case itself
    (lossy_ok: see skipped_runs and check_counted)."""
    app = App(cluster, scenario, tmpdir, host=host, threads=threads, sql=sql, env=env)
    tr = Tracer([app.pid], args, json_out=json_out)
    try:
        tr.wait_ready()
        app.go()
        record = app.wait()
    except BaseException:
        app.p.kill()
        tr.stop(signal.SIGKILL)
        raise
    tr.links = link_types(tr.p.pid)  # while it is attached
    rc = tr.finish()
    assert rc == 0, tr.stderr
    if not lossy_ok:
        skip_if_kernel_skipped_runs(tr)
    return record, tr.spans() if json_out else None, tr


def link_types(pid):
    """The BPF links a process holds, by type, as the kernel lists them (/proc/PID/fdinfo)."""
    types = {}
    for fd in glob.glob("/proc/%d/fdinfo/*" % pid):
        try:
            with open(fd) as f:
                for line in f:
                    if line.startswith("link_type:"):
                        t = line.split(":", 1)[1].strip()
                        types[t] = types.get(t, 0) + 1
        except OSError:
            pass
    return types


def uprobe_multi_links(tr):
    """sqlspan's uprobe_multi links (entry and return probes) while it was attached."""
    return tr.links.get("uprobe_multi", 0) + tr.links.get("uretprobe_multi", 0)


def uprobe_multi_expected(args=()):
    """Whether sqlspan's uprobes should be uprobe_multi links on this kernel: True from 6.10 (the
    links' process-wide PID filter), False before 6.6 (no such links) or with --perf-uprobes,
    None in between (6.6-6.9: only stable updates fixed the filter; sqlspan probes for it)."""
    if "--perf-uprobes" in args:
        return False
    major, minor = (int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    if (major, minor) >= (6, 10):
        return True
    return False if (major, minor) < (6, 6) else None


def skip_if_kernel_skipped_runs(tr):
    """Kernels 7.x skip a run of a BPF program while another run of it is preempted on that CPU
    (the program's recursion_misses); sqlspan counts those runs as lost events and says so. A test
    that compares every statement cannot hold then: on such a kernel, when sqlspan reported
    losses, the test is skipped with that reason (elsewhere nothing changes: a loss fails it)."""
    import pytest

    if int(os.uname().release.split(".")[0]) < 7:
        return
    try:
        lost = tr.summary()["lost"]
    except AssertionError:
        return
    if lost:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        pytest.skip("%s: kernel %s skipped runs of sqlspan's programs under preemption: %d "
                    "events lost, reported by sqlspan" % (test, os.uname().release, lost))


STATEMENT_REQUESTS = ("query", "execute")


def span_rows(s):
    if "postgresql.command_rows" in s:
        return s["postgresql.command_rows"]
    return s.get("db.response.returned_rows")


def spans_by_backend(spans, backends):
    res = {b: [] for b in backends}
    for s in sorted(spans, key=lambda s: s["start_time_unix_nano"]):
        if s.get("sqlspan.span_type") == "transaction":
            continue
        b = s.get("postgresql.backend_pid")
        if b in res:
            res[b].append(s)
    return res


def executed(spans):
    """The spans of statements the server ran (what its statement log shows)."""
    return [s for s in spans if s.get("sqlspan.request") in STATEMENT_REQUESTS and
            s.get("sqlspan.result") in ("ok", "error")]


def short(t, n=120):
    t = t if t is not None else "<null>"
    return t if len(t) <= n else t[:n] + "...(%d bytes)" % len(t)


def check_against_server(cluster, spans, backends):
    """Every statement in the server log appears exactly once, same text, same SQLSTATE, on the
    same backend, in the same order; and sqlspan reports none the server did not run."""
    truth = cluster.statements(backends)
    mine = spans_by_backend(spans, backends)
    total = 0
    for b in backends:
        want = [(e["text"], e["sqlstate"]) for e in truth[b]]
        got = [(s["db.query.text"], s.get("db.response.status_code"))
               for s in executed(mine[b])]
        for i, (w, g) in enumerate(zip(want, got)):
            assert w == g, "backend %d statement %d:\n server: %s %s\n sqlspan: %s %s" % (
                b, i, short(w[0]), w[1], short(g[0]), g[1])
        assert len(want) == len(got), "backend %d: server ran %d statements, sqlspan shows %d" \
            "\n server tail: %s\n sqlspan tail: %s" % (
                b, len(want), len(got), [short(x[0], 60) for x in want[len(got):][:5]],
                [short(x[0], 60) for x in got[len(want):][:5]])
        total += len(want)
    return total


def check_against_record(record, spans):
    """Rows, SQLSTATEs and pipeline outcomes as the app itself saw them."""
    mine = spans_by_backend(spans, record["backends"])
    pos = {b: 0 for b in record["backends"]}
    checked = 0
    for r in record["records"]:
        if r["text"] is None:
            continue
        lst, b = mine[r["backend"]], r["backend"]
        n = r["many"] or 1
        for _ in range(n):
            while pos[b] < len(lst) and (lst[pos[b]]["db.query.text"] != r["text"] or
                                         lst[pos[b]]["sqlspan.request"] == "prepare"):
                pos[b] += 1
            assert pos[b] < len(lst), "not found in sqlspan's spans of backend %d: %s" % (
                b, short(r["text"]))
            s = lst[pos[b]]
            pos[b] += 1
            want = {"ok": "ok", "error": "error", "aborted": "aborted"}[r["outcome"]]
            assert s["sqlspan.result"] == want, (r, s)
            if r["outcome"] == "error":
                assert s.get("db.response.status_code") == r["sqlstate"], (r, s)
            if r["outcome"] == "ok" and not r["many"] and r["rows"] is not None and r["rows"] >= 0:
                assert span_rows(s) == r["rows"], ("rows", r, s)
            checked += 1
    return checked


def children(pid):
    """The processes whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return out


def run_in_rootfs(fs, app, args, tmpdir=None):
    """Run /usr/bin/python3 APP ARGS in root filesystem fs, in its own mount and PID namespaces
    (like a container), with the app's folder bound in at /app. The app must print "PID <pid>"
    first. Returns (Popen of the namespace's parent, the app's PID as the host sees it, the
    app's folder on the host)."""
    import shlex
    import shutil

    appdir = tempfile.mkdtemp(prefix="sqlspan-app-", dir=tmpdir)
    shutil.copy(app, appdir)
    script = ("mount --make-rprivate / && mount --bind {fs} {fs} && mkdir -p {fs}/app && "
              "mount --bind {app} {fs}/app && mount --rbind /dev {fs}/dev && cd {fs} && "
              "mkdir -p .oldroot && pivot_root . .oldroot && mount -t proc proc /proc && "
              "umount -l /.oldroot && exec /usr/bin/python3 /app/{name} {args}").format(
                  fs=fs, app=appdir, name=os.path.basename(app),
                  args=" ".join(shlex.quote(a) for a in args))
    p = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "sh", "-c", script],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    assert line == "PID 1\n", (line, p.poll() is not None and p.stderr.read())
    kids = children(p.pid)
    assert len(kids) == 1
    return p, kids[0], appdir


def kernel_has_bpf_loop():
    rel = os.uname().release.split("-")[0].split(".")
    return (int(rel[0]), int(rel[1])) >= (5, 17)


def libpq_capture(args=()):
    """How sqlspan reads libpq's statements with these options on this kernel: off the sockets
    ("wire") where bpf_loop exists, with uprobes on libpq ("libpq") on older kernels or when
    asked (--libpq-uprobes; --no-bpf-loop walks like an older kernel)."""
    if "--libpq-uprobes" in args or "--no-bpf-loop" in args or not kernel_has_bpf_loop():
        return "libpq"
    return "wire"
