/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * RPC commands. sersync.status and sersync.peers read the engine's shared
 * status area; sersync.forget removes a member for good;
 * sersync.apply is how the engine writes remote records into usrloc (and
 * aliases into their table): it calls it through SER's RPC door (jsonrpcs
 * FIFO), so the records are written inside SER, under usrloc's locks, by
 * an RPC process. sersync.alias_* manage the alias table for web apps.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stdlib.h>
#include <string.h>

#include "../../core/dprint.h"
#include "../../core/mem/mem.h"
#include "../../core/rpc.h"

#include "sersync_mod.h"

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

/* the engine's status, read into one static copy (about 12 KiB; RPC
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
		" apply_failures, applied_via_db, last_error, and peers: one struct"
		" per member as sersync.peers gives it.",
		0};

/* After rpc->scan(ctx, "*.S", ...) returned 0: 1 if a parameter is left
 * (one neither string nor number: jsonrpcs answers 0 for it as for the end
 * of the parameters, and does not move past it), 0 at the end. "d" reads
 * a parameter of any type. */
static int sersync_rpc_left(rpc_t *rpc, void *ctx)
{
	int any = 0;

	return rpc->scan(ctx, "*d", &any) == 1;
}

/* 0 when the call has no parameter, else a 400 fault */
static int sersync_rpc_no_params(rpc_t *rpc, void *ctx, const char *name)
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
	if(rpc->struct_add(th, "sdJJJJJJJJJs", "node_id", st->node_id, "running",
			   (int)st->running, "queue_depth",
			   (unsigned long long)st->queue_depth, "queue_dropped",
			   (unsigned long long)st->queue_dropped, "journaled",
			   (unsigned long long)st->journaled, "last_seq",
			   (unsigned long long)st->last_seq, "journal_entries",
			   (unsigned long long)st->journal_entries, "applied",
			   (unsigned long long)st->applied, "apply_pending",
			   (unsigned long long)st->apply_pending, "apply_failures",
			   (unsigned long long)st->apply_failures, "applied_via_db",
			   (unsigned long long)st->applied_via_db, "last_error",
			   st->last_error)
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

static void sersync_rpc_forget(rpc_t *rpc, void *ctx)
{
	struct sersync_status *st;
	str id = STR_NULL;
	uint32_t i;
	int rc;

	if(sersync_rpc_one_param(rpc, ctx, "node_id", &id) < 0)
		return;
	if(id.len >= SERSYNC_ID_MAX) {
		rpc->fault(ctx, 400, "node_id must be at most %d characters (got %d)",
				SERSYNC_ID_MAX - 1, id.len);
		return;
	}
	for(i = 0; i < (uint32_t)id.len; i++) {
		if(id.s[i] <= ' ' || id.s[i] > '~') {
			rpc->fault(ctx, 400, "node_id must be printable ASCII without"
								 " spaces (character %u is not)",
					i + 1);
			return;
		}
	}
	if(id.len == _sersync_node_id.len
			&& memcmp(id.s, _sersync_node_id.s, id.len) == 0) {
		rpc->fault(ctx, 400, "%.*s is this node: forget it on another member",
				id.len, id.s);
		return;
	}
	/* a typo must not ban a name for good: only a known member */
	st = sersync_status_get(rpc, ctx);
	if(st == NULL)
		return;
	for(i = 0; i < st->npeers; i++) {
		if(strlen(st->peers[i].node_id) == (size_t)id.len
				&& memcmp(st->peers[i].node_id, id.s, id.len) == 0)
			break;
	}
	if(i == st->npeers) {
		rpc->fault(ctx, 404, "%.*s is not a member this node knows"
							 " (see sersync.peers)",
				id.len, id.s);
		return;
	}
	rc = sersync_forget(_sersync_shared, id.s, (size_t)id.len);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot forget %.*s: %s (rc %d)", id.len, id.s,
				sersync_rc_name(rc), rc);
		return;
	}
	LM_INFO("member %.*s forgotten on request\n", id.len, id.s);
	rpc->add(ctx, "s", "ok");
}

static const char *sersync_apply_doc[2] = {
		"Apply a batch of replicated contacts (to usrloc) and aliases (to"
		" their table). Takes one string,"
		" the payload the sersync engine encodes; returns the number of"
		" records applied. Used by the engine itself.",
		0};

