// SPDX-License-Identifier: MIT
#include <argp.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"

const char *argp_program_version = "sqlspan 0.1";
const char *argp_program_bug_address = NULL;

static const char doc[] =
	"Trace the SQL statements a running process sends to PostgreSQL, one span per statement.\n"
	"\n"
	"USAGE: sqlspan -p PID [-p PID ...] [--json] [-d SECONDS] [-m DURATION] [-v]\n"
	"\n"
	"EXAMPLES:\n"
	"    sqlspan -p 1234              # live table of every statement of process 1234\n"
	"    sqlspan -p 1234 --json       # one JSON span per line (OpenTelemetry keys)\n"
	"    sqlspan -p 1234 -m 10ms      # only statements slower than 10 ms\n"
	"    sqlspan -p 1234 -d 30        # trace for 30 seconds, then print a summary\n"
	"    sqlspan -p 1234 --wait       # wait until the process loads libpq\n"
	"\n"
	"OPTIONS:";

enum {
	OPT_JSON = 1000,
	OPT_PERF,
	OPT_MAX_SQL,
	OPT_RING,
	OPT_NO_LOOP,
	OPT_STACK,
	OPT_STACK_DEPTH,
	OPT_APP_PATH,
	OPT_NO_PYTHON,
	OPT_WIRE,
	OPT_LIBPQ_UPROBES,
	OPT_PERF_UPROBES,
};

static const struct argp_option opts[] = {
	{"pid", 'p', "PID", 0, "Trace this process (repeatable)", 0},
	{"duration", 'd', "SECONDS", 0, "Stop after this many seconds", 0},
	{"min-duration", 'm', "DURATION", 0,
	 "Show only spans at least this long (e.g. 5ms, 250us, 1s; plain numbers are ms)", 0},
	{"json", OPT_JSON, NULL, 0, "Print one JSON object per span (NDJSON)", 0},
	{"wait", 'w', NULL, 0, "Wait for processes that have not loaded libpq (or asyncpg) yet", 0},
	{"wire", OPT_WIRE, NULL, 0,
	 "Follow the PostgreSQL protocol on the sockets of every traced process, not only of "
	 "those that load asyncpg (other drivers without libpq)",
	 0},
	{"libpq-uprobes", OPT_LIBPQ_UPROBES, NULL, 0,
	 "Catch libpq's statements with uprobes on its functions, as on kernels before 5.17, not "
	 "on its sockets (costs more per statement; knows the database and user of connections "
	 "opened before sqlspan attached over TCP)",
	 0},
	{"max-sql-bytes", OPT_MAX_SQL, "BYTES", 0,
	 "Statement text kept per span (default 65536; longer text is cut and marked)", 0},
	{"perf-buffer", OPT_PERF, NULL, 0, "Use perf buffers instead of the BPF ring buffer", 0},
	{"stack", OPT_STACK, NULL, 0, "Add the whole Python stack to each span (python.stack)", 0},
	{"stack-depth", OPT_STACK_DEPTH, "FRAMES", 0,
	 "Python frames read per statement (default 64, at most 127)", 0},
	{"app-path", OPT_APP_PATH, "PREFIX", 0,
	 "Files under PREFIX are the application's: the call site is the innermost of them "
	 "(repeatable; default: anything outside the standard library and site-/dist-packages)",
	 0},
	{"no-python", OPT_NO_PYTHON, NULL, 0, "Do not read Python stacks (driver-level spans only)",
	 0},
	{"ring-mb", OPT_RING, "MB", 0, "Ring buffer size in MiB (default 8)", 0},
	{"verbose", 'v', NULL, 0, "Say more: probe placement, libbpf messages", 0},
	{"no-bpf-loop", OPT_NO_LOOP, NULL, 0,
	 "Walk socket reads with bounded loops and tail calls, as on kernels before 5.17", 0},
	{"perf-uprobes", OPT_PERF_UPROBES, NULL, 0,
	 "Attach uprobes as perf events on the process, as on kernels before 6.6, not as "
	 "uprobe_multi links (costs the process at every context switch)",
	 0},
	{NULL, 'h', NULL, OPTION_HIDDEN, "Show the full help", 0},
	{0},
};

int parse_duration_ns(const char *s, uint64_t *out)
{
	char *end;
	double v, mult = 1e6;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || errno || !isfinite(v) || v < 0)
		return -1;
	if (!*end)
		mult = 1e6;
	else if (!strcmp(end, "ns"))
		mult = 1;
	else if (!strcmp(end, "us"))
		mult = 1e3;
	else if (!strcmp(end, "ms"))
		mult = 1e6;
	else if (!strcmp(end, "s"))
		mult = 1e9;
	else
		return -1;
	if (v * mult > 1e18)
		return -1;
	*out = (uint64_t)(v * mult + 0.5);
	return 0;
}

static long parse_long(const char *s, long min, long max, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (end == s || *end || errno || v < min || v > max) {
		fprintf(stderr, "sqlspan: invalid %s '%s' (expected %ld..%ld)\n", what, s, min,
			max);
		return LONG_MIN;
	}
	return v;
}

