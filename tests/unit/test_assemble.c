// SPDX-License-Identifier: MIT
/* Span assembly from synthetic record streams: pairing, pipelines, prepared statements, losses. */
#include "check.h"
#include "assemble.h"
#include "../../bpf/sqlspan.h"

#define MAXS 512

struct got {
	struct txn_span t[64];
	int nt;
	struct span s[MAXS];
	char *text[MAXS];
	char db[MAXS][32];
	bool unseen[MAXS];
	int bpid[MAXS]; /* postgresql.backend_pid as output.c takes it */
	int n;
};

static struct got G;
static uint64_t T = 1000000; /* a clock for records */

static void hook_ident(void *arg, uint32_t pid, uint64_t conn, int fd, struct conn_ident *out)
{
	(void)arg, (void)pid, (void)fd;
	memset(out, 0, sizeof(*out));
	out->known = true;
	out->db = strdup("fromuser");
	out->backend_pid = (int)(conn & 0xffff);
}

static const char *hook_exe(void *arg, uint32_t pid)
{
	(void)arg, (void)pid;
	return "app";
}

static void hook_span(void *arg, const struct span *s)
{
	(void)arg;
	if (G.n >= MAXS)
		return;
	G.s[G.n] = *s;
	G.text[G.n] = s->text ? strndup(s->text, s->text_len) : NULL;
	G.s[G.n].text = G.text[G.n];
	snprintf(G.db[G.n], sizeof(G.db[0]), "%s",
		 s->ident && s->ident->db ? s->ident->db : "(none)");
	G.unseen[G.n] = s->ident && s->ident->session_unseen;
	G.bpid[G.n] = s->backend_pid		    ? s->backend_pid
		      : s->ident && s->ident->known ? s->ident->backend_pid
						    : 0;
	G.s[G.n].ident = NULL;
	G.n++;
}

static void hook_txn(void *arg, const struct txn_span *t)
{
	(void)arg;
	if (G.nt < 64)
		G.t[G.nt++] = *t;
}

static struct assembler *fresh(size_t max_text)
{
	static const struct asm_hooks h = {
		.ident = hook_ident, .exe = hook_exe, .span = hook_span, .txn = hook_txn};

	for (int i = 0; i < G.n; i++)
		free(G.text[i]);
	memset(&G, 0, sizeof(G));
	return asm_new(&h, max_text, 42);
}

static void hdr(struct ev_hdr *h, uint32_t kind, uint32_t pid, uint32_t tid, uint32_t flags)
{
	h->kind = kind;
	h->pid = pid;
	h->tid = tid;
	h->flags = flags;
	h->ts = T;
}

/*
 * A request as the BPF side sends it: a short text inside the request record, a long one in
 * chunks first (drop_chunk >= 0: in chunks, that one lost).
 */
static void req_full(struct assembler *a, int fd, uint64_t conn, uint16_t api, uint8_t pipeline,
		     const char *text, const char *name, uint32_t flags, int drop_chunk)
{
	struct {
		struct ev_req r;
		char text[SQLSPAN_TEXT_INLINE];
	} rec;
	uint16_t chunks = 0;
	uint32_t total = 0;
	size_t inline_len = 0;

	T += 1000;
	if (text && strlen(text) < SQLSPAN_TEXT_INLINE - 1 && drop_chunk < 0) {
		inline_len = strlen(text);
		memcpy(rec.text, text, inline_len);
		total = inline_len;
	} else if (text) {
		size_t len = strlen(text), off = 0;

		do {
			struct ev_text t;
			size_t k = len - off < SQLSPAN_TEXT_CHUNK - 1 ? len - off
								      : SQLSPAN_TEXT_CHUNK - 1;

			memset(&t, 0, sizeof(t));
			hdr(&t.h, EV_TEXT, 7, 8, 0);
			t.seq = chunks++;
			t.len = k;
			memcpy(t.data, text + off, k);
			if (drop_chunk != chunks - 1)
				asm_record(a, &t, sizeof(t));
			off += k;
			total += k;
		} while (off < len);
	}
	memset(&rec.r, 0, sizeof(rec.r));
	hdr(&rec.r.h, EV_REQ, 7, 8, flags);
	rec.r.conn = conn;
	rec.r.fd = fd;
	rec.r.api = api;
	rec.r.pipeline = pipeline;
	rec.r.text_len = total;
	rec.r.nchunks = chunks;
	rec.r.be_pid = 0;
	if (name)
		snprintf(rec.r.name, sizeof(rec.r.name), "%s", name);
	asm_record(a, &rec, sizeof(rec.r) + inline_len);
}

static void req(struct assembler *a, int fd, uint16_t api, uint8_t pipeline, const char *text,
		const char *name)
{
	req_full(a, fd, 0x1234, api, pipeline, text, name, 0, -1);
}

static uint16_t cap_of(uint8_t type, uint32_t len)
{
	uint32_t cap = 0;

	if (type == 'C')
		cap = SQLSPAN_MSG_SHORT - 1;
	else if (type == 'E')
		cap = SQLSPAN_MSG_LONG - 1;
	else if (type == 'Z')
		cap = 1;
	else if (type == 'K')
		cap = 8;
	return len < cap ? len : cap;
}

/* EV_MSG records in one EV_MSGS record, as the walker sends those of one read. */
static void msgs_send(struct assembler *a, const struct ev_msg *const *m, uint32_t count)
{
	static uint8_t buf[sizeof(struct ev_msgs) + SQLSPAN_MSGS_MAX];
	struct ev_msgs *b = (struct ev_msgs *)buf;
	uint32_t len = 0;

	memset(buf, 0, sizeof(buf));
	for (uint32_t i = 0; i < count; i++) {
		/* EV_MSG records, or EV_FMSG ones (the same header size, a wider n) */
		size_t n = m[i]->h.kind == EV_FMSG ? ((const struct ev_fmsg *)m[i])->n : m[i]->n;
		size_t one = sizeof(*m[i]) + ((n + 7u) & ~(size_t)7u);

		memcpy(buf + sizeof(*b) + len, m[i], sizeof(*m[i]) + n);
		len += one;
	}
	hdr(&b->h, EV_MSGS, 7, 8, 0);
	b->count = count;
	b->len = len;
	asm_record(a, buf, sizeof(*b) + len);
}

static void msgs_one(struct assembler *a, const struct ev_msg *m)
{
	msgs_send(a, &m, 1);
}

/* A backend message in parts of `part` bytes (0: one record), as the walker sends it. */
static void msg_parts(struct assembler *a, int fd, uint8_t type, const void *body, uint32_t len,
		      uint32_t rows, uint32_t part, uint32_t flags)
{
	uint16_t cap = cap_of(type, len);
	uint32_t off = 0;

	T += 1000;
	do {
		struct {
			struct ev_msg m;
			uint8_t data[SQLSPAN_MSG_LONG];
		} rec;
		uint32_t n = cap - off;

		if (part && n > part)
			n = part;
		memset(&rec, 0, sizeof(rec));
		hdr(&rec.m.h, EV_MSG, 7, 8, off == 0 ? flags : 0);
		rec.m.fd = fd;
		rec.m.len = len;
		rec.m.off = off;
		rec.m.rows = off == 0 ? rows : 0;
		rec.m.cap = cap;
		rec.m.n = n;
		rec.m.type = type;
		if (n)
			memcpy(rec.data, (const uint8_t *)body + off, n);
		msgs_one(a, &rec.m);
		off += n;
	} while (off < cap);
}

