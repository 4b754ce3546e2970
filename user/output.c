// SPDX-License-Identifier: MIT
#include <string.h>
#include <time.h>
#include "output.h"
#include "sqlinfo.h"

const char *span_result_name(enum span_result r)
{
	static const char *const names[] = {"ok",     "error",	"aborted", "unknown",
					    "closed", "exited", "detached"};

	return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "unknown";
}

const char *span_request_name(enum span_request r)
{
	static const char *const names[] = {"query",	"prepare", "execute",
					    "describe", "close",   "sync"};

	return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "query";
}

const char *text_state_name(enum text_state t)
{
	static const char *const names[] = {"full",	  "cut",  "unknown",
					    "incomplete", "none", "from_sqlalchemy"};

	return (unsigned)t < sizeof(names) / sizeof(names[0]) ? names[t] : "none";
}

void span_name(const struct span *s, char *buf, size_t n)
{
	struct sql_info si = {{0}, {0}};

	if (s->text)
		sql_info(s->text, s->text_len, &si);
	switch (s->req) {
	case REQ_PREPARE:
		if (si.op[0])
			snprintf(buf, n, "PREPARE %s%s%s", si.op, si.coll[0] ? " " : "", si.coll);
		else
			snprintf(buf, n, "PREPARE %s", s->name);
		return;
	case REQ_DESCRIBE:
		snprintf(buf, n, "DESCRIBE %s", s->name);
		return;
	case REQ_CLOSE:
		snprintf(buf, n, "CLOSE %s", s->name);
		return;
	default:
		break;
	}
	if (si.op[0])
		snprintf(buf, n, "%s%s%s", si.op, si.coll[0] ? " " : "", si.coll);
	else if (s->req == REQ_EXECUTE)
		snprintf(buf, n, "EXECUTE %s", s->name);
	else
		snprintf(buf, n, "postgresql");
}

/* Length of a valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t len, i;
	uint32_t cp;

	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0)
		len = 2, cp = p[0] & 0x1f;
	else if ((p[0] & 0xf0) == 0xe0)
		len = 3, cp = p[0] & 0x0f;
	else if ((p[0] & 0xf8) == 0xf0)
		len = 4, cp = p[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* A span's JSON is built here and written at once: a stdio call per piece cost more than the rest.
 */
struct jw {
	FILE *out;
	size_t n;
	char buf[4096];
};

static void jw_flush(struct jw *w)
{
	if (w->n)
		fwrite(w->buf, 1, w->n, w->out);
	w->n = 0;
}

static void jw_write(struct jw *w, const void *p, size_t n)
{
	if (n > sizeof(w->buf) - w->n) {
		jw_flush(w);
		if (n > sizeof(w->buf)) {
			fwrite(p, 1, n, w->out);
			return;
		}
	}
	memcpy(w->buf + w->n, p, n);
	w->n += n;
}

static void jw_puts(struct jw *w, const char *s)
{
	jw_write(w, s, strlen(s));
}

static void jw_putc(struct jw *w, char c)
{
	if (w->n == sizeof(w->buf))
		jw_flush(w);
	w->buf[w->n++] = c;
}

/*
 * A string in JSON: the runs of bytes that need no escape go out in one write each (a write per
 * character was a third of sqlspan's CPU time under load).
 */
static void json_str(struct jw *f, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, run = 0;

	jw_putc(f, '"');
	while (i < n) {
		unsigned char c = p[i];
		const char *esc;
		char u[8];
		size_t l;

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
			i++;
			continue;
		}
		if (c >= 0x80 && (l = utf8_len(p + i, n - i))) {
			i += l;
			continue;
		}
		if (i > run)
			jw_write(f, p + run, i - run);
		switch (c) {
		case '"':
			esc = "\\\"";
			break;
		case '\\':
			esc = "\\\\";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '\r':
			esc = "\\r";
			break;
		case '\t':
			esc = "\\t";
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				snprintf(u, sizeof(u), "\\u%04x", c);
				esc = u;
			} else {
				esc = "\\ufffd"; /* not UTF-8: replaced, never passed through */
			}
		}
		jw_puts(f, esc);
		run = ++i;
	}
	if (i > run)
		jw_write(f, p + run, i - run);
	jw_putc(f, '"');
}

/* ,"k": (keys are constants: no escapes) */
static void key(struct jw *f, const char *k)
{
	jw_write(f, ",\"", 2);
	jw_puts(f, k);
	jw_write(f, "\":", 2);
}

