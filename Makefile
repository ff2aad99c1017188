# mod_zmq: `make` builds, `make test` tests, `make demo` runs the demo.
APXS    ?= apxs
GO      ?= go
PORT    ?= 8080
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
export PATH := $(PATH):/usr/local/go/bin

BUILD   := build
LIBEXEC  = $(shell $(APXS) -q LIBEXECDIR 2>/dev/null)
SYSCONF  = $(shell $(APXS) -q SYSCONFDIR 2>/dev/null)
LIBRARY  = $(LIBEXEC)/libmodzmq.so
# Everything the Go binaries are built from, C included (cgo compiles the
# .c and .h files of mod_zmq/relay into libmodzmq.so).
GOSRC   := $(shell find bridge internal mod_zmq/golib mod_zmq/relay \( -name '*.go' -o -name '*.c' -o -name '*.h' \) -not -name '*_test.go') go.mod go.sum
# The worker package the pure-Go example workers serve with.
WORKERSRC := $(filter-out %_test.go,$(wildcard worker/*.go))
CSRC    := $(wildcard mod_zmq/*.c mod_zmq/*.h) mod_zmq/golib/modzmq.h apxs/build.sh
# The library's test helpers (mod_zmq/relay/harness.go) and the tests that
# use them build only with this tag, so they are not linked into the
# libmodzmq.so users install: run go test and go vet with it.
TESTTAGS := -tags modzmq_test

# The programs that link libzmq (through pebbe/zmq4: zmq-gateway, brokerworker,
# the benchmark and the tests) link the one libzmq/build.sh builds: Debian's
# libzmq 4.3.4 with smaller pipe chunks, static (its header says why).
# LIBZMQ=system links the system's libzmq (libzmq3-dev) instead. Go's build
# cache sees neither pkg-config's answer nor the archive, so CGO_CPPFLAGS
# names both, the archive's directory and the recipe: a build in another
# checkout, or from a changed libzmq/build.sh, compiles and links anew.
LIBZMQ ?= bundled
ifeq ($(LIBZMQ),bundled)
ZMQPC := $(BUILD)/libzmq/cgo/libzmq.pc
export PKG_CONFIG_PATH := $(abspath $(BUILD)/libzmq/cgo)$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH))
export CGO_CPPFLAGS += -I$(abspath $(BUILD)/libzmq/include) -DMODZMQ_LIBZMQ=$(shell sha256sum libzmq/build.sh | cut -c1-16)
else ifneq ($(LIBZMQ),system)
$(error LIBZMQ is bundled (the default) or system, not $(LIBZMQ))
endif

.PHONY: all deps install uninstall deb demo test fuzz fuzz-asan bench clean
all: $(BUILD)/mod_zmq.so $(BUILD)/libmodzmq.so $(BUILD)/go-worker $(BUILD)/brokerworker $(BUILD)/streamworker $(BUILD)/wsworker $(BUILD)/zmq-gateway

deps:
	@./test/deps.sh

$(BUILD)/mod_zmq.so: $(CSRC)
	@mkdir -p $(BUILD)
	./apxs/build.sh $(APXS) $@ $(LIBRARY)

$(BUILD)/libmodzmq.so: $(GOSRC)
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -buildmode=c-shared -o $@ ./mod_zmq/golib
	@rm -f $(BUILD)/libmodzmq.h

$(BUILD)/go-worker: $(WORKERSRC) go.mod go.sum $(wildcard examples/go/worker/*.go)
	$(GO) build -o $@ ./examples/go/worker

$(BUILD)/libzmq/cgo/libzmq.pc: libzmq/build.sh
	./libzmq/build.sh $(BUILD)/libzmq

$(BUILD)/brokerworker: $(ZMQPC) $(wildcard examples/go/brokerworker/*.go)
	$(GO) build -o $@ ./examples/go/brokerworker

$(BUILD)/streamworker: $(WORKERSRC) go.mod go.sum $(wildcard examples/go/streamworker/*.go)
	$(GO) build -o $@ ./examples/go/streamworker

$(BUILD)/wsworker: $(WORKERSRC) go.mod go.sum $(wildcard examples/go/wsworker/*.go)
	$(GO) build -o $@ ./examples/go/wsworker

$(BUILD)/zmq-gateway: $(ZMQPC) $(GOSRC) $(shell find gateway -name '*.go' -not -name '*_test.go')
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $@ ./gateway/cmd/zmq-gateway

# Installs the module and the library in Apache's module directory (the
# library where ZmqLibrary looks by default: $(LIBRARY), compiled into
# mod_zmq.so), zmq-gateway in $(BINDIR) and, where Apache has Debian's
# mods-available (MODSDIR= to skip it), zmq.load and zmq.conf for a2enmod.
# Every file goes under $(DESTDIR); uninstall removes the same files.
# `make deb` builds Debian packages instead (debian/, README.md "Install").
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MODSDIR ?= $(if $(wildcard $(SYSCONF)/mods-available/.),$(SYSCONF)/mods-available)
INSTALLED = $(LIBEXEC)/mod_zmq.so $(LIBRARY) $(BINDIR)/zmq-gateway \
	$(if $(MODSDIR),$(MODSDIR)/zmq.load $(MODSDIR)/zmq.conf)
NEED_LIBEXEC = @test -n "$(LIBEXEC)" || { echo "$@: '$(APXS) -q LIBEXECDIR' says nothing: install apache2-dev" >&2; exit 1; }
install: $(BUILD)/mod_zmq.so $(BUILD)/libmodzmq.so $(BUILD)/zmq-gateway
	$(NEED_LIBEXEC)
	install -D -m 0644 $(BUILD)/mod_zmq.so $(DESTDIR)$(LIBEXEC)/mod_zmq.so
	install -D -m 0644 $(BUILD)/libmodzmq.so $(DESTDIR)$(LIBRARY)
	install -D -m 0755 $(BUILD)/zmq-gateway $(DESTDIR)$(BINDIR)/zmq-gateway
	$(if $(MODSDIR),install -D -m 0644 conf/zmq.load $(DESTDIR)$(MODSDIR)/zmq.load)
	$(if $(MODSDIR),install -D -m 0644 conf/zmq.conf $(DESTDIR)$(MODSDIR)/zmq.conf)
	@echo $(if $(MODSDIR),"installed: enable with a2enmod zmq and reload Apache","installed: load it with LoadModule zmq_module $(LIBEXEC)/mod_zmq.so")

# Refuses while a2enmod's link to zmq.load exists: Apache would not start
# with it dangling.
uninstall:
	$(NEED_LIBEXEC)
	@if [ -n "$(MODSDIR)" ] && [ -L "$(DESTDIR)$(dir $(MODSDIR))mods-enabled/zmq.load" ]; then \
		echo "uninstall: zmq is enabled: run a2dismod zmq first" >&2; exit 1; fi
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

# libapache2-mod-zmq and zmq-gateway .deb files in $(BUILD)/deb, made by
# dpkg-buildpackage from a copy of the tree, versioned from git
# (debian/build.sh). ./test/deps.sh deb installs the Debian tools it needs.
deb:
	./debian/build.sh $(BUILD)/deb

demo: deps all
	PORT=$(PORT) ./examples/demo.sh

test: deps all
	$(GO) vet $(TESTTAGS) ./...
	$(GO) test $(TESTTAGS) -race -count=1 ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=100000x

# Side-by-side throughput of mod_zmq and the alternatives (docs/BENCHMARKS.md).
BENCHFLAGS ?=
bench: deps all $(BUILD)/bench-peer $(BUILD)/modzmq-bench
	@./test/deps.sh bench
	$(BUILD)/modzmq-bench $(BENCHFLAGS)

$(BUILD)/bench-peer: $(ZMQPC) $(WORKERSRC) go.mod go.sum $(wildcard test/bench/peer/*.go)
	$(GO) build -o $@ ./test/bench/peer

$(BUILD)/modzmq-bench: $(ZMQPC) $(wildcard test/bench/*.go)
	$(GO) build -o $@ ./test/bench

# Each fuzz target for FUZZTIME. An execution count rather than a duration
# sidesteps Go 1.26's spurious "context deadline exceeded" at the end of a
# timed run (golang/go#75804); crashers land in testdata/fuzz/ and must be
# committed as regression inputs. make test runs 100000x of each (about 12
# seconds a target, 2.5 minutes in all, which keeps .ci/run within its 20
# minutes); every go test run replays the committed corpus.
FUZZTIME ?= 2000000x
FUZZ_TARGETS := FuzzFastDecode:./mod_zmq/relay FuzzFastEncode:./mod_zmq/relay FuzzZMTPFrames:./mod_zmq/relay FuzzWSFast:./mod_zmq/relay FuzzStreamKind:./mod_zmq/relay FuzzCurveOpen:./bridge FuzzZMTPTransport:./bridge FuzzDecodeReply:./bridge FuzzRequestRoundTrip:./bridge FuzzParseHeaderLines:./bridge FuzzParser:./gateway/stream FuzzReader:./internal/wsproto FuzzReader:./worker FuzzGreeting:./worker
fuzz: $(ZMQPC)
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*} ($(FUZZTIME))"; \
		$(GO) test $(TESTTAGS) -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) $${t#*:} || exit 1; \
	done

# The fuzz targets that reach the C of mod_zmq/relay (fast.c, zmtp.c, zmqio.c, wsfast.c),
# each for ASAN_FUZZTIME under AddressSanitizer (go test -asan, which also
# checks for leaks at exit) and UBSan (-fsanitize=undefined through
# CGO_CFLAGS, for every cgo package the test links). A sanitizer report ends
# the process and fails the target. A fuzzing run does not show a worker's
# report, so a failed target is re-run on its corpus, the crasher it wrote to
# testdata/fuzz/ included, to print it (with symbols: go test strips them by
# default). -asan makes fuzzing slow (FuzzFastDecode: about 100 executions a
# second against thousands), hence the small count, which keeps .ci/run within
# its 20 minutes (the five take about four); a longer run:
# make fuzz-asan ASAN_FUZZTIME=100000x. Add a target as Name:package.
ASAN_FUZZTIME ?= 7000x
ASAN_FUZZ_TARGETS := FuzzFastDecode:./mod_zmq/relay FuzzFastEncode:./mod_zmq/relay FuzzZMTPFrames:./mod_zmq/relay FuzzWSFast:./mod_zmq/relay FuzzStreamKind:./mod_zmq/relay
ASAN_ENV := CGO_CFLAGS='-O1 -g -fno-omit-frame-pointer -fsanitize=undefined -fno-sanitize-recover=undefined' \
	CGO_LDFLAGS='-fsanitize=undefined' \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=halt_on_error=1:detect_leaks=1
fuzz-asan: $(ZMQPC)
	@for t in $(ASAN_FUZZ_TARGETS); do \
		echo "fuzz-asan $${t%%:*} ($(ASAN_FUZZTIME))"; \
		$(ASAN_ENV) $(GO) test $(TESTTAGS) -asan -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(ASAN_FUZZTIME) $${t#*:} || { \
			$(ASAN_ENV) $(GO) test $(TESTTAGS) -asan -ldflags='-s=false -w=false' -count=1 -run "^$${t%%:*}$$" $${t#*:}; exit 1; }; \
	done

clean:
	rm -rf $(BUILD)
