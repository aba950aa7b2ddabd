/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * RPC commands. sersync.status and sersync.peers read the engine's shared
 * status area; sersync.forget removes a member for good; sersync.resync
 * compares the state with peers' and SER's usrloc with it now;
 * sersync.apply is how the engine writes remote records into usrloc (and
 * aliases into their table): it calls it through SER's RPC door (jsonrpcs
 * FIFO), so the records are written inside SER, under usrloc's locks, by
 * an RPC process. The table of commands lists the alias RPCs too
 * (sersync.alias_*, sersync_alias_rpc.c), which manage the alias table for
 * web apps.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../../core/dprint.h"
#include "../../core/rpc.h"

#include "sersync_mod.h"

static const char *sersync_resync_state_str(int32_t state)
{
	switch(state) {
		case SERSYNC_RESYNC_NONE:
			return "none";
		case SERSYNC_RESYNC_PEERS:
			return "comparing with peers";
		case SERSYNC_RESYNC_SER:
			return "comparing SER's usrloc";
		case SERSYNC_RESYNC_DONE:
			return "done";
		case SERSYNC_RESYNC_FAILED:
			return "failed";
		default:
			return "unknown";
	}
}

static const char *sersync_peer_state_str(int32_t state)
{
	switch(state) {
		case SERSYNC_PEER_DOWN:
			return "down";
		case SERSYNC_PEER_CONNECTING:
			return "connecting";
		case SERSYNC_PEER_UP:
			return "up";
		case SERSYNC_PEER_REFUSED:
			return "refused";
		default:
			return "unknown";
	}
}

/* the strings of struct sersync_status are NUL-terminated by contract;
 * terminate them anyway before printing */
#define SERSYNC_TERM(a) ((a)[sizeof(a) - 1] = '\0')

/* the engine's status, read into one static copy (about 21 KiB; RPC
 * handlers run one at a time per process); NULL after a fault */
static struct sersync_status *sersync_status_get(rpc_t *rpc, void *ctx)
{
	static struct sersync_status st;
	uint32_t i;
	int rc;

	memset(&st, 0, sizeof(st));
	rc = sersync_status_read(_sersync_shared, &st);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot read sersync status (rc %d)", rc);
		return NULL;
	}
	SERSYNC_TERM(st.node_id);
	SERSYNC_TERM(st.last_error);
	SERSYNC_TERM(st.quarantine_last_reason);
	SERSYNC_TERM(st.resync_peer);
	SERSYNC_TERM(st.resync_result);
	if(st.nquarantine > SERSYNC_QUARANTINE_SHOWN)
		st.nquarantine = SERSYNC_QUARANTINE_SHOWN;
	for(i = 0; i < st.nquarantine; i++) {
		SERSYNC_TERM(st.quarantine[i].origin);
		SERSYNC_TERM(st.quarantine[i].record);
		SERSYNC_TERM(st.quarantine[i].reason);
	}
	if(st.npeers > SERSYNC_MAX_PEERS)
		st.npeers = SERSYNC_MAX_PEERS;
	for(i = 0; i < st.npeers; i++) {
		SERSYNC_TERM(st.peers[i].node_id);
		SERSYNC_TERM(st.peers[i].address);
		SERSYNC_TERM(st.peers[i].last_error);
	}
	return &st;
}

/* one member's struct, for sersync.status and sersync.peers */
static int sersync_peer_add(
		rpc_t *rpc, void *ph, struct sersync_peer_status *ps)
{
	return rpc->struct_add(ph, "sssJJJJJsJJJ", "node_id", ps->node_id,
			"address", ps->address, "state", sersync_peer_state_str(ps->state),
			"sent", (unsigned long long)ps->sent, "received",
			(unsigned long long)ps->received, "acked",
			(unsigned long long)ps->acked, "pending",
			(unsigned long long)ps->pending, "lag_ms",
			(unsigned long long)ps->lag_ms, "last_error", ps->last_error,
			"snapshot_sent", (unsigned long long)ps->snapshot_sent,
			"snapshot_total", (unsigned long long)ps->snapshot_total,
			"snapshot_received", (unsigned long long)ps->snapshot_received);
}

static const char *sersync_status_doc[2] = {
		"Engine status: node_id, running, queue_depth, queue_dropped,"
		" journaled, last_seq, journal_entries, applied, apply_pending,"
		" apply_failures, applied_via_db, apply_superseded, restored,"
		" restore_pending, set_aside, incarnation, last_error, quarantined,"
		" quarantine_last_reason, alias_scans, alias_scan_removed,"
		" alias_scan_refused, checks, ranges_compared, divergences,"
		" repaired, clock_refused, clock_refused_by_peers,"
		" clock_last_reason, clones_refused, clone_last_reason,"
		" preauth_refused,"
		" resync (the latest sersync.resync: state,"
		" peer, peers_total, peers_done, ranges_differing,"
		" ranges_compared, divergences, repaired, started, finished,"
		" result; and resyncs, those over since start), and peers: one"
		" struct per member as"
		" sersync.peers gives it; then module_version (sersync's) and"
		" kamailio_version (the Kamailio the module was built for).",
		0};

