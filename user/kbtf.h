/* SPDX-License-Identifier: MIT */
/*
 * Member offsets read off the kernel's BTF (/sys/kernel/btf/vmlinux) in one streaming pass, with
 * a small buffer: the BPF side then needs no CO-RE relocation, and libbpf never loads the whole
 * 5 MiB BTF (on this VM, each fresh page written costs several µs: ~50 ms at every attach).
 */
#ifndef SQLSPAN_KBTF_H
#define SQLSPAN_KBTF_H

#include <stddef.h>
#include <stdint.h>

#define KBTF_MAX_DEPTH 4

/* one step of a path: a struct by name and one of its members */
struct kbtf_step {
	const char *type;
	const char *member;
};

/*
 * Byte offset of path[0].type's member path[0].member, inside it path[1].type's member
 * path[1].member, and so on (each member's type must be the next step's struct), in the BTF
 * read from fd (a raw BTF blob, as the kernel exports it) CHUNK bytes at a time.
 * 0, or -1 with a one-line reason in msg.
 */
int kbtf_offset(int fd, const struct kbtf_step *path, int depth, size_t chunk, uint32_t *off,
		char *msg, size_t n);

#endif
