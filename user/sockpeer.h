/* SPDX-License-Identifier: MIT */
/* Where a socket of another process leads: the server end of its connection. */
#ifndef SQLSPAN_SOCKPEER_H
#define SQLSPAN_SOCKPEER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * Where socket `fd` of process `pid` is connected: for a Unix socket the path its peer is bound
 * to (*is_unix; sock_diag, in sqlspan's network namespace), for TCP the remote address and port
 * (the process's own /proc/PID/net/tcp, tcp6). *peer_ino: the inode of the other end's socket,
 * where it is on this host (the Unix peer; for TCP, the socket with the same ends the other way
 * round in the process's network namespace), else 0. Returns 0, or -1 if it cannot be found.
 */
int sock_peer(pid_t pid, int fd, char *addr, size_t size, int *port, bool *is_unix,
	      unsigned long *peer_ino);

/*
 * The local PostgreSQL backend that holds socket inode `ino` (the server end of a connection, as
 * sock_peer's peer_ino gives it): its PID, and the user and database its process title shows
 * ("postgres: USER DATABASE ..."; left as they are if the title says otherwise). Returns 0 if
 * found: the server runs on this host, in sqlspan's view of /proc.
 */
int pg_backend_of(unsigned long ino, pid_t *bpid, char *user, size_t usize, char *db, size_t dsize);

#endif
