/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * Module exports, parameters, mod_init, child_init and destroy. The work
 * is done by the Rust engine (libsersync.a) in a process this module
 * forks (sersync_proc.c); SIP workers only hand it changes (sersync_ul.c),
 * alias RPCs and rescans hand it alias rows (sersync_alias_rpc.c,
 * sersync_alias_scan.c, through sersync_alias.c).
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <string.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/globals.h"
#include "../../core/pt.h"
#include "../../core/mem/mem.h"
#include "../../core/cfg/cfg_struct.h"

#include "sersync_mod.h"

MODULE_VERSION

#define SERSYNC_CFG_ERR_MAX 256

str _sersync_node_id = STR_NULL;
str _sersync_listen = STR_NULL;
str _sersync_secret = STR_NULL;
str _sersync_secret2 = STR_NULL;
int _sersync_accept_clear_peers = 0;
str _sersync_journal = str_init("/var/lib/kamailio/sersync.db");
str _sersync_fifo = STR_NULL;
str _sersync_db_url = STR_NULL;
str _sersync_domains = str_init("location");
int _sersync_queue_size = 16384;
str _sersync_alias_table = str_init("dbaliases");
int _sersync_alias_rescan_interval = 0;
/* an alias scan deletes more aliases than both only once confirmed */
int _sersync_alias_scan_max_delete = 100;
int _sersync_alias_scan_max_delete_pct = 10;
/* journal retention: seconds and entries (0: the engine's defaults, a day
 * and a million) */
int _sersync_retention_secs = 0;
int _sersync_retention_records = 0;
/* "queue": save() returns once the change is queued; "journal": once the
 * engine has journaled it, waiting at most durability_timeout ms */
str _sersync_durability = str_init("queue");
int _sersync_durability_timeout = 100;
int _sersync_durable_wait = 0;
/* seconds between two checks of usrloc against the journal; 0: none */
int _sersync_check_interval = 60;
/* seconds between two checks of the journal's state against each peer's */
static int _sersync_peer_check_interval = 60;

/* where sersync.apply's token is written (0600) for tests and benches;
 * empty: in no file (only the engine, forked by SER, knows it) */
static str _sersync_apply_token_file = STR_NULL;

/* milliseconds a peer's stamps may be ahead of this node's clock; 0: the
 * engine's default, 5000 */
static int _sersync_max_clock_skew = 0;

/* where jsonrpcs lets FIFO clients create reply FIFOs (its fifo_reply_dir) */
static str _sersync_fifo_reply_dir = STR_NULL;

/* "peer" is repeatable: each modparam line appends one address */
static struct sersync_str _sersync_peers[SERSYNC_MAX_PEERS];
static int _sersync_npeers = 0;

struct sersync_config _sersync_config;
struct sersync_shared *_sersync_shared = NULL;

static int mod_init(void);
static int child_init(int rank);
static void mod_destroy(void);
static int sersync_add_peer(modparam_t type, void *val);
static int sersync_add_secret(modparam_t type, void *val);

/*
 * Modparams (README "Configuration reference" has the full table):
 *  node_id, listen, peer (repeatable), secret   the cluster
 *  journal            SQLite journal path
 *  fifo               SER's RPC door for the engine; unset: jsonrpcs'
 *                     datagram socket if served, else its FIFO
 *  db_url             SER's database (fallback apply, alias table)
 *  domains            usrloc tables replicated, comma-separated
 *  queue_size         slots of the worker -> engine queue
 *  alias_table, alias_rescan_interval   alias_db's table, periodic scan
 *  alias_scan_max_delete, alias_scan_max_delete_pct   a scan deleting
 *                     more aliases than both (100, 10%) needs
 *                     sersync.alias_rescan_confirm
 *  retention_secs     journal entries kept at most this long (0: a day)
 *  retention_records  and at most this many (0: a million)
 *  durability         "queue" (default) or "journal": save() returns once
 *                     the change is journaled (or durability_timeout ms,
 *                     1..5000, default 100, have passed)
 *  check_interval     seconds between two checks of usrloc against the
 *                     journal's state, repairing what differs (default
 *                     60; 0: no check)
 *  peer_check_interval seconds between two checks of the journal's state
 *                     against each peer's (protocol v3), repairing what
 *                     differs (default 60)
 *  apply_token_file   where sersync.apply's token is written, mode 0600
 *                     (tests, benches; unset: in no file)
 *  max_clock_skew     milliseconds a peer's stamps may run ahead of this
 *                     node's clock (default 5000); beyond, its batch is
 *                     refused and resent later
 */
