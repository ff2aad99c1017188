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
GOSRC   := $(shell find bridge mod_zmq/golib -name '*.go' -not -name '*_test.go') go.mod go.sum
CSRC    := $(wildcard mod_zmq/*.c mod_zmq/*.h) mod_zmq/golib/modzmq.h apxs/build.sh

.PHONY: all deps install demo test fuzz bench clean
all: $(BUILD)/mod_zmq.so $(BUILD)/libmodzmq.so $(BUILD)/go-worker $(BUILD)/brokerworker $(BUILD)/zmq-gateway

deps:
	@./test/deps.sh

$(BUILD)/mod_zmq.so: $(CSRC)
	@mkdir -p $(BUILD)
	./apxs/build.sh $(APXS) $@ $(LIBRARY)

$(BUILD)/libmodzmq.so: $(GOSRC)
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -buildmode=c-shared -o $@ ./mod_zmq/golib
	@rm -f $(BUILD)/libmodzmq.h

$(BUILD)/go-worker: $(GOSRC) $(wildcard examples/go/worker/*.go)
	$(GO) build -o $@ ./examples/go/worker

$(BUILD)/brokerworker: $(wildcard examples/go/brokerworker/*.go)
	$(GO) build -o $@ ./examples/go/brokerworker

$(BUILD)/zmq-gateway: $(GOSRC) $(shell find gateway -name '*.go' -not -name '*_test.go')
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $@ ./gateway/cmd/zmq-gateway

# Installs the module and the library where ZmqLibrary looks by default, and on
# Debian the a2enmod files (then: a2enmod zmq && systemctl reload apache2).
install: all
	$(APXS) -i -n zmq $(BUILD)/mod_zmq.so
	install -D -m 0755 $(BUILD)/zmq-gateway $(DESTDIR)/usr/local/bin/zmq-gateway
	$(APXS) -i -n libmodzmq $(BUILD)/libmodzmq.so
	@if [ -d $(DESTDIR)$(SYSCONF)/mods-available ]; then \
		install -m 0644 conf/zmq.load conf/zmq.conf $(DESTDIR)$(SYSCONF)/mods-available/ && \
		echo "installed $(SYSCONF)/mods-available/zmq.{load,conf}: run a2enmod zmq"; \
	fi

demo: deps all
	PORT=$(PORT) ./examples/demo.sh

test: deps all
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=200000x

# Each fuzz target for FUZZTIME. An execution count (200000x) rather than a
# duration sidesteps Go 1.26's spurious "context deadline exceeded" at the end
# of a timed run (golang/go#75804); crashers land in testdata/fuzz/ and must
# be committed as regression inputs.
# Side-by-side throughput of mod_zmq and the alternatives (docs/BENCHMARKS.md).
BENCHFLAGS ?=
bench: deps all $(BUILD)/bench-peer $(BUILD)/modzmq-bench
	@./test/deps.sh bench
	$(BUILD)/modzmq-bench $(BENCHFLAGS)

$(BUILD)/bench-peer: $(wildcard test/bench/peer/*.go)
	$(GO) build -o $@ ./test/bench/peer

$(BUILD)/modzmq-bench: $(wildcard test/bench/*.go)
	$(GO) build -o $@ ./test/bench

FUZZTIME ?= 2000000x
FUZZ_TARGETS := FuzzFastDecode:./mod_zmq/golib FuzzZMTPFrames:./mod_zmq/golib FuzzZMTPTransport:./bridge FuzzDecodeReply:./bridge FuzzRequestRoundTrip:./bridge FuzzParseHeaderLines:./bridge FuzzParser:./gateway/stream
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*} ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) $${t#*:} || exit 1; \
	done

clean:
	rm -rf $(BUILD)
