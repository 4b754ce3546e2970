#!/usr/bin/python3
"""An asyncio application for sqlspan's end-to-end tests: asyncpg, alone and under SQLAlchemy's
AsyncEngine / AsyncSession (Debian's SQLAlchemy 1.4, asyncpg 0.27, greenlet 2).

Same conventions as workload.py: it prints "PID <pid>" (its first line on stdout), with --go
waits for a line on stdin (so sqlspan can attach first), runs a scenario, and writes its own
record of what it ran as JSON:

  {"records": [{"backend": 1234, "text": "...", "rows": 1, "sqlstate": null,
                "outcome": "ok"|"error", "many": 0, "conn_id": 1403..., "await_line": 210,
                "await_func": "orm_part", "task": "Task-1"}, ...],
   "backends": [1234, ...],
   "early": [...], "early_backends": [...], "marker": "..." or null}

"text" is the statement exactly as asyncpg sent it to the server (SQLAlchemy's asyncpg adapter
turns the compiled statement's %s placeholders into $1..$n, with a ::type cast where it set input
sizes, and %% into %: the text is computed by the adapter's own method, as the adapter does), or
null when unknown. "conn_id" is id() of SQLAlchemy's sync Connection; "await_line"/"await_func"
the line and function of the application coroutine whose await led to the statement, and "task"
the asyncio task's name (call sites, for later).

With --connect-first the app connects and runs one statement (the "early" records) before it
prints its PID; after the line on stdin, the first statement on that same connection is
MARKER, then the scenario runs.
"""
import argparse
import asyncio
import io
import json
import os
import sys

NON_ASCII = "Zoë Ærøskøbing 東京 🐘"
BIG = "x" * 20000
EARLY = "SELECT 'connected before attach' AS early"
MARKER = "SELECT 'first statement after attach' AS marker"


class Record:
    """No lock: everything runs on the event loop's thread."""

    def __init__(self):
        self.items = []
        self.backends = set()
        self.early = []
        self.early_backends = set()
        self.phase_early = False

    def add(self, backend, text, rows=None, sqlstate=None, outcome="ok", many=0, **extra):
        item = {"backend": backend, "text": text, "rows": rows, "sqlstate": sqlstate,
                "outcome": outcome, "many": many}
        item.update(extra)
        if self.phase_early:
            self.early_backends.add(backend)
            self.early.append(item)
        else:
            self.backends.add(backend)
            self.items.append(item)
        return item

    def note(self, kind, conn_id):
        (self.early if self.phase_early else self.items).append(
            {"backend": None, "text": None, "event": kind, "conn_id": conn_id})

    def dump(self, path):
        with open(path, "w") as f:
            json.dump({"records": self.items, "backends": sorted(self.backends),
                       "early": self.early, "early_backends": sorted(self.early_backends),
                       "marker": MARKER if self.early else None}, f)


REC = Record()


def task_name():
    try:
        t = asyncio.current_task()
    except RuntimeError:
        return None
    return t.get_name() if t is not None else None


def app_frame(f):
    """The innermost frame of this file's coroutines, from f outwards."""
    while f is not None:
        if f.f_code.co_filename == __file__ and f.f_code.co_name not in HOOKS:
            return f
        f = f.f_back
    return None


def await_site():
    """In a SQLAlchemy event (run in greenlet_spawn's child greenlet): the application's await,
    found on the stack of the parent greenlet, which is suspended while the child runs."""
    import greenlet
    g = greenlet.getcurrent()
    f = app_frame(g.parent.gr_frame) if g.parent is not None else None
    if f is None:
        f = app_frame(sys._getframe(1))
    return (f.f_lineno, f.f_code.co_name) if f is not None else (None, None)


# ---------------------------------------------------------------- SQLAlchemy AsyncEngine

def psycopg_text(statement, params):
    """The text psycopg sends for a pyformat query: each %(name)s becomes $n (a name used again
    keeps its number), %% becomes %; without parameters the text goes as it is."""
    if params is None:
        return statement
    import re
    nums = {}

    def sub(m):
        if m.group(0) == "%%":
            return "%"
        name = m.group(1)
        if name not in nums:
            nums[name] = len(nums) + 1
        return "$%d" % nums[name]
    return re.sub(r"%%|%\((\w+)\)s", sub, statement)


SECRET_PW = "s3cret-Pw"


