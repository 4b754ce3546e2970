/* SPDX-License-Identifier: MIT */
/* A PostgreSQL-aware SQL tokenizer: comments, strings, dollar quotes and quoted identifiers. */
#ifndef SQLSPAN_SQLLEX_H
#define SQLSPAN_SQLLEX_H

#include <stdbool.h>
#include <stddef.h>

enum sql_tok_type {
	TK_END = 0,
	TK_WORD,   /* keyword or unquoted identifier */
	TK_QIDENT, /* "quoted identifier" */
	TK_STRING, /* 'string', E'...', $tag$...$tag$, B'..', X'..', U&'..' */
	TK_NUMBER,
	TK_PUNCT, /* any other single character: ( ) . , ; = ... */
};

struct sql_tok {
	enum sql_tok_type type;
	const char *s; /* start in the text */
	size_t n;      /* length in the text */
	int depth;     /* parenthesis depth before this token */
};

struct sql_lexer {
	const char *s, *end;
	int depth;
};

void sql_lex_init(struct sql_lexer *lx, const char *s, size_t n);
/* Next token; TK_END at the end of the text or an unterminated construct. */
struct sql_tok sql_lex_next(struct sql_lexer *lx);
/* Is the token the keyword kw (upper case, compared case-insensitively)? */
bool sql_tok_is(const struct sql_tok *t, const char *kw);
bool sql_tok_punct(const struct sql_tok *t, char c);

#endif
