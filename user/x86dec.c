// SPDX-License-Identifier: MIT
#include <string.h>
#include "x86dec.h"

struct modrm {
	int mod, reg, rm;
};

/* Decode ModRM (+SIB, +displacement) at p; fills the memory operand. Returns bytes used or -1. */
static int decode_modrm(const uint8_t *p, size_t n, int rex, struct x86_insn *in, struct modrm *m)
{
	size_t i = 0;
	int base;

	if (n < 1)
		return -1;
	m->mod = p[0] >> 6;
	m->reg = ((p[0] >> 3) & 7) | ((rex & 4) ? 8 : 0);
	m->rm = p[0] & 7;
	i = 1;
	if (m->mod == 3) {
		m->rm |= (rex & 1) ? 8 : 0;
		in->has_mem = false;
		return i;
	}
	in->has_mem = true;
	in->index = X86_NOREG;
	in->scale = 1;
	in->disp = 0;
	if (m->rm == 4) {
		int ss, idx;

		if (n < 2)
			return -1;
		ss = p[1] >> 6;
		idx = ((p[1] >> 3) & 7) | ((rex & 2) ? 8 : 0);
		base = (p[1] & 7) | ((rex & 1) ? 8 : 0);
		i = 2;
		in->scale = 1 << ss;
		in->index = idx == 4 ? X86_NOREG : idx;
		if ((base & 7) == 5 && m->mod == 0) {
			base = X86_NOREG;
			if (n < i + 4)
				return -1;
			memcpy(&in->disp, p + i, 4);
			i += 4;
		}
		in->base = base;
	} else if (m->rm == 5 && m->mod == 0) {
		if (n < 5)
			return -1;
		in->base = X86_RIP;
		memcpy(&in->disp, p + 1, 4);
		return 5;
	} else {
		in->base = m->rm | ((rex & 1) ? 8 : 0);
	}
	if (m->mod == 1) {
		if (n < i + 1)
			return -1;
		in->disp = (int8_t)p[i];
		i += 1;
	} else if (m->mod == 2) {
		if (n < i + 4)
			return -1;
		memcpy(&in->disp, p + i, 4);
		i += 4;
	}
	return i;
}

static int64_t read_imm(const uint8_t *p, int size)
{
	int8_t b;
	int16_t w;
	int32_t d;
	int64_t q;

	switch (size) {
	case 1:
		memcpy(&b, p, 1);
		return b;
	case 2:
		memcpy(&w, p, 2);
		return w;
	case 4:
		memcpy(&d, p, 4);
		return d;
	default:
		memcpy(&q, p, 8);
		return q;
	}
}

