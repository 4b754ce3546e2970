// SPDX-License-Identifier: MIT
/*
 * sqlspan's kernel side: thin capture, filter and copy.
 *
 * - uprobes on libpq's request functions (PQsendQuery, PQsendQueryParams, ...): the statement text,
 *   the statement name, the PGconn and its socket, at the moment the application hands it over;
 * - recvfrom tracepoints on those sockets: the backend messages that end each statement;
 * - sendto tracepoints on the sockets of drivers that speak the protocol themselves (asyncpg):
 *   the frontend messages, walked by front.bpf.h;
 * - close, exit and mmap tracepoints: sockets and processes that go away, libraries that arrive
 *   (at the syscalls' exits on bpf_loop kernels: no syscall entry hook at all, see tp_exit_close).
 *
 * Everything is filtered by process in BPF; the loader attaches uprobes per process.
 */
/*
 * No CO-RE: the kernel structures read here are ABI (pt_regs, the syscall tracepoints' records)
 * but for one field, whose offset the loader finds (task_fsbase_off). A CO-RE relocation would
 * make libbpf parse the whole kernel BTF at every attach (~50 ms here).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sqlspan.h"
#include "buffer.bpf.h"
#include "maps.bpf.h"
#include "wire.bpf.h"
#include "pystack.bpf.h"
#include "front.bpf.h"
#include "request.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* errno values the syscall exits check for (vmlinux.h has no macros) */
#define SQLSPAN_EBADF	    9
#define SQLSPAN_EINPROGRESS 115

/* int PQsendQuery(PGconn *conn, const char *query) */
SEC("uprobe")
int BPF_KPROBE(up_send_query, void *conn, const char *query)
{
	return req_enter(ctx, API_SEND_QUERY, (__u64)conn, 0, (__u64)query);
}

/* int PQsendQueryParams(PGconn *conn, const char *command, int nParams, ...) */
SEC("uprobe")
int BPF_KPROBE(up_send_query_params, void *conn, const char *command)
{
	return req_enter(ctx, API_SEND_QUERY_PARAMS, (__u64)conn, 0, (__u64)command);
}

/* int PQsendPrepare(PGconn *conn, const char *stmtName, const char *query, ...) */
SEC("uprobe")
int BPF_KPROBE(up_send_prepare, void *conn, const char *stmt, const char *query)
{
	return req_enter(ctx, API_SEND_PREPARE, (__u64)conn, (__u64)stmt, (__u64)query);
}

/* int PQsendQueryPrepared(PGconn *conn, const char *stmtName, int nParams, ...) */
SEC("uprobe")
int BPF_KPROBE(up_send_query_prepared, void *conn, const char *stmt)
{
	return req_enter(ctx, API_SEND_QUERY_PREPARED, (__u64)conn, (__u64)stmt, 0);
}

/* PQdescribePrepared / PQsendDescribePrepared(PGconn *conn, const char *stmt) */
SEC("uprobe")
int BPF_KPROBE(up_describe_prepared, void *conn, const char *stmt)
{
	return req_enter(ctx, API_DESCRIBE_PREPARED, (__u64)conn, (__u64)stmt, 0);
}

/* PQdescribePortal / PQsendDescribePortal(PGconn *conn, const char *portal) */
SEC("uprobe")
int BPF_KPROBE(up_describe_portal, void *conn, const char *portal)
{
	return req_enter(ctx, API_DESCRIBE_PORTAL, (__u64)conn, (__u64)portal, 0);
}

/* PQclosePrepared / PQsendClosePrepared(PGconn *conn, const char *stmt), libpq 17+ */
SEC("uprobe")
int BPF_KPROBE(up_close_prepared, void *conn, const char *stmt)
{
	return req_enter(ctx, API_CLOSE_PREPARED, (__u64)conn, (__u64)stmt, 0);
}

