/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * What the module's C files share: the str conversions, the state
 * (set in mod_init, before SER forks, and only read afterwards, except
 * _sersync_replaying, which is per process) and, file by file, the
 * functions each offers the others.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#ifndef _SERSYNC_MOD_H_
#define _SERSYNC_MOD_H_

#include "../../core/str.h"
#include "../../core/rpc.h"
#include "../../core/parser/msg_parser.h"
#include "../../core/pvar.h"
#include "../usrloc/usrloc.h"

#include "sersync.h"

/*
 * SER's str <-> the contract's struct sersync_str, both ways without a
 * copy: the result points at the source's bytes.
 */

/* to the engine: an unset or empty str (or none) is {NULL, 0} */
static inline void sersync_str_from(struct sersync_str *dst, const str *src)
{
	if(src != NULL && src->s != NULL && src->len > 0) {
		dst->s = src->s;
		dst->len = (size_t)src->len;
	} else {
		dst->s = NULL;
		dst->len = 0;
	}
}

/* from the engine: str has char *, and its users here (usrloc, the DB
 * API) copy, never write through it. Empty strings point at "":
 * shm_str_dup() warns on a NULL source. */
static inline void sersync_str_to(str *dst, const struct sersync_str *src)
{
	dst->s = (src->len > 0 && src->s != NULL) ? (char *)src->s : "";
	dst->len = (src->s != NULL) ? (int)src->len : 0;
}

/* modparams (sersync_mod.c) */
extern str _sersync_node_id;
extern str _sersync_listen;
extern str _sersync_secret;
extern str _sersync_journal;
extern str _sersync_fifo;
extern str _sersync_db_url;
extern str _sersync_domains;
extern int _sersync_queue_size;
extern str _sersync_alias_table;
extern int _sersync_alias_rescan_interval;
extern int _sersync_alias_scan_max_delete;
extern int _sersync_alias_scan_max_delete_pct;
extern int _sersync_retention_secs;
extern int _sersync_retention_records;
extern str _sersync_durability;
extern int _sersync_durability_timeout;
extern int _sersync_check_interval;
/* derived from "durability": 1 for "journal" */
extern int _sersync_durable_wait;

/* derived in mod_init (sersync_mod.c) */
extern struct sersync_config _sersync_config;
extern struct sersync_shared *_sersync_shared;
extern usrloc_api_t _sersync_ul;

/* usrloc binding, callback and writer (sersync_ul.c) */
extern int _sersync_replaying;
int sersync_ul_init(void);
int sersync_ul_register_domains(void);
void sersync_ul_child_init(int rank);
/* usrloc has loaded its tables: sersync.apply may write into them */
int sersync_ul_is_loaded(void);
/* sersync_apply_fn, sersync.apply's writer: one decoded contact from a
 * peer into usrloc; the caller sets _sersync_replaying around it */
int sersync_apply_one(void *ctx, const struct sersync_contact *sc);
/* the check's walk of the replicated usrloc tables, slot by slot under
 * usrloc's slot locks (sersync.digest, sersync.digest_range) */
int sersync_ul_walk(struct sersync_walk *w, uint64_t *contacts,
		uint64_t *max_lock_ns, char *err, size_t errlen);

/* event_route[sersync:peer-up/down] and $sersync(peer)
 * (sersync_events.c) */
int sersync_events_init(void);
int sersync_events_start(void);
int sersync_pv_parse(pv_spec_t *sp, str *in);
int sersync_pv_get(sip_msg_t *msg, pv_param_t *param, pv_value_t *res);

/* the sersync process (sersync_proc.c) */
int sersync_proc_start(void);
void sersync_log(int level, const char *msg, size_t len);

/* the alias table (sersync_alias.c) */

/* dbaliases' column size (VARCHAR(64)) and the longest URI accepted */
#define SERSYNC_ALIAS_FIELD_MAX 64
#define SERSYNC_ALIAS_URI_MAX 256

/* one alias_db row: auser@adomain -> user@domain */
struct sersync_alias_row
{
	str auser;
	str adomain;
	str user;
	str domain;
};