/* After rpc->scan(ctx, "*.S", ...) returned 0: 1 if a parameter is left
 * (one neither string nor number: jsonrpcs answers 0 for it as for the end
 * of the parameters, and does not move past it), 0 at the end. "d" reads
 * a parameter of any type. */
int sersync_rpc_left(rpc_t *rpc, void *ctx)
{
	int any = 0;

	return rpc->scan(ctx, "*d", &any) == 1;
}

/* 0 when the call has no parameter, else a 400 fault */
int sersync_rpc_no_params(rpc_t *rpc, void *ctx, const char *name)
{
	str extra = STR_NULL;

	if(rpc->scan(ctx, "*.S", &extra) != 0 || sersync_rpc_left(rpc, ctx)) {
		rpc->fault(ctx, 400, "%s takes no parameters", name);
		return -1;
	}
	return 0;
}

static void sersync_rpc_status(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;
	void *th;
	void *ah;
	void *ph;
	uint32_t i;

	if(sersync_rpc_no_params(rpc, ctx, "sersync.status") < 0)
		return;
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	if(rpc->add(ctx, "{", &th) < 0) {
		rpc->fault(ctx, 500, "Internal error creating reply");
		return;
	}
	if(rpc->struct_add(th, "sdJJJJJJJJJJJJJJs", "node_id", st->node_id, "running",
			   (int)st->running, "queue_depth",
			   (unsigned long long)st->queue_depth, "queue_dropped",
			   (unsigned long long)st->queue_dropped, "journaled",
			   (unsigned long long)st->journaled, "last_seq",
			   (unsigned long long)st->last_seq, "journal_entries",
			   (unsigned long long)st->journal_entries, "applied",
			   (unsigned long long)st->applied, "apply_pending",
			   (unsigned long long)st->apply_pending, "apply_failures",
			   (unsigned long long)st->apply_failures, "applied_via_db",
			   (unsigned long long)st->applied_via_db, "apply_superseded",
			   (unsigned long long)st->apply_superseded, "restored",
			   (unsigned long long)st->restored, "restore_pending",
			   (unsigned long long)st->restore_pending, "set_aside",
			   (unsigned long long)st->set_aside, "incarnation",
			   (unsigned long long)st->incarnation, "last_error",
			   st->last_error)
					< 0
			|| rpc->struct_add(th, "Js", "quarantined",
					   (unsigned long long)st->quarantined,
					   "quarantine_last_reason", st->quarantine_last_reason)
					   < 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* alias table scans ended by their end marker; the latest one's
	 * deletions, and those it refused (over the limit) */
	if(rpc->struct_add(th, "JJJ", "alias_scans",
			   (unsigned long long)st->alias_scans, "alias_scan_removed",
			   (unsigned long long)st->alias_scan_removed,
			   "alias_scan_refused",
			   (unsigned long long)st->alias_scan_refused)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* the check of usrloc against the journal (check_interval) */
	if(rpc->struct_add(th, "JJJJ", "checks", (unsigned long long)st->checks,
			   "ranges_compared", (unsigned long long)st->ranges_compared,
			   "divergences", (unsigned long long)st->divergences,
			   "repaired", (unsigned long long)st->repaired)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* the check of the journal against each peer's (peer_check_interval) */
	if(rpc->struct_add(th, "JJJJJ", "peer_checks",
			   (unsigned long long)st->peer_checks, "peer_check_ranges",
			   (unsigned long long)st->peer_check_ranges,
			   "peer_check_divergences",
			   (unsigned long long)st->peer_check_divergences,
			   "peer_check_repaired",
			   (unsigned long long)st->peer_check_repaired,
			   "peer_check_ignored",
			   (unsigned long long)st->peer_check_ignored)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* the bound on clock skew (max_clock_skew) */
	SERSYNC_TERM(st->clock_last_reason);
	if(rpc->struct_add(th, "JJs", "clock_refused",
			   (unsigned long long)st->clock_refused, "clock_refused_by_peers",
			   (unsigned long long)st->clock_refused_by_peers,
			   "clock_last_reason", st->clock_last_reason)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* two nodes running under one node id */
	SERSYNC_TERM(st->clone_last_reason);
	if(rpc->struct_add(th, "Js", "clones_refused",
			   (unsigned long long)st->clones_refused, "clone_last_reason",
			   st->clone_last_reason)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* incoming connections closed before they authenticated */
	if(rpc->struct_add(th, "J", "preauth_refused",
			   (unsigned long long)st->preauth_refused)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	/* the latest sersync.resync */
	if(rpc->struct_add(th, "{", "resync", &ph) < 0
			|| rpc->struct_add(ph, "ssddJJJJJJJs", "state",
					   sersync_resync_state_str(st->resync_state), "peer",
					   st->resync_peer[0] ? st->resync_peer : "all",
					   "peers_total", (int)st->resync_peers_total,
					   "peers_done", (int)st->resync_peers_done,
					   "ranges_differing",
					   (unsigned long long)st->resync_ranges_differing,
					   "ranges_compared",
					   (unsigned long long)st->resync_ranges_compared,
					   "divergences",
					   (unsigned long long)st->resync_divergences,
					   "repaired", (unsigned long long)st->resync_repaired,
					   "started", (unsigned long long)st->resync_started,
					   "finished", (unsigned long long)st->resync_finished,
					   "resyncs", (unsigned long long)st->resyncs, "result",
					   st->resync_result)
					   < 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	if(rpc->struct_add(th, "[", "peers", &ah) < 0) {
		rpc->fault(ctx, 500, "Internal error adding peers");
		return;
	}
	for(i = 0; i < st->npeers; i++) {
		if(rpc->array_add(ah, "{", &ph) < 0
				|| sersync_peer_add(rpc, ph, &st->peers[i]) < 0) {
			rpc->fault(ctx, 500, "Internal error adding peer status");
			return;
		}
	}
	/* what runs here: sersync's version (Cargo.toml, from the Makefile)
	 * and the Kamailio whose source tree it was compiled in (the core
	 * refuses a module built for another) */
	if(rpc->struct_add(th, "ss", "module_version", SERSYNC_VERSION,
			   "kamailio_version", VERSION)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
}

static const char *sersync_peers_doc[2] = {
		"Cluster members this node knows (configured seeds and members"
		" learned from them), one struct each: node_id, address, state"
		" (down, connecting, up, refused), sent, received, acked, pending"
		" (records), lag_ms, last_error, snapshot_sent, snapshot_total,"
		" snapshot_received.",
		0};

static void sersync_rpc_peers(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;
	void *ph;
	uint32_t i;

	if(sersync_rpc_no_params(rpc, ctx, "sersync.peers") < 0)
		return;
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	for(i = 0; i < st->npeers; i++) {
		if(rpc->add(ctx, "{", &ph) < 0
				|| sersync_peer_add(rpc, ph, &st->peers[i]) < 0) {
			rpc->fault(ctx, 500, "Internal error adding peer status");
			return;
		}
	}
}

/* exactly one non-empty string parameter, else a fault naming it */
static int sersync_rpc_one_param(
		rpc_t *rpc, void *ctx, const char *what, str *v)
{
	str extra = STR_NULL;

	if(rpc->scan(ctx, "S", v) != 1) {
		rpc->fault(ctx, 400, "Expected one string parameter: the %s", what);
		return -1;
	}
	if(rpc->scan(ctx, "*.S", &extra) != 0 || sersync_rpc_left(rpc, ctx)) {
		rpc->fault(ctx, 400, "Too many parameters: expected only the %s",
				what);
		return -1;
	}
	if(v->s == NULL || v->len <= 0) {
		rpc->fault(ctx, 400, "Empty %s", what);
		return -1;
	}
	return 0;
}

static const char *sersync_rc_name(int rc)
{
	switch(rc) {
		case SERSYNC_E_NULL:
			return "SERSYNC_E_NULL";
		case SERSYNC_E_PANIC:
			return "SERSYNC_E_PANIC";
		case SERSYNC_E_QUEUE_FULL:
			return "SERSYNC_E_QUEUE_FULL";
		case SERSYNC_E_TOO_LARGE:
			return "SERSYNC_E_TOO_LARGE";
		case SERSYNC_E_DECODE:
			return "SERSYNC_E_DECODE";
		case SERSYNC_E_IO:
			return "SERSYNC_E_IO";
		default:
			return "SERSYNC_E_OTHER";
	}
}

static const char *sersync_forget_doc[2] = {
		"Remove a member from the cluster for good: sersync.forget node_id."
		" Every member stops dialing it, drops what its journal kept for it"
		" and refuses it from then on. Only for a node that is gone: one"
		" merely down is caught up when it returns. Returns \"ok\".",
		0};

/*
 * A node_id given to an RPC: at most SERSYNC_ID_MAX - 1 characters of
 * printable ASCII without spaces, and not this node's (self_hint ends the
 * fault "<id> is this node: "). Faults and returns -1 otherwise.
 */
static int sersync_rpc_check_node_id(
		rpc_t *rpc, void *ctx, const str *id, const char *self_hint)
{
	int i;

	if(id->len >= SERSYNC_ID_MAX) {
		rpc->fault(ctx, 400, "node_id must be at most %d characters (got %d)",
				SERSYNC_ID_MAX - 1, id->len);
		return -1;
	}
	for(i = 0; i < id->len; i++) {
		if(id->s[i] <= ' ' || id->s[i] > '~') {
			rpc->fault(ctx, 400, "node_id must be printable ASCII without"
								 " spaces (character %d is not)",
					i + 1);
			return -1;
		}
	}
	if(id->len == _sersync_node_id.len
			&& memcmp(id->s, _sersync_node_id.s, id->len) == 0) {
		rpc->fault(ctx, 400, "%.*s is this node: %s", id->len, id->s,
				self_hint);
		return -1;
	}
	return 0;
}

/*
 * The index in st->peers of the member named id; faults (404) and returns
 * -1 for a name this node does not know.
 */
static int sersync_rpc_member(
		rpc_t *rpc, void *ctx, const struct sersync_status *st, const str *id)
{
	uint32_t i;

	for(i = 0; i < st->npeers; i++) {
		if(strlen(st->peers[i].node_id) == (size_t)id->len
				&& memcmp(st->peers[i].node_id, id->s, id->len) == 0)
			return (int)i;
	}
	rpc->fault(ctx, 404, "%.*s is not a member this node knows"
						 " (see sersync.peers)",
			id->len, id->s);
	return -1;
}

static void sersync_rpc_forget(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;
	str id = STR_NULL;
	int rc;

	if(sersync_rpc_one_param(rpc, ctx, "node_id", &id) < 0)
		return;
	if(sersync_rpc_check_node_id(rpc, ctx, &id, "forget it on another member")
			< 0)
		return;
	/* a typo must not ban a name for good: only a known member */
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	if(sersync_rpc_member(rpc, ctx, st, &id) < 0)
		return;
	rc = sersync_forget(_sersync_shared, id.s, (size_t)id.len);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot forget %.*s: %s (rc %d)", id.len, id.s,
				sersync_rc_name(rc), rc);
		return;
	}
	LM_INFO("member %.*s forgotten on request\n", id.len, id.s);
	rpc->add(ctx, "s", "ok");
}

static const char *sersync_resync_doc[2] = {
		"Compare this node's state with a peer's now, key range by key"
		" range, and send or take what differs; then SER's usrloc with the"
		" state, repairing what differs: sersync.resync [node_id] (none:"
		" every peer). Returns \"started\" at once; sersync.status shows"
		" its progress and outcome (resync). One at a time: fault 409"
		" while one runs.",
		0};

/* a resync already runs: say which and how far it got */
static void sersync_resync_busy(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;

	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	if(st->resync_state != SERSYNC_RESYNC_PEERS
			&& st->resync_state != SERSYNC_RESYNC_SER) {
		rpc->fault(ctx, 409, "A resync is already running (just asked for)");
		return;
	}
	rpc->fault(ctx, 409,
			"A resync is already running with %s: %s, %u of %u peers done,"
			" %llu of %llu ranges compared",
			st->resync_peer[0] ? st->resync_peer : "every peer",
			sersync_resync_state_str(st->resync_state),
			st->resync_peers_done, st->resync_peers_total,
			(unsigned long long)st->resync_ranges_compared,
			(unsigned long long)st->resync_ranges_differing);
}

static void sersync_rpc_resync(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;
	str id = STR_NULL;
	str extra = STR_NULL;
	uint32_t i;
	int mi;
	int rc;

	if(rpc->scan(ctx, "*S", &id) != 1) {
		if(sersync_rpc_left(rpc, ctx)) {
			rpc->fault(ctx, 400, "node_id must be a string (or none: every"
								 " peer)");
			return;
		}
		id.s = NULL;
		id.len = 0;
	} else {
		if(rpc->scan(ctx, "*.S", &extra) != 0 || sersync_rpc_left(rpc, ctx)) {
			rpc->fault(ctx, 400, "Too many parameters: expected at most the"
								 " node_id");
			return;
		}
		if(id.s == NULL || id.len <= 0) {
			rpc->fault(ctx, 400, "Empty node_id: give a member's, or none"
								 " for every peer");
			return;
		}
		if(sersync_rpc_check_node_id(
				   rpc, ctx, &id, "name a peer to compare it with")
				< 0)
			return;
	}
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	if(!st->running) {
		rpc->fault(ctx, 503, "The sersync engine is not running");
		return;
	}
	if(id.len > 0) {
		mi = sersync_rpc_member(rpc, ctx, st, &id);
		if(mi < 0)
			return;
		i = (uint32_t)mi;
		if(st->peers[i].state != SERSYNC_PEER_UP) {
			rpc->fault(ctx, 409, "%.*s is %s: a resync needs it connected",
					id.len, id.s, sersync_peer_state_str(st->peers[i].state));
			return;
		}
	}
	rc = sersync_resync(_sersync_shared, id.s, (size_t)id.len);
	if(rc == SERSYNC_E_BUSY) {
		sersync_resync_busy(rpc, ctx);
		return;
	}
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot start the resync: %s (rc %d)",
				sersync_rc_name(rc), rc);
		return;
	}
	if(id.len > 0)
		LM_INFO("resync with %.*s asked for\n", id.len, id.s);
	else
		LM_INFO("resync with every peer asked for\n");
	rpc->add(ctx, "s", "started");
}

static const char *sersync_apply_doc[2] = {
		"Apply a batch of replicated contacts (to usrloc) and aliases (to"
		" their table). The engine's only: takes its token (drawn at SER's"
		" start, never shown; fault 403 without it) and one string,"
		" the payload the sersync engine encodes; returns the number of"
		" records applied, or stops at a record that fails: fault 422"
		" \"Record N refused: why\" (never appliable here as it is) or 500"
		" \"Apply failed at record N: why\". Used by the engine itself.",
		0};

/* the writers: contacts into usrloc (sersync_ul.c), aliases into their
 * table (sersync_alias.c) */
static const struct sersync_apply_ops sersync_apply_ops = {
		.contact = sersync_apply_one,
		.alias = sersync_alias_apply,
		.ctx = NULL};

/* why the record sersync.apply stopped at failed, from its writer; keep
 * reasons under about 100 characters: jsonrpcs cuts a fault's message at
 * 128 bytes */
static char _sersync_apply_reason[SERSYNC_ERR_MAX];

static void sersync_apply_reason_set(const char *fmt, va_list ap)
{
	vsnprintf(_sersync_apply_reason, sizeof(_sersync_apply_reason), fmt, ap);
}

int sersync_apply_refuse(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sersync_apply_reason_set(fmt, ap);
	va_end(ap);
	return SERSYNC_APPLY_REFUSED;
}

int sersync_apply_fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sersync_apply_reason_set(fmt, ap);
	va_end(ap);
	return -1;
}

static void sersync_rpc_apply(rpc_t *rpc, void *ctx)
{
	str token = STR_NULL;
	str payload = STR_NULL;
	char err[SERSYNC_ERR_MAX];
	uint32_t count;
	int rc;

	/* the engine's token first: whoever reaches an RPC door (a web
	 * application's HTTP port) must not write records into usrloc that
	 * were never replicated */
	if(rpc->scan(ctx, "S", &token) != 1 || token.s == NULL
			|| sersync_apply_token_check(
					   _sersync_shared, token.s, (size_t)token.len)
					   != SERSYNC_OK) {
		LM_WARN("sersync.apply refused: wrong or missing token (only the"
				" sersync engine may call it)\n");
		rpc->fault(ctx, 403, "sersync.apply is the sersync engine's own:"
							 " wrong or missing token");
		return;
	}
	if(sersync_rpc_one_param(rpc, ctx, "payload", &payload) < 0)
		return;
	if(!sersync_ul_is_loaded()) {
		/* the engine retries; see sersync_ul_is_loaded() */
		rpc->fault(ctx, 503, "usrloc is still loading its tables; retry");
		return;
	}

	count = 0;
	_sersync_replaying = 1;
	err[0] = '\0';
	_sersync_apply_reason[0] = '\0';
	rc = sersync_apply_decode(payload.s, (size_t)payload.len,
			&sersync_apply_ops, &count, err, sizeof(err));
	_sersync_replaying = 0;

	switch(rc) {
		case SERSYNC_OK:
			break;
		case SERSYNC_E_DECODE:
			rpc->fault(ctx, 400, "Malformed payload: %s", err);
			return;
		/* the engine reads the index and the reason (src/apply/door.rs):
		 * it applied the records before it, and quarantines or retries it */
		case SERSYNC_E_REFUSED:
			rpc->fault(ctx, 422, "Record %u refused: %s", (unsigned int)count,
					_sersync_apply_reason);
			return;
		case SERSYNC_E_CALLBACK:
			rpc->fault(ctx, 500, "Apply failed at record %u%s%s",
					(unsigned int)count, _sersync_apply_reason[0] ? ": " : "",
					_sersync_apply_reason);
			return;
		default:
			rpc->fault(ctx, 500, "Apply failed (rc %d) after %u record(s)", rc,
					(unsigned int)count);
			return;
	}
	rpc->add(ctx, "u", (unsigned int)count);
}

static const char *sersync_quarantine_doc[2] = {
		"Remote changes this node's SER refused (a usrloc table it lacks,"
		" an invalid field, too large for the door) or failed on too often,"
		" set aside so that the changes behind them are applied: quarantined"
		" (how many), last_reason (of the newest), and records: the oldest"
		" 16, each with id, origin, seq (the origin's sequence, 0 if not"
		" known), stamp, at (unix time set aside), tries, record, reason.",
		0};

static void sersync_rpc_quarantine(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;
	struct sersync_quarantined *q;
	void *th;
	void *ah;
	void *qh;
	uint32_t i;

	if(sersync_rpc_no_params(rpc, ctx, "sersync.quarantine") < 0)
		return;
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	if(rpc->add(ctx, "{", &th) < 0
			|| rpc->struct_add(th, "Js", "quarantined",
					   (unsigned long long)st->quarantined, "last_reason",
					   st->quarantine_last_reason)
					   < 0
			|| rpc->struct_add(th, "[", "records", &ah) < 0) {
		rpc->fault(ctx, 500, "Internal error creating reply");
		return;
	}
	for(i = 0; i < st->nquarantine; i++) {
		q = &st->quarantine[i];
		if(rpc->array_add(ah, "{", &qh) < 0
				|| rpc->struct_add(qh, "JsJJJdss", "id",
						   (unsigned long long)q->id, "origin", q->origin,
						   "seq", (unsigned long long)q->seq, "stamp",
						   (unsigned long long)q->stamp, "at",
						   (unsigned long long)q->at, "tries", (int)q->tries,
						   "record", q->record, "reason", q->reason)
						   < 0) {
			rpc->fault(ctx, 500, "Internal error adding a record");
			return;
		}
	}
}

/* sersync.quarantine_retry / _drop: one parameter, "all" or an id the
 * quarantine holds (as sersync.quarantine lists it); queued for the
 * engine */
static void sersync_rpc_quarantine_ctl(
		rpc_t *rpc, void *ctx, int action, const char *name)
{
	struct sersync_status *st;
	str v = STR_NULL;
	str extra = STR_NULL;
	unsigned long long id;
	uint32_t i;
	int rc;

	if(rpc->scan(ctx, ".S", &v) != 1 || v.s == NULL || v.len <= 0) {
		rpc->fault(ctx, 400, "Expected one parameter: all, or the id of a"
							 " quarantined change (see sersync.quarantine)");
		return;
	}
	if(rpc->scan(ctx, "*.S", &extra) != 0 || sersync_rpc_left(rpc, ctx)) {
		rpc->fault(ctx, 400, "Too many parameters: expected all or one id");
		return;
	}
	id = 0;
	if(!(v.len == 3 && strncasecmp(v.s, "all", 3) == 0)) {
		if(v.len > 18) {
			rpc->fault(ctx, 400, "id too long: %.*s", v.len > 20 ? 20 : v.len,
					v.s);
			return;
		}
		for(i = 0; i < (uint32_t)v.len; i++) {
			if(v.s[i] < '0' || v.s[i] > '9') {
				rpc->fault(ctx, 400, "Expected all or a number, got \"%.*s\"",
						v.len > 64 ? 64 : v.len, v.s);
				return;
			}
			id = id * 10 + (unsigned long long)(v.s[i] - '0');
		}
		if(id == 0) {
			rpc->fault(ctx, 400, "Quarantine ids start at 1");
			return;
		}
	}
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	if(st->quarantined == 0) {
		rpc->fault(ctx, 404, "Nothing is quarantined");
		return;
	}
	if(id != 0 && st->quarantined <= st->nquarantine) {
		/* the status lists them all: an id not among them is unknown */
		for(i = 0; i < st->nquarantine; i++)
			if(st->quarantine[i].id == id)
				break;
		if(i == st->nquarantine) {
			rpc->fault(ctx, 404, "No quarantined change %llu (see"
								 " sersync.quarantine)",
					id);
			return;
		}
	}
	rc = sersync_quarantine_ctl(_sersync_shared, action, (uint64_t)id);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot queue %s: %s (rc %d)", name,
				sersync_rc_name(rc), rc);
		return;
	}
	LM_INFO("%s %.*s requested\n", name, v.len, v.s);
	rpc->add(ctx, "s", "ok");
}

static const char *sersync_quarantine_retry_doc[2] = {
		"Try quarantined changes again: sersync.quarantine_retry all|id."
		" They go back to the applier, after what is staged; one that still"
		" fails is quarantined again (a new id). Returns \"ok\" once queued"
		" for the engine; sersync.quarantine shows the outcome.",
		0};

static void sersync_rpc_quarantine_retry(rpc_t *rpc, void *ctx)
{
	sersync_rpc_quarantine_ctl(rpc, ctx, SERSYNC_QUARANTINE_RETRY,
			"sersync.quarantine_retry");
}

static const char *sersync_quarantine_drop_doc[2] = {
		"Forget quarantined changes: sersync.quarantine_drop all|id. This"
		" node's SER gets such a change only if a newer version of its key"
		" comes. Returns \"ok\" once queued for the engine.",
		0};

static void sersync_rpc_quarantine_drop(rpc_t *rpc, void *ctx)
{
	sersync_rpc_quarantine_ctl(rpc, ctx, SERSYNC_QUARANTINE_DROP,
			"sersync.quarantine_drop");
}

/* one reply's text: under jsonrpcs' datagram size (65456 bytes) with the
 * JSON around it */
#define SERSYNC_WALK_REPLY_MAX 60000

static char _sersync_walk_reply[SERSYNC_WALK_REPLY_MAX];

/* The walk of sersync.digest_range's first page, kept in this process for
 * the next pages of the same request (same argument and time), so that a
 * request of N pages walks usrloc once, not N times. Freed when a request
 * with another argument starts or the last page is read. */
static struct sersync_walk *_sersync_walk_kept = NULL;
static char *_sersync_walk_kept_arg = NULL;
static int _sersync_walk_kept_now = 0;
static int _sersync_walk_kept_aliases = 0;

/* what a walk reads: usrloc (sersync_ul_walk) or the alias table
 * (sersync_alias_walk); 0, -1 (fault 500) or -2 (fault 404) */
typedef int (*sersync_walker_f)(struct sersync_walk *w, uint64_t *n,
		uint64_t *max_lock_ns, char *err, size_t errlen);

static void sersync_walk_forget(void)
{
	if(_sersync_walk_kept != NULL)
		sersync_walk_free(_sersync_walk_kept);
	_sersync_walk_kept = NULL;
	if(_sersync_walk_kept_arg != NULL)
		free(_sersync_walk_kept_arg);
	_sersync_walk_kept_arg = NULL;
}

/* the kept walk of (arg, now), or NULL */
static struct sersync_walk *sersync_walk_find(
		const str *arg, int now, int aliases)
{
	if(_sersync_walk_kept == NULL || _sersync_walk_kept_now != now
			|| _sersync_walk_kept_aliases != aliases
			|| strlen(_sersync_walk_kept_arg) != (size_t)arg->len
			|| memcmp(_sersync_walk_kept_arg, arg->s, arg->len) != 0)
		return NULL;
	return _sersync_walk_kept;
}

/* keeps w for the next pages of (arg, now); 0, or -1 (w not kept) */
static int sersync_walk_keep(
		struct sersync_walk *w, const str *arg, int now, int aliases)
{
	sersync_walk_forget();
	_sersync_walk_kept_arg = malloc(arg->len + 1);
	if(_sersync_walk_kept_arg == NULL)
		return -1;
	memcpy(_sersync_walk_kept_arg, arg->s, arg->len);
	_sersync_walk_kept_arg[arg->len] = '\0';
	_sersync_walk_kept = w;
	_sersync_walk_kept_now = now;
	_sersync_walk_kept_aliases = aliases;
	return 0;
}

/* walks usrloc into w (unless walked is set: w holds an earlier page's
 * walk) and adds the reply: the digest, or what w keeps from skip on (one
 * page); *next: the next page's skip, 0 for the last */
static void sersync_rpc_walk(rpc_t *rpc, void *ctx, sersync_walker_f walker,
		struct sersync_walk *w, int ranges, uint64_t skip, int walked,
		uint64_t *next)
{
	struct timespec t0;
	struct timespec t1;
	char err[SERSYNC_ERR_MAX];
	uint64_t contacts = 0;
	uint64_t max_lock_ns = 0;
	uint64_t count;
	uint64_t walk_us = 0;
	void *th;
	int rc;

	*next = 0;
	if(!walked) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		rc = walker(w, &contacts, &max_lock_ns, err, sizeof(err));
		if(rc < 0) {
			rpc->fault(ctx, rc == -2 ? 404 : 500, "Cannot walk %s: %s",
					walker == sersync_ul_walk ? "usrloc" : "the alias table",
					err);
			return;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		walk_us = (uint64_t)(((int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL
									 + (int64_t)(t1.tv_nsec - t0.tv_nsec))
							 / 1000);
	}
	rc = sersync_walk_reply(w, skip, _sersync_walk_reply,
			sizeof(_sersync_walk_reply), next, &count);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot encode the walk (rc %d)", rc);
		return;
	}
	if(rpc->add(ctx, "{", &th) < 0
			|| rpc->struct_add(th, "sJJJJ", ranges ? "contacts" : "digest",
					   _sersync_walk_reply, "count",
					   (unsigned long long)count, "next",
					   (unsigned long long)*next, "walk_us",
					   (unsigned long long)walk_us, "max_lock_us",
					   (unsigned long long)(max_lock_ns / 1000))
					   < 0
			|| rpc->struct_add(th, "J", "walked",
					   (unsigned long long)contacts)
					   < 0
			|| (walker == sersync_alias_walk
					&& rpc->struct_add(th, "S", "table", &_sersync_alias_table)
							   < 0)) {
		rpc->fault(ctx, 500, "Internal error creating reply");
		return;
	}
}

static const char *sersync_digest_doc[2] = {
		"The digest of the contacts of the replicated usrloc tables, walked"
		" inside SER (one slot lock at a time): sersync.digest [now]. now:"
		" the unix time the check is made at (default: now); contacts"
		" expiring within 30 s of it are left out. Returns digest (base64;"
		" src/digest.rs), count (contacts digested), walked, walk_us and"
		" max_lock_us (the longest a slot lock was held). Used by the"
		" engine's check (check_interval).",
		0};

static void sersync_rpc_digest(rpc_t *rpc, void *ctx)
{
	struct sersync_walk *w;
	uint64_t next;
	int now = 0;
	int rc;

	if(rpc->scan(ctx, "*d", &now) < 1)
		now = 0;
	if(sersync_rpc_left(rpc, ctx)) {
		rpc->fault(ctx, 400, "sersync.digest takes at most one parameter:"
							 " the unix time of the check");
		return;
	}
	if(now <= 0)
		now = (int)time(NULL);
	w = NULL;
	rc = sersync_walk_new((int64_t)now, NULL, 0, &w);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot start the walk (rc %d)", rc);
		return;
	}
	sersync_rpc_walk(rpc, ctx, sersync_ul_walk, w, 0, 0, 0, &next);
	sersync_walk_free(w);
}

static const char *sersync_digest_range_doc[2] = {
		"Contacts of some ranges of the digest, walked inside SER:"
		" sersync.digest_range what [now [skip]]. what: comma-separated"
		" range numbers, 0 to 255 (their contacts); h: and range numbers"
		" (their contacts' version hashes, about 9 bytes each); p: and"
		" comma-separated hex version hashes, at most 2500 (those contacts)."
		" skip: items of earlier pages (the walk of the first page is kept"
		" for the next ones). Returns contacts (base64 of the encoded list,"
		" at most about 60 KB), count (items in all), next (skip of the next"
		" page; 0: last), walked, walk_us, max_lock_us. Used by the engine's"
		" check.",
		0};

/* sersync.digest_range and sersync.alias_digest's pages: what (scanned
 * by the caller; rc: the scan's) [now [skip]] */
static void sersync_rpc_walk_paged(
		rpc_t *rpc, void *ctx, int aliases, int rc, str ranges)
{
	struct sersync_walk *w;
	uint64_t next;
	int now = 0;
	int skip = 0;
	int walked;

	if(rc != 1 || ranges.s == NULL || ranges.len <= 0) {
		rpc->fault(ctx, 400, "Expected what to walk: comma-separated range"
							 " numbers 0 to 255, h:ranges or p:hashes");
		return;
	}
	rc = rpc->scan(ctx, "*dd", &now, &skip);
	if(rc < 1)
		now = 0;
	if(rc < 2)
		skip = 0;
	if(sersync_rpc_left(rpc, ctx) || skip < 0) {
		rpc->fault(ctx, 400, "Expected what [now [skip]]");
		return;
	}
	if(now <= 0)
		now = (int)time(NULL);
	w = skip > 0 ? sersync_walk_find(&ranges, now, aliases) : NULL;
	walked = w != NULL;
	if(w == NULL) {
		sersync_walk_forget();
		rc = sersync_walk_new((int64_t)now, ranges.s, (size_t)ranges.len, &w);
		if(rc == SERSYNC_E_DECODE) {
			rpc->fault(ctx, 400,
					"Bad argument \"%.*s\": comma-separated range numbers 0"
					" to 255, h:ranges or p:hex hashes (at most 2500)",
					ranges.len > 64 ? 64 : ranges.len, ranges.s);
			return;
		}
		if(rc != SERSYNC_OK) {
			rpc->fault(ctx, 500, "Cannot start the walk (rc %d)", rc);
			return;
		}
	}
	sersync_rpc_walk(rpc, ctx, aliases ? sersync_alias_walk : sersync_ul_walk,
			w, 1, (uint64_t)skip, walked, &next);
	if(next == 0) {
		if(walked)
			sersync_walk_forget();
		else
			sersync_walk_free(w);
	} else if(!walked && sersync_walk_keep(w, &ranges, now, aliases) < 0) {
		sersync_walk_free(w);
	}
}

static void sersync_rpc_digest_range(rpc_t *rpc, void *ctx)
{
	str what = STR_NULL;
	int rc;

	rc = rpc->scan(ctx, "S", &what);
	sersync_rpc_walk_paged(rpc, ctx, 0, rc, what);
}

static const char *sersync_alias_digest_doc[2] = {
		"The check of the alias table (alias_table) against the journal:"
		" sersync.alias_digest [what [now [skip]]]. Without what: the digest"
		" of every row (src/digest.rs), with table, count and walked. what:"
		" comma-separated range numbers, 0 to 255: the rows of those ranges,"
		" paged as sersync.digest_range pages. 404 when aliases are not"
		" replicated on this node. Used by the engine's check.",
		0};

static void sersync_rpc_alias_digest(rpc_t *rpc, void *ctx)
{
	struct sersync_walk *w;
	str what = STR_NULL;
	uint64_t next;
	int rc;

	rc = rpc->scan(ctx, "*S", &what);
	if(rc >= 1) {
		sersync_rpc_walk_paged(rpc, ctx, 1, rc, what);
		return;
	}
	w = NULL;
	rc = sersync_walk_new((int64_t)time(NULL), NULL, 0, &w);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot start the walk (rc %d)", rc);
		return;
	}
	sersync_rpc_walk(rpc, ctx, sersync_alias_walk, w, 0, 0, 0, &next);
	sersync_walk_free(w);
}

