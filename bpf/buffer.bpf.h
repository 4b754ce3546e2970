/* SPDX-License-Identifier: MIT */
/*
 * Transport for records: the BPF ring buffer, or per-CPU perf buffers where the ring buffer is
 * missing or the user forced them (--perf-buffer). The loader switches the map type of `events`
 * and sets `use_ringbuf` before load; this file hides the difference behind reserve/submit.
 */
#ifndef SQLSPAN_BUFFER_BPF_H
#define SQLSPAN_BUFFER_BPF_H

const volatile bool use_ringbuf = true;
/*
 * Waking the reader costs the traced thread an interrupt and a cross-CPU wakeup per record:
 * records go in quietly, the reader polls on a timer, and is woken early only when this many
 * bytes wait in the ring (a burst that could fill it).
 */
const volatile __u64 wakeup_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/*
 * Scratch space to build records in, one per thread, not per CPU: on recent kernels uprobe and
 * syscall programs can be preempted, and another thread's program on the same CPU would
 * overwrite a per-CPU buffer still in use.
 */
struct scratch {
	__u8 bytes[8192];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct scratch);
} scratches SEC(".maps");

/* zeroes to create a thread's entries from (never written) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} zeroes SEC(".maps");

/* The calling thread's entry in a per-thread map, created on first use. */
static __always_inline void *thread_entry(void *map)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), zero = 0;
	void *p = bpf_map_lookup_elem(map, &tid), *z;

	if (p)
		return p;
	z = bpf_map_lookup_elem(&zeroes, &zero);
	if (!z)
		return NULL;
	bpf_map_update_elem(map, &tid, z, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, &tid);
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += n;
}

static __always_inline void *rec_reserve(__u32 size)
{
	if (use_ringbuf)
		return bpf_ringbuf_reserve(&events, size, 0);
	return thread_entry(&scratches);
}

/* Returns 0 when the record was handed over, <0 when it was lost (perf buffer full). */
static __always_inline long rec_submit(void *ctx, void *rec, __u32 size)
{
	if (use_ringbuf) {
		__u64 flags = BPF_RB_NO_WAKEUP;

		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes)
			flags = BPF_RB_FORCE_WAKEUP;
		bpf_ringbuf_submit(rec, flags);
		return 0;
	}
	return bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, rec, size);
}

/*
 * Send `size` bytes of a record built in the per-CPU scratch area (variable-size records);
 * `wake`: wake the reader now (the record must be read while the process is still in the call).
 */
static __always_inline long rec_output_w(void *ctx, void *rec, __u64 size, bool wake)
{
	if (use_ringbuf) {
		__u64 flags = BPF_RB_NO_WAKEUP;

		if (wake || bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes)
			flags = BPF_RB_FORCE_WAKEUP;
		return bpf_ringbuf_output(&events, rec, size, flags);
	}
	return bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, rec, size);
}

static __always_inline long rec_output(void *ctx, void *rec, __u64 size)
{
	return rec_output_w(ctx, rec, size, false);
}

static __always_inline void *scratch_get(void)
{
	return thread_entry(&scratches);
}

/* The same, as a call of its own: the caller's stack stays small (see request.bpf.h). */
static __noinline struct scratch *scratch_area(void)
{
	return thread_entry(&scratches);
}

static __always_inline void rec_discard(void *rec)
{
	if (use_ringbuf)
		bpf_ringbuf_discard(rec, 0);
}

static __always_inline void hdr_fill(struct ev_hdr *h, __u32 kind, __u64 pid_tgid, __u64 ts,
				     __u32 flags)
{
	h->kind = kind;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->flags = flags;
	h->ts = ts;
}

/*
 * Send the n records (len bytes) built after room for an EV_MSGS header at the start of the
 * thread's scratch area, as one EV_MSGS record. 0 if handed over; else they are lost (counted
 * here) and the caller marks its stream, so that the next record tells userspace.
 */
static __always_inline int batch_send(void *ctx, void *bat, __u64 pid_tgid, __u64 ts, __u32 n,
				      __u32 len)
{
	struct ev_msgs *b = bat;

	if (len > SQLSPAN_MSGS_MAX)
		return 0; /* never: the builders send before */
	hdr_fill(&b->h, EV_MSGS, pid_tgid, ts, 0);
	b->count = n;
	b->len = len;
	if (rec_output(ctx, b, sizeof(*b) + len)) {
		stat_add(ST_DROP_MSG, n);
		return -1;
	}
	stat_add(ST_MSGS, n);
	return 0;
}

#endif
