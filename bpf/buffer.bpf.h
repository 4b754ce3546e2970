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
 * Waking the reader costs the traced thread an interrupt (a self-IPI: tens of µs on a VM) and a
 * cross-CPU wakeup: records go in quietly, the reader polls on a timer, and is woken early only
 * when what waits in the ring passes a multiple of this many bytes (a burst that could fill it).
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

/*
 * The 8 (4) bytes at `off`, a multiple of 8 (4), in a byte array at an 8-aligned (4-aligned)
 * place: one load. `*(__u64 *)&a[off]` leaves clang unsure of the alignment when off varies, and
 * the BPF backend then reads byte by byte: ~22 instructions a field, in the stack walk's every
 * frame.
 */
#define AL64(a, off) (((const __u64 *)__builtin_assume_aligned((a), 8))[(off) / 8])
#define AL32(a, off) (((const __u32 *)__builtin_assume_aligned((a), 4))[(off) / 4])

/* The 8 bytes at p + off (off a constant), wherever p points: one load, not clang's bytes. */
#define LOAD64U(v, p, off)                                                                         \
	asm volatile("%[v] = *(u64 *)(%[s] + %[o])" : [v] "=r"(v) : [s] "r"(p), [o] "i"(off))

/*
 * The registers the current syscall saved at its entry: a syscall exit's arguments (a typed
 * pointer: its fields are plain loads, no helper call). bpf_loop kernels only (5.15+ have
 * bpf_task_pt_regs).
 */
static __always_inline struct pt_regs *syscall_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

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

/*
 * The ring's wakeup flag for a record of `size` bytes (`in`: reserved, the ring counts it
 * already): wake the reader when the record takes what waits past a multiple of wakeup_bytes,
 * once per multiple. Not at every record past it: while the reader lags (busy, descheduled,
 * stopped) that made every record cost the thread that made it an interrupt (~20-40 µs on this
 * project's VMs), when it could least afford it.
 */
static __always_inline __u64 rb_wake(__u64 size, bool in)
{
	__u64 hi = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	size = ((size + 7) & ~7ULL) + 8; /* as the ring holds it: rounded up, with its header */
	if (!in)
		hi += size;
	/* [hi - size, hi) holds a multiple (a record is far smaller than wakeup_bytes) */
	if (hi < size || hi % wakeup_bytes >= size)
		return BPF_RB_NO_WAKEUP;
	stat_add(ST_WAKEUPS, 1);
	return BPF_RB_FORCE_WAKEUP;
}

