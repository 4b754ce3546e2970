#!/bin/sh
# A throwaway PostgreSQL cluster for the demo, the tests and the benchmark.
#   scripts/pgcluster.sh start DIR [ssl]   -> prints "PORT SOCKET_DIR"; every statement logged
#                                             as JSON; with "ssl": TLS on TCP (a self-signed
#                                             certificate made in DIR)
#   scripts/pgcluster.sh stop DIR
# Runs the server as user postgres, on 127.0.0.1 and a Unix socket in DIR/sock, on a free port.
set -eu

cmd="${1:-}"
dir="${2:-}"
ssl="${3:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

pgbin=""
for v in 15 16 17 18 14 13; do
	if [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then
		pgbin="/usr/lib/postgresql/$v/bin"
		break
	fi
done
[ -n "$pgbin" ] || { echo "pgcluster: no PostgreSQL server found (run scripts/setup.sh)" >&2; exit 1; }

as_pg() {
	runuser -u postgres -- "$@"
}

free_port() {
	p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000 ))
	while ss -Htln "sport = :$p" | grep -q .; do
		p=$((p + 1))
	done
	echo "$p"
}

case "$cmd" in
start)
	mkdir -p "$dir"
	chmod 755 "$dir"
	chown postgres "$dir"
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		as_pg "$pgbin/initdb" --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync -U postgres \
			-D "$dir/data" >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
	fi
	mkdir -p "$dir/sock"
	chown postgres "$dir/sock"
	port=$(free_port)
	cat >"$dir/data/postgresql.auto.conf" <<EOC
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
log_statement = 'all'
log_connections = on
logging_collector = on
log_destination = 'jsonlog'
log_directory = 'log'
log_filename = 'postgresql.log'
log_rotation_size = 0
EOC
	if [ "$ssl" = ssl ]; then
		if [ ! -f "$dir/data/server.key" ]; then
			openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
				-keyout "$dir/data/server.key" -out "$dir/data/server.crt" \
				>"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; exit 1; }
			chown postgres "$dir/data/server.key" "$dir/data/server.crt"
			chmod 600 "$dir/data/server.key"
		fi
		echo "ssl = on" >>"$dir/data/postgresql.auto.conf"
	fi
	as_pg "$pgbin/pg_ctl" -w -t 60 -D "$dir/data" -l "$dir/server.log" start >/dev/null ||
		{ cat "$dir/server.log" >&2; exit 1; }
	echo "$port" >"$dir/port"
	echo "$port $dir/sock"
	;;
stop)
	if [ -f "$dir/data/postmaster.pid" ]; then
		as_pg "$pgbin/pg_ctl" -w -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	fi
	;;
*)
	echo "usage: $0 start|stop DIR" >&2
	exit 2
	;;
esac
