#
# sersync - top-level build
#
#   make            Rust engine (cargo) + SER module, result in build/sersync.so
#   make install    install build/sersync.so into SER's module directory
#                   (DESTDIR-aware; SER_MODULES_DIR overrides the directory)
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
SER_VERSION := $(shell $(KAMAILIO) -V 2>/dev/null \
	| sed -n 's/^version: kamailio \([0-9][0-9.]*\).*/\1/p')
SER_SRC ?= $(BUILD)/kamailio-$(or $(SER_VERSION),5.6.3)
SER_CFG := make -C src cfg FLAVOUR=kamailio PREFIX=/usr \
	CC_EXTRA_OPTS=-DVERSION_NODATE

SERSYNC_LIB := $(CURDIR)/target/release/libsersync.a
SERSYNC_INC := $(CURDIR)/include
MOD_DIR := $(SER_SRC)/src/modules/sersync
MODULE := $(BUILD)/sersync.so
ABI_TEST := $(BUILD)/abi
ENGINE_LIBS := -lsqlite3 -lpthread -ldl -lm

# SER's module directory, from the kamailio package, else the Debian layout
SER_MODULES_DIR ?= $(or $(patsubst %/tm.so,%,$(shell dpkg -L kamailio \
	2>/dev/null | grep -m1 '/kamailio/modules/tm.so$$')),\
	/usr/lib/$(shell $(CC) -print-multiarch 2>/dev/null)/kamailio/modules)

.PHONY: all engine module install test demo clean distclean

all: $(MODULE)

engine:
	$(CARGO) build --release

# the SER source tree: the Debian source of the installed kamailio
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

module: engine $(SER_SRC)/src/config.mak
	@v=$$(sed -n 's/^\(VERSION\|PATCHLEVEL\|SUBLEVEL\) *= *\([0-9]*\).*/\2/p' \
		$(SER_SRC)/src/Makefile.defs | paste -sd.); \
	test -z "$(SER_VERSION)" || test "$$v" = "$(SER_VERSION)" || { \
		echo "$(SER_SRC) is SER $$v, the installed kamailio is" \
			"$(SER_VERSION)" >&2; exit 1; }
	@grep -q -- '-DVERSION_NODATE' $(SER_SRC)/src/config.mak \
		|| (cd $(SER_SRC) && $(SER_CFG))
	@# a copy, not a symlink: Makefile.modules works with ../../ paths
	mkdir -p $(MOD_DIR)
	rm -f $(MOD_DIR)/*.c $(MOD_DIR)/*.h $(MOD_DIR)/*.map
	cp -p ser-module/* $(MOD_DIR)/
	$(MAKE) -C $(MOD_DIR) SERSYNC_LIB=$(SERSYNC_LIB) \
		SERSYNC_INC=$(SERSYNC_INC)

$(MODULE): module
	mkdir -p $(BUILD)
	@# replace, never overwrite in place: running SERs have it mapped
	cp $(MOD_DIR)/sersync.so $@.tmp && mv -f $@.tmp $@

install:
	@test -f $(MODULE) || $(MAKE) all
	install -d $(DESTDIR)$(SER_MODULES_DIR)
	install -m 0644 $(MODULE) $(DESTDIR)$(SER_MODULES_DIR)/sersync.so

test: all
	$(CC) -std=c11 -Wall -Wextra -Werror -I$(SERSYNC_INC) tests/abi.c \
		$(SERSYNC_LIB) $(ENGINE_LIBS) -o $(ABI_TEST)
	$(ABI_TEST)
	$(CARGO) test --release

demo: all
	bash demo/run.sh

clean:
	-$(CARGO) clean
	rm -f $(MODULE) $(ABI_TEST)
	rm -rf $(MOD_DIR)

distclean: clean
	rm -rf $(BUILD)
