// SPDX-License-Identifier: MIT
/* Python support: line tables of real CPython builds, frame classification, layouts. */
#include <unistd.h>
#include <sys/mman.h>
#include "check.h"
#include "pylayout.h"
#include "pyframes.h"
#include "pyline.h"
#include "pystack.h"
#include "span.h"

/*
 * co_linetable and the line of every code unit, as CPython itself reports them (co_lines()),
 * for the same function compiled by 3.11, 3.12 and 3.13:
 *   def f(a):
 *       x = a + 1
 *       if x:
 *           y = [i for i in range(3)]
 *       return g(x,
 *                y)
 */
static const uint8_t py311_table[] = {
	128, 0,	  216, 8,  9,  136, 65,	 137, 5,   128, 65,  216, 7,   8,   240, 0,   1,
	5,   34,  216, 12, 33, 208, 12,	 33,  157, 5,	152, 97,  153, 8,   156, 8,   208,
	12,  33,  209, 12, 33, 212, 12,	 33,  136, 1,	221, 11,  12,  136, 81,	 216, 13,
	14,  241, 3,   1,  12, 16,  244, 0,   1,   12,	16,  240, 0,   1,   5,	 16};
static const int py311_lines[] = {2, 3, 3, 3, 3, 3, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5,
				  5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6,
				  6, 6, 6, 6, 6, 6, 7, 6, 6, 6, 6, 6, 6, 6, 6};
static const int py311_first = 2;
static const uint8_t py312_table[] = {128, 0,	216, 8,	  9,   136, 65,	 137, 5,   128, 65, 217,
				      7,   8,	220, 24,  29,  152, 97,	 155, 8,   214, 12, 33,
				      144, 49,	138, 81,  208, 12,  33,	 136, 1,   208, 12, 33,
				      220, 11,	12,  136, 81,  216, 13,	 14,  243, 3,	1,  12,
				      16,  240, 0,   1,	  5,   16,  249, 242, 3,   0,	13, 34};
static const int py312_lines[] = {2, 3, 3, 3, 3, 3, 4, 4, 5, 5, 5,  5,	5, 5, 5, 5, 5,
				  5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,  5,	5, 5, 5, 6, 6,
				  6, 6, 6, 6, 7, 6, 6, 6, 6, 6, -1, -1, 5, 5, 5};
static const int py312_first = 2;
static const uint8_t py313_table[] = {128, 0,	216, 8,	  9,   136, 65,	 137, 5,   128, 65, 222, 7,
				      8,   220, 24,  29,  152, 97,  156, 8,   211, 12,	33, 153, 8,
				      144, 49,	138, 81,  153, 8,   136, 1,   208, 12,	33, 220, 11,
				      12,  136, 81,  216, 13,  14,  243, 3,   1,   12,	16, 240, 0,
				      1,   5,	16,  249, 242, 3,   0,	 13,  34};
static const int py313_lines[] = {2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4,  5,  5, 5, 5, 5, 5,
				  5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,  5,  5, 5, 5, 5, 5,
				  6, 6, 6, 6, 6, 6, 7, 6, 6, 6, 6, 6, -1, -1, 5, 5, 5};
static const int py313_first = 2;

static void check_table(const char *name, const uint8_t *t, size_t n, int first, const int *lines,
			size_t nlines)
{
	for (size_t i = 0; i < nlines; i++) {
		int got = py_line_at(t, n, first, i);

		checks_run++;
		if (got != lines[i]) {
			fprintf(stderr, "  %s: code unit %zu: line %d, CPython says %d\n", name, i,
				got, lines[i]);
			check_failed_in_case = 1;
		}
	}
}