static void msg(struct assembler *a, int fd, uint8_t type, const char *body, uint32_t rows)
{
	msg_parts(a, fd, type, body, body ? strlen(body) + 1 : 0, rows, 0, 0);
}

static void z(struct assembler *a, int fd, char status)
{
	msg_parts(a, fd, 'Z', &status, 1, 0, 0, 0);
}

static void err(struct assembler *a, int fd, const char *sqlstate, const char *m)
{
	char body[256];
	int n = snprintf(body, sizeof(body), "SERROR%cVERROR%cC%s%cM%s%c", 0, 0, sqlstate, 0, m, 0);

	msg_parts(a, fd, 'E', body, n + 1, 0, 0, 0);
}

static void conn_ev(struct assembler *a, uint32_t kind, int fd, uint64_t conn, uint32_t arg)
{
	struct ev_conn e;

	T += 1000;
	memset(&e, 0, sizeof(e));
	hdr(&e.h, kind, 7, 8, 0);
	e.fd = fd;
	e.conn = conn;
	e.arg = arg;
	asm_record(a, &e, sizeof(e));
}

TEST(simple_query)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY, 0, "SELECT 1", NULL);
	CHECK_EQ(asm_open_spans(a), 1);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	CHECK_EQ(G.n, 0);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	CHECK_STR(G.s[0].text, "SELECT 1");
	CHECK_EQ(G.s[0].result, RES_OK);
	CHECK_EQ(G.s[0].text_state, TEXT_FULL);
	CHECK_STR(G.s[0].tag.tag, "SELECT 1");
	CHECK_EQ(G.s[0].tag.rows, 1);
	CHECK_EQ(G.s[0].returned_rows, 1);
	CHECK_EQ(G.s[0].txn_status, 'I');
	CHECK_EQ(G.s[0].req, REQ_QUERY);
	CHECK(G.s[0].end_ns > G.s[0].start_ns);
	CHECK_STR(G.s[0].exe, "app");
	CHECK_STR(G.db[0], "fromuser");
	CHECK_EQ(asm_open_spans(a), 0);
	CHECK_EQ(asm_stats(a)->spans, 1);
	asm_free(a);
}

/* A build of one read's messages: T, C and Z in one EV_MSGS record; malformed ones are counted. */
static struct ev_msg *mk_msg(void *buf, uint8_t type, const char *body, uint32_t rows)
{
	struct ev_msg *m = buf;
	uint32_t len = body ? strlen(body) + 1 : 0;

	memset(buf, 0, sizeof(struct ev_msg) + SQLSPAN_MSG_SHORT);
	T += 10;
	hdr(&m->h, EV_MSG, 7, 8, 0);
	m->fd = 5;
	m->len = len;
	m->rows = rows;
	m->cap = cap_of(type, len);
	m->n = m->cap;
	m->type = type;
	if (m->n)
		memcpy(m->data, body, m->n);
	return m;
}

TEST(messages_of_one_read_in_one_record)
{
	struct assembler *a = fresh(65536);
	uint8_t b1[128], b2[128], b3[128], bad[sizeof(struct ev_msgs) + 128];
	const struct ev_msg *three[3];
	struct ev_msgs *b = (struct ev_msgs *)bad;
	char zi = 'I';

	req(a, 5, API_SEND_QUERY, 0, "SELECT 1", NULL);
	three[0] = mk_msg(b1, 'T', NULL, 0);
	three[1] = mk_msg(b2, 'C', "SELECT 1", 1);
	three[2] = mk_msg(b3, 'Z', NULL, 0);
	((struct ev_msg *)b3)->len = ((struct ev_msg *)b3)->cap = ((struct ev_msg *)b3)->n = 1;
	memcpy(((struct ev_msg *)b3)->data, &zi, 1);
	msgs_send(a, three, 3);
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].result, RES_OK);
	CHECK_STR(G.s[0].tag.tag, "SELECT 1");
	CHECK_EQ(G.s[0].returned_rows, 1);
	CHECK_EQ(asm_stats(a)->bad_records, 0);
	/* lengths that do not add up: counted, not followed */
	memset(bad, 0, sizeof(bad));
	hdr(&b->h, EV_MSGS, 7, 8, 0);
	b->count = 1;
	b->len = 64; /* more than the record has */
	asm_record(a, bad, sizeof(*b) + 56);
	CHECK_EQ(asm_stats(a)->bad_records, 1);
	b->len = sizeof(struct ev_msg); /* an entry whose n runs past the end */
	mk_msg(bad + sizeof(*b), 'C', "SELECT 1", 0);
	asm_record(a, bad, sizeof(*b) + sizeof(struct ev_msg));
	CHECK_EQ(asm_stats(a)->bad_records, 2);
	b->count = 2; /* more entries than bytes */
	((struct ev_msg *)(bad + sizeof(*b)))->n = 0;
	asm_record(a, bad, sizeof(*b) + sizeof(struct ev_msg));
	CHECK_EQ(asm_stats(a)->bad_records, 3);
	/* an EV_MSG alone: the BPF side never sends one */
	asm_record(a, b1, sizeof(b1));
	CHECK_EQ(asm_stats(a)->bad_records, 4);
	asm_free(a);
}

TEST(statement_without_result_set)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY, 0, "INSERT INTO t VALUES (1), (2)", NULL);
	msg(a, 5, 'C', "INSERT 0 2", 0);
	z(a, 5, 'T');
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].tag.rows, 2);
	CHECK_EQ(G.s[0].returned_rows, -1);
	CHECK_EQ(G.s[0].txn_status, 'T');
	req(a, 5, API_SEND_QUERY, 0, "", NULL); /* empty query */
	msg(a, 5, 'I', NULL, 0);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 2);
	CHECK_STR(G.s[1].text, "");
	CHECK_EQ(G.s[1].result, RES_OK);
	asm_free(a);
}

TEST(multi_statement_and_errors)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY, 0, "SELECT 1; SELECT 2", NULL);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].ncommands, 2);
	CHECK_EQ(G.s[0].returned_rows, 2);

	req(a, 5, API_SEND_QUERY, 0, "SELECT 1/0", NULL);
	err(a, 5, "22012", "division by zero");
	z(a, 5, 'E');
	CHECK_EQ(G.n, 2);
	CHECK_EQ(G.s[1].result, RES_ERROR);
	CHECK(G.s[1].has_error);
	CHECK_STR(G.s[1].error.sqlstate, "22012");
	CHECK_STR(G.s[1].error.message, "division by zero");
	CHECK_EQ(G.s[1].txn_status, 'E');
	asm_free(a);
}

