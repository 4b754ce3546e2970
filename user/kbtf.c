// SPDX-License-Identifier: MIT
/*
 * A streaming reader of raw BTF (the format of /sys/kernel/btf/vmlinux, see the kernel's
 * Documentation/bpf/btf.rst): two passes through a buffer of CHUNK bytes, the string section to
 * learn the offsets of the few names asked for, then the type section to find the structs of
 * those names and their members. Nothing of the blob is kept.
 */
#include "kbtf.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BTF_MAGIC	0xeB9F
#define KIND_INT	1
#define KIND_ARRAY	3
#define KIND_STRUCT	4
#define KIND_UNION	5
#define KIND_ENUM	6
#define KIND_FUNC_PROTO 13
#define KIND_VAR	14
#define KIND_DATASEC	15
#define KIND_DECL_TAG	17
#define KIND_ENUM64	19
#define KIND_MAX	19

/* offsets a name has in the string section (a deduplicated section has one) */
#define NAME_OFFS    4
#define NAME_MAX_LEN 63

struct name {
	const char *s;
	uint32_t off[NAME_OFFS];
	int n;
};

struct reader {
	int fd;
	uint64_t pos, end; /* file offsets: next to read, end of the section */
	uint8_t *buf;
	size_t cap, have, at;
};

static void rd_init(struct reader *r, int fd, uint64_t start, uint64_t len, uint8_t *buf,
		    size_t cap)
{
	*r = (struct reader){.fd = fd, .pos = start, .end = start + len, .buf = buf, .cap = cap};
}

/* Read the section's next bytes after what is buffered (up to cap); false at its end or error. */
static bool rd_fill(struct reader *r)
{
	size_t want = r->cap - r->have;
	ssize_t got;

	if (r->pos >= r->end || !want)
		return false;
	if (want > r->end - r->pos)
		want = r->end - r->pos;
	got = pread(r->fd, r->buf + r->have, want, (off_t)r->pos);
	if (got <= 0)
		return false;
	r->have += (size_t)got;
	r->pos += (uint64_t)got;
	return true;
}

/* n contiguous bytes (n <= cap), or NULL at the section's end or on a read error */
static const uint8_t *rd_get(struct reader *r, size_t n)
{
	const uint8_t *p;

	if (r->have - r->at < n) {
		memmove(r->buf, r->buf + r->at, r->have - r->at);
		r->have -= r->at;
		r->at = 0;
		while (r->have < n && rd_fill(r))
			;
		if (r->have < n)
			return NULL;
	}
	p = r->buf + r->at;
	r->at += n;
	return p;
}

static bool rd_skip(struct reader *r, uint64_t n)
{
	uint64_t buffered = r->have - r->at;

	if (n <= buffered) {
		r->at += n;
		return true;
	}
	n -= buffered;
	r->at = r->have = 0;
	if (n > r->end - r->pos)
		return false;
	r->pos += n;
	return true;
}

