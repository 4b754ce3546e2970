// SPDX-License-Identifier: MIT
/*
 * sqlspan: trace the SQL statements a running process sends to PostgreSQL.
 *
 * Lifecycle: check the system -> open the BPF object, set its read-only config -> load -> attach
 * the socket tracepoints and the libpq uprobes of each traced process -> poll records into the
 * span assembler -> print spans -> on exit detach everything and print a summary.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <linux/perf_event.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "sqlspan.skel.h"
#include "kbtf.h"
#include "output.h"
#include "pgident.h"
#include "sockpeer.h"
#include "reorder.h"
#include "sysinfo.h"
#include "tracer.h"

static volatile sig_atomic_t exiting;

static void on_signal(int sig)
{
	(void)sig;
	if (exiting) /* a second Ctrl-C: leave now */
		_exit(130);
	exiting = 1;
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	static int verbose;

	if (!fmt) { /* configuration call */
		verbose = level;
		return 0;
	}
	if (level == LIBBPF_DEBUG && verbose < 2)
		return 0;
	if (level == LIBBPF_INFO && verbose < 1)
		return 0;
	return vfprintf(stderr, fmt, args);
}

static void die_line(const char *msg)
{
	fprintf(stderr, "sqlspan: %s\n", msg);
}

/* ---- hooks for the assembler ---- */

/* A socket's peer as an identity: .../.s.PGSQL.5432 -> directory as host, port from the name. */
static void peer_ident(const char *addr, int port, bool is_unix, struct conn_ident *out)
{
	if (is_unix) {
		ident_from_unix_path(addr, out);
	} else {
		out->host = strdup(addr);
		out->port = port;
	}
}

/*
 * A local server's side of a socket (peer_ino: the other end's inode): what of the backend
 * process holding it (user, database, PID) `id` does not have yet. false if none holds it.
 */
static bool backend_fill(unsigned long peer_ino, struct conn_ident *id)
{
	char user[64] = "", db[64] = "";
	pid_t bpid;

	if (!peer_ino || pg_backend_of(peer_ino, &bpid, user, sizeof(user), db, sizeof(db)))
		return false;
	if (!id->backend_pid)
		id->backend_pid = bpid;
	if (!id->user && user[0])
		id->user = strdup(user);
	if (!id->db && db[0])
		id->db = strdup(db);
	return true;
}

/*
 * The sockets a wire-traced process has open when sqlspan attaches: where each leads, noted now
 * (a connection may be gone by the time its records are read).
 */
static void wire_peers(struct tracer *t, pid_t pid)
{
	char path[64];
	struct dirent *d;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	dir = opendir(path);
	if (!dir)
		return;
	while ((d = readdir(dir))) {
		struct conn_ident id = {0};
		unsigned long peer_ino;
		char addr[256];
		int port, fd;
		bool is_unix;

		if (d->d_name[0] < '0' || d->d_name[0] > '9')
			continue;
		fd = atoi(d->d_name);
		if (sock_peer(pid, fd, addr, sizeof(addr), &port, &is_unix, &peer_ino))
			continue;
		peer_ident(addr, port, is_unix, &id);
		backend_fill(peer_ino, &id); /* a local server: its backend */
		asm_peer(t->as, pid, fd, &id);
		conn_ident_free(&id);
	}
	closedir(dir);
}

static void hook_ident(void *arg, uint32_t pid, uint64_t conn, int fd, struct conn_ident *out)
{
	struct tracer *t = arg;

	if (!conn) { /* a wire socket: where it leads */
		char addr[256];
		int port;
		bool is_unix;

		memset(out, 0, sizeof(*out));
		if (sock_peer(pid, fd, addr, sizeof(addr), &port, &is_unix, NULL) == 0) {
			peer_ident(addr, port, is_unix, out);
			out->known = true;
		}
		return;
	}
	pgident_read(pid, conn, probes_layout(t, pid), out);
	if (!out->known)
		vlog(t, "PID %u: could not read PGconn %#lx", pid, (unsigned long)conn);
}

/* A wire socket past its StartupMessage: user, database, backend PID from its local backend. */
static void hook_backend(void *arg, uint32_t pid, int fd, struct conn_ident *id)
{
	unsigned long peer_ino = 0;
	char addr[256];
	bool is_unix;
	int port;

	(void)arg;
	if (!sock_peer((pid_t)pid, fd, addr, sizeof(addr), &port, &is_unix, &peer_ino) &&
	    backend_fill(peer_ino, id))
		id->known = true;
}

static void hook_py(void *arg, const struct ev_stack *st, size_t size, bool want_text,
		    struct span_py *out)
{
	struct tracer *t = arg;

	pystacks_resolve(&t->py, st, size, want_text, out);
}

/*
 * What userspace learnt of a process's Python objects, for the BPF side to read at each
 * statement: where SQLAlchemy's Connection keeps its engine, how to find the running asyncio
 * Task's name. The rest of the process's py_cfg (some of it written by the BPF side) is kept.
 */
static int gs_fast_count(const struct py_learnt *lr)
{
	int n = 0;

	for (int i = 0; i < SQLSPAN_GS_FAST; i++)
		n += lr->gs_fast[i] != 0;
	return n;
}

static void hook_py_learnt(void *arg, const struct pyproc *pp)
{
	struct tracer *t = arg;
	uint32_t key = pp->pid;
	struct py_cfg cfg;

	if (bpf_map__lookup_elem(t->skel->maps.pyprocs, &key, sizeof(key), &cfg, sizeof(cfg), 0))
		return;
	cfg.lr = pp->lr;
	if (pystacks_all_learnt(pp))
		cfg.sa_wake_left = 0; /* learnt: the engine and the task come with the stack */
	bpf_map__update_elem(t->skel->maps.pyprocs, &key, sizeof(key), &cfg, sizeof(cfg),
			     BPF_EXIST);
	vlog(t,
	     "PID %d: read at each statement: Connection.engine (type %#lx, slot %d), asyncio "
	     "Task names (Task type %#lx, name at +%d); greenlets not walked for %d "
	     "AsyncConnection/AsyncSession methods (Session type %#lx)",
	     pp->pid, (unsigned long)pp->lr.sa_type, pp->lr.sa_slot,
	     (unsigned long)pp->lr.task_type, pp->lr.task_name_off, gs_fast_count(&pp->lr),
	     (unsigned long)pp->lr.ss_type);
}

