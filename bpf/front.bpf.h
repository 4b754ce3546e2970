/* SPDX-License-Identifier: MIT */
/*
 * The frontend half of the wire capture, for drivers that speak PostgreSQL's protocol themselves
 * (asyncpg): walks what a traced process sends on its database sockets, one send at a time, and
 * hands userspace each message's type and the parts of its body that say what is asked: the SQL
 * of Query and Parse (up to the text limit, in chunks), the names in Bind (never its parameter
 * values), Execute, Describe and Close. CopyData and password messages are skipped by length,
 * never copied. The replies are walked by wire.bpf.h like those of libpq's sockets.
 *
 * A socket becomes a database socket when the process sends a StartupMessage (or SSLRequest) on
 * it, or, for connections opened before sqlspan attached, a send that is an exact sequence of
 * frontend messages. Only for kernels with bpf_loop (5.17+).
 */
#ifndef SQLSPAN_FRONT_BPF_H
#define SQLSPAN_FRONT_BPF_H

/* Frontend messages looked at to decide whether a send is the PostgreSQL protocol. */
#define FRONT_PROBE_MSGS 64
/* Body bytes of a StartupMessage sent (protocol version and parameters: user, database, ...). */
#define FRONT_STARTUP_CAP 1024
/*
 * Parts of message bodies shorter than this travel together, as one EV_MSGS record per send (a
 * ring buffer record costs the traced thread more than its bytes); longer ones (SQL text) alone.
 */
#define FRONT_BAT_DATA 512
_Static_assert(FRONT_BAT_DATA <= WIN_READ_MAX && FRONT_BAT_DATA >= WIN_DATA_WORDS * 8,
	       "batched parts read through win_data");

#define PG_PROTO_3     0x00030000u
#define PG_SSL_REQUEST 80877103u
#define PG_GSS_REQUEST 80877104u
#define PG_CANCEL_REQ  80877102u

/* The walk of one send, per thread. */
struct fwalk {
	__u64 buf;
	__u64 pid_tgid;
	__u64 ts;
	__u32 n;
	__u32 pos;
	__s32 fd;
	__u32 _pad0;
	struct fd_key key;
	__u8 hdr[8];
	__u32 probe_pos; /* front_probe: bytes tiled so far */
	__u32 _pad;
	__u64 arg; /* the syscall's second argument: the buffer (sendto) or the msghdr (sendmsg) */
	/* the iovecs still to walk (sendmsg; 0 for sendto: vec holds its one buffer) */
	__u64 iov;
	__u64 left;   /* bytes sent not walked yet */
	__u64 vec[2]; /* the iovec being read: base, length */
	__u32 dead;   /* the socket's stream was given up (front_bad): the send is not walked on */
	struct batch bat; /* the EV_FMSG records of this send (the thread's scratch area) */
	struct win win;	  /* the first bytes of the buffer being walked (Bind, Execute, Sync) */
	__u8 junk[SQLSPAN_NAME_LEN]; /* where names are read to measure them */
	__u64 replay_buf; /* tls_bind: the plaintext of the write just tied (tls_replay) */
	__u64 replay_len;
};

/*
 * In the thread's scratch area (one lookup for both): below the reply walk's place, clear of the
 * records built from the start (a batch, a long text part) and of the Python stack's window
 * (front_stack runs while the walk is set up).
 */
#define FWALK_AT (WALK_AT - ((sizeof(struct fwalk) + 7) & ~7UL))
_Static_assert(FWALK_AT >= sizeof(struct ev_msgs) + SQLSPAN_MSGS_MAX + sizeof(struct ev_fmsg) +
				   FRONT_BAT_DATA,
	       "the send walk clear of the batch");
_Static_assert(FWALK_AT >= sizeof(struct ev_fmsg) + 4096, "the send walk clear of a long part");
_Static_assert(FWALK_AT >= PY_WIN, "the send walk clear of the Python stack's window");

/* The calling thread's send walk; NULL if its scratch area cannot be had. */
static __always_inline struct fwalk *thread_fwalk(void)
{
	struct scratch *s = thread_entry(&scratches);

	return s ? (struct fwalk *)&s->bytes[FWALK_AT] : NULL;
}

/* The scratch area a send walk lives in (the verifier follows the constant offset back). */
static __always_inline struct scratch *fwalk_scratch(struct fwalk *w)
{
	return (struct scratch *)((__u8 *)w - FWALK_AT);
}

