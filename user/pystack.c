// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../bpf/sqlspan.h"
#include "pgident.h"
#include "pyframes.h"
#include "pyline.h"
#include "pyobj.h"
#include "pystack.h"
#include "strbuf.h"

#define MAX_LINETABLE 65536

/*
 * A code object seen on this many stacks, always the same object, is taken as long-lived: the
 * BPF side stops reading its identity (pystacks_check_hot checks it instead). Code objects
 * compiled for a few uses and freed do not get there.
 */
#define HOT_HITS 32

struct pycode {
	uint32_t ident; /* FRAME_IDENT of its co_filename and co_qualname, the file name's hash */
	uint32_t ident_unhashed; /* the same before that hash is computed (a stack read then) */
	uint32_t hits; /* stacks that named it with that identity, as the BPF side read it */
	bool hot;      /* in hot_codes */
	char *file;
	char *qualname;
	int firstlineno;
	uint8_t *lt;
	size_t ltlen;
	uint64_t lt_ptr;
};

struct pyproc *pystacks_add(struct pystacks *ps, pid_t pid, const struct py_target *t)
{
	struct pyproc *np = realloc(ps->procs, (ps->nprocs + 1) * sizeof(*np));

	if (!np)
		return NULL;
	ps->procs = np;
	np = &ps->procs[ps->nprocs++];
	memset(np, 0, sizeof(*np));
	np->pid = pid;
	np->t = *t;
	np->lr.sa_slot = -1;
	np->lr.task_cb_off = -1;
	np->lr.task_step_off = -1;
	np->lr.task_name_off = -1;
	/* Task.__wakeup, a builtin method bound to its task: known from the interpreter itself */
	np->lr.task_meth_type = t->cfunc_type;
	np->lr.task_meth_off = t->cfunc_type ? t->layout.cfunc_self : -1;
	np->prefetch_left = 256;
	np->retry_left = 256;
	np->session_tries = 64;
	hmap_init(&np->codes);
	hmap_init(&np->slots);
	hmap_init(&np->urls);
	hmap_init(&np->dialect_urls);
	return np;
}

static void code_free(struct pycode *c)
{
	if (!c)
		return;
	free(c->file);
	free(c->qualname);
	free(c->lt);
	free(c);
}

void pystacks_free(struct pystacks *ps)
{
	for (int i = 0; i < ps->nprocs; i++) {
		struct pycode *c;
		void *p;
		size_t pos = 0;

		while ((c = hmap_next(&ps->procs[i].codes, &pos, NULL)))
			code_free(c);
		hmap_free(&ps->procs[i].codes);
		pos = 0;
		while ((p = hmap_next(&ps->procs[i].slots, &pos, NULL)))
			free(p);
		hmap_free(&ps->procs[i].slots);
		pos = 0;
		while ((p = hmap_next(&ps->procs[i].urls, &pos, NULL)))
			free(p);
		hmap_free(&ps->procs[i].urls);
		pos = 0;
		while ((p = hmap_next(&ps->procs[i].dialect_urls, &pos, NULL)))
			free(p); /* its strings are the urls' */
		hmap_free(&ps->procs[i].dialect_urls);
	}
	free(ps->procs);
	ps->procs = NULL;
	ps->nprocs = 0;
	free(ps->hot);
	ps->hot = NULL;
	ps->nhot = 0;
}

static struct pyproc *proc_of(struct pystacks *ps, pid_t pid)
{
	for (int i = 0; i < ps->nprocs; i++) {
		if (ps->procs[i].pid == pid)
			return &ps->procs[i];
	}
	return NULL;
}

static int code_head(struct pyproc *pp, uint64_t code, uint64_t *lt_ptr, int32_t *first)
{
	const struct py_layout *l = &pp->t.layout;
	uint8_t buf[8];

	if (proc_read(pp->pid, code + l->code_linetable, buf, 8) != 8)
		return -1;
	memcpy(lt_ptr, buf, 8);
	if (proc_read(pp->pid, code + l->code_firstlineno, buf, 4) != 4)
		return -1;
	memcpy(first, buf, 4);
	return 0;
}