/* A long-lived code object whose identity the BPF side no longer reads (or a freed slot). */
static void hook_hot_set(void *arg, uint32_t slot, const struct hot_code *hc)
{
	struct tracer *t = arg;

	if (bpf_map__update_elem(t->skel->maps.hot_codes, &slot, sizeof(slot), hc, sizeof(*hc),
				 BPF_ANY))
		vlog(t, "cannot write hot_codes[%u]: %s", slot, strerror(errno));
}

/* A CPython process: tell the BPF side where its structures are, so it reads its stacks. */
static void python_setup(struct tracer *t, struct proc_target *p)
{
	struct py_target pt;
	struct py_cfg cfg;
	struct pyproc *pp;
	const struct py_layout *l = &pt.layout;
	uint32_t key = p->pid;
	char why[256];
	enum py_detect_result r = py_detect(p->pid, &pt, why, sizeof(why));

	if (r == PY_NOT_PYTHON)
		return;
	if (r != PY_FOUND) {
		fprintf(stderr,
			"sqlspan: warning: PID %d: %s: spans will have no Python call sites\n",
			p->pid, why);
		return;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.runtime = pt.runtime;
	cfg.interp_head = l->runtime_interpreters_head;
	cfg.threads_head = l->interp_threads_head;
	cfg.tstate_next = l->tstate_next;
	cfg.tstate_thread_id = l->tstate_thread_id;
	cfg.tstate_frame = l->tstate_frame;
	cfg.cframe_frame = l->cframe_frame;
	cfg.frame_code = l->frame_code;
	cfg.frame_previous = l->frame_previous;
	cfg.frame_instr = l->frame_instr;
	cfg.frame_owner = l->frame_owner;
	cfg.frame_localsplus = l->frame_localsplus;
	cfg.owner_cstack = l->owner_cstack;
	cfg.owner_first_incomplete = l->owner_first_incomplete;
	cfg.code_tagged = l->code_tagged;
	cfg.max_frames = t->cli.stack_depth;
	cfg.site_only = !t->cli.stack;
	/* SQLAlchemy's greenlets: the BPF side learns where things are as they show up */
	cfg.frame_type = pt.frame_type;
	cfg.method_type = pt.method_type;
	cfg.dict_type = pt.dict_type;
	cfg.tuple_type = pt.tuple_type;
	cfg.dict_keys = l->dict_keys;
	cfg.dict_values = l->dict_values;
	cfg.keys_log2_index_bytes = l->keys_log2_index_bytes;
	cfg.keys_kind = l->keys_kind;
	cfg.keys_nentries = l->keys_nentries;
	cfg.keys_indices = l->keys_indices;
	cfg.tuple_size = l->tuple_size;
	cfg.tuple_items = l->tuple_items;
	cfg.gs_ctx_off = -1;
	cfg.gl_pimpl_off = 32; /* PyGreenlet{PyObject_HEAD; weakreflist; dict; pimpl} */
	cfg.gl_frame_off = -1;
	cfg.fo_frame_off = 24; /* PyFrameObject{PyObject_HEAD; f_back; f_frame}, 3.11 to 3.14 */
	cfg.code_name = l->code_name;
	cfg.str_ascii = l->unicode_ascii_data;
	cfg.gs_search = 0; /* until greenlet is seen loaded (probes_scan) */
	/* SQLAlchemy's Connection.engine, asyncio task names: the rest is learnt (cfg.lr) */
	cfg.sa_mode = l->values_valid >= 0 ? SA_VALUES_INLINE
		      : l->managed_tagged  ? SA_VALUES_312
		      : l->managed_values  ? SA_VALUES_311
					   : SA_VALUES_NONE;
	cfg.sa_managed_dict = l->managed_dict;
	cfg.sa_managed_values = l->managed_values;
	cfg.sa_dict_values = l->dict_values;
	cfg.sa_wake_left = 64;
	/* asyncio task names: str and int objects as the BPF side copies them */
	cfg.str_type = pt.str_type;
	cfg.int_type = pt.int_type;
	cfg.str_length = l->unicode_length;
	cfg.str_state = l->unicode_state;
	cfg.long_tag = l->long_tag;
	cfg.long_digits = l->long_digits;
	cfg.long_tagged = l->long_tagged;
	/* one read gives both pointers of a frame's code identity where they are 8 bytes apart */
	cfg.code_ident =
		l->code_name - l->code_filename == 8 && l->code_qualname - l->code_name == 8
			? l->code_filename
			: -1;
	pp = pystacks_add(&t->py, p->pid, &pt);
	if (pp)
		cfg.lr = pp->lr;
	if (!pp || bpf_map__update_elem(t->skel->maps.pyprocs, &key, sizeof(key), &cfg, sizeof(cfg),
					BPF_ANY)) {
		fprintf(stderr, "sqlspan: warning: PID %d: cannot set up Python stacks\n", p->pid);
		return;
	}
	vlog(t, "PID %d: CPython %u.%u.%u (%s), _PyRuntime at %#lx, offsets from %s", p->pid,
	     pt.version >> 24, (pt.version >> 16) & 0xff, (pt.version >> 8) & 0xff, pt.binary,
	     (unsigned long)pt.runtime, pt.from_debug_offsets ? "_Py_DebugOffsets" : "tables");
}

static void hook_txn(void *arg, const struct txn_span *txn)
{
	struct tracer *t = arg;

	char *text = NULL;
	size_t len = 0;
	FILE *f;

	if (!t->cli.json || !(f = open_memstream(&text, &len)))
		return;
	out_json_txn(f, txn, t->mono2real);
	if (fclose(f) == 0)
		outq_push(&t->held, text, len, false); /* after its statements, in order */
	else
		free(text);
}

static const char *hook_exe(void *arg, uint32_t pid)
{
	struct tracer *t = arg;

	for (int i = 0; i < t->nprocs; i++) {
		if (t->procs[i].pid == (pid_t)pid)
			return strcmp(t->procs[i].exe, "?") ? t->procs[i].exe : NULL;
	}
	return NULL;
}

static void hook_span(void *arg, const struct span *s)
{
	struct tracer *t = arg;
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	if (s->end_ns - s->start_ns < t->cli.min_duration_ns) {
		t->filtered++;
		return;
	}
	t->shown++;
	f = open_memstream(&text, &len);
	if (!f)
		return;
	if (t->cli.json)
		out_json(f, s, t->mono2real);
	else
		out_table_row(f, s, t->mono2real, t->width);
	if (fclose(f) == 0)
		outq_push(&t->held, text, len, t->cli.json);
	else
		free(text);
}

/*
 * Write out what was held since the last read of the kernel's skipped-run count (see outq.h);
 * near_loss: it grew since.
 */
static void release_held(struct tracer *t, bool near_loss)
{
	if (outq_flush(&t->held, stdout, near_loss) && errno == EPIPE)
		exiting = 1; /* the reader went away (| head): stop cleanly */
}

/* ---- records ---- */

static struct reorder *ro;	      /* perf buffers only: per-CPU streams merged by time */
#define REORDER_WINDOW_NS 50000000ULL /* how long a record waits there for earlier ones */

/* A stack record, as soon as it is read (perf buffers: before it waits to be put in order). */
static void stack_early(struct tracer *t, const void *data, size_t size)
{
	const struct ev_hdr *h = data;

	if (size >= sizeof(struct ev_stack) && h->kind == EV_STACK)
		pystacks_prefetch(&t->py, data, size);
}

static int on_record(void *ctx, void *data, size_t size)
{
	struct tracer *t = ctx;
	const struct ev_hdr *h = data;

	if (size >= sizeof(*h) && h->kind == EV_MMAP) {
		/* a new image has a new loader (its probe may not follow): every mmap, from now */
		if (size >= sizeof(struct ev_conn) &&
		    ((const struct ev_conn *)data)->arg == EV_MMAP_EXEC)
			tracer_watch_mmap(t);
		/* a library arrives, or the process exec'd: look again, name included */
		for (int i = 0; i < t->nprocs; i++) {
			if (t->procs[i].pid == (pid_t)h->pid)
				proc_exe_name(h->pid, t->procs[i].exe, sizeof(t->procs[i].exe));
		}
		t->rescan = true;
	}
	if (size >= sizeof(*h) && h->kind == EV_EXIT)
		t->rescan = true;
	if (!ro)
		stack_early(t, data, size);
	asm_record(t->as, data, size);
	return 0;
}

static void on_perf_sample(void *ctx, int cpu, void *data, __u32 size)
{
	(void)cpu;
	stack_early(ctx, data, size);
	if (reorder_add(ro, data, size))
		on_record(ctx, data, size);
}

/* Raw perf records: samples carry one of our records, PERF_RECORD_LOST counts losses. */
static enum bpf_perf_event_ret on_perf_event(void *ctx, int cpu, struct perf_event_header *ev)
{
	struct tracer *t = ctx;

	if (ev->type == PERF_RECORD_SAMPLE) {
		struct {
			struct perf_event_header h;
			__u32 size;
			char data[];
		} *s = (void *)ev;

		on_perf_sample(t, cpu, s->data, s->size);
	} else if (ev->type == PERF_RECORD_LOST) {
		struct {
			struct perf_event_header h;
			__u64 id, lost;
		} *l = (void *)ev;

		t->perf_lost += l->lost;
	}
	return LIBBPF_PERF_EVENT_CONT;
}

static void release_ordered(struct tracer *t, bool all)
{
	const void *rec;
	size_t size;
	uint64_t horizon = all ? UINT64_MAX : mono_now_ns() - REORDER_WINDOW_NS;

	while ((rec = reorder_pop(ro, horizon, &size))) {
		on_record(t, (void *)rec, size);
		reorder_release(ro);
	}
}

/* A BPF counter summed over CPUs. */
static uint64_t stat_sum(struct tracer *t, uint32_t k)
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t total = 0, *vals;

	if (ncpu <= 0)
		return 0;
	vals = calloc(ncpu, sizeof(*vals));
	if (!vals)
		return 0;
	if (!bpf_map__lookup_elem(t->skel->maps.stats, &k, sizeof(k), vals, ncpu * sizeof(*vals),
				  0)) {
		for (int c = 0; c < ncpu; c++)
			total += vals[c];
	}
	free(vals);
	return total;
}

