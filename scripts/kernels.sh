#!/bin/sh
# Boot the pinned Debian kernels of tests/kernels/kernels.list in qemu (TCG) and run one command inside,
# with the host's root filesystem shared read-only over virtiofs (guest writes land in a throwaway tmpfs).
#   scripts/kernels.sh fetch [NAME...]   download and unpack the kernels and virtiofsd (cached, idempotent)
#   scripts/kernels.sh list              print the kernel names
#   scripts/kernels.sh run NAME [--mem MB] -- COMMAND...
#       Boot NAME, run COMMAND as root in the current directory (same path in the guest), stream its
#       output and exit with its exit code; 124 if the VM timed out, 125 if it died without reporting one
#       (or the current directory does not exist in the guest: /tmp, /var/tmp, /run are fresh there).
# Env: SQLSPAN_CACHE (default: REPO/.cache/kernels), SQLSPAN_VM_TIMEOUT (seconds, default 600).
# Needs root (apt, virtiofsd). Several VMs may run at once (each run has its own directory).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
self=$repo/scripts/kernels.sh
list=$repo/tests/kernels/kernels.list
cache=${SQLSPAN_CACHE:-$repo/.cache/kernels}
case "$cache" in /*) ;; *) cache=$(pwd)/$cache ;; esac
HOST_PKGS="qemu-system-x86 busybox-static cpio xz-utils zstd"
# bookworm's qemu ships only the old C virtiofsd: take trixie's Rust one and the trixie libraries it links
VIRTIOFSD_PKGS="virtiofsd libc6 libgcc-s1 libcap-ng0 libseccomp2"
# what the guest init needs to mount the share, and unix_diag (sqlspan finds the backend at the
# other end of a Unix socket through it: a host's kernel loads it on demand, the guest has no
# modprobe); a module is packed (with its dependencies) only when the kernel has it as a .ko,
# otherwise it is built in
GUEST_MODULES="virtio virtio_ring virtio_pci fuse virtiofs overlay unix_diag"
MARKER=SQLSPAN-GUEST-EXIT # the guest's last line: MARKER=exit code (spelt out in guest_init too)

die() {
	echo "kernels: $*" >&2
	exit 1
}

# kernels.list without comments and blank lines; entry NAME: its line
entries() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$list"; }
entry() { entries | awk -v n="$1" '$1 == n'; }

ensure_host_pkgs() {
	missing=""
	for p in $HOST_PKGS; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing="$missing $p"
	done
	[ -n "$missing" ] || return 0
	ensure_suites
	echo "kernels: installing$missing" >&2
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q -y install \
		--no-install-recommends $missing >/dev/null
}

# Make the suites of kernels.list (and trixie, for virtiofsd) known to apt; only when something is downloaded.
suites_done=""
ensure_suites() {
	[ -z "$suites_done" ] || return 0
	host_suite=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
	suites=$({ entries | awk '{print $2}'; echo trixie; } | sort -u | grep -vx "$host_suite") || :
	# shellcheck disable=SC2086
	"$repo/scripts/apt-suites.sh" $suites
	suites_done=1
}

# versions NAME: "VERSION SUITE" lines, one per version of package NAME the mirror has
versions() {
	apt-cache madison "$1" |
		awk -F'|' '{gsub(/ /, "", $2); split($3, w, " "); split(w[2], r, "/"); print $2, r[1]}'
}

# A pinned package left the mirror: say what to pin instead, then stop.
gone() { # PKG VERSION SUITE NAME
	kind=$(echo "$1" | sed 's/^\(linux-[a-z]*\)-.*/\1/')      # linux-image, linux-binary, linux-modules
	series=$(echo "$1" | sed -n 's/^linux-[a-z]*-\([0-9]*\.[0-9]*\)[.+-].*/\1/p')
	flavour=$(echo "$1" | sed -n 's/.*-\([a-z0-9]*-[a-z0-9]*\)$/\1/p') # cloud-amd64
	# "VERSION PACKAGE", oldest first: every version in SUITE (or SUITE-security, -updates) of every
	# package of the same kind and flavour
	cands=$(apt-cache search -n "^$kind-[0-9].*-$flavour\$" | awk '{print $1}' | while read -r p; do
		versions "$p" | awk -v s="$3" -v p="$p" '$2 == s || index($2, s "-") == 1 {print $1, p}'
	done | sort -V)
	# prefer the same series (5.10 -> newest 5.10 ABI), else the newest of any
	best=$(echo "$cands" | grep " $kind-${series}[.+-]" | tail -1) || :
	[ -n "$best" ] || best=$(echo "$cands" | tail -1)
	if [ -n "$best" ]; then
		hint="The newest available replacement in $3 is $(echo "$best" | awk '{print $2 " version " $1}')."
	else
		hint="Nothing similar is left in $3 ('apt-cache search -n $kind' lists what there is)."
	fi
	{
		echo
		echo "kernels: FATAL: the pinned package $1=$2 (suite $3, kernel '$4') is not on the Debian mirror" \
			"any more (mirrors drop old kernel ABIs). $hint Edit tests/kernels/kernels.list (the line for" \
			"'$4': package, version and any extra package on it) to pin a replacement, then run" \
			"'scripts/kernels.sh fetch' again." | fold -s -w 100
		echo
	} >&2
	exit 1
}

