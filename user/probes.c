// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "sqlspan.skel.h"
#include "elffile.h"
#include "procmaps.h"
#include "tracer.h"
#include "x86dec.h"

#define R(r) (1u << (r))

struct probe_spec {
	const char *sym;
	const char *prog;
	uint32_t keep;	   /* registers the program reads: the probe must sit before they change */
	const char *inner; /* an outer call: probed only where its call of `inner` is not proven */
};

static const struct probe_spec specs[] = {
	{"PQsendQuery", "up_send_query", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQsendQueryParams", "up_send_query_params", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQsendPrepare", "up_send_prepare", R(X86_RDI) | R(X86_RSI) | R(X86_RDX), NULL},
	{"PQsendQueryPrepared", "up_send_query_prepared", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQsendDescribePrepared", "up_describe_prepared", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQsendDescribePortal", "up_describe_portal", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQsendClosePrepared", "up_close_prepared", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQsendClosePortal", "up_close_portal", R(X86_RDI) | R(X86_RSI), NULL},
	{"PQpipelineSync", "up_pipeline_sync", R(X86_RDI), NULL},
	{"PQsendPipelineSync", "up_pipeline_sync", R(X86_RDI), NULL},
	{"PQexec", "up_exec", R(X86_RDI) | R(X86_RSI), "PQsendQuery"},
	{"PQexecParams", "up_exec_params", R(X86_RDI) | R(X86_RSI), "PQsendQueryParams"},
	{"PQprepare", "up_prepare", R(X86_RDI) | R(X86_RSI) | R(X86_RDX), "PQsendPrepare"},
	{"PQexecPrepared", "up_exec_prepared", R(X86_RDI) | R(X86_RSI), "PQsendQueryPrepared"},
	{"PQdescribePrepared", "up_describe_prepared", R(X86_RDI) | R(X86_RSI),
	 "PQsendDescribePrepared"},
	{"PQdescribePortal", "up_describe_portal", R(X86_RDI) | R(X86_RSI), "PQsendDescribePortal"},
	{"PQclosePrepared", "up_close_prepared", R(X86_RDI) | R(X86_RSI), "PQsendClosePrepared"},
	{"PQclosePortal", "up_close_portal", R(X86_RDI) | R(X86_RSI), "PQsendClosePortal"},
	{"PQfinish", "up_finish", R(X86_RDI), NULL},
	{"PQreset", "up_reset", R(X86_RDI), NULL},
	{"PQresetStart", "up_reset", R(X86_RDI), NULL},
};