/*
 * Probe hits the kernel did not run our programs for: it skips a program while another BPF
 * program is active on the same CPU (on kernels where uprobe programs can be preempted, a
 * preempted one counts). Each skipped request is a statement with no span: reported as lost.
 */
static uint64_t kernel_misses(struct tracer *t, bool report_stats)
{
	struct bpf_program *prog;
	uint64_t total = 0;

	bpf_object__for_each_program(prog, t->skel->obj)
	{
		struct bpf_prog_info info;
		__u32 len = sizeof(info);
		int fd = bpf_program__fd(prog);

		memset(&info, 0, sizeof(info));
		if (fd >= 0 && !bpf_obj_get_info_by_fd(fd, &info, &len)) {
			total += info.recursion_misses;
			/* with sysctl kernel.bpf_stats_enabled=1: where the BPF time goes (make
			 * bench) */
			if (info.run_cnt && t->cli.verbose && report_stats)
				vlog(t, "bpf time: %s: %llu runs, %llu ns each, %llu ns in all",
				     bpf_program__name(prog), (unsigned long long)info.run_cnt,
				     (unsigned long long)(info.run_time_ns / info.run_cnt),
				     (unsigned long long)info.run_time_ns);
			if (info.recursion_misses && t->cli.verbose > 1)
				vlog(t, "the kernel skipped %s %llu times", bpf_program__name(prog),
				     (unsigned long long)info.recursion_misses);
		}
	}
	return total;
}

/* Events lost in the kernel: BPF counters plus the perf buffers' own. */
static uint64_t lost_events(struct tracer *t, uint64_t *desync)
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t total = t->perf_lost + kernel_misses(t, false), *vals;

	*desync = 0;
	if (ncpu <= 0)
		return total;
	vals = calloc(ncpu, sizeof(*vals));
	if (!vals)
		return total;
	for (uint32_t k = ST_DROP_TEXT; k <= ST_DESYNC; k++) {
		if (bpf_map__lookup_elem(t->skel->maps.stats, &k, sizeof(k), vals,
					 ncpu * sizeof(*vals), 0))
			continue;
		for (int c = 0; c < ncpu; c++) {
			if (k == ST_DESYNC)
				*desync += vals[c];
			else
				total += vals[c];
		}
	}
	free(vals);
	return total;
}

