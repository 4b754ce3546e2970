/* SPDX-License-Identifier: MIT */
/*
 * Records that the BPF programs send to the loader, shared by both sides.
 *
 * Every record starts with struct ev_hdr; `kind` says which record follows. Fixed-width types,
 * addresses as __u64, explicit padding, sizes checked below.
 */
#ifndef SQLSPAN_H
#define SQLSPAN_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Bytes of statement text carried by one EV_TEXT record. */
#define SQLSPAN_TEXT_CHUNK 4064
/*
 * A statement text shorter than this travels inside its EV_REQ (nchunks 0, text_len bytes after
 * the record): one record per statement instead of two. Longer ones go in EV_TEXT chunks.
 */
#define SQLSPAN_TEXT_INLINE 2048
/* Upper bound of text chunks per statement (SQLSPAN_TEXT_CHUNK * 256 = ~1 MiB). */
#define SQLSPAN_MAX_CHUNKS 256
/* Statement and portal names: PostgreSQL's NAMEDATALEN. */
#define SQLSPAN_NAME_LEN 64
/* Body bytes copied from a backend message: short and long records. */
#define SQLSPAN_MSG_SHORT 64
#define SQLSPAN_MSG_LONG  512
/*
 * What the BPF `pids` map holds of a process, two bits per PID: traced; traced and its sockets
 * followed for the protocol. PIDs up to the kernel's limit (PID_MAX_LIMIT on 64-bit).
 */
#define PID_TRACED_LIBPQ  1
#define PID_TRACED_WIRE	  3
#define SQLSPAN_PID_LIMIT (1u << 22)
#define SQLSPAN_PID_WORDS (SQLSPAN_PID_LIMIT / 32)

/* Address ranges of libpq text segments a process may have mapped. */
#define SQLSPAN_MAX_LIBS 4

enum ev_kind {
	EV_TEXT = 1,   /* a chunk of statement text, sent before its EV_REQ */
	EV_REQ = 2,    /* a request handed to libpq: query, prepare, execute, describe, sync */
	EV_MSG = 3,    /* a backend protocol message seen on a tracked socket */
	EV_DESYNC = 4, /* the message stream of a socket could not be followed */
	EV_CLOSE = 5,  /* a tracked socket was closed */
	EV_FINISH = 6, /* PQfinish / PQreset on a connection */
	EV_EXIT = 7,   /* a traced process exited */
	EV_MMAP =
		8,    /* a traced process mapped an executable file, or its loader changed its
		       * list of objects (a library may have loaded); arg: EV_MMAP_EXEC if it exec'd */
	EV_IDENT = 9, /* who a connection is: read from its PGconn when its socket is first seen */
	EV_STACK =
		10, /* the Python stack of the thread that made a request, sent before its EV_REQ */
	EV_FMSG = 11,	 /* a frontend message a process sent on a wire socket (no libpq) */
	EV_CONNECT = 12, /* a process that may speak the protocol itself connects a socket */
	EV_MSGS = 13,	 /* the EV_MSG records of one read of a socket, in one record */
};

/* Header flags. */
#define EVF_GAP	       (1u << 0) /* records of this socket were lost just before this one */
#define EVF_TEXT_CUT   (1u << 1) /* the statement text is longer than what was captured */
#define EVF_TEXT_FAULT (1u << 2) /* the statement text could not be read */
#define EVF_NAME_CUT   (1u << 3) /* the statement name was longer than SQLSPAN_NAME_LEN - 1 */
#define EVF_NEW_FD     (1u << 4) /* first request seen on this socket */
#define EVF_NESTED     (1u << 5) /* the inner call of an already reported outer call */

struct ev_hdr {
	__u32 kind;
	__u32 pid; /* process (tgid) as seen from the host */
	__u32 tid; /* thread as seen from the host */
	__u32 flags;
	__u64 ts; /* CLOCK_MONOTONIC, ns */
};

