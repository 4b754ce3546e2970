/* SPDX-License-Identifier: MIT */
/*
 * Making sense of a Python stack, once its frames are named: which frame is the application's
 * call site, which SQLAlchemy frames hold the connection, how the stack is shown. Pure logic.
 */
#ifndef SQLSPAN_PYFRAMES_H
#define SQLSPAN_PYFRAMES_H

#include <stdbool.h>
#include <stddef.h>

/* Is this file the application's (not the standard library, site-/dist-packages, <frozen>)?
 * app_paths: if given (NULL-terminated), only files under one of them are the application's. */
bool py_is_app_file(const char *file, const char *const *app_paths);

/* SQLAlchemy's Connection method whose `self` (first local) is the sync Connection. */
bool py_is_sa_connection_frame(const char *file, const char *qualname);
/* AsyncConnection's and AsyncSession's statement methods: they await greenlet_spawn for the
 * Connection's or the Session's own */
bool py_is_sa_async_statement(const char *file, const char *qualname);
/* SQLAlchemy's asyncpg cursor coroutine: its second local is the statement text */
bool py_is_sa_asyncpg_prepare(const char *file, const char *qualname);
/* The dialect's do_execute / do_executemany, whose third local is the statement text. */
bool py_is_sa_do_execute(const char *file, const char *qualname);
/* asyncio's Handle._run, whose `self` holds the callback of the Task it runs. */
bool py_is_asyncio_handle_run(const char *file, const char *qualname);
/* Frames of SQLAlchemy's pool returning a connection (its reset rollback). */
bool py_is_sa_pool_reset(const char *file, const char *qualname);
/*
 * Does userspace read anything from a frame of this code object (without --stack): a call site,
 * greenlet_spawn, or one of the methods above? The others are only walked past.
 */
bool py_frame_read(const char *file, const char *qualname, const char *const *app_paths);

#endif