int x86_decode(const uint8_t *p, size_t n, struct x86_insn *in)
{
	size_t i = 0;
	int rex = 0, opsz16 = 0, rep = 0, r, opsize;
	struct modrm m;
	uint8_t op;

	memset(in, 0, sizeof(*in));
	in->dst = in->src = in->base = in->index = X86_NOREG;

	/* legacy prefixes */
	while (i < n) {
		uint8_t b = p[i];

		if (b == 0x66)
			opsz16 = 1;
		else if (b == 0xf2 || b == 0xf3)
			rep = b;
		else if (b == 0x2e || b == 0x3e || b == 0x26 || b == 0x36 || b == 0x64 || b == 0x65)
			;
		else
			break;
		i++;
	}
	if (i < n && (p[i] & 0xf0) == 0x40) {
		rex = p[i] & 0x0f;
		i++;
	}
	if (i >= n)
		return -1;
	opsize = (rex & 8) ? 8 : opsz16 ? 2 : 4;
	op = p[i++];

	if (op == 0x0f) {
		uint8_t op2;

		if (i >= n)
			return -1;
		op2 = p[i++];
		if (op2 == 0x1e && rep == 0xf3 && i < n && (p[i] == 0xfa || p[i] == 0xfb)) {
			in->op = X86_ENDBR;
			i++;
			goto done;
		}
		if (op2 == 0x1f) { /* nop r/m */
			r = decode_modrm(p + i, n - i, rex, in, &m);
			if (r < 0)
				return -1;
			i += r;
			in->has_mem = false;
			in->op = X86_NOP;
			goto done;
		}
		if (op2 >= 0x80 && op2 <= 0x8f) { /* jcc rel32 */
			if (n < i + 4)
				return -1;
			in->op = X86_JCC;
			in->rel = read_imm(p + i, 4);
			i += 4;
			goto done;
		}
		if (op2 == 0xb6 || op2 == 0xb7 || op2 == 0xbe || op2 == 0xbf) { /* movzx/movsx */
			r = decode_modrm(p + i, n - i, rex, in, &m);
			if (r < 0)
				return -1;
			i += r;
			in->op = in->has_mem ? X86_LOAD : X86_ALU;
			in->ext = op2 < 0xb8 ? 'z' : 's';
			in->size = (op2 & 1) ? 2 : 1;
			in->dst = m.reg;
			goto done;
		}
		if ((op2 >= 0x40 && op2 <= 0x4f) || (op2 >= 0x90 && op2 <= 0x9f) || op2 == 0xaf) {
			/* cmovcc, setcc, imul */
			r = decode_modrm(p + i, n - i, rex, in, &m);
			if (r < 0)
				return -1;
			i += r;
			in->op = X86_ALU;
			in->dst = (op2 >= 0x90 && op2 <= 0x9f) ? (in->has_mem ? X86_NOREG : m.rm)
							       : m.reg;
			if (op2 >= 0x90 && op2 <= 0x9f && in->has_mem)
				in->op = X86_STORE;
			goto done;
		}
		return -1;
	}

	if (op >= 0x50 && op <= 0x57) {
		in->op = X86_PUSH;
		in->src = (op - 0x50) | ((rex & 1) ? 8 : 0);
		goto done;
	}
	if (op >= 0x58 && op <= 0x5f) {
		in->op = X86_POP;
		in->dst = (op - 0x58) | ((rex & 1) ? 8 : 0);
		goto done;
	}
	if (op >= 0x70 && op <= 0x7f) {
		if (i >= n)
			return -1;
		in->op = X86_JCC;
		in->rel = (int8_t)p[i++];
		goto done;
	}
	if (op >= 0xb8 && op <= 0xbf) {
		int isz = (rex & 8) ? 8 : 4;

		if (n < i + isz)
			return -1;
		in->op = X86_MOV_IMM;
		in->dst = (op - 0xb8) | ((rex & 1) ? 8 : 0);
		in->size = isz;
		in->imm = read_imm(p + i, isz);
		i += isz;
		goto done;
	}
	if (op >= 0xb0 && op <= 0xb7) {
		if (i >= n)
			return -1;
		in->op = X86_MOV_IMM;
		in->dst = (op - 0xb0) | ((rex & 1) ? 8 : 0);
		in->size = 1;
		in->imm = (int8_t)p[i++];
		goto done;
	}

	switch (op) {
	case 0x90:
		in->op = X86_NOP;
		goto done;
	case 0xc3:
		in->op = X86_RET;
		goto done;
	case 0xc9:
		in->op = X86_LEAVE;
		goto done;
	case 0xcc:
		in->op = X86_OTHER;
		goto done;
	case 0xeb:
		if (i >= n)
			return -1;
		in->op = X86_JMP;
		in->rel = (int8_t)p[i++];
		goto done;
	case 0xe9:
	case 0xe8:
		if (n < i + 4)
			return -1;
		in->op = op == 0xe9 ? X86_JMP : X86_CALL;
		in->rel = read_imm(p + i, 4);
		i += 4;
		goto done;
	case 0xa8:
	case 0xa9:
	case 0x3c:
	case 0x3d: {
		int isz = (op & 1) ? (opsize == 2 ? 2 : 4) : 1;

		if (n < i + isz)
			return -1;
		in->op = X86_FLAGS;
		in->imm = read_imm(p + i, isz);
		i += isz;
		goto done;
	}
	}

	/* opcodes with ModRM */
	switch (op) {
	case 0x88:
	case 0x89:
	case 0x8a:
	case 0x8b:
	case 0x8d:
	case 0x63:
	case 0x84:
	case 0x85:
	case 0x38:
	case 0x39:
	case 0x3a:
	case 0x3b:
	case 0x00:
	case 0x01:
	case 0x02:
	case 0x03:
	case 0x08:
	case 0x09:
	case 0x0a:
	case 0x0b:
	case 0x20:
	case 0x21:
	case 0x22:
	case 0x23:
	case 0x28:
	case 0x29:
	case 0x2a:
	case 0x2b:
	case 0x30:
	case 0x31:
	case 0x32:
	case 0x33:
	case 0x80:
	case 0x81:
	case 0x83:
	case 0xc6:
	case 0xc7:
	case 0xc0:
	case 0xc1:
	case 0xd0:
	case 0xd1:
	case 0xd3:
	case 0xf6:
	case 0xf7:
	case 0xfe:
	case 0xff:
		break;
	default:
		return -1;
	}
	r = decode_modrm(p + i, n - i, rex, in, &m);
	if (r < 0)
		return -1;
	i += r;
	in->size = (op & 1) || op == 0x8d || op == 0x63 ? opsize : 1;
	if (op == 0x63)
		in->size = 4;

	switch (op) {
	case 0x8b:
	case 0x8a:
	case 0x63:
		if (in->has_mem) {
			in->op = X86_LOAD;
			in->ext = op == 0x63 ? 's' : 0;
		} else {
			in->op = X86_MOV_RR;
			in->src = m.rm;
		}
		in->dst = m.reg;
		break;
	case 0x89:
	case 0x88:
		if (in->has_mem) {
			in->op = X86_STORE;
			in->src = m.reg;
		} else {
			in->op = X86_MOV_RR;
			in->dst = m.rm;
			in->src = m.reg;
		}
		break;
	case 0x8d:
		if (!in->has_mem)
			return -1;
		in->op = X86_LEA;
		in->dst = m.reg;
		break;
	case 0x84:
	case 0x85:
	case 0x38:
	case 0x39:
	case 0x3a:
	case 0x3b:
		in->op = X86_FLAGS;
		break;
	case 0x80:
	case 0x81:
	case 0x83:
	case 0xc0:
	case 0xc1:
	case 0xc6:
	case 0xc7: {
		int isz = op == 0x81 || op == 0xc7 ? (opsize == 2 ? 2 : 4) : 1;

		if (n < i + isz)
			return -1;
		in->imm = read_imm(p + i, isz);
		i += isz;
		if (op == 0xc6 || op == 0xc7) {
			in->op = in->has_mem ? X86_STORE : X86_MOV_IMM;
			in->dst = in->has_mem ? X86_NOREG : m.rm;
		} else if ((op == 0x80 || op == 0x81 || op == 0x83) && (m.reg & 7) == 7) {
			in->op = X86_FLAGS; /* cmp */
		} else {
			in->op = in->has_mem ? X86_STORE : X86_ALU;
			in->dst = in->has_mem ? X86_NOREG : m.rm;
		}
		break;
	}
	case 0xf6:
	case 0xf7:
		if ((m.reg & 7) == 0) { /* test r/m, imm */
			int isz = op == 0xf7 ? (opsize == 2 ? 2 : 4) : 1;

			if (n < i + isz)
				return -1;
			in->imm = read_imm(p + i, isz);
			i += isz;
			in->op = X86_FLAGS;
		} else {
			in->op = in->has_mem ? X86_STORE : X86_ALU;
			in->dst = in->has_mem ? X86_NOREG : m.rm;
		}
		break;
	case 0xfe:
	case 0xff:
		switch (m.reg & 7) {
		case 2:
			in->op = X86_CALL_IND;
			break;
		case 4:
			in->op = X86_JMP_IND;
			break;
		case 6:
			in->op = X86_PUSH;
			break;
		default:
			in->op = in->has_mem ? X86_STORE : X86_ALU;
			in->dst = in->has_mem ? X86_NOREG : m.rm;
		}
		if (!in->has_mem && (in->op == X86_CALL_IND || in->op == X86_JMP_IND))
			in->src = m.rm;
		break;
	default:			      /* add/or/and/sub/xor, shifts */
		if (op <= 0x33 && (op & 2)) { /* reg <- reg op r/m */
			in->op = X86_ALU;
			in->dst = m.reg;
		} else {
			in->op = in->has_mem ? X86_STORE : X86_ALU;
			in->dst = in->has_mem ? X86_NOREG : m.rm;
		}
		break;
	}
done:
	if (i > 15)
		return -1;
	in->len = i;
	return i;
}

