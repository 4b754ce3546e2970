/* SPDX-License-Identifier: MIT */
/* /proc/PID/maps: which files a process has mapped, and where. */
#ifndef SQLSPAN_PROCMAPS_H
#define SQLSPAN_PROCMAPS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct map_entry {
	uint64_t lo, hi, offset;
	bool exec;
	unsigned dev_major, dev_minor;
	uint64_t inode;
	char path[512]; /* as the process sees it; "" for anonymous mappings */
	bool deleted;	/* the file was replaced or removed since it was mapped */
};

/* Parse one line of /proc/PID/maps. Returns 0, or -1 if it is not a maps line. */
int maps_parse_line(const char *line, struct map_entry *e);

/* Is this the file name of a libpq (libpq.so.5, libpq.so.5.15, libpq-8a1b2c3d.so.5.16)? */
bool is_libpq_name(const char *path);
/* Whether a mapped file is a PostgreSQL driver that speaks the protocol itself (asyncpg). */
bool is_wire_driver_name(const char *path);

#endif
