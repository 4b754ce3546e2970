#!/bin/sh
# make demo: a throwaway PostgreSQL, the bundled SQLAlchemy app, and sqlspan attached to it by
# PID, showing live spans for a few seconds. Cleans up after itself.
set -eu
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${DEMO_SECONDS:-8}"

if [ "$(id -u)" != 0 ]; then
	echo "demo: sqlspan loads BPF programs: run as root (sudo make demo)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/sqlspan-demo.XXXXXX)
app_pid=""
async_pid=""
cleanup() {
	[ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
	[ -n "$async_pid" ] && kill "$async_pid" 2>/dev/null || true
	scripts/pgcluster.sh stop "$work" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "demo: starting a throwaway PostgreSQL in $work"
set -- $(scripts/pgcluster.sh start "$work")
port=$1
sock=$2

mkfifo "$work/go" "$work/go-async"
/usr/bin/python3 scripts/demo_app.py "$sock" "$port" "$((SECONDS_TO_RUN + 8))" <"$work/go" >"$work/app.out" 2>&1 &
app_pid=$!
exec 3>"$work/go"
# the same shop's asyncio side: SQLAlchemy's AsyncEngine over asyncpg (no libpq: sqlspan reads the
# protocol off its sockets)
/usr/bin/python3 scripts/demo_async.py "$sock" "$port" "$((SECONDS_TO_RUN + 8))" <"$work/go-async" >"$work/async.out" 2>&1 &
async_pid=$!
exec 4>"$work/go-async"
for out in app async; do
	i=0
	until grep -q ready "$work/$out.out" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 300 ] || ! kill -0 "$app_pid" 2>/dev/null || ! kill -0 "$async_pid" 2>/dev/null; then
			cat "$work/$out.out" >&2
			echo "demo: the demo app ($out) did not start" >&2
			exit 1
		fi
		sleep 0.1
	done
done

echo "demo: the apps are PID $app_pid (SQLAlchemy + psycopg2) and PID $async_pid (AsyncEngine + asyncpg)"
echo "demo: running: sqlspan -p $app_pid -p $async_pid -d $SECONDS_TO_RUN"
echo
./sqlspan -p "$app_pid" -p "$async_pid" -d "$SECONDS_TO_RUN" &
tracer=$!
sleep 1 # let it attach
echo go >&3
echo go >&4
wait "$tracer" || true
exec 3>&- 4>&-
echo
echo "demo: the same spans as JSON, one per line (sqlspan --json), e.g.:"
./sqlspan -p "$app_pid" --json -d 2 2>/dev/null | head -n 1 || true
./sqlspan -p "$async_pid" --json -d 2 2>/dev/null | head -n 1 || true
echo "demo: done"