/* clang-format off */
static cmd_export_t cmds[] = {
	/* the alias RPCs only, over HTTP (sersync_alias_http.c) */
	{"sersync_alias_http", (cmd_function)sersync_alias_http, 0, 0, 0,
		REQUEST_ROUTE},
	/* the Prometheus exposition, over HTTP (sersync_metrics.c) */
	{"sersync_metrics", (cmd_function)sersync_metrics, 0, 0, 0,
		REQUEST_ROUTE},
	{0, 0, 0, 0, 0, 0}
};

static param_export_t params[] = {
	{"node_id",    PARAM_STR,                     &_sersync_node_id},
	{"listen",     PARAM_STR,                     &_sersync_listen},
	{"peer",       PARAM_STRING|PARAM_USE_FUNC,   (void *)sersync_add_peer},
	{"secret",     PARAM_STRING|PARAM_USE_FUNC,   (void *)sersync_add_secret},
	{"journal",    PARAM_STR,                     &_sersync_journal},
	{"fifo",       PARAM_STR,                     &_sersync_fifo},
	{"db_url",     PARAM_STR,                     &_sersync_db_url},
	{"domains",    PARAM_STR,                     &_sersync_domains},
	{"queue_size", PARAM_INT,                     &_sersync_queue_size},
	{"alias_table", PARAM_STR,                    &_sersync_alias_table},
	{"alias_rescan_interval",
	               PARAM_INT,            &_sersync_alias_rescan_interval},
	{"alias_scan_max_delete",
	               PARAM_INT,            &_sersync_alias_scan_max_delete},
	{"alias_scan_max_delete_pct",
	               PARAM_INT,            &_sersync_alias_scan_max_delete_pct},
	{"retention_secs",    PARAM_INT,      &_sersync_retention_secs},
	{"retention_records", PARAM_INT,      &_sersync_retention_records},
	{"durability",        PARAM_STR,      &_sersync_durability},
	{"durability_timeout", PARAM_INT,     &_sersync_durability_timeout},
	{"check_interval",    PARAM_INT,      &_sersync_check_interval},
	{"peer_check_interval", PARAM_INT,    &_sersync_peer_check_interval},
	{"apply_token_file",  PARAM_STR,      &_sersync_apply_token_file},
	{"max_clock_skew",    PARAM_INT,      &_sersync_max_clock_skew},
	{"accept_clear_peers",  PARAM_INT,    &_sersync_accept_clear_peers},
	{0, 0, 0}
};

/* $sersync(peer): the peer of event_route[sersync:peer-up/down] */
static pv_export_t mod_pvs[] = {
	{{"sersync", sizeof("sersync") - 1}, PVT_OTHER, sersync_pv_get, 0,
		sersync_pv_parse, 0, 0, 0},
	{{0, 0}, 0, 0, 0, 0, 0, 0, 0}
};

struct module_exports exports = {
	"sersync",        /* module name */
	DEFAULT_DLFLAGS,  /* dlopen flags */
	cmds,             /* exported functions */
	params,           /* exported parameters */
	sersync_rpc_cmds, /* RPC method exports */
	mod_pvs,          /* exported pseudo-variables */
	0,                /* response handling function */
	mod_init,         /* module initialization function */
	child_init,       /* per-child init function */
	mod_destroy       /* module destroy function */
};
/* clang-format on */

