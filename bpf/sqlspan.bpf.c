// SPDX-License-Identifier: MIT
/*
 * sqlspan's kernel side: thin capture, filter and copy.
 *
 * - uprobes on libpq's request functions (PQsendQuery, PQsendQueryParams, ...): the statement text,
 *   the statement name, the PGconn and its socket, at the moment the application hands it over;
 * - recvfrom tracepoints on those sockets: the backend messages that end each statement;
 * - close, exit and mmap tracepoints: sockets and processes that go away, libraries that arrive.
 *
 * Everything is filtered by process in BPF; the loader attaches uprobes per process.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sqlspan.h"
#include "buffer.bpf.h"
#include "maps.bpf.h"
#include "wire.bpf.h"
#include "pystack.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Text chunks sent per statement at most (the loader sets it from --max-sql-bytes). */
const volatile __u32 text_max_chunks = 17;

/* The libpq range of this process that contains the probed address. */
static __always_inline struct lib_range *lib_of(__u32 tgid, __u64 ip)
{
	struct proc_libs *pl = bpf_map_lookup_elem(&libs, &tgid);

	if (!pl)
		return NULL;
	for (int i = 0; i < SQLSPAN_MAX_LIBS; i++) {
		if (ip >= pl->lib[i].lo && ip <= pl->lib[i].hi)
			return &pl->lib[i];
	}
	return NULL;
}

/*
 * Send the NUL-terminated text at `s` in chunks, each record as long as its text (built in the
 * per-CPU scratch area, then copied out). A global function, verified once. Returns
 * total | chunks << 32 | flags << 48.
 */
__noinline long send_text(struct pt_regs *ctx, __u64 pid_tgid, __u64 ts, __u64 s)
{
	struct ev_text *t = scratch_get();
	__u32 off = 0, i, flags = 0;

	if (!t)
		return (long)EVF_TEXT_FAULT << 48;
	for (i = 0; i < SQLSPAN_MAX_CHUNKS; i++) {
		__u64 size;
		long r;

		if (i >= text_max_chunks) {
			char c = 0;

			bpf_probe_read_user(&c, 1, (const void *)(s + off));
			if (c)
				flags |= EVF_TEXT_CUT;
			break;
		}
		r = bpf_probe_read_user_str(t->data, SQLSPAN_TEXT_CHUNK, (const void *)(s + off));
		if (r <= 0) {
			flags |= EVF_TEXT_FAULT;
			break;
		}
		hdr_fill(&t->h, EV_TEXT, pid_tgid, ts, 0);
		t->seq = i;
		t->len = r - 1;
		/* masked, not compared: a bound the verifier knows without tracking r */
		size = offsetof(struct ev_text, data) + ((__u64)r & 4095);
		if (rec_output(ctx, t, size)) {
			stat_add(ST_DROP_TEXT, 1);
			flags |= EVF_GAP;
			i++;
			break;
		}
		off += r - 1;
		if (r < SQLSPAN_TEXT_CHUNK) {
			i++;
			break;
		}
	}
	return (long)off | ((long)i << 32) | ((long)flags << 48);
}

static __always_inline void read_str(char *dst, __u32 size, __u64 ptr_addr)
{
	__u64 ptr = 0;

	dst[0] = 0;
	if (bpf_probe_read_user(&ptr, sizeof(ptr), (const void *)ptr_addr) || !ptr)
		return;
	if (bpf_probe_read_user_str(dst, size, (const void *)ptr) < 0)
		dst[0] = 0;
}

/* Who the connection is, read from its PGconn when its socket is first seen (once per socket). */
static __always_inline void send_ident(void *ctx, __u64 pid_tgid, struct lib_range *lib, __u64 conn,
				       __s32 fd)
{
	struct ev_ident *e = rec_reserve(sizeof(*e));
	__u64 hosts = 0;
	__s32 which = -1;

	if (!e) {
		stat_add(ST_DROP_OTHER, 1);
		return;
	}
	hdr_fill(&e->h, EV_IDENT, pid_tgid, bpf_ktime_get_ns(), 0);
	e->conn = conn;
	e->fd = fd;
	e->be_pid = 0;
	e->status = -1;
	e->host_type = -1;
	e->ssl = 0xff;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->port[0] = 0;
	e->host[0] = 0;
	if (lib->be_pid_off >= 0)
		bpf_probe_read_user(&e->be_pid, 4, (const void *)(conn + lib->be_pid_off));
	if (lib->status_off >= 0)
		bpf_probe_read_user(&e->status, 4, (const void *)(conn + lib->status_off));
	if (lib->ssl_off >= 0)
		bpf_probe_read_user(&e->ssl, 1, (const void *)(conn + lib->ssl_off));
	e->db[0] = 0;
	if (lib->db_off >= 0)
		read_str(e->db, sizeof(e->db), conn + lib->db_off);
	e->user[0] = 0;
	if (lib->user_off >= 0)
		read_str(e->user, sizeof(e->user), conn + lib->user_off);
	if (lib->connhost_off >= 0 && lib->which_off >= 0 && lib->host_size > 0) {
		bpf_probe_read_user(&hosts, 8, (const void *)(conn + lib->connhost_off));
		bpf_probe_read_user(&which, 4, (const void *)(conn + lib->which_off));
	}
	if (hosts && which >= 0 && which < 64) {
		__u64 h = hosts + (__u64)which * lib->host_size;

		bpf_probe_read_user(&e->host_type, 4, (const void *)(h + lib->host_type));
		read_str(e->port, sizeof(e->port), h + lib->host_port);
		read_str(e->host, sizeof(e->host), h + lib->host_host);
		if (!e->host[0])
			read_str(e->host, sizeof(e->host), h + lib->host_addr);
	}
	if (rec_submit(ctx, e, sizeof(*e)))
		stat_add(ST_DROP_OTHER, 1);
}

