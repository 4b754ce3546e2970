// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include "pgident.h"

ssize_t proc_read(pid_t pid, uint64_t addr, void *buf, size_t n)
{
	struct iovec local = {buf, n}, remote = {(void *)(uintptr_t)addr, n};

	return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

/* Pieces per process_vm_readv: IOV_MAX (1024 on Linux, the least POSIX allows is 16) */
#define READ_MANY_IOV 1024

unsigned proc_read_many(pid_t pid, struct proc_piece *pieces, size_t n)
{
	struct iovec local[READ_MANY_IOV], remote[READ_MANY_IOV];
	unsigned calls = 0;
	size_t i;

	for (i = 0; i < n; i++)
		pieces[i].ok = false; /* until read: also those after an early return */
	i = 0;
	while (i < n) {
		size_t k = n - i < READ_MANY_IOV ? n - i : READ_MANY_IOV, j = 0;
		ssize_t got;

		for (j = 0; j < k; j++) {
			struct proc_piece *p = &pieces[i + j];

			local[j] = (struct iovec){p->buf, p->len};
			remote[j] = (struct iovec){(void *)(uintptr_t)p->addr, p->len};
		}
		got = process_vm_readv(pid, local, k, remote, k, 0);
		calls++;
		if (got < 0 && errno != EFAULT)
			return calls; /* gone, or not ours to read: nothing more can be */
		if (got < 0)
			got = 0; /* the first piece could not be read */
		/* whole pieces up to where the kernel stopped (a piece it cut short counts as
		 * unread) */
		for (j = 0; j < k && (size_t)got >= pieces[i + j].len; j++) {
			got -= (ssize_t)pieces[i + j].len;
			pieces[i + j].ok = true;
		}
		/* the piece it stopped at cannot be read: the rest after it */
		i += j < k ? j + 1 : k;
	}
	return calls;
}

/* A NUL-terminated string at addr, read in pieces that never cross a page it need not touch. */
static char *read_str(pid_t pid, uint64_t addr, size_t max)
{
	char *s;
	size_t have = 0;

	if (!addr)
		return NULL;
	s = malloc(max + 1);
	if (!s)
		return NULL;
	while (have < max) {
		size_t page_left = 4096 - ((addr + have) & 4095);
		size_t want = max - have < page_left ? max - have : page_left;
		ssize_t r = proc_read(pid, addr + have, s + have, want);
		char *nul;

		if (r <= 0)
			break;
		nul = memchr(s + have, 0, r);
		if (nul)
			return s;
		have += r;
	}
	if (!have) {
		free(s);
		return NULL;
	}
	s[have] = 0;
	return s;
}

static uint64_t u64_at(const uint8_t *b, size_t n, int off)
{
	uint64_t v = 0;

	if (off >= 0 && (size_t)off + 8 <= n)
		memcpy(&v, b + off, 8);
	return v;
}

static int32_t i32_at(const uint8_t *b, size_t n, int off, int32_t dflt)
{
	int32_t v = dflt;

	if (off >= 0 && (size_t)off + 4 <= n)
		memcpy(&v, b + off, 4);
	return v;
}

void pgident_read(pid_t pid, uint64_t conn, const struct pq_layout *l, struct conn_ident *id)
{
	uint8_t buf[0x1000];
	ssize_t n;
	int32_t status;

	memset(id, 0, sizeof(*id));
	if (!l || l->db_name < 0)
		return;
	n = proc_read(pid, conn, buf, sizeof(buf));
	if (n < 0x100)
		return;
	id->known = true;
	id->db = read_str(pid, u64_at(buf, n, l->db_name), 256);
	id->user = read_str(pid, u64_at(buf, n, l->user), 256);
	status = i32_at(buf, n, l->status, -1);
	if (status == 0) /* CONNECTION_OK */
		id->backend_pid = i32_at(buf, n, l->be_pid, 0);
	if (l->ssl_in_use >= 0 && l->ssl_in_use < n)
		id->tls = buf[l->ssl_in_use] != 0;
	if (l->connhost >= 0) {
		uint64_t hosts = u64_at(buf, n, l->connhost);
		int32_t which = i32_at(buf, n, l->whichhost, -1);
		uint8_t h[64];

		if (hosts && which >= 0 && which < 64 && l->host_size <= (int)sizeof(h) &&
		    proc_read(pid, hosts + (uint64_t)which * l->host_size, h, l->host_size) ==
			    l->host_size) {
			int32_t type = i32_at(h, sizeof(h), l->host_type, -1);
			char *host = read_str(pid, u64_at(h, sizeof(h), l->host_host), 256);
			char *addr = read_str(pid, u64_at(h, sizeof(h), l->host_addr), 256);
			char *port = read_str(pid, u64_at(h, sizeof(h), l->host_port), 16);

			id->port = port && *port ? atoi(port) : 5432;
			if (type == 2 && host) { /* CHT_UNIX_SOCKET */
				size_t len = strlen(host) + 32;

				id->unix_path = malloc(len);
				if (id->unix_path)
					snprintf(id->unix_path, len, "%s/.s.PGSQL.%d", host,
						 id->port);
			}
			if (host && *host) {
				id->host = host;
				host = NULL;
			} else if (addr && *addr) {
				id->host = addr;
				addr = NULL;
			}
			free(host);
			free(addr);
			free(port);
		}
	}
}

void pgident_free(struct conn_ident *id)
{
	free(id->db);
	free(id->user);
	free(id->host);
	free(id->unix_path);
	memset(id, 0, sizeof(*id));
}
