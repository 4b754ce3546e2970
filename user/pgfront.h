/* SPDX-License-Identifier: MIT */
/*
 * Decoding of PostgreSQL frontend message bodies (protocol 3.0), as the BPF side captures them
 * on wire sockets: the StartupMessage's parameters, the SQL of Query and Parse, the names in Bind,
 * Execute, Describe and Close. Pure logic, safe on any bytes.
 */
#ifndef SQLSPAN_PGFRONT_H
#define SQLSPAN_PGFRONT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FE_NAME_MAX 64

struct fe_msg {
	uint8_t type; /* 0: StartupMessage; else the frontend type byte */
	/* Parse: statement; Bind, Execute: portal; Describe, Close: statement or portal */
	char name[FE_NAME_MAX];
	char stmt[FE_NAME_MAX]; /* Bind: the statement bound */
	char kind;		/* Describe, Close: 'S' statement or 'P' portal */
	const char *text;	/* Query, Parse: the SQL (in the body given, not NUL-terminated) */
	size_t text_len;
	bool text_cut; /* the SQL goes on beyond what was captured */
	/* StartupMessage: protocol version and parameters ("" when absent) */
	uint32_t version;
	char user[FE_NAME_MAX];
	char database[FE_NAME_MAX];
	char application[FE_NAME_MAX];
};

/*
 * Decode the captured `n` bytes of a message body of `len` bytes in all. Returns 0, or -1 when the
 * bytes cannot be this message (a name without its end, a Describe of neither S nor P, ...).
 */
int fe_parse(uint8_t type, const uint8_t *body, size_t n, size_t len, struct fe_msg *out);

#endif
