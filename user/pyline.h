/* SPDX-License-Identifier: MIT */
/* Line numbers from a code object's co_linetable (the PEP 626 location table of 3.11+). */
#ifndef SQLSPAN_PYLINE_H
#define SQLSPAN_PYLINE_H

#include <stddef.h>
#include <stdint.h>

/*
 * The line of the instruction at code-unit index `index`, given co_linetable and co_firstlineno.
 * Returns -1 when the table says the instruction has no line, or when the table ends first.
 */
int py_line_at(const uint8_t *table, size_t n, int firstlineno, uint32_t index);

#endif
