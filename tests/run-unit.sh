#!/bin/sh
# Run the C unit tests, plain and under ASan/UBSan. Prints "unit: N passed, N failed".
# Usage: tests/run-unit.sh OUTPUT_DIR TEST...
set -u
out="$1"
shift
passed=0
failed=0
for t in "$@"; do
	for variant in unit unit-san; do
		log=$("$out/$variant/$t" 2>&1)
		rc=$?
		line=$(printf '%s\n' "$log" | grep -E '^[a-z0-9_]+: [0-9]+ passed, [0-9]+ failed$' | tail -1)
		p=$(printf '%s' "$line" | sed -n 's/.*: \([0-9]*\) passed.*/\1/p')
		f=$(printf '%s' "$line" | sed -n 's/.* \([0-9]*\) failed$/\1/p')
		if [ "$rc" != 0 ] || [ -z "$line" ]; then
			printf '%s\n' "$log" | grep -v 'sqlspan: ' >&2
			echo "FAIL $variant/$t (exit $rc)" >&2
			f=$(( ${f:-0} + 1 ))
		fi
		echo "$variant/$t: ${p:-0} passed, ${f:-0} failed"
		passed=$((passed + ${p:-0}))
		failed=$((failed + ${f:-0}))
	done
done
echo "unit: $passed passed, $failed failed"
[ "$failed" = 0 ]