/* ---- processes ---- */

static void announce(struct proc_target *p)
{
	for (int i = 0; i < p->nlibs; i++) {
		if (!p->libs[i].lo)
			continue;
		fprintf(stderr, "sqlspan: tracing PID %d (%s): %s%s\n", p->pid, p->exe,
			p->libs[i].shown,
			p->libpq_wire ? " (its statements read off the sockets)" : "");
		p->announced = true;
		break;
	}
	if (p->wire && !(p->libpq_wire && p->announced)) {
		fprintf(stderr,
			"sqlspan: tracing PID %d (%s): the PostgreSQL protocol on its "
			"sockets%s%s\n",
			p->pid, p->exe, p->wire_shown[0] ? ": " : " (--wire)", p->wire_shown);
		p->announced = true;
	}
}

static void wire_start(struct tracer *t, struct proc_target *p);

static void check_procs(struct tracer *t)
{
	for (int i = 0; i < t->nprocs; i++) {
		struct proc_target *p = &t->procs[i];

		if (!p->alive)
			continue;
		if (!proc_alive(p->pid)) {
			p->alive = false;
			fprintf(stderr, "sqlspan: PID %d exited\n", p->pid);
			probes_detach(t, p);
			continue;
		}
		if (t->rescan || p->waiting) {
			proc_exe_name(p->pid, p->exe, sizeof(p->exe)); /* it may have exec'd */
			probes_scan(t, p);
			wire_start(t, p); /* asyncpg imported after the attach */
			if ((p->nmapped || p->wire) && p->waiting)
				p->waiting = false;
			if ((p->nmapped || p->wire) && !p->announced)
				announce(p);
		}
	}
	t->rescan = false;
}

static int alive_count(struct tracer *t)
{
	int n = 0;

	for (int i = 0; i < t->nprocs; i++)
		n += t->procs[i].alive;
	return n;
}

/* ---- setup ---- */

static int skip_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	(void)data;
	(void)size;
	return 0;
}

/*
 * Write every page of the fresh ring once (ring_touch, sqlspan.bpf.c): records of a page each,
 * reserved and discarded, then read past. On a VM whose page tables are filled on demand the
 * first write to a page costs several µs, which the traced threads would otherwise pay over
 * their first ring's worth of statements (~18 ms for 8 MiB here). Done before any probe is
 * attached: on a one-CPU 7.x guest, doing it while the app's first connections were being
 * traced made the kernel skip more of their program runs.
 */
static void ring_prefault(struct tracer *t)
{
	uint64_t pages = ((uint64_t)t->cli.ring_mb << 20) / (SQLSPAN_RING_TOUCH_SIZE + 8);
	uint64_t per = pages / 2 < SQLSPAN_RING_TOUCH_RECS ? pages / 2 : SQLSPAN_RING_TOUCH_RECS;
	int fd = bpf_program__fd(t->skel->progs.ring_touch);
	unsigned long long t0 = mono_now_ns();
	struct ring_buffer *rb;

	rb = ring_buffer__new(bpf_map__fd(t->skel->maps.events), skip_record, NULL, NULL);
	if (!rb)
		return;
	for (uint64_t done = 0; per && done < pages && !exiting; done += per) {
		LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &per, .ctx_size_in = sizeof(per));

		if (bpf_prog_test_run_opts(fd, &opts)) {
			vlog(t, "the ring's pages not written ahead: %s", strerror(errno));
			break;
		}
		ring_buffer__consume(rb);
	}
	ring_buffer__free(rb);
	vlog(t, "the ring's %u MiB written ahead in %.1f ms", t->cli.ring_mb,
	     (mono_now_ns() - t0) / 1e6);
}

/*
 * Where the BPF side finds a thread's fs base (its TLS, where CPython keeps the thread's state):
 * task_struct.thread.fsbase, read off the kernel's BTF here rather than by a CO-RE relocation.
 * Without it, no Python call sites.
 */
