#!/bin/sh
# make test-kernels: the kernel-version matrix. Boots each pinned Debian kernel
# (tests/kernels/kernels.list) in qemu, two at a time, and runs tests/kernels/guest.sh in it:
# tier 1 on every kernel, tier 2 on the oldest and the newest. The host kernel runs the whole
# end-to-end suite natively (make test). Prints a kernel x tier x test table and
# "N passed, N failed". Usage: tests/kernels/run.sh [NAME...]
set -u
cd "$(dirname "$0")/../.."
root=$(pwd)
stage=""
cleanup() {
	[ -n "$stage" ] && { umount "$stage" 2>/dev/null || umount -l "$stage"; } && rmdir "$stage"
	[ -n "${logs:-}" ] && rm -rf "$logs"
}
trap cleanup EXIT
case "$root" in
/tmp/* | /var/tmp/* | /run/* | /dev/shm/*)
	# the VMs get fresh folders there: show them the repository at another path
	mkdir -p /var/lib/sqlspan
	stage=$(mktemp -d /var/lib/sqlspan/kernels-repo.XXXXXX)
	mount --bind "$root" "$stage"
	cd "$stage"
	;;
esac
scripts/kernels.sh fetch >/dev/null || { echo "kernels: fetching kernels failed" >&2; exit 1; }
all=$(scripts/kernels.sh list)
[ $# -gt 0 ] && all="$*"
oldest=$(echo "$all" | head -n1)
newest=$(echo "$all" | tail -n1)
logs=$(mktemp -d)

run_one() {
	name=$1
	tiers=1
	if [ "$name" = "$oldest" ] || [ "$name" = "$newest" ]; then
		tiers="1 2"
	fi
	# shellcheck disable=SC2086
	SQLSPAN_VM_TIMEOUT=1500 scripts/kernels.sh run "$name" -- tests/kernels/guest.sh $tiers \
		>"$logs/$name.log" 2>&1
	echo $? >"$logs/$name.rc"
	echo "kernels: $name done (exit $(cat "$logs/$name.rc"))"
}

# two VMs at a time (2 cores)
set -- $all
while [ $# -gt 0 ]; do
	run_one "$1" &
	p1=$!
	p2=""
	if [ $# -gt 1 ]; then
		run_one "$2" &
		p2=$!
		shift
	fi
	shift
	wait $p1
	[ -n "$p2" ] && wait $p2
done

passed=0
failed=0
skipped=0
printf '\n%-8s %-6s %-48s %s\n' KERNEL TIER TEST RESULT
for name in $all; do
	rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 125)
	kver=$(sed -n 's/^guest: kernel //p' "$logs/$name.log" | head -n1)
	n=$(grep -cE '^(PASSED|FAILED|ERROR|SKIPPED) ' "$logs/$name.log")
	if [ "$n" = 0 ]; then
		echo "kernels: $name produced no test results (exit $rc); its log:" >&2
		tail -n 40 "$logs/$name.log" >&2
		failed=$((failed + 1))
		continue
	fi
	grep -E '^(PASSED|FAILED|ERROR|SKIPPED) ' "$logs/$name.log" | while read -r res t rest; do
		# a skip from inside a test ("SKIPPED [1] lib.py:N: tests/e2e/x.py::test: why") names
		# the test in its reason
		case "$t" in
		\[*) t=$(printf '%s' "$rest" | sed -n 's/^[^ ]* \(tests\/e2e\/[^ ]*::[^ :]*\).*/\1/p') ;;
		esac
		case "$t" in
		*test_capture* | *test_clients* | *test_python* | *test_async*) tier=2 ;;
		*) tier=1 ;;
		esac
		printf '%-8s %-6s %-48s %s\n' "$name" "$tier" "${t#tests/e2e/}" "$res"
	done
	p=$(grep -cE '^PASSED ' "$logs/$name.log")
	skipped=$((skipped + $(grep -cE '^SKIPPED ' "$logs/$name.log")))
	f=$(grep -cE '^(FAILED|ERROR) ' "$logs/$name.log")
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$f" != 0 ] || [ "$rc" != 0 ]; then
		echo "--- $name ($kver): exit $rc; failures:"
		sed -n '/^=* FAILURES =*$/,/^=* short test summary/p' "$logs/$name.log" | tail -n 400
		[ "$f" = 0 ] && failed=$((failed + 1))
	fi
done
echo "kernels: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
