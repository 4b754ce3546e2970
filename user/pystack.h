/* SPDX-License-Identifier: MIT */
/*
 * Python stacks in userspace: the traced CPython processes, their code objects (read once with
 * process_vm_readv, cached per process), and the resolution of a stack record into a call site,
 * the SQLAlchemy connection and, if asked for, the whole stack.
 */
#ifndef SQLSPAN_PYSTACK_H
#define SQLSPAN_PYSTACK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "../bpf/sqlspan.h"
#include "hmap.h"
#include "pyruntime.h"
#include "span.h"

struct ev_stack;

/* An engine read and checked with its dialect (one per engine, as long-lived), and its URL. */
struct dialect_url {
	uint64_t engine;
	const char *url; /* a string of pyproc.urls */
};

struct pyproc {
	pid_t pid;
	struct py_target t;
	struct py_learnt lr;	  /* what was learnt of its objects: the BPF side has it too */
	struct hmap codes;	  /* code object address -> struct pycode * */
	struct hmap slots;	  /* where instance attributes sit (pyobj_attr's cache) */
	struct hmap urls;	  /* (engine, URL object) -> the rendered URL */
	struct hmap dialect_urls; /* dialect -> struct dialect_url: its engine, checked, and URL */
	int prefetch_left;	  /* stacks still read at arrival whatever they hold */
	int retry_left;		  /* later stacks still read at arrival to learn what is missing */
	int session_tries;	  /* Session layouts still to try learning from (session_learn) */
};

/* Where a span's sqlalchemy.engine.url came from */
enum url_from {
	URL_NONE,	/* nowhere: not known */
	URL_STATEMENT,	/* the engine the BPF side read at the statement */
	URL_LIVE,	/* the Connection, still alive when the record was read */
	URL_REMEMBERED, /* the URL last seen with the same dialect */
	URL__COUNT,
};

/* A code object the BPF side takes the identity of from hot_codes (sqlspan.h), mirrored. */
struct hot_entry {
	uint64_t code; /* 0: the slot is free */
	pid_t pid;
	uint32_t ident;
};

struct pystacks {
	struct pyproc *procs;
	int nprocs;
	const char *const *app_paths; /* --app-path, NULL-terminated; NULL: the default rule */
	bool want_stack;	      /* --stack */
	/* tell the BPF side what was learnt of a process's objects (pp->lr) */
	void (*learnt)(void *arg, const struct pyproc *pp);
	/* write slot `slot` of the BPF side's hot_codes (a zeroed entry frees it) */
	void (*hot_set)(void *arg, uint32_t slot, const struct hot_code *hc);
	void *arg;
	struct hot_entry *hot; /* SQLSPAN_HOT_CODES entries, once one is in use */
	uint32_t nhot;
	uint64_t hot_dropped;		/* entries found stale by pystacks_check_hot */
	uint64_t hot_reads;		/* the system calls its checks made */
	uint64_t urls_from[URL__COUNT]; /* spans with a SQLAlchemy Connection, by URL source */
};

/* A process to resolve stacks for. Returns it, or NULL if out of memory. */
struct pyproc *pystacks_add(struct pystacks *ps, pid_t pid, const struct py_target *t);
void pystacks_free(struct pystacks *ps);

/* Has everything been learnt there is to learn of this process's objects? */
bool pystacks_all_learnt(const struct pyproc *pp);

/*
 * A stack record as soon as it is read (before its request pairs with it): what must be read
 * from the process while the statement runs (SQLAlchemy's Connection.engine), into the caches.
 */
void pystacks_prefetch(struct pystacks *ps, const struct ev_stack *st, size_t size);

/*
 * Check the code objects the BPF side names without reading them: each must still be the object
 * it was (co_filename, co_qualname); a stale one is dropped from the map and the cache. Call it
 * before reading records: a record that named a dropped one then leaves its frame unnamed.
 */
void pystacks_check_hot(struct pystacks *ps);

/*
 * Resolve a stack record into `out` (strings malloc'd). want_text: read the statement text
 * SQLAlchemy holds (out->sa_statement), for a span whose text the wire did not carry.
 */
void pystacks_resolve(struct pystacks *ps, const struct ev_stack *st, size_t size, bool want_text,
		      struct span_py *out);

#endif