static const struct sersync_apply_ops sersync_apply_ops = {
		.contact = sersync_apply_one,
		.alias = sersync_alias_apply,
		.ctx = NULL};

static void sersync_rpc_apply(rpc_t *rpc, void *ctx)
{
	str payload = STR_NULL;
	char err[SERSYNC_ERR_MAX];
	uint32_t count;
	int rc;

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
	rc = sersync_apply_decode(payload.s, (size_t)payload.len,
			&sersync_apply_ops, &count, err, sizeof(err));
	_sersync_replaying = 0;

	switch(rc) {
		case SERSYNC_OK:
			break;
		case SERSYNC_E_DECODE:
			rpc->fault(ctx, 400, "Malformed payload: %s", err);
			return;
		case SERSYNC_E_CALLBACK:
			rpc->fault(ctx, 500, "Apply failed after %u record(s)",
					(unsigned int)count);
			return;
		default:
			rpc->fault(ctx, 500, "Apply failed (rc %d) after %u record(s)", rc,
					(unsigned int)count);
			return;
	}
	rpc->add(ctx, "u", (unsigned int)count);
}

/*
 * Alias RPCs. Arguments are read and every URI validated before the
 * table is touched: a bad item faults 400, naming it, and changes
 * nothing. Writes hold the alias lock; each changed row is published to
 * the engine, which journals it and sends it to every peer.
 */

/* items per call, whatever the form */
#define SERSYNC_ALIAS_ITEMS_MAX 100000
/* how much of a bad item a fault message quotes: jsonrpcs cuts fault
 * messages at 127 characters, the reason comes first */
#define SERSYNC_ALIAS_QUOTE_MAX 32

/* one item of an alias RPC: an alias URI and maybe a target URI */
struct sersync_alias_item
{
	str alias;
	str target; /* len 0: none */
	int pos;	/* parameter or line number, from 1 */
	struct sersync_alias_row row;
};

struct sersync_alias_req
{
	str *params;
	int nparams;
	int pcap;
	struct sersync_alias_item *items;
	int n;
	int icap;
	int lines; /* items came from one string of lines */
};

/* rows read back from the table, each one pkg block with its strings */
struct sersync_alias_rows
{
	struct sersync_alias_row *r;
	int n;
	int cap;
};

static void sersync_alias_req_free(struct sersync_alias_req *req)
{
	if(req->params != NULL)
		pkg_free(req->params);
	if(req->items != NULL)
		pkg_free(req->items);
	memset(req, 0, sizeof(*req));
}

static void sersync_alias_rows_free(struct sersync_alias_rows *rows)
{
	int i;

	for(i = 0; i < rows->n; i++)
		pkg_free(rows->r[i].auser.s);
	if(rows->r != NULL)
		pkg_free(rows->r);
	memset(rows, 0, sizeof(*rows));
}

/* grows *arr (of size elem) to hold at least need entries */
static int sersync_grow(void **arr, int *cap, int need, size_t elem)
{
	void *p;
	int ncap;

	if(need <= *cap)
		return 0;
	ncap = (*cap > 0) ? *cap * 2 : 16;
	while(ncap < need)
		ncap *= 2;
	p = pkg_realloc(*arr, (size_t)ncap * elem);
	if(p == NULL) {
		PKG_MEM_ERROR;
		return -1;
	}
	*arr = p;
	*cap = ncap;
	return 0;
}

/* every parameter, as strings (numbers converted) */
static int sersync_alias_params(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	str s;
	int rc;

	for(;;) {
		s.s = NULL;
		s.len = 0;
		rc = rpc->scan(ctx, "*.S", &s);
		if(rc == 0 && !sersync_rpc_left(rpc, ctx))
			return 0;
		if(rc != 1) {
			rpc->fault(ctx, 400, "Parameter %d is not a string",
					req->nparams + 1);
			return -1;
		}
		if(req->nparams >= SERSYNC_ALIAS_ITEMS_MAX * 2) {
			rpc->fault(ctx, 400, "Too many parameters: at most %d",
					SERSYNC_ALIAS_ITEMS_MAX * 2);
			return -1;
		}
		if(sersync_grow((void **)&req->params, &req->pcap, req->nparams + 1,
				   sizeof(str))
				< 0) {
			rpc->fault(ctx, 500, "Out of memory");
			return -1;
		}
		req->params[req->nparams++] = s;
	}
}

