/* SPDX-License-Identifier: MIT */
/* A finished statement span, as the assembler hands it to the output. */
#ifndef SQLSPAN_SPAN_H
#define SQLSPAN_SPAN_H

#include <stdbool.h>
#include <stdint.h>
#include "pgproto.h"

/* What the application asked libpq to do. */
enum span_request {
	REQ_QUERY = 0, /* SQL text sent for execution (simple or extended protocol) */
	REQ_PREPARE,   /* a statement prepared under a name */
	REQ_EXECUTE,   /* a prepared statement executed by name */
	REQ_DESCRIBE,  /* a prepared statement or portal described */
	REQ_CLOSE,     /* a prepared statement or portal closed */
	REQ_SYNC,      /* pipeline sync point (never reported as a span) */
};

/* How the span ended. */
enum span_result {
	RES_OK = 0,
	RES_ERROR,    /* the server answered with an ErrorResponse */
	RES_ABORTED,  /* skipped by the server after an earlier error in the same pipeline */
	RES_UNKNOWN,  /* the result was not seen (events lost, stream not followed, TLS) */
	RES_CLOSED,   /* the connection closed before the result arrived */
	RES_EXITED,   /* the process exited before the result arrived */
	RES_DETACHED, /* still open when sqlspan stopped */
};

/* The statement text as far as it is known. */
enum text_state {
	TEXT_FULL = 0,
	TEXT_CUT,	 /* longer than --max-sql-bytes: the start is kept */
	TEXT_UNKNOWN,	 /* an execution by name of a statement prepared before sqlspan attached */
	TEXT_INCOMPLETE, /* part of the text was lost (buffer full) or unreadable */
	TEXT_NONE,	 /* nothing to show (describe/close of an unknown statement, sync) */
	TEXT_FROM_APP,	 /* prepared before attach: the text SQLAlchemy holds for it (its stack) */
};

/* What is known of the connection a span ran on. Strings are NULL when unknown. */
struct conn_ident {
	char *db;
	char *user;
	char *host;	 /* host name or address as the application gave it */
	char *unix_path; /* socket file, for Unix-domain connections */
	int port;	 /* 0 unknown */
	int backend_pid; /* 0 unknown */
	bool tls;	 /* the connection uses SSL/TLS */
	char comm[16];	 /* command name of the thread that first used it ("" unknown) */
	bool known;	 /* the PGconn could be read at all */
	/* a wire socket first seen past its StartupMessage whose database stayed unknown */
	bool session_unseen;
};

/* What the Python stack at the request says (all strings malloc'd, owned by the span). */
struct span_py {
	bool present;	/* a stack was read */
	bool cut;	/* deeper than what was read */
	char *function; /* the application's call site: qualified name */
	char *file;
	int line;	    /* -1 unknown */
	char *stack;	    /* --stack: a JSON array of "qualname (file:line)", innermost first */
	uint64_t sa_conn;   /* the SQLAlchemy Connection (id(conn)), 0 if none on the stack */
	const char *sa_url; /* its engine's URL, password hidden (owned by the stack resolver) */
	char task_name[48]; /* asyncio.task.name: the running Task's name ("" if none) */
	bool pool_reset;    /* issued by SQLAlchemy's pool when a connection is returned */
	char *sa_statement; /* the statement text SQLAlchemy holds, if read */
	char *problem;	    /* why the stack could not be read, if it could not */
};

/* Free what a span_py holds and clear it. */
void span_py_free(struct span_py *p);

/* How a transaction ended. */
enum txn_outcome {
	TXN_COMMIT = 0,
	TXN_ROLLBACK,	/* rolled back by the application (or a failed transaction committed) */
	TXN_POOL_RESET, /* rolled back by SQLAlchemy's pool when the connection was returned */
	TXN_OPEN, /* still open when the connection closed, the process exited, sqlspan stopped */
};

/* A transaction: the statements between the one that opened it and the one that ended it. */
struct txn_span {
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint64_t start_ns, end_ns; /* CLOCK_MONOTONIC */
	uint32_t pid, tid;
	const char *exe;
	const struct conn_ident *ident;
	int backend_pid;
	int nstatements;
	enum txn_outcome outcome;
	uint64_t sa_conn;   /* the SQLAlchemy Connection, if its statements named one */
	const char *sa_url; /* its engine's URL (owned by the stack resolver) */
	bool wire;	    /* its statements were captured on the socket */
};

struct span {
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint64_t start_ns, end_ns; /* CLOCK_MONOTONIC */
	uint32_t pid, tid;
	const char *exe; /* process.executable.name */
	uint64_t conn;	 /* PGconn address in the process (0 for wire sockets) */
	int fd;
	bool wire; /* captured on the socket (a driver without libpq), not from libpq */

	enum span_request req;
	enum span_result result;
	enum text_state text_state;
	char *text; /* NUL-terminated, may be NULL */
	size_t text_len;
	bool redacted; /* a password literal was replaced */
	char name[64]; /* statement or portal name */
	bool has_name;
	bool pipeline;
	bool described; /* wire: a prepare sent with its Describe: it ends at RowDescription/NoData
			 */

	struct pg_tag tag;     /* tag.tag[0] == 0: none */
	int64_t returned_rows; /* DataRows seen, -1 if not counted */
	int ncommands;	       /* CommandCompletes seen (more than one for multi-statement text) */
	bool has_error;
	struct pg_error error;
	uint8_t txn_status; /* ReadyForQuery status after the statement, 0 if not seen */
	const struct conn_ident *ident;
	int backend_pid;  /* from the PGconn at the call; 0 unknown */
	bool lost_events; /* records were lost around this span */
	struct span_py py;
	bool in_txn;		   /* part of a transaction: trace_id is the transaction's */
	uint8_t parent_span_id[8]; /* the transaction span */
};

#endif
