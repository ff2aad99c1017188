#!/bin/sh
# Runs the mod_zmq demo: a private Apache on 127.0.0.1:$PORT with two vhosts,
# the Python echo worker behind one.localhost/echo and the pure-Go worker
# behind two.localhost. Ctrl-C, SIGINT or SIGTERM stops everything it started.
# Run via `make demo` (PORT, ECHO_PORT and GO_PORT move it).
set -eu
# A shell started in the background from a script inherits SIGINT ignored,
# and an ignored signal cannot be trapped: start again with the defaults.
if [ -z "${DEMO_SIGNALS_RESET:-}" ] && env --default-signal=INT true 2>/dev/null; then
	DEMO_SIGNALS_RESET=1 exec env --default-signal=INT,TERM "$0" "$@"
fi
top=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-8080}
ECHO_PORT=${ECHO_PORT:-5555}
GO_PORT=${GO_PORT:-5556}
dir=$top/build/demo
mkdir -p "$dir"
chmod 755 "$dir"

# A port is free when it can be bound on 127.0.0.1 as a server binds it,
# with SO_REUSEADDR (connections of a demo just stopped, in TIME_WAIT, do
# not make it busy; a listener does). dash has no /dev/tcp.
busy() {
	/usr/bin/python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)' "$1"
}
for v in PORT ECHO_PORT GO_PORT; do
	eval p=\$$v
	case $p in
	'' | *[!0-9]*) echo "demo: $v=$p is not a port number" >&2; exit 2 ;;
	esac
	if busy "$p"; then
		echo "demo: port $p on 127.0.0.1 ($v) is in use by another program; choose another, e.g. make demo $v=$((p + 1000))" >&2
		exit 1
	fi
done

user=""
[ "$(id -u)" = 0 ] && user="User www-data
Group www-data"
sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$PORT|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" -e "s|@GO_PORT@|$GO_PORT|g" \
	-e "s|@MODULE@|$top/build/mod_zmq.so|g" -e "s|@LIBRARY@|$top/build/libmodzmq.so|g" \
	"$top/conf/demo/httpd.conf.in" | awk -v u="$user" '{ if ($0 == "@USER@") print u; else print }' >"$dir/httpd.conf"

pids=""
cleanup() {
	trap - INT TERM EXIT
	/usr/sbin/apache2 -f "$dir/httpd.conf" -k stop 2>/dev/null || true
	[ -n "$pids" ] && kill $pids 2>/dev/null || true
	echo "demo: stopped"
}
trap cleanup INT TERM EXIT

/usr/bin/python3 "$top/examples/python/echo.py" --bind "tcp://127.0.0.1:$ECHO_PORT" &
pids="$pids $!"
"$top/build/go-worker" -bind "tcp://127.0.0.1:$GO_PORT" -name go-worker >/dev/null &
pids="$pids $!"
# Apache starts once both workers listen, so its first connections succeed
# rather than log a retry.
tries=0
until busy "$ECHO_PORT" && busy "$GO_PORT"; do
	tries=$((tries + 1))
	if [ "$tries" -ge 50 ]; then
		echo "demo: the workers did not start listening on ports $ECHO_PORT and $GO_PORT within 10 s" >&2
		exit 1
	fi
	sleep 0.2
done
out=$(/usr/sbin/apache2 -f "$dir/httpd.conf" -t 2>&1) || { echo "$out" >&2; exit 1; }
/usr/sbin/apache2 -f "$dir/httpd.conf" -k start

cat <<MSG

mod_zmq demo is running on 127.0.0.1:$PORT  (config: $dir/httpd.conf)

  curl -i 'http://one.localhost:$PORT/echo/hello?name=world'       # Python REP worker
  curl -i -d 'some body' http://one.localhost:$PORT/echo/post       # body length and SHA-256
  curl -i http://two.localhost:$PORT/anything                       # pure-Go ROUTER worker

  logs: $dir/error_log  $dir/access_log
  Ctrl-C stops Apache and the workers.
MSG
tail -n 0 -f "$dir/error_log" &
pids="$pids $!"
wait
