// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "assemble.h"
#include "assemble_int.h"
#include "hmap.h"
#include "redact.h"
#include "sqllex.h"
#include "../bpf/sqlspan.h"

/* xoshiro256** */
static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

static void rng_fill(uint64_t *s, uint8_t *buf, size_t n)
{
	while (n) {
		uint64_t v = rng_next(s);
		size_t k = n < 8 ? n : 8;

		memcpy(buf, &v, k);
		buf += k;
		n -= k;
	}
}

struct assembler *asm_new(const struct asm_hooks *hooks, size_t max_text, uint64_t seed)
{
	struct assembler *a = calloc(1, sizeof(*a));
	uint64_t z = seed;

	if (!a)
		return NULL;
	a->h = *hooks;
	a->max_text = max_text;
	/* splitmix64 to seed the generator */
	for (int i = 0; i < 4; i++) {
		uint64_t x = (z += 0x9e3779b97f4a7c15ULL);

		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
		x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
		a->rng[i] = x ^ (x >> 31);
	}
	hmap_init(&a->conns);
	hmap_init(&a->peers);
	return a;
}

void span_py_free(struct span_py *p)
{
	free(p->function);
	free(p->file);
	free(p->stack);
	free(p->sa_statement);
	free(p->problem);
	memset(p, 0, sizeof(*p));
}

void span_free(struct span *s)
{
	if (!s)
		return;
	free(s->text);
	span_py_free(&s->py);
	free(s);
}

void prep_clear(struct aconn *c)
{
	for (size_t i = 0; i < c->nprep; i++)
		free(c->prep[i].text);
	free(c->prep);
	c->prep = NULL;
	c->nprep = 0;
}

void conn_ident_free(struct conn_ident *id)
{
	free(id->db);
	free(id->user);
	free(id->host);
	free(id->unix_path);
	memset(id, 0, sizeof(*id));
}

/* Identity as the BPF side read it when the socket was first seen. */
static void on_ident(struct assembler *a, const struct ev_ident *e, size_t size)
{
	struct conn_ident *id;
	struct aconn *c;

	if (size < sizeof(*e)) {
		a->st.bad_records++;
		return;
	}
	c = conn_get(a, e->h.pid, e->fd, true);
	if (!c)
		return;
	id = &c->ident;
	conn_ident_free(id);
	c->have_ident = true;
	id->known = true;
#define STR(dst, src)                                                                              \
	(dst = strndup(src, sizeof(src)), (dst && !*dst) ? (free(dst), dst = NULL) : 0)
	STR(id->db, e->db);
	STR(id->user, e->user);
	STR(id->host, e->host);
#undef STR
	id->backend_pid = e->status == 0 ? e->be_pid : 0;
	memcpy(id->comm, e->comm, sizeof(id->comm));
	id->comm[sizeof(id->comm) - 1] = 0;
	id->tls = e->ssl == 1;
	{
		char port[sizeof(e->port) + 1];

		memcpy(port, e->port, sizeof(e->port));
		port[sizeof(e->port)] = 0;
		id->port = port[0] ? atoi(port) : (id->host ? 5432 : 0);
	}
	if (e->host_type == 2 && id->host) {
		size_t len = strlen(id->host) + 32;

		id->unix_path = malloc(len);
		if (id->unix_path)
			snprintf(id->unix_path, len, "%s/.s.PGSQL.%d", id->host, id->port);
	}
	if (!id->db && !id->user && !id->host) /* nothing could be read: try from userspace */
		c->have_ident = false;
	c->conn = e->conn;
}

static void conn_identify(struct assembler *a, struct aconn *c)
{
	conn_ident_free(&c->ident);
	c->have_ident = true;
	if (a->h.ident)
		a->h.ident(a->h.arg, c->pid, c->conn, c->fd, &c->ident);
}

static void conn_free(struct aconn *c)
{
	conn_ident_free(&c->ident);
	wire_conn_free(c);
	for (size_t i = 0; i < c->qlen; i++)
		span_free(c->q[(c->qhead + i) % c->qcap]);
	free(c->q);
	prep_clear(c);
	free(c);
}

void asm_free(struct assembler *a)
{
	struct aconn *c;
	size_t pos = 0;

	if (!a)
		return;
	while ((c = hmap_next(&a->conns, &pos, NULL)))
		conn_free(c);
	hmap_free(&a->conns);
	peers_forget(a, 0);
	hmap_free(&a->peers);
	for (size_t i = 0; i < a->ntexts; i++)
		free(a->texts[i].buf);
	free(a->texts);
	for (size_t i = 0; i < a->nstacks; i++)
		free(a->stacks[i].rec);
	free(a->stacks);
	free(a);
}

