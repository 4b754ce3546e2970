// SPDX-License-Identifier: MIT
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "elffile.h"
#include "x86dec.h"

struct esym {
	char *name;
	uint64_t vaddr, size;
};

struct ereloc {
	uint64_t got; /* address of the GOT slot */
	char *name;   /* symbol it is bound to */
};

struct eload {
	uint64_t vaddr, memsz, offset, filesz;
};

struct elf_file {
	int fd;
	struct esym *syms;
	size_t nsyms;
	struct ereloc *relocs;
	size_t nrelocs;
	struct eload loads[16];
	size_t nloads;
};

static int add_syms(struct elf_file *ef, Elf *e, Elf_Scn *scn, GElf_Shdr *sh)
{
	Elf_Data *d = elf_getdata(scn, NULL);
	size_t i, n;

	if (!d || !sh->sh_entsize)
		return 0;
	n = sh->sh_size / sh->sh_entsize;
	for (i = 0; i < n; i++) {
		GElf_Sym s;
		const char *name;
		struct esym *ns;

		if (!gelf_getsym(d, i, &s) || s.st_shndx == SHN_UNDEF || !s.st_value)
			continue;
		if (GELF_ST_TYPE(s.st_info) != STT_FUNC && GELF_ST_TYPE(s.st_info) != STT_OBJECT &&
		    GELF_ST_TYPE(s.st_info) != STT_GNU_IFUNC)
			continue;
		name = elf_strptr(e, sh->sh_link, s.st_name);
		if (!name || !*name)
			continue;
		ns = realloc(ef->syms, (ef->nsyms + 1) * sizeof(*ns));
		if (!ns)
			return -1;
		ef->syms = ns;
		ns[ef->nsyms].name = strdup(name);
		ns[ef->nsyms].vaddr = s.st_value;
		ns[ef->nsyms].size = s.st_size;
		if (!ns[ef->nsyms].name)
			return -1;
		ef->nsyms++;
	}
	return 0;
}

/* GOT slots bound to imported symbols: .rela.plt (JUMP_SLOT) and .rela.dyn (GLOB_DAT). */
static int add_relocs(struct elf_file *ef, Elf *e, Elf_Scn *scn, GElf_Shdr *sh)
{
	Elf_Data *d = elf_getdata(scn, NULL);
	Elf_Scn *symscn = elf_getscn(e, sh->sh_link);
	GElf_Shdr symsh;
	Elf_Data *symd;
	size_t i, n;

	if (!d || !symscn || !gelf_getshdr(symscn, &symsh) || !sh->sh_entsize)
		return 0;
	symd = elf_getdata(symscn, NULL);
	if (!symd)
		return 0;
	n = sh->sh_size / sh->sh_entsize;
	for (i = 0; i < n; i++) {
		GElf_Rela r;
		GElf_Sym s;
		const char *name;
		struct ereloc *nr;
		unsigned type;

		if (!gelf_getrela(d, i, &r))
			continue;
		type = GELF_R_TYPE(r.r_info);
		if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
			continue;
		if (!gelf_getsym(symd, GELF_R_SYM(r.r_info), &s))
			continue;
		name = elf_strptr(e, symsh.sh_link, s.st_name);
		if (!name || !*name)
			continue;
		nr = realloc(ef->relocs, (ef->nrelocs + 1) * sizeof(*nr));
		if (!nr)
			return -1;
		ef->relocs = nr;
		nr[ef->nrelocs].got = r.r_offset;
		nr[ef->nrelocs].name = strdup(name);
		if (!nr[ef->nrelocs].name)
			return -1;
		ef->nrelocs++;
	}
	return 0;
}

struct elf_file *elff_open(const char *path)
{
	struct elf_file *ef;
	Elf_Scn *scn = NULL;
	GElf_Ehdr eh;
	size_t i, nph;
	Elf *e;

	if (elf_version(EV_CURRENT) == EV_NONE) {
		errno = ENOSYS;
		return NULL;
	}
	ef = calloc(1, sizeof(*ef));
	if (!ef)
		return NULL;
	ef->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (ef->fd < 0) {
		free(ef);
		return NULL;
	}
	e = elf_begin(ef->fd, ELF_C_READ, NULL);
	if (!e || elf_kind(e) != ELF_K_ELF || !gelf_getehdr(e, &eh) || eh.e_machine != EM_X86_64 ||
	    gelf_getclass(e) != ELFCLASS64 || elf_getphdrnum(e, &nph)) {
		if (e)
			elf_end(e);
		elff_close(ef);
		errno = ENOEXEC;
		return NULL;
	}
	for (i = 0; i < nph && ef->nloads < 16; i++) {
		GElf_Phdr ph;

		if (!gelf_getphdr(e, i, &ph) || ph.p_type != PT_LOAD)
			continue;
		ef->loads[ef->nloads].vaddr = ph.p_vaddr;
		ef->loads[ef->nloads].memsz = ph.p_memsz;
		ef->loads[ef->nloads].offset = ph.p_offset;
		ef->loads[ef->nloads].filesz = ph.p_filesz;
		ef->nloads++;
	}
	while ((scn = elf_nextscn(e, scn))) {
		GElf_Shdr sh;
		int r = 0;

		if (!gelf_getshdr(scn, &sh))
			continue;
		if (sh.sh_type == SHT_DYNSYM || sh.sh_type == SHT_SYMTAB)
			r = add_syms(ef, e, scn, &sh);
		else if (sh.sh_type == SHT_RELA)
			r = add_relocs(ef, e, scn, &sh);
		if (r) {
			elf_end(e);
			elff_close(ef);
			errno = ENOMEM;
			return NULL;
		}
	}
	elf_end(e);
	return ef;
}

