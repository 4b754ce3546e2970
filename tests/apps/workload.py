#!/usr/bin/python3
"""A real application for sqlspan's end-to-end tests.

It prints "PID <pid>", optionally waits for a line on stdin (so sqlspan can attach first, or
after it connected), runs a scenario against PostgreSQL with Debian's SQLAlchemy / psycopg2 /
psycopg, and writes its own record of what it ran (ground truth from inside the app) as JSON:

  {"records": [{"backend": 1234, "text": "...", "rows": 1, "sqlstate": null,
                "outcome": "ok"|"error"|"aborted", "many": 0}, ...],
   "backends": [1234, ...]}

"text" is the statement exactly as the driver sent it (psycopg2: cursor.query; psycopg: the
query with %s turned into $n, as psycopg does), or null when the app cannot know it.
"""
import argparse
import json
import os
import sys
import threading
import time


class Record:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []
        self.backends = set()

    def add(self, backend, text, rows=None, sqlstate=None, outcome="ok", many=0):
        with self.lock:
            self.backends.add(backend)
            self.items.append({"backend": backend, "text": text, "rows": rows,
                               "sqlstate": sqlstate, "outcome": outcome, "many": many})

    def dump(self, path):
        with open(path, "w") as f:
            json.dump({"records": self.items, "backends": sorted(self.backends)}, f)


REC = Record()
NON_ASCII = "Zoë Ærøskøbing 東京 🐘"
BIG = "x" * 20000


def dsn(a):
    return "host=%s port=%s dbname=%s user=%s" % (a.host, a.port, a.db, a.user)


# ---------------------------------------------------------------- SQLAlchemy + psycopg2

def note_transactions(engine):
    """Record the engine's begin / commit / rollback and pool resets (the app's own view)."""
    from sqlalchemy import event

    def note(kind, conn_id):
        with REC.lock:
            REC.items.append({"backend": None, "text": None, "event": kind, "conn_id": conn_id})

    for kind in ("begin", "commit", "rollback"):
        event.listen(engine, kind, lambda conn, kind=kind: note(kind, id(conn)))
    event.listen(engine, "reset", lambda dbapi_conn, record, *args: note("pool_reset", None))


def sqlalchemy_setup(a, pool_size=10):
    from sqlalchemy import create_engine, event

    url = "postgresql+psycopg2://%s@/%s?host=%s&port=%s" % (a.user, a.db, a.host, a.port)
    engine = create_engine(url, pool_size=pool_size, max_overflow=0)

    note_transactions(engine)

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        text = cursor.query.decode() if cursor.query is not None else None
        REC.add(cursor.connection.get_backend_pid(), text,
                rows=None if executemany else cursor.rowcount, many=int(bool(executemany)))

    @event.listens_for(engine, "handle_error")
    def on_error(ctx):
        cur = ctx.cursor
        if cur is None:
            return
        text = cur.query.decode() if cur.query is not None else None
        REC.add(cur.connection.get_backend_pid(), text,
                sqlstate=getattr(ctx.original_exception, "pgcode", None), outcome="error")

    return engine


