#!/bin/sh
# Installs what building, testing and the demo need, or says exactly what to
# run. Debian/Ubuntu packages; Go from https://go.dev/dl (1.26 or newer).
set -eu
missing=""
need() { # need PACKAGE TEST-COMMAND...
	pkg=$1; shift
	"$@" >/dev/null 2>&1 || missing="$missing $pkg"
}
need apache2       test -x /usr/sbin/apache2
need apache2-dev   command -v apxs
need apache2-utils command -v ab
need libzmq3-dev   pkg-config --exists libzmq
need pkg-config    command -v pkg-config
need python3-zmq   /usr/bin/python3 -c 'import zmq'
need python3-websockets /usr/bin/python3 -c 'import websockets' # a WebSocket client of the tests
need npm           command -v npm # installs the Node.js clients of test/node
need curl          command -v curl
need gcc           command -v gcc
# libzmq/build.sh: the libzmq that zmq-gateway links, from Debian's source.
need g++           command -v g++
need cmake         command -v cmake
need libsodium-dev pkg-config --exists libsodium
need patch         command -v patch
need xz-utils      command -v xz
need iproute2      command -v ip
need chromium      command -v chromium
need openssl       command -v openssl
need prometheus    command -v promtool # promtool checks the metrics pages
need gdb           command -v gdb # shows where an Apache child that does not stop is stuck
if [ "${1:-}" = bench ]; then
	need wrk           command -v wrk
	need mongrel2-core command -v mongrel2
	need util-linux    command -v taskset
	# Pushpin (GRIP) anchors the streaming benchmark; condure is its HTTP
	# front (pushpin's dependency is "condure | mongrel2-core", and
	# mongrel2-core, installed above, would satisfy it without condure).
	need pushpin       command -v pushpin
	need condure       test -x /usr/bin/condure
fi
if [ "${1:-}" = deb ]; then
	# make deb and test/deb-check.sh: Debian's packaging tools.
	need dpkg-dev      command -v dpkg-buildpackage
	need debhelper     command -v dh
	need dh-apache2    command -v dh_apache2
	need lintian       command -v lintian
	need logrotate     command -v logrotate
fi

if [ -n "$missing" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "deps: installing$missing"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
	else
		echo "deps: missing Debian packages:$missing" >&2
		echo "deps: run: sudo apt-get update && sudo apt-get install -y$missing" >&2
		exit 1
	fi
fi
# The Node.js WebSocket client (ws) the tests run, from test/node/package.json.
if [ ! -d "$(dirname "$0")/node/node_modules/ws" ]; then
	(cd "$(dirname "$0")/node" && npm install --no-audit --no-fund --no-package-lock --silent)
fi
if ! command -v go >/dev/null; then
	echo "deps: Go is not on PATH: install Go 1.26+ from https://go.dev/dl into /usr/local/go" >&2
	exit 1
fi
