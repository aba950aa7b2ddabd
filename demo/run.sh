#!/usr/bin/env bash
#
# sersync demo (make demo): three Kamailio nodes with sersync on 127.0.0.1,
# 127.0.0.2 and 127.0.0.3, usrloc in memory (db_mode 0). It shows the two
# problems of the original proposal solved:
#   distribution: sipp registers a few hundred phones on node 1; every node
#     ends up with the same contacts, field by field;
#   reload after a breakdown: node 3 is SIGKILLed (its whole process
#     group); while it is down nodes 1 and 2 register new phones, refresh
#     some and de-register some; node 3, started again with the same
#     configuration and journal, comes up with an empty usrloc and holds
#     exactly the cluster's contacts again, field by field. The time from
#     its start until it does is printed.
#
# Uses the end-to-end tests' node template (tests/e2e/kamailio.cfg.in) and
# REGISTER scenario (tests/e2e/register.xml); like tests/e2e_restore.rs it
# sets usrloc's db_mode to 0 and gives sersync no database, so only node
# 3's journal and its peers can bring its contacts back. Work files and
# logs go to target/demo/ (SERSYNC_DEMO_DIR overrides). Every node is
# stopped by its PID on exit, also on failure or Ctrl-C. Exits non-zero if
# the nodes differ, if node 3 does not hold the cluster's contacts within
# RESTORE_TIMEOUT seconds of its restart, or if its journal did not put
# back what it held (sersync.status "restored").
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
RESTORE_TIMEOUT=30
# The template's usrloc line; the demo keeps usrloc in memory instead.
UL_DB_MODE_LINE='modparam("usrloc", "db_mode", 1)'

declare -A PIDS=() STARTED=()

say() { printf '%s\n' "demo: $*"; }
die() { printf '%s\n' "demo: error: $*" >&2; exit 1; }

for tool in "$KAMAILIO" sipp sqlite3 jq setsid timeout flock; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
[ -f "$MODULE" ] || die "$MODULE is missing: build it with make"
[ "$USERS" -ge 10 ] || die "SERSYNC_DEMO_USERS must be at least 10"

# The end-to-end tests hold this lock while their nodes run: one cluster
# on this machine's loopback addresses at a time.
exec 9>/tmp/sersync-e2e.lock
flock -n 9 || {
	say "waiting for /tmp/sersync-e2e.lock (another cluster runs)"
	flock 9
}

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

# Whether a process of group $1 is alive (zombies hold no sockets).
group_alive() {
	ps -e -o pgid=,stat= \
		| awk -v g="$1" '$1 == g && $2 !~ /^Z/ { alive = 1 } END { exit !alive }'
}

# Kills node $1 as a crash would: SIGKILL to its whole process group (a
# SIGKILLed Kamailio main leaves its workers and the sersync process
# running, as tests/e2e_support/node.rs knows), then waits until none of
# them is left.
kill_node() {
	local n=$1 pid=${PIDS[$1]}
	kill -KILL -- "-$pid"
	wait "$pid" 2>/dev/null || true
	unset "PIDS[$n]"
	for _ in $(seq 50); do
		if ! group_alive "$pid"; then
			echo "===== demo: SIGKILLed at $(date +%s) =====" \
				>>"$(dir_of "$n")/kamailio.log"
			return 0
		fi
		sleep 0.1
	done
	die "node $n: processes of group $pid outlived SIGKILL"
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

# The sersync lines of node $1's configuration. No db_url: sersync's
# start-up comparison with SER's database does not take part in the restore.
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
	echo "modparam(\"sersync\", \"domains\", \"location\")"
}

