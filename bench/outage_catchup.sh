#!/usr/bin/env bash
# Outage catch-up: a node down while N changes happen elsewhere, measured
# end to end with real Kamailio (tests/e2e_durability.rs,
# returning_peer_gets_exactly_what_it_missed, with SERSYNC_OUTAGE_N=N).
# Node 3 is stopped; node 1 makes N changes (90% registrations, 10%
# de-registrations), node 2 500 registrations; node 3 restarts. Prints the
# time from node 3's start until its usrloc holds everything (ul.dump equal
# to nodes 1 and 2, field by field) and how many records node 1 sent it
# (must be N: incremental, not the whole table).
#
#   bash bench/outage_catchup.sh [N ...]      default: 5000 20000 40000
#
# N is at most about 45,000: the harness starts Kamailio with -m 64 (MiB of
# shared memory), and 3,000 base users + N contacts must fit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 5000 20000 40000
for n in "$@"; do
  SERSYNC_OUTAGE_N="$n" cargo test --release --test e2e_durability -- --nocapture \
    returning_peer_gets_exactly_what_it_missed 2>&1 | tee "target/outage_catchup_$n.log" \
    | grep -E '^e2e: node 3 (after|caught)|^test result|panicked' || true
done
