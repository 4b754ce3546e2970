// SPDX-License-Identifier: MIT
/* SQLAlchemy's engine URL: read from the traced process, rendered with the password hidden. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pyobj.h"
#include "strbuf.h"

#define MAX_QUERY 32
#define MAX_PART  1024

/* urllib.parse.quote(s, safe=" +") (plus=false) or quote_plus(s) (plus=true). */
static void sb_quoted(struct strbuf *b, const char *s, bool plus)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[4];

		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("_.-~", *p) ||
		    (!plus && (*p == ' ' || *p == '+'))) {
			sb_add(b, (const char *)p, 1);
		} else if (plus && *p == ' ') {
			sb_add(b, "+", 1);
		} else {
			snprintf(esc, sizeof(esc), "%%%02X", *p);
			sb_add(b, esc, 3);
		}
	}
}

struct qpair {
	const char *k, *v;
	int order;
};

static int qpair_cmp(const void *a, const void *b)
{
	const struct qpair *x = a, *y = b;
	int c = strcmp(x->k, y->k);

	return c ? c : x->order - y->order;
}

char *sa_url_render(const struct sa_url *u)
{
	struct strbuf b = {0};

	if (!u->drivername)
		return NULL;
	sb_str(&b, u->drivername);
	sb_str(&b, "://");
	if (u->username) {
		sb_quoted(&b, u->username, false);
		if (u->has_password)
			sb_str(&b, ":***");
		sb_str(&b, "@");
	}
	if (u->host) {
		bool v6 = strchr(u->host, ':');

		if (v6)
			sb_str(&b, "[");
		sb_str(&b, u->host);
		if (v6)
			sb_str(&b, "]");
	}
	if (u->port >= 0) {
		char port[24];

		snprintf(port, sizeof(port), ":%lld", (long long)u->port);
		sb_str(&b, port);
	}
	if (u->database) {
		sb_str(&b, "/");
		sb_str(&b, u->database);
	}
	if (u->nquery > 0) {
		/* sorted by key (a stable sort: a key's several values keep their order) */
		struct qpair *q = calloc(u->nquery, sizeof(*q));

		if (!q) {
			free(b.p);
			return NULL;
		}
		for (int i = 0; i < u->nquery; i++)
			q[i] = (struct qpair){u->query_keys[i], u->query_vals[i], i};
		qsort(q, u->nquery, sizeof(*q), qpair_cmp);
		for (int i = 0; i < u->nquery; i++) {
			sb_str(&b, i ? "&" : "?");
			sb_quoted(&b, q[i].k, true);
			sb_str(&b, "=");
			sb_quoted(&b, q[i].v, true);
		}
		free(q);
	}
	return sb_take(&b);
}

/* A str item, or NULL for None; -1 for anything else. */
static int str_or_none(const struct pyobj_src *s, uint64_t obj, char **out)
{
	*out = NULL;
	if (pyobj_type_is(s, obj, "NoneType"))
		return 0;
	*out = py_read_str(s->pid, obj, s->l, MAX_PART);
	return *out ? 0 : -1;
}

/* The query dict: str keys, each with a str or a tuple of str. Returns pairs, -1 if unreadable. */
static int read_query(const struct pyobj_src *s, uint64_t dict, char **keys, char **vals)
{
	uint64_t k[MAX_QUERY], v[MAX_QUERY], items[MAX_QUERY];
	int n = pyobj_dict_items(s, dict, k, v, MAX_QUERY), got = 0;

	for (int i = 0; i < n; i++) {
		int m = 1;

		if (pyobj_type_is(s, v[i], "tuple")) {
			m = pyobj_tuple(s, v[i], items, MAX_QUERY);
			if (m < 0)
				return -1;
		} else {
			items[0] = v[i];
		}
		for (int j = 0; j < m && got < MAX_QUERY; j++) {
			keys[got] = py_read_str(s->pid, k[i], s->l, MAX_PART);
			vals[got] = py_read_str(s->pid, items[j], s->l, MAX_PART);
			if (!keys[got] || !vals[got]) {
				free(keys[got]);
				free(vals[got]);
				keys[got] = vals[got] = NULL;
				return -1;
			}
			got++;
		}
	}
	return n < 0 ? -1 : got;
}

char *pyobj_sa_url(const struct pyobj_src *s, uint64_t url)
{
	/* URL is a named tuple: drivername, username, password, host, port, database, query */
	uint64_t it[7];
	char *driver = NULL, *user = NULL, *host = NULL, *db = NULL, *out = NULL;
	char *qk[MAX_QUERY] = {0}, *qv[MAX_QUERY] = {0};
	struct sa_url u = {.port = -1};

	if (!pyobj_type_is(s, url, "URL") || pyobj_tuple(s, url, it, 7) != 7)
		return NULL;
	if (str_or_none(s, it[0], &driver) || !driver || str_or_none(s, it[1], &user) ||
	    str_or_none(s, it[3], &host) || str_or_none(s, it[5], &db))
		goto out;
	if (!pyobj_type_is(s, it[4], "NoneType") && pyobj_small_int(s, it[4], &u.port))
		goto out;
	u.nquery = read_query(s, it[6], qk, qv);
	if (u.nquery < 0)
		goto out;
	u.drivername = driver;
	u.username = user;
	/* the password itself is never read: only whether there is one */
	u.has_password = !pyobj_type_is(s, it[2], "NoneType");
	u.host = host;
	u.database = db;
	u.query_keys = (const char *const *)qk;
	u.query_vals = (const char *const *)qv;
	out = sa_url_render(&u);
out:
	for (int i = 0; i < MAX_QUERY; i++) {
		free(qk[i]);
		free(qv[i]);
	}
	free(driver);
	free(user);
	free(host);
	free(db);
	return out;
}
