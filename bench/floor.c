// SPDX-License-Identifier: MIT
/*
 * The floor of probe costs on this machine: calls of tiny functions, untraced and with an empty
 * BPF uprobe (and uretprobe) on them, where the first instruction is one the kernel emulates
 * (push, nop) and one it must single-step (mov). Prints one line per case: ns per call and the
 * added ns per probe hit; then what an 8-byte read of the thread's memory in the probe adds, at a
 * page the thread uses and at one it never touched. Usage: floor [CALLS]
 *
 * floor attach PID LIBRARY SYMBOL[+OFF] [ret]: put an empty uprobe (and uretprobe) on SYMBOL in another
 * process until stdin closes, attached as sqlspan attaches its own (ulink.h): the cost of a design
 * that probes there.
 *
 * floor tracepoints: an empty program on each system call tracepoint sqlspan uses on bpf_loop
 * kernels, until stdin closes: what the tracepoints cost every process's system calls with
 * nothing done in them.
 *
 * floor stats: what kernel.bpf_stats_enabled reports as the run time of an empty program (the
 * clock reads around every run are in it): the part of every program's reported time that is
 * the measuring, not the program.
 *
 * floor gaps SECONDS: a loop that only reads the clock, on whatever CPU it is given: the time it
 * loses in gaps of 10 µs or more (interrupts, and the host taking the virtual CPU away), which
 * the kernel charges to the task that was running.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "elffile.h"
#include "ulink.h"
#include "floor.skel.h"

/* first instruction chosen on purpose */
__asm__(".text\n.globl f_push\n.type f_push,@function\nf_push:\n push %rbp\n mov %rsp,%rbp\n"
	" pop %rbp\n ret\n.size f_push,.-f_push\n"
	".globl f_nop\n.type f_nop,@function\nf_nop:\n nop\n ret\n.size f_nop,.-f_nop\n"
	".globl f_mov\n.type f_mov,@function\nf_mov:\n mov %rdi,%rax\n ret\n.size f_mov,.-f_mov\n");
void f_push(void);
void f_nop(void);
void f_mov(void);

static double cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* best of 5 runs of n calls: CPU ns per call */
static double per_call(void (*fn)(void), long n)
{
	double best = 1e18;

	for (int r = 0; r < 5; r++) {
		double c0 = cpu_ns();

		for (long i = 0; i < n; i++) {
			fn();
			__asm__ volatile("" ::: "memory");
		}
		double c = (cpu_ns() - c0) / n;
		if (c < best)
			best = c;
	}
	return best;
}

static int silent(enum libbpf_print_level l, const char *f, va_list a)
{
	(void)l, (void)f, (void)a;
	return 0;
}

static int attach_other(int argc, char **argv)
{
	struct floor_bpf *skel = floor_bpf__open();
	struct elf_file *ef = argc > 4 ? elff_open(argv[3]) : NULL;
	struct ulink l1 = {0}, l2 = {0};
	bool ret = argc > 5 && !strcmp(argv[5], "ret");
	uint64_t va, foff, off = 0;
	char buf[64], sym[128], *plus;
	pid_t pid = atoi(argv[2]);

	snprintf(sym, sizeof(sym), "%s", argc > 4 ? argv[4] : "");
	plus = strchr(sym, '+');
	if (plus) {
		*plus = 0;
		off = strtoull(plus + 1, NULL, 0);
	}
	/* attached as sqlspan attaches its uprobes (ulink.h) */
	if (skel && ulink_multi_supported())
		ulink_use_multi(skel->obj);
	if (!skel || floor_bpf__load(skel) || !ef || elff_sym(ef, sym, &va, NULL)) {
		fprintf(stderr, "floor: usage: floor attach PID LIBRARY SYMBOL[+OFFSET] [ret]\n");
		return 2;
	}
	foff = elff_file_offset(ef, va + off);
	if (ulink_attach(&l1, skel->progs.empty, false, pid, argv[3], foff) ||
	    (ret && ulink_attach(&l2, skel->progs.empty, true, pid, argv[3], foff))) {
		fprintf(stderr, "floor: cannot attach\n");
		return 1;
	}
	printf("attached\n");
	fflush(stdout);
	while (fgets(buf, sizeof(buf), stdin))
		;
	ulink_destroy(&l2);
	ulink_destroy(&l1);
	floor_bpf__destroy(skel);
	elff_close(ef);
	return 0;
}

