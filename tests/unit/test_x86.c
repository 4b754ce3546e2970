// SPDX-License-Identifier: MIT
/* The x86 decoder and the PGconn offsets it reads out of real libpq builds (15, 17, 18). */
#include <glob.h>
#include "check.h"
#include "elffile.h"
#include "pqlayout.h"
#include "x86dec.h"

#define B(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

TEST(decode_common_instructions)
{
	struct x86_insn in;

	CHECK_EQ(x86_decode(B(0xf3, 0x0f, 0x1e, 0xfa), &in), 4);
	CHECK_EQ(in.op, X86_ENDBR);
	CHECK_EQ(x86_decode(B(0x55), &in), 1);
	CHECK_EQ(in.op, X86_PUSH);
	CHECK_EQ(in.src, X86_RBP);
	CHECK_EQ(x86_decode(B(0x41, 0x54), &in), 2); /* push %r12 */
	CHECK_EQ(in.src, X86_R12);
	CHECK_EQ(x86_decode(B(0x8b, 0x87, 0xb8, 0x01, 0x00, 0x00), &in), 6);
	CHECK_EQ(in.op, X86_LOAD);
	CHECK_EQ(in.base, X86_RDI);
	CHECK_EQ(in.disp, 0x1b8);
	CHECK_EQ(in.size, 4);
	CHECK_EQ(x86_decode(B(0x48, 0x8b, 0x47, 0x48), &in), 4); /* mov 0x48(%rdi),%rax */
	CHECK_EQ(in.size, 8);
	CHECK_EQ(in.disp, 0x48);
	CHECK_EQ(in.dst, X86_RAX);
	CHECK_EQ(x86_decode(B(0x48, 0x63, 0x87, 0x8c, 0x01, 0x00, 0x00), &in), 7); /* movslq */
	CHECK_EQ(in.ext, 's');
	CHECK_EQ(x86_decode(B(0x48, 0x8d, 0x04, 0x80), &in), 4); /* lea (%rax,%rax,4),%rax */
	CHECK_EQ(in.op, X86_LEA);
	CHECK_EQ(in.base, X86_RAX);
	CHECK_EQ(in.index, X86_RAX);
	CHECK_EQ(in.scale, 4);
	CHECK_EQ(x86_decode(B(0x48, 0x8b, 0x44, 0xc2, 0x18), &in), 5); /* mov 0x18(%rdx,%rax,8) */
	CHECK_EQ(in.base, X86_RDX);
	CHECK_EQ(in.index, X86_RAX);
	CHECK_EQ(in.scale, 8);
	CHECK_EQ(in.disp, 0x18);
	CHECK_EQ(x86_decode(B(0x48, 0x8d, 0x05, 0xa7, 0x14, 0x02, 0x00), &in), 7); /* rip lea */
	CHECK_EQ(in.base, X86_RIP);
	CHECK_EQ(x86_decode(B(0xe9, 0xa6, 0xeb, 0xff, 0xff), &in), 5);
	CHECK_EQ(in.op, X86_JMP);
	CHECK_EQ(in.rel, -0x145a);
	CHECK_EQ(x86_decode(B(0x0f, 0x84, 0x47, 0x01, 0x00, 0x00), &in), 6);
	CHECK_EQ(in.op, X86_JCC);
	CHECK_EQ(x86_decode(B(0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00), &in), 6);
	CHECK_EQ(in.op, X86_NOP);
	CHECK_EQ(x86_decode(B(0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00), &in), 8);
	CHECK_EQ(x86_decode(B(0xf2, 0xff, 0x25, 0x10, 0x20, 0x00, 0x00), &in),
		 7); /* bnd jmp *GOT */
	CHECK_EQ(in.op, X86_JMP_IND);
	CHECK_EQ(in.base, X86_RIP);
	CHECK_EQ(x86_decode(B(0xba, 0x01, 0x00, 0x00, 0x00), &in), 5);
	CHECK_EQ(in.op, X86_MOV_IMM);
	CHECK_EQ(in.dst, X86_RDX);
	CHECK_EQ(x86_decode(B(0x80, 0x38, 0x00), &in), 3); /* cmpb $0,(%rax) */
	CHECK_EQ(in.op, X86_FLAGS);
}

