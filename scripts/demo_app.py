#!/usr/bin/python3
"""sqlspan's demo app: a small shop on SQLAlchemy (ORM and Core) and psycopg2.

It knows nothing about sqlspan: sqlspan attaches to it by PID from the outside.
Usage: demo_app.py SOCKET_DIR PORT SECONDS
"""
import random
import sys
import time

from sqlalchemy import (Column, ForeignKey, Integer, Numeric, String, create_engine, exc, func,
                        select, text)
from sqlalchemy.orm import Session, declarative_base

Base = declarative_base()


class Product(Base):
    __tablename__ = "products"
    id = Column(Integer, primary_key=True)
    name = Column(String(100), unique=True, nullable=False)
    price = Column(Numeric(10, 2), nullable=False)
    stock = Column(Integer, nullable=False)


class Order(Base):
    __tablename__ = "orders"
    id = Column(Integer, primary_key=True)
    product_id = Column(Integer, ForeignKey("products.id"), nullable=False)
    quantity = Column(Integer, nullable=False)


def setup(engine):
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Product(name=n, price=p, stock=100) for n, p in
                   [("teapot", 24.5), ("kettle", 39.0), ("mug", 8.75), ("tea, green", 6.2),
                    ("tea, black", 5.9), ("strainer", 3.1)]])
        s.commit()


def browse(s):
    return s.execute(select(Product).where(Product.stock > 0).order_by(Product.name)).scalars().all()


def buy(s, product_id, quantity):
    p = s.get(Product, product_id)
    p.stock -= quantity
    s.add(Order(product_id=product_id, quantity=quantity))
    s.commit()


def report(s):
    return s.execute(text("""
        SELECT p.name, sum(o.quantity) AS sold, sum(o.quantity * p.price) AS revenue
          FROM orders o
          JOIN products p ON p.id = o.product_id
         GROUP BY p.name
         ORDER BY revenue DESC""")).all()


def main():
    sockdir, port, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    engine = create_engine("postgresql+psycopg2://postgres@/postgres?host=%s&port=%s"
                           % (sockdir, port))
    setup(engine)
    print("ready", flush=True)
    sys.stdin.readline()  # the demo attaches sqlspan, then says go
    end = time.monotonic() + seconds
    rnd = random.Random(7)
    while time.monotonic() < end:
        with Session(engine) as s:
            products = browse(s)
            buy(s, rnd.choice(products).id, rnd.randint(1, 3))
            if rnd.random() < 0.15:
                try:  # a product name must be unique: this fails
                    s.add(Product(name="teapot", price=1, stock=1))
                    s.commit()
                except exc.IntegrityError:
                    s.rollback()
            if rnd.random() < 0.1:
                s.execute(select(func.pg_sleep(0.05)))
                report(s)
        time.sleep(0.25)


if __name__ == "__main__":
    main()
