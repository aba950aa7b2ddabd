#!/bin/bash
# Creates a Debian 13 (trixie) root with Kamailio 6.0 and the tools to build
# sersync's module in it (make SER_ROOT=DIR), outside the work tree; about
# 400 MB. Idempotent: a root that is complete (its stamp file exists) is
# reused as it is. Prints the root's path on stdout.
#
#   .ci/debian13-root.sh [DIR]
#
# DIR defaults to $SERSYNC_DEBIAN13_ROOT, else /var/cache/sersync/debian13.
# Needs root (debootstrap, chroot) and the Debian mirror apt already uses.
set -euo pipefail
root=${1:-${SERSYNC_DEBIAN13_ROOT:-/var/cache/sersync/debian13}}
stamp=$root/.sersync-root
here=$(cd "$(dirname "$0")" && pwd)

if [ -f "$stamp" ]; then
	echo "$root"
	exit 0
fi
[ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, chroot)" >&2; exit 1; }
# one maker at a time (two worktrees' `make test`); the second reuses
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
if [ -f "$stamp" ]; then
	echo "$root"
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null; then
	apt-get install -y -q --no-install-recommends debootstrap >&2 || {
		apt-get update -q >&2
		apt-get install -y -q --no-install-recommends debootstrap >&2
	}
fi

# the mirror the host's apt uses (deb822 sources, else sources.list)
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' \
	/etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ \
	{ print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

# built in DIR.tmp, renamed when complete: a DIR without the stamp is not
# one of ours, and is left alone
if [ -e "$root" ]; then
	echo "$0: $root exists but was not made by this script (no" \
		"$stamp): remove it or choose another DIR" >&2
	exit 1
fi
# a half-made root of an interrupted run is started again (the mounts of
# in-root.sh live in their own namespace: nothing here to unmount)
tmp=$root.tmp
rm -rf --one-file-system "$tmp"
debootstrap --variant=minbase trixie "$tmp" "$mirror" >&2

# no service starts inside the root (kamailio's postinst would start one)
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 0755 "$tmp/usr/sbin/policy-rc.d"
cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb deb-src
URIs: $mirror
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
rm -f "$tmp/etc/apt/sources.list"
cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true

bash "$here/in-root.sh" "$tmp" sh -ec '
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends \
		kamailio kamailio-sqlite-modules kamailio-extra-modules \
		gcc make bison flex pkg-config libsqlite3-dev dpkg-dev \
		ca-certificates
	apt-get clean
' >&2

date -u +%FT%TZ >"$tmp/.sersync-root"
mv "$tmp" "$root"
echo "$root"
