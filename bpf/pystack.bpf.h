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

/* Python stacks are read at all (not --no-python): set by the loader, spares a lookup a request. */
const volatile bool python_stacks = true;

/*
 * Where task_struct.thread.fsbase is in this kernel, read off its BTF by the loader (kbtf.c):
 * sqlspan needs no CO-RE relocation, so libbpf never loads the kernel's 5 MiB BTF at attach.
 */
const volatile __u32 task_fsbase_off = 0;

/* thread id -> its PyThreadState */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} tstates SEC(".maps");

/* long-lived code objects and their identity, checked by userspace (sqlspan.h) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SQLSPAN_HOT_CODES);
	__type(key, __u32);
	__type(value, struct hot_code);
} hot_codes SEC(".maps");

/*
 * Frames are read through a window: from 3.11 on, the frames of functions called from Python
 * sit one after the other in the thread's data stack, each caller below its callee, so one read
 * of the PY_WIN bytes that end with a frame usually holds its callers too (a user memory read
 * costs about the same for 8 bytes as for 4 KiB). The window lives in the thread's scratch area.
 */
#define PY_WIN 4096

/* pages remembered per thread where a window from below failed: data stack chunks' first */
#define PY_WIN_BAD 8

#define HOT_SEEN (1u << 31) /* stack_buf.hot: the code object is in hot_codes */

/* An object's fields are read with one read of its first PY_OB bytes (ob_load, ob64). */
#define PY_OB 256

/* an ev_stack with room for its frames, and the walk's own variables after them */
struct stack_buf {
	struct ev_hdr h;
	__u64 tstate;
	__u32 nframes;
	__u32 flags;
	__u64 sa_type;
	__u64 sa_engine;
	__u64 sa_conn;
	__u64 gs_self_type;
	__u64 st_tx_type;
	__u64 task_handle_type;
	__u64 task_cb_type;
	__u64 task_obj;
	__u64 task_num;
	__u32 task_kind;
	__u32 task_len;
	char task_name[SQLSPAN_TASK_NAME];
	struct ev_frame frames[SQLSPAN_MAX_FRAMES];
	/* not sent: */
	__u64 frame;	/* the frame being read */
	__u64 fsbase;	/* the thread pointer: pthread_self() */
	__u64 gs_frame; /* greenlet_spawn's frame on this stack */
	__u64 gframe;	/* the innermost frame of the greenlet it holds */
	__u64 gtmp;
	__u64 gs_conn;	 /* greenlet_spawn's function is a bound method of this Connection */
	__u64 gs_engine; /* and its engine */
	__u64 win_lo;	 /* the window holds [win_lo, win_lo + win_len) of the process */
	__u32 win_len;	 /* 0: no window */
	__u32 win_try;	 /* the last frame was on a data stack: read a window for the next */
	__u32 site;	 /* a frame of the application's own code was added (HOT_APP) */
	__u32 hot;	 /* the frame just added: HOT_SEEN | its hot_code.flags, or 0 */
	__u32 tid;
	__u32 glet;		     /* walking the greenlet's frames */
	char name[24];		     /* a name being compared */
	__u8 fb[SQLSPAN_FRAME_READ]; /* one frame's first bytes */
	__u64 ob_addr;		     /* ob holds [ob_addr, ob_addr + ob_len) of the process */
	__u32 ob_len;
	__u32 tstate_tgid; /* the process of: */
	__u64 tstate_seen; /* the thread's PyThreadState, as last found (bpf_loop kernels) */
	__u64 win_bad_pg[PY_WIN_BAD]; /* pages whose frames' window from below failed */
	__u32 win_bad_at;	      /* where the next one goes */
	__u32 top_win;		      /* the last walk's top frame had its caller just below */
	__u8 ob[PY_OB];		      /* an object's first bytes (ob_load) */
};

_Static_assert(sizeof(struct stack_buf) <= sizeof(struct scratch), "stack_buf fits");
_Static_assert(!(__builtin_offsetof(struct stack_buf, fb) & 7) &&
		       !(__builtin_offsetof(struct stack_buf, ob) & 7),
	       "fb and ob are 8-aligned (AL64)");
/* its first bytes are sent as they are: an ev_stack, field for field */
_Static_assert(__builtin_offsetof(struct stack_buf, frames) == sizeof(struct ev_stack) &&
		       __builtin_offsetof(struct stack_buf, task_name) ==
			       __builtin_offsetof(struct ev_stack, task_name) &&
		       __builtin_offsetof(struct stack_buf, sa_type) ==
			       __builtin_offsetof(struct ev_stack, sa_type) &&
		       __builtin_offsetof(struct stack_buf, sa_conn) ==
			       __builtin_offsetof(struct ev_stack, sa_conn),
	       "stack_buf starts as an ev_stack");

/* per thread, like the scratch space (see buffer.bpf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct stack_buf);
} stackbufs SEC(".maps");

/*
 * A read of the thread's memory for the walk's frames and objects, on bpf_loop kernels (the
 * bounded-loop programs' verifier budget has no room for the count). One that fails is counted
 * (sqlspan -v shows them): a failed read is a page fault the kernel does not serve, as dear as a
 * probe's trap on some hypervisors (bench/floor), so the walk must never make them routinely.
 */
static __always_inline long py_read_if(bool count, void *dst, __u32 n, const void *src)
{
	long err = bpf_probe_read_user(dst, n, src);

	if (err && count)
		stat_add(ST_PY_READ_FAILED, 1);
	return err;
}

static __always_inline long py_read_counted(void *dst, __u32 n, const void *src)
{
	return py_read_if(true, dst, n, src);
}

/* A C string (a type's tp_name) is "_AsyncIoGreenlet"? */
static __always_inline bool str_is_c(struct stack_buf *sb, __u64 addr)
{
	const char want[] = "_AsyncIoGreenlet";

	if (!addr || bpf_probe_read_user(sb->name, sizeof(want), (const void *)addr))
		return false;
	for (__u32 i = 0; i < sizeof(want); i++) {
		if (sb->name[i] != want[i])
			return false;
	}
	return true;
}

static __always_inline __u64 rd64(__u64 addr)
{
	__u64 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (const void *)addr);
	return v;
}

static __always_inline __u32 rd32(__u64 addr)
{
	__u32 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (const void *)addr);
	return v;
}

/*
 * The first n bytes (at most PY_OB) of the object at addr, in one read: its fields then come from
 * the copy (ob64), not one read each (a read costs about the same for 8 bytes as for 256). A
 * read that fails (an object at the end of a mapping) leaves the copy empty: ob64 then reads
 * fields one by one. 1 if the copy holds all n bytes: then OB64 takes fields from it by a plain
 * load, with no branch for the verifier to follow (where a failed read may just give up).
 */