static int sersync_alias_item_add(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, str *alias, str *target, int pos)
{
	struct sersync_alias_item *it;

	if(req->n >= SERSYNC_ALIAS_ITEMS_MAX) {
		rpc->fault(ctx, 400, "Too many items: at most %d per call",
				SERSYNC_ALIAS_ITEMS_MAX);
		return -1;
	}
	if(sersync_grow((void **)&req->items, &req->icap, req->n + 1,
			   sizeof(struct sersync_alias_item))
			< 0) {
		rpc->fault(ctx, 500, "Out of memory");
		return -1;
	}
	it = &req->items[req->n++];
	memset(it, 0, sizeof(*it));
	it->alias = *alias;
	if(target != NULL)
		it->target = *target;
	it->pos = pos;
	return 0;
}

static int sersync_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int sersync_has_space(const str *s)
{
	int i;

	for(i = 0; i < s->len; i++) {
		if(sersync_is_space(s->s[i]) || s->s[i] == '\n')
			return 1;
	}
	return 0;
}

/*
 * Items from one string of lines, "alias_uri [target_uri]" each, fields
 * separated by blanks; blank lines are skipped. Each line has between
 * min and max fields.
 */
static int sersync_alias_lines(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, const str *text, int min, int max)
{
	str field[3];
	char *p;
	char *end;
	char *eol;
	int nf;
	int line;

	req->lines = 1;
	p = text->s;
	end = text->s + text->len;
	for(line = 1; p < end; line++) {
		eol = memchr(p, '\n', end - p);
		if(eol == NULL)
			eol = end;
		nf = 0;
		while(p < eol) {
			while(p < eol && sersync_is_space(*p))
				p++;
			if(p >= eol)
				break;
			if(nf < 3)
				field[nf].s = p;
			while(p < eol && !sersync_is_space(*p))
				p++;
			if(nf < 3)
				field[nf].len = (int)(p - field[nf].s);
			nf++;
		}
		p = eol + 1;
		if(nf == 0)
			continue;
		if(nf < min || nf > max) {
			rpc->fault(ctx, 400, "Line %d: expected %s, got %d field(s)", line,
					(min == max) ? "'alias_uri target_uri'"
								 : "'alias_uri [target_uri]'",
					nf);
			return -1;
		}
		if(sersync_alias_item_add(
				   rpc, ctx, req, &field[0], nf > 1 ? &field[1] : NULL, line)
				< 0)
			return -1;
	}
	if(req->n == 0) {
		rpc->fault(ctx, 400, "No aliases given");
		return -1;
	}
	return 0;
}

/* items from alias_uri target_uri pairs, or from one string of lines */
static int sersync_alias_pairs(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	int i;

	if(req->nparams == 0) {
		rpc->fault(ctx, 400, "Expected alias_uri target_uri pairs, or one"
							 " string of lines 'alias_uri target_uri'");
		return -1;
	}
	if(req->nparams == 1)
		return sersync_alias_lines(rpc, ctx, req, &req->params[0], 2, 2);
	if(req->nparams % 2 != 0) {
		rpc->fault(ctx, 400, "Odd number of parameters (%d): expected"
							 " alias_uri target_uri pairs",
				req->nparams);
		return -1;
	}
	for(i = 0; i < req->nparams; i += 2) {
		if(sersync_alias_item_add(rpc, ctx, req, &req->params[i],
				   &req->params[i + 1], i + 1)
				< 0)
			return -1;
	}
	return 0;
}

static void sersync_alias_bad(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, int pos, const char *what,
		const str *uri, const char *why)
{
	int q;

	q = (uri->len > SERSYNC_ALIAS_QUOTE_MAX) ? SERSYNC_ALIAS_QUOTE_MAX
											 : uri->len;
	rpc->fault(ctx, 400, "%s %d: %s %s: \"%.*s%s\"",
			req->lines ? "Line" : "Parameter", pos, what, why, q,
			uri->s ? uri->s : "", (q < uri->len) ? "..." : "");
}

/* splits every URI into the row's fields; faults on the first bad one */
static int sersync_alias_validate(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	struct sersync_alias_item *it;
	const char *why;
	int i;

	for(i = 0; i < req->n; i++) {
		it = &req->items[i];
		why = sersync_alias_uri(&it->alias, &it->row.auser, &it->row.adomain);
		if(why != NULL) {
			sersync_alias_bad(
					rpc, ctx, req, it->pos, "alias_uri", &it->alias, why);
			return -1;
		}
		if(it->target.len == 0)
			continue;
		why = sersync_alias_uri(&it->target, &it->row.user, &it->row.domain);
		if(why != NULL) {
			sersync_alias_bad(rpc, ctx, req, it->pos + (req->lines ? 0 : 1),
					"target_uri", &it->target, why);
			return -1;
		}
	}
	return 0;
}

