#!/usr/bin/env bash
#
# sersync demo (make demo): three Kamailio nodes with sersync on 127.0.0.1,
# 127.0.0.2 and 127.0.0.3; sipp registers a few hundred phones on node 1;
# every node ends up with the same contacts, field by field.
#
# Uses the end-to-end tests' node template (tests/e2e/kamailio.cfg.in) and
# REGISTER scenario (tests/e2e/register.xml). Work files and logs go to
# target/demo/ (SERSYNC_DEMO_DIR overrides). Every node is stopped by its
# PID on exit, also on failure or Ctrl-C. Exits non-zero if the nodes differ.
#
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODULE=$ROOT/build/sersync.so
TEMPLATE=$ROOT/tests/e2e/kamailio.cfg.in
SCENARIO=$ROOT/tests/e2e/register.xml
SCHEMA=/usr/share/kamailio/db_sqlite
KAMAILIO=/usr/sbin/kamailio
WORK=${SERSYNC_DEMO_DIR:-$ROOT/target/demo}
USERS=${SERSYNC_DEMO_USERS:-300}
NODES=(1 2 3)
TIMEOUT=60

declare -A PIDS=()

say() { printf '%s\n' "demo: $*"; }
die() { printf '%s\n' "demo: error: $*" >&2; exit 1; }

for tool in "$KAMAILIO" sipp sqlite3 jq setsid timeout flock; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
[ -f "$MODULE" ] || die "$MODULE is missing: build it with make"

# The end-to-end tests hold this lock while their nodes run: one cluster
# on this machine's loopback addresses at a time.
exec 9>/tmp/sersync-e2e.lock
flock 9

ip_of() { echo "127.0.0.$1"; }
dir_of() { echo "$WORK/n$1"; }

# Stops node $1: SIGTERM to its PID, SIGKILL to its process group after 10 s.
stop_node() {
	local n=$1 pid=${PIDS[$1]:-}
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
		sleep 0.1
	done
	kill -KILL -- "-$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	unset "PIDS[$n]"
}

