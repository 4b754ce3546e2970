// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pgident.h"
#include "pyobj.h"

#define TPFLAGS_INLINE_VALUES (1UL << 2) /* 3.13+ */
#define TPFLAGS_MANAGED_DICT  (1UL << 4)
#define KEYS_GENERAL	      0
#define MAX_ENTRIES	      256
#define MAX_NAME	      64

static void put_utf8(char *out, size_t *o, uint32_t cp)
{
	if (cp < 0x80) {
		out[(*o)++] = cp;
	} else if (cp < 0x800) {
		out[(*o)++] = 0xc0 | (cp >> 6);
		out[(*o)++] = 0x80 | (cp & 0x3f);
	} else if (cp < 0x10000) {
		out[(*o)++] = 0xe0 | (cp >> 12);
		out[(*o)++] = 0x80 | ((cp >> 6) & 0x3f);
		out[(*o)++] = 0x80 | (cp & 0x3f);
	} else {
		out[(*o)++] = 0xf0 | (cp >> 18);
		out[(*o)++] = 0x80 | ((cp >> 12) & 0x3f);
		out[(*o)++] = 0x80 | ((cp >> 6) & 0x3f);
		out[(*o)++] = 0x80 | (cp & 0x3f);
	}
}

char *py_read_str(pid_t pid, uint64_t addr, const struct py_layout *l, size_t max)
{
	uint8_t hdr[64], *raw;
	int64_t len;
	uint32_t state;
	int kind, compact, ascii;
	size_t o = 0, need;
	char *out;

	/*
	 * Read no further than the header fields: a short str can end a page that nothing follows
	 * (the end of an allocator arena), and a longer read would fail.
	 */
	need = l->unicode_state + 4 > l->unicode_length + 8 ? l->unicode_state + 4
							    : l->unicode_length + 8;
	if (!addr || need > sizeof(hdr) || proc_read(pid, addr, hdr, need) != (ssize_t)need)
		return NULL;
	memcpy(&len, hdr + l->unicode_length, 8);
	memcpy(&state, hdr + l->unicode_state, 4);
	kind = (state >> 2) & 7;
	compact = (state >> 5) & 1;
	ascii = (state >> 6) & 1;
	if (len < 0 || !compact || (kind != 1 && kind != 2 && kind != 4))
		return NULL;
	if ((size_t)len > max)
		len = max;
	raw = malloc(len * kind + 1);
	out = malloc(len * 4 + 1);
	if (!raw || !out ||
	    proc_read(pid, addr + (ascii ? l->unicode_ascii_data : l->unicode_compact_data), raw,
		      len * kind) != len * kind) {
		free(raw);
		free(out);
		return NULL;
	}
	for (int64_t i = 0; i < len; i++) {
		uint32_t cp;

		if (kind == 1) {
			cp = raw[i];
		} else if (kind == 2) {
			uint16_t c;

			memcpy(&c, raw + i * 2, 2);
			cp = c;
		} else {
			memcpy(&cp, raw + i * 4, 4);
			if (cp > 0x10ffff)
				cp = 0xfffd;
		}
		put_utf8(out, &o, cp);
	}
	out[o] = 0;
	free(raw);
	return out;
}

static int rd(const struct pyobj_src *s, uint64_t addr, void *buf, size_t n)
{
	return addr && proc_read(s->pid, addr, buf, n) == (ssize_t)n ? 0 : -1;
}

static int rd_ptr(const struct pyobj_src *s, uint64_t addr, uint64_t *v)
{
	return rd(s, addr, v, sizeof(*v));
}

static int type_of(const struct pyobj_src *s, uint64_t obj, uint64_t *type)
{
	return rd_ptr(s, obj + 8, type) || !*type ? -1 : 0;
}

bool pyobj_type_is_type(const struct pyobj_src *s, uint64_t type, const char *name)
{
	uint64_t tp_name;
	char buf[MAX_NAME];
	size_t n = strlen(name) + 1;

	if (n > sizeof(buf) || rd_ptr(s, type + s->l->type_name, &tp_name) ||
	    rd(s, tp_name, buf, n))
		return false;
	return memcmp(buf, name, n) == 0;
}

bool pyobj_type_is(const struct pyobj_src *s, uint64_t obj, const char *name)
{
	uint64_t type;

	return !type_of(s, obj, &type) && pyobj_type_is_type(s, type, name);
}

/* Is the str at addr exactly `name`? */
static bool str_is(const struct pyobj_src *s, uint64_t addr, const char *name)
{
	char *got = py_read_str(s->pid, addr, s->l, MAX_NAME);
	bool same = got && strcmp(got, name) == 0;

	free(got);
	return same;
}

struct keys {
	uint64_t entries; /* address of the first entry */
	size_t esz;	  /* bytes per entry */
	size_t koff;	  /* the key's offset in an entry (after the hash in general keys) */
	int64_t n;	  /* entries in use */
};