/* PQclosePortal / PQsendClosePortal(PGconn *conn, const char *portal), libpq 17+ */
SEC("uprobe")
int BPF_KPROBE(up_close_portal, void *conn, const char *portal)
{
	return req_enter(ctx, API_CLOSE_PORTAL, (__u64)conn, (__u64)portal, 0);
}

/* PQpipelineSync / PQsendPipelineSync(PGconn *conn) */
SEC("uprobe")
int BPF_KPROBE(up_pipeline_sync, void *conn)
{
	return req_enter(ctx, API_PIPELINE_SYNC, (__u64)conn, 0, 0);
}

/* Outer synchronous calls, attached only where their inner call could not be proven. */
SEC("uprobe")
int BPF_KPROBE(up_exec, void *conn, const char *query)
{
	return req_enter(ctx, API_SEND_QUERY | 1 << 16, (__u64)conn, 0, (__u64)query);
}

SEC("uprobe")
int BPF_KPROBE(up_exec_params, void *conn, const char *command)
{
	return req_enter(ctx, API_SEND_QUERY_PARAMS | 1 << 16, (__u64)conn, 0, (__u64)command);
}

SEC("uprobe")
int BPF_KPROBE(up_prepare, void *conn, const char *stmt, const char *query)
{
	return req_enter(ctx, API_SEND_PREPARE | 1 << 16, (__u64)conn, (__u64)stmt, (__u64)query);
}

