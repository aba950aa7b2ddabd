#!/bin/bash
# Builds the Debian package kamailio-sersync-modules of a built sersync.so
# for the Kamailio installed where it runs (the host, or a Debian root
# through .ci/in-root.sh: `make deb [SER_ROOT=DIR]` runs it), in the style
# of Debian's own kamailio-*-modules packages: the module in Kamailio's
# module directory, Depends on exactly the installed kamailio package
# version (the module loads in no other), shared library dependencies from
# dpkg-shlibdeps, copyright, changelog, README and the module's reference
# (doc/sersync.md) in /usr/share/doc.
#
#   mkdeb.sh MODULE CRATES OUTDIR
#
# CRATES lists the Rust crates linked into the module ("name version
# (licence)" a line, from cargo tree), for the copyright file. Prints the
# path of the package.
set -euo pipefail
module=${1:?MODULE}
crates=${2:?CRATES}
outdir=${3:?OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
pkg=kamailio-sersync-modules

kversion=$(dpkg-query -W -f='${Version}' kamailio 2>/dev/null) || {
	echo "$0: kamailio is not installed here" >&2; exit 1; }
kupstream=${kversion%%-*}
kupstream=${kupstream#*:}
sversion=$(awk -F'"' '/^version = / && !v { v = $2 } END { print v }' \
	"$top/Cargo.toml")
# sersync's Debian revision (debian/changelog), then the Kamailio it is for
drev=$(sed -n '1s/^sersync (\([^)]*\)).*/\1/p' "$here/changelog")
[ "${drev%-*}" = "$sversion" ] || { echo "$0: debian/changelog is for" \
	"$drev, Cargo.toml says $sversion: add a changelog entry" >&2; exit 1; }
version=$drev+kamailio$kupstream
arch=$(dpkg --print-architecture)
# (no early exit in pipes: pipefail would take dpkg's SIGPIPE for a failure)
moddir=$(dpkg -L kamailio | awk '/\/kamailio\/modules\/tm\.so$/ && !m { m = $0 }
	END { print m }')
moddir=${moddir%/tm.so}
[ -n "$moddir" ] || { echo "$0: kamailio has no modules directory" >&2; exit 1; }
maintainer=${DEB_MAINTAINER:-sersync maintainers <sersync@localhost>}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tree=$stage/$pkg
doc=$tree/usr/share/doc/$pkg
install -d "$tree/DEBIAN" "$tree$moddir" "$doc"
install -m 0644 "$module" "$tree$moddir/sersync.so"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
	"$tree$moddir/sersync.so"

{
	cat "$here/copyright"
	echo " ."
	sed 's/^/ /' "$crates"
} >"$doc/copyright"
{
	cat <<-ENTRY
	sersync ($version) unstable; urgency=medium

	  * Built for kamailio $kversion.

	 -- $maintainer  $(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(stat -c %Y "$module")}")

	ENTRY
	cat "$here/changelog"
} | gzip -9n >"$doc/changelog.Debian.gz"
install -m 0644 "$here/README.Debian" "$doc/README.Debian"
gzip -9n <"$top/README.md" >"$doc/README.md.gz"
gzip -9n <"$top/doc/sersync.md" >"$doc/sersync.md.gz"
chmod 0644 "$doc"/*

# ${shlibs:Depends}, as dh_shlibdeps would compute it (without 5.6's
# "kamailio (>= ...)" for libsrdb1: the exact version is already required)
mkdir -p "$stage/src/debian"
printf 'Source: sersync\n\nPackage: %s\nArchitecture: any\n' "$pkg" \
	>"$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O -e"$tree$moddir/sersync.so" \
	2>/dev/null | sed -n 's/^shlibs:Depends=//p' | tr ',' '\n' \
	| sed 's/^ *//' | grep -v '^kamailio ' | paste -sd, | sed 's/,/, /g')
[ -n "$shlibs" ] || { echo "$0: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
sed -e "s|\${binary:Version}|$version|" -e "s|\${Arch}|$arch|" \
	-e "s|\${Maintainer}|$maintainer|" -e "s|\${Installed-Size}|$size|" \
	-e "s|\${kamailio:Version}|$kversion|" \
	-e "s|\${kamailio:Upstream}|$kupstream|" \
	-e "s|\${shlibs:Depends}|$shlibs|" \
	"$here/control" >"$tree/DEBIAN/control"
(cd "$tree" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' \
	| xargs -0 md5sum) >"$tree/DEBIAN/md5sums"

mkdir -p "$outdir"
deb=$outdir/${pkg}_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb" >&2
echo "$deb"