static int keys_read(const struct pyobj_src *s, uint64_t keys, struct keys *k)
{
	const struct py_layout *l = s->l;
	uint8_t hdr[64];
	uint8_t log2_index_bytes, kind;

	if ((size_t)l->keys_indices > sizeof(hdr) || rd(s, keys, hdr, l->keys_indices))
		return -1;
	log2_index_bytes = hdr[l->keys_log2_index_bytes];
	kind = hdr[l->keys_kind];
	memcpy(&k->n, hdr + l->keys_nentries, 8);
	if (log2_index_bytes > 40 || k->n < 0 || k->n > MAX_ENTRIES)
		return -1;
	k->entries = keys + l->keys_indices + (1ULL << log2_index_bytes);
	k->esz = kind == KEYS_GENERAL ? 24 : 16;
	k->koff = kind == KEYS_GENERAL ? 8 : 0;
	return 0;
}

struct slot {
	uint64_t key; /* the key object found there */
	int64_t index;
};

/* Where `name` is among the keys: its entry index, cached per (keys object, name). */
static int keys_find(const struct pyobj_src *s, uint64_t keys, const char *name, struct keys *k,
		     int64_t *index)
{
	struct hkey hk = hkey2(keys, (uint64_t)(uintptr_t)name);
	struct slot *sl = s->slots ? hmap_get(s->slots, hk) : NULL;
	uint8_t *ent;
	uint64_t key;

	if (keys_read(s, keys, k))
		return -1;
	if (sl && sl->index < k->n && !rd_ptr(s, k->entries + sl->index * k->esz + k->koff, &key) &&
	    key == sl->key) {
		*index = sl->index;
		return 0;
	}
	ent = malloc(k->n * k->esz + 1);
	if (!ent || rd(s, k->entries, ent, k->n * k->esz)) {
		free(ent);
		return -1;
	}
	for (int64_t i = 0; i < k->n; i++) {
		memcpy(&key, ent + i * k->esz + k->koff, 8);
		if (!key || !str_is(s, key, name))
			continue;
		free(ent);
		*index = i;
		if (s->slots) {
			if (!sl) {
				sl = malloc(sizeof(*sl));
				if (sl && hmap_put(s->slots, hk, sl)) {
					free(sl);
					sl = NULL;
				}
			}
			if (sl) {
				sl->key = key;
				sl->index = i;
			}
		}
		return 0;
	}
	free(ent);
	return -1;
}

/* A value among split values (3.11/3.12 a bare array, 3.13+ after a small header). */
static int values_get(const struct pyobj_src *s, uint64_t values, int64_t index, uint64_t *v)
{
	return rd_ptr(s, values + s->l->values_items + index * 8, v) || !*v ? -1 : 0;
}

static int dict_get(const struct pyobj_src *s, uint64_t dict, const char *name, uint64_t *v)
{
	const struct py_layout *l = s->l;
	uint64_t keys, values;
	struct keys k;
	int64_t i;

	if (rd_ptr(s, dict + l->dict_keys, &keys) || rd_ptr(s, dict + l->dict_values, &values) ||
	    keys_find(s, keys, name, &k, &i))
		return -1;
	if (values)
		return values_get(s, values, i, v);
	return rd_ptr(s, k.entries + i * k.esz + k.koff + 8, v) || !*v ? -1 : 0;
}

/* Attributes kept in split values whose keys are the type's cached keys. */
static int split_get(const struct pyobj_src *s, uint64_t type, uint64_t values, const char *name,
		     uint64_t *v)
{
	uint64_t keys;
	struct keys k;
	int64_t i;

	if (rd_ptr(s, type + s->l->heaptype_cached_keys, &keys) || keys_find(s, keys, name, &k, &i))
		return -1;
	return values_get(s, values, i, v);
}

int pyobj_type_key_index(const struct pyobj_src *s, uint64_t type, const char *name, int64_t *index)
{
	uint64_t keys;
	struct keys k;

	return rd_ptr(s, type + s->l->heaptype_cached_keys, &keys) || !keys ||
			       keys_find(s, keys, name, &k, index)
		       ? -1
		       : 0;
}

uint64_t pyobj_type(const struct pyobj_src *s, uint64_t obj)
{
	uint64_t type;

	return type_of(s, obj, &type) ? 0 : type;
}

int pyobj_member_offset(const struct pyobj_src *s, uint64_t type, const char *name, int64_t *off)
{
	const struct py_layout *l = s->l;
	size_t n = strlen(name) + 1;
	uint64_t members;
	char buf[MAX_NAME];

	if (n > sizeof(buf) || rd_ptr(s, type + l->type_members, &members) || !members)
		return -1;
	for (int i = 0; i < 64; i++) {
		uint64_t m = members + (uint64_t)i * l->member_size, mname;

		if (rd_ptr(s, m, &mname) || !mname)
			return -1; /* the end of the array, or unreadable */
		if (!rd(s, mname, buf, n) && !memcmp(buf, name, n))
			return rd(s, m + l->member_offset, off, 8) || *off <= 0 ? -1 : 0;
	}
	return -1;
}

