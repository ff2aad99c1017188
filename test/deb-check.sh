#!/bin/sh
# The Debian packages end to end on this machine, as root (.ci/run runs it
# after make test): make deb; lintian with no errors; zmq-gateway with the
# libzmq of libzmq/build.sh inside, not the system's; both packages
# installed into the machine's Apache; a request through the installed
# module on a test port to examples/python/echo.py; apache2ctl graceful; the
# request again; the installed zmq-gateway as its system user, its access
# log rotated by the packaged logrotate file and reopened on SIGHUP; then
# both packages purged, and nothing of them left. Apache, its configuration and
# the set of installed packages end as they were, on failure too. The
# system user zmq-gateway stays after the purge, as Debian policy has it.
set -eu
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" = 0 ] || { echo "deb-check: run as root: it installs packages into this machine's Apache" >&2; exit 1; }

PKGS="libapache2-mod-zmq zmq-gateway"
PIDFILE=/var/run/apache2/apache2.pid
CONF=/etc/apache2/conf-available/zmq-deb-check.conf
start=$(date +%s) last=$start
tmp=$(mktemp -d)
worker="" gw="" started=0 installed=0 was_running=0 newdirs=""

say() { echo "deb-check: $*"; }
fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
lap() { now=$(date +%s); say "$1: $((now - last)) s"; last=$now; }
apache_up() { [ -s $PIDFILE ] && kill -0 "$(cat $PIDFILE)" 2>/dev/null; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pkg_present() { dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null | grep -qv '^not-installed$'; }

# What a purge must give back: the packages, and the names in the places
# the packages and their maintainer scripts write to (/etc without the
# shadow files' backups, which adduser may create; and without the empty
# state directories apache2's a2enmod and a2enconf make the first time each
# runs in a mode, such as disabled_by_maint on the first package purge: the
# markers in them, files, are compared).
state() {
	dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\n'
	find /etc /var/lib/apache2 /var/lib/systemd /lib/systemd/system /usr/lib/apache2 /usr/bin \
		/usr/share/doc /usr/share/man /var/log/zmq-gateway -printf '%p %y %m\n' 2>/dev/null |
		grep -v -E '^/etc/(passwd|group|shadow|gshadow|subuid|subgid)- |^/etc/\.pwd\.lock ' |
		grep -v -E '^/var/lib/apache2/(conf|module|site)/(en|dis)abled_by_(admin|maint) d ' | sort
}

cleanup() {
	set +e
	[ -z "$gw" ] || { kill "$gw"; wait "$gw"; } 2>/dev/null
	gw=""
	if [ -e $CONF ]; then
		a2disconf -q -p zmq-deb-check # -p: and forget it was disabled
		rm -f $CONF
	fi
	if [ $started = 1 ]; then
		apache2ctl stop
		i=0
		while apache_up && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
		started=0
	fi
	[ -z "$worker" ] || { kill "$worker"; wait "$worker"; } 2>/dev/null
	worker=""
	if [ $installed = 1 ]; then
		for p in $PKGS; do
			! pkg_present $p || dpkg --purge $p
		done
		installed=0
		[ $was_running = 0 ] || apache2ctl graceful
	fi
	rm -rf $newdirs # apache2ctl, which the maintainer scripts run too, made them
}
trap 'cleanup; rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM HUP

./test/deps.sh deb
for p in $PKGS; do
	! pkg_present $p || fail "$p is installed already: purge it first (dpkg --purge $p)"
done
for f in /usr/lib/apache2/modules/mod_zmq.so /usr/lib/apache2/modules/libmodzmq.so \
	/etc/apache2/mods-available/zmq.load /etc/apache2/mods-available/zmq.conf /usr/bin/zmq-gateway $CONF; do
	[ ! -e $f ] || fail "$f exists (make install?): remove it first, the packages would take it over"
done
if apache_up; then was_running=1; fi
newdirs=""
for d in /var/run/apache2 /var/lock/apache2; do [ -e $d ] || newdirs="$newdirs $d"; done
lap "checks"

make deb
lap "make deb"
lintian --fail-on error build/deb/*.changes || fail "lintian reports errors (above)"
lap "lintian"
# zmq-gateway carries libzmq/build.sh's libzmq, not the system's.
gwdeb=$(ls build/deb/zmq-gateway_*.deb)
dpkg-deb -x "$gwdeb" "$tmp/gw"
! readelf -d "$tmp/gw/usr/bin/zmq-gateway" | grep -q 'libzmq\.so' ||
	fail "the packaged zmq-gateway loads the system's libzmq: $(readelf -d "$tmp/gw/usr/bin/zmq-gateway" | grep libzmq)"
! dpkg-deb -f "$gwdeb" Depends | grep -q libzmq ||
	fail "zmq-gateway depends on the system's libzmq: $(dpkg-deb -f "$gwdeb" Depends)"

state >"$tmp/before"
installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	./build/deb/libapache2-mod-zmq_*.deb ./build/deb/zmq-gateway_*.deb
dpkg -L $PKGS >"$tmp/files"
[ -L /etc/apache2/mods-enabled/zmq.load ] || fail "a2enmod zmq did not happen on installation"
getent passwd zmq-gateway >/dev/null || fail "no system user zmq-gateway"
[ "$(stat -c %U /var/log/zmq-gateway)" = zmq-gateway ] || fail "/var/log/zmq-gateway is not zmq-gateway's"
zmq-gateway -check -config /etc/zmq-gateway/zmq-gateway.yaml
man -w zmq-gateway >/dev/null && man -w 8 mod_zmq >/dev/null || fail "man pages missing"
if command -v systemd-analyze >/dev/null; then
	systemd-analyze verify --man=no /lib/systemd/system/zmq-gateway.service \
		/lib/systemd/system/zmq-gateway-broker.service || fail "systemd-analyze verify: the units are wrong"
else
	say "no systemd-analyze: the units are not verified"
fi
logrotate -d /etc/logrotate.d/zmq-gateway 2>"$tmp/logrotate" || { cat "$tmp/logrotate" >&2; fail "logrotate -d"; }
lap "install"

# A worker, and a test port with the worker behind it in the machine's Apache.
wport=$(free_port) hport=$(free_port) gport=$(free_port)
/usr/bin/python3 examples/python/echo.py --bind tcp://127.0.0.1:$wport --name deb-check >"$tmp/worker.log" 2>&1 &
worker=$!
cat >$CONF <<EOF
# test/deb-check.sh: removed when it ends.
Listen 127.0.0.1:$hport
<VirtualHost 127.0.0.1:$hport>
	<Location /deb-check>
		SetHandler zmq
		ZmqBackend tcp://127.0.0.1:$wport
		ZmqTimeout 10
	</Location>
</VirtualHost>
EOF
a2enconf -q zmq-deb-check
apache2ctl configtest
elog=/var/log/apache2/error.log
seen=$(cat $elog 2>/dev/null | wc -l)
if [ $was_running = 1 ]; then
	apache2ctl graceful
else
	started=1
	apache2ctl start
fi

# get URL TARGET: polls for 30 s until URL answers 200 with the echo
# worker's JSON for TARGET.
get() {
	i=0
	while :; do
		code=$(curl -sS -o "$tmp/body" -w '%{http_code}' --max-time 15 "$1" 2>"$tmp/curl") || code=000
		if [ "$code" = 200 ] && /usr/bin/python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if d["target"] == sys.argv[2] and d["worker"] == "deb-check" else 1)' "$tmp/body" "$2" 2>/dev/null; then
			say "$1: 200 from the worker"
			return 0
		fi
		i=$((i + 1))
		if [ $i -ge 150 ]; then
			cat "$tmp/curl" "$tmp/body" >&2 2>/dev/null
			tail -20 $elog >&2
			fail "$1: $code, not the worker's answer"
		fi
		sleep 0.2
	done
}
get "http://127.0.0.1:$hport/deb-check/hello" /deb-check/hello
restarts=$(grep -c AH00493 $elog || true)
apache2ctl graceful
i=0
until [ "$(grep -c AH00493 $elog || true)" -gt "$restarts" ]; do
	i=$((i + 1)); [ $i -lt 100 ] || fail "apache2ctl graceful: no graceful restart in the error log"
	sleep 0.2
done
get "http://127.0.0.1:$hport/deb-check/again" /deb-check/again
if tail -n +$((seen + 1)) $elog | grep -E '\[zmq:(error|crit|alert|emerg)\]' >&2; then
	fail "mod_zmq logged errors (above)"
fi

# The installed gateway as its unit runs it, with the packaged configuration
# on a test port and the worker; then the packaged logrotate file, and the
# SIGHUP its postrotate sends through systemctl reload: the gateway logs
# to a new access.log.
sed -e "s|^listen: .*|listen: 127.0.0.1:$gport|" -e "s|tcp://127.0.0.1:5555|tcp://127.0.0.1:$wport|" \
	/etc/zmq-gateway/zmq-gateway.yaml >"$tmp/gateway.yaml"
chmod 755 "$tmp"
chmod 644 "$tmp/gateway.yaml"
setpriv --reuid=zmq-gateway --regid=zmq-gateway --init-groups \
	/usr/bin/zmq-gateway -config "$tmp/gateway.yaml" &
gw=$!
alog=/var/log/zmq-gateway/access.log
get "http://127.0.0.1:$gport/gw" /gw
grep -q 'GET /gw ' $alog || fail "$alog does not log GET /gw"
logrotate -f -s "$tmp/logrotate.state" /etc/logrotate.d/zmq-gateway
grep -q 'GET /gw ' $alog.1 || fail "logrotate did not rotate $alog"
kill -HUP $gw
get "http://127.0.0.1:$gport/gw2" /gw2
i=0
until grep -q 'GET /gw2 ' $alog 2>/dev/null; do
	i=$((i + 1)); [ $i -lt 50 ] || fail "after SIGHUP the gateway does not log to the new $alog"
	sleep 0.2
done
kill -0 $gw || fail "the gateway ended on SIGHUP"
lap "requests"

cleanup
lap "purge"

state >"$tmp/after"
left=""
while read -r f; do
	# Directories stay if something else uses them (/lib is a link to one).
	if { [ -f "$f" ] || [ -L "$f" ]; } && [ ! -d "$f" ]; then left="$left $f"; fi
done <"$tmp/files"
[ -z "$left" ] || fail "left after the purge:$left"
for f in /etc/apache2/mods-enabled/zmq.load /etc/apache2/mods-available/zmq.load /etc/zmq-gateway \
	/var/log/zmq-gateway /etc/default/zmq-gateway-broker; do
	[ ! -e $f ] || fail "$f is left after the purge"
done
diff -u "$tmp/before" "$tmp/after" || fail "the purge did not give back what the installation changed (diff above)"
say "the system user zmq-gateway stays after the purge (Debian policy); nothing else is left"
say "total: $(($(date +%s) - start)) s"