/* FRAME_IDENT from the file name's length and hash (lh) and last 8 bytes (tail), as read. */
static uint32_t ident_of(uint64_t filename, uint64_t qualname, const uint64_t lh[2], uint64_t tail,
			 uint32_t *unhashed)
{
	if (unhashed)
		*unhashed = FRAME_IDENT(filename, qualname, FILE_SUM(lh[0], ~0ULL, tail));
	return FRAME_IDENT(filename, qualname, FILE_SUM(lh[0], lh[1], tail));
}

/* Does the file name's tail count (as the BPF side reads it)? */
static bool tail_read(uint64_t len)
{
	return len >= FILE_TAIL_MIN && len <= FILE_LEN_MAX;
}

/*
 * A code object's identity as the BPF side reads it (FRAME_IDENT) from its file and name pointers
 * and its file name's FILE_SUM; *unhashed: the same with the hash not computed yet (-1: a str
 * computes it when first hashed; a stack read before that has this one).
 */
static uint32_t code_ident(const struct pyproc *pp, uint64_t filename, uint64_t qualname,
			   uint32_t *unhashed)
{
	const struct py_layout *l = &pp->t.layout;
	uint64_t lh[2] = {0, ~0ULL}, tail = 0;

	if (proc_read(pp->pid, filename + l->unicode_length, lh, 16) != 16) {
		lh[0] = 0;
		lh[1] = ~0ULL;
	}
	if (tail_read(lh[0]) &&
	    proc_read(pp->pid, filename + l->unicode_ascii_data + lh[0] - 8, &tail, 8) != 8)
		tail = 0;
	return ident_of(filename, qualname, lh, tail, unhashed);
}

static bool code_is(const struct pycode *c, uint32_t ident)
{
	return ident == c->ident || ident == c->ident_unhashed;
}

static struct pycode *code_read(struct pyproc *pp, uint64_t code)
{
	const struct py_layout *l = &pp->t.layout;
	uint8_t hdr[256];
	uint64_t fptr, qptr;
	int64_t ltlen;
	struct pycode *c;
	size_t need = l->code_adaptive;

	if (need > sizeof(hdr) || proc_read(pp->pid, code, hdr, need) != (ssize_t)need)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	memcpy(&fptr, hdr + l->code_filename, 8);
	memcpy(&qptr, hdr + l->code_qualname, 8);
	memcpy(&c->lt_ptr, hdr + l->code_linetable, 8);
	memcpy(&c->firstlineno, hdr + l->code_firstlineno, 4);
	c->ident = code_ident(pp, fptr, qptr, &c->ident_unhashed);
	c->file = py_read_str(pp->pid, fptr, l, 4096);
	c->qualname = py_read_str(pp->pid, qptr, l, 1024);
	if (c->lt_ptr && proc_read(pp->pid, c->lt_ptr + l->bytes_size, &ltlen, 8) == 8 &&
	    ltlen > 0 && ltlen <= MAX_LINETABLE) {
		c->lt = malloc(ltlen);
		if (c->lt && proc_read(pp->pid, c->lt_ptr + l->bytes_sval, c->lt, ltlen) == ltlen)
			c->ltlen = ltlen;
	}
	/*
	 * The process runs on while this reads: a code object freed meanwhile and another one
	 * laid out at the same addresses would mix the two. Read as one object only if its
	 * identity is the same after its strings and line table as before them.
	 */
	if (!c->file || !c->qualname || proc_read(pp->pid, code, hdr, need) != (ssize_t)need ||
	    memcmp(hdr + l->code_filename, &fptr, 8) || memcmp(hdr + l->code_qualname, &qptr, 8) ||
	    code_ident(pp, fptr, qptr, NULL) != c->ident) {
		code_free(c);
		return NULL;
	}
	return c;
}

/*
 * A code object by address, cached. `check`: make sure the cached one is still the object at
 * that address (code objects can be freed and their memory reused).
 */
static struct pycode *code_get(struct pyproc *pp, uint64_t code, bool check)
{
	struct pycode *c = hmap_get(&pp->codes, hkey2(code, 0));

	if (c && check) {
		uint64_t lt;
		int32_t first;

		/*
		 * Only a successful read that disagrees drops the entry: when the memory cannot be
		 * read (the process has just exited), nothing can have reused the address either.
		 */
		if (!code_head(pp, code, &lt, &first) &&
		    (lt != c->lt_ptr || first != c->firstlineno)) {
			hmap_del(&pp->codes, hkey2(code, 0));
			code_free(c);
			c = NULL;
		}
	}
	if (c)
		return c;
	c = code_read(pp, code);
	if (c && hmap_put(&pp->codes, hkey2(code, 0), c)) {
		code_free(c);
		return NULL;
	}
	return c;
}