TEST(extended_protocol_and_prepared_statements)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY_PARAMS, 0, "SELECT $1::int", NULL);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	req(a, 5, API_SEND_PREPARE, 0, "UPDATE t SET x = $1", "s1");
	msg(a, 5, '1', NULL, 0);
	z(a, 5, 'I');
	req(a, 5, API_SEND_QUERY_PREPARED, 0, NULL, "s1");
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'n', NULL, 0);
	msg(a, 5, 'C', "UPDATE 3", 0);
	z(a, 5, 'I');
	req(a, 5, API_SEND_QUERY_PREPARED, 0, NULL, "before_attach");
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'C', "DELETE 1", 0);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 4);
	CHECK_EQ(G.s[0].req, REQ_QUERY);
	CHECK(!G.s[0].has_name);
	CHECK_EQ(G.s[1].req, REQ_PREPARE);
	CHECK_STR(G.s[1].name, "s1");
	CHECK_STR(G.s[1].text, "UPDATE t SET x = $1");
	CHECK_EQ(G.s[2].req, REQ_EXECUTE);
	CHECK_STR(G.s[2].text, "UPDATE t SET x = $1");
	CHECK_STR(G.s[2].name, "s1");
	CHECK_EQ(G.s[2].text_state, TEXT_FULL);
	CHECK_EQ(G.s[2].tag.rows, 3);
	CHECK_EQ(G.s[3].text_state, TEXT_UNKNOWN);
	CHECK(G.s[3].text == NULL);
	CHECK_STR(G.s[3].name, "before_attach");
	CHECK_EQ(G.s[3].result, RES_OK);
	/* DEALLOCATE ALL forgets them */
	req(a, 5, API_SEND_QUERY, 0, "DEALLOCATE ALL", NULL);
	msg(a, 5, 'C', "DEALLOCATE ALL", 0);
	z(a, 5, 'I');
	req(a, 5, API_SEND_QUERY_PREPARED, 0, NULL, "s1");
	msg(a, 5, 'C', "UPDATE 0", 0);
	z(a, 5, 'I');
	CHECK_EQ(G.s[5].text_state, TEXT_UNKNOWN);
	/* a failed prepare is not remembered; DEALLOCATE name forgets one */
	req(a, 5, API_SEND_PREPARE, 0, "SELEC broken", "bad");
	err(a, 5, "42601", "syntax error");
	z(a, 5, 'I');
	req(a, 5, API_SEND_QUERY_PREPARED, 0, NULL, "bad");
	err(a, 5, "26000", "prepared statement \"bad\" does not exist");
	z(a, 5, 'I');
	CHECK_EQ(G.s[7].text_state, TEXT_UNKNOWN);
	req(a, 5, API_SEND_PREPARE, 0, "SELECT 2", "keep");
	msg(a, 5, '1', NULL, 0);
	z(a, 5, 'I');
	req(a, 5, API_SEND_QUERY, 0, "DEALLOCATE \"keep\"", NULL);
	msg(a, 5, 'C', "DEALLOCATE", 0);
	z(a, 5, 'I');
	req(a, 5, API_SEND_QUERY_PREPARED, 0, NULL, "keep");
	z(a, 5, 'I');
	CHECK_EQ(G.s[10].text_state, TEXT_UNKNOWN);
	asm_free(a);
}

TEST(pipeline_with_error_and_sync)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY_PARAMS, 1, "INSERT INTO t VALUES (1)", NULL);
	req(a, 5, API_SEND_QUERY_PARAMS, 1, "INSERT INTO t VALUES (1)", NULL);
	req(a, 5, API_SEND_QUERY_PARAMS, 1, "DELETE FROM t", NULL);
	req(a, 5, API_PIPELINE_SYNC, 1, NULL, NULL);
	req(a, 5, API_SEND_QUERY_PARAMS, 1, "SELECT 1", NULL);
	req(a, 5, API_PIPELINE_SYNC, 1, NULL, NULL);
	CHECK_EQ(asm_open_spans(a), 4);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'n', NULL, 0);
	msg(a, 5, 'C', "INSERT 0 1", 0);
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].result, RES_OK);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	err(a, 5, "23505", "duplicate key");
	CHECK_EQ(G.n, 2);
	CHECK_EQ(G.s[1].result, RES_ERROR);
	z(a, 5, 'E');
	CHECK_EQ(G.n, 3);
	CHECK_EQ(G.s[2].result, RES_ABORTED);
	CHECK_STR(G.s[2].text, "DELETE FROM t");
	CHECK_EQ(G.s[2].txn_status, 'E');
	/* the next segment is not aborted */
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	CHECK_EQ(G.n, 4);
	CHECK_EQ(G.s[3].result, RES_OK);
	CHECK_EQ(G.s[3].returned_rows, 1);
	CHECK(G.s[3].pipeline);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 4);
	CHECK_EQ(asm_open_spans(a), 0);
	/* then out of pipeline mode again */
	req(a, 5, API_SEND_QUERY, 0, "SELECT 2", NULL);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 5);
	CHECK(!G.s[4].pipeline);
	asm_free(a);
}

TEST(pipeline_prepare_describe_close)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_PREPARE, 1, "SELECT $1", "p");
	req(a, 5, API_SEND_QUERY_PREPARED, 1, NULL, "p");
	req(a, 5, API_DESCRIBE_PREPARED, 1, NULL, "p");
	req(a, 5, API_CLOSE_PREPARED, 1, NULL, "p");
	req(a, 5, API_PIPELINE_SYNC, 1, NULL, NULL);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	msg(a, 5, 't', NULL, 0);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, '3', NULL, 0);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 4);
	CHECK_EQ(G.s[0].req, REQ_PREPARE);
	CHECK_EQ(G.s[1].req, REQ_EXECUTE);
	CHECK_STR(G.s[1].text, "SELECT $1");
	CHECK_EQ(G.s[2].req, REQ_DESCRIBE);
	CHECK_STR(G.s[2].text, "SELECT $1");
	CHECK_EQ(G.s[3].req, REQ_CLOSE);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(G.s[i].result, RES_OK);
	/* closed: forgotten */
	req(a, 5, API_SEND_QUERY_PREPARED, 0, NULL, "p");
	z(a, 5, 'I');
	CHECK_EQ(G.s[4].text_state, TEXT_UNKNOWN);
	asm_free(a);
}

TEST(long_text_in_chunks)
{
	static char big[3 * SQLSPAN_TEXT_CHUNK];
	struct assembler *a = fresh(65536);

	memset(big, 'a', sizeof(big) - 1);
	memcpy(big, "SELECT '", 8);
	big[sizeof(big) - 2] = '\'';
	req(a, 5, API_SEND_QUERY, 0, big, NULL);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].text_len, sizeof(big) - 1);
	CHECK(!strcmp(G.s[0].text, big));
	CHECK_EQ(G.s[0].text_state, TEXT_FULL);
	asm_free(a);

	a = fresh(5000); /* --max-sql-bytes 5000 */
	req(a, 5, API_SEND_QUERY, 0, big, NULL);
	z(a, 5, 'I');
	CHECK_EQ(G.s[0].text_len, 5000);
	CHECK(!strncmp(G.s[0].text, big, 5000));
	CHECK_EQ(G.s[0].text_state, TEXT_CUT);
	asm_free(a);

	a = fresh(65536); /* the BPF side stopped early: cut */
	req_full(a, 5, 0x1234, API_SEND_QUERY, 0, "SELECT 'abc", NULL, EVF_TEXT_CUT, -1);
	z(a, 5, 'I');
	CHECK_EQ(G.s[0].text_state, TEXT_CUT);
	asm_free(a);

	a = fresh(65536); /* a chunk lost */
	req_full(a, 5, 0x1234, API_SEND_QUERY, 0, big, NULL, 0, 1);
	z(a, 5, 'I');
	CHECK_EQ(G.s[0].text_state, TEXT_INCOMPLETE);
	CHECK_EQ(asm_stats(a)->texts_lost, 1);
	asm_free(a);

	a = fresh(65536); /* a text of one chunk, and one just too long to travel inline */
	big[SQLSPAN_TEXT_INLINE - 1] = 0;
	big[SQLSPAN_TEXT_INLINE - 2] = '\'';
	req(a, 5, API_SEND_QUERY, 0, big, NULL);
	z(a, 5, 'I');
	CHECK_EQ(G.s[0].text_len, SQLSPAN_TEXT_INLINE - 1);
	CHECK(!strcmp(G.s[0].text, big));
	big[SQLSPAN_TEXT_INLINE - 2] = 0;
	big[SQLSPAN_TEXT_INLINE - 3] = '\'';
	req(a, 5, API_SEND_QUERY, 0, big, NULL);
	z(a, 5, 'I');
	CHECK_EQ(G.s[1].text_len, SQLSPAN_TEXT_INLINE - 2);
	CHECK(!strcmp(G.s[1].text, big));
	CHECK_EQ(G.s[1].text_state, TEXT_FULL);
	asm_free(a);

	a = fresh(65536); /* an inline text longer than its record: a bad record, no span */
	{
		struct {
			struct ev_req r;
			char text[8];
		} rec;

		memset(&rec, 0, sizeof(rec));
		hdr(&rec.r.h, EV_REQ, 7, 8, 0);
		rec.r.fd = 5;
		rec.r.api = API_SEND_QUERY;
		rec.r.text_len = 9;
		memcpy(rec.text, "SELECT 1", 8);
		asm_record(a, &rec, sizeof(rec));
		CHECK_EQ(asm_stats(a)->bad_records, 1);
		z(a, 5, 'I');
		CHECK_EQ(G.n, 0);
	}
	asm_free(a);

	a = fresh(65536); /* chunks whose request never comes */
	{
		struct ev_text t;

		memset(&t, 0, sizeof(t));
		hdr(&t.h, EV_TEXT, 7, 9, 0);
		t.len = 3;
		memcpy(t.data, "abc", 3);
		asm_record(a, &t, sizeof(t));
		asm_expire(a, T + 5000000000ULL, 2000000000ULL);
		CHECK_EQ(asm_stats(a)->orphan_texts, 1);
	}
	asm_free(a);
}

