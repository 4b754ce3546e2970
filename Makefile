# sqlspan: trace the SQL a running process sends to PostgreSQL, with BPF.
#
#   make          build ./sqlspan
#   make demo     install what is missing, build, trace a bundled demo app for a few seconds
#   make test     install what is missing, build, run every test
#   make bench    overhead benchmark (see bench/)
#
# Outputs go to .output/ (and the binary to ./sqlspan).

OUTPUT := .output
CLANG ?= clang
CC ?= cc
BPFTOOL ?= bpftool
ARCH := x86

# the pure logic: no libbpf, unit-tested without root
PURE_SRCS := user/hmap.c user/x86dec.c user/pqlayout.c user/pgproto.c user/sqllex.c user/pgfront.c user/asm_wire.c \
	user/sqlinfo.c user/redact.c user/assemble.c user/output.c user/reorder.c \
	user/procmaps.c user/cli.c user/elffile.c user/sysinfo.c user/pyline.c user/pylayout_table.c user/pyruntime.c user/pyframes.c \
	user/pgident.c user/pyobj.c user/saurl.c user/pystack.c user/strbuf.c user/outq.c user/kbtf.c
LOADER_SRCS := user/main.c user/probes.c user/tlsprobes.c user/sockpeer.c user/ulink.c
BPF_SRCS := bpf/sqlspan.bpf.c
BPF_HDRS := bpf/sqlspan.h bpf/buffer.bpf.h bpf/maps.bpf.h bpf/wire.bpf.h bpf/pystack.bpf.h \
	bpf/request.bpf.h bpf/front.bpf.h bpf/tls.bpf.h

CFLAGS ?= -g -O2
WARN := -Wall -Wextra -Werror -Wno-missing-field-initializers
INCLUDES := -I$(OUTPUT) -Ibpf -Iuser
LDLIBS := -lbpf -lelf -lz -lm
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror=undef \
	-Ivmlinux/$(ARCH) -Ibpf

PURE_OBJS := $(patsubst user/%.c,$(OUTPUT)/%.o,$(PURE_SRCS))
LOADER_OBJS := $(patsubst user/%.c,$(OUTPUT)/%.o,$(LOADER_SRCS))

.PHONY: all setup demo test test-unit test-e2e test-kernels fuzz bench format check-format vmlinux clean
.DELETE_ON_ERROR:

all: sqlspan

setup:
	@scripts/setup.sh build

$(OUTPUT):
	@mkdir -p $@

# BPF: compile, link (bpftool gen object), skeleton
$(OUTPUT)/sqlspan.tmp.bpf.o: $(BPF_SRCS) $(BPF_HDRS) vmlinux/$(ARCH)/vmlinux.h | $(OUTPUT)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(OUTPUT)/sqlspan.bpf.o: $(OUTPUT)/sqlspan.tmp.bpf.o
	$(BPFTOOL) gen object $@ $<

$(OUTPUT)/sqlspan.skel.h: $(OUTPUT)/sqlspan.bpf.o
	$(BPFTOOL) gen skeleton $< name sqlspan_bpf > $@

$(OUTPUT)/%.o: user/%.c $(wildcard user/*.h) bpf/sqlspan.h | $(OUTPUT)
	$(CC) $(CFLAGS) $(WARN) $(INCLUDES) -c $< -o $@

$(LOADER_OBJS): $(OUTPUT)/sqlspan.skel.h

sqlspan: $(LOADER_OBJS) $(PURE_OBJS)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@

# ---- tests ----
UNIT_TESTS := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c))
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

$(OUTPUT)/unit/%: tests/unit/%.c tests/unit/check.h $(PURE_SRCS) $(wildcard user/*.h) | $(OUTPUT)
	@mkdir -p $(OUTPUT)/unit
	$(CC) -g -O1 $(WARN) $(INCLUDES) -Itests/unit $< $(PURE_SRCS) -lelf -lz -lm -o $@

$(OUTPUT)/unit-san/%: tests/unit/%.c tests/unit/check.h $(PURE_SRCS) $(wildcard user/*.h) | $(OUTPUT)
	@mkdir -p $(OUTPUT)/unit-san
	$(CC) -g -O1 $(SAN) $(WARN) $(INCLUDES) -Itests/unit $< $(PURE_SRCS) -lelf -lz -lm -o $@

# the fuzz target: records and protocol bytes into the assembler and decoders (libFuzzer)
FUZZ_SECONDS ?= 60
$(OUTPUT)/fuzz_records: tests/fuzz/fuzz_records.c $(PURE_SRCS) $(wildcard user/*.h) | $(OUTPUT)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $(WARN) \
		$(INCLUDES) $< $(PURE_SRCS) -lelf -lz -lm -o $@

fuzz: $(OUTPUT)/fuzz_records
	@mkdir -p $(OUTPUT)/fuzz-corpus
	@$(OUTPUT)/fuzz_records -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
		-artifact_prefix=$(OUTPUT)/fuzz- $(OUTPUT)/fuzz-corpus 2>$(OUTPUT)/fuzz.log && \
		echo "fuzz: 1 passed, 0 failed ($$(grep -c . $(OUTPUT)/fuzz.log) log lines, $(FUZZ_SECONDS) s)" || \
		{ tail -40 $(OUTPUT)/fuzz.log; echo "fuzz: 0 passed, 1 failed"; exit 1; }

test-unit: $(addprefix $(OUTPUT)/unit/,$(UNIT_TESTS)) $(addprefix $(OUTPUT)/unit-san/,$(UNIT_TESTS))
	@tests/run-unit.sh $(OUTPUT) $(UNIT_TESTS)

test-e2e: sqlspan
	@tests/run-e2e.sh

test-kernels: sqlspan
	@tests/kernels/run.sh

test:
	@scripts/setup.sh test
	@$(MAKE) --no-print-directory sqlspan
	@tests/run-all.sh

demo:
	@scripts/setup.sh demo
	@$(MAKE) --no-print-directory -s sqlspan
	@scripts/demo.sh

# ---- benchmark ----
$(OUTPUT)/floor.bpf.o: bench/floor.bpf.c vmlinux/$(ARCH)/vmlinux.h | $(OUTPUT)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(OUTPUT)/floor.skel.h: $(OUTPUT)/floor.bpf.o
	$(BPFTOOL) gen skeleton $< name floor_bpf > $@

$(OUTPUT)/floor: bench/floor.c $(OUTPUT)/floor.skel.h user/elffile.c user/x86dec.c user/ulink.c
	$(CC) -g -O2 $(WARN) $(INCLUDES) bench/floor.c user/elffile.c user/x86dec.c user/ulink.c \
		$(LDLIBS) -o $@

bench:
	@scripts/setup.sh test
	@$(MAKE) --no-print-directory -s sqlspan $(OUTPUT)/floor
	@/usr/bin/python3 bench/run.py

format:
	clang-format -i bpf/*.c bpf/*.h user/*.c user/*.h tests/unit/*.c tests/unit/*.h

check-format:
	@clang-format --dry-run --Werror bpf/*.c bpf/*.h user/*.c user/*.h tests/unit/*.c tests/unit/*.h

vmlinux:
	scripts/gen-vmlinux.sh

clean:
	rm -rf $(OUTPUT) sqlspan