TEST(decode_rejects_unknown_and_short)
{
	struct x86_insn in;

	CHECK_EQ(x86_decode(B(0x0f, 0x05), &in), -1); /* syscall: not in the subset */
	CHECK_EQ(x86_decode(B(0x8b), &in), -1);	      /* truncated */
	CHECK_EQ(x86_decode(B(0xe8, 0x00, 0x00), &in), -1);
	CHECK_EQ(x86_decode(B(0x48), &in), -1);
	CHECK_EQ(x86_decode(NULL, 0, &in), -1);
}

#define KEEP2 ((1u << X86_RDI) | (1u << X86_RSI))

TEST(probe_placement)
{
	/* PQsendQuery, libpq 15: mov $1,%edx ; jmp -> the jmp is emulated */
	CHECK_EQ(x86_probe_offset(B(0xba, 0x01, 0x00, 0x00, 0x00, 0xe9, 0xa6, 0xeb, 0xff, 0xff),
				  KEEP2),
		 5);
	/* libpq 17: endbr64 first */
	CHECK_EQ(x86_probe_offset(B(0xf3, 0x0f, 0x1e, 0xfa, 0xba, 0x01, 0x00, 0x00, 0x00, 0xe9,
				    0x72, 0xe9, 0xff, 0xff),
				  KEEP2),
		 9);
	/* PQexec: push %rbp at the entry */
	CHECK_EQ(x86_probe_offset(B(0x55, 0x48, 0x89, 0xe5), KEEP2), 0);
	CHECK_EQ(x86_probe_offset(B(0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5), KEEP2), 4);
	/* PQsendDescribePrepared: mov %rsi,%rdx ; mov $0x53,%esi (rsi is read) -> stay at entry */
	CHECK_EQ(x86_probe_offset(B(0x48, 0x89, 0xf2, 0xbe, 0x53, 0x00, 0x00, 0x00, 0xe9, 0xd3,
				    0xec, 0xff, 0xff),
				  KEEP2),
		 0);
	/* PQpipelineSync: test %rdi,%rdi ; je -> the je */
	CHECK_EQ(x86_probe_offset(B(0x48, 0x85, 0xff, 0x0f, 0x84, 0x47, 0x01, 0x00, 0x00, 0x55),
				  1u << X86_RDI),
		 3);
	/* PQsendPipelineSync (17): xor %esi,%esi ; jmp */
	CHECK_EQ(x86_probe_offset(
			 B(0xf3, 0x0f, 0x1e, 0xfa, 0x31, 0xf6, 0xe9, 0x35, 0xda, 0xff, 0xff),
			 1u << X86_RDI),
		 6);
	/* a store to memory is never skipped */
	CHECK_EQ(x86_probe_offset(B(0x48, 0x89, 0x7c, 0x24, 0x08, 0x55), KEEP2), 0);
	/* undecodable: the entry */
	CHECK_EQ(x86_probe_offset(B(0x0f, 0x05, 0x55), KEEP2), 0);
}