static void find_task_fsbase(struct tracer *t)
{
	static const struct kbtf_step path[] = {{"task_struct", "thread"},
						{"thread_struct", "fsbase"}};
	unsigned long long t0 = mono_now_ns();
	char msg[256];
	uint32_t off;
	int fd;

	if (t->cli.no_python)
		return;
	fd = open("/sys/kernel/btf/vmlinux", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		snprintf(msg, sizeof(msg), "cannot open the kernel's BTF: %s", strerror(errno));
	if (fd < 0 || kbtf_offset(fd, path, 2, 64 << 10, &off, msg, sizeof(msg))) {
		fprintf(stderr, "sqlspan: warning: %s: spans will have no Python call sites\n",
			msg);
		t->cli.no_python = true;
	} else {
		t->skel->rodata->task_fsbase_off = off;
		vlog(t, "task_struct.thread.fsbase at +%u (the kernel's BTF read in %.1f ms)", off,
		     (mono_now_ns() - t0) / 1e6);
	}
	if (fd >= 0)
		close(fd);
}

/*
 * The maps' sizes for this run: creating a preallocated hash map fills every entry up front
 * (~20 ms for the 65536 sockets of fds here), and a map is created even if no loaded program
 * uses it.
 */
static void size_maps(struct tracer *t)
{
	struct sqlspan_bpf *skel = t->skel;
	struct bpf_map *grow[] = {skel->maps.fds, skel->maps.ssl_fds, skel->maps.fd_ssls};
	struct utsname un;

	/* used by libpq's uprobe programs only (request.bpf.h) */
	if (libpq_on_wire(t)) {
		bpf_map__set_max_entries(skel->maps.works, 1);
		bpf_map__set_max_entries(skel->maps.nest, 1);
	}
	/* recvfrom's arguments are kept from entry to exit only without bpf_loop; TLS needs it */
	if (t->use_loop) {
		bpf_map__set_max_entries(skel->maps.recvs, 1);
	} else {
		bpf_map__set_max_entries(skel->maps.ssl_fds, 1);
		bpf_map__set_max_entries(skel->maps.fd_ssls, 1);
	}
	/*
	 * Sockets and TLS streams: entries allocated as they come on 6.1+, whose hash maps take
	 * them from the BPF allocator (bpf_mem_alloc), safe in any program. Before, a tracing
	 * program's run-time allocation is unsafe and makes the kernel warn: preallocated there.
	 */
	if (uname(&un) || !kernel_at_least(un.release, 6, 1))
		return;
	for (size_t i = 0; i < sizeof(grow) / sizeof(grow[0]); i++)
		bpf_map__set_map_flags(grow[i], bpf_map__map_flags(grow[i]) | BPF_F_NO_PREALLOC);
	vlog(t, "socket maps allocated as they fill (kernel %s)", un.release);
}

static int open_and_load(struct tracer *t)
{
	struct sqlspan_bpf *skel = sqlspan_bpf__open();
	uint32_t chunks;
	int err;

	if (!skel) {
		fprintf(stderr, "sqlspan: cannot open the BPF object: %s\n", strerror(errno));
		return -1;
	}
	t->skel = skel;
	t->use_ringbuf =
		!t->cli.perf_buffer && libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, NULL) == 1;
	if (!t->cli.perf_buffer && !t->use_ringbuf)
		fprintf(stderr,
			"sqlspan: this kernel has no BPF ring buffer: using perf buffers\n");
	skel->rodata->use_ringbuf = t->use_ringbuf;
	/* one of the two read walkers: bpf_loop where the kernel has it, tail calls otherwise */
	t->use_loop = !t->cli.no_bpf_loop &&
		      libbpf_probe_bpf_helper(BPF_PROG_TYPE_TRACEPOINT, BPF_FUNC_loop, NULL) == 1;
	bpf_program__set_autoload(skel->progs.tp_exit_recvfrom_loop, t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_exit_recvfrom, !t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_walk_more, !t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_enter_recvfrom, !t->use_loop);
	probes_autoload(t);
	size_maps(t);
	bpf_program__set_autoload(skel->progs.tp_exit_send_loop, t->use_loop);
	/* syscall entries: only where the exits cannot read the arguments (see tp_exit_close) */
	bpf_program__set_autoload(skel->progs.tp_exit_connect, t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_enter_close, !t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_exit_close, t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_enter_mmap, !t->use_loop);
	bpf_program__set_autoload(skel->progs.tp_exit_mmap, t->use_loop);
	bpf_program__set_autoload(skel->progs.up_ssl_handshake, t->use_loop);
	bpf_program__set_autoload(skel->progs.up_ssl_write, t->use_loop);
	bpf_program__set_autoload(skel->progs.up_ssl_read, t->use_loop);
	bpf_program__set_autoload(skel->progs.ur_ssl_read, t->use_loop);
	vlog(t, "reads walked with %s", t->use_loop ? "bpf_loop" : "bounded loops and tail calls");
	chunks = (t->cli.max_sql_bytes + SQLSPAN_TEXT_CHUNK - 2) / (SQLSPAN_TEXT_CHUNK - 1);
	if (chunks > SQLSPAN_MAX_CHUNKS - 1)
		chunks = SQLSPAN_MAX_CHUNKS - 1;
	skel->rodata->text_max_chunks = chunks;
	find_task_fsbase(t);
	skel->rodata->python_stacks = !t->cli.no_python;
	if (t->use_ringbuf) {
		bpf_map__set_max_entries(skel->maps.events, t->cli.ring_mb << 20);
		skel->rodata->wakeup_bytes = (uint64_t)(t->cli.ring_mb << 20) / 8;
	} else {
		bpf_map__set_type(skel->maps.events, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
		bpf_map__set_key_size(skel->maps.events, sizeof(int));
		bpf_map__set_value_size(skel->maps.events, sizeof(int));
		bpf_map__set_max_entries(skel->maps.events, 0);
	}
	/* uprobes that cost the process nothing until hit (ulink.h) */
	t->uprobe_multi = !t->cli.perf_uprobes && ulink_multi_supported();
	if (t->uprobe_multi)
		ulink_use_multi(skel->obj);
	vlog(t, "uprobes attached as %s", t->uprobe_multi ? "uprobe_multi links" : "perf events");
	/* libraries seen loaded at the loader's probe: bpf_loop kernels, uprobe_multi links */
	bpf_program__set_autoload(skel->progs.up_loader, t->use_loop && t->uprobe_multi);
	bpf_program__set_autoload(skel->progs.ring_touch, t->use_ringbuf);
	err = sqlspan_bpf__load(skel);
	if (err) {
		fprintf(stderr,
			"sqlspan: cannot load the BPF programs (%s); run with -v for the "
			"verifier's log\n",
			strerror(-err));
		return -1;
	}
	if (!libpq_on_wire(t)) {
		uint32_t zero = 0;
		int fd = bpf_program__fd(t->use_loop ? skel->progs.up_request_loop
						     : skel->progs.up_request);

		if (bpf_map__update_elem(skel->maps.req_progs, &zero, sizeof(zero), &fd, sizeof(fd),
					 BPF_ANY)) {
			fprintf(stderr, "sqlspan: cannot set up the request program: %s\n",
				strerror(errno));
			return -1;
		}
	}
	if (!t->use_loop) {
		uint32_t zero = 0;
		int fd = bpf_program__fd(skel->progs.tp_walk_more);

		if (bpf_map__update_elem(skel->maps.walk_progs, &zero, sizeof(zero), &fd,
					 sizeof(fd), BPF_ANY)) {
			fprintf(stderr, "sqlspan: cannot set up the message walker: %s\n",
				strerror(errno));
			return -1;
		}
	}
	if (t->use_ringbuf)
		ring_prefault(t);
	return 0;
}

/* A tracepoint of sqlspan's; 0, or -1 said on stderr. */
static int attach_tp(struct tracer *t, struct bpf_program *prog, const char *cat, const char *name)
{
	struct bpf_link *l;
	char msg[256];

	if (ensure_tracefs(msg, sizeof(msg))) {
		die_line(msg);
		return -1;
	}
	if (t->ntp_links >= (int)(sizeof(t->tp_links) / sizeof(t->tp_links[0]))) {
		fprintf(stderr, "sqlspan: too many tracepoints\n");
		return -1;
	}
	l = bpf_program__attach_tracepoint(prog, cat, name);
	if (!l) {
		fprintf(stderr, "sqlspan: cannot attach to tracepoint %s:%s: %s\n", cat, name,
			strerror(errno));
		return -1;
	}
	t->tp_links[t->ntp_links++] = l;
	return 0;
}

int tracer_watch_mmap(struct tracer *t)
{
	if (t->mmap_watched)
		return 0;
	if (t->use_loop ? attach_tp(t, t->skel->progs.tp_exit_mmap, "syscalls", "sys_exit_mmap")
			: attach_tp(t, t->skel->progs.tp_enter_mmap, "syscalls", "sys_enter_mmap"))
		return -1;
	t->mmap_watched = true;
	t->rescan = true; /* what was loaded before it was there */
	vlog(t, "libraries watched at every mmap");
	return 0;
}

static int attach_tracepoints(struct tracer *t)
{
	struct {
		struct bpf_program *prog;
		const char *cat, *name;
	} tps[] = {
		/* the bpf_loop variant reads the arguments at exit (see sqlspan.bpf.c) */
		{t->use_loop ? NULL : t->skel->progs.tp_enter_recvfrom, "syscalls",
		 "sys_enter_recvfrom"},
		{t->use_loop ? t->skel->progs.tp_exit_recvfrom_loop
			     : t->skel->progs.tp_exit_recvfrom,
		 "syscalls", "sys_exit_recvfrom"},
		{t->use_loop ? NULL : t->skel->progs.tp_enter_close, "syscalls", "sys_enter_close"},
		{t->use_loop ? t->skel->progs.tp_exit_close : NULL, "syscalls", "sys_exit_close"},
		{t->skel->progs.tp_process_exit, "sched", "sched_process_exit"},
		{t->skel->progs.tp_process_exec, "sched", "sched_process_exec"},
	};
	bool mmap = false;

	for (size_t i = 0; i < sizeof(tps) / sizeof(tps[0]); i++) {
		if (tps[i].prog && attach_tp(t, tps[i].prog, tps[i].cat, tps[i].name))
			return -1;
	}
	/* the loaders of all the processes probed (probes_scan), or every mmap watched */
	for (int i = 0; i < t->nprocs; i++)
		mmap |= !t->procs[i].loader.is_multi;
	return mmap ? tracer_watch_mmap(t) : 0;
}

/*
 * The frontend of wire sockets (asyncpg; bpf_loop kernels only): attached once a traced process
 * needs them, so that libpq-only runs do not pay a program run for every send on the host.
 */
static int attach_wire_tracepoints(struct tracer *t)
{
	struct {
		struct bpf_program *prog;
		const char *name;
	} tps[] = {
		{t->skel->progs.tp_exit_send_loop, "sys_exit_sendto"},
		{t->skel->progs.tp_exit_send_loop, "sys_exit_sendmsg"}, /* the same program */
		{t->skel->progs.tp_exit_connect, "sys_exit_connect"},
	};

	if (t->wire_attached || !t->use_loop)
		return 0;
	for (size_t i = 0; i < sizeof(tps) / sizeof(tps[0]); i++) {
		struct bpf_link *l =
			bpf_program__attach_tracepoint(tps[i].prog, "syscalls", tps[i].name);

		if (!l) {
			fprintf(stderr, "sqlspan: cannot attach to tracepoint syscalls:%s: %s\n",
				tps[i].name, strerror(errno));
			return -1;
		}
		t->tp_links[t->ntp_links++] = l;
	}
	t->wire_attached = true;
	vlog(t, "following the protocol on sockets: sendto, sendmsg and connect tracepoints");
	return 0;
}

/* A process whose sockets are to be followed: the tracepoints, and its sockets already open. */
static void wire_start(struct tracer *t, struct proc_target *p)
{
	if ((!p->wire && !p->wire_ahead) || p->wire_started || !t->use_loop)
		return;
	if (attach_wire_tracepoints(t))
		return;
	wire_peers(t, p->pid);
	p->wire_started = true;
}

static int terminal_width(void)
{
	struct winsize ws;
	const char *c = getenv("COLUMNS");

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40)
		return ws.ws_col;
	if (c && atoi(c) >= 40)
		return atoi(c);
	return 160;
}