SEC("uprobe")
int BPF_KPROBE(up_exec_prepared, void *conn, const char *stmt)
{
	return req_enter(ctx, API_SEND_QUERY_PREPARED | 1 << 16, (__u64)conn, (__u64)stmt, 0);
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
	w = ret > 0 ? thread_walk() : NULL;
	if (!w) {
		bpf_map_delete_elem(&recvs, &tid);
		return NULL;
	}
	walk_init(w, a->buf, a->fd, pid_tgid, ret);
	bpf_map_delete_elem(&recvs, &tid);
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

/*
 * The same with bpf_loop (5.17+; the loader loads one of the two). These kernels also have
 * bpf_task_pt_regs (5.15+): the socket and the buffer are read from the registers the syscall
 * saved, so no entry tracepoint is needed (one program run less for every recvfrom on the host,
 * and no per-thread map update for the traced ones).
 */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_exit_recvfrom_loop(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid;
	struct pt_regs *regs;
	struct fd_state *st;
	struct fd_key k;
	struct walk *w;
	long ret = ctx->ret;

	if (ret <= 0)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	k.tgid = pid_tgid >> 32;
	if (!traced(k.tgid))
		return 0;
	regs = syscall_regs();
	k.fd = (__s32)regs->di;
	st = bpf_map_lookup_elem(&fds, &k);
	if (!st)
		return 0;
	w = thread_walk();
	if (!w)
		return 0;
	walk_init(w, regs->si, k.fd, pid_tgid, ret);
	walk_run_loop(ctx, w, st);
	return 0;
}

#define SQLSPAN_NR_SENDMSG 46 /* sendmsg's syscall number on x86-64 (vmlinux/'s one arch) */

/* A send's buffers: sendmsg's iovecs, or sendto's one buffer; how many to walk, 0 if none. */
static __noinline __u64 send_iovecs(long nr, struct fwalk *w)
{
	if (nr == SQLSPAN_NR_SENDMSG)
		return sendmsg_iovecs(w);
	w->iov = 0;
	w->vec[0] = w->arg;
	w->vec[1] = w->left;
	return 1;
}

/*
 * What a process that follows the protocol on its sockets sends (bpf_loop kernels only): the
 * frontend messages of its database sockets (front.bpf.h). A sendto is walked as a sendmsg of one
 * buffer; sendmsg (asyncio's writelines since Python 3.12) iovec after iovec. One program for
 * both exits (the loader attaches it to sys_exit_sendmsg too): the kernel verifies the walk and
 * the Python stack once, not twice (~40,000 instructions less at attach).
 */
SEC("tracepoint/syscalls/sys_exit_sendto")
int tp_exit_send_loop(struct trace_event_raw_sys_exit *ctx)
{
	struct fwalk *w = front_entry(ctx);
	__u64 niov;

	if (!w)
		return 0;
	niov = send_iovecs(ctx->id, w);
	if (niov)
		front_send(ctx, w, niov);
	return 0;
}

/*
 * TLS plaintext (tls.bpf.h), bpf_loop kernels: libssl's SSL_do_handshake names the SSL object
 * the next ClientHello belongs to; SSL_write_ex's (Python's ssl) or SSL_write's (libpq) buffer
 * is walked like a send; SSL_read_ex's or SSL_read's like a read, at its return (a return
 * probe: they never switch stacks, unlike the greenlets around them).
 */
SEC("uprobe")
int BPF_KPROBE(up_ssl_handshake, void *ssl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct ssl_last s = {.ssl = (__u64)ssl};

	if (wire_process(pid_tgid >> 32))
		bpf_map_update_elem(&ssl_last, &tid, &s, BPF_ANY);
	return 0;
}

/* The walk of an SSL_write_ex's buffer (w->fd: its TLS stream, -1 if not bound to a socket). */
static __noinline struct fwalk *tls_write_walk(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid(), num = PT_REGS_PARM3(ctx);
	__u32 tgid = pid_tgid >> 32;
	struct fwalk *w;
	__s32 fd;

	if (!num || !wire_process(tgid))
		return NULL;
	fd = tls_stream(tgid, PT_REGS_PARM1(ctx)); /* -1: not bound yet */
	w = thread_fwalk();
	if (!w)
		return NULL;
	w->key.tgid = tgid;
	w->key.fd = fd;
	w->fd = fd;
	w->arg = PT_REGS_PARM2(ctx);
	w->pid_tgid = pid_tgid;
	w->left = num;
	w->ts = bpf_ktime_get_ns();
	w->iov = 0;
	w->vec[0] = w->arg;
	w->vec[1] = num;
	return w;
}

/*
 * An SSL object not bound to a socket yet: if what it takes is whole frontend messages, the
 * thread's next TLS record sent names its socket (front_socket, tls_bind).
 */
static __noinline void tls_probe_unbound(struct fwalk *w, __u64 ssl)
{
	__u32 tid = (__u32)w->pid_tgid;

	w->buf = w->vec[0];
	w->n = w->vec[1];
	w->pos = 0;
	if (front_probe(w) == 2) {
		struct ssl_last last = {.ssl = ssl | 1, .buf = w->vec[0], .len = w->vec[1]};

		bpf_map_update_elem(&ssl_last, &tid, &last, BPF_ANY);
	}
}

SEC("uprobe")
int up_ssl_write(struct pt_regs *ctx)
{
	struct fwalk *w = tls_write_walk(ctx);

	if (!w)
		return 0;
	if (w->fd < 0)
		tls_probe_unbound(w, PT_REGS_PARM1(ctx));
	/* a stream lost track of stays so until its socket is closed: never probed again */
	else if (bpf_map_lookup_elem(&fds, &w->key))
		front_send(ctx, w, 1);
	return 0;
}

/* An SSL_read_ex (nread: its size_t *readbytes) or SSL_read (nread 0: it returns the count). */
static __always_inline int ssl_read_enter(__u64 ssl, __u64 buf, __u64 nread)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	struct ssl_read r = {};

	if (!wire_process(tgid))
		return 0;
	r.fd = tls_stream(tgid, ssl);
	if (r.fd < 0)
		return 0;
	r.buf = buf;
	r.nread = nread;
	bpf_map_update_elem(&ssl_reads, &tid, &r, BPF_ANY);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(up_ssl_read, void *ssl, void *buf, __u64 num, __u64 *nread)
{
	return ssl_read_enter((__u64)ssl, (__u64)buf, (__u64)nread);
}

/* libpq's: SSL_read(ssl, buf, int num) returns what it read */
SEC("uprobe")
int BPF_KPROBE(up_ssl_read_int, void *ssl, void *buf)
{
	return ssl_read_enter((__u64)ssl, (__u64)buf, 0);
}

SEC("uretprobe")
int BPF_KRETPROBE(ur_ssl_read, int ok)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct ssl_read *r = bpf_map_lookup_elem(&ssl_reads, &tid);
	struct walk *w;
	__u64 n = 0;

	if (!r)
		return 0;
	if (!r->nread) /* SSL_read: the count, or <= 0 */
		n = ok > 0 ? (__u64)ok : 0;
	else if (ok != 1 || bpf_probe_read_user(&n, sizeof(n), (const void *)r->nread))
		n = 0;
	if (!n || n > (1u << 30) || !(w = thread_walk())) {
		bpf_map_delete_elem(&ssl_reads, &tid);
		return 0;
	}
	walk_init(w, r->buf, r->fd, pid_tgid, n);
	bpf_map_delete_elem(&ssl_reads, &tid);
	walk_run_loop(ctx, w, NULL);
	return 0;
}

