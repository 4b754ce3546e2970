/* SPDX-License-Identifier: MIT */
/* What sqlspan needs from the system, checked up front with one-line answers. */
#ifndef SQLSPAN_SYSINFO_H
#define SQLSPAN_SYSINFO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define SQLSPAN_MIN_KERNEL_MAJOR 5
#define SQLSPAN_MIN_KERNEL_MINOR 10

/* Each returns 0 if fine, or -1 after writing a one-line reason into msg. */
int check_privileges(char *msg, size_t n);
int check_kernel(const char *release, char *msg, size_t n);
/* Is the kernel (uname's release, "6.1.0-13-amd64") MAJOR.MINOR or newer? */
bool kernel_at_least(const char *release, int major, int minor);
/* path: the kernel's BTF, normally /sys/kernel/btf/vmlinux */
int check_btf(const char *path, char *msg, size_t n);
/* Make sure tracefs is mounted (tracepoint attachment needs its event ids). */
int ensure_tracefs(char *msg, size_t n);

/* Does the process exist (and is it not a zombie)? */
bool proc_alive(pid_t pid);
/* Base name of /proc/PID/exe (process.executable.name); "?" if unreadable. */
void proc_exe_name(pid_t pid, char *buf, size_t n);
/* Monotonic-to-realtime offset in ns. */
long long mono_to_real_ns(void);
unsigned long long mono_now_ns(void);

#endif
