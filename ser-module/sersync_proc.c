/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * The sersync process: forked from the main process after mod_init (as
 * evapi forks its dispatcher), it runs the Rust engine, whose threads
 * live only here. SER stops when one of its processes dies, so this one
 * never exits on its own.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <limits.h>
#include <unistd.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/pt.h"
#include "../../core/cfg/cfg_struct.h"

#include "sersync_mod.h"

/*
 * Logger for the engine. Called from Rust threads, one call at a time:
 * the LM_* macros format on the stack and write to syslog or stderr,
 * without pkg_malloc.
 */
void sersync_log(int level, const char *msg, size_t len)
{
	int n;

	if(msg == NULL)
		return;
	n = (len > INT_MAX) ? INT_MAX : (int)len;
	switch(level) {
		case SERSYNC_LOG_ERR:
			LM_ERR("%.*s\n", n, msg);
			break;
		case SERSYNC_LOG_WARN:
			LM_WARN("%.*s\n", n, msg);
			break;
		case SERSYNC_LOG_INFO:
			LM_INFO("%.*s\n", n, msg);
			break;
		default:
			LM_DBG("%.*s\n", n, msg);
			break;
	}
}

static void sersync_proc_main(void)
{
	int rc;

	sersync_set_logger(sersync_log);
	rc = sersync_engine_run(_sersync_shared, &_sersync_config);
	LM_ERR("the sersync engine stopped (rc %d); replication is off until"
		   " SER restarts\n",
			rc);
	for(;;)
		sleep(3600);
}

/* child_init(PROC_MAIN): fork the engine's process */
int sersync_proc_start(void)
{
	int pid;

	pid = fork_process(PROC_NOCHLDINIT, "sersync", 1);
	if(pid < 0) {
		LM_ERR("cannot fork the sersync process\n");
		return -1;
	}
	if(pid == 0) {
		/* child: take part in the config framework, then serve */
		if(cfg_child_init()) {
			LM_ERR("cfg_child_init failed in the sersync process\n");
			return -1;
		}
		sersync_proc_main();
	}
	return 0;
}
