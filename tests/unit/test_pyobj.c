// SPDX-License-Identifier: MIT
/*
 * Reading Python objects of another process (user/pyobj.c, user/saurl.c): real CPython 3.11,
 * 3.12 and 3.13 children (no root needed to read one's own child) build objects whose
 * attributes sit in every place CPython keeps them, and print what sqlspan must read back.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "pylayout.h"
#include "pyobj.h"

static const char *const pythons[] = {
	"/usr/bin/python3", /* Debian's 3.11: static interpreter */
	"/root/.pyenv/versions/3.12.1/bin/python3",
	"/root/.pyenv/versions/3.13.0/bin/python3",
};

/* what the child builds; it prints its version, then id() of each object, then the truth */
static const char script[] =
	"import sys\n"
	"from urllib.parse import quote, quote_plus\n"
	"class C: pass\n"
	"a = C(); a.engine = 'E-values'; a.other = 1\n" /* split / inline values */
	"b = C(); b.engine = 'E-dict'; b.__dict__\n"	/* a dict made for it */
	"c = C()\n"
	"for i in range(40): setattr(c, 'k%d' % i, i)\n" /* past the shared keys */
	"c.engine = 'E-combined'\n"
	"class D:\n"
	"    __slots__ = ('x', '__dict__')\n" /* dict at tp_dictoffset */
	"d = D(); d.engine = 'E-slots'\n"
	"class URL(tuple): pass\n"
	"q = {'sslmode': 'require', 'a b': ('x/y', 'z&')}\n"
	"u = URL(('postgresql+psycopg2', 'bob smith', 'pw', '::1', 5432, 'db', q))\n"
	"v = URL(('postgresql+asyncpg', None, None, None, None, 'only', {}))\n"
	"e = object()\n"
	"print(hex(sys.hexversion), id(a), id(b), id(c), id(d), id(u), id(v), id(e), flush=True)\n"
	/* the URLs as SQLAlchemy 2.0's render_as_string(hide_password=True) would write them */
	"print('postgresql+psycopg2://' + quote('bob smith', safe=' +') + ':***@[::1]:5432/db?' +\n"
	"      '&'.join('%s=%s' % (quote_plus(k), quote_plus(x)) for k in sorted(q)\n"
	"               for x in (q[k] if isinstance(q[k], tuple) else (q[k],))), flush=True)\n"
	"print('postgresql+asyncpg:///only', flush=True)\n"
	"sys.stdin.read()\n";

struct child {
	pid_t pid;
	int in, out;
};