static __noinline int ob_load(struct stack_buf *sb, __u64 addr, __u32 n)
{
	__u32 k = n < PY_OB ? n : PY_OB;

	k = ((k - 1) & (PY_OB - 1)) + 1; /* 1 to PY_OB, the verifier sure */
	sb->ob_len = 0;
	if (addr && !py_read_counted(sb->ob, k, (const void *)addr)) {
		sb->ob_addr = addr;
		sb->ob_len = k;
	}
	return sb->ob_len && n <= PY_OB;
}

/* The 8 bytes at off (8-aligned, inside the n bytes) of the object ob_load copied and said so. */
#define OB64(sb, off) AL64((sb)->ob, (off) & (PY_OB - 8))

/* The 8 bytes at off (8-aligned) in the object at addr: from ob_load's copy if it has them. */
static __always_inline __u64 ob64(struct stack_buf *sb, __u64 addr, __u64 off)
{
	if (addr == sb->ob_addr && !(off & 7) && off + 8 <= sb->ob_len)
		return AL64(sb->ob, off & (PY_OB - 8));
	return rd64(addr + off);
}

/* The same for 4 bytes (4-aligned). */
static __always_inline __u32 ob32(struct stack_buf *sb, __u64 addr, __u64 off)
{
	if (addr == sb->ob_addr && !(off & 3) && off + 4 <= sb->ob_len)
		return AL32(sb->ob, off & (PY_OB - 4));
	return rd32(addr + off);
}

/* A dict's bytes to read: its type, keys and values pointers. */
static __always_inline __u32 dict_read(struct py_cfg *cfg)
{
	__s32 off = cfg->dict_keys > cfg->dict_values ? cfg->dict_keys : cfg->dict_values;

	return (off & 0xff) + 8;
}

/* PyThreadState's bytes to read for its thread id and frame pointer, both 8-aligned. */
static __always_inline __u32 tstate_read(struct py_cfg *cfg)
{
	__s32 off = cfg->tstate_thread_id > cfg->tstate_frame ? cfg->tstate_thread_id
							      : cfg->tstate_frame;

	return (off & 0xff) + 8;
}

struct walk_ctx {
	struct py_cfg *cfg;
	struct stack_buf *sb;
};