/*
 * A request handed to libpq. `name` is a statement or portal name (NULL: none), `text` the SQL
 * (NULL: none). Outer calls (PQexec & co., probed only where the inner call could not be proven)
 * arm `nest` so that their inner PQsend* call is not reported twice.
 */
static __always_inline int on_request(struct pt_regs *ctx, __u16 api, __u64 conn, const char *name,
				      const char *text, bool outer)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	struct lib_range *lib;
	struct fd_state *st;
	struct ev_req *r;
	__u32 flags = 0, total = 0;
	__s32 fd = -1, ps = 0xff, be_pid = 0;
	__u16 nchunks = 0;
	__u64 ts;

	if (!traced(tgid) || !conn)
		return 0;

	if (!outer) {
		struct nest_val *nv = bpf_map_lookup_elem(&nest, &tid);

		if (nv) {
			bool inner = nv->conn == conn && nv->text == (__u64)(text ? text : name);

			bpf_map_delete_elem(&nest, &tid);
			if (inner)
				return 0;
		}
	} else {
		struct nest_val nv = {.conn = conn, .text = (__u64)(text ? text : name)};

		bpf_map_update_elem(&nest, &tid, &nv, BPF_ANY);
	}

	lib = lib_of(tgid, PT_REGS_IP(ctx));
	if (lib) {
		if (lib->sock_off >= 0)
			bpf_probe_read_user(&fd, sizeof(fd), (const void *)(conn + lib->sock_off));
		if (lib->pipe_off >= 0)
			bpf_probe_read_user(&ps, sizeof(ps), (const void *)(conn + lib->pipe_off));
		else
			ps = 0;
		if (lib->be_pid_off >= 0)
			bpf_probe_read_user(&be_pid, sizeof(be_pid),
					    (const void *)(conn + lib->be_pid_off));
	}

	if (fd >= 0) {
		struct fd_key k = {.tgid = tgid, .fd = fd};

		st = bpf_map_lookup_elem(&fds, &k);
		if (!st) {
			struct fd_state init = {.conn = conn};

			if (ps == 0)
				init.flags = FS_SYNCED;
			if (bpf_map_update_elem(&fds, &k, &init, BPF_NOEXIST) &&
			    !bpf_map_lookup_elem(&fds, &k))
				stat_add(ST_FD_FULL, 1);
			flags |= EVF_NEW_FD;
			st = bpf_map_lookup_elem(&fds, &k);
		}
		if (st) {
			if (st->conn != conn) {
				/* the socket now belongs to another PGconn: start over */
				st->conn = conn;
				st->flags &= ~FS_SYNCED;
				flags |= EVF_NEW_FD;
			}
			/*
			 * Outside pipeline mode libpq only sends when the connection is idle: all
			 * of the previous response has been read, so the stream is at a message
			 * boundary.
			 */
			if (ps == 0 && !(st->flags & FS_SYNCED)) {
				st->flags |= FS_SYNCED;
				st->body_left = 0;
				st->hdr_have = 0;
				st->rows = 0;
			}
			if (st->flags & FS_GAP)
				flags |= EVF_GAP;
		}
	}

	if ((flags & EVF_NEW_FD) && lib)
		send_ident(ctx, pid_tgid, lib, conn, fd);

	ts = bpf_ktime_get_ns();
	if (text) {
		long packed = send_text(ctx, pid_tgid, ts, (__u64)text);

		total = (__u32)packed;
		nchunks = (packed >> 32) & 0xffff;
		flags |= (packed >> 48) & 0xffff;
	}
	if (api != API_PIPELINE_SYNC && bpf_map_lookup_elem(&pyprocs, &tgid))
		send_stack(ctx, pid_tgid, ts);

	r = rec_reserve(sizeof(*r));
	if (!r) {
		stat_add(ST_DROP_REQ, 1);
		goto lost;
	}
	hdr_fill(&r->h, EV_REQ, pid_tgid, ts, flags);
	r->conn = conn;
	r->fd = fd;
	r->api = api;
	r->pipeline = ps;
	r->_pad0 = 0;
	r->text_len = total;
	r->nchunks = nchunks;
	r->_pad1 = 0;
	r->be_pid = be_pid;
	r->_pad2 = 0;
	r->name[0] = 0;
	if (name) {
		long n = bpf_probe_read_user_str(r->name, sizeof(r->name), name);

		if (n == sizeof(r->name))
			r->h.flags |= EVF_NAME_CUT;
		else if (n < 0)
			r->name[0] = 0;
	}
	if (rec_submit(ctx, r, sizeof(*r))) {
		stat_add(ST_DROP_REQ, 1);
		goto lost;
	}
	stat_add(ST_REQS, 1);
	if (fd >= 0 && (flags & EVF_GAP)) {
		struct fd_key k = {.tgid = tgid, .fd = fd};

		st = bpf_map_lookup_elem(&fds, &k);
		if (st)
			st->flags &= ~FS_GAP;
	}
	return 0;