def make_engine(a, **kw):
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    # a password the server does not ask for (trust): it must never show in sqlspan's output
    url = "postgresql+%s://%s:%s@/%s?host=%s&port=%s" % (a.driver, a.user, SECRET_PW, a.db,
                                                       a.host, a.port)
    if a.ssl:  # TLS on TCP: asyncio's ssl (a MemoryBIO over the socket), no verification
        kw["connect_args"] = dict(kw.get("connect_args", {}), ssl="require")
    engine = create_async_engine(url, **kw)
    sync = engine.sync_engine
    shown_url = sync.url.render_as_string(hide_password=True)

    def backend_of(conn):
        dc = conn.connection.driver_connection
        return dc.get_server_pid() if a.driver == "asyncpg" else dc.info.backend_pid

    @event.listens_for(sync, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        style = getattr(getattr(context, "execute_style", None), "name", "")
        # SQLAlchemy 2.0's insertmanyvalues: the rows go in one statement (per batch)
        batch = style == "INSERTMANYVALUES"
        params = parameters[0] if executemany and not batch and parameters else parameters
        if a.driver == "psycopg":
            text = psycopg_text(statement, params)
        else:
            # what AsyncAdapt_asyncpg_cursor._prepare_and_execute / _executemany send (1.4
            # turns %s into $n there; 2.0 compiles $n itself)
            text = statement % cursor._parameter_placeholders(params) \
                if params is not None and hasattr(cursor, "_parameter_placeholders") \
                else statement
        line, func = await_site()
        many = len(parameters) if executemany and not batch else 0
        context._sqlspan_test = {"backend": backend_of(conn), "text": text, "many": many,
                                 "conn_id": id(conn), "await_line": line, "await_func": func,
                                 "task": task_name(), "url": shown_url}

    @event.listens_for(sync, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        r = dict(context._sqlspan_test)
        rows = None
        if not executemany:
            if cursor.rowcount is not None and cursor.rowcount >= 0:
                rows = cursor.rowcount  # INSERT / UPDATE / DELETE: from the command tag
            elif cursor.description is not None and hasattr(cursor, "_rows"):
                rows = len(cursor._rows)  # all rows, not consumed yet
        REC.add(r.pop("backend"), r.pop("text"), rows=rows, many=r.pop("many"), **r)

    @event.listens_for(sync, "handle_error")
    def on_error(ctx):
        r = getattr(ctx.execution_context, "_sqlspan_test", None)
        if r is None:
            return
        r = dict(r)
        REC.add(r.pop("backend"), r.pop("text"), outcome="error",
                sqlstate=getattr(ctx.original_exception, "pgcode", None) or
                getattr(ctx.original_exception, "sqlstate", None), many=r.pop("many"), **r)

    for kind in ("begin", "commit", "rollback"):
        def on(conn, kind=kind):
            REC.note(kind, id(conn))
        event.listen(sync, kind, on)
    return engine


HOOKS = {"before", "after", "on_error", "on", "await_site", "app_frame", "raw", "backend_of"}


async def early_sa(engine):
    from sqlalchemy import text
    async with engine.connect() as conn:
        await conn.execute(text(EARLY))


async def marker_sa(engine, backends):
    """After attach: the first statement, on the connection made before (the only one pooled)."""
    from sqlalchemy import text
    async with engine.connect() as conn:
        await conn.execute(text(MARKER))
        # again, the statement prepared before the attach: only its name is on the wire now
        await conn.execute(text(EARLY))
        raw = await conn.get_raw_connection()
        pid = raw.driver_connection.get_server_pid()
        assert pid in backends, (pid, backends)


async def scenario_orm(a, engine):
    from sqlalchemy import (Column, ForeignKey, Integer, MetaData, Numeric, String, Table, Text,
                            delete, exc, insert, select, text, update)
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import declarative_base, relationship, selectinload

    Base = declarative_base()

    class User(Base):
        __tablename__ = "a_users"
        id = Column(Integer, primary_key=True)
        name = Column(String(200), unique=True, nullable=False)
        email = Column(Text)
        orders = relationship("Order", back_populates="user")

    class Order(Base):
        __tablename__ = "a_orders"
        id = Column(Integer, primary_key=True)
        user_id = Column(Integer, ForeignKey("a_users.id"))
        amount = Column(Numeric(10, 2))
        note = Column(Text)
        user = relationship("User", back_populates="orders")

    meta = MetaData()
    counters = Table("a_counters", meta, Column("id", Integer, primary_key=True),
                     Column("n", Integer, nullable=False))

    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS a_orders, a_users, a_counters CASCADE")
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(meta.create_all)

    # ORM: add/commit, select with filters, update, delete, relationships
    async with AsyncSession(engine, expire_on_commit=False) as s:
        s.add_all([User(name="u%02d" % i, email="u%02d@example.com" % i) for i in range(20)])
        await s.commit()
        users = (await s.execute(select(User).where(User.name.like("u1%"))
                                 .order_by(User.id))).scalars().all()
        assert len(users) == 10
        u = await s.get(User, users[0].id)
        u.email = "changed@example.com"
        s.add_all([Order(user=u, amount=i * 1.5, note="order %d" % i) for i in range(5)])
        await s.commit()
        got = (await s.execute(select(User).options(selectinload(User.orders))
                               .where(User.id == u.id))).scalar_one()
        assert len(got.orders) == 5
        victim = (await s.execute(select(User).where(User.name == "u19"))).scalar_one()
        await s.delete(victim)
        await s.commit()
        n = (await s.execute(select(User.id).where(User.name.like("u%")))).all()
        assert len(n) == 19

    # Core: executemany, update, select, multi-line and non-ASCII text, %, a 20 KB statement
    async with engine.begin() as conn:
        await conn.execute(insert(counters), [{"id": i, "n": 0} for i in range(10)])
        await conn.execute(update(counters).where(counters.c.id < 5).values(n=counters.c.n + 1))
        rows = (await conn.execute(select(counters).where(counters.c.n == 1))).fetchall()
        assert len(rows) == 5
        (await conn.execute(text("""SELECT u.name,
       count(o.id) AS orders
  FROM a_users u
  LEFT JOIN a_orders o ON o.user_id = u.id
 GROUP BY u.name
 ORDER BY u.name"""))).fetchall()
        await conn.execute(insert(User.__table__).values(name=NON_ASCII, email="zoë@example.com"))
        got = (await conn.execute(select(User.__table__.c.name).where(
            User.__table__.c.name == NON_ASCII))).scalar()
        assert got == NON_ASCII
        got = (await conn.execute(text("SELECT '%s' AS name, 'a%%b' AS pct" % NON_ASCII))).one()
        assert got == (NON_ASCII, "a%b"), got
        n = (await conn.execute(text("SELECT length('%s') AS n" % BIG))).scalar()
        assert n == len(BIG)
        n = (await conn.execute(text("SELECT length(:s) AS n"), {"s": BIG})).scalar()
        assert n == len(BIG)
        await conn.execute(delete(counters).where(counters.c.id >= 8))

    # errors: a unique violation (at execute) and a syntax error (at parse), each caught
    async with engine.connect() as conn:
        try:
            async with conn.begin():
                await conn.execute(insert(User.__table__).values(name="u00"))
        except exc.IntegrityError:
            pass
        else:
            raise AssertionError("no unique violation")
        try:
            async with conn.begin():
                await conn.exec_driver_sql("SELEC name FROM a_users")
        except exc.ProgrammingError:
            pass
        else:
            raise AssertionError("no syntax error")

    # explicit transactions: one committed, one rolled back
    async with engine.connect() as conn:
        trans = await conn.begin()
        await conn.execute(insert(counters).values(id=100, n=1))
        await trans.commit()
        trans = await conn.begin()
        await conn.execute(insert(counters).values(id=101, n=1))
        await conn.execute(update(counters).where(counters.c.id == 100).values(n=2))
        await trans.rollback()
        n = (await conn.execute(select(counters.c.n).where(counters.c.id == 100))).scalar()
        assert n == 1
        await conn.commit()


async def scenario_concurrent(a, engine):
    """50 tasks over a pool of 10 connections, interleaving on the event loop's thread."""
    from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text, update
    from sqlalchemy.ext.asyncio import AsyncSession

    meta = MetaData()
    t = Table("a_tasks", meta, Column("id", Integer, primary_key=True),
              Column("n", Integer, nullable=False))
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
        await conn.execute(insert(t), [{"id": i, "n": 0} for i in range(50)])

    async def worker(i):
        for k in range(3):
            async with engine.connect() as conn:
                async with conn.begin():
                    await conn.execute(update(t).where(t.c.id == i).values(n=t.c.n + 1))
                    await asyncio.sleep(0.001 * (i % 3))
                    n = (await conn.execute(select(t.c.n).where(t.c.id == i))).scalar()
                    assert n == k + 1
                    await conn.execute(text("SELECT CAST(:i AS integer) AS i, CAST(:k AS "
                                            "integer) AS k, pg_sleep(0.002)"),
                                       {"i": i, "k": k})
        async with AsyncSession(engine) as s:
            (await s.execute(select(t).where(t.c.id < 5))).all()
            await s.commit()

    await asyncio.gather(*(asyncio.create_task(worker(i), name="worker-%02d" % i)
                           for i in range(50)))


# ---------------------------------------------------------------- asyncpg without SQLAlchemy

async def raw(conn, method, *args, rows=None, many=0, text=None, via=None, **kw):
    """(via or conn).<method>(*args, **kw), recorded as the statement text (args[0] unless
    given), on conn's backend, with the application's await (the caller's line)."""
    import asyncpg
    f = app_frame(sys._getframe(1))
    extra = {"await_line": f.f_lineno, "await_func": f.f_code.co_name, "task": task_name(),
             "conn_id": None}
    sent = args[0] if text is None else text
    try:
        res = await getattr(via or conn, method)(*args, **kw)
    except asyncpg.PostgresError as e:
        REC.add(conn.get_server_pid(), sent, outcome="error", sqlstate=e.sqlstate, many=many,
                **extra)
        raise
    n = rows(res) if callable(rows) else rows
    REC.add(conn.get_server_pid(), sent, rows=n, many=many, **extra)
    return res


def tag_rows(status):
    """Rows from a command tag as asyncpg returns it ("INSERT 0 3", "COPY 5", "SELECT 2")."""
    parts = status.split()
    return int(parts[-1]) if parts and parts[-1].isdigit() else None


async def raw_connect(a):
    import asyncpg
    return await asyncpg.connect(host=a.host, port=int(a.port), user=a.user, database=a.db,
                                 ssl="require" if a.ssl else None)


async def scenario_raw(a, conn):
    import asyncpg

    # simple query protocol: several statements in one string (no arguments)
    await raw(conn, "execute", "DROP TABLE IF EXISTS raw_items;\n"
              "CREATE TABLE raw_items (id int PRIMARY KEY, name text, price numeric);\n"
              "INSERT INTO raw_items VALUES (0, 'zero', 0)")
    # extended protocol, asyncpg's statement cache: Parse once, then Bind/Execute by name
    for i in range(1, 6):
        await raw(conn, "execute", "INSERT INTO raw_items (id, name, price) VALUES ($1, $2, $3)",
                  i, "item %d" % i, i * 2.5, rows=tag_rows)
    for i in range(5):
        await raw(conn, "fetch", "SELECT id, name FROM raw_items WHERE id > $1 ORDER BY id", i,
                  rows=len)
    await raw(conn, "fetchrow", "SELECT count(*) FROM raw_items WHERE name = $1", NON_ASCII,
              rows=1)
    await raw(conn, "fetchval", "SELECT $1::text || '%', length($2::text)", NON_ASCII, BIG,
              rows=1)
    await raw(conn, "fetchval", "SELECT length('%s')" % BIG, rows=1)
    await raw(conn, "fetch", "SELECT id,\n       name\n  FROM raw_items\n WHERE price > $1\n"
              " ORDER BY id", 2, rows=len)
    # executemany: Bind/Execute per row, one Sync
    params = [(100 + i, "bulk %d" % i, 1.0) for i in range(20)]
    await raw(conn, "executemany", "INSERT INTO raw_items (id, name, price) VALUES ($1, $2, $3)",
              params, many=len(params))
    # explicitly prepared statements, auto-named and named, executed several times
    q = "SELECT name, price FROM raw_items WHERE id = $1"
    stmt = await conn.prepare(q)
    for i in range(4):
        await raw(conn, "fetch", 100 + i, rows=len, text=q, via=stmt)
    q2 = "UPDATE raw_items SET price = price + $2 WHERE id = $1"
    stmt2 = await conn.prepare(q2, name="raw_named_update")
    for i in range(3):
        await raw(conn, "fetch", 100 + i, 1, text=q2, via=stmt2,
                  rows=lambda _: tag_rows(stmt2.get_statusmsg()))
    # a cursor in a transaction: a portal run with a row limit (PortalSuspended), three times
    async with conn.transaction():
        q3 = "SELECT g, g * 2 FROM generate_series(1, 25) AS g"
        cur = await conn.cursor(q3)
        for want in (10, 10, 5):
            got = await raw(conn, "fetch", 10, text=q3, via=cur, rows=len)
            assert len(got) == want, (len(got), want)
            REC.items[-1]["portal_fetch"] = True
        # the iterator form: prefetch 7 rows per Execute
        seen = [r[0] async for r in conn.cursor("SELECT g FROM generate_series(1, 15) AS g",
                                                prefetch=7)]
        assert seen == list(range(1, 16))
    # COPY in (binary, the statement built by asyncpg) and out
    # (the statement texts as asyncpg builds them; rows from the command tag it returns)
    await raw(conn, "copy_records_to_table", "raw_items",
              records=[(200 + i, "copied %d" % i, 3.0) for i in range(30)], rows=tag_rows,
              text='COPY "raw_items" FROM STDIN (FORMAT binary)')
    buf = io.BytesIO()
    status = await raw(conn, "copy_from_query", "SELECT id, name FROM raw_items WHERE id >= 200",
                       output=buf, format="csv", rows=tag_rows,
                       text="COPY (SELECT id, name FROM raw_items WHERE id >= 200) "
                       "TO STDOUT (FORMAT 'csv')")
    assert status == "COPY 30" and buf.getvalue().count(b"\n") == 30, status
    # errors: at execute (extended), at parse (extended), in a simple query
    try:
        await raw(conn, "fetchval", "SELECT 1 / $1::int", 0)
    except asyncpg.DivisionByZeroError:
        pass
    try:
        await raw(conn, "fetch", "SELEC name FROM raw_items WHERE id = $1", 1)
    except asyncpg.PostgresSyntaxError:
        pass
    try:
        await raw(conn, "execute", "INSERT INTO raw_items VALUES (1, 'dup', 0); SELECT 1")
    except asyncpg.UniqueViolationError:
        pass
    # a transaction rolled back
    try:
        async with conn.transaction():
            await raw(conn, "execute", "DELETE FROM raw_items WHERE id >= $1", 100, rows=tag_rows)
            raise KeyError("roll back")
    except KeyError:
        pass
    n = await raw(conn, "fetchval", "SELECT count(*) FROM raw_items WHERE id >= $1", 100, rows=1)
    assert n == 50, n
    await conn.close()


# ---------------------------------------------------------------- main

async def amain(a):
    early = None
    REC.phase_early = a.connect_first
    if a.scenario == "asyncpg-raw":
        early = await raw_connect(a) if a.connect_first else None
        if early is not None:
            await raw(early, "fetchval", EARLY, rows=1)
    else:
        kw = {"pool_size": 10, "max_overflow": 0} if a.scenario == "async-concurrent" else {}
        engine = make_engine(a, **kw)
        if a.connect_first:
            await early_sa(engine)
    REC.phase_early = False

    print("PID %d" % os.getpid(), flush=True)
    if a.go:
        sys.stdin.readline()  # blocks the loop: nothing else runs meanwhile

    if a.scenario == "asyncpg-raw":
        conn = early
        if conn is None:
            conn = await raw_connect(a)
        else:
            await raw(conn, "fetchval", MARKER, rows=1)
        await scenario_raw(a, conn)
    else:
        if a.connect_first:
            await marker_sa(engine, REC.early_backends)
        if a.scenario == "async-orm":
            await scenario_orm(a, engine)
        else:
            await scenario_concurrent(a, engine)
        await engine.dispose()
    # stay a moment, as a server would (code objects are named from the process's memory)
    await asyncio.sleep(0.3)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True, help="host name or Unix socket directory")
    ap.add_argument("--port", required=True)
    ap.add_argument("--db", default="postgres")
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--scenario", required=True,
                    choices=["async-orm", "async-concurrent", "asyncpg-raw"])
    ap.add_argument("--record", required=True)
    ap.add_argument("--go", action="store_true", help="wait for a line on stdin first")
    ap.add_argument("--ssl", action="store_true", help="connect with TLS (a TCP --host)")
    ap.add_argument("--driver", default="asyncpg", choices=["asyncpg", "psycopg"],
                    help="the AsyncEngine's driver (psycopg: SQLAlchemy 2.0's psycopg async)")
    ap.add_argument("--connect-first", action="store_true",
                    help="connect and run a statement before printing the PID")
    a = ap.parse_args()
    # the driver is loaded before the PID is printed, as in an app that imports it at the top
    if a.driver == "asyncpg" or a.scenario == "asyncpg-raw":
        import asyncpg  # noqa: F401
    else:
        import psycopg  # noqa: F401
    asyncio.run(amain(a))
    REC.dump(a.record)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
