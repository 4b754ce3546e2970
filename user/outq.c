// SPDX-License-Identifier: MIT
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>
#include "outq.h"

#define LOST_KEY "\"sqlspan.events_lost\":true"

int outq_push(struct outq *q, char *text, size_t len, bool json_span)
{
	if (q->n == q->cap) {
		size_t nc = q->cap ? q->cap * 2 : 64;
		struct outq_line *nl = realloc(q->lines, nc * sizeof(*nl));

		if (!nl) {
			free(text);
			return -1;
		}
		q->lines = nl;
		q->cap = nc;
	}
	q->lines[q->n++] = (struct outq_line){text, len, json_span};
	return 0;
}

/* Has this JSON line the mark already? (memmem: the line is not searched past its length) */
static bool marked(const struct outq_line *l)
{
	return memmem(l->text, l->len, LOST_KEY, strlen(LOST_KEY)) != NULL;
}

int outq_flush(struct outq *q, FILE *out, bool near_loss)
{
	int rc = 0;

	for (size_t i = 0; i < q->n; i++) {
		struct outq_line *l = &q->lines[i];

		if (near_loss && l->json_span && l->len >= 2 &&
		    !memcmp(l->text + l->len - 2, "}\n", 2) && !marked(l)) {
			if (fwrite(l->text, 1, l->len - 2, out) != l->len - 2 ||
			    fputs("," LOST_KEY "}\n", out) == EOF)
				rc = -1;
		} else if (fwrite(l->text, 1, l->len, out) != l->len) {
			rc = -1;
		}
		free(l->text);
	}
	q->n = 0;
	if (fflush(out) == EOF)
		rc = -1;
	return rc;
}

void outq_free(struct outq *q)
{
	for (size_t i = 0; i < q->n; i++)
		free(q->lines[i].text);
	free(q->lines);
	*q = (struct outq){0};
}