static void summary(struct tracer *t, uint64_t open_at_end)
{
	const struct asm_stats *st = asm_stats(t->as);
	uint64_t desync, lost = lost_events(t, &desync);

	fprintf(stderr,
		"sqlspan: %llu spans (%llu ok, %llu error, %llu aborted, %llu result unknown, "
		"%llu closed, %llu exited)",
		(unsigned long long)st->spans, (unsigned long long)st->by_result[RES_OK],
		(unsigned long long)st->by_result[RES_ERROR],
		(unsigned long long)st->by_result[RES_ABORTED],
		(unsigned long long)st->by_result[RES_UNKNOWN],
		(unsigned long long)st->by_result[RES_CLOSED],
		(unsigned long long)st->by_result[RES_EXITED]);
	if (t->filtered)
		fprintf(stderr, ", %llu below --min-duration", (unsigned long long)t->filtered);
	fprintf(stderr, "; %llu events lost; %llu spans open at exit\n", (unsigned long long)lost,
		(unsigned long long)open_at_end);
	if (desync || st->texts_lost || st->orphan_msgs || st->orphan_texts || st->bad_records)
		fprintf(stderr,
			"sqlspan: %llu socket streams not followed, %llu texts incomplete, %llu "
			"unmatched messages, %llu unmatched texts, %llu bad records\n",
			(unsigned long long)desync, (unsigned long long)st->texts_lost,
			(unsigned long long)st->orphan_msgs, (unsigned long long)st->orphan_texts,
			(unsigned long long)st->bad_records);
	kernel_misses(t, true);
	vlog(t, "probe hits: %llu requests, %llu socket reads walked, %llu messages sent",
	     (unsigned long long)stat_sum(t, ST_REQS), (unsigned long long)stat_sum(t, ST_RECVS),
	     (unsigned long long)stat_sum(t, ST_MSGS));
	if (t->use_ringbuf)
		vlog(t,
		     "reader woken early by a filling ring: %llu times (at each %llu KiB waiting)",
		     (unsigned long long)stat_sum(t, ST_WAKEUPS),
		     (unsigned long long)(t->skel->rodata->wakeup_bytes >> 10));
	if (t->py.nprocs)
		vlog(t,
		     "sqlalchemy.engine.url: %llu read at the statement, %llu from a live "
		     "Connection, "
		     "%llu remembered by dialect, %llu unknown",
		     (unsigned long long)t->py.urls_from[URL_STATEMENT],
		     (unsigned long long)t->py.urls_from[URL_LIVE],
		     (unsigned long long)t->py.urls_from[URL_REMEMBERED],
		     (unsigned long long)t->py.urls_from[URL_NONE]);
	if (t->py.nprocs) {
		vlog(t, "long-lived code objects named without reads: %u, %llu found freed since",
		     t->py.nhot, (unsigned long long)t->py.hot_dropped);
		vlog(t,
		     "Python stack reads that failed: %llu (a page fault the kernel did not serve "
		     "each: about a probe's trap, charged to the traced thread)",
		     (unsigned long long)stat_sum(t, ST_PY_READ_FAILED));
	}
	if (st->sessions_unseen)
		vlog(t,
		     "wire sockets first seen past their StartupMessage (opened before attach, or "
		     "its record lost): %llu, %llu without user and database, %llu of which "
		     "identified by their backend",
		     (unsigned long long)st->sessions_unseen,
		     (unsigned long long)st->sessions_asked,
		     (unsigned long long)st->sessions_found);
	if (st->keys_asked)
		vlog(t,
		     "wire sessions whose BackendKeyData went unseen (its record lost): %llu, %llu "
		     "of which given their backend PID by the system",
		     (unsigned long long)st->keys_asked, (unsigned long long)st->keys_found);
	if (st->desyncs)
		vlog(t,
		     "streams not followed: %llu bad header, %llu too many messages in one read, "
		     "%llu unreadable buffer",
		     (unsigned long long)st->desync_why[DESYNC_BAD_HEADER],
		     (unsigned long long)st->desync_why[DESYNC_TOO_MANY],
		     (unsigned long long)st->desync_why[DESYNC_READ_FAULT]);
}