/* The libpq function that made the request. */
enum sqlspan_api {
	API_NONE = 0,
	API_SEND_QUERY,		 /* PQsendQuery (and PQexec) */
	API_SEND_QUERY_PARAMS,	 /* PQsendQueryParams (and PQexecParams) */
	API_SEND_PREPARE,	 /* PQsendPrepare (and PQprepare) */
	API_SEND_QUERY_PREPARED, /* PQsendQueryPrepared (and PQexecPrepared) */
	API_DESCRIBE_PREPARED,	 /* PQdescribePrepared, PQsendDescribePrepared */
	API_DESCRIBE_PORTAL,	 /* PQdescribePortal, PQsendDescribePortal */
	API_CLOSE_PREPARED,	 /* PQclosePrepared, PQsendClosePrepared (libpq 17+) */
	API_CLOSE_PORTAL,	 /* PQclosePortal, PQsendClosePortal (libpq 17+) */
	API_PIPELINE_SYNC,	 /* PQpipelineSync, PQsendPipelineSync */
	API_EXEC,		 /* PQexec itself (outer call, only when probed) */
	API_EXEC_PARAMS,	 /* PQexecParams itself */
	API_PREPARE,		 /* PQprepare itself */
	API_EXEC_PREPARED,	 /* PQexecPrepared itself */
	API__COUNT,
};

struct ev_text {
	struct ev_hdr h; /* pid, tid and ts of the EV_REQ this text belongs to */
	__u32 seq;	 /* chunk index */
	__u32 len;	 /* bytes used in data */
	char data[SQLSPAN_TEXT_CHUNK];
};

struct ev_req {
	struct ev_hdr h;
	__u64 conn;    /* PGconn * */
	__s32 fd;      /* the connection's socket, -1 if unknown */
	__u16 api;     /* enum sqlspan_api */
	__u8 pipeline; /* PQpipelineStatus at the call: 0 off, 1 on, 2 aborted; 0xff unknown */
	__u8 _pad0;
	__u32 text_len; /* statement text bytes captured (sum of the chunks) */
	__u16 nchunks;	/* EV_TEXT records sent for this request */
	__u16 _pad1;
	__s32 be_pid; /* backend PID in the PGconn at the call, 0 if unknown */
	__u32 _pad2;
	char name[SQLSPAN_NAME_LEN]; /* statement or portal name ("" = unnamed) */
	/* nchunks 0: text_len bytes of statement text follow the record */
};

#define SQLSPAN_IDENT_STR  64
#define SQLSPAN_IDENT_HOST 128

/* EV_IDENT: strings are NUL-terminated, "" when they could not be read. */
struct ev_ident {
	struct ev_hdr h;
	__u64 conn;
	__s32 fd;
	__s32 be_pid;	 /* 0 unknown */
	__s32 status;	 /* ConnStatusType, -1 unknown */
	__s32 host_type; /* pg_conn_host.type: 0 name, 1 address, 2 Unix socket; -1 unknown */
	__u8 ssl;	 /* 1 TLS, 0 not, 0xff unknown */
	__u8 _pad[7];
	char comm[16]; /* command name of the thread (the process may be gone before it is seen) */
	char db[SQLSPAN_IDENT_STR];
	char user[SQLSPAN_IDENT_STR];
	char port[16];
	char host[SQLSPAN_IDENT_HOST]; /* host, or host address, or socket directory */
};

/*
 * One backend message (or the part of it that arrived in this read). The BPF side copies at most
 * `cap` bytes of a message body in total; userspace reassembles parts until it has `cap` bytes.
 */
struct ev_msg {
	struct ev_hdr h;
	__s32 fd;
	__u32 len;  /* body length: the message length field minus 4 */
	__u32 off;  /* offset in the body of data[0] */
	__u32 rows; /* DataRow messages seen on this socket since the previous EV_MSG */
	__u16 cap;  /* body bytes the BPF side copies of this message in total */
	__u16 n;    /* bytes in data */
	__u8 type;  /* message type byte */
	__u8 _pad[3];
	__u8 data[]; /* SQLSPAN_MSG_SHORT or SQLSPAN_MSG_LONG bytes reserved */
};

