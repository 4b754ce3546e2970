// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <string.h>
#include "procmaps.h"

int maps_parse_line(const char *line, struct map_entry *e)
{
	char perms[8];
	int pos = 0;
	size_t len;
	const char *p;

	memset(e, 0, sizeof(*e));
	if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu %n", &e->lo, &e->hi, perms, &e->offset,
		   &e->dev_major, &e->dev_minor, &e->inode, &pos) < 7)
		return -1;
	e->exec = strchr(perms, 'x') != NULL;
	p = line + pos;
	while (*p == ' ')
		p++;
	len = strcspn(p, "\n");
	if (len >= sizeof(e->path))
		len = sizeof(e->path) - 1;
	memcpy(e->path, p, len);
	e->path[len] = 0;
	len = strlen(e->path);
	if (len > 10 && !strcmp(e->path + len - 10, " (deleted)")) {
		e->deleted = true;
		e->path[len - 10] = 0;
	}
	return 0;
}

bool is_libpq_name(const char *path)
{
	const char *b = strrchr(path, '/');

	b = b ? b + 1 : path;
	if (strncmp(b, "libpq", 5))
		return false;
	b += 5;
	if (*b == '-') { /* a copy bundled by auditwheel: libpq-<hash>.so.N */
		b++;
		while (*b && *b != '.')
			b++;
	}
	return !strncmp(b, ".so", 3) && (b[3] == 0 || b[3] == '.');
}

bool is_wire_driver_name(const char *path)
{
	/* asyncpg's protocol extension:
	 * .../asyncpg/protocol/protocol.cpython-311-x86_64-linux-gnu.so
	 */
	const char *m = strstr(path, "/asyncpg/protocol/protocol");

	return m && strstr(m, ".so");
}