TEST(layout_libpq15)
{
	struct pq_layout l;

	pq_layout_init(&l);
	CHECK_EQ(pq_layout_from_socket(&l, B(0x48, 0x85, 0xff, 0x74, 0x07, 0x8b, 0x87, 0xb8, 0x01,
					     0x00, 0x00, 0xc3, 0xb8, 0xff, 0xff, 0xff, 0xff, 0xc3)),
		 0);
	CHECK_EQ(l.sock, 0x1b8);
	CHECK_EQ(pq_layout_from_db(&l, B(0x48, 0x85, 0xff, 0x74, 0x0b, 0x48, 0x8b, 0x47, 0x48, 0xc3,
					 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x31, 0xc0, 0xc3)),
		 0);
	CHECK_EQ(l.db_name, 0x48);
	CHECK_EQ(pq_layout_from_user(&l,
				     B(0x48, 0x85, 0xff, 0x74, 0x0b, 0x48, 0x8b, 0x47, 0x58, 0xc3,
				       0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x31, 0xc0, 0xc3)),
		 0);
	CHECK_EQ(l.user, 0x58);
	CHECK_EQ(pq_layout_from_backend_pid(
			 &l, B(0x31, 0xc0, 0x48, 0x85, 0xff, 0x74, 0x19, 0x8b, 0x97, 0x58, 0x01,
			       0x00, 0x00, 0x85, 0xd2, 0x75, 0x0f, 0x8b, 0x87, 0x08, 0x03, 0x00,
			       0x00, 0xc3, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc3)),
		 0);
	CHECK_EQ(l.status, 0x158);
	CHECK_EQ(l.be_pid, 0x308);
	CHECK_EQ(pq_layout_from_pipeline_status(&l, B(0x48, 0x85, 0xff, 0x74, 0x0b, 0x8b, 0x87,
						      0x6c, 0x01, 0x00, 0x00, 0xc3, 0x0f, 0x1f,
						      0x40, 0x00, 0x31, 0xc0, 0xc3)),
		 0);
	CHECK_EQ(l.pipeline, 0x16c);
	CHECK_EQ(pq_layout_from_port(&l,
				     B(0x48, 0x85, 0xff, 0x74, 0x4b, 0x48, 0x8b, 0x97, 0x90, 0x01,
				       0x00, 0x00, 0x48, 0x8d, 0x05, 0xf7, 0x13, 0x02, 0x00, 0x48,
				       0x85, 0xd2, 0x74, 0x2f, 0x48, 0x63, 0x87, 0x8c, 0x01, 0x00,
				       0x00, 0x48, 0x8d, 0x04, 0x80, 0x48, 0x8b, 0x44, 0xc2, 0x18,
				       0x48, 0x85, 0xc0, 0x74, 0x13, 0x80, 0x38, 0x00)),
		 0);
	CHECK_EQ(l.connhost, 0x190);
	CHECK_EQ(l.whichhost, 0x18c);
	CHECK_EQ(l.host_size, 40);
	CHECK_EQ(l.host_port, 24);
	CHECK_EQ(l.host_host, 8);
}

TEST(layout_libpq18)
{
	struct pq_layout l;

	pq_layout_init(&l);
	/* PQsocket: altsock (0x3c0) if set, else sock (0x260) */
	CHECK_EQ(pq_layout_from_socket(&l, B(0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x16,
					     0x8b, 0x87, 0xc0, 0x03, 0x00, 0x00, 0x83, 0xf8, 0xff,
					     0x74, 0x04, 0xc3, 0x0f, 0x1f, 0x00, 0x8b, 0x87, 0x60,
					     0x02, 0x00, 0x00, 0xc3, 0xb8, 0xff, 0xff, 0xff, 0xff)),
		 0);
	CHECK_EQ(l.sock, 0x260);
	CHECK_EQ(pq_layout_from_port(&l, B(0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x37,
					   0x48, 0x8b, 0x87, 0x38, 0x02, 0x00, 0x00, 0x48, 0x85,
					   0xc0, 0x74, 0x33, 0x48, 0x63, 0x97, 0x34, 0x02, 0x00,
					   0x00, 0x48, 0x8d, 0x14, 0x92, 0x48, 0x8b, 0x44, 0xd0,
					   0x18, 0x48, 0x85, 0xc0, 0x74, 0x1e)),
		 0);
	CHECK_EQ(l.connhost, 0x238);
	CHECK_EQ(l.whichhost, 0x234);
	CHECK_EQ(pq_layout_from_backend_pid(&l,
					    B(0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x17,
					      0x8b, 0x87, 0xf8, 0x01, 0x00, 0x00, 0x85, 0xc0, 0x75,
					      0x0d, 0x8b, 0x87, 0x10, 0x04, 0x00, 0x00, 0xc3, 0x66,
					      0x0f, 0x1f, 0x44, 0x00, 0x00, 0x31, 0xc0, 0xc3)),
		 0);
	CHECK_EQ(l.status, 0x1f8);
	CHECK_EQ(l.be_pid, 0x410);
}

