/* SPDX-License-Identifier: MIT */
/*
 * Output lines held from one read of the records to the next: a run the kernel skips (7.x) is
 * only known from a counter read between reads, and may have touched any span completed since
 * the previous one. Released spans are marked as near a loss (sqlspan.events_lost) if it did.
 */
#ifndef SQLSPAN_OUTQ_H
#define SQLSPAN_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct outq_line {
	char *text;
	size_t len;
	bool json_span; /* a JSON statement span (one line, ending in "}\n"): can be marked */
};

struct outq {
	struct outq_line *lines;
	size_t n, cap;
};

/* Hold a line (taken over: malloc'd). Returns 0, or -1 if out of memory (the line is freed). */
int outq_push(struct outq *q, char *text, size_t len, bool json_span);
/* Write the held lines to out, marking JSON spans if near_loss. Returns -1 if writing failed. */
int outq_flush(struct outq *q, FILE *out, bool near_loss);
void outq_free(struct outq *q);

#endif
