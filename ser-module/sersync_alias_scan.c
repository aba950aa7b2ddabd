/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * Scans of the alias table, which replicate rows other tools wrote
 * straight into the database: sersync.alias_rescan runs one, and so does
 * the rescan process (alias_rescan_interval), declared and forked here.
 * A scan publishes SCAN_BEGIN, one UPSERT per row, SCAN_END; the engine
 * journals only the rows that changed, plus a deletion for every alias
 * the scan no longer reports, unless those are more than the deletion
 * limit (alias_scan_max_delete, alias_scan_max_delete_pct): then it
 * deletes none and the scan reports the refusal, until an operator
 * confirms with sersync.alias_rescan_confirm. A scan that gives up after
 * SCAN_BEGIN always publishes SCAN_ABORT, so that the engine stops
 * holding back alias rows for it.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/ut.h"
#include "../../core/timer_proc.h"

#include "sersync_mod.h"

/* a scan waits at most this long for staged remote records to be applied */
#define SERSYNC_SCAN_SETTLE_MS 5000
/* a scan whose table read took longer gives up: the engine ends a scan
 * that sent nothing for a minute (SCAN_IDLE_MAX in src/scan.rs) */
#define SERSYNC_SCAN_READ_MAX_S 30

static void sersync_alias_timer(unsigned int ticks, void *param);

/* mod_init, from sersync_alias_init() once the database is bound:
 * declare the rescan process, if asked for */
int sersync_alias_timer_init(void)
{
	if(_sersync_alias_rescan_interval > 0) {
		/* one process of our own: a scan may take seconds, which SER's
		 * shared timer process must not wait for */
		if(register_basic_timers(1) < 0) {
			LM_ERR("cannot register the alias rescan process\n");
			return -1;
		}
		LM_INFO("alias table %.*s rescanned every %d s\n",
				_sersync_alias_table.len, _sersync_alias_table.s,
				_sersync_alias_rescan_interval);
	}
	return 0;
}

/* child_init(PROC_MAIN): fork the rescan process, if asked for */
int sersync_alias_timer_start(void)
{
	if(!sersync_alias_enabled() || _sersync_alias_rescan_interval <= 0)
		return 0;
	if(fork_basic_timer(PROC_TIMER, "sersync alias rescan", 1,
			   sersync_alias_timer, NULL, _sersync_alias_rescan_interval)
			< 0) {
		LM_ERR("cannot fork the alias rescan process\n");
		return -1;
	}
	return 0;
}

/*
 * What a scan must not race with: remote alias records applied to the
 * table (by sersync.apply here, or by the engine's database fallback)
 * and remote records staged but not applied yet.
 */
struct sersync_scan_mark
{
	uint64_t applied; /* alias records applied by sersync.apply */
	uint64_t via_db;  /* records the engine wrote to the database */
	uint64_t pending; /* remote records staged, not applied */
	uint64_t depth;   /* records waiting in the worker queue */
};

static int sersync_scan_mark(struct sersync_scan_mark *m)
{
	/* about 12 KiB: static, one scan at a time per process */
	static struct sersync_status st;

	memset(&st, 0, sizeof(st));
	if(sersync_status_read(_sersync_shared, &st) != SERSYNC_OK)
		return -1;
	m->applied = sersync_alias_applied();
	m->via_db = st.applied_via_db;
	m->pending = st.apply_pending;
	m->depth = st.queue_depth;
	return 0;
}

/*
 * Waits up to wait_ms until the engine has nothing staged to apply (seen
 * twice, 20 ms apart: the counter may lag a fresh staging by moments).
 */
static int sersync_scan_settle(struct sersync_scan_mark *m, int wait_ms)
{
	int waited;
	int calm;

	calm = 0;
	for(waited = 0;; waited += 20) {
		if(sersync_scan_mark(m) < 0)
			return -1;
		calm = (m->pending == 0) ? calm + 1 : 0;
		if(calm >= 2)
			return 0;
		if(waited >= wait_ms)
			return -2;
		sleep_us(20000);
	}
}

