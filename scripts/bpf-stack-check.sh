#!/bin/sh
# Every program and subprogram of the BPF object must use less than 64 bytes of stack: from 64
# on, kernels since 6.13 run it on a per-CPU private stack, which preemptible uprobe programs
# share and corrupt (see bpf/request.bpf.h). Loads the object with the verifier's log and reads
# the stack depth it reports. Usage: scripts/bpf-stack-check.sh OBJECT
set -eu
obj="$1"
pin=/sys/fs/bpf/sqlspan-stack-check-$$
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
log=$(bpftool -d prog loadall "$obj" "$pin" 2>&1) || { echo "$log" | tail -20 >&2; rm -rf "$pin"; exit 1; }
rm -rf "$pin"
bad=$(echo "$log" | awk '
	/prog .*-- BEGIN PROG LOAD LOG --/ { prog = $3 }
	/^stack depth / {
		n = split($3, d, "+")
		for (i = 1; i <= n; i++) if (d[i] + 0 >= 64) { print prog " subprogram " i - 1 ": " d[i] " bytes"; }
	}')
if [ -n "$bad" ]; then
	echo "bpf stack check: 64 bytes or more of stack (private stack, unsafe for uprobes):" >&2
	echo "$bad" >&2
	exit 1
fi
echo "bpf stack check: $(echo "$log" | grep -c '^stack depth') programs, every subprogram under 64 bytes"