/* the frame walk's: the same, and the frame window */
struct frames_ctx {
	struct py_cfg *cfg;
	struct stack_buf *sb;
	struct scratch *win;
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
		struct walk_ctx wc = {.cfg = cfg, .sb = sb};                                       \
		__u64 *cached;                                                                     \
                                                                                                   \
		sb->tstate = 0;                                                                    \
		if (LOOPED) { /* a typed pointer: a plain load, no helper call */                  \
			sb->fsbase =                                                               \
				*(__u64 *)((char *)bpf_get_current_task_btf() + task_fsbase_off);  \
		} else {                                                                           \
			bpf_probe_read_kernel(&sb->fsbase, sizeof(sb->fsbase),                     \
					      (char *)bpf_get_current_task() + task_fsbase_off);   \
		}                                                                                  \
		if (!sb->fsbase)                                                                   \
			return;                                                                    \
		/* bpf_loop kernels: the thread's own stack_buf remembers it (no lookup) */        \
		/* (its thread id and frame pointer in one read: ob_load, OB64) */                 \
		if (LOOPED && sb->tstate_seen && sb->tstate_tgid == sb->h.pid &&                   \
		    ob_load(sb, sb->tstate_seen, tstate_read(cfg)) &&                              \
		    OB64(sb, cfg->tstate_thread_id) == sb->fsbase) {                               \
			sb->tstate = sb->tstate_seen;                                              \
			return;                                                                    \
		}                                                                                  \
		cached = bpf_map_lookup_elem(&tstates, &sb->tid);                                  \
		if (cached && *cached && rd64(*cached + cfg->tstate_thread_id) == sb->fsbase) {    \
			sb->tstate = *cached;                                                      \
			goto seen;                                                                 \
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
	seen:                                                                                      \
		if (LOOPED) {                                                                      \
			sb->tstate_seen = sb->tstate;                                              \
			sb->tstate_tgid = sb->h.pid;                                               \
		}                                                                                  \
	}

static __always_inline __u64 fb64(struct stack_buf *sb, __s32 off)
{
	return AL64(sb->fb, off & (SQLSPAN_FRAME_READ - 8));
}

/* Is pg one of the pages a window from below failed for? */
static __always_inline bool win_bad(struct stack_buf *sb, __u64 pg)
{
	for (int i = 0; i < PY_WIN_BAD; i++) {
		if (sb->win_bad_pg[i] == pg)
			return true;
	}
	return false;
}

/*
 * Read PY_WIN bytes ending with the frame at sb->frame (or from its page on); 0 on success. A
 * suspended greenlet's frames sit at the start of its own data stack chunk (a mapping of its own):
 * the bytes below them are not mapped, and a read that fails there costs the thread a page fault
 * (more than several reads that succeed): from the frame's page on, at once. So do the frames at
 * the bottom of each of the running stack's chunks, once a read from below them failed (the
 * thread's stack_buf remembers the last PY_WIN_BAD such pages: --stack walks there at every
 * statement).
 */
static __noinline int py_read_window(struct stack_buf *sb, struct scratch *win)
{
	__u64 f = sb->frame, lo = f + SQLSPAN_FRAME_READ - PY_WIN, n;

	sb->win_len = 0;
	if (!sb->glet && !win_bad(sb, f & ~4095ULL)) {
		if (!py_read_counted(win->bytes, PY_WIN, (const void *)lo)) {
			sb->win_lo = lo;
			sb->win_len = PY_WIN;
			return 0;
		}
		/* the bottom of a data stack chunk: its page's frames read from the page on */
		sb->win_bad_pg[sb->win_bad_at++ & (PY_WIN_BAD - 1)] = f & ~4095ULL;
	}
	/* the bytes below may be another mapping's, or none: from the frame's page on */
	if ((f & ~4095ULL) > lo)
		lo = f & ~4095ULL;
	n = f + SQLSPAN_FRAME_READ - lo;
	if (n > PY_WIN)
		return -1;
	n = ((n - 1) & (PY_WIN - 1)) + 1; /* as it was: 1 to PY_WIN, the verifier sure */
	if (py_read_counted(win->bytes, n, (const void *)lo))
		return -1;
	sb->win_lo = lo;
	sb->win_len = n;
	return 0;
}

/* Read one frame into sb->fb; 0 on success. */
static __always_inline int py_read_frame(struct stack_buf *sb, struct scratch *win)
{
	__u64 off;

	if (!win)
		goto single;
	if (sb->win_try &&
	    (sb->frame < sb->win_lo || sb->frame + SQLSPAN_FRAME_READ > sb->win_lo + sb->win_len))
		py_read_window(sb, win);
	/*
	 * From the window, 8 bytes at a time: frames are 8-aligned, and a copy from an offset the
	 * compiler cannot see aligned (__builtin_memcpy) is made one byte at a time, 256
	 * instructions a frame (more than the rest of a frame's handling).
	 */
	if (sb->win_len && sb->frame >= sb->win_lo && !((sb->frame - sb->win_lo) & 7) &&
	    sb->frame + SQLSPAN_FRAME_READ <= sb->win_lo + sb->win_len) {
		off = (sb->frame - sb->win_lo) & (PY_WIN - 8);
		__builtin_memcpy(__builtin_assume_aligned(sb->fb, 8),
				 __builtin_assume_aligned(&win->bytes[off], 8), SQLSPAN_FRAME_READ);
		return 0;
	}
single:
	/* failures counted on bpf_loop kernels only (a window: py_read_counted) */
	if (!py_read_if(win != NULL, sb->fb, SQLSPAN_FRAME_READ, (const void *)sb->frame))
		return 0;
	/* a small frame at the end of a mapping: read what it surely has */
	*(__u64 *)&sb->fb[96] = 0;
	*(__u64 *)&sb->fb[104] = 0;
	*(__u64 *)&sb->fb[112] = 0;
	*(__u64 *)&sb->fb[120] = 0;
	return py_read_if(win != NULL, sb->fb, 96, (const void *)sb->frame) ? -1 : 0;
}

/* PyMethodObject.im_self (after PyObject_HEAD and im_func), 3.11 to 3.14 */
#define PY_METHOD_SELF 24

/* _PyInterpreterFrame.owner of a coroutine's frame, 3.11 to 3.14 */
#define PY_OWNED_BY_GENERATOR 1

/* Is the str at addr (compact ASCII) `want` (n bytes, its NUL included)? */
static __always_inline bool str_is(struct py_cfg *cfg, struct stack_buf *sb, __u64 addr,
				   const char *want, __u32 n)
{
	if (!addr || bpf_probe_read_user(sb->name, n, (const void *)(addr + cfg->str_ascii)))
		return false;
	for (__u32 i = 0; i < n; i++) {
		if (sb->name[i] != want[i])
			return false;
	}
	return true;
}

/*
 * SQLAlchemy's greenlet_spawn, found by the BPF side itself (among coroutine frames only, until
 * found): a coroutine whose code is named greenlet_spawn. The stack where it shows up first
 * already gets its greenlet followed.
 */
static __noinline void gs_learn(struct py_cfg *cfg, struct stack_buf *sb, __u64 code)
{
	if (str_is(cfg, sb, rd64(code + cfg->code_name), "greenlet_spawn", 15))
		cfg->gs_code = code;
}

/* Which local of greenlet_spawn's frame is the greenlet: its type is _AsyncIoGreenlet. */
static long ctx_find_cb(__u32 i, void *data)
{
	struct walk_ctx *wc = data;
	struct stack_buf *sb = wc->sb;
	__s32 off = wc->cfg->frame_localsplus + 8 * (4 + i); /* after fn, flag, *args, **kw */
	__u64 v = rd64(sb->gs_frame + off);
	__u64 type = v ? rd64(v + 8) : 0;

	if (type && str_is_c(sb, rd64(type + 24))) {
		wc->cfg->gs_ctx_off = off;
		return 1;
	}
	return 0;
}

/*
 * The identity of a long-lived code object as userspace checked it (0: read it); an
 * application code object's marks the record's call site as seen (sb->site).
 */
static __always_inline __u32 hot_ident(struct stack_buf *sb, __u64 code)
{
	__u32 slot = SQLSPAN_HOT_SLOT(code);
	struct hot_code *hc = bpf_map_lookup_elem(&hot_codes, &slot);

	sb->hot = 0;
	if (!hc || hc->code != code || hc->tgid != sb->h.pid)
		return 0;
	sb->hot = HOT_SEEN | hc->flags;
	if ((hc->flags & HOT_APP) && !sb->glet)
		sb->site = 1;
	return hc->ident;
}

/* Add the frame in sb->fb to the record: 0 added, 2 a shim (skipped), 1 the record is full. */
static __noinline int py_add_frame(struct py_cfg *cfg, struct stack_buf *sb)
{
	__u64 code = fb64(sb, cfg->frame_code);
	__u8 owner = sb->fb[cfg->frame_owner & (SQLSPAN_FRAME_READ - 1)];
	struct ev_frame *f;
	__u32 k;

	if (cfg->code_tagged)
		code &= ~3ULL;
	if (owner == cfg->owner_cstack || owner >= cfg->owner_first_incomplete || !code)
		return 2; /* a shim or incomplete frame: not added */
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
	f->owner = owner | (sb->glet ? FRAME_GREENLET : 0);
	f->_pad[0] = f->_pad[1] = f->_pad[2] = 0;
	f->ident = hot_ident(sb, code);
	if (!f->ident && cfg->code_ident >= 0 &&
	    !bpf_probe_read_user(sb->name, 24, (const void *)(code + cfg->code_ident))) {
		/* the file name's length and hash (as userspace reads them: code_ident) */
		__u64 file = *(__u64 *)&sb->name[0], qual = *(__u64 *)&sb->name[16];
		__u64 len = 0, hash = ~0ULL, tail = 0;

		if (!bpf_probe_read_user(sb->name, 16,
					 (const void *)(file + (cfg->str_length & 0xff)))) {
			len = *(__u64 *)&sb->name[0];
			hash = *(__u64 *)&sb->name[8];
		}
		if (len >= FILE_TAIL_MIN && len <= FILE_LEN_MAX &&
		    !bpf_probe_read_user(sb->name, 8,
					 (const void *)(file + (cfg->str_ascii & 0xff) + len - 8)))
			tail = *(__u64 *)&sb->name[0];
		f->ident = FRAME_IDENT(file, qual, FILE_SUM(len, hash, tail));
	}
	sb->nframes++;
	return 0;
}

/* Is the frame just added one of SQLAlchemy's Connection methods userspace named? */
static __always_inline bool sa_frame(struct py_cfg *cfg, struct stack_buf *sb)
{
	__u64 code = sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].code;

	return code == cfg->lr.sa_code[0] || code == cfg->lr.sa_code[1] ||
	       code == cfg->lr.sa_code[2];
}