bool x86_uprobe_emulated(const struct x86_insn *in)
{
	switch (in->op) {
	case X86_PUSH:
		return in->src != X86_NOREG && !in->has_mem;
	case X86_JMP:
	case X86_JCC:
	case X86_CALL:
	case X86_NOP:
		return true;
	default:
		return false;
	}
}

static bool writes_kept(const struct x86_insn *in, uint32_t keep)
{
	return in->dst != X86_NOREG && (keep & (1u << in->dst));
}

size_t x86_probe_offset(const uint8_t *p, size_t n, uint32_t keep)
{
	size_t off = 0, base = 0;
	struct x86_insn in;
	int skipped = 0;

	if (x86_decode(p, n, &in) > 0 && in.op == X86_ENDBR)
		off = base = in.len;
	while (off < n && skipped <= 2) {
		if (x86_decode(p + off, n - off, &in) < 0)
			return base;
		if (x86_uprobe_emulated(&in))
			return off;
		/* only skip what cannot change control flow, memory or the registers the probe
		 * reads */
		if (in.op != X86_MOV_IMM && in.op != X86_MOV_RR && in.op != X86_FLAGS &&
		    !(in.op == X86_ALU && !in.has_mem))
			return base;
		if (writes_kept(&in, keep) || in.dst == X86_RSP)
			return base;
		off += in.len;
		skipped++;
	}
	return base;
}
