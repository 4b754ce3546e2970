// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "elffile.h"
#include "procmaps.h"
#include "pyruntime.h"

static bool is_libpython(const char *path)
{
	const char *b = strrchr(path, '/');

	b = b ? b + 1 : path;
	return !strncmp(b, "libpython3.", 11) && strstr(b, ".so");
}

static int64_t val_at(const uint8_t *img, size_t n, int32_t off)
{
	uint64_t v;

	if (off < 0 || (size_t)off + 8 > n)
		return -1;
	memcpy(&v, img + off, 8);
	return v < 0x100000 ? (int64_t)v : -1;
}

int py_apply_debug_offsets(struct py_layout *l, const struct py_debug_map *m, const uint8_t *img,
			   size_t n, uint32_t version)
{
	uint64_t v;

	if (n < 16 || memcmp(img, "xdebugpy", 8))
		return -1;
	memcpy(&v, img + 8, 8);
	if ((v & 0xffff0000u) != (version & 0xffff0000u))
		return -1;
#define TAKE(f)                                                                                    \
	do {                                                                                       \
		int64_t x = val_at(img, n, m->f);                                                  \
		if (x < 0)                                                                         \
			return -1;                                                                 \
		l->f = (int32_t)x;                                                                 \
	} while (0)
	TAKE(runtime_interpreters_head);
	TAKE(interp_threads_head);
	TAKE(tstate_next);
	TAKE(tstate_thread_id);
	TAKE(tstate_frame);
	TAKE(frame_code);
	TAKE(frame_previous);
	TAKE(frame_instr);
	TAKE(frame_owner);
	TAKE(frame_localsplus);
	TAKE(code_filename);
	TAKE(code_name);
	TAKE(code_qualname);
	TAKE(code_linetable);
	TAKE(code_firstlineno);
	TAKE(code_adaptive);
	TAKE(unicode_state);
	TAKE(unicode_length);
	TAKE(unicode_ascii_data);
	TAKE(bytes_size);
	TAKE(bytes_sval);
#undef TAKE
	return 0;
}

/* The interpreter binary of the process: libpython if mapped, else the executable. */
static int find_binary(pid_t pid, char *path, size_t n, uint64_t *base)
{
	char maps[64], line[1024], exe[PATH_MAX] = "";
	struct map_entry e;
	uint64_t exe_base = 0, lib_base = 0;
	FILE *f;
	ssize_t len;

	snprintf(maps, sizeof(maps), "/proc/%d/exe", pid);
	len = readlink(maps, exe, sizeof(exe) - 1);
	if (len > 0) {
		exe[len] = 0;
		if (len > 10 && !strcmp(exe + len - 10, " (deleted)"))
			exe[len - 10] = 0;
	}
	snprintf(maps, sizeof(maps), "/proc/%d/maps", pid);
	f = fopen(maps, "r");
	if (!f)
		return -1;
	path[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		if (maps_parse_line(line, &e) || !e.path[0] || e.offset != 0)
			continue;
		if (is_libpython(e.path) && !lib_base) {
			lib_base = e.lo;
			snprintf(path, n, "%s", e.path);
		} else if (!exe_base && !strcmp(e.path, exe)) {
			exe_base = e.lo;
		}
	}
	fclose(f);
	if (lib_base) {
		*base = lib_base;
		return 0;
	}
	if (!exe_base)
		return -1;
	snprintf(path, n, "%s", exe);
	*base = exe_base;
	return 0;
}

enum py_detect_result py_detect(pid_t pid, struct py_target *t, char *why, size_t n)
{
	char open_path[PATH_MAX + 64];
	uint64_t base, rt_va, ver_va, rt_size;
	struct elf_file *ef;
	const struct py_layout *table;
	const struct py_debug_map *dm;
	uint32_t ver = 0;

	memset(t, 0, sizeof(*t));
	if (find_binary(pid, t->binary, sizeof(t->binary), &base)) {
		snprintf(why, n, "cannot read the memory map");
		return PY_ERROR;
	}
	snprintf(open_path, sizeof(open_path), "/proc/%d/root%s", pid, t->binary);
	ef = elff_open(open_path);
	if (!ef) {
		snprintf(why, n, "cannot read %s", t->binary);
		return PY_ERROR;
	}
	if (elff_sym(ef, "_PyRuntime", &rt_va, &rt_size)) {
		elff_close(ef);
		return PY_NOT_PYTHON;
	}
	if (elff_sym(ef, "Py_Version", &ver_va, NULL) ||
	    elff_read(ef, ver_va, &ver, sizeof(ver)) != sizeof(ver)) {
		elff_close(ef);
		snprintf(why, n, "CPython older than 3.11 (no Py_Version)");
		return PY_UNSUPPORTED;
	}
	t->version = ver;
	t->runtime = rt_va - elff_first_load(ef) + base;
	{
		/* the types the BPF side recognises objects by (0 where the symbol is missing) */
		const struct {
			const char *sym;
			uint64_t *at;
		} types[] = {
			{"PyFrame_Type", &t->frame_type}, /* frames held by suspended greenlets */
			{"PyUnicode_Type", &t->str_type}, /* asyncio task names */
			{"PyLong_Type", &t->int_type},	  /* and numbers */
			{"PyCFunction_Type", &t->cfunc_type}, /* Task.__wakeup bound to its task */
			{"PyMethod_Type", &t->method_type},   /* greenlet_spawn's bound method */
			{"PyDict_Type", &t->dict_type},	      /* a Session's connections */
			{"PyTuple_Type", &t->tuple_type},
		};
		uint64_t va;

		for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
			if (!elff_sym(ef, types[i].sym, &va, NULL))
				*types[i].at = va - elff_first_load(ef) + base;
		}
	}
	table = py_layout_table(ver);
	if (!table) {
		elff_close(ef);
		snprintf(why, n, "CPython %u.%u is not supported (3.11 to 3.14 are)", ver >> 24,
			 (ver >> 16) & 0xff);
		return PY_UNSUPPORTED;
	}
	t->layout = *table;
	dm = py_debug_map(ver);
	if (dm) {
		uint8_t *img = malloc(dm->size);

		if (img && elff_read(ef, rt_va, img, dm->size) == (ssize_t)dm->size) {
			uint64_t ft = 0;

			/* 3.13+: cookie, version, free_threaded, then the sections */
			memcpy(&ft, img + 16, sizeof(ft));
			if (!memcmp(img, "xdebugpy", 8) && ft) {
				free(img);
				elff_close(ef);
				snprintf(why, n, "free-threaded CPython builds are not supported");
				return PY_UNSUPPORTED;
			}
			t->from_debug_offsets =
				!py_apply_debug_offsets(&t->layout, dm, img, dm->size, ver);
		}
		free(img);
	}
	elff_close(ef);
	return PY_FOUND;
}