static error_t parse_opt(int key, char *arg, struct argp_state *state)
{
	struct cli *c = state->input;
	long v;

	switch (key) {
	case 'p':
		v = parse_long(arg, 1, INT_MAX, "PID");
		if (v == LONG_MIN)
			return EINVAL;
		if (c->npids == CLI_MAX_PIDS) {
			fprintf(stderr, "sqlspan: at most %d PIDs\n", CLI_MAX_PIDS);
			return EINVAL;
		}
		c->pids[c->npids++] = v;
		break;
	case 'd': {
		char *end;

		errno = 0;
		c->duration_s = strtod(arg, &end);
		if (end == arg || *end || errno || !isfinite(c->duration_s) || c->duration_s <= 0 ||
		    c->duration_s > 1e9) {
			fprintf(stderr, "sqlspan: invalid duration '%s' (expected seconds > 0)\n",
				arg);
			return EINVAL;
		}
		break;
	}
	case 'm':
		if (parse_duration_ns(arg, &c->min_duration_ns)) {
			fprintf(stderr,
				"sqlspan: invalid minimum duration '%s' (e.g. 5ms, 250us, 1s)\n",
				arg);
			return EINVAL;
		}
		break;
	case OPT_JSON:
		c->json = true;
		break;
	case 'w':
		c->wait = true;
		break;
	case OPT_MAX_SQL:
		v = parse_long(arg, 64, CLI_MAX_SQL_BYTES, "--max-sql-bytes");
		if (v == LONG_MIN)
			return EINVAL;
		c->max_sql_bytes = v;
		break;
	case OPT_PERF:
		c->perf_buffer = true;
		break;
	case OPT_RING:
		v = parse_long(arg, 1, 1024, "--ring-mb");
		if (v == LONG_MIN)
			return EINVAL;
		c->ring_mb = v;
		break;
	case 'v':
		c->verbose++;
		break;
	case OPT_NO_LOOP:
		c->no_bpf_loop = true;
		break;
	case OPT_STACK:
		c->stack = true;
		break;
	case OPT_NO_PYTHON:
		c->no_python = true;
		break;
	case OPT_WIRE:
		c->wire = true;
		break;
	case OPT_LIBPQ_UPROBES:
		c->libpq_uprobes = true;
		break;
	case OPT_PERF_UPROBES:
		c->perf_uprobes = true;
		break;
	case OPT_STACK_DEPTH:
		v = parse_long(arg, 1, 127, "--stack-depth");
		if (v == LONG_MIN)
			return EINVAL;
		c->stack_depth = v;
		break;
	case OPT_APP_PATH:
		if (c->napp_paths == CLI_MAX_APP_PATHS || !*arg) {
			fprintf(stderr, "sqlspan: at most %d non-empty --app-path\n",
				CLI_MAX_APP_PATHS);
			return EINVAL;
		}
		c->app_paths[c->napp_paths++] = arg;
		break;
	case 'h':
		argp_state_help(state, stdout, ARGP_HELP_STD_HELP);
		break;
	case ARGP_KEY_ARG:
		fprintf(stderr, "sqlspan: unexpected argument '%s'\n", arg);
		return EINVAL;
	case ARGP_KEY_END:
		if (!c->npids) {
			fprintf(stderr, "sqlspan: no process given: use -p PID (see --help)\n");
			return EINVAL;
		}
		break;
	default:
		return ARGP_ERR_UNKNOWN;
	}
	return 0;
}

/* argp's own error messages take two lines; say what is wrong in one, before argp runs. */
static int precheck(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const struct argp_option *o;
		bool takes = false, found = false;

		if (a[0] != '-' || !a[1])
			continue;
		if (!strcmp(a, "--"))
			break;
		if (a[1] == '-') {
			size_t n = strcspn(a + 2, "=");

			for (o = opts; o->name || o->key; o++) {
				if (o->name && strlen(o->name) == n &&
				    !strncmp(o->name, a + 2, n)) {
					found = true;
					takes = o->arg != NULL;
					break;
				}
			}
			if (!found) {
				fprintf(stderr,
					"sqlspan: unknown option '%s' (see sqlspan --help)\n", a);
				return -1;
			}
			if (takes && !a[2 + n] && i + 1 >= argc) {
				fprintf(stderr, "sqlspan: option '%s' needs a value\n", a);
				return -1;
			}
			if (takes && !a[2 + n])
				i++;
			continue;
		}
		for (o = opts; o->name || o->key; o++) {
			if (o->key == a[1] && a[1] != 'h') {
				found = true;
				takes = o->arg != NULL;
				break;
			}
		}
		if (!found) {
			fprintf(stderr, "sqlspan: unknown option '-%c' (see sqlspan --help)\n",
				a[1]);
			return -1;
		}
		if (takes && !a[2]) {
			if (i + 1 >= argc) {
				fprintf(stderr, "sqlspan: option '%s' needs a value\n", a);
				return -1;
			}
			i++;
		}
	}
	return 0;
}

int cli_parse(struct cli *c, int argc, char **argv)
{
	static const struct argp argp = {opts, parse_opt, NULL, doc, NULL, NULL, NULL};
	int err;

	memset(c, 0, sizeof(*c));
	c->max_sql_bytes = 65536;
	/*
	 * 4 MiB lost events under an unthrottled pgbench on 2 busy cores (sqlspan starved of CPU
	 * for longer than the ring lasts), 8 MiB did not. Its size costs the traced threads nothing
	 * once every page has been written (ring_prefault, main.c).
	 */
	c->ring_mb = 8;
	c->stack_depth = 64;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ||
		    !strcmp(argv[i], "-?") || !strcmp(argv[i], "--usage") ||
		    !strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
			argp_parse(&argp, argc, argv, 0, NULL, c);
			return 1;
		}
	}
	if (precheck(argc, argv))
		return -1;
	err = argp_parse(&argp, argc, argv, ARGP_NO_EXIT | ARGP_NO_HELP | ARGP_NO_ERRS, NULL, c);
	return err ? -1 : 0;
}
