#!/bin/sh
# Run the end-to-end tests (root: they load BPF programs and start PostgreSQL and apps).
set -eu
cd "$(dirname "$0")/.."
exec /usr/bin/python3 -m pytest -p no:cacheprovider -q -rs "$@" tests/e2e