TEST(messages_in_parts)
{
	static const char e[] = "SERROR\0VERROR\0C23505\0Mduplicate key value violates unique "
				"constraint \"a_rather_long_constraint_name_pkey\"\0";
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY, 0, "INSERT ...", NULL);
	msg_parts(a, 5, 'E', e, sizeof(e), 0, 7, 0); /* 7 bytes a part */
	z(a, 5, 'E');
	CHECK_EQ(G.n, 1);
	CHECK_STR(G.s[0].error.sqlstate, "23505");
	CHECK_STR(G.s[0].error.message, "duplicate key value violates unique constraint "
					"\"a_rather_long_constraint_name_pkey\"");
	req(a, 5, API_SEND_QUERY, 0, "SELECT 5", NULL);
	msg_parts(a, 5, 'C', "SELECT 5000", 12, 5000, 3, 0);
	z(a, 5, 'I');
	CHECK_EQ(G.s[1].tag.rows, 5000);
	CHECK_EQ(G.s[1].returned_rows, 5000);
	/* an error message longer than what is copied: cut, still parsed */
	{
		char big[2000];
		int n = snprintf(big, sizeof(big), "SERROR%cC42P01%cM", 0, 0);

		memset(big + n, 'm', sizeof(big) - n - 2);
		big[sizeof(big) - 2] = 0;
		big[sizeof(big) - 1] = 0;
		req(a, 5, API_SEND_QUERY, 0, "SELECT * FROM nope", NULL);
		msg_parts(a, 5, 'E', big, sizeof(big), 0, 100, 0);
		z(a, 5, 'E');
		CHECK_STR(G.s[2].error.sqlstate, "42P01");
		CHECK(G.s[2].error.message_cut);
	}
	asm_free(a);
}

TEST(losses_are_reported)
{
	struct assembler *a = fresh(65536);

	/* records of the socket lost: what was pending ends as unknown, marked */
	req(a, 5, API_SEND_QUERY, 0, "SELECT 1", NULL);
	msg_parts(a, 5, 'Z', "I", 1, 0, 0, EVF_GAP);
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].result, RES_UNKNOWN);
	CHECK(G.s[0].lost_events);
	/* the stream could not be followed */
	req(a, 5, API_SEND_QUERY, 0, "SELECT 2", NULL);
	conn_ev(a, EV_DESYNC, 5, 0, DESYNC_TOO_MANY);
	CHECK_EQ(G.n, 2);
	CHECK_EQ(G.s[1].result, RES_UNKNOWN);
	CHECK_EQ(asm_stats(a)->desync_why[DESYNC_TOO_MANY], 1);
	/* a new request outside pipeline mode while one is pending: the old one was answered unseen
	 */
	req(a, 5, API_SEND_QUERY, 0, "SELECT 3", NULL);
	req(a, 5, API_SEND_QUERY, 0, "SELECT 4", NULL);
	CHECK_EQ(G.n, 3);
	CHECK_STR(G.s[2].text, "SELECT 3");
	CHECK_EQ(G.s[2].result, RES_UNKNOWN);
	z(a, 5, 'I');
	CHECK_EQ(G.s[3].result, RES_OK);
	/* no socket known: reported at once, result unknown */
	req(a, -1, API_SEND_QUERY, 0, "SELECT 5", NULL);
	CHECK_EQ(G.n, 5);
	CHECK_EQ(G.s[4].result, RES_UNKNOWN);
	/* messages nobody waits for are counted */
	msg(a, 9, 'C', "SELECT 1", 0);
	msg(a, 5, 'C', "SELECT 1", 0);
	CHECK_EQ(asm_stats(a)->orphan_msgs, 2);
	asm_free(a);
}

TEST(kernel_skipped_runs)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY, 0, "SELECT 1", NULL);
	req(a, 6, API_SEND_QUERY, 0, "SELECT 2", NULL);
	msg(a, 5, 'C', "SELECT 1", 1);
	/* records read after the kernel skipped a run: what ends now is marked */
	asm_suspect(a, true);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].result, RES_OK);
	CHECK(G.s[0].lost_events);
	/* then what is still pending ends as unknown: its replies may be the skipped ones */
	CHECK_EQ(asm_realign(a, T), 1);
	asm_suspect(a, false);
	CHECK_EQ(G.n, 2);
	CHECK_STR(G.s[1].text, "SELECT 2");
	CHECK_EQ(G.s[1].result, RES_UNKNOWN);
	CHECK(G.s[1].lost_events);
	CHECK_EQ(asm_open_spans(a), 0);
	/* its replies come later: orphans (an idle ReadyForQuery is not one), never credited to the
	 * next request */
	msg(a, 6, 'C', "SELECT 1", 1);
	z(a, 6, 'I');
	CHECK_EQ(asm_stats(a)->orphan_msgs, 1);
	req(a, 6, API_SEND_QUERY, 0, "SELECT 3", NULL);
	msg(a, 6, 'C', "SELECT 1", 1);
	z(a, 6, 'I');
	CHECK_EQ(G.n, 3);
	CHECK_EQ(G.s[2].result, RES_OK);
	CHECK(!G.s[2].lost_events);
	CHECK_EQ(asm_stats(a)->realigned, 1);
	CHECK_EQ(asm_realign(a, T), 0);
	asm_free(a);
}

