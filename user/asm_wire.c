// SPDX-License-Identifier: MIT
/*
 * Requests of wire sockets: what a driver that speaks the protocol itself (asyncpg) sent, turned
 * into the same requests the libpq probes make, so that replies pair with them the same way.
 *
 *   Query                  -> a "query" span, answered up to ReadyForQuery
 *   Parse with a name      -> a "prepare" span (its Describe, in the same send, is part of it)
 *   Parse without a name   -> remembered: the Execute that follows runs it
 *   Bind                   -> remembered: which statement a portal runs
 *   Execute                -> an "execute" span (a named statement) or a "query" span (the
 *                             unnamed one), each ended by its own CommandComplete
 *   Describe, Close        -> "describe" / "close" spans (Close of a statement forgets it)
 *   Sync                   -> a sync point: ReadyForQuery ends what is left before it
 *
 * Extended-protocol requests behave like libpq's pipeline mode: several may wait on one socket;
 * after an error the server skips everything up to the next Sync.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "assemble_int.h"
#include "pgfront.h"
#include "redact.h"

/* portals remembered per connection */
#define MAX_PORTALS 256
/* frontend message bytes kept while reassembling (the BPF side caps texts well below) */
#define MAX_FMSG (16u << 20)

struct wpartial {
	bool active;
	uint64_t ts0; /* the send of its first part */
	uint8_t type;
	uint32_t len, cap, have;
	uint8_t *data;
	size_t size; /* allocated */
};

struct portal {
	char name[SQLSPAN_NAME_LEN];
	char stmt[SQLSPAN_NAME_LEN];
};

void wire_conn_free(struct aconn *c)
{
	if (c->fmsg)
		free(c->fmsg->data);
	free(c->fmsg);
	c->fmsg = NULL;
	free(c->portals);
	c->portals = NULL;
	c->nportals = 0;
	free(c->stack_rec);
	c->stack_rec = NULL;
	c->stack_ts = 0;
	c->last_parse[0] = 0;
	c->wire = false;
}

/*
 * Where wire-capable processes' sockets lead (peers: (pid, fd) -> struct conn_ident *), from their
 * connect, or told by the loader for sockets open at attach (who is at the other end, too).
 */
static void peer_free(struct conn_ident *p)
{
	if (!p)
		return;
	conn_ident_free(p);
	free(p);
}

void peers_forget(struct assembler *a, uint32_t pid)
{
	struct hkey k;
	size_t pos = 0;
	struct conn_ident *p;

	while ((p = hmap_next(&a->peers, &pos, &k))) {
		if (pid && k.a != pid)
			continue;
		peer_free(hmap_del(&a->peers, k));
	}
}

void peer_forget(struct assembler *a, uint32_t pid, int fd)
{
	peer_free(hmap_del(&a->peers, hkey2(pid, (uint32_t)fd)));
}

/* A copy of an identity (its strings duplicated). */
static void ident_copy(struct conn_ident *dst, const struct conn_ident *src)
{
	*dst = *src;
	dst->db = src->db ? strdup(src->db) : NULL;
	dst->user = src->user ? strdup(src->user) : NULL;
	dst->host = src->host ? strdup(src->host) : NULL;
	dst->unix_path = src->unix_path ? strdup(src->unix_path) : NULL;
}

void asm_peer(struct assembler *a, uint32_t pid, int fd, const struct conn_ident *id)
{
	struct conn_ident *p;

	if (!id->host && !id->unix_path)
		return;
	p = malloc(sizeof(*p));
	if (!p)
		return;
	ident_copy(p, id);
	p->known = true;
	peer_free(hmap_del(&a->peers, hkey2(pid, (uint32_t)fd)));
	if (hmap_put(&a->peers, hkey2(pid, (uint32_t)fd), p))
		peer_free(p);
}

void ident_from_unix_path(const char *path, struct conn_ident *out)
{
	const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');

	out->unix_path = strdup(path);
	out->port = dot ? atoi(dot + 1) : 0;
	if (slash)
		out->host = strndup(path, (size_t)(slash - path));
}

