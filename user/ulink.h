/* SPDX-License-Identifier: MIT */
/*
 * A uprobe of one process, attached the cheapest way the kernel offers. A uprobe attached as a
 * perf event on the process (the classic way) puts a perf event in the task's context, and the
 * kernel then schedules every such event in and out at each of the task's context switches:
 * measured here at ~2.4 µs per statement of a psycopg2 app (two switches per statement) for
 * libssl's 7 probes that were never even hit. A uprobe_multi link (Linux 6.6+, with the
 * process-wide PID filter of later fixes) filters by process inside the uprobe itself and costs
 * nothing until hit. Kernels without it keep perf-event uprobes.
 */
#ifndef SQLSPAN_ULINK_H
#define SQLSPAN_ULINK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct bpf_object;
struct bpf_program;
struct bpf_link;

/* Zeroed: no probe. */
struct ulink {
	struct bpf_link *link; /* a perf-event uprobe */
	int fd;		       /* or a uprobe_multi link's, if is_multi */
	bool is_multi;
};

/* Does this kernel have uprobe_multi links with a process-wide PID filter? (probed once) */
bool ulink_multi_supported(void);

/*
 * Before the object is loaded: its uprobe programs are to be attached as uprobe_multi links
 * (they must be loaded for that attach type, and then can only be attached so).
 */
void ulink_use_multi(struct bpf_object *obj);

/*
 * Attach prog at file offset foff of path, for process pid only (a return probe if ret), as
 * ulink_use_multi said. 0 on success; -1 with errno set.
 */
int ulink_attach(struct ulink *u, const struct bpf_program *prog, bool ret, pid_t pid,
		 const char *path, uint64_t foff);

/* Detach (nothing if u holds no probe); u then holds none. */
void ulink_destroy(struct ulink *u);

#endif