TEST(ends_of_connections_and_processes)
{
	struct assembler *a = fresh(65536);

	req(a, 5, API_SEND_QUERY, 0, "SELECT pg_sleep(10)", NULL);
	conn_ev(a, EV_CLOSE, 5, 0x1234, 0);
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].result, RES_CLOSED);
	CHECK(!G.s[0].lost_events);
	/* a stream the BPF side could not vouch for since the kernel skipped runs: its reply may
	 * have been swallowed, so what ends at its close is marked */
	req(a, 5, API_SEND_QUERY, 0, "SELECT 1", NULL);
	conn_ev(a, EV_CLOSE, 5, 0x1234, EV_CLOSE_STALE);
	CHECK_EQ(G.n, 2);
	CHECK_EQ(G.s[1].result, RES_CLOSED);
	CHECK(G.s[1].lost_events);
	req(a, 6, API_SEND_QUERY, 0, "SELECT pg_sleep(10)", NULL);
	req(a, 7, API_SEND_QUERY, 0, "SELECT pg_sleep(10)", NULL);
	conn_ev(a, EV_EXIT, -1, 0, 0);
	CHECK_EQ(G.n, 4);
	CHECK_EQ(G.s[2].result, RES_EXITED);
	CHECK_EQ(G.s[3].result, RES_EXITED);
	req(a, 8, API_SEND_QUERY, 0, "SELECT 1", NULL);
	CHECK_EQ(asm_close_all(a, T + 1), 1);
	CHECK_EQ(G.s[4].result, RES_DETACHED);
	CHECK_EQ(asm_open_spans(a), 0);
	asm_free(a);
}

TEST(connections_do_not_mix)
{
	struct assembler *a = fresh(65536);

	req_full(a, 5, 0xaaaa, API_SEND_QUERY, 0, "SELECT 'five'", NULL, 0, -1);
	req_full(a, 6, 0xbbbb, API_SEND_QUERY, 0, "SELECT 'six'", NULL, 0, -1);
	msg(a, 6, 'C', "SELECT 1", 1);
	z(a, 6, 'I');
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'T');
	CHECK_EQ(G.n, 2);
	CHECK_STR(G.s[0].text, "SELECT 'six'");
	CHECK_STR(G.s[1].text, "SELECT 'five'");
	CHECK_EQ(G.s[1].txn_status, 'T');
	asm_free(a);
}

TEST(identity_from_the_bpf_side)
{
	struct assembler *a = fresh(65536);
	struct ev_ident e;

	memset(&e, 0, sizeof(e));
	hdr(&e.h, EV_IDENT, 7, 8, 0);
	e.fd = 5;
	e.conn = 0x1234;
	e.be_pid = 4242;
	e.status = 0;
	e.host_type = 2;
	e.ssl = 0;
	strcpy(e.db, "shop");
	strcpy(e.user, "app");
	strcpy(e.port, "5433");
	strcpy(e.host, "/run/postgresql");
	asm_record(a, &e, sizeof(e));
	req_full(a, 5, 0x1234, API_SEND_QUERY, 0, "SELECT 1", NULL, EVF_NEW_FD, -1);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	CHECK_STR(G.db[0], "shop");
	asm_free(a);
}

TEST(transactions)
{
	struct assembler *a = fresh(65536);

	/* autocommit: no transaction */
	req(a, 5, API_SEND_QUERY, 0, "SELECT 1", NULL);
	z(a, 5, 'I');
	CHECK(!G.s[0].in_txn);
	/* BEGIN, two statements, COMMIT: one transaction, its span after them */
	req(a, 5, API_SEND_QUERY, 0, "BEGIN", NULL);
	msg(a, 5, 'C', "BEGIN", 0);
	z(a, 5, 'T');
	req(a, 5, API_SEND_QUERY, 0, "INSERT INTO t VALUES (1)", NULL);
	msg(a, 5, 'C', "INSERT 0 1", 0);
	z(a, 5, 'T');
	req(a, 5, API_SEND_QUERY, 0, "SELECT 2", NULL);
	z(a, 5, 'T');
	CHECK_EQ(G.nt, 0);
	req(a, 5, API_SEND_QUERY, 0, "COMMIT", NULL);
	msg(a, 5, 'C', "COMMIT", 0);
	z(a, 5, 'I');
	CHECK_EQ(G.nt, 1);
	CHECK_EQ(G.t[0].outcome, TXN_COMMIT);
	CHECK_EQ(G.t[0].nstatements, 4);
	CHECK_EQ(G.t[0].start_ns, G.s[1].start_ns);
	CHECK_EQ(G.t[0].end_ns, G.s[4].end_ns);
	for (int i = 1; i <= 4; i++) {
		CHECK(G.s[i].in_txn);
		CHECK(!memcmp(G.s[i].parent_span_id, G.t[0].span_id, 8));
		CHECK(!memcmp(G.s[i].trace_id, G.t[0].trace_id, 16));
	}
	/* an error: the transaction fails, COMMIT answers ROLLBACK */
	req(a, 5, API_SEND_QUERY, 0, "BEGIN", NULL);
	msg(a, 5, 'C', "BEGIN", 0);
	z(a, 5, 'T');
	req(a, 5, API_SEND_QUERY, 0, "SELECT 1/0", NULL);
	err(a, 5, "22012", "division by zero");
	z(a, 5, 'E');
	req(a, 5, API_SEND_QUERY, 0, "COMMIT", NULL);
	msg(a, 5, 'C', "ROLLBACK", 0);
	z(a, 5, 'I');
	CHECK_EQ(G.nt, 2);
	CHECK_EQ(G.t[1].outcome, TXN_ROLLBACK);
	CHECK_EQ(G.t[1].nstatements, 3);
	/* left open when the connection closes */
	req(a, 5, API_SEND_QUERY, 0, "BEGIN", NULL);
	z(a, 5, 'T');
	conn_ev(a, EV_CLOSE, 5, 0x1234, 0);
	CHECK_EQ(G.nt, 3);
	CHECK_EQ(G.t[2].outcome, TXN_OPEN);
	CHECK_EQ(asm_stats(a)->txns, 3);
	asm_free(a);
}

/* ---- wire sockets: frontend messages as front.bpf.h sends them ---- */

/* front.bpf.h: parts shorter than this are batched */
#define FRONT_BAT_DATA 512

/*
 * A frontend message whose first `cap` body bytes are sent, in parts of `part` (0: one). The
 * messages of one send share its time: the clock moves with the replies (msg_parts).
 */
static void fmsg_parts(struct assembler *a, int fd, uint8_t type, const void *body, uint32_t len,
		       uint32_t cap, uint32_t part, uint32_t flags)
{
	uint32_t off = 0;

	do {
		struct {
			struct ev_fmsg m;
			uint8_t data[SQLSPAN_TEXT_CHUNK];
		} rec;
		uint32_t n = cap - off;

		if (part && n > part)
			n = part;
		memset(&rec, 0, sizeof(rec));
		hdr(&rec.m.h, EV_FMSG, 7, 8, off == 0 ? flags : 0);
		rec.m.fd = fd;
		rec.m.len = len;
		rec.m.off = off;
		rec.m.cap = cap;
		rec.m.n = n;
		rec.m.type = type;
		if (n)
			memcpy(rec.data, (const uint8_t *)body + off, n);
		if (n < FRONT_BAT_DATA) {
			/* short parts travel in EV_MSGS records (front_emit), long ones alone */
			const struct ev_msg *one = (const void *)&rec;

			msgs_send(a, &one, 1);
		} else {
			asm_record(a, &rec, sizeof(rec.m) + n);
		}
		off += n;
	} while (off < cap);
}