TEST(layout_refuses_what_it_does_not_recognise)
{
	struct pq_layout l;

	pq_layout_init(&l);
	/* three loads: not an accessor shape we know */
	CHECK_EQ(pq_layout_from_socket(&l,
				       B(0x8b, 0x87, 0x00, 0x01, 0x00, 0x00, 0x8b, 0x87, 0x04, 0x01,
					 0x00, 0x00, 0x8b, 0x87, 0x08, 0x01, 0x00, 0x00, 0xc3)),
		 -1);
	CHECK_EQ(l.sock, -1);
	CHECK_EQ(pq_layout_from_db(&l, B(0x8b, 0x87, 0x00, 0x01, 0x00, 0x00, 0xc3)),
		 -1); /* 4-byte */
	CHECK_EQ(l.db_name, -1);
	CHECK_EQ(pq_layout_from_port(&l, B(0x48, 0x8b, 0x87, 0x90, 0x01, 0x00, 0x00, 0xc3)), -1);
	CHECK_EQ(l.connhost, -1);
}

/* The libpq installed on this machine, read as sqlspan reads it. */
TEST(system_libpq)
{
	static const char *const acc[] = {"PQsocket",	  "PQdb",   "PQuser",
					  "PQbackendPID", "PQport", "PQpipelineStatus"};
	glob_t g;
	struct elf_file *ef;
	struct pq_layout l;
	uint8_t code[512];

	if (glob("/usr/lib/x86_64-linux-gnu/libpq.so.5.*", 0, NULL, &g) || !g.gl_pathc) {
		CHECK(!"libpq5 is not installed (scripts/setup.sh installs it)");
		return;
	}
	ef = elff_open(g.gl_pathv[g.gl_pathc - 1]);
	globfree(&g);
	CHECK(ef != NULL);
	if (!ef)
		return;
	pq_layout_init(&l);
	for (size_t i = 0; i < sizeof(acc) / sizeof(acc[0]); i++) {
		uint64_t va, size;

		CHECK_EQ(elff_sym(ef, acc[i], &va, &size), 0);
		CHECK(size > 0 && size <= sizeof(code));
		CHECK_EQ(elff_read(ef, va, code, size), (long long)size);
		if (i == 0)
			CHECK_EQ(pq_layout_from_socket(&l, code, size), 0);
		if (i == 1)
			CHECK_EQ(pq_layout_from_db(&l, code, size), 0);
		if (i == 2)
			CHECK_EQ(pq_layout_from_user(&l, code, size), 0);
		if (i == 3)
			CHECK_EQ(pq_layout_from_backend_pid(&l, code, size), 0);
		if (i == 4)
			CHECK_EQ(pq_layout_from_port(&l, code, size), 0);
		if (i == 5)
			CHECK_EQ(pq_layout_from_pipeline_status(&l, code, size), 0);
	}
	CHECK(l.sock > 0 && l.db_name > 0 && l.user > l.db_name && l.be_pid > l.status);
	CHECK(l.connhost > 0 && l.whichhost > 0 && l.pipeline > 0);
	/* PQexec and friends call the PQsend* functions through the PLT */
	CHECK_EQ(elff_calls(ef, "PQexec", "PQsendQuery"), 1);
	CHECK_EQ(elff_calls(ef, "PQexecParams", "PQsendQueryParams"), 1);
	CHECK_EQ(elff_calls(ef, "PQprepare", "PQsendPrepare"), 1);
	CHECK_EQ(elff_calls(ef, "PQexecPrepared", "PQsendQueryPrepared"), 1);
	CHECK_EQ(elff_calls(ef, "PQexec", "PQsendQueryParams"), 0);
	CHECK_EQ(elff_calls(ef, "PQnoSuchFunction", "PQsendQuery"), -1);
	CHECK(elff_file_offset(ef, 0x10000000000ULL) == (uint64_t)-1);
	elff_close(ef);
	CHECK(elff_open("/nonexistent/libpq.so.5") == NULL);
	CHECK(elff_open("/etc/hostname") == NULL); /* not ELF */
}

int main(void)
{
	static const struct test_case cases[] = {
		CASE(decode_common_instructions),
		CASE(decode_rejects_unknown_and_short),
		CASE(probe_placement),
		CASE(layout_libpq15),
		CASE(layout_libpq18),
		CASE(layout_refuses_what_it_does_not_recognise),
		CASE(system_libpq),
	};
	return RUN("x86", cases);
}
