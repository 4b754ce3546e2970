#!/usr/bin/python3
"""make bench: what sqlspan costs the traced application and what load it carries.

Side by side in one run, as ratios within the run (this machine is shared and noisy):
  1. the floor: one empty uprobe hit at an emulated and at a single-stepped instruction;
  2. added latency and CPU per statement (SELECT 1 over the Unix socket, through SQLAlchemy 2.0):
     untraced / sqlspan / an in-process tracer on SQLAlchemy's cursor events (OpenTelemetry SDK),
     phases interleaved in one process; and the design sqlspan did not take (return probes on
     PQgetResult) measured the same way;
  3. throughput: pgbench select-only traced, and the events lost at fixed rates;
  4. sqlspan's own CPU and peak memory at ~1k and ~10k statements/s;
  5. time to attach.
Writes bench/results.md and prints it.
"""
import glob
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQLSPAN = os.path.join(ROOT, "sqlspan")
FLOOR = os.path.join(ROOT, ".output", "floor")
PY = "/usr/bin/python3"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
N = int(os.environ.get("BENCH_N", "3000"))
OUT = []


def say(line=""):
    print(line, flush=True)
    OUT.append(line)


def overlay(name, suite, *pkgs):
    return subprocess.run([os.path.join(ROOT, "scripts", "pyoverlay.sh"), name, suite, *pkgs],
                          check=True, capture_output=True, text=True).stdout.strip()


