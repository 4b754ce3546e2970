// SPDX-License-Identifier: MIT
/* Protocol decoding, statement classification and redaction. */
#include "check.h"
#include "pgfront.h"
#include "pgproto.h"
#include "redact.h"
#include "sqlinfo.h"

TEST(command_tags)
{
	struct pg_tag t;

	CHECK_EQ(pg_parse_tag((const uint8_t *)"SELECT 5", 9, &t), 0);
	CHECK_STR(t.tag, "SELECT 5");
	CHECK_EQ(t.rows, 5);
	pg_parse_tag((const uint8_t *)"INSERT 0 12", 12, &t);
	CHECK_EQ(t.rows, 12);
	pg_parse_tag((const uint8_t *)"UPDATE 0", 9, &t);
	CHECK_EQ(t.rows, 0);
	pg_parse_tag((const uint8_t *)"DELETE 3", 9, &t);
	CHECK_EQ(t.rows, 3);
	pg_parse_tag((const uint8_t *)"MERGE 2", 8, &t);
	CHECK_EQ(t.rows, 2);
	pg_parse_tag((const uint8_t *)"COPY 1000000", 13, &t);
	CHECK_EQ(t.rows, 1000000);
	pg_parse_tag((const uint8_t *)"FETCH 10", 9, &t);
	CHECK_EQ(t.rows, 10);
	pg_parse_tag((const uint8_t *)"CREATE TABLE", 13, &t);
	CHECK_EQ(t.rows, -1);
	pg_parse_tag((const uint8_t *)"BEGIN", 6, &t);
	CHECK_EQ(t.rows, -1);
	pg_parse_tag((const uint8_t *)"DEALLOCATE ALL", 15, &t);
	CHECK_EQ(t.rows, -1);
	pg_parse_tag((const uint8_t *)"SELECT x", 9, &t);
	CHECK_EQ(t.rows, -1);
	/* cut (no NUL) and binary junk */
	CHECK_EQ(pg_parse_tag((const uint8_t *)"SELECT 12", 7, &t), 0);
	CHECK_STR(t.tag, "SELECT ");
	CHECK_EQ(t.rows, -1);
	CHECK_EQ(pg_parse_tag((const uint8_t *)"\x01\x02", 2, &t), -1);
	CHECK_EQ(pg_parse_tag((const uint8_t *)"", 0, &t), 0);
	CHECK_STR(t.tag, "");
}

TEST(error_responses)
{
	static const char body[] = "SERROR\0VERROR\0C23505\0Mduplicate key value violates unique "
				   "constraint \"t_pkey\"\0DKey (id)=(1) already exists.\0";
	struct pg_error e;

	CHECK_EQ(pg_parse_error((const uint8_t *)body, sizeof(body), false, &e), 0);
	CHECK_STR(e.sqlstate, "23505");
	CHECK_STR(e.severity, "ERROR");
	CHECK_STR(e.message, "duplicate key value violates unique constraint \"t_pkey\"");
	CHECK(!e.message_cut);
	/* localized severity only (old servers) */
	CHECK_EQ(pg_parse_error((const uint8_t *)"SFEHLER\0C42601\0Mfoo\0", 21, false, &e), 0);
	CHECK_STR(e.severity, "FEHLER");
	CHECK_STR(e.sqlstate, "42601");
	/* captured in part: the message is marked as cut */
	CHECK_EQ(pg_parse_error((const uint8_t *)"SERROR\0C22012\0Mdivision by ze", 29, true, &e),
		 0);
	CHECK_STR(e.message, "division by ze");
	CHECK(e.message_cut);
	/* malformed: a bad SQLSTATE is not taken; nothing usable -> -1 */
	CHECK_EQ(pg_parse_error((const uint8_t *)"C123\0", 5, false, &e), -1);
	CHECK_STR(e.sqlstate, "");
	CHECK_EQ(pg_parse_error((const uint8_t *)"", 0, false, &e), -1);
	CHECK_EQ(pg_parse_error((const uint8_t *)"\xff\xff\xff", 3, true, &e), -1);
	CHECK_STR(pg_txn_status_name('I'), "idle");
	CHECK_STR(pg_txn_status_name('T'), "in_transaction");
	CHECK_STR(pg_txn_status_name('E'), "failed");
	CHECK(pg_txn_status_name('x') == NULL);
}

