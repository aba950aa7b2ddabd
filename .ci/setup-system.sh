#!/bin/bash
# Installs the Debian packages sersync needs to build and test (bookworm).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q '^Types:.*deb-src' "$src"; then
	sed -i 's/^Types: deb$/Types: deb deb-src/' "$src"
fi
# an older one-line sources.list: a deb-src line beside each deb line
list=/etc/apt/sources.list
if [ -f "$list" ] && grep -q '^deb ' "$list" && ! grep -q '^deb-src ' "$list"; then
	sed -n 's/^deb /deb-src /p' "$list" >>"$list"
fi
apt-get update -q
apt-get install -y -q --no-install-recommends \
	kamailio kamailio-sqlite-modules kamailio-extra-modules \
	sip-tester sqlite3 libsqlite3-dev libclang-dev clang \
	dpkg-dev bison flex pkg-config make gcc curl ca-certificates jq nftables \
	faketime gdb prometheus \
	mariadb-server postgresql kamailio-mysql-modules kamailio-postgres-modules
# prometheus, mariadb-server, postgresql: tests/e2e_prometheus.rs and
# tests/e2e_databases.rs start servers of their own on loopback; the
# packages' services (started where the machine runs services) are stopped
# and kept from starting again
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
	for s in prometheus mariadb postgresql; do
		systemctl disable --now "$s.service" >/dev/null 2>&1 || true
	done
fi
# (without systemd: the packages' init scripts, by their pidfiles; a no-op
# when the install started nothing, as under policy-rc.d)
if [ -x /etc/init.d/prometheus ] && [ -f /run/prometheus/prometheus.pid ]; then
	/etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/mariadb ] && [ -S /run/mysqld/mysqld.sock ]; then
	/etc/init.d/mariadb stop >/dev/null 2>&1 || true
fi
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h | grep -q ' online'; then
	pg_lsclusters -h | awk '$4 ~ /^online/ { print $1, $2 }' |
		while read -r v c; do pg_ctlcluster "$v" "$c" stop || true; done
fi
# A machine without Rust gets Debian's own toolchain: bookworm's rustc-web
# and cargo-web (1.96, kept current by Debian's security archive for the
# browsers; the crate needs 1.85, bookworm's plain rustc is 1.63). They
# install /usr/bin/cargo and /usr/bin/rustc. A rustup toolchain, where there
# is one, is left as it is.
if ! command -v cargo >/dev/null; then
	apt-get install -y -q --no-install-recommends rustc-web cargo-web
fi
