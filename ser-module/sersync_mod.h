/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * State shared by the module's C files. Everything here is set in
 * mod_init (before SER forks) and only read afterwards, except
 * _sersync_replaying, which is per process.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#ifndef _SERSYNC_MOD_H_
#define _SERSYNC_MOD_H_

#include "../../core/str.h"
#include "../../core/rpc.h"
#include "../usrloc/usrloc.h"

#include "sersync.h"

/* modparams (sersync_mod.c) */
extern str _sersync_node_id;
extern str _sersync_listen;
extern str _sersync_secret;
extern str _sersync_journal;
extern str _sersync_fifo;
extern str _sersync_db_url;
extern str _sersync_domains;
extern int _sersync_queue_size;

/* derived in mod_init (sersync_mod.c) */
extern struct sersync_config _sersync_config;
extern struct sersync_shared *_sersync_shared;
extern usrloc_api_t _sersync_ul;

/* usrloc binding and callbacks (sersync_ul.c) */
extern int _sersync_replaying;
int sersync_ul_init(void);
int sersync_ul_register_domains(void);

/* the sersync process (sersync_proc.c) */
int sersync_proc_start(void);
void sersync_log(int level, const char *msg, size_t len);

/* RPC commands (sersync_rpc.c) */
extern rpc_export_t sersync_rpc_cmds[];

#endif /* _SERSYNC_MOD_H_ */
