// SPDX-License-Identifier: MIT
#include <arpa/inet.h>
#include <dirent.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "sockpeer.h"

/*
 * Ask sock_diag about Unix socket `ino`: its peer's inode (peer) and its bound name (name).
 * Returns 0 if the socket was found.
 */
static int unix_diag(int nl, unsigned long ino, uint32_t *peer, char *name, size_t size)
{
	struct {
		struct nlmsghdr nlh;
		struct unix_diag_req req;
	} q = {
		.nlh = {.nlmsg_len = sizeof(q),
			.nlmsg_type = SOCK_DIAG_BY_FAMILY,
			.nlmsg_flags = NLM_F_REQUEST},
		.req = {.sdiag_family = AF_UNIX,
			.udiag_states = ~0u,
			.udiag_ino = (uint32_t)ino,
			.udiag_show = UDIAG_SHOW_PEER | UDIAG_SHOW_NAME,
			.udiag_cookie = {~0u, ~0u}},
	};
	uint32_t buf[2048];
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	ssize_t n;
	int len;

	if (send(nl, &q, sizeof(q), 0) != sizeof(q))
		return -1;
	n = recv(nl, buf, sizeof(buf), 0);
	if (n <= 0 || !NLMSG_OK(h, (size_t)n) || h->nlmsg_type != SOCK_DIAG_BY_FAMILY)
		return -1;
	len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(struct unix_diag_msg)));
	for (struct rtattr *a =
		     (struct rtattr *)((char *)NLMSG_DATA(h) + sizeof(struct unix_diag_msg));
	     RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		size_t plen = RTA_PAYLOAD(a);

		if (a->rta_type == UNIX_DIAG_PEER && plen >= 4 && peer)
			memcpy(peer, RTA_DATA(a), 4);
		if (a->rta_type == UNIX_DIAG_NAME && name && plen > 0) {
			size_t k = plen < size - 1 ? plen : size - 1;

			memcpy(name, RTA_DATA(a), k);
			name[k] = 0;
		}
	}
	return 0;
}

/* The path of the socket a Unix socket is connected to (in sqlspan's network namespace). */
static int unix_peer_path(unsigned long ino, char *path, size_t size, unsigned long *peer_ino)
{
	int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	uint32_t peer = 0;
	int r = -1;

	if (nl < 0)
		return -1;
	path[0] = 0;
	if (!unix_diag(nl, ino, &peer, NULL, 0) && peer && !unix_diag(nl, peer, NULL, path, size) &&
	    path[0] == '/') {
		r = 0;
		if (peer_ino)
			*peer_ino = peer;
	}
	close(nl);
	return r;
}

/* Does process `pid` hold socket inode `ino`? */
static bool holds_socket(const char *pid, unsigned long ino)
{
	char path[300], link[64], want[40];
	struct dirent *d;
	bool found = false;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%s/fd", pid);
	snprintf(want, sizeof(want), "socket:[%lu]", ino);
	dir = opendir(path);
	if (!dir)
		return false;
	while (!found && (d = readdir(dir))) {
		char fdpath[600];
		ssize_t n;

		if (d->d_name[0] == '.')
			continue;
		snprintf(fdpath, sizeof(fdpath), "%s/%s", path, d->d_name);
		n = readlink(fdpath, link, sizeof(link) - 1);
		if (n > 0) {
			link[n] = 0;
			found = !strcmp(link, want);
		}
	}
	closedir(dir);
	return found;
}

