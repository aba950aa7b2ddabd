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
#include <signal.h>
#include <string.h>
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

/*
 * SIGTERM and SIGINT end this process at once. SER's handler for its
 * children logs, then brings the process's configuration up to date under
 * the configuration's global lock; on Kamailio 6.0.1 processes doing that
 * at shutdown were seen waiting on that lock for ever, and SER then
 * outlived SIGTERM by its 60 s kill timeout. Nothing here needs more than
 * _exit: the journal commits transaction by transaction (a kill at any
 * point loses nothing committed), and the peers resend what was not
 * acknowledged.
 */
static void sersync_proc_term(int signo)
{
	(void)signo;
	_exit(0);
}

static int sersync_proc_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = sersync_proc_term;
	sigfillset(&sa.sa_mask);
	if(sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
		return -1;
	return 0;
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
		/* this process's view of the configuration, taken now (its own
		 * loop never calls cfg_update(); without one, SER's handlers
		 * would take the configuration's lock to set it) */
		cfg_update();
		if(sersync_proc_signals() < 0) {
			LM_ERR("cannot set the sersync process's signal handlers\n");
			return -1;
		}
		sersync_proc_main();
	}
	return 0;
}