/* A whole message given as its body (with the NULs in it: `len` bytes). */
static void fmsg(struct assembler *a, int fd, uint8_t type, const void *body, uint32_t len)
{
	fmsg_parts(a, fd, type, body, len, len, 0, 0);
}

/* A message whose body is a string literal (its own NULs in it, not the literal's last one). */
#define FMSG(a, fd, type, lit) fmsg(a, fd, type, lit, sizeof(lit) - 1)

/* asyncpg's traffic: startup, prepare with describe, bind/execute/sync, a simple query. */
TEST(wire_asyncpg_flow)
{
	struct assembler *a = fresh(4096);
	static const uint8_t key[8] = {0, 0, 0x30, 0x39, 1, 2, 3, 4};

	FMSG(a, 5, 0, "\0\3\0\0user\0bob\0database\0shop\0\0");
	msg_parts(a, 5, 'K', key, 8, 0, 0, 0);
	z(a, 5, 'I');
	/* prepare: Parse + Describe + Flush, no Sync */
	FMSG(a, 5, 'P', "__asyncpg_stmt_1__\0SELECT id FROM t WHERE x = $1\0\0\0");
	FMSG(a, 5, 'D', "S__asyncpg_stmt_1__\0");
	fmsg(a, 5, 'H', NULL, 0);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, 't', NULL, 0);
	CHECK_EQ(G.n, 0); /* the prepare ends with its RowDescription */
	msg(a, 5, 'T', NULL, 0);
	CHECK_EQ(G.n, 1);
	CHECK_EQ(G.s[0].req, REQ_PREPARE);
	CHECK_EQ(G.s[0].result, RES_OK);
	CHECK(G.s[0].wire);
	CHECK_STR(G.s[0].name, "__asyncpg_stmt_1__");
	CHECK_STR(G.text[0], "SELECT id FROM t WHERE x = $1");
	CHECK_STR(G.db[0], "shop");
	/* two executions in one send (executemany), one Sync */
	FMSG(a, 5, 'B', "\0__asyncpg_stmt_1__\0\0\0\0\0\0\0");
	FMSG(a, 5, 'E', "\0\0\0\0");
	FMSG(a, 5, 'B', "\0__asyncpg_stmt_1__\0\0\0\0\0\0\0");
	FMSG(a, 5, 'E', "\0\0\0\0");
	fmsg(a, 5, 'S', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'C', "SELECT 2", 2);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'C', "SELECT 0", 0);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 3);
	CHECK_EQ(G.s[1].req, REQ_EXECUTE);
	CHECK_EQ(G.s[1].returned_rows, 2);
	CHECK_STR(G.text[1], "SELECT id FROM t WHERE x = $1");
	CHECK_STR(G.s[1].name, "__asyncpg_stmt_1__");
	CHECK_EQ(G.s[2].result, RES_OK);
	/* a simple query, and the unnamed statement */
	FMSG(a, 5, 'Q', "BEGIN;");
	msg(a, 5, 'C', "BEGIN", 0);
	z(a, 5, 'T');
	FMSG(a, 5, 'P', "\0SELECT 1\0\0\0");
	FMSG(a, 5, 'B', "\0\0\0\0\0\0\0\0");
	FMSG(a, 5, 'E', "\0\0\0\0");
	fmsg(a, 5, 'S', NULL, 0);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'T');
	CHECK_EQ(G.n, 5);
	CHECK_EQ(G.s[3].req, REQ_QUERY);
	CHECK(!G.s[3].pipeline);
	CHECK_STR(G.text[4], "SELECT 1");
	CHECK_EQ(G.s[4].req, REQ_QUERY);
	CHECK(!G.s[4].has_name);
	CHECK(G.s[4].in_txn);
	CHECK_EQ(asm_stats(a)->orphan_msgs, 0);
	asm_free(a);
}

/* The system's answer for a wire socket: where it leads, nothing of the session (as main.c's). */
static void hook_ident_addr(void *arg, uint32_t pid, uint64_t conn, int fd, struct conn_ident *out)
{
	(void)arg, (void)pid, (void)conn, (void)fd;
	memset(out, 0, sizeof(*out));
	out->known = true;
	out->host = strdup("/run/pg");
}

static int backend_asked[16];

static void hook_backend(void *arg, uint32_t pid, int fd, struct conn_ident *id)
{
	(void)arg, (void)pid;
	backend_asked[fd & 15]++;
	if (fd == 9)
		return; /* a server elsewhere: nothing known */
	/* what the identity lacks (as main.c's backend_fill) */
	if (!id->user)
		id->user = strdup("carol");
	if (!id->db)
		id->db = strdup("ledger");
	if (!id->backend_pid)
		id->backend_pid = 4242;
}

/* An assembler whose hooks answer for the system (hook_backend), G and the asks cleared. */
static struct assembler *asm_with_backend(void)
{
	static const struct asm_hooks h = {.ident = hook_ident_addr,
					   .backend = hook_backend,
					   .exe = hook_exe,
					   .span = hook_span};

	asm_free(fresh(4096)); /* G cleared */
	memset(backend_asked, 0, sizeof(backend_asked));
	return asm_new(&h, 4096, 42);
}

/*
 * A session's StartupMessage (bob, shop) and the server's reply, with its BackendKeyData (backend
 * 12345) if `key`.
 */
static void session_start(struct assembler *a, int fd, bool key)
{
	static const uint8_t k[8] = {0, 0, 0x30, 0x39, 1, 2, 3, 4};

	FMSG(a, fd, 0, "\0\3\0\0user\0bob\0database\0shop\0\0");
	if (key)
		msg_parts(a, fd, 'K', k, 8, 0, 0, 0);
	z(a, fd, 'I');
}

/*
 * A socket first seen past its StartupMessage (its record lost, or opened before attach): its
 * user and database are asked of the server's side, once, at its first request; a socket whose
 * StartupMessage was read is never asked, nor one whose identity has them already.
 */
TEST(wire_session_start_unseen)
{
	struct assembler *a = asm_with_backend();

	session_start(a, 5, true); /* seen from its start */
	FMSG(a, 5, 'Q', "SELECT 1");
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	/* its StartupMessage lost: the first record is a query */
	for (int i = 0; i < 2; i++) {
		FMSG(a, 6, 'Q', "SELECT 2");
		msg(a, 6, 'C', "SELECT 1", 1);
		z(a, 6, 'I');
	}
	/* to a server elsewhere: asked, nothing found */
	FMSG(a, 9, 'Q', "SELECT 3");
	msg(a, 9, 'C', "SELECT 1", 1);
	z(a, 9, 'I');
	CHECK_EQ(G.n, 4);
	CHECK_STR(G.db[0], "shop");
	CHECK_STR(G.db[1], "ledger");
	CHECK_STR(G.db[2], "ledger");
	CHECK_STR(G.db[3], "(none)");
	/* the one whose database stayed unknown says why */
	CHECK(!G.unseen[0] && !G.unseen[1] && !G.unseen[2] && G.unseen[3]);
	CHECK_EQ(backend_asked[5], 0);
	CHECK_EQ(backend_asked[6], 1);
	CHECK_EQ(backend_asked[9], 1);
	CHECK_EQ(asm_stats(a)->sessions_unseen, 2);
	CHECK_EQ(asm_stats(a)->sessions_asked, 2);
	CHECK_EQ(asm_stats(a)->sessions_found, 1);
	asm_free(a);
}