/*
 * EV_MSGS: `count` EV_MSG records back to back after this header, each sizeof(struct ev_msg) +
 * its n data bytes rounded up to 8 (`len` bytes in all). One record per read of a socket instead
 * of one per message: a ring buffer record costs the traced thread more than its bytes. The same
 * for the EV_FMSG records of one send (all of one kind; long text parts go as EV_FMSG alone).
 */
struct ev_msgs {
	struct ev_hdr h;
	__u32 count;
	__u32 len;
};

#define SQLSPAN_MSGS_MAX 4096 /* bytes of EV_MSG records in one EV_MSGS at most */

/*
 * One frontend message (or the part of it in this send) of a wire socket. The BPF side sends at
 * most `cap` body bytes of it in total, in parts of up to SQLSPAN_TEXT_CHUNK bytes; type 0 is the
 * StartupMessage (its body: protocol version, then name/value pairs).
 */
struct ev_fmsg {
	struct ev_hdr h;
	__s32 fd;
	__u32 len; /* body length */
	__u32 off; /* offset in the body of data[0] */
	__u32 cap; /* body bytes sent of this message in total */
	__u32 n;   /* bytes in data */
	__u8 type;
	__u8 _pad[3];
	__u8 data[];
};

/* EV_CONNECT: the address a socket is being connected to (struct sockaddr, as given). */
struct ev_connect {
	struct ev_hdr h;
	__s32 fd;
	__u32 len;	/* address bytes in addr */
	__u8 addr[112]; /* sockaddr_un is the largest: 110 bytes */
	char comm[16];	/* the process's command name (it may be gone when the record is read) */
};

/* Python frames sent per request at most, and the frame bytes read to find what is in one. */
#define SQLSPAN_MAX_FRAMES 128
#define SQLSPAN_SA_CODES   3 /* SQLAlchemy Connection methods recognised by the BPF side */
#define SQLSPAN_GS_FAST	   8 /* AsyncConnection/AsyncSession methods: greenlet not walked */
/* Records of a TLS connection's plaintext (read where libssl takes and gives it) carry fd | this */
#define SQLSPAN_TLS_FD	     (1 << 30)
#define SQLSPAN_TASK_NAME    32 /* bytes of an asyncio task's name kept */
#define SQLSPAN_FRAME_READ   128
#define SQLSPAN_FRAME_LOCALS 4

struct ev_frame {
	__u64 code;  /* PyCodeObject * */
	__u64 instr; /* the frame's instruction pointer (prev_instr / instr_ptr) */
	__u64 local[SQLSPAN_FRAME_LOCALS]; /* localsplus[0..3]: self, arguments */
	__u8 owner;
	__u8 _pad[3];
	/*
	 * Which code object it was when the stack was read: its co_filename and co_qualname
	 * pointers and the file name's length, str hash and last 8 bytes (FILE_SUM) mixed
	 * (FRAME_IDENT); 0 if not read. Code objects can be freed and their address reused before
	 * userspace names them, their strings too: a mismatch leaves the frame unnamed, never
	 * misnamed. The file name's sum tells apart files whose strings landed at the same
	 * addresses (the hash is -1 until the str is first hashed: interned ones at once, compile()
	 * file names maybe never; the length and the end of the name stay).
	 */
	__u32 ident;
};

#define FILE_SUM(len, hash, tail)                                                                  \
	((__u64)(hash) ^ ((__u64)(len)*0x9E3779B97F4A7C15ULL) ^                                    \
	 ((__u64)(tail)*0xC2B2AE3D27D4EB4FULL))
#define FRAME_IDENT(filename, qualname, fsum)                                                      \
	((__u32)((filename) ^ ((qualname) << 1) ^ (__u64)(fsum) ^ ((__u64)(fsum) >> 32)) | 1u)