/*
 * Where the attribute values of obj (an instance of a class without __slots__) are, by
 * cfg->sa_mode; valid_off: 3.13+ inline values' valid flag, learnt per type. 0: not there.
 */
static __always_inline __u64 inst_values(struct py_cfg *cfg, __u64 obj, __s32 valid_off)
{
	__u64 values = 0, d;

	if (cfg->sa_mode == SA_VALUES_INLINE) {
		__u8 valid = 0;

		bpf_probe_read_user(&valid, 1, (const void *)(obj + valid_off));
		values = valid ? obj : 0;
	} else if (cfg->sa_mode == SA_VALUES_312) {
		d = rd64(obj + cfg->sa_managed_dict);
		values = d & 1 ? d + 1 : d ? rd64(d + cfg->sa_dict_values) : 0;
	} else if (cfg->sa_mode == SA_VALUES_311) {
		values = rd64(obj + cfg->sa_managed_values);
		if (!values) {
			d = rd64(obj + cfg->sa_managed_dict);
			values = d ? rd64(d + cfg->sa_dict_values) : 0;
		}
	}
	return values;
}

/* Bytes before an object with a managed dict: 3.11's values (-32) and dict (-24) pointers. */
#define PY_PRE 32

/*
 * inst_values in one read (ob_load; bpf_loop kernels): inst_load reads obj from PY_PRE bytes
 * before it (3.11's and 3.12's pointers) through its type and, for inline values (3.13+), through
 * byte `end` (inst_end: their valid flag, and the value in the slot the caller wants), and returns
 * its type (0 if the read failed: the caller gives up); inst_values_in finds its values in that
 * copy, and inst_slot a value in them: from the copy if values are inline, else read.
 */
static __always_inline __u32 inst_end(__s32 valid_off, __s32 slot)
{
	return (__u32)(valid_off > slot ? valid_off + 1 : slot + 8) & 0x3ff;
}

static __always_inline __u64 inst_load(struct py_cfg *cfg, struct stack_buf *sb, __u64 obj,
				       __u32 end)
{
	__u32 n = PY_PRE + 16;

	if (cfg->sa_mode == SA_VALUES_INLINE && PY_PRE + end > n)
		n = PY_PRE + end;
	return ob_load(sb, obj - PY_PRE, n) ? OB64(sb, PY_PRE + 8) : 0;
}

static __always_inline __u64 inst_values_in(struct py_cfg *cfg, struct stack_buf *sb, __u64 obj,
					    __s32 valid_off)
{
	__u64 values = 0, d;

	if (cfg->sa_mode == SA_VALUES_INLINE) {
		values = sb->ob[(PY_PRE + valid_off) & (PY_OB - 1)] ? obj : 0;
	} else if (cfg->sa_mode == SA_VALUES_312) {
		d = OB64(sb, PY_PRE + cfg->sa_managed_dict);
		values = d & 1 ? d + 1 : d ? rd64(d + cfg->sa_dict_values) : 0;
	} else if (cfg->sa_mode == SA_VALUES_311) {
		values = OB64(sb, PY_PRE + cfg->sa_managed_values);
		if (!values) {
			d = OB64(sb, PY_PRE + cfg->sa_managed_dict);
			values = d ? rd64(d + cfg->sa_dict_values) : 0;
		}
	}
	return values;
}

/* The value in `slot` of the values inst_values_in found for obj (still in the copy). */
static __always_inline __u64 inst_slot(struct stack_buf *sb, __u64 obj, __u64 values, __s32 slot)
{
	return values == obj ? OB64(sb, PY_PRE + slot) : rd64(values + slot);
}

/*
 * The Connection (the first local of its frame just added, or greenlet_spawn's): its type, and
 * if userspace has said where that type keeps `engine`, the engine, read now while the
 * Connection surely lives. Field by field: the bounded-loop kernels (their verifier budget);
 * sa_engine_of_ob, the same in one read or two, for the others (its plain loads from the copy:
 * with a branch per field, as ob64 has, the kernel verified the bpf_loop programs ~80 ms longer
 * at each attach).
 */
static __always_inline void sa_engine_of(struct py_cfg *cfg, struct stack_buf *sb, __u64 conn)
{
	__u64 values;

	if (cfg->code_tagged)
		conn &= ~3ULL;
	if (!conn)
		return;
	sb->sa_type = rd64(conn + 8);
	if (!sb->sa_type || sb->sa_type != cfg->lr.sa_type || cfg->lr.sa_slot < 0)
		return;
	values = inst_values(cfg, conn, cfg->lr.sa_valid);
	if (values)
		sb->sa_engine = rd64(values + cfg->lr.sa_slot);
}

/* The same in one read or two (inst_load): bpf_loop kernels. */
static __always_inline void sa_engine_of_ob(struct py_cfg *cfg, struct stack_buf *sb, __u64 conn)
{
	__u64 values;

	if (cfg->code_tagged)
		conn &= ~3ULL;
	if (!conn)
		return;
	sb->sa_type = inst_load(cfg, sb, conn, inst_end(cfg->lr.sa_valid, cfg->lr.sa_slot));
	if (!sb->sa_type || sb->sa_type != cfg->lr.sa_type || cfg->lr.sa_slot < 0)
		return;
	values = inst_values_in(cfg, sb, conn, cfg->lr.sa_valid);
	if (values)
		sb->sa_engine = inst_slot(sb, conn, values, cfg->lr.sa_slot);
}

/* The Connection of the frame just added (one of py_cfg.lr.sa_code). */
static __noinline void sa_engine_read(struct py_cfg *cfg, struct stack_buf *sb)
{
	sa_engine_of(cfg, sb, sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].local[0]);
}

static __noinline void sa_engine_read_loop(struct py_cfg *cfg, struct stack_buf *sb)
{
	sa_engine_of_ob(cfg, sb, sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].local[0]);
}

/*
 * A Handle callback of a type userspace has not said how to follow: its type, for userspace to
 * learn from (types live long, and so do Tasks), and the Task it may hold, read only while the
 * first stacks wake userspace (a Task that may never be learnt, pure Python tasks, must not cost
 * every statement a read).
 */
static __always_inline void task_cb_unknown(struct py_cfg *cfg, struct stack_buf *sb, __u64 cb,
					    __u64 type)
{
	sb->task_cb_type = type;
	if (!cfg->lr.task_type && cfg->sa_wake_left)
		sb->task_obj = rd64(cb + STEP_WRAPPER_TASK);
}

/*
 * asyncio's Handle._run frame (just added): the Handle's callback holds the Task it steps or
 * wakes up; the Task's name is copied now (the Task may be gone by the time userspace reads the
 * record). Only what userspace has learnt and said in cfg is followed; anything else, nothing.
 * Field by field: bounded-loop kernels (task_read_loop for the others).
 */