static int sersync_add_peer(modparam_t type, void *val)
{
	char *p = (char *)val;

	if(p == NULL || *p == '\0') {
		LM_ERR("empty peer address\n");
		return -1;
	}
	if(_sersync_npeers >= SERSYNC_MAX_PEERS) {
		LM_ERR("too many peers: at most %d\n", SERSYNC_MAX_PEERS);
		return -1;
	}
	/* the config parser keeps the string for the life of the process */
	_sersync_peers[_sersync_npeers].s = p;
	_sersync_peers[_sersync_npeers].len = strlen(p);
	_sersync_npeers++;
	return 0;
}

/* secret: the first line dials and is accepted; a second one (a rolling
 * change of the secret) is accepted too */
static int sersync_add_secret(modparam_t type, void *val)
{
	char *p = (char *)val;
	str *to;

	if(p == NULL || *p == '\0') {
		LM_ERR("empty secret\n");
		return -1;
	}
	if(_sersync_secret.len <= 0) {
		to = &_sersync_secret;
	} else if(_sersync_secret2.len <= 0) {
		to = &_sersync_secret2;
	} else {
		LM_ERR("at most two secret lines (during a rolling change)\n");
		return -1;
	}
	/* the config parser keeps the string for the life of the process */
	to->s = p;
	to->len = strlen(p);
	return 0;
}

/* runtime_dir + "/" + name, in pkg memory (kept for the process' life) */
static char *sersync_runtime_path(const char *name)
{
	size_t dlen;
	size_t nlen;
	int sep;
	char *p;

	if(name[0] == '/' || runtime_dir == NULL || runtime_dir[0] == '\0')
		return (char *)name;
	dlen = strlen(runtime_dir);
	nlen = strlen(name);
	sep = (runtime_dir[dlen - 1] != '/');
	p = pkg_malloc(dlen + sep + nlen + 1);
	if(p == NULL) {
		PKG_MEM_ERROR;
		return NULL;
	}
	memcpy(p, runtime_dir, dlen);
	if(sep)
		p[dlen] = '/';
	memcpy(p + dlen + sep, name, nlen + 1);
	return p;
}

/* jsonrpcs's fifo_reply_dir, if jsonrpcs is loaded (empty: its default) */
static void sersync_resolve_reply_dir(struct sr_module *mod)
{
	modparam_t ptype;
	char **dir;

	if(mod == NULL)
		return;
	dir = find_param_export(mod, "fifo_reply_dir", PARAM_STRING, &ptype);
	if(dir == NULL || *dir == NULL || **dir == '\0')
		return;
	_sersync_fifo_reply_dir.s = *dir;
	_sersync_fifo_reply_dir.len = strlen(*dir);
}

/* jsonrpcs' transport bits (its "transport" param; 0 means all) */
#define SERSYNC_JSONRPCS_FIFO 2
#define SERSYNC_JSONRPCS_DGRAM 4
/* jsonrpcs' default transport: FIFO and datagram */
#define SERSYNC_JSONRPCS_TRANSPORT 6

static int sersync_door_set(const char *name, const char *what)
{
	char *path;

	path = sersync_runtime_path(name);
	if(path == NULL)
		return -1;
	_sersync_fifo.s = path;
	_sersync_fifo.len = strlen(path);
	LM_INFO("RPC door: %s %.*s\n", what, _sersync_fifo.len, _sersync_fifo.s);
	return 0;
}

/* jsonrpcs' string param, NULL when unset or empty */
static char *sersync_jsonrpcs_str(struct sr_module *mod, char *name)
{
	modparam_t ptype;
	char **v;

	v = find_param_export(mod, name, PARAM_STRING, &ptype);
	if(v == NULL || *v == NULL || **v == '\0')
		return NULL;
	return *v;
}

