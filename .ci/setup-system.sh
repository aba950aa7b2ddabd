#!/bin/bash
# Installs the Debian packages sersync needs to build and test (bookworm).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q '^Types:.*deb-src' "$src"; then
	sed -i 's/^Types: deb$/Types: deb deb-src/' "$src"
fi
apt-get update -q
apt-get install -y -q --no-install-recommends \
	kamailio kamailio-sqlite-modules kamailio-extra-modules \
	sip-tester sqlite3 libsqlite3-dev libclang-dev clang \
	dpkg-dev bison flex pkg-config make gcc curl ca-certificates jq nftables \
	faketime gdb
