#!/bin/sh
# Builds the libzmq that zmq-gateway links (make does it first; LIBZMQ=system
# builds against the system's libzmq instead): Debian 12's libzmq 4.3.4, its
# source and its patches, with one compile-time constant changed, as a static
# archive in OUT, and OUT/cgo/libzmq.pc for cgo (PKG_CONFIG_PATH=OUT/cgo).
#
# The constant is message_pipe_granularity (src/config.hpp): how many
# messages each chunk of a pipe's queue holds. Every connection of a
# ZMQ_STREAM socket has two pipes, and each allocates a first chunk when it
# is made; at 256 messages of 64 bytes a chunk is 16 KiB, of which an idle
# connection touches the first page of each. At 8 a chunk is 512 bytes and
# shares its page. libzmq keeps 7.1 KiB less per connection (17.7 → 10.6
# KiB; docs/BENCHMARKS.md, "Stream mode's memory"); a pipe allocates a
# chunk every 8 messages instead of every 256, and keeps one spare, which
# request/reply (12 B and 64 KiB bodies) and WebSocket messages through
# stream mode do not show (the same section).
#
# The downloads are checked against the SHA-256 sums below and kept in
# MODZMQ_DOWNLOADS (default ~/.cache/mod_zmq), so a second build needs no
# network. CFLAGS and CXXFLAGS from the environment reach the compiler
# (debian/rules passes Debian's hardening flags).
#   usage: libzmq/build.sh OUT
set -eu
out=$(mkdir -p "$1" && cd "$1" && pwd)
pool=https://deb.debian.org/debian/pool/main/z/zeromq3
orig=zeromq3_4.3.4.orig.tar.gz
orig_sha256=0ff5a531c9ffaf0dfdc7dc78d13d1383088f454896d252934c429b2554d10559
debian=zeromq3_4.3.4-6.debian.tar.xz
debian_sha256=fbb0dcb4ffbf483d416d9af722db74ad4edd7004625ce10381e8cd3a71b6cd58
granularity=8

for tool in cmake c++ curl patch xz pkg-config; do
	command -v $tool >/dev/null ||
		{ echo "libzmq: $tool is missing: ./test/deps.sh (as root) installs what the build needs" >&2; exit 1; }
done
pkg-config --exists libsodium ||
	{ echo "libzmq: libsodium (CURVE) is missing: apt-get install libsodium-dev" >&2; exit 1; }

downloads=${MODZMQ_DOWNLOADS:-${XDG_CACHE_HOME:-$HOME/.cache}/mod_zmq}
mkdir -p "$downloads"
fetch() { # fetch FILE SHA256
	if ! echo "$2  $downloads/$1" | sha256sum -c --status 2>/dev/null; then
		echo "libzmq: downloading $pool/$1"
		curl -fsSL --retry 3 -o "$downloads/$1.part" "$pool/$1" ||
			{ echo "libzmq: cannot download $pool/$1 (or build with make LIBZMQ=system)" >&2; exit 1; }
		echo "$2  $downloads/$1.part" | sha256sum -c --status ||
			{ echo "libzmq: $1 does not have the SHA-256 libzmq/build.sh expects" >&2; exit 1; }
		mv "$downloads/$1.part" "$downloads/$1"
	fi
}
fetch $orig $orig_sha256
fetch $debian $debian_sha256

src=$out/src
rm -rf "$src" "$out/obj" "$out/lib" "$out/include" "$out/cgo"
mkdir -p "$src"
tar -xzf "$downloads/$orig" -C "$src" --strip-components=1
tar -xJf "$downloads/$debian" -C "$src"
for p in $(cat "$src/debian/patches/series"); do
	patch -s -p1 -d "$src" <"$src/debian/patches/$p"
done
sed -i "s/message_pipe_granularity = 256,/message_pipe_granularity = $granularity,/" "$src/src/config.hpp"
grep -q "message_pipe_granularity = $granularity," "$src/src/config.hpp" ||
	{ echo "libzmq: src/config.hpp has no message_pipe_granularity = 256 to change" >&2; exit 1; }

# Debian builds with libsodium for CURVE (zmq-gateway keygen, CURVE routes)
# and with PGM and NORM, which nothing here uses.
cmake -S "$src" -B "$out/obj" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$out" \
	-DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
	-DBUILD_SHARED=OFF -DBUILD_STATIC=ON -DBUILD_TESTS=OFF -DWITH_DOCS=OFF -DWITH_PERF_TOOL=OFF \
	-DENABLE_CPACK=OFF -DENABLE_DRAFTS=OFF -DWITH_LIBSODIUM=ON -DENABLE_CURVE=ON -DWITH_LIBBSD=OFF >"$out/cmake.log" 2>&1 ||
	{ tail -20 "$out/cmake.log" >&2; exit 1; }
cmake --build "$out/obj" -j "$(nproc)" >"$out/build.log" 2>&1 || { tail -20 "$out/build.log" >&2; exit 1; }
cmake --install "$out/obj" >>"$out/build.log" 2>&1 || { tail -20 "$out/build.log" >&2; exit 1; }

# cgo asks pkg-config without --static: name the archive and what it needs.
mkdir -p "$out/cgo"
cat >"$out/cgo/libzmq.pc" <<EOF
Name: libzmq
Description: libzmq 4.3.4 (Debian 4.3.4-6) with message_pipe_granularity = $granularity, static (libzmq/build.sh)
Version: 4.3.4
Cflags: -I$out/include
Libs: $out/lib/libzmq.a $(pkg-config --libs libsodium) -lstdc++ -lpthread -lm
EOF
echo "libzmq: $out/lib/libzmq.a"