const struct asm_stats *asm_stats(const struct assembler *a)
{
	return &a->st;
}

uint64_t asm_open_spans(const struct assembler *a)
{
	return a->open;
}

/* ---- queue ---- */

static struct span *q_front(struct aconn *c)
{
	return c->qlen ? c->q[c->qhead] : NULL;
}

struct span *q_back(struct aconn *c)
{
	return c->qlen ? c->q[(c->qhead + c->qlen - 1) % c->qcap] : NULL;
}

static struct span *q_pop(struct aconn *c)
{
	struct span *s;

	if (!c->qlen)
		return NULL;
	s = c->q[c->qhead];
	c->qhead = (c->qhead + 1) % c->qcap;
	c->qlen--;
	return s;
}

static int q_push(struct aconn *c, struct span *s)
{
	if (c->qlen == c->qcap) {
		size_t ncap = c->qcap ? c->qcap * 2 : 8;
		struct span **nq = malloc(ncap * sizeof(*nq));

		if (!nq)
			return -1;
		for (size_t i = 0; i < c->qlen; i++)
			nq[i] = c->q[(c->qhead + i) % c->qcap];
		free(c->q);
		c->q = nq;
		c->qcap = ncap;
		c->qhead = 0;
	}
	c->q[(c->qhead + c->qlen) % c->qcap] = s;
	c->qlen++;
	return 0;
}

/* ---- prepared statements ---- */

struct prepared *prep_find(struct aconn *c, const char *name)
{
	for (size_t i = 0; i < c->nprep; i++) {
		if (!strcmp(c->prep[i].name, name))
			return &c->prep[i];
	}
	return NULL;
}

static void prep_forget(struct aconn *c, const char *name)
{
	struct prepared *p = prep_find(c, name);

	if (!p)
		return;
	free(p->text);
	*p = c->prep[--c->nprep];
}

void prep_remember(struct aconn *c, const char *name, const char *text, size_t len,
		   enum text_state state)
{
	struct prepared *p = prep_find(c, name);

	if (!p) {
		struct prepared *np;

		if (c->nprep >= MAX_PREPARED)
			prep_forget(c, c->prep[0].name);
		np = realloc(c->prep, (c->nprep + 1) * sizeof(*np));
		if (!np)
			return;
		c->prep = np;
		p = &c->prep[c->nprep++];
		memset(p, 0, sizeof(*p));
		snprintf(p->name, sizeof(p->name), "%s", name);
	}
	free(p->text);
	p->text = NULL;
	p->len = 0;
	p->state = state;
	if (text) {
		p->text = malloc(len + 1);
		if (!p->text) {
			p->state = TEXT_UNKNOWN;
			return;
		}
		memcpy(p->text, text, len);
		p->text[len] = 0;
		p->len = len;
	}
}

/* SQL-level DEALLOCATE / DISCARD ALL drop prepared statements too. */
static void sql_deallocate(struct aconn *c, const struct span *s)
{
	struct sql_lexer lx;
	struct sql_tok t;
	char name[SQLSPAN_NAME_LEN];

	if (!strcmp(s->tag.tag, "DEALLOCATE ALL") || !strcmp(s->tag.tag, "DISCARD ALL")) {
		prep_clear(c);
		return;
	}
	if (strcmp(s->tag.tag, "DEALLOCATE") || !s->text)
		return;
	sql_lex_init(&lx, s->text, s->text_len);
	t = sql_lex_next(&lx);
	if (!sql_tok_is(&t, "DEALLOCATE"))
		return;
	t = sql_lex_next(&lx);
	if (sql_tok_is(&t, "PREPARE"))
		t = sql_lex_next(&lx);
	if (t.type == TK_QIDENT && t.n >= 2)
		snprintf(name, sizeof(name), "%.*s", (int)t.n - 2, t.s + 1);
	else if (t.type == TK_WORD)
		snprintf(name, sizeof(name), "%.*s", (int)t.n, t.s);
	else
		return;
	prep_forget(c, name);
}

/* ---- finishing spans ---- */

static void txn_end(struct assembler *a, struct aconn *c, enum txn_outcome outcome)
{
	if (!c->txn_open)
		return;
	c->txn_open = false;
	c->txn.outcome = outcome;
	a->st.txns++;
	if (a->h.txn)
		a->h.txn(a->h.arg, &c->txn);
}

/*
 * Transactions, as the server reports them: the transaction status after each statement
 * (ReadyForQuery) says when one opens (idle -> in transaction) and ends (back to idle).
 */
