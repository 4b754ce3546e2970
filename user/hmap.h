/* SPDX-License-Identifier: MIT */
/* A small open-addressing hash map from a 128-bit key to a pointer. */
#ifndef SQLSPAN_HMAP_H
#define SQLSPAN_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct hkey {
	uint64_t a, b;
};

struct hslot {
	struct hkey key;
	void *val; /* NULL: empty or deleted (see `used`) */
	uint8_t used;
};

struct hmap {
	struct hslot *slots;
	size_t cap;   /* power of two */
	size_t count; /* live entries */
	size_t tombs; /* deleted slots */
};

void hmap_init(struct hmap *m);
void hmap_free(struct hmap *m);
void *hmap_get(const struct hmap *m, struct hkey k);
/* Insert or replace; returns 0, or -1 when out of memory. `val` must not be NULL. */
int hmap_put(struct hmap *m, struct hkey k, void *val);
/* Remove and return the value (NULL if absent). */
void *hmap_del(struct hmap *m, struct hkey k);
/* Iterate: start with *pos = 0; returns NULL at the end. */
void *hmap_next(const struct hmap *m, size_t *pos, struct hkey *key);

static inline struct hkey hkey2(uint64_t a, uint64_t b)
{
	struct hkey k = {a, b};
	return k;
}

#endif
