// SPDX-License-Identifier: MIT
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "redact.h"
#include "sqllex.h"
#include "strbuf.h"

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
	struct strbuf o = {0};
	struct sql_lexer lx;
	struct sql_tok t;
	const char *copied = sql;
	bool after_pw = false, any = false;

	if (!has_word_ci(sql, n, "password"))
		return NULL;
	sql_lex_init(&lx, sql, n);
	while ((t = sql_lex_next(&lx)).type != TK_END) {
		if (after_pw && t.type == TK_STRING) {
			sb_add(&o, copied, t.s - copied);
			sb_add(&o, "'" REDACTED "'", strlen(REDACTED) + 2);
			copied = t.s + t.n;
			any = true;
		}
		after_pw = sql_tok_is(&t, "PASSWORD");
	}
	if (!any) {
		free(o.p);
		return NULL;
	}
	sb_add(&o, copied, sql + n - copied);
	*out_n = o.len;
	return sb_take(&o);
}

char *redact_conninfo(const char *s)
{
	struct strbuf o = {0};
	const char *p = s;

	while (*p) {
		const char *ks, *ke, *vs, *ve;
		bool secret;

		if (isspace((unsigned char)*p)) {
			sb_add(&o, p, 1);
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
			sb_add(&o, ks, p - ks);
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
		sb_add(&o, ks, vs - ks);
		if (secret)
			sb_add(&o, REDACTED, strlen(REDACTED));
		else
			sb_add(&o, vs, ve - vs);
	}
	return sb_take(&o);
}

char *redact_url(const char *s)
{
	struct strbuf o = {0};
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
			sb_add(&o, s, colon + 1 - s);
			sb_add(&o, REDACTED, strlen(REDACTED));
			sb_add(&o, at, path - at);
		} else {
			sb_add(&o, s, path - s);
		}
	} else {
		sb_add(&o, s, path - s);
	}
	/* query parameters */
	p = path;
	while (*p) {
		const char *q = p + strcspn(p, "?&");

		sb_add(&o, p, q - p);
		if (!*q)
			break;
		sb_add(&o, q, 1);
		p = q + 1;
		if (!strncasecmp(p, "password=", 9)) {
			sb_add(&o, p, 9);
			sb_add(&o, REDACTED, strlen(REDACTED));
			p += 9;
			p += strcspn(p, "&#");
		}
	}
	return sb_take(&o);
}

char *redact_dsn(const char *s)
{
	return strstr(s, "://") ? redact_url(s) : redact_conninfo(s);
}
