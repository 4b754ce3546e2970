#!/bin/sh
# Pure-Python Debian packages from another suite, unpacked (not installed) into a folder that is
# put first on PYTHONPATH: e.g. SQLAlchemy 2.0 from trixie on bookworm's Python 3.11.
# Idempotent and cached. Prints the folder to put on PYTHONPATH.
# Usage: scripts/pyoverlay.sh NAME SUITE PACKAGE...
set -eu
name="$1"
suite="$2"
shift 2
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SQLSPAN_CACHE:-$root/.cache}/pyoverlay/$name"
stamp="$cache/.done-$(echo "$suite $*" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
	"$root/scripts/apt-suites.sh" "$suite"
	rm -rf "$cache"
	mkdir -p "$cache/debs"
	(cd "$cache/debs" && for p in "$@"; do
		apt-get download -q "$p/$suite" >/dev/null 2>&1 ||
			{ echo "pyoverlay: cannot download $p from $suite" >&2; exit 1; }
	done)
	for d in "$cache"/debs/*.deb; do
		dpkg-deb -x "$d" "$cache/root"
	done
	touch "$stamp"
fi
echo "$cache/root/usr/lib/python3/dist-packages"
