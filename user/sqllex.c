// SPDX-License-Identifier: MIT
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include "sqllex.h"

void sql_lex_init(struct sql_lexer *lx, const char *s, size_t n)
{
	lx->s = s;
	lx->end = s + n;
	lx->depth = 0;
}

static bool ident_start(unsigned char c)
{
	return isalpha(c) || c == '_' || c >= 0x80;
}

static bool ident_char(unsigned char c)
{
	return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

/* Skip whitespace and comments (-- to end of line, nested block comments). */
static void skip_space(struct sql_lexer *lx)
{
	for (;;) {
		while (lx->s < lx->end && isspace((unsigned char)*lx->s))
			lx->s++;
		if (lx->end - lx->s >= 2 && lx->s[0] == '-' && lx->s[1] == '-') {
			while (lx->s < lx->end && *lx->s != '\n')
				lx->s++;
			continue;
		}
		if (lx->end - lx->s >= 2 && lx->s[0] == '/' && lx->s[1] == '*') {
			int nest = 0;

			while (lx->s < lx->end) {
				if (lx->end - lx->s >= 2 && lx->s[0] == '/' && lx->s[1] == '*') {
					nest++;
					lx->s += 2;
				} else if (lx->end - lx->s >= 2 && lx->s[0] == '*' &&
					   lx->s[1] == '/') {
					lx->s += 2;
					if (--nest == 0)
						break;
				} else {
					lx->s++;
				}
			}
			continue;
		}
		return;
	}
}

/* A quoted run starting at p (p points at the quote): returns the end, or NULL if unterminated. */
static const char *skip_quoted(const char *p, const char *end, char q, bool backslash)
{
	p++;
	while (p < end) {
		if (backslash && *p == '\\' && p + 1 < end) {
			p += 2;
			continue;
		}
		if (*p == q) {
			if (p + 1 < end && p[1] == q) {
				p += 2;
				continue;
			}
			return p + 1;
		}
		p++;
	}
	return NULL;
}

/* $tag$ ... $tag$ starting at p; NULL if p does not start a dollar quote or it is unterminated. */
static const char *skip_dollar(const char *p, const char *end)
{
	const char *t = p + 1;
	size_t tl;

	while (t < end && *t != '$') {
		if (!ident_char((unsigned char)*t) || *t == '$' ||
		    (t == p + 1 && isdigit((unsigned char)*t)))
			return NULL;
		t++;
	}
	if (t >= end)
		return NULL;
	tl = t - p + 1; /* "$tag$" */
	for (const char *s = t + 1; s + tl <= end; s++) {
		if (*s == '$' && !memcmp(s, p, tl))
			return s + tl;
	}
	return NULL;
}

struct sql_tok sql_lex_next(struct sql_lexer *lx)
{
	struct sql_tok t = {TK_END, lx->end, 0, lx->depth};
	const char *p, *e;
	unsigned char c;

	skip_space(lx);
	if (lx->s >= lx->end)
		return t;
	p = lx->s;
	c = *p;
	t.s = p;
	t.depth = lx->depth;

	/* prefixed strings: E'..' B'..' X'..' N'..' U&'..' U&".." */
	if ((c == 'E' || c == 'e' || c == 'B' || c == 'b' || c == 'X' || c == 'x' || c == 'N' ||
	     c == 'n') &&
	    p + 1 < lx->end && p[1] == '\'') {
		e = skip_quoted(p + 1, lx->end, '\'', c == 'E' || c == 'e');
		t.type = TK_STRING;
		goto quoted;
	}
	if ((c == 'U' || c == 'u') && lx->end - p >= 3 && p[1] == '&' &&
	    (p[2] == '\'' || p[2] == '"')) {
		e = skip_quoted(p + 2, lx->end, p[2], false);
		t.type = p[2] == '"' ? TK_QIDENT : TK_STRING;
		goto quoted;
	}
	if (c == '\'') {
		e = skip_quoted(p, lx->end, '\'', false);
		t.type = TK_STRING;
		goto quoted;
	}
	if (c == '"') {
		e = skip_quoted(p, lx->end, '"', false);
		t.type = TK_QIDENT;
		goto quoted;
	}
	if (c == '$') {
		e = skip_dollar(p, lx->end);
		if (e) {
			t.type = TK_STRING;
			goto quoted;
		}
		/* $1 parameter */
		e = p + 1;
		while (e < lx->end && isdigit((unsigned char)*e))
			e++;
		t.type = TK_PUNCT;
		t.n = e - p;
		lx->s = e;
		return t;
	}
	if (ident_start(c)) {
		e = p + 1;
		while (e < lx->end && ident_char((unsigned char)*e))
			e++;
		t.type = TK_WORD;
		t.n = e - p;
		lx->s = e;
		return t;
	}
	if (isdigit(c) || (c == '.' && p + 1 < lx->end && isdigit((unsigned char)p[1]))) {
		e = p + 1;
		while (e < lx->end && (isalnum((unsigned char)*e) || *e == '.' || *e == '_'))
			e++;
		t.type = TK_NUMBER;
		t.n = e - p;
		lx->s = e;
		return t;
	}
	t.type = TK_PUNCT;
	t.n = 1;
	lx->s = p + 1;
	if (c == '(')
		lx->depth++;
	else if (c == ')' && lx->depth > 0)
		lx->depth--;
	return t;

quoted:
	if (!e) {
		lx->s = lx->end;
		t.type = TK_END;
		t.n = 0;
		return t;
	}
	t.n = e - p;
	lx->s = e;
	return t;
}

bool sql_tok_is(const struct sql_tok *t, const char *kw)
{
	size_t n = strlen(kw);

	return t->type == TK_WORD && t->n == n && !strncasecmp(t->s, kw, n);
}

bool sql_tok_punct(const struct sql_tok *t, char c)
{
	return t->type == TK_PUNCT && t->n == 1 && t->s[0] == c;
}