/*
 * The transaction status after a statement: from its ReadyForQuery, or, for statements of a
 * pipeline (which end at CommandComplete, before the sync's ReadyForQuery), from their command
 * tag and the connection's state.
 */
static uint8_t status_after(const struct aconn *c, const struct span *s)
{
	const char *tag = s->tag.tag;

	if (s->txn_status)
		return s->txn_status;
	if (!strcmp(tag, "BEGIN") || !strcmp(tag, "START TRANSACTION"))
		return 'T';
	if (!strcmp(tag, "COMMIT") || !strcmp(tag, "ROLLBACK"))
		return 'I';
	if (c->txn_open)
		return s->has_error ? 'E' : 'T';
	return 0;
}

static void txn_track(struct assembler *a, struct aconn *c, struct span *s)
{
	uint8_t after = status_after(c, s);

	if (!c->txn_open && (after == 'T' || after == 'E')) {
		struct txn_span *t = &c->txn;

		memset(t, 0, sizeof(*t));
		rng_fill(a->rng, t->trace_id, sizeof(t->trace_id));
		rng_fill(a->rng, t->span_id, sizeof(t->span_id));
		t->start_ns = s->start_ns;
		t->pid = s->pid;
		t->tid = s->tid;
		t->exe = s->exe;
		t->ident = &c->ident;
		t->backend_pid = s->backend_pid;
		t->wire = s->wire;
		c->txn_open = true;
	}
	if (!c->txn_open)
		return;
	memcpy(s->trace_id, c->txn.trace_id, sizeof(s->trace_id));
	memcpy(s->parent_span_id, c->txn.span_id, sizeof(s->parent_span_id));
	s->in_txn = true;
	c->txn.nstatements++;
	c->txn.end_ns = s->end_ns;
	if (!c->txn.sa_conn) {
		c->txn.sa_conn = s->py.sa_conn;
		c->txn.sa_url = s->py.sa_url;
	}
}

static enum txn_outcome txn_outcome_of(const struct span *s)
{
	if (s->py.pool_reset)
		return TXN_POOL_RESET;
	if (!strcmp(s->tag.tag, "COMMIT"))
		return TXN_COMMIT;
	return TXN_ROLLBACK; /* ROLLBACK, or COMMIT of a failed transaction (its tag says ROLLBACK)
			      */
}

static void emit(struct assembler *a, struct aconn *c, struct span *s, enum span_result res,
		 uint64_t end)
{
	bool ends_txn;

	if (s->req == REQ_SYNC) {
		span_free(s);
		return;
	}
	s->result = res;
	s->lost_events |= a->suspect;
	s->end_ns = end >= s->start_ns ? end : s->start_ns;
	if (c)
		txn_track(a, c, s);
	ends_txn = c && c->txn_open && status_after(c, s) == 'I';
	if (s->req == REQ_PREPARE && res != RES_OK && res != RES_DETACHED && c)
		prep_forget(c, s->name);
	if (s->req == REQ_CLOSE && res == RES_OK && c && s->has_name)
		prep_forget(c, s->name);
	if (s->req == REQ_QUERY && res == RES_OK && c)
		sql_deallocate(c, s);
	a->st.spans++;
	a->st.by_result[res]++;
	if (a->h.span)
		a->h.span(a->h.arg, s);
	if (ends_txn)
		txn_end(a, c, txn_outcome_of(s));
	span_free(s);
}

/* Finish everything pending on a connection with one result. */
void drain(struct assembler *a, struct aconn *c, enum span_result res, uint64_t end, bool lost)
{
	struct span *s;

	while ((s = q_pop(c))) {
		a->open -= s->req != REQ_SYNC;
		s->lost_events |= lost;
		emit(a, c, s, res, end);
	}
	c->pipe_aborted = false;
	c->msg.active = false;
	if (res == RES_CLOSED || res == RES_EXITED || res == RES_DETACHED)
		txn_end(a, c, TXN_OPEN);
}

static void complete_front(struct assembler *a, struct aconn *c, enum span_result res, uint64_t end)
{
	struct span *s = q_pop(c);

	if (!s)
		return;
	a->open -= s->req != REQ_SYNC;
	emit(a, c, s, res, end);
}

/* ---- text chunks ---- */

static struct ptext *text_find(struct assembler *a, uint32_t pid, uint32_t tid, uint64_t ts)
{
	for (size_t i = 0; i < a->ntexts; i++) {
		struct ptext *t = &a->texts[i];

		if (t->pid == pid && t->tid == tid && t->ts == ts)
			return t;
	}
	return NULL;
}