static int tracepoints(void)
{
	/* sqlspan's on bpf_loop kernels with uprobe_multi links: syscall exits only, no mmap */
	static const char *const tps[] = {"sys_exit_sendto", "sys_exit_recvfrom", "sys_exit_sendmsg",
					  "sys_exit_close", "sys_exit_connect"};
	struct bpf_link *links[sizeof(tps) / sizeof(tps[0])] = {0};
	struct floor_bpf *skel = floor_bpf__open_and_load();
	size_t n = 0;
	char buf[256];

	while (skel && n < sizeof(tps) / sizeof(tps[0]) &&
	       (links[n] = bpf_program__attach_tracepoint(skel->progs.empty_tp, "syscalls",
							   tps[n])))
		n++;
	if (n < sizeof(tps) / sizeof(tps[0])) {
		fprintf(stderr, "floor: cannot attach the syscall tracepoints\n");
		return 1;
	}
	printf("attached\n");
	fflush(stdout);
	while (fgets(buf, sizeof(buf), stdin))
		;
	while (n > 0)
		bpf_link__destroy(links[--n]);
	floor_bpf__destroy(skel);
	return 0;
}

static int stats_overhead(const char *self, struct elf_file *ef, struct floor_bpf *skel)
{
	struct bpf_prog_info info = {0};
	__u32 ilen = sizeof(info);
	struct bpf_link *l;
	uint64_t va;

	if (elff_sym(ef, "f_push", &va, NULL))
		return 1;
	l = bpf_program__attach_uprobe(skel->progs.empty, false, getpid(), self,
				       elff_file_offset(ef, va));
	if (!l)
		return 1;
	per_call(f_push, 200000);
	bpf_link__destroy(l);
	if (bpf_obj_get_info_by_fd(bpf_program__fd(skel->progs.empty), &info, &ilen) ||
	    !info.run_cnt) {
		fprintf(stderr, "floor: no run time reported (kernel.bpf_stats_enabled off?)\n");
		return 1;
	}
	printf("empty program run time as reported: %.1f ns\n",
	       (double)info.run_time_ns / info.run_cnt);
	return 0;
}

static double mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int gaps(double secs)
{
	double start = mono_ns(), end = start + secs * 1e9, prev = start, lost = 0, longest = 0;
	long n = 0, over30 = 0, over100 = 0;

	for (;;) {
		double now = mono_ns(), g = now - prev;

		prev = now;
		if (now > end)
			break;
		if (g < 10000)
			continue;
		n++;
		lost += g;
		over30 += g >= 30000;
		over100 += g >= 100000;
		longest = g > longest ? g : longest;
	}
	printf("gaps of 10 us or more: %.0f a second, %.1f%% of the time lost, %.0f a second of 30 us "
	       "or more, %.0f a second of 100 us or more, longest %.0f us\n",
	       n / secs, 100 * lost / (end - start), over30 / secs, over100 / secs, longest / 1000);
	return 0;
}

/* per_call of f_nop with prog attached there, in ns */
static double with_prog(const char *self, uint64_t foff, struct bpf_program *prog, long n)
{
	struct bpf_link *l = bpf_program__attach_uprobe(prog, false, getpid(), self, foff);
	double ns;

	if (!l)
		return -1;
	ns = per_call(f_nop, n);
	bpf_link__destroy(l);
	return ns;
}

/*
 * What a BPF program's read of the thread's memory costs the thread: at a page it uses, and at a
 * page mapped but never touched (not in the page tables: the read fails, through a page fault
 * the kernel does not serve). Against the same probe empty, at a nop.
 */
static int reads(const char *self, struct elf_file *ef, struct floor_bpf *skel, long n)
{
	static volatile uint64_t used = 1;
	void *fresh = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct bpf_link *l;
	double bare, ok, fail;
	uint64_t va, foff, failed_ok, failed_fail;

	if (fresh == MAP_FAILED || used != 1 || elff_sym(ef, "f_nop", &va, NULL))
		return 1; /* (used read here: its page is in the page tables) */
	foff = elff_file_offset(ef, va);
	bare = with_prog(self, foff, skel->progs.empty, n / 10);
	if (bare < 0)
		goto fail;
	l = bpf_program__attach_uprobe(skel->progs.reader, false, getpid(), self, foff);
	if (!l)
		goto fail;
	skel->bss->read_at = (uint64_t)&used;
	ok = per_call(f_nop, n / 10);
	failed_ok = skel->bss->read_failed;
	skel->bss->read_at = (uint64_t)fresh;
	fail = per_call(f_nop, n / 10);
	failed_fail = skel->bss->read_failed - failed_ok;
	bpf_link__destroy(l);
	munmap(fresh, 4096);
	/* the kernel's word on which reads failed, not the labels' (5 runs of n / 10 calls each) */
	if (failed_ok || failed_fail != 5 * (uint64_t)(n / 10)) {
		fprintf(stderr, "floor: reads failed: %llu at the page in use, %llu of %ld at the "
				"untouched one\n",
			(unsigned long long)failed_ok, (unsigned long long)failed_fail, 5 * (n / 10));
		return 1;
	}
	printf("\n%-48s %12s\n", "in the probe: an 8-byte read of the thread's memory", "ns/read");
	printf("%-48s %12.1f\n", "at a page it uses", ok - bare);
	printf("%-48s %12.1f\n", "at a page mapped, never touched (the read fails)", fail - bare);
	return 0;
fail:
	fprintf(stderr, "floor: cannot attach uprobes\n");
	munmap(fresh, 4096);
	return 1;
}

