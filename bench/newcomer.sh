#!/bin/bash
# Checks the README's two commands as a newcomer meets them: a fresh
# Debian 12 (bookworm) machine with nothing installed and no Rust, the
# project's files, and nothing else. Runs them, exactly as the README's
# first lines give them, in a fresh bookworm root (debootstrap, minbase)
# through .ci/in-root.sh, and prints how long each took and whether it
# passed. Not part of the test command (it builds everything from nothing:
# about half an hour here for both).
#
#   bash bench/newcomer.sh [--first-only] [--keep] [DIR]
#
# --first-only runs only the first command (setup + demo). DIR (default
# /var/tmp/sersync-newcomer) holds a pristine bookworm root, made once and
# reused, and the run's copy of it, removed at the end unless --keep.
# The root shares this machine's network and /tmp: the demo and the tests
# take the same machine lock as the host's (/tmp/sersync-e2e.lock).
# Needs root, debootstrap, and the Debian mirror apt already uses.
set -euo pipefail
cd "$(dirname "$0")/.."
first_only=
keep=
while [ $# -gt 0 ]; do
	case $1 in
	--first-only) first_only=yes; shift ;;
	--keep) keep=yes; shift ;;
	*) break ;;
	esac
done
dir=${1:-/var/tmp/sersync-newcomer}
[ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null ||
	apt-get install -y -q --no-install-recommends debootstrap >&2
mkdir -p "$dir"
base=$dir/bookworm
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' \
	/etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}

if [ ! -f "$base/.pristine" ]; then
	rm -rf --one-file-system "$base"
	debootstrap --variant=minbase bookworm "$base" "$mirror" >&2
	# the sources of an installed bookworm machine (deb822, with the
	# security archive and updates), not debootstrap's one-line list
	rm -f "$base/etc/apt/sources.list"
	cat >"$base/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	# no service starts inside the root (kamailio's postinst would start one)
	printf '#!/bin/sh\nexit 101\n' >"$base/usr/sbin/policy-rc.d"
	chmod 0755 "$base/usr/sbin/policy-rc.d"
	touch "$base/.pristine"
fi

run=$dir/run
rm -rf --one-file-system "$run"
cp -a "$base" "$run"
cleanup() {
	[ -n "$keep" ] || rm -rf --one-file-system "$run"
}
trap cleanup EXIT
cp /etc/resolv.conf "$run/etc/resolv.conf" 2>/dev/null || true
# this machine's own certificate authorities (a proxy between it and the
# registries, say): installed where Debian's ca-certificates, which the
# setup installs, takes local ones from, as on this machine
if [ -d /usr/local/share/ca-certificates ]; then
	mkdir -p "$run/usr/local/share/ca-certificates"
	cp -a /usr/local/share/ca-certificates/. "$run/usr/local/share/ca-certificates/"
fi
# the project's committed files, as a clone has them
mkdir -p "$run/root/sersync"
git archive HEAD | tar -x -C "$run/root/sersync"
commit=$(git rev-parse --short HEAD)

# the README's commands, read from it (the first two lines of its first
# sh block), so that this checks what the README says
mapfile -t cmds < <(awk '/^```sh/ { inblock = 1; next } /^```/ { if (inblock) exit }
	inblock { sub(/[ \t]+#.*/, ""); print }' README.md | head -2)
[ ${#cmds[@]} = 2 ] || { echo "$0: no two commands at the top of README.md" >&2; exit 1; }
[ -n "$first_only" ] && cmds=("${cmds[0]}")

echo "newcomer check of $commit in a fresh Debian 12 root ($run)"
status=0
for c in "${cmds[@]}"; do
	log=$dir/$(echo "$c" | tr -c 'a-z0-9' _ | cut -c1-40).log
	t0=$(date +%s)
	# no rustup toolchain, no cargo on the PATH: a machine without Rust
	# the host's /tmp: its /tmp/sersync-e2e.lock keeps the demo and the
	# tests off the addresses another sersync cluster on this machine uses
	if bash .ci/in-root.sh "$run" --bind /tmp env -i HOME=/root TERM=dumb \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		bash -c "cd /root/sersync && $c" >"$log" 2>&1; then
		result=passed
	else
		result="FAILED (exit $?)"
		status=1
	fi
	echo "  \`$c\`: $result in $(($(date +%s) - t0)) s (log: $log)"
	[ $status = 0 ] || { tail -20 "$log"; break; }
done
exit $status
