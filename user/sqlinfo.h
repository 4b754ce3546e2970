/* SPDX-License-Identifier: MIT */
/* What a statement does and to which table: db.operation.name and db.collection.name. */
#ifndef SQLSPAN_SQLINFO_H
#define SQLSPAN_SQLINFO_H

#include <stddef.h>

struct sql_info {
	char op[32];	/* "SELECT", "INSERT", "CREATE TABLE", ...; "" if not recognised */
	char coll[128]; /* the first table named, as written ("public.users"); "" if none */
};

void sql_info(const char *sql, size_t n, struct sql_info *out);

#endif
