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
Writes bench/results.md and prints it. A partial run (bench/run.py SECTION..., e.g. latency)
only prints; BENCH_ROUNDS, BENCH_N, BENCH_DRIVERS (psycopg2,psycopg,asyncpg,asyncpg-session) and
BENCH_SKIP_MODES (words of mode names, comma-separated) narrow it.
"""
import glob
import math
import os
import re
import shutil
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
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
N = int(os.environ.get("BENCH_N", "3000"))
BATCH = 100  # statements per timed batch
PAIRS = max(4, N // BATCH)  # batches of each process per phase (section 2)
# section 2's drivers, and modes left out (by a word of their name): for a partial run
DRIVERS = os.environ.get("BENCH_DRIVERS", "psycopg2,psycopg,asyncpg,asyncpg-session").split(",")
SKIP_MODES = os.environ.get("BENCH_SKIP_MODES", "").split(",")
ACCOUNT_N = N  # statements of the traced process with kernel.bpf_stats_enabled on (section 2)
# section 2's statements timed one by one: these modes; a statement this much over its process's
# median is a slow one
STM_MODES = ("untraced", "in-process tracer", "sqlspan --no-python (driver level)",
             "sqlspan (with Python call site)", "empty syscall tracepoints (sqlspan's set)")
SLOW_NS = 30000
PER = []  # the rows of the table of statements timed one by one (section 2)
OUT = []
R = {}  # figures for the targets table: name -> value
NCPU = os.cpu_count() or 1
APP_CPU = {NCPU - 1}
OTHER_CPUS = set(range(NCPU - 1)) or APP_CPU
SECTIONS = sys.argv[1:] or ["floor", "latency", "throughput", "attach"]


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
        # the application alone on the last CPU, everything else (server, sqlspan) elsewhere:
        # its CPU time then carries its own work and the probes it hits, less of the others'
        self.p = subprocess.Popen([PY, os.path.join(ROOT, "bench", "app.py"), driver,
                                   cluster.sock, cluster.port], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env,
                                  preexec_fn=lambda: os.sched_setaffinity(0, APP_CPU))
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError("bench app did not start (%s)" % driver)
        self.pid = int(line.split()[1])

    def cmd(self, c):
        self.p.stdin.write(c + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().split()

    def run(self, n, batch=BATCH):
        """µs per statement (wall, CPU): the lower quartile of the batches' costs. Another
        process or the hypervisor taking the CPU only ever adds time: the low batches are the
        ones it left alone."""
        v = [int(x) for x in self.cmd("run %d %d" % (n, batch))]
        return lower_quartile(v[0::2]) / batch / 1000, lower_quartile(v[1::2]) / batch / 1000

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
        shutil.rmtree(self.dir, ignore_errors=True)  # ~40 MB a cluster: none left behind

    def pin(self, cpus):
        """The server's processes (the postmaster and its children, present and future)."""
        with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
            root = int(f.readline())
        pids = {root}
        for st in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(st) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == root:
                    pids.add(int(st.split("/")[2]))
            except (OSError, ValueError):
                pass
        for pid in pids:
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass


def hypervisor():
    """What the kernel said it runs on (dmesg), or what the CPU flags say."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    m = re.search(r"Hypervisor detected: (.*)", out)
    if m:
        return m.group(1).strip()
    with open("/proc/cpuinfo") as f:
        return "one, unnamed" if " hypervisor" in f.read() else "none"


def mitigations():
    """The kernel's word on SRSO, Retbleed and Spectre v2 (return thunks, retpolines)."""
    got = []
    for v in ("spec_rstack_overflow", "retbleed", "spectre_v2"):
        try:
            with open("/sys/devices/system/cpu/vulnerabilities/" + v) as f:
                got.append("%s: %s" % (v, f.read().strip()))
        except OSError:
            pass
    return "; ".join(got) or "not reported"


