// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strbuf.h"

void sb_add(struct strbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t nc = (b->len + n + 1) * 2;
		char *np = realloc(b->p, nc);

		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

void sb_str(struct strbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

void sb_char(struct strbuf *b, char c)
{
	sb_add(b, &c, 1);
}

void sb_json(struct strbuf *b, const char *s)
{
	sb_char(b, '"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[8];

		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = *p;
			sb_add(b, esc, 2);
		} else if (*p < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			sb_add(b, esc, 6);
		} else {
			sb_add(b, (const char *)p, 1);
		}
	}
	sb_char(b, '"');
}

char *sb_take(struct strbuf *b)
{
	char *p;

	if (!b->oom && !b->p)
		sb_add(b, "", 0);
	if (b->oom) {
		free(b->p);
		p = NULL;
	} else {
		p = b->p;
	}
	*b = (struct strbuf){0};
	return p;
}