/* called once per row; non-zero stops the walk */
typedef int (*sersync_alias_row_f)(
		const struct sersync_alias_row *r, void *param);

int sersync_alias_init(void);
int sersync_alias_enabled(void);
uint64_t sersync_alias_applied(void);
int sersync_alias_table_ok(const char *s, size_t len);
void sersync_alias_lock(void);
void sersync_alias_unlock(void);
int sersync_alias_select(const str *table, const str *auser,
		const str *adomain, sersync_alias_row_f f, void *param);
int sersync_alias_exists(const str *table, const struct sersync_alias_row *r);
int sersync_alias_insert(const str *table, const struct sersync_alias_row *r);
int sersync_alias_delete(const str *table, const struct sersync_alias_row *r);
int sersync_alias_publish(int op, const struct sersync_alias_row *r);
int sersync_alias_apply(void *ctx, const struct sersync_alias *a);
int sersync_alias_walk(struct sersync_walk *w, uint64_t *rows,
		uint64_t *max_lock_ns, char *err, size_t errlen);

/* alias table scans and the rescan process (sersync_alias_scan.c) */
int sersync_alias_timer_init(void);
int sersync_alias_timer_start(void);
/* a scan's error text: room for a refusal's explanation */
#define SERSYNC_SCAN_ERR_MAX 512

/* what a scan read, and what the engine concluded from it */
struct sersync_scan_result
{
	int rows;		   /* rows published */
	uint64_t removed;  /* aliases deleted */
	uint64_t refused;  /* deletions refused: over the limit */
};
int sersync_alias_scan(int wait_ms, int confirmed,
		struct sersync_scan_result *res, char *err, int errlen);

/* RPC commands (sersync_rpc.c) */
extern rpc_export_t sersync_rpc_cmds[];
/* sersync.apply's writers say why a record failed (printf format; the
 * reply carries it to the engine, which quarantines or retries); returns
 * SERSYNC_APPLY_REFUSED for refuse, -1 for fail */
int sersync_apply_refuse(const char *fmt, ...);
int sersync_apply_fail(const char *fmt, ...);
/* after rpc->scan(ctx, "*.S", ...) returned 0: 1 if a parameter is left */
int sersync_rpc_left(rpc_t *rpc, void *ctx);
/* 0 when the call has no parameter, else a 400 fault */
int sersync_rpc_no_params(rpc_t *rpc, void *ctx, const char *name);

/* the alias RPCs (sersync_alias_rpc.c), listed in sersync_rpc_cmds */
extern const char *sersync_alias_add_doc[2];
extern const char *sersync_alias_replace_doc[2];
extern const char *sersync_alias_rm_doc[2];
extern const char *sersync_alias_list_doc[2];
extern const char *sersync_alias_rescan_doc[2];
extern const char *sersync_alias_rescan_confirm_doc[2];
void sersync_rpc_alias_add(rpc_t *rpc, void *ctx);
void sersync_rpc_alias_replace(rpc_t *rpc, void *ctx);
void sersync_rpc_alias_rm(rpc_t *rpc, void *ctx);
void sersync_rpc_alias_list(rpc_t *rpc, void *ctx);
void sersync_rpc_alias_rescan(rpc_t *rpc, void *ctx);
void sersync_rpc_alias_rescan_confirm(rpc_t *rpc, void *ctx);

/* sersync_alias_http.c: the alias API over HTTP (script function
 * sersync_alias_http()); init binds xhttp and jsonrpcs when loaded */
int sersync_alias_http_init(void);

/* statistics, group "sersync" (sersync_stats.c) */
int sersync_stats_init(void);
int sersync_alias_http(struct sip_msg *msg, char *p1, char *p2);

/* sersync_metrics.c: the Prometheus exposition (script function
 * sersync_metrics()); init binds xhttp when loaded */
int sersync_metrics_init(void);
int sersync_metrics(struct sip_msg *msg, char *p1, char *p2);

/* sersync_sqlite.c: busy timeout for every SQLite connection of SER */
int sersync_sqlite_init(void);

#endif /* _SERSYNC_MOD_H_ */
