/*
 * tests/abi.c - pins the C side of the sersync.h contract (x86_64).
 *
 * build.rs runs bindgen over include/sersync.h with layout tests, which
 * pins the Rust side. This file pins the C side: struct sizes and field
 * offsets, the numbers of the enums and constants, and (by taking their
 * addresses, linked against libsersync.a) that every declared function
 * is exported with the declared signature. A layout change must update
 * both this file and the engine.
 *
 * Build: cc -std=c11 -I include tests/abi.c target/release/libsersync.a \
 *        -lsqlite3 -lpthread -ldl -lm
 */

#include <stddef.h>
#include <stdio.h>

#include "sersync.h"

#define SIZE(t, n) _Static_assert(sizeof(t) == (n), "sizeof " #t)
#define OFF(t, f, n) \
	_Static_assert(offsetof(t, f) == (n), "offsetof " #t "." #f)
#define VAL(e, n) _Static_assert((e) == (n), #e)

_Static_assert(sizeof(void *) == 8, "these values are for 64-bit targets");

/* enum sersync_rc: numbers are part of the contract, never reused */
SIZE(enum sersync_rc, 4);
VAL(SERSYNC_OK, 0);
VAL(SERSYNC_E_NULL, 1);
VAL(SERSYNC_E_PANIC, 2);
VAL(SERSYNC_E_QUEUE_FULL, 3);
VAL(SERSYNC_E_TOO_LARGE, 4);
VAL(SERSYNC_E_CONFIG, 5);
VAL(SERSYNC_E_DECODE, 6);
VAL(SERSYNC_E_IO, 7);
VAL(SERSYNC_E_JOURNAL, 8);
VAL(SERSYNC_E_CALLBACK, 9);
VAL(SERSYNC_E_TIMEOUT, 10);
VAL(SERSYNC_SUPERSEDED, 11);
VAL(SERSYNC_E_REFUSED, 12);
VAL(SERSYNC_E_BUSY, 13);
VAL(SERSYNC_APPLY_REFUSED, -2);
VAL(SERSYNC_QUARANTINE_RETRY, 1);
VAL(SERSYNC_QUARANTINE_DROP, 2);

VAL(SERSYNC_OP_UPSERT, 1);
VAL(SERSYNC_OP_DELETE, 2);
VAL(SERSYNC_OP_SCAN_BEGIN, 3);
VAL(SERSYNC_OP_SCAN_END, 4);
VAL(SERSYNC_OP_SCAN_ABORT, 5);
VAL(SERSYNC_OP_SCAN_END_CONFIRMED, 6);

/* struct sersync_alias */
SIZE(struct sersync_alias, 88);
OFF(struct sersync_alias, op, 0);
OFF(struct sersync_alias, table, 8);
OFF(struct sersync_alias, alias_username, 24);
OFF(struct sersync_alias, alias_domain, 40);
OFF(struct sersync_alias, username, 56);
OFF(struct sersync_alias, domain, 72);

/* struct sersync_apply_ops */
SIZE(struct sersync_apply_ops, 24);
OFF(struct sersync_apply_ops, contact, 0);
OFF(struct sersync_apply_ops, alias, 8);
OFF(struct sersync_apply_ops, ctx, 16);

VAL(SERSYNC_LOG_ERR, 1);
VAL(SERSYNC_LOG_WARN, 2);
VAL(SERSYNC_LOG_INFO, 3);
VAL(SERSYNC_LOG_DBG, 4);

VAL(SERSYNC_PEER_DOWN, 0);
VAL(SERSYNC_PEER_CONNECTING, 1);
VAL(SERSYNC_PEER_UP, 2);
VAL(SERSYNC_PEER_REFUSED, 3);
VAL(SERSYNC_RESYNC_NONE, 0);
VAL(SERSYNC_RESYNC_PEERS, 1);
VAL(SERSYNC_RESYNC_SER, 2);
VAL(SERSYNC_RESYNC_DONE, 3);
VAL(SERSYNC_RESYNC_FAILED, 4);

VAL(SERSYNC_MAX_PEERS, 32);
VAL(SERSYNC_ID_MAX, 64);
VAL(SERSYNC_ADDR_MAX, 96);
VAL(SERSYNC_ERR_MAX, 160);
VAL(SERSYNC_QUARANTINE_SHOWN, 16);
VAL(SERSYNC_RECORD_MAX, 256);

/* struct sersync_str */
SIZE(struct sersync_str, 16);
OFF(struct sersync_str, s, 0);
OFF(struct sersync_str, len, 8);

/* struct sersync_contact */
SIZE(struct sersync_contact, 224);
OFF(struct sersync_contact, op, 0);
OFF(struct sersync_contact, q, 4);
OFF(struct sersync_contact, domain, 8);
OFF(struct sersync_contact, aor, 24);
OFF(struct sersync_contact, contact, 40);
OFF(struct sersync_contact, ruid, 56);
OFF(struct sersync_contact, received, 72);
OFF(struct sersync_contact, path, 88);
OFF(struct sersync_contact, callid, 104);
OFF(struct sersync_contact, user_agent, 120);
OFF(struct sersync_contact, socket, 136);
OFF(struct sersync_contact, instance, 152);
OFF(struct sersync_contact, expires, 168);
OFF(struct sersync_contact, last_modified, 176);
OFF(struct sersync_contact, cseq, 184);
OFF(struct sersync_contact, flags, 188);
OFF(struct sersync_contact, cflags, 192);
OFF(struct sersync_contact, methods, 196);
OFF(struct sersync_contact, reg_id, 200);
OFF(struct sersync_contact, server_id, 204);
OFF(struct sersync_contact, stamp, 216);

/* struct sersync_config */
SIZE(struct sersync_config, 232);
OFF(struct sersync_config, node_id, 0);
OFF(struct sersync_config, listen, 16);
OFF(struct sersync_config, peers, 32);
OFF(struct sersync_config, npeers, 40);
OFF(struct sersync_config, secret, 48);
OFF(struct sersync_config, journal, 64);
OFF(struct sersync_config, fifo, 80);
OFF(struct sersync_config, db_url, 96);
OFF(struct sersync_config, fifo_reply_dir, 112);
OFF(struct sersync_config, domains, 128);
OFF(struct sersync_config, retention_secs, 144);
OFF(struct sersync_config, retention_records, 152);
OFF(struct sersync_config, ul_db_mode, 160);
OFF(struct sersync_config, alias_scan_max_delete, 164);
OFF(struct sersync_config, alias_scan_max_delete_pct, 168);
OFF(struct sersync_config, runtime_dir, 176);
OFF(struct sersync_config, check_interval, 192);
OFF(struct sersync_config, peer_check_interval, 196);
OFF(struct sersync_config, max_clock_skew_ms, 200);
OFF(struct sersync_config, secret2, 208);
OFF(struct sersync_config, accept_clear_peers, 224);

/* struct sersync_peer_status */
SIZE(struct sersync_peer_status, 392);
OFF(struct sersync_peer_status, node_id, 0);
OFF(struct sersync_peer_status, address, 64);
OFF(struct sersync_peer_status, last_error, 160);
OFF(struct sersync_peer_status, state, 320);
OFF(struct sersync_peer_status, _pad, 324);
OFF(struct sersync_peer_status, sent, 328);
OFF(struct sersync_peer_status, acked, 336);
OFF(struct sersync_peer_status, pending, 344);
OFF(struct sersync_peer_status, lag_ms, 352);
OFF(struct sersync_peer_status, received, 360);
OFF(struct sersync_peer_status, snapshot_sent, 368);
OFF(struct sersync_peer_status, snapshot_total, 376);
OFF(struct sersync_peer_status, snapshot_received, 384);

/* struct sersync_status */
SIZE(struct sersync_status, 22384);
OFF(struct sersync_status, node_id, 0);
OFF(struct sersync_status, last_error, 64);
OFF(struct sersync_status, running, 224);
OFF(struct sersync_status, npeers, 228);
OFF(struct sersync_status, queue_depth, 232);
OFF(struct sersync_status, queue_dropped, 240);
OFF(struct sersync_status, journaled, 248);
OFF(struct sersync_status, last_seq, 256);
OFF(struct sersync_status, applied, 264);
OFF(struct sersync_status, apply_pending, 272);
OFF(struct sersync_status, apply_failures, 280);
OFF(struct sersync_status, applied_via_db, 288);
OFF(struct sersync_status, journal_entries, 296);
OFF(struct sersync_status, peers, 304);
OFF(struct sersync_status, restored, 12848);
OFF(struct sersync_status, restore_pending, 12856);
OFF(struct sersync_status, set_aside, 12864);
OFF(struct sersync_status, incarnation, 12872);
OFF(struct sersync_status, apply_superseded, 12880);
OFF(struct sersync_status, quarantined, 12888);
OFF(struct sersync_status, quarantine_last_reason, 12896);
OFF(struct sersync_status, nquarantine, 13056);
OFF(struct sersync_status, quarantine, 13064);
OFF(struct sersync_status, alias_scans, 21384);
OFF(struct sersync_status, alias_scan_removed, 21392);
OFF(struct sersync_status, alias_scan_refused, 21400);
OFF(struct sersync_status, checks, 21408);
OFF(struct sersync_status, ranges_compared, 21416);
OFF(struct sersync_status, divergences, 21424);
OFF(struct sersync_status, repaired, 21432);
OFF(struct sersync_status, peer_checks, 21440);
OFF(struct sersync_status, peer_check_ranges, 21448);
OFF(struct sersync_status, peer_check_divergences, 21456);
OFF(struct sersync_status, peer_check_repaired, 21464);
OFF(struct sersync_status, peer_check_ignored, 21472);
OFF(struct sersync_status, clock_refused, 21480);
OFF(struct sersync_status, clock_refused_by_peers, 21488);
OFF(struct sersync_status, clock_last_reason, 21496);
OFF(struct sersync_status, clones_refused, 21656);
OFF(struct sersync_status, clone_last_reason, 21664);
OFF(struct sersync_status, preauth_refused, 21824);
OFF(struct sersync_status, resync_state, 21832);
OFF(struct sersync_status, resync_peers_total, 21836);
OFF(struct sersync_status, resync_peers_done, 21840);
OFF(struct sersync_status, resync_peer, 21848);
OFF(struct sersync_status, resync_started, 21912);
OFF(struct sersync_status, resync_finished, 21920);
OFF(struct sersync_status, resync_ranges_differing, 21928);
OFF(struct sersync_status, resync_ranges_compared, 21936);
OFF(struct sersync_status, resync_divergences, 21944);
OFF(struct sersync_status, resync_repaired, 21952);
OFF(struct sersync_status, resyncs, 21960);
OFF(struct sersync_status, resync_result, 21968);
OFF(struct sersync_status, peer_connects, 22128);

/* struct sersync_quarantined */
SIZE(struct sersync_quarantined, 520);
OFF(struct sersync_quarantined, id, 0);
OFF(struct sersync_quarantined, seq, 8);
OFF(struct sersync_quarantined, stamp, 16);
OFF(struct sersync_quarantined, at, 24);
OFF(struct sersync_quarantined, tries, 32);
OFF(struct sersync_quarantined, origin, 40);
OFF(struct sersync_quarantined, record, 104);
OFF(struct sersync_quarantined, reason, 360);

/* every exported function, typed as declared: a signature change in the
 * header breaks this initializer, a missing export breaks the link */
static int (*const fn_set_logger)(sersync_log_fn) = sersync_set_logger;
static int (*const fn_config_check)(const struct sersync_config *, char *,
		size_t) = sersync_config_check;
static int (*const fn_shared_create)(uint32_t, struct sersync_shared **) =
		sersync_shared_create;
static int (*const fn_publish)(struct sersync_shared *,
		const struct sersync_contact *) = sersync_publish;
static int (*const fn_resync)(struct sersync_shared *, const char *, size_t) =
		sersync_resync;
static int (*const fn_forget)(struct sersync_shared *, const char *, size_t) =
		sersync_forget;
static int (*const fn_quarantine_ctl)(struct sersync_shared *, int32_t,
		uint64_t) = sersync_quarantine_ctl;
static int (*const fn_journal_wait)(struct sersync_shared *, uint32_t) =
		sersync_journal_wait;
static int (*const fn_engine_run)(struct sersync_shared *,
		const struct sersync_config *) = sersync_engine_run;
static int (*const fn_status_read)(struct sersync_shared *,
		struct sersync_status *) = sersync_status_read;
static int (*const fn_publish_alias)(struct sersync_shared *,
		const struct sersync_alias *) = sersync_publish_alias;
static int (*const fn_order_admit)(struct sersync_shared *,
		const struct sersync_contact *, int64_t) = sersync_order_admit;
static int (*const fn_apply_decode)(const char *, size_t,
		const struct sersync_apply_ops *, uint32_t *, char *,
		size_t) = sersync_apply_decode;
static int (*const fn_walk_new)(int64_t, const char *, size_t,
		struct sersync_walk **) = sersync_walk_new;
static int (*const fn_walk_add)(struct sersync_walk *,
		const struct sersync_contact *) = sersync_walk_add;
static int (*const fn_walk_reply)(struct sersync_walk *, uint64_t, char *,
		size_t, uint64_t *, uint64_t *) = sersync_walk_reply;
static int (*const fn_walk_free)(struct sersync_walk *) = sersync_walk_free;
static int (*const fn_apply_token_check)(struct sersync_shared *,
		const char *, size_t) = sersync_apply_token_check;
static int (*const fn_apply_token_write)(struct sersync_shared *,
		const char *, size_t) = sersync_apply_token_write;

int main(void)
{
	const void *fns[] = {
			(const void *)fn_set_logger,
			(const void *)fn_config_check,
			(const void *)fn_shared_create,
			(const void *)fn_publish,
			(const void *)fn_forget,
			(const void *)fn_resync,
			(const void *)fn_journal_wait,
			(const void *)fn_engine_run,
			(const void *)fn_status_read,
			(const void *)fn_publish_alias,
			(const void *)fn_apply_decode,
			(const void *)fn_order_admit,
			(const void *)fn_quarantine_ctl,
			(const void *)fn_walk_new,
			(const void *)fn_walk_add,
			(const void *)fn_walk_reply,
			(const void *)fn_walk_free,
			(const void *)fn_apply_token_check,
			(const void *)fn_apply_token_write,
	};
	size_t i;

	for(i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		if(fns[i] == NULL) {
			printf("abi: export %zu is NULL\n0 passed, 1 failed\n", i);
			return 1;
		}
	}
	printf("abi: layout of sersync.h and %zu exports checked\n",
			sizeof(fns) / sizeof(fns[0]));
	printf("1 passed, 0 failed\n");
	return 0;
}
