// SPDX-License-Identifier: MIT
#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include "sqlinfo.h"
#include "sqllex.h"

static void set_op(struct sql_info *o, const struct sql_tok *t, const struct sql_tok *t2)
{
	size_t n = 0, i;

	for (i = 0; i < t->n && n < sizeof(o->op) - 1; i++)
		o->op[n++] = toupper((unsigned char)t->s[i]);
	if (t2 && n + 1 + t2->n < sizeof(o->op)) {
		o->op[n++] = ' ';
		for (i = 0; i < t2->n; i++)
			o->op[n++] = toupper((unsigned char)t2->s[i]);
	}
	o->op[n] = 0;
}

static int is_name(const struct sql_tok *t)
{
	return t->type == TK_WORD || t->type == TK_QIDENT;
}

/*
 * Read a qualified name (a.b."c") starting with token *t; stores it in o->coll. Returns 0, or -1 if
 * the tokens do not form a table name (e.g. a function call).
 */
static int take_name_ex(struct sql_lexer *lx, struct sql_tok *t, struct sql_info *o, bool from)
{
	const char *start = t->s, *end = t->s + t->n;
	struct sql_lexer save;
	struct sql_tok n;
	size_t len;

	if (!is_name(t))
		return -1;
	for (;;) {
		save = *lx;
		n = sql_lex_next(lx);
		if (sql_tok_punct(&n, '.')) {
			n = sql_lex_next(lx);
			if (!is_name(&n))
				return -1;
			end = n.s + n.n;
			continue;
		}
		if (from && sql_tok_punct(&n, '('))
			return -1; /* FROM f(...): a function, not a table */
		*lx = save;
		break;
	}
	len = end - start;
	if (len >= sizeof(o->coll))
		return -1;
	memcpy(o->coll, start, len);
	o->coll[len] = 0;
	return 0;
}

static int take_name(struct sql_lexer *lx, struct sql_tok *t, struct sql_info *o)
{
	return take_name_ex(lx, t, o, false);
}

static void skip_words(struct sql_lexer *lx, struct sql_tok *t, const char *const *words)
{
	for (;;) {
		int hit = 0;

		for (const char *const *w = words; *w; w++) {
			if (sql_tok_is(t, *w)) {
				hit = 1;
				break;
			}
		}
		if (!hit)
			return;
		*t = sql_lex_next(lx);
	}
}

/* The first FROM at the statement's level; FROM (subquery) descends into it. */
static void from_collection(struct sql_lexer *lx, int depth, struct sql_info *o)
{
	static const char *const mods[] = {"ONLY", "LATERAL", NULL};
	struct sql_tok t;

	for (;;) {
		t = sql_lex_next(lx);
		if (t.type == TK_END || (sql_tok_punct(&t, ';') && t.depth == 0))
			return;
		if (t.depth < depth)
			return;
		if (t.depth != depth || !sql_tok_is(&t, "FROM"))
			continue;
		t = sql_lex_next(lx);
		skip_words(lx, &t, mods);
		if (sql_tok_punct(&t, '(')) {
			depth++;
			continue;
		}
		take_name_ex(lx, &t, o, true);
		return;
	}
}

/* Skip the common table expressions of WITH ...; returns the first token of the main statement. */
static struct sql_tok skip_with(struct sql_lexer *lx)
{
	struct sql_tok t = sql_lex_next(lx);

	if (sql_tok_is(&t, "RECURSIVE"))
		t = sql_lex_next(lx);
	for (;;) {
		/* name [(cols)] AS [NOT] [MATERIALIZED] ( ... ) */
		if (!is_name(&t))
			return t;
		t = sql_lex_next(lx);
		if (sql_tok_punct(&t, '(')) {
			int d = t.depth;

			do {
				t = sql_lex_next(lx);
			} while (t.type != TK_END && !(sql_tok_punct(&t, ')') && t.depth == d + 1));
			t = sql_lex_next(lx);
		}
		if (!sql_tok_is(&t, "AS"))
			return t;
		t = sql_lex_next(lx);
		if (sql_tok_is(&t, "NOT"))
			t = sql_lex_next(lx);
		if (sql_tok_is(&t, "MATERIALIZED"))
			t = sql_lex_next(lx);
		if (!sql_tok_punct(&t, '('))
			return t;
		{
			int d = t.depth;

			do {
				t = sql_lex_next(lx);
			} while (t.type != TK_END && !(sql_tok_punct(&t, ')') && t.depth == d + 1));
		}
		t = sql_lex_next(lx);
		if (!sql_tok_punct(&t, ','))
			return t;
		t = sql_lex_next(lx);
	}
}

