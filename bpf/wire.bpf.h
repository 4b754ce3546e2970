/* SPDX-License-Identifier: MIT */
/*
 * Walks the PostgreSQL backend message stream of a socket, one read at a time: follows message
 * framing across reads, counts and skips DataRows without copying them, and sends the messages
 * that end or describe a statement (CommandComplete, ErrorResponse, ReadyForQuery, ...) to
 * userspace, with at most `cap` bytes of each body. Decoding is left to userspace.
 */
#ifndef SQLSPAN_WIRE_BPF_H
#define SQLSPAN_WIRE_BPF_H

/* Messages visited per program run; a read with more continues through tail calls. */
#define WALK_STEPS 128
#define WALK_TAILS 32
_Static_assert(SQLSPAN_MSG_LONG <= WIN_READ_MAX, "message bodies read through win_bytes");

/* The walk of one read, kept per CPU so that a tail call can continue it. */
struct walk {
	__u64 buf;
	__u64 pid_tgid;
	__u32 n;   /* bytes read */
	__u32 pos; /* bytes walked */
	__s32 fd;
	__u32 tails;
	struct fd_key key;
	__u8 hdr[8];	  /* the message header being read */
	__u64 esrc;	  /* what walk_emit sends: from here */
	__u32 ewant;	  /* this many bytes */
	__u32 eoff;	  /* at this offset in the message body */
	__u64 ts;	  /* when the read returned: the time of every message in it */
	struct batch bat; /* the EV_MSG records of this read (the thread's scratch area) */
	struct win win;	  /* the read's first bytes */
};

/*
 * Per thread (a program can be preempted mid-walk on recent kernels, see buffer.bpf.h), at the end
 * of the thread's scratch area, whose start holds the batch of records being built: one lookup
 * finds both.
 */
#define WALK_AT (sizeof(struct scratch) - ((sizeof(struct walk) + 7) & ~7UL))
_Static_assert(WALK_AT >= sizeof(struct ev_msgs) + SQLSPAN_MSGS_MAX + sizeof(struct ev_msg) +
				  SQLSPAN_MSG_LONG,
	       "the walk clear of the batch");

/* The thread's walk, in its scratch area s (thread_entry(&scratches)). */
static __always_inline struct walk *walk_in(struct scratch *s)
{
	return (struct walk *)&s->bytes[WALK_AT];
}

/* The calling thread's walk; NULL if its scratch area cannot be had. */
static __always_inline struct walk *thread_walk(void)
{
	struct scratch *s = thread_entry(&scratches);

	return s ? walk_in(s) : NULL;
}

/* The scratch area a walk lives in (the verifier follows the constant offset back). */
static __always_inline struct scratch *walk_scratch(struct walk *w)
{
	return (struct scratch *)((__u8 *)w - WALK_AT);
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} walk_progs SEC(".maps");

static __always_inline bool backend_type(__u8 t)
{
	switch (t) {
	case 'R':
	case 'K':
	case 'S':
	case 'Z':
	case 'T':
	case 'D':
	case 'C':
	case 'E':
	case 'N':
	case 'A':
	case 'I':
	case '1':
	case '2':
	case '3':
	case 'n':
	case 's':
	case 't':
	case 'G':
	case 'H':
	case 'W':
	case 'd':
	case 'c':
	case 'V':
	case 'v':
		return true;
	}
	return false;
}

/* Body bytes worth copying; 0 = send the header only; -1 = do not send at all. */
static __always_inline int msg_cap(__u8 t, __u32 body)
{
	__u32 cap;

	switch (t) {
	case 'C':
		cap = SQLSPAN_MSG_SHORT - 1;
		break;
	case 'E':
		cap = SQLSPAN_MSG_LONG - 1;
		break;
	case 'Z':
		cap = 1;
		break;
	case 'K':
		cap = 8;
		break;
	case 'T':
	case 'I':
	case '1':
	case '2':
	case '3':
	case 'n':
	case 's':
	case 'G':
	case 'H':
	case 'W':
	case 'c':
		cap = 0;
		break;
	default:
		return -1;
	}
	return body < cap ? body : cap;
}

/*
 * Send the EV_MSG records of this read built so far, as one EV_MSGS record (bat: the thread's
 * scratch area, where they are built after room for the EV_MSGS header).
 */
static __noinline void walk_flush(void *ctx, struct walk *w, struct fd_state *st,
				  struct scratch *bat)
{
	if (batch_flush(ctx, &w->bat, bat, w->pid_tgid, w->ts))
		st->flags |= FS_GAP;
}

static __noinline void walk_desync(void *ctx, struct walk *w, struct fd_state *st,
				   struct scratch *bat, __u32 why)
{
	struct ev_conn *e;

