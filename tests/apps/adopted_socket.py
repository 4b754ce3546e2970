"""A process that speaks PostgreSQL's protocol itself on a connection it is handed (SCM_RIGHTS):
the connection's StartupMessage went out from another process, so a tracer of this one never
sees it, as when that record is lost. Prints "PID n", listens on the Unix socket path argv[1],
takes one descriptor there, runs each of argv[2:] as a simple Query on it, prints a JSON
record: [{"text", "rows", "sqlstate"}] in order, and closes the connection when a line comes on
stdin. Its startup() and query() are the tests' minimal protocol client."""
import json
import os
import socket
import struct
import sys


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("the server closed the connection")
        buf += chunk
    return buf


def recv_message(s):
    """One backend message: (type, payload)."""
    typ = recv_exact(s, 1)
    (n,) = struct.unpack("!I", recv_exact(s, 4))
    return typ, recv_exact(s, n - 4)


def startup(s, user, db):
    """StartupMessage (trust authentication), read up to ReadyForQuery: the backend's PID."""
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + \
        db.encode() + b"\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    backend = None
    while True:
        typ, payload = recv_message(s)
        if typ == b"E":
            raise RuntimeError("startup refused: %r" % payload)
        if typ == b"K":
            backend = struct.unpack("!I", payload[:4])[0]
        if typ == b"Z":
            return backend


def query(s, text):
    body = text.encode() + b"\0"
    s.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
    rows, sqlstate = 0, None
    while True:
        typ, payload = recv_message(s)
        if typ == b"D":
            rows += 1
        elif typ == b"E":
            for field in payload.split(b"\0"):
                if field[:1] == b"C":
                    sqlstate = field[1:].decode()
        elif typ == b"Z":
            return {"text": text, "rows": rows, "sqlstate": sqlstate}


def main():
    path, sqls = sys.argv[1], sys.argv[2:]
    lsn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsn.bind(path)
    lsn.listen(1)
    print("PID %d" % os.getpid(), flush=True)
    peer, _ = lsn.accept()
    _, fds, _, _ = socket.recv_fds(peer, 16, 1)
    db = socket.socket(fileno=fds[0])
    record = [query(db, q) for q in sqls]
    print(json.dumps(record), flush=True)
    sys.stdin.readline()  # the connection lives until told (its tracer has read its requests)
    db.sendall(b"X\0\0\0\4")
    db.close()


if __name__ == "__main__":
    main()