void sql_info(const char *sql, size_t n, struct sql_info *o)
{
	static const char *const create_mods[] = {"OR",		  "REPLACE",   "TEMP",	"TEMPORARY",
						  "UNLOGGED",	  "GLOBAL",    "LOCAL", "UNIQUE",
						  "MATERIALIZED", "RECURSIVE", NULL};
	static const char *const if_exists[] = {"IF",	"NOT",		"EXISTS",
						"ONLY", "CONCURRENTLY", NULL};
	struct sql_lexer lx;
	struct sql_tok t, t2;

	memset(o, 0, sizeof(*o));
	sql_lex_init(&lx, sql, n);
	t = sql_lex_next(&lx);
	while (sql_tok_punct(&t, '('))
		t = sql_lex_next(&lx);
	if (sql_tok_is(&t, "WITH")) {
		t = skip_with(&lx);
		while (sql_tok_punct(&t, '('))
			t = sql_lex_next(&lx);
	}
	if (t.type != TK_WORD)
		return;

	if (sql_tok_is(&t, "CREATE") || sql_tok_is(&t, "DROP") || sql_tok_is(&t, "ALTER")) {
		t2 = sql_lex_next(&lx);
		skip_words(&lx, &t2, create_mods);
		if (t2.type != TK_WORD) {
			set_op(o, &t, NULL);
			return;
		}
		set_op(o, &t, &t2);
		if (sql_tok_is(&t2, "TABLE") || sql_tok_is(&t2, "VIEW") ||
		    sql_tok_is(&t2, "SEQUENCE")) {
			struct sql_tok nm = sql_lex_next(&lx);

			skip_words(&lx, &nm, if_exists);
			take_name(&lx, &nm, o);
		} else if (sql_tok_is(&t2, "INDEX")) {
			struct sql_tok nm;

			do {
				nm = sql_lex_next(&lx);
			} while (nm.type != TK_END && !sql_tok_is(&nm, "ON"));
			nm = sql_lex_next(&lx);
			skip_words(&lx, &nm, if_exists);
			take_name(&lx, &nm, o);
		}
		return;
	}

	set_op(o, &t, NULL);
	if (sql_tok_is(&t, "SELECT") || sql_tok_is(&t, "TABLE")) {
		if (sql_tok_is(&t, "TABLE")) {
			t2 = sql_lex_next(&lx);
			strcpy(o->op, "SELECT");
			skip_words(&lx, &t2, if_exists);
			take_name(&lx, &t2, o);
			return;
		}
		from_collection(&lx, t.depth, o);
		return;
	}
	if (sql_tok_is(&t, "INSERT") || sql_tok_is(&t, "MERGE")) {
		t2 = sql_lex_next(&lx);
		if (sql_tok_is(&t2, "INTO"))
			t2 = sql_lex_next(&lx);
		take_name(&lx, &t2, o);
		return;
	}
	if (sql_tok_is(&t, "UPDATE") || sql_tok_is(&t, "DELETE") || sql_tok_is(&t, "TRUNCATE") ||
	    sql_tok_is(&t, "LOCK") || sql_tok_is(&t, "COPY")) {
		static const char *const mods[] = {"FROM", "ONLY", "TABLE", NULL};

		t2 = sql_lex_next(&lx);
		skip_words(&lx, &t2, mods);
		take_name(&lx, &t2, o);
		return;
	}
	if (sql_tok_is(&t, "VACUUM") || sql_tok_is(&t, "ANALYZE") || sql_tok_is(&t, "ANALYSE")) {
		static const char *const mods[] = {"FULL", "FREEZE", "VERBOSE", "ANALYZE", NULL};

		t2 = sql_lex_next(&lx);
		if (sql_tok_punct(&t2, '(')) {
			int d = t2.depth;

			do {
				t2 = sql_lex_next(&lx);
			} while (t2.type != TK_END &&
				 !(sql_tok_punct(&t2, ')') && t2.depth == d + 1));
			t2 = sql_lex_next(&lx);
		}
		skip_words(&lx, &t2, mods);
		take_name(&lx, &t2, o);
		return;
	}
}
