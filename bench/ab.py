#!/usr/bin/python3
"""Compare the BPF cost of sqlspan builds in one application process.

    bench/ab.py BUILD_A BUILD_B [BUILD...]
    environment: AB_ROUNDS (8), AB_DRIVERS (psycopg2,psycopg,asyncpg),
                 AB_MODES (driver,site), BENCH_N (statements per attach, 3000)

The builds are sqlspan binaries (e.g. one built from a worktree of the commit before a change,
and this tree's). Each round attaches every build in turn (the order rotated) to the same bench
app, for each mode (driver level, with the Python call site), and reads the BPF run time per
statement from sqlspan -v's summary (kernel.bpf_stats_enabled on, the stats clock's own cost
taken off each run). Whole-bench figures drift by ±20% within minutes on a shared VM: only a
comparison within one run, build against build, says whether a change made the BPF side
cheaper. Prints each build's median µs per statement, its median difference from the first
build per round, and the split by program.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: the app, the cluster, the parsing of sqlspan -v)

MODES = {"driver": ("driver level", ["--no-python"]), "site": ("with call site", [])}


def main():
    if len(sys.argv) < 3 or os.geteuid() != 0:
        sys.exit("usage (as root): bench/ab.py BUILD_A BUILD_B [BUILD...]")
    builds = [os.path.abspath(b) for b in sys.argv[1:]]
    rounds = int(os.environ.get("AB_ROUNDS", "8"))
    drivers = os.environ.get("AB_DRIVERS", "psycopg2,psycopg,asyncpg").split(",")
    modes = [MODES[m] for m in os.environ.get("AB_MODES", "driver,site").split(",")]
    sa20 = run.overlay("sa20", "trixie", "python3-sqlalchemy", "python3-typing-extensions",
                       "python3-psycopg")
    env = dict(os.environ, PYTHONPATH=sa20)
    cluster = run.Cluster()
    everywhere = os.sched_getaffinity(0)
    try:
        cluster.pin(run.OTHER_CPUS)
        os.sched_setaffinity(0, run.OTHER_CPUS)
        with run.BpfStats():
            overhead = run.stats_overhead_ns()
            for i, b in enumerate(builds):
                print("%c = %s" % (65 + i, b))
            print("%d rounds of %d statements; BPF µs per statement (stats clock %.1f ns a run "
                  "taken off)\n" % (rounds, run.N, overhead))
            print("| driver | mode | build | µs | - A (median of rounds) | by program |")
            print("|---|---|---|---|---|---|")
            for driver in drivers:
                app = run.App(driver, cluster, env)
                app.run(run.N)  # warm: caches, prepared statements
                for mode, args in modes:
                    got = [[] for _ in builds]
                    for r in range(rounds):
                        order = list(range(len(builds)))
                        order = order[r % len(order):] + order[:r % len(order)]
                        for b in order:
                            run.SQLSPAN = builds[b]
                            tr = run.Sqlspan(app.pid, args)
                            app.run(run.N)
                            got[b].append(run.bpf_us(run.bpf_time(tr.stop()), run.N, overhead))
                    for b in range(len(builds)):
                        tot = [sum(x.values()) for x in got[b]]
                        diff = [t - sum(a.values()) for t, a in zip(tot, got[0])]
                        progs = sorted({p for x in got[b] for p in x})
                        split = ", ".join("%s %.2f" % (p, statistics.median(
                            x.get(p, 0.0) for x in got[b])) for p in progs)
                        print("| %s | %s | %c | %.2f | %+.2f ± %.2f | %s |" % (
                            driver, mode, 65 + b, statistics.median(tot), *run.spread(diff),
                            split), flush=True)
                app.close()
    finally:
        os.sched_setaffinity(0, everywhere)
        cluster.pin(everywhere)
        cluster.stop()


if __name__ == "__main__":
    main()