cleanup() {
	local rc=$?
	for n in "${!PIDS[@]}"; do
		stop_node "$n"
	done
	[ "$rc" -eq 0 ] || say "failed; logs in $WORK/n*/kamailio.log"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The sersync lines of node $1's configuration.
sersync_block() {
	local n=$1 d m
	d=$(dir_of "$n")
	echo "loadmodule \"$MODULE\""
	echo "modparam(\"sersync\", \"node_id\", \"n$n\")"
	echo "modparam(\"sersync\", \"listen\", \"tcp:$(ip_of "$n"):5999\")"
	for m in "${NODES[@]}"; do
		[ "$m" = "$n" ] || echo "modparam(\"sersync\", \"peer\", \"tcp:$(ip_of "$m"):5999\")"
	done
	echo "modparam(\"sersync\", \"secret\", \"sersync-demo-secret\")"
	echo "modparam(\"sersync\", \"journal\", \"$d/sersync.db\")"
	echo "modparam(\"sersync\", \"fifo\", \"$d/rpc.fifo\")"
	echo "modparam(\"sersync\", \"db_url\", \"sqlite:///$d/kamailio.db\")"
	echo "modparam(\"sersync\", \"domains\", \"location\")"
}

make_node() {
	local n=$1 d cfg
	d=$(dir_of "$n")
	mkdir -p "$d"
	# WAL mode, as in the tests (see the template)
	{ echo 'PRAGMA journal_mode=WAL;'; cat "$SCHEMA/standard-create.sql" \
		"$SCHEMA/usrloc-create.sql"; } \
		| sqlite3 "$d/kamailio.db" >/dev/null
	if [ -f "$SCHEMA/alias_db-create.sql" ]; then
		sqlite3 "$d/kamailio.db" <"$SCHEMA/alias_db-create.sql"
	fi
	cfg=$(<"$TEMPLATE")
	# quoted replacements: bash 5.2 would expand an unquoted "&"
	cfg=${cfg//@IP@/"$(ip_of "$n")"}
	cfg=${cfg//@SERVER_ID@/"$n"}
	cfg=${cfg//@DB_URL@/"sqlite:///$d/kamailio.db"}
	cfg=${cfg//@DIR@/"$d"}
	cfg=${cfg//@TIMER@/5}
	cfg=${cfg//@SERSYNC@/"$(sersync_block "$n")"}
	printf '%s\n' "$cfg" >"$d/kamailio.cfg"
}

# rpc NODE METHOD [PARAMS-JSON]: one JSON-RPC call over the node's FIFO;
# prints the reply. The reply FIFO's name may not contain a dot.
rpc() {
	local d name req reader
	d=$(dir_of "$1")
	name=demoreply_$$_$RANDOM
	req=$(printf '{"jsonrpc":"2.0","method":"%s","params":%s,"reply_name":"%s","id":1}' \
		"$2" "${3:-[]}" "$name")
	mkfifo "$d/$name"
	timeout 20 cat "$d/$name" >"$d/$name.json" &
	reader=$!
	if ! timeout 5 bash -c 'printf "%s\n" "$1" >"$2"' _ "$req" "$d/rpc.fifo"; then
		kill "$reader" 2>/dev/null || true
	fi
	wait "$reader" 2>/dev/null || true
	rm -f "$d/$name"
	cat "$d/$name.json"
	rm -f "$d/$name.json"
}

start_node() {
	local n=$1 d
	d=$(dir_of "$n")
	# setsid: Kamailio signals its whole process group when it stops.
	setsid "$KAMAILIO" -DD -E -f "$d/kamailio.cfg" -w "$d" -Y "$d" \
		-P "$d/kamailio.pid" -m 64 -M 16 </dev/null >>"$d/kamailio.log" 2>&1 &
	PIDS[$n]=$!
	for _ in $(seq 100); do
		kill -0 "${PIDS[$n]}" 2>/dev/null || {
			tail -n 20 "$d/kamailio.log" >&2
			die "node $n exited during start-up"
		}
		if [ -p "$d/rpc.fifo" ] && rpc "$n" core.version | grep -q result; then
			say "node $n up on $(ip_of "$n") (pid ${PIDS[$n]})"
			return 0
		fi
		sleep 0.2
	done
	die "node $n does not answer RPC"
}

# wait_for SECONDS COMMAND...: polls COMMAND once a second.
wait_for() {
	local t=$1
	shift
	for _ in $(seq "$t"); do
		"$@" && return 0
		sleep 1
	done
	return 1
}

peers_up() {
	local n up
	for n in "${NODES[@]}"; do
		up=$(rpc "$n" sersync.status \
			| jq '[.result.peers[]? | select(.state == "up")] | length' 2>/dev/null)
		[ "${up:-0}" -eq $((${#NODES[@]} - 1)) ] || return 1
	done
}

# dump NODE: one line per contact, every replicated field except Expires
# (sorted), and NODE.exp: contact key and absolute expiry.
dump() {
	local n=$1 d
	d=$WORK/dump
	mkdir -p "$d"
	rpc "$n" ul.dump >"$d/n$n.json"
	jq -r '.result.Domains[].Domain.AoRs[].Info | .AoR as $aor
		| .Contacts[].Contact
		| [$aor, .Address, .Q, ."Call-ID", .CSeq, ."User-Agent", .Received,
		   .Path, .Flags, .CFlags, .Methods, .Instance, ."Reg-Id",
		   ."Server-Id", .Ruid] | @tsv' "$d/n$n.json" | sort >"$d/n$n.tsv"
	jq -r --argjson now "$(date +%s)" '.result.Domains[].Domain.AoRs[].Info
		| .AoR as $aor | .Contacts[].Contact
		| [$aor, .Address, (if (.Expires | type) == "number"
			then $now + .Expires else .Expires end)] | @tsv' \
		"$d/n$n.json" | sort >"$d/n$n.exp"
}

count() { wc -l <"$WORK/dump/n$1.tsv"; }

# Same contacts and fields everywhere, expiry within 2 s.
all_same() {
	local n
	for n in "${NODES[@]}"; do dump "$n"; done
	[ "$(count 1)" -eq "$USERS" ] || return 1
	for n in "${NODES[@]:1}"; do
		cmp -s "$WORK/dump/n1.tsv" "$WORK/dump/n$n.tsv" || return 1
		awk -F'\t' 'NR == FNR { e[$1 FS $2] = $3; next }
			!(($1 FS $2) in e) || ($3 - e[$1 FS $2]) > 2 \
				|| (e[$1 FS $2] - $3) > 2 { bad = 1 }
			END { exit bad }' "$WORK/dump/n1.exp" "$WORK/dump/n$n.exp" || return 1
	done
}

# --- run ------------------------------------------------------------------

rm -rf "$WORK"
mkdir -p "$WORK"
say "work dir $WORK"
for n in "${NODES[@]}"; do make_node "$n"; done
for n in "${NODES[@]}"; do start_node "$n"; done
wait_for "$TIMEOUT" peers_up || die "sersync peer links not all up"
say "sersync links up between all ${#NODES[@]} nodes"

# Phones: some behind a Path (edge proxy), some NATed, some with
# +sip.instance/reg-id, some with a branch flag, a q-value, no Allow header
# (see the fields in register.xml).
csv=$WORK/users.csv
{
	echo SEQUENTIAL
	for i in $(seq 0 $((USERS - 1))); do
		printf 'demo%04d;%d;a;%s;%s;%s;%s;%s;X-No-Replace;%d;%012d;%s;%s;%s\n' "$i" \
			$((1800 + i % 1800)) \
			"$([ $((i % 3)) -eq 0 ] && echo +sip.instance || echo x-no-instance)" \
			"$([ $((i % 6)) -eq 0 ] && echo reg-id || echo x-no-reg-id)" \
			"$([ $((i % 4)) -eq 1 ] && echo Path || echo X-No-Path)" \
			"$([ $((i % 5)) -eq 2 ] && echo X-NAT || echo X-No-NAT)" \
			"$([ $((i % 7)) -eq 3 ] && echo X-Flags || echo X-No-Flags)" \
			$((1 + i)) "$i" \
			"$([ $((i % 9)) -eq 4 ] && printf 'q=0.%03d' $((i % 1000)) || echo x-no-q)" \
			"$([ $((i % 8)) -eq 5 ] && echo X-No-Allow || echo Allow)" \
			"$(ip_of 1)"
	done
} >"$csv"
say "registering $USERS phones on node 1 with sipp"
(cd "$WORK" && sipp "$(ip_of 1):5060" -sf "$SCENARIO" -inf "$csv" \
	-m "$USERS" -r 200 -t u1 -i "$(ip_of 1)" -bind_local -nostdin \
	-timeout 60 -trace_err -error_file "$WORK/sipp-errors.log" \
	>"$WORK/sipp.out" 2>&1) || {
	tail -n 20 "$WORK/sipp.out" >&2
	die "sipp: some REGISTERs failed (see $WORK/sipp-errors.log)"
}
grep -E 'Successful call|Failed call' "$WORK/sipp.out" | sed 's/^/demo: sipp /'

if wait_for "$TIMEOUT" all_same; then
	same=yes
else
	same=no
fi
for n in "${NODES[@]}"; do
	say "node $n ($(ip_of "$n")): $(count "$n") contacts"
done
if [ "$same" = yes ]; then
	say "all nodes hold the same $USERS contacts, every field equal:"
	head -n 3 "$WORK/dump/n1.tsv" | cut -f 1,2,7,8,12 | sed 's/^/    /'
	say "(sorted dumps: $WORK/dump/n*.tsv)"
else
	for n in "${NODES[@]:1}"; do
		diff "$WORK/dump/n1.tsv" "$WORK/dump/n$n.tsv" | head -n 10 || true
	done
fi
say "sersync.status of node 1:"
rpc 1 sersync.status | jq .result
[ "$same" = yes ] || die "the nodes differ after ${TIMEOUT} s"
say "ok"
