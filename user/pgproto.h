/* SPDX-License-Identifier: MIT */
/* Decoding of PostgreSQL backend message bodies (protocol 3.0) that end or describe a statement. */
#ifndef SQLSPAN_PGPROTO_H
#define SQLSPAN_PGPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PG_TAG_MAX    64
#define PG_ERRMSG_MAX 512

struct pg_error {
	char sqlstate[6];  /* "23505"; "" if absent */
	char severity[12]; /* "ERROR", "FATAL", ... (non-localized 'V' if sent) */
	char message[PG_ERRMSG_MAX];
	bool message_cut; /* the message is longer than what was captured */
};

/* CommandComplete: the tag, and the row count it carries (-1 if it carries none). */
struct pg_tag {
	char tag[PG_TAG_MAX];
	int64_t rows;
};

/* CommandComplete body (a NUL-terminated tag). Returns 0, or -1 if malformed. */
int pg_parse_tag(const uint8_t *body, size_t n, struct pg_tag *out);
/*
 * ErrorResponse/NoticeResponse body: (code byte, NUL-terminated string)*, 0. `cut` says the body
 * was captured only in part. Returns 0, or -1 if nothing usable was found.
 */
int pg_parse_error(const uint8_t *body, size_t n, bool cut, struct pg_error *out);
/* ReadyForQuery transaction status byte to words: "idle", "in_transaction", "failed", NULL. */
const char *pg_txn_status_name(uint8_t status);

#endif