static int frame_line(struct pyproc *pp, const struct pycode *c, const struct ev_frame *f,
		      uint64_t code)
{
	uint64_t start = code + pp->t.layout.code_adaptive;
	uint64_t idx;

	if (!c->lt || f->instr < start)
		return -1;
	idx = (f->instr - start) / 2;
	return py_line_at(c->lt, c->ltlen, c->firstlineno, (uint32_t)idx);
}

/* Give the BPF side a long-lived code object's identity (a free slot only). */
static void hot_add(struct pystacks *ps, struct pyproc *pp, uint64_t code, struct pycode *c)
{
	uint32_t slot = SQLSPAN_HOT_SLOT(code);
	struct hot_code hc = {.code = code, .tgid = (uint32_t)pp->pid, .ident = c->ident};

	/* where a call site can be: the BPF side may end the walk there (sqlspan.h) */
	if (py_is_app_file(c->file, ps->app_paths))
		hc.flags = HOT_APP;
	if (!strcmp(c->qualname, "greenlet_spawn"))
		hc.flags |= HOT_GS;
	/* without --stack, userspace reads only these frames (the BPF side sends no others) */
	if (!py_frame_read(c->file, c->qualname, ps->app_paths))
		hc.flags |= HOT_SKIP;

	if (!ps->hot_set || (!ps->hot && !(ps->hot = calloc(SQLSPAN_HOT_CODES, sizeof(*ps->hot)))))
		return;
	if (ps->hot[slot].code)
		return;
	ps->hot[slot] = (struct hot_entry){code, pp->pid, c->ident};
	ps->nhot++;
	c->hot = true;
	ps->hot_set(ps->arg, slot, &hc);
}

/* The code object a frame ran, cached; NULL if it is gone (unnamed, never misnamed). */
/* count: the stack counts towards making the code object hot. */
static struct pycode *frame_code(struct pystacks *ps, struct pyproc *pp, const struct ev_frame *f,
				 bool count)
{
	struct pycode *c = code_get(pp, f->code, false);

	if (c && f->ident && !code_is(c, f->ident)) {
		/* not the object named before at that address: read it again */
		code_free(hmap_del(&pp->codes, hkey2(f->code, 0)));
		c = code_get(pp, f->code, false);
	}
	if (c && f->ident && !code_is(c, f->ident))
		return NULL;
	if (c && f->ident && count && !c->hot && ++c->hits >= HOT_HITS)
		hot_add(ps, pp, f->code, c);
	return c;
}

/* Hot code objects checked per round of reads (three vectored reads each) */
#define HOT_CHECK_BATCH 512

struct hot_check {
	uint32_t slot;
	uint64_t p[3]; /* co_filename, co_name, co_qualname */
	uint64_t lh[2];
	uint64_t tail;
};

/* Drop a hot entry the process no longer holds: the BPF side reads that object again. */
static void hot_drop(struct pystacks *ps, struct pyproc *pp, uint32_t slot)
{
	struct hot_entry *e = &ps->hot[slot];
	struct hot_code zero = {0};

	ps->hot_set(ps->arg, slot, &zero);
	if (pp) /* named again from what is there now, if anything */
		code_free(hmap_del(&pp->codes, hkey2(e->code, 0)));
	memset(e, 0, sizeof(*e));
	ps->nhot--;
	ps->hot_dropped++;
}

/*
 * What the hot check reads of an entry in each phase (0: co_filename, co_name, co_qualname; 1:
 * the file name's length and hash; 2: its tail), as the BPF side reads them; false: nothing.
 */
static bool hot_piece(const struct py_layout *l, uint64_t code, struct hot_check *h, int phase,
		      struct proc_piece *p)
{
	if (phase == 0)
		*p = (struct proc_piece){code + l->code_filename, h->p, sizeof(h->p), false};
	else if (phase == 1 && h->p[0])
		*p = (struct proc_piece){h->p[0] + l->unicode_length, h->lh, sizeof(h->lh), false};
	else if (phase == 2 && h->p[0] && tail_read(h->lh[0]))
		*p = (struct proc_piece){h->p[0] + l->unicode_ascii_data + h->lh[0] - 8, &h->tail,
					 sizeof(h->tail), false};
	else
		return false;
	return true;
}

