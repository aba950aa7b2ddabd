#
# sersync - top-level build
#
#   make            Rust engine (cargo) + SER module, result in build/sersync.so
#   make install    install build/sersync.so into SER's module directory
#                   (DESTDIR-aware; SER_MODULES_DIR overrides the directory)
#   make SER_ROOT=DIR [install]
#                   the module for the Kamailio installed in the Debian root
#                   DIR (.ci/debian13-root.sh), built inside DIR against its
#                   own source tree, into build/<kamailio version>/sersync.so;
#                   install puts it into DIR's module directory
#   make deb [SER_ROOT=DIR]
#                   a Debian package of the module (debian/mkdeb.sh) for the
#                   host's Kamailio (build/) or DIR's (build/<version>/)
#   make test       make, C ABI check (tests/abi.c), cargo test --release
#   make demo       make, then demo/run.sh
#   make clean      remove build products (keeps the SER source tree)
#   make distclean  clean, and remove build/ entirely
#
# The module must be built in a SER (Kamailio) source tree configured like
# the installed binary, or the core refuses to load it. SER_SRC names that
# tree; when it is absent, the Debian source of the installed kamailio is
# fetched with apt-get (needs a deb-src entry) and configured.
#

CARGO ?= cargo
KAMAILIO ?= kamailio

BUILD := $(CURDIR)/build
# LIBSSL_SET_MUTEX_SHARED=1: Debian's Kamailio is built with it (libssl
# 1.1+); Kamailio 5.6 sets it only where libssl-dev is installed, and a
# module built without it is refused at load ("compile flags mismatch",
# seen on a fresh Debian 12 machine). 6.0 sets it by default.
SER_CFG := make -C src cfg FLAVOUR=kamailio PREFIX=/usr \
	CC_EXTRA_OPTS=-DVERSION_NODATE LIBSSL_SET_MUTEX_SHARED=1
SERSYNC_LIB := $(CURDIR)/target/release/libsersync.a
SERSYNC_INC := $(CURDIR)/include
SERSYNC_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml \
	| head -1)
ABI_TEST := $(BUILD)/abi
ENGINE_LIBS := -lsqlite3 -lpthread -ldl -lm
# runs a command inside a Debian root (mounts in a namespace of its own)
IN_ROOT := bash $(CURDIR)/.ci/in-root.sh
# the Debian 13 root `make test` builds for (.ci/debian13-root.sh)
TEST_ROOT ?= $(or $(SERSYNC_DEBIAN13_ROOT),/var/cache/sersync/debian13)

ifeq ($(SER_ROOT),)
# the host's Kamailio
SER_VERSION := $(shell $(KAMAILIO) -V 2>/dev/null \
	| sed -n 's/^version: kamailio \([0-9][0-9.]*\).*/\1/p')
SER_SRC ?= $(BUILD)/kamailio-$(or $(SER_VERSION),5.6.3)
MODULE := $(BUILD)/sersync.so
# SER's module directory, from the kamailio package, else the Debian layout
SER_MODULES_DIR ?= $(or $(patsubst %/tm.so,%,$(shell dpkg -L kamailio \
	2>/dev/null | grep -m1 '/kamailio/modules/tm.so$$')),\
	/usr/lib/$(shell $(CC) -print-multiarch 2>/dev/null)/kamailio/modules)
else
# the Kamailio of the Debian root SER_ROOT: its source tree is fetched into
# the root's /usr/src (SER_SRC is the host's path of it, SER_SRC_IN the
# root's) and the module is compiled inside the root, with the root's
# compiler and headers; the Rust engine is the host's (plain static archive)
override SER_ROOT := $(abspath $(SER_ROOT))
ifeq ($(wildcard $(SER_ROOT)/usr/sbin/kamailio),)
$(error SER_ROOT=$(SER_ROOT) has no Kamailio (make one with .ci/debian13-root.sh))
endif
SER_VERSION := $(shell chroot $(SER_ROOT) kamailio -V 2>/dev/null \
	| sed -n 's/^version: kamailio \([0-9][0-9.]*\).*/\1/p')