def steal_ticks():
    """The steal time /proc/stat reports for all CPUs (ticks)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])


def floor():
    """Prints the floor; returns {"emulated": ns, "single-stepped": ns} for one uprobe hit."""
    say("## 1. The floor: one empty uprobe hit on this machine")
    say("")
    say("```")
    out = subprocess.run([FLOOR], check=True, capture_output=True, text=True).stdout
    costs = {}
    for line in out.splitlines():
        say(line)
        m = re.search(r"\((emulated|single-stepped)\)\s+[\d.]+\s+([\d.]+)", line)
        if m:
            costs.setdefault(m.group(1), float(m.group(2)))
    say("```")
    say("")
    say("The middle lines: what a call inside a BPF program costs, of a BPF function (call "
        "and return) and of a kernel helper, 64 in a loop against the same loop inline: where "
        "the kernel mitigates SRSO or Retbleed every return goes through a return thunk, and "
        "the BPF side's every step pays it (its functions, its helper calls, its map lookups "
        "and user memory reads, which are helper calls).")
    say("")
    say("The last lines: what one 8-byte read of the traced thread's memory adds to a probe, "
        "where the page is in use, and where it is mapped but was never touched: that read "
        "fails through a page fault the kernel does not serve, and a fault costs about what "
        "a probe's trap does here (each is an exception); floor checks that the first kind of "
        "read succeeded and the second failed, every time.")
    say("")
    say("What a busy CPU loses here (a loop that only reads the clock, 5 s on each CPU): the "
        "kernel charges these gaps to the task that runs; where the hypervisor reports no "
        "steal time (the last line), the host taking a virtual CPU away counts as the "
        "application's CPU time too.")
    say("")
    say("```")
    steal = steal_ticks()
    for cpu in range(NCPU):
        out = subprocess.run(["taskset", "-c", str(cpu), FLOOR, "gaps", "5"], check=True,
                             capture_output=True, text=True).stdout.strip()
        say("CPU %d: %s" % (cpu, out))
        m = re.search(r"([\d.]+) a second of 30 us", out)
        if cpu in APP_CPU and m:
            R["gaps30"] = float(m.group(1))
    say("steal time the kernel was told of meanwhile: %d ticks" % (steal_ticks() - steal))
    say("```")
    say("")
    return costs


def stats_overhead_ns():
    """What kernel.bpf_stats_enabled reports as an empty program's run time (its own clock reads):
    the part of every run's reported time that is the measuring, subtracted per run."""
    out = subprocess.run([FLOOR, "stats"], check=True, capture_output=True, text=True).stdout
    return float(re.search(r"reported: ([\d.]+) ns", out).group(1))


def libpq_of(pid):
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            if "libpq.so" in line and "r-xp" in line:
                return line.split()[-1]
    return None


class BpfStats:
    """kernel.bpf_stats_enabled on for the run (BPF run time per program), restored after."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self):
        with open(self.PATH) as f:
            self.old = f.read().strip()
        with open(self.PATH, "w") as f:
            f.write("1")
        return self

    def __exit__(self, *exc):
        with open(self.PATH, "w") as f:
            f.write(self.old)


def bpf_time(text):
    """{program: (runs, ns in all)} from sqlspan -v's summary, for the programs the traced
    threads run (ring_touch, sqlspan writing its ring ahead as it starts, runs in sqlspan)."""
    out = {}
    for m in re.finditer(r"bpf time: (\S+): (\d+) runs, \d+ ns each, (\d+) ns in all", text):
        if m.group(1) != "ring_touch":
            out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def bpf_us(stats, n, overhead_ns):
    """{program: µs per statement} from {program: (runs, ns)} over n statements, the stats
    clock's own cost (overhead_ns a run) taken off."""
    return {p: max(0.0, (ns - runs * overhead_ns) / n / 1000) for p, (runs, ns) in stats.items()}


def probe_kinds(text):
    """{libpq function: 'emulated' | 'single-stepped'} from sqlspan -v's placement lines."""
    return {m.group(1): m.group(2)
            for m in re.finditer(r": (\w+) probed at \+\d+, file offset \S+ \(([\w-]+)\)",
                                 text)}


def probe_site(app):
    """Where sqlspan probes the function the application's statements hit: ("Fn+off", kind)."""
    tr = Sqlspan(app.pid, ["--libpq-uprobes"])
    with BpfStats():  # which probe runs: the run counts
        app.run(300)
    text = tr.stop()
    runs = {libpq_name(p): r for p, (r, _) in bpf_time(text).items() if p.startswith("up_")}
    places = {m.group(1): (int(m.group(2)), m.group(3)) for m in re.finditer(
        r": (\w+) probed at \+(\d+), file offset \S+ \(([\w-]+)\)", text)}
    hit = [fn for fn in sorted(runs, key=lambda f: -runs[f]) if fn in places]
    if not hit:
        return None
    return "%s+%d" % (hit[0], places[hit[0]][0]), places[hit[0]][1]


