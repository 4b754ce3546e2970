// SPDX-License-Identifier: MIT
#include <stdlib.h>
#include <string.h>
#include "hmap.h"

static uint64_t hash(struct hkey k)
{
	uint64_t h = k.a * 0x9e3779b97f4a7c15ULL ^ (k.b + 0x7f4a7c159e3779b9ULL + (k.a << 6));

	h ^= h >> 31;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 29;
	return h;
}

void hmap_init(struct hmap *m)
{
	memset(m, 0, sizeof(*m));
}

void hmap_free(struct hmap *m)
{
	free(m->slots);
	hmap_init(m);
}

static struct hslot *find(const struct hmap *m, struct hkey k)
{
	size_t i, mask;

	if (!m->cap)
		return NULL;
	mask = m->cap - 1;
	for (i = hash(k) & mask;; i = (i + 1) & mask) {
		struct hslot *s = &m->slots[i];

		if (!s->used)
			return NULL;
		if (s->val && s->key.a == k.a && s->key.b == k.b)
			return s;
	}
}

void *hmap_get(const struct hmap *m, struct hkey k)
{
	struct hslot *s = find(m, k);

	return s ? s->val : NULL;
}

static int grow(struct hmap *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 16, i;
	struct hslot *old = m->slots, *ns;
	size_t ocap = m->cap;

	if (m->count * 2 < m->cap)
		ncap = m->cap; /* mostly tombstones: rehash in place size */
	ns = calloc(ncap, sizeof(*ns));
	if (!ns)
		return -1;
	m->slots = ns;
	m->cap = ncap;
	m->count = 0;
	m->tombs = 0;
	for (i = 0; i < ocap; i++) {
		if (old[i].val)
			hmap_put(m, old[i].key, old[i].val);
	}
	free(old);
	return 0;
}

int hmap_put(struct hmap *m, struct hkey k, void *val)
{
	struct hslot *s = find(m, k);
	size_t i, mask;

	if (s) {
		s->val = val;
		return 0;
	}
	if ((m->count + m->tombs + 1) * 4 > m->cap * 3 && grow(m))
		return -1;
	mask = m->cap - 1;
	for (i = hash(k) & mask;; i = (i + 1) & mask) {
		s = &m->slots[i];
		if (!s->val) {
			if (s->used)
				m->tombs--;
			s->used = 1;
			s->key = k;
			s->val = val;
			m->count++;
			return 0;
		}
	}
}

void *hmap_del(struct hmap *m, struct hkey k)
{
	struct hslot *s = find(m, k);
	void *v;

	if (!s)
		return NULL;
	v = s->val;
	s->val = NULL; /* stays `used`: a tombstone */
	m->count--;
	m->tombs++;
	return v;
}

void *hmap_next(const struct hmap *m, size_t *pos, struct hkey *key)
{
	while (*pos < m->cap) {
		struct hslot *s = &m->slots[(*pos)++];

		if (s->val) {
			if (key)
				*key = s->key;
			return s->val;
		}
	}
	return NULL;
}
