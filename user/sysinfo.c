// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "sysinfo.h"

/* Effective capability set from /proc/self/status. */
static unsigned long long cap_eff(void)
{
	unsigned long long caps = 0;
	char line[256];
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "CapEff:", 7)) {
			caps = strtoull(line + 7, NULL, 16);
			break;
		}
	}
	fclose(f);
	return caps;
}

int check_privileges(char *msg, size_t n)
{
	unsigned long long c = cap_eff();
	const unsigned long long sys_admin = 1ULL << 21, sys_ptrace = 1ULL << 19,
				 perfmon = 1ULL << 38, bpf = 1ULL << 39;

	if (((c & sys_admin) || ((c & bpf) && (c & perfmon))) && (c & sys_ptrace))
		return 0;
	snprintf(msg, n,
		 "must run as root: loading BPF programs and reading the traced process need "
		 "CAP_BPF, CAP_PERFMON (or CAP_SYS_ADMIN) and CAP_SYS_PTRACE");
	return -1;
}

bool kernel_at_least(const char *release, int major, int minor)
{
	int ma = 0, mi = 0;

	return sscanf(release, "%d.%d", &ma, &mi) == 2 &&
	       (ma > major || (ma == major && mi >= minor));
}

int check_kernel(const char *release, char *msg, size_t n)
{
	int major = 0, minor = 0;

	if (sscanf(release, "%d.%d", &major, &minor) != 2) {
		snprintf(msg, n, "cannot read the kernel version from '%s'", release);
		return -1;
	}
	if (!kernel_at_least(release, SQLSPAN_MIN_KERNEL_MAJOR, SQLSPAN_MIN_KERNEL_MINOR)) {
		snprintf(msg, n, "kernel %s is too old: sqlspan needs Linux %d.%d or newer",
			 release, SQLSPAN_MIN_KERNEL_MAJOR, SQLSPAN_MIN_KERNEL_MINOR);
		return -1;
	}
	return 0;
}

int check_btf(const char *path, char *msg, size_t n)
{
	if (access(path, R_OK) == 0)
		return 0;
	snprintf(msg, n,
		 "this kernel has no BTF (%s is missing): sqlspan needs a kernel built with "
		 "CONFIG_DEBUG_INFO_BTF=y",
		 path);
	return -1;
}

int ensure_tracefs(char *msg, size_t n)
{
	struct stat st;

	if (stat("/sys/kernel/tracing/events", &st) == 0 ||
	    stat("/sys/kernel/debug/tracing/events", &st) == 0)
		return 0;
	if (mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, NULL) == 0)
		return 0;
	snprintf(msg, n, "tracefs is not mounted and mounting it on /sys/kernel/tracing failed: %s",
		 strerror(errno));
	return -1;
}

bool proc_alive(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	bool alive = false;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return false;
	if (fgets(buf, sizeof(buf), f)) {
		p = strrchr(buf, ')');
		alive = p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
	}
	fclose(f);
	return alive;
}

void proc_exe_name(pid_t pid, char *buf, size_t n)
{
	char path[64], target[4096];
	ssize_t len;
	const char *b;

	snprintf(path, sizeof(path), "/proc/%d/exe", pid);
	len = readlink(path, target, sizeof(target) - 1);
	if (len <= 0) {
		snprintf(buf, n, "?");
		return;
	}
	target[len] = 0;
	if (len > 10 && !strcmp(target + len - 10, " (deleted)"))
		target[len - 10] = 0;
	b = strrchr(target, '/');
	snprintf(buf, n, "%s", b ? b + 1 : target);
}

unsigned long long mono_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

long long mono_to_real_ns(void)
{
	struct timespec r, m1, m2;

	clock_gettime(CLOCK_MONOTONIC, &m1);
	clock_gettime(CLOCK_REALTIME, &r);
	clock_gettime(CLOCK_MONOTONIC, &m2);
	return (r.tv_sec * 1000000000LL + r.tv_nsec) -
	       ((m1.tv_sec + m2.tv_sec) * 500000000LL + (m1.tv_nsec + m2.tv_nsec) / 2);
}
