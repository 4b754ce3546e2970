// SPDX-License-Identifier: MIT
/* Containers, the command line, system checks, /proc parsing, output rendering, reordering. */
#include <stdint.h>
#include <unistd.h>
#include "check.h"
#include "cli.h"
#include "hmap.h"
#include "outq.h"
#include "output.h"
#include "procmaps.h"
#include "reorder.h"
#include "sysinfo.h"
#include "../../bpf/sqlspan.h"

TEST(hash_map)
{
	struct hmap m;
	static int vals[5000];

	hmap_init(&m);
	for (int i = 0; i < 5000; i++) {
		vals[i] = i;
		CHECK_EQ(hmap_put(&m, hkey2(i, i * 7), &vals[i]), 0);
	}
	CHECK_EQ(m.count, 5000);
	for (int i = 0; i < 5000; i += 2)
		CHECK(hmap_del(&m, hkey2(i, i * 7)) == &vals[i]);
	CHECK(hmap_del(&m, hkey2(0, 0)) == NULL);
	for (int i = 0; i < 5000; i++)
		CHECK((hmap_get(&m, hkey2(i, i * 7)) != NULL) == (i % 2 == 1));
	{
		size_t pos = 0, n = 0;
		struct hkey k;

		while (hmap_next(&m, &pos, &k))
			n++;
		CHECK_EQ(n, 2500);
	}
	for (int i = 0; i < 20000; i++) { /* churn: tombstones are reclaimed */
		hmap_put(&m, hkey2(100000 + i, 1), &vals[0]);
		hmap_del(&m, hkey2(100000 + i, 1));
	}
	CHECK(m.cap < 65536);
	hmap_free(&m);
}

static int parse(const char *const *argv, struct cli *c)
{
	int argc = 0;

	while (argv[argc])
		argc++;
	return cli_parse(c, argc, (char **)argv);
}

TEST(command_line)
{
	struct cli c;
	uint64_t ns;

	CHECK_EQ(parse((const char *const[]){"sqlspan", "-p", "12", "-p", "34", "--json", "-d",
					     "2.5", "-m", "10ms", "-vv", "--max-sql-bytes", "1000",
					     "--perf-buffer", "--wait", NULL},
		       &c),
		 0);
	CHECK_EQ(c.npids, 2);
	CHECK_EQ(c.pids[1], 34);
	CHECK(c.json && c.perf_buffer && c.wait);
	CHECK_EQ(c.verbose, 2);
	CHECK_EQ(c.min_duration_ns, 10000000);
	CHECK_EQ(c.max_sql_bytes, 1000);
	CHECK(c.duration_s == 2.5);
	CHECK_EQ(parse((const char *const[]){"sqlspan", "--pid=7", NULL}, &c), 0);
	CHECK_EQ(c.pids[0], 7);
	CHECK_EQ(c.max_sql_bytes, 65536);
	CHECK_EQ(parse((const char *const[]){"sqlspan", "-p7", NULL}, &c), 0);
	CHECK_EQ(c.pids[0], 7);
	CHECK_EQ(parse_duration_ns("250us", &ns), 0);
	CHECK_EQ(ns, 250000);
	CHECK_EQ(parse_duration_ns("1.5s", &ns), 0);
	CHECK_EQ(ns, 1500000000);
	CHECK_EQ(parse_duration_ns("3", &ns), 0);
	CHECK_EQ(ns, 3000000);
	CHECK_EQ(parse_duration_ns("7ns", &ns), 0);
	CHECK_EQ(ns, 7);
	CHECK_EQ(parse_duration_ns("-1ms", &ns), -1);
	CHECK_EQ(parse_duration_ns("ms", &ns), -1);
	CHECK_EQ(parse_duration_ns("1e30s", &ns), -1);
	CHECK_EQ(parse_duration_ns("nan", &ns), -1);
	/* errors: one line each (checked end to end); here, the verdict */
	CHECK_EQ(parse((const char *const[]){"sqlspan", NULL}, &c), -1);
	CHECK_EQ(parse((const char *const[]){"sqlspan", "-p", "x", NULL}, &c), -1);
	CHECK_EQ(parse((const char *const[]){"sqlspan", "-p", "99999999999", NULL}, &c), -1);
	CHECK_EQ(parse((const char *const[]){"sqlspan", "-p", "1", "--ring-mb", "0", NULL}, &c),
		 -1);
	CHECK_EQ(parse((const char *const[]){"sqlspan", "-p", "1", "--max-sql-bytes", "2000000",
					     NULL},
		       &c),
		 -1);
}