ifeq ($(SER_VERSION),)
$(error `chroot $(SER_ROOT) kamailio -V` names no version)
endif
SER_SRC_IN := /usr/src/kamailio-$(SER_VERSION)
SER_SRC := $(SER_ROOT)$(SER_SRC_IN)
MODULE := $(BUILD)/$(SER_VERSION)/sersync.so
SER_MODULES_DIR ?= $(patsubst %/tm.so,%,$(shell chroot $(SER_ROOT) dpkg -L \
	kamailio 2>/dev/null | grep -m1 '/kamailio/modules/tm.so$$'))
endif
MOD_DIR := $(SER_SRC)/src/modules/sersync

.PHONY: all engine module install deb test demo clean distclean

all: $(MODULE)

engine:
	$(CARGO) build --release

# the SER source tree: the Debian source of the installed kamailio
ifneq ($(SER_ROOT),)
# in the root (its deb-src line); the .orig.tar.gz.asc may be missing on
# the mirror: apt-get's error is tolerated when the tarball came
$(SER_SRC)/src/Makefile:
	mkdir -p $(SER_ROOT)/usr/src
	$(IN_ROOT) $(SER_ROOT) sh -c 'cd /usr/src && apt-get source \
		--download-only kamailio=$$(dpkg-query -W -f="\$${Version}" \
		kamailio)' || true
	@test -f $(SER_ROOT)/usr/src/kamailio_$(SER_VERSION).orig.tar.gz || { \
		echo "no kamailio_$(SER_VERSION).orig.tar.gz in $(SER_ROOT)/usr/src:" \
			"does the root's apt have a deb-src line?" >&2; exit 1; }
	tar -xzf $(SER_ROOT)/usr/src/kamailio_$(SER_VERSION).orig.tar.gz \
		-C $(SER_ROOT)/usr/src
	touch $@

$(SER_SRC)/src/config.mak: $(SER_SRC)/src/Makefile
	$(IN_ROOT) $(SER_ROOT) sh -c 'cd $(SER_SRC_IN) && $(SER_CFG)'
else
$(SER_SRC)/src/Makefile:
	@test -n "$(SER_VERSION)" || { echo "kamailio is not installed" \
		"(apt-get install kamailio)" >&2; exit 1; }
	@test "$(SER_SRC)" = "$(BUILD)/kamailio-$(SER_VERSION)" || { \
		echo "SER_SRC=$(SER_SRC) has no SER source tree" >&2; exit 1; }
	mkdir -p $(BUILD)
	cd $(BUILD) && apt-get source --download-only \
		kamailio=$$(dpkg-query -W -f='$${Version}' kamailio) || { \
		echo "apt-get source failed: add deb-src to the Types: line of" \
			"/etc/apt/sources.list.d/debian.sources, apt-get update" >&2; \
		exit 1; }
	@test -f $(BUILD)/kamailio_$(SER_VERSION).orig.tar.gz || { \
		echo "no kamailio_$(SER_VERSION).orig.tar.gz: the source does" \
			"not match kamailio -V" >&2; exit 1; }
	tar -xzf $(BUILD)/kamailio_$(SER_VERSION).orig.tar.gz -C $(BUILD)
	touch $@

# configured like Debian's binary; reconfigured if configured otherwise
$(SER_SRC)/src/config.mak: $(SER_SRC)/src/Makefile
	cd $(SER_SRC) && $(SER_CFG)
endif