/* An entry's fields from `phase` on as when unread (a piece cut short may be half written). */
static void hot_unread(struct hot_check *h, int phase)
{
	if (phase == 0)
		h->p[0] = 0; /* not readable: not that object */
	if (phase <= 1) {
		h->lh[0] = 0;
		h->lh[1] = ~0ULL;
	}
	h->tail = 0;
}

/*
 * Check up to HOT_CHECK_BATCH entries of one process, each still that object? (co_filename,
 * co_name, co_qualname and the file name's length, hash and tail, as the BPF side reads them; or
 * as it did before that hash was computed). Three vectored reads for them all, one per phase.
 */
static void hot_check_batch(struct pystacks *ps, struct pyproc *pp, struct hot_check *hc, size_t n)
{
	const struct py_layout *l = &pp->t.layout;
	struct proc_piece pc[HOT_CHECK_BATCH];
	uint16_t at[HOT_CHECK_BATCH];

	for (size_t i = 0; i < n; i++)
		hot_unread(&hc[i], 1);
	for (int phase = 0; phase < 3; phase++) {
		size_t m = 0;

		for (size_t i = 0; i < n; i++) {
			if (hot_piece(l, ps->hot[hc[i].slot].code, &hc[i], phase, &pc[m]))
				at[m++] = (uint16_t)i;
		}
		ps->hot_reads += m ? proc_read_many(pp->pid, pc, m) : 0;
		for (size_t j = 0; j < m; j++) {
			if (!pc[j].ok)
				hot_unread(&hc[at[j]], phase);
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct hot_entry *e = &ps->hot[hc[i].slot];
		uint32_t unhashed;

		if (hc[i].p[0] && (ident_of(hc[i].p[0], hc[i].p[2], hc[i].lh, hc[i].tail,
					    &unhashed) == e->ident ||
				   unhashed == e->ident))
			continue;
		hot_drop(ps, pp, hc[i].slot);
	}
}

void pystacks_check_hot(struct pystacks *ps)
{
	static struct hot_check hc[HOT_CHECK_BATCH];

	if (!ps->hot || !ps->nhot)
		return;
	/* entries of processes no longer traced: dropped */
	for (uint32_t slot = 0; slot < SQLSPAN_HOT_CODES; slot++) {
		if (ps->hot[slot].code && !proc_of(ps, ps->hot[slot].pid))
			hot_drop(ps, NULL, slot);
	}
	for (int k = 0; k < ps->nprocs && ps->nhot; k++) {
		struct pyproc *pp = &ps->procs[k];
		size_t n = 0;

		for (uint32_t slot = 0; slot < SQLSPAN_HOT_CODES; slot++) {
			if (ps->hot[slot].code && ps->hot[slot].pid == pp->pid)
				hc[n++].slot = slot;
			if (n == HOT_CHECK_BATCH || (n && slot == SQLSPAN_HOT_CODES - 1)) {
				hot_check_batch(ps, pp, hc, n);
				n = 0;
			}
		}
	}
}

/* The rendered URL of an engine object (engines live long), cached per (engine, URL object). */
static const char *url_of_engine(struct pyproc *pp, uint64_t engine)
{
	struct pyobj_src src = {pp->pid, &pp->t.layout, &pp->slots};
	uint64_t url;
	struct hkey k;
	char *s;

	if (pyobj_attr(&src, engine, "url", &url))
		return NULL;
	k = hkey2(engine, url);
	s = hmap_get(&pp->urls, k);
	if (s)
		return s;
	s = pyobj_sa_url(&src, url);
	if (s && hmap_put(&pp->urls, k, s)) {
		free(s);
		return NULL;
	}
	return s;
}

/*
 * Add a code object to a list the BPF side compares frames with (sa_code, gs_fast: zeroes at the
 * end): true if it was not there and there was room.
 */
static bool code_list_add(__u64 *list, int n, uint64_t code)
{
	for (int i = 0; i < n; i++) {
		if (list[i] == code)
			return false;
		if (!list[i]) {
			list[i] = code;
			return true;
		}
	}
	return false;
}

/*
 * Where instances of type keep attribute `name` among their values, for the BPF side
 * (inst_values): slot, and 3.13+ inline values' valid flag (from the object). 0, or -1.
 */
static int attr_slot(struct pyproc *pp, uint64_t type, const char *name, int32_t *slot,
		     int32_t *valid)
{
	struct pyobj_src src = {pp->pid, &pp->t.layout, &pp->slots};
	const struct py_layout *l = &pp->t.layout;
	int64_t idx, basic;

	if (pyobj_type_key_index(&src, type, name, &idx))
		return -1;
	*slot = l->values_items + 8 * idx;
	*valid = 0;
	if (l->values_valid >= 0) { /* inline values, after the object's basic size */
		basic = pyobj_type_basicsize(&src, type);
		if (basic < 0)
			return -1;
		*slot += basic;
		*valid = basic + l->values_valid;
	}
	return 0;
}

/*
 * Teach the BPF side to read Connection.engine at the statement: the code objects of the
 * Connection methods on the stack (long-lived: readable whenever the record is), then, from the
 * type the BPF side saw there, where that type keeps `engine` among an instance's values.
 */
static void sa_learn(struct pyproc *pp, const struct ev_stack *st, uint64_t code)
{
	int32_t slot, valid;

	if (code)
		code_list_add(pp->lr.sa_code, SQLSPAN_SA_CODES, code);
	if (st->sa_type && st->sa_type != pp->lr.sa_type &&
	    !attr_slot(pp, st->sa_type, "engine", &slot, &valid)) {
		pp->lr.sa_type = st->sa_type;
		pp->lr.sa_slot = slot;
		pp->lr.sa_valid = valid;
	}
}

/* A type named `name` whose instances keep `attr` among their values: learnt into the outs. */
static bool type_attr_learn(struct pyproc *pp, uint64_t type, const char *name, const char *attr,
			    __u64 *type_out, __s32 *slot, __s32 *valid)
{
	struct pyobj_src src = {pp->pid, &pp->t.layout, &pp->slots};

	if (!type || *type_out || !pyobj_type_is_type(&src, type, name) ||
	    attr_slot(pp, type, attr, slot, valid))
		return false;
	*type_out = type;
	return true;
}

/*
 * Teach the BPF side a Session's Connection (session_conn), from the types the BPF side saw at a
 * statement while it did not know them: the object greenlet_spawn's bound method is bound to (a
 * Session: where it keeps `_transaction`), then that Session's `_transaction` (a
 * SessionTransaction: where it keeps `_connections`). Types live long: read when the record is.
 * Subclasses of Session are not taken (their Connection is read in the greenlet). True if
 * something was learnt.
 */
static bool session_learn(struct pyproc *pp, const struct ev_stack *st)
{
	struct py_learnt *lr = &pp->lr;
	bool learnt;

	if (pp->session_tries <= 0)
		return false;
	pp->session_tries--; /* bounded: what cannot be learnt must not cost every statement */
	learnt = type_attr_learn(pp, st->gs_self_type, "Session", "_transaction", &lr->ss_type,
				 &lr->ss_tx_slot, &lr->ss_tx_valid);
	if (lr->ss_type)
		learnt |= type_attr_learn(pp, st->st_tx_type, "SessionTransaction", "_connections",
					  &lr->st_type, &lr->st_conns_slot, &lr->st_conns_valid);
	return learnt;
}

/*
 * The URL of the engine the BPF side read at the statement from a Connection it found on the
 * running stack (no frame of it: no dialect to go by), remembered per engine (engines live long).
 */
static const char *engine_url_direct(struct pyproc *pp, const struct ev_stack *st)
{
	struct dialect_url *du;
	const char *s;

	if (!st->sa_engine)
		return NULL;
	du = hmap_get(&pp->dialect_urls, hkey2(st->sa_engine, 1));
	if (du)
		return du->url;
	s = url_of_engine(pp, st->sa_engine);
	if (!s)
		return NULL;
	du = malloc(sizeof(*du));
	if (du) {
		du->engine = st->sa_engine;
		du->url = s;
		if (hmap_put(&pp->dialect_urls, hkey2(st->sa_engine, 1), du))
			free(du);
	}
	return s;
}

/*
 * The URL of the Connection's engine, password hidden. Stacks are resolved a little after the
 * statement (records are read in batches): by then a short-lived Connection may be gone and
 * its memory reused. Remembered per dialect (the Connection's frame passes it along: local 1 of
 * _execute_context and friends; one per engine, as long-lived), with the engine it was checked
 * with. Read, when not known yet or when the statement names another engine: the engine the BPF
 * side read at the statement if its dialect is that one, else the Connection itself if it still
 * has that dialect (so still lives).
 */
static const char *engine_url(struct pyproc *pp, const struct ev_stack *st, uint64_t conn,
			      uint64_t dialect, enum url_from *from)
{
	struct pyobj_src src = {pp->pid, &pp->t.layout, &pp->slots};
	struct dialect_url *du;
	uint64_t d, engine = 0;
	const char *s = NULL;

	*from = URL_NONE;
	if (!dialect) {
		s = engine_url_direct(pp, st);
		*from = s ? URL_STATEMENT : URL_NONE;
		return s;
	}
	/* known, and the engine read at the statement (if any) is the one checked: no reads */
	du = hmap_get(&pp->dialect_urls, hkey2(dialect, 0));
	if (du && (!st->sa_engine || st->sa_engine == du->engine)) {
		*from = st->sa_engine ? URL_STATEMENT : URL_REMEMBERED;
		return du->url;
	}
	if (st->sa_engine && !pyobj_attr(&src, st->sa_engine, "dialect", &d) && d == dialect) {
		engine = st->sa_engine;
		*from = URL_STATEMENT;
	} else if (!pyobj_attr(&src, conn, "dialect", &d) && d == dialect &&
		   !pyobj_attr(&src, conn, "engine", &engine)) {
		*from = URL_LIVE;
	} else {
		engine = 0;
	}
	if (engine)
		s = url_of_engine(pp, engine);
	if (!s) {
		*from = du ? URL_REMEMBERED : URL_NONE;
		return du ? du->url : NULL;
	}
	if (!du) {
		du = malloc(sizeof(*du));
		if (!du || hmap_put(&pp->dialect_urls, hkey2(dialect, 0), du)) {
			free(du);
			return s;
		}
	}
	du->engine = engine;
	du->url = s;
	return s;
}

/* Where a Task keeps its name: right after its coroutine (TaskObj: task_coro, task_name). */
static int32_t task_name_offset(struct pyobj_src *src, uint64_t task)
{
	uint64_t words[50];

	if (proc_read(src->pid, task, words, sizeof(words)) != (ssize_t)sizeof(words))
		return -1;
	for (int32_t i = 2; i + 1 < 50; i++) { /* after PyObject_HEAD */
		if (words[i] && pyobj_type_is(src, words[i], "coroutine"))
			return (i + 1) * 8;
	}
	return -1;
}

/* asyncio's C task-step wrapper (in 3.12+ a heap type named after its module)? */
static bool step_wrapper_type(const struct pyobj_src *src, uint64_t type)
{
	return pyobj_type_is_type(src, type, "TaskStepMethWrapper") ||
	       pyobj_type_is_type(src, type, "_asyncio.TaskStepMethWrapper");
}

/*
 * Teach the BPF side to find the running asyncio Task (py_learnt.task_*): the code of
 * Handle._run; from its Handle's type, where _callback is; from the callback's type (as the BPF
 * side saw it, or live), the task-step wrapper's type; from a live Task (the callback's, if it
 * is still there, or the one the BPF side found in it: Tasks outlive their Handles), the
 * Task's type and where it keeps its name.
 * Builtin methods (Task.__wakeup) are PyCFunction_Type, known from the start.
 */
static void task_learn(struct pyproc *pp, const struct ev_stack *st, const struct ev_frame *f)
{
	struct pyobj_src src = {pp->pid, &pp->t.layout, &pp->slots};
	const struct py_layout *l = &pp->t.layout;
	struct py_learnt *lr = &pp->lr;
	uint64_t handle = f->local[0] & (l->code_tagged ? ~3ULL : ~0ULL), type, cb = 0, task = 0;
	int64_t off;

	lr->task_run_code = f->code;
	type = st->task_handle_type ? st->task_handle_type : pyobj_type(&src, handle);
	if (type && type != lr->task_handle_type &&
	    !pyobj_member_offset(&src, type, "_callback", &off)) {
		lr->task_handle_type = type;
		lr->task_cb_off = off;
	}
	/* the callback: its type as the BPF side saw it (types live long), or the live one */
	if (type && type == lr->task_handle_type && pyobj_type(&src, handle) == type)
		proc_read(pp->pid, handle + lr->task_cb_off, &cb, 8);
	type = st->task_cb_type ? st->task_cb_type : cb ? pyobj_type(&src, cb) : 0;
	if (type && !lr->task_step_type && step_wrapper_type(&src, type)) {
		lr->task_step_type = type;
		lr->task_step_off = STEP_WRAPPER_TASK;
	}
	/* the Task, live, to find where it keeps its name */
	if (cb && !lr->task_type) {
		type = pyobj_type(&src, cb);
		if (type && type == lr->task_meth_type)
			proc_read(pp->pid, cb + lr->task_meth_off, &task, 8);
		else if (type && type == lr->task_step_type)
			proc_read(pp->pid, cb + lr->task_step_off, &task, 8);
	}
	if (!task && !lr->task_type)
		task = st->task_obj; /* what the BPF side found where the callback keeps it */
	if (task && pyobj_type_is(&src, task, "_asyncio.Task")) {
		int32_t name_off = task_name_offset(&src, task);

		if (name_off > 0) {
			lr->task_type = pyobj_type(&src, task);
			lr->task_name_off = name_off;
		}
	}
}

/* The task's name the BPF side copied (or its number: 3.12+ name unnamed tasks when asked). */
static void task_name(const struct ev_stack *st, char *out, size_t n)
{
	out[0] = 0;
	if (st->task_kind == TASK_NAME_STR && st->task_len < SQLSPAN_TASK_NAME) {
		size_t len = st->task_len < n - 1 ? st->task_len : n - 1;

		memcpy(out, st->task_name, len);
		out[len] = 0;
		for (size_t i = 0; i < len; i++) {
			if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] > 0x7e)
				out[i] = '?'; /* ASCII only is copied; keep it printable */
		}
	} else if (st->task_kind == TASK_NAME_NUM) {
		snprintf(out, n, "Task-%llu", (unsigned long long)st->task_num);
	}
}