static __noinline void task_read(struct py_cfg *cfg, struct stack_buf *sb)
{
	__u64 handle = sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].local[0];
	__u64 cb, type, task, name, state = 0, len = 0;

	if (cfg->code_tagged)
		handle &= ~3ULL;
	sb->task_handle_type = handle ? rd64(handle + 8) : 0;
	if (!sb->task_handle_type || sb->task_handle_type != cfg->lr.task_handle_type ||
	    cfg->lr.task_cb_off <= 0)
		return;
	cb = rd64(handle + (cfg->lr.task_cb_off & 0xfff));
	type = cb ? rd64(cb + 8) : 0;
	if (!type)
		return;
	if (type == cfg->lr.task_step_type && cfg->lr.task_step_off > 0) {
		task = rd64(cb + (cfg->lr.task_step_off & 0xff));
	} else if (type == cfg->lr.task_meth_type && cfg->lr.task_meth_off > 0) {
		task = rd64(cb + (cfg->lr.task_meth_off & 0xff));
	} else {
		task_cb_unknown(cfg, sb, cb, type);
		return;
	}
	if (task && !cfg->lr.task_type)
		sb->task_obj = task;
	if (!task || rd64(task + 8) != cfg->lr.task_type || cfg->lr.task_name_off <= 0)
		return;
	name = rd64(task + (cfg->lr.task_name_off & 0xfff));
	type = name ? rd64(name + 8) : 0;
	if (type && type == cfg->str_type) {
		/* compact ASCII only (state bits: compact 5, ascii 6); others are left unnamed */
		bpf_probe_read_user(&state, 4, (const void *)(name + (cfg->str_state & 0xff)));
		len = rd64(name + (cfg->str_length & 0xff));
		if ((state & 0x60) != 0x60 || len > (1u << 20))
			return;
		/* at most SQLSPAN_TASK_NAME - 1 bytes: the mask keeps the verifier sure */
		len = len < SQLSPAN_TASK_NAME - 1 ? len : SQLSPAN_TASK_NAME - 1;
		len &= SQLSPAN_TASK_NAME - 1;
		if (bpf_probe_read_user(sb->task_name, len,
					(const void *)(name + (cfg->str_ascii & 0xff))))
			return;
		sb->task_len = len;
		sb->task_kind = TASK_NAME_STR;
	} else if (type && type == cfg->int_type) {
		/* one 30-bit digit, positive: a task counter */
		__u64 tag = rd64(name + (cfg->long_tag & 0xff));
		__u32 digit = 0;

		if (cfg->long_tagged ? (tag >> 3) != 1 || (tag & 3) != 0 : tag != 1)
			return;
		bpf_probe_read_user(&digit, 4, (const void *)(name + (cfg->long_digits & 0xff)));
		sb->task_num = digit & 0x3fffffff;
		sb->task_kind = TASK_NAME_NUM;
	}
}

/* The callback's bytes to read: up to the field its Task is in, either kind. */
static __always_inline __u32 task_cb_read(struct py_cfg *cfg)
{
	__s32 off = cfg->lr.task_step_off > cfg->lr.task_meth_off ? cfg->lr.task_step_off
								  : cfg->lr.task_meth_off;

	return (off & 0xff) + 8;
}

/*
 * The same, each object in one read (ob_load): bpf_loop kernels. The bounded-loop kernels'
 * verifier budget (their request program verifies at 99% of the limit) has no room for the
 * branches that takes: they keep task_read, field by field.
 */
static __noinline void task_read_loop(struct py_cfg *cfg, struct stack_buf *sb)
{
	__u64 handle = sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].local[0];
	__u64 cb, type, task, name, state = 0, len = 0, at;

	if (cfg->code_tagged)
		handle &= ~3ULL;
	/* each object in one read: its type and the field followed (ob_load) */
	ob_load(sb, handle, (cfg->lr.task_cb_off & 0xfff) + 8);
	sb->task_handle_type = handle ? ob64(sb, handle, 8) : 0;
	if (!sb->task_handle_type || sb->task_handle_type != cfg->lr.task_handle_type ||
	    cfg->lr.task_cb_off <= 0)
		return;
	cb = ob64(sb, handle, cfg->lr.task_cb_off & 0xfff);
	ob_load(sb, cb, task_cb_read(cfg));
	type = cb ? ob64(sb, cb, 8) : 0;
	if (!type)
		return;
	if (type == cfg->lr.task_step_type && cfg->lr.task_step_off > 0) {
		task = ob64(sb, cb, cfg->lr.task_step_off & 0xff);
	} else if (type == cfg->lr.task_meth_type && cfg->lr.task_meth_off > 0) {
		task = ob64(sb, cb, cfg->lr.task_meth_off & 0xff);
	} else {
		task_cb_unknown(cfg, sb, cb, type);
		return;
	}
	if (task && !cfg->lr.task_type)
		sb->task_obj = task;
	if (!task || cfg->lr.task_name_off <= 0)
		return;
	ob_load(sb, task, (cfg->lr.task_name_off & 0xfff) + 8);
	if (ob64(sb, task, 8) != cfg->lr.task_type)
		return;
	name = ob64(sb, task, cfg->lr.task_name_off & 0xfff);
	/* the str's header and a name that fits, in one read */
	ob_load(sb, name, (cfg->str_ascii & 0xff) + SQLSPAN_TASK_NAME);
	type = name ? ob64(sb, name, 8) : 0;
	if (type && type == cfg->str_type) {
		/* compact ASCII only (state bits: compact 5, ascii 6); others unnamed */
		state = ob32(sb, name, cfg->str_state & 0xff);
		len = ob64(sb, name, cfg->str_length & 0xff);
		if ((state & 0x60) != 0x60 || len > (1u << 20))
			return;
		/* at most SQLSPAN_TASK_NAME - 1 bytes: the mask keeps the verifier sure */
		len = len < SQLSPAN_TASK_NAME - 1 ? len : SQLSPAN_TASK_NAME - 1;
		len &= SQLSPAN_TASK_NAME - 1;
		at = cfg->str_ascii & 0x7f;
		if (name == sb->ob_addr && at == cfg->str_ascii && at + len <= sb->ob_len) {
			if (bpf_probe_read_kernel(sb->task_name, len, &sb->ob[at]))
				return;
		} else if (bpf_probe_read_user(sb->task_name, len,
					       (const void *)(name + (cfg->str_ascii & 0xff)))) {
			return;
		}
		sb->task_len = len;
		sb->task_kind = TASK_NAME_STR;
	} else if (type && type == cfg->int_type) {
		/* one 30-bit digit, positive: a task counter */
		__u64 tag = ob64(sb, name, cfg->long_tag & 0xff);
		__u32 digit = 0;

		if (cfg->long_tagged ? (tag >> 3) != 1 || (tag & 3) != 0 : tag != 1)
			return;
		digit = ob32(sb, name, cfg->long_digits & 0xff);
		sb->task_num = digit & 0x3fffffff;
		sb->task_kind = TASK_NAME_NUM;
	}
}