static void info(const char *sql, const char *op, const char *coll)
{
	struct sql_info si;

	sql_info(sql, strlen(sql), &si);
	if (strcmp(si.op, op) || strcmp(si.coll, coll)) {
		fprintf(stderr, "  sql_info(%s) = (%s, %s), want (%s, %s)\n", sql, si.op, si.coll,
			op, coll);
		check_failed_in_case = 1;
	}
	checks_run++;
}

TEST(operation_and_collection)
{
	info("SELECT * FROM users WHERE id = 1", "SELECT", "users");
	info("select u.name from public.users u join orders o on o.uid = u.id", "SELECT",
	     "public.users");
	info("SELECT 1", "SELECT", "");
	info("  \n-- a comment\n/* and /* nested */ one */ SELECT x FROM \"Weird Table\"", "SELECT",
	     "\"Weird Table\"");
	info("SELECT extract(year from ts) FROM events", "SELECT", "events");
	info("SELECT * FROM (SELECT id FROM inner_t) s", "SELECT", "inner_t");
	info("SELECT * FROM generate_series(1, 10)", "SELECT", "");
	info("SELECT 'FROM nowhere' AS x FROM real_t", "SELECT", "real_t");
	info("SELECT $$ FROM fake $$ FROM t2", "SELECT", "t2");
	info("SELECT $tag$ FROM fake $tag$ FROM t3", "SELECT", "t3");
	info("SELECT E'it\\'s FROM x' FROM t4", "SELECT", "t4");
	info("INSERT INTO users (name, email) VALUES ('a', 'b') RETURNING id", "INSERT", "users");
	info("insert into s.t values ($1)", "INSERT", "s.t");
	info("UPDATE ONLY accounts SET x = 1", "UPDATE", "accounts");
	info("DELETE FROM sessions WHERE expired", "DELETE", "sessions");
	info("MERGE INTO tgt USING src ON tgt.id = src.id WHEN MATCHED THEN DELETE", "MERGE",
	     "tgt");
	info("WITH x AS (SELECT * FROM a), y (c) AS MATERIALIZED (SELECT 1) SELECT * FROM b",
	     "SELECT", "b");
	info("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT n FROM r) INSERT INTO t SELECT * FROM "
	     "r",
	     "INSERT", "t");
	info("CREATE TABLE IF NOT EXISTS items (id int)", "CREATE TABLE", "items");
	info("CREATE TEMP TABLE tmp_x AS SELECT 1", "CREATE TABLE", "tmp_x");
	info("CREATE UNIQUE INDEX CONCURRENTLY ix ON ONLY orders (a)", "CREATE INDEX", "orders");
	info("DROP TABLE IF EXISTS orders, users CASCADE", "DROP TABLE", "orders");
	info("ALTER TABLE t ADD COLUMN c int", "ALTER TABLE", "t");
	info("TRUNCATE TABLE logs", "TRUNCATE", "logs");
	info("COPY items (id) FROM STDIN", "COPY", "items");
	info("COPY (SELECT 1) TO STDOUT", "COPY", "");
	info("VACUUM (VERBOSE, ANALYZE) big", "VACUUM", "big");
	info("BEGIN", "BEGIN", "");
	info("commit", "COMMIT", "");
	info("SET search_path = x", "SET", "");
	info("(SELECT 1 FROM a) UNION (SELECT 2 FROM b)", "SELECT", "a");
	info("TABLE users", "SELECT", "users");
	info("", "", "");
	info("   ", "", "");
	info("'unterminated", "", "");
	info("SELECT * FROM \"unterminated", "SELECT", "");
	info("/* only a comment", "", "");
	info("Sélect 1", "SéLECT", ""); /* only ASCII letters are folded */
}

TEST(redact_sql_passwords)
{
	size_t n;
	char *r;

	r = redact_sql("ALTER ROLE bob PASSWORD 'hunter2'", 33, &n);
	CHECK_STR(r, "ALTER ROLE bob PASSWORD '***'");
	CHECK_EQ(n, strlen("ALTER ROLE bob PASSWORD '***'"));
	free(r);
	r = redact_sql("create user x with login password E'a\\'b' valid until 'infinity'", 64, &n);
	CHECK_STR(r, "create user x with login password '***' valid until 'infinity'");
	free(r);
	r = redact_sql("CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password 'p')", 67,
		       &n);
	CHECK_STR(r, "CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password '***')");
	free(r);
	CHECK(redact_sql("SELECT 'password'", 17, &n) == NULL);
	CHECK(redact_sql("SELECT password FROM users", 26, &n) == NULL);
	CHECK(redact_sql("SELECT 1", 8, &n) == NULL);
}