static int sersync_alias_no_db(rpc_t *rpc, void *ctx)
{
	if(sersync_alias_enabled())
		return 0;
	rpc->fault(ctx, 500, "No alias table: sersync needs"
						 " modparam(\"sersync\", \"db_url\", ...)");
	return 1;
}

/* copies a row (its strings into one pkg block) onto rows */
static int sersync_alias_collect(
		const struct sersync_alias_row *r, void *param)
{
	struct sersync_alias_rows *rows = (struct sersync_alias_rows *)param;
	struct sersync_alias_row *d;
	char *p;

	if(sersync_grow((void **)&rows->r, &rows->cap, rows->n + 1,
			   sizeof(struct sersync_alias_row))
			< 0)
		return -1;
	p = pkg_malloc(r->auser.len + r->adomain.len + r->user.len
				   + r->domain.len + 1);
	if(p == NULL) {
		PKG_MEM_ERROR;
		return -1;
	}
	d = &rows->r[rows->n++];
#define SERSYNC_COPY(f)                  \
	do {                                 \
		d->f.s = p;                      \
		d->f.len = r->f.len;             \
		memcpy(p, r->f.s, r->f.len);     \
		p += r->f.len;                   \
	} while(0)
	SERSYNC_COPY(auser);
	SERSYNC_COPY(adomain);
	SERSYNC_COPY(user);
	SERSYNC_COPY(domain);
#undef SERSYNC_COPY
	return 0;
}

/* what one write call did, for its reply or fault */
struct sersync_alias_done
{
	int added;
	int removed;
	int unpublished; /* changes made but not handed to the engine */
	int pub_rc;		 /* sersync_rc of the first failed publish */
};

/* publishes a change unless an earlier publish of this call failed:
 * after one failure the rest is left to sersync.alias_rescan */
static void sersync_alias_note(struct sersync_alias_done *done, int op,
		const struct sersync_alias_row *r)
{
	int rc;

	if(done->pub_rc != SERSYNC_OK) {
		done->unpublished++;
		return;
	}
	rc = sersync_alias_publish(op, r);
	if(rc != SERSYNC_OK) {
		done->pub_rc = rc;
		done->unpublished++;
	}
}

/* inserts the mapping unless the exact row exists: 1 added, 0, -1 */
static int sersync_alias_add_one(
		struct sersync_alias_done *done, const struct sersync_alias_row *r)
{
	int rc;

	rc = sersync_alias_exists(&_sersync_alias_table, r);
	if(rc != 0)
		return (rc > 0) ? 0 : -1;
	if(sersync_alias_insert(&_sersync_alias_table, r) < 0)
		return -1;
	done->added++;
	sersync_alias_note(done, SERSYNC_OP_UPSERT, r);
	return 1;
}

static int sersync_alias_rm_one(
		struct sersync_alias_done *done, const struct sersync_alias_row *r)
{
	if(sersync_alias_delete(&_sersync_alias_table, r) < 0)
		return -1;
	done->removed++;
	sersync_alias_note(done, SERSYNC_OP_DELETE, r);
	return 0;
}

/* the fault for a call that stopped at a database error, or for changes
 * the engine did not take; 0 when neither happened */
static int sersync_alias_faulted(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, struct sersync_alias_done *done,
		int failed_pos)
{
	if(failed_pos > 0) {
		rpc->fault(ctx, 500,
				"Database error at %s %d; %d added, %d removed before it%s",
				req->lines ? "line" : "parameter", failed_pos, done->added,
				done->removed,
				done->unpublished ? "; run sersync.alias_rescan" : "");
		return 1;
	}
	if(done->unpublished > 0) {
		LM_ERR("%d alias change(s) written to %.*s but not handed to the"
			   " sersync engine (rc %d)\n",
				done->unpublished, _sersync_alias_table.len,
				_sersync_alias_table.s, done->pub_rc);
		rpc->fault(ctx, 500,
				"Table changed (%d added, %d removed), %d not replicated"
				" (%s): run sersync.alias_rescan",
				done->added, done->removed, done->unpublished,
				(done->pub_rc == SERSYNC_E_QUEUE_FULL) ? "queue full"
													   : "engine error");
		return 1;
	}
	return 0;
}