lost:
	if (fd >= 0) {
		struct fd_key k = {.tgid = tgid, .fd = fd};

		st = bpf_map_lookup_elem(&fds, &k);
		if (st)
			st->flags |= FS_GAP;
	}
	return 0;
}

/* int PQsendQuery(PGconn *conn, const char *query) */
SEC("uprobe")
int BPF_KPROBE(up_send_query, void *conn, const char *query)
{
	return on_request(ctx, API_SEND_QUERY, (__u64)conn, NULL, query, false);
}

/* int PQsendQueryParams(PGconn *conn, const char *command, int nParams, ...) */
SEC("uprobe")
int BPF_KPROBE(up_send_query_params, void *conn, const char *command)
{
	return on_request(ctx, API_SEND_QUERY_PARAMS, (__u64)conn, NULL, command, false);
}

/* int PQsendPrepare(PGconn *conn, const char *stmtName, const char *query, ...) */
SEC("uprobe")
int BPF_KPROBE(up_send_prepare, void *conn, const char *stmt, const char *query)
{
	return on_request(ctx, API_SEND_PREPARE, (__u64)conn, stmt, query, false);
}

/* int PQsendQueryPrepared(PGconn *conn, const char *stmtName, int nParams, ...) */
SEC("uprobe")
int BPF_KPROBE(up_send_query_prepared, void *conn, const char *stmt)
{
	return on_request(ctx, API_SEND_QUERY_PREPARED, (__u64)conn, stmt, NULL, false);
}

/* PQdescribePrepared / PQsendDescribePrepared(PGconn *conn, const char *stmt) */
SEC("uprobe")
int BPF_KPROBE(up_describe_prepared, void *conn, const char *stmt)
{
	return on_request(ctx, API_DESCRIBE_PREPARED, (__u64)conn, stmt, NULL, false);
}

/* PQdescribePortal / PQsendDescribePortal(PGconn *conn, const char *portal) */
SEC("uprobe")
int BPF_KPROBE(up_describe_portal, void *conn, const char *portal)
{
	return on_request(ctx, API_DESCRIBE_PORTAL, (__u64)conn, portal, NULL, false);
}

/* PQclosePrepared / PQsendClosePrepared(PGconn *conn, const char *stmt), libpq 17+ */
SEC("uprobe")
int BPF_KPROBE(up_close_prepared, void *conn, const char *stmt)
{
	return on_request(ctx, API_CLOSE_PREPARED, (__u64)conn, stmt, NULL, false);
}

/* PQclosePortal / PQsendClosePortal(PGconn *conn, const char *portal), libpq 17+ */
SEC("uprobe")
int BPF_KPROBE(up_close_portal, void *conn, const char *portal)
{
	return on_request(ctx, API_CLOSE_PORTAL, (__u64)conn, portal, NULL, false);
}

/* PQpipelineSync / PQsendPipelineSync(PGconn *conn) */
SEC("uprobe")
int BPF_KPROBE(up_pipeline_sync, void *conn)
{
	return on_request(ctx, API_PIPELINE_SYNC, (__u64)conn, NULL, NULL, false);
}

/* Outer synchronous calls, attached only where their inner call could not be proven. */
SEC("uprobe")
int BPF_KPROBE(up_exec, void *conn, const char *query)
{
	return on_request(ctx, API_SEND_QUERY, (__u64)conn, NULL, query, true);
}

SEC("uprobe")
int BPF_KPROBE(up_exec_params, void *conn, const char *command)
{
	return on_request(ctx, API_SEND_QUERY_PARAMS, (__u64)conn, NULL, command, true);
}