def scenario_sqlalchemy(a):
    from sqlalchemy import (Column, ForeignKey, Integer, MetaData, Numeric, String, Table, Text,
                            delete, exc, insert, select, text, update)
    from sqlalchemy.orm import Session, declarative_base, relationship

    engine = sqlalchemy_setup(a)
    Base = declarative_base()

    class User(Base):
        __tablename__ = "users"
        id = Column(Integer, primary_key=True)
        name = Column(String(200), unique=True, nullable=False)
        email = Column(Text)
        orders = relationship("Order", back_populates="user")

    class Order(Base):
        __tablename__ = "orders"
        id = Column(Integer, primary_key=True)
        user_id = Column(Integer, ForeignKey("users.id"))
        amount = Column(Numeric(10, 2))
        note = Column(Text)
        user = relationship("User", back_populates="orders")

    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS orders, users, counters CASCADE")
    Base.metadata.create_all(engine)
    meta = MetaData()
    counters = Table("counters", meta, Column("id", Integer, primary_key=True),
                     Column("n", Integer, nullable=False))
    meta.create_all(engine)

    # ORM: many rows in one flush, queries, an update, relationships
    with Session(engine) as s:
        s.add_all([User(name="u%02d" % i, email="u%02d@example.com" % i) for i in range(20)])
        s.commit()
        users = s.query(User).filter(User.name.like("u1%")).order_by(User.id).all()
        assert len(users) == 10
        u = s.get(User, users[0].id)
        u.email = "changed@example.com"
        s.add_all([Order(user=u, amount=i * 1.5, note="order %d" % i) for i in range(5)])
        s.commit()
        assert len(s.query(Order).filter(Order.user_id == u.id).all()) == 5

    # Core: executemany, select, update, delete, multi-line and non-ASCII text, a 20 KB statement
    with engine.begin() as conn:
        conn.execute(insert(counters), [{"id": i, "n": 0} for i in range(10)])
        conn.execute(update(counters).where(counters.c.id < 5).values(n=counters.c.n + 1))
        rows = conn.execute(select(counters).where(counters.c.n == 1)).fetchall()
        assert len(rows) == 5
        conn.execute(text("""SELECT u.name,
       count(o.id) AS orders
  FROM users u
  LEFT JOIN orders o ON o.user_id = u.id
 GROUP BY u.name
 ORDER BY u.name""")).fetchall()
        conn.execute(insert(User.__table__).values(name=NON_ASCII, email="zoë@example.com"))
        got = conn.execute(select(User.__table__.c.name).where(
            User.__table__.c.name == NON_ASCII)).scalar()
        assert got == NON_ASCII
        n = conn.execute(text("SELECT length(:s) AS n"), {"s": BIG}).scalar()
        assert n == len(BIG)
        conn.execute(delete(counters).where(counters.c.id >= 8))

    # errors: a unique violation and a syntax error
    with engine.connect() as conn:
        try:
            with conn.begin():
                conn.execute(insert(User.__table__).values(name="u00"))
        except exc.IntegrityError:
            pass
        try:
            with conn.begin():
                conn.exec_driver_sql("SELEC name FROM users")
        except exc.ProgrammingError:
            pass

    # a transaction rolled back
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(insert(counters).values(id=100, n=1))
        trans.rollback()

    run_threads(a, lambda i: sqlalchemy_thread(engine, counters, i))
    engine.dispose()


def sqlalchemy_thread(engine, counters, i):
    from sqlalchemy import select, update

    with engine.connect() as conn:
        for k in range(25):
            with conn.begin():
                conn.execute(update(counters).where(counters.c.id == i % 8)
                             .values(n=counters.c.n + 1))
                conn.execute(select(counters.c.n).where(counters.c.id == i % 8)).fetchall()


def run_threads(a, fn):
    errors = []

    def run(i):
        try:
            fn(i)
        except BaseException as e:  # a failed thread fails the app
            errors.append(e)
            raise

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- psycopg (3) without SQLAlchemy

def pg3_text(sql):
    """The query text psycopg sends: %s placeholders become $1, $2, ..."""
    out, n, i = [], 0, 0
    while i < len(sql):
        if sql.startswith("%s", i):
            n += 1
            out.append("$%d" % n)
            i += 2
        elif sql.startswith("%%", i):
            out.append("%")
            i += 2
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def pg3_run(conn, cur, sql, params=None, outcome="ok"):
    import psycopg

    try:
        cur.execute(sql, params)
    except psycopg.Error as e:
        REC.add(conn.info.backend_pid, pg3_text(sql) if params is not None else sql,
                sqlstate=e.sqlstate, outcome="error")
        raise
    REC.add(conn.info.backend_pid, pg3_text(sql) if params is not None else sql,
            rows=cur.rowcount, outcome=outcome)


