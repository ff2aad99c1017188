#!/bin/sh
# Builds build/mod_zmq.so with apxs. apxs (libtool) writes its objects beside
# the sources, so the sources are copied into build/apxs first and the tree
# stays clean.
#   usage: apxs/build.sh APXS OUT DEFAULT_LIBRARY
set -eu
APXS=$1 OUT=$2 LIB=$3
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(dirname "$OUT")/apxs
rm -rf "$work"
mkdir -p "$work/golib"
cp "$top"/mod_zmq/*.c "$top"/mod_zmq/*.h "$work/"
cp "$top"/mod_zmq/golib/modzmq.h "$work/golib/"
cd "$work"
"$APXS" -c -n zmq -o mod_zmq.la \
	-Wc,-Wall -Wc,-Wextra -Wc,-Wno-unused-parameter -Wc,-Werror \
	"-Wc,-DMODZMQ_DEFAULT_LIBRARY=\\\"$LIB\\\"" \
	mod_zmq.c modzmq_config.c modzmq_loader.c modzmq_handler.c modzmq_status.c >build.log 2>&1 || { cat build.log; exit 1; }
grep -i 'warning' build.log || true
cd - >/dev/null
# A new file renamed into place, not the old one rewritten: an Apache still
# running the old build/mod_zmq.so (a test, make bench) keeps its mapping.
cp "$work/.libs/mod_zmq.so" "$OUT.new" && mv -f "$OUT.new" "$OUT"