void vlog(const struct tracer *t, const char *fmt, ...)
{
	va_list ap;

	if (!t->cli.verbose)
		return;
	va_start(ap, fmt);
	fputs("sqlspan: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void derive_layout(struct tracer *t, struct elf_file *ef, struct lib_target *lt)
{
	static const struct {
		const char *sym;
		int (*fn)(struct pq_layout *, const uint8_t *, size_t);
	} acc[] = {
		{"PQsocket", pq_layout_from_socket},
		{"PQpipelineStatus", pq_layout_from_pipeline_status},
		{"PQbackendPID", pq_layout_from_backend_pid},
		{"PQdb", pq_layout_from_db},
		{"PQuser", pq_layout_from_user},
		{"PQport", pq_layout_from_port},
		{"PQsslInUse", pq_layout_from_ssl_in_use},
	};
	uint8_t code[512];
	uint64_t va;

	pq_layout_init(&lt->layout);
	for (size_t i = 0; i < sizeof(acc) / sizeof(acc[0]); i++) {
		size_t n = elff_func_code(ef, acc[i].sym, code, sizeof(code), &va);

		if (n && acc[i].fn(&lt->layout, code, n))
			vlog(t, "%s: could not read %s's offsets from %s", lt->shown, "PGconn",
			     acc[i].sym);
	}
	vlog(t, "%s: PGconn sock@%d pipeline@%d status@%d be_pid@%d db@%d user@%d connhost@%d",
	     lt->shown, lt->layout.sock, lt->layout.pipeline, lt->layout.status, lt->layout.be_pid,
	     lt->layout.db_name, lt->layout.user, lt->layout.connhost);
	if (lt->layout.sock < 0)
		fprintf(stderr,
			"sqlspan: warning: %s: the socket's place in PGconn is unknown: statements "
			"will be reported without results\n",
			lt->shown);
}

void probes_autoload(struct tracer *t)
{
	bool on = !libpq_on_wire(t);

	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
		struct bpf_program *prog =
			bpf_object__find_program_by_name(t->skel->obj, specs[i].prog);

		if (prog)
			bpf_program__set_autoload(prog, on);
	}
	bpf_program__set_autoload(t->skel->progs.up_request_loop, on && t->use_loop);
	bpf_program__set_autoload(t->skel->progs.up_request, on && !t->use_loop);
}

static int attach_lib(struct tracer *t, struct proc_target *p, struct lib_target *lt)
{
	struct elf_file *ef;
	int attached = 0;

	if (libpq_on_wire(t)) { /* its statements are read off the sockets: no probe here */
		vlog(t, "%s: statements read off PID %d's sockets", lt->shown, p->pid);
		return 0;
	}
	ef = elff_open(lt->path);
	if (!ef) {
		fprintf(stderr, "sqlspan: warning: cannot read %s for PID %d: %s\n", lt->shown,
			p->pid, strerror(errno));
		return -1;
	}
	derive_layout(t, ef, lt);
	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
		const struct probe_spec *sp = &specs[i];
		struct bpf_program *prog;
		uint8_t code[64];
		uint64_t va, foff;
		size_t n, off;
		struct x86_insn in;

		n = elff_func_code(ef, sp->sym, code, sizeof(code), &va);
		if (!n)
			continue;
		if (sp->inner) {
			uint64_t iva;
			int calls;

			if (elff_sym(ef, sp->inner, &iva, NULL))
				calls = 0;
			else
				calls = elff_calls(ef, sp->sym, sp->inner);
			if (calls == 1) {
				vlog(t, "%s: %s calls %s: probed there", lt->shown, sp->sym,
				     sp->inner);
				continue;
			}
		}
		off = x86_probe_offset(code, n, sp->keep);
		foff = elff_file_offset(ef, va + off);
		prog = bpf_object__find_program_by_name(t->skel->obj, sp->prog);
		if (!prog || foff == (uint64_t)-1 || lt->nlinks >= MAX_LINKS)
			continue;
		if (sp->inner) /* from now on requests are checked for nesting (see req_nested) */
			t->skel->bss->outer_probes = 1;
		if (ulink_attach(&lt->links[lt->nlinks], prog, false, p->pid, lt->path, foff)) {
			fprintf(stderr,
				"sqlspan: warning: cannot attach to %s in %s for PID %d: %s\n",
				sp->sym, lt->shown, p->pid, strerror(errno));
			continue;
		}
		lt->nlinks++;
		attached++;
		if (t->cli.verbose) {
			bool emu = x86_decode(code + off, n - off, &in) > 0 &&
				   x86_uprobe_emulated(&in);

			vlog(t, "%s: %s probed at +%zu, file offset %#lx (%s)", lt->shown, sp->sym,
			     off, (unsigned long)foff, emu ? "emulated" : "single-stepped");
		}
	}
	elff_close(ef);
	if (!attached) {
		fprintf(stderr, "sqlspan: warning: %s has none of libpq's functions\n", lt->shown);
		return -1;
	}
	return 0;
}

/* Tell the BPF side where each libpq of the process lives and how its PGconn is laid out. */
/* The PGconn fields read at each request in one block, if they are close enough (sqlspan.h). */
static void conn_block(struct lib_range *r)
{
	const int16_t offs[] = {r->sock_off, r->pipe_off, r->be_pid_off};
	int lo = INT16_MAX, hi = -1;

	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		if (offs[i] < 0)
			continue;
		lo = offs[i] < lo ? offs[i] : lo;
		hi = offs[i] + 4 > hi ? offs[i] + 4 : hi;
	}
	r->blk_lo = r->blk_len = 0;
	if (r->sock_off >= 0 && hi - lo <= SQLSPAN_CONN_BLK) {
		r->blk_lo = (int16_t)lo;
		r->blk_len = (int16_t)(hi - lo);
	}
}

