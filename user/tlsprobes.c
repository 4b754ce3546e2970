// SPDX-License-Identifier: MIT
/*
 * libssl's probes for the plaintext of TLS connections of processes whose sockets are followed
 * (asyncpg over Python's ssl, libpq: bpf/tls.bpf.h). Attached to the libssl a process maps, once.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <bpf/libbpf.h>
#include "sqlspan.skel.h"
#include "elffile.h"
#include "tracer.h"
#include "x86dec.h"

#define R(r) (1u << (r))

static const struct {
	const char *sym;
	const char *prog;
	bool ret;      /* a return probe: at the function's entry, whatever it starts with */
	uint32_t keep; /* the arguments the program reads */
} specs[] = {
	{"SSL_do_handshake", "up_ssl_handshake", false, R(X86_RDI)},
	{"SSL_write_ex", "up_ssl_write", false, R(X86_RDI) | R(X86_RSI) | R(X86_RDX)},
	{"SSL_read_ex", "up_ssl_read", false, R(X86_RDI) | R(X86_RSI) | R(X86_RCX)},
	{"SSL_read_ex", "ur_ssl_read", true, 0},
	/* libpq's own TLS */
	{"SSL_write", "up_ssl_write", false, R(X86_RDI) | R(X86_RSI) | R(X86_RDX)},
	{"SSL_read", "up_ssl_read_int", false, R(X86_RDI) | R(X86_RSI)},
	{"SSL_read", "ur_ssl_read", true, 0},
};

int tls_attach(struct tracer *t, struct proc_target *p, const char *path, const char *shown)
{
	struct elf_file *ef = elff_open(path);
	int attached = 0;

	if (!ef) {
		fprintf(stderr, "sqlspan: warning: cannot read %s for PID %d: %s\n", shown, p->pid,
			strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]) && p->ntls < TLS_LINKS; i++) {
		struct bpf_program *prog =
			bpf_object__find_program_by_name(t->skel->obj, specs[i].prog);
		uint8_t code[64];
		uint64_t va, foff;
		size_t n = elff_func_code(ef, specs[i].sym, code, sizeof(code), &va), off;

		if (!n || !prog)
			continue;
		off = specs[i].ret ? 0 : x86_probe_offset(code, n, specs[i].keep);
		foff = elff_file_offset(ef, va + off);
		if (foff == (uint64_t)-1)
			continue;
		if (ulink_attach(&p->tls_links[p->ntls], prog, specs[i].ret, p->pid, path, foff)) {
			fprintf(stderr,
				"sqlspan: warning: cannot attach to %s in %s for PID %d: %s\n",
				specs[i].sym, shown, p->pid, strerror(errno));
			continue;
		}
		p->ntls++;
		attached++;
	}
	elff_close(ef);
	if (attached != (int)(sizeof(specs) / sizeof(specs[0]))) {
		fprintf(stderr,
			"sqlspan: warning: PID %d: %s lacks SSL_read(_ex)/SSL_write(_ex): its TLS "
			"database connections stay unread\n",
			p->pid, shown);
		tls_detach(p);
		return -1;
	}
	vlog(t, "PID %d: TLS plaintext read in %s", p->pid, shown);
	return 0;
}

void tls_detach(struct proc_target *p)
{
	for (int i = 0; i < p->ntls; i++)
		ulink_destroy(&p->tls_links[i]);
	p->ntls = 0;
}