/* Does the frame object at sb->gtmp belong to a greenlet's saved state? One candidate per call. */
static long gl_scan_cb(__u32 i, void *data)
{
	struct walk_ctx *wc = data;
	struct stack_buf *sb = wc->sb;
	__u64 v = rd64(sb->gtmp + i * 8);

	if (v && rd64(v + 8) == wc->cfg->frame_type) {
		wc->cfg->gl_frame_off = i * 8; /* found: every later stack uses it */
		return 1;
	}
	return 0;
}

/*
 * greenlet_spawn's frame (sb->gs_frame): sb->gframe becomes the innermost frame of the greenlet
 * it holds, suspended in the middle of the sync code (SQLAlchemy's Connection, the statement)
 * while this thread runs the event loop. Which local is the greenlet, and where greenlet keeps its
 * saved frame, are found here the first time (bpf_loop kernels only: older ones never call this).
 */
static __noinline void greenlet_follow(struct py_cfg *cfg, struct stack_buf *sb)
{
	struct walk_ctx wc = {.cfg = cfg, .sb = sb};
	__u64 ctx, fo;

	if (cfg->gs_ctx_off < 0)
		bpf_loop(6, ctx_find_cb, &wc, 0);
	if (cfg->gs_ctx_off < 0)
		return;
	ctx = rd64(sb->gs_frame + cfg->gs_ctx_off);
	if (!ctx)
		return;
	sb->gtmp = rd64(ctx + cfg->gl_pimpl_off); /* the C++ Greenlet */
	if (!sb->gtmp)
		return;
	if (cfg->gl_frame_off < 0 && cfg->frame_type)
		bpf_loop(64, gl_scan_cb, &wc, 0);
	if (cfg->gl_frame_off < 0)
		return;
	fo = rd64(sb->gtmp + (cfg->gl_frame_off & 0x1ff));
	if (fo && rd64(fo + 8) == cfg->frame_type)
		sb->gframe = rd64(fo + cfg->fo_frame_off);
}

/* Cheap test, inline, per frame: could the frame just added be greenlet_spawn's? */
static __always_inline bool greenlet_maybe(struct py_cfg *cfg, struct stack_buf *sb)
{
	struct ev_frame *f = &sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)];

	/* a long-lived code object userspace named is greenlet_spawn only if it says so */
	return cfg->gs_code ? f->code == cfg->gs_code
			    : cfg->gs_search && f->owner == PY_OWNED_BY_GENERATOR &&
				      (!(sb->hot & HOT_SEEN) || (sb->hot & HOT_GS));
}

/*
 * The one Connection of a Session (of the type userspace learnt: `session`, its copy in sb->ob,
 * its attribute values at v), 0 if it has none or several: its innermost SessionTransaction's
 * `_connections` dict holds (Connection, transaction, ...) under two keys, the Connection and its
 * engine: two entries, one tuple. Each object in one read (ob_load), given up if that fails. Not
 * checked to be a Connection: the caller reads it next. A global function: the verifier checks
 * it once, not at each call with each state (~20 ms of attach as a static one).
 */
__noinline __u64 session_conn(struct py_cfg *cfg, struct stack_buf *sb, __u64 session, __u64 v)
{
	__u64 tx, d, keys, e;
	__u8 lib;

	if (!cfg || !sb) /* global: verified once, on its own */
		return 0;

	tx = v && cfg->lr.ss_tx_slot >= 0 ? inst_slot(sb, session, v, cfg->lr.ss_tx_slot) : 0;
	if (!tx)
		return 0;
	d = inst_load(cfg, sb, tx, inst_end(cfg->lr.st_conns_valid, cfg->lr.st_conns_slot));
	if (!cfg->lr.st_type)
		sb->st_tx_type = d; /* its type, for userspace to learn from */
	if (!d || d != cfg->lr.st_type || cfg->lr.st_conns_slot < 0)
		return 0;
	v = inst_values_in(cfg, sb, tx, cfg->lr.st_conns_valid);
	d = v ? inst_slot(sb, tx, v, cfg->lr.st_conns_slot) : 0;
	if (!ob_load(sb, d, dict_read(cfg)) || OB64(sb, 8) != cfg->dict_type ||
	    OB64(sb, cfg->dict_values))
		return 0; /* not a dict, or a split one */
	keys = OB64(sb, cfg->dict_keys);
	/* the keys, their indices and two entries, where the indices are a byte each (lib 3) */
	if (!ob_load(sb, keys, cfg->keys_indices + 8 + 2 * 24) ||
	    OB64(sb, cfg->keys_nentries) != 2 || sb->ob[cfg->keys_kind & (PY_OB - 1)] != 0)
		return 0; /* not two entries of the general kind (hash, key, value) */
	lib = sb->ob[cfg->keys_log2_index_bytes & (PY_OB - 1)];
	if (lib != 3)
		return 0;
	e = cfg->keys_indices + 8;
	v = OB64(sb, e + 16);
	if (!v || OB64(sb, e + 24 + 16) != v)
		return 0;
	if (!ob_load(sb, v, cfg->tuple_items + 8) || OB64(sb, 8) != cfg->tuple_type ||
	    (__s64)OB64(sb, cfg->tuple_size) < 1)
		return 0;
	return OB64(sb, cfg->tuple_items);
}

/*
 * greenlet_spawn's function (its first local): a method bound to a Connection of the type
 * userspace learnt, or to a Session bound to one Connection? Then sb->gs_conn is that
 * Connection (gs_fast_check decides at the next frame whether it is the statement's).
 */
