/* SPDX-License-Identifier: MIT */
/*
 * Python objects of a traced process, read from outside with process_vm_readv: type names,
 * instance attributes (a dict, split values or 3.13+ inline values), tuple items, small ints and
 * dict items. Nothing is ever written; a failed read or an unexpected shape gives -1 / NULL.
 * Built on it: SQLAlchemy's engine URL of a Connection, rendered with the password hidden.
 */
#ifndef SQLSPAN_PYOBJ_H
#define SQLSPAN_PYOBJ_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "hmap.h"
#include "pylayout.h"

struct pyobj_src {
	pid_t pid;
	const struct py_layout *l;
	struct hmap *slots; /* where an attribute sits per (keys object, name); NULL: no cache */
};

/* Read a Python str at addr as UTF-8 (at most max code points); NULL if it is not one. */
char *py_read_str(pid_t pid, uint64_t addr, const struct py_layout *l, size_t max);

/* Does the object's type have this tp_name? */
bool pyobj_type_is(const struct pyobj_src *s, uint64_t obj, const char *name);
/* Has this type object this tp_name? */
bool pyobj_type_is_type(const struct pyobj_src *s, uint64_t type, const char *name);

/* The instance attribute `name` (a string constant: its address keys the cache). 0 if found. */
int pyobj_attr(const struct pyobj_src *s, uint64_t obj, const char *name, uint64_t *value);

/* Where `name` is among a heap type's cached (shared) attribute keys: its index. 0 if found. */
int pyobj_type_key_index(const struct pyobj_src *s, uint64_t type, const char *name,
			 int64_t *index);

/* Where a type's member (a __slots__ entry, tp_members) `name` sits in its objects. 0 if found. */
int pyobj_member_offset(const struct pyobj_src *s, uint64_t type, const char *name, int64_t *off);

/* The object's type; 0 if not readable. */
uint64_t pyobj_type(const struct pyobj_src *s, uint64_t obj);

/* A type's tp_basicsize; -1 if not readable. */
int64_t pyobj_type_basicsize(const struct pyobj_src *s, uint64_t type);

/* A tuple's items, at most max. Returns how many, -1 if it is not readable. */
int pyobj_tuple(const struct pyobj_src *s, uint64_t obj, uint64_t *items, int max);

/* An int that fits in one 30-bit digit (a port). 0 if it is one. */
int pyobj_small_int(const struct pyobj_src *s, uint64_t obj, int64_t *v);

/* A dict's items in insertion order, at most max. Returns how many, -1 if not readable. */
int pyobj_dict_items(const struct pyobj_src *s, uint64_t dict, uint64_t *keys, uint64_t *vals,
		     int max);

/* The parts of a SQLAlchemy URL, as SQLAlchemy holds them (NULL: None). */
struct sa_url {
	const char *drivername, *username, *host, *database;
	bool has_password;
	int64_t port; /* -1: None */
	int nquery;
	const char *const *query_keys; /* with repeats for a key with several values */
	const char *const *query_vals;
};

/*
 * The URL as SQLAlchemy's render_as_string(hide_password=True) writes it (2.0's quoting):
 * driver://user:***@host:port/db?k=v. The password is never part of it. malloc'd.
 */
char *sa_url_render(const struct sa_url *u);

/* A SQLAlchemy URL object (a named tuple), rendered as above; NULL if it is not one. */
char *pyobj_sa_url(const struct pyobj_src *s, uint64_t url);

#endif
