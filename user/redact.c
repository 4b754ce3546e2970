// SPDX-License-Identifier: MIT
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "redact.h"
#include "sqllex.h"

struct out {
	char *p;
	size_t n, cap;
	bool oom;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->oom)
		return;
	if (o->n + n + 1 > o->cap) {
		size_t nc = (o->n + n + 1) * 2;
		char *np = realloc(o->p, nc);

		if (!np) {
			o->oom = true;
			return;
		}
		o->p = np;
		o->cap = nc;
	}
	memcpy(o->p + o->n, s, n);
	o->n += n;
	o->p[o->n] = 0;
}

static char *finish(struct out *o)
{
	if (o->oom) {
		free(o->p);
		return NULL;
	}
	if (!o->p)
		put(o, "", 0);
	return o->p;
}

static bool has_word_ci(const char *s, size_t n, const char *w)
{
	size_t wl = strlen(w);

	for (size_t i = 0; i + wl <= n; i++) {
		if (!strncasecmp(s + i, w, wl))
			return true;
	}
	return false;
}

char *redact_sql(const char *sql, size_t n, size_t *out_n)
{
	struct out o = {0};
	struct sql_lexer lx;
	struct sql_tok t;
	const char *copied = sql;
	bool after_pw = false, any = false;

	if (!has_word_ci(sql, n, "password"))
		return NULL;
	sql_lex_init(&lx, sql, n);
	while ((t = sql_lex_next(&lx)).type != TK_END) {
		if (after_pw && t.type == TK_STRING) {
			put(&o, copied, t.s - copied);
			put(&o, "'" REDACTED "'", strlen(REDACTED) + 2);
			copied = t.s + t.n;
			any = true;
		}
		after_pw = sql_tok_is(&t, "PASSWORD");
	}
	if (!any) {
		free(o.p);
		return NULL;
	}
	put(&o, copied, sql + n - copied);
	if (o.oom) {
		free(o.p);
		return NULL;
	}
	*out_n = o.n;
	return o.p;
}

char *redact_conninfo(const char *s)
{
	struct out o = {0};
	const char *p = s;

	while (*p) {
		const char *ks, *ke, *vs, *ve;
		bool secret;

		if (isspace((unsigned char)*p)) {
			put(&o, p, 1);
			p++;
			continue;
		}
		ks = p;
		while (*p && *p != '=' && !isspace((unsigned char)*p))
			p++;
		ke = p;
		while (isspace((unsigned char)*p))
			p++;
		if (*p != '=') { /* not key=value: copy as is */
			put(&o, ks, p - ks);
			continue;
		}
		p++;
		while (isspace((unsigned char)*p))
			p++;
		vs = p;
		if (*p == '\'') {
			p++;
			while (*p && *p != '\'') {
				if (*p == '\\' && p[1])
					p++;
				p++;
			}
			if (*p == '\'')
				p++;
		} else {
			while (*p && !isspace((unsigned char)*p)) {
				if (*p == '\\' && p[1])
					p++;
				p++;
			}
		}
		ve = p;
		secret = (size_t)(ke - ks) == 8 && !strncasecmp(ks, "password", 8);
		put(&o, ks, vs - ks);
		if (secret)
			put(&o, REDACTED, strlen(REDACTED));
		else
			put(&o, vs, ve - vs);
	}
	return finish(&o);
}

char *redact_url(const char *s)
{
	struct out o = {0};
	const char *scheme_end = strstr(s, "://"), *auth, *at, *path, *p;

	if (!scheme_end)
		return redact_conninfo(s);
	auth = scheme_end + 3;
	path = auth + strcspn(auth, "/?#");
	/* the userinfo ends at the last '@' before the path */
	at = NULL;
	for (p = auth; p < path; p++) {
		if (*p == '@')
			at = p;
	}
	if (at) {
		const char *colon = memchr(auth, ':', at - auth);

		if (colon) {
			put(&o, s, colon + 1 - s);
			put(&o, REDACTED, strlen(REDACTED));
			put(&o, at, path - at);
		} else {
			put(&o, s, path - s);
		}
	} else {
		put(&o, s, path - s);
	}
	/* query parameters */
	p = path;
	while (*p) {
		const char *q = p + strcspn(p, "?&");

		put(&o, p, q - p);
		if (!*q)
			break;
		put(&o, q, 1);
		p = q + 1;
		if (!strncasecmp(p, "password=", 9)) {
			put(&o, p, 9);
			put(&o, REDACTED, strlen(REDACTED));
			p += 9;
			p += strcspn(p, "&#");
		}
	}
	return finish(&o);
}

char *redact_dsn(const char *s)
{
	return strstr(s, "://") ? redact_url(s) : redact_conninfo(s);
}
