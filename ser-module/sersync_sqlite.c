/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * Kamailio 5.6's db_sqlite sets no busy timeout: when two SER processes
 * write the same SQLite database at once (a SIP worker saving a contact,
 * sersync.apply writing a peer's), one gets "database is locked" at once.
 * usrloc has then changed its memory but not its table, and the REGISTER
 * is answered 500. An auto-extension, registered before any child opens
 * its connection, gives every SQLite connection of this SER a busy
 * timeout: a writer waits its turn (locks are held for milliseconds).
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <sqlite3.h>

#include "../../core/dprint.h"

#include "sersync_mod.h"

/* the longest a writer waits for another process' lock */
#define SERSYNC_SQLITE_BUSY_MS 2000

static int sersync_sqlite_on_open(sqlite3 *db, const char **err,
		const struct sqlite3_api_routines *api)
{
	(void)err;
	(void)api;
	sqlite3_busy_timeout(db, SERSYNC_SQLITE_BUSY_MS);
	return SQLITE_OK;
}

int sersync_sqlite_init(void)
{
	if(sqlite3_auto_extension((void (*)(void))sersync_sqlite_on_open)
			!= SQLITE_OK) {
		LM_ERR("cannot register the SQLite busy timeout\n");
		return -1;
	}
	return 0;
}