/* items of an add or replace call: alias_uri target_uri pairs, or one
 * string of lines, all checked; 0, or -1 after a fault */
static int sersync_alias_pairs_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	if(sersync_alias_params(rpc, ctx, req) < 0
			|| sersync_alias_pairs(rpc, ctx, req) < 0
			|| sersync_alias_validate(rpc, ctx, req) < 0
			|| sersync_alias_no_db(rpc, ctx))
		return -1;
	return 0;
}

/* items of an rm call: alias_uri [target_uri], or one string of lines,
 * all checked; 0, or -1 after a fault */
static int sersync_alias_rm_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	if(sersync_alias_params(rpc, ctx, req) < 0)
		return -1;
	if(req->nparams == 1 && sersync_has_space(&req->params[0])) {
		if(sersync_alias_lines(rpc, ctx, req, &req->params[0], 1, 2) < 0)
			return -1;
	} else if(req->nparams == 1 || req->nparams == 2) {
		if(sersync_alias_item_add(rpc, ctx, req, &req->params[0],
				   req->nparams == 2 ? &req->params[1] : NULL, 1)
				< 0)
			return -1;
	} else {
		rpc->fault(ctx, 400, "Expected alias_uri [target_uri], or one string"
							 " of lines 'alias_uri [target_uri]'; got %d"
							 " parameters",
				req->nparams);
		return -1;
	}
	if(sersync_alias_validate(rpc, ctx, req) < 0
			|| sersync_alias_no_db(rpc, ctx))
		return -1;
	return 0;
}

/* the item of a list call: none (the whole table) or one alias_uri,
 * checked; 0, or -1 after a fault */
static int sersync_alias_list_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	if(sersync_alias_params(rpc, ctx, req) < 0)
		return -1;
	if(req->nparams > 1) {
		rpc->fault(ctx, 400, "Expected at most one parameter: alias_uri");
		return -1;
	}
	if(req->nparams == 1
			&& (sersync_alias_item_add(rpc, ctx, req, &req->params[0], NULL, 1)
							< 0
					|| sersync_alias_validate(rpc, ctx, req) < 0))
		return -1;
	if(sersync_alias_no_db(rpc, ctx))
		return -1;
	return 0;
}

static int sersync_item_cmp(const void *pa, const void *pb);

/* one step of a write call on items[from..to); 0 or -1 (DB error) */
typedef int (*sersync_alias_step_f)(struct sersync_alias_done *done,
		struct sersync_alias_item *items, int from, int to);

/*
 * Runs step under the alias lock on each item, or, grouped, on the items
 * of each alias together (sorted first), until a step fails. 0 when the
 * caller may reply; -1 after a fault (database error, changes the engine
 * did not take).
 */
static int sersync_alias_run(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, struct sersync_alias_done *done,
		sersync_alias_step_f step, int grouped)
{
	int failed;
	int from;
	int to;

	if(grouped)
		qsort(req->items, req->n, sizeof(req->items[0]), sersync_item_cmp);
	failed = 0;
	sersync_alias_lock();
	for(from = 0; from < req->n; from = to) {
		to = from + 1;
		while(grouped && to < req->n
				&& sersync_item_cmp(&req->items[from], &req->items[to]) == 0)
			to++;
		if(step(done, req->items, from, to) < 0) {
			failed = req->items[from].pos;
			break;
		}
	}
	sersync_alias_unlock();
	return sersync_alias_faulted(rpc, ctx, req, done, failed) ? -1 : 0;
}

static int sersync_alias_add_items(struct sersync_alias_done *done,
		struct sersync_alias_item *items, int from, int to)
{
	int i;

	for(i = from; i < to; i++) {
		if(sersync_alias_add_one(done, &items[i].row) < 0)
			return -1;
	}
	return 0;
}

static const char *sersync_alias_add_doc[2] = {
		"Add aliases: alias_uri target_uri [alias_uri target_uri ...], or one"
		" string of lines 'alias_uri target_uri'. SIP URIs with user and"
		" domain, each at most 64 characters. All are checked before any is"
		" written; existing mappings are kept. Replicated to every node."
		" Returns the number added.",
		0};

