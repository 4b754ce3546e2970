/* SPDX-License-Identifier: MIT */
/*
 * A small x86-64 instruction decoder: just enough of the instruction set compilers emit in
 * function prologues and in libpq's tiny accessor functions (PQsocket, PQdb, ...), to
 * - read structure offsets out of those accessors, and
 * - choose where a uprobe costs least (an instruction the kernel emulates instead of single-steps).
 * Anything it does not know is reported as unknown (-1), never guessed.
 */
#ifndef SQLSPAN_X86DEC_H
#define SQLSPAN_X86DEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum x86_reg {
	X86_NOREG = -1,
	X86_RAX = 0,
	X86_RCX,
	X86_RDX,
	X86_RBX,
	X86_RSP,
	X86_RBP,
	X86_RSI,
	X86_RDI,
	X86_R8,
	X86_R9,
	X86_R10,
	X86_R11,
	X86_R12,
	X86_R13,
	X86_R14,
	X86_R15,
	X86_RIP = 16,
};

enum x86_op {
	X86_OTHER = 0, /* decoded (length known) but not classified */
	X86_LOAD,      /* mov reg, [mem] (also movzx/movsx/movsxd: see `ext`) */
	X86_STORE,     /* mov [mem], reg/imm */
	X86_MOV_RR,    /* mov reg, reg */
	X86_MOV_IMM,   /* mov reg, imm */
	X86_LEA,
	X86_PUSH, /* push reg */
	X86_POP,
	X86_FLAGS,    /* test/cmp: writes only flags */
	X86_ALU,      /* other arithmetic/logic writing `dst` */
	X86_JMP,      /* jmp rel */
	X86_JCC,      /* conditional jump rel */
	X86_CALL,     /* call rel32 */
	X86_JMP_IND,  /* jmp [mem] / jmp reg */
	X86_CALL_IND, /* call [mem] / call reg */
	X86_RET,
	X86_NOP,
	X86_ENDBR,
	X86_LEAVE,
};

struct x86_insn {
	uint8_t len;
	uint8_t op;   /* enum x86_op */
	uint8_t size; /* operand size in bytes (1, 2, 4, 8) */
	uint8_t ext;  /* LOAD: 0 plain, 'z' zero-extending, 's' sign-extending */
	int8_t dst;   /* register written, X86_NOREG if none */
	int8_t src;   /* register read (MOV_RR, PUSH, STORE), X86_NOREG if none */
	/* memory operand */
	bool has_mem;
	int8_t base;   /* X86_NOREG, a register, or X86_RIP */
	int8_t index;  /* X86_NOREG or a register */
	uint8_t scale; /* 1, 2, 4, 8 */
	int32_t disp;
	int64_t imm;
	int64_t rel; /* JMP/JCC/CALL: target minus the end of this instruction */
};

/* Decode one instruction at p (n bytes available). Returns its length, or -1 if unknown. */
int x86_decode(const uint8_t *p, size_t n, struct x86_insn *in);

/* Does the kernel emulate this instruction for a uprobe (no single-step)? */
bool x86_uprobe_emulated(const struct x86_insn *in);

/*
 * Where to put a uprobe in a function whose code is `p` (n bytes): the offset of the first
 * instruction the kernel can emulate, reached only through instructions that write none of the
 * registers in `keep` (a bit mask of enum x86_reg) and do not branch. Returns 0 (the entry, or
 * right after an endbr64) when there is no better place.
 */
size_t x86_probe_offset(const uint8_t *p, size_t n, uint32_t keep);

#endif
