#!/bin/bash
# Fuzzes the peer-facing decoders with libFuzzer (cargo fuzz), each target
# for SECONDS (default 600), one after the other, and prints the executions
# and findings per target. Crashes land in fuzz/artifacts/<target>/; each
# one found becomes a regression test.
#   bash bench/fuzz.sh [SECONDS [TARGET...]]
# Targets (default: all):
#   frame          the frame decoder (tests/wire_frames.rs)
#   apply_payload  sersync_apply_decode (src/apply/payload.rs)
#   handshake      a node's handshake, accepting and dialing, through its
#                  connection code (src/net/fuzzing.rs)
#   session        the chunk decoder carrying frames in Noise messages,
#                  after an honest handshake (src/net/fuzzing.rs)
# Needs: cargo install cargo-fuzz. cargo fuzz needs nightly features;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame apply_payload handshake session)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
	mkdir -p fuzz/corpus/$t
	log=$(mktemp)
	# session: inputs up to a few chunks of 64 KiB.
	max_len=4096
	[ "$t" = session ] && max_len=200000
	cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
		-max_len=$max_len -print_final_stats=1 >"$log" 2>&1 || true
	execs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || true)
	crashes=$(ls fuzz/artifacts/$t 2>/dev/null | wc -l)
	echo "$t: ${secs}s, ${execs:-?} executions, $crashes crash artifacts"
	grep -E '^(==|SUMMARY|thread .* panicked)' "$log" | head -5 || true
	rm -f "$log"
done
# The handshake and session harnesses keep their node's journal in
# /dev/shm/sersync-fuzz-PID: remove those of fuzzers no longer running.
for d in /dev/shm/sersync-fuzz-*; do
	[ -d "$d" ] && ! kill -0 "${d##*-}" 2>/dev/null && rm -rf "$d"
done
true
