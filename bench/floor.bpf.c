// SPDX-License-Identifier: MIT
/* An empty uprobe program: what one probe hit costs, with nothing done in it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("uprobe")
int empty(void *ctx)
{
	return 0;
}

/* An empty syscall tracepoint program (attached to each of sqlspan's syscall tracepoints). */
SEC("tracepoint")
int empty_tp(void *ctx)
{
	return 0;
}
