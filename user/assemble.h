/* SPDX-License-Identifier: MIT */
/*
 * Span assembly: turns the records of the BPF side (requests, text chunks, backend messages,
 * socket and process ends) into finished statement spans. Pure logic: no BPF, no system calls;
 * everything it needs from the outside comes through `struct asm_hooks`.
 *
 * Pairing: per connection (process, socket) a queue of requests in the order the application
 * made them. Outside pipeline mode a request is answered up to ReadyForQuery; in pipeline mode
 * each request ends at its own CommandComplete / ErrorResponse / ParseComplete / ..., sync points
 * at ReadyForQuery, and requests after an error up to the next sync are reported as aborted.
 */
#ifndef SQLSPAN_ASSEMBLE_H
#define SQLSPAN_ASSEMBLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../bpf/sqlspan.h"
#include "span.h"

struct ev_stack;

struct asm_hooks {
	/* Fill in the identity of a connection (strings malloc'd; the assembler frees them). */
	void (*ident)(void *arg, uint32_t pid, uint64_t conn, int fd, struct conn_ident *out);
	/*
	 * A wire socket's first request where sqlspan did not see its session start (the
	 * StartupMessage: opened before attach, or its record lost) and its identity lacks user and
	 * database: fill in what the server's side tells (strings malloc'd). May be NULL.
	 */
	void (*backend)(void *arg, uint32_t pid, int fd, struct conn_ident *id);
	/* process.executable.name of a process; NULL if unknown. */
	const char *(*exe)(void *arg, uint32_t pid);
	/*
	 * Resolve a Python stack record (EV_STACK) into what a span shows. May be NULL. want_text:
	 * the span needs the statement text SQLAlchemy holds (a read of the app's memory).
	 */
	void (*py_resolve)(void *arg, const struct ev_stack *st, size_t size, bool want_text,
			   struct span_py *out);
	/* A finished span. Pointers in it are valid only during the call. */
	void (*span)(void *arg, const struct span *s);
	/* A finished transaction, after its statements. May be NULL. */
	void (*txn)(void *arg, const struct txn_span *t);
	void *arg;
};

struct asm_stats {
	uint64_t spans; /* spans emitted */
	uint64_t by_result[RES_DETACHED + 1];
	uint64_t texts_lost;		    /* statements whose text arrived incomplete */
	uint64_t orphan_msgs;		    /* backend messages with no request waiting */
	uint64_t orphan_texts;		    /* text chunks whose request never came */
	uint64_t gaps;			    /* times records of a socket were lost */
	uint64_t desyncs;		    /* times a socket's stream could not be followed */
	uint64_t desync_why[DESYNC__COUNT]; /* by enum desync_reason */
	uint64_t bad_records;		    /* records too short or of an unknown kind */
	uint64_t txns;			    /* transactions ended */
	/*
	 * wire sockets first seen past their StartupMessage; of which without user and database
	 * (asked of the server's side); of which the server's side told the database
	 */
	uint64_t sessions_unseen, sessions_asked, sessions_found;
	/* sessions seen from their start whose BackendKeyData was not: asked of the system, found
	 */
	uint64_t keys_asked, keys_found;
	uint64_t realigned; /* pending requests ended because the kernel skipped runs */
};

struct assembler;

/* max_text: bytes of statement text kept per span; seed: for trace and span ids. */
struct assembler *asm_new(const struct asm_hooks *hooks, size_t max_text, uint64_t seed);
void asm_free(struct assembler *a);

/* One record from the BPF side, as it arrived. */
void asm_record(struct assembler *a, const void *data, size_t size);

/* Drop text chunks whose request has not come within `max_age_ns` of `now` (monotonic). */
void asm_expire(struct assembler *a, uint64_t now, uint64_t max_age_ns);

/* End every open span as RES_DETACHED (at `now`), e.g. when sqlspan stops. Returns how many. */
uint64_t asm_close_all(struct assembler *a, uint64_t now);

/*
 * The kernel skipped runs of the BPF programs (7.x, under preemption; counted as lost): a
 * skipped run leaves no trace in the stream, so a reply could be paired with the wrong request.
 * While `suspect` is on (records read after a skip was seen), every span emitted is marked as
 * near a loss; asm_realign(now) then ends every pending request as unknown, marked too, so that
 * no shift outlives the records that were read. Returns how many it ended.
 */
void asm_suspect(struct assembler *a, bool on);
uint64_t asm_realign(struct assembler *a, uint64_t now);

/* Spans waiting for their result right now. */
uint64_t asm_open_spans(const struct assembler *a);

const struct asm_stats *asm_stats(const struct assembler *a);

/*
 * Where socket `fd` of process `pid` leads (host or socket directory, Unix socket path, port; the
 * backend, database and user where known), for the wire connections found on it: told by the
 * loader for sockets open before it attached. The strings are copied.
 */
void asm_peer(struct assembler *a, uint32_t pid, int fd, const struct conn_ident *id);

/* An identity from a Unix socket's path: .../.s.PGSQL.5432 -> the directory as host, the port. */
void ident_from_unix_path(const char *path, struct conn_ident *out);

/* Free the strings of an identity. */
void conn_ident_free(struct conn_ident *id);

#endif