/* a file name's last 8 bytes count from this length on (shorter ones: 0) */
#define FILE_TAIL_MIN 8
#define FILE_LEN_MAX  (1u << 20)

/*
 * The ring's pages written once before tracing (ring_touch): records of one page each with the
 * ring's 8-byte record header, this many per program run.
 */
#define SQLSPAN_RING_TOUCH_SIZE (4096 - 8)
#define SQLSPAN_RING_TOUCH_RECS 256

/*
 * Code objects whose identity the BPF side takes from the `hot_codes` map instead of reading it
 * (one user memory read less per frame): the long-lived ones userspace has seen on stacks for a
 * while, and checks again before each time it reads records (a code object freed and its address
 * reused is then caught before the stacks that name it are). Slot: SQLSPAN_HOT_SLOT(code).
 */
#define SQLSPAN_HOT_CODES 4096
#define SQLSPAN_HOT_SLOT(code)                                                                     \
	((__u32)(((code) >> 4) ^ ((code) >> 16) ^ ((code) >> 28)) & (SQLSPAN_HOT_CODES - 1))

struct hot_code {
	__u64 code; /* 0: free */
	__u32 tgid;
	__u32 ident; /* FRAME_IDENT of the code object, as userspace last checked it */
	__u32 flags; /* HOT_* */
	__u32 _pad;
};

/*
 * hot_code.flags: the application's own code (where a call site is): without --stack nothing
 * outside the first such frame is needed, and the walk of the running stack ends there (in an
 * asyncio process, once the Task's Handle._run is passed too).
 */
#define HOT_APP 1
/* SQLAlchemy's greenlet_spawn (any other hot code object is known not to be: not checked) */
#define HOT_GS 2
/*
 * Userspace has no use for this code object's frame when only the call site is wanted (neither
 * the app's nor one of the SQLAlchemy or asyncio methods whose locals it reads): without --stack
 * the BPF side walks past such a frame without sending it (bpf_loop kernels; a stack record
 * costs the traced thread by its size).
 */
#define HOT_SKIP 4

#define STACK_CUT	(1u << 0) /* deeper than the frames sent */
#define STACK_NO_THREAD (1u << 1) /* the thread's PyThreadState was not found */
#define STACK_FAULT	(1u << 2) /* a frame could not be read: the walk stopped there */

struct ev_stack {
	struct ev_hdr h; /* pid, tid and ts of the EV_REQ it belongs to */
	__u64 tstate;
	__u32 nframes;
	__u32 flags;
	/*
	 * SQLAlchemy's Connection in a frame of py_cfg.sa_code: its type, and its `engine`
	 * attribute read at the statement (if py_cfg.sa_type is that type): engines live long, the
	 * Connection may be gone by the time userspace reads the record. 0: none.
	 */
	__u64 sa_type;
	__u64 sa_engine;
	/*
	 * The Connection, when it was found on the running stack rather than in a frame of the
	 * greenlet (greenlet_spawn called for a bound method of it: py_learnt.gs_fast); 0
	 * otherwise.
	 */
	__u64 sa_conn;
	/*
	 * For userspace to learn a Session's layout from (py_learnt.ss_type, st_type), while it has
	 * not: the type of the object greenlet_spawn's bound method is bound to, and that of a
	 * Session's `_transaction`. 0 otherwise.
	 */
	__u64 gs_self_type;
	__u64 st_tx_type;
	/*
	 * The asyncio Task running the statement (its Handle._run frame is on the stack): its name,
	 * copied at the statement (TASK_NAME_STR: task_name, cut to fit), or its number (3.12+
	 * keep an unnamed task's number until asked: "Task-<task_num>"); task_handle_type: the
	 * Handle's type, for userspace to learn from.
	 */
	__u64 task_handle_type;
	__u64 task_cb_type; /* the Handle's callback's type, when not one cfg names (to learn) */
	/*
	 * While userspace has not learnt the Task's type: what the callback holds where the task
	 * step wrapper keeps its Task (or the bound method its self), for userspace to learn from
	 * (a Task outlives its Handle and callback, which may be gone by then).
	 */
	__u64 task_obj;
	__u64 task_num;
	__u32 task_kind; /* TASK_NAME_* */
	__u32 task_len;	 /* bytes of task_name (the name may be longer: cut) */
	char task_name[SQLSPAN_TASK_NAME];
	struct ev_frame frames[]; /* innermost first */
};