	walk_flush(ctx, w, st, bat); /* what came before, first (and the scratch area is free) */
	st->flags &= ~FS_SYNCED;
	st->body_left = 0;
	st->hdr_have = 0;
	if (why != DESYNC_TLS)
		stat_add(ST_DESYNC, 1);
	e = rec_reserve(sizeof(*e));
	if (!e) {
		stat_add(ST_DROP_OTHER, 1);
		return;
	}
	hdr_fill(&e->h, EV_DESYNC, w->pid_tgid, bpf_ktime_get_ns(), 0);
	e->conn = st->conn;
	e->fd = w->fd;
	e->arg = why;
	if (rec_submit(ctx, e, sizeof(*e)))
		stat_add(ST_DROP_OTHER, 1);
}

/*
 * Add an EV_MSG record of `want` body bytes at `src` (offset `off` in the body) to the batch,
 * with room for `datasz` data bytes (a power of two) reserved while it is built.
 */
static __always_inline void walk_emit_sz(void *ctx, struct walk *w, struct fd_state *st,
					 struct scratch *bat, __u64 src, __u32 want, __u32 off,
					 const __u32 datasz)
{
	struct ev_msg *m;
	__u64 n;

	if (!batch_room(&w->bat, datasz))
		walk_flush(ctx, w, st, bat);
	m = batch_slot(bat, &w->bat);
	/* a gap before this message: it says so, and the flag is taken (set again if lost) */
	hdr_fill(&m->h, EV_MSG, w->pid_tgid, w->ts, (st->flags & FS_GAP) ? EVF_GAP : 0);
	st->flags &= ~FS_GAP;
	m->fd = w->fd;
	m->len = st->body_len;
	m->off = off;
	m->rows = off == 0 ? st->rows : 0;
	m->cap = st->cap;
	m->type = st->type;
	m->_pad[0] = m->_pad[1] = m->_pad[2] = 0;
	/* caps stay below the data sizes, which are powers of two: the mask keeps the verifier sure
	 */
	n = want;
	asm volatile("%[n] &= %[mask]" : [n] "+r"(n) : [mask] "i"(datasz - 1));
	if (n && win_data(&w->win, w->buf, m->data, n, src - w->buf))
		n = 0;
	m->n = n;
	/* the rows counted so far travel with this record */
	if (off == 0)
		st->rows = 0;
	batch_add(&w->bat, n);
}

static __noinline void walk_emit(void *ctx, struct walk *w, struct fd_state *st,
				 struct scratch *bat)
{
	if (st->cap >= SQLSPAN_MSG_SHORT)
		walk_emit_sz(ctx, w, st, bat, w->esrc, w->ewant, w->eoff, SQLSPAN_MSG_LONG);
	else
		walk_emit_sz(ctx, w, st, bat, w->esrc, w->ewant, w->eoff, SQLSPAN_MSG_SHORT);
}

/*
 * A message header has been read (hdr) and w->pos points at its body: set the walk up for the
 * message, send what is to be sent, skip what is in this read. Returns 1 if the stream is lost.
 */
static __always_inline int walk_header(void *ctx, struct walk *w, struct fd_state *st,
				       struct scratch *bat)
{
	const __u8 *hdr = w->hdr;
	__u32 len = ((__u32)hdr[1] << 24) | ((__u32)hdr[2] << 16) | ((__u32)hdr[3] << 8) | hdr[4];
	__u32 body, avail, take, want;
	int cap;

	if (!backend_type(hdr[0]) || len < 4 || len > (1u << 30)) {
		/* a TLS record header: content type 20-24, version 3.x */
		bool tls = hdr[0] >= 20 && hdr[0] <= 24 && hdr[1] == 3;

		walk_desync(ctx, w, st, bat, tls ? DESYNC_TLS : DESYNC_BAD_HEADER);
		return 1;
	}
	body = len - 4;
	avail = w->n - w->pos;
	take = body < avail ? body : avail;
	st->type = hdr[0];
	st->body_len = body;
	st->body_left = body - take;
	st->copied = 0;
	st->cap = 0;
	if (hdr[0] == 'D') {
		/* a row: counted, skipped by its length, never copied */
		st->rows++;
		w->pos += take;
		return 0;
	}
	cap = msg_cap(hdr[0], body);
	if (cap >= 0) {
		st->cap = cap;
		want = (__u32)cap < avail ? (__u32)cap : avail;
		w->esrc = w->buf + w->pos;
		w->ewant = want;
		w->eoff = 0;
		walk_emit(ctx, w, st, bat);
		st->copied = want;
	}
	w->pos += take;
	return 0;
}

/* Keep the 1-4 bytes at the end of a read that begin a header. */
static __always_inline void walk_stash(struct walk *w, struct fd_state *st)
{
	__u32 have = st->hdr_have;

	for (int i = 0; i < 4; i++) {
		if (w->pos >= w->n || have >= 4)
			break;
		win_bytes(&w->win, w->buf, &st->hdr[have & 7], 1, w->pos);
		have++;
		w->pos++;
	}
	st->hdr_have = have;
}

/* Finish what the previous read left: the rest of a split header, or of a message body. */
static __noinline int walk_resume(void *ctx, struct walk *w, struct fd_state *st,
				  struct scratch *bat)
{
	__u32 avail, take, want;

