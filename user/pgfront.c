// SPDX-License-Identifier: MIT
#include <string.h>
#include "pgfront.h"

/* A NUL-terminated string at body[*pos]: copied into dst (cut to fit); -1 if it has no end. */
static int take_str(const uint8_t *body, size_t n, size_t *pos, char *dst, size_t size)
{
	const uint8_t *end = *pos < n ? memchr(body + *pos, 0, n - *pos) : NULL;
	size_t len;

	if (!end)
		return -1;
	len = (size_t)(end - (body + *pos));
	if (dst) {
		size_t k = len < size - 1 ? len : size - 1;

		memcpy(dst, body + *pos, k);
		dst[k] = 0;
	}
	*pos += len + 1;
	return 0;
}

/* The SQL starting at body[pos], up to its NUL or the end of what was captured. */
static void take_text(const uint8_t *body, size_t n, size_t len, size_t pos, struct fe_msg *out)
{
	const uint8_t *end = pos < n ? memchr(body + pos, 0, n - pos) : NULL;

	out->text = (const char *)body + (pos < n ? pos : n);
	if (end) {
		out->text_len = (size_t)(end - (body + pos));
		out->text_cut = false;
	} else {
		out->text_len = pos < n ? n - pos : 0;
		out->text_cut = n < len; /* no end because the capture stopped */
	}
}

static int parse_startup(const uint8_t *body, size_t n, struct fe_msg *out)
{
	size_t pos = 4;

	if (n < 4)
		return -1;
	out->version = (uint32_t)body[0] << 24 | (uint32_t)body[1] << 16 | (uint32_t)body[2] << 8 |
		       body[3];
	while (pos < n && body[pos]) {
		char key[32], val[FE_NAME_MAX];

		if (take_str(body, n, &pos, key, sizeof(key)) ||
		    take_str(body, n, &pos, val, sizeof(val)))
			break; /* cut: keep what was complete */
		if (!strcmp(key, "user"))
			memcpy(out->user, val, sizeof(val));
		else if (!strcmp(key, "database"))
			memcpy(out->database, val, sizeof(val));
		else if (!strcmp(key, "application_name"))
			memcpy(out->application, val, sizeof(val));
	}
	if (!out->database[0])
		memcpy(out->database, out->user, sizeof(out->user)); /* the server's default */
	return 0;
}

int fe_parse(uint8_t type, const uint8_t *body, size_t n, size_t len, struct fe_msg *out)
{
	size_t pos = 0;

	memset(out, 0, sizeof(*out));
	out->type = type;
	if (n > len)
		return -1;
	switch (type) {
	case 0:
		return parse_startup(body, n, out);
	case 'Q':
		take_text(body, n, len, 0, out);
		return 0;
	case 'P':
		if (take_str(body, n, &pos, out->name, sizeof(out->name)))
			return -1;
		take_text(body, n, len, pos, out);
		return 0;
	case 'B':
		if (take_str(body, n, &pos, out->name, sizeof(out->name)) ||
		    take_str(body, n, &pos, out->stmt, sizeof(out->stmt)))
			return -1;
		return 0;
	case 'E':
		return take_str(body, n, &pos, out->name, sizeof(out->name));
	case 'D':
	case 'C':
		if (n < 1 || (body[0] != 'S' && body[0] != 'P'))
			return -1;
		out->kind = (char)body[0];
		pos = 1;
		return take_str(body, n, &pos, out->name, sizeof(out->name));
	default:
		return 0;
	}
}