void on_connect(struct assembler *a, const struct ev_connect *e, size_t size)
{
	struct conn_ident id = {0};
	char buf[INET6_ADDRSTRLEN];
	uint16_t family;

	if (size < sizeof(*e) || e->len > sizeof(e->addr)) {
		a->st.bad_records++;
		return;
	}
	if (e->len < 2)
		return;
	/* the process's name, for its spans when it is gone by the time they are read (psql -c) */
	memcpy(id.comm, e->comm,
	       sizeof(id.comm) < sizeof(e->comm) ? sizeof(id.comm) : sizeof(e->comm));
	id.comm[sizeof(id.comm) - 1] = 0;
	memcpy(&family, e->addr, 2);
	if (family == AF_UNIX && e->len > 2) {
		char path[sizeof(e->addr)];
		size_t n = strnlen((const char *)e->addr + 2, e->len - 2);

		memcpy(path, e->addr + 2, n);
		path[n] = 0;
		ident_from_unix_path(path, &id);
	} else if (family == AF_INET && e->len >= sizeof(struct sockaddr_in)) {
		struct sockaddr_in in;

		memcpy(&in, e->addr, sizeof(in));
		if (inet_ntop(AF_INET, &in.sin_addr, buf, sizeof(buf)))
			id.host = strdup(buf);
		id.port = ntohs(in.sin_port);
	} else if (family == AF_INET6 && e->len >= sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 in6;

		memcpy(&in6, e->addr, sizeof(in6));
		if (inet_ntop(AF_INET6, &in6.sin6_addr, buf, sizeof(buf)))
			id.host = strdup(buf);
		id.port = ntohs(in6.sin6_port);
	}
	asm_peer(a, e->h.pid, e->fd, &id);
	conn_ident_free(&id);
}

/* Who a wire socket leads to: from its connect or the loader, or asked of the system. */
static void wire_identify(struct assembler *a, struct aconn *c)
{
	/* a TLS connection's plaintext stream (fd | SQLSPAN_TLS_FD) leads where its socket does */
	int fd = c->fd & ~SQLSPAN_TLS_FD;
	struct conn_ident *p = hmap_get(&a->peers, hkey2(c->pid, (uint32_t)fd));

	conn_ident_free(&c->ident);
	c->have_ident = true;
	if (p)
		ident_copy(&c->ident, p);
	else if (a->h.ident)
		a->h.ident(a->h.arg, c->pid, 0, fd, &c->ident);
	if (c->fd & SQLSPAN_TLS_FD)
		c->ident.tls = true;
}

/* BackendKeyData: the backend's PID, for the spans of this socket. */
void wire_backend_key(struct aconn *c, const uint8_t *body, size_t n)
{
	if (n < 4)
		return;
	c->ident.backend_pid = (int)((uint32_t)body[0] << 24 | (uint32_t)body[1] << 16 |
				     (uint32_t)body[2] << 8 | body[3]);
	c->ident.known = true;
}

static void portal_bind(struct aconn *c, const char *portal, const char *stmt)
{
	struct portal *p = NULL;

	for (size_t i = 0; i < c->nportals; i++) {
		if (!strcmp(c->portals[i].name, portal)) {
			p = &c->portals[i];
			break;
		}
	}
	if (!p) {
		if (c->nportals >= MAX_PORTALS) {
			/* the oldest goes */
			memmove(c->portals, c->portals + 1, (c->nportals - 1) * sizeof(*p));
			c->nportals--;
		}
		p = realloc(c->portals, (c->nportals + 1) * sizeof(*p));
		if (!p)
			return;
		c->portals = p;
		p = &c->portals[c->nportals++];
		snprintf(p->name, sizeof(p->name), "%s", portal);
	}
	snprintf(p->stmt, sizeof(p->stmt), "%s", stmt);
}

static const char *portal_stmt(const struct aconn *c, const char *portal)
{
	for (size_t i = 0; i < c->nportals; i++) {
		if (!strcmp(c->portals[i].name, portal))
			return c->portals[i].stmt;
	}
	return NULL;
}

/*
 * The Python stack of the send that made this request (one send may carry many requests), or of
 * the send it began in (c->begun_ts) if it ended in one that read none.
 */
static void wire_stack(struct assembler *a, struct aconn *c, const struct ev_hdr *h, struct span *s)
{
	uint64_t ts = h->ts;
	size_t size;
	void *rec = stack_take(a, h->pid, h->tid, ts, &size);

	if (!rec && !(c->stack_rec && c->stack_ts == ts && c->stack_tid == h->tid) && c->begun_ts &&
	    c->begun_ts != ts) {
		ts = c->begun_ts;
		rec = stack_take(a, h->pid, h->tid, ts, &size);
	}
	if (rec) {
		free(c->stack_rec);
		c->stack_rec = rec;
		c->stack_size = size;
		c->stack_tid = h->tid;
		c->stack_ts = ts;
	}
	if (c->stack_rec && c->stack_ts == ts && c->stack_tid == h->tid && a->h.py_resolve)
		a->h.py_resolve(a->h.arg, c->stack_rec, c->stack_size, text_wanted(s), &s->py);
}

/* A copy of SQL text for a span: cut to the text limit, passwords redacted. */
static void span_set_text(struct assembler *a, struct span *s, const char *text, size_t len,
			  bool cut)
{
	if (len > a->max_text) {
		len = a->max_text;
		cut = true;
	}
	s->text = strndup(text, len);
	s->text_len = s->text ? strlen(s->text) : 0;
	s->text_state = !s->text ? TEXT_INCOMPLETE : cut ? TEXT_CUT : TEXT_FULL;
	if (!s->text)
		a->st.texts_lost++;
	span_redact(s);
}