make_node() {
	local n=$1 d cfg
	d=$(dir_of "$n")
	mkdir -p "$d"
	# WAL mode, as in the tests (see the template); alias_db still opens it
	{ echo 'PRAGMA journal_mode=WAL;'; cat "$SCHEMA/standard-create.sql" \
		"$SCHEMA/usrloc-create.sql"; } \
		| sqlite3 "$d/kamailio.db" >/dev/null
	if [ -f "$SCHEMA/alias_db-create.sql" ]; then
		sqlite3 "$d/kamailio.db" <"$SCHEMA/alias_db-create.sql"
	fi
	cfg=$(<"$TEMPLATE")
	[[ $cfg == *"$UL_DB_MODE_LINE"* ]] \
		|| die "$TEMPLATE has no line $UL_DB_MODE_LINE"
	cfg=${cfg//"$UL_DB_MODE_LINE"/'modparam("usrloc", "db_mode", 0)'}
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
	# A killed node leaves its FIFO behind; jsonrpcs makes a new one, and a
	# request written into the old one meanwhile would wait for nobody.
	rm -f "$d/rpc.fifo"
	STARTED[$n]=$(date +%s.%N)
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

# Seconds since node $1's last start, one decimal.
since_start() {
	awk -v a="${STARTED[$1]}" -v b="$(date +%s.%N)" \
		'BEGIN { printf "%.1f", b - a }'
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

# Nothing in flight: every node's queue, applier and restore are done and
# every peer is up with nothing pending.
settled() {
	local n
	for n in "${NODES[@]}"; do
		rpc "$n" sersync.status | jq -e --argjson peers $((${#NODES[@]} - 1)) \
			'.result | .queue_depth == 0 and .apply_pending == 0
				and .restore_pending == 0
				and ([.peers[] | select(.state == "up" and .pending == 0)]
					| length) == $peers' >/dev/null || return 1
	done
}

# One line of node $1's sersync.status (counters since its last start).
status_line() {
	rpc "$1" sersync.status | jq -r '.result
		| "\(.node_id) (incarnation \(.incarnation)): journaled \(.journaled),"
		+ " restored \(.restored), received "
		+ ([.peers[] | "\(.received) from \(.node_id)"] | join(", "))'
}

# phone I EXPIRES CSEQ HOST: phone I's row of sipp's injection file (the
# fields: tests/e2e/register.xml). I picks what the phone is like: some
# behind a Path (edge proxy), some NATed, some with +sip.instance/reg-id,
# some with a branch flag, a q-value, no Allow header.
phone() {
	local i=$1
	printf 'demo%04d;%d;a;%s;%s;%s;%s;%s;X-No-Replace;%d;%012d;%s;%s;%s\n' \
		"$i" "$2" \
		"$([ $((i % 3)) -eq 0 ] && echo +sip.instance || echo x-no-instance)" \
		"$([ $((i % 6)) -eq 0 ] && echo reg-id || echo x-no-reg-id)" \
		"$([ $((i % 4)) -eq 1 ] && echo Path || echo X-No-Path)" \
		"$([ $((i % 5)) -eq 2 ] && echo X-NAT || echo X-No-NAT)" \
		"$([ $((i % 7)) -eq 3 ] && echo X-Flags || echo X-No-Flags)" \
		"$3" "$i" \
		"$([ $((i % 9)) -eq 4 ] && printf 'q=0.%03d' $((i % 1000)) || echo x-no-q)" \
		"$([ $((i % 8)) -eq 5 ] && echo X-No-Allow || echo Allow)" \
		"$4"
}

# The Expires a phone registers with.
expires_of() { echo $((1800 + $1 % 1800)); }

# register NODE LABEL: sipp sends the REGISTERs of $WORK/LABEL.csv to NODE
# from the node's own address; fails unless every one gets its 200 OK.
register() {
	local n=$1 label=$2 calls ok
	calls=$(($(wc -l <"$WORK/$label.csv") - 1))
	(cd "$WORK" && sipp "$(ip_of "$n"):5060" -sf "$SCENARIO" \
		-inf "$WORK/$label.csv" -m "$calls" -r 200 -t u1 -i "$(ip_of "$n")" \
		-bind_local -nostdin -timeout 60 -trace_err \
		-error_file "$WORK/$label-errors.log" >"$WORK/$label.out" 2>&1) || {
		tail -n 20 "$WORK/$label.out" >&2
		die "sipp: some REGISTERs failed (see $WORK/$label-errors.log)"
	}
	ok=$(awk -F'|' '/Successful call/ { n = $3 + 0 } END { print n + 0 }' \
		"$WORK/$label.out")
	[ "$ok" -eq "$calls" ] || die "sipp: $ok of $calls REGISTERs answered 200 OK"
	say "  sipp: $ok of $calls REGISTERs answered 200 OK"
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

# same A B: the last dumps of nodes A and B hold the same contacts, every
# field equal, expiry within 2 s.
same() {
	local a=$WORK/dump/n$1 b=$WORK/dump/n$2
	cmp -s "$a.tsv" "$b.tsv" || return 1
	awk -F'\t' 'NR == FNR { e[$1 FS $2] = $3; next }
		!(($1 FS $2) in e) || ($3 - e[$1 FS $2]) > 2 \
			|| (e[$1 FS $2] - $3) > 2 { bad = 1 }
		END { exit bad }' "$a.exp" "$b.exp"
}

# holds_all NODE...: dumps each NODE; the first holds one contact for each
# phone of $WORK/want (registered and not de-registered), the others the
# same contacts, field by field.
holds_all() {
	local n
	for n in "$@"; do dump "$n"; done
	cut -f 1 "$WORK/dump/n$1.tsv" | sort | cmp -s - "$WORK/want" || return 1
	for n in "${@:2}"; do same "$1" "$n" || return 1; done
}

# What node $1's last dump lacks or holds beyond $WORK/want, and the first
# lines in which it differs from node $2's last dump (cut short).
explain() {
	local have missing extra
	have=$(cut -f 1 "$WORK/dump/n$1.tsv" | sort)
	missing=$(comm -13 <(echo "$have") "$WORK/want" | head -n 5 | paste -sd' ')
	extra=$(comm -23 <(echo "$have") "$WORK/want" | head -n 5 | paste -sd' ')
	say "node $1: $(count "$1") contacts, $(wc -l <"$WORK/want") expected;" \
		"missing: ${missing:-none}, not expected: ${extra:-none}"
	[ "$1" != "$2" ] || return 0
	diff "$WORK/dump/n$2.tsv" "$WORK/dump/n$1.tsv" | grep '^[<>]' | head -n 6 \
		| sed "s/^</    node $2:/; s/^>/    node $1:/" | cut -c 1-110 || true
}

# --- run ------------------------------------------------------------------

rm -rf "$WORK"
mkdir -p "$WORK"
say "work dir $WORK"
for n in "${NODES[@]}"; do make_node "$n"; done
for n in "${NODES[@]}"; do start_node "$n"; done
wait_for "$TIMEOUT" peers_up || die "sersync peer links not all up"
say "sersync links up between all ${#NODES[@]} nodes (usrloc in memory)"

# 1. Distribution: phones 0 .. USERS-1 register on node 1.
{
	echo SEQUENTIAL
	for i in $(seq 0 $((USERS - 1))); do
		phone "$i" "$(expires_of "$i")" $((1 + i)) "$(ip_of 1)"
	done
} >"$WORK/n1-reg.csv"
seq -f 'demo%04g' 0 $((USERS - 1)) | sort >"$WORK/want"
say "registering $USERS phones on node 1 with sipp"
register 1 n1-reg
if ! wait_for "$TIMEOUT" holds_all 1 2 3; then
	for n in "${NODES[@]}"; do explain "$n" 1; done
	die "the nodes differ after ${TIMEOUT} s"
fi
say "all nodes hold the same $USERS contacts, every field equal:"
head -n 3 "$WORK/dump/n1.tsv" | cut -f 1,2,7,8,12 | sed 's/^/    /'

# 2. Reload after a breakdown.
say "node 3 breaks down: SIGKILL to its process group (pid ${PIDS[3]})"
kill_node 3
# While it is down: new phones on nodes 1 and 2; a tenth of node 1's
# phones de-register through node 1, another tenth through node 2, and a
# tenth re-register through node 2 with a later Expires (a newer version
# than node 3's journal holds).
new=$((USERS / 6))
gone1=$(seq 1 10 $((USERS - 1)))
gone2=$(seq 6 10 $((USERS - 1)))
renew=$(seq 3 10 $((USERS - 1)))
{
	echo SEQUENTIAL
	for i in $(seq "$USERS" $((USERS + new - 1))); do
		phone "$i" "$(expires_of "$i")" $((1 + i)) "$(ip_of 1)"
	done
	for i in $gone1; do phone "$i" 0 $((2 + i)) "$(ip_of 1)"; done
} >"$WORK/n1-down.csv"
{
	echo SEQUENTIAL
	for i in $(seq $((USERS + new)) $((USERS + 2 * new - 1))); do
		phone "$i" "$(expires_of "$i")" $((1 + i)) "$(ip_of 2)"
	done
	for i in $gone2; do phone "$i" 0 $((2 + i)) "$(ip_of 1)"; done
	for i in $renew; do
		phone "$i" $(($(expires_of "$i") + 600)) $((12 + i)) "$(ip_of 1)"
	done
} >"$WORK/n2-down.csv"
for i in $(seq 0 $((USERS + 2 * new - 1))); do
	[ "$i" -lt "$USERS" ] && [[ $((i % 10)) == [16] ]] && continue
	printf 'demo%04d\n' "$i"
done | sort >"$WORK/want"
say "node 1: $new new phones, $(wc -w <<<"$gone1") de-register"
register 1 n1-down
say "node 2: $new new phones, $(wc -w <<<"$gone2") de-register," \
	"$(wc -w <<<"$renew") re-register"
register 2 n2-down
if ! wait_for "$TIMEOUT" holds_all 1 2; then
	explain 1 1
	explain 2 1
	die "nodes 1 and 2 differ after ${TIMEOUT} s"
fi
want=$(wc -l <"$WORK/want")
say "nodes 1 and 2 hold the same $want contacts"

say "starting node 3 again: same configuration, same journal, usrloc empty"
start_node 3
dump 3 || true
until same 1 3; do
	if [ "$(since_start 3 | cut -d. -f1)" -ge "$RESTORE_TIMEOUT" ]; then
		explain 3 1
		die "node 3 does not hold the cluster's contacts" \
			"${RESTORE_TIMEOUT} s after its restart"
	fi
	sleep 0.2
	dump 3 || true
done
took=$(since_start 3)
say "node 3 holds the cluster's $want contacts, every field equal," \
	"$took s after its start"
sed -n '/===== demo: SIGKILLed/,$p' "$(dir_of 3)/kamailio.log" \
	| grep -o 'restore: .*' | tail -n 1 | sed 's/^/    node 3 log: /'

# And it stays so once everything is acknowledged and applied: nothing
# de-registered comes back.
wait_for "$TIMEOUT" settled || die "sersync did not settle within ${TIMEOUT} s"
if ! holds_all 1 2 3; then
	for n in "${NODES[@]}"; do explain "$n" 1; done
	die "the nodes differ once settled"
fi
say "settled: all nodes hold the same $want contacts"
# Its own journal brought node 3's contacts back: peers alone (a snapshot,
# say) would make it whole too, and hide a broken restore.
restored=$(rpc 3 sersync.status | jq '.result.restored')
[ "$restored" = "$USERS" ] || die "node 3 restored $restored contacts" \
	"from its journal, which held $USERS"
for n in "${NODES[@]}"; do say "  $(status_line "$n")"; done
say "(sorted dumps: $WORK/dump/n*.tsv)"
say "ok"
