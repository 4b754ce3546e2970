#!/usr/bin/python3
"""sqlspan's async demo app: an asyncio service on SQLAlchemy's AsyncEngine with asyncpg (which
speaks PostgreSQL's protocol itself, without libpq).

It knows nothing about sqlspan: sqlspan attaches to it by PID from the outside.
Usage: demo_async.py SOCKET_DIR PORT SECONDS
"""
import asyncio
import random
import sys
import time

from sqlalchemy import Column, Integer, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import declarative_base

Base = declarative_base()


class Visit(Base):
    __tablename__ = "visits"
    id = Column(Integer, primary_key=True)
    page = Column(String(100), nullable=False)


async def record_visit(engine, page):
    async with AsyncSession(engine) as s:
        s.add(Visit(page=page))
        await s.commit()


async def top_pages(engine):
    async with AsyncSession(engine) as s:
        rows = await s.execute(select(Visit.page, func.count()).group_by(Visit.page)
                               .order_by(func.count().desc()).limit(3))
        return rows.all()


async def main():
    sockdir, port, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    engine = create_async_engine("postgresql+asyncpg://postgres@/postgres?host=%s&port=%s"
                                 % (sockdir, port), pool_size=3)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    end = time.monotonic() + seconds
    rnd = random.Random(11)
    while time.monotonic() < end:
        pages = rnd.sample(["/", "/shop", "/tea", "/cart", "/about"], 3)
        await asyncio.gather(*(record_visit(engine, p) for p in pages))
        await top_pages(engine)
        await asyncio.sleep(0.5)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
