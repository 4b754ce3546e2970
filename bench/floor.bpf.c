// SPDX-License-Identifier: MIT
/* An empty uprobe program: what one probe hit costs, with nothing done in it; and one that reads. */
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

/* where `reader` reads (set by floor between runs), and how many of its reads failed */
__u64 read_at;
__u64 read_failed;

/* An 8-byte read of the thread's memory: what each of the BPF side's reads costs the thread. */
SEC("uprobe")
int reader(void *ctx)
{
	__u64 v;

	if (bpf_probe_read_user(&v, sizeof(v), (const void *)read_at))
		__sync_fetch_and_add(&read_failed, 1);
	return 0;
}

/*
 * What a call costs inside a BPF program: CALLS calls of a BPF function (call and return), or of
 * a helper, against the same loop with the work inline. Where the kernel mitigates SRSO or
 * Retbleed, every return goes through a return thunk: the BPF side's design counts calls.
 */
#define CALLS 64
__u64 sink;

__noinline int floor_step(int x)
{
	return x + 1;
}

/* One program: CALLS steps of STEP(x), each kept from the compiler; sink = CALLS when run. */
#define CALL_LOOP(NAME, STEP)                                                                      \
	SEC("uprobe")                                                                              \
	int NAME(void *ctx)                                                                        \
	{                                                                                          \
		int x = 0;                                                                         \
                                                                                                   \
		for (int i = 0; i < CALLS; i++) {                                                  \
			x = STEP(x);                                                               \
			asm volatile("" : "+r"(x));                                                \
		}                                                                                  \
		sink = x;                                                                          \
		return 0;                                                                          \
	}

#define INLINE_STEP(x) ((x) + 1)
#define HELPER_STEP(x) ((x) + 1 + (int)(bpf_get_prandom_u32() & 0))

CALL_LOOP(calls_inline, INLINE_STEP)
CALL_LOOP(calls_bpf, floor_step)
CALL_LOOP(calls_helper, HELPER_STEP)