static void push_libs(struct tracer *t, struct proc_target *p)
{
	struct proc_libs pl;
	uint32_t key = p->pid;

	memset(&pl, 0, sizeof(pl));
	for (int i = 0; i < p->nlibs && i < SQLSPAN_MAX_LIBS; i++) {
		struct lib_target *lt = &p->libs[i];

		pl.lib[i].lo = lt->lo ? lt->lo : 0;
		pl.lib[i].hi = lt->lo ? lt->hi : ~0ULL; /* not mapped yet: any address */
		pl.lib[i].sock_off = lt->layout.sock;
		pl.lib[i].pipe_off = lt->layout.pipeline;
		pl.lib[i].status_off = lt->layout.status;
		pl.lib[i].be_pid_off = lt->layout.be_pid;
		pl.lib[i].db_off = lt->layout.db_name;
		pl.lib[i].user_off = lt->layout.user;
		pl.lib[i].connhost_off = lt->layout.connhost;
		pl.lib[i].which_off = lt->layout.whichhost;
		pl.lib[i].ssl_off = lt->layout.ssl_in_use;
		pl.lib[i].host_size = lt->layout.host_size;
		pl.lib[i].host_type = lt->layout.host_type;
		pl.lib[i].host_host = lt->layout.host_host;
		pl.lib[i].host_addr = lt->layout.host_addr;
		pl.lib[i].host_port = lt->layout.host_port;
		conn_block(&pl.lib[i]);
	}
	bpf_map__update_elem(t->skel->maps.libs, &key, sizeof(key), &pl, sizeof(pl), BPF_ANY);
}

static struct lib_target *find_lib(struct proc_target *p, uint64_t dev, uint64_t ino)
{
	for (int i = 0; i < p->nlibs; i++) {
		if (p->libs[i].dev == dev && p->libs[i].ino == ino)
			return &p->libs[i];
	}
	return NULL;
}

static struct lib_target *add_lib(struct tracer *t, struct proc_target *p, const char *path,
				  const char *shown, uint64_t dev, uint64_t ino)
{
	struct lib_target *lt;

	if (p->nlibs >= SQLSPAN_MAX_LIBS) {
		fprintf(stderr,
			"sqlspan: warning: PID %d maps more than %d libpq files; %s ignored\n",
			p->pid, SQLSPAN_MAX_LIBS, shown);
		return NULL;
	}
	lt = &p->libs[p->nlibs];
	memset(lt, 0, sizeof(*lt));
	snprintf(lt->path, sizeof(lt->path), "%s", path);
	snprintf(lt->shown, sizeof(lt->shown), "%s", shown);
	lt->dev = dev;
	lt->ino = ino;
	if (attach_lib(t, p, lt)) {
		for (int i = 0; i < lt->nlinks; i++)
			ulink_destroy(&lt->links[i]);
		return NULL;
	}
	p->nlibs++;
	return lt;
}

/*
 * The process loaded greenlet (SQLAlchemy's asyncio bridge may run): let the BPF side look for
 * greenlet_spawn among coroutine frames (a cost that processes without greenlet never pay).
 */
static void greenlet_seen(struct tracer *t, struct proc_target *p)
{
	uint32_t key = p->pid;
	struct py_cfg cfg;

	p->greenlet = true;
	if (bpf_map__lookup_elem(t->skel->maps.pyprocs, &key, sizeof(key), &cfg, sizeof(cfg), 0))
		return; /* not a Python sqlspan reads stacks of */
	cfg.gs_search = 1;
	bpf_map__update_elem(t->skel->maps.pyprocs, &key, sizeof(key), &cfg, sizeof(cfg),
			     BPF_EXIST);
}

/*
 * Probe the process's dynamic loader where it tells debuggers its list of objects changed
 * (_dl_debug_state, glibc's and musl's): libraries are then seen loaded without a program run
 * at every mmap of the host. Only as a uprobe_multi link (a perf-event uprobe would cost the
 * process at each context switch: ulink.h), on bpf_loop kernels (mmap is watched at its exit
 * there, the registers read). Otherwise, or if it cannot be, every mmap is watched
 * (tracer_watch_mmap, by attach_tracepoints at the start).
 */