	if (st->hdr_have) {
		walk_stash(w, st);
		if (st->hdr_have < 4 || w->pos >= w->n)
			return w->pos >= w->n;
		/* four bytes kept; the fifth is here */
		__builtin_memcpy(w->hdr, st->hdr, 4);
		if (win_bytes(&w->win, w->buf, &w->hdr[4], 1, w->pos)) {
			walk_desync(ctx, w, st, bat, DESYNC_READ_FAULT);
			return 1;
		}
		w->pos++;
		st->hdr_have = 0;
		return walk_header(ctx, w, st, bat);
	}
	if (st->body_left) {
		avail = w->n - w->pos;
		take = st->body_left < avail ? st->body_left : avail;
		if (st->copied < st->cap) {
			want = st->cap - st->copied;
			if (want > take)
				want = take;
			w->esrc = w->buf + w->pos;
			w->ewant = want;
			w->eoff = st->copied;
			walk_emit(ctx, w, st, bat);
			st->copied += want;
		}
		st->body_left -= take;
		w->pos += take;
	}
	return 0;
}

/* One whole message header from this read. Returns 1 when the read is done (or lost). */
static __noinline int walk_step(void *ctx, struct walk *w, struct fd_state *st, struct scratch *bat)
{
	if (w->pos >= w->n)
		return 1;
	if (w->n - w->pos < 5) {
		st->hdr_have = 0;
		walk_stash(w, st);
		return 1;
	}
	if (win_hdr(&w->win, w->buf, w->hdr, w->pos)) {
		walk_desync(ctx, w, st, bat, DESYNC_READ_FAULT);
		return 1;
	}
	w->pos += 5;
	return walk_header(ctx, w, st, bat);
}

/* A walk of n bytes read at buf from stream fd (a socket, or a TLS stream), starting now. */
static __always_inline void walk_init(struct walk *w, __u64 buf, __s32 fd, __u64 pid_tgid, __u32 n)
{
	w->buf = buf;
	w->fd = fd;
	w->pid_tgid = pid_tgid;
	w->n = n;
	w->pos = 0;
	w->tails = 0;
	w->win.len = 0;
	w->bat.n = 0;
	w->bat.len = 0;
	w->ts = bpf_ktime_get_ns();
	stat_add(ST_RECVS, 1);
}

/* The state of the walk's stream, if it is followed: `st` if the caller has it, else looked up. */
static __always_inline struct fd_state *walk_state(struct walk *w, struct fd_state *st)
{
	if (!st) {
		w->key.tgid = w->pid_tgid >> 32;
		w->key.fd = w->fd;
		st = bpf_map_lookup_elem(&fds, &w->key);
	}
	return st && (st->flags & FS_SYNCED) ? st : NULL;
}

/* Kernels without bpf_loop: WALK_STEPS messages per program run, then a tail call. */
static __noinline int walk_run(void *ctx, struct walk *w)
{
	struct fd_state *st = walk_state(w, NULL);
	struct scratch *bat = walk_scratch(w);
	int i;

	if (!st)
		return 0;
	if (w->tails == 0)
		win_fill(&w->win, w->buf, w->n);
	if (w->tails == 0 && walk_resume(ctx, w, st, bat))
		goto out;
	for (i = 0; i < WALK_STEPS; i++) {
		if (walk_step(ctx, w, st, bat))
			goto out;
	}
	if (w->pos >= w->n)
		goto out;
	walk_flush(ctx, w, st, bat);
	if (w->tails < WALK_TAILS) {
		w->tails++;
		bpf_tail_call(ctx, &walk_progs, 0);
	}
	walk_desync(ctx, w, st, bat, DESYNC_TOO_MANY);
out:
	walk_flush(ctx, w, st, bat);
	return 0;
}

struct loop_ctx {
	void *ctx;
	struct walk *w;
	struct fd_state *st;
	struct scratch *bat;
};

static long walk_loop_cb(__u32 i, void *data)
{
	struct loop_ctx *lc = data;

	(void)i;
	return walk_step(lc->ctx, lc->w, lc->st, lc->bat);
}

/*
 * Kernels with bpf_loop (5.17+): one program run walks up to WALK_LOOP_MAX messages. st: the
 * stream's state if the caller looked it up, else NULL.
 */
#define WALK_LOOP_MAX (1 << 20)

static __noinline void walk_run_loop(void *ctx, struct walk *w, struct fd_state *st)
{
	struct loop_ctx lc = {.ctx = ctx, .w = w};

	lc.st = walk_state(w, st);
	lc.bat = walk_scratch(w);
	if (!lc.st)
		return;
	win_fill(&w->win, w->buf, w->n);
	if (!walk_resume(ctx, w, lc.st, lc.bat)) {
		bpf_loop(WALK_LOOP_MAX, walk_loop_cb, &lc, 0);
		if (w->pos < w->n)
			walk_desync(ctx, w, lc.st, lc.bat, DESYNC_TOO_MANY);
	}
	walk_flush(ctx, w, lc.st, lc.bat);
}

#endif
