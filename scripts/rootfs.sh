#!/bin/sh
# A minimal Debian root filesystem with a given Python stack, for test targets that run like
# containers (their own mount and PID namespaces): e.g. trixie's CPython 3.13, sid's 3.14.
# Built with mmdebstrap from the machine's own configured mirror; cached; idempotent.
# Prints the folder. Usage: scripts/rootfs.sh SUITE [PACKAGES]   (comma-separated; default: the
# Python stack the call-site and async tests use)
set -eu
suite="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SQLSPAN_CACHE:-$root/.cache}/rootfs/$suite"
pkgs="${2:-python3,python3-sqlalchemy,python3-sqlalchemy-ext,python3-psycopg2,python3-psycopg,python3-psycopg-c,python3-greenlet,python3-asyncpg,libpq5,mount,util-linux}"
[ -n "${2:-}" ] && dir="$dir-$(echo "$pkgs" | md5sum | cut -c1-8)"
stamp="$dir.stamp-$(echo "$pkgs" | md5sum | cut -c1-12)"
if [ -f "$stamp" ] && [ -x "$dir/usr/bin/python3" ]; then
	echo "$dir"
	exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
	apt-get -o DPkg::Lock::Timeout=300 -q -y install --no-install-recommends mmdebstrap >/dev/null
fi
# the mirror of the machine's main archive, from its own apt configuration
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
[ -n "$mirror" ] || { echo "rootfs: no mirror in /etc/apt/sources.list.d/debian.sources" >&2; exit 1; }
rm -rf "$dir" "$dir".stamp-*
mkdir -p "$(dirname "$dir")"
mmdebstrap --quiet --variant=essential --include="$pkgs" \
	--aptopt='Acquire::Check-Valid-Until "false"' "$suite" "$dir" "$mirror" >&2
touch "$stamp"
echo "$dir"