static void loader_probe(struct tracer *t, struct proc_target *p, const char *path,
			 const char *shown)
{
	struct elf_file *ef;
	uint64_t va, size, foff = (uint64_t)-1;

	p->loader_tried = true;
	if (!t->use_loop || !t->uprobe_multi)
		return;
	ef = path[0] ? elff_open(path) : NULL;
	if (ef && !elff_sym(ef, "_dl_debug_state", &va, &size))
		foff = elff_file_offset(ef, va);
	if (ef)
		elff_close(ef);
	if (foff == (uint64_t)-1 ||
	    ulink_attach(&p->loader, t->skel->progs.up_loader, false, p->pid, path, foff)) {
		vlog(t, "PID %d: no probe on a dynamic loader's _dl_debug_state (%s: %s)", p->pid,
		     path[0] ? shown : "none mapped",
		     foff == (uint64_t)-1 ? "not found" : strerror(errno));
		if (t->ntp_links) /* after the start (attach_tracepoints does it then) */
			tracer_watch_mmap(t);
		return;
	}
	vlog(t, "PID %d: libraries seen loaded by %s (_dl_debug_state)", p->pid, shown);
	t->rescan = true; /* what it loaded while this was attached */
}

int probes_scan(struct tracer *t, struct proc_target *p)
{
	char ld_path[PATH_MAX + 64] = "", ld_shown[PATH_MAX] = "";
	char path[64], line[1024];
	struct map_entry e;
	bool changed = false, wire = false;
	char ssl_path[PATH_MAX + 64] = "", ssl_shown[PATH_MAX] = "";
	int mapped = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", p->pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		uint64_t dev, ino;
		struct lib_target *lt;
		char open_path[PATH_MAX + 64];
		struct stat st;

		if (maps_parse_line(line, &e) || !e.exec || !e.path[0])
			continue;
		if (!is_libpq_name(e.path)) {
			if (!p->loader_tried && !ld_path[0] &&
			    (strstr(e.path, "/ld-linux") || strstr(e.path, "/ld-musl"))) {
				snprintf(ld_path, sizeof(ld_path), "/proc/%d/root%s", p->pid,
					 e.path);
				snprintf(ld_shown, sizeof(ld_shown), "%s", e.path);
			}
			if (!p->greenlet && strstr(e.path, "/greenlet/_greenlet."))
				greenlet_seen(t, p);
			if (!ssl_path[0] && strstr(e.path, "/libssl.so")) {
				snprintf(ssl_path, sizeof(ssl_path), "/proc/%d/root%s", p->pid,
					 e.path);
				snprintf(ssl_shown, sizeof(ssl_shown), "%s", e.path);
			}
			if (!wire && is_wire_driver_name(e.path)) {
				wire = true;
				if (!p->wire_shown[0])
					snprintf(p->wire_shown, sizeof(p->wire_shown), "%s",
						 e.path);
			}
			continue;
		}
		if (e.deleted)
			snprintf(open_path, sizeof(open_path), "/proc/%d/map_files/%lx-%lx", p->pid,
				 e.lo, e.hi);
		else
			snprintf(open_path, sizeof(open_path), "/proc/%d/root%s", p->pid, e.path);
		/* identify files the way probes_predict does: by what stat says through the root */
		if (stat(open_path, &st)) {
			dev = makedev(e.dev_major, e.dev_minor);
			ino = e.inode;
		} else {
			dev = st.st_dev;
			ino = st.st_ino;
		}
		lt = find_lib(p, dev, ino);
		if (!lt) {
			lt = add_lib(t, p, open_path, e.path, dev, ino);
			if (!lt)
				continue;
			changed = true;
		}
		if (libpq_on_wire(t) && !p->libpq_wire) {
			p->libpq_wire = wire = true;
			snprintf(p->wire_shown, sizeof(p->wire_shown), "%s", e.path);
		}
		if (lt->lo != e.lo || lt->hi != e.hi) {
			lt->lo = e.lo;
			lt->hi = e.hi;
			changed = true;
		}
		mapped++;
	}
	fclose(f);
	if (!p->loader_tried)
		loader_probe(t, p, ld_path, ld_shown);
	p->nmapped = mapped;
	if (changed)
		push_libs(t, p);
	wire |= t->cli.wire;
	if (wire && !p->wire) {
		/* only where the frontend walk exists (bpf_loop kernels) */
		if (t->use_loop && !p->wire_ahead)
			probes_pid_flags(t, p->pid, PID_TRACED_WIRE);
		p->wire = true;
	}
	if (p->wire && t->use_loop && ssl_path[0] && !p->tls_tried) {
		p->tls_tried = true;
		tls_attach(t, p, ssl_path, ssl_shown);
	}
	return mapped + (p->wire ? 1 : 0);
}