int pg_backend_of(unsigned long ino, pid_t *bpid, char *user, size_t usize, char *db, size_t dsize)
{
	struct dirent *d;
	DIR *proc = opendir("/proc");

	if (!proc || !ino)
		goto out;
	while ((d = readdir(proc))) {
		char path[300], buf[512], *tok[4] = {0};
		size_t n = 0;
		FILE *f;

		if (d->d_name[0] < '1' || d->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", d->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = 0;
		if (strcmp(buf, "postgres\n") || !holds_socket(d->d_name, ino))
			continue;
		/* a backend's title: "postgres: USER DATABASE HOST STATE" */
		snprintf(path, sizeof(path), "/proc/%s/cmdline", d->d_name);
		f = fopen(path, "r");
		n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = 0;
		*bpid = (pid_t)atoi(d->d_name);
		if (!strncmp(buf, "postgres: ", 10)) {
			char *save = NULL, *p = strtok_r(buf + 10, " ", &save);

			for (int i = 0; p && i < 2; i++, p = strtok_r(NULL, " ", &save))
				tok[i] = p;
			if (tok[0] && tok[1]) {
				snprintf(user, usize, "%s", tok[0]);
				snprintf(db, dsize, "%s", tok[1]);
			}
		}
		closedir(proc);
		return 0;
	}
out:
	if (proc)
		closedir(proc);
	return -1;
}

/* An address as /proc/net/tcp* writes it: 32-bit words in hex, each in host byte order. */
static int hex_addr(const char *hex, int family, char *out, size_t size)
{
	uint8_t bytes[16];
	size_t words = family == AF_INET ? 1 : 4;

	if (strlen(hex) != words * 8)
		return -1;
	for (size_t i = 0; i < words; i++) {
		unsigned int w;
		char part[9];

		memcpy(part, hex + i * 8, 8);
		part[8] = 0;
		if (sscanf(part, "%x", &w) != 1)
			return -1;
		memcpy(bytes + i * 4, &w, 4);
	}
	return inet_ntop(family, bytes, out, size) ? 0 : -1;
}

/* A line of /proc/net/tcp*: local and remote address (hex) and port, and the socket's inode. */
static int tcp_line(const char *line, char *loc, unsigned int *lport, char *rem,
		    unsigned int *rport, unsigned long *inode)
{
	return sscanf(line, " %*u: %39[0-9A-Fa-f]:%x %39[0-9A-Fa-f]:%x %*x %*s %*s %*s %*u %*u %lu",
		      loc, lport, rem, rport, inode) == 5
		       ? 0
		       : -1;
}

/* The line of socket `ino` in a /proc/net/tcp* file: 0 if found. */
static int tcp_find(FILE *f, unsigned long ino, char *loc, unsigned int *lport, char *rem,
		    unsigned int *rport)
{
	char line[512];
	unsigned long inode;

	while (fgets(line, sizeof(line), f)) {
		if (!tcp_line(line, loc, lport, rem, rport, &inode) && inode == ino)
			return 0;
	}
	return -1;
}

/* The inode of the socket whose ends are the other way round (0 if none is listed). */
static unsigned long tcp_reverse(FILE *f, const char *loc, unsigned int lport, const char *rem,
				 unsigned int rport)
{
	char line[512], l2[40], r2[40];
	unsigned int lp2, rp2;
	unsigned long inode;

	rewind(f);
	while (fgets(line, sizeof(line), f)) {
		if (!tcp_line(line, l2, &lp2, r2, &rp2, &inode) && inode && lp2 == rport &&
		    rp2 == lport && !strcasecmp(l2, rem) && !strcasecmp(r2, loc))
			return inode;
	}
	return 0;
}

int sock_peer(pid_t pid, int fd, char *addr, size_t size, int *port, bool *is_unix,
	      unsigned long *peer_ino)
{
	static const struct {
		const char *file;
		int family;
	} tables[] = {{"tcp", AF_INET}, {"tcp6", AF_INET6}};
	char path[64], link[64];
	unsigned long ino;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return -1;
	link[n] = 0;
	if (sscanf(link, "socket:[%lu]", &ino) != 1)
		return -1;
	*is_unix = false;
	if (peer_ino)
		*peer_ino = 0;
	if (!unix_peer_path(ino, addr, size, peer_ino)) {
		*is_unix = true;
		*port = 0;
		return 0;
	}
	for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
		char loc[40], rem[40];
		unsigned int lport, rport;
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/net/%s", pid, tables[t].file);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (tcp_find(f, ino, loc, &lport, rem, &rport)) {
			fclose(f);
			continue;
		}
		/* the other end, if it is in this network namespace (a server on this host) */
		if (peer_ino)
			*peer_ino = tcp_reverse(f, loc, lport, rem, rport);
		fclose(f);
		*port = (int)rport;
		return hex_addr(rem, tables[t].family, addr, size);
	}
	return -1;
}