class Sqlspan:
    def __init__(self, pid, args=()):
        self.p = subprocess.Popen([SQLSPAN, "-p", str(pid), "--json", "-v", *args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err = []
        for line in self.p.stderr:
            self.err.append(line)
            if "tracing PID" in line:
                break
        else:
            raise RuntimeError("sqlspan did not attach: " + "".join(self.err))

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        self.err += self.p.stderr.readlines()
        self.p.wait()
        return "".join(self.err)

    def lost(self, text):
        m = re.search(r"; (\d+) events lost", text)
        return int(m.group(1)) if m else None


class App:
    def __init__(self, driver, cluster, env):
        self.p = subprocess.Popen([PY, os.path.join(ROOT, "bench", "app.py"), driver,
                                   cluster.sock, cluster.port], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("bench app did not start (%s)" % driver)
        self.pid = int(line.split()[1])

    def cmd(self, c):
        self.p.stdin.write(c + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().split()

    def run(self, n):
        wall, cpu = (int(x) for x in self.cmd("run %d" % n))
        return wall / n / 1000, cpu / n / 1000  # µs per statement

    def close(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait()


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sqlspan-bench-")
        out = subprocess.run([os.path.join(ROOT, "scripts", "pgcluster.sh"), "start", self.dir],
                             check=True, capture_output=True, text=True).stdout.split()
        self.port, self.sock = out
        # the statement log is ground truth for tests, not needed here: it only costs
        subprocess.run(["psql", "-X", "-q", "-h", self.sock, "-p", self.port, "-U", "postgres",
                        "-c", "ALTER SYSTEM SET log_statement = 'none'",
                        "-c", "ALTER SYSTEM SET log_connections = off",
                        "-c", "SELECT pg_reload_conf()"], check=True, capture_output=True)

    def stop(self):
        subprocess.run([os.path.join(ROOT, "scripts", "pgcluster.sh"), "stop", self.dir],
                       capture_output=True)


def floor():
    say("## 1. The floor: one empty uprobe hit on this machine")
    say("")
    say("```")
    out = subprocess.run([FLOOR], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        say(line)
    say("```")
    say("")


def libpq_of(pid):
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            if "libpq.so" in line and "r-xp" in line:
                return line.split()[-1]
    return None


def latency(cluster, env):
    say("## 2. Added latency and CPU per statement (SELECT 1, SQLAlchemy 2.0, Unix socket)")
    say("")
    say("%d rounds of %d statements per mode, modes interleaved in one process; medians. "
        "CPU is the application process's own CPU time (user + system: probe hits are "
        "charged to it)." % (ROUNDS, N))
    say("")
    say("| driver | mode | wall µs/stmt | CPU µs/stmt | added CPU µs | added wall µs | "
        "vs in-process |")
    say("|---|---|---|---|---|---|---|")
    summary = {}
    for driver in ("psycopg2", "psycopg", "asyncpg"):
        app = App(driver, cluster, env)
        libpq = libpq_of(app.pid)
        modes = ["untraced", "in-process tracer"]
        if libpq:
            modes += ["sqlspan --no-python (driver level)", "sqlspan (with Python call site)",
                      "PQgetResult uprobe+uretprobe (not taken)"]
        res = {m: [] for m in modes}
        hits = ""
        for _ in range(ROUNDS):
            for m in modes:
                tr = floor_p = None
                if m.startswith("sqlspan --no-python"):
                    tr = Sqlspan(app.pid, ["--no-python"])
                elif m.startswith("sqlspan"):
                    tr = Sqlspan(app.pid)
                elif m == "in-process tracer":
                    app.cmd("otel on")
                elif m.startswith("PQgetResult"):
                    floor_p = subprocess.Popen([FLOOR, "attach", str(app.pid), libpq,
                                                "PQgetResult", "ret"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True)
                    floor_p.stdout.readline()
                res[m].append(app.run(N))
                if tr:
                    text = tr.stop()
                    m2 = re.search(r"probe hits: (\d+) requests, (\d+) socket reads", text)
                    if m2:
                        hits = "%.2f uprobe hits and %.2f socket reads walked per statement" % (
                            int(m2.group(1)) / N, int(m2.group(2)) / N)
                elif m == "in-process tracer":
                    app.cmd("otel off")
                elif floor_p:
                    floor_p.stdin.close()
                    floor_p.wait()
        app.close()
        base_w = statistics.median(r[0] for r in res["untraced"])
        base_c = statistics.median(r[1] for r in res["untraced"])
        inproc = statistics.median(r[1] for r in res["in-process tracer"]) - base_c
        for m in modes:
            w = statistics.median(r[0] for r in res[m])
            c = statistics.median(r[1] for r in res[m])
            added = c - base_c
            ratio = ("%.1fx cheaper" % (inproc / added) if m != "in-process tracer" and
                     m != "untraced" and added > 0.05 else "")
            say("| %s | %s | %.1f | %.1f | %s | %s | %s |" % (
                driver, m, w, c, "%.2f" % added if m != "untraced" else "",
                "%.2f" % (w - base_w) if m != "untraced" else "", ratio))
            summary[(driver, m)] = added
        if not libpq:
            say("| %s | sqlspan | n/a: asyncpg speaks the protocol itself, no libpq "
                "(wire capture: issue 4) | | | | |" % driver)
        if hits:
            say("| %s | | %s | | | | |" % (driver, hits))
    say("")
    return summary


def pgbench(cluster, args, seconds):
    p = subprocess.run(["pgbench", "-n", "-S", "-h", cluster.sock, "-p", cluster.port, "-U",
                        "postgres", "-T", str(seconds), *args, "bench"],
                       capture_output=True, text=True)
    m = re.search(r"tps = ([\d.]+)", p.stdout)
    return float(m.group(1)) if m else 0.0


def paused_pgbench(cluster, args, seconds):
    return subprocess.Popen(["sh", "-c", 'read x; exec "$@"', "sh", "pgbench", "-n", "-S", "-h",
                             cluster.sock, "-p", cluster.port, "-U", "postgres", "-T",
                             str(seconds), *args, "bench"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def traced_pgbench(cluster, args, seconds):
    """pgbench under sqlspan: (tps, lost, sqlspan CPU seconds, sqlspan peak RSS KiB, spans)."""
    p = paused_pgbench(cluster, args, seconds)
    tr = subprocess.Popen([SQLSPAN, "-p", str(p.pid), "--wait", "--json"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in tr.stderr:
        if "waiting for PID" in line:
            break
    p.stdin.write("\n")
    p.stdin.flush()
    out, _ = p.communicate()
    cpu, hwm = proc_cpu_s(tr.pid), proc_hwm_kib(tr.pid)
    tr.send_signal(signal.SIGINT)
    err = tr.stderr.read()
    tr.wait()
    m = re.search(r"tps = ([\d.]+)", out)
    lost = re.search(r"; (\d+) events lost", err)
    spans = re.search(r"sqlspan: (\d+) spans", err)
    return (float(m.group(1)) if m else 0.0, int(lost.group(1)) if lost else -1, cpu, hwm,
            int(spans.group(1)) if spans else 0)


def throughput(cluster):
    subprocess.run(["psql", "-X", "-q", "-h", cluster.sock, "-p", cluster.port, "-U", "postgres",
                    "-c", "CREATE DATABASE bench"], capture_output=True)
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", cluster.sock, "-p", cluster.port,
                    "-U", "postgres", "bench"], check=True, capture_output=True)
    say("## 3. Throughput: pgbench select-only (8 clients, 2 threads, Unix socket)")
    say("")
    say("| load | statements/s | events lost | spans |")
    say("|---|---|---|---|")
    base = pgbench(cluster, ["-c", "8", "-j", "2"], 5)
    say("| untraced, unthrottled | %.0f | | |" % base)
    tps, lost, _, _, spans = traced_pgbench(cluster, ["-c", "8", "-j", "2"], 5)
    say("| traced, unthrottled | %.0f | %d | %d |" % (tps, lost, spans))
    for rate in (5000, 10000, 20000):
        tps, lost, _, _, spans = traced_pgbench(cluster, ["-c", "8", "-j", "2", "-R", str(rate)],
                                                5)
        say("| traced, -R %d | %.0f | %d | %d |" % (rate, tps, lost, spans))
    say("")
    say("## 4. sqlspan's own CPU and memory")
    say("")
    say("| load | statements/s | sqlspan CPU (% of one core) | sqlspan peak RSS | events lost |")
    say("|---|---|---|---|---|")
    for rate in (1000, 10000):
        tps, lost, cpu, hwm, _ = traced_pgbench(cluster, ["-c", "4", "-j", "2", "-R", str(rate)],
                                                10)
        say("| -R %d, 10 s | %.0f | %.1f%% | %.1f MiB | %d |" % (rate, tps, cpu / 10 * 100,
                                                               hwm / 1024, lost))
    say("")


def attach_time(cluster, env):
    say("## 5. Time to attach")
    say("")
    app = App("psycopg2", cluster, env)
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        tr = Sqlspan(app.pid)
        times.append((time.monotonic() - t0) * 1000)
        tr.stop()
    app.close()
    say("From starting `sqlspan -p PID` to its \"tracing PID\" line (BPF load, probes placed in "
        "libpq, tracepoints attached), 5 runs: median %.0f ms, max %.0f ms." % (
            statistics.median(times), max(times)))
    say("")


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (sudo make bench)")
    sa20 = overlay("sa20", "trixie", "python3-sqlalchemy", "python3-typing-extensions",
                   "python3-psycopg")
    otel = overlay("otel", "sid", "python3-opentelemetry-api", "python3-opentelemetry-sdk",
                   "python3-opentelemetry-semantic-conventions", "python3-typing-extensions")
    env = dict(os.environ, PYTHONPATH=sa20 + ":" + otel)
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    say("# sqlspan benchmark")
    say("")
    say("Machine: %s, %d cores, kernel %s. %s." % (cpu, os.cpu_count(), os.uname().release,
                                                time.strftime("%Y-%m-%d")))
    say("")
    cluster = Cluster()
    try:
        floor()
        latency(cluster, env)
        throughput(cluster)
        attach_time(cluster, env)
    finally:
        cluster.stop()
    with open(os.path.join(ROOT, "bench", "results.md"), "w") as f:
        f.write("\n".join(OUT) + "\n")
    say("(written to bench/results.md)")


if __name__ == "__main__":
    main()
