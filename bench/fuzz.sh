#!/bin/bash
# Fuzzes the frame decoder and the sersync.apply payload decoder with
# libFuzzer (cargo fuzz), each for SECONDS (default 600), and prints the
# executions and findings per target. Crashes land in fuzz/artifacts/<target>/;
# each one found becomes a regression test (tests/wire_frames.rs or
# src/apply/payload.rs).
#   bash bench/fuzz.sh [SECONDS]
# Needs: cargo install cargo-fuzz. cargo fuzz needs nightly features;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
export RUSTC_BOOTSTRAP=1
for t in frame apply_payload; do
	mkdir -p fuzz/corpus/$t
	log=$(mktemp)
	cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
		-print_final_stats=1 >"$log" 2>&1 || true
	execs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || true)
	crashes=$(ls fuzz/artifacts/$t 2>/dev/null | wc -l)
	echo "$t: ${secs}s, ${execs:-?} executions, $crashes crash artifacts"
	grep -E '^(==|SUMMARY|thread .* panicked)' "$log" | head -5 || true
	rm -f "$log"
done