#define STEP_WRAPPER_TASK 16 /* TaskStepMethWrapper{PyObject_HEAD; TaskObj *sw_task; ...} */

#define TASK_NAME_NONE 0
#define TASK_NAME_STR  1
#define TASK_NAME_NUM  2

/*
 * What userspace learns of a process's Python objects from its first statements, for the BPF
 * side to read at each statement (0 / -1: not known yet):
 * - SQLAlchemy's Connection.engine: the code objects of the Connection methods whose first local
 *   is the Connection, its type, and where the type keeps `engine` among an instance's values
 *   (sa_slot: in the values; inline values: from the object, sa_valid their valid flag);
 * - asyncio's running Task: the code of Handle._run, the Handle type and where it keeps
 *   _callback; the callback types that hold the Task (the C task-step wrapper, a builtin method
 *   bound to the task) and where; the Task type and where it keeps its name.
 */
struct py_learnt {
	__u64 sa_code[SQLSPAN_SA_CODES];
	/*
	 * AsyncConnection's and AsyncSession's statement methods (execute, exec_driver_sql, stream;
	 * execute, scalar, stream, get): when one awaits greenlet_spawn for a bound method of a
	 * Connection of sa_type, or of a Session of ss_type bound to one Connection, that
	 * Connection is the statement's, and the greenlet (its frames sit in memory mapped anew for
	 * each statement, costly to read) is not walked for the call site alone.
	 */
	__u64 gs_fast[SQLSPAN_GS_FAST];
	/*
	 * The Session's type, where it keeps `_transaction`; the SessionTransaction's type, where
	 * it keeps `_connections` (slot and valid as sa_slot and sa_valid).
	 */
	__u64 ss_type, st_type;
	__s32 ss_tx_slot, ss_tx_valid, st_conns_slot, st_conns_valid;
	__u64 sa_type;
	__u64 task_run_code, task_handle_type, task_step_type, task_meth_type, task_type;
	__s32 sa_slot, sa_valid;
	__s32 task_cb_off, task_step_off, task_meth_off, task_name_off;
};