def scenario_psycopg(a):
    import psycopg

    conn = psycopg.connect(dsn(a))
    cur = conn.cursor()
    pg3_run(conn, cur, "DROP TABLE IF EXISTS items")
    pg3_run(conn, cur, "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
    conn.commit()
    # parameters; the same query 12 times: prepared by psycopg after 5 executions
    for i in range(12):
        pg3_run(conn, cur, "INSERT INTO items (id, name, price) VALUES (%s, %s, %s)",
                (i, "item %d" % i, i * 2.5))
    for i in range(12):
        pg3_run(conn, cur, "SELECT name FROM items WHERE id = %s", (i,))
        cur.fetchall()
    conn.commit()
    # executemany: pipeline mode
    params = [(100 + i, "bulk %d" % i, 1.0) for i in range(25)]
    cur.executemany("INSERT INTO items (id, name, price) VALUES (%s, %s, %s)", params)
    REC.add(conn.info.backend_pid, pg3_text("INSERT INTO items (id, name, price) VALUES (%s, %s, %s)"),
            many=len(params))
    conn.commit()
    # an explicit pipeline with an error in the middle: the rest up to the sync is aborted
    try:
        with conn.pipeline():
            cur.execute("UPDATE items SET price = price + 1 WHERE id < %s", (3,))
            REC.add(conn.info.backend_pid, pg3_text("UPDATE items SET price = price + 1 WHERE id < %s"),
                    rows=3)
            cur.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (1, "dup"))
            REC.add(conn.info.backend_pid, pg3_text("INSERT INTO items (id, name) VALUES (%s, %s)"),
                    sqlstate="23505", outcome="error")
            cur.execute("DELETE FROM items WHERE id = %s", (2,))
            REC.add(conn.info.backend_pid, pg3_text("DELETE FROM items WHERE id = %s"),
                    outcome="aborted")
    except psycopg.errors.UniqueViolation:
        pass
    conn.rollback()
    # multi-line, non-ASCII, a 20 KB statement, errors
    pg3_run(conn, cur, "SELECT id,\n       name\n  FROM items\n WHERE price > %s\n ORDER BY id",
            (2,))
    cur.fetchall()
    pg3_run(conn, cur, "INSERT INTO items (id, name) VALUES (%s, %s)", (500, NON_ASCII))
    pg3_run(conn, cur, "SELECT count(*) FROM items WHERE name = '%s'" % NON_ASCII)
    pg3_run(conn, cur, "SELECT length('%s')" % BIG)
    conn.commit()
    try:
        pg3_run(conn, cur, "SELEC 1")
    except psycopg.errors.SyntaxError:
        conn.rollback()
    try:
        pg3_run(conn, cur, "INSERT INTO items (id, name) VALUES (%s, %s)", (0, "again"))
    except psycopg.errors.UniqueViolation:
        conn.rollback()
    pg3_run(conn, cur, "DELETE FROM items WHERE id >= %s", (100,))
    conn.commit()
    conn.close()
    run_threads(a, lambda i: psycopg_thread(a, i))


def psycopg_thread(a, i):
    import psycopg

    conn = psycopg.connect(dsn(a), autocommit=True)
    cur = conn.cursor()
    for k in range(25):
        pg3_run(conn, cur, "SELECT %s::int * 2, pg_backend_pid()", (k,))
        cur.fetchall()
    conn.close()


def scenario_psycopg_async(a):
    """psycopg's AsyncConnection: libpq in non-blocking mode under asyncio, 10 tasks at once."""
    import asyncio

    import psycopg

    async def task(i):
        conn = await psycopg.AsyncConnection.connect(dsn(a), autocommit=True)
        cur = conn.cursor()
        for k in range(10):
            sql = "SELECT %s::int + %s::int, pg_sleep(0.001)"
            await cur.execute(sql, (i, k))
            await cur.fetchall()
            REC.add(conn.info.backend_pid, pg3_text(sql), rows=cur.rowcount)
        try:
            await cur.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            REC.add(conn.info.backend_pid, "SELECT 1/0", sqlstate="22012", outcome="error")
        await conn.close()

    async def main():
        await asyncio.gather(*(task(i) for i in range(10)))

    asyncio.run(main())


# ---------------------------------------------------------------- psycopg2 without SQLAlchemy

def pg2_run(conn, cur, sql, params=None):
    cur.execute(sql, params)
    REC.add(conn.get_backend_pid(), cur.query.decode(), rows=cur.rowcount)


