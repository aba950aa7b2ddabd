#!/usr/bin/env bash
# Crash soak: the end-to-end kill-cycle tests of tests/e2e_durability.rs
# with more cycles (default 100). Three Kamailio nodes on 127.0.0.71-73;
# node 2 is SIGKILLed (whole process group) at a random moment under sipp
# REGISTER load and restarted on the same directory, CYCLES times; then
# every user sipp got a 200 OK for must be on every node, once, with every
# node identical field by field.
#
#   bash bench/kill_soak.sh [CYCLES] [single|both|all]
#
# single: load on node 2 only (crash recovery alone);
# both:   load on nodes 1 and 2 (also exercises two SQLite writers on a node);
# all:    both tests (default).
# Environment: SERSYNC_KILL_RATE (REGISTERs/s per loaded node; default 400
# for single, 100 for both),
# SERSYNC_KILL_SEED (replay a run's random moments; printed by each run).
# Needs build/sersync.so (`make`). Node logs: target/tmp/e2e/dur-kill*/.
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES="${1:-100}"
WHICH="${2:-all}"
case "$WHICH" in
  single) FILTER=crash_cycles_single_writer_lose_nothing ;;
  both)   FILTER=crash_cycles_under_load_lose_nothing ;;
  all)    FILTER=crash_cycles_ ;;
  *) echo "usage: $0 [CYCLES] [single|both|all]" >&2; exit 2 ;;
esac
export SERSYNC_KILL_CYCLES="$CYCLES"
start=$(date +%s)
status=0
cargo test --release --test e2e_durability -- --include-ignored --nocapture --test-threads 1 "$FILTER" \
  2>&1 | tee target/kill_soak.log | grep -E '^e2e: [0-9]+ crash|^e2e: (converged|node [12]: |node 2 recovered)|^test |panicked|not converged|lost|^test result' \
  || status=$?
echo "kill soak: $CYCLES cycles ($WHICH) in $(( $(date +%s) - start )) s; full output in target/kill_soak.log"
grep -q '^test result: ok' target/kill_soak.log
