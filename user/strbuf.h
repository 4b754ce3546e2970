/* SPDX-License-Identifier: MIT */
/* A growing NUL-terminated text; out of memory makes it give up (sb_take returns NULL). */
#ifndef SQLSPAN_STRBUF_H
#define SQLSPAN_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

void sb_add(struct strbuf *b, const char *s, size_t n);
void sb_str(struct strbuf *b, const char *s);
void sb_char(struct strbuf *b, char c);
/* s as a JSON string, quotes included */
void sb_json(struct strbuf *b, const char *s);
/* The text (malloc'd; "" if nothing was added), or NULL if memory ran out. */
char *sb_take(struct strbuf *b);

#endif
