// SPDX-License-Identifier: MIT
#include <stdlib.h>
#include <string.h>
#include "reorder.h"
#include "../bpf/sqlspan.h"

struct item {
	uint64_t ts, seq;
	size_t size;
	void *rec;
};

struct reorder {
	struct item *heap;
	size_t n, cap;
	uint64_t seq;
	void *popped;
};

struct reorder *reorder_new(void)
{
	return calloc(1, sizeof(struct reorder));
}

void reorder_free(struct reorder *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		free(r->heap[i].rec);
	free(r->heap);
	free(r->popped);
	free(r);
}

static int less(const struct item *a, const struct item *b)
{
	return a->ts < b->ts || (a->ts == b->ts && a->seq < b->seq);
}

static void swap(struct item *a, struct item *b)
{
	struct item t = *a;

	*a = *b;
	*b = t;
}

int reorder_add(struct reorder *r, const void *rec, size_t size)
{
	const struct ev_hdr *h = rec;
	struct item it;
	size_t i;

	if (size < sizeof(*h))
		return -1;
	if (r->n == r->cap) {
		size_t nc = r->cap ? r->cap * 2 : 256;
		struct item *nh = realloc(r->heap, nc * sizeof(*nh));

		if (!nh)
			return -1;
		r->heap = nh;
		r->cap = nc;
	}
	it.rec = malloc(size);
	if (!it.rec)
		return -1;
	memcpy(it.rec, rec, size);
	it.size = size;
	it.ts = h->ts;
	it.seq = r->seq++;
	i = r->n++;
	r->heap[i] = it;
	while (i && less(&r->heap[i], &r->heap[(i - 1) / 2])) {
		swap(&r->heap[i], &r->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	return 0;
}

const void *reorder_pop(struct reorder *r, uint64_t horizon, size_t *size)
{
	size_t i = 0;

	if (!r->n || r->heap[0].ts >= horizon)
		return NULL;
	free(r->popped);
	r->popped = r->heap[0].rec;
	*size = r->heap[0].size;
	r->heap[0] = r->heap[--r->n];
	for (;;) {
		size_t l = 2 * i + 1, m = i;

		if (l < r->n && less(&r->heap[l], &r->heap[m]))
			m = l;
		if (l + 1 < r->n && less(&r->heap[l + 1], &r->heap[m]))
			m = l + 1;
		if (m == i)
			break;
		swap(&r->heap[i], &r->heap[m]);
		i = m;
	}
	return r->popped;
}

void reorder_release(struct reorder *r)
{
	free(r->popped);
	r->popped = NULL;
}
