/* SPDX-License-Identifier: MIT */
/* sqlspan's command line. */
#ifndef SQLSPAN_CLI_H
#define SQLSPAN_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define CLI_MAX_PIDS	  64
#define CLI_MAX_APP_PATHS 16
#define CLI_MAX_SQL_BYTES (255u * 4063u) /* what the BPF side can send per statement */

struct cli {
	pid_t pids[CLI_MAX_PIDS];
	int npids;
	double duration_s;	  /* 0 = until interrupted or every traced process exited */
	uint64_t min_duration_ns; /* spans shorter than this are not shown */
	bool json;
	int verbose;
	bool perf_buffer;
	bool wait;	    /* wait for processes to load libpq */
	bool wire;	    /* --wire: follow the protocol on every traced process's sockets */
	bool libpq_uprobes; /* --libpq-uprobes: libpq's statements from uprobes, not its sockets */
	uint32_t max_sql_bytes;
	uint32_t ring_mb;
	bool no_bpf_loop;
	bool perf_uprobes;    /* uprobes as perf events even where uprobe_multi links exist */
	bool stack;	      /* --stack: the whole Python stack on each span */
	bool no_python;	      /* --no-python: no Python stacks at all */
	uint32_t stack_depth; /* Python frames read per statement */
	const char *app_paths[CLI_MAX_APP_PATHS + 1]; /* --app-path, NULL-terminated */
	int napp_paths; /* walk reads with tail calls even where bpf_loop exists */
};

/*
 * Parse argv. Returns 0 to go on, 1 when the run is over (--help printed), or -1 after printing
 * a one-line error to stderr.
 */
int cli_parse(struct cli *c, int argc, char **argv);

/* "5ms", "250us", "1.5s", "2000ns", "10" (milliseconds) -> ns. -1 if malformed. */
int parse_duration_ns(const char *s, uint64_t *out);

#endif