/*
 * What a call costs in a BPF program (the kernel's mitigations make each return dearer on some
 * CPUs): CALLS calls of a BPF function, and of a helper, against the same loop inline.
 */
static int calls(const char *self, struct elf_file *ef, struct floor_bpf *skel, long n)
{
	double in, bpf, helper;
	uint64_t va, foff;
	bool ran;

	if (elff_sym(ef, "f_nop", &va, NULL))
		return 1;
	foff = elff_file_offset(ef, va);
	/* each program leaves sink at 64 if it ran: cleared before each */
	skel->bss->sink = 0;
	in = with_prog(self, foff, skel->progs.calls_inline, n);
	ran = skel->bss->sink == 64;
	skel->bss->sink = 0;
	bpf = with_prog(self, foff, skel->progs.calls_bpf, n);
	ran = ran && skel->bss->sink == 64;
	skel->bss->sink = 0;
	helper = with_prog(self, foff, skel->progs.calls_helper, n);
	ran = ran && skel->bss->sink == 64;
	if (in < 0 || bpf < 0 || helper < 0 || !ran) {
		fprintf(stderr, "floor: the call programs did not attach or did not run\n");
		return 1;
	}
	printf("\n%-48s %12s\n", "in the probe: a call (64 in a loop, less inline)", "ns/call");
	printf("%-48s %12.1f\n", "of a BPF function, and its return", (bpf - in) / 64);
	printf("%-48s %12.1f\n", "of a helper (bpf_get_prandom_u32)", (helper - in) / 64);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name, *first;
		void (*fn)(void);
	} fns[] = {{"f_push", "push %rbp (emulated)", f_push},
		   {"f_nop", "nop (emulated)", f_nop},
		   {"f_mov", "mov %rdi,%rax (single-stepped)", f_mov}};
	long n = argc > 1 ? atol(argv[1]) : 200000;
	struct floor_bpf *skel;
	struct elf_file *ef;
	char self[4096];
	ssize_t len;

	libbpf_set_print(silent);
	if (argc > 1 && !strcmp(argv[1], "attach"))
		return attach_other(argc, argv);
	if (argc > 1 && !strcmp(argv[1], "tracepoints"))
		return tracepoints();
	if (argc > 2 && !strcmp(argv[1], "gaps"))
		return gaps(atof(argv[2]));
	len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len <= 0)
		return 1;
	self[len] = 0;
	ef = elff_open(self);
	skel = floor_bpf__open_and_load();
	if (!ef || !skel) {
		fprintf(stderr, "floor: cannot open myself or load the BPF program\n");
		return 1;
	}
	if (argc > 1 && !strcmp(argv[1], "stats"))
		return stats_overhead(self, ef, skel);
	printf("%-34s %12s %12s %12s %12s\n", "first instruction", "ns/call", "+uprobe",
	       "+uretprobe", "both");
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		uint64_t va, foff;
		struct bpf_link *l1, *l2;
		double base, up, both;

		if (elff_sym(ef, fns[i].name, &va, NULL))
			return 1;
		foff = elff_file_offset(ef, va);
		base = per_call(fns[i].fn, n * 10);
		l1 = bpf_program__attach_uprobe(skel->progs.empty, false, getpid(), self, foff);
		up = per_call(fns[i].fn, n);
		l2 = bpf_program__attach_uprobe(skel->progs.empty, true, getpid(), self, foff);
		both = per_call(fns[i].fn, n);
		bpf_link__destroy(l2);
		bpf_link__destroy(l1);
		if (!l1 || !l2) {
			fprintf(stderr, "floor: cannot attach uprobes\n");
			return 1;
		}
		printf("%-34s %12.1f %12.1f %12.1f %12.1f\n", fns[i].first, base, up - base,
		       both - up, both - base);
	}
	if (calls(self, ef, skel, n / 10) || reads(self, ef, skel, n))
		return 1;
	floor_bpf__destroy(skel);
	elff_close(ef);
	return 0;
}