/*
 * A session whose StartupMessage was read but whose BackendKeyData was not (the reply's record
 * lost): its backend PID is asked of the server's side, once, at its first request; its user and
 * database stay the StartupMessage's. A session that had its key is never asked.
 */
TEST(wire_backend_key_unseen)
{
	struct assembler *a = asm_with_backend();

	session_start(a, 5, true);
	session_start(a, 7, false); /* its BackendKeyData lost */
	for (int i = 0; i < 2; i++) {
		for (int fd = 5; fd <= 7; fd += 2) {
			fmsg(a, fd, 'Q', "SELECT 1", 8);
			msg(a, fd, 'C', "SELECT 1", 1);
			z(a, fd, 'I');
		}
	}
	CHECK_EQ(G.n, 4);
	CHECK_EQ(G.bpid[0], 12345);
	CHECK_EQ(G.bpid[1], 4242);
	CHECK_EQ(G.bpid[3], 4242);
	CHECK_STR(G.db[1], "shop");
	CHECK(!G.unseen[1]);
	CHECK_EQ(backend_asked[5], 0);
	CHECK_EQ(backend_asked[7], 1);
	CHECK_EQ(asm_stats(a)->keys_asked, 1);
	CHECK_EQ(asm_stats(a)->keys_found, 1);
	CHECK_EQ(asm_stats(a)->sessions_unseen, 0);
	asm_free(a);
}

/* The stack a span got: the time of its stack record (as its line), or -1. */
static void hook_py_ts(void *arg, const struct ev_stack *st, size_t size, bool want_text,
		       struct span_py *out)
{
	(void)arg, (void)size, (void)want_text;
	out->present = true;
	out->line = (int)(st->h.ts % 1000000);
}

static void stack_rec(struct assembler *a)
{
	struct ev_stack st;

	memset(&st, 0, sizeof(st));
	hdr(&st.h, EV_STACK, 7, 8, 0);
	asm_record(a, &st, sizeof(st));
}

/*
 * libpq flushes what it has once a message takes it past 8 KiB: Parse and the start of a long
 * Bind go in one send (which read the Python stack), the rest of the Bind, Describe, Execute and
 * Sync in the next (which did not: it starts in the middle of a message). The statement is the
 * Execute's, with the stack of the send it began in; the next one has its own.
 */
TEST(wire_request_ending_in_a_later_send_keeps_its_stack)
{
	static const struct asm_hooks h = {
		.ident = hook_ident, .exe = hook_exe, .span = hook_span, .py_resolve = hook_py_ts};
	static uint8_t bind[16];
	struct assembler *a;
	int first;

	asm_free(fresh(4096)); /* G cleared */
	a = asm_new(&h, 4096, 42);
	T += 1000;
	first = (int)(T % 1000000);
	stack_rec(a);
	FMSG(a, 5, 'P', "\0SELECT length($1)\0\0\0");
	fmsg_parts(a, 5, 'B', bind, 20000, sizeof(bind), 0, 0); /* names seen, the value skipped */
	T += 1000;						/* the next send */
	FMSG(a, 5, 'D', "P\0");
	FMSG(a, 5, 'E', "\0\0\0\0");
	fmsg(a, 5, 'S', NULL, 0);
	msg(a, 5, '1', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'T', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	CHECK_STR(G.text[0], "SELECT length($1)");
	CHECK(G.s[0].py.present);
	CHECK_EQ(G.s[0].py.line, first);
	/* a statement all in one send takes that send's stack, not the one before */
	T += 1000;
	stack_rec(a);
	FMSG(a, 5, 'Q', "SELECT 2\0");
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 2);
	CHECK(G.s[1].py.present);
	CHECK(G.s[1].py.line != first);
	asm_free(a);
}

/* The stacks asked for SQLAlchemy's statement text; each such ask gets it. */
static int text_asks;

static void hook_py_text(void *arg, const struct ev_stack *st, size_t size, bool want_text,
			 struct span_py *out)
{
	(void)arg, (void)st, (void)size;
	out->present = true;
	if (want_text) {
		text_asks++;
		out->sa_statement = strdup("SELECT name FROM t WHERE id = $1");
	}
}

/*
 * The statement text SQLAlchemy holds is asked of the stack (a read of the app's memory) only
 * for an execution whose text the wire did not carry (prepared before sqlspan attached): not
 * for a simple query, nor for a statement whose Parse was seen.
 */
/* One send: Bind (body `bind`, n bytes) and Execute of a named statement, Sync; its replies. */
static void bind_execute(struct assembler *a, const char *bind, uint32_t n)
{
	T += 1000;
	stack_rec(a);
	fmsg(a, 5, 'B', bind, n);
	FMSG(a, 5, 'E', "\0\0\0\0");
	fmsg(a, 5, 'S', NULL, 0);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
}

TEST(wire_statement_text_asked_of_the_app_only_when_unknown)
{
	static const struct asm_hooks h = {.ident = hook_ident,
					   .exe = hook_exe,
					   .span = hook_span,
					   .py_resolve = hook_py_text};
	static const char s1[] = "\0s1\0\0\0\0\0\0\0", s0[] = "\0s0\0\0\0\0\0\0\0";
	struct assembler *a;

	asm_free(fresh(4096)); /* G cleared */
	a = asm_new(&h, 4096, 42);
	text_asks = 0;
	T += 1000;
	stack_rec(a);
	FMSG(a, 5, 'Q', "SELECT 2\0");
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	/* prepared in one send, executed in the next: its text is known from the Parse */
	T += 1000;
	stack_rec(a);
	FMSG(a, 5, 'P', "s1\0SELECT 3\0\0\0");
	fmsg(a, 5, 'S', NULL, 0);
	msg(a, 5, '1', NULL, 0);
	z(a, 5, 'I');
	bind_execute(a, s1, sizeof(s1) - 1);
	CHECK_EQ(text_asks, 0);
	/* a statement prepared before the attach: executed by name only */
	bind_execute(a, s0, sizeof(s0) - 1);
	CHECK_EQ(text_asks, 1);
	CHECK_EQ(G.n, 4);
	CHECK_STR(G.text[0], "SELECT 2");
	CHECK_STR(G.text[2], "SELECT 3");
	CHECK_STR(G.text[3], "SELECT name FROM t WHERE id = $1");
	CHECK_EQ(G.s[3].text_state, TEXT_FROM_APP);
	for (int i = 0; i < 3; i++)
		CHECK(G.s[i].text_state != TEXT_FROM_APP);
	asm_free(a);
}

/* A frontend message record for a batch (front_emit): body = the whole body. */
static const struct ev_msg *mk_fmsg(void *buf, uint8_t type, const void *body, uint32_t len)
{
	struct ev_fmsg *m = buf;

	memset(buf, 0, sizeof(*m) + 64);
	hdr(&m->h, EV_FMSG, 7, 8, 0);
	m->fd = 5;
	m->len = m->cap = m->n = len;
	m->type = type;
	memcpy(m->data, body, len);
	return buf;
}