static void text_drop(struct assembler *a, struct ptext *t)
{
	free(t->buf);
	*t = a->texts[--a->ntexts];
}

static void on_text(struct assembler *a, const struct ev_text *e, size_t size)
{
	struct ptext *t;
	size_t keep;

	if (size < offsetof(struct ev_text, data) || e->len > SQLSPAN_TEXT_CHUNK ||
	    size < offsetof(struct ev_text, data) + e->len) {
		a->st.bad_records++;
		return;
	}
	t = text_find(a, e->h.pid, e->h.tid, e->h.ts);
	if (!t) {
		if (a->ntexts == a->captexts) {
			size_t nc = a->captexts ? a->captexts * 2 : 8;
			struct ptext *nt = realloc(a->texts, nc * sizeof(*nt));

			if (!nt)
				return;
			a->texts = nt;
			a->captexts = nc;
		}
		t = &a->texts[a->ntexts++];
		memset(t, 0, sizeof(*t));
		t->pid = e->h.pid;
		t->tid = e->h.tid;
		t->ts = e->h.ts;
	}
	if (e->seq != t->got) {
		t->broken = true;
		t->got++;
		return;
	}
	t->got++;
	keep = e->len;
	if (t->len + keep > a->max_text)
		keep = t->len < a->max_text ? a->max_text - t->len : 0;
	if (keep) {
		char *nb = realloc(t->buf, t->len + keep + 1);

		if (!nb) {
			t->broken = true;
			return;
		}
		t->buf = nb;
		memcpy(t->buf + t->len, e->data, keep);
		t->len += keep;
		t->buf[t->len] = 0;
	}
}

/* ---- Python stacks ---- */

static void on_stack(struct assembler *a, const struct ev_stack *e, size_t size)
{
	struct pstack *p;

	if (size < sizeof(*e) || e->nframes > SQLSPAN_MAX_FRAMES ||
	    size < sizeof(*e) + (size_t)e->nframes * sizeof(struct ev_frame)) {
		a->st.bad_records++;
		return;
	}
	if (a->nstacks == a->capstacks) {
		size_t nc = a->capstacks ? a->capstacks * 2 : 8;
		struct pstack *np = realloc(a->stacks, nc * sizeof(*np));

		if (!np)
			return;
		a->stacks = np;
		a->capstacks = nc;
	}
	p = &a->stacks[a->nstacks];
	p->rec = malloc(size);
	if (!p->rec)
		return;
	memcpy(p->rec, e, size);
	p->size = size;
	p->pid = e->h.pid;
	p->tid = e->h.tid;
	p->ts = e->h.ts;
	a->nstacks++;
}

void *stack_take(struct assembler *a, uint32_t pid, uint32_t tid, uint64_t ts, size_t *size)
{
	for (size_t i = 0; i < a->nstacks; i++) {
		struct pstack *p = &a->stacks[i];
		void *rec = p->rec;

		if (p->pid != pid || p->tid != tid || p->ts != ts)
			continue;
		*size = p->size;
		*p = a->stacks[--a->nstacks];
		return rec;
	}
	return NULL;
}

/* The stack sent with a request: resolved into the span, then dropped. */
static void take_stack(struct assembler *a, const struct ev_req *r, struct span *s)
{
	size_t size;
	void *rec = stack_take(a, r->h.pid, r->h.tid, r->h.ts, &size);

	if (!rec)
		return;
	if (a->h.py_resolve)
		a->h.py_resolve(a->h.arg, rec, size, text_wanted(s), &s->py);
	free(rec);
}

void asm_expire(struct assembler *a, uint64_t now, uint64_t max_age_ns)
{
	for (size_t i = 0; i < a->nstacks;) {
		if (now > a->stacks[i].ts && now - a->stacks[i].ts > max_age_ns) {
			free(a->stacks[i].rec);
			a->stacks[i] = a->stacks[--a->nstacks];
		} else {
			i++;
		}
	}
	for (size_t i = 0; i < a->ntexts;) {
		if (now > a->texts[i].ts && now - a->texts[i].ts > max_age_ns) {
			a->st.orphan_texts++;
			text_drop(a, &a->texts[i]);
		} else {
			i++;
		}
	}
}

/* ---- requests ---- */

struct aconn *conn_get(struct assembler *a, uint32_t pid, int fd, bool create)
{
	struct hkey k = hkey2(pid, (uint32_t)fd);
	struct aconn *c = hmap_get(&a->conns, k);

