/* SPDX-License-Identifier: MIT */
/*
 * A request handed to libpq, seen by a uprobe: its text, its Python stack, its connection.
 *
 * Stack discipline. Kernels since 6.13 run BPF programs of 64 bytes of stack or more on a
 * per-CPU "private stack", while uprobe programs run preemptible (since sleepable uprobes): a
 * second thread hitting a probe on the same CPU while the first is preempted overwrites the
 * first one's stack, and the kernel dereferences garbage (seen here as an oops on 7.2). So every
 * function of the uprobe path keeps its stack under 64 bytes: what a request needs lives in a
 * per-thread work area (a map value), and the steps are separate subprograms. `make test`
 * checks the stack depth the verifier reports for every program.
 */
#ifndef SQLSPAN_REQUEST_BPF_H
#define SQLSPAN_REQUEST_BPF_H

struct req_work {
	struct ev_req r;		       /* the record, built here and copied out */
	char text_inline[SQLSPAN_TEXT_INLINE]; /* r.text: a short statement's text */
	struct fd_key key;		       /* (tgid, fd) of the connection's socket */
	struct fd_state init;		       /* a newly seen socket's state */
	struct nest_val nv;
	__u64 text; /* address of the statement text in the process, 0 if none */
	__u64 name; /* address of the statement name, 0 if none */
	__u64 ip;   /* where the probe hit */
	__u64 pid_tgid;
	__u64 hosts;		       /* PGconn.connhost, while the identity is read */
	__u32 which;		       /* PGconn.whichhost */
	__u32 pipeline;		       /* PGconn.pipelineStatus */
	__u32 outer;		       /* an outer call (PQexec & co.) */
	__u32 off;		       /* text bytes sent */
	__u8 cb[SQLSPAN_CONN_BLK + 8]; /* the PGconn's block (lib_range.blk_lo) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct req_work);
} works SEC(".maps");

_Static_assert(sizeof(struct req_work) <= sizeof(struct scratch), "req_work from zeroes");

/* The libpq of this process that contains the probed address. */
static __noinline struct lib_range *req_lib(struct req_work *rw)
{
	__u32 tgid = rw->r.h.pid;
	struct proc_libs *pl = bpf_map_lookup_elem(&libs, &tgid);

	if (!pl)
		return NULL;
	for (int i = 0; i < SQLSPAN_MAX_LIBS; i++) {
		if (rw->ip >= pl->lib[i].lo && rw->ip <= pl->lib[i].hi)
			return &pl->lib[i];
	}
	return NULL;
}

/* Set by the loader once it has placed a probe on an outer call (PQexec & co.). */
volatile __u32 outer_probes;

/* 1 if this is the inner call of an outer call already reported (PQexec -> PQsendQuery). */
static __noinline int req_nested(struct req_work *rw)
{
	__u32 tid = rw->r.h.tid;
	struct nest_val *nv;

	if (!outer_probes)
		return 0;
	rw->nv.conn = rw->r.conn;
	rw->nv.text = rw->text ? rw->text : rw->name;
	if (rw->outer) {
		bpf_map_update_elem(&nest, &tid, &rw->nv, BPF_ANY);
		return 0;
	}
	nv = bpf_map_lookup_elem(&nest, &tid);
	if (!nv)
		return 0;
	if (nv->conn == rw->nv.conn && nv->text == rw->nv.text) {
		bpf_map_delete_elem(&nest, &tid);
		return 1;
	}
	bpf_map_delete_elem(&nest, &tid);
	return 0;
}

static __noinline void read_ptr_str(char *dst, __u32 size, __u64 ptr_addr)
{
	__u64 ptr = 0;

	dst[0] = 0;
	if (bpf_probe_read_user(&ptr, sizeof(ptr), (const void *)ptr_addr) || !ptr)
		return;
	if (bpf_probe_read_user_str(dst, size & 255, (const void *)ptr) < 0)
		dst[0] = 0;
}

/* Who the connection is, read from its PGconn when its socket is first seen. */
static __noinline void req_ident(void *ctx, struct req_work *rw, struct lib_range *lib)
{
	struct ev_ident *e = rec_reserve(sizeof(*e));
	__u64 conn = rw->r.conn;

	if (!e) {
		stat_add(ST_DROP_OTHER, 1);
		return;
	}
	hdr_fill(&e->h, EV_IDENT, rw->pid_tgid, bpf_ktime_get_ns(), 0);
	e->conn = conn;
	e->fd = rw->r.fd;
	e->be_pid = 0;
	e->status = -1;
	e->host_type = -1;
	e->ssl = 0xff;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->port[0] = 0;
	e->host[0] = 0;
	e->db[0] = 0;
	e->user[0] = 0;
	if (lib->be_pid_off >= 0)
		bpf_probe_read_user(&e->be_pid, 4, (const void *)(conn + lib->be_pid_off));
	if (lib->status_off >= 0)
		bpf_probe_read_user(&e->status, 4, (const void *)(conn + lib->status_off));
	if (lib->ssl_off >= 0)
		bpf_probe_read_user(&e->ssl, 1, (const void *)(conn + lib->ssl_off));
	if (lib->db_off >= 0)
		read_ptr_str(e->db, sizeof(e->db), conn + lib->db_off);
	if (lib->user_off >= 0)
		read_ptr_str(e->user, sizeof(e->user), conn + lib->user_off);
	/* the host entry in use: connhost[whichhost] */
	rw->hosts = 0;
	rw->which = (__u32)-1;
	if (lib->connhost_off >= 0 && lib->which_off >= 0 && lib->host_size > 0) {
		bpf_probe_read_user(&rw->hosts, 8, (const void *)(conn + lib->connhost_off));
		bpf_probe_read_user(&rw->which, 4, (const void *)(conn + lib->which_off));
	}
	if (rw->hosts && rw->which < 64) {
		__u64 h = rw->hosts + (__u64)rw->which * lib->host_size;

		bpf_probe_read_user(&e->host_type, 4, (const void *)(h + lib->host_type));
		read_ptr_str(e->port, sizeof(e->port), h + lib->host_port);
		read_ptr_str(e->host, sizeof(e->host), h + lib->host_host);
		if (!e->host[0])
			read_ptr_str(e->host, sizeof(e->host), h + lib->host_addr);
	}
	if (rec_submit(ctx, e, sizeof(*e)))
		stat_add(ST_DROP_OTHER, 1);
}

_Static_assert(!(__builtin_offsetof(struct req_work, cb) & 3), "cb is 4-aligned (AL32)");

/* The int at PGconn offset `off`, from the block read (off within it: see conn_block). */
static __always_inline void cb_int(struct req_work *rw, struct lib_range *lib, __s16 off, void *dst)
{
	if (off >= 0)
		*(__u32 *)dst = AL32(rw->cb, (__u32)(off - lib->blk_lo) & (SQLSPAN_CONN_BLK - 4));
}

/* sock, pipelineStatus and be_pid in one read of the PGconn; 1 if done. */
static __noinline int req_conn_block(struct req_work *rw, struct lib_range *lib)
{
	__u32 n = ((__u32)(lib->blk_len - 1) & (SQLSPAN_CONN_BLK - 1)) + 1;

	if (bpf_probe_read_user(rw->cb, n, (const void *)(rw->r.conn + lib->blk_lo)))
		return 0;
	cb_int(rw, lib, lib->sock_off, &rw->r.fd);
	if (lib->pipe_off >= 0)
		cb_int(rw, lib, lib->pipe_off, &rw->pipeline);
	else
		rw->pipeline = 0;
	cb_int(rw, lib, lib->be_pid_off, &rw->r.be_pid);
	return 1;
}

/*
 * The connection: its socket, pipeline status and backend PID from the PGconn; the socket's
 * walk state (created, or put back at a message boundary when outside pipeline mode).
 */
static __noinline void req_conn(void *ctx, struct req_work *rw)
{
	struct lib_range *lib = req_lib(rw);
	struct fd_state *st;
	__u64 conn = rw->r.conn;

	rw->r.fd = -1;
	rw->r.be_pid = 0;
	rw->pipeline = 0xff; /* unknown */
	if (lib && lib->blk_len > 0 && req_conn_block(rw, lib)) {
		/* read in one go: sock, pipelineStatus, be_pid */
	} else if (lib) {
		if (lib->sock_off >= 0)
			bpf_probe_read_user(&rw->r.fd, 4, (const void *)(conn + lib->sock_off));
		if (lib->pipe_off >= 0)
			bpf_probe_read_user(&rw->pipeline, 4, (const void *)(conn + lib->pipe_off));
		else
			rw->pipeline = 0;
		if (lib->be_pid_off >= 0)
			bpf_probe_read_user(&rw->r.be_pid, 4,
					    (const void *)(conn + lib->be_pid_off));
	}
	rw->r.pipeline = rw->pipeline;
	if (rw->r.fd < 0)
		return;
	rw->key.tgid = rw->r.h.pid;
	rw->key.fd = rw->r.fd;
	st = bpf_map_lookup_elem(&fds, &rw->key);
	if (!st) {
		__builtin_memset(&rw->init, 0, sizeof(rw->init));
		rw->init.conn = conn;
		if (rw->r.pipeline == 0)
			rw->init.flags = FS_SYNCED;
		rw->init.epoch = sync_epoch;
		if (bpf_map_update_elem(&fds, &rw->key, &rw->init, BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&fds, &rw->key))
			stat_add(ST_FD_FULL, 1);
		rw->r.h.flags |= EVF_NEW_FD;
		st = bpf_map_lookup_elem(&fds, &rw->key);
	}
	if (!st)
		return;
	if (st->conn != conn) {
		/* the socket now belongs to another PGconn (or was taken for a wire socket when
		 * libpq connected): start over */
		st->conn = conn;
		st->flags &= ~(FS_SYNCED | FS_WIRE | FS_TLS);
		__builtin_memset(&st->front, 0, sizeof(st->front));
		rw->r.h.flags |= EVF_NEW_FD;
	}
	/*
	 * Outside pipeline mode libpq only sends when the connection is idle: all of the previous
	 * response has been read, so the stream is at a message boundary.
	 */
	if (rw->r.pipeline == 0 && (!(st->flags & FS_SYNCED) || fd_stale(st))) {
		/* stale and inside a message: a skipped read left it there (maps.bpf.h) */
		if (fd_resync(st))
			rw->r.h.flags |= EVF_GAP;
	}
	if (st->flags & FS_GAP)
		rw->r.h.flags |= EVF_GAP;
	if ((rw->r.h.flags & EVF_NEW_FD) && lib)
		req_ident(ctx, rw, lib);
}

struct text_ctx {
	struct req_work *rw;
	struct ev_text *t;
	void *ctx;
};

/* One chunk of the statement text; 1 when the text is over. */
static long text_cb(__u32 i, void *data)
{
	struct text_ctx *tc = data;
	struct req_work *rw = tc->rw;
	struct ev_text *t = tc->t;
	long r;

	if (i >= text_max_chunks) {
		t->data[0] = 0;
		bpf_probe_read_user(t->data, 1, (const void *)(rw->text + rw->off));
		if (t->data[0])
			rw->r.h.flags |= EVF_TEXT_CUT;
		return 1;
	}
	r = bpf_probe_read_user_str(t->data, SQLSPAN_TEXT_CHUNK,
				    (const void *)(rw->text + rw->off));
	if (r <= 0) {
		rw->r.h.flags |= EVF_TEXT_FAULT;
		return 1;
	}
	hdr_fill(&t->h, EV_TEXT, rw->pid_tgid, rw->r.h.ts, 0);
	t->seq = i;
	t->len = r - 1;
	rw->off += r - 1;
	rw->r.nchunks = i + 1;
	/* masked, not compared: a bound the verifier knows without tracking r */
	if (rec_output(tc->ctx, t, offsetof(struct ev_text, data) + ((__u64)r & 4095))) {
		stat_add(ST_DROP_TEXT, 1);
		rw->r.h.flags |= EVF_GAP;
		return 1;
	}
	return r < SQLSPAN_TEXT_CHUNK;
}

/* A short text, read into the request record itself; 1 if it fits there. */
static __noinline int req_text_inline(struct req_work *rw)
{
	long r = bpf_probe_read_user_str(rw->text_inline, SQLSPAN_TEXT_INLINE,
					 (const void *)rw->text);

	if (r <= 0) {
		rw->r.h.flags |= EVF_TEXT_FAULT;
		rw->r.text_len = 0;
		return 1;
	}
	if (r >= SQLSPAN_TEXT_INLINE)
		return 0;
	rw->r.text_len = r - 1;
	return 1;
}

/*
 * The statement text in chunks, each record as long as its text (built in the thread's scratch
 * area, then copied out). LOOPED: with bpf_loop (5.17+). Static: the request's work area is
 * handed over, not looked up again (each has one caller: verified once all the same).
 */
#define DEFINE_REQ_TEXT(NAME, LOOPED)                                                              \
	static __noinline int NAME(struct pt_regs *ctx, struct req_work *rw)                       \
	{                                                                                          \
		struct text_ctx tc = {.rw = rw, .ctx = ctx};                                       \
                                                                                                   \
		tc.rw->off = 0;                                                                    \
		tc.rw->r.nchunks = 0;                                                              \
		if (req_text_inline(tc.rw))                                                        \
			return 0;                                                                  \
		tc.t = scratch_get();                                                              \
		if (!tc.t)                                                                         \
			return 0;                                                                  \
		if (LOOPED) {                                                                      \
			bpf_loop(SQLSPAN_MAX_CHUNKS, text_cb, &tc, 0);                             \
		} else {                                                                           \
			for (__u32 i = 0; i < SQLSPAN_MAX_CHUNKS; i++) {                           \
				if (text_cb(i, &tc))                                               \
					break;                                                     \
			}                                                                          \
		}                                                                                  \
		tc.rw->r.text_len = tc.rw->off;                                                    \
		return 0;                                                                          \
	}

DEFINE_REQ_TEXT(req_text, 0)
DEFINE_REQ_TEXT(req_text_loop, 1)

/* The request record itself, after its text and stack. */
static __noinline void req_emit(void *ctx, struct req_work *rw)
{
	struct fd_state *st;

	rw->r.name[0] = 0;
	if (rw->name) {
		long n = bpf_probe_read_user_str(rw->r.name, sizeof(rw->r.name),
						 (const void *)rw->name);

		if (n == sizeof(rw->r.name))
			rw->r.h.flags |= EVF_NAME_CUT;
		else if (n < 0)
			rw->r.name[0] = 0;
	}
	if (rec_output(ctx, &rw->r,
		       sizeof(rw->r) +
			       (rw->r.nchunks ? 0 : rw->r.text_len & (SQLSPAN_TEXT_INLINE - 1)))) {
		stat_add(ST_DROP_REQ, 1);
		if (rw->r.fd >= 0) {
			st = bpf_map_lookup_elem(&fds, &rw->key);
			if (st)
				st->flags |= FS_GAP;
		}
		return;
	}
	stat_add(ST_REQS, 1);
	if (rw->r.fd >= 0 && (rw->r.h.flags & EVF_GAP)) {
		st = bpf_map_lookup_elem(&fds, &rw->key);
		if (st)
			st->flags &= ~FS_GAP;
	}
}

/* The request program, entered by tail call from every request probe (see req_enter). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} req_progs SEC(".maps");

/*
 * A request: `name` is a statement or portal name (0: none), `text` the SQL (0: none). Outer
 * calls (PQexec & co., probed only where the inner call could not be proven) arm `nest` so that
 * their inner PQsend* call is not reported twice. Each probe's own program only notes its
 * arguments and tail-calls one shared program: the verifier checks the request path once, not
 * once per libpq function (that made starting sqlspan several times slower).
 */
static __always_inline int req_enter(struct pt_regs *ctx, __u32 api_outer, __u64 conn, __u64 name,
				     __u64 text)
{
	struct req_work *rw;

	/* no check of the process: the kernel runs the probes of a PID for that PID only */
	if (!conn)
		return 0;
	rw = thread_entry(&works);
	if (!rw)
		return 0;
	rw->r.conn = conn;
	rw->r.api = api_outer & 0xffff;
	rw->outer = api_outer >> 16;
	rw->name = name;
	rw->text = text;
	bpf_tail_call(ctx, &req_progs, 0);
	stat_add(ST_DROP_REQ, 1); /* the tail call failed */
	return 0;
}

/* The request program; LOOPED: the variant for kernels with bpf_loop (the loader loads one). */
#define DEFINE_UP_REQUEST(NAME, TEXT, STACK)                                                       \
	SEC("uprobe")                                                                              \
	int NAME(struct pt_regs *ctx)                                                              \
	{                                                                                          \
		struct req_work *rw = thread_entry(&works);                                        \
                                                                                                   \
		if (!rw)                                                                           \
			return 0;                                                                  \
		if (req_start(ctx, rw))                                                            \
			return 0;                                                                  \
		if (rw->text)                                                                      \
			TEXT(ctx, rw);                                                             \
		if (rw->r.api != API_PIPELINE_SYNC)                                                \
			STACK(ctx, rw->pid_tgid, rw->r.h.ts);                                      \
		req_emit(ctx, rw);                                                                 \
		return 0;                                                                          \
	}

/* Everything before the text: the header, the nesting check, the connection. 1: skip it. */
static __noinline int req_start(struct pt_regs *ctx, struct req_work *rw)
{
	rw->pid_tgid = bpf_get_current_pid_tgid();
	rw->r.h.kind = EV_REQ;
	rw->r.h.pid = rw->pid_tgid >> 32;
	rw->r.h.tid = (__u32)rw->pid_tgid;
	rw->r.h.flags = 0;
	rw->ip = PT_REGS_IP(ctx);
	rw->r._pad0 = 0;
	rw->r._pad1 = 0;
	rw->r._pad2 = 0;
	rw->r.text_len = 0;
	rw->r.nchunks = 0;
	if (req_nested(rw))
		return 1;
	req_conn(ctx, rw);
	rw->r.h.ts = bpf_ktime_get_ns();
	return 0;
}

DEFINE_UP_REQUEST(up_request, req_text, send_stack)
DEFINE_UP_REQUEST(up_request_loop, req_text_loop, send_stack_loop)

#endif