SEC("uprobe")
int BPF_KPROBE(up_prepare, void *conn, const char *stmt, const char *query)
{
	return on_request(ctx, API_SEND_PREPARE, (__u64)conn, stmt, query, true);
}

SEC("uprobe")
int BPF_KPROBE(up_exec_prepared, void *conn, const char *stmt)
{
	return on_request(ctx, API_SEND_QUERY_PREPARED, (__u64)conn, stmt, NULL, true);
}

static __always_inline void send_conn_event(void *ctx, __u32 kind, __u64 conn, __s32 fd, __u32 arg)
{
	struct ev_conn *e = rec_reserve(sizeof(*e));

	if (!e) {
		stat_add(ST_DROP_OTHER, 1);
		return;
	}
	hdr_fill(&e->h, kind, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), 0);
	e->conn = conn;
	e->fd = fd;
	e->arg = arg;
	if (rec_submit(ctx, e, sizeof(*e)))
		stat_add(ST_DROP_OTHER, 1);
}

/* PQfinish(conn) and PQreset*(conn): the PGconn ends or gets a new backend. */
static __always_inline int on_conn_end(struct pt_regs *ctx, __u64 conn, __u32 reset)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!traced(tgid) || !conn)
		return 0;
	send_conn_event(ctx, EV_FINISH, conn, -1, reset);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(up_finish, void *conn)
{
	return on_conn_end(ctx, (__u64)conn, 0);
}

SEC("uprobe")
int BPF_KPROBE(up_reset, void *conn)
{
	return on_conn_end(ctx, (__u64)conn, 1);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int tp_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	struct fd_key k = {.tgid = tgid, .fd = (__s32)ctx->args[0]};
	struct recv_args a = {};

	if (!traced(tgid) || !bpf_map_lookup_elem(&fds, &k))
		return 0;
	a.fd = k.fd;
	a.buf = ctx->args[1];
	bpf_map_update_elem(&recvs, &tid, &a, BPF_ANY);
	return 0;
}

/* Set up the per-CPU walk of a completed read of a tracked socket; NULL if there is none. */
static __always_inline struct walk *walk_begin(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct recv_args *a = bpf_map_lookup_elem(&recvs, &tid);
	struct walk *w;
	long ret = ctx->ret;

	if (!a)
		return NULL;
	if (ret > 0) {
		struct walk init = {};

		w = bpf_map_lookup_elem(&walks, &tid);
		if (!w) {
			bpf_map_update_elem(&walks, &tid, &init, BPF_ANY);
			w = bpf_map_lookup_elem(&walks, &tid);
		}
	} else {
		w = NULL;
	}
	if (!w) {
		bpf_map_delete_elem(&recvs, &tid);
		return NULL;
	}
	w->buf = a->buf;
	w->fd = a->fd;
	w->pid_tgid = pid_tgid;
	w->n = ret;
	w->pos = 0;
	w->tails = 0;
	bpf_map_delete_elem(&recvs, &tid);
	stat_add(ST_RECVS, 1);
	return w;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	struct walk *w = walk_begin(ctx);

	if (w)
		walk_run(ctx, w);
	return 0;
}

/* The same with bpf_loop (5.17+); the loader loads one of the two. */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_exit_recvfrom_loop(struct trace_event_raw_sys_exit *ctx)
{
	struct walk *w = walk_begin(ctx);

	if (w)
		walk_run_loop(ctx, w);
	return 0;
}

/* Continues a walk that did not fit in one program run (tail call target). */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_walk_more(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct walk *w = bpf_map_lookup_elem(&walks, &tid);

	if (w)
		walk_run(ctx, w);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct fd_key k = {.tgid = pid_tgid >> 32, .fd = (__s32)ctx->args[0]};
	struct fd_state *st;
	__u64 conn;

	if (!traced(k.tgid))
		return 0;
	st = bpf_map_lookup_elem(&fds, &k);
	if (!st)
		return 0;
	conn = st->conn;
	bpf_map_delete_elem(&fds, &k);
	send_conn_event(ctx, EV_CLOSE, conn, k.fd, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int tp_process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if ((__u32)pid_tgid != (pid_tgid >> 32) || !traced(pid_tgid >> 32))
		return 0;
	send_conn_event(ctx, EV_EXIT, 0, -1, 0);
	return 0;
}

#define SQLSPAN_PROT_EXEC 0x4

SEC("tracepoint/syscalls/sys_enter_mmap")
int tp_enter_mmap(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!(ctx->args[2] & SQLSPAN_PROT_EXEC) || (long)ctx->args[4] < 0 || !traced(tgid))
		return 0;
	send_conn_event(ctx, EV_MMAP, 0, (__s32)ctx->args[4], 0);
	return 0;
}