static void sersync_rpc_alias_add(rpc_t *rpc, void *ctx)
{
	struct sersync_alias_req req;
	struct sersync_alias_done done;

	memset(&req, 0, sizeof(req));
	memset(&done, 0, sizeof(done));
	if(sersync_alias_pairs_req(rpc, ctx, &req) == 0
			&& sersync_alias_run(rpc, ctx, &req, &done, sersync_alias_add_items,
					   0)
					   == 0)
		rpc->add(ctx, "d", done.added);
	sersync_alias_req_free(&req);
}

static int sersync_str_cmp(const str *a, const str *b)
{
	int n;
	int c;

	n = (a->len < b->len) ? a->len : b->len;
	c = (n > 0) ? memcmp(a->s, b->s, n) : 0;
	return (c != 0) ? c : a->len - b->len;
}

static int sersync_item_cmp(const void *pa, const void *pb)
{
	const struct sersync_alias_item *a = pa;
	const struct sersync_alias_item *b = pb;
	int c;

	c = sersync_str_cmp(&a->row.auser, &b->row.auser);
	return (c != 0) ? c : sersync_str_cmp(&a->row.adomain, &b->row.adomain);
}

/* is user@domain among the targets items[from..to) name? */
static int sersync_alias_wanted(struct sersync_alias_item *items, int from,
		int to, const struct sersync_alias_row *r)
{
	int i;

	for(i = from; i < to; i++) {
		if(sersync_str_cmp(&items[i].row.user, &r->user) == 0
				&& sersync_str_cmp(&items[i].row.domain, &r->domain) == 0)
			return 1;
	}
	return 0;
}

/* one alias' new targets items[from..to): drops the others, adds these
 * (from == to: drops every target of items[from]'s alias) */
static int sersync_alias_replace_one(struct sersync_alias_done *done,
		struct sersync_alias_item *items, int from, int to)
{
	struct sersync_alias_rows rows;
	int rc;
	int i;

	memset(&rows, 0, sizeof(rows));
	rc = sersync_alias_select(&_sersync_alias_table, &items[from].row.auser,
			&items[from].row.adomain, sersync_alias_collect, &rows);
	for(i = 0; rc == 0 && i < rows.n; i++) {
		if(!sersync_alias_wanted(items, from, to, &rows.r[i]))
			rc = sersync_alias_rm_one(done, &rows.r[i]);
	}
	sersync_alias_rows_free(&rows);
	if(rc != 0)
		return -1;
	return sersync_alias_add_items(done, items, from, to);
}

static const char *sersync_alias_replace_doc[2] = {
		"Replace the targets of aliases: alias_uri target_uri [...], or one"
		" string of lines 'alias_uri target_uri'. Each named alias ends up"
		" with exactly the targets given. Replicated to every node. Returns"
		" {added, removed}.",
		0};

static void sersync_rpc_alias_replace(rpc_t *rpc, void *ctx)
{
	struct sersync_alias_req req;
	struct sersync_alias_done done;
	void *th;

	memset(&req, 0, sizeof(req));
	memset(&done, 0, sizeof(done));
	if(sersync_alias_pairs_req(rpc, ctx, &req) < 0
			|| sersync_alias_run(rpc, ctx, &req, &done,
					   sersync_alias_replace_one, 1)
					   < 0)
		goto end;
	if(rpc->add(ctx, "{", &th) < 0
			|| rpc->struct_add(th, "dd", "added", done.added, "removed",
					   done.removed)
					   < 0)
		rpc->fault(ctx, 500, "Internal error creating reply");
end:
	sersync_alias_req_free(&req);
}

static const char *sersync_alias_rm_doc[2] = {
		"Remove aliases: alias_uri (all its targets) or alias_uri target_uri"
		" (one mapping), or one string of lines 'alias_uri [target_uri]'."
		" Replicated to every node. Returns the number of rows removed.",
		0};

/* removes one mapping, or every target of an alias (no target given) */
static int sersync_alias_rm_items(struct sersync_alias_done *done,
		struct sersync_alias_item *items, int from, int to)
{
	int rc;
	int i;

	for(i = from; i < to; i++) {
		if(items[i].target.len == 0) {
			rc = sersync_alias_replace_one(done, items, i, i);
		} else {
			rc = sersync_alias_exists(&_sersync_alias_table, &items[i].row);
			if(rc > 0)
				rc = sersync_alias_rm_one(done, &items[i].row);
		}
		if(rc < 0)
			return -1;
	}
	return 0;
}

