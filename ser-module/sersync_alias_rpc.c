/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * Alias RPCs. Arguments are read and every URI validated before the
 * table is touched (sersync_alias_parse.c): a bad item faults 400, naming
 * it, and changes nothing. Writes hold the alias lock; each changed row is
 * published to the engine, which journals it and sends it to every peer.
 * sersync.alias_rescan runs a scan (sersync_alias_scan.c).
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stdlib.h>
#include <string.h>

#include "../../core/dprint.h"
#include "../../core/mem/mem.h"
#include "../../core/rpc.h"

#include "sersync_mod.h"
#include "sersync_alias_rpc.h"

/* rows read back from the table, each one pkg block with its strings */
struct sersync_alias_rows
{
	struct sersync_alias_row *r;
	int n;
	int cap;
};

static void sersync_alias_rows_free(struct sersync_alias_rows *rows)
{
	int i;

	for(i = 0; i < rows->n; i++)
		pkg_free(rows->r[i].auser.s);
	if(rows->r != NULL)
		pkg_free(rows->r);
	memset(rows, 0, sizeof(*rows));
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

const char *sersync_alias_add_doc[2] = {
		"Add aliases: alias_uri target_uri [alias_uri target_uri ...], or one"
		" string of lines 'alias_uri target_uri'. SIP URIs with user and"
		" domain, each at most 64 characters. All are checked before any is"
		" written; existing mappings are kept. Replicated to every node."
		" Returns the number added.",
		0};

void sersync_rpc_alias_add(rpc_t *rpc, void *ctx)
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

const char *sersync_alias_replace_doc[2] = {
		"Replace the targets of aliases: alias_uri target_uri [...], or one"
		" string of lines 'alias_uri target_uri'. Each named alias ends up"
		" with exactly the targets given. Replicated to every node. Returns"
		" {added, removed}.",
		0};

void sersync_rpc_alias_replace(rpc_t *rpc, void *ctx)
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

const char *sersync_alias_rm_doc[2] = {
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

void sersync_rpc_alias_rm(rpc_t *rpc, void *ctx)
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

const char *sersync_alias_list_doc[2] = {
		"List aliases: every row of the alias table, or the targets of one"
		" alias_uri; an array of {alias, target}.",
		0};

void sersync_rpc_alias_list(rpc_t *rpc, void *ctx)
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

const char *sersync_alias_rescan_doc[2] = {
		"Read the whole alias table and replicate what changed since the"
		" last scan, deletions included (rows written to the database by"
		" other tools). Costs one read of every row and one queue slot per"
		" row; only changed rows are journaled and sent. Deletions over the"
		" limit (modparams alias_scan_max_delete, alias_scan_max_delete_pct)"
		" are refused with error 409 and made by"
		" sersync.alias_rescan_confirm. Returns the number of rows.",
		0};

const char *sersync_alias_rescan_confirm_doc[2] = {
		"Like sersync.alias_rescan, but deletes every alias the table no"
		" longer holds however many there are, on every node: the"
		" confirmation of a mass deletion sersync.alias_rescan refused."
		" Returns {rows, removed}.",
		0};

/* runs a scan for an RPC; 0 with res filled, or -1 after a fault */
static int sersync_rpc_scan(rpc_t *rpc, void *ctx, const char *name,
		int confirmed, struct sersync_scan_result *res)
{
	char err[SERSYNC_SCAN_ERR_MAX];
	int attempt;
	int rc;

	if(sersync_rpc_no_params(rpc, ctx, name) < 0)
		return -1;
	if(sersync_alias_no_db(rpc, ctx))
		return -1;
	/* a scan gives up when remote alias changes arrive meanwhile */
	for(attempt = 0; attempt < 3; attempt++) {
		err[0] = '\0';
		rc = sersync_alias_scan(5000, confirmed, res, err, sizeof(err));
		if(rc != -2)
			break;
	}
	if(rc == -2) {
		rpc->fault(ctx, 503, "%s", err);
		return -1;
	}
	if(rc == -3) {
		/* the engine logged it; the caller must see it too */
		rpc->fault(ctx, 409, "%s", err);
		return -1;
	}
	if(rc < 0) {
		LM_ERR("%s failed: %s\n", name, err);
		rpc->fault(ctx, 500, "%s", err);
		return -1;
	}
	return 0;
}

void sersync_rpc_alias_rescan(rpc_t *rpc, void *ctx)
{
	struct sersync_scan_result res;

	if(sersync_rpc_scan(rpc, ctx, "sersync.alias_rescan", 0, &res) == 0)
		rpc->add(ctx, "d", res.rows);
}

void sersync_rpc_alias_rescan_confirm(rpc_t *rpc, void *ctx)
{
	struct sersync_scan_result res;
	void *th;

	if(sersync_rpc_scan(rpc, ctx, "sersync.alias_rescan_confirm", 1, &res)
			< 0)
		return;
	LM_INFO("confirmed alias rescan of %.*s: %d row(s), %llu alias(es)"
			" deleted on every node\n",
			_sersync_alias_table.len, _sersync_alias_table.s, res.rows,
			(unsigned long long)res.removed);
	if(rpc->add(ctx, "{", &th) < 0
			|| rpc->struct_add(th, "dd", "rows", res.rows, "removed",
					   (int)res.removed)
					   < 0)
		rpc->fault(ctx, 500, "Internal error creating reply");
}