#include "tls.bpf.h"

static __always_inline bool frontend_type(__u8 t)
{
	switch (t) {
	case 'B':
	case 'C':
	case 'c':
	case 'd':
	case 'D':
	case 'E':
	case 'f':
	case 'F':
	case 'H':
	case 'p':
	case 'P':
	case 'Q':
	case 'S':
	case 'X':
		return true;
	}
	return false;
}

static __always_inline __u32 be32(const __u8 *b)
{
	return ((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | b[3];
}

/* Names looked for in the window by words (front_strlen): their first bytes. */
#define FRONT_NAME_WORDS 8

/*
 * The length (with its NUL) of the string at offset off, if the window holds it whole; else -1
 * (front_strlen_user reads it). Its NUL is looked for by plain loads, a word at a time (a zero byte
 * in word v sets bit 8k+7 of (v - 0x01..01) & ~v & 0x80..80 for the first one, k its place): no
 * helper call.
 */
static __always_inline long front_strlen(struct fwalk *w, __u32 off)
{
	const __u8 *src = &w->win.bytes[off & (WIN_BYTES - 1)];
	__u64 v, z;

	if (off < WIN_BYTES) {
#pragma unroll
		for (int i = 0; i < FRONT_NAME_WORDS; i++) {
			LOAD64U(v, src, i * 8);
			z = (v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL;
			if (z) {
				/* z & -z: bit 8k+7 alone; times 0x0807..01: top byte 8 - k */
				z = ((z & -z) >> 7) * 0x0807060504030201ULL;
				z = i * 8 + 8 - (z >> 56) + 1;
				return off + z <= w->win.len ? (long)z : -1;
			}
		}
	}
	return -1;
}

/* The length (with its NUL, at most SQLSPAN_NAME_LEN) of the string at offset off; <= 0: fault. */
static __noinline long front_strlen_user(struct fwalk *w, __u32 off)
{
	long r = front_strlen(w, off);

	if (r > 0)
		return r;
	if (off < WIN_BYTES && off + SQLSPAN_NAME_LEN <= w->win.len)
		return SQLSPAN_NAME_LEN; /* no NUL in its first bytes: cut, as a read would */
	return bpf_probe_read_user_str(w->junk, SQLSPAN_NAME_LEN, (const void *)(w->buf + off));
}

/* ---- is this send the PostgreSQL protocol? ---- */

static long probe_cb(__u32 i, void *data)
{
	struct fwalk *w = *(struct fwalk **)data;
	__u32 len;

	(void)i;
	if (w->probe_pos >= w->n)
		return 1;
	if (w->n - w->probe_pos < 5 ||
	    bpf_probe_read_user(w->hdr, 5, (const void *)(w->buf + w->probe_pos)))
		goto bad;
	len = be32(&w->hdr[1]);
	if (!frontend_type(w->hdr[0]) || len < 4 || len > w->n - w->probe_pos - 1)
		goto bad;
	w->probe_pos += 1 + len;
	return 0;
bad:
	w->probe_pos = (__u32)-1;
	return 1;
}

/*
 * What the first bytes of a send on an unknown socket say: 0 not PostgreSQL, 1 a StartupMessage
 * or SSLRequest (a new connection), 2 whole frontend messages (a connection already open).
 */
static __noinline int front_probe(struct fwalk *w)
{
	__u32 len, code;

	if (w->n >= 8 && !bpf_probe_read_user(w->hdr, 8, (const void *)w->buf)) {
		len = be32(w->hdr);
		code = be32(&w->hdr[4]);
		if (code == PG_PROTO_3 && len >= 8 && len <= 10000)
			return 1;
		if (len == 8 && (code == PG_SSL_REQUEST || code == PG_GSS_REQUEST))
			return 1;
		if (len == 16 && code == PG_CANCEL_REQ)
			return 0;
	}
	w->probe_pos = 0;
	bpf_loop(FRONT_PROBE_MSGS, probe_cb, &w, 0);
	return w->probe_pos == w->n ? 2 : 0;
}

/*
 * Make the socket a wire socket: both walk states, at a message boundary. Created from zeroes
 * (not from structs on the stack: see request.bpf.h on why stacks stay under 64 bytes).
 */
static __noinline struct fd_state *front_track(struct fwalk *w, int how)
{
	__u32 zero = 0;
	void *z = bpf_map_lookup_elem(&zeroes, &zero);
	struct fd_state *st;

	if (!z || bpf_map_update_elem(&fds, &w->key, z, BPF_ANY)) {
		stat_add(ST_FD_FULL, 1);
		return NULL;
	}
	st = bpf_map_lookup_elem(&fds, &w->key);
	if (!st)
		return NULL;
	/* a new connection: the replies are followed from the StartupMessage on */
	st->flags = how == 1 ? FS_WIRE : FS_WIRE | FS_SYNCED;
	st->epoch = sync_epoch;
	st->front.flags = how == 1 ? FR_STARTUP : 0;
	return st;
}

/* The socket state a send walk's front_state is part of (the verifier follows the offset). */
static __always_inline struct fd_state *front_socket_state(struct front_state *fs)
{
	return (struct fd_state *)((__u8 *)fs - __builtin_offsetof(struct fd_state, front));
}

/* ---- the walk ---- */

/*
 * Send the EV_FMSG records of this send built so far, as one EV_MSGS record (bat: the thread's
 * scratch area, where they are built after room for the EV_MSGS header).
 */
static __noinline void front_flush(void *ctx, struct fwalk *w, struct front_state *fs,
				   struct scratch *bat)
{
	if (batch_flush(ctx, &w->bat, bat, w->pid_tgid, w->ts))
		fs->flags |= FR_GAP;
}

/* An EV_FMSG record's header, for the current message of the walk; the gap flag is taken. */
static __always_inline void fmsg_fill(struct ev_fmsg *m, struct fwalk *w, struct front_state *fs)
{
	hdr_fill(&m->h, EV_FMSG, w->pid_tgid, w->ts, (fs->flags & FR_GAP) ? EVF_GAP : 0);
	fs->flags &= ~FR_GAP;
	m->fd = w->fd;
	m->len = fs->body_len;
	m->off = fs->copied;
	m->cap = fs->cap;
	m->type = fs->type;
	m->_pad[0] = m->_pad[1] = m->_pad[2] = 0;
}

/* A long part (SQL text): after the batch, alone, built at the scratch area's start. */
static __always_inline void front_emit_alone(void *ctx, struct fwalk *w, struct front_state *fs,
					     struct scratch *bat, __u32 want)
{
	struct ev_fmsg *m = (void *)bat->bytes;
	__u64 n = want;

	front_flush(ctx, w, fs, bat);
	fmsg_fill(m, w, fs);
	/* want <= SQLSPAN_TEXT_CHUNK < 4096: the mask keeps the verifier sure */
	n &= 4095;
	if (n && bpf_probe_read_user(m->data, n, (const void *)(w->buf + w->pos)))
		n = 0;
	m->n = n;
	if (rec_output(ctx, m, sizeof(*m) + n)) {
		fs->flags |= FR_GAP;
		stat_add(ST_DROP_MSG, 1);
		return;
	}
	stat_add(ST_MSGS, 1);
}

/* Send `want` bytes of the current message's body, from the walk's position. */
static __noinline void front_emit(void *ctx, struct fwalk *w, struct front_state *fs,
				  struct scratch *bat, __u32 want)
{
	struct ev_fmsg *m;
	__u64 n = want;

	if (want >= FRONT_BAT_DATA) {
		front_emit_alone(ctx, w, fs, bat, want);
		return;
	}
	if (!batch_room(&w->bat, FRONT_BAT_DATA))
		front_flush(ctx, w, fs, bat);
	m = batch_slot(bat, &w->bat);
	fmsg_fill(m, w, fs);
	n &= FRONT_BAT_DATA - 1;
	if (n && win_data(&w->win, w->buf, m->data, n, w->pos))
		n = 0;
	m->n = n;
	batch_add(&w->bat, n);
}

/* Text bytes sent per statement at most: the loader's text limit. */
static __always_inline __u32 front_text_max(void)
{
	return text_max_chunks * SQLSPAN_TEXT_CHUNK;
}

/* Bind: the portal and statement names that start the body, nothing after them. */
static __noinline __u32 bind_names(struct fwalk *w, __u32 body)
{
	long a, b;

	a = front_strlen_user(w, w->pos);
	if (a <= 0)
		return 0;
	b = front_strlen_user(w, w->pos + a);
	if (b <= 0)
		return 0;
	return (__u32)(a + b) < body ? (__u32)(a + b) : body;
}

/* Body bytes to send of a message; -1: skip it without a record. */
static __always_inline int front_cap(struct fwalk *w, __u8 t, __u32 body)
{
	__u32 cap;

	switch (t) {
	case 'Q':
		cap = front_text_max() + 1;
		break;
	case 'P':
		cap = SQLSPAN_NAME_LEN + front_text_max() + 1;
		break;
	case 'B':
		return bind_names(w, body);
	case 'E':
		cap = SQLSPAN_NAME_LEN + 4;
		break;
	case 'D':
	case 'C':
		cap = 1 + SQLSPAN_NAME_LEN;
		break;
	case 'S':
	case 'H':
	case 'X':
	case 'c':
	case 'f':
	case 'F':
		cap = 0;
		break;
	default: /* CopyData, password and SASL messages */
		return -1;
	}
	return body < cap ? body : cap;
}

/*
 * The stream cannot be followed: forget the socket (a later send that is whole messages takes it
 * up again), or, for TLS, keep it known as a socket whose bytes are encrypted.
 */
static __always_inline int front_bad(void *ctx, struct fwalk *w, struct front_state *fs,
				     struct scratch *bat, __u32 why)
{
	struct ev_conn *e;

	front_flush(ctx, w, fs, bat); /* what came before, first */
	w->dead = 1;
	e = rec_reserve(sizeof(*e));
	fs->body_left = 0;
	fs->hdr_have = 0;
	if (why != DESYNC_TLS)
		bpf_map_delete_elem(&fds, &w->key);
	if (why != DESYNC_TLS)
		stat_add(ST_DESYNC, 1);
	if (!e) {
		stat_add(ST_DROP_OTHER, 1);
		return 1;
	}
	hdr_fill(&e->h, EV_DESYNC, w->pid_tgid, bpf_ktime_get_ns(), 0);
	e->conn = 0;
	e->fd = w->fd;
	e->arg = why;
	if (rec_submit(ctx, e, sizeof(*e)))
		stat_add(ST_DROP_OTHER, 1);
	return 1;
}

/* A message header is in w->hdr, the walk at its body: set the message up. 1: stream lost. */
static __noinline int front_header(void *ctx, struct fwalk *w, struct front_state *fs,
				   struct scratch *bat)
{
	__u32 len = be32(&w->hdr[1]), body;
	int cap;

	if (!frontend_type(w->hdr[0]) || len < 4 || len > (1u << 30))
		return front_bad(ctx, w, fs, bat, DESYNC_BAD_HEADER);
	body = len - 4;
	fs->type = w->hdr[0];
	fs->body_len = body;
	fs->body_left = body;
	fs->copied = 0;
	cap = front_cap(w, fs->type, body);
	fs->cap = cap > 0 ? cap : 0;
	if (cap == 0)
		front_emit(ctx, w, fs, bat, 0);
	return 0;
}

/* After an SSLRequest: the StartupMessage (plaintext), or a TLS handshake. */
static __noinline int front_startup(void *ctx, struct fwalk *w, struct front_state *fs,
				    struct scratch *bat)
{
	__u32 len;
	struct fd_state *st;

	if (w->n - w->pos < 8 || win_bytes(&w->win, w->buf, w->hdr, 8, w->pos))
		return front_bad(ctx, w, fs, bat, DESYNC_BAD_HEADER);
	fs->flags &= ~FR_STARTUP;
	st = front_socket_state(fs);
	if (w->hdr[0] == 22 && w->hdr[1] == 3) { /* a TLS ClientHello */
		/* the replies are TLS records: not walked */
		st->flags = (st->flags & ~FS_SYNCED) | FS_TLS;
		tls_bind(w, 0); /* the plaintext, where libssl has it */
		return front_bad(ctx, w, fs, bat, DESYNC_TLS);
	}
	len = be32(w->hdr);
	if (be32(&w->hdr[4]) == PG_SSL_REQUEST || be32(&w->hdr[4]) == PG_GSS_REQUEST) {
		fs->flags |= FR_STARTUP; /* the server said no; the StartupMessage comes next */
		w->pos += 8;
		return 0;
	}
	if (len < 8 || be32(&w->hdr[4]) != PG_PROTO_3)
		return front_bad(ctx, w, fs, bat, DESYNC_BAD_HEADER);
	/* the server's replies start now: at a message boundary */
	fd_resync(st);
	w->pos += 4;
	fs->type = 0;
	fs->body_len = len - 4;
	fs->body_left = len - 4;
	fs->copied = 0;
	fs->cap = len - 4 < FRONT_STARTUP_CAP ? len - 4 : FRONT_STARTUP_CAP;
	return 0;
}

/* One step: a chunk of the current body, or the next header. 1 when the send is done. */
static __noinline int front_step(void *ctx, struct fwalk *w, struct front_state *fs,
				 struct scratch *bat)
{
	__u32 avail, take, have;

	if (w->pos >= w->n)
		return 1;
	avail = w->n - w->pos;
	if (fs->body_left) {
		take = fs->body_left < avail ? fs->body_left : avail;
		if (fs->copied < fs->cap) {
			__u32 want = fs->cap - fs->copied;

			if (want > take)
				want = take;
			if (want > SQLSPAN_TEXT_CHUNK)
				want = SQLSPAN_TEXT_CHUNK;
			front_emit(ctx, w, fs, bat, want);
			fs->copied += want;
			take = want;
		}
		fs->body_left -= take;
		w->pos += take;
		return 0;
	}
	if (fs->flags & FR_STARTUP)
		return front_startup(ctx, w, fs, bat);
	have = fs->hdr_have;
	if (have) {
		/* the rest of a header split across sends */
		__u32 need = 5 - (have & 7);

		if (have >= 5)
			return front_bad(ctx, w, fs, bat, DESYNC_BAD_HEADER);
		if (need > avail) {
			for (int i = 0; i < 4; i++) {
				if (i >= avail || have >= 5)
					break;
				win_bytes(&w->win, w->buf, &fs->hdr[have & 7], 1, w->pos);
				have++;
				w->pos++;
			}
			fs->hdr_have = have;
			return 1;
		}
		__builtin_memcpy(w->hdr, fs->hdr, 8);
		for (int i = 0; i < 4; i++) {
			if (have >= 5)
				break;
			win_bytes(&w->win, w->buf, &w->hdr[have & 7], 1, w->pos);
			have++;
			w->pos++;
		}
		fs->hdr_have = 0;
		return front_header(ctx, w, fs, bat);
	}
	if (avail < 5) {
		/* the start of a header: kept for the next send */
		for (int i = 0; i < 4; i++) {
			if (i >= avail)
				break;
			win_bytes(&w->win, w->buf, &fs->hdr[i & 7], 1, w->pos);
			w->pos++;
		}
		fs->hdr_have = avail;
		return 1;
	}
	if (win_hdr(&w->win, w->buf, w->hdr, w->pos))
		return front_bad(ctx, w, fs, bat, DESYNC_READ_FAULT);
	w->pos += 5;
	return front_header(ctx, w, fs, bat);
}

struct front_loop {
	void *ctx;
	struct fwalk *w;
	struct front_state *fs;
	struct scratch *bat;
};

static long front_cb(__u32 i, void *data)
{
	struct front_loop *fl = data;

	(void)i;
	return front_step(fl->ctx, fl->w, fl->fs, fl->bat);
}

/*
 * The Python stack of the thread, once per send that starts a request (Query, Parse, Bind or
 * Execute first): the statements in it take it (if the process is a Python one: send_stack_tp
 * looks it up). Called from the program itself, not from the walk, which is already deep in
 * calls.
 */
static __noinline void front_stack(void *ctx, struct fwalk *w)
{
	__u8 t = w->win.bytes[0];

	if (!python_stacks || !w->win.len)
		return;
	if (t == 'Q' || t == 'P' || t == 'B' || t == 'E')
		send_stack_tp(ctx, w->pid_tgid, w->ts);
}

/* Steps per send at most: headers plus text chunks. */
#define FRONT_LOOP_MAX (1 << 20)

/* One buffer of a send (an iovec of a sendmsg), walked in the order sent; the first is set up. */
static long iov_cb(__u32 i, void *data)
{
	struct front_loop *fl = data;
	struct fwalk *w = fl->w;

	if (w->dead || !w->left)
		return 1;
	if (i > 0) {
		if (!w->iov ||
		    bpf_probe_read_user(w->vec, sizeof(w->vec), (const void *)(w->iov + i * 16)))
			return 1;
		w->buf = w->vec[0];
		w->n = w->vec[1] < w->left ? w->vec[1] : w->left;
		w->pos = 0;
		win_fill(&w->win, w->buf, w->n);
	}
	w->left -= w->n;
	if (w->n)
		bpf_loop(FRONT_LOOP_MAX, front_cb, fl, 0);
	return 0;
}

/* A send of a process whose sockets are followed: its walk, set up; NULL if there is none. */
static __always_inline struct fwalk *front_entry(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct pt_regs *regs;
	struct fwalk *w;

	if (ctx->ret <= 0 || !wire_process(tgid))
		return NULL;
	w = thread_fwalk();
	if (!w)
		return NULL;
	regs = syscall_regs();
	w->key.tgid = tgid;
	w->key.fd = (__s32)regs->di;
	w->fd = w->key.fd;
	w->arg = regs->si;
	w->pid_tgid = pid_tgid;
	w->left = ctx->ret;
	w->ts = bpf_ktime_get_ns();
	return w;
}

/* sendmsg: its iovecs into the walk (the first one in w->vec); how many to walk, 0 if none. */
static __noinline __u64 sendmsg_iovecs(struct fwalk *w)
{
	__u64 niov = 0;

	/* struct user_msghdr: name, namelen, iov (16), iovlen (24) */
	if (bpf_probe_read_user(&w->iov, 8, (const void *)(w->arg + 16)) ||
	    bpf_probe_read_user(&niov, 8, (const void *)(w->arg + 24)) || !niov ||
	    bpf_probe_read_user(w->vec, sizeof(w->vec), (const void *)w->iov))
		return 0;
	return niov < 64 ? niov : 64;
}

/*
 * Is the socket one to walk? Not a libpq socket (its probes tell) nor an encrypted one; a new one
 * only if its first buffer looks like the protocol (see front_probe), and then it is tracked from
 * now on. A database socket whose replies were lost track of is taken up again at this request.
 * Its state if it is to be walked, else NULL.
 */
static __noinline struct fd_state *front_socket(struct fwalk *w)
{
	struct fd_state *st = bpf_map_lookup_elem(&fds, &w->key);
	__u8 first = 0;
	int how;

	if (st && (!(st->flags & FS_WIRE) || (st->flags & FS_TLS)))
		return NULL;
	if (!st) {
		/* a TLS record (application data) right after this thread's libssl took whole
		 * frontend messages: a database connection from before the attach, encrypted */
		if (!bpf_probe_read_user(&first, 1, (const void *)w->buf) && first == 23 &&
		    tls_bind(w, 1))
			return NULL;
		how = front_probe(w);
		return how ? front_track(w, how) : NULL;
	}
	if (!(st->flags & FS_SYNCED) || fd_stale(st)) {
		/* stale and inside a message: a skipped read left it there (maps.bpf.h) */
		if (fd_resync(st))
			st->front.flags |= FR_GAP;
	}
	return st;
}

/* The walk of a send's buffers; the messages found go out as one record (more if long). */
static __noinline void front_walk(void *ctx, struct fwalk *w, struct fd_state *st, __u64 niov)
{
	struct front_loop fl = {.ctx = ctx, .w = w};

	fl.fs = &st->front;
	fl.bat = fwalk_scratch(w);
	w->dead = 0;
	w->bat.n = 0;
	w->bat.len = 0;
	bpf_loop(niov, iov_cb, &fl, 0);
	front_flush(ctx, w, fl.fs, fl.bat); /* nothing left to send after front_bad */
}

/* Walk a send: its buffers (niov; the first in w->vec), after the thread's Python stack. */
static __always_inline void front_send(void *ctx, struct fwalk *w, __u64 niov)
{
	struct fd_state *st;

	w->buf = w->vec[0];
	w->n = w->vec[1] < w->left ? w->vec[1] : w->left;
	w->pos = 0;
	w->replay_len = 0;
	st = front_socket(w);
	if (!st) {
		/* an encrypted send that tied its SSL object: the plaintext it carries instead */
		if (!w->replay_len || !tls_replay(w))
			return;
		st = bpf_map_lookup_elem(&fds, &w->key); /* its TLS stream's */
		if (!st)
			return;
		niov = 1;
	}
	win_fill(&w->win, w->buf, w->n);
	front_stack(ctx, w);
	front_walk(ctx, w, st, niov);
}

#endif
