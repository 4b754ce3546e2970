#!/bin/sh
# Every test: unit (plain and sanitized), end to end, and the kernel matrix where it exists.
# The last line is the total: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
total_p=0
total_f=0
add() { # add "N passed, M failed" from a log file's last such line
	line=$(grep -E '[0-9]+ passed|[0-9]+ failed' "$1" | tail -1)
	p=$(printf '%s' "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || true)
	f=$(printf '%s' "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || true)
	e=$(printf '%s' "$line" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || true)
	total_p=$((total_p + ${p:-0}))
	total_f=$((total_f + ${f:-0} + ${e:-0}))
}
status=0
log=$(mktemp)

echo "== format (clang-format)"
if make --no-print-directory -s check-format; then
	echo "format: 1 passed, 0 failed"
	total_p=$((total_p + 1))
else
	echo "format: 0 passed, 1 failed"
	total_f=$((total_f + 1))
fi

echo "== BPF stack depth (private stacks are unsafe for preemptible uprobe programs)"
if scripts/bpf-stack-check.sh .output/sqlspan.bpf.o; then
	echo "bpf-stack: 1 passed, 0 failed"
	total_p=$((total_p + 1))
else
	echo "bpf-stack: 0 passed, 1 failed"
	total_f=$((total_f + 1))
fi

echo "== unit tests (plain and ASan/UBSan)"
make --no-print-directory -s test-unit >"$log" 2>&1 || status=1
cat "$log"
add "$log"

echo "== fuzzing: records and protocol bytes into the assembler and decoders (20 s)"
make --no-print-directory -s fuzz FUZZ_SECONDS=20 >"$log" 2>&1 || status=1
cat "$log"
add "$log"

echo "== end-to-end tests"
tests/run-e2e.sh >"$log" 2>&1 || status=1
cat "$log"
add "$log"

if [ -x tests/kernels/run.sh ]; then
	echo "== kernel matrix"
	tests/kernels/run.sh >"$log" 2>&1 || status=1
	cat "$log"
	add "$log"
fi
rm -f "$log"
if [ "$status" != 0 ] && [ "$total_f" = 0 ]; then
	total_f=1 # a suite failed without counting it
fi
echo "$total_p passed, $total_f failed"
[ "$status" = 0 ] && [ "$total_f" = 0 ]
