# carpool — build, test, bench.  `make` builds bin/carpool and bin/carpool-sim; `make test` runs every test.
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu17 -Wall -Wextra -Werror -Iinclude -Ibench -D_GNU_SOURCE
LDLIBS  = -levent -levent_openssl -levent_pthreads -lpthread -lssl -lcrypto -lcjson -lyaml -luring -lm
SAN     ?=
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

VERSION = 0.1.0
CFLAGS += -DCARPOOL_VERSION=\"$(VERSION)\"
# The git revision --version prints; build/revision changes only when it does, to rebuild main.o.
REVISION := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)

CORE_SRC = $(filter-out src/main.c,$(wildcard src/*.c))
CORE_OBJ = $(CORE_SRC:src/%.c=build/%.o)
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=bin/%)

all: bin/carpool bin/carpool-sim bin/carpool-loadgen bin/carpool-writefloor

build/%.o: src/%.c $(wildcard include/carpool/*.h) | build
	$(CC) $(CFLAGS) -c -o $@ $<

# the default config path is compiled in: main.o is rebuilt when SYSCONFDIR changes
build/sysconfdir: FORCE | build
	@echo '$(SYSCONFDIR)' | cmp -s - $@ || echo '$(SYSCONFDIR)' > $@
build/main.o: build/sysconfdir
build/main.o: CFLAGS += -DCARPOOL_REVISION=\"$(REVISION)\" -DCARPOOL_DEFAULT_CONFIG=\"$(SYSCONFDIR)/carpool/carpool.yaml\"
build/main.o: build/revision
build/revision: FORCE | build
	@echo '$(REVISION)' | cmp -s - $@ || echo '$(REVISION)' > $@
FORCE:

build/bench_%.o: bench/%.c bench/simgen.h | build
	$(CC) $(CFLAGS) -c -o $@ $<

bin/carpool: build/main.o $(CORE_OBJ) | bin
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bin/carpool-sim: build/bench_sim.o build/bench_simgen.o | bin
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bin/carpool-loadgen: build/bench_loadgen.o build/bench_simgen.o | bin
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bin/carpool-writefloor: build/bench_writefloor.o | bin
	$(CC) $(LDFLAGS) -o $@ $^ -luring

bin/test_%: tests/unit/test_%.c $(CORE_OBJ) build/bench_simgen.o | bin
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# The batcher's tests play the upstream themselves: the wire (upstream_call, upcall_cancel) is theirs.
bin/test_batcher: LDFLAGS += -Wl,--wrap=upstream_call -Wl,--wrap=upcall_cancel

build bin:
	mkdir -p $@

FUZZ_TARGETS = sse split intake config prom http
FUZZ_REPLAY = $(FUZZ_TARGETS:%=bin/replay_%)

bin/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(CORE_OBJ) | bin
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

unit: $(UNIT_BIN) $(FUZZ_REPLAY)
	@fail=0; for t in $(UNIT_BIN); do echo "== $$t"; ./$$t || fail=1; done; \
	for f in $(FUZZ_TARGETS); do ./bin/replay_$$f tests/fuzz/corpus/$$f || fail=1; done; exit $$fail

# libFuzzer (clang): FUZZ_SECONDS per target, new finds go to tests/fuzz/corpus/<target>/.
FUZZ_SECONDS ?= 30
fuzz: | bin
	@set -e; for f in $(FUZZ_TARGETS); do \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Ibench -D_GNU_SOURCE -DCARPOOL_VERSION=\"fuzz\" \
	    -o bin/fuzz_$$f tests/fuzz/fuzz_$$f.c $(CORE_SRC) $(LDLIBS); \
	  ./bin/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 tests/fuzz/corpus/$$f; done

e2e: all tests/e2e/node_modules
	bash tests/e2e/run.sh

tests/e2e/node_modules: tests/e2e/package.json tests/e2e/package-lock.json
	@echo "npm ci: installing the e2e tests' npm packages (the openai SDK) into tests/e2e/node_modules; the first time may take a minute"
	cd tests/e2e && npm ci --no-audit --no-fund --silent
	touch $@

test: all unit e2e

# Mutation check (not in CI: a few minutes): each tests/mutants/*.patch, a deliberate bug, applied
# alone to a scratch copy must make the tests it names fail.
mutants: tests/e2e/node_modules
	bash tests/mutants/run.sh

demo: all
	bash bench/demo.sh

# The benchmark beside nginx (installs nginx and gnuplot when missing); writes bench/RESULTS.md.
# Then where a token's cost goes (strace, callgrind; installs them when missing): bench/RESULTS-profile.md.
# Then the latency of batching, direct vs carpool's default config; writes bench/RESULTS-latency.md.
bench: all
	bash bench/run-bench.sh
	bash bench/profile.sh
	bash bench/latency.sh

# Install: the binary, the man page (where `man carpool` finds it), the example configs, the systemd
# unit (its paths rewritten for PREFIX and SYSCONFDIR), and SYSCONFDIR/carpool/carpool.yaml when there
# is none yet. DESTDIR stages the whole tree (packaging). `make uninstall` removes what install
# wrote, except the config under SYSCONFDIR, which is the operator's.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
BINDIR      = $(DESTDIR)$(PREFIX)/bin
MANDIR      = $(DESTDIR)$(PREFIX)/share/man/man1
SHAREDIR    = $(DESTDIR)$(PREFIX)/share/carpool
UNITDIR     = $(DESTDIR)$(PREFIX)/lib/systemd/system
CONFIGS     = $(wildcard configs/*.yaml)

install: bin/carpool
	install -d $(BINDIR) $(MANDIR) $(SHAREDIR)/configs $(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/carpool
	install -m 0755 bin/carpool $(BINDIR)/carpool
	install -m 0644 docs/carpool.1 $(MANDIR)/carpool.1
	install -m 0644 $(CONFIGS) $(SHAREDIR)/configs/
	sed -e 's|/usr/local/bin/carpool|$(PREFIX)/bin/carpool|g' -e 's|/etc/carpool|$(SYSCONFDIR)/carpool|g' \
	    deploy/carpool.service > $(UNITDIR)/carpool.service
	chmod 0644 $(UNITDIR)/carpool.service
	test -e $(DESTDIR)$(SYSCONFDIR)/carpool/carpool.yaml || \
	    install -m 0644 configs/carpool.yaml $(DESTDIR)$(SYSCONFDIR)/carpool/carpool.yaml

uninstall:
	rm -f $(BINDIR)/carpool $(MANDIR)/carpool.1 $(UNITDIR)/carpool.service
	rm -f $(addprefix $(SHAREDIR)/,$(CONFIGS))
	-rmdir $(SHAREDIR)/configs $(SHAREDIR) 2>/dev/null

clean:
	rm -rf build bin

.PHONY: all unit e2e test mutants demo bench fuzz clean install uninstall FORCE