TEST(system_checks)
{
	char msg[256];

	CHECK_EQ(check_kernel("6.18.44-fc", msg, sizeof(msg)), 0);
	CHECK_EQ(check_kernel("5.10.0-32-cloud-amd64", msg, sizeof(msg)), 0);
	CHECK_EQ(check_kernel("5.4.0-150-generic", msg, sizeof(msg)), -1);
	CHECK_STR(msg, "kernel 5.4.0-150-generic is too old: sqlspan needs Linux 5.10 or newer");
	CHECK_EQ(check_kernel("4.19.0", msg, sizeof(msg)), -1);
	CHECK_EQ(check_kernel("garbage", msg, sizeof(msg)), -1);
	CHECK_STR(msg, "cannot read the kernel version from 'garbage'");
	CHECK(kernel_at_least("6.1.0-13-amd64", 6, 1));
	CHECK(kernel_at_least("6.18.44-fc", 6, 1));
	CHECK(kernel_at_least("7.0", 6, 1));
	CHECK(!kernel_at_least("6.0.12", 6, 1));
	CHECK(!kernel_at_least("5.19.0", 6, 1));
	CHECK(!kernel_at_least("garbage", 6, 1));
	CHECK_EQ(check_btf("/nonexistent/btf/vmlinux", msg, sizeof(msg)), -1);
	CHECK_STR(msg,
		  "this kernel has no BTF (/nonexistent/btf/vmlinux is missing): sqlspan needs "
		  "a kernel built with CONFIG_DEBUG_INFO_BTF=y");
	CHECK_EQ(check_btf("/proc/self/status", msg, sizeof(msg)), 0);
	CHECK(proc_alive(getpid()));
	CHECK(!proc_alive(2147483646));
}

