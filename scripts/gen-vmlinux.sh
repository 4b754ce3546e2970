#!/bin/sh
# Regenerate vmlinux/x86/vmlinux.h from a kernel's BTF (default: the running kernel's).
# Usage: scripts/gen-vmlinux.sh [BTF_FILE]
set -eu
btf="${1:-/sys/kernel/btf/vmlinux}"
out="$(dirname "$0")/../vmlinux/x86/vmlinux.h"
mkdir -p "$(dirname "$out")"
bpftool btf dump file "$btf" format c >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out from $btf ($(wc -l <"$out") lines)"
