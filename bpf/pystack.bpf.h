/* SPDX-License-Identifier: MIT */
/*
 * The Python stack of the thread that hit a probe. Inside libpq calls the thread has released the
 * GIL, so "the current thread state" is NULL: its own PyThreadState is found in the interpreter's
 * list of threads by pthread_self() (the thread pointer, fsbase on x86-64, the same for glibc and
 * musl), remembered per thread and checked on each use. Then the frame chain is walked, reading
 * one block of each frame and sending (code object, instruction pointer, first locals, owner);
 * names and line numbers are resolved in userspace.
 */
#ifndef SQLSPAN_PYSTACK_BPF_H
#define SQLSPAN_PYSTACK_BPF_H

#define PY_MAX_THREADS 256

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct py_cfg);
} pyprocs SEC(".maps");

/* thread id -> its PyThreadState */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} tstates SEC(".maps");

/* an ev_stack with room for its frames */
struct stack_buf {
	struct ev_hdr h;
	__u64 tstate;
	__u32 nframes;
	__u32 flags;
	struct ev_frame frames[SQLSPAN_MAX_FRAMES];
};

_Static_assert(sizeof(struct stack_buf) <= sizeof(struct scratch), "stack_buf fits");

struct frame_buf {
	__u8 b[SQLSPAN_FRAME_READ];
};

/* per thread, like the scratch space (see buffer.bpf.h); an entry fits in struct scratch */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct scratch);
} stackbufs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct scratch);
} framebufs SEC(".maps");

static __always_inline __u64 rd64(__u64 addr)
{
	__u64 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (const void *)addr);
	return v;
}

/* The thread's PyThreadState: remembered, or found in the interpreter's list. */
static __always_inline __u64 py_tstate(struct py_cfg *cfg, __u32 tid)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
	__u64 *cached = bpf_map_lookup_elem(&tstates, &tid);
	__u64 ts, interp;

	if (!fsbase)
		return 0;
	if (cached && *cached && rd64(*cached + cfg->tstate_thread_id) == fsbase)
		return *cached;
	interp = rd64(cfg->runtime + cfg->interp_head);
	if (!interp)
		return 0;
	ts = rd64(interp + cfg->threads_head);
	for (int i = 0; i < PY_MAX_THREADS && ts; i++) {
		if (rd64(ts + cfg->tstate_thread_id) == fsbase) {
			bpf_map_update_elem(&tstates, &tid, &ts, BPF_ANY);
			return ts;
		}
		ts = rd64(ts + cfg->tstate_next);
	}
	return 0;
}

static __always_inline __u64 fb64(struct frame_buf *fb, __s32 off)
{
	return *(__u64 *)&fb->b[off & (SQLSPAN_FRAME_READ - 8)];
}

/*
 * Send the stack of the current thread, keyed like its request (pid_tgid, ts). A global function:
 * the verifier checks it once, not inside every program that calls it.
 */
__noinline int send_stack(struct pt_regs *ctx, __u64 pid_tgid, __u64 ts_key)
{
	__u32 tgid = pid_tgid >> 32, n;
	struct py_cfg *cfg = bpf_map_lookup_elem(&pyprocs, &tgid);
	struct stack_buf *sb;
	struct frame_buf *fb;
	__u64 tstate, frame;
	int i;

	if (!cfg)
		return 0;
	sb = thread_entry(&stackbufs);
	fb = thread_entry(&framebufs);
	if (!sb || !fb)
		return 0;
	/*
	 * The frame count and flags live in the map value, not in registers: the verifier then
	 * sees one state per loop iteration instead of one per possible count.
	 */
	sb->nframes = 0;
	sb->flags = 0;
	tstate = py_tstate(cfg, (__u32)pid_tgid);
	frame = 0;
	if (!tstate) {
		sb->flags |= STACK_NO_THREAD;
	} else {
		frame = rd64(tstate + cfg->tstate_frame);
		if (cfg->cframe_frame >= 0 && frame)
			frame = rd64(frame + cfg->cframe_frame);
	}
	for (i = 0; i < SQLSPAN_MAX_FRAMES && frame; i++) {
		struct ev_frame *f;
		__u64 code;
		__u32 k;
		__u8 owner;

		if (bpf_probe_read_user(fb->b, SQLSPAN_FRAME_READ, (const void *)frame)) {
			/* a small frame at the end of a mapping: read what it surely has */
			__u64 *tail = (__u64 *)&fb->b[96];

			tail[0] = tail[1] = tail[2] = tail[3] = 0;
			if (bpf_probe_read_user(fb->b, 96, (const void *)frame)) {
				sb->flags |= STACK_FAULT;
				break;
			}
		}
		code = fb64(fb, cfg->frame_code);
		frame = fb64(fb, cfg->frame_previous);
		owner = fb->b[cfg->frame_owner & (SQLSPAN_FRAME_READ - 1)];
		if (cfg->code_tagged)
			code &= ~3ULL;
		if (owner == cfg->owner_cstack || owner >= cfg->owner_first_incomplete || !code)
			continue; /* a shim or incomplete frame */
		k = sb->nframes;
		if (k >= cfg->max_frames) {
			sb->flags |= STACK_CUT;
			break;
		}
		f = &sb->frames[k & (SQLSPAN_MAX_FRAMES - 1)];
		f->code = code;
		f->instr = fb64(fb, cfg->frame_instr);
		f->local[0] = fb64(fb, cfg->frame_localsplus);
		f->local[1] = fb64(fb, cfg->frame_localsplus + 8);
		f->local[2] = fb64(fb, cfg->frame_localsplus + 16);
		f->local[3] = fb64(fb, cfg->frame_localsplus + 24);
		f->owner = owner;
		sb->nframes = k + 1;
	}
	if (frame && i >= SQLSPAN_MAX_FRAMES)
		sb->flags |= STACK_CUT;
	hdr_fill(&sb->h, EV_STACK, pid_tgid, ts_key, 0);
	sb->tstate = tstate;
	n = sb->nframes;
	if (n > SQLSPAN_MAX_FRAMES)
		n = SQLSPAN_MAX_FRAMES;
	if (rec_output(ctx, sb, sizeof(struct ev_stack) + (__u64)n * sizeof(struct ev_frame)))
		stat_add(ST_DROP_OTHER, 1);
	return 0;
}

#endif