static void kv_str(struct jw *f, const char *k, const char *v)
{
	key(f, k);
	if (v)
		json_str(f, v, strlen(v));
	else
		jw_puts(f, "null");
}

/* a decimal integer, without printf's format parsing */
static void put_num(struct jw *f, unsigned long long u, bool negative)
{
	char b[24], *e = b + sizeof(b), *p = e;

	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (negative)
		*--p = '-';
	jw_write(f, p, (size_t)(e - p));
}

static void put_int(struct jw *f, long long v)
{
	put_num(f, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v, v < 0);
}

static void kv_int(struct jw *f, const char *k, long long v)
{
	key(f, k);
	put_int(f, v);
}

static void hex(struct jw *f, const uint8_t *b, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	char out[2 * 32 + 2];
	size_t o = 0;

	if (n > 32)
		n = 32;
	out[o++] = '"';
	for (size_t i = 0; i < n; i++) {
		out[o++] = digits[b[i] >> 4];
		out[o++] = digits[b[i] & 15];
	}
	out[o++] = '"';
	jw_write(f, out, o);
}

void out_json(FILE *out, const struct span *s, int64_t mono_to_real)
{
	struct jw jw = {.out = out}, *f = &jw;
	const struct conn_ident *id = s->ident;
	struct sql_info si = {{0}, {0}};
	char name[256];

	if (s->text)
		sql_info(s->text, s->text_len, &si);
	span_name(s, name, sizeof(name));
	jw_puts(f, "{\"trace_id\":");
	hex(f, s->trace_id, sizeof(s->trace_id));
	jw_puts(f, ",\"span_id\":");
	hex(f, s->span_id, sizeof(s->span_id));
	kv_str(f, "name", name);
	kv_str(f, "kind", "client");
	kv_int(f, "start_time_unix_nano", (long long)(s->start_ns + mono_to_real));
	kv_int(f, "end_time_unix_nano", (long long)(s->end_ns + mono_to_real));
	kv_int(f, "duration_ns", (long long)(s->end_ns - s->start_ns));
	kv_int(f, "process.pid", s->pid);
	kv_int(f, "thread.id", s->tid);
	kv_str(f, "process.executable.name", s->exe);
	kv_str(f, "db.system.name", "postgresql");
	key(f, "db.query.text");
	if (s->text && s->text_state != TEXT_UNKNOWN)
		json_str(f, s->text, s->text_len);
	else
		jw_puts(f, "null");
	kv_str(f, "sqlspan.query.text_state", text_state_name(s->text_state));
	if (s->redacted)
		jw_puts(f, ",\"sqlspan.query.redacted\":true");
	if (si.op[0] && (s->req == REQ_QUERY || s->req == REQ_EXECUTE))
		kv_str(f, "db.operation.name", si.op);
	if (si.coll[0] && (s->req == REQ_QUERY || s->req == REQ_EXECUTE))
		kv_str(f, "db.collection.name", si.coll);

	kv_str(f, "db.namespace", id && id->known ? id->db : NULL);
	if (id && id->session_unseen)
		jw_puts(f, ",\"sqlspan.session_unseen\":true");
	if (id && id->known && id->unix_path) {
		kv_str(f, "server.address", id->unix_path);
		kv_str(f, "network.transport", "unix");
	} else {
		kv_str(f, "server.address", id && id->known ? id->host : NULL);
		key(f, "server.port");
		if (id && id->known && id->port)
			put_int(f, id->port);
		else
			jw_puts(f, "null");
		if (id && id->known && id->host)
			kv_str(f, "network.transport", "tcp");
	}
	kv_str(f, "postgresql.user", id && id->known ? id->user : NULL);
	key(f, "postgresql.backend_pid");
	if (s->backend_pid)
		put_int(f, s->backend_pid);
	else if (id && id->known && id->backend_pid)
		put_int(f, id->backend_pid);
	else
		jw_puts(f, "null");
	if (id && id->tls)
		jw_puts(f, ",\"sqlspan.connection.tls\":true");

	if (s->py.present) {
		if (s->py.function) {
			kv_str(f, "code.function.name", s->py.function);
			kv_str(f, "code.file.path", s->py.file);
			if (s->py.line >= 0)
				kv_int(f, "code.line.number", s->py.line);
		}
		if (s->py.stack) {
			key(f, "python.stack");
			jw_puts(f, s->py.stack);
			if (s->py.cut)
				jw_puts(f, ",\"python.stack.cut\":true");
		}
		if (s->py.sa_conn) {
			key(f, "sqlalchemy.connection.id");
			put_num(f, s->py.sa_conn, false);
		}
		if (s->py.sa_url)
			kv_str(f, "sqlalchemy.engine.url", s->py.sa_url);
		if (s->py.task_name[0])
			kv_str(f, "asyncio.task.name", s->py.task_name);
		if (s->py.pool_reset)
			jw_puts(f, ",\"sqlalchemy.pool_reset\":true");
		if (s->py.problem)
			kv_str(f, "sqlspan.python.problem", s->py.problem);
	}
	if (s->returned_rows >= 0)
		kv_int(f, "db.response.returned_rows", s->returned_rows);
	if (s->tag.tag[0]) {
		kv_str(f, "postgresql.command_tag", s->tag.tag);
		if (s->tag.rows >= 0)
			kv_int(f, "postgresql.command_rows", s->tag.rows);
	}
	if (s->has_error) {
		if (s->error.sqlstate[0]) {
			kv_str(f, "db.response.status_code", s->error.sqlstate);
			kv_str(f, "error.type", s->error.sqlstate);
		} else {
			kv_str(f, "error.type", "_OTHER");
		}
		kv_str(f, "error.message", s->error.message);
		if (s->error.severity[0])
			kv_str(f, "postgresql.error.severity", s->error.severity);
	}
	if (s->txn_status) {
		const char *t = pg_txn_status_name(s->txn_status);

		if (t)
			kv_str(f, "postgresql.transaction_status", t);
	}
	if (s->has_name)
		kv_str(f, "postgresql.statement_name", s->name);
	if (s->pipeline)
		jw_puts(f, ",\"postgresql.pipeline\":true");
	kv_str(f, "sqlspan.capture", s->wire ? "wire" : "libpq");
	kv_str(f, "sqlspan.span_type", "statement");
	kv_str(f, "sqlspan.request", span_request_name(s->req));
	kv_str(f, "sqlspan.result", span_result_name(s->result));
	if (s->lost_events)
		jw_puts(f, ",\"sqlspan.events_lost\":true");
	if (s->in_txn) {
		jw_puts(f, ",\"parent_span_id\":");
		hex(f, s->parent_span_id, sizeof(s->parent_span_id));
		jw_puts(f, ",\"sqlspan.transaction.id\":");
		hex(f, s->parent_span_id, sizeof(s->parent_span_id));
	}
	jw_puts(f, "}\n");
	jw_flush(f);
}