	if (c || !create)
		return c;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->pid = pid;
	c->fd = fd;
	if (hmap_put(&a->conns, k, c)) {
		free(c);
		return NULL;
	}
	return c;
}

static void conn_drop(struct assembler *a, struct aconn *c)
{
	hmap_del(&a->conns, hkey2(c->pid, (uint32_t)c->fd));
	conn_free(c);
}

static enum span_request req_of(uint16_t api)
{
	switch (api) {
	case API_SEND_PREPARE:
	case API_PREPARE:
		return REQ_PREPARE;
	case API_SEND_QUERY_PREPARED:
	case API_EXEC_PREPARED:
		return REQ_EXECUTE;
	case API_DESCRIBE_PREPARED:
	case API_DESCRIBE_PORTAL:
		return REQ_DESCRIBE;
	case API_CLOSE_PREPARED:
	case API_CLOSE_PORTAL:
		return REQ_CLOSE;
	case API_PIPELINE_SYNC:
		return REQ_SYNC;
	default:
		return REQ_QUERY;
	}
}

void span_redact(struct span *s)
{
	size_t rn;
	char *red = s->text ? redact_sql(s->text, s->text_len, &rn) : NULL;

	if (!red)
		return;
	free(s->text);
	s->text = red;
	s->text_len = rn;
	s->redacted = true;
}

void span_text_prepared(struct span *s, const struct prepared *p, enum text_state none)
{
	if (!p || !p->text) {
		s->text_state = none;
		return;
	}
	s->text = strdup(p->text);
	s->text_len = s->text ? strlen(s->text) : 0;
	s->text_state = s->text ? p->state : TEXT_INCOMPLETE;
}

/* Attach the statement text to a new span: captured chunks, or the prepared statement's. */
static void span_text(struct assembler *a, struct aconn *c, struct span *s, const struct ev_req *r)
{
	struct ptext *t = NULL;

	if (r->nchunks)
		t = text_find(a, r->h.pid, r->h.tid, r->h.ts);
	if (s->req == REQ_QUERY || s->req == REQ_PREPARE) {
		s->text_state = TEXT_FULL;
		if (!t && r->nchunks == 0 && !(r->h.flags & EVF_TEXT_FAULT)) {
			/* a short text inside the record (on_req checked its size) */
			s->text = strndup((const char *)(r + 1), r->text_len);
			s->text_len = s->text ? strlen(s->text) : 0; /* a NUL inside ends it */
		} else if (t) {
			s->text = t->buf ? t->buf : strdup("");
			s->text_len = t->len;
			t->buf = NULL;
			if (t->broken || t->got != r->nchunks)
				s->text_state = TEXT_INCOMPLETE;
		}
		if (!s->text)
			s->text_state = TEXT_INCOMPLETE;
		if (r->h.flags & (EVF_TEXT_FAULT | EVF_GAP))
			s->text_state = TEXT_INCOMPLETE;
		if (s->text_state == TEXT_FULL &&
		    ((r->h.flags & EVF_TEXT_CUT) || r->text_len > a->max_text))
			s->text_state = TEXT_CUT;
		if (s->text_state == TEXT_INCOMPLETE)
			a->st.texts_lost++;
		span_redact(s);
		if (s->req == REQ_PREPARE && c)
			prep_remember(c, s->name, s->text, s->text_len, s->text_state);
	} else if (s->req == REQ_EXECUTE ||
		   (s->req == REQ_DESCRIBE && r->api == API_DESCRIBE_PREPARED) ||
		   (s->req == REQ_CLOSE && r->api == API_CLOSE_PREPARED)) {
		span_text_prepared(s, c ? prep_find(c, s->name) : NULL,
				   s->req == REQ_EXECUTE ? TEXT_UNKNOWN : TEXT_NONE);
	} else {
		s->text_state = TEXT_NONE;
	}
	if (t)
		text_drop(a, t);
}

