// SPDX-License-Identifier: MIT
/*
 * libFuzzer target: arbitrary bytes as a stream of BPF records (frontend and backend protocol
 * messages of wire and libpq sockets, requests, connection ends) into the span assembler, and as
 * message bodies into the protocol decoders. Nothing may crash, leak or read out of bounds
 * (built with ASan/UBSan). `make fuzz` runs it; `make test` runs it briefly.
 *
 * Input: a sequence of [kind byte][size byte][size bytes] records; a record's fields beyond
 * what the input gives are zero. The kinds are mapped onto the real record kinds, with fd and pid
 * folded onto a few values so that records meet on the same connections.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "assemble.h"
#include "pgfront.h"
#include "pgproto.h"
#include "../../bpf/sqlspan.h"

static void on_span(void *arg, const struct span *s)
{
	(void)arg;
	/* touch what an output would read */
	if (s->text)
		(void)strlen(s->text);
}

static void on_ident(void *arg, uint32_t pid, uint64_t conn, int fd, struct conn_ident *out)
{
	(void)arg, (void)pid, (void)conn, (void)fd;
	memset(out, 0, sizeof(*out));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t kinds[] = {EV_TEXT, EV_REQ,    EV_MSG,  EV_DESYNC, EV_CLOSE,
					 EV_FINISH, EV_EXIT, EV_IDENT, EV_STACK, EV_FMSG,
					 EV_FMSG,  EV_FMSG, EV_MSG,  EV_CONNECT};
	static const struct asm_hooks hooks = {.ident = on_ident, .span = on_span};
	struct assembler *a = asm_new(&hooks, 4096, 1);
	uint8_t rec[sizeof(struct ev_text) + 64];
	size_t pos = 0;

	if (!a)
		return 0;
	while (pos + 2 <= size) {
		uint8_t k = data[pos], n = data[pos + 1];
		size_t take = n < size - pos - 2 ? n : size - pos - 2;
		struct ev_hdr *h = (struct ev_hdr *)rec;
		size_t len;
		struct fe_msg fm;
		struct pg_error pe;
		struct pg_tag tag;

		pos += 2;
		memset(rec, 0, sizeof(rec));
		/* the bytes given land after the header: the record's own fields */
		memcpy(rec + sizeof(*h), data + pos, take);
		pos += take;
		h->kind = kinds[k % (sizeof(kinds) / sizeof(kinds[0]))];
		h->pid = 7 + (k >> 7);
		h->tid = 7;
		h->flags = (k >> 4) & 1 ? EVF_GAP : 0;
		h->ts = pos;
		if (h->kind == EV_MSG || h->kind == EV_FMSG || h->kind == EV_REQ ||
		    h->kind == EV_CONNECT)
			((struct ev_msg *)rec)->fd &= 3;
		/* sizes: as given, or the record's full size with its data (bit 5) */
		len = sizeof(*h) + take;
		if ((k >> 5) & 1) {
			if (h->kind == EV_FMSG)
				len = sizeof(struct ev_fmsg) + (((struct ev_fmsg *)rec)->n & 0x3f);
			else if (h->kind == EV_MSG)
				len = sizeof(struct ev_msg) + SQLSPAN_MSG_SHORT;
		}
		if (len > sizeof(rec))
			len = sizeof(rec);
		if (h->kind == EV_MSG || (h->kind == EV_FMSG && ((k >> 6) & 2))) {
			/* backend messages travel in EV_MSGS records (several per read), and
			 * short frontend ones (several per send) */
			static uint8_t bat[sizeof(struct ev_msgs) + sizeof(rec)];
			struct ev_msgs *b = (struct ev_msgs *)bat;

			memcpy(bat + sizeof(*b), rec, len);
			b->h = *h;
			b->h.kind = EV_MSGS;
			b->count = 1 + ((k >> 6) & 1);
			b->len = len;
			asm_record(a, bat, sizeof(*b) + len);
		} else {
			asm_record(a, rec, len);
		}
		/* the decoders on their own, on the same bytes */
		fe_parse(data[pos - take - 1], data + pos - take, take, take + (k & 3), &fm);
		pg_parse_error(data + pos - take, take, k & 1, &pe);
		pg_parse_tag(data + pos - take, take, &tag);
	}
	asm_close_all(a, ~0ULL);
	asm_free(a);
	return 0;
}
