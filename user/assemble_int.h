/* SPDX-License-Identifier: MIT */
/* The assembler's insides, shared by assemble.c (libpq requests, replies) and asm_wire.c. */
#ifndef SQLSPAN_ASSEMBLE_INT_H
#define SQLSPAN_ASSEMBLE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "assemble.h"
#include "hmap.h"
#include "../bpf/sqlspan.h"

/* requests in flight on one connection before the oldest are given up */
#define MAX_PENDING 100000
/* prepared statements remembered per connection */
#define MAX_PREPARED 4096

struct prepared {
	char name[SQLSPAN_NAME_LEN];
	char *text;
	size_t len;
	enum text_state state;
};

/* A message being reassembled from parts. */
struct partial {
	bool active;
	uint8_t type;
	uint32_t len, cap, have;
	uint8_t data[SQLSPAN_MSG_LONG];
};

struct aconn {
	uint32_t pid;
	int fd;
	uint64_t conn;
	struct conn_ident ident;
	bool have_ident;
	struct txn_span txn; /* the open transaction */
	bool txn_open;
	struct span **q; /* pending requests, oldest first */
	size_t qhead, qlen, qcap;
	bool pipe_aborted; /* an error in pipeline mode: requests up to the next sync are skipped */
	struct prepared *prep;
	size_t nprep;
	struct partial msg;
	/* wire sockets (asm_wire.c) */
	bool wire;		/* the application speaks the protocol itself on this socket */
	bool session_seen;	/* its StartupMessage was read, or its first request */
	bool key_asked;		/* its BackendKeyData missed: the backend asked of the system */
	struct wpartial *fmsg;	/* the frontend message being reassembled */
	struct portal *portals; /* portal -> statement, from Bind */
	size_t nportals;
	char last_parse[SQLSPAN_NAME_LEN]; /* the statement of the last Parse (its Describe) */
	uint64_t last_parse_ts;
	void *stack_rec; /* the Python stack of the last send: shared by its statements */
	size_t stack_size;
	uint32_t stack_tid;
	uint64_t stack_ts;
	/*
	 * The send a wire request began in (its first message's first bytes; Execute: its Bind's):
	 * libpq flushes a long message before the rest, so a request can end in a later send,
	 * which read no stack.
	 */
	uint64_t begun_ts;
	uint64_t bind_ts;
};

struct ptext {
	uint32_t pid, tid;
	uint64_t ts;
	char *buf;
	size_t len;
	uint32_t got; /* chunks received */
	bool broken;  /* a chunk is missing or out of order */
};

/* A stack record waiting for its request. */
struct pstack {
	uint32_t pid, tid;
	uint64_t ts;
	void *rec;
	size_t size;
};

struct assembler {
	struct asm_hooks h;
	size_t max_text;
	uint64_t rng[4];
	struct hmap conns; /* (pid, fd) -> aconn */
	struct hmap peers; /* (pid, fd) -> struct peer: where wire-capable processes connected */
	struct ptext *texts;
	size_t ntexts, captexts;
	struct pstack *stacks;
	size_t nstacks, capstacks;
	struct asm_stats st;
	uint64_t open;
	bool suspect; /* see asm_suspect */
};

struct aconn *conn_get(struct assembler *a, uint32_t pid, int fd, bool create);
/* A new span for a request made at h (ids, times, process), not yet on a queue. */
struct span *span_new(struct assembler *a, const struct ev_hdr *h);
void span_free(struct span *s);
/* An execution of a statement prepared before attach: the text SQLAlchemy holds, if on the stack.
 */
void text_from_app(struct aconn *c, struct span *s);
/* Does the span need that text (an execution whose statement's text is unknown)? */
bool text_wanted(const struct span *s);
/* Queue a request on its connection (giving up the oldest if too many wait). */
void conn_enqueue(struct assembler *a, struct aconn *c, struct span *s);
/* The request queued last on a connection, NULL if none. */
struct span *q_back(struct aconn *c);
void drain(struct assembler *a, struct aconn *c, enum span_result res, uint64_t end, bool lost);
struct prepared *prep_find(struct aconn *c, const char *name);
/* Forget every prepared statement of a connection (a new session on it). */
void prep_clear(struct aconn *c);
/* Replace a password literal in the span's text, marking the span. */
void span_redact(struct span *s);
/* The span's text from a prepared statement (its state with it); `none` if it has no text. */
void span_text_prepared(struct span *s, const struct prepared *p, enum text_state none);
void prep_remember(struct aconn *c, const char *name, const char *text, size_t len,
		   enum text_state state);
/* The stack record sent with a request (pid, tid, ts); removed from the pending ones. */
void *stack_take(struct assembler *a, uint32_t pid, uint32_t tid, uint64_t ts, size_t *size);

/* asm_wire.c */
void on_fmsg(struct assembler *a, const struct ev_fmsg *m, size_t size);
void on_connect(struct assembler *a, const struct ev_connect *e, size_t size);
/* Forget the connect addresses of a process (all of them: pid 0), or of one socket. */
void peers_forget(struct assembler *a, uint32_t pid);
void peer_forget(struct assembler *a, uint32_t pid, int fd);
void wire_conn_free(struct aconn *c);
void wire_backend_key(struct aconn *c, const uint8_t *body, size_t n);

#endif