static __always_inline void gs_bound(struct py_cfg *cfg, struct stack_buf *sb, __u64 fn)
{
	__u32 a = inst_end(cfg->lr.sa_valid, cfg->lr.sa_slot);
	__u32 b = inst_end(cfg->lr.ss_tx_valid, cfg->lr.ss_tx_slot);
	__u64 self, type, values;

	if (cfg->code_tagged)
		fn &= ~3ULL;
	if (!fn || !cfg->site_only || !cfg->method_type || !cfg->lr.sa_type || !cfg->lr.gs_fast[0])
		return;
	/* its type and self in one read */
	if (!ob_load(sb, fn, PY_METHOD_SELF + 8) || OB64(sb, 8) != cfg->method_type)
		return;
	self = OB64(sb, PY_METHOD_SELF);
	if (!self)
		return;
	/* self in one read, as a Connection or as a Session, whichever it is */
	type = inst_load(cfg, sb, self, a > b ? a : b);
	if (type && type == cfg->lr.ss_type) {
		/* a Session's one Connection, then read as one */
		values = inst_values_in(cfg, sb, self, cfg->lr.ss_tx_valid);
		self = session_conn(cfg, sb, self, values);
		type = self ? inst_load(cfg, sb, self, a) : 0;
	} else if (!cfg->lr.ss_type && type != cfg->lr.sa_type) {
		sb->gs_self_type = type; /* for userspace to learn from: a Session's? */
	}
	if (!type || type != cfg->lr.sa_type)
		return;
	/* the Connection: its engine now, from the copy at hand (gs_fast_check takes both) */
	sb->gs_conn = self;
	values = cfg->lr.sa_slot >= 0 ? inst_values_in(cfg, sb, self, cfg->lr.sa_valid) : 0;
	sb->gs_engine = values ? inst_slot(sb, self, values, cfg->lr.sa_slot) : 0;
}

/*
 * After a frame was added (bpf_loop kernels): is it SQLAlchemy's greenlet_spawn (learnt here the
 * first time), whose greenlet is then followed? Global, like gs_fast_check and session_conn: the
 * verifier checks each once per program, not again at each call with the caller's states (the
 * loop programs verify fewer instructions than before these functions existed).
 */
__noinline int greenlet_check(struct py_cfg *cfg, struct stack_buf *sb)
{
	struct ev_frame *f;

	if (!cfg || !sb || sb->glet || sb->gs_frame)
		return 0;
	f = &sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)];
	if (!cfg->gs_code && f->owner == PY_OWNED_BY_GENERATOR && cfg->gs_search)
		gs_learn(cfg, sb, f->code);
	if (cfg->gs_code && f->code == cfg->gs_code) {
		sb->gs_frame = sb->frame;
		gs_bound(cfg, sb, f->local[0]);
		/* for the call site alone, a Connection found here may spare the greenlet's reads:
		 * gs_fast_check decides at the next frame */
		if (!cfg->site_only || !sb->gs_conn)
			greenlet_follow(cfg, sb);
	}
	return 0;
}

/*
 * The frame that awaited greenlet_spawn (just added): one of AsyncConnection's or AsyncSession's
 * statement methods (gs_fast), then the Connection greenlet_spawn was called for (or its
 * Session's) is the statement's, and for the call site alone the greenlet is not walked: its frames
 * are SQLAlchemy's, and they sit in a data stack chunk the greenlet mapped anew, whose first read
 * by the kernel costs several microseconds on some hypervisors (~5 on this project's VMs, against
 * ~0.1 for the frames of the running stack).
 */
__noinline int gs_fast_check(struct py_cfg *cfg, struct stack_buf *sb)
{
	__u64 code, conn;

	if (!cfg || !sb)
		return 0;
	code = sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].code;
	conn = sb->gs_conn;
	sb->gs_conn = 0; /* looked at once: for the caller of greenlet_spawn */
	for (int i = 0; i < SQLSPAN_GS_FAST; i++) {
		if (code == cfg->lr.gs_fast[i])
			goto fast;
	}
	greenlet_follow(cfg, sb); /* put off by greenlet_check: the greenlet is walked */
	return 0;
fast:
	sb->sa_conn = conn;
	sb->sa_type = cfg->lr.sa_type; /* gs_bound checked it */
	sb->sa_engine = sb->gs_engine;
	return 0;
}

/* One frame of the walk (sb->frame); 1 when the walk is over. */
#define DEFINE_FRAME_CB(NAME, GREENLETS)                                                           \
	static long NAME(__u32 i, void *data)                                                      \
	{                                                                                          \
		struct frames_ctx *wc = data;                                                      \
		struct stack_buf *sb = wc->sb;                                                     \
		int r;                                                                             \
                                                                                                   \
		if (!sb->frame)                                                                    \
			return 1;                                                                  \
		if (sb->glet && sb->frame == sb->gs_frame) {                                       \
			sb->frame = 0; /* the greenlet started from there: the rest is known */    \
			return 1;                                                                  \
		}                                                                                  \
		if (py_read_frame(sb, wc->win)) {                                                  \
			sb->flags |= STACK_FAULT;                                                  \
			return 1;                                                                  \
		}                                                                                  \
		/* a window for the caller only if it is just below: a coroutine's frame lives */  \
		/* in its object, its caller elsewhere (an await's callee, too) */                 \
		sb->win_try = GREENLETS && wc->win &&                                              \
			      fb64(sb, wc->cfg->frame_previous) < sb->frame &&                     \
			      sb->frame - fb64(sb, wc->cfg->frame_previous) <                      \
				      PY_WIN - SQLSPAN_FRAME_READ;                                 \
		/* the top frame's caller was just below: next time, one window for both */        \
		if (GREENLETS && i == 0 && !sb->glet)                                              \
			sb->top_win = sb->win_try;                                                 \
		r = py_add_frame(wc->cfg, sb);                                                     \
		if (r == 1)                                                                        \
			return 1;                                                                  \
		if (GREENLETS && r == 0 && sb->gs_conn && sb->frame != sb->gs_frame)               \
			gs_fast_check(wc->cfg, sb);                                                \
		if (GREENLETS && r == 0 && !sb->glet && !sb->gs_frame &&                           \
		    greenlet_maybe(wc->cfg, sb))                                                   \
			greenlet_check(wc->cfg, sb);                                               \
		if (r == 0 && !sb->sa_type && sa_frame(wc->cfg, sb))                               \
			(GREENLETS ? sa_engine_read_loop : sa_engine_read)(wc->cfg, sb);           \
		if (r == 0 && !sb->task_handle_type && wc->cfg->lr.task_run_code &&                \
		    sb->frames[(sb->nframes - 1) & (SQLSPAN_MAX_FRAMES - 1)].code ==               \
			    wc->cfg->lr.task_run_code)                                             \
			(GREENLETS ? task_read_loop : task_read)(wc->cfg, sb);                     \
		/* walked, looked at, not sent: userspace has no use for it (HOT_SKIP) */          \
		if (GREENLETS && r == 0 && wc->cfg->site_only && (sb->hot & HOT_SKIP))             \
			sb->nframes--;                                                             \
		sb->frame = fb64(sb, wc->cfg->frame_previous);                                     \
		/* past the call site, nothing more is needed (asyncio: once past Handle._run); */ \
		/* bpf_loop kernels only (the others' verifier budget) */                          \
		if (GREENLETS && sb->site && !sb->glet && wc->cfg->site_only &&                    \
		    (!wc->cfg->lr.task_run_code || sb->task_handle_type)) {                        \
			sb->frame = 0;                                                             \
			return 1;                                                                  \
		}                                                                                  \
		/* in a greenlet, past SQLAlchemy's Connection: the rest is SQLAlchemy's own */    \
		if (GREENLETS && sb->glet && sb->sa_type && wc->cfg->site_only) {                  \
			sb->frame = 0;                                                             \
			return 1;                                                                  \
		}                                                                                  \
		return 0;                                                                          \
	}