/* clang-format off */
rpc_export_t sersync_rpc_cmds[] = {
	{"sersync.status", sersync_rpc_status, sersync_status_doc, 0},
	{"sersync.peers",  sersync_rpc_peers,  sersync_peers_doc,  RET_ARRAY},
	{"sersync.forget", sersync_rpc_forget, sersync_forget_doc, 0},
	{"sersync.resync", sersync_rpc_resync, sersync_resync_doc, 0},
	{"sersync.apply",  sersync_rpc_apply,  sersync_apply_doc,  0},
	{"sersync.digest", sersync_rpc_digest, sersync_digest_doc, 0},
	{"sersync.digest_range", sersync_rpc_digest_range,
		sersync_digest_range_doc, 0},
	{"sersync.alias_digest", sersync_rpc_alias_digest,
		sersync_alias_digest_doc, 0},
	{"sersync.quarantine",       sersync_rpc_quarantine,
		sersync_quarantine_doc,       0},
	{"sersync.quarantine_retry", sersync_rpc_quarantine_retry,
		sersync_quarantine_retry_doc, 0},
	{"sersync.quarantine_drop",  sersync_rpc_quarantine_drop,
		sersync_quarantine_drop_doc,  0},
	{"sersync.alias_add",     sersync_rpc_alias_add,
		sersync_alias_add_doc,     0},
	{"sersync.alias_replace", sersync_rpc_alias_replace,
		sersync_alias_replace_doc, 0},
	{"sersync.alias_rm",      sersync_rpc_alias_rm,
		sersync_alias_rm_doc,      0},
	{"sersync.alias_list",    sersync_rpc_alias_list,
		sersync_alias_list_doc,    RET_ARRAY},
	{"sersync.alias_rescan",  sersync_rpc_alias_rescan,
		sersync_alias_rescan_doc,  0},
	{"sersync.alias_rescan_confirm", sersync_rpc_alias_rescan_confirm,
		sersync_alias_rescan_confirm_doc, 0},
	{0, 0, 0, 0}
};
/* clang-format on */