def scenario_psycopg2(a):
    """Plain psycopg2, used for attach-after-connect and libraries loaded late."""
    import psycopg2

    conn = psycopg2.connect(dsn(a))
    cur = conn.cursor()
    for i in range(10):
        pg2_run(conn, cur, "SELECT %s::int + 1, current_database()", (i,))
        cur.fetchall()
    pg2_run(conn, cur, "SELECT generate_series(1, %s)", (3000,))
    cur.fetchall()
    conn.commit()
    conn.close()


def scenario_churn(a):
    """Code objects born and freed all the time: each statement is made by a function compiled
    just for it (file "<churn T:N>"), dropped right after, while other threads do the same. sqlspan
    names code objects from memory after the fact: it must never crash or name the wrong one."""
    import gc
    import psycopg2

    def worker(t):
        conn = psycopg2.connect(dsn(a))
        conn.autocommit = True
        cur = conn.cursor()
        for n in range(a.churn):
            ns = {}
            src = "def f(conn, cur, run):\n    run(conn, cur, 'SELECT %d, %d')\n" % (t, n)
            exec(compile(src, "<churn %d:%d>" % (t, n), "exec"), ns)
            ns["f"](conn, cur, pg2_run)
            del ns
            if n % 50 == 0:
                gc.collect()
        conn.close()

    run_threads(a, worker)


def scenario_sql(a):
    """The statements given with --sql, in order, over psycopg2 in autocommit mode."""
    import psycopg2

    conn = psycopg2.connect(dsn(a))
    conn.autocommit = True
    cur = conn.cursor()
    for sql in a.sql:
        if sql.startswith("@"):  # @N: a statement of N bytes
            n = int(sql[1:])
            sql = "SELECT length('%s')" % ("y" * (n - len("SELECT length('')")))
        try:
            pg2_run(conn, cur, sql)
        except psycopg2.Error as e:
            REC.add(conn.get_backend_pid(), cur.query.decode() if cur.query else sql,
                    sqlstate=e.pgcode, outcome="error")
    conn.close()


# ---------------------------------------------------------------- call sites (sqlspan's Python view)

