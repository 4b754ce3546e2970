// SPDX-License-Identifier: MIT
/* The kernel BTF reader (kbtf.c): hand-made blobs cut at every chunk size, and this host's BTF
 * against bpftool's dump of it. */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
#include "check.h"
#include "kbtf.h"

/* a BTF blob under construction */
struct blob {
	uint8_t types[4096], strs[4096];
	size_t ntypes, nstrs;
	uint32_t next_id;
};

static void put32(struct blob *b, uint32_t v)
{
	memcpy(b->types + b->ntypes, &v, 4);
	b->ntypes += 4;
}

static uint32_t str(struct blob *b, const char *s)
{
	uint32_t off = (uint32_t)b->nstrs;

	memcpy(b->strs + b->nstrs, s, strlen(s) + 1);
	b->nstrs += strlen(s) + 1;
	return off;
}

/* a type's header; returns its id */
static uint32_t type(struct blob *b, const char *name, uint32_t kind, uint32_t vlen, int kflag,
		     uint32_t size_or_type)
{
	put32(b, name ? str(b, name) : 0);
	put32(b, (uint32_t)kflag << 31 | kind << 24 | vlen);
	put32(b, size_or_type);
	return ++b->next_id;
}

static void member(struct blob *b, const char *name, uint32_t type_id, uint32_t offset)
{
	put32(b, str(b, name));
	put32(b, type_id);
	put32(b, offset);
}

static void blob_init(struct blob *b)
{
	memset(b, 0, sizeof(*b));
	str(b, ""); /* offset 0 is the empty name */
}

/* a memfd holding header + types + strings; magic/version overridable, type_len cut by `cut` */
static int blob_fd(struct blob *b, uint16_t magic, size_t cut)
{
	uint32_t hdr[6];
	int fd = memfd_create("btf", 0);
	uint8_t mv[4] = {(uint8_t)magic, (uint8_t)(magic >> 8), 1, 0};

	memcpy(&hdr[0], mv, 4);
	hdr[1] = 24;
	hdr[2] = 0;
	hdr[3] = (uint32_t)(b->ntypes - cut);
	hdr[4] = (uint32_t)b->ntypes;
	hdr[5] = (uint32_t)b->nstrs;
	if (write(fd, hdr, sizeof(hdr)) != sizeof(hdr) ||
	    write(fd, b->types, b->ntypes) != (ssize_t)b->ntypes ||
	    write(fd, b->strs, b->nstrs) != (ssize_t)b->nstrs)
		return -1;
	return fd;
}

static const struct kbtf_step fsbase_path[] = {{"task_struct", "thread"},
					       {"thread_struct", "fsbase"}};

/* Every kind before the structs, decoys named like them, a kind_flag struct. */
static void build_kernelish(struct blob *b, int member_type_mismatch)
{
	uint32_t u64, ts, arr;

	blob_init(b);
	u64 = type(b, "long unsigned int", 1, 0, 0, 8);
	put32(b, 64);				    /* INT's encoding word */
	type(b, NULL, 2, 0, 0, u64);		    /* PTR */
	arr = type(b, NULL, 3, 0, 0, 0);	    /* ARRAY */
	put32(b, u64), put32(b, u64), put32(b, 16); /* elem type, index type, nelems */
	type(b, "e", 6, 2, 0, 4);		    /* ENUM, 2 values */
	put32(b, str(b, "A")), put32(b, 0), put32(b, str(b, "thread")), put32(b, 1);
	type(b, NULL, 13, 1, 0, u64); /* FUNC_PROTO, 1 param */
	put32(b, str(b, "thread")), put32(b, u64);
	type(b, "thread_struct", 7, 0, 0, 0); /* FWD: not the struct */
	type(b, "threads", 5, 1, 0, 8);	      /* UNION with a like-named member */
	member(b, "fsbase", u64, 0);
	type(b, "v", 14, 0, 0, u64), put32(b, 1); /* VAR */
	type(b, "x", 19, 1, 0, 8);		  /* ENUM64 */
	put32(b, str(b, "B")), put32(b, 1), put32(b, 0);
	type(b, "thread_structure", 4, 1, 0, 8); /* a longer name */
	member(b, "fsbase", u64, 0);
	/* task_struct: kind_flag set (bit fields), 'thread' at byte 3088 of type id ts+1 */
	ts = type(b, "task_struct", 4, 5, 1, 3264);
	member(b, "state", u64, 2u << 24 | 0);
	member(b, "flags", u64, 1u << 24 | 8);
	member(b, "threads", arr, 64);
	member(b, "word", u64, 0u << 24 | 192);
	member(b, "thread", ts + 1 + (uint32_t)member_type_mismatch, 24704);
	type(b, "thread_struct", 4, 2, 0, 152);
	member(b, "fs", u64, 256);
	member(b, "fsbase", u64, 320);
	type(b, "thread_struct", 4, 1, 0, 8); /* a second one: ignored */
	member(b, "fsbase", u64, 0);
}