def spread(xs):
    """median and half the interquartile range"""
    xs = sorted(xs)
    if len(xs) < 4:
        return statistics.median(xs), 0.0
    q = statistics.quantiles(xs, n=4)
    return statistics.median(xs), (q[2] - q[0]) / 2


def lower_quartile(xs):
    xs = sorted(xs)
    return xs[len(xs) // 4]


def in_turn(t, ref, cmd):
    """cmd run PAIRS times in each of two application processes on one CPU, batch by batch in
    turn (t, ref, ref, t, ...): whatever the machine does to one batch it does to its neighbour.
    Each process's answers, as lists of numbers."""
    got = {t: [], ref: []}
    for k in range(PAIRS):
        for app in ((t, ref) if k % 2 == 0 else (ref, t)):
            got[app].append([int(x) for x in app.cmd(cmd)])
    return got


def paired(t, ref):
    """N statements in each of two processes in turn (in_turn): µs per statement (wall, CPU) of
    t and of ref, each the lower quartile of its batches."""
    got = in_turn(t, ref, "run %d %d" % (BATCH, BATCH))
    return tuple(lower_quartile(v[i] for v in got[app]) / BATCH / 1000
                 for app in (t, ref) for i in (0, 1))


def paired_stm(t, ref):
    """Each statement's CPU time in the two processes, batch by batch in turn (in_turn); per
    process (25th, 50th, 75th percentile, mean, in µs; share of slow statements)."""
    got = in_turn(t, ref, "stm %d" % BATCH)
    out = []
    for app in (t, ref):
        v = sorted(x for batch in got[app] for x in batch)
        med = v[len(v) // 2]
        out.append((v[len(v) // 4] / 1000, med / 1000, v[3 * len(v) // 4] / 1000,
                    statistics.fmean(v) / 1000, sum(1 for x in v if x > med + SLOW_NS) / len(v)))
    return tuple(out)


def latency(cluster, env, floor_ns, overhead_ns):
    say("## 2. Added latency and CPU per statement (SELECT 1, SQLAlchemy 2.0, Unix socket)")
    say("")
    say("Two application processes run the same loop on one CPU, batches of %d statements in "
        "turn (%d statements each per phase): whatever the machine does to one batch it does to "
        "its neighbour. In each of %d rounds every mode runs once (order rotated) with one "
        "process traced in that mode and the other as the reference (the roles swap each "
        "round); what a mode adds is its traced-minus-reference difference less the two "
        "processes' difference with neither traced (the median over the rounds with the same "
        "roles). The table shows the median over rounds ± half the "
        "interquartile range; each phase's figure is the lower quartile of its batches (the "
        "machine only ever adds time). CPU is the process's own CPU time (user + system: probe "
        "hits are charged to it). Wall time also carries the server and scheduling noise. "
        "BPF statistics (kernel.bpf_stats_enabled) are off in these phases: they cost the app "
        "too."
        % (BATCH, PAIRS * BATCH, ROUNDS))
    say("")
    say("| driver | mode | wall µs/stmt | CPU µs/stmt | added CPU µs | added wall µs | "
        "in-process / sqlspan |")
    say("|---|---|---|---|---|---|---|")
    summary = {}
    accounts = []
    for driver in DRIVERS:
        apps = [App(driver, cluster, env), App(driver, cluster, env)]
        libpq = libpq_of(apps[0].pid)
        modes = ["untraced", "in-process tracer",
                 "sqlspan --no-python (driver level)", "sqlspan (with Python call site)",
                 "sqlspan --perf-uprobes --no-python (its uprobes as perf events on the task, "
                 "driver level)",
                 "empty syscall tracepoints (sqlspan's set)"]
        if driver == "asyncpg-session":  # what differs from asyncpg: the call site's cost
            modes = modes[:4]
        site = None
        if libpq:  # asyncpg: no libpq, no uprobes (its sockets' syscall tracepoints)
            # libpq's statements are read off its sockets; its uprobes (older kernels) compared
            modes.append("sqlspan --libpq-uprobes --no-python (libpq's uprobes, driver level)")
            site = probe_site(apps[0])
            if site:
                modes.append("empty uprobe at sqlspan's probe (%s, %s)" % site)
            modes.append("PQgetResult uprobe+uretprobe (not taken)")
        # a partial run's left-out modes (never the two every ratio is taken against)
        modes = modes[:2] + [m for m in modes[2:] if not any(x and x in m for x in SKIP_MODES)]
        res = {m: [] for m in modes}
        per = {m: [] for m in STM_MODES}
        stats = {m: {} for m in modes}
        kinds = {}
        for r in range(ROUNDS):
            app, ref = apps[r % 2], apps[1 - r % 2]
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for m in order:
                tr = floor_p = None
                if m.startswith("sqlspan --libpq-uprobes"):
                    tr = Sqlspan(app.pid, ["--libpq-uprobes", "--no-python"])
                elif m.startswith("sqlspan --perf-uprobes"):
                    tr = Sqlspan(app.pid, ["--perf-uprobes", "--no-python"])
                elif m.startswith("sqlspan --no-python"):
                    tr = Sqlspan(app.pid, ["--no-python"])
                elif m.startswith("sqlspan"):
                    tr = Sqlspan(app.pid)
                elif m == "in-process tracer":
                    app.cmd("otel on")
                elif m.startswith("empty syscall tracepoints"):
                    floor_p = subprocess.Popen([FLOOR, "tracepoints"],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               text=True)
                    floor_p.stdout.readline()
                elif m.startswith("PQgetResult") or m.startswith("empty uprobe"):
                    where = (["PQgetResult", "ret"] if m.startswith("PQgetResult") else
                             [site[0]])
                    floor_p = subprocess.Popen([FLOOR, "attach", str(app.pid), libpq_of(app.pid),
                                                *where], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True)
                    floor_p.stdout.readline()
                res[m].append(paired(app, ref))
                if m in STM_MODES:
                    per[m].append(paired_stm(app, ref))
                if tr:
                    # the BPF run time: kernel.bpf_stats_enabled on for statements of the
                    # traced process alone, after its paired phase (the stats' own clock reads
                    # cost the app ~0.5-2 µs a statement: kept out of the measured figures)
                    with BpfStats():
                        app.run(ACCOUNT_N)
                    text = tr.stop()
                    kinds.update(probe_kinds(text))
                    for prog, (runs, ns) in bpf_time(text).items():
                        a = stats[m].setdefault(prog, [0, 0])
                        a[0] += runs
                        a[1] += ns
                elif m == "in-process tracer":
                    app.cmd("otel off")
                elif floor_p:
                    floor_p.stdin.close()
                    floor_p.wait()
        for a in apps:
            a.close()
        base = res["untraced"]  # per round: (wall, cpu) of the process, then of the reference

        # the two processes' own difference untraced, for each way round (median over the
        # rounds that had it: one round's figure would add its noise to every mode's)
        own = {(p, i): statistics.median(b[i] - b[i + 2] for r, b in enumerate(base)
                                         if r % 2 == p)
               for p in (0, 1) for i in (0, 1)}

        def added(m, i):
            """what mode m adds per round: traced - reference, less the same untraced"""
            return [(x[i] - x[i + 2]) - own[(r % 2, i)] for r, x in enumerate(res[m])]

        say("| %s | untraced | %.1f | %.1f | | | |" % (
            driver, statistics.median(x[0] for x in base), statistics.median(x[1] for x in base)))
        inproc = spread(added("in-process tracer", 1))[0]
        R[("inproc", driver)] = inproc
        for m in modes[1:]:
            w = statistics.median(x[0] for x in res[m])
            c = statistics.median(x[1] for x in res[m])
            dc, sc = spread(added(m, 1))
            dw, sw = spread(added(m, 0))
            ratio = ("%.0fx" % (inproc / dc) if m != "in-process tracer" and dc > 0.05 else
                     ("cost below the noise" if m != "in-process tracer" else ""))
            say("| %s | %s | %.1f | %.1f | %.2f ± %.2f | %.2f ± %.2f | %s |" % (
                driver, m, w, c, dc, sc, dw, sw, ratio))
            summary[(driver, m)] = dc
            R[("measured", driver, m)] = (dc, sc)
        for m in modes:
            if m.startswith("sqlspan") and stats[m]:
                accounts.append((driver, m, stats[m], kinds))
        per_statement(driver, per)
    say("")
    account(accounts, floor_ns, overhead_ns)
    say("### The typical statement, and the slow ones")
    say("")
    say("In the same attach, right after each paired phase, the two processes time every "
        "statement on its own (the process's CPU clock read before and after it: those reads "
        "cost both processes alike), %d statements each, batch by batch in turn. Added CPU at "
        "the 25th, 50th and 75th percentile of the statements and in their mean, as in the "
        "table above (traced minus reference, less the same untraced; median over rounds ± "
        "half the interquartile range). On this machine a share of the statements is slow, "
        "traced or not: over %d µs above their process's median (the *slow* column, traced / "
        "reference; not Python's garbage collector: the same with it off). The kernel charges "
        "a task for the time the host took its virtual CPU away (this VM reports no steal "
        "time: section 1's gaps), and a statement that slept for its reply may wake on a "
        "CPU the host used meanwhile. The untraced rows' *gaps alone* is the share that "
        "section 1's gaps of 30 µs or more on the application's CPU would make slow by "
        "themselves, at their rate, in a statement running as long as the median one "
        "(1 − e^(−rate × its CPU time)). The median statement is what every statement pays; the "
        "mean adds what tracing changes among the slow ones. The last column is the "
        "reference's own median statement against its median in the same round's untraced "
        "phase: what the mode costs a process it does not trace. Syscall tracepoints run, and "
        "return early, for every process on the host, so every process pays for them being "
        "there, the traced one too, on top of its added figure (the pairing takes that part "
        "out of it); the in-process tracer's row is the control (nothing there for the "
        "neighbour)." % (PAIRS * BATCH, SLOW_NS // 1000))
    say("")
    say("| driver | mode | p25 µs | median statement µs | p75 µs | mean µs | slow | "
        "untraced neighbour µs |")
    say("|---|---|---|---|---|---|---|---|")
    for line in PER:
        say(line)
    say("")
    return summary


def per_statement(driver, per):
    """Section 2's statements timed one by one: the rows of their table, for this driver."""
    base = per["untraced"]
    if not base:
        return
    own = {(p, i): statistics.median(b[0][i] - b[1][i] for r, b in enumerate(base)
                                     if r % 2 == p)
           for p in (0, 1) for i in range(4)}
    med = statistics.median(x[0][1] for x in base)
    # a statement is slow when the host takes its CPU away for 30 µs or more while it runs
    gaps = ("; gaps alone: %.1f%%" % (100 * (1 - math.exp(-R["gaps30"] * med / 1e6)))
            if "gaps30" in R else "")
    PER.append("| %s | untraced | %.1f | %.1f | %.1f | %.1f | %.1f%% / %.1f%%%s | |" % (
        driver, *(statistics.median(x[0][i] for x in base) for i in range(4)),
        100 * statistics.median(x[0][4] for x in base),
        100 * statistics.median(x[1][4] for x in base), gaps))
    for m in STM_MODES[1:]:
        if not per[m]:
            continue
        got = [spread([(x[0][i] - x[1][i]) - own[(r % 2, i)] for r, x in enumerate(per[m])])
               for i in range(4)]
        # the reference's median statement against its own in the same round, untraced
        nb = spread([x[1][1] - base[r][1][1] for r, x in enumerate(per[m])])
        PER.append("| %s | %s | %+.2f | %+.2f ± %.2f | %+.2f | %+.2f ± %.2f | %.1f%% / %.1f%% | "
                   "%+.2f ± %.2f |" % (
                       driver, m, got[0][0], got[1][0], got[1][1], got[2][0], got[3][0],
                       got[3][1], 100 * statistics.median(x[0][4] for x in per[m]),
                       100 * statistics.median(x[1][4] for x in per[m]), nb[0], nb[1]))
        R[("typical", driver, m)] = got[1]


def libpq_name(prog):
    """up_send_query_params -> PQsendQueryParams"""
    words = prog[3:].split("_")
    return "PQ" + words[0] + "".join(w.capitalize() for w in words[1:])


def account(accounts, floor_ns, overhead_ns):
    """Where the time goes: probe hits per statement times their measured cost, plus BPF time."""
    if not accounts:
        return
    say("### Where sqlspan's time goes, per statement")
    say("")
    say("Each uprobe hit priced at the floor above for its kind of probed instruction, plus the "
        "BPF programs' run time (kernel.bpf_stats_enabled, on only while the traced process "
        "runs %d statements alone after each paired phase: the stats' clock reads cost the app "
        "time of their own, kept out of the measured figures; the request "
        "program is tail-called, so its time counts under the probe that called it). The "
        "syscall tracepoints run for every process on the host: their time here includes the "
        "PostgreSQL server's own calls, which they filter out. The run time the kernel reports "
        "includes its own clock reads around each run: an empty program is reported at %.1f ns "
        "a run on this machine, and that much is taken off each run (the *runs* column counts "
        "them; what remains uncounted is the few ns of calling a program, which for uprobes "
        "is in the trap's price)." % (ACCOUNT_N, overhead_ns))
    say("")
    say("| driver | mode | uprobe hits: function (kind) | trap µs | runs | BPF µs by program | "
        "accounted µs |")
    say("|---|---|---|---|---|---|---|")
    for driver, m, stats, kinds in accounts:
        n = ACCOUNT_N * ROUNDS  # statements of the traced process with the stats on
        trap = 0.0
        hits = []
        for prog, (runs, _) in sorted(stats.items()):
            if prog.startswith("up_") and runs:
                fn = libpq_name(prog)
                kind = kinds.get(fn, "?")
                trap += runs / n * floor_ns.get(kind, 0) / 1000
                hits.append("%.2f %s (%s)" % (runs / n, fn, kind))
        per = bpf_us(stats, n, overhead_ns)
        nruns = sum(runs for runs, _ in stats.values()) / n
        bpf_total = sum(per.values())
        progs = ", ".join("%s %.2f" % (p, v) for p, v in
                          sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.005)
        say("| %s | %s | %s | %.2f | %.1f | %.2f: %s | %.2f |" % (
            driver, m, ", ".join(hits), trap, nruns, bpf_total, progs, trap + bpf_total))
        R[("accounted", driver, m)] = trap + bpf_total
    say("")


def pgbench(cluster, args, seconds):
    p = subprocess.run(["pgbench", "-n", "-S", "-h", cluster.sock, "-p", cluster.port, "-U",
                        "postgres", "-T", str(seconds), *args, "bench"],
                       capture_output=True, text=True)
    m = re.search(r"tps = ([\d.]+)", p.stdout)
    return float(m.group(1)) if m else 0.0


def paused_pgbench(cluster, args, seconds):
    # select-only unless a script is given (-S with -f would run both, alternating)
    builtin = [] if "-f" in args else ["-S"]
    return subprocess.Popen(["sh", "-c", 'read x; exec "$@"', "sh", "pgbench", "-n", *builtin,
                             "-h", cluster.sock, "-p", cluster.port, "-U", "postgres", "-T",
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


def traced_pgbench(cluster, args, seconds, sqlspan_args=()):
    """pgbench under sqlspan: (tps, lost, sqlspan CPU seconds, sqlspan peak RSS KiB, spans,
    transactions pgbench made)."""
    p = paused_pgbench(cluster, args, seconds)
    tr = subprocess.Popen([SQLSPAN, "-p", str(p.pid), "--wait", "--json", *sqlspan_args],
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
    xacts = re.search(r"number of transactions actually processed: (\d+)", out)
    return (float(m.group(1)) if m else 0.0, int(lost.group(1)) if lost else -1, cpu, hwm,
            int(spans.group(1)) if spans else 0, int(xacts.group(1)) if xacts else 0)


FLOOD_DEPTH = 50


def flood(cluster):
    """The most events per second pgbench can make: pipelines of SELECT 1."""
    script = os.path.join(cluster.dir, "flood.sql")  # removed with the cluster
    with open(script, "w") as f:
        f.write("\\startpipeline\n" + "SELECT 1;\n" * FLOOD_DEPTH + "\\endpipeline\n")
    args = ["-c", "8", "-j", "2", "-M", "prepared", "-f", script]
    say("### A flood: pipelines of %d statements, 8 clients, unthrottled" % FLOOD_DEPTH)
    say("")
    say("Every statement is an event stream of its own (request, reply messages); a ring too "
        "small for the burst loses events, and sqlspan counts them. Statements are pgbench's "
        "own count.")
    say("")
    say("| run | statements/s | statements | spans | events lost |")
    say("|---|---|---|---|---|")
    p = subprocess.run(["pgbench", "-n", "-h", cluster.sock, "-p", cluster.port, "-U", "postgres",
                        "-T", "5", *args, "bench"], capture_output=True, text=True)
    m = re.search(r"tps = ([\d.]+)", p.stdout)
    x = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
    say("| untraced | %.0f | %d | | |" % (float(m.group(1)) * FLOOD_DEPTH if m else 0,
                                          int(x.group(1)) * FLOOD_DEPTH if x else 0))
    for label, extra in (("traced, default ring", []), ("traced, --ring-mb 1", ["--ring-mb", "1"])):
        tps, lost, _, _, spans, xacts = traced_pgbench(cluster, [*args], 5, extra)
        say("| %s | %.0f | %d | %d | %d |" % (label, tps * FLOOD_DEPTH, xacts * FLOOD_DEPTH, spans,
                                             lost))
    say("")


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
    tps, lost, _, _, spans, _ = traced_pgbench(cluster, ["-c", "8", "-j", "2"], 5)
    say("| traced, unthrottled | %.0f | %d | %d |" % (tps, lost, spans))
    for rate in (5000, 10000, 20000):
        tps, lost, _, _, spans, _ = traced_pgbench(
            cluster, ["-c", "8", "-j", "2", "-R", str(rate)], 5)
        say("| traced, -R %d | %.0f | %d | %d |" % (rate, tps, lost, spans))
        R[("lost", rate)] = (lost, tps)
    say("")
    flood(cluster)
    say("## 4. sqlspan's own CPU and memory")
    say("")
    say("| load | statements/s | sqlspan CPU (% of one core) | µs per statement | "
        "sqlspan peak RSS | events lost |")
    say("|---|---|---|---|---|---|")
    for rate in (1000, 10000):
        tps, lost, cpu, hwm, _, _ = traced_pgbench(
            cluster, ["-c", "4", "-j", "2", "-R", str(rate)], 10)
        say("| -R %d, 10 s | %.0f | %.1f%% | %.1f | %.1f MiB | %d |" % (
            rate, tps, cpu / 10 * 100, cpu * 1e6 / max(tps * 10, 1), hwm / 1024, lost))
        R["rss"] = max(R.get("rss", 0), hwm / 1024)
    say("")
    say("Peak RSS includes the ring buffer, which the kernel maps twice into sqlspan (so that a "
        "record can wrap around its end): the default 8 MiB ring is 16 MiB of it once written "
        "all over.")
    say("")


def attach_time(cluster, env):
    say("## 5. Time to attach")
    say("")
    app = App("psycopg2", cluster, env)
    say("From starting `sqlspan -p PID` to its \"tracing PID\" line (BPF programs loaded and "
        "verified, CPython found, probes placed in libpq, tracepoints attached), 5 runs each:")
    say("")
    for label, args in (("bpf_loop programs (kernels 5.17+)", []),
                        ("bounded-loop programs (older kernels, --no-bpf-loop)",
                         ["--no-bpf-loop"])):
        times, ahead = [], []
        for _ in range(5):
            t0 = time.monotonic()
            tr = Sqlspan(app.pid, args)
            times.append((time.monotonic() - t0) * 1000)
            m = re.search(r"written ahead in ([\d.]+) ms", tr.stop())
            if m:
                ahead.append(float(m.group(1)))
        say("- %s: median %.0f ms, max %.0f ms%s" % (
            label, statistics.median(times), max(times),
            "; of which writing the ring's pages ahead: %.0f ms" %
            statistics.median(ahead) if ahead else ""))
        R.setdefault("attach", statistics.median(times))
    app.close()
    say("")


def targets():
    """The issue's targets against this run, as lines."""
    out = ["## Against the targets", "",
           "Added app CPU per statement: *accounted* = probe traps at the floor's (hot-cache) "
           "price + the BPF programs' measured run time; *measured* = the application's own CPU time, "
           "traced minus untraced, from two application processes in turn (section 2; median ± "
           "half IQR). In the application a uprobe trap costs several times its hot-loop price "
           "(caches cold between statements): compare the empty-uprobe rows of section 2. "
           "*The median statement*: section 2's statements timed one by one, the added CPU "
           "of the median one (what every statement pays; the host's gaps land on a share of "
           "them, section 1). The targets are judged on accounted and measured.", "",
           "| target | result | met |", "|---|---|---|"]

    def row(what, result, ok):
        out.append("| %s | %s | %s |" % (what, result, "yes" if ok else "**no**"))

    for driver in DRIVERS:
        for m, limit in (("sqlspan --no-python (driver level)", 4.0),
                         ("sqlspan (with Python call site)", 10.0)):
            a, me = R.get(("accounted", driver, m)), R.get(("measured", driver, m))
            inproc = R.get(("inproc", driver))
            if a is None or me is None:
                continue
            typ = R.get(("typical", driver, m))
            row("%s, %s: ≤ %.0f µs" % (driver, m, limit),
                "accounted %.1f µs, measured %.1f ± %.1f µs%s" % (
                    a, me[0], me[1],
                    ", the median statement %.1f ± %.1f µs" % typ if typ else ""),
                a <= limit and me[0] <= limit)
            # 8x: the driver-level figure's reason (4 µs against ~35 in process); with the
            # call site the issue allows 10 µs, about 3.5x: the ratio is shown, not a target
            if inproc and limit == 4.0:
                row("%s, %s: ≥ 8x cheaper than in-process (%.1f µs)" % (driver, m, inproc),
                    "%.1fx accounted, %.1fx measured" % (inproc / a, inproc / max(me[0], 0.01)),
                    inproc / a >= 8 and inproc / max(me[0], 0.01) >= 8)
    if ("lost", 20000) in R:
        # shown only if pgbench, traced, reached the rate (on a slow hour the machine may not)
        lost, tps = R[("lost", 20000)]
        row("zero events lost at 20k statements/s",
            "%d lost at %.0f statements/s%s" % (
                lost, tps, "" if tps >= 19000 else
                " (pgbench traced reached no more: the rate is not shown)"),
            lost == 0 and tps >= 19000)
    if "rss" in R:
        row("sqlspan resident memory ≤ 32 MiB", "%.1f MiB peak" % R["rss"], R["rss"] <= 32)
    if "attach" in R:
        row("attach within 300 ms", "%.0f ms median" % R["attach"], R["attach"] <= 300)
    return out + [""]


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
    say("Machine: %s, %d cores, kernel %s, hypervisor %s. %s. The kernel's mitigations that "
        "make calls and returns dearer: %s." % (cpu, os.cpu_count(), os.uname().release,
                                               hypervisor(), time.strftime("%Y-%m-%d"),
                                               mitigations()))
    say("")
    cluster = Cluster()
    try:
        floor_ns = floor()
        if "latency" in SECTIONS:
            everywhere = os.sched_getaffinity(0)
            cluster.pin(OTHER_CPUS)
            os.sched_setaffinity(0, OTHER_CPUS)  # and sqlspan, started from here
            try:
                with BpfStats():
                    overhead_ns = stats_overhead_ns()
                latency(cluster, env, floor_ns, overhead_ns)
            finally:
                os.sched_setaffinity(0, everywhere)
                cluster.pin(everywhere)
        if "throughput" in SECTIONS:
            throughput(cluster)
        if "attach" in SECTIONS:
            attach_time(cluster, env)
    finally:
        cluster.stop()
    head = OUT.index("") + 3  # after the title and the machine line
    lines = targets()
    for line in lines:
        print(line)
    OUT[head:head] = lines
    if len(SECTIONS) < 4:
        return  # a partial run (bench/run.py SECTION...) does not replace the results
    with open(os.path.join(ROOT, "bench", "results.md"), "w") as f:
        f.write("\n".join(OUT) + "\n")
    say("(written to bench/results.md)")


if __name__ == "__main__":
    main()
