#!/bin/sh
# Runs inside a kernel-matrix VM (scripts/kernels.sh run NAME -- tests/kernels/guest.sh TIERS):
# the end-to-end tests of each tier, with the host's root (and so this repo, its build and the
# Debian packages) shared read-only. Prints pytest's per-test results (-rA) for the table.
#   tier 1: every BPF program loads and attaches; records through the ring buffer and the perf
#           buffer; the socket walker with bpf_loop and with tail calls, and its resync after
#           runs the kernel skipped; the ring written ahead; detach leaves no probe; a
#           connection whose StartupMessage was not seen identified by its backend (Unix socket:
#           through unix_diag, which the guest's init loads; TCP)
#   tier 2: real apps end to end (SQLAlchemy + psycopg2, psycopg 3 pipelines, pgbench, AsyncEngine
#           + asyncpg on the wire, asyncpg over TLS: libssl probes and a return probe) against
#           the server's statement log; Python call sites,
#           transactions and async SQLAlchemy connections against the app's record (before 5.17:
#           asyncpg refused with its message, a documented degraded mode)
set -u
cd "$(dirname "$0")/../.."
echo "guest: kernel $(uname -r)"
sel=""
for tier in "$@"; do
	case "$tier" in
	1) sel="$sel tests/e2e/test_modes.py::test_perf_buffer
		tests/e2e/test_modes.py::test_walker_without_bpf_loop
		tests/e2e/test_modes.py::test_resync_after_skipped_runs
		tests/e2e/test_modes.py::test_ring_written_ahead
		tests/e2e/test_modes.py::test_large_results
		tests/e2e/test_modes.py::test_statement_text_limits
		tests/e2e/test_modes.py::test_errors_and_secrets
		tests/e2e/test_attach.py::test_sigint_detaches_and_leaves_no_probe
		tests/e2e/test_attach.py::test_library_loaded_after_attach
		tests/e2e/test_attach.py::test_session_start_not_seen" ;;
	2) sel="$sel tests/e2e/test_capture.py::test_sqlalchemy_psycopg2
		tests/e2e/test_python.py::test_call_sites[debian-3.11-sa1.4-psycopg2]
		tests/e2e/test_capture.py::test_psycopg3_pipeline_prepared
		tests/e2e/test_clients.py::test_pgbench_select_only
		tests/e2e/test_async.py::test_async_orm
		tests/e2e/test_async.py::test_asyncpg_raw
		tests/e2e/test_async.py::test_asyncpg_over_tls[asyncpg-raw]" ;;
	*) echo "guest: unknown tier $tier" >&2; exit 2 ;;
	esac
done
# Kernels 7.x skip some runs of uprobe and syscall-tracepoint programs while another run of the
# same program is preempted (the programs' recursion_misses count): sqlspan counts those as lost
# events, marks the spans read around them, and says so. The tests check that case themselves
# where they can (what is shown is what the server ran, unmarked results exact, what is missing
# counted); two cannot and are skipped there with this reason (the table shows SKIPPED): libpq
# pipelines (a reply delayed past sqlspan's look can land on a later pipelined request: a
# documented limit) and the call-site test (it joins every statement to the app's record).
desel=""
case "$(uname -r)" in
7.*)
	for t in tests/e2e/test_capture.py::test_psycopg3_pipeline_prepared \
		"tests/e2e/test_python.py::test_call_sites[debian-3.11-sa1.4-psycopg2]"; do
		case "$sel" in *"$t"*)
			desel="$desel --deselect $t"
			echo "SKIPPED $t (7.x kernel skips preempted program runs: reported as lost)"
			;;
		esac
	done
	;;
esac
# shellcheck disable=SC2086
exec /usr/bin/python3 -m pytest -p no:cacheprovider -q -rA $sel $desel