void pystacks_prefetch(struct pystacks *ps, const struct ev_stack *st, size_t size)
{
	struct pyproc *pp = proc_of(ps, st->h.pid);
	struct py_learnt before;
	uint64_t tag_mask;

	if (!pp || size < sizeof(*st) + (size_t)st->nframes * sizeof(struct ev_frame))
		return;
	/*
	 * Only while there is something to learn or to read live: the first stacks of a process,
	 * a Connection whose engine the BPF side could not read, a Task it cannot name yet.
	 */
	if (pp->prefetch_left) {
		pp->prefetch_left--;
	} else if (pp->retry_left &&
		   ((st->sa_type && !st->sa_engine) ||
		    (st->task_handle_type && !(pp->lr.task_type && pp->lr.task_step_type)) ||
		    (st->task_cb_type && !pp->lr.task_step_type))) {
		pp->retry_left--; /* bounded: what cannot be learnt must not cost every statement */
	} else {
		return;
	}
	tag_mask = pp->t.layout.code_tagged ? ~3ULL : ~0ULL;
	before = pp->lr;
	for (uint32_t i = 0; i < st->nframes; i++) {
		const struct ev_frame *f = &st->frames[i];
		struct pycode *c = frame_code(ps, pp, f, false);

		if (!c)
			continue;
		if (py_is_sa_connection_frame(c->file, c->qualname)) {
			enum url_from from;

			sa_learn(pp, st, f->code);
			engine_url(pp, st, f->local[0] & tag_mask, f->local[1] & tag_mask, &from);
		}
		if (py_is_asyncio_handle_run(c->file, c->qualname) &&
		    (!pp->lr.task_type || !pp->lr.task_step_type ||
		     pp->lr.task_run_code != f->code ||
		     st->task_handle_type != pp->lr.task_handle_type))
			task_learn(pp, st, f);
	}
	if (memcmp(&before, &pp->lr, sizeof(before)) && ps->learnt)
		ps->learnt(ps->arg, pp);
}

