#!/bin/sh
# Builds the Debian packages of debian/control into OUT (`make deb`) with
# dpkg-buildpackage, from a copy of the tree's files (tracked and new, not
# ignored): the tree stays clean and the .deb files land in OUT. The version
# and debian/changelog come from git: the nearest tag vX.Y.Z gives X.Y.Z
# (X.Y.Z+gitYYYYMMDD.N.HASH N commits past it); without a tag
# 0.0~gitYYYYMMDD.HASH (the commit's date, UTC); +dirty when tracked files
# have changes.
#   usage: debian/build.sh OUT
set -eu
out=$1
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH="$PATH:/usr/local/go/bin"
git rev-parse --verify -q HEAD >/dev/null 2>&1 ||
	{ echo "deb: $top is not a git checkout: the version comes from git" >&2; exit 1; }
for tool in dpkg-buildpackage dh dh_apache2 apxs go; do
	command -v $tool >/dev/null ||
		{ echo "deb: $tool is missing: ./test/deps.sh deb (as root) installs what make deb needs" >&2; exit 1; }
done

hash=$(git rev-parse --short=7 HEAD)
date=$(TZ=UTC git log -1 --date=format-local:%Y%m%d --format=%cd)
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
	version=$(printf '%s' "${tag#v}" | tr -- - '~')
	n=$(git rev-list --count "$tag..HEAD")
	[ "$n" = 0 ] || version="$version+git$date.$n.$hash"
else
	version="0.0~git$date.$hash"
fi
[ -z "$(git status --porcelain --untracked-files=no)" ] || version="$version+dirty"

src="$out/mod-zmq-$version"
rm -rf "$out"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard |
	tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$src"

maintainer=$(sed -n 's/^Maintainer: //p' debian/control)
{
	echo "mod-zmq ($version) unstable; urgency=medium"
	echo
	echo "  * Built from git commit $(git rev-parse HEAD)."
	echo
	echo " -- $maintainer  $(git log -1 --format=%cD)"
} >"$src/debian/changelog"

# The caller's Go caches and libzmq/build.sh's downloads: the build needs
# no download that make has not already done (debian/rules keeps its own in
# the tree without them).
GOCACHE=${GOCACHE:-$(go env GOCACHE)}
GOMODCACHE=${GOMODCACHE:-$(go env GOMODCACHE)}
MODZMQ_DOWNLOADS=${MODZMQ_DOWNLOADS:-${XDG_CACHE_HOME:-$HOME/.cache}/mod_zmq}
export GOCACHE GOMODCACHE MODZMQ_DOWNLOADS
(cd "$src" && dpkg-buildpackage --build=binary --no-sign)
rm -rf "$src"
echo "deb: $out:"
ls -1 "$out"