TEST(redact_dsns)
{
	char *r;

	r = redact_dsn("host=db port=5432 password=s3cret user=app");
	CHECK_STR(r, "host=db port=5432 password=*** user=app");
	free(r);
	r = redact_dsn("password = 'se cret\\' x' dbname=d");
	CHECK_STR(r, "password = *** dbname=d");
	free(r);
	r = redact_dsn("postgresql://app:s3cret@db.internal:5432/prod?sslmode=require");
	CHECK_STR(r, "postgresql://app:***@db.internal:5432/prod?sslmode=require");
	free(r);
	r = redact_dsn("postgresql+psycopg2://app:p%40ss@host/db?password=x&application_name=y");
	CHECK_STR(r, "postgresql+psycopg2://app:***@host/db?password=***&application_name=y");
	free(r);
	r = redact_dsn("postgresql://app@host/db");
	CHECK_STR(r, "postgresql://app@host/db");
	free(r);
	r = redact_dsn("postgresql://u:p@h1:5432,h2/db");
	CHECK_STR(r, "postgresql://u:***@h1:5432,h2/db");
	free(r);
	r = redact_dsn("");
	CHECK_STR(r, "");
	free(r);
}

#define BODY(lit) (const uint8_t *)(lit), sizeof(lit) - 1

/* Frontend messages as the BPF side captures them on wire sockets. */
TEST(frontend_messages)
{
	struct fe_msg m;

	/* StartupMessage: version, then pairs; database defaults to the user */
	CHECK_EQ(fe_parse(0, BODY("\0\3\0\0user\0ann\0application_name\0shop\0\0"), 40, &m), 0);
	CHECK_EQ(m.version, 0x30000);
	CHECK_STR(m.user, "ann");
	CHECK_STR(m.database, "ann");
	CHECK_STR(m.application, "shop");
	/* a pair cut by the capture keeps what was whole */
	CHECK_EQ(fe_parse(0, BODY("\0\3\0\0user\0bob\0database\0sh"), 99, &m), 0);
	CHECK_STR(m.user, "bob");
	CHECK_STR(m.database, "bob");
	/* Query: the text up to its NUL; cut when the capture stopped first */
	CHECK_EQ(fe_parse('Q', BODY("SELECT 1\0"), 9, &m), 0);
	CHECK_EQ(m.text_len, 8);
	CHECK(!m.text_cut);
	CHECK_EQ(fe_parse('Q', BODY("SELECT 12"), 100, &m), 0);
	CHECK_EQ(m.text_len, 9);
	CHECK(m.text_cut);
	/* Parse: name and text; a name without its end is not a Parse */
	CHECK_EQ(fe_parse('P', BODY("s1\0SELECT $1\0\0\1\0\0\0\x17"), 20, &m), 0);
	CHECK_STR(m.name, "s1");
	CHECK_EQ(m.text_len, 9);
	CHECK(!memcmp(m.text, "SELECT $1", 9));
	CHECK_EQ(fe_parse('P', BODY("no-end"), 6, &m), -1);
	/* Bind: portal and statement names only */
	CHECK_EQ(fe_parse('B', BODY("p1\0s1\0"), 40, &m), 0);
	CHECK_STR(m.name, "p1");
	CHECK_STR(m.stmt, "s1");
	CHECK_EQ(fe_parse('B', BODY("\0s1"), 40, &m), -1);
	/* Describe / Close: S or P, then a name */
	CHECK_EQ(fe_parse('D', BODY("Sstmt\0"), 6, &m), 0);
	CHECK_EQ(m.kind, 'S');
	CHECK_STR(m.name, "stmt");
	CHECK_EQ(fe_parse('C', BODY("X\0"), 2, &m), -1);
	/* a long name is cut to fit, the message still parses */
	{
		char body[200];

		memset(body, 'n', 150);
		body[150] = 0;
		CHECK_EQ(fe_parse('E', (const uint8_t *)body, 151, 155, &m), 0);
		CHECK_EQ(strlen(m.name), FE_NAME_MAX - 1);
	}
	/* more bytes than the message has: refused */
	CHECK_EQ(fe_parse('S', BODY("xx"), 1, &m), -1);
}

int main(void)
{
	static const struct test_case cases[] = {
		CASE(command_tags),	    CASE(error_responses), CASE(operation_and_collection),
		CASE(redact_sql_passwords), CASE(redact_dsns),	   CASE(frontend_messages),
	};
	return RUN("text", cases);
}
