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

/* an ev_stack with room for its frames, and the walk's own variables after them */
struct stack_buf {
	struct ev_hdr h;
	__u64 tstate;
	__u32 nframes;
	__u32 flags;
	struct ev_frame frames[SQLSPAN_MAX_FRAMES];
	/* not sent: */
	__u64 frame;  /* the frame being read */
	__u64 fsbase; /* the thread pointer: pthread_self() */
	__u32 tid;
	__u32 _pad;
	__u8 fb[SQLSPAN_FRAME_READ]; /* one frame's first bytes */
};

_Static_assert(sizeof(struct stack_buf) <= sizeof(struct scratch), "stack_buf fits");

/* per thread, like the scratch space (see buffer.bpf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct stack_buf);
} stackbufs SEC(".maps");

static __always_inline __u64 rd64(__u64 addr)
{
	__u64 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (const void *)addr);
	return v;
}

struct walk_ctx {
	struct py_cfg *cfg;
	struct stack_buf *sb;
};

/* One step through the interpreter's list of thread states (sb->frame); 1 when done. */
static long thread_cb(__u32 i, void *data)
{
	struct walk_ctx *wc = data;
	struct stack_buf *sb = wc->sb;

	(void)i;
	if (!sb->frame)
		return 1;
	if (rd64(sb->frame + wc->cfg->tstate_thread_id) == sb->fsbase) {
		sb->tstate = sb->frame;
		return 1;
	}
	sb->frame = rd64(sb->frame + wc->cfg->tstate_next);
	return 0;
}

/*
 * The thread's PyThreadState (into sb->tstate): remembered, or found in the interpreter's list.
 * LOOPED: with bpf_loop (5.17+), else a bounded loop.
 */
#define DEFINE_PY_TSTATE(NAME, LOOPED)                                                             \
	static __noinline void NAME(struct py_cfg *cfg, struct stack_buf *sb)                      \
	{                                                                                          \
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();           \
		struct walk_ctx wc = {.cfg = cfg, .sb = sb};                                       \
		__u64 *cached;                                                                     \
                                                                                                   \
		sb->tstate = 0;                                                                    \
		sb->fsbase = BPF_CORE_READ(task, thread.fsbase);                                   \
		if (!sb->fsbase)                                                                   \
			return;                                                                    \
		cached = bpf_map_lookup_elem(&tstates, &sb->tid);                                  \
		if (cached && *cached && rd64(*cached + cfg->tstate_thread_id) == sb->fsbase) {    \
			sb->tstate = *cached;                                                      \
			return;                                                                    \
		}                                                                                  \
		sb->frame = rd64(cfg->runtime + cfg->interp_head); /* the interpreter */           \
		if (!sb->frame)                                                                    \
			return;                                                                    \
		sb->frame = rd64(sb->frame + cfg->threads_head); /* its first thread state */      \
		if (LOOPED) {                                                                      \
			bpf_loop(PY_MAX_THREADS, thread_cb, &wc, 0);                               \
		} else {                                                                           \
			for (int i = 0; i < PY_MAX_THREADS; i++) {                                 \
				if (thread_cb(i, &wc))                                             \
					break;                                                     \
			}                                                                          \
		}                                                                                  \
		if (sb->tstate)                                                                    \
			bpf_map_update_elem(&tstates, &sb->tid, &sb->tstate, BPF_ANY);             \
	}

static __always_inline __u64 fb64(struct stack_buf *sb, __s32 off)
{
	return *(__u64 *)&sb->fb[off & (SQLSPAN_FRAME_READ - 8)];
}

/* Read one frame into sb->fb; 0 on success. */
static __noinline int py_read_frame(struct stack_buf *sb)
{
	if (!bpf_probe_read_user(sb->fb, SQLSPAN_FRAME_READ, (const void *)sb->frame))
		return 0;
	/* a small frame at the end of a mapping: read what it surely has */
	*(__u64 *)&sb->fb[96] = 0;
	*(__u64 *)&sb->fb[104] = 0;
	*(__u64 *)&sb->fb[112] = 0;
	*(__u64 *)&sb->fb[120] = 0;
	return bpf_probe_read_user(sb->fb, 96, (const void *)sb->frame) ? -1 : 0;
}

/* Add the frame in sb->fb to the record, unless it is a shim; 1 when the record is full. */
static __noinline int py_add_frame(struct py_cfg *cfg, struct stack_buf *sb)
{
	__u64 code = fb64(sb, cfg->frame_code);
	__u8 owner = sb->fb[cfg->frame_owner & (SQLSPAN_FRAME_READ - 1)];
	struct ev_frame *f;
	__u32 k;

	if (cfg->code_tagged)
		code &= ~3ULL;
	if (owner == cfg->owner_cstack || owner >= cfg->owner_first_incomplete || !code)
		return 0; /* a shim or incomplete frame */
	k = sb->nframes;
	if (k >= cfg->max_frames || k >= SQLSPAN_MAX_FRAMES - 1) {
		sb->flags |= STACK_CUT;
		return 1;
	}
	f = &sb->frames[k & (SQLSPAN_MAX_FRAMES - 1)];
	f->code = code;
	f->instr = fb64(sb, cfg->frame_instr);
	f->local[0] = fb64(sb, cfg->frame_localsplus);
	f->local[1] = fb64(sb, cfg->frame_localsplus + 8);
	f->local[2] = fb64(sb, cfg->frame_localsplus + 16);
	f->local[3] = fb64(sb, cfg->frame_localsplus + 24);
	f->owner = owner;
	sb->nframes = k + 1;
	return 0;
}