#define TABLE(p)                                                                                   \
	check_table(#p, p##_table, sizeof(p##_table), p##_first, p##_lines,                        \
		    sizeof(p##_lines) / sizeof(p##_lines[0]))

TEST(line_tables)
{
	TABLE(py311);
	TABLE(py312);
	TABLE(py313);
	/* past the end, corrupt, empty */
	CHECK_EQ(py_line_at(py311_table, sizeof(py311_table), 1, 100000), -1);
	CHECK_EQ(py_line_at((const uint8_t *)"\x01\x02", 2, 1, 0), -1);
	CHECK_EQ(py_line_at(NULL, 0, 1, 0), -1);
	CHECK_EQ(py_line_at((const uint8_t *)"\xf0\xff\xff\xff\xff\xff\xff", 7, 1, 0), -1);
}

TEST(layout_tables)
{
	const struct py_layout *l;

	CHECK(py_layout_table(0x030a0000) == NULL);
	l = py_layout_table(0x030b07f0);
	CHECK(l != NULL);
	if (l) {
		CHECK_EQ(l->tstate_thread_id, 152);
		CHECK_EQ(l->frame_code, 32);
		CHECK_EQ(l->frame_previous, 48);
		CHECK_EQ(l->cframe_frame, 8);
	}
	l = py_layout_table(0x030c01f0);
	CHECK(l && l->tstate_thread_id == 136 && l->frame_owner == 70 && l->owner_cstack == 3);
	l = py_layout_table(0x030e0af0);
	CHECK(l && l->frame_localsplus == 80 && l->code_tagged && l->owner_cstack == 4);
	CHECK(py_debug_map(0x030c0000) == NULL);
	CHECK(py_debug_map(0x030d05f0) != NULL);
	CHECK(py_debug_map(0x030e0000) != NULL);
}

/*
 * Long-lived code objects (hot_codes): named once from the map after HOT_HITS stacks, and dropped
 * when the object at that address is no longer the one named (freed, the memory reused by
 * another code object). The "process" is this test itself: a code object and its strings laid
 * out in its own memory with a layout made for them.
 */
struct fake_str {
	int64_t len;
	int64_t hash; /* as CPython keeps it: right after the length */
	uint32_t state;
	uint32_t pad;
	char data[24];
};

static void fake_str(struct fake_str *s, const char *v)
{
	uint64_t h = 1469598103934665603ULL; /* any hash of the characters (as when interned) */

	memset(s, 0, sizeof(*s));
	s->len = (int64_t)strlen(v);
	for (const char *c = v; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211ULL;
	s->hash = (int64_t)h;
	s->state = (1u << 2) | (1u << 5) | (1u << 6); /* kind 1, compact, ascii */
	memcpy(s->data, v, strlen(v));
}

/* its FILE_SUM, as the BPF side reads it (hashed: after the str computed its hash) */
static uint64_t fake_sum(const struct fake_str *s, bool hashed)
{
	uint64_t tail = 0;

	if (s->len >= FILE_TAIL_MIN)
		memcpy(&tail, s->data + s->len - 8, 8);
	return FILE_SUM((uint64_t)s->len, hashed ? (uint64_t)s->hash : ~0ULL, tail);
}

static struct hot_code hot_seen[8];
static int hot_calls;

static void hot_set(void *arg, uint32_t slot, const struct hot_code *hc)
{
	(void)arg;
	(void)slot;
	if (hot_calls < 8)
		hot_seen[hot_calls] = *hc;
	hot_calls++;
}

static void resolve_one(struct pystacks *ps, uint64_t code, uint32_t ident, struct span_py *out)
{
	static uint8_t rec[sizeof(struct ev_stack) + sizeof(struct ev_frame)];
	struct ev_stack *st = (struct ev_stack *)rec;

	memset(rec, 0, sizeof(rec));
	st->h.kind = EV_STACK;
	st->h.pid = getpid();
	st->nframes = 1;
	st->frames[0].code = code;
	st->frames[0].ident = ident;
	pystacks_resolve(ps, st, sizeof(rec), true, out);
}

/*
 * The hot code tests' layout: code objects of 64 bytes (co_filename, co_name, co_qualname side by
 * side, as in CPython, as the check reads them), fake_str strings; and the strings they name.
 */
static void fake_code_layout(struct py_target *t, struct fake_str *file, struct fake_str *name,
			     struct fake_str *other)
{
	fake_str(file, "/srv/app/views.py");
	fake_str(name, "handler");
	fake_str(other, "other_function");
	t->layout.code_filename = 8;
	t->layout.code_name = 16;
	t->layout.code_qualname = 24;
	t->layout.code_linetable = 32;
	t->layout.code_firstlineno = 40;
	t->layout.code_adaptive = 64;
	t->layout.unicode_length = 0;
	t->layout.unicode_state = 16;
	t->layout.unicode_ascii_data = 24;
	t->layout.unicode_compact_data = 24;
}

TEST(hot_code_named_then_dropped_when_replaced)
{
	static struct fake_str file, name, other;
	/* co_filename, co_name, co_qualname side by side (as in CPython, as the check reads them)
	 */
	static uint64_t code[8];
	struct py_target t = {.version = 0x030c0000};
	struct pystacks ps = {.hot_set = hot_set};
	uint64_t c = (uint64_t)(uintptr_t)code;
	uint32_t ident, ident2, old_unhashed;
	struct span_py out;

	fake_code_layout(&t, &file, &name, &other);
	code[1] = (uint64_t)(uintptr_t)&file;
	code[2] = (uint64_t)(uintptr_t)&name;
	code[3] = (uint64_t)(uintptr_t)&name;
	code[5] = 10; /* co_firstlineno */
	ident = FRAME_IDENT(code[1], code[3], fake_sum(&file, true));
	CHECK(pystacks_add(&ps, getpid(), &t) != NULL);
	/* named from memory; hot after HOT_HITS stacks, once */
	for (int i = 0; i < 40; i++) {
		resolve_one(&ps, c, ident, &out);
		CHECK_STR(out.function, "handler");
		span_py_free(&out);
	}
	CHECK_EQ(hot_calls, 1);
	CHECK_EQ(hot_seen[0].code, c);
	CHECK_EQ(hot_seen[0].ident, ident);
	CHECK(hot_seen[0].flags & HOT_APP);
	CHECK_EQ(ps.nhot, 1);
	/* still the same object: kept */
	pystacks_check_hot(&ps);
	CHECK_EQ(hot_calls, 1);
	CHECK_EQ(ps.hot_dropped, 0);
	/* the object is freed and its memory holds another code object now */
	code[2] = code[3] = (uint64_t)(uintptr_t)&other;
	ident2 = FRAME_IDENT(code[1], code[3], fake_sum(&file, true));
	pystacks_check_hot(&ps);
	CHECK_EQ(hot_calls, 2); /* the slot freed on the BPF side */
	CHECK_EQ(hot_seen[1].code, 0);
	CHECK_EQ(ps.hot_dropped, 1);
	CHECK_EQ(ps.nhot, 0);
	/* a record that still names the old object: its frame left out, never misnamed */
	resolve_one(&ps, c, ident, &out);
	CHECK(out.function == NULL);
	span_py_free(&out);
	/* the new object is named for what it is */
	resolve_one(&ps, c, ident2, &out);
	CHECK_STR(out.function, "other_function");
	span_py_free(&out);
	/*
	 * Freed again, and the next code object's strings land at the same addresses (another
	 * file name of the same size): the pointers alone cannot tell, the file name's hash does.
	 * A record of the new object is not named after the one cached; then one of the old
	 * object is left out.
	 */
	fake_str(&file, "/srv/app/other.py");
	resolve_one(&ps, c, FRAME_IDENT(code[1], code[3], fake_sum(&file, true)), &out);
	CHECK_STR(out.function, "other_function");
	CHECK_STR(out.file, "/srv/app/other.py");
	span_py_free(&out);
	CHECK(ident2 != FRAME_IDENT(code[1], code[3], fake_sum(&file, true)));
	resolve_one(&ps, c, ident2, &out);
	CHECK(out.function == NULL);
	span_py_free(&out);
	/* a stack read before the file name's hash was computed (-1 then) names it as well */
	old_unhashed = FRAME_IDENT(code[1], code[3], fake_sum(&file, false));
	resolve_one(&ps, c, old_unhashed, &out);
	CHECK_STR(out.file, "/srv/app/other.py");
	span_py_free(&out);
	/* file names never hashed (compile()'s): their length and last bytes tell them apart */
	fake_str(&file, "/srv/app/third.py");
	file.hash = -1;
	resolve_one(&ps, c, FRAME_IDENT(code[1], code[3], fake_sum(&file, false)), &out);
	CHECK_STR(out.file, "/srv/app/third.py");
	span_py_free(&out);
	resolve_one(&ps, c, old_unhashed, &out);
	CHECK(out.function == NULL);
	span_py_free(&out);
	pystacks_free(&ps);
}

/*
 * SQLAlchemy's do_execute frame holds the statement text (its third local): read from the
 * process only when the span asks for it (its text not on the wire), not at every statement.
 */
TEST(sa_statement_read_only_when_wanted)
{
	static struct fake_str file, name, other, stmt;
	static uint64_t code[8];
	static uint8_t rec[sizeof(struct ev_stack) + sizeof(struct ev_frame)];
	struct ev_stack *st = (struct ev_stack *)rec;
	struct py_target t = {.version = 0x030c0000};
	struct pystacks ps = {0};
	struct span_py out;

	fake_code_layout(&t, &file, &name, &other);
	fake_str(&file, "/x/sqlalchemy/engine.py");
	fake_str(&name, "D.do_execute");
	fake_str(&stmt, "SELECT 1");
	code[1] = (uint64_t)(uintptr_t)&file;
	code[2] = code[3] = (uint64_t)(uintptr_t)&name;
	code[5] = 10;
	CHECK(pystacks_add(&ps, getpid(), &t) != NULL);
	st->h.kind = EV_STACK;
	st->h.pid = getpid();
	st->nframes = 1;
	st->frames[0].code = (uint64_t)(uintptr_t)code;
	st->frames[0].ident = FRAME_IDENT(code[1], code[3], fake_sum(&file, true));
	st->frames[0].local[2] = (uint64_t)(uintptr_t)&stmt;
	pystacks_resolve(&ps, st, sizeof(rec), false, &out);
	CHECK(out.present);
	CHECK(out.sa_statement == NULL);
	span_py_free(&out);
	pystacks_resolve(&ps, st, sizeof(rec), true, &out);
	CHECK_STR(out.sa_statement, "SELECT 1");
	span_py_free(&out);
	pystacks_free(&ps);
}

/*
 * Many hot code objects, checked together: a few system calls for all of them (three vectored
 * reads a batch, one more after each object that cannot be read), not three each; those
 * replaced by another object or unmapped are dropped, the others kept.
 */
TEST(hot_codes_checked_in_few_reads)
{
	enum { NCODES = 1200, PER_PAGE = 4096 / 64 };
	static struct fake_str file, name, other;
	struct py_target t = {.version = 0x030c0000};
	struct pystacks ps = {.hot_set = hot_set};
	size_t len = (size_t)NCODES * 64;
	uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t hot = 0, changed = 0, gone = 0, reads;
	struct span_py out;

	CHECK(mem != MAP_FAILED);
	fake_code_layout(&t, &file, &name, &other);
	CHECK(pystacks_add(&ps, getpid(), &t) != NULL);
	for (int i = 0; i < NCODES; i++) {
		uint64_t *code = mem + i * 8;
		uint32_t ident;

		code[1] = (uint64_t)(uintptr_t)&file;
		code[2] = code[3] = (uint64_t)(uintptr_t)&name;
		code[5] = 10;
		ident = FRAME_IDENT(code[1], code[3], fake_sum(&file, true));
		for (int k = 0; k < 33; k++) {
			resolve_one(&ps, (uint64_t)(uintptr_t)code, ident, &out);
			span_py_free(&out);
		}
	}
	/* as many as found a free slot (two objects may hash to one) */
	for (uint32_t slot = 0; slot < SQLSPAN_HOT_CODES; slot++)
		hot += ps.hot && ps.hot[slot].code;
	CHECK_EQ(ps.nhot, hot);
	CHECK(hot > 600);
	ps.hot_reads = 0;
	pystacks_check_hot(&ps);
	CHECK_EQ(ps.hot_dropped, 0);
	CHECK_EQ(ps.nhot, hot);
	/* three reads per batch of 512 */
	CHECK(ps.hot_reads <= 3 * ((hot + 511) / 512));
	/* every 7th object replaced by another; the 3rd page's objects unmapped */
	for (uint32_t slot = 0; slot < SQLSPAN_HOT_CODES; slot++) {
		uint64_t c = ps.hot ? ps.hot[slot].code : 0;
		size_t i = c ? (size_t)(c - (uintptr_t)mem) / 64 : 0;

		if (!c)
			continue;
		if (i / PER_PAGE == 2)
			gone++;
		else if (i % 7 == 0)
			changed++;
	}
	for (size_t i = 0; i < NCODES; i += 7) {
		if (i / PER_PAGE != 2)
			mem[i * 8 + 2] = mem[i * 8 + 3] = (uint64_t)(uintptr_t)&other;
	}
	CHECK(munmap(mem + 2 * PER_PAGE * 8, 4096) == 0);
	CHECK(changed > 50 && gone > 10);
	ps.hot_reads = 0;
	pystacks_check_hot(&ps);
	CHECK_EQ(ps.hot_dropped, changed + gone);
	CHECK_EQ(ps.nhot, hot - changed - gone);
	reads = (uint32_t)ps.hot_reads;
	CHECK(reads <= 3 * ((hot + 511) / 512) + gone);
	/* what is left is still there, unread again */
	ps.hot_reads = 0;
	pystacks_check_hot(&ps);
	CHECK_EQ(ps.hot_dropped, changed + gone);
	CHECK(ps.hot_reads <= 3 * ((hot + 511) / 512));
	pystacks_free(&ps);
	munmap(mem, len);
}

/*
 * SQLAlchemy's frames by file and qualified name: the AsyncConnection and AsyncSession methods
 * whose greenlet holds the statement alone (the BPF side then takes the Connection from
 * greenlet_spawn's bound method and leaves the greenlet unwalked) are execute, exec_driver_sql
 * and stream; execute, scalar, stream and get, of 1.4 and 2.0 alike; not close, commit or
 * rollback, whose greenlet may return the connection to the pool (its reset is told by the
 * pool's frames in the greenlet), nor run_sync (any function of the app's).
 */
TEST(sqlalchemy_frames)
{
	const char *eng = "/usr/lib/python3/dist-packages/sqlalchemy/ext/asyncio/engine.py";
	const char *pg = "/usr/lib/python3/dist-packages/sqlalchemy/dialects/postgresql/asyncpg.py";
	const char *ses = "/usr/lib/python3/dist-packages/sqlalchemy/ext/asyncio/session.py";

	CHECK(py_is_sa_async_statement(eng, "AsyncConnection.execute"));
	CHECK(py_is_sa_async_statement(eng, "AsyncConnection.exec_driver_sql"));
	CHECK(py_is_sa_async_statement(eng, "AsyncConnection.stream"));
	CHECK(!py_is_sa_async_statement(eng, "AsyncConnection.close"));
	CHECK(!py_is_sa_async_statement(eng, "AsyncConnection.commit"));
	CHECK(!py_is_sa_async_statement(eng, "AsyncConnection.rollback"));
	CHECK(!py_is_sa_async_statement(eng, "AsyncConnection.run_sync"));
	CHECK(py_is_sa_async_statement(ses, "AsyncSession.execute"));
	CHECK(py_is_sa_async_statement(ses, "AsyncSession.scalar"));
	CHECK(py_is_sa_async_statement(ses, "AsyncSession.get"));
	CHECK(!py_is_sa_async_statement(ses, "AsyncSession.commit"));
	CHECK(!py_is_sa_async_statement(ses, "AsyncSession.close"));
	CHECK(!py_is_sa_async_statement(ses, "AsyncSession.flush"));
	CHECK(!py_is_sa_async_statement(ses, "AsyncSession.run_sync"));
	CHECK(!py_is_sa_async_statement(eng, "AsyncSession.execute"));
	CHECK(!py_is_sa_async_statement("/srv/app/engine.py", "AsyncConnection.execute"));
	CHECK(!py_is_sa_async_statement(NULL, "AsyncConnection.execute"));
	CHECK(py_is_sa_asyncpg_prepare(pg, "AsyncAdapt_asyncpg_cursor._prepare_and_execute"));
	CHECK(!py_is_sa_asyncpg_prepare(pg, "AsyncAdapt_asyncpg_cursor.execute"));
	CHECK(!py_is_sa_asyncpg_prepare(eng, "AsyncAdapt_asyncpg_cursor._prepare_and_execute"));
	CHECK(py_is_sa_connection_frame("/x/sqlalchemy/engine/base.py",
					"Connection._execute_context"));
	CHECK(!py_is_sa_connection_frame("/x/sqlalchemy/engine/base.py", "Connection.execute"));
}

/*
 * Without --stack the BPF side sends only the frames userspace reads (HOT_SKIP on the others):
 * call sites, greenlet_spawn and the SQLAlchemy, pool and asyncio methods it takes locals or
 * names from; a driver's or SQLAlchemy's other frames are walked past.
 */
TEST(frames_read)
{
	const char *dp = "/usr/lib/python3/dist-packages/";
	const char *const apps[] = {"/srv/app/", NULL};
	char f[256];

#define IN(rel) (snprintf(f, sizeof(f), "%s%s", dp, rel), f)
	CHECK(py_frame_read("/srv/app/views.py", "index", NULL));
	CHECK(py_frame_read("/srv/app/views.py", "index", apps));
	CHECK(!py_frame_read("/opt/other/views.py", "index", apps));
	CHECK(py_frame_read(IN("sqlalchemy/util/_concurrency_py3k.py"), "greenlet_spawn", NULL));
	CHECK(py_frame_read(IN("sqlalchemy/engine/base.py"), "Connection._exec_single_context",
			    NULL));
	CHECK(py_frame_read(IN("sqlalchemy/engine/default.py"), "DefaultDialect.do_execute", NULL));
	CHECK(py_frame_read(IN("sqlalchemy/ext/asyncio/session.py"), "AsyncSession.execute", NULL));
	CHECK(py_frame_read(IN("sqlalchemy/dialects/postgresql/asyncpg.py"),
			    "AsyncAdapt_asyncpg_cursor._prepare_and_execute", NULL));
	CHECK(py_frame_read(IN("sqlalchemy/pool/base.py"), "_finalize_fairy", NULL));
	CHECK(py_frame_read("/usr/lib/python3.11/asyncio/events.py", "Handle._run", NULL));
	CHECK(!py_frame_read(IN("sqlalchemy/engine/base.py"), "Connection.execute", NULL));
	CHECK(!py_frame_read(IN("sqlalchemy/engine/base.py"), "Connection._execute_clauseelement",
			     NULL));
	CHECK(!py_frame_read(IN("psycopg/cursor.py"), "Cursor.execute", NULL));
	CHECK(!py_frame_read(IN("psycopg/waiting.py"), "wait_poll", NULL));
	CHECK(!py_frame_read("/usr/lib/python3.11/asyncio/base_events.py",
			     "BaseEventLoop._run_once", NULL));
#undef IN
}

int main(void)
{
	static const struct test_case cases[] = {CASE(line_tables),
						 CASE(layout_tables),
						 CASE(hot_code_named_then_dropped_when_replaced),
						 CASE(hot_codes_checked_in_few_reads),
						 CASE(sa_statement_read_only_when_wanted),
						 CASE(sqlalchemy_frames),
						 CASE(frames_read)};
	return RUN("python", cases);
}