/*
 * Where the sockets of processes that may speak the protocol themselves connect: a wire
 * connection's server address, known even when the connection is gone before its records are
 * read. At the syscall's exit, its arguments from the registers it saved (bpf_loop kernels have
 * bpf_task_pt_regs): sqlspan attaches no syscall entry tracepoint on these kernels, and then the
 * kernel has no entry hook to call on any syscall of the host (see tp_exit_close).
 */
SEC("tracepoint/syscalls/sys_exit_connect")
int tp_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	struct ev_connect *e;
	struct pt_regs *regs;
	__u64 len, addr;

	/* connected, or connecting (a non-blocking socket) */
	if ((ctx->ret && ctx->ret != -SQLSPAN_EINPROGRESS) ||
	    !wire_process(bpf_get_current_pid_tgid() >> 32))
		return 0;
	regs = syscall_regs();
	addr = regs->si;
	len = regs->dx;
	e = rec_reserve(sizeof(*e));
	if (!e) {
		stat_add(ST_DROP_OTHER, 1);
		return 0;
	}
	hdr_fill(&e->h, EV_CONNECT, bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), 0);
	e->fd = (__s32)regs->di;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->len = len < sizeof(e->addr) ? len : sizeof(e->addr);
	if (bpf_probe_read_user(e->addr, sizeof(e->addr), (const void *)addr) &&
	    bpf_probe_read_user(e->addr, 16, (const void *)addr))
		e->len = 0;
	if (rec_submit(ctx, e, sizeof(*e)))
		stat_add(ST_DROP_OTHER, 1);
	return 0;
}

/* Continues a walk that did not fit in one program run (tail call target). */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int tp_walk_more(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct scratch *s = bpf_map_lookup_elem(&scratches, &tid);

	if (s)
		walk_run(ctx, walk_in(s));
	return 0;
}

/* A traced process closed fd: the socket's state goes. */
static __always_inline int on_close(void *ctx, __u32 tgid, __s32 fd)
{
	struct fd_key k = {.tgid = tgid, .fd = fd};
	struct fd_state *st;
	__u32 arg;
	__u64 conn;

	st = bpf_map_lookup_elem(&fds, &k);
	if (!st)
		return 0;
	conn = st->conn;
	/* a walked stream not at a known boundary since skipped runs (a TLS socket's own bytes
	 * are not walked) */
	arg = !(st->flags & FS_TLS) && fd_stale(st) ? EV_CLOSE_STALE : 0;
	if (st->flags & FS_TLS)
		tls_close(&k);
	bpf_map_delete_elem(&fds, &k);
	send_conn_event(ctx, EV_CLOSE, conn, k.fd, arg);
	return 0;
}

/* Kernels without bpf_loop (and so maybe without bpf_task_pt_regs): at the entry. */
SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!traced(tgid))
		return 0;
	return on_close(ctx, tgid, (__s32)ctx->args[0]);
}

