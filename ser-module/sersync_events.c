/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * event_route[sersync:peer-up] and event_route[sersync:peer-down]: run
 * in a process of the module's own (a basic timer, every
 * SERSYNC_EVENTS_MS), which watches the peers' states in the engine's
 * shared status area, never from an engine thread. $sersync(peer) holds
 * the peer's node id while either route runs. A peer counts as up while
 * this node's connection to it streams; any other state is down. A
 * connection that dropped and came back between two looks is seen by
 * its count of connections (peer_connects): down, then up. The process
 * exists only when the script has one of the routes.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <string.h>

#include "../../core/dprint.h"
#include "../../core/fmsg.h"
#include "../../core/sr_module.h"
#include "../../core/pvar.h"
#include "../../core/receive.h"
#include "../../core/route.h"
#include "../../core/timer_proc.h"

#include "sersync_mod.h"

/* how often the status area is looked at */
#define SERSYNC_EVENTS_MS 200

static int _sersync_ev_up = -1;
static int _sersync_ev_down = -1;

/* the peer whose event runs now; empty outside the routes */
static char _sersync_ev_peer[SERSYNC_ID_MAX];

/* what the last look saw of each peer, by node id (per process) */
struct sersync_ev_peer
{
	char node_id[SERSYNC_ID_MAX];
	int up;
	uint64_t connects;
};
static struct sersync_ev_peer _sersync_ev_seen[SERSYNC_MAX_PEERS];
static int _sersync_ev_nseen = 0;

static void sersync_events_timer(unsigned int ticks, void *param);

/* mod_init: find the routes; declare the watcher's process if any */
int sersync_events_init(void)
{
	_sersync_ev_up = route_lookup(&event_rt, "sersync:peer-up");
	if(_sersync_ev_up >= 0 && event_rt.rlist[_sersync_ev_up] == NULL)
		_sersync_ev_up = -1;
	_sersync_ev_down = route_lookup(&event_rt, "sersync:peer-down");
	if(_sersync_ev_down >= 0 && event_rt.rlist[_sersync_ev_down] == NULL)
		_sersync_ev_down = -1;
	if(_sersync_ev_up < 0 && _sersync_ev_down < 0)
		return 0;
	if(register_basic_timers(1) < 0) {
		LM_ERR("cannot register the peer events process\n");
		return -1;
	}
	LM_INFO("event_route[sersync:peer-%s] declared: peers watched every %d ms\n",
			(_sersync_ev_up >= 0 && _sersync_ev_down >= 0)
					? "up/down"
					: (_sersync_ev_up >= 0 ? "up" : "down"),
			SERSYNC_EVENTS_MS);
	return 0;
}

/* child_init(PROC_MAIN): fork the watcher, if declared */
int sersync_events_start(void)
{
	if(_sersync_ev_up < 0 && _sersync_ev_down < 0)
		return 0;
	if(fork_basic_utimer(PROC_TIMER, "sersync peer events", 1,
			   sersync_events_timer, NULL, SERSYNC_EVENTS_MS)
			< 0) {
		LM_ERR("cannot fork the peer events process\n");
		return -1;
	}
	return 0;
}

static void sersync_events_run(int rt, const char *name, const char *peer)
{
	sip_msg_t *fmsg;
	int backup_rt;

	if(rt < 0)
		return;
	if(faked_msg_init() < 0) {
		LM_ERR("faked_msg_init() failed\n");
		return;
	}
	strncpy(_sersync_ev_peer, peer, sizeof(_sersync_ev_peer) - 1);
	_sersync_ev_peer[sizeof(_sersync_ev_peer) - 1] = '\0';
	LM_DBG("running event_route[%s] for %s\n", name, peer);
	fmsg = faked_msg_next();
	backup_rt = get_route_type();
	set_route_type(EVENT_ROUTE);
	run_top_route(event_rt.rlist[rt], fmsg, 0);
	set_route_type(backup_rt);
	ksr_msg_env_reset();
	_sersync_ev_peer[0] = '\0';
}

static void sersync_events_timer(unsigned int ticks, void *param)
{
	/* about 22 KiB: static, one process */
	static struct sersync_status st;
	struct sersync_ev_peer now[SERSYNC_MAX_PEERS];
	uint32_t n;
	uint32_t i;
	int j;
	int k;

	memset(&st, 0, sizeof(st));
	if(sersync_status_read(_sersync_shared, &st) != SERSYNC_OK
			|| !st.running)
		return;
	n = st.npeers < SERSYNC_MAX_PEERS ? st.npeers : SERSYNC_MAX_PEERS;
	k = 0;
	for(i = 0; i < n; i++) {
		st.peers[i].node_id[SERSYNC_ID_MAX - 1] = '\0';
		if(st.peers[i].node_id[0] == '\0')
			continue; /* never connected: no id yet */
		memcpy(now[k].node_id, st.peers[i].node_id, SERSYNC_ID_MAX);
		now[k].up = st.peers[i].state == SERSYNC_PEER_UP;
		now[k].connects = st.peer_connects[i];
		k++;
	}
	for(j = 0; j < k; j++) {
		struct sersync_ev_peer *was = NULL;
		int i2;

		for(i2 = 0; i2 < _sersync_ev_nseen; i2++) {
			if(strcmp(_sersync_ev_seen[i2].node_id, now[j].node_id) == 0) {
				was = &_sersync_ev_seen[i2];
				break;
			}
		}
		if(was == NULL) {
			if(now[j].up)
				sersync_events_run(_sersync_ev_up, "sersync:peer-up",
						now[j].node_id);
			continue;
		}
		if(was->up && now[j].up && now[j].connects != was->connects) {
			/* dropped and back between two looks */
			sersync_events_run(_sersync_ev_down, "sersync:peer-down",
					now[j].node_id);
			sersync_events_run(
					_sersync_ev_up, "sersync:peer-up", now[j].node_id);
		} else if(was->up && !now[j].up) {
			sersync_events_run(_sersync_ev_down, "sersync:peer-down",
					now[j].node_id);
		} else if(!was->up && now[j].up) {
			sersync_events_run(
					_sersync_ev_up, "sersync:peer-up", now[j].node_id);
		}
	}
	memcpy(_sersync_ev_seen, now, sizeof(now[0]) * k);
	_sersync_ev_nseen = k;
}

/* $sersync(peer) */
int sersync_pv_parse(pv_spec_t *sp, str *in)
{
	if(sp == NULL || in == NULL || in->len <= 0)
		return -1;
	if(in->len == 4 && strncmp(in->s, "peer", 4) == 0) {
		sp->pvp.pvn.u.isname.name.n = 0;
		sp->pvp.pvn.u.isname.type = 0;
		sp->pvp.pvn.type = PV_NAME_INTSTR;
		return 0;
	}
	LM_ERR("unknown name in $sersync(%.*s): only $sersync(peer)\n", in->len,
			in->s);
	return -1;
}

int sersync_pv_get(sip_msg_t *msg, pv_param_t *param, pv_value_t *res)
{
	str s;

	if(_sersync_ev_peer[0] == '\0')
		return pv_get_null(msg, param, res);
	s.s = _sersync_ev_peer;
	s.len = (int)strlen(_sersync_ev_peer);
	return pv_get_strval(msg, param, res, &s);
}
