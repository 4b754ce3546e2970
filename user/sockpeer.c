// SPDX-License-Identifier: MIT
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
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
static int unix_peer_path(unsigned long ino, char *path, size_t size)
{
	int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	uint32_t peer = 0;
	int r = -1;

	if (nl < 0)
		return -1;
	path[0] = 0;
	if (!unix_diag(nl, ino, &peer, NULL, 0) && peer && !unix_diag(nl, peer, NULL, path, size) &&
	    path[0] == '/')
		r = 0;
	close(nl);
	return r;
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

int sock_peer(pid_t pid, int fd, char *addr, size_t size, int *port, bool *is_unix)
{
	static const struct {
		const char *file;
		int family;
	} tables[] = {{"tcp", AF_INET}, {"tcp6", AF_INET6}};
	char path[64], link[64], line[512];
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
	if (!unix_peer_path(ino, addr, size)) {
		*is_unix = true;
		*port = 0;
		return 0;
	}
	for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/net/%s", pid, tables[t].file);
		f = fopen(path, "r");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f)) {
			char rem[40];
			unsigned int rport;
			unsigned long inode;

			if (sscanf(line,
				   " %*u: %*[0-9A-Fa-f]:%*x %39[0-9A-Fa-f]:%x %*x %*s %*s %*s %*u "
				   "%*u %lu",
				   rem, &rport, &inode) != 3 ||
			    inode != ino)
				continue;
			fclose(f);
			*port = (int)rport;
			return hex_addr(rem, tables[t].family, addr, size);
		}
		fclose(f);
	}
	return -1;
}