/* Kernels without bpf_loop do not follow greenlets (where they keep frames is found by a
 * scan) */
DEFINE_FRAME_CB(frame_cb, 0)
DEFINE_FRAME_CB(frame_cb_loop, 1)

/* Walk the frames from sb->frame into the record. LOOPED: with bpf_loop (5.17+). */
#define DEFINE_PY_FRAMES(NAME, LOOPED)                                                             \
	static __noinline void NAME(struct py_cfg *cfg, struct stack_buf *sb)                      \
	{                                                                                          \
		struct frames_ctx wc = {.cfg = cfg, .sb = sb};                                     \
                                                                                                   \
		/* bounded-loop kernels: frame by frame (the verifier's budget); the running */    \
		/* stack's first frame through a window only if the last walk found its caller */  \
		/* just below it (an async driver's top frame is called from a coroutine */        \
		/* elsewhere: a window there would be read for nothing) */                         \
		sb->win_len = 0;                                                                   \
		sb->win_try = LOOPED && (sb->glet || sb->top_win);                                 \
		if (LOOPED) {                                                                      \
			wc.win = scratch_area();                                                   \
			if (!wc.win)                                                               \
				return;                                                            \
			bpf_loop(SQLSPAN_MAX_FRAMES, frame_cb_loop, &wc, 0);                       \
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
#define DEFINE_SEND_STACK(NAME, TSTATE, FRAMES, PRE, CTX, LOOPED)                                  \
	PRE __noinline int NAME(CTX *ctx, __u64 pid_tgid, __u64 ts_key)                            \
	{                                                                                          \
		__u32 tgid = pid_tgid >> 32;                                                       \
		struct py_cfg *cfg;                                                                \
		struct stack_buf *sb;                                                              \
		bool wake;                                                                         \
		__u64 n;                                                                           \
                                                                                                   \
		if (!python_stacks)                                                                \
			return 0;                                                                  \
		cfg = bpf_map_lookup_elem(&pyprocs, &tgid);                                        \
		if (!cfg)                                                                          \
			return 0;                                                                  \
		sb = thread_entry(&stackbufs);                                                     \
		if (!sb)                                                                           \
			return 0;                                                                  \
		hdr_fill(&sb->h, EV_STACK, pid_tgid, ts_key, 0);                                   \
		sb->tid = (__u32)pid_tgid;                                                         \
		sb->nframes = 0;                                                                   \
		sb->flags = 0;                                                                     \
		sb->gs_frame = 0;                                                                  \
		sb->gframe = 0;                                                                    \
		sb->glet = 0;                                                                      \
		sb->sa_type = 0;                                                                   \
		sb->sa_engine = 0;                                                                 \
		if (LOOPED) { /* set on bpf_loop kernels only */                                   \
			sb->sa_conn = 0;                                                           \
			sb->gs_conn = 0;                                                           \
			sb->gs_self_type = 0;                                                      \
			sb->st_tx_type = 0;                                                        \
		}                                                                                  \
		sb->task_handle_type = 0;                                                          \
		sb->task_cb_type = 0;                                                              \
		sb->task_obj = 0;                                                                  \
		sb->task_num = 0;                                                                  \
		sb->task_kind = 0;                                                                 \
		sb->task_len = 0;                                                                  \
		sb->site = 0;                                                                      \
		sb->ob_len = 0; /* ob holds nothing of this walk's yet */                          \
		TSTATE(cfg, sb);                                                                   \
		sb->frame = 0;                                                                     \
		if (!sb->tstate) {                                                                 \
			sb->flags |= STACK_NO_THREAD;                                              \
		} else {                                                                           \
			sb->frame = ob64(sb, sb->tstate, cfg->tstate_frame);                       \
			if (cfg->cframe_frame >= 0 && sb->frame)                                   \
				sb->frame = rd64(sb->frame + cfg->cframe_frame);                   \
		}                                                                                  \
		FRAMES(cfg, sb);                                                                   \
		if (LOOPED && sb->gs_conn) { /* the walk ended before gs_fast_check could look */  \
			sb->gs_conn = 0;                                                           \
			greenlet_follow(cfg, sb);                                                  \
		}                                                                                  \
		if (sb->gframe && !(sb->flags & (STACK_FAULT | STACK_CUT))) {                      \
			/* then the suspended greenlet's frames, marked FRAME_GREENLET */          \
			sb->frame = sb->gframe;                                                    \
			sb->glet = 1;                                                              \
			FRAMES(cfg, sb);                                                           \
		}                                                                                  \
		if (sb->frame && !(sb->flags & (STACK_FAULT | STACK_CUT)))                         \
			sb->flags |= STACK_CUT;                                                    \
		/* at most 127 frames (py_add_frame): the mask is exact and the verifier sure */   \
		n = sb->nframes;                                                                   \
		asm volatile("%[n] &= %[mask]"                                                     \
			     : [n] "+r"(n)                                                         \
			     : [mask] "i"(SQLSPAN_MAX_FRAMES - 1));                                \
		wake = cfg->sa_wake_left > 0;                                                      \
		if (wake)                                                                          \
			cfg->sa_wake_left--;                                                       \
		if (rec_output_w(ctx, sb, sizeof(struct ev_stack) + n * sizeof(struct ev_frame),   \
				 wake))                                                            \
			stat_add(ST_DROP_OTHER, 1);                                                \
		return 0;                                                                          \
	}

DEFINE_PY_TSTATE(py_tstate, 0)
DEFINE_PY_TSTATE(py_tstate_loop, 1)
DEFINE_PY_FRAMES(py_frames, 0)
DEFINE_PY_FRAMES(py_frames_loop, 1)
DEFINE_SEND_STACK(send_stack, py_tstate, py_frames, , struct pt_regs, 0)
DEFINE_SEND_STACK(send_stack_loop, py_tstate_loop, py_frames_loop, , struct pt_regs, 1)
/* for syscall tracepoints (wire sockets): static, so verified with its caller's context */
DEFINE_SEND_STACK(send_stack_tp, py_tstate_loop, py_frames_loop, static, void, 1)

#endif
