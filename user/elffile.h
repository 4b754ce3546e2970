/* SPDX-License-Identifier: MIT */
/* Symbols, code bytes and PLT targets of an ELF shared object or executable (libelf). */
#ifndef SQLSPAN_ELFFILE_H
#define SQLSPAN_ELFFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct elf_file;

/* Open an ELF file; returns NULL (errno set) if it is not a readable x86-64 ELF file. */
struct elf_file *elff_open(const char *path);
void elff_close(struct elf_file *ef);

/* Find a defined function or object by name (.dynsym, then .symtab). 0 on success. */
int elff_sym(struct elf_file *ef, const char *name, uint64_t *vaddr, uint64_t *size);
/* The symbol (defined, or imported through the PLT/GOT) that code at `vaddr` calls into. */
const char *elff_call_target(struct elf_file *ef, uint64_t vaddr);
/* File offset of a virtual address; (uint64_t)-1 if not in a PT_LOAD segment. */
uint64_t elff_file_offset(struct elf_file *ef, uint64_t vaddr);
/* Read n bytes of the file's image at a virtual address. Returns bytes read or -1. */
ssize_t elff_read(struct elf_file *ef, uint64_t vaddr, void *buf, size_t n);
/* The virtual address of the first PT_LOAD segment (0 for shared objects and PIE). */
uint64_t elff_first_load(struct elf_file *ef);
/* Does the function `caller` contain a direct or PLT call/jump to `callee`? 1 yes, 0 no, -1
 * unknown. */
int elff_calls(struct elf_file *ef, const char *caller, const char *callee);

/* A function's first bytes of code (at most n) and its address. Returns bytes, 0 if absent. */
size_t elff_func_code(struct elf_file *ef, const char *sym, uint8_t *buf, size_t n, uint64_t *va);

#endif