static void wire_request(struct assembler *a, struct aconn *c, const struct ev_hdr *h,
			 const struct fe_msg *fm, enum span_request req, bool lost)
{
	struct span *s = span_new(a, h);

	if (!s)
		return;
	s->wire = true;
	s->fd = c->fd & ~SQLSPAN_TLS_FD;
	s->req = req;
	s->pipeline = fm->type != 'Q';
	s->ident = &c->ident;
	s->lost_events = lost;
	if (!s->exe && c->ident.comm[0])
		s->exe = c->ident.comm;
	switch (fm->type) {
	case 'Q':
	case 'P':
		span_set_text(a, s, fm->text, fm->text_len, fm->text_cut);
		break;
	case 'E': {
		const char *stmt = portal_stmt(c, fm->name);

		snprintf(s->name, sizeof(s->name), "%s", stmt ? stmt : "");
		span_text_prepared(s, stmt ? prep_find(c, stmt) : NULL, TEXT_UNKNOWN);
		break;
	}
	default:
		span_text_prepared(s, fm->kind == 'S' ? prep_find(c, fm->name) : NULL, TEXT_NONE);
		break;
	}
	if (fm->type != 'E' && fm->type != 'Q' && fm->type != 'S')
		snprintf(s->name, sizeof(s->name), "%s", fm->name);
	s->has_name = req != REQ_QUERY && req != REQ_SYNC;
	if (req != REQ_SYNC)
		wire_stack(a, c, h, s);
	text_from_app(c, s);
	if (req == REQ_PREPARE)
		prep_remember(c, s->name, s->text, s->text_len, s->text_state);
	conn_enqueue(a, c, s);
}

/* A Parse of the unnamed statement: remembered (redacted) for the Execute that runs it. */
static void parse_unnamed(struct assembler *a, struct aconn *c, const struct fe_msg *fm)
{
	size_t len = fm->text_len < a->max_text ? fm->text_len : a->max_text, rn;
	bool cut = fm->text_cut || len < fm->text_len;
	char *red = redact_sql(fm->text, len, &rn);

	if (red) {
		prep_remember(c, "", red, rn, cut ? TEXT_CUT : TEXT_FULL);
		free(red);
		return;
	}
	prep_remember(c, "", fm->text, len, cut ? TEXT_CUT : TEXT_FULL);
}

/*
 * A request on a socket whose StartupMessage sqlspan did not read: opened before the attach (its
 * identity noted then), or its startup's record was lost (a kernel that skipped a run, a full
 * ring). Then its user and database were on the wire only then: ask the server's side, once.
 */
static void wire_unseen_session(struct assembler *a, struct aconn *c)
{
	c->session_seen = true;
	a->st.sessions_unseen++;
	if (c->ident.user || c->ident.db || !a->h.backend)
		return;
	a->st.sessions_asked++;
	a->h.backend(a->h.arg, c->pid, c->fd & ~SQLSPAN_TLS_FD, &c->ident);
	if (c->ident.db)
		a->st.sessions_found++;
	else
		c->ident.session_unseen = true; /* its spans say so: no db.namespace, and why */
}

/*
 * A request on a session whose StartupMessage was read but whose BackendKeyData was not (the
 * reply's record lost: a kernel that skipped a run, a full ring; the reply comes before the first
 * request): the backend PID from the server's side of the socket, asked once.
 */
static void wire_key_missing(struct assembler *a, struct aconn *c)
{
	c->key_asked = true;
	if (!a->h.backend)
		return;
	a->st.keys_asked++;
	a->h.backend(a->h.arg, c->pid, c->fd & ~SQLSPAN_TLS_FD, &c->ident);
	if (c->ident.backend_pid)
		a->st.keys_found++;
}

