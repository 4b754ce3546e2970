/* SPDX-License-Identifier: MIT */
/* A tiny test harness: TEST(name) functions, CHECK* macros, and a closing "N passed, N failed". */
#ifndef SQLSPAN_CHECK_H
#define SQLSPAN_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct test_case {
	const char *name;
	void (*fn)(void);
};

static int check_failed_in_case;
static int checks_run;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		checks_run++;                                                                      \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			check_failed_in_case = 1;                                                  \
		}                                                                                  \
	} while (0)

#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long _a = (long long)(a), _b = (long long)(b);                                \
		checks_run++;                                                                      \
		if (_a != _b) {                                                                    \
			fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__,      \
				__LINE__, #a, #b, _a, _b);                                         \
			check_failed_in_case = 1;                                                  \
		}                                                                                  \
	} while (0)

#define CHECK_STR(a, b)                                                                            \
	do {                                                                                       \
		const char *_a = (a), *_b = (b);                                                   \
		checks_run++;                                                                      \
		if (!_a || !_b || strcmp(_a, _b)) {                                                \
			fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__,  \
				__LINE__, #a, #b, _a ? _a : "(null)", _b ? _b : "(null)");         \
			check_failed_in_case = 1;                                                  \
		}                                                                                  \
	} while (0)

#define TEST(name) static void name(void)
#define CASE(name)                                                                                 \
	{                                                                                          \
#name, name                                                                        \
	}

static int run_cases(const char *suite, const struct test_case *cases, size_t n)
{
	int passed = 0, failed = 0;

	for (size_t i = 0; i < n; i++) {
		check_failed_in_case = 0;
		cases[i].fn();
		if (check_failed_in_case) {
			fprintf(stderr, "FAIL %s.%s\n", suite, cases[i].name);
			failed++;
		} else {
			passed++;
		}
	}
	printf("%s: %d passed, %d failed\n", suite, passed, failed);
	return failed ? 1 : 0;
}

#define RUN(suite, cases) run_cases(suite, cases, sizeof(cases) / sizeof(cases[0]))

#endif