/* Per traced CPython process: where things are (from pylayout, set by the loader). */
struct py_cfg {
	__u64 runtime; /* &_PyRuntime */
	__s32 interp_head, threads_head, tstate_next, tstate_thread_id, tstate_frame, cframe_frame;
	__s32 frame_code, frame_previous, frame_instr, frame_owner, frame_localsplus;
	__s32 owner_cstack, owner_first_incomplete;
	__u32 code_tagged;
	__u32 max_frames;
	__u32 site_only; /* no --stack: the frames outside the call site are not needed (HOT_APP) */
	/*
	 * SQLAlchemy's asyncio bridge: greenlet_spawn's code object (0: not seen yet) and where in
	 * its frame the suspended greenlet (`context`) is (-1: not known yet); where a greenlet
	 * keeps the frame object of its innermost suspended frame (-1: the BPF side finds it, by
	 * frame_type, and writes it here); where a frame object points to its interpreter frame.
	 */
	__u64 gs_code;
	__u64 frame_type;  /* PyFrame_Type */
	__u64 method_type; /* PyMethod_Type: greenlet_spawn's function, a bound method */
	__u64 dict_type;   /* PyDict_Type and PyTuple_Type: a Session's connections */
	__u64 tuple_type;
	__s32 dict_keys, dict_values; /* PyDictObject.ma_keys, ma_values */
	/* PyDictKeysObject: dk_log2_index_bytes, dk_kind, dk_nentries, dk_indices */
	__s32 keys_log2_index_bytes, keys_kind, keys_nentries, keys_indices;
	__s32 tuple_size, tuple_items;
	__s32 gs_ctx_off;
	__s32 gl_pimpl_off; /* PyGreenlet.pimpl */
	__s32 gl_frame_off; /* in greenlet's C++ Greenlet: python_state._top_frame */
	__s32 fo_frame_off; /* PyFrameObject.f_frame */
	__s32 code_name;    /* PyCodeObject.co_name */
	__s32 str_ascii;    /* where a compact ASCII str's characters start */
	__u32 gs_search;    /* look for greenlet_spawn among coroutine frames */
	__s32 code_ident; /* co_filename, then co_name and co_qualname (8 bytes apart); -1: none */
	struct py_learnt lr;	 /* set by userspace as it learns */
	__s32 sa_mode;		 /* SA_VALUES_* */
	__s32 sa_managed_dict;	 /* offset of the managed dict (or 3.12 dict-or-values) pointer */
	__s32 sa_managed_values; /* 3.11: offset of the values pointer */
	__s32 sa_dict_values;	 /* PyDictObject.ma_values */
	/*
	 * Stacks still sent with a wakeup of the reader, so that it reads the first statements'
	 * objects while they live, and learns lr from them (0 once learnt).
	 */
	__u32 sa_wake_left;
	__u32 long_tagged; /* int: lv_tag (3.12+) or ob_size */
	__u64 str_type;	   /* the str and int types (task names) */
	__u64 int_type;
	__s32 str_length; /* PyASCIIObject.length (its hash follows: 8 bytes on) */
	__s32 str_state;  /* PyASCIIObject.state */
	__s32 long_tag;
	__s32 long_digits;
};

/* py_cfg.sa_mode: where an instance's attribute values are */
#define SA_VALUES_NONE	 0
#define SA_VALUES_311	 1 /* values pointer before the object, or a split dict's */
#define SA_VALUES_312	 2 /* dict-or-values (the values - 1: odd) before the object */
#define SA_VALUES_INLINE 3 /* 3.13+: inline, after the object's basic size */

/* ev_frame.owner: a frame of the suspended greenlet greenlet_spawn holds (SQLAlchemy's sync side)
 */
#define FRAME_GREENLET 0x80

/* EV_DESYNC, EV_CLOSE, EV_FINISH, EV_EXIT, EV_MMAP */
struct ev_conn {
	struct ev_hdr h;
	__u64 conn; /* PGconn * for EV_FINISH */
	__s32 fd;
	__u32 arg; /* EV_DESYNC: reason; EV_FINISH: 1 = PQreset, 0 = PQfinish; EV_MMAP: below */
};

#define EV_MMAP_EXEC 1 /* EV_MMAP's arg: the process exec'd */

enum desync_reason {
	DESYNC_BAD_HEADER = 1, /* a message header that no backend sends */
	DESYNC_TOO_MANY = 2,   /* more messages in one read than the walker may visit */
	DESYNC_READ_FAULT = 3, /* the receive buffer could not be read */
	DESYNC_TLS = 4,	       /* TLS records: the replies are encrypted on the socket */
	DESYNC__COUNT
};

/*
 * EV_CLOSE's arg: the stream had not been at a known boundary since the loader last saw the
 * kernel skip runs (maps.bpf.h: sync_epoch): a reply may have been lost without a trace.
 */
#define EV_CLOSE_STALE 1

/* Counters in the per-CPU `stats` map. */
enum sqlspan_stat {
	ST_DROP_TEXT = 0,  /* text chunks lost: ring/perf buffer full */
	ST_DROP_REQ,	   /* requests lost */
	ST_DROP_MSG,	   /* backend messages lost */
	ST_DROP_OTHER,	   /* other records lost */
	ST_DESYNC,	   /* sockets whose stream could not be followed */
	ST_FD_FULL,	   /* sockets not tracked: table full */
	ST_REQS,	   /* requests seen */
	ST_MSGS,	   /* backend messages seen (DataRows excluded) */
	ST_ROWS,	   /* DataRows skipped */
	ST_RECVS,	   /* reads of tracked sockets */
	ST_WAKEUPS,	   /* the reader woken early: the ring filling (buffer.bpf.h) */
	ST_PY_READ_FAILED, /* Python stack reads that failed (pystack.bpf.h: py_read_if) */
	ST__COUNT,
};

