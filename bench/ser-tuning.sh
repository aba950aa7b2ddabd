#!/usr/bin/env bash
#
# Follow-up to `cargo bench --bench catchup`: is the limit in sersync's door
# or in SER itself? Re-runs node 2's catch-up (usrloc db_mode 0) from the
# cluster the bench left behind, through either door, varying two SER
# settings sersync does not control:
#   - the shared-memory manager (kamailio -x qm|fm|tlsf; 5.6 defaults to qm)
#   - usrloc's hash_size (default 10: 1024 slots)
# and prints records/s from the first contact in node 2's usrloc to all of
# them (polled through ctl's binrpc socket with kamcmd, not through the door).
#
# Usage: bench/ser-tuning.sh [BENCH_DIR] [RUNS]
#   BENCH_DIR  the bench's cluster directory (default target/tmp/e2e/bench-catchup)
#   RUNS       runs per variant (default 3)
# Holds /tmp/sersync-e2e.lock while its nodes run; stops every node it
# starts by PID (then its process group), also on failure or Ctrl-C.
# Loopback only (127.0.0.41-42).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$(cd "${1:-$ROOT/target/tmp/e2e/bench-catchup}" && pwd)
RUNS=${2:-3}
KAMAILIO=/usr/sbin/kamailio
SCHEMA=/usr/share/kamailio/db_sqlite

die() { echo "ser-tuning: $*" >&2; exit 1; }
[ -f "$DIR/n1/sersync.db" ] || die "$DIR/n1 has no journal: run cargo bench --bench catchup first"
TEMPLATE=$(ls -d "$DIR"/n2-m0-*-dgram 2>/dev/null | head -1)
[ -n "$TEMPLATE" ] || die "no db_mode 0 datagram run of node 2 under $DIR to copy the configuration from"

exec 9>/tmp/sersync-e2e.lock
flock 9

declare -A PIDS=()
stop() { # stop NAME
	local pid=${PIDS[$1]:-}
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	unset "PIDS[$1]"
}
cleanup() { for k in "${!PIDS[@]}"; do stop "$k"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start NAME DIR [kamailio args...]
	local name=$1 d=$2
	shift 2
	setsid "$KAMAILIO" -DD -E -f "$d/kamailio.cfg" -w "$d" -Y "$d" -P "$d/kamailio.pid" \
		-m 64 -M 16 "$@" </dev/null >>"$d/kamailio.log" 2>&1 &
	PIDS[$name]=$!
	for _ in $(seq 200); do
		kill -0 "${PIDS[$name]}" 2>/dev/null || die "$name exited during start-up (see $d/kamailio.log)"
		kamcmd -s "unix:$d/ctl.sock" core.version >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	die "$name does not answer on $d/ctl.sock"
}

count() { # usrloc's contacts on node dir $1
	kamcmd -s "unix:$1/ctl.sock" stats.get_statistics location_contacts 2>/dev/null \
		| sed -n 's/.*= *\([0-9]*\).*/\1/p'
}

start n1 "$DIR/n1"
# one change per user in the bench: node 1's last journal sequence is N
N=
for _ in $(seq 100); do
	N=$(kamcmd -s "unix:$DIR/n1/ctl.sock" sersync.status | sed -n 's/^[[:space:]]*last_seq: *\([0-9]*\).*/\1/p' | head -1)
	[ -n "$N" ] && [ "$N" -gt 0 ] && break
	sleep 0.1
done
[ -n "$N" ] && [ "$N" -gt 0 ] || die "cannot read node 1's last_seq"
echo "node 1: $N records; node 2 catches up with usrloc db_mode 0"
printf '%-28s %s\n' "door, shm manager, hash" "apply rec/s per run (first contact -> all $N)"

run() { # run ID LABEL DOOR(sock|fifo) HASH_SIZE [kamailio args...]
	local id=$1 label=$2 door=$3 hs=$4 r d t0 t1 k busy rates=()
	shift 4
	for r in $(seq "$RUNS"); do
		d=$DIR/t-$id-$r
		rm -rf "$d"
		mkdir -p "$d"
		sed -e "s#$TEMPLATE#$d#g" \
			-e "s#^modparam(\"sersync\", \"fifo\", \"\(.*\)/rpc\.sock\")#modparam(\"sersync\", \"fifo\", \"\1/rpc.$door\")#" \
			"$TEMPLATE/kamailio.cfg" >"$d/kamailio.cfg"
		grep -q "\"sersync\", \"fifo\", \"$d/rpc.$door\"" "$d/kamailio.cfg" || die "cannot set the door in $d/kamailio.cfg"
		if [ "$hs" != 10 ]; then
			printf 'modparam("usrloc", "hash_size", %s)\n' "$hs" >>"$d/kamailio.cfg"
		fi
		{ echo 'PRAGMA journal_mode=WAL;'; cat "$SCHEMA/standard-create.sql" "$SCHEMA/usrloc-create.sql"; } \
			| sqlite3 "$d/kamailio.db" >/dev/null
		# '*': compilers were running on this (shared) machine meanwhile
		busy=
		[ "$(ps -eo comm= | grep -cxE 'rustc|cc1|cc1plus|ld|rust-lld|bindgen')" -eq 0 ] || busy='*'
		start n2 "$d" "$@"
		t0= t1=
		for _ in $(seq 3000); do
			k=$(count "$d")
			k=${k:-0}
			if [ -z "$t0" ] && [ "$k" -gt 0 ]; then t0=$(date +%s.%N); fi
			if [ "$k" -ge "$N" ]; then t1=$(date +%s.%N); break; fi
			sleep 0.01
		done
		stop n2
		[ -n "$t1" ] || die "$label run $r: not all $N contacts after 30 s (see $d/kamailio.log)"
		rates+=("$(echo "$N / ($t1 - $t0)" | bc -l | xargs printf '%.0f')$busy")
	done
	printf '%-28s %s\n' "$label" "${rates[*]}"
}

run qm10-fifo "FIFO,  qm,   hash_size 10" fifo 10
run qm10 "dgram, qm,   hash_size 10" sock 10
run qm14 "dgram, qm,   hash_size 14" sock 14
run fm10 "dgram, fm,   hash_size 10" sock 10 -x fm
run tlsf10 "dgram, tlsf, hash_size 10" sock 10 -x tlsf
run tlsf14 "dgram, tlsf, hash_size 14" sock 14 -x tlsf
run tlsf14-fifo "FIFO,  tlsf, hash_size 14" fifo 14 -x tlsf