/* build_kernelish's blob, whole, in a memfd */
static int kernelish_fd(struct blob *b, int member_type_mismatch)
{
	build_kernelish(b, member_type_mismatch);
	return blob_fd(b, 0xeB9F, 0);
}

TEST(kbtf_every_chunk_size)
{
	struct blob b;
	int fd;

	fd = kernelish_fd(&b, 0);
	CHECK(fd >= 0);
	for (size_t chunk = 16; chunk <= 300; chunk++) {
		uint32_t off = 0;
		char msg[200] = "";

		CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, chunk, &off, msg, sizeof(msg)), 0);
		CHECK_EQ(off, 3088 + 40);
		if (off != 3128) {
			fprintf(stderr, "  chunk %zu: %s\n", chunk, msg);
			break;
		}
	}
	close(fd);
}

TEST(kbtf_one_step_and_bitfield)
{
	static const struct kbtf_step path[] = {{"task_struct", "flags"}};
	static const struct kbtf_step word[] = {{"task_struct", "word"}};
	struct blob b;
	uint32_t off = 0;
	char msg[200];
	int fd;

	fd = kernelish_fd(&b, 0);
	CHECK_EQ(kbtf_offset(fd, word, 1, 64, &off, msg, sizeof(msg)), 0);
	CHECK_EQ(off, 24);
	/* a 1-bit field at bit 8: byte-aligned, but not a member one can load 8 bytes of */
	CHECK_EQ(kbtf_offset(fd, path, 1, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "in the kernel's BTF, task_struct.flags is a bit field");
	close(fd);
}

TEST(kbtf_errors)
{
	static const struct kbtf_step nope[] = {{"task_struct", "fsbase"}};
	struct blob b;
	uint32_t off = 7;
	char msg[200];
	int fd;

	fd = kernelish_fd(&b, 1);
	CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "in the kernel's BTF, task_struct.thread is not a struct thread_struct");
	CHECK_EQ(kbtf_offset(fd, nope, 1, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "the kernel's BTF has no task_struct.fsbase");
	close(fd);

	build_kernelish(&b, 0);
	fd = blob_fd(&b, 0x9FeB, 0);
	CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "the kernel's BTF has an unknown magic or version");
	close(fd);

	fd = blob_fd(&b, 0xeB9F, 6); /* the last member cut */
	CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "the kernel's BTF ends inside a type");
	close(fd);

	type(&b, "odd", 31, 0, 0, 0);
	fd = blob_fd(&b, 0xeB9F, 0);
	CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "the kernel's BTF has a type of unknown kind 31");
	close(fd);

	fd = memfd_create("empty", 0);
	CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, 64, &off, msg, sizeof(msg)), -1);
	CHECK_STR(msg, "cannot read the kernel's BTF: too short");
	close(fd);
	CHECK_EQ(off, 7);
}

/* bits_offset of MEMBER in STRUCT from bpftool's raw dump, or -1 */
static long dumped_bits(const char *dump, const char *strukt, const char *mem)
{
	char head[128], line[128];
	const char *p;

	snprintf(head, sizeof(head), "] STRUCT '%s' size=", strukt);
	snprintf(line, sizeof(line), "\n\t'%s' type_id=", mem);
	const char *m, *next;

	p = strstr(dump, head);
	if (!p)
		return -1;
	m = strstr(p, line);
	next = strstr(p, "\n[");
	if (!m || (next && m > next))
		return -1; /* no such member before the next type */
	m = strstr(m, "bits_offset=");
	return m ? strtol(m + 12, NULL, 10) : -1;
}

TEST(kbtf_this_kernel_as_bpftool_reads_it)
{
	const char *path = "/sys/kernel/btf/vmlinux";
	FILE *f = popen("bpftool btf dump file /sys/kernel/btf/vmlinux format raw 2>&1", "r");
	size_t cap = 64 << 20, len = 0, got;
	char *dump = malloc(cap);
	long thread, fsbase;
	uint32_t off = 0;
	char msg[200] = "";
	int fd = open(path, O_RDONLY);

	CHECK(f && dump && fd >= 0);
	if (!f || !dump || fd < 0)
		return;
	while (len < cap - 1 && (got = fread(dump + len, 1, cap - 1 - len, f)) > 0)
		len += got;
	dump[len] = '\0';
	pclose(f);
	thread = dumped_bits(dump, "task_struct", "thread");
	fsbase = dumped_bits(dump, "thread_struct", "fsbase");
	CHECK(thread > 0 && fsbase >= 0);
	CHECK_EQ(kbtf_offset(fd, fsbase_path, 2, 64 << 10, &off, msg, sizeof(msg)), 0);
	CHECK_EQ(off, (thread + fsbase) / 8);
	CHECK_STR(msg, "");
	close(fd);
	free(dump);
}

int main(void)
{
	static const struct test_case cases[] = {
		CASE(kbtf_every_chunk_size),
		CASE(kbtf_one_step_and_bitfield),
		CASE(kbtf_errors),
		CASE(kbtf_this_kernel_as_bpftool_reads_it),
	};
	return RUN("kbtf", cases);
}