/* Bind, Execute and Sync of one send in one EV_MSGS record; kinds mixed in one are refused. */
TEST(frontend_messages_of_one_send_in_one_record)
{
	struct assembler *a = fresh(4096);
	uint64_t b1[16], b2[16], b3[16];
	const struct ev_msg *three[3];

	FMSG(a, 5, 0, "\0\3\0\0user\0bob\0database\0shop\0\0");
	z(a, 5, 'I');
	FMSG(a, 5, 'P', "st1\0SELECT 7\0\0\0");
	fmsg(a, 5, 'S', NULL, 0);
	msg(a, 5, '1', NULL, 0);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 1);
	three[0] = mk_fmsg(b1, 'B', "\0st1\0\0\0\0\0\0\0", 11);
	three[1] = mk_fmsg(b2, 'E', "\0\0\0\0", 5);
	three[2] = mk_fmsg(b3, 'S', "", 0);
	msgs_send(a, three, 3);
	msg(a, 5, '2', NULL, 0);
	msg(a, 5, 'C', "SELECT 1", 1);
	z(a, 5, 'I');
	CHECK_EQ(G.n, 2);
	CHECK_EQ(G.s[1].req, REQ_EXECUTE);
	CHECK_EQ(G.s[1].result, RES_OK);
	CHECK_STR(G.s[1].name, "st1");
	CHECK_STR(G.text[1], "SELECT 7");
	CHECK_EQ(G.s[1].returned_rows, 1);
	CHECK_EQ(asm_stats(a)->bad_records, 0);
	/* a backend message among frontend ones: the batch is refused from there on */
	three[1] = mk_msg(b2, 'C', "SELECT 1", 0);
	msgs_send(a, three, 3);
	CHECK_EQ(asm_stats(a)->bad_records, 1);
	asm_free(a);
}

/* Errors skip to the Sync; texts split in parts; a lost record; TLS; bad bodies. */
TEST(wire_errors_parts_and_losses)
{
	struct assembler *a = fresh(4096);
	static char big[10000];
	char q[10001];

	/* an error at Bind: the Execute fails, the one after it is skipped */
	FMSG(a, 6, 'P', "s1\0SELECT 1/$1\0\0\0");
	fmsg(a, 6, 'S', NULL, 0);
	msg(a, 6, '1', NULL, 0);
	z(a, 6, 'I');
	FMSG(a, 6, 'B', "\0s1\0\0\0\0\0\0\0");
	FMSG(a, 6, 'E', "\0\0\0\0");
	FMSG(a, 6, 'B', "\0s1\0\0\0\0\0\0\0");
	FMSG(a, 6, 'E', "\0\0\0\0");
	fmsg(a, 6, 'S', NULL, 0);
	err(a, 6, "22012", "division by zero");
	z(a, 6, 'I');
	CHECK_EQ(G.n, 3);
	CHECK_EQ(G.s[1].result, RES_ERROR);
	CHECK_STR(G.s[1].error.sqlstate, "22012");
	CHECK_EQ(G.s[2].result, RES_ABORTED);
	/* a long Query in parts */
	memset(big, 'x', sizeof(big));
	memcpy(q, "SELECT '", 8);
	memcpy(q + 8, big, 9990);
	memcpy(q + 9998, "'", 2);
	fmsg_parts(a, 6, 'Q', q, 10000, 10000, 4064, 0);
	msg(a, 6, 'C', "SELECT 1", 1);
	z(a, 6, 'I');
	CHECK_EQ(G.n, 4);
	CHECK_EQ(G.s[3].text_len, 4096); /* cut to --max-sql-bytes */
	CHECK_EQ(G.s[3].text_state, TEXT_CUT);
	/* a part lost: the next record says so, what was pending ends as unknown */
	FMSG(a, 6, 'Q', "SELECT 2");
	fmsg_parts(a, 6, 'Q', "SELECT 3", 9, 9, 0, EVF_GAP);
	CHECK_EQ(G.n, 5);
	CHECK_EQ(G.s[4].result, RES_UNKNOWN);
	CHECK(G.s[4].lost_events);
	CHECK_EQ(asm_stats(a)->gaps, 1);
	/* malformed bodies are counted, not parsed */
	FMSG(a, 6, 'B', "no-end");
	FMSG(a, 6, 'D', "Xname");
	CHECK_EQ(asm_stats(a)->bad_records, 2);
	asm_free(a);
}

/* Random records must never crash the assembler (run under ASan/UBSan too). */
TEST(random_records)
{
	struct assembler *a = fresh(4096);
	uint64_t x = 88172645463325252ULL;
	uint8_t buf[sizeof(struct ev_text) + 64];

	for (int i = 0; i < 200000; i++) {
		size_t n;

		for (size_t k = 0; k < sizeof(buf); k += 8) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			memcpy(buf + k, &x, sizeof(buf) - k < 8 ? sizeof(buf) - k : 8);
		}
		((struct ev_hdr *)buf)->kind = 1 + x % 13;
		((struct ev_hdr *)buf)->pid = 7;
		if (((struct ev_hdr *)buf)->kind == EV_MSG ||
		    ((struct ev_hdr *)buf)->kind == EV_REQ ||
		    ((struct ev_hdr *)buf)->kind == EV_FMSG)
			((struct ev_msg *)buf)->fd = x % 4;
		if (((struct ev_hdr *)buf)->kind == EV_FMSG) {
			/* mostly plausible sizes, so that the parts get reassembled and parsed */
			((struct ev_fmsg *)buf)->cap = (x >> 8) % 96;
			((struct ev_fmsg *)buf)->off = (x >> 16) % 2 ? 0 : (x >> 24) % 96;
			((struct ev_fmsg *)buf)->n = (x >> 32) % 96;
			((struct ev_fmsg *)buf)->len = (x >> 40) % 128;
			((struct ev_fmsg *)buf)->type = "QPBEDCSHX\0dp"[(x >> 48) % 12];
		}
		n = (x >> 20) % sizeof(buf);
		if (((struct ev_hdr *)buf)->kind == EV_MSG ||
		    (((struct ev_hdr *)buf)->kind == EV_FMSG && (x >> 58) % 2)) {
			/* in a batch, as the BPF side sends them: n bytes of record */
			static uint8_t bat[sizeof(struct ev_msgs) + sizeof(buf)];
			struct ev_msgs *b = (struct ev_msgs *)bat;

			memcpy(bat + sizeof(*b), buf, n);
			memcpy(b, buf, sizeof(b->h));
			b->h.kind = EV_MSGS;
			b->count = 1 + (x >> 60) % 3;
			b->len = n;
			asm_record(a, bat, sizeof(*b) + n);
			continue;
		}
		asm_record(a, buf, n);
	}
	asm_close_all(a, 1);
	CHECK(asm_stats(a)->bad_records > 0);
	asm_free(a);
}

int main(void)
{
	static const struct test_case cases[] = {
		CASE(simple_query),
		CASE(messages_of_one_read_in_one_record),
		CASE(statement_without_result_set),
		CASE(multi_statement_and_errors),
		CASE(extended_protocol_and_prepared_statements),
		CASE(pipeline_with_error_and_sync),
		CASE(pipeline_prepare_describe_close),
		CASE(long_text_in_chunks),
		CASE(messages_in_parts),
		CASE(losses_are_reported),
		CASE(kernel_skipped_runs),
		CASE(ends_of_connections_and_processes),
		CASE(connections_do_not_mix),
		CASE(identity_from_the_bpf_side),
		CASE(transactions),
		CASE(wire_asyncpg_flow),
		CASE(wire_session_start_unseen),
		CASE(wire_backend_key_unseen),
		CASE(wire_request_ending_in_a_later_send_keeps_its_stack),
		CASE(wire_statement_text_asked_of_the_app_only_when_unknown),
		CASE(frontend_messages_of_one_send_in_one_record),
		CASE(wire_errors_parts_and_losses),
		CASE(random_records),
	};
	int r = RUN("assemble", cases);

	asm_free(fresh(0));
	return r;
}