void elff_close(struct elf_file *ef)
{
	size_t i;

	if (!ef)
		return;
	for (i = 0; i < ef->nsyms; i++)
		free(ef->syms[i].name);
	for (i = 0; i < ef->nrelocs; i++)
		free(ef->relocs[i].name);
	free(ef->syms);
	free(ef->relocs);
	if (ef->fd >= 0)
		close(ef->fd);
	free(ef);
}

int elff_sym(struct elf_file *ef, const char *name, uint64_t *vaddr, uint64_t *size)
{
	size_t i;

	for (i = 0; i < ef->nsyms; i++) {
		if (!strcmp(ef->syms[i].name, name)) {
			*vaddr = ef->syms[i].vaddr;
			if (size)
				*size = ef->syms[i].size;
			return 0;
		}
	}
	return -1;
}

uint64_t elff_file_offset(struct elf_file *ef, uint64_t vaddr)
{
	size_t i;

	for (i = 0; i < ef->nloads; i++) {
		struct eload *l = &ef->loads[i];

		if (vaddr >= l->vaddr && vaddr < l->vaddr + l->filesz)
			return vaddr - l->vaddr + l->offset;
	}
	return (uint64_t)-1;
}

ssize_t elff_read(struct elf_file *ef, uint64_t vaddr, void *buf, size_t n)
{
	uint64_t off = elff_file_offset(ef, vaddr);

	if (off == (uint64_t)-1)
		return -1;
	return pread(ef->fd, buf, n, off);
}

uint64_t elff_first_load(struct elf_file *ef)
{
	uint64_t lo = (uint64_t)-1;

	for (size_t i = 0; i < ef->nloads; i++) {
		if (ef->loads[i].vaddr < lo)
			lo = ef->loads[i].vaddr;
	}
	return ef->nloads ? lo & ~0xfffULL : 0;
}

static const char *got_name(struct elf_file *ef, uint64_t got)
{
	size_t i;

	for (i = 0; i < ef->nrelocs; i++) {
		if (ef->relocs[i].got == got)
			return ef->relocs[i].name;
	}
	return NULL;
}

const char *elff_call_target(struct elf_file *ef, uint64_t vaddr)
{
	uint8_t code[32];
	struct x86_insn in;
	ssize_t n;
	size_t i, off = 0;
	int k;

	for (i = 0; i < ef->nsyms; i++) {
		if (ef->syms[i].vaddr == vaddr && ef->syms[i].size)
			return ef->syms[i].name;
	}
	/* a PLT stub: [endbr64;] [bnd] jmp *GOT(%rip) */
	n = elff_read(ef, vaddr, code, sizeof(code));
	if (n <= 0)
		return NULL;
	for (k = 0; k < 2 && off < (size_t)n; k++) {
		int len = x86_decode(code + off, n - off, &in);

		if (len < 0)
			return NULL;
		off += len;
		if (in.op == X86_ENDBR)
			continue;
		if (in.op == X86_JMP_IND && in.has_mem && in.base == X86_RIP)
			return got_name(ef, vaddr + off + in.disp);
		return NULL;
	}
	return NULL;
}

int elff_calls(struct elf_file *ef, const char *caller, const char *callee)
{
	uint64_t va, size, off = 0;
	uint8_t *code;
	int found = 0;

	if (elff_sym(ef, caller, &va, &size) || !size || size > 65536)
		return -1;
	code = malloc(size);
	if (!code)
		return -1;
	if (elff_read(ef, va, code, size) != (ssize_t)size) {
		free(code);
		return -1;
	}
	while (off < size) {
		struct x86_insn in;
		int len = x86_decode(code + off, size - off, &in);
		const char *t = NULL;

		if (len < 0) {
			found = found ? 1 : -1;
			break;
		}
		off += len;
		if (in.op == X86_CALL || in.op == X86_JMP)
			t = elff_call_target(ef, va + off + in.rel);
		else if ((in.op == X86_CALL_IND || in.op == X86_JMP_IND) && in.has_mem &&
			 in.base == X86_RIP)
			t = got_name(ef, va + off + in.disp);
		if (t && !strcmp(t, callee)) {
			found = 1;
			break;
		}
	}
	free(code);
	return found;
}

size_t elff_func_code(struct elf_file *ef, const char *sym, uint8_t *buf, size_t n, uint64_t *va)
{
	uint64_t size;
	ssize_t r;

	if (elff_sym(ef, sym, va, &size))
		return 0;
	if (!size || size > n)
		size = n;
	r = elff_read(ef, *va, buf, size);
	return r > 0 ? (size_t)r : 0;
}
