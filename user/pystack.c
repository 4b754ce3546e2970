// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../bpf/sqlspan.h"
#include "pgident.h"
#include "pyframes.h"
#include "pyline.h"
#include "pystack.h"

#define MAX_LINETABLE 65536

struct pycode {
	uint32_t ident; /* FRAME_IDENT of its co_filename and co_qualname pointers */
	char *file;
	char *qualname;
	int firstlineno;
	uint8_t *lt;
	size_t ltlen;
	uint64_t lt_ptr;
};

static void put_utf8(char *out, size_t *o, uint32_t cp)
{
	if (cp < 0x80) {
		out[(*o)++] = cp;
	} else if (cp < 0x800) {
		out[(*o)++] = 0xc0 | (cp >> 6);
		out[(*o)++] = 0x80 | (cp & 0x3f);
	} else if (cp < 0x10000) {
		out[(*o)++] = 0xe0 | (cp >> 12);
		out[(*o)++] = 0x80 | ((cp >> 6) & 0x3f);
		out[(*o)++] = 0x80 | (cp & 0x3f);
	} else {
		out[(*o)++] = 0xf0 | (cp >> 18);
		out[(*o)++] = 0x80 | ((cp >> 12) & 0x3f);
		out[(*o)++] = 0x80 | ((cp >> 6) & 0x3f);
		out[(*o)++] = 0x80 | (cp & 0x3f);
	}
}

char *py_read_str(pid_t pid, uint64_t addr, const struct py_layout *l, size_t max)
{
	uint8_t hdr[64], *raw;
	int64_t len;
	uint32_t state;
	int kind, compact, ascii;
	size_t o = 0, need;
	char *out;

	/*
	 * Read no further than the header fields: a short str can end a page that nothing follows
	 * (the end of an allocator arena), and a longer read would fail.
	 */
	need = l->unicode_state + 4 > l->unicode_length + 8 ? l->unicode_state + 4
							    : l->unicode_length + 8;
	if (!addr || need > sizeof(hdr) || proc_read(pid, addr, hdr, need) != (ssize_t)need)
		return NULL;
	memcpy(&len, hdr + l->unicode_length, 8);
	memcpy(&state, hdr + l->unicode_state, 4);
	kind = (state >> 2) & 7;
	compact = (state >> 5) & 1;
	ascii = (state >> 6) & 1;
	if (len < 0 || !compact || (kind != 1 && kind != 2 && kind != 4))
		return NULL;
	if ((size_t)len > max)
		len = max;
	raw = malloc(len * kind + 1);
	out = malloc(len * 4 + 1);
	if (!raw || !out ||
	    proc_read(pid, addr + (ascii ? l->unicode_ascii_data : l->unicode_compact_data), raw,
		      len * kind) != len * kind) {
		free(raw);
		free(out);
		return NULL;
	}
	for (int64_t i = 0; i < len; i++) {
		uint32_t cp;

		if (kind == 1) {
			cp = raw[i];
		} else if (kind == 2) {
			uint16_t c;

			memcpy(&c, raw + i * 2, 2);
			cp = c;
		} else {
			memcpy(&cp, raw + i * 4, 4);
			if (cp > 0x10ffff)
				cp = 0xfffd;
		}
		put_utf8(out, &o, cp);
	}
	out[o] = 0;
	free(raw);
	return out;
}

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
	hmap_init(&np->codes);
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
		size_t pos = 0;

		while ((c = hmap_next(&ps->procs[i].codes, &pos, NULL)))
			code_free(c);
		hmap_free(&ps->procs[i].codes);
	}
	free(ps->procs);
	ps->procs = NULL;
	ps->nprocs = 0;
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
	c->ident = FRAME_IDENT(fptr, qptr);
	c->file = py_read_str(pp->pid, fptr, l, 4096);
	c->qualname = py_read_str(pp->pid, qptr, l, 1024);
	if (c->lt_ptr && proc_read(pp->pid, c->lt_ptr + l->bytes_size, &ltlen, 8) == 8 &&
	    ltlen > 0 && ltlen <= MAX_LINETABLE) {
		c->lt = malloc(ltlen);
		if (c->lt && proc_read(pp->pid, c->lt_ptr + l->bytes_sval, c->lt, ltlen) == ltlen)
			c->ltlen = ltlen;
	}
	if (!c->file || !c->qualname) {
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

/* A growing JSON text. */
struct jbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static bool jb_room(struct jbuf *b, size_t more)
{
	if (b->oom)
		return false;
	if (b->len + more + 1 > b->cap) {
		size_t nc = (b->len + more + 1) * 2;
		char *np = realloc(b->p, nc);

		if (!np) {
			b->oom = true;
			return false;
		}
		b->p = np;
		b->cap = nc;
	}
	return true;
}

static void jb_char(struct jbuf *b, char c)
{
	if (jb_room(b, 1)) {
		b->p[b->len++] = c;
		b->p[b->len] = 0;
	}
}

static void jb_str(struct jbuf *b, const char *s)
{
	if (!jb_room(b, strlen(s) * 6 + 2))
		return;
	b->p[b->len++] = '"';
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\') {
			b->p[b->len++] = '\\';
			b->p[b->len++] = *p;
		} else if (*p < 0x20) {
			b->len += sprintf(b->p + b->len, "\\u%04x", *p);
		} else {
			b->p[b->len++] = *p;
		}
	}
	b->p[b->len++] = '"';
	b->p[b->len] = 0;
}

void pystacks_resolve(struct pystacks *ps, const struct ev_stack *st, size_t size,
		      struct span_py *out)
{
	struct pyproc *pp = proc_of(ps, st->h.pid);
	struct jbuf js = {0};
	bool found_site = false;
	uint64_t tag_mask;

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
		jb_char(&js, '[');
	for (uint32_t i = 0; i < st->nframes; i++) {
		const struct ev_frame *f = &st->frames[i];
		bool app, glet;
		struct pycode *c = code_get(pp, f->code, false);

		if (c && f->ident && c->ident != f->ident) {
			/* not the object named before at that address: read it again */
			code_free(hmap_del(&pp->codes, hkey2(f->code, 0)));
			c = code_get(pp, f->code, false);
		}
		if (c && f->ident && c->ident != f->ident)
			c = NULL; /* the code object that ran is gone: unnamed, never misnamed */
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
		if (!out->sa_conn && py_is_sa_connection_frame(c->file, c->qualname))
			out->sa_conn = f->local[0] & tag_mask;
		if (!out->sa_statement && py_is_sa_do_execute(c->file, c->qualname))
			out->sa_statement = py_read_str(pp->pid, f->local[2] & tag_mask,
							&pp->t.layout, 1 << 20);
		if (py_is_sa_pool_reset(c->file, c->qualname))
			out->pool_reset = true;
		if (ps->want_stack) {
			char item[8192];

			snprintf(item, sizeof(item), "%s (%s:%d)", c->qualname, c->file,
				 frame_line(pp, c, f, f->code));
			if (js.len > 1)
				jb_char(&js, ',');
			jb_str(&js, item);
		}
	}
	if (ps->want_stack) {
		if (out->cut) {
			if (js.len > 1)
				jb_char(&js, ',');
			jb_str(&js, "...");
		}
		jb_char(&js, ']');
		if (js.oom)
			free(js.p);
		else
			out->stack = js.p;
	}
}
