// SPDX-License-Identifier: MIT
#include <string.h>
#include "pyframes.h"

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/* ".../lib/python3.NN/..." (the standard library of a CPython install) */
static bool in_stdlib(const char *file)
{
	const char *p = file;

	while ((p = strstr(p, "/lib/python3."))) {
		const char *q = p + strlen("/lib/python3.");

		while (*q >= '0' && *q <= '9')
			q++;
		if (*q == '/')
			return true;
		p++;
	}
	return false;
}

bool py_is_app_file(const char *file, const char *const *app_paths)
{
	if (!file || !*file)
		return false;
	if (app_paths && *app_paths) {
		for (const char *const *a = app_paths; *a; a++) {
			if (!strncmp(file, *a, strlen(*a)))
				return true;
		}
		return false;
	}
	if (file[0] == '<') /* <frozen importlib._bootstrap>, <string>: generated code */
		return false;
	if (strstr(file, "/site-packages/") || strstr(file, "/dist-packages/"))
		return false;
	return !in_stdlib(file);
}

bool py_is_sa_connection_frame(const char *file, const char *qualname)
{
	return file && qualname && ends_with(file, "sqlalchemy/engine/base.py") &&
	       (!strcmp(qualname, "Connection._exec_single_context") ||
		!strcmp(qualname, "Connection._exec_insertmany_context") ||
		!strcmp(qualname, "Connection._execute_context"));
}

bool py_is_sa_async_statement(const char *file, const char *qualname)
{
	if (!file || !qualname)
		return false;
	if (ends_with(file, "sqlalchemy/ext/asyncio/engine.py"))
		return !strcmp(qualname, "AsyncConnection.execute") ||
		       !strcmp(qualname, "AsyncConnection.exec_driver_sql") ||
		       !strcmp(qualname, "AsyncConnection.stream");
	if (ends_with(file, "sqlalchemy/ext/asyncio/session.py"))
		return !strcmp(qualname, "AsyncSession.execute") ||
		       !strcmp(qualname, "AsyncSession.scalar") ||
		       !strcmp(qualname, "AsyncSession.stream") ||
		       !strcmp(qualname, "AsyncSession.get");
	return false;
}

bool py_is_sa_asyncpg_prepare(const char *file, const char *qualname)
{
	return file && qualname && ends_with(file, "sqlalchemy/dialects/postgresql/asyncpg.py") &&
	       !strcmp(qualname, "AsyncAdapt_asyncpg_cursor._prepare_and_execute");
}

bool py_is_sa_do_execute(const char *file, const char *qualname)
{
	const char *dot;

	if (!file || !qualname || !strstr(file, "sqlalchemy/"))
		return false;
	dot = strrchr(qualname, '.');
	dot = dot ? dot + 1 : qualname;
	return !strcmp(dot, "do_execute") || !strcmp(dot, "do_execute_no_params");
}

bool py_is_asyncio_handle_run(const char *file, const char *qualname)
{
	return file && qualname && ends_with(file, "/asyncio/events.py") &&
	       !strcmp(qualname, "Handle._run");
}

bool py_is_sa_pool_reset(const char *file, const char *qualname)
{
	return file && qualname && ends_with(file, "sqlalchemy/pool/base.py") &&
	       (!strcmp(qualname, "_ConnectionFairy._reset") ||
		!strcmp(qualname, "_finalize_fairy") ||
		!strcmp(qualname, "_ConnectionFairy._checkin"));
}

bool py_frame_read(const char *file, const char *qualname, const char *const *app_paths)
{
	return py_is_app_file(file, app_paths) ||
	       (qualname && !strcmp(qualname, "greenlet_spawn")) ||
	       py_is_sa_connection_frame(file, qualname) ||
	       py_is_sa_async_statement(file, qualname) ||
	       py_is_sa_asyncpg_prepare(file, qualname) || py_is_sa_do_execute(file, qualname) ||
	       py_is_asyncio_handle_run(file, qualname) || py_is_sa_pool_reset(file, qualname);
}
