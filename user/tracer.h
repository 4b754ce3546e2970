/* SPDX-License-Identifier: MIT */
/* The state of one sqlspan run, shared by the loader's parts. */
#ifndef SQLSPAN_TRACER_H
#define SQLSPAN_TRACER_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "assemble.h"
#include "cli.h"
#include "hmap.h"
#include "outq.h"
#include "pqlayout.h"
#include "pystack.h"
#include "ulink.h"
#include "../bpf/sqlspan.h"

struct sqlspan_bpf;
struct bpf_link;

#define MAX_LINKS 32
#define TLS_LINKS 8

/* One libpq file attached for one process. */
struct lib_target {
	char path[PATH_MAX + 64]; /* opened and attached through the process's root */
	char shown[PATH_MAX];	  /* as the process names it */
	uint64_t dev, ino;
	uint64_t lo, hi; /* its executable mapping; 0 while not mapped yet */
	struct pq_layout layout;
	struct ulink links[MAX_LINKS];
	int nlinks;
};

struct proc_target {
	pid_t pid;
	char exe[64];
	bool alive;
	bool announced; /* "tracing PID ..." said */
	bool waiting;	/* no libpq mapped yet (--wait) */
	struct lib_target libs[SQLSPAN_MAX_LIBS];
	int nlibs;
	int nmapped;	   /* libs actually mapped by the process */
	bool wire;	   /* its sockets are followed for the protocol (asyncpg, or --wire) */
	bool libpq_wire;   /* its libpq's statements are read off its sockets (libpq_on_wire) */
	bool wire_ahead;   /* --wait: its sockets followed before it loads libpq */
	bool greenlet;	   /* it loaded greenlet: greenlet_spawn is looked for */
	bool wire_started; /* its sockets are followed (tracepoints attached, open sockets noted) */
	char wire_shown[PATH_MAX];	   /* the driver that made it so ("" for --wire) */
	bool tls_tried;			   /* libssl seen (probed, or found wanting) */
	struct ulink tls_links[TLS_LINKS]; /* libssl's probes (tlsprobes.c) */
	int ntls;
	bool loader_tried;   /* its dynamic loader's probe tried (probes_scan) */
	struct ulink loader; /* the probe on _dl_debug_state: libraries it loads (up_loader) */
};

struct tracer {
	struct cli cli;
	struct sqlspan_bpf *skel;
	struct proc_target procs[CLI_MAX_PIDS];
	int nprocs;
	struct assembler *as;
	struct pystacks py;
	struct bpf_link *tp_links[12];
	int ntp_links;
	long long mono2real;
	int width;
	bool use_ringbuf;
	bool use_loop;	    /* the kernel has bpf_loop */
	bool wire_attached; /* the tracepoints of wire sockets are attached */
	bool uprobe_multi;  /* uprobes are uprobe_multi links (ulink.h) */
	bool mmap_watched;  /* the mmap tracepoint is attached (tracer_watch_mmap) */
	uint64_t shown, filtered;
	uint64_t perf_lost;
	uint64_t misses_seen; /* kernel-skipped runs already acted on (asm_realign) */
	struct outq held;     /* output lines until the next look at that count (outq.h) */
	bool rescan;
};

/*
 * libpq's statements are read off the process's sockets, like asyncpg's (bpf_loop kernels: a
 * uprobe per statement costs the application several µs here, the socket's tracepoints less),
 * unless --libpq-uprobes asks for its functions' probes.
 */
static inline bool libpq_on_wire(const struct tracer *t)
{
	return t->use_loop && !t->cli.libpq_uprobes;
}

/*
 * Find and attach the libpq files of a process, and see whether it loaded a driver that speaks
 * the protocol itself; update the BPF side. Returns libs mapped plus 1 if its sockets are
 * followed (asyncpg, --wire).
 */
int probes_scan(struct tracer *t, struct proc_target *p);
/*
 * Load libpq's programs only where its probes will be attached (not where its statements are
 * read off the sockets): the verifier's time is most of the attach. Before the object's load.
 */
void probes_autoload(struct tracer *t);
/*
 * Libraries a process loads are seen at every mmap of the host (a syscall tracepoint): where its
 * loader cannot be probed, or after an exec. Attached once; 0 or -1 (said on stderr).
 */
int tracer_watch_mmap(struct tracer *t);
/* --wait: also attach to the libpq the process would load from its root filesystem. */
int probes_predict(struct tracer *t, struct proc_target *p);
/* Remove every probe of a process. */
void probes_detach(struct tracer *t, struct proc_target *p);
/*
 * What the BPF side knows of a process (the `pids` map): PID_TRACED_*, or 0 to forget it. 0 or a
 * negative errno (-ERANGE: a PID beyond SQLSPAN_PID_LIMIT).
 */
int probes_pid_flags(struct tracer *t, pid_t pid, unsigned flags);
/* Probe a process's libssl (path: through its root) for its TLS wire connections' plaintext. */
int tls_attach(struct tracer *t, struct proc_target *p, const char *path, const char *shown);
void tls_detach(struct proc_target *p);
/* The PGconn layout for a process (of its first libpq); NULL if none. */
const struct pq_layout *probes_layout(struct tracer *t, pid_t pid);

void vlog(const struct tracer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
