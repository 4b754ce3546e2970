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
#include "hmap.h"
#include "pyruntime.h"
#include "span.h"

struct ev_stack;

struct pyproc {
	pid_t pid;
	struct py_target t;
	struct hmap codes; /* code object address -> struct pycode * */
};

struct pystacks {
	struct pyproc *procs;
	int nprocs;
	const char *const *app_paths; /* --app-path, NULL-terminated; NULL: the default rule */
	bool want_stack;	      /* --stack */
};

/* A process to resolve stacks for. Returns it, or NULL if out of memory. */
struct pyproc *pystacks_add(struct pystacks *ps, pid_t pid, const struct py_target *t);
void pystacks_free(struct pystacks *ps);

/* Resolve a stack record into `out` (strings malloc'd). */
void pystacks_resolve(struct pystacks *ps, const struct ev_stack *st, size_t size,
		      struct span_py *out);

/* Read a Python str at addr as UTF-8 (at most max bytes); NULL if it is not one. */
char *py_read_str(pid_t pid, uint64_t addr, const struct py_layout *l, size_t max);

#endif