TEST(proc_maps)
{
	struct map_entry e;

	CHECK_EQ(maps_parse_line(
			 "7f1c2a3b4000-7f1c2a3c9000 r-xp 0000a000 fd:01 1234567                "
			 "   /usr/lib/x86_64-linux-gnu/libpq.so.5.15\n",
			 &e),
		 0);
	CHECK(e.exec);
	CHECK_EQ(e.lo, 0x7f1c2a3b4000ULL);
	CHECK_EQ(e.offset, 0xa000);
	CHECK_EQ(e.inode, 1234567);
	CHECK_EQ(e.dev_major, 0xfd);
	CHECK_STR(e.path, "/usr/lib/x86_64-linux-gnu/libpq.so.5.15");
	CHECK_EQ(maps_parse_line("00400000-00401000 r--p 00000000 08:02 99 /opt/a b/libpq.so.5 "
				 "(deleted)\n",
				 &e),
		 0);
	CHECK(e.deleted && !e.exec);
	CHECK_STR(e.path, "/opt/a b/libpq.so.5");
	CHECK_EQ(maps_parse_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 \n", &e), 0);
	CHECK_STR(e.path, "");
	CHECK_EQ(maps_parse_line("not a maps line", &e), -1);
	CHECK(is_libpq_name("/usr/lib/x86_64-linux-gnu/libpq.so.5.15"));
	CHECK(is_libpq_name("libpq.so.5"));
	CHECK(is_libpq_name("/x/psycopg2_binary.libs/libpq-4a1b2c3d.so.5.16"));
	CHECK(is_libpq_name("/opt/libpq.so"));
	CHECK(!is_libpq_name("/usr/lib/libpqwalreceiver.so"));
	CHECK(!is_libpq_name("/usr/lib/libpq.a"));
	CHECK(!is_libpq_name("/usr/lib/libpqxx-7.7.so"));
}

static struct span sample(void)
{
	static struct conn_ident id = {.db = "shop",
				       .user = "app",
				       .host = "db1",
				       .port = 5432,
				       .backend_pid = 77,
				       .known = true};
	struct span s;

	memset(&s, 0, sizeof(s));
	memset(s.trace_id, 0xab, sizeof(s.trace_id));
	memset(s.span_id, 0x01, sizeof(s.span_id));
	s.start_ns = 1000;
	s.end_ns = 4000;
	s.pid = 10;
	s.tid = 11;
	s.exe = "python3.11";
	s.text = "SELECT \"q\"\\, '\xc3\xa9' \x01\xff FROM users\n";
	s.text_len = strlen(s.text);
	s.tag.rows = -1;
	s.returned_rows = 3;
	s.ident = &id;
	return s;
}

static char *render(const struct span *s, int json)
{
	static char buf[8192];
	FILE *f = fmemopen(buf, sizeof(buf), "w");

	if (json)
		out_json(f, s, 1000000000);
	else
		out_table_row(f, s, 0, 100);
	fclose(f);
	return buf;
}

TEST(json_output)
{
	struct span s = sample();
	char *j = render(&s, 1);

	CHECK(strstr(j, "\"trace_id\":\"abababababababababababababababab\"") != NULL);
	CHECK(strstr(j, "\"span_id\":\"0101010101010101\"") != NULL);
	CHECK(strstr(j, "\"name\":\"SELECT users\"") != NULL);
	CHECK(strstr(j, "\"start_time_unix_nano\":1000001000,\"end_time_unix_nano\":1000004000,"
			"\"duration_ns\":3000") != NULL);
	/* escaped quotes and backslashes, UTF-8 kept, control bytes escaped, invalid UTF-8 replaced
	 */
	CHECK(strstr(j, "\"db.query.text\":\"SELECT \\\"q\\\"\\\\, '\xc3\xa9' \\u0001\\ufffd FROM "
			"users\\n\"") != NULL);
	CHECK(strstr(j, "\"db.namespace\":\"shop\",\"server.address\":\"db1\",\"server.port\":5432,"
			"\"network.transport\":\"tcp\",\"postgresql.user\":\"app\","
			"\"postgresql.backend_pid\":77") != NULL);
	CHECK(strstr(j, "\"db.response.returned_rows\":3") != NULL);
	CHECK(strstr(j, "\"error.type\"") == NULL);
	CHECK(j[strlen(j) - 1] == '\n' && strchr(j, '\n') == j + strlen(j) - 1);
	/* unknown identity: null, never invented */
	s.ident = NULL;
	j = render(&s, 1);
	CHECK(strstr(j, "\"db.namespace\":null,\"server.address\":null,\"server.port\":null,"
			"\"postgresql.user\":null,\"postgresql.backend_pid\":null") != NULL);
	/* an error */
	s = sample();
	s.result = RES_ERROR;
	s.has_error = true;
	strcpy(s.error.sqlstate, "23505");
	strcpy(s.error.message, "dup \"key\"");
	j = render(&s, 1);
	CHECK(strstr(j, "\"db.response.status_code\":\"23505\",\"error.type\":\"23505\","
			"\"error.message\":\"dup \\\"key\\\"\"") != NULL);
	CHECK(strstr(j, "\"sqlspan.result\":\"error\"") != NULL);
	/* an execution by name of a statement prepared before attach */
	s = sample();
	s.req = REQ_EXECUTE;
	s.text = NULL;
	s.text_state = TEXT_UNKNOWN;
	s.has_name = true;
	strcpy(s.name, "_pg3_4");
	j = render(&s, 1);
	CHECK(strstr(j, "\"name\":\"EXECUTE _pg3_4\"") != NULL);
	CHECK(strstr(j, "\"db.query.text\":null,\"sqlspan.query.text_state\":\"unknown\"") != NULL);
	CHECK(strstr(j, "\"postgresql.statement_name\":\"_pg3_4\"") != NULL);
}

TEST(table_output)
{
	struct span s = sample();
	char *t;

	s.text = "SELECT   a,\n\t b\nFROM users";
	s.text_len = strlen(s.text);
	t = render(&s, 0);
	CHECK(strstr(t, "     3 shop       ok     SELECT a, b FROM users\n") != NULL);
	s.text = "SELECT 'a very long statement that does not fit into the table at all, no, not "
		 "at all, it goes on and on'";
	s.text_len = strlen(s.text);
	t = render(&s, 0);
	CHECK(strlen(t) <= 101);
	CHECK(strstr(t, "...\n") != NULL);
}

TEST(reorder_by_time)
{
	struct reorder *r = reorder_new();
	uint64_t ts[] = {50, 10, 30, 10, 20};
	const void *rec;
	size_t size;
	uint64_t last = 0;
	int n = 0;

	for (int i = 0; i < 5; i++) {
		struct ev_conn e;

		memset(&e, 0, sizeof(e));
		e.h.ts = ts[i];
		e.arg = i;
		CHECK_EQ(reorder_add(r, &e, sizeof(e)), 0);
	}
	CHECK(reorder_pop(r, 10, &size) == NULL); /* nothing before 10 */
	while ((rec = reorder_pop(r, 40, &size))) {
		const struct ev_conn *e = rec;

		CHECK(e->h.ts >= last);
		if (e->h.ts == 10 && last == 10)
			CHECK_EQ(e->arg, 3); /* equal times keep their arrival order */
		last = e->h.ts;
		n++;
		reorder_release(r);
	}
	CHECK_EQ(n, 4);
	CHECK(reorder_pop(r, UINT64_MAX, &size) != NULL);
	reorder_release(r);
	CHECK_EQ(reorder_add(r, "x", 1), -1);
	reorder_free(r);
}

static int push(struct outq *q, const char *s, bool json_span)
{
	return outq_push(q, strdup(s), strlen(s), json_span);
}

TEST(held_output)
{
	struct outq q = {0};
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	/* no loss seen: written as they were */
	CHECK_EQ(push(&q, "{\"a\":1}\n", true), 0);
	CHECK_EQ(outq_flush(&q, f, false), 0);
	/* a loss seen: JSON spans marked once, other lines as they were */
	push(&q, "{\"a\":2}\n", true);
	push(&q, "{\"a\":3,\"sqlspan.events_lost\":true}\n", true);
	push(&q, "{\"txn\":1}\n", false);
	push(&q, "12:00 row\n", false);
	CHECK_EQ(q.n, 4);
	CHECK_EQ(outq_flush(&q, f, true), 0);
	CHECK_EQ(q.n, 0);
	fclose(f);
	CHECK_STR(buf, "{\"a\":1}\n"
		       "{\"a\":2,\"sqlspan.events_lost\":true}\n"
		       "{\"a\":3,\"sqlspan.events_lost\":true}\n"
		       "{\"txn\":1}\n"
		       "12:00 row\n");
	free(buf);
	push(&q, "left\n", false);
	outq_free(&q); /* freed, never written */
	CHECK_EQ(q.n, 0);
}

int main(void)
{
	static const struct test_case cases[] = {
		CASE(hash_map),	   CASE(command_line), CASE(system_checks),   CASE(proc_maps),
		CASE(json_output), CASE(table_output), CASE(reorder_by_time), CASE(held_output),
	};
	return RUN("misc", cases);
}
