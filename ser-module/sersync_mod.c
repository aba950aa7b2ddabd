/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * Module exports, parameters, mod_init, child_init and destroy. The work
 * is done by the Rust engine (libsersync.a) in a process this module
 * forks (sersync_proc.c); SIP workers only hand it changes (sersync_ul.c),
 * alias RPCs and rescans hand it alias rows (sersync_alias.c).
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
str _sersync_journal = str_init("/var/lib/kamailio/sersync.db");
str _sersync_fifo = STR_NULL;
str _sersync_db_url = STR_NULL;
str _sersync_domains = str_init("location");
int _sersync_queue_size = 16384;
str _sersync_alias_table = str_init("dbaliases");
int _sersync_alias_rescan_interval = 0;

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

/* clang-format off */
static param_export_t params[] = {
	{"node_id",    PARAM_STR,                     &_sersync_node_id},
	{"listen",     PARAM_STR,                     &_sersync_listen},
	{"peer",       PARAM_STRING|PARAM_USE_FUNC,   (void *)sersync_add_peer},
	{"secret",     PARAM_STR,                     &_sersync_secret},
	{"journal",    PARAM_STR,                     &_sersync_journal},
	{"fifo",       PARAM_STR,                     &_sersync_fifo},
	{"db_url",     PARAM_STR,                     &_sersync_db_url},
	{"domains",    PARAM_STR,                     &_sersync_domains},
	{"queue_size", PARAM_INT,                     &_sersync_queue_size},
	{"alias_table", PARAM_STR,                    &_sersync_alias_table},
	{"alias_rescan_interval",
	               PARAM_INT,            &_sersync_alias_rescan_interval},
	{0, 0, 0}
};

struct module_exports exports = {
	"sersync",        /* module name */
	DEFAULT_DLFLAGS,  /* dlopen flags */
	0,                /* exported functions */
	params,           /* exported parameters */
	sersync_rpc_cmds, /* RPC method exports */
	0,                /* exported pseudo-variables */
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

/*
 * The engine reaches SER through an RPC door. Without the "fifo" param it
 * is jsonrpcs's FIFO, resolved as jsonrpcs resolves it (relative names
 * live in runtime_dir). Says what to add when there is no such door.
 */
static int sersync_resolve_fifo(void)
{
	struct sr_module *mod;
	modparam_t ptype;
	int *transport;
	char **fifo_name;
	char *path;

	mod = find_module_by_name("jsonrpcs");
	sersync_resolve_reply_dir(mod);
	if(_sersync_fifo.s != NULL && _sersync_fifo.len > 0) {
		path = sersync_runtime_path(_sersync_fifo.s);
		if(path == NULL)
			return -1;
		_sersync_fifo.s = path;
		_sersync_fifo.len = strlen(path);
		LM_INFO("RPC door: %.*s\n", _sersync_fifo.len, _sersync_fifo.s);
		return 0;
	}
	if(mod == NULL) {
		LM_ERR("sersync needs an RPC door into SER and none is configured:"
			   " add loadmodule \"jsonrpcs.so\" and"
			   " modparam(\"jsonrpcs\", \"transport\", 2) (FIFO; 6 or 7"
			   " also include it), or set modparam(\"sersync\", \"fifo\","
			   " \"/path/of/a/served/fifo\")\n");
		return -1;
	}
	transport = find_param_export(mod, "transport", PARAM_INT, &ptype);
	if(transport != NULL && *transport != 0 && !(*transport & 2)) {
		LM_ERR("jsonrpcs is loaded without its FIFO transport (transport=%d):"
			   " set modparam(\"jsonrpcs\", \"transport\", %d) or set"
			   " modparam(\"sersync\", \"fifo\", ...)\n",
				*transport, *transport | 2);
		return -1;
	}
	fifo_name = find_param_export(mod, "fifo_name", PARAM_STRING, &ptype);
	if(fifo_name == NULL || *fifo_name == NULL || **fifo_name == '\0') {
		LM_ERR("jsonrpcs has no FIFO file name: add"
			   " modparam(\"jsonrpcs\", \"fifo_name\", \"kamailio_rpc.fifo\")"
			   " or set modparam(\"sersync\", \"fifo\", ...)\n");
		return -1;
	}
	path = sersync_runtime_path(*fifo_name);
	if(path == NULL)
		return -1;
	_sersync_fifo.s = path;
	_sersync_fifo.len = strlen(path);
	LM_INFO("RPC door: jsonrpcs FIFO %.*s\n", _sersync_fifo.len,
			_sersync_fifo.s);
	return 0;
}

static void sersync_str_set(struct sersync_str *dst, const str *src)
{
	dst->s = (src->s != NULL && src->len > 0) ? src->s : NULL;
	dst->len = (src->s != NULL && src->len > 0) ? (size_t)src->len : 0;
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
	if(sersync_resolve_fifo() < 0)
		return -1;

	memset(&_sersync_config, 0, sizeof(_sersync_config));
	sersync_str_set(&_sersync_config.node_id, &_sersync_node_id);
	sersync_str_set(&_sersync_config.listen, &_sersync_listen);
	_sersync_config.peers = _sersync_peers;
	_sersync_config.npeers = (size_t)_sersync_npeers;
	sersync_str_set(&_sersync_config.secret, &_sersync_secret);
	sersync_str_set(&_sersync_config.journal, &_sersync_journal);
	sersync_str_set(&_sersync_config.fifo, &_sersync_fifo);
	sersync_str_set(&_sersync_config.db_url, &_sersync_db_url);
	sersync_str_set(&_sersync_config.fifo_reply_dir, &_sersync_fifo_reply_dir);

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

	if(sersync_config_build() < 0)
		return -1;
	if(sersync_ul_init() < 0)
		return -1;
	if(sersync_alias_init() < 0)
		return -1;

	/* maps the queue and status area; starts no thread (we fork later) */
	rc = sersync_shared_create((uint32_t)_sersync_queue_size, &_sersync_shared);
	if(rc != SERSYNC_OK || _sersync_shared == NULL) {
		LM_ERR("cannot map the shared queue of %d slots (rc %d)\n",
				_sersync_queue_size, rc);
		return -1;
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
	if(rank != PROC_MAIN)
		return 0;
	if(sersync_proc_start() < 0)
		return -1;
	return sersync_alias_timer_start();
}

static void mod_destroy(void)
{
	/* the shared mapping goes with the processes; nothing else to free */
}