# fetch_kernel NAME: download and unpack the packages of NAME into $cache/NAME/root (once per pin)
fetch_kernel() {
	line=$(entry "$1")
	[ -n "$line" ] || die "no kernel '$1' in $list (known: $(entries | awk '{print $1}' | tr '\n' ' '))"
	kdir=$cache/$1
	if [ -f "$kdir/.fetched" ] && [ "$(cat "$kdir/.fetched")" = "$line" ]; then
		return 0
	fi
	# shellcheck disable=SC2086
	set -- $line
	kname=$1 suite=$2 kver=$4
	specs="$3=$4"
	shift 4
	for x in "$@"; do
		case "$x" in *=*) specs="$specs $x" ;; *) specs="$specs $x=$kver" ;; esac
	done
	mkdir -p "$cache/debs"
	debs=""
	for spec in $specs; do
		pkg=${spec%%=*} ver=${spec#*=}
		# apt-get download's file name (an epoch's ':' becomes %3a)
		deb=$cache/debs/${pkg}_$(echo "$ver" | sed 's/:/%3a/')_amd64.deb
		debs="$debs $deb"
		[ -f "$deb" ] && continue
		ensure_suites
		versions "$pkg" | awk '{print $1}' | grep -qxF "$ver" || gone "$pkg" "$ver" "$suite" "$kname"
		echo "kernels: downloading $pkg=$ver" >&2
		(cd "$cache/debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >/dev/null)
		[ -f "$deb" ] || die "apt-get download $pkg=$ver did not leave $deb"
	done
	rm -rf "$kdir"
	mkdir -p "$kdir/root"
	for deb in $debs; do
		dpkg -x "$deb" "$kdir/root"
	done
	echo "$line" >"$kdir/.fetched"
}

fetch_virtiofsd() {
	vdir=$cache/virtiofsd
	[ -f "$vdir/.fetched" ] && return 0
	ensure_suites
	rm -rf "$vdir"
	mkdir -p "$vdir/debs" "$vdir/root"
	echo "kernels: downloading virtiofsd from trixie" >&2
	# shellcheck disable=SC2046
	(cd "$vdir/debs" && apt-get -q -o APT::Sandbox::User=root download \
		$(for p in $VIRTIOFSD_PKGS; do echo "$p/trixie"; done) >/dev/null)
	for deb in "$vdir"/debs/*.deb; do
		dpkg -x "$deb" "$vdir/root"
	done
	(virtiofsd --version) >/dev/null ||
		die "trixie's virtiofsd does not run here (a library missing from VIRTIOFSD_PKGS?)"
	touch "$vdir/.fetched"
}

# trixie's virtiofsd, run through trixie's own ld.so and libc (the host's glibc is too old for it).
# It execs: call it in a subshell or in the background.
virtiofsd() {
	vroot=$cache/virtiofsd/root
	vlib=$vroot/usr/lib/x86_64-linux-gnu
	exec "$vlib/ld-linux-x86-64.so.2" --library-path "$vlib" "$vroot/usr/libexec/virtiofsd" "$@"
}

fetch() {
	ensure_host_pkgs
	# shellcheck disable=SC2046
	[ $# -gt 0 ] || set -- $(entries | awk '{print $1}')
	mkdir -p "$cache"
	# one fetch at a time (two first runs at once would unpack into the same directories)
	exec 9>"$cache/.lock"
	flock 9
	for k in "$@"; do
		fetch_kernel "$k"
		build_initrd "$k"
	done
	fetch_virtiofsd
	exec 9>&-
}

# PID 1 of the guest (busybox sh). /cmd.sh comes from a small per-run archive appended to the initramfs.
guest_init() {
	cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
halt() { echo "sqlspan-init: $*"; poweroff -f; }
for m in $(cat /modules/order); do
	insmod "/modules/$m.ko" || echo "sqlspan-init: insmod $m failed"
done
mount -t virtiofs -o ro hostroot /host || halt "cannot mount the host root over virtiofs"
pg=$(awk -F: '$1 == "postgres" {print $3 ":" $4}' /host/etc/passwd)
# writable root: overlay of the read-only share and a tmpfs (lost at power off; the host never changes)
R=/newroot
mount -t tmpfs -o mode=755 rw /rw
mkdir /rw/upper /rw/work
if ! mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay $R; then
	echo "sqlspan-init: no overlayfs: root stays read-only, tmpfs on /root /var/log /var/lib/postgresql"
	R=/host
	for d in root var/log var/lib/postgresql; do mount -t tmpfs -o mode=755 tmpfs $R/$d; done
	[ -z "$pg" ] || chown "$pg" $R/var/lib/postgresql
fi
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
ln -s /proc/self/fd $R/dev/fd  # what udev would add (bash process substitution, /dev/stdin users)
ln -s /proc/self/fd/0 $R/dev/stdin
ln -s /proc/self/fd/1 $R/dev/stdout
ln -s /proc/self/fd/2 $R/dev/stderr
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tracefs tracefs $R/sys/kernel/tracing || echo "sqlspan-init: no tracefs"
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null || :
mount -t bpf bpf $R/sys/fs/bpf || echo "sqlspan-init: no bpffs"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null || :
# fresh scratch dirs, not the host's (/var/run and /var/lock are symlinks into /run on Debian)
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp
mount -t tmpfs -o mode=755 tmpfs $R/run
mkdir -m 1777 $R/run/lock
ln -s /dev/shm $R/run/shm
if [ -n "$pg" ]; then mkdir -m 2775 $R/run/postgresql && chown "$pg" $R/run/postgresql; fi
ip link set lo up
hostname sqlspan-vm
cp /cmd.sh $R/run/sqlspan-cmd.sh
chroot $R /usr/bin/env -i /bin/sh /run/sqlspan-cmd.sh </dev/null
rc=$?
# wait until the serial port has sent everything (stty sets modes with TCSADRAIN), then report
stty -F /dev/console "$(stty -F /dev/console -g)" 2>/dev/null || sleep 1
echo "SQLSPAN-GUEST-EXIT=$rc"
stty -F /dev/console "$(stty -F /dev/console -g)" 2>/dev/null || sleep 1
poweroff -f
EOF
}

# build_initrd NAME: busybox, the modules the guest needs and guest_init, as $cache/NAME/initrd.cpio
build_initrd() {
	kdir=$cache/$1
	out=$kdir/initrd.cpio
	# rebuilt when this script (which holds guest_init) or the kernel changed
	if [ -f "$out" ] && [ -z "$(find "$self" "$kdir/.fetched" -newer "$out")" ]; then
		return 0
	fi
	moddir=$(ls -d "$kdir"/root/lib/modules/* "$kdir"/root/usr/lib/modules/* 2>/dev/null | head -1)
	[ -n "$moddir" ] || die "no lib/modules in $kdir/root"
	st=$kdir/initrd.d
	rm -rf "$st"
	mkdir -p "$st/bin" "$st/dev" "$st/proc" "$st/sys" "$st/host" "$st/rw" "$st/newroot" "$st/modules"
	cp /bin/busybox "$st/bin/busybox"
	mknod "$st/dev/console" c 5 1
	: >"$st/modules/order"
	: >"$kdir/initrd.modules"
	seen=" "
	for m in $GUEST_MODULES; do
		add_module "$m"
	done
	guest_init >"$st/init"
	chmod 755 "$st/init"
	(cd "$st" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$st"
	echo "kernels: initramfs for $1, modules: $(tr '\n' ' ' <"$kdir/initrd.modules")" >&2
}

# add_module NAME: copy NAME.ko (decompressed: busybox insmod cannot unpack) after its dependencies
add_module() {
	case "$seen" in *" $1 "*) return 0 ;; esac
	seen="$seen$1 "
	ko=$(find "$moddir/kernel" \( -name "$1.ko*" -o -name "$(echo "$1" | tr _ -).ko*" \) | head -1)
	if [ -z "$ko" ]; then
		echo "($1 built in)" >>"$kdir/initrd.modules"
		return 0
	fi
	case "$ko" in
	*.xz) xz -dc "$ko" ;;
	*.zst) zstd -qdc "$ko" ;;
	*.gz) gzip -dc "$ko" ;;
	*) cat "$ko" ;;
	esac >"$st/modules/$1.ko"
	# the .modinfo section holds NUL-terminated "depends=a,b"
	for dep in $(tr '\0' '\n' <"$st/modules/$1.ko" | sed -n 's/^depends=//p' | head -1 | tr , ' '); do
		add_module "$dep"
	done
	echo "$1" >>"$st/modules/order"
	echo "$1" >>"$kdir/initrd.modules"
}

# quote ARG: ARG as one single-quoted shell word (exact, trailing newlines included)
quote() {
	q=$(printf '%sx' "$1" | sed "s/'/'\\\\''/g")
	printf "'%s'" "${q%x}"
}

cleanup() {
	# qemu first (its pid file names our run dir: never kill a recycled pid), then virtiofsd
	qpid=$(cat "$run_dir/qemu.pid" 2>/dev/null) || qpid=""
	if [ -n "$qpid" ] && tr '\0' ' ' <"/proc/$qpid/cmdline" 2>/dev/null | grep -qF "$run_dir/"; then
		kill "$qpid" 2>/dev/null || :
		i=0
		while [ $i -lt 50 ] && kill -0 "$qpid" 2>/dev/null; do
			sleep 0.1
			i=$((i + 1))
		done
	fi
	if [ -n "$vfs_pid" ]; then
		kill "$vfs_pid" 2>/dev/null || :
	fi
	rm -rf "$run_dir"
}

run() {
	[ $# -ge 1 ] || usage
	name=$1 mem=1536
	shift
	while [ $# -gt 0 ]; do
		case "$1" in
		--mem)
			case "${2:-}" in '' | *[!0-9]*) usage ;; esac
			mem=$2
			shift 2
			;;
		--) shift; break ;;
		*) usage ;;
		esac
	done
	[ $# -gt 0 ] || usage
	[ "$(id -u)" = 0 ] || die "run needs root (virtiofsd serves / as root)"
	[ -n "$(entry "$name")" ] || die "no kernel '$name' in $list"
	fetch "$name"
	# boot/vmlinuz-VER up to 6.x; usr/lib/modules/VER/vmlinuz (package linux-binary-*) from 7.x
	vmlinuz=$(ls "$cache/$name"/root/boot/vmlinuz-* "$cache/$name"/root/usr/lib/modules/*/vmlinuz \
		2>/dev/null | head -1)
	[ -n "$vmlinuz" ] || die "no vmlinuz in $cache/$name/root"
	tmo=${SQLSPAN_VM_TIMEOUT:-600}
	cwd=$(pwd)

	vfs_pid=""
	run_dir=$(mktemp -d "${TMPDIR:-/tmp}/sqlspan-vm.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP

	# the command, as a script run by the host's /bin/sh inside the guest's chroot, with a clean environment
	mkdir "$run_dir/cpio"
	{
		echo 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 TERM=dumb'
		# (fails under /tmp, /var/tmp or /run: those are fresh in the guest)
		echo "cd $(quote "$cwd") || exit 125"
		printf 'exec'
		for a in "$@"; do
			printf ' %s' "$(quote "$a")"
		done
		echo
	} >"$run_dir/cpio/cmd.sh"
	# a second cpio archive appended to the cached initramfs: the kernel unpacks both
	(cd "$run_dir/cpio" && echo cmd.sh | cpio -o -H newc -R 0:0 --quiet) >"$run_dir/cmd.cpio"
	cat "$cache/$name/initrd.cpio" "$run_dir/cmd.cpio" >"$run_dir/initrd"

	# virtiofsd, read-only. --sandbox chroot: its namespace sandbox cannot pivot_root into / (EBUSY).
	# File handles, not one O_PATH fd per guest inode (the fd limit may be low). --cache always: far
	# fewer round trips (execs 2x faster); fine for a short-lived VM. --no-announce-submounts: else host
	# mount points (/proc, /sys, ...) are automounts in the guest and overlayfs refuses them (EREMOTE).
	nofile=$(awk '/^Max open files/ {print $5}' /proc/self/limits)
	case "$nofile" in '' | *[!0-9]*) nofile=0 ;; esac
	virtiofsd --shared-dir / --readonly --sandbox chroot --inode-file-handles=prefer --cache always \
		--no-announce-submounts --rlimit-nofile "$nofile" --log-level error \
		--socket-path "$run_dir/vfs.sock" >"$run_dir/virtiofsd.log" 2>&1 &
	vfs_pid=$!
	i=0
	while [ ! -S "$run_dir/vfs.sock" ]; do
		i=$((i + 1))
		if [ $i -gt 100 ] || ! kill -0 "$vfs_pid" 2>/dev/null; then
			cat "$run_dir/virtiofsd.log" >&2
			die "virtiofsd did not start"
		fi
		sleep 0.1
	done

	# qemu, 1 vCPU under TCG. virtiofs needs guest RAM in shared memory (memfd, share=on) as a NUMA node.
	# -cpu Nehalem: with AVX2 models (max, Haswell) glibc picks AVX2 string functions, which TCG runs
	# slowly (execs 2-3x slower); +rdrand seeds 5.10's RNG at boot (random.trust_cpu). qboot instead of
	# SeaBIOS: faster, and no BIOS noise on the console.
	(
		rc=0
		timeout -k 10 "$tmo" qemu-system-x86_64 -accel tcg -cpu Nehalem,+rdrand -smp "${SQLSPAN_VM_CPUS:-1}" -m "${mem}M" \
			-object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
			-bios /usr/share/qemu/qboot.rom -nodefaults -no-user-config -nographic -serial stdio \
			-no-reboot -pidfile "$run_dir/qemu.pid" \
			-chardev "socket,id=vfs,path=$run_dir/vfs.sock" -device vhost-user-fs-pci,chardev=vfs,tag=hostroot \
			-kernel "$vmlinuz" -initrd "$run_dir/initrd" \
			-append "console=ttyS0 panic=-1 quiet mitigations=off random.trust_cpu=on" \
			</dev/null 2>&1 || rc=$?
		echo "$rc" 2>/dev/null >"$run_dir/qemu.rc" || : # (the run dir is gone if we were interrupted)
	) | sed -u -e 's/\r$//' -e '/^\[ *[0-9.]*\] reboot: Power down$/d' | tee "$run_dir/console.log" &
	# in the background so that a signal runs the trap at once (a foreground pipeline would defer it)
	wait $! || :

	code=$(sed -n "s/.*$MARKER=\([0-9][0-9]*\)\$/\1/p" "$run_dir/console.log" | tail -1)
	if [ -n "$code" ]; then
		exit "$code"
	fi
	qrc=$(cat "$run_dir/qemu.rc" 2>/dev/null) || qrc=""
	if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
		echo "kernels: TIMEOUT: the $name VM ran longer than $tmo s (SQLSPAN_VM_TIMEOUT); killed" >&2
		exit 124
	fi
	echo "kernels: the $name VM stopped without reporting an exit code" \
		"(kernel panic or init failure? see the output above)" >&2
	if [ -s "$run_dir/virtiofsd.log" ]; then
		echo "kernels: virtiofsd said:" >&2
		cat "$run_dir/virtiofsd.log" >&2
	fi
	exit 125
}

usage() {
	sed -n '2,11s/^# \{0,1\}//p' "$self" >&2
	exit 2
}

case "${1:-}" in
fetch) shift; fetch "$@" ;;
list) entries | awk '{print $1}' ;;
run) shift; run "$@" ;;
*) usage ;;
esac
