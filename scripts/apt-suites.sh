#!/bin/sh
# Make extra Debian suites (trixie, sid, bullseye, bookworm-backports) known to apt, derived from the
# machine's own /etc/apt/sources.list.d/debian.sources (no mirror host name is written anywhere by us),
# pinned below the default release so nothing is upgraded by accident. Idempotent.
# Usage: scripts/apt-suites.sh SUITE...
set -eu
src=/etc/apt/sources.list.d/debian.sources
[ -r "$src" ] || { echo "apt-suites: $src not found" >&2; exit 1; }
changed=0
for suite in "$@"; do
	out=/etc/apt/sources.list.d/sqlspan-$suite.sources
	pin=/etc/apt/preferences.d/sqlspan-$suite
	if [ ! -f "$out" ]; then
		# first stanza of debian.sources (the main archive), with Suites replaced
		awk -v s="$suite" '
			/^[[:space:]]*$/ { if (seen) exit; next }
			/^Suites:/ { print "Suites: " s; seen=1; next }
			{ print; seen=1 }' "$src" >"$out.tmp"
		mv "$out.tmp" "$out"
		changed=1
	fi
	if [ ! -f "$pin" ]; then
		printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$suite" >"$pin"
		changed=1
	fi
done
if [ "$changed" = 1 ] || [ ! -f /var/lib/sqlspan-apt-updated ] || [ "$src" -nt /var/lib/sqlspan-apt-updated ]; then
	apt-get -o DPkg::Lock::Timeout=300 -q update >/dev/null
	touch /var/lib/sqlspan-apt-updated
fi