/* A whole frontend message; first_ts: the send its first bytes were in. */
static void wire_message(struct assembler *a, struct aconn *c, const struct ev_hdr *h,
			 const struct fe_msg *fm, uint64_t first_ts, bool lost)
{
	c->begun_ts = fm->type == 'E' ? c->bind_ts : first_ts;
	if (fm->type && !c->session_seen)
		wire_unseen_session(a, c);
	else if (fm->type && !c->ident.backend_pid && !c->key_asked)
		wire_key_missing(a, c);
	switch (fm->type) {
	case 0:
		/* a new session on this socket: who it is */
		drain(a, c, RES_UNKNOWN, h->ts, lost);
		free(c->ident.user);
		free(c->ident.db);
		c->ident.known = true;
		c->ident.user = fm->user[0] ? strdup(fm->user) : NULL;
		c->ident.db = fm->database[0] ? strdup(fm->database) : NULL;
		c->ident.backend_pid = 0; /* BackendKeyData tells */
		c->key_asked = false;
		c->ident.session_unseen = false;
		c->have_ident = true;
		c->session_seen = true;
		prep_clear(c);
		c->nportals = 0;
		break;
	case 'Q':
		wire_request(a, c, h, fm, REQ_QUERY, lost);
		break;
	case 'P':
		if (fm->name[0])
			wire_request(a, c, h, fm, REQ_PREPARE, lost);
		else
			parse_unnamed(a, c, fm);
		snprintf(c->last_parse, sizeof(c->last_parse), "%s", fm->name);
		c->last_parse_ts = h->ts;
		break;
	case 'B':
		portal_bind(c, fm->name, fm->stmt);
		c->bind_ts = first_ts;
		break;
	case 'E': {
		const char *stmt = portal_stmt(c, fm->name);

		wire_request(a, c, h, fm, stmt && stmt[0] ? REQ_EXECUTE : REQ_QUERY, lost);
		break;
	}
	case 'D': {
		struct span *last = q_back(c);

		if (fm->kind == 'P')
			break; /* a portal's columns: part of its Execute */
		/* the Describe that goes with a Parse in the same send is part of the prepare */
		if (c->last_parse_ts == h->ts && !strcmp(c->last_parse, fm->name)) {
			if (!fm->name[0]) {
				/* the unnamed statement parsed and described (asyncpg does so for
				 * long statements): a prepare step of its own */
				struct prepared *p = prep_find(c, "");
				struct fe_msg pm = *fm;

				pm.type = 'P';
				pm.text = p && p->text ? p->text : "";
				pm.text_len = p && p->text ? p->len : 0;
				pm.text_cut = p && p->state == TEXT_CUT;
				wire_request(a, c, h, &pm, REQ_PREPARE, lost);
				last = q_back(c);
			}
			if (last && last->req == REQ_PREPARE && !strcmp(last->name, fm->name)) {
				last->described = true;
				break;
			}
		}
		wire_request(a, c, h, fm, REQ_DESCRIBE, lost);
		break;
	}
	case 'C':
		if (fm->kind == 'S')
			wire_request(a, c, h, fm, REQ_CLOSE, lost);
		break;
	case 'S':
		wire_request(a, c, h, fm, REQ_SYNC, lost);
		break;
	default: /* Flush, Terminate, CopyDone/Fail, FunctionCall */
		break;
	}
}

void on_fmsg(struct assembler *a, const struct ev_fmsg *m, size_t size)
{
	struct aconn *c;
	struct wpartial *p;
	struct fe_msg fm;
	bool lost = false;

	if (size < sizeof(*m) || m->n > SQLSPAN_TEXT_CHUNK || size < sizeof(*m) + m->n ||
	    m->cap > MAX_FMSG || m->off > m->cap || m->n > m->cap - m->off) {
		a->st.bad_records++;
		return;
	}
	c = conn_get(a, m->h.pid, m->fd, true);
	if (!c)
		return;
	if (!c->wire) {
		/* a socket new to sqlspan, or one that was libpq's */
		if (c->qlen)
			drain(a, c, RES_UNKNOWN, m->h.ts, false);
		c->conn = 0;
		c->wire = true;
		wire_identify(a, c); /* and from the StartupMessage, BackendKeyData */
	}
	if (!c->fmsg && !(c->fmsg = calloc(1, sizeof(*c->fmsg))))
		return;
	p = c->fmsg;
	if (m->h.flags & EVF_GAP) {
		a->st.gaps++;
		drain(a, c, RES_UNKNOWN, m->h.ts, true);
		p->active = false;
		lost = true;
	}
	if (m->off == 0) {
		if (m->cap + 1 > p->size) {
			uint8_t *nd = realloc(p->data, m->cap + 1);

			if (!nd) {
				p->active = false;
				return;
			}
			p->data = nd;
			p->size = m->cap + 1;
		}
		p->active = true;
		p->ts0 = m->h.ts;
		p->type = m->type;
		p->len = m->len;
		p->cap = m->cap;
		p->have = 0;
	} else if (!p->active || p->type != m->type || p->have != m->off || p->len != m->len) {
		/* a part of a message whose start was not seen */
		p->active = false;
		return;
	}
	if (p->have + m->n > p->cap) {
		p->active = false;
		a->st.bad_records++;
		return;
	}
	memcpy(p->data + p->have, m->data, m->n);
	p->have += m->n;
	if (p->have < p->cap)
		return;
	p->active = false;
	if (fe_parse(p->type, p->data, p->have, p->len, &fm)) {
		a->st.bad_records++;
		return;
	}
	wire_message(a, c, &m->h, &fm, p->ts0, lost);
}