static uint32_t u32_at(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static bool name_is(const struct name *nm, uint32_t off)
{
	for (int i = 0; i < nm->n; i++) {
		if (nm->off[i] == off)
			return true;
	}
	return false;
}

/* A whole string of the section, at offset off: is it one of the names? */
static void match_name(const char *str, size_t len, uint32_t off, struct name *names, int nnames)
{
	for (int i = 0; len <= NAME_MAX_LEN && i < nnames; i++) {
		if (names[i].n < NAME_OFFS && strlen(names[i].s) == len &&
		    !memcmp(str, names[i].s, len))
			names[i].off[names[i].n++] = off;
	}
}

/* Pass 1: where each wanted name is in the string section, read a chunk at a time. */
static int find_names(struct reader *r, struct name *names, int nnames)
{
	char cur[NAME_MAX_LEN + 1]; /* a string cut by a chunk's end: its start */
	size_t curlen = 0;
	uint32_t start = 0; /* offset of the string being read */

	while (r->pos < r->end) {
		const char *p, *end, *nul;

		r->have = r->at = 0;
		if (!rd_fill(r))
			return -1;
		p = (const char *)r->buf;
		end = p + r->have;
		while ((nul = memchr(p, 0, (size_t)(end - p)))) {
			size_t len = (size_t)(nul - p);

			if (curlen) {
				if (curlen + len <= NAME_MAX_LEN) {
					memcpy(cur + curlen, p, len);
					match_name(cur, curlen + len, start, names, nnames);
				}
			} else {
				match_name(p, len, start, names, nnames);
			}
			start += (uint32_t)(curlen + len + 1);
			curlen = 0;
			p = nul + 1;
		}
		if (p < end) { /* the rest of this chunk starts a string */
			size_t len = (size_t)(end - p);

			if (curlen + len <= NAME_MAX_LEN)
				memcpy(cur + curlen, p, len);
			curlen += len;
		}
	}
	return 0;
}

/* bytes that follow a type's 12-byte header, by kind; -1 for a kind this reader does not know */
static int64_t type_extra(uint32_t kind, uint32_t vlen)
{
	switch (kind) {
	case KIND_INT:
	case KIND_VAR:
	case KIND_DECL_TAG:
		return 4;
	case KIND_ARRAY:
		return 12;
	case KIND_STRUCT:
	case KIND_UNION:
	case KIND_DATASEC:
	case KIND_ENUM64:
		return 12 * (int64_t)vlen;
	case KIND_ENUM:
	case KIND_FUNC_PROTO:
		return 8 * (int64_t)vlen;
	default:
		return kind <= KIND_MAX ? 0 : -1;
	}
}

struct found {
	uint32_t struct_id; /* the struct named path[i].type (0: not seen) */
	uint32_t member_type;
	uint32_t member_bits;
	bool member_seen, member_bitfield;
};

/* A struct named for step i: look for its member. */
static int scan_members(struct reader *r, uint32_t vlen, bool kflag, const struct name *member,
			struct found *f)
{
	for (uint32_t m = 0; m < vlen; m++) {
		const uint8_t *p = rd_get(r, 12);

		if (!p)
			return -1;
		if (!f->member_seen && name_is(member, u32_at(p))) {
			uint32_t bits = u32_at(p + 8);

			f->member_seen = true;
			f->member_type = u32_at(p + 4);
			/* kind_flag: bit field size << 24 | bit offset */
			f->member_bits = kflag ? bits & 0xffffff : bits;
			f->member_bitfield = kflag && bits >> 24;
		}
	}
	return 0;
}

/* Pass 2: the structs and members of the path. */
static int find_types(struct reader *r, const struct name *names, int depth, struct found *f,
		      char *msg, size_t n)
{
	uint32_t id = 0;
	const uint8_t *p;

	while (r->pos < r->end || r->at < r->have) {
		uint32_t info, kind, vlen;
		int64_t extra;
		bool claimed = false;

		p = rd_get(r, 12);
		if (!p) {
			snprintf(msg, n, "the kernel's BTF ends inside a type");
			return -1;
		}
		id++;
		info = u32_at(p + 4);
		kind = (info >> 24) & 0x1f;
		vlen = info & 0xffff;
		extra = type_extra(kind, vlen);
		if (extra < 0) {
			snprintf(msg, n, "the kernel's BTF has a type of unknown kind %u", kind);
			return -1;
		}
		if (kind == KIND_STRUCT) {
			uint32_t name_off = u32_at(p);

			for (int i = 0; i < depth && !claimed; i++) {
				if (f[i].struct_id || !name_is(&names[2 * i], name_off))
					continue;
				f[i].struct_id = id;
				claimed = true;
				if (scan_members(r, vlen, info >> 31, &names[2 * i + 1], &f[i])) {
					snprintf(msg, n, "the kernel's BTF ends inside a type");
					return -1;
				}
			}
		}
		if (!claimed && !rd_skip(r, (uint64_t)extra)) {
			snprintf(msg, n, "the kernel's BTF ends inside a type");
			return -1;
		}
	}
	return 0;
}

int kbtf_offset(int fd, const struct kbtf_step *path, int depth, size_t chunk, uint32_t *off,
		char *msg, size_t n)
{
	struct name names[2 * KBTF_MAX_DEPTH] = {0};
	struct found f[KBTF_MAX_DEPTH] = {0};
	uint8_t hdr[24];
	uint32_t hdr_len, type_off, type_len, str_off, str_len, total = 0;
	struct reader r;
	uint8_t *buf;
	int rc = -1;

	if (depth < 1 || depth > KBTF_MAX_DEPTH || chunk < 16) {
		snprintf(msg, n, "bad BTF path");
		return -1;
	}
	if (pread(fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) {
		snprintf(msg, n, "cannot read the kernel's BTF: %s",
			 errno ? strerror(errno) : "too short");
		return -1;
	}
	if ((uint16_t)(hdr[0] | hdr[1] << 8) != BTF_MAGIC || hdr[2] != 1) {
		snprintf(msg, n, "the kernel's BTF has an unknown magic or version");
		return -1;
	}
	hdr_len = u32_at(hdr + 4);
	type_off = u32_at(hdr + 8);
	type_len = u32_at(hdr + 12);
	str_off = u32_at(hdr + 16);
	str_len = u32_at(hdr + 20);
	if (hdr_len < sizeof(hdr)) {
		snprintf(msg, n, "the kernel's BTF has a short header");
		return -1;
	}
	buf = malloc(chunk);
	if (!buf) {
		snprintf(msg, n, "out of memory");
		return -1;
	}
	for (int i = 0; i < depth; i++) {
		names[2 * i].s = path[i].type;
		names[2 * i + 1].s = path[i].member;
	}
	rd_init(&r, fd, (uint64_t)hdr_len + str_off, str_len, buf, chunk);
	if (find_names(&r, names, 2 * depth)) {
		snprintf(msg, n, "cannot read the kernel's BTF strings");
		goto out;
	}
	rd_init(&r, fd, (uint64_t)hdr_len + type_off, type_len, buf, chunk);
	if (find_types(&r, names, depth, f, msg, n))
		goto out;
	for (int i = 0; i < depth; i++) {
		if (!f[i].struct_id || !f[i].member_seen) {
			snprintf(msg, n, "the kernel's BTF has no %s.%s", path[i].type,
				 path[i].member);
			goto out;
		}
		if (i + 1 < depth && f[i].member_type != f[i + 1].struct_id) {
			snprintf(msg, n, "in the kernel's BTF, %s.%s is not a struct %s",
				 path[i].type, path[i].member, path[i + 1].type);
			goto out;
		}
		if (f[i].member_bitfield || f[i].member_bits % 8) {
			snprintf(msg, n, "in the kernel's BTF, %s.%s is a bit field", path[i].type,
				 path[i].member);
			goto out;
		}
		total += f[i].member_bits / 8;
	}
	*off = total;
	rc = 0;
out:
	free(buf);
	return rc;
}
