/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * sersync_metrics(): the Prometheus text exposition (format 0.0.4) of
 * this node's sersync, for event_route[xhttp:request] on a path of the
 * operator's choice (README: /metrics/sersync, beside xhttp_prom's
 * /metrics). Kamailio's statistics have no labels and are registered
 * before the fork, while peers are learned at run time: the per-peer
 * series, labelled with the peer's node id, are written here, with the
 * node-wide figures of the statistics group (sersync_stats.c) beside
 * them. Everything comes from one read of the shared status area (as
 * sersync.status reads it), in the SER process serving the request;
 * nothing here talks to the engine.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "../../core/dprint.h"
#include "../../core/sr_module.h"
#include "../../core/parser/msg_parser.h"
#include "../xhttp/api.h"

#include "sersync_mod.h"

static xhttp_api_t _sersync_metrics_xhttp;

/* the exposition is written here: 32 peers with the longest ids and
 * addresses take about 120 KiB (static: only the pages written are
 * resident, in the processes that serve it) */
#define SERSYNC_METRICS_MAX (256 * 1024)
static char _sersync_metrics_buf[SERSYNC_METRICS_MAX];

/* the status read for one exposition (about 21 KiB: not on the stack) */
static struct sersync_status _sersync_metrics_st;

int sersync_metrics_init(void)
{
	if(find_module_by_name("xhttp") == NULL)
		return 0;
	if(xhttp_load_api(&_sersync_metrics_xhttp) < 0)
		return -1;
	return 0;
}

/* the text being written; full: something did not fit */
struct sersync_out
{
	char *s;
	size_t len;
	size_t max;
	int full;
};

static void out_printf(struct sersync_out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if(o->full)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->s + o->len, o->max - o->len, fmt, ap);
	va_end(ap);
	if(n < 0 || (size_t)n >= o->max - o->len) {
		o->full = 1;
		return;
	}
	o->len += (size_t)n;
}

/* a label value as the format wants it: backslash, double quote and line
 * feed escaped. Node ids and addresses are printable ASCII where they are
 * configured; any other byte (a peer's odd id) becomes '?', so the
 * exposition stays valid UTF-8 */
static void out_label(struct sersync_out *o, const char *v)
{
	unsigned char c;

	for(; *v != '\0' && !o->full; v++) {
		c = (unsigned char)*v;
		if(c == '\\')
			out_printf(o, "\\\\");
		else if(c == '"')
			out_printf(o, "\\\"");
		else if(c == '\n')
			out_printf(o, "\\n");
		else if(c < 0x20 || c > 0x7e)
			out_printf(o, "?");
		else
			out_printf(o, "%c", c);
	}
}

