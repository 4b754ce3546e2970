/* SPDX-License-Identifier: MIT */
/* Rendering finished spans: NDJSON (OpenTelemetry semantic-convention keys) and a live table. */
#ifndef SQLSPAN_OUTPUT_H
#define SQLSPAN_OUTPUT_H

#include <stdint.h>
#include <stdio.h>
#include "span.h"

/* The span's display name: "SELECT users", "INSERT orders", "EXECUTE _pg3_0", "postgresql". */
void span_name(const struct span *s, char *buf, size_t n);

/* One NDJSON line. mono_to_real: add to CLOCK_MONOTONIC ns to get Unix time ns. */
void out_json(FILE *f, const struct span *s, int64_t mono_to_real);

/* A transaction span (--json): the parent of its statements' spans. */
void out_json_txn(FILE *f, const struct txn_span *t, int64_t mono_to_real);
const char *txn_outcome_name(enum txn_outcome o);

/* The table: a header line, then one line per span fitted to `width` columns. */
void out_table_header(FILE *f, int width);
void out_table_row(FILE *f, const struct span *s, int64_t mono_to_real, int width);

/* Words used in the output for enum values. */
const char *span_result_name(enum span_result r);
const char *span_request_name(enum span_request r);
const char *text_state_name(enum text_state t);

#endif