bool pystacks_all_learnt(const struct pyproc *pp)
{
	return pp->lr.sa_type && pp->lr.sa_slot >= 0 && pp->lr.task_type && pp->lr.task_step_type;
}

void pystacks_resolve(struct pystacks *ps, const struct ev_stack *st, size_t size, bool want_text,
		      struct span_py *out)
{
	struct pyproc *pp = proc_of(ps, st->h.pid);
	struct strbuf js = {0};
	bool found_site = false, learnt = false;
	uint64_t tag_mask, dialect = 0;

	memset(out, 0, sizeof(*out));
	if (!pp || size < sizeof(*st) + (size_t)st->nframes * sizeof(struct ev_frame))
		return;
	out->present = true;
	out->line = -1;
	/* 3.14: locals are tagged _PyStackRefs, the low bits are not part of the address */
	tag_mask = pp->t.layout.code_tagged ? ~3ULL : ~0ULL;
	out->cut = st->flags & (STACK_CUT | STACK_FAULT);
	if (st->flags & STACK_NO_THREAD) {
		out->problem = strdup("the thread's Python state was not found");
		return;
	}
	if (ps->want_stack)
		sb_char(&js, '[');
	for (uint32_t i = 0; i < st->nframes; i++) {
		const struct ev_frame *f = &st->frames[i];
		bool app, glet;
		struct pycode *c = frame_code(ps, pp, f, true);

		if (!c)
			continue;
		glet = f->owner & FRAME_GREENLET;
		/* the call site is on the running stack: the greenlet's frames are SQLAlchemy's */
		app = !glet && py_is_app_file(c->file, ps->app_paths);
		if (app && !found_site) {
			/* the call site: make sure the cached code object is still this one */
			c = code_get(pp, f->code, true);
			if (!c)
				continue;
			found_site = true;
			out->function = strdup(c->qualname);
			out->file = strdup(c->file);
			out->line = frame_line(pp, c, f, f->code);
		}
		if (!out->sa_conn && py_is_sa_connection_frame(c->file, c->qualname)) {
			out->sa_conn = f->local[0] & tag_mask;
			dialect = f->local[1] & tag_mask;
		}
		if (want_text && !out->sa_statement && py_is_sa_do_execute(c->file, c->qualname))
			out->sa_statement = py_read_str(pp->pid, f->local[2] & tag_mask,
							&pp->t.layout, 1 << 20);
		/* the same text on the running stack, where the greenlet is not walked */
		if (want_text && !out->sa_statement && !glet &&
		    py_is_sa_asyncpg_prepare(c->file, c->qualname))
			out->sa_statement = py_read_str(pp->pid, f->local[1] & tag_mask,
							&pp->t.layout, 1 << 20);
		if (!glet && py_is_sa_async_statement(c->file, c->qualname))
			learnt |= code_list_add(pp->lr.gs_fast, SQLSPAN_GS_FAST, f->code);
		if (py_is_sa_pool_reset(c->file, c->qualname))
			out->pool_reset = true;
		if (ps->want_stack) {
			char item[8192];

			snprintf(item, sizeof(item), "%s (%s:%d)", c->qualname, c->file,
				 frame_line(pp, c, f, f->code));
			if (js.len > 1)
				sb_char(&js, ',');
			sb_json(&js, item);
		}
	}
	if ((st->gs_self_type && !pp->lr.ss_type) || (st->st_tx_type && !pp->lr.st_type))
		learnt |= session_learn(pp, st);
	/* the Connection greenlet_spawn was called for, its greenlet not walked (gs_fast) */
	if (!out->sa_conn && st->sa_conn) {
		out->sa_conn = st->sa_conn;
		dialect = 0;
	}
	if (learnt && ps->learnt)
		ps->learnt(ps->arg, pp);
	if (out->sa_conn) {
		enum url_from from;

		out->sa_url = engine_url(pp, st, out->sa_conn, dialect, &from);
		ps->urls_from[from]++;
	}
	task_name(st, out->task_name, sizeof(out->task_name));
	if (ps->want_stack) {
		if (out->cut) {
			if (js.len > 1)
				sb_char(&js, ',');
			sb_json(&js, "...");
		}
		sb_char(&js, ']');
		out->stack = sb_take(&js);
	}
}