static void sersync_rpc_alias_rm(rpc_t *rpc, void *ctx)
{
	struct sersync_alias_req req;
	struct sersync_alias_done done;

	memset(&req, 0, sizeof(req));
	memset(&done, 0, sizeof(done));
	if(sersync_alias_rm_req(rpc, ctx, &req) == 0
			&& sersync_alias_run(rpc, ctx, &req, &done, sersync_alias_rm_items,
					   0)
					   == 0)
		rpc->add(ctx, "d", done.removed);
	sersync_alias_req_free(&req);
}

struct sersync_alias_list_ctx
{
	rpc_t *rpc;
	void *ctx;
};

static int sersync_alias_list_row(
		const struct sersync_alias_row *r, void *param)
{
	struct sersync_alias_list_ctx *lc = param;
	void *th;

	if(lc->rpc->add(lc->ctx, "{", &th) < 0)
		return -1;
	if(lc->rpc->struct_printf(th, "alias", "sip:%.*s%s%.*s", r->auser.len,
			   r->auser.s, r->adomain.len > 0 ? "@" : "", r->adomain.len,
			   r->adomain.s)
					< 0
			|| lc->rpc->struct_printf(th, "target", "sip:%.*s%s%.*s",
					   r->user.len, r->user.s, r->domain.len > 0 ? "@" : "",
					   r->domain.len, r->domain.s)
					   < 0)
		return -1;
	return 0;
}

static const char *sersync_alias_list_doc[2] = {
		"List aliases: every row of the alias table, or the targets of one"
		" alias_uri; an array of {alias, target}.",
		0};

static void sersync_rpc_alias_list(rpc_t *rpc, void *ctx)
{
	struct sersync_alias_req req;
	struct sersync_alias_list_ctx lc;
	struct sersync_alias_row *r;
	int rc;

	memset(&req, 0, sizeof(req));
	if(sersync_alias_list_req(rpc, ctx, &req) < 0)
		goto end;

	lc.rpc = rpc;
	lc.ctx = ctx;
	r = (req.n == 1) ? &req.items[0].row : NULL;
	rc = sersync_alias_select(&_sersync_alias_table, r ? &r->auser : NULL,
			r ? &r->adomain : NULL, sersync_alias_list_row, &lc);
	if(rc != 0)
		rpc->fault(ctx, 500, "Cannot read table %.*s",
				_sersync_alias_table.len, _sersync_alias_table.s);
end:
	sersync_alias_req_free(&req);
}

static const char *sersync_alias_rescan_doc[2] = {
		"Read the whole alias table and replicate what changed since the"
		" last scan, deletions included (rows written to the database by"
		" other tools). Costs one read of every row and one queue slot per"
		" row; only changed rows are journaled and sent. Returns the number"
		" of rows.",
		0};

static void sersync_rpc_alias_rescan(rpc_t *rpc, void *ctx)
{
	char err[SERSYNC_ERR_MAX];
	int attempt;
	int rows;
	int rc;

	if(sersync_rpc_no_params(rpc, ctx, "sersync.alias_rescan") < 0)
		return;
	if(sersync_alias_no_db(rpc, ctx))
		return;
	/* a scan gives up when remote alias changes arrive meanwhile */
	for(attempt = 0; attempt < 3; attempt++) {
		err[0] = '\0';
		rc = sersync_alias_scan(5000, &rows, err, sizeof(err));
		if(rc != -2)
			break;
	}
	if(rc == -2) {
		rpc->fault(ctx, 503, "%s", err);
		return;
	}
	if(rc < 0) {
		LM_ERR("alias rescan failed: %s\n", err);
		rpc->fault(ctx, 500, "%s", err);
		return;
	}
	rpc->add(ctx, "d", rows);
}

/* clang-format off */
rpc_export_t sersync_rpc_cmds[] = {
	{"sersync.status", sersync_rpc_status, sersync_status_doc, 0},
	{"sersync.peers",  sersync_rpc_peers,  sersync_peers_doc,  RET_ARRAY},
	{"sersync.forget", sersync_rpc_forget, sersync_forget_doc, 0},
	{"sersync.apply",  sersync_rpc_apply,  sersync_apply_doc,  0},
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
	{0, 0, 0, 0}
};
/* clang-format on */