/* waits up to wait_ms until the engine has taken everything queued */
static int sersync_scan_drain(int wait_ms)
{
	struct sersync_scan_mark m;
	int waited;

	for(waited = 0;; waited += 2) {
		if(sersync_scan_mark(&m) < 0)
			return -1;
		if(m.depth == 0)
			return 0;
		if(waited >= wait_ms)
			return -2;
		sleep_us(2000);
	}
}

/* nothing applied and nothing staged since m0 */
static int sersync_scan_calm(const struct sersync_scan_mark *m0)
{
	struct sersync_scan_mark m;

	if(sersync_scan_mark(&m) < 0)
		return 0;
	return m.pending == 0 && m.applied == m0->applied
		   && m.via_db == m0->via_db;
}

/*
 * The table as read, in one malloc'd arena (system memory: a big table
 * must not exhaust the process's pkg memory): per row four 16-bit lengths,
 * then the four strings.
 */
struct sersync_snapshot
{
	char *buf;
	size_t len;
	size_t cap;
	int rows;
	int too_long; /* rows skipped: a field over 65535 bytes */
};

static int sersync_snapshot_row(const struct sersync_alias_row *r, void *param)
{
	struct sersync_snapshot *sn = (struct sersync_snapshot *)param;
	const str *f[4] = {&r->auser, &r->adomain, &r->user, &r->domain};
	size_t need;
	size_t ncap;
	uint16_t l;
	char *p;
	int i;

	need = 4 * sizeof(uint16_t);
	for(i = 0; i < 4; i++) {
		if(f[i]->len > 65535) {
			sn->too_long++;
			return 0;
		}
		need += f[i]->len;
	}
	if(sn->len + need > sn->cap) {
		ncap = sn->cap ? sn->cap * 2 : 65536;
		while(ncap < sn->len + need)
			ncap *= 2;
		p = realloc(sn->buf, ncap);
		if(p == NULL) {
			LM_ERR("out of memory reading the alias table (%d rows)\n",
					sn->rows);
			return -1;
		}
		sn->buf = p;
		sn->cap = ncap;
	}
	p = sn->buf + sn->len;
	for(i = 0; i < 4; i++) {
		l = (uint16_t)f[i]->len;
		memcpy(p, &l, sizeof(l));
		p += sizeof(l);
	}
	for(i = 0; i < 4; i++) {
		if(f[i]->len > 0)
			memcpy(p, f[i]->s, f[i]->len);
		p += f[i]->len;
	}
	sn->len += need;
	sn->rows++;
	return 0;
}

/* publishes every row of the snapshot; the sersync_rc of the first
 * failure, rows published in *done */
static int sersync_snapshot_publish(struct sersync_snapshot *sn, int *done)
{
	struct sersync_alias_row r;
	str *f[4] = {&r.auser, &r.adomain, &r.user, &r.domain};
	uint16_t l[4];
	char *p;
	int i;
	int rc;

	*done = 0;
	p = sn->buf;
	while(p < sn->buf + sn->len) {
		for(i = 0; i < 4; i++) {
			memcpy(&l[i], p, sizeof(l[i]));
			p += sizeof(l[i]);
		}
		for(i = 0; i < 4; i++) {
			f[i]->s = p;
			f[i]->len = l[i];
			p += l[i];
		}
		rc = sersync_alias_publish(SERSYNC_OP_UPSERT, &r);
		if(rc == SERSYNC_E_TOO_LARGE) {
			/* written by another tool with oversize fields */
			LM_ERR("alias %.*s@%.*s does not fit a queue slot; not"
				   " replicated\n",
					r.auser.len, r.auser.s, r.adomain.len, r.adomain.s);
			continue;
		}
		if(rc != SERSYNC_OK)
			return rc;
		(*done)++;
	}
	return SERSYNC_OK;
}

/*
 * Ends a scan that gave up after SCAN_BEGIN: the engine deletes nothing
 * for it, and stops holding back alias rows (the alias RPCs' changes
 * after it would otherwise wait for an end that never comes).
 */