/* Returns 0 when the record was handed over, <0 when it was lost (perf buffer full). */
static __always_inline long rec_submit(void *ctx, void *rec, __u32 size)
{
	if (use_ringbuf) {
		bpf_ringbuf_submit(rec, rb_wake(size, true));
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
	if (use_ringbuf)
		return bpf_ringbuf_output(&events, rec, size,
					  wake ? BPF_RB_FORCE_WAKEUP : rb_wake(size, false));
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
 * Records being built in the thread's scratch area, after room for an EV_MSGS header, to go out
 * as one EV_MSGS record (a ring buffer record costs the traced thread more than its bytes).
 */
struct batch {
	__u32 n;   /* records */
	__u32 len; /* their bytes */
};

/* Room in the batch for one more record of up to datasz data bytes? */
static __always_inline bool batch_room(struct batch *b, __u32 datasz)
{
	return b->len + sizeof(struct ev_msg) + datasz <= SQLSPAN_MSGS_MAX;
}

/* Where the next record of the batch is built. */
static __always_inline void *batch_slot(struct scratch *area, struct batch *b)
{
	return &area->bytes[sizeof(struct ev_msgs) + (b->len & (SQLSPAN_MSGS_MAX - 1))];
}

/* The record built at batch_slot, with n data bytes, is part of the batch. */
static __always_inline void batch_add(struct batch *b, __u64 n)
{
	b->len += sizeof(struct ev_msg) + ((n + 7) & ~7ULL);
	b->n++;
}

/*
 * Send the batch, if any, as one EV_MSGS record, and start a new one. 0 if handed over (or
 * empty); else its records are lost (counted here) and the caller marks its stream, so that
 * the next record tells userspace.
 */
static __always_inline int batch_flush(void *ctx, struct batch *bt, struct scratch *area,
				       __u64 pid_tgid, __u64 ts)
{
	struct ev_msgs *b = (void *)area->bytes;
	__u32 n = bt->n, len = bt->len;

	if (!n)
		return 0;
	bt->n = 0;
	bt->len = 0;
	if (len > SQLSPAN_MSGS_MAX)
		return 0; /* never: the builders check batch_room */
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

/*
 * A window on a buffer in user memory: its first WIN_BYTES bytes, copied in one read (a user
 * memory read costs about the same for 5 bytes as for 256), so that the headers and short bodies
 * of a typical read or send come from the copy. Room after them: copies out stay in bounds.
 */
#define WIN_BYTES 256
/* reads through a window: fewer bytes than this (SQLSPAN_MSG_LONG, FRONT_BAT_DATA) */
#define WIN_READ_MAX 512

struct win {
	__u32 len; /* bytes of the buffer held (0: none) */
	__u32 _pad;
	__u8 bytes[2 * WIN_BYTES];
};

/* Copy the first bytes of the n at buf. */
static __noinline void win_fill(struct win *wn, __u64 buf, __u32 n)
{
	__u32 k = n < WIN_BYTES ? n : WIN_BYTES;

	k = ((k - 1) & (WIN_BYTES - 1)) + 1; /* as it was: 1 to WIN_BYTES, the verifier sure */
	wn->len = n && !bpf_probe_read_user(wn->bytes, k, (const void *)buf) ? k : 0;
}

/* n (< WIN_READ_MAX) bytes at offset off of the buffer at buf: from the window if it has them. */
static __always_inline long win_bytes(struct win *wn, __u64 buf, void *dst, __u32 n, __u64 off)
{
	__u64 k = n;

	if (n == 1 && off < wn->len) { /* a header's byte: a plain load */
		*(__u8 *)dst = wn->bytes[off & (WIN_BYTES - 1)];
		return 0;
	}
	/* the masks, kept from the compiler: the verifier sure of the size */
	if (n < WIN_BYTES && off + n <= wn->len) {
		asm volatile("%[k] &= %[mask]" : [k] "+r"(k) : [mask] "i"(WIN_BYTES - 1));
		return bpf_probe_read_kernel(dst, k, &wn->bytes[off & (WIN_BYTES - 1)]);
	}
	asm volatile("%[k] &= %[mask]" : [k] "+r"(k) : [mask] "i"(WIN_READ_MAX - 1));
	return bpf_probe_read_user(dst, k, (const void *)(buf + off));
}

/* win_bytes as a call of its own (win_data's rare case: the verifier follows it once) */
static __noinline long win_read(struct win *wn, __u64 buf, void *dst, __u32 n, __u64 off)
{
	return win_bytes(wn, buf, dst, n, off);
}

/* Message data copied from the window by plain loads (win_data): up to this many bytes. */
#define WIN_DATA_WORDS 8
_Static_assert(sizeof(struct ev_msgs) % 8 == 0 && sizeof(struct ev_msg) % 8 == 0 &&
		       sizeof(struct ev_fmsg) % 8 == 0,
	       "records in a batch start 8-aligned (win_data's stores)");
_Static_assert(SQLSPAN_MSG_SHORT >= WIN_DATA_WORDS * 8, "room for win_data's words");

/*
 * A record's data: n (< WIN_READ_MAX) bytes at offset off of the buffer at buf, to dst, which has
 * room for WIN_DATA_WORDS words at least. Up to that many bytes held by the window are copied by
 * plain loads and stores, a word at a time, whatever n is (no branches for the verifier to follow,
 * no helper call, whose checks cost more than the copy), and the bytes of the last word past n
 * cleared (the rest of the copy is not part of the record); else as win_bytes.
 */
static __always_inline long win_data(struct win *wn, __u64 buf, void *dst, __u32 n, __u64 off)
{
	const __u8 *src = &wn->bytes[off & (WIN_BYTES - 1)];
	__u64 *d = __builtin_assume_aligned(dst, 8), v, last;

	if (n > WIN_DATA_WORDS * 8 || off + n > wn->len)
		return win_read(wn, buf, dst, n, off);
#pragma unroll
	for (int i = 0; i < WIN_DATA_WORDS; i++) {
		LOAD64U(v, src, i * 8);
		d[i] = v;
	}
	/* (n a multiple of 8: the word after the data, all kept) */
	last = (n >> 3) & (WIN_DATA_WORDS - 1);
	d[last] &= ~0ULL >> ((64 - (n & 7) * 8) & 63);
	return 0;
}

/*
 * A message header (5 bytes) at offset off: by plain loads from the window if it has it (no
 * helper call), else read. 0 on success.
 */
static __always_inline long win_hdr(struct win *wn, __u64 buf, __u8 *hdr, __u32 off)
{
	const __u8 *p;

	if (off + 5 > wn->len || off >= WIN_BYTES)
		return bpf_probe_read_user(hdr, 5, (const void *)(buf + off));
	p = &wn->bytes[off & (WIN_BYTES - 1)];
	hdr[0] = p[0];
	hdr[1] = p[1];
	hdr[2] = p[2];
	hdr[3] = p[3];
	hdr[4] = p[4];
	return 0;
}

#endif
