#!/bin/sh
# Regenerate user/pylayout_table.c from CPython's own headers: offsetof() of every field sqlspan
# reads, per minor version. Needs the internal headers of each version (pyenv builds have them;
# 3.14's come from Debian sid's libpython3.14-dev, unpacked, not installed).
# Usage: scripts/gen-pylayout.sh INCLUDE_DIR... (e.g. /root/.pyenv/versions/3.12.1/include/python3.12)
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/user/pylayout_table.c"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/gen.c" <<'EOC'
#define Py_BUILD_CORE 1
#include <Python.h>
#include <internal/pycore_runtime.h>
#include <internal/pycore_interp.h>
#include <internal/pycore_frame.h>
#include <internal/pycore_code.h>
#include <internal/pycore_dict.h>
#include <structmember.h>
#if PY_VERSION_HEX >= 0x030E0000
#include <internal/pycore_interpframe_structs.h>
#include <internal/pycore_debug_offsets.h>
#endif
#include <stddef.h>
#include <stdio.h>
#define O(t, f) (int)offsetof(t, f)
int main(void)
{
	unsigned v = PY_VERSION_HEX & 0xffff0000u;

	printf("\t{\n\t\t.version = 0x%08x,\n", v);
	printf("\t\t.runtime_interpreters_head = %d,\n", O(_PyRuntimeState, interpreters.head));
	printf("\t\t.interp_threads_head = %d,\n", O(PyInterpreterState, threads.head));
	printf("\t\t.tstate_next = %d,\n", O(PyThreadState, next));
	printf("\t\t.tstate_thread_id = %d,\n", O(PyThreadState, thread_id));
#if PY_VERSION_HEX < 0x030D0000
	printf("\t\t.tstate_frame = %d,\n", O(PyThreadState, cframe));
	printf("\t\t.cframe_frame = %d,\n", O(_PyCFrame, current_frame));
#else
	printf("\t\t.tstate_frame = %d,\n", O(PyThreadState, current_frame));
	printf("\t\t.cframe_frame = -1,\n");
#endif
#if PY_VERSION_HEX < 0x030D0000
	printf("\t\t.frame_code = %d,\n", O(_PyInterpreterFrame, f_code));
	printf("\t\t.frame_instr = %d,\n", O(_PyInterpreterFrame, prev_instr));
#else
	printf("\t\t.frame_code = %d,\n", O(_PyInterpreterFrame, f_executable));
	printf("\t\t.frame_instr = %d,\n", O(_PyInterpreterFrame, instr_ptr));
#endif
	printf("\t\t.frame_previous = %d,\n", O(_PyInterpreterFrame, previous));
	printf("\t\t.frame_owner = %d,\n", O(_PyInterpreterFrame, owner));
	printf("\t\t.frame_localsplus = %d,\n", O(_PyInterpreterFrame, localsplus));
#if PY_VERSION_HEX < 0x030C0000
	printf("\t\t.owner_cstack = -1,\n\t\t.owner_first_incomplete = 3,\n");
#elif PY_VERSION_HEX < 0x030E0000
	printf("\t\t.owner_cstack = %d,\n\t\t.owner_first_incomplete = %d,\n", FRAME_OWNED_BY_CSTACK,
	       FRAME_OWNED_BY_CSTACK);
#else
	printf("\t\t.owner_cstack = %d,\n\t\t.owner_first_incomplete = %d,\n", FRAME_OWNED_BY_CSTACK,
	       FRAME_OWNED_BY_INTERPRETER);
#endif
	printf("\t\t.code_tagged = %d,\n", PY_VERSION_HEX >= 0x030E0000);
	printf("\t\t.code_filename = %d,\n", O(PyCodeObject, co_filename));
	printf("\t\t.code_name = %d,\n", O(PyCodeObject, co_name));
	printf("\t\t.code_qualname = %d,\n", O(PyCodeObject, co_qualname));
	printf("\t\t.code_linetable = %d,\n", O(PyCodeObject, co_linetable));
	printf("\t\t.code_firstlineno = %d,\n", O(PyCodeObject, co_firstlineno));
	printf("\t\t.code_adaptive = %d,\n", O(PyCodeObject, co_code_adaptive));
	printf("\t\t.unicode_state = %d,\n", O(PyASCIIObject, state));
	printf("\t\t.unicode_length = %d,\n", O(PyASCIIObject, length));
	printf("\t\t.unicode_ascii_data = %d,\n", (int)sizeof(PyASCIIObject));
	printf("\t\t.unicode_compact_data = %d,\n", (int)sizeof(PyCompactUnicodeObject));
	printf("\t\t.bytes_size = %d,\n", O(PyVarObject, ob_size));
	printf("\t\t.bytes_sval = %d,\n", O(PyBytesObject, ob_sval));
	printf("\t\t.type_name = %d,\n", O(PyTypeObject, tp_name));
	printf("\t\t.type_basicsize = %d,\n", O(PyTypeObject, tp_basicsize));
	printf("\t\t.type_flags = %d,\n", O(PyTypeObject, tp_flags));
	printf("\t\t.type_dictoffset = %d,\n", O(PyTypeObject, tp_dictoffset));
	printf("\t\t.type_members = %d,\n", O(PyTypeObject, tp_members));
	printf("\t\t.member_size = %d,\n", (int)sizeof(PyMemberDef));
	printf("\t\t.member_offset = %d,\n", O(PyMemberDef, offset));
	printf("\t\t.cfunc_self = %d,\n", O(PyCFunctionObject, m_self));
	printf("\t\t.heaptype_cached_keys = %d,\n", O(PyHeapTypeObject, ht_cached_keys));
	printf("\t\t.dict_keys = %d,\n", O(PyDictObject, ma_keys));
	printf("\t\t.dict_values = %d,\n", O(PyDictObject, ma_values));
	printf("\t\t.keys_log2_size = %d,\n", O(PyDictKeysObject, dk_log2_size));
	printf("\t\t.keys_log2_index_bytes = %d,\n", O(PyDictKeysObject, dk_log2_index_bytes));
	printf("\t\t.keys_kind = %d,\n", O(PyDictKeysObject, dk_kind));
	printf("\t\t.keys_nentries = %d,\n", O(PyDictKeysObject, dk_nentries));
	printf("\t\t.keys_indices = %d,\n", O(PyDictKeysObject, dk_indices));
	printf("\t\t.values_items = %d,\n", O(PyDictValues, values));
#if PY_VERSION_HEX >= 0x030D0000
	printf("\t\t.values_valid = %d,\n", O(PyDictValues, valid));
	printf("\t\t.managed_dict = %d,\n", (int)MANAGED_DICT_OFFSET);
	printf("\t\t.managed_values = 0,\n\t\t.managed_tagged = 0,\n");
#elif PY_VERSION_HEX >= 0x030C0000
	printf("\t\t.values_valid = -1,\n\t\t.managed_dict = %d,\n", -3 * (int)sizeof(void *));
	printf("\t\t.managed_values = 0,\n\t\t.managed_tagged = 1,\n");
#else
	printf("\t\t.values_valid = -1,\n\t\t.managed_dict = %d,\n", -3 * (int)sizeof(void *));
	printf("\t\t.managed_values = %d,\n\t\t.managed_tagged = 0,\n", -4 * (int)sizeof(void *));
#endif
	printf("\t\t.tuple_size = %d,\n", O(PyVarObject, ob_size));
	printf("\t\t.tuple_items = %d,\n", O(PyTupleObject, ob_item));
#if PY_VERSION_HEX >= 0x030C0000
	printf("\t\t.long_tag = %d,\n", O(PyLongObject, long_value.lv_tag));
	printf("\t\t.long_digits = %d,\n", O(PyLongObject, long_value.ob_digit));
	printf("\t\t.long_tagged = 1,\n\t},\n");
#else
	printf("\t\t.long_tag = %d,\n", O(PyVarObject, ob_size));
	printf("\t\t.long_digits = %d,\n", O(PyLongObject, ob_digit));
	printf("\t\t.long_tagged = 0,\n\t},\n");
#endif
#if PY_VERSION_HEX >= 0x030D0000
#define D(f) (int)offsetof(_Py_DebugOffsets, f)
	fprintf(stderr, "\t{\n\t\t.version = 0x%08x,\n", v);
	fprintf(stderr, "\t\t.runtime_interpreters_head = %d,\n", D(runtime_state.interpreters_head));
	fprintf(stderr, "\t\t.interp_threads_head = %d,\n", D(interpreter_state.threads_head));
	fprintf(stderr, "\t\t.tstate_next = %d,\n", D(thread_state.next));
	fprintf(stderr, "\t\t.tstate_thread_id = %d,\n", D(thread_state.thread_id));
	fprintf(stderr, "\t\t.tstate_frame = %d,\n", D(thread_state.current_frame));
	fprintf(stderr, "\t\t.frame_code = %d,\n", D(interpreter_frame.executable));
	fprintf(stderr, "\t\t.frame_previous = %d,\n", D(interpreter_frame.previous));
	fprintf(stderr, "\t\t.frame_instr = %d,\n", D(interpreter_frame.instr_ptr));
	fprintf(stderr, "\t\t.frame_owner = %d,\n", D(interpreter_frame.owner));
	fprintf(stderr, "\t\t.frame_localsplus = %d,\n", D(interpreter_frame.localsplus));
	fprintf(stderr, "\t\t.code_filename = %d,\n", D(code_object.filename));
	fprintf(stderr, "\t\t.code_name = %d,\n", D(code_object.name));
	fprintf(stderr, "\t\t.code_qualname = %d,\n", D(code_object.qualname));
	fprintf(stderr, "\t\t.code_linetable = %d,\n", D(code_object.linetable));
	fprintf(stderr, "\t\t.code_firstlineno = %d,\n", D(code_object.firstlineno));
	fprintf(stderr, "\t\t.code_adaptive = %d,\n", D(code_object.co_code_adaptive));
	fprintf(stderr, "\t\t.unicode_state = %d,\n", D(unicode_object.state));
	fprintf(stderr, "\t\t.unicode_length = %d,\n", D(unicode_object.length));
	fprintf(stderr, "\t\t.unicode_ascii_data = %d,\n", D(unicode_object.asciiobject_size));
	fprintf(stderr, "\t\t.bytes_size = %d,\n", D(bytes_object.ob_size));
	fprintf(stderr, "\t\t.bytes_sval = %d,\n", D(bytes_object.ob_sval));
	fprintf(stderr, "\t\t.size = %d,\n\t},\n", (int)sizeof(_Py_DebugOffsets));
#endif
	return 0;
}
EOC
: >"$tmp/tables"
: >"$tmp/debug"
for inc in "$@"; do
	# Debian keeps pyconfig.h in a multiarch folder beside the headers
	multi="$(dirname "$(dirname "$inc")")/include/x86_64-linux-gnu"
	cc -I"$inc" -I"$inc/internal" -I"$(dirname "$inc")" -I"$multi" "$tmp/gen.c" -o "$tmp/gen" 2>"$tmp/err" ||
		{ cat "$tmp/err" >&2; exit 1; }
	"$tmp/gen" >>"$tmp/tables" 2>>"$tmp/debug"
done
{
	echo "// SPDX-License-Identifier: MIT"
	echo "/* Generated by scripts/gen-pylayout.sh from CPython's headers; do not edit. */"
	echo "#include <stddef.h>"
	echo "#include \"pylayout.h\""
	echo
	echo "static const struct py_layout tables[] = {"
	cat "$tmp/tables"
	echo "};"
	echo
	echo "static const struct py_debug_map debug_maps[] = {"
	cat "$tmp/debug"
	echo "};"
	echo
	echo "const struct py_layout *py_layout_table(uint32_t version)"
	echo "{"
	echo "	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {"
	echo "		if (tables[i].version == (version & 0xffff0000u))"
	echo "			return &tables[i];"
	echo "	}"
	echo "	return NULL;"
	echo "}"
	echo
	echo "const struct py_debug_map *py_debug_map(uint32_t version)"
	echo "{"
	echo "	for (size_t i = 0; i < sizeof(debug_maps) / sizeof(debug_maps[0]); i++) {"
	echo "		if (debug_maps[i].version == (version & 0xffff0000u))"
	echo "			return &debug_maps[i];"
	echo "	}"
	echo "	return NULL;"
	echo "}"
} >"$out"
echo "wrote $out"
