/* SPDX-License-Identifier: MIT */
/*
 * Is a process a CPython, which version, where is its _PyRuntime, and how are its structures laid
 * out: read from the interpreter binary (the executable or libpython) on disk, through
 * /proc/PID/root, never by guessing.
 */
#ifndef SQLSPAN_PYRUNTIME_H
#define SQLSPAN_PYRUNTIME_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "pylayout.h"

struct py_target {
	uint32_t version;     /* PY_VERSION_HEX */
	uint64_t runtime;     /* address of _PyRuntime in the process */
	uint64_t frame_type;  /* address of PyFrame_Type in the process, 0 if not found */
	uint64_t str_type;    /* PyUnicode_Type, 0 if not found */
	uint64_t int_type;    /* PyLong_Type, 0 if not found */
	uint64_t cfunc_type;  /* PyCFunction_Type, 0 if not found */
	uint64_t method_type; /* PyMethod_Type (bound methods), 0 if not found */
	uint64_t dict_type;   /* PyDict_Type, PyTuple_Type: 0 if not found */
	uint64_t tuple_type;
	struct py_layout layout;
	bool from_debug_offsets; /* offsets read from the binary's _Py_DebugOffsets */
	char binary[PATH_MAX];	 /* as the process sees it */
};

enum py_detect_result {
	PY_FOUND = 0,
	PY_NOT_PYTHON,	/* no _PyRuntime: not a CPython process */
	PY_UNSUPPORTED, /* CPython, but a version or build sqlspan cannot read */
	PY_ERROR,	/* the binary could not be read */
};

/* Detect; on PY_UNSUPPORTED/PY_ERROR a one-line reason is written to why. */
enum py_detect_result py_detect(pid_t pid, struct py_target *t, char *why, size_t n);

/* Take values from a _Py_DebugOffsets image over a table layout. 0 if the image is valid. */
int py_apply_debug_offsets(struct py_layout *l, const struct py_debug_map *m, const uint8_t *img,
			   size_t n, uint32_t version);

#endif
