// SPDX-License-Identifier: MIT
#include "pyline.h"

/* Varints of 6-bit chunks, bit 6 says more follow (Objects/locations.md). */
static int read_varint(const uint8_t *t, size_t n, size_t *i, uint32_t *out)
{
	uint32_t v = 0;
	int shift = 0;

	for (;;) {
		uint8_t b;

		if (*i >= n || shift > 28)
			return -1;
		b = t[(*i)++];
		v |= (uint32_t)(b & 63) << shift;
		shift += 6;
		if (!(b & 64))
			break;
	}
	*out = v;
	return 0;
}

static int read_svarint(const uint8_t *t, size_t n, size_t *i, int32_t *out)
{
	uint32_t v;

	if (read_varint(t, n, i, &v))
		return -1;
	*out = (v & 1) ? -(int32_t)(v >> 1) : (int32_t)(v >> 1);
	return 0;
}

int py_line_at(const uint8_t *table, size_t n, int firstlineno, uint32_t index)
{
	size_t i = 0;
	uint32_t addr = 0, skip;
	int line = firstlineno;

	while (i < n) {
		uint8_t first = table[i++];
		int code = (first >> 3) & 15, len = (first & 7) + 1, has_line = 1;
		int32_t delta = 0;

		if (!(first & 0x80))
			return -1; /* not at an entry start: a corrupt table */
		if (code == 15) {
			has_line = 0;
		} else if (code == 14) {
			if (read_svarint(table, n, &i, &delta) ||
			    read_varint(table, n, &i, &skip) || read_varint(table, n, &i, &skip) ||
			    read_varint(table, n, &i, &skip))
				return -1;
		} else if (code == 13) {
			if (read_svarint(table, n, &i, &delta))
				return -1;
		} else if (code >= 10) {
			delta = code - 10;
			i += 2;
		} else {
			i += 1;
		}
		line += delta;
		if (index >= addr && index < addr + (uint32_t)len)
			return has_line ? line : -1;
		addr += len;
	}
	return -1;
}