/*
 * The engine reaches SER through an RPC door. Without the "fifo" param it
 * is jsonrpcs' datagram socket when jsonrpcs serves one on a unix path
 * (the faster door: 64 KiB per request against 4 KiB, see bench/), else
 * jsonrpcs' FIFO; both resolved as jsonrpcs resolves them (relative names
 * live in runtime_dir). Says what to add when there is no such door.
 */
static int sersync_resolve_fifo(void)
{
	struct sr_module *mod;
	modparam_t ptype;
	int *tp;
	int transport;
	char *name;

	mod = find_module_by_name("jsonrpcs");
	sersync_resolve_reply_dir(mod);
	if(_sersync_fifo.s != NULL && _sersync_fifo.len > 0)
		return sersync_door_set(_sersync_fifo.s, "modparam fifo");
	if(mod == NULL) {
		LM_ERR("sersync needs an RPC door into SER and none is configured:"
			   " add loadmodule \"jsonrpcs.so\" (its default transport 6"
			   " serves a FIFO and a datagram socket), or set"
			   " modparam(\"sersync\", \"fifo\", \"/path/of/a/served/fifo\")"
			   "\n");
		return -1;
	}
	tp = find_param_export(mod, "transport", PARAM_INT, &ptype);
	transport = (tp != NULL) ? *tp : SERSYNC_JSONRPCS_TRANSPORT;

	if(transport == 0 || (transport & SERSYNC_JSONRPCS_DGRAM)) {
		/* default kamailio_rpc.sock; jsonrpcs clears it when its
		 * datagram transport failed to start */
		name = sersync_jsonrpcs_str(mod, "dgram_socket");
		if(name != NULL && strncmp(name, "udp:", 4) != 0)
			return sersync_door_set(name, "jsonrpcs datagram socket");
		if(name != NULL)
			LM_INFO("jsonrpcs' datagram socket %s is UDP, not a unix socket:"
					" using its FIFO\n",
					name);
	}
	if(transport != 0 && !(transport & SERSYNC_JSONRPCS_FIFO)) {
		LM_ERR("jsonrpcs serves neither a FIFO nor a unix datagram socket"
			   " (transport=%d): set modparam(\"jsonrpcs\", \"transport\","
			   " %d) or set modparam(\"sersync\", \"fifo\", ...)\n",
				transport, transport | SERSYNC_JSONRPCS_DGRAM);
		return -1;
	}
	name = sersync_jsonrpcs_str(mod, "fifo_name");
	if(name == NULL) {
		LM_ERR("jsonrpcs has no FIFO file name: add"
			   " modparam(\"jsonrpcs\", \"fifo_name\", \"kamailio_rpc.fifo\")"
			   " or set modparam(\"sersync\", \"fifo\", ...)\n");
		return -1;
	}
	return sersync_door_set(name, "jsonrpcs FIFO");
}

/* longest durability_timeout: a SIP worker never waits longer */
#define SERSYNC_DURABILITY_TIMEOUT_MAX 5000

static int sersync_durability_check(void)
{
	if(_sersync_durability.len == 5
			&& strncmp(_sersync_durability.s, "queue", 5) == 0) {
		_sersync_durable_wait = 0;
	} else if(_sersync_durability.len == 7
			  && strncmp(_sersync_durability.s, "journal", 7) == 0) {
		_sersync_durable_wait = 1;
	} else {
		LM_ERR("modparam \"durability\": \"%.*s\": expected \"queue\" (save()"
			   " returns once the change is queued) or \"journal\" (once it"
			   " is journaled)\n",
				_sersync_durability.len, _sersync_durability.s);
		return -1;
	}
	if(_sersync_durability_timeout < 1
			|| _sersync_durability_timeout > SERSYNC_DURABILITY_TIMEOUT_MAX) {
		LM_ERR("modparam \"durability_timeout\": %d: expected 1 to %d ms\n",
				_sersync_durability_timeout, SERSYNC_DURABILITY_TIMEOUT_MAX);
		return -1;
	}
	if(_sersync_durable_wait)
		LM_INFO("durability journal: save() waits up to %d ms for the"
				" journal\n",
				_sersync_durability_timeout);
	return 0;
}

