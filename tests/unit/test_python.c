// SPDX-License-Identifier: MIT
/* Python support: line tables of real CPython builds, frame classification, layouts. */
#include "check.h"
#include "pylayout.h"
#include "pyline.h"

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

int main(void)
{
	static const struct test_case cases[] = {CASE(line_tables), CASE(layout_tables)};
	return RUN("python", cases);
}