static void on_req(struct assembler *a, const struct ev_req *r, size_t size)
{
	struct aconn *c = NULL;
	struct span *s;

	if (size < sizeof(*r) || (r->nchunks == 0 && size < sizeof(*r) + r->text_len)) {
		a->st.bad_records++;
		return;
	}
	s = span_new(a, &r->h);
	if (!s)
		return;
	s->conn = r->conn;
	s->fd = r->fd;
	s->req = req_of(r->api);
	s->pipeline = r->pipeline == 1 || r->pipeline == 2;
	s->backend_pid = r->be_pid > 0 ? r->be_pid : 0;
	memcpy(s->name, r->name, sizeof(s->name));
	s->name[sizeof(s->name) - 1] = 0;
	s->has_name = s->req != REQ_QUERY && s->req != REQ_SYNC;
	if (r->h.flags & EVF_GAP)
		s->lost_events = true;

	if (r->fd >= 0)
		c = conn_get(a, r->h.pid, r->fd, true);
	if (c) {
		if ((r->h.flags & EVF_NEW_FD) || (c->conn && c->conn != r->conn) || c->wire) {
			if (c->qlen)
				drain(a, c, RES_UNKNOWN, r->h.ts, false);
			if ((c->conn && c->conn != r->conn) || c->wire) {
				/* another PGconn, or libpq's own connection at first taken for a
				 * wire socket */
				prep_clear(c);
				wire_conn_free(c);
				c->have_ident = false;
			}
		}
		if (r->h.flags & EVF_GAP) {
			a->st.gaps++;
			drain(a, c, RES_UNKNOWN, r->h.ts, true);
		}
		c->conn = r->conn;
		if (!c->have_ident)
			conn_identify(a, c);
		s->ident = &c->ident;
		if (!s->exe && c->ident.comm[0])
			s->exe = c->ident.comm; /* the process is gone: its command name */
		if (r->be_pid > 0 && c->ident.known && c->ident.backend_pid != r->be_pid)
			c->ident.backend_pid = r->be_pid; /* e.g. after PQreset */
		/* outside pipeline mode libpq sends only on an idle connection: what is still
		 * pending was answered unseen */
		if (!s->pipeline && c->qlen)
			drain(a, c, RES_UNKNOWN, r->h.ts, false);
	}

	span_text(a, c, s, r);
	take_stack(a, r, s);
	text_from_app(c, s);

	if (!c) {
		/* no socket known: the result cannot be followed */
		struct conn_ident id = {0};

		if (s->req == REQ_SYNC) {
			span_free(s);
			return;
		}
		if (a->h.ident)
			a->h.ident(a->h.arg, r->h.pid, r->conn, r->fd, &id);
		s->ident = &id;
		emit(a, NULL, s, RES_UNKNOWN, r->h.ts);
		conn_ident_free(&id);
		return;
	}
	conn_enqueue(a, c, s);
}

/* Does the span need the text SQLAlchemy holds (an execution of a statement of unknown text)? */
bool text_wanted(const struct span *s)
{
	return s->req == REQ_EXECUTE && s->text_state == TEXT_UNKNOWN;
}

/*
 * An execution by name of a statement prepared before sqlspan attached: its text is not on the
 * wire, but SQLAlchemy, on the stack, holds the statement it executes. Use that (marked as such),
 * and remember it for the name.
 */
void text_from_app(struct aconn *c, struct span *s)
{
	if (!text_wanted(s) || !s->py.sa_statement)
		return;
	free(s->text);
	s->text = strdup(s->py.sa_statement);
	if (!s->text)
		return;
	s->text_len = strlen(s->text);
	s->text_state = TEXT_FROM_APP;
	span_redact(s);
	if (c && s->has_name)
		prep_remember(c, s->name, s->text, s->text_len, TEXT_FROM_APP);
}

struct span *span_new(struct assembler *a, const struct ev_hdr *h)
{
	struct span *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	rng_fill(a->rng, s->trace_id, sizeof(s->trace_id));
	rng_fill(a->rng, s->span_id, sizeof(s->span_id));
	s->start_ns = h->ts;
	s->pid = h->pid;
	s->tid = h->tid;
	s->exe = a->h.exe ? a->h.exe(a->h.arg, h->pid) : NULL;
	s->fd = -1;
	s->returned_rows = -1;
	s->tag.rows = -1;
	return s;
}

void conn_enqueue(struct assembler *a, struct aconn *c, struct span *s)
{
	if (c->qlen >= MAX_PENDING)
		complete_front(a, c, RES_UNKNOWN, s->start_ns);
	if (q_push(c, s)) {
		span_free(s);
		return;
	}
	a->open += s->req != REQ_SYNC;
}

/* ---- backend messages ---- */

