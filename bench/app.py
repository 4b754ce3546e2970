#!/usr/bin/python3
"""The benchmark's application: SELECT 1 in a loop through SQLAlchemy, on one connection.

Driven over stdin/stdout by bench/run.py, one line per command:
  run N [B]    -> "wall_ns cpu_ns" for N statements, per batch of B (this process's own CPU time:
                  it pays for every probe hit, whether sqlspan is attached or not)
  stm N        -> the CPU time of each of N statements, in ns (two clock reads around each)
  otel on|off  -> an in-process tracer on SQLAlchemy's cursor events, as OpenTelemetry's SQLAlchemy
                  instrumentation does it: an SDK span per statement, with its attributes
  quit
Usage: app.py DRIVER SOCKET_DIR PORT   (DRIVER: psycopg2, psycopg, asyncpg, asyncpg-session:
asyncpg through an AsyncSession, whose Session runs in the greenlet, rather than an
AsyncConnection)
"""
import asyncio
import os
import sys
import time

from sqlalchemy import event, text

DRIVER, SOCK, PORT = sys.argv[1], sys.argv[2], sys.argv[3]
URLS = {
    "psycopg2": "postgresql+psycopg2://postgres@/postgres?host=%s&port=%s",
    "psycopg": "postgresql+psycopg://postgres@/postgres?host=%s&port=%s",
    "asyncpg": "postgresql+asyncpg://postgres@/postgres?host=%s&port=%s",
    "asyncpg-session": "postgresql+asyncpg://postgres@/postgres?host=%s&port=%s",
}


class InProcessTracer:
    """Spans from SQLAlchemy cursor events, the way in-process instrumentation makes them."""

    def __init__(self):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, \
            SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Drop()))
        self.tracer = provider.get_tracer("bench.sqlalchemy")
        self.engine = None

    def before(self, conn, cursor, statement, parameters, context, executemany):
        span = self.tracer.start_span(statement.split(None, 1)[0] + " postgres",
                                      kind=__import__("opentelemetry.trace").trace.SpanKind.CLIENT)
        span.set_attribute("db.system.name", "postgresql")
        span.set_attribute("db.query.text", statement)
        span.set_attribute("db.namespace", "postgres")
        span.set_attribute("server.address", SOCK)
        span.set_attribute("server.port", int(PORT))
        context._bench_span = span

    def after(self, conn, cursor, statement, parameters, context, executemany):
        span = getattr(context, "_bench_span", None)
        if span is not None:
            span.end()

    def on(self, engine):
        event.listen(engine, "before_cursor_execute", self.before)
        event.listen(engine, "after_cursor_execute", self.after)

    def off(self, engine):
        event.remove(engine, "before_cursor_execute", self.before)
        event.remove(engine, "after_cursor_execute", self.after)


def measure(loop_fn, n):
    w0, c0 = time.perf_counter_ns(), time.process_time_ns()
    loop_fn(n)
    return time.perf_counter_ns() - w0, time.process_time_ns() - c0


def main():
    url = URLS[DRIVER] % (SOCK, PORT)
    tracer = None
    stmt = text("SELECT 1")
    if DRIVER.startswith("asyncpg"):
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
        loop = asyncio.new_event_loop()
        engine = create_async_engine(url)
        if DRIVER == "asyncpg-session":
            aconn = AsyncSession(engine)  # the ORM's path: Session.execute in the greenlet
        else:
            aconn = loop.run_until_complete(engine.connect())
        sync_engine = engine.sync_engine

        async def many(n):
            for _ in range(n):
                await aconn.execute(stmt)

        def run(n):
            loop.run_until_complete(many(n))

        async def each(n, out):
            for _ in range(n):
                c0 = time.process_time_ns()
                await aconn.execute(stmt)
                out.append(time.process_time_ns() - c0)

        def stm(n):
            out = []
            loop.run_until_complete(each(n, out))
            return out
    else:
        from sqlalchemy import create_engine
        engine = sync_engine = create_engine(url)
        conn = engine.connect()

        def run(n):
            for _ in range(n):
                conn.execute(stmt)

        def stm(n):
            out = []
            for _ in range(n):
                c0 = time.process_time_ns()
                conn.execute(stmt)
                out.append(time.process_time_ns() - c0)
            return out

    run(200)  # warm up: connection, caches
    print("ready %d" % os.getpid(), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            # run N [BATCH]: N statements in batches, "wall_ns cpu_ns" per batch on one line
            n = int(cmd[1])
            b = int(cmd[2]) if len(cmd) > 2 else n
            out = []
            for _ in range(max(1, n // b)):
                out += measure(run, b)
            print(" ".join(str(x) for x in out), flush=True)
        elif cmd[0] == "stm":
            print(" ".join(str(x) for x in stm(int(cmd[1]))), flush=True)
        elif cmd[0] == "otel":
            if tracer is None:
                tracer = InProcessTracer()
            (tracer.on if cmd[1] == "on" else tracer.off)(sync_engine)
            print("ok", flush=True)
        elif cmd[0] == "quit":
            break


if __name__ == "__main__":
    main()
