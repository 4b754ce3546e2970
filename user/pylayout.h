/* SPDX-License-Identifier: MIT */
/*
 * Where CPython keeps what sqlspan reads to walk a thread's Python stack, per minor version
 * (x86-64, GIL builds). 3.11 and 3.12 come from tables generated from CPython's own headers
 * (scripts/gen-pylayout.sh); 3.13+ binaries describe themselves in _Py_DebugOffsets, which
 * sqlspan reads from the file and prefers (the table says where each value sits in it).
 */
#ifndef SQLSPAN_PYLAYOUT_H
#define SQLSPAN_PYLAYOUT_H

#include <stdint.h>

struct py_layout {
	uint32_t version; /* minor version: 0x030b0000 for 3.11 */
	/* the interpreter and its threads */
	int32_t runtime_interpreters_head; /* _PyRuntime.interpreters.head */
	int32_t interp_threads_head;	   /* PyInterpreterState.threads.head */
	int32_t tstate_next;		   /* PyThreadState.next */
	int32_t tstate_thread_id;	   /* PyThreadState.thread_id (pthread_self()) */
	int32_t tstate_frame;		   /* 3.13+: PyThreadState.current_frame; else .cframe */
	int32_t cframe_frame;		   /* <3.13: _PyCFrame.current_frame; -1 otherwise */
	/* frames (_PyInterpreterFrame) */
	int32_t frame_code; /* f_code / f_executable */
	int32_t frame_previous;
	int32_t frame_instr; /* prev_instr / instr_ptr */
	int32_t frame_owner;
	int32_t frame_localsplus;
	int32_t owner_cstack;		/* frames owned by the C stack (shims): skipped; -1 none */
	int32_t owner_first_incomplete; /* owner values from here on are not complete frames */
	int32_t code_tagged; /* f_executable is a tagged _PyStackRef: mask the low bits */
	/* code objects */
	int32_t code_filename, code_name, code_qualname, code_linetable, code_firstlineno;
	int32_t code_adaptive; /* co_code_adaptive: instructions start here */
	/* str, bytes */
	int32_t unicode_state, unicode_length, unicode_ascii_data, unicode_compact_data;
	int32_t bytes_size, bytes_sval;
	/* objects: types, instance attributes (dicts and their split values), tuples, ints */
	int32_t type_name, type_basicsize, type_flags, type_dictoffset, heaptype_cached_keys;
	int32_t type_members, member_size, member_offset; /* tp_members: PyMemberDef[] */
	int32_t cfunc_self; /* PyCFunctionObject.m_self: a builtin method's object */
	int32_t dict_keys, dict_values;
	int32_t keys_log2_size, keys_log2_index_bytes, keys_kind, keys_nentries, keys_indices;
	int32_t values_items;	/* PyDictValues.values */
	int32_t values_valid;	/* 3.13+: PyDictValues.valid (inline values in use); -1 before */
	int32_t managed_dict;	/* the managed dict pointer, before the object (MANAGED_DICT_OFFSET)
				 */
	int32_t managed_values; /* 3.11: the values pointer before the object; 0 after */
	int32_t managed_tagged; /* 3.12: managed_dict holds the values - 1 (odd) or a dict */
	int32_t tuple_size, tuple_items;
	int32_t long_tag;    /* 3.12+: lv_tag (digit count << 3 | sign); 3.11: ob_size */
	int32_t long_digits; /* 30-bit digits */
	int32_t long_tagged;
};

/* A value's place in _Py_DebugOffsets (3.13+): -1 if it is not there. */
struct py_debug_map {
	uint32_t version;
	int32_t runtime_interpreters_head, interp_threads_head, tstate_next, tstate_thread_id,
		tstate_frame, frame_code, frame_previous, frame_instr, frame_owner,
		frame_localsplus, code_filename, code_name, code_qualname, code_linetable,
		code_firstlineno, code_adaptive, unicode_state, unicode_length, unicode_ascii_data,
		bytes_size, bytes_sval;
	uint32_t size; /* bytes of _Py_DebugOffsets to read */
};

/* The table for a minor version (PY_VERSION_HEX & 0xffff0000); NULL if unsupported. */
const struct py_layout *py_layout_table(uint32_t version);
const struct py_debug_map *py_debug_map(uint32_t version);

#endif