const char *txn_outcome_name(enum txn_outcome o)
{
	static const char *const names[] = {"commit", "rollback", "pool_reset", "open"};

	return (unsigned)o < sizeof(names) / sizeof(names[0]) ? names[o] : "open";
}

void out_json_txn(FILE *out, const struct txn_span *t, int64_t mono_to_real)
{
	struct jw jw = {.out = out}, *f = &jw;
	const struct conn_ident *id = t->ident;

	jw_puts(f, "{\"trace_id\":");
	hex(f, t->trace_id, sizeof(t->trace_id));
	jw_puts(f, ",\"span_id\":");
	hex(f, t->span_id, sizeof(t->span_id));
	kv_str(f, "name", "TRANSACTION");
	kv_str(f, "kind", "client");
	kv_int(f, "start_time_unix_nano", (long long)(t->start_ns + mono_to_real));
	kv_int(f, "end_time_unix_nano", (long long)(t->end_ns + mono_to_real));
	kv_int(f, "duration_ns", (long long)(t->end_ns - t->start_ns));
	kv_int(f, "process.pid", t->pid);
	kv_int(f, "thread.id", t->tid);
	kv_str(f, "process.executable.name", t->exe);
	kv_str(f, "db.system.name", "postgresql");
	kv_str(f, "db.namespace", id && id->known ? id->db : NULL);
	if (id && id->known && id->unix_path)
		kv_str(f, "server.address", id->unix_path);
	else
		kv_str(f, "server.address", id && id->known ? id->host : NULL);
	key(f, "postgresql.backend_pid");
	if (t->backend_pid)
		put_int(f, t->backend_pid);
	else
		jw_puts(f, "null");
	if (t->sa_conn) {
		key(f, "sqlalchemy.connection.id");
		put_num(f, t->sa_conn, false);
	}
	if (t->sa_url)
		kv_str(f, "sqlalchemy.engine.url", t->sa_url);
	kv_str(f, "sqlspan.span_type", "transaction");
	jw_puts(f, ",\"sqlspan.transaction.id\":");
	hex(f, t->span_id, sizeof(t->span_id));
	kv_str(f, "sqlspan.transaction.outcome", txn_outcome_name(t->outcome));
	kv_int(f, "sqlspan.transaction.statements", t->nstatements);
	kv_str(f, "sqlspan.capture", t->wire ? "wire" : "libpq");
	jw_puts(f, "}\n");
	jw_flush(f);
}