int64_t pyobj_type_basicsize(const struct pyobj_src *s, uint64_t type)
{
	int64_t n;

	return rd(s, type + s->l->type_basicsize, &n, 8) || n <= 0 ? -1 : n;
}

int pyobj_attr(const struct pyobj_src *s, uint64_t obj, const char *name, uint64_t *value)
{
	const struct py_layout *l = s->l;
	uint64_t type, flags, managed, dict;
	int64_t basicsize, dictoffset;

	if (type_of(s, obj, &type) || rd(s, type + l->type_flags, &flags, 8) ||
	    rd(s, type + l->type_basicsize, &basicsize, 8) ||
	    rd(s, type + l->type_dictoffset, &dictoffset, 8))
		return -1;
	if (!(flags & TPFLAGS_MANAGED_DICT)) {
		if (dictoffset <= 0 || rd_ptr(s, obj + dictoffset, &dict) || !dict)
			return -1;
		return dict_get(s, dict, name, value);
	}
	if (rd_ptr(s, obj + l->managed_dict, &managed))
		return -1;
	if (l->managed_tagged) { /* 3.12: the values - 1 (odd), or a dict */
		if (managed & 1)
			return split_get(s, type, managed + 1, name, value);
		return managed ? dict_get(s, managed, name, value) : -1;
	}
	if (managed) /* a dict made for the object: it has the attributes */
		return dict_get(s, managed, name, value);
	if (l->managed_values) { /* 3.11 */
		uint64_t values;

		if (rd_ptr(s, obj + l->managed_values, &values) || !values)
			return -1;
		return split_get(s, type, values, name, value);
	}
	if (l->values_valid >= 0 && (flags & TPFLAGS_INLINE_VALUES)) { /* 3.13+ */
		uint8_t valid;

		if (basicsize <= 0 || rd(s, obj + basicsize + l->values_valid, &valid, 1) || !valid)
			return -1;
		return split_get(s, type, obj + basicsize, name, value);
	}
	return -1;
}

int pyobj_tuple(const struct pyobj_src *s, uint64_t obj, uint64_t *items, int max)
{
	int64_t n;

	if (rd(s, obj + s->l->tuple_size, &n, 8) || n < 0)
		return -1;
	if (n > max)
		n = max;
	return rd(s, obj + s->l->tuple_items, items, n * 8) ? -1 : (int)n;
}

int pyobj_small_int(const struct pyobj_src *s, uint64_t obj, int64_t *v)
{
	const struct py_layout *l = s->l;
	int64_t tag;
	uint32_t digit;
	int64_t ndigits, sign;

	if (!pyobj_type_is(s, obj, "int") || rd(s, obj + l->long_tag, &tag, 8))
		return -1;
	if (l->long_tagged) { /* lv_tag: digits << 3 | sign (0 positive, 1 zero, 2 negative) */
		ndigits = (uint64_t)tag >> 3;
		sign = (tag & 3) == 2 ? -1 : (tag & 3) == 1 ? 0 : 1;
	} else { /* ob_size: signed digit count */
		ndigits = tag < 0 ? -tag : tag;
		sign = tag < 0 ? -1 : tag > 0;
	}
	if (ndigits == 0 || sign == 0) {
		*v = 0;
		return 0;
	}
	if (ndigits != 1 || rd(s, obj + l->long_digits, &digit, 4))
		return -1;
	*v = sign * (int64_t)(digit & 0x3fffffff);
	return 0;
}

int pyobj_dict_items(const struct pyobj_src *s, uint64_t dict, uint64_t *keys, uint64_t *vals,
		     int max)
{
	const struct py_layout *l = s->l;
	uint64_t kobj, values;
	struct keys k;
	uint8_t *ent;
	int got = 0;

	if (rd_ptr(s, dict + l->dict_keys, &kobj) || rd_ptr(s, dict + l->dict_values, &values) ||
	    keys_read(s, kobj, &k))
		return -1;
	ent = malloc(k.n * k.esz + 1);
	if (!ent || rd(s, k.entries, ent, k.n * k.esz)) {
		free(ent);
		return -1;
	}
	for (int64_t i = 0; i < k.n && got < max; i++) {
		uint64_t key, val = 0;

		memcpy(&key, ent + i * k.esz + k.koff, 8);
		if (!key)
			continue; /* a deleted entry */
		if (values)
			values_get(s, values, i, &val);
		else
			memcpy(&val, ent + i * k.esz + k.koff + 8, 8);
		if (!val)
			continue;
		keys[got] = key;
		vals[got++] = val;
	}
	free(ent);
	return got;
}