static int child_start(const char *python, struct child *ch)
{
	int in[2], out[2];

	if (pipe(in) || pipe(out))
		return -1;
	ch->pid = fork();
	if (ch->pid < 0)
		return -1;
	if (ch->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl(python, python, "-c", script, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	ch->in = in[1];
	ch->out = out[0];
	return 0;
}

static void child_stop(struct child *ch)
{
	int status;

	close(ch->in);
	close(ch->out);
	if (waitpid(ch->pid, &status, 0) < 0)
		kill(ch->pid, SIGKILL);
}

static char *read_line(int fd)
{
	static char buf[4096];
	size_t n = 0;

	while (n + 1 < sizeof(buf) && read(fd, buf + n, 1) == 1 && buf[n] != '\n')
		n++;
	buf[n] = 0;
	return buf;
}

static void check_attr(const struct pyobj_src *s, unsigned long long obj, const char *want)
{
	uint64_t v = 0;
	char *got = NULL;

	CHECK_EQ(pyobj_attr(s, obj, "engine", &v), 0);
	if (v)
		got = py_read_str(s->pid, v, s->l, 100);
	CHECK_STR(got ? got : "(none)", want);
	free(got);
	/* a name that is not there */
	CHECK(pyobj_attr(s, obj, "missing_attribute", &v) != 0);
}

static void check_python(const char *python)
{
	struct child ch;
	unsigned int ver;
	unsigned long long a, b, c, d, u, v, e;
	struct hmap slots;
	struct pyobj_src s;
	char *url1, *url2, *got;

	if (access(python, X_OK)) {
		fprintf(stderr,
			"  %s: missing (the machine's interpreters are part of the tests)\n",
			python);
		check_failed_in_case = 1;
		return;
	}
	fprintf(stderr, "  [%s]\n", python);
	if (child_start(python, &ch)) {
		CHECK(!"child started");
		return;
	}
	if (sscanf(read_line(ch.out), "%x %llu %llu %llu %llu %llu %llu %llu", &ver, &a, &b, &c, &d,
		   &u, &v, &e) != 8) {
		CHECK(!"the child printed its objects");
		child_stop(&ch);
		return;
	}
	url1 = strdup(read_line(ch.out));
	url2 = strdup(read_line(ch.out));
	hmap_init(&slots);
	s = (struct pyobj_src){ch.pid, py_layout_table(ver), &slots};
	CHECK(s.l != NULL);
	if (s.l) {
		for (int pass = 0; pass < 2; pass++) { /* the second time from the cache */
			check_attr(&s, a, "E-values");
			check_attr(&s, b, "E-dict");
			check_attr(&s, c, "E-combined");
			check_attr(&s, d, "E-slots");
		}
		CHECK(pyobj_type_is(&s, a, "C") && pyobj_type_is(&s, u, "URL"));
		CHECK(!pyobj_type_is(&s, a, "URL"));
		got = pyobj_sa_url(&s, u);
		CHECK_STR(got ? got : "(none)", url1);
		free(got);
		got = pyobj_sa_url(&s, v);
		CHECK_STR(got ? got : "(none)", url2);
		free(got);
		/* not a URL, not an object with attributes, not an object at all */
		CHECK(pyobj_sa_url(&s, a) == NULL);
		CHECK(pyobj_attr(&s, e, "engine", &(uint64_t){0}) != 0);
		CHECK(pyobj_attr(&s, 8, "engine", &(uint64_t){0}) != 0);
	}
	for (size_t pos = 0;;) {
		void *p = hmap_next(&slots, &pos, NULL);

		if (!p)
			break;
		free(p);
	}
	hmap_free(&slots);
	free(url1);
	free(url2);
	child_stop(&ch);
}

TEST(attributes_and_urls_of_real_interpreters)
{
	for (size_t i = 0; i < sizeof(pythons) / sizeof(pythons[0]); i++)
		check_python(pythons[i]);
}

TEST(url_render)
{
	const char *keys[] = {"z", "a", "z"}, *vals[] = {"1 2", "é", "0"};
	struct sa_url u = {.drivername = "postgresql+psycopg2",
			   .username = "u@x:y",
			   .has_password = true,
			   .host = "db.example",
			   .port = 6432,
			   .database = "app",
			   .nquery = 3,
			   .query_keys = keys,
			   .query_vals = vals};
	char *s = sa_url_render(&u);

	/* quote(safe=" +") for the user, quote_plus for the query, sorted by key (stable) */
	CHECK_STR(s, "postgresql+psycopg2://u%40x%3Ay:***@db.example:6432/app?a=%C3%A9&z=1+2&z=0");
	free(s);
	u = (struct sa_url){.drivername = "sqlite", .port = -1};
	s = sa_url_render(&u);
	CHECK_STR(s, "sqlite://");
	free(s);
	u = (struct sa_url){
		.drivername = "postgresql", .username = "a", .host = "fe80::1", .port = -1};
	s = sa_url_render(&u);
	CHECK_STR(s, "postgresql://a@[fe80::1]");
	free(s);
	u = (struct sa_url){.port = 1};
	CHECK(sa_url_render(&u) == NULL);
}

int main(void)
{
	static const struct test_case cases[] = {CASE(url_render),
						 CASE(attributes_and_urls_of_real_interpreters)};
	return RUN("pyobj", cases);
}