void out_table_header(FILE *f, int width)
{
	(void)width;
	fprintf(f, "%-12s %-7s %9s %6s %-10s %-6s %s\n", "TIME", "PID", "MS", "ROWS", "DB",
		"RESULT", "SQL");
}

/*
 * The SQL on one line in at most `room` columns: whitespace runs become one space, control bytes
 * '?', a UTF-8 sequence counts as one column; what does not fit ends in "...".
 */
static void one_line(FILE *f, const char *s, size_t n, int room)
{
	char out[4096];
	size_t o = 0, i = 0;
	int cols = 0;
	bool space = false, cut = false;

	if (room < 8)
		room = 8;
	if (room > 900)
		room = 900;
	for (i = 0; i < n; i++) {
		unsigned char c = s[i];

		if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
			space = cols > 0;
			continue;
		}
		if ((c & 0xc0) == 0x80) { /* UTF-8 continuation: same column */
			if (o < sizeof(out) - 1)
				out[o++] = c;
			continue;
		}
		if (cols + (space ? 2 : 1) > room) {
			cut = true;
			break;
		}
		if (space) {
			out[o++] = ' ';
			cols++;
			space = false;
		}
		out[o++] = c < 0x20 || c == 0x7f ? '?' : c;
		cols++;
	}
	if (cut) {
		/* back off to make room for "...", at a character boundary */
		while (cols > room - 3 && o > 0) {
			o--;
			if (((unsigned char)out[o] & 0xc0) != 0x80)
				cols--;
		}
		fwrite(out, 1, o, f);
		fputs("...", f);
		return;
	}
	fwrite(out, 1, o, f);
}

void out_table_row(FILE *f, const struct span *s, int64_t mono_to_real, int width)
{
	uint64_t real = s->start_ns + mono_to_real;
	time_t secs = real / 1000000000ULL;
	struct tm tm;
	char ts[16], rows[24], res[16], db[11];
	const char *text;
	size_t tlen;
	int room;

	localtime_r(&secs, &tm);
	snprintf(ts, sizeof(ts), "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(real / 1000000 % 1000));
	if (s->tag.rows >= 0)
		snprintf(rows, sizeof(rows), "%lld", (long long)s->tag.rows);
	else if (s->returned_rows >= 0)
		snprintf(rows, sizeof(rows), "%lld", (long long)s->returned_rows);
	else
		snprintf(rows, sizeof(rows), "-");
	if (s->has_error && s->error.sqlstate[0])
		snprintf(res, sizeof(res), "%s", s->error.sqlstate);
	else
		snprintf(res, sizeof(res), "%s", span_result_name(s->result));
	snprintf(db, sizeof(db), "%s",
		 s->ident && s->ident->known && s->ident->db ? s->ident->db : "?");
	fprintf(f, "%-12s %-7u %9.3f %6s %-10s %-6s ", ts, s->pid,
		(double)(s->end_ns - s->start_ns) / 1e6, rows, db, res);
	room = width - (12 + 1 + 7 + 1 + 9 + 1 + 6 + 1 + 10 + 1 + 6 + 1);
	if (s->text && s->text_state != TEXT_UNKNOWN) {
		text = s->text;
		tlen = s->text_len;
		if (s->req == REQ_PREPARE) {
			int k = fprintf(f, "[PREPARE %s] ", s->name[0] ? s->name : "unnamed");

			room -= k > 0 ? k : 0;
		} else if (s->req == REQ_DESCRIBE || s->req == REQ_CLOSE) {
			int k = fprintf(f, "[%s %s] ",
					s->req == REQ_DESCRIBE ? "DESCRIBE" : "CLOSE", s->name);

			room -= k > 0 ? k : 0;
		}
		one_line(f, text, tlen, room);
		if (s->text_state == TEXT_CUT)
			fputs(" [cut]", f);
	} else {
		char name[96];

		span_name(s, name, sizeof(name));
		if (s->text_state == TEXT_UNKNOWN)
			fprintf(f, "[%s: text unknown, prepared before attach]", name);
		else
			fprintf(f, "[%s]", name);
	}
	fputc('\n', f);
}