int probes_predict(struct tracer *t, struct proc_target *p)
{
	static const char *const dirs[] = {"/usr/lib/x86_64-linux-gnu",
					   "/lib/x86_64-linux-gnu",
					   "/usr/lib64",
					   "/usr/lib",
					   "/usr/local/lib",
					   "/usr/local/pgsql/lib"};
	int added = 0;

	if (libpq_on_wire(t)) {
		/*
		 * Its sockets followed from now on, so that the connection it opens right after
		 * loading libpq is seen from its start (probes_scan sees libpq when it is mapped).
		 */
		if (!p->wire_ahead && !probes_pid_flags(t, p->pid, PID_TRACED_WIRE))
			p->wire_ahead = true;
		return p->wire_ahead;
	}
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		char open_path[PATH_MAX + 64], shown[PATH_MAX];
		struct stat st;

		snprintf(shown, sizeof(shown), "%s/libpq.so.5", dirs[i]);
		snprintf(open_path, sizeof(open_path), "/proc/%d/root%s", p->pid, shown);
		if (stat(open_path, &st) || find_lib(p, st.st_dev, st.st_ino))
			continue;
		if (add_lib(t, p, open_path, shown, st.st_dev, st.st_ino)) {
			added++;
			vlog(t, "PID %d: probes placed in %s before it is loaded", p->pid, shown);
		}
	}
	if (added)
		push_libs(t, p);
	return added;
}

int probes_pid_flags(struct tracer *t, pid_t pid, unsigned flags)
{
	uint32_t key = (uint32_t)pid / 32, shift = ((uint32_t)pid % 32) * 2;
	uint64_t word = 0;
	int r;

	if (pid <= 0 || (uint32_t)pid >= SQLSPAN_PID_LIMIT)
		return -ERANGE;
	/* the loader alone writes the words (one thread): read, change two bits, write */
	r = bpf_map__lookup_elem(t->skel->maps.pids, &key, sizeof(key), &word, sizeof(word), 0);
	if (r)
		return r;
	word = (word & ~(3ULL << shift)) | ((uint64_t)(flags & 3) << shift);
	return bpf_map__update_elem(t->skel->maps.pids, &key, sizeof(key), &word, sizeof(word),
				    BPF_ANY);
}

void probes_detach(struct tracer *t, struct proc_target *p)
{
	uint32_t key = p->pid;

	for (int i = 0; i < p->nlibs; i++) {
		for (int j = 0; j < p->libs[i].nlinks; j++)
			ulink_destroy(&p->libs[i].links[j]);
		p->libs[i].nlinks = 0;
	}
	p->nlibs = 0;
	tls_detach(p);
	p->tls_tried = false;
	ulink_destroy(&p->loader);
	p->loader_tried = false;
	if (t->skel) {
		bpf_map__delete_elem(t->skel->maps.libs, &key, sizeof(key), 0);
		probes_pid_flags(t, p->pid, 0);
	}
}

const struct pq_layout *probes_layout(struct tracer *t, pid_t pid)
{
	for (int i = 0; i < t->nprocs; i++) {
		struct proc_target *p = &t->procs[i];

		if (p->pid != pid)
			continue;
		for (int j = 0; j < p->nlibs; j++) {
			if (p->libs[j].lo)
				return &p->libs[j].layout;
		}
		return p->nlibs ? &p->libs[0].layout : NULL;
	}
	return NULL;
}