def caller_site():
    """The innermost frame of this file that is not one of its event hooks: the app's call site,
    as `inspect` sees it."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename == __file__ and f.f_code.co_name not in HOOKS:
            return [f.f_code.co_filename, f.f_lineno, f.f_code.co_qualname
                    if hasattr(f.f_code, "co_qualname") else f.f_code.co_name]
        f = f.f_back
    return None


HOOKS = {"before", "after", "on_error", "caller_site", "sent_text", "note", "on_begin",
         "on_commit", "on_rollback", "on_reset"}


def sent_text(cursor, statement):
    q = getattr(cursor, "query", None)  # psycopg2: the bytes it sent
    if isinstance(q, bytes):
        return q.decode()
    # psycopg: the statement with its %(name)s / %s placeholders numbered $1, $2, ... as psycopg
    # does (a repeated name keeps its number), %% as %
    import re
    names = {}

    def number(m):
        if m.group(0) == "%%":
            return "%"
        key = m.group(1) if m.group(1) is not None else len(names)
        if key not in names:
            names[key] = len(names) + 1
        return "$%d" % names[key]
    return re.sub(r"%\((\w+)\)s|%s|%%", number, statement)


def backend_of(cursor):
    c = cursor.connection
    return c.get_backend_pid() if hasattr(c, "get_backend_pid") else c.info.backend_pid


SECRET_PW = "s3cret-Pw"


def callsite_engine(a):
    from sqlalchemy import create_engine, event

    driver = a.driver or "psycopg2"
    # a password the server does not ask for (trust): it must never show in sqlspan's output
    url = "postgresql+%s://%s:%s@/%s?host=%s&port=%s" % (driver, a.user, SECRET_PW, a.db, a.host,
                                                       a.port)
    engine = create_engine(url, pool_size=a.threads + 2, max_overflow=0)
    shown_url = engine.url.render_as_string(hide_password=True)

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        context._sqlspan_test = (id(conn), caller_site())

    note_transactions(engine)

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        conn_id, site = context._sqlspan_test
        with REC.lock:
            REC.backends.add(backend_of(cursor))
            REC.items.append({"backend": backend_of(cursor), "text": sent_text(cursor, statement),
                              "rows": None, "sqlstate": None, "outcome": "ok",
                              "many": int(bool(executemany)), "conn_id": conn_id, "site": site,
                              "url": shown_url})
    return engine


def deep(engine, n):
    """A stack deeper than sqlspan reads: recursion, then a statement."""
    from sqlalchemy import text
    if n == 0:
        with engine.connect() as conn:
            return conn.execute(text("SELECT 'deep' AS d")).scalar()
    return deep(engine, n - 1)


def scenario_callsite(a):
    """Statements from known lines, through SQLAlchemy (1.4 or 2.0) ORM and Core, on 8 threads
    with connections of their own; the app records id(conn) and its call site for each."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
    from sqlalchemy.orm import Session

    engine = callsite_engine(a)
    meta = MetaData()
    t = Table("cs_items", meta, Column("id", Integer, primary_key=True),
              Column("name", String(50)), Column("n", Integer))
    meta.drop_all(engine)
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(t), [{"id": i, "name": "item%d" % i, "n": 0} for i in range(16)])

    def worker(i):
        with engine.connect() as conn:
            trans = conn.begin()  # a transaction the application rolls back
            conn.execute(update(t).where(t.c.id == i).values(n=t.c.n + 100))
            trans.rollback()
            for k in range(20):
                with conn.begin():
                    conn.execute(update(t).where(t.c.id == i).values(n=t.c.n + 1))
                    conn.execute(select(t.c.n).where(t.c.id == i)).fetchall()
                with conn.begin():
                    conn.execute(text("SELECT :k AS k"), {"k": k}).fetchall()
        with Session(engine) as s:
            s.execute(select(t).where(t.c.id < 4)).fetchall()
            s.commit()

    run_threads(a, worker)
    assert deep(engine, 150) == "deep"
    engine.dispose()
    # like a server, stay a moment: sqlspan names code objects from the process's memory, and
    # cannot once it is gone (statements of code first run in the last moments before an exit
    # may lack their call site: see the README)
    time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--db", default="postgres")
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--scenario", required=True,
                    choices=["sqlalchemy", "psycopg", "psycopg2", "connect-first", "late-import",
                             "sql", "psycopg-async", "callsite", "churn"])
    ap.add_argument("--churn", type=int, default=2000, help="statements per thread (churn)")
    ap.add_argument("--driver", default=None, help="psycopg2 or psycopg (SQLAlchemy dialect)")
    ap.add_argument("--sql", action="append", default=[],
                    help="a statement for --scenario sql (@N: a statement of N bytes)")
    ap.add_argument("--record", required=True)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--go", action="store_true", help="wait for a line on stdin first")
    a = ap.parse_args()

    early = None
    if a.scenario == "connect-first":
        # connect now; sqlspan attaches afterwards
        import psycopg2
        early = psycopg2.connect(dsn(a))
    elif a.scenario == "callsite":
        import sqlalchemy  # noqa: F401
        __import__(a.driver or "psycopg2")  # libpq is loaded when sqlspan attaches
    elif a.scenario in ("sql", "churn"):
        import psycopg2  # noqa: F401  (all it needs: also where psycopg 3 is not packaged)
    elif a.scenario != "late-import":
        import psycopg2  # noqa: F401  (libpq is loaded when sqlspan attaches)
        import psycopg  # noqa: F401

    print("PID %d" % os.getpid(), flush=True)
    if a.go:
        sys.stdin.readline()

    if a.scenario == "sqlalchemy":
        scenario_sqlalchemy(a)
    elif a.scenario == "psycopg":
        scenario_psycopg(a)
    elif a.scenario == "sql":
        scenario_sql(a)
    elif a.scenario == "churn":
        scenario_churn(a)
    elif a.scenario == "psycopg-async":
        scenario_psycopg_async(a)
    elif a.scenario == "callsite":
        scenario_callsite(a)
    elif a.scenario in ("psycopg2", "late-import"):
        scenario_psycopg2(a)
    elif a.scenario == "connect-first":
        cur = early.cursor()
        for i in range(5):
            pg2_run(early, cur, "SELECT %s::int, current_user", (i,))
            cur.fetchall()
        early.commit()
        early.close()
    REC.dump(a.record)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