static int sersync_config_build(void)
{
	char err[SERSYNC_CFG_ERR_MAX];
	int rc;

	if(_sersync_node_id.len <= 0) {
		LM_ERR("modparam(\"sersync\", \"node_id\", ...) is required\n");
		return -1;
	}
	if(_sersync_listen.len <= 0) {
		LM_ERR("modparam(\"sersync\", \"listen\", \"tcp:ip:port\") is"
			   " required\n");
		return -1;
	}
	if(_sersync_secret.len <= 0) {
		LM_ERR("modparam(\"sersync\", \"secret\", ...) is required\n");
		return -1;
	}
	if(_sersync_queue_size <= 0) {
		LM_ERR("queue_size must be positive (got %d)\n", _sersync_queue_size);
		return -1;
	}
	if(_sersync_retention_secs < 0 || _sersync_retention_records < 0) {
		LM_ERR("modparam \"retention_secs\" (%d) and \"retention_records\""
			   " (%d) must be 0 (the default: a day, a million entries) or"
			   " positive\n",
				_sersync_retention_secs, _sersync_retention_records);
		return -1;
	}
	if(_sersync_alias_scan_max_delete < 1
			|| _sersync_alias_scan_max_delete_pct < 1
			|| _sersync_alias_scan_max_delete_pct > 100) {
		LM_ERR("modparam \"alias_scan_max_delete\" (%d) must be at least 1"
			   " and \"alias_scan_max_delete_pct\" (%d) 1 to 100 (100: no"
			   " percentage bound)\n",
				_sersync_alias_scan_max_delete,
				_sersync_alias_scan_max_delete_pct);
		return -1;
	}
	if(_sersync_check_interval < 0) {
		LM_ERR("modparam \"check_interval\" must be 0 (no check) or a"
			   " number of seconds (got %d)\n",
				_sersync_check_interval);
		return -1;
	}
	if(_sersync_peer_check_interval <= 0) {
		LM_ERR("modparam \"peer_check_interval\" must be a positive number"
			   " of seconds (got %d)\n",
				_sersync_peer_check_interval);
		return -1;
	}
	if(_sersync_max_clock_skew < 0) {
		LM_ERR("modparam \"max_clock_skew\" must be 0 (the default, 5000)"
			   " or a number of milliseconds (got %d)\n",
				_sersync_max_clock_skew);
		return -1;
	}
	if(sersync_durability_check() < 0)
		return -1;
	if(sersync_resolve_fifo() < 0)
		return -1;

	memset(&_sersync_config, 0, sizeof(_sersync_config));
	sersync_str_from(&_sersync_config.node_id, &_sersync_node_id);
	sersync_str_from(&_sersync_config.listen, &_sersync_listen);
	_sersync_config.peers = _sersync_peers;
	_sersync_config.npeers = (size_t)_sersync_npeers;
	sersync_str_from(&_sersync_config.secret, &_sersync_secret);
	sersync_str_from(&_sersync_config.secret2, &_sersync_secret2);
	_sersync_config.accept_clear_peers =
			(uint32_t)(_sersync_accept_clear_peers != 0);
	sersync_str_from(&_sersync_config.journal, &_sersync_journal);
	sersync_str_from(&_sersync_config.fifo, &_sersync_fifo);
	sersync_str_from(&_sersync_config.db_url, &_sersync_db_url);
	sersync_str_from(&_sersync_config.fifo_reply_dir, &_sersync_fifo_reply_dir);
	sersync_str_from(&_sersync_config.domains, &_sersync_domains);
	_sersync_config.retention_secs = (uint64_t)_sersync_retention_secs;
	_sersync_config.retention_records = (uint64_t)_sersync_retention_records;
	_sersync_config.alias_scan_max_delete =
			(uint32_t)_sersync_alias_scan_max_delete;
	_sersync_config.alias_scan_max_delete_pct =
			(uint32_t)_sersync_alias_scan_max_delete_pct;
	_sersync_config.check_interval = (uint32_t)_sersync_check_interval;
	_sersync_config.peer_check_interval =
			(uint32_t)_sersync_peer_check_interval;
	_sersync_config.max_clock_skew_ms = (uint32_t)_sersync_max_clock_skew;
	/* the engine binds its reply socket beside SER's own (SER's -Y) */
	if(runtime_dir != NULL && runtime_dir[0] != '\0') {
		_sersync_config.runtime_dir.s = runtime_dir;
		_sersync_config.runtime_dir.len = strlen(runtime_dir);
	}

	err[0] = '\0';
	rc = sersync_config_check(&_sersync_config, err, sizeof(err));
	if(rc != SERSYNC_OK) {
		LM_ERR("invalid configuration (rc %d): %s\n", rc, err);
		return -1;
	}
	return 0;
}

