#!/usr/bin/python3
"""A greenlet-heavy async app for sqlspan's robustness test: AsyncEngine over asyncpg, many tasks
on a small pool, every statement's result checked by the app itself. Prints "PID <pid>", waits for
a line on stdin, runs, then prints "OK <statements> <checksum>" (or fails loudly).

Usage: async_stress.py --host DIR --port PORT --statements N [--tasks T]
"""
import argparse
import asyncio
import os
import sys


async def worker(engine, n, k, totals):
    from sqlalchemy import text
    done = checksum = 0
    while done < n:
        async with engine.begin() as conn:  # a greenlet_spawn per call, a transaction per batch
            for _ in range(min(10, n - done)):
                x = (k * 1000003 + done) % 1000000
                r = (await conn.execute(text("SELECT CAST(:x AS INTEGER) + 1"), {"x": x})).scalar()
                if r != x + 1:
                    raise AssertionError("wrong result %r for %d" % (r, x))
                checksum = (checksum + r) % (1 << 61)
                done += 1
    totals.append((done, checksum))


async def main(a):
    from sqlalchemy.ext.asyncio import create_async_engine
    engine = create_async_engine("postgresql+asyncpg://postgres@/postgres?host=%s&port=%s" %
                                 (a.host, a.port), pool_size=5, max_overflow=0)
    print("PID", os.getpid(), flush=True)
    sys.stdin.readline()
    totals = []
    per = a.statements // a.tasks
    await asyncio.gather(*(worker(engine, per, k, totals) for k in range(a.tasks)))
    await engine.dispose()
    print("OK %d %d" % (sum(t[0] for t in totals), sum(t[1] for t in totals) % (1 << 61)),
          flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--statements", type=int, default=100000)
    ap.add_argument("--tasks", type=int, default=20)
    import asyncpg  # noqa: F401  (loaded before the PID is printed, as apps do)
    asyncio.run(main(ap.parse_args()))
