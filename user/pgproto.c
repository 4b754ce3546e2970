// SPDX-License-Identifier: MIT
#include <stdlib.h>
#include <string.h>
#include "pgproto.h"

/* Row count carried by a command tag: "SELECT 5", "INSERT 0 5", "UPDATE 5", "COPY 5", ... */
static int64_t tag_rows(const char *tag)
{
	static const char *const with_count[] = {"SELECT", "INSERT", "UPDATE", "DELETE",
						 "MERGE",  "FETCH",  "MOVE",   "COPY"};
	const char *sp = strrchr(tag, ' ');
	size_t i, wl;
	char *end;
	long long v;

	if (!sp || !sp[1])
		return -1;
	wl = strcspn(tag, " ");
	for (i = 0; i < sizeof(with_count) / sizeof(with_count[0]); i++) {
		if (strlen(with_count[i]) == wl && !strncmp(tag, with_count[i], wl))
			break;
	}
	if (i == sizeof(with_count) / sizeof(with_count[0]))
		return -1;
	v = strtoll(sp + 1, &end, 10);
	if (*end || v < 0)
		return -1;
	return v;
}

int pg_parse_tag(const uint8_t *body, size_t n, struct pg_tag *out)
{
	size_t len = 0;

	memset(out, 0, sizeof(*out));
	out->rows = -1;
	while (len < n && body[len])
		len++;
	if (len >= sizeof(out->tag))
		len = sizeof(out->tag) - 1;
	memcpy(out->tag, body, len);
	out->tag[len] = 0;
	/* a tag is printable ASCII */
	for (size_t i = 0; i < len; i++) {
		if (body[i] < 0x20 || body[i] > 0x7e)
			return -1;
	}
	out->rows = tag_rows(out->tag);
	return 0;
}

static void copy_field(char *dst, size_t cap, const uint8_t *s, size_t n)
{
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, s, n);
	dst[n] = 0;
}

int pg_parse_error(const uint8_t *body, size_t n, bool cut, struct pg_error *out)
{
	size_t i = 0;
	int found = 0;

	memset(out, 0, sizeof(*out));
	while (i < n && body[i]) {
		uint8_t code = body[i++];
		size_t start = i;
		bool terminated;

		while (i < n && body[i])
			i++;
		terminated = i < n;
		switch (code) {
		case 'C':
			if (terminated && i - start == 5) {
				copy_field(out->sqlstate, sizeof(out->sqlstate), body + start, 5);
				found = 1;
			}
			break;
		case 'V':
			if (terminated)
				copy_field(out->severity, sizeof(out->severity), body + start,
					   i - start);
			break;
		case 'S':
			if (terminated && !out->severity[0])
				copy_field(out->severity, sizeof(out->severity), body + start,
					   i - start);
			break;
		case 'M':
			copy_field(out->message, sizeof(out->message), body + start, i - start);
			out->message_cut = !terminated && cut;
			if (i - start >= sizeof(out->message))
				out->message_cut = true;
			found = 1;
			break;
		}
		if (!terminated)
			break;
		i++;
	}
	return found ? 0 : -1;
}

const char *pg_txn_status_name(uint8_t status)
{
	switch (status) {
	case 'I':
		return "idle";
	case 'T':
		return "in_transaction";
	case 'E':
		return "failed";
	}
	return NULL;
}