/*
 * The others: at the exit, the descriptor from the registers the syscall saved. With no syscall
 * entry tracepoint attached, the kernel calls no entry hook at all: every syscall of the traced
 * process (and of the host) is spared one (~0.3 µs a statement for asyncpg's nine syscalls, perf
 * samples). close releases the descriptor whatever it returns, but EBADF: it named none. A thread
 * that gets the same number from another call between the close and this exit (microseconds)
 * would have its new socket forgotten: its next send takes it up again (front_socket), without
 * its StartupMessage.
 */
SEC("tracepoint/syscalls/sys_exit_close")
int tp_exit_close(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct pt_regs *regs;

	if (ctx->ret == -SQLSPAN_EBADF || !traced(tgid))
		return 0;
	regs = syscall_regs();
	return on_close(ctx, tgid, (__s32)regs->di);
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

/* A traced process mapped a file executable: a library may have arrived. */
static __always_inline int on_mmap(void *ctx, __u64 prot, __s64 fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!(prot & SQLSPAN_PROT_EXEC) || fd < 0 || !traced(tgid))
		return 0;
	send_conn_event(ctx, EV_MMAP, 0, (__s32)fd, 0);
	return 0;
}

/* Kernels without bpf_loop: at the entry. */
SEC("tracepoint/syscalls/sys_enter_mmap")
int tp_enter_mmap(struct trace_event_raw_sys_enter *ctx)
{
	return on_mmap(ctx, ctx->args[2], (__s64)ctx->args[4]);
}

/*
 * The others: at the exit (see tp_exit_close), once the mapping is made: prot and fd saved. Only
 * for processes whose loader has no probe (up_loader): the program runs at every mmap of the
 * host, and Python's allocator maps and unmaps arenas all the time (twice per statement of the
 * asyncpg bench app).
 */
SEC("tracepoint/syscalls/sys_exit_mmap")
int tp_exit_mmap(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs;

	if (ctx->ret < 0)
		return 0;
	regs = syscall_regs();
	return on_mmap(ctx, regs->dx, (__s64)regs->r8);
}

/*
 * The dynamic loader's hook for debuggers (_dl_debug_state, its r_brk): called whenever it is
 * about to change, or has changed, the list of loaded objects (dlopen, dlclose). Where it can be
 * probed at no cost until hit (uprobe_multi links), libraries are watched here instead of at
 * every mmap.
 */
SEC("uprobe")
int up_loader(struct pt_regs *ctx)
{
	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	send_conn_event(ctx, EV_MMAP, 0, -1, 0);
	return 0;
}

/* A traced process exec'd: a new image, a new loader (userspace looks again, mmap included). */
SEC("tracepoint/sched/sched_process_exec")
int tp_process_exec(void *ctx)
{
	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	send_conn_event(ctx, EV_MMAP, 0, -1, EV_MMAP_EXEC);
	return 0;
}

/*
 * Run by the loader (BPF_PROG_TEST_RUN), never attached: reserves and discards ctx[0] records
 * of a page each (at most SQLSPAN_RING_TOUCH_RECS), so that each page of the ring they span is
 * written once. The first write to each page of a fresh ring costs several µs on a virtual
 * machine that fills its page tables on demand (~9 µs a page here, 1-2 µs a statement over the
 * first 8 MiB of records): paid by sqlspan instead of by the traced threads.
 */
SEC("raw_tp")
int ring_touch(__u64 *ctx)
{
	__u64 n = ctx[0];

	/* loaded only with a ring buffer (main.c): no use_ringbuf test */
	for (int i = 0; i < SQLSPAN_RING_TOUCH_RECS; i++) {
		void *r;

		if (i >= n)
			break;
		r = bpf_ringbuf_reserve(&events, SQLSPAN_RING_TOUCH_SIZE, 0);
		if (!r)
			break;
		bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
	}
	return 0;
}
