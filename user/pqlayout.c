// SPDX-License-Identifier: MIT
#include "pqlayout.h"
#include "x86dec.h"

void pq_layout_init(struct pq_layout *l)
{
	int *f = (int *)l;
	size_t i;

	for (i = 0; i < sizeof(*l) / sizeof(int); i++)
		f[i] = -1;
}

/* Loads from [base + disp] (no index) in a straight walk over the function, up to `max`. */
struct load {
	int8_t base, dst;
	uint8_t size;
	int32_t disp;
};

static int collect_loads(const uint8_t *code, size_t n, int8_t base, struct load *out, int max)
{
	size_t off = 0;
	int cnt = 0;

	while (off < n && cnt < max) {
		struct x86_insn in;
		int len = x86_decode(code + off, n - off, &in);

		if (len < 0)
			break;
		if (in.op == X86_LOAD && in.base == base && in.index == X86_NOREG) {
			out[cnt].base = in.base;
			out[cnt].dst = in.dst;
			out[cnt].size = in.size;
			out[cnt].disp = in.disp;
			cnt++;
		}
		off += len;
	}
	return cnt;
}

static int plausible(int32_t disp)
{
	return disp >= 0 && disp < 0x4000;
}

/* PQsocket: `return conn->sock` (libpq 18: `altsock != -1 ? altsock : sock`): the last int load. */
int pq_layout_from_socket(struct pq_layout *l, const uint8_t *code, size_t n)
{
	struct load ld[4];
	int c = collect_loads(code, n, X86_RDI, ld, 4);

	if (c < 1 || c > 2 || ld[c - 1].size != 4 || !plausible(ld[c - 1].disp))
		return -1;
	l->sock = ld[c - 1].disp;
	return 0;
}

/* PQpipelineStatus: `return conn->pipelineStatus`. */
int pq_layout_from_pipeline_status(struct pq_layout *l, const uint8_t *code, size_t n)
{
	struct load ld[2];
	int c = collect_loads(code, n, X86_RDI, ld, 2);

	if (c != 1 || ld[0].size != 4 || !plausible(ld[0].disp))
		return -1;
	l->pipeline = ld[0].disp;
	return 0;
}

/* PQbackendPID: `if (conn->status != CONNECTION_OK) return 0; return conn->be_pid;` */
int pq_layout_from_backend_pid(struct pq_layout *l, const uint8_t *code, size_t n)
{
	struct load ld[3];
	int c = collect_loads(code, n, X86_RDI, ld, 3);

	if (c != 2 || ld[0].size != 4 || ld[1].size != 4 || !plausible(ld[0].disp) ||
	    !plausible(ld[1].disp))
		return -1;
	l->status = ld[0].disp;
	l->be_pid = ld[1].disp;
	return 0;
}

static int one_pointer_load(const uint8_t *code, size_t n, int *out)
{
	struct load ld[2];
	int c = collect_loads(code, n, X86_RDI, ld, 2);

	if (c != 1 || ld[0].size != 8 || !plausible(ld[0].disp))
		return -1;
	*out = ld[0].disp;
	return 0;
}

int pq_layout_from_db(struct pq_layout *l, const uint8_t *code, size_t n)
{
	return one_pointer_load(code, n, &l->db_name);
}

int pq_layout_from_user(struct pq_layout *l, const uint8_t *code, size_t n)
{
	return one_pointer_load(code, n, &l->user);
}

/* PQsslInUse: `return conn->ssl_in_use` (a bool: a byte load, maybe zero-extended). */
int pq_layout_from_ssl_in_use(struct pq_layout *l, const uint8_t *code, size_t n)
{
	struct load ld[2];
	int c = collect_loads(code, n, X86_RDI, ld, 2);

	if (c != 1 || ld[0].size != 1 || !plausible(ld[0].disp))
		return -1;
	l->ssl_in_use = ld[0].disp;
	return 0;
}

/*
 * PQport: `if (conn->connhost) return conn->connhost[conn->whichhost].port;`. Compilers emit
 *   mov connhost(%rdi),%rA ; movslq whichhost(%rdi),%rB ; lea (%rB,%rB,4),%rB ;
 *   mov port(%rA,%rB,8),%rax
 * i.e. an element size of 5 * 8 = 40. pg_conn_host is {type, host, hostaddr, port, password}
 * since PostgreSQL 10: the port offset found here (24) confirms the other fields.
 */
int pq_layout_from_port(struct pq_layout *l, const uint8_t *code, size_t n)
{
	int connhost = -1, whichhost = -1, mult = 0, port = -1;
	int8_t rconn = X86_NOREG, ridx = X86_NOREG;
	size_t off = 0;

	while (off < n) {
		struct x86_insn in;
		int len = x86_decode(code + off, n - off, &in);

		if (len < 0 || in.op == X86_RET)
			break;
		if (in.op == X86_LOAD && in.base == X86_RDI && in.index == X86_NOREG) {
			if (in.size == 8 && connhost < 0) {
				connhost = in.disp;
				rconn = in.dst;
			} else if (in.size == 4 && in.ext == 's' && whichhost < 0) {
				whichhost = in.disp;
				ridx = in.dst;
			}
		} else if (in.op == X86_LEA && in.base == ridx && in.index == ridx &&
			   in.dst == ridx && in.disp == 0) {
			mult = 1 + in.scale;
		} else if (in.op == X86_LOAD && in.base == rconn && in.index == ridx && mult) {
			port = in.disp;
			mult *= in.scale;
			break;
		}
		off += len;
	}
	if (connhost < 0 || whichhost < 0 || port != 24 || mult != 40 || !plausible(connhost) ||
	    !plausible(whichhost))
		return -1;
	l->connhost = connhost;
	l->whichhost = whichhost;
	l->host_size = mult;
	l->host_port = port;
	l->host_type = 0;
	l->host_host = 8;
	l->host_addr = 16;
	return 0;
}