static void sersync_scan_abort(void)
{
	if(sersync_alias_publish(SERSYNC_OP_SCAN_ABORT, NULL) != SERSYNC_OK)
		LM_ERR("the engine's queue took no scan abort marker: the engine ends"
			   " the scan itself once its queue is empty for a minute\n");
}

/* the engine's count of scans ended by their end marker */
static int sersync_scans_ended(uint64_t *n)
{
	static struct sersync_status st;

	memset(&st, 0, sizeof(st));
	if(sersync_status_read(_sersync_shared, &st) != SERSYNC_OK)
		return -1;
	*n = st.alias_scans;
	return 0;
}

/*
 * Waits up to wait_ms for the engine to report the scan ended after
 * `before` scans (the status area follows within 200 ms) and reads what
 * it deleted and refused. 0, or -1 when no report came.
 */
static int sersync_scan_verdict(
		uint64_t before, int wait_ms, struct sersync_scan_result *res)
{
	static struct sersync_status st;
	int waited;

	for(waited = 0;; waited += 20) {
		memset(&st, 0, sizeof(st));
		if(sersync_status_read(_sersync_shared, &st) != SERSYNC_OK)
			return -1;
		if(st.alias_scans > before) {
			res->removed = st.alias_scan_removed;
			res->refused = st.alias_scan_refused;
			return 0;
		}
		if(waited >= wait_ms)
			return -1;
		sleep_us(20000);
	}
}

/*
 * Publishes a scan of _sersync_alias_table: SCAN_BEGIN, one UPSERT per
 * row, SCAN_END (SCAN_END_CONFIRMED when confirmed: the operator
 * confirmed its deletions, however many); the engine journals what
 * changed, and deletions.
 *
 * A scan must not contradict remote alias changes that the table does not
 * show (staged, not applied yet, or applied after the read): it would
 * resurrect an alias deleted elsewhere, or delete one just added
 * elsewhere. The engine guarantees this: at SCAN_END it leaves alone every
 * key staged, or applied since it took SCAN_BEGIN, and the table is read
 * only after that. The checks here only spare work: the scan starts when
 * nothing is staged, and gives up (no SCAN_END, nothing deleted) when
 * remote aliases were applied while it read, to try again later.
 *
 * Returns 0 with the row count and the deletions in res, -1 on error,
 * -2 when it gave up (retry later), -3 when the engine refused its
 * deletions (res->refused: over the limit; nothing deleted); err says
 * why. Every return after SCAN_BEGIN ends the scan in the engine.
 */
int sersync_alias_scan(int wait_ms, int confirmed,
		struct sersync_scan_result *res, char *err, int errlen)
{
	struct sersync_snapshot sn;
	struct sersync_scan_mark m0;
	uint64_t scans0;
	time_t t_read;
	int published;
	int begun;
	int rc;