static void out_head(struct sersync_out *o, const char *name,
		const char *type, const char *help)
{
	out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* node-wide figures: the statistics of the group "sersync" (same names;
 * counters end in _total, as Prometheus names them) */
struct sersync_metric
{
	const char *name;
	int counter; /* 1: counter, 0: gauge */
	size_t off;	 /* of a uint64_t in struct sersync_status */
	const char *help;
};

#define SERSYNC_M(name, counter, help) \
	{#name, counter, offsetof(struct sersync_status, name), help}

/* clang-format off */
static const struct sersync_metric sersync_node_metrics[] = {
	SERSYNC_M(journaled, 1, "Local changes journaled since start."),
	SERSYNC_M(last_seq, 0, "Highest local journal sequence (compare"
		" sersync_peer_acked)."),
	SERSYNC_M(journal_entries, 0, "Entries in the journal's log now."),
	SERSYNC_M(queue_depth, 0, "Changes waiting in the worker queue."),
	SERSYNC_M(queue_dropped, 1, "Changes the worker queue could not take"
		" (full, or too large): lost to replication."),
	SERSYNC_M(applied, 1, "Remote changes applied since start."),
	SERSYNC_M(apply_pending, 0, "Remote changes staged, not yet applied."),
	SERSYNC_M(apply_failures, 1, "Apply attempts that failed (retried)."),
	SERSYNC_M(applied_via_db, 1, "Remote changes written to SER's"
		" database (the RPC door absent)."),
	SERSYNC_M(apply_superseded, 1, "Remote changes not written into usrloc:"
		" it held a newer version."),
	SERSYNC_M(set_aside, 1, "Remote changes whose record could not be"
		" decoded (a kind newer than this node)."),
	SERSYNC_M(quarantined, 0, "Remote changes SER refused, held in the"
		" quarantine now (sersync.quarantine)."),
	SERSYNC_M(restored, 1, "Contacts restored into SER since start."),
	SERSYNC_M(restore_pending, 0, "Contacts still to restore into SER."),
	SERSYNC_M(checks, 1, "Checks of SER's usrloc against the journal made."),
	SERSYNC_M(ranges_compared, 1, "Ranges those checks compared key by"
		" key."),
	SERSYNC_M(divergences, 1, "Contacts those checks found different in SER"
		" and the journal."),
	SERSYNC_M(repaired, 1, "Repairs those checks made."),
	SERSYNC_M(peer_checks, 1, "Checks of the journal's state against a"
		" peer's made."),
	SERSYNC_M(peer_check_divergences, 1, "Keys those checks found"
		" differing."),
	SERSYNC_M(peer_check_repaired, 1, "Versions staged here by peer"
		" checks."),
	SERSYNC_M(alias_scans, 1, "Alias table scans ended since start."),
	SERSYNC_M(clock_refused, 1, "Batches from peers refused here: stamped"
		" beyond max_clock_skew ahead of this node's clock."),
	SERSYNC_M(clock_refused_by_peers, 1, "This node's batches peers refused"
		" for clock skew."),
	SERSYNC_M(preauth_refused, 1, "Incoming connections refused or dropped"
		" before they authenticated (not port probes)."),
	SERSYNC_M(clones_refused, 1, "Links refused: two nodes running at once"
		" under one node id (sersync.status' clone_last_reason)."),
	{0, 0, 0, 0}
};
/* clang-format on */

/* per-peer series: one family, one line per peer */
enum sersync_peer_field
{
	SERSYNC_PF_UP,
	SERSYNC_PF_SENT,
	SERSYNC_PF_RECEIVED,
	SERSYNC_PF_ACKED,
	SERSYNC_PF_PENDING,
	SERSYNC_PF_LAG,
	SERSYNC_PF_SNAP_SENT,
	SERSYNC_PF_SNAP_ROWS,
	SERSYNC_PF_SNAP_RECEIVED
};

struct sersync_peer_metric
{
	const char *name;
	const char *type;
	enum sersync_peer_field field;
	const char *help;
};

/* clang-format off */
static const struct sersync_peer_metric sersync_peer_metrics[] = {
	{"sersync_peer_up", "gauge", SERSYNC_PF_UP,
		"1 when the link to the peer is up (authenticated, streaming),"
		" else 0."},
	{"sersync_peer_sent_total", "counter", SERSYNC_PF_SENT,
		"Records sent to the peer since start."},
	{"sersync_peer_received_total", "counter", SERSYNC_PF_RECEIVED,
		"Records received from the peer since start."},
	{"sersync_peer_acked", "gauge", SERSYNC_PF_ACKED,
		"Highest local journal sequence the peer acknowledged."},
	{"sersync_peer_pending", "gauge", SERSYNC_PF_PENDING,
		"Local records the peer has not acknowledged."},
	{"sersync_peer_lag_seconds", "gauge", SERSYNC_PF_LAG,
		"Age of the oldest record the peer has not acknowledged"
		" (sersync.peers' lag_ms, in seconds); 0 when none."},
	{"sersync_peer_snapshot_sent_rows", "gauge", SERSYNC_PF_SNAP_SENT,
		"Rows sent of the snapshot being sent to the peer."},
	{"sersync_peer_snapshot_rows", "gauge", SERSYNC_PF_SNAP_ROWS,
		"Rows in that snapshot (sent == rows: complete; 0: none)."},
	{"sersync_peer_snapshot_received_rows_total", "counter",
		SERSYNC_PF_SNAP_RECEIVED,
		"Rows of snapshots received from the peer since start."},
	{0, 0, 0, 0}
};
/* clang-format on */

static void out_peer_value(struct sersync_out *o,
		const struct sersync_peer_status *p, enum sersync_peer_field f)
{
	switch(f) {
		case SERSYNC_PF_UP:
			out_printf(o, "%d", p->state == SERSYNC_PEER_UP ? 1 : 0);
			break;
		case SERSYNC_PF_SENT:
			out_printf(o, "%llu", (unsigned long long)p->sent);
			break;
		case SERSYNC_PF_RECEIVED:
			out_printf(o, "%llu", (unsigned long long)p->received);
			break;
		case SERSYNC_PF_ACKED:
			out_printf(o, "%llu", (unsigned long long)p->acked);
			break;
		case SERSYNC_PF_PENDING:
			out_printf(o, "%llu", (unsigned long long)p->pending);
			break;
		case SERSYNC_PF_LAG:
			out_printf(o, "%llu.%03llu",
					(unsigned long long)(p->lag_ms / 1000),
					(unsigned long long)(p->lag_ms % 1000));
			break;
		case SERSYNC_PF_SNAP_SENT:
			out_printf(o, "%llu", (unsigned long long)p->snapshot_sent);
			break;
		case SERSYNC_PF_SNAP_ROWS:
			out_printf(o, "%llu", (unsigned long long)p->snapshot_total);
			break;
		case SERSYNC_PF_SNAP_RECEIVED:
			out_printf(
					o, "%llu", (unsigned long long)p->snapshot_received);
			break;
	}
}

/* 1 if an earlier peer has the same id and address: a duplicate series
 * would make Prometheus refuse the whole scrape */
static int sersync_peer_dup(const struct sersync_status *st, uint32_t i)
{
	uint32_t j;

	for(j = 0; j < i; j++) {
		if(strcmp(st->peers[j].node_id, st->peers[i].node_id) == 0
				&& strcmp(st->peers[j].address, st->peers[i].address) == 0)
			return 1;
	}
	return 0;
}

/* the whole exposition of st into o */
static void sersync_metrics_write(
		struct sersync_out *o, const struct sersync_status *st)
{
	const struct sersync_metric *m;
	const struct sersync_peer_metric *pm;
	uint32_t i;
	uint32_t up = 0;

	out_head(o, "sersync_info", "gauge",
			"This node's id and sersync's version (always 1).");
	out_printf(o, "sersync_info{node=\"");
	out_label(o, st->node_id);
	out_printf(o, "\",version=\"%s\"} 1\n", SERSYNC_VERSION);
	out_head(o, "sersync_running", "gauge", "1 once the engine serves.");
	out_printf(o, "sersync_running %d\n", st->running ? 1 : 0);
	for(m = sersync_node_metrics; m->name != NULL; m++) {
		char name[80];
		uint64_t v;

		snprintf(name, sizeof(name), "sersync_%s%s", m->name,
				m->counter ? "_total" : "");
		memcpy(&v, (const char *)st + m->off, sizeof(v));
		out_head(o, name, m->counter ? "counter" : "gauge", m->help);
		out_printf(o, "%s %llu\n", name, (unsigned long long)v);
	}
	for(i = 0; i < st->npeers; i++)
		if(st->peers[i].state == SERSYNC_PEER_UP)
			up++;
	out_head(o, "sersync_peers", "gauge", "Cluster members this node knows.");
	out_printf(o, "sersync_peers %u\n", (unsigned int)st->npeers);
	out_head(o, "sersync_peers_up", "gauge", "Members connected now.");
	out_printf(o, "sersync_peers_up %u\n", (unsigned int)up);
	for(pm = sersync_peer_metrics; pm->name != NULL; pm++) {
		out_head(o, pm->name, pm->type, pm->help);
		for(i = 0; i < st->npeers; i++) {
			if(sersync_peer_dup(st, i))
				continue;
			out_printf(o, "%s{peer=\"", pm->name);
			out_label(o, st->peers[i].node_id);
			out_printf(o, "\",address=\"");
			out_label(o, st->peers[i].address);
			out_printf(o, "\"} ");
			out_peer_value(o, &st->peers[i], pm->field);
			out_printf(o, "\n");
		}
	}
}

static void sersync_metrics_reply(
		sip_msg_t *msg, int code, const char *reason, const char *text, size_t len)
{
	str sreason;
	str ctype = str_init("text/plain; version=0.0.4; charset=utf-8");
	str body;

	sreason.s = (char *)reason;
	sreason.len = strlen(reason);
	body.s = (char *)text;
	body.len = (int)len;
	_sersync_metrics_xhttp.reply(msg, code, &sreason, &ctype, &body);
}

/*
 * Replies to the HTTP request with the exposition. 1 when it replied
 * (200, or 503 when the status cannot be read), -1 when it could not
 * reply at all (not an HTTP request, xhttp not loaded).
 */
int sersync_metrics(sip_msg_t *msg, char *p1, char *p2)
{
	struct sersync_status *st = &_sersync_metrics_st;
	struct sersync_out o;
	uint32_t i;
	int rc;

	if(msg == NULL || !IS_HTTP(msg)) {
		LM_ERR("sersync_metrics() serves HTTP requests only: call it from"
			   " event_route[xhttp:request]\n");
		return -1;
	}
	if(_sersync_metrics_xhttp.reply == NULL) {
		LM_ERR("sersync_metrics() needs the xhttp module loaded\n");
		return -1;
	}
	memset(st, 0, sizeof(*st));
	rc = (_sersync_shared != NULL) ? sersync_status_read(_sersync_shared, st)
								   : SERSYNC_E_NULL;
	if(rc != SERSYNC_OK) {
		LM_ERR("sersync_metrics(): cannot read sersync's status (rc %d)\n",
				rc);
		sersync_metrics_reply(msg, 503, "Service Unavailable",
				"cannot read sersync's status\n", 29);
		return 1;
	}
	/* NUL-terminated by contract; terminated again before printing */
	st->node_id[sizeof(st->node_id) - 1] = '\0';
	if(st->npeers > SERSYNC_MAX_PEERS)
		st->npeers = SERSYNC_MAX_PEERS;
	for(i = 0; i < st->npeers; i++) {
		st->peers[i].node_id[sizeof(st->peers[i].node_id) - 1] = '\0';
		st->peers[i].address[sizeof(st->peers[i].address) - 1] = '\0';
	}
	o.s = _sersync_metrics_buf;
	o.len = 0;
	o.max = sizeof(_sersync_metrics_buf);
	o.full = 0;
	sersync_metrics_write(&o, st);
	if(o.full) {
		/* cannot happen with SERSYNC_MAX_PEERS peers: said loudly if
		 * the limits grow past the buffer */
		LM_ERR("sersync_metrics(): the exposition exceeds %d bytes\n",
				SERSYNC_METRICS_MAX);
		sersync_metrics_reply(msg, 500, "Internal Server Error",
				"exposition too large\n", 21);
		return 1;
	}
	sersync_metrics_reply(msg, 200, "OK", o.s, o.len);
	return 1;
}