/* Per-library data for the BPF side: where in a PGconn what sqlspan reads lives (-1: unknown). */
struct lib_range {
	__u64 lo, hi;	    /* text addresses of this libpq in the process */
	__s16 sock_off;	    /* PGconn.sock */
	__s16 pipe_off;	    /* PGconn.pipelineStatus (libpq 14+) */
	__s16 status_off;   /* PGconn.status */
	__s16 be_pid_off;   /* PGconn.be_pid */
	__s16 db_off;	    /* PGconn.dbName */
	__s16 user_off;	    /* PGconn.pguser */
	__s16 connhost_off; /* PGconn.connhost */
	__s16 which_off;    /* PGconn.whichhost */
	__s16 ssl_off;	    /* PGconn.ssl_in_use */
	__s16 host_size;    /* sizeof(pg_conn_host) */
	__s16 host_type;    /* pg_conn_host.type */
	__s16 host_host;    /* pg_conn_host.host */
	__s16 host_addr;    /* pg_conn_host.hostaddr */
	__s16 host_port;    /* pg_conn_host.port */
	/*
	 * The PGconn bytes that hold sock, pipelineStatus and be_pid, read at each request in one
	 * go (blk_len 0: field by field): [blk_lo, blk_lo + blk_len), blk_len <= SQLSPAN_CONN_BLK.
	 */
	__s16 blk_lo;
	__s16 blk_len;
};

#define SQLSPAN_CONN_BLK 512

struct proc_libs {
	struct lib_range lib[SQLSPAN_MAX_LIBS];
};

#ifdef __cplusplus
#define SQLSPAN_ASSERT static_assert
#else
#define SQLSPAN_ASSERT _Static_assert
#endif
SQLSPAN_ASSERT(sizeof(struct ev_hdr) == 24, "ev_hdr size");
SQLSPAN_ASSERT(sizeof(struct ev_text) == 4096, "ev_text size");
SQLSPAN_ASSERT(sizeof(struct ev_req) == 24 + 32 + SQLSPAN_NAME_LEN, "ev_req size");
SQLSPAN_ASSERT(sizeof(struct ev_ident) == 24 + 48 + 2 * SQLSPAN_IDENT_STR + 16 + SQLSPAN_IDENT_HOST,
	       "ev_ident size");
SQLSPAN_ASSERT(sizeof(struct ev_msg) == 48, "ev_msg size");
SQLSPAN_ASSERT(sizeof(struct ev_msgs) == 32, "ev_msgs size");
SQLSPAN_ASSERT(sizeof(struct ev_conn) == 40, "ev_conn size");
SQLSPAN_ASSERT(sizeof(struct ev_fmsg) == 48, "ev_fmsg size");
SQLSPAN_ASSERT(sizeof(struct ev_fmsg) == sizeof(struct ev_msg), "EV_MSGS records: one header size");
SQLSPAN_ASSERT(sizeof(struct ev_connect) == 160, "ev_connect size");
SQLSPAN_ASSERT(sizeof(struct lib_range) == 48, "lib_range size");
SQLSPAN_ASSERT(sizeof(struct ev_frame) == 56, "ev_frame size");
SQLSPAN_ASSERT(sizeof(struct ev_stack) == 56 + 64 + SQLSPAN_TASK_NAME, "ev_stack size");
SQLSPAN_ASSERT(sizeof(struct hot_code) == 24, "hot_code size");
SQLSPAN_ASSERT(sizeof(struct py_learnt) == 192, "py_learnt size");
SQLSPAN_ASSERT(sizeof(struct py_cfg) == 424, "py_cfg size");

#endif