module: engine $(SER_SRC)/src/config.mak
	@v=$$(sed -n 's/^\(VERSION\|PATCHLEVEL\|SUBLEVEL\) *= *\([0-9]*\).*/\2/p' \
		$(SER_SRC)/src/Makefile.defs | paste -sd.); \
	test -z "$(SER_VERSION)" || test "$$v" = "$(SER_VERSION)" || { \
		echo "$(SER_SRC) is SER $$v, the installed kamailio is" \
			"$(SER_VERSION)" >&2; exit 1; }
	@grep -q -- '-DVERSION_NODATE' $(SER_SRC)/src/config.mak \
		|| rm -f $(SER_SRC)/src/config.mak
	@test -f $(SER_SRC)/src/config.mak || $(MAKE) $(SER_SRC)/src/config.mak
	@# a copy, not a symlink: Makefile.modules works with ../../ paths
	mkdir -p $(MOD_DIR)
	rm -f $(MOD_DIR)/*.c $(MOD_DIR)/*.h $(MOD_DIR)/*.map
	cp -p ser-module/* $(MOD_DIR)/
ifeq ($(SER_ROOT),)
	$(MAKE) -C $(MOD_DIR) SERSYNC_LIB=$(SERSYNC_LIB) \
		SERSYNC_INC=$(SERSYNC_INC) SERSYNC_VERSION=$(SERSYNC_VERSION)
else
	$(IN_ROOT) $(SER_ROOT) --bind $(dir $(SERSYNC_LIB)) --bind \
		$(SERSYNC_INC) -- make -C $(SER_SRC_IN)/src/modules/sersync \
		SERSYNC_LIB=$(SERSYNC_LIB) SERSYNC_INC=$(SERSYNC_INC) \
		SERSYNC_VERSION=$(SERSYNC_VERSION)
endif

$(MODULE): module
	mkdir -p $(dir $@)
	@# replace, never overwrite in place: running SERs have it mapped
	cp $(MOD_DIR)/sersync.so $@.tmp && mv -f $@.tmp $@

install:
	@test -f $(MODULE) || $(MAKE) all
	@test -n "$(SER_MODULES_DIR)" || { echo "no kamailio module" \
		"directory found in $(SER_ROOT)" >&2; exit 1; }
	install -d $(DESTDIR)$(SER_ROOT)$(SER_MODULES_DIR)
	install -m 0644 $(MODULE) \
		$(DESTDIR)$(SER_ROOT)$(SER_MODULES_DIR)/sersync.so

# the Rust crates linked into the module, for the package's copyright
CRATES := $(BUILD)/linked-crates.txt
$(CRATES): Cargo.lock Cargo.toml
	mkdir -p $(BUILD)
	$(CARGO) tree -e normal,no-proc-macro --prefix none --format '{p} ({l})' \
		| sed 's/ (\*)$$//' | grep -v '^sersync ' \
		| sort -u >$@.tmp
	mv $@.tmp $@

# built where that Kamailio is installed (its dpkg database and libraries)
deb: $(MODULE) $(CRATES)
ifeq ($(SER_ROOT),)
	bash debian/mkdeb.sh $(MODULE) $(CRATES) $(dir $(MODULE))
else
	$(IN_ROOT) $(SER_ROOT) --bind $(CURDIR) -- bash \
		$(CURDIR)/debian/mkdeb.sh $(MODULE) $(CRATES) $(dir $(MODULE))
endif

# the Kamailio 6.0 tests (tests/e2e_kamailio6.rs) load the module built
# for the Debian 13 root and install the packages; CI creates the root
# (.ci/run) before `make test`
test: all
	$(MAKE) deb
	bash .ci/debian13-root.sh $(TEST_ROOT) >/dev/null
	$(MAKE) SER_ROOT=$(TEST_ROOT) all deb
	$(CC) -std=c11 -Wall -Wextra -Werror -I$(SERSYNC_INC) tests/abi.c \
		$(SERSYNC_LIB) $(ENGINE_LIBS) -o $(ABI_TEST)
	$(ABI_TEST)
	$(CARGO) test --release

demo: all
	bash demo/run.sh

clean:
	-$(CARGO) clean
	rm -f $(MODULE) $(ABI_TEST) $(CRATES) \
		$(BUILD)/kamailio-sersync-modules_*.deb \
		$(BUILD)/*/kamailio-sersync-modules_*.deb
	rm -rf $(MOD_DIR)

distclean: clean
	rm -rf $(BUILD)
