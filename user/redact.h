/* SPDX-License-Identifier: MIT */
/* Keeping secrets out of the output: passwords in SQL, connection strings and URLs. */
#ifndef SQLSPAN_REDACT_H
#define SQLSPAN_REDACT_H

#include <stdbool.h>
#include <stddef.h>

#define REDACTED "***"

/*
 * SQL: the string literal after a PASSWORD keyword (CREATE/ALTER ROLE ... PASSWORD '...', user
 * mapping options) becomes '***'. Returns a new malloc'd string with its length in *out_n, or
 * NULL when there was nothing to redact (or no memory).
 */
char *redact_sql(const char *sql, size_t n, size_t *out_n);

/* libpq key=value connection strings: password=... becomes password=***. Returns malloc'd text. */
char *redact_conninfo(const char *s);

/* URLs: scheme://user:secret@host/... and ?password=... become ***. Returns malloc'd text. */
char *redact_url(const char *s);

/* Redact whichever of the two forms `s` is. */
char *redact_dsn(const char *s);

#endif
