/* SPDX-License-Identifier: MIT */
/* Maps shared by the libpq probes and the socket tracepoints. */
#ifndef SQLSPAN_MAPS_BPF_H
#define SQLSPAN_MAPS_BPF_H

/* Text chunks sent per statement at most (the loader sets it from --max-sql-bytes). */
const volatile __u32 text_max_chunks = 17;

/*
 * Processes being traced (tgid as the host sees it): PID_TRACED_* in two bits per PID, 32 PIDs a
 * word, up to the kernel's PID limit. Filled by the loader. An array, not a hash: the syscall
 * tracepoints run for every process on the host, and an array lookup is one load (no hashing,
 * one cache line; the verifier inlines it) where a hash lookup cost about 0.1 µs a run in a
 * cache-cold process.
 */
#define PID_WIRE 2 /* also follow the protocol on its sockets (a driver without libpq) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SQLSPAN_PID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} pids SEC(".maps");

/* Per traced process: the libpq text ranges and the PGconn offsets of each. Filled by the loader.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct proc_libs);
} libs SEC(".maps");

struct fd_key {
	__u32 tgid;
	__s32 fd;
};

/* fd_state.flags */
#define FS_SYNCED (1 << 0) /* the stream is at a known message boundary */
#define FS_GAP	  (1 << 1) /* a record of this socket was lost: tell userspace with the next one */
#define FS_WIRE	  (1 << 2) /* a socket of a driver that speaks the protocol itself (front.bpf.h) */
#define FS_TLS	  (1 << 3) /* a wire socket that switched to TLS: its bytes are not walked */

/* front_state.flags */
#define FR_STARTUP (1 << 0) /* a StartupMessage (or TLS) comes next: after an SSLRequest */
#define FR_GAP	   (1 << 1) /* a record was lost: mark the next one */

/* Where the walk of a socket's frontend stream stands between sends. */
struct front_state {
	__u32 body_left; /* bytes of the current message body not yet walked */
	__u32 body_len;
	__u32 cap;    /* body bytes to send of the current message */
	__u32 copied; /* body bytes sent so far */
	__u8 type;    /* current message type (0: StartupMessage) */
	__u8 hdr_have;
	__u8 flags;
	__u8 _pad;
	__u8 hdr[8];
};

/*
 * Where the walks of a socket's message streams stand between reads (backend) and sends
 * (frontend, for drivers that speak the protocol: front.bpf.h): one lookup finds both.
 */
struct fd_state {
	__u64 conn;	 /* PGconn * that owns the socket */
	__u32 body_left; /* bytes of the current message body not yet read */
	__u32 body_len;	 /* body length of the current message */
	__u32 rows;	 /* DataRows since the last record sent */
	__u16 cap;	 /* body bytes to copy of the current message */
	__u16 copied;	 /* body bytes copied so far */
	__u8 type;	 /* current message type */
	__u8 hdr_have;	 /* bytes of a split header kept in hdr */
	__u8 flags;
	__u8 epoch;  /* sync_epoch when the stream was last put at a known boundary */
	__u8 hdr[8]; /* the first bytes of a header split across reads */
	struct front_state front;
};

/*
 * Bumped by the loader each time it sees that the kernel skipped runs of the programs (7.x,
 * under preemption). A skipped read can leave a stream's walk inside a message that has ended,
 * and it stays there (the rest of a DataRow's length taken for later replies swallows them)
 * past the loader's marking of the spans around the skip. A stream last put at a boundary before
 * the bump is checked at its next request, where it must be at one (libpq outside pipeline mode,
 * a wire send): if it is inside a message, the requests still pending on it end as unknown,
 * marked near a loss (EVF_GAP on the request); either way it is at a boundary again. A stale
 * stream closed is marked too (EV_CLOSE_STALE).
 */
volatile __u8 sync_epoch;

/* Is the stream's position from before the last skipped runs the loader saw? */
static __always_inline bool fd_stale(const struct fd_state *st)
{
	return st->epoch != sync_epoch;
}

/*
 * Put the stream's reply walk at a message boundary (the protocol says it is at one now). True
 * if the walk thought it was inside a message: what was pending lost replies (maps: sync_epoch).
 */
static __always_inline bool fd_resync(struct fd_state *st)
{
	bool inside = (st->flags & FS_SYNCED) && (st->body_left || st->hdr_have);

	st->flags |= FS_SYNCED;
	st->epoch = sync_epoch;
	st->body_left = 0;
	st->hdr_have = 0;
	st->rows = 0;
	return inside;
}

/* Sockets of traced processes that carry libpq connections. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fd_key);
	__type(value, struct fd_state);
} fds SEC(".maps");

/* recvfrom arguments between syscall entry and exit, per thread. */
struct recv_args {
	__u64 buf;
	__s32 fd;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct recv_args);
} recvs SEC(".maps");

/* An outer libpq call (PQexec) already reported, whose inner call (PQsendQuery) must be skipped. */
struct nest_val {
	__u64 conn;
	__u64 text;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct nest_val);
} nest SEC(".maps");

/* PID_TRACED_* of a process, 0 if it is not traced. */
static __always_inline __u32 pid_flags(__u32 tgid)
{
	__u32 idx = tgid / 32;
	__u64 *w = bpf_map_lookup_elem(&pids, &idx);

	return w ? (*w >> ((tgid % 32) * 2)) & 3 : 0;
}

static __always_inline bool traced(__u32 tgid)
{
	return pid_flags(tgid) != 0;
}

/* A traced process whose sockets are followed for the protocol (asyncpg, --wire)? */
static __always_inline bool wire_process(__u32 tgid)
{
	return pid_flags(tgid) & PID_WIRE;
}

#endif
