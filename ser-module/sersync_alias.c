/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * The alias table (alias_db's dbaliases) through SER's DB API: reads and
 * writes for the alias RPCs and scans (sersync_alias_scan.c), publishing
 * changes to the engine, and the apply callback for alias records
 * received from peers.
 *
 * Alias RPCs publish every row they change explicitly; a scan publishes
 * the whole table. Writers on one node (RPC processes, the rescan
 * process) take _sersync_alias_lock, so a scan never sees half of a bulk
 * change.
 *
 * DB connections are opened lazily, one per process that needs one, never
 * before SER forks.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <string.h>
#include <time.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/ut.h"
#include "../../core/locking.h"
#include "../../core/mem/mem.h"
#include "../../core/mem/shm_mem.h"
#include "../../lib/srdb1/db.h"

#include "sersync_mod.h"

/* a queue full of changes drains in milliseconds while the engine runs:
 * wait this long (RPC and timer processes only) before giving up */
#define SERSYNC_PUBLISH_WAIT_US (2 * 1000 * 1000)
#define SERSYNC_PUBLISH_STEP_US 2000
/* SQLite answers "database is locked" at once (db_sqlite sets no busy
 * timeout): a write is retried this many times, this far apart */
#define SERSYNC_DB_TRIES 20
#define SERSYNC_DB_RETRY_US 50000
/* rows per fetch when the DB driver can fetch in chunks */
#define SERSYNC_DB_FETCH_ROWS 1000

/* alias_db's default column names */
static str _sersync_col_auser = str_init("alias_username");
static str _sersync_col_adomain = str_init("alias_domain");
static str _sersync_col_user = str_init("username");
static str _sersync_col_domain = str_init("domain");

static db_func_t _sersync_dbf;
static int _sersync_db_bound = 0;
/* per process, opened on first use */
static db1_con_t *_sersync_db = NULL;

/* serializes alias writers and scans across SER's processes (shm) */
static gen_lock_t *_sersync_alias_lock = NULL;
/* remote alias records applied by sersync.apply on this node (shm): a
 * scan that sees it move gives up */
static uint64_t *_sersync_alias_applied = NULL;

/* alias records received while db_url is empty, logged once per minute */
static time_t _sersync_alias_ignored_logged = 0;

/* a table name fit for SQL without quoting: [A-Za-z0-9_], 1..64 */
int sersync_alias_table_ok(const char *s, size_t len)
{
	size_t i;

	if(s == NULL || len == 0 || len > SERSYNC_ALIAS_FIELD_MAX)
		return 0;
	for(i = 0; i < len; i++) {
		if(!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
				   || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return 0;
	}
	return 1;
}

/* db_url as logs show it: without the password, which runs from the
 * user's ':' to the last '@' before the host (as SER parses it), so that
 * "mysql://user:pw@host/db" is shown "mysql://user@host/db"; *head is the
 * length of the part before the password, *tail the offset after it */
static void sersync_db_url_shown(const str *url, int *head, int *tail)
{
	int start = 0, end, at = -1, colon = -1, i;

	*head = url->len;
	*tail = url->len;
	for(i = 0; i + 2 < url->len; i++) {
		if(url->s[i] == ':' && url->s[i + 1] == '/' && url->s[i + 2] == '/') {
			start = i + 3;
			break;
		}
	}
	if(start == 0)
		return;
	for(end = start; end < url->len && url->s[end] != '/'; end++)
		;
	for(i = start; i < end; i++) {
		if(url->s[i] == '@')
			at = i;
	}
	for(i = start; at > 0 && i < at; i++) {
		if(url->s[i] == ':') {
			colon = i;
			break;
		}
	}
	if(colon > 0) {
		*head = colon;
		*tail = at;
	}
}

int sersync_alias_init(void)
{
	int head, tail;

	if(!sersync_alias_table_ok(
			   _sersync_alias_table.s, (size_t)_sersync_alias_table.len)) {
		LM_ERR("modparam \"alias_table\": \"%.*s\" is not a table name"
			   " (letters, digits, '_', at most %d)\n",
				_sersync_alias_table.len,
				_sersync_alias_table.s ? _sersync_alias_table.s : "",
				SERSYNC_ALIAS_FIELD_MAX);
		return -1;
	}
	if(_sersync_alias_rescan_interval < 0) {
		LM_ERR("modparam \"alias_rescan_interval\" must be 0 (off) or a"
			   " number of seconds (got %d)\n",
				_sersync_alias_rescan_interval);
		return -1;
	}
	if(_sersync_db_url.s == NULL || _sersync_db_url.len <= 0) {
		if(_sersync_alias_rescan_interval > 0) {
			LM_ERR("modparam \"alias_rescan_interval\" needs"
				   " modparam(\"sersync\", \"db_url\", ...): the alias table"
				   " is read through SER's database\n");
			return -1;
		}
		LM_INFO("no db_url: alias RPCs and alias replication are off\n");
		return 0;
	}
	sersync_db_url_shown(&_sersync_db_url, &head, &tail);
	if(db_bind_mod(&_sersync_db_url, &_sersync_dbf) < 0) {
		LM_ERR("modparam \"db_url\": no database module for \"%.*s%.*s\":"
			   " load its module (e.g. loadmodule \"db_sqlite.so\")\n",
				head, _sersync_db_url.s, _sersync_db_url.len - tail,
				_sersync_db_url.s + tail);
		return -1;
	}
	if(!DB_CAPABILITY(_sersync_dbf,
			   DB_CAP_QUERY | DB_CAP_INSERT | DB_CAP_DELETE)) {
		LM_ERR("the database module for \"%.*s%.*s\" cannot query, insert"
			   " and delete\n",
				head, _sersync_db_url.s, _sersync_db_url.len - tail,
				_sersync_db_url.s + tail);
		return -1;
	}
	_sersync_db_bound = 1;

	_sersync_alias_lock = lock_alloc();
	if(_sersync_alias_lock == NULL || lock_init(_sersync_alias_lock) == 0) {
		LM_ERR("cannot create the alias lock\n");
		return -1;
	}
	_sersync_alias_applied = shm_malloc(sizeof(*_sersync_alias_applied));
	if(_sersync_alias_applied == NULL) {
		SHM_MEM_ERROR;
		return -1;
	}
	*_sersync_alias_applied = 0;
	return sersync_alias_timer_init();
}

int sersync_alias_enabled(void)
{
	return _sersync_db_bound;
}

/* remote alias records sersync.apply has applied on this node so far */
uint64_t sersync_alias_applied(void)
{
	return __atomic_load_n(_sersync_alias_applied, __ATOMIC_SEQ_CST);
}

void sersync_alias_lock(void)
{
	lock_get(_sersync_alias_lock);
}

void sersync_alias_unlock(void)
{
	lock_release(_sersync_alias_lock);
}

/* this process's connection, opened on first use */
static db1_con_t *sersync_alias_db(const str *table)
{
	if(!_sersync_db_bound) {
		LM_ERR("no db_url: the alias table is out of reach\n");
		return NULL;
	}
	if(_sersync_db == NULL) {
		_sersync_db = _sersync_dbf.init(&_sersync_db_url);
		if(_sersync_db == NULL) {
			int head, tail;

			sersync_db_url_shown(&_sersync_db_url, &head, &tail);
			LM_ERR("cannot connect to %.*s%.*s\n", head, _sersync_db_url.s,
					_sersync_db_url.len - tail, _sersync_db_url.s + tail);
			return NULL;
		}
	}
	if(_sersync_dbf.use_table(_sersync_db, table) < 0) {
		LM_ERR("cannot use table %.*s\n", table->len, table->s);
		return NULL;
	}
	return _sersync_db;
}

static void sersync_alias_val(db_val_t *v, const str *s)
{
	memset(v, 0, sizeof(*v));
	VAL_TYPE(v) = DB1_STR;
	VAL_NULL(v) = 0;
	VAL_STR(v).s = (s->len > 0) ? s->s : "";
	VAL_STR(v).len = (s->len > 0) ? s->len : 0;
}

/* a result cell as str; NULL and unknown types read as "" */
static void sersync_alias_cell(db_val_t *v, str *out)
{
	out->s = "";
	out->len = 0;
	if(VAL_NULL(v))
		return;
	switch(VAL_TYPE(v)) {
		case DB1_STRING:
			if(VAL_STRING(v) != NULL) {
				out->s = (char *)VAL_STRING(v);
				out->len = strlen(out->s);
			}
			break;
		case DB1_STR:
			if(VAL_STR(v).s != NULL)
				*out = VAL_STR(v);
			break;
		case DB1_BLOB:
			if(VAL_BLOB(v).s != NULL)
				*out = VAL_BLOB(v);
			break;
		default:
			break;
	}
}

static void sersync_alias_keys(
		db_key_t *k, db_val_t *v, const struct sersync_alias_row *r)
{
	k[0] = &_sersync_col_auser;
	k[1] = &_sersync_col_adomain;
	k[2] = &_sersync_col_user;
	k[3] = &_sersync_col_domain;
	sersync_alias_val(&v[0], &r->auser);
	sersync_alias_val(&v[1], &r->adomain);
	sersync_alias_val(&v[2], &r->user);
	sersync_alias_val(&v[3], &r->domain);
}

/* f on each row of a result whose first four columns are the row's */
static int sersync_alias_rows(db1_res_t *res, int first,
		sersync_alias_row_f f, void *param)
{
	struct sersync_alias_row row;
	db_val_t *rv;
	int rc;
	int i;

	rc = 0;
	for(i = 0; i < RES_ROW_N(res) && rc == 0; i++) {
		rv = ROW_VALUES(&RES_ROWS(res)[i]) + first;
		sersync_alias_cell(&rv[0], &row.auser);
		sersync_alias_cell(&rv[1], &row.adomain);
		sersync_alias_cell(&rv[2], &row.user);
		sersync_alias_cell(&rv[3], &row.domain);
		rc = f(&row, param);
	}
	return rc;
}

/*
 * Every row of table, SERSYNC_DB_FETCH_ROWS at a time by its id column,
 * in raw SQL (LIMIT: SQLite, MySQL, PostgreSQL): for drivers that return
 * a whole result at once in private memory (db_sqlite needs about 600
 * bytes of it per row).
 */
static int sersync_alias_paged(db1_con_t *h, const str *table,
		sersync_alias_row_f f, void *param)
{
	char sql[256];
	db1_res_t *res;
	db_val_t *id;
	long long last;
	str q;
	int n;
	int rc;

	last = -1;
	for(;;) {
		n = snprintf(sql, sizeof(sql),
				"SELECT id, %.*s, %.*s, %.*s, %.*s FROM %.*s WHERE id > %lld"
				" ORDER BY id LIMIT %d",
				_sersync_col_auser.len, _sersync_col_auser.s,
				_sersync_col_adomain.len, _sersync_col_adomain.s,
				_sersync_col_user.len, _sersync_col_user.s,
				_sersync_col_domain.len, _sersync_col_domain.s, table->len,
				table->s, last, SERSYNC_DB_FETCH_ROWS);
		if(n <= 0 || n >= (int)sizeof(sql))
			return -1;
		q.s = sql;
		q.len = n;
		res = NULL;
		if(_sersync_dbf.raw_query(h, &q, &res) < 0 || res == NULL) {
			LM_ERR("cannot read table %.*s\n", table->len, table->s);
			if(res != NULL)
				_sersync_dbf.free_result(h, res);
			return -1;
		}
		if(RES_ROW_N(res) == 0) {
			_sersync_dbf.free_result(h, res);
			return 0;
		}
		id = ROW_VALUES(&RES_ROWS(res)[RES_ROW_N(res) - 1]);
		switch(VAL_TYPE(id)) {
			case DB1_INT:
				last = VAL_INT(id);
				break;
			case DB1_BIGINT:
				last = VAL_BIGINT(id);
				break;
			default:
				LM_ERR("table %.*s: id is not an integer\n", table->len,
						table->s);
				_sersync_dbf.free_result(h, res);
				return -1;
		}
		n = RES_ROW_N(res);
		rc = sersync_alias_rows(res, 1, f, param);
		_sersync_dbf.free_result(h, res);
		if(rc != 0)
			return rc;
		if(n < SERSYNC_DB_FETCH_ROWS)
			return 0;
	}
}

/*
 * Calls f once per row of table: every row, or the rows of one alias
 * (auser and adomain not NULL). Strings are valid during the call only.
 * f returns 0 to go on, non-zero to stop (returned). -1: DB error.
 */
int sersync_alias_select(const str *table, const str *auser,
		const str *adomain, sersync_alias_row_f f, void *param)
{
	db_key_t keys[2];
	db_val_t vals[2];
	db_key_t cols[4];
	db1_res_t *res = NULL;
	db1_con_t *h;
	int nk;
	int fetch;
	int rc;

	h = sersync_alias_db(table);
	if(h == NULL)
		return -1;
	cols[0] = &_sersync_col_auser;
	cols[1] = &_sersync_col_adomain;
	cols[2] = &_sersync_col_user;
	cols[3] = &_sersync_col_domain;
	nk = 0;
	if(auser != NULL && adomain != NULL) {
		keys[0] = &_sersync_col_auser;
		keys[1] = &_sersync_col_adomain;
		sersync_alias_val(&vals[0], auser);
		sersync_alias_val(&vals[1], adomain);
		nk = 2;
	}
	fetch = DB_CAPABILITY(_sersync_dbf, DB_CAP_FETCH);
	if(nk == 0 && !fetch && DB_CAPABILITY(_sersync_dbf, DB_CAP_RAW_QUERY))
		return sersync_alias_paged(h, table, f, param);
	if(fetch) {
		if(_sersync_dbf.query(h, nk ? keys : NULL, NULL, nk ? vals : NULL,
				   cols, nk, 4, NULL, NULL)
						< 0
				|| _sersync_dbf.fetch_result(h, &res, SERSYNC_DB_FETCH_ROWS)
						   < 0) {
			LM_ERR("cannot read table %.*s\n", table->len, table->s);
			if(res != NULL)
				_sersync_dbf.free_result(h, res);
			return -1;
		}
	} else if(_sersync_dbf.query(h, nk ? keys : NULL, NULL, nk ? vals : NULL,
					  cols, nk, 4, NULL, &res)
			  < 0) {
		LM_ERR("cannot read table %.*s\n", table->len, table->s);
		return -1;
	}
	if(res == NULL) {
		LM_ERR("no result reading table %.*s\n", table->len, table->s);
		return -1;
	}
	for(;;) {
		rc = sersync_alias_rows(res, 0, f, param);
		if(rc != 0 || !fetch || RES_ROW_N(res) == 0)
			break;
		if(_sersync_dbf.fetch_result(h, &res, SERSYNC_DB_FETCH_ROWS) < 0) {
			LM_ERR("cannot read more of table %.*s\n", table->len, table->s);
			rc = -1;
			break;
		}
		if(res == NULL || RES_ROW_N(res) == 0)
			break;
	}
	if(res != NULL)
		_sersync_dbf.free_result(h, res);
	return rc;
}

/* 1: the exact row exists, 0: it does not, -1: DB error */
int sersync_alias_exists(const str *table, const struct sersync_alias_row *r)
{
	db_key_t keys[4];
	db_val_t vals[4];
	db_key_t col;
	db1_res_t *res = NULL;
	db1_con_t *h;
	int found;

	h = sersync_alias_db(table);
	if(h == NULL)
		return -1;
	sersync_alias_keys(keys, vals, r);
	col = &_sersync_col_auser;
	if(_sersync_dbf.query(h, keys, NULL, vals, &col, 4, 1, NULL, &res) < 0
			|| res == NULL) {
		LM_ERR("cannot query table %.*s\n", table->len, table->s);
		if(res != NULL)
			_sersync_dbf.free_result(h, res);
		return -1;
	}
	found = (RES_ROW_N(res) > 0);
	_sersync_dbf.free_result(h, res);
	return found;
}

/*
 * Inserts (del 0) or deletes (del 1: every copy of) the exact row,
 * retrying while the database is busy (db_sqlite sets no busy timeout).
 */
static int sersync_alias_write(
		const str *table, const struct sersync_alias_row *r, int del)
{
	db_key_t keys[4];
	db_val_t vals[4];
	db1_con_t *h;
	int rc;
	int i;

	sersync_alias_keys(keys, vals, r);
	for(i = 0; i < SERSYNC_DB_TRIES; i++) {
		if(i > 0)
			sleep_us(SERSYNC_DB_RETRY_US);
		h = sersync_alias_db(table);
		if(h == NULL)
			continue;
		rc = del ? _sersync_dbf.delete(h, keys, NULL, vals, 4)
				 : _sersync_dbf.insert(h, keys, vals, 4);
		if(rc == 0)
			return 0;
	}
	LM_ERR("cannot %s %.*s@%.*s -> %.*s@%.*s %s %.*s\n",
			del ? "delete" : "insert", r->auser.len, r->auser.s,
			r->adomain.len, r->adomain.s, r->user.len, r->user.s,
			r->domain.len, r->domain.s, del ? "from" : "into", table->len,
			table->s);
	return -1;
}

int sersync_alias_insert(const str *table, const struct sersync_alias_row *r)
{
	return sersync_alias_write(table, r, 0);
}

/* deletes the exact row (every copy of it) */
int sersync_alias_delete(const str *table, const struct sersync_alias_row *r)
{
	return sersync_alias_write(table, r, 1);
}

/* slots of the worker queue: queue_size rounded up to a power of two, at
 * least 64, as sersync_shared_create() maps it */
static uint64_t sersync_queue_slots(void)
{
	uint64_t n;

	for(n = 64; n < (uint64_t)_sersync_queue_size; n <<= 1)
		;
	return n;
}

/* waits up to SERSYNC_PUBLISH_WAIT_US for a free slot in the queue */
static int sersync_queue_room(void)
{
	/* about 12 KiB: static, one caller at a time per process */
	static struct sersync_status st;
	unsigned int waited;
	uint64_t slots;

	slots = sersync_queue_slots();
	for(waited = 0; waited < SERSYNC_PUBLISH_WAIT_US;
			waited += SERSYNC_PUBLISH_STEP_US) {
		sleep_us(SERSYNC_PUBLISH_STEP_US);
		memset(&st, 0, sizeof(st));
		if(sersync_status_read(_sersync_shared, &st) != SERSYNC_OK)
			return 0;
		if(st.queue_depth + 1 < slots)
			return 1;
	}
	return 0;
}

/*
 * Hands one alias change (op UPSERT or DELETE; r NULL for the scan
 * markers) of _sersync_alias_table to the engine. Called in RPC and timer
 * processes only, which may wait: on a full queue it waits up to 2 s for
 * room (each full queue it meets counts once in queue_dropped). Returns
 * the sersync_rc.
 */
int sersync_alias_publish(int op, const struct sersync_alias_row *r)
{
	struct sersync_alias a;
	int tries;
	int rc;

	memset(&a, 0, sizeof(a));
	a.op = op;
	sersync_str_from(&a.table, &_sersync_alias_table);
	if(r != NULL) {
		sersync_str_from(&a.alias_username, &r->auser);
		sersync_str_from(&a.alias_domain, &r->adomain);
		sersync_str_from(&a.username, &r->user);
		sersync_str_from(&a.domain, &r->domain);
	}
	/* another process may take the room we waited for: a few rounds */
	for(tries = 0;; tries++) {
		rc = sersync_publish_alias(_sersync_shared, &a);
		if(rc != SERSYNC_E_QUEUE_FULL || tries >= 3
				|| !sersync_queue_room())
			break;
	}
	if(rc != SERSYNC_OK)
		LM_ERR("alias change (op %d) not handed to the sersync engine (rc"
			   " %d%s); the table is changed: run sersync.alias_rescan\n",
				op, rc, rc == SERSYNC_E_QUEUE_FULL ? ", queue full" : "");
	return rc;
}

/*
 * sersync_apply_alias_fn: one alias record from a peer into its table
 * (in the process serving sersync.apply, marked as replaying). UPSERT
 * inserts the row unless it exists; DELETE removes it; both idempotent.
 */
int sersync_alias_apply(void *ctx, const struct sersync_alias *a)
{
	struct sersync_alias_row r;
	str table;
	time_t now;
	int rc;

	if(a == NULL)
		return -1;
	if(!_sersync_db_bound) {
		/* keeping it would stall every record behind it */
		now = time(NULL);
		if(now - _sersync_alias_ignored_logged >= 60) {
			_sersync_alias_ignored_logged = now;
			LM_WARN("alias records from peers are ignored: this node has no"
					" modparam(\"sersync\", \"db_url\", ...)\n");
		}
		return 0;
	}
	if(!sersync_alias_table_ok(a->table.s, a->table.len))
		return sersync_apply_refuse(
				"invalid field: alias table '%.*s' is not a table name",
				(int)(a->table.len > 64 ? 64 : a->table.len),
				a->table.s ? a->table.s : "");
	sersync_str_to(&table, &a->table);
	sersync_str_to(&r.auser, &a->alias_username);
	sersync_str_to(&r.adomain, &a->alias_domain);
	sersync_str_to(&r.user, &a->username);
	sersync_str_to(&r.domain, &a->domain);

	__atomic_fetch_add(_sersync_alias_applied, 1, __ATOMIC_SEQ_CST);
	switch(a->op) {
		case SERSYNC_OP_UPSERT:
			rc = sersync_alias_exists(&table, &r);
			if(rc == 0)
				rc = sersync_alias_insert(&table, &r);
			break;
		case SERSYNC_OP_DELETE:
			rc = sersync_alias_delete(&table, &r);
			break;
		default:
			return sersync_apply_refuse(
					"invalid field: unknown alias operation %d", (int)a->op);
	}
	/* a missing table is a database error too: retried, then quarantined */
	if(rc < 0)
		return sersync_apply_fail("cannot write alias table '%.*s' (a"
								  " database error: see SER's log)",
				table.len, table.s);
	return 0;
}

/* one row of the table into the check's walk */
struct sersync_alias_walking
{
	struct sersync_walk *w;
	uint64_t rows;
};

static int sersync_alias_walk_row(const struct sersync_alias_row *r, void *param)
{
	struct sersync_alias_walking *wk = param;
	struct sersync_alias a;

	memset(&a, 0, sizeof(a));
	a.op = SERSYNC_OP_UPSERT;
	sersync_str_from(&a.table, &_sersync_alias_table);
	sersync_str_from(&a.alias_username, &r->auser);
	sersync_str_from(&a.alias_domain, &r->adomain);
	sersync_str_from(&a.username, &r->user);
	sersync_str_from(&a.domain, &r->domain);
	wk->rows++;
	return sersync_walk_add_alias(wk->w, &a) == SERSYNC_OK ? 0 : 1;
}

/*
 * The walk of the alias table for the check of SER against the journal
 * (sersync.alias_digest): every row, read through SER's database layer
 * as the alias RPCs read it, handed to the engine's walk. *rows: rows
 * walked. 0; -1 with a reason in err; -2: aliases are not replicated on
 * this node.
 */
int sersync_alias_walk(struct sersync_walk *w, uint64_t *rows,
		uint64_t *max_lock_ns, char *err, size_t errlen)
{
	struct sersync_alias_walking wk;
	int rc;

	*rows = 0;
	*max_lock_ns = 0;
	if(!sersync_alias_enabled()) {
		snprintf(err, errlen, "aliases are not replicated on this node"
							  " (no alias_db_url)");
		return -2;
	}
	wk.w = w;
	wk.rows = 0;
	rc = sersync_alias_select(
			&_sersync_alias_table, NULL, NULL, sersync_alias_walk_row, &wk);
	*rows = wk.rows;
	if(rc != 0) {
		snprintf(err, errlen, rc < 0 ? "cannot read table %.*s"
									 : "the walk refused a row of %.*s",
				_sersync_alias_table.len, _sersync_alias_table.s);
		return -1;
	}
	return 0;
}
