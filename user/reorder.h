/* SPDX-License-Identifier: MIT */
/*
 * Perf buffers are per CPU: records of one connection can arrive out of order when its threads
 * move between CPUs. This merges them back by timestamp, holding each record a short while.
 * (The ring buffer is one ordered stream and needs none of this.)
 */
#ifndef SQLSPAN_REORDER_H
#define SQLSPAN_REORDER_H

#include <stddef.h>
#include <stdint.h>

struct reorder;

struct reorder *reorder_new(void);
void reorder_free(struct reorder *r);
/* Keep a copy of a record. Returns 0, or -1 if it could not be kept (use it right away). */
int reorder_add(struct reorder *r, const void *rec, size_t size);
/* The oldest record with a timestamp before `horizon`, or NULL; call reorder_release after use. */
const void *reorder_pop(struct reorder *r, uint64_t horizon, size_t *size);
void reorder_release(struct reorder *r);

#endif