static void on_message(struct assembler *a, struct aconn *c, uint8_t type, const uint8_t *body,
		       size_t n, bool cut, uint64_t ts)
{
	struct span *s = q_front(c);

	if (type == 'K' && c->wire)
		wire_backend_key(c, body, n);
	if (!s) {
		/* what a server says unasked: at the start of a session, notices, notifications */
		if (type != 'S' && type != 'N' && type != 'A' && type != 'K' && type != 'Z' &&
		    type != 'R' && type != 'v')
			a->st.orphan_msgs++;
		return;
	}
	switch (type) {
	case 'C':
	case 'I':
		if (type == 'C')
			pg_parse_tag(body, n, &s->tag);
		else
			memset(&s->tag, 0, sizeof(s->tag)), s->tag.rows = -1;
		s->ncommands++;
		if (s->pipeline && (s->req == REQ_QUERY || s->req == REQ_EXECUTE))
			complete_front(a, c, s->has_error ? RES_ERROR : RES_OK, ts);
		break;
	case 's': /* PortalSuspended: an Execute with a row limit */
		if (s->pipeline && (s->req == REQ_QUERY || s->req == REQ_EXECUTE))
			complete_front(a, c, RES_OK, ts);
		break;
	case 'E':
		if (s->req == REQ_SYNC)
			break;
		s->has_error = true;
		pg_parse_error(body, n, cut, &s->error);
		if (s->pipeline) {
			c->pipe_aborted = true;
			complete_front(a, c, RES_ERROR, ts);
		}
		break;
	case '1':
		if (s->pipeline && s->req == REQ_PREPARE && !s->described)
			complete_front(a, c, RES_OK, ts);
		break;
	case '3':
		if (s->pipeline && s->req == REQ_CLOSE)
			complete_front(a, c, RES_OK, ts);
		break;
	case 'T':
	case 'n':
		if (s->pipeline &&
		    (s->req == REQ_DESCRIBE || (s->req == REQ_PREPARE && s->described)))
			complete_front(a, c, RES_OK, ts);
		break;
	case 'Z': {
		uint8_t txn = n ? body[0] : 0;

		if (!s->pipeline) {
			s->txn_status = txn;
			complete_front(a, c, s->has_error ? RES_ERROR : RES_OK, ts);
			break;
		}
		/* pipeline: everything up to the first sync point */
		while ((s = q_front(c))) {
			if (s->req == REQ_SYNC) {
				complete_front(a, c, RES_OK, ts);
				break;
			}
			s->txn_status = txn;
			complete_front(a, c, c->pipe_aborted ? RES_ABORTED : RES_UNKNOWN, ts);
		}
		c->pipe_aborted = false;
		break;
	}
	default:
		break;
	}
}

static void on_msg(struct assembler *a, const struct ev_msg *m, size_t size)
{
	struct aconn *c;
	struct partial *p;
	struct span *s;

	if (size < sizeof(*m) || m->n > SQLSPAN_MSG_LONG || size < sizeof(*m) + m->n ||
	    m->cap > SQLSPAN_MSG_LONG) {
		a->st.bad_records++;
		return;
	}
	c = conn_get(a, m->h.pid, m->fd, false);
	if (!c) {
		a->st.orphan_msgs++;
		return;
	}
	if (m->h.flags & EVF_GAP) {
		a->st.gaps++;
		drain(a, c, RES_UNKNOWN, m->h.ts, true);
	}
	p = &c->msg;
	if (m->off == 0) {
		p->active = true;
		p->type = m->type;
		p->len = m->len;
		p->cap = m->cap;
		p->have = 0;
		s = q_front(c);
		if (s && (m->rows || m->type == 'T') && s->req != REQ_PREPARE &&
		    s->req != REQ_DESCRIBE)
			s->returned_rows = (s->returned_rows < 0 ? 0 : s->returned_rows) + m->rows;
	} else if (!p->active || p->type != m->type || p->have != m->off) {
		p->active = false;
		return;
	}
	if (p->have + m->n > sizeof(p->data) || p->have + m->n > p->cap) {
		p->active = false;
		a->st.bad_records++;
		return;
	}
	memcpy(p->data + p->have, m->data, m->n);
	p->have += m->n;
	if (p->have < p->cap)
		return;
	p->active = false;
	on_message(a, c, p->type, p->data, p->have, p->cap < p->len, m->h.ts);
}

/* ---- connection and process ends ---- */

