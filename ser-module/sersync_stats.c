/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * Statistics in Kamailio's framework, group "sersync": what
 * `kamcmd stats.get_statistics sersync:` lists and xhttp_prom exports as
 * kamailio_sersync_*. The engine's threads keep the figures in the shared
 * status area (atomically); each statistic is a function statistic that
 * reads it there, in whichever SER process asks, so nothing the engine
 * updates is read torn (Kamailio's own counters are not atomic before
 * 6.1). Names are those of sersync.status.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stddef.h>
#include <string.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/counters.h"
#include "../../core/timer.h"

#include "sersync_mod.h"

/* the status area as this process reads it: one read serves the
 * statistics of one request (they are asked for one after the other) */
static struct sersync_status _sersync_stats_st;
static unsigned int _sersync_stats_ticks = 0xffffffffu;

static const struct sersync_status *sersync_stats_status(void)
{
	/* get_ticks_raw() moves every 1/16 s: within a tick, the same read */
	unsigned int now = get_ticks_raw();

	if(now != _sersync_stats_ticks) {
		if(_sersync_shared == NULL
				|| sersync_status_read(_sersync_shared, &_sersync_stats_st)
						   != SERSYNC_OK)
			memset(&_sersync_stats_st, 0, sizeof(_sersync_stats_st));
		_sersync_stats_ticks = now;
	}
	return &_sersync_stats_st;
}

#define SERSYNC_STAT(field)                                   \
	static counter_val_t sersync_stat_##field(void)           \
	{                                                         \
		return (counter_val_t)sersync_stats_status()->field; \
	}

SERSYNC_STAT(journaled)
SERSYNC_STAT(queue_depth)
SERSYNC_STAT(queue_dropped)
SERSYNC_STAT(applied)
SERSYNC_STAT(apply_pending)
SERSYNC_STAT(apply_failures)
SERSYNC_STAT(applied_via_db)
SERSYNC_STAT(apply_superseded)
SERSYNC_STAT(set_aside)
SERSYNC_STAT(quarantined)
SERSYNC_STAT(restored)
SERSYNC_STAT(restore_pending)
SERSYNC_STAT(journal_entries)
SERSYNC_STAT(checks)
SERSYNC_STAT(ranges_compared)
SERSYNC_STAT(divergences)
SERSYNC_STAT(repaired)
SERSYNC_STAT(peer_checks)
SERSYNC_STAT(peer_check_divergences)
SERSYNC_STAT(peer_check_repaired)
SERSYNC_STAT(alias_scans)
SERSYNC_STAT(clock_refused)
SERSYNC_STAT(clock_refused_by_peers)
SERSYNC_STAT(preauth_refused)
SERSYNC_STAT(clones_refused)

/* peers connected now (per peer: sersync.peers) */
static counter_val_t sersync_stat_peers_up(void)
{
	const struct sersync_status *st = sersync_stats_status();
	counter_val_t n = 0;
	uint32_t i;

	for(i = 0; i < st->npeers && i < SERSYNC_MAX_PEERS; i++)
		if(st->peers[i].state == SERSYNC_PEER_UP)
			n++;
	return n;
}

static counter_val_t sersync_stat_peers(void)
{
	return (counter_val_t)sersync_stats_status()->npeers;
}

#define SERSYNC_STAT_ROW(field) \
	{#field, STAT_IS_FUNC, (stat_var **)sersync_stat_##field}

/* clang-format off */
static stat_export_t sersync_stats[] = {
	SERSYNC_STAT_ROW(journaled),
	SERSYNC_STAT_ROW(queue_depth),
	SERSYNC_STAT_ROW(queue_dropped),
	SERSYNC_STAT_ROW(applied),
	SERSYNC_STAT_ROW(apply_pending),
	SERSYNC_STAT_ROW(apply_failures),
	SERSYNC_STAT_ROW(applied_via_db),
	SERSYNC_STAT_ROW(apply_superseded),
	SERSYNC_STAT_ROW(set_aside),
	SERSYNC_STAT_ROW(quarantined),
	SERSYNC_STAT_ROW(restored),
	SERSYNC_STAT_ROW(restore_pending),
	SERSYNC_STAT_ROW(journal_entries),
	SERSYNC_STAT_ROW(checks),
	SERSYNC_STAT_ROW(ranges_compared),
	SERSYNC_STAT_ROW(divergences),
	SERSYNC_STAT_ROW(repaired),
	SERSYNC_STAT_ROW(peer_checks),
	SERSYNC_STAT_ROW(peer_check_divergences),
	SERSYNC_STAT_ROW(peer_check_repaired),
	SERSYNC_STAT_ROW(alias_scans),
	SERSYNC_STAT_ROW(clock_refused),
	SERSYNC_STAT_ROW(clock_refused_by_peers),
	SERSYNC_STAT_ROW(preauth_refused),
	SERSYNC_STAT_ROW(clones_refused),
	SERSYNC_STAT_ROW(peers),
	SERSYNC_STAT_ROW(peers_up),
	{0, 0, 0}
};
/* clang-format on */

/* mod_init: registers the group "sersync" */
int sersync_stats_init(void)
{
	if(register_module_stats("sersync", sersync_stats) != 0) {
		LM_ERR("cannot register sersync's statistics\n");
		return -1;
	}
	return 0;
}