	memset(res, 0, sizeof(*res));
	begun = 0;
	if(!sersync_alias_enabled()) {
		snprintf(err, errlen, "no db_url: the alias table is out of reach");
		return -1;
	}
	memset(&sn, 0, sizeof(sn));
	sersync_alias_lock();
	rc = sersync_scan_settle(&m0, wait_ms);
	if(rc != 0) {
		snprintf(err, errlen, (rc == -2) ? "remote changes are still being"
										   " applied; scan not started"
										 : "cannot read the engine's status");
		goto done;
	}
	if(sersync_scans_ended(&scans0) < 0) {
		snprintf(err, errlen, "cannot read the engine's status");
		rc = -1;
		goto done;
	}
	rc = sersync_alias_publish(SERSYNC_OP_SCAN_BEGIN, NULL);
	if(rc != SERSYNC_OK) {
		snprintf(err, errlen, "the engine's queue took no scan (rc %d)", rc);
		rc = -1;
		goto done;
	}
	begun = 1;
	/* the engine has taken SCAN_BEGIN once it is settled: from then on it
	 * notes every remote alias it applies, so the table read below cannot
	 * miss a change the scan would then undo */
	if(sersync_journal_wait(_sersync_shared, (uint32_t)wait_ms)
			!= SERSYNC_OK) {
		snprintf(err, errlen, "the engine does not take its queue; scan"
							  " not started");
		rc = -2;
		goto done;
	}
	t_read = time(NULL);
	if(sersync_alias_select(&_sersync_alias_table, NULL, NULL,
			   sersync_snapshot_row, &sn)
			!= 0) {
		snprintf(err, errlen, "cannot read table %.*s; scan abandoned, nothing"
							  " deleted",
				_sersync_alias_table.len, _sersync_alias_table.s);
		rc = -1;
		goto done;
	}
	if(time(NULL) - t_read > SERSYNC_SCAN_READ_MAX_S) {
		snprintf(err, errlen, "reading table %.*s took over %d s; scan"
							  " abandoned, nothing changed",
				_sersync_alias_table.len, _sersync_alias_table.s,
				SERSYNC_SCAN_READ_MAX_S);
		rc = -1;
		goto done;
	}
	if(!sersync_scan_calm(&m0)) {
		snprintf(err, errlen, "remote alias changes arrived while reading;"
							  " scan abandoned, nothing changed");
		rc = -2;
		goto done;
	}
	rc = sersync_snapshot_publish(&sn, &published);
	if(rc != SERSYNC_OK) {
		snprintf(err, errlen,
				"the engine's queue took only %d row(s) (rc %d); scan"
				" abandoned, nothing deleted",
				published, rc);
		rc = -1;
		goto done;
	}
	if(sersync_scan_drain(wait_ms) != 0 || !sersync_scan_calm(&m0)) {
		/* no SCAN_END: the engine deletes nothing for this scan */
		snprintf(err, errlen, "remote alias changes arrived during the scan;"
							  " scan abandoned, nothing deleted");
		rc = -2;
		goto done;
	}
	rc = sersync_alias_publish(
			confirmed ? SERSYNC_OP_SCAN_END_CONFIRMED : SERSYNC_OP_SCAN_END,
			NULL);
	if(rc != SERSYNC_OK) {
		snprintf(err, errlen, "the engine's queue took no scan end (rc %d)",
				rc);
		rc = -1;
		goto done;
	}
	begun = 0;
	if(sn.too_long > 0)
		LM_ERR("%d row(s) of %.*s have a field over 65535 bytes; not"
			   " replicated\n",
				sn.too_long, _sersync_alias_table.len,
				_sersync_alias_table.s);
	res->rows = published;
	/* the engine concludes at SCAN_END: wait for its verdict, so that a
	 * refusal reaches whoever asked for the scan */
	if(sersync_scan_verdict(scans0, wait_ms, res) < 0) {
		snprintf(err, errlen, "scan of %d row(s) sent; the engine has not"
							  " concluded it yet (see sersync.status"
							  " alias_scan_*)",
				published);
		rc = -1;
		goto done;
	}
	if(res->refused > 0) {
		/* short: SER's RPC layer cuts a fault's message at 128 bytes;
		 * the engine's log line has the counts and limits */
		snprintf(err, errlen,
				"Would delete %llu aliases, over the limit; nothing deleted."
				" If meant: sersync.alias_rescan_confirm",
				(unsigned long long)res->refused);
		rc = -3;
		goto done;
	}
	rc = 0;
done:
	if(begun)
		sersync_scan_abort();
	sersync_alias_unlock();
	if(sn.buf != NULL)
		free(sn.buf);
	return rc;
}

/* the rescan process: one scan per alias_rescan_interval */
static void sersync_alias_timer(unsigned int ticks, void *param)
{
	struct sersync_scan_result res;
	char err[SERSYNC_SCAN_ERR_MAX];
	int rc;

	err[0] = '\0';
	rc = sersync_alias_scan(SERSYNC_SCAN_SETTLE_MS, 0, &res, err, sizeof(err));
	if(rc == 0)
		LM_DBG("alias table %.*s scanned: %d row(s)\n",
				_sersync_alias_table.len, _sersync_alias_table.s, res.rows);
	else if(rc == -2)
		LM_INFO("alias rescan skipped: %s\n", err);
	else if(rc == -3)
		LM_DBG("alias rescan refused (the engine logged it): %s\n", err);
	else
		LM_ERR("alias rescan failed: %s\n", err);
}