/* One frame of the walk (sb->frame); 1 when the walk is over. */
static long frame_cb(__u32 i, void *data)
{
	struct walk_ctx *wc = data;
	struct stack_buf *sb = wc->sb;

	(void)i;
	if (!sb->frame)
		return 1;
	if (py_read_frame(sb)) {
		sb->flags |= STACK_FAULT;
		return 1;
	}
	if (py_add_frame(wc->cfg, sb))
		return 1;
	sb->frame = fb64(sb, wc->cfg->frame_previous);
	return 0;
}

/* Walk the frames from sb->frame into the record. LOOPED: with bpf_loop (5.17+). */
#define DEFINE_PY_FRAMES(NAME, LOOPED)                                                             \
	static __noinline void NAME(struct py_cfg *cfg, struct stack_buf *sb)                      \
	{                                                                                          \
		struct walk_ctx wc = {.cfg = cfg, .sb = sb};                                       \
                                                                                                   \
		if (LOOPED) {                                                                      \
			bpf_loop(SQLSPAN_MAX_FRAMES, frame_cb, &wc, 0);                            \
		} else {                                                                           \
			for (int i = 0; i < SQLSPAN_MAX_FRAMES; i++) {                             \
				if (frame_cb(i, &wc))                                              \
					break;                                                     \
			}                                                                          \
		}                                                                                  \
	}

/*
 * Send the stack of the current thread, keyed like its request (pid_tgid, ts). Global functions:
 * the verifier checks each once. Their variables live in the thread's stack_buf (see
 * request.bpf.h on why the stack stays small).
 */
#define DEFINE_SEND_STACK(NAME, TSTATE, FRAMES, PRE, CTX)                                          \
	PRE __noinline int NAME(CTX *ctx, __u64 pid_tgid, __u64 ts_key)                            \
	{                                                                                          \
		__u32 tgid = pid_tgid >> 32;                                                       \
		struct py_cfg *cfg = bpf_map_lookup_elem(&pyprocs, &tgid);                         \
		struct stack_buf *sb;                                                              \
		__u64 n;                                                                           \
                                                                                                   \
		if (!cfg)                                                                          \
			return 0;                                                                  \
		sb = thread_entry(&stackbufs);                                                     \
		if (!sb)                                                                           \
			return 0;                                                                  \
		hdr_fill(&sb->h, EV_STACK, pid_tgid, ts_key, 0);                                   \
		sb->tid = (__u32)pid_tgid;                                                         \
		sb->nframes = 0;                                                                   \
		sb->flags = 0;                                                                     \
		TSTATE(cfg, sb);                                                                   \
		sb->frame = 0;                                                                     \
		if (!sb->tstate) {                                                                 \
			sb->flags |= STACK_NO_THREAD;                                              \
		} else {                                                                           \
			sb->frame = rd64(sb->tstate + cfg->tstate_frame);                          \
			if (cfg->cframe_frame >= 0 && sb->frame)                                   \
				sb->frame = rd64(sb->frame + cfg->cframe_frame);                   \
		}                                                                                  \
		FRAMES(cfg, sb);                                                                   \
		if (sb->frame && !(sb->flags & (STACK_FAULT | STACK_CUT)))                         \
			sb->flags |= STACK_CUT;                                                    \
		/* at most 127 frames (py_add_frame): the mask is exact and the verifier sure */   \
		n = sb->nframes;                                                                   \
		asm volatile("%[n] &= %[mask]"                                                     \
			     : [n] "+r"(n)                                                         \
			     : [mask] "i"(SQLSPAN_MAX_FRAMES - 1));                                \
		if (rec_output(ctx, sb, sizeof(struct ev_stack) + n * sizeof(struct ev_frame)))    \
			stat_add(ST_DROP_OTHER, 1);                                                \
		return 0;                                                                          \
	}

DEFINE_PY_TSTATE(py_tstate, 0)
DEFINE_PY_TSTATE(py_tstate_loop, 1)
DEFINE_PY_FRAMES(py_frames, 0)
DEFINE_PY_FRAMES(py_frames_loop, 1)
DEFINE_SEND_STACK(send_stack, py_tstate, py_frames, , struct pt_regs)
DEFINE_SEND_STACK(send_stack_loop, py_tstate_loop, py_frames_loop, , struct pt_regs)
/* for syscall tracepoints (wire sockets): static, so verified with its caller's context */
DEFINE_SEND_STACK(send_stack_tp, py_tstate_loop, py_frames_loop, static, void)

#endif
