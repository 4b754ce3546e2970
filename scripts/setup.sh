#!/bin/sh
# Install what sqlspan needs to build, demo and test, from Debian packages only.
# Idempotent: installs nothing when everything is already there.
# Usage: scripts/setup.sh [build|demo|test]   (default: test, the superset)
set -eu

what="${1:-test}"

BUILD_PKGS="make gcc clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config"
# libFuzzer for the fuzz target (make fuzz; make test runs it briefly)
FUZZ_PKGS="libclang-rt-14-dev"
RUN_PKGS="postgresql-15 postgresql-contrib python3 python3-sqlalchemy python3-psycopg2 python3-psycopg python3-asyncpg python3-greenlet"
TEST_PKGS="python3-pytest procps util-linux iproute2 python3-asyncpg python3-greenlet python3-yaml python3-jsonschema openssl"

case "$what" in
build) pkgs="$BUILD_PKGS" ;;
demo) pkgs="$BUILD_PKGS $RUN_PKGS" ;;
test) pkgs="$BUILD_PKGS $RUN_PKGS $TEST_PKGS $FUZZ_PKGS" ;;
*)
	echo "usage: $0 [build|demo|test]" >&2
	exit 2
	;;
esac

missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing="$missing $p"
	fi
done

if [ -z "$missing" ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "setup: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi

echo "setup: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
APT="apt-get -o DPkg::Lock::Timeout=300 -q -y"
$APT update >/dev/null
# shellcheck disable=SC2086
$APT install --no-install-recommends $missing >/dev/null