static void on_conn(struct assembler *a, const struct ev_conn *e, size_t size)
{
	struct aconn *c;
	size_t pos = 0;
	struct hkey k;

	if (size < sizeof(*e)) {
		a->st.bad_records++;
		return;
	}
	switch (e->h.kind) {
	case EV_DESYNC:
		a->st.desync_why[e->arg < DESYNC__COUNT ? e->arg : 0]++;
		c = conn_get(a, e->h.pid, e->fd, false);
		if (e->arg == DESYNC_TLS) {
			/* replies are encrypted: the first one marks the end, its content is
			 * unknown */
			if (c) {
				c->ident.tls = true;
				drain(a, c, RES_UNKNOWN, e->h.ts, false);
			}
			break;
		}
		a->st.desyncs++;
		if (c)
			drain(a, c, RES_UNKNOWN, e->h.ts, true);
		break;
	case EV_CLOSE:
		for (int tls = 0; tls < 2; tls++) { /* the socket, and its TLS plaintext stream */
			c = conn_get(a, e->h.pid, tls ? e->fd | SQLSPAN_TLS_FD : e->fd, false);
			if (c) {
				drain(a, c, RES_CLOSED, e->h.ts, e->arg & EV_CLOSE_STALE);
				conn_drop(a, c);
			}
		}
		peer_forget(a, e->h.pid, e->fd); /* the number may come back as another socket */
		break;
	case EV_FINISH:
		while ((c = hmap_next(&a->conns, &pos, &k))) {
			if (c->pid != e->h.pid || c->conn != e->conn)
				continue;
			if (e->arg) { /* PQreset: same PGconn, new session */
				prep_clear(c);
				c->have_ident = false;
			}
		}
		break;
	case EV_EXIT:
		peers_forget(a, e->h.pid);
		while ((c = hmap_next(&a->conns, &pos, &k))) {
			if (c->pid != e->h.pid)
				continue;
			drain(a, c, RES_EXITED, e->h.ts, false);
			conn_drop(a, c);
		}
		break;
	default:
		break;
	}
}

/*
 * The EV_MSG records of one read, or the EV_FMSG records of one send, in order: records of one
 * kind, each padded to 8 bytes.
 */
static void on_msgs(struct assembler *a, const struct ev_msgs *b, size_t size)
{
	const uint8_t *p = (const uint8_t *)(b + 1);
	uint32_t kind = 0;
	size_t left;

	if (size < sizeof(*b) || b->len > size - sizeof(*b) || b->len > SQLSPAN_MSGS_MAX) {
		a->st.bad_records++;
		return;
	}
	left = b->len;
	for (uint32_t i = 0; i < b->count; i++) {
		const struct ev_hdr *h = (const void *)p;
		size_t n, one;

		if (left < sizeof(struct ev_msg) || (kind && h->kind != kind)) {
			a->st.bad_records++;
			return;
		}
		kind = h->kind;
		if (kind == EV_MSG)
			n = ((const struct ev_msg *)p)->n;
		else if (kind == EV_FMSG)
			n = ((const struct ev_fmsg *)p)->n;
		else
			n = SIZE_MAX;
		if (n > left - sizeof(struct ev_msg)) {
			a->st.bad_records++;
			return;
		}
		one = sizeof(struct ev_msg) + ((n + 7) & ~(size_t)7);
		if (one > left)
			one = left;
		if (kind == EV_MSG)
			on_msg(a, (const void *)p, one);
		else
			on_fmsg(a, (const void *)p, one);
		p += one;
		left -= one;
	}
}

void asm_record(struct assembler *a, const void *data, size_t size)
{
	const struct ev_hdr *h = data;

	if (size < sizeof(*h)) {
		a->st.bad_records++;
		return;
	}
	switch (h->kind) {
	case EV_TEXT:
		on_text(a, data, size);
		break;
	case EV_REQ:
		on_req(a, data, size);
		break;
	case EV_MSGS: /* EV_MSG records come in these only; EV_FMSG ones too, or alone if long */
		on_msgs(a, data, size);
		break;
	case EV_DESYNC:
	case EV_CLOSE:
	case EV_FINISH:
	case EV_EXIT:
		on_conn(a, data, size);
		break;
	case EV_IDENT:
		on_ident(a, data, size);
		break;
	case EV_STACK:
		on_stack(a, data, size);
		break;
	case EV_FMSG:
		on_fmsg(a, data, size);
		break;
	case EV_CONNECT:
		on_connect(a, data, size);
		break;
	case EV_MMAP:
		break;
	default:
		a->st.bad_records++;
	}
}

void asm_suspect(struct assembler *a, bool on)
{
	a->suspect = on;
}

uint64_t asm_realign(struct assembler *a, uint64_t now)
{
	uint64_t before = a->open;
	struct aconn *c;
	size_t pos = 0;

	while ((c = hmap_next(&a->conns, &pos, NULL))) {
		if (c->qlen)
			drain(a, c, RES_UNKNOWN, now, true);
	}
	a->st.realigned += before - a->open;
	return before - a->open;
}

uint64_t asm_close_all(struct assembler *a, uint64_t now)
{
	uint64_t before = a->open;
	struct aconn *c;
	size_t pos = 0;

	while ((c = hmap_next(&a->conns, &pos, NULL)))
		drain(a, c, RES_DETACHED, now, false);
	return before;
}