int main(int argc, char **argv)
{
	static struct tracer tr;
	struct tracer *t = &tr;
	struct asm_hooks hooks = {.ident = hook_ident,
				  .backend = hook_backend,
				  .exe = hook_exe,
				  .py_resolve = hook_py,
				  .span = hook_span,
				  .txn = hook_txn,
				  .arg = t};
	struct ring_buffer *rb = NULL;
	struct perf_buffer *pb = NULL;
	unsigned long long start, last_check = 0, last_lost_report = 0;
	uint64_t seed, last_lost = 0, open_at_end = 0, misses, suspect_until = 0;
	bool grew, suspect;
	struct utsname un;
	char msg[512];
	int r, rc = 1;

	r = cli_parse(&t->cli, argc, argv);
	if (r)
		return r > 0 ? 0 : 2;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	libbpf_print((enum libbpf_print_level)t->cli.verbose, NULL, NULL);
	libbpf_set_print(libbpf_print);

	if (check_privileges(msg, sizeof(msg)) ||
	    (uname(&un) == 0 && check_kernel(un.release, msg, sizeof(msg))) ||
	    check_btf("/sys/kernel/btf/vmlinux", msg, sizeof(msg))) {
		die_line(msg);
		return 1;
	}
	for (int i = 0; i < t->cli.npids; i++) {
		struct proc_target *p = &t->procs[t->nprocs];
		pid_t pid = t->cli.pids[i];

		for (int j = 0; j < t->nprocs; j++) {
			if (t->procs[j].pid == pid)
				goto dup;
		}
		if (!proc_alive(pid)) {
			fprintf(stderr, "sqlspan: no process with PID %d\n", pid);
			return 1;
		}
		p->pid = pid;
		p->alive = true;
		proc_exe_name(pid, p->exe, sizeof(p->exe));
		t->nprocs++;
	dup:;
	}

	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = mono_now_ns() ^ ((uint64_t)getpid() << 32);
	t->py.app_paths = t->cli.napp_paths ? t->cli.app_paths : NULL;
	t->py.want_stack = t->cli.stack;
	t->py.learnt = hook_py_learnt;
	t->py.hot_set = hook_hot_set;
	t->py.arg = t;
	t->as = asm_new(&hooks, t->cli.max_sql_bytes, seed);
	if (!t->as)
		return 1;
	if (open_and_load(t))
		goto cleanup;

	/* the processes: BPF filter first, then libpq probes */
	for (int i = 0; i < t->nprocs; i++) {
		struct proc_target *p = &t->procs[i];

		r = probes_pid_flags(t, p->pid, PID_TRACED_LIBPQ);
		if (r) {
			if (r == -ERANGE)
				fprintf(stderr,
					"sqlspan: PID %d: beyond PID %u, cannot be traced\n",
					p->pid, SQLSPAN_PID_LIMIT - 1);
			else
				fprintf(stderr,
					"sqlspan: PID %d: cannot be added to the BPF filter: %s\n",
					p->pid, strerror(-r));
			goto cleanup;
		}
		if (!t->cli.no_python)
			python_setup(t, p);
		r = probes_scan(t, p);
		if (r < 0) {
			fprintf(stderr, "sqlspan: cannot read the memory map of PID %d: %s\n",
				p->pid, strerror(errno));
			goto cleanup;
		}
		if (p->wire && !t->use_loop) {
			fprintf(stderr,
				"sqlspan: PID %d (%s) %s: following the protocol on its sockets "
				"needs bpf_loop (kernel 5.17+)%s\n",
				p->pid, p->exe, t->cli.wire ? "with --wire" : "loaded asyncpg",
				t->cli.no_bpf_loop ? "; drop --no-bpf-loop" : "");
			if (p->nmapped == 0)
				goto cleanup;
		}
		if (r == 0 && !proc_alive(p->pid)) {
			fprintf(stderr, "sqlspan: PID %d exited while sqlspan attached\n", p->pid);
			goto cleanup;
		}
		if (r == 0) {
			if (!t->cli.wait) {
				fprintf(stderr,
					"sqlspan: PID %d (%s) has loaded neither libpq nor "
					"asyncpg; "
					"use --wait to wait for it, --wire for other drivers\n",
					p->pid, p->exe);
				goto cleanup;
			}
			p->waiting = true;
			probes_predict(t, p);
			fprintf(stderr,
				"sqlspan: waiting for PID %d (%s) to load libpq or asyncpg...\n",
				p->pid, p->exe);
		}
	}
	if (attach_tracepoints(t))
		goto cleanup;
	for (int i = 0; i < t->nprocs; i++)
		wire_start(t, &t->procs[i]);

	if (t->use_ringbuf) {
		rb = ring_buffer__new(bpf_map__fd(t->skel->maps.events), on_record, t, NULL);
		if (!rb) {
			fprintf(stderr, "sqlspan: cannot open the ring buffer: %s\n",
				strerror(errno));
			goto cleanup;
		}
	} else {
		/* like perf_buffer__new, but waking the reader every 64 records, not every one */
		struct perf_event_attr attr = {
			.type = PERF_TYPE_SOFTWARE,
			.config = PERF_COUNT_SW_BPF_OUTPUT,
			.sample_type = PERF_SAMPLE_RAW,
			.sample_period = 1,
			.wakeup_events = 64,
		};
		struct perf_buffer_raw_opts ropts = {.sz = sizeof(ropts)};

		ro = reorder_new();
		pb = perf_buffer__new_raw(bpf_map__fd(t->skel->maps.events), 256, &attr,
					  on_perf_event, t, &ropts);
		if (!pb || !ro) {
			fprintf(stderr, "sqlspan: cannot open the perf buffers: %s\n",
				strerror(errno));
			goto cleanup;
		}
	}

	t->mono2real = mono_to_real_ns();
	t->width = terminal_width();
	for (int i = 0; i < t->nprocs; i++) {
		if (t->procs[i].nmapped || t->procs[i].wire)
			announce(&t->procs[i]);
	}
	if (!t->cli.json) {
		out_table_header(stdout, t->width);
		fflush(stdout);
	}

	start = mono_now_ns();
	while (!exiting) {
		unsigned long long now;
		struct epoll_event ev;

		/* records arrive without waking us (see buffer.bpf.h): wait, then take what is
		 * there */
		r = epoll_wait(rb ? ring_buffer__epoll_fd(rb) : perf_buffer__epoll_fd(pb), &ev, 1,
			       100);
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "sqlspan: polling failed: %s\n", strerror(errno));
			break;
		}
		/* code objects named without reads must still be those objects (pystack.h) */
		pystacks_check_hot(&t->py);
		/* runs the kernel skipped (7.x) before these records were read: see asm_suspect;
		 * what was held since the last look may have been touched by them too (outq.h) */
		misses = kernel_misses(t, false);
		grew = misses != t->misses_seen;
		/* a stream walked across a skipped run may be inside a message that has ended:
		 * every stream is checked at its next request (maps.bpf.h) */
		if (grew)
			t->skel->bss->sync_epoch++;
		/* perf buffers: records made before now leave the reorder buffer within its window
		 */
		if (grew && pb)
			suspect_until = mono_now_ns() + REORDER_WINDOW_NS + 10000000ULL;
		suspect = grew || (pb && mono_now_ns() <= suspect_until);
		release_held(t, grew);
		asm_suspect(t->as, suspect);
		if (rb)
			ring_buffer__consume(rb);
		else
			perf_buffer__consume(pb);
		if (pb)
			release_ordered(t, false);
		now = mono_now_ns();
		if (suspect) {
			uint64_t n = asm_realign(t->as, now);

			if (grew)
				vlog(t,
				     "the kernel skipped %llu program runs: %llu pending requests "
				     "ended as unknown",
				     (unsigned long long)(misses - t->misses_seen),
				     (unsigned long long)n);
			t->misses_seen = misses;
			asm_suspect(t->as, false);
		}
		if (t->rescan || now - last_check > 250000000ULL) {
			check_procs(t);
			last_check = now;
			if (!alive_count(t)) {
				/* take what is still in the buffers, then stop */
				if (rb)
					ring_buffer__consume(rb);
				else {
					perf_buffer__consume(pb);
					release_ordered(t, true);
				}
				fprintf(stderr, "sqlspan: no traced process left\n");
				break;
			}
		}
		asm_expire(t->as, now, 2000000000ULL);
		if (now - last_lost_report > 1000000000ULL) {
			uint64_t d, lost = lost_events(t, &d);

			if (lost > last_lost) {
				uint64_t skipped = kernel_misses(t, false);

				fprintf(stderr,
					"sqlspan: warning: %llu events lost so far (%s); affected "
					"spans are marked\n",
					(unsigned long long)lost,
					skipped == lost ? "runs of its programs the kernel skipped"
					: skipped	? "buffer full, and runs the kernel skipped"
							: "buffer full");
			}
			last_lost = lost;
			last_lost_report = now;
		}
		if (t->cli.duration_s > 0 && now - start >= t->cli.duration_s * 1e9)
			break;
	}
	misses = kernel_misses(t, false);
	release_held(t, misses != t->misses_seen);
	asm_suspect(t->as, misses != t->misses_seen);
	if (rb)
		ring_buffer__consume(rb);
	if (pb) {
		perf_buffer__consume(pb);
		release_ordered(t, true);
	}
	open_at_end = asm_close_all(t->as, mono_now_ns());
	release_held(t, kernel_misses(t, false) != misses);
	rc = 0;

cleanup:
	for (int i = 0; i < t->nprocs; i++)
		probes_detach(t, &t->procs[i]);
	for (int i = 0; i < t->ntp_links; i++)
		bpf_link__destroy(t->tp_links[i]);
	ring_buffer__free(rb);
	perf_buffer__free(pb);
	if (t->skel && rc == 0)
		summary(t, open_at_end);
	if (t->skel) {
		/*
		 * The program arrays hold the programs that hold the arrays: the kernel breaks that
		 * cycle only later, from a work queue. Emptied here, everything goes on exit.
		 */
		uint32_t zero = 0;

		bpf_map__delete_elem(t->skel->maps.req_progs, &zero, sizeof(zero), 0);
		bpf_map__delete_elem(t->skel->maps.walk_progs, &zero, sizeof(zero), 0);
	}
	sqlspan_bpf__destroy(t->skel);
	reorder_free(ro);
	asm_free(t->as);
	outq_free(&t->held);
	pystacks_free(&t->py);
	return rc;
}
