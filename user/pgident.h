/* SPDX-License-Identifier: MIT */
/*
 * Connection identity read from the traced process's own PGconn (process_vm_readv), with offsets
 * from pqlayout: database, user, host or socket, port, backend PID, TLS. Works the same for
 * connections opened before sqlspan attached.
 */
#ifndef SQLSPAN_PGIDENT_H
#define SQLSPAN_PGIDENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "pqlayout.h"
#include "span.h"

/* Read the identity; fields that cannot be read stay NULL / 0. Never fails: see id->known. */
void pgident_read(pid_t pid, uint64_t conn, const struct pq_layout *l, struct conn_ident *id);
void pgident_free(struct conn_ident *id);

/* Read `n` bytes at `addr` in process `pid`. Returns bytes read or -1. */
ssize_t proc_read(pid_t pid, uint64_t addr, void *buf, size_t n);

/* One of many ranges read at once by proc_read_many: ok when all `len` bytes were read. */
struct proc_piece {
	uint64_t addr;
	void *buf;
	size_t len;
	bool ok;
};

/*
 * Read every piece, in as few system calls as the kernel allows (one per IOV_MAX pieces, plus
 * one more after each piece that cannot be read: the kernel stops there). Returns the system
 * calls made.
 */
unsigned proc_read_many(pid_t pid, struct proc_piece *pieces, size_t n);

#endif