static int mod_init(void)
{
	int rc;

	/* Rust logs of the main process (and, inherited, of the workers) */
	sersync_set_logger(sersync_log);

	/* before any child opens its SQLite connection */
	if(sersync_sqlite_init() < 0)
		return -1;

	if(sersync_config_build() < 0)
		return -1;
	if(sersync_ul_init() < 0)
		return -1;
	/* usrloc in memory only: the engine restores it at every start */
	_sersync_config.ul_db_mode = (int32_t)_sersync_ul.db_mode;
	/* usrloc's DB_ONLY mode (3) keeps no contact in memory: nothing to
	 * walk, and the check would put the whole state back every time */
	if(_sersync_ul.db_mode == 3 && _sersync_config.check_interval > 0) {
		LM_INFO("usrloc db_mode 3 keeps no contacts in memory: no check of"
				" usrloc against the journal (check_interval)\n");
		_sersync_config.check_interval = 0;
	}
	if(sersync_alias_init() < 0)
		return -1;
	if(sersync_alias_http_init() < 0)
		return -1;
	if(sersync_stats_init() < 0)
		return -1;
	if(sersync_metrics_init() < 0)
		return -1;
	if(sersync_events_init() < 0)
		return -1;

	/* maps the queue and status area; starts no thread (we fork later) */
	rc = sersync_shared_create((uint32_t)_sersync_queue_size, &_sersync_shared);
	if(rc != SERSYNC_OK || _sersync_shared == NULL) {
		LM_ERR("cannot map the shared queue of %d slots (rc %d)\n",
				_sersync_queue_size, rc);
		return -1;
	}

	/* sersync.apply's token, for a test that calls it as the engine does */
	if(_sersync_apply_token_file.len > 0) {
		rc = sersync_apply_token_write(_sersync_shared,
				_sersync_apply_token_file.s,
				(size_t)_sersync_apply_token_file.len);
		if(rc != SERSYNC_OK) {
			LM_ERR("cannot write apply_token_file %.*s (rc %d)\n",
					_sersync_apply_token_file.len, _sersync_apply_token_file.s,
					rc);
			return -1;
		}
	}

	/* one extra process: the engine; it takes part in the cfg framework */
	register_procs(1);
	cfg_register_child(1);

	LM_INFO("node %.*s listens on %.*s with %d peer(s)\n", _sersync_node_id.len,
			_sersync_node_id.s, _sersync_listen.len, _sersync_listen.s,
			_sersync_npeers);
	return 0;
}

static int child_init(int rank)
{
	if(rank == PROC_INIT)
		return sersync_ul_register_domains();
	sersync_ul_child_init(rank);
	if(rank != PROC_MAIN)
		return 0;
	if(sersync_proc_start() < 0)
		return -1;
	if(sersync_events_start() < 0)
		return -1;
	return sersync_alias_timer_start();
}

static void mod_destroy(void)
{
	/* the shared mapping goes with the processes; nothing else to free */
}
