// SPDX-License-Identifier: MIT
/* Uprobes of one process: uprobe_multi links where the kernel has them (see ulink.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "ulink.h"

/* from Linux 6.6's UAPI (the system's headers may be older) */
#define ULINK_TRACE_UPROBE_MULTI    48
#define ULINK_F_UPROBE_MULTI_RETURN 1

/* union bpf_attr's link_create, as Linux 6.6 lays it out for uprobe_multi */
struct ulink_create_attr {
	uint32_t prog_fd;
	uint32_t target_fd;
	uint32_t attach_type;
	uint32_t flags;
	uint64_t path;
	uint64_t offsets;
	uint64_t ref_ctr_offsets;
	uint64_t cookies;
	uint32_t cnt;
	uint32_t multi_flags;
	uint32_t pid;
	uint32_t _pad;
};

static bool multi;

static int link_create_multi(int prog_fd, const char *path, const uint64_t *off, uint32_t flags,
			     pid_t pid)
{
	union bpf_attr attr;
	struct ulink_create_attr *a = (struct ulink_create_attr *)&attr;
	int fd;

	_Static_assert(sizeof(struct ulink_create_attr) <= sizeof(union bpf_attr),
		       "link_create within bpf_attr");
	memset(&attr, 0, sizeof(attr));
	a->prog_fd = prog_fd;
	a->attach_type = ULINK_TRACE_UPROBE_MULTI;
	a->path = (uint64_t)(uintptr_t)path;
	a->offsets = (uint64_t)(uintptr_t)off;
	a->cnt = 1;
	a->multi_flags = flags;
	a->pid = (uint32_t)pid;
	fd = (int)syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(*a));
	return fd < 0 ? -errno : fd;
}

/*
 * As libbpf probes it: a program of that attach type loads, a link on "/" fails for the path
 * (EBADF: the link type exists), and one for PID -1 fails for the PID first (EINVAL: the PID
 * filter is per process; the first kernels with these links filtered by thread).
 */
static bool probe_multi(void)
{
	const struct bpf_insn insns[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
		{.code = BPF_JMP | BPF_EXIT},
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts,
		    .expected_attach_type = (enum bpf_attach_type)ULINK_TRACE_UPROBE_MULTI);
	uint64_t off = 0;
	int prog, r1, r2;

	prog = bpf_prog_load(BPF_PROG_TYPE_KPROBE, NULL, "GPL", insns, 2, &opts);
	if (prog < 0)
		return false;
	r1 = link_create_multi(prog, "/", &off, 0, 0);
	r2 = r1 == -EBADF ? link_create_multi(prog, "/", &off, 0, -1) : 0;
	if (r1 >= 0)
		close(r1);
	if (r2 >= 0)
		close(r2);
	close(prog);
	return r1 == -EBADF && r2 == -EINVAL;
}

bool ulink_multi_supported(void)
{
	static int known = -1;

	if (known < 0)
		known = probe_multi();
	return known;
}

void ulink_use_multi(struct bpf_object *obj)
{
	struct bpf_program *prog;

	multi = true;
	bpf_object__for_each_program(prog, obj)
	{
		if (bpf_program__type(prog) == BPF_PROG_TYPE_KPROBE)
			bpf_program__set_expected_attach_type(
				prog, (enum bpf_attach_type)ULINK_TRACE_UPROBE_MULTI);
	}
}

int ulink_attach(struct ulink *u, const struct bpf_program *prog, bool ret, pid_t pid,
		 const char *path, uint64_t foff)
{
	int r;

	memset(u, 0, sizeof(*u));
	if (!multi) {
		u->link = bpf_program__attach_uprobe(prog, ret, pid, path, foff);
		return u->link ? 0 : -1;
	}
	r = link_create_multi(bpf_program__fd(prog), path, &foff,
			      ret ? ULINK_F_UPROBE_MULTI_RETURN : 0, pid);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	u->fd = r;
	u->is_multi = true;
	return 0;
}

void ulink_destroy(struct ulink *u)
{
	if (u->link)
		bpf_link__destroy(u->link);
	if (u->is_multi)
		close(u->fd);
	memset(u, 0, sizeof(*u));
}
