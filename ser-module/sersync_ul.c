/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * usrloc binding, the contact callback and the writer. The callback runs
 * in SIP workers (and in usrloc's timer and RPC processes): it copies the
 * contact out, hands it to the engine's shared queue and returns. O(1),
 * no I/O but one eventfd write, never blocks; with durability "journal"
 * it then waits for the journal, at most durability_timeout ms. The
 * writer applies contacts received from peers, for sersync.apply (kept
 * beside the callback, as dmq_usrloc keeps its own).
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <string.h>
#include <time.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/ip_addr.h"
#include "../../core/socket_info.h"
#include "../../core/mem/mem.h"
#include "../../core/mem/shm_mem.h"
#include "../usrloc/ucontact.h"
#include "../usrloc/udomain.h"
#include "../usrloc/hslot.h"
#include "../usrloc/urecord.h"

#include "sersync_mod.h"

/*
 * Set while sersync.apply writes remote records into usrloc in this
 * process, so that the callbacks they fire are not sent back out (echo
 * suppression, as dmq_usrloc does).
 */
int _sersync_replaying = 0;

usrloc_api_t _sersync_ul;

/*
 * Set (shared memory) once usrloc has loaded its tables from the database.
 * usrloc does that in the child_init of its load rank (the first SIP
 * worker by default), while processes forked later, RPC processes among
 * them, already run: a contact sersync.apply inserted before the load is
 * inserted again by it, twice in memory, and the database refuses the
 * second ruid. sersync.apply waits for this flag (503, retried).
 */
static int *_sersync_ul_loaded = NULL;
static int _sersync_ul_load_rank = PROC_SIPINIT;

/*
 * Our child_init must run after usrloc's for the same rank, which SER
 * does in load order: sersync has to be loaded after usrloc.
 */
static int sersync_ul_check_order(void)
{
	sr_module_t *m;
	modparam_t type;
	int *rank;

	/* SER keeps its module list newest first */
	for(m = modules; m != NULL; m = m->next) {
		if(strcmp(m->exports.name, "sersync") == 0)
			break;
		if(strcmp(m->exports.name, "usrloc") == 0) {
			LM_ERR("loadmodule \"sersync.so\" must come after loadmodule"
				   " \"usrloc.so\" in the config\n");
			return -1;
		}
	}
	m = find_module_by_name("usrloc");
	/* (find_param_export writes through its last argument) */
	rank = (m != NULL) ? (int *)find_param_export(m, "load_rank", PARAM_INT,
								 &type)
					   : NULL;
	if(rank != NULL)
		_sersync_ul_load_rank = *rank;
	return 0;
}

/* child_init: usrloc has done its own child_init for this rank */
void sersync_ul_child_init(int rank)
{
	if(rank == _sersync_ul_load_rank && _sersync_ul_loaded != NULL)
		__atomic_store_n(_sersync_ul_loaded, 1, __ATOMIC_RELEASE);
}

int sersync_ul_is_loaded(void)
{
	return _sersync_ul_loaded != NULL
		   && __atomic_load_n(_sersync_ul_loaded, __ATOMIC_ACQUIRE);
}

/*
 * Marks a contact that usrloc deleted (callback DELETE) but, in write-back
 * mode, keeps in memory with expires == UL_EXPIRED_TIME until its timer
 * fires EXPIRE. That EXPIRE is then not a new deletion: the DELETE was
 * already published, or came from a peer and must not be echoed. A later
 * update of the contact overwrites flags and clears the mark. Bit chosen
 * above the flags usrloc and registrar use (0..2).
 */
#define SERSYNC_FL_DELETED (1U << 24)

/*
 * usrloc's flags that describe this node only, never published: the
 * expiry callback ran, the mark above and, from Kamailio 6.0, FL_KASENT
 * (usrloc sent this node's keepalive to the contact). src/digest.rs's
 * NODE_LOCAL_FLAGS names them too.
 */
#if VERSIONVAL >= 6000000
#define SERSYNC_FL_NODE_LOCAL (FL_EXPCLB | FL_KASENT | SERSYNC_FL_DELETED)
#else
#define SERSYNC_FL_NODE_LOCAL (FL_EXPCLB | SERSYNC_FL_DELETED)
#endif

/* usrloc tables to replicate, from the "domains" param (NUL-terminated) */
static str *_sersync_domain_list = NULL;
static int _sersync_ndomains = 0;

/* failures counted in this process, logged at most once per second */
struct sersync_ratelog
{
	unsigned long n; /* since the last log line */
	time_t logged;
};

/* publish failures; durable waits that timed out */
static struct sersync_ratelog _sersync_publish_failed;
static struct sersync_ratelog _sersync_wait_timeouts;

static void sersync_ul_cb(ucontact_t *c, int type, void *param);

static int sersync_domains_parse(void)
{
	char *p;
	char *end;
	char *b;
	char *e;
	int n;

	n = 1;
	for(p = _sersync_domains.s; p < _sersync_domains.s + _sersync_domains.len;
			p++) {
		if(*p == ',')
			n++;
	}
	_sersync_domain_list = pkg_malloc(n * sizeof(str));
	if(_sersync_domain_list == NULL) {
		PKG_MEM_ERROR;
		return -1;
	}
	_sersync_ndomains = 0;
	p = _sersync_domains.s;
	end = _sersync_domains.s + _sersync_domains.len;
	while(p <= end) {
		b = p;
		while(p < end && *p != ',')
			p++;
		e = p;
		while(b < e && (*b == ' ' || *b == '\t'))
			b++;
		while(e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if(e > b) {
			str *d = &_sersync_domain_list[_sersync_ndomains];
			d->len = (int)(e - b);
			d->s = pkg_malloc(d->len + 1);
			if(d->s == NULL) {
				PKG_MEM_ERROR;
				return -1;
			}
			memcpy(d->s, b, d->len);
			d->s[d->len] = '\0';
			_sersync_ndomains++;
		}
		p++;
	}
	if(_sersync_ndomains == 0) {
		LM_ERR("modparam(\"sersync\", \"domains\", ...) names no usrloc"
			   " table\n");
		return -1;
	}
	return 0;
}

int sersync_ul_init(void)
{
	bind_usrloc_t bind_usrloc;
	int types;

	if(sersync_domains_parse() < 0)
		return -1;

	bind_usrloc = (bind_usrloc_t)find_export("ul_bind_usrloc", 1, 0);
	if(bind_usrloc == NULL) {
		LM_ERR("usrloc is not loaded: add loadmodule \"usrloc.so\" before"
			   " sersync\n");
		return -1;
	}
	if(bind_usrloc(&_sersync_ul) < 0) {
		LM_ERR("cannot bind the usrloc API\n");
		return -1;
	}
	if(sersync_ul_check_order() < 0)
		return -1;
	_sersync_ul_loaded = (int *)shm_malloc(sizeof(int));
	if(_sersync_ul_loaded == NULL) {
		SHM_MEM_ERROR;
		return -1;
	}
	*_sersync_ul_loaded = 0;
	types = UL_CONTACT_INSERT | UL_CONTACT_UPDATE | UL_CONTACT_DELETE
			| UL_CONTACT_EXPIRE;
	if(_sersync_ul.register_ulcb(types, sersync_ul_cb, 0) < 0) {
		LM_ERR("cannot register the usrloc contact callback\n");
		return -1;
	}
	return 0;
}

/*
 * Registers the replicated tables with usrloc (a no-op for those save()
 * or lookup() already registered), so that sersync.apply finds them even
 * on a node whose script never touches them. Runs in the main process
 * after every mod_init and fixup, before any fork.
 */
int sersync_ul_register_domains(void)
{
	udomain_t *d;
	int i;

	for(i = 0; i < _sersync_ndomains; i++) {
		if(_sersync_ul.register_udomain(_sersync_domain_list[i].s, &d) < 0) {
			LM_ERR("cannot register usrloc table '%s'\n",
					_sersync_domain_list[i].s);
			return -1;
		}
	}
	return 0;
}

static int sersync_domain_wanted(const str *d)
{
	int i;

	if(d == NULL || d->s == NULL)
		return 0;
	for(i = 0; i < _sersync_ndomains; i++) {
		if(_sersync_domain_list[i].len == d->len
				&& memcmp(_sersync_domain_list[i].s, d->s, d->len) == 0)
			return 1;
	}
	return 0;
}

/* copies every field save() stores; the strings stay usrloc's until
 * sersync_publish() returns, which copies them into the queue */
static void sersync_contact_fill(
		struct sersync_contact *sc, const ucontact_t *c, int op)
{
	memset(sc, 0, sizeof(*sc));
	sc->op = op;
	sc->q = (int32_t)c->q;
	sersync_str_from(&sc->domain, c->domain);
	sersync_str_from(&sc->aor, c->aor);
	sersync_str_from(&sc->contact, &c->c);
	sersync_str_from(&sc->ruid, &c->ruid);
	sersync_str_from(&sc->received, &c->received);
	sersync_str_from(&sc->path, &c->path);
	sersync_str_from(&sc->callid, &c->callid);
	sersync_str_from(&sc->user_agent, &c->user_agent);
	sersync_str_from(&sc->socket, c->sock ? &c->sock->sock_str : NULL);
	sersync_str_from(&sc->instance, &c->instance);
	sc->expires = (int64_t)c->expires;
	sc->last_modified = (int64_t)c->last_modified;
	sc->cseq = (int32_t)c->cseq;
	sc->flags = (uint32_t)c->flags & ~(uint32_t)SERSYNC_FL_NODE_LOCAL;
	sc->cflags = (uint32_t)c->cflags;
	sc->methods = (uint32_t)c->methods;
	sc->reg_id = (uint32_t)c->reg_id;
	sc->server_id = (int32_t)c->server_id;
}

/* counts one failure; 1 when it is time to log (then n is the count) */
static int sersync_ratelog_due(struct sersync_ratelog *r)
{
	time_t now;

	r->n++;
	now = time(NULL);
	if(now == r->logged)
		return 0;
	r->logged = now;
	return 1;
}

static void sersync_publish_error(int rc, const struct sersync_contact *sc)
{
	if(!sersync_ratelog_due(&_sersync_publish_failed))
		return;
	LM_ERR("%lu change(s) not handed to the sersync engine from this process"
		   " (last: rc %d, %.*s %.*s); dropped changes are counted in"
		   " sersync.status queue_dropped\n",
			_sersync_publish_failed.n, rc, (int)sc->aor.len,
			sc->aor.s ? sc->aor.s : "", (int)sc->contact.len,
			sc->contact.s ? sc->contact.s : "");
	_sersync_publish_failed.n = 0;
}

/*
 * durability "journal": save() returns once the engine has journaled the
 * change, or after durability_timeout ms; then the change stays queued
 * (journaled later) and SIP goes on.
 */
static void sersync_durable_wait(const struct sersync_contact *sc)
{
	int rc;

	rc = sersync_journal_wait(
			_sersync_shared, (uint32_t)_sersync_durability_timeout);
	if(rc == SERSYNC_OK || !sersync_ratelog_due(&_sersync_wait_timeouts))
		return;
	LM_WARN("%lu change(s) from this process not journaled within %d ms"
			" (last: rc %d, %.*s %.*s); they stay queued, save() went on\n",
			_sersync_wait_timeouts.n, _sersync_durability_timeout, rc,
			(int)sc->aor.len, sc->aor.s ? sc->aor.s : "", (int)sc->contact.len,
			sc->contact.s ? sc->contact.s : "");
	_sersync_wait_timeouts.n = 0;
}

static void sersync_ul_cb(ucontact_t *c, int type, void *param)
{
	struct sersync_contact sc;
	int op;
	int rc;

	if(c == NULL)
		return;
	if(type & UL_CONTACT_DELETE)
		c->flags |= SERSYNC_FL_DELETED;
	if(_sersync_replaying)
		return;
	if(!sersync_domain_wanted(c->domain))
		return;

	if(type & (UL_CONTACT_INSERT | UL_CONTACT_UPDATE)) {
		op = SERSYNC_OP_UPSERT;
	} else if(type & UL_CONTACT_DELETE) {
		op = SERSYNC_OP_DELETE;
	} else if(type & UL_CONTACT_EXPIRE) {
		/* natural expiry happens on every node by itself; an early one
		 * (lost TCP connection, ul.rm in write-back mode) is a deletion */
		if(c->expires != UL_EXPIRED_TIME || (c->flags & SERSYNC_FL_DELETED))
			return;
		op = SERSYNC_OP_DELETE;
	} else {
		return;
	}

	sersync_contact_fill(&sc, c, op);
	rc = sersync_publish(_sersync_shared, &sc);
	if(rc != SERSYNC_OK)
		sersync_publish_error(rc, &sc);
	else if(_sersync_durable_wait)
		sersync_durable_wait(&sc);
}

/*
 * The writer: contacts received from peers into usrloc, for sersync.apply
 * (sersync_rpc.c), which runs it with _sersync_replaying set.
 */

/* usrloc table names are short; get_udomain() wants them NUL-terminated */
#define SERSYNC_DOMAIN_MAX 128
/* "proto:[ipv6]:port" fits easily */
#define SERSYNC_SOCKET_MAX 128

/* the local socket a peer's "proto:ip:port" names, if it is one of ours */
static struct socket_info *sersync_local_socket(const struct sersync_str *s)
{
	char buf[SERSYNC_SOCKET_MAX];
	str sock;

	if(s->len == 0 || s->len >= sizeof(buf))
		return NULL;
	memcpy(buf, s->s, s->len);
	buf[s->len] = '\0';
	sock.s = buf;
	sock.len = (int)s->len;
	return lookup_local_socket(&sock);
}

/*
 * The contact with this URI. In write-back mode a deleted contact stays in
 * the list (expires == UL_EXPIRED_TIME) until usrloc's timer: prefer a
 * live one, fall back to the deleted one (which an update revives, as
 * registrar's save() does).
 */
static ucontact_t *sersync_find_contact(urecord_t *r, const str *contact)
{
	ucontact_t *c;
	ucontact_t *deleted;

	deleted = NULL;
	for(c = r->contacts; c != NULL; c = c->next) {
		if(c->c.len != contact->len
				|| memcmp(c->c.s, contact->s, contact->len) != 0)
			continue;
		if(c->expires != UL_EXPIRED_TIME)
			return c;
		if(deleted == NULL)
			deleted = c;
	}
	return deleted;
}

static int sersync_str_eq(const str *a, const str *b)
{
	return a->len == b->len && (a->len <= 0 || memcmp(a->s, b->s, a->len) == 0);
}

/* update_ucontact() changes neither ruid, instance nor reg_id */
static int sersync_same_identity(const ucontact_t *c, ucontact_info_t *ci)
{
	if(ci->ruid.len > 0 && !sersync_str_eq(&c->ruid, &ci->ruid))
		return 0;
	return sersync_str_eq(&c->instance, &ci->instance)
		   && c->reg_id == ci->reg_id;
}

/*
 * Ordering: may the remote change sc overwrite what usrloc holds under its
 * key (c, NULL if nothing)? 1 yes, 0 no (usrloc holds a newer version, or
 * the version check failed: logged, the change is left out rather than
 * written over a newer one), with aor's slot locked (sersync.h:
 * sersync_order_admit).
 */
static int sersync_admit(const struct sersync_contact *sc, const ucontact_t *c)
{
	int64_t held;
	int rc;

	held = (c != NULL && c->expires != UL_EXPIRED_TIME)
				   ? (int64_t)c->last_modified
				   : -1;
	rc = sersync_order_admit(_sersync_shared, sc, held);
	if(rc == SERSYNC_OK)
		return 1;
	if(rc != SERSYNC_SUPERSEDED)
		LM_ERR("cannot check the version of contact %.*s of %.*s (rc %d)\n",
				(int)sc->contact.len, sc->contact.s, (int)sc->aor.len,
				sc->aor.s, rc);
	return 0;
}

/*
 * Locks aor's slot and finds its record (creates it if create): 0 with
 * the slot locked, else unlocked: 1 no such record, -1 error.
 */
static int sersync_record_lock(udomain_t *d, str *aor, urecord_t **r,
		int create)
{
	int rc;

	_sersync_ul.lock_udomain(d, aor);
	rc = _sersync_ul.get_urecord(d, aor, r);
	if(rc > 0 && create) {
		rc = _sersync_ul.insert_urecord(d, aor, r);
		if(rc < 0)
			LM_ERR("cannot insert record %.*s\n", aor->len, aor->s);
	} else if(rc < 0) {
		LM_ERR("cannot look up %.*s\n", aor->len, aor->s);
	}
	if(rc != 0)
		_sersync_ul.unlock_udomain(d, aor);
	return (rc < 0) ? -1 : rc;
}

/* releases r and aor's slot; rc < 0: the contact write ("what") failed */
static int sersync_record_unlock(udomain_t *d, str *aor, urecord_t *r, int rc,
		const char *what, const str *contact)
{
	_sersync_ul.release_urecord(r);
	_sersync_ul.unlock_udomain(d, aor);
	if(rc < 0) {
		LM_ERR("cannot %s contact %.*s of %.*s\n", what, contact->len,
				contact->s, aor->len, aor->s);
		return sersync_apply_fail("usrloc could not %s the contact (see"
								  " SER's log)",
				what);
	}
	return 0;
}

static int sersync_apply_upsert(
		udomain_t *d, str *aor, const struct sersync_contact *sc)
{
	ucontact_info_t ci;
	urecord_t *r;
	ucontact_t *c;
	str contact;
	str path;
	str callid;
	str user_agent;
	int rc;

	sersync_str_to(&contact, &sc->contact);
	sersync_str_to(&path, &sc->path);
	sersync_str_to(&callid, &sc->callid);
	sersync_str_to(&user_agent, &sc->user_agent);

	memset(&ci, 0, sizeof(ci));
	sersync_str_to(&ci.ruid, &sc->ruid);
	ci.c = &contact;
	sersync_str_to(&ci.received, &sc->received);
	ci.path = (path.len > 0) ? &path : NULL;
	ci.expires = (time_t)sc->expires;
	ci.q = (qvalue_t)sc->q;
	ci.callid = &callid;
	ci.cseq = (int)sc->cseq;
	ci.flags = (unsigned int)sc->flags;
	ci.cflags = (unsigned int)sc->cflags;
	ci.user_agent = &user_agent;
	ci.sock = sersync_local_socket(&sc->socket);
	ci.methods = (unsigned int)sc->methods;
	sersync_str_to(&ci.instance, &sc->instance);
	ci.reg_id = (unsigned int)sc->reg_id;
	ci.server_id = (int)sc->server_id;
	ci.tcpconn_id = -1;
	ci.last_modified = (time_t)sc->last_modified;

	if(sersync_record_lock(d, aor, &r, 1) != 0)
		return -1;
	c = sersync_find_contact(r, &contact);
	if(!sersync_admit(sc, c)) {
		rc = 0;
		goto done;
	}
	if(c != NULL && !sersync_same_identity(c, &ci)) {
		/* replaced at the origin (new ruid, instance or reg-id): replace
		 * here too, so every field matches the origin's */
		rc = _sersync_ul.delete_ucontact(r, c);
		c = NULL;
		if(rc < 0)
			goto done;
	}
	if(c != NULL) {
		rc = _sersync_ul.update_ucontact(r, c, &ci);
	} else if(ci.ruid.len <= 0) {
		/* an update keeps the ruid usrloc holds; a new contact needs one */
		sersync_record_unlock(d, aor, r, 0, "write", &contact);
		return sersync_apply_refuse("invalid field: new contact without ruid");
	} else {
		rc = _sersync_ul.insert_ucontact(r, &contact, &ci, &c);
	}
done:
	return sersync_record_unlock(d, aor, r, rc, "write", &contact);
}

static int sersync_apply_delete(
		udomain_t *d, str *aor, const struct sersync_contact *sc)
{
	urecord_t *r;
	ucontact_t *c;
	str contact;
	int rc;

	sersync_str_to(&contact, &sc->contact);
	rc = sersync_record_lock(d, aor, &r, 0);
	if(rc != 0) /* > 0: already gone; a deletion is idempotent */
		return (rc > 0) ? 0 : -1;
	c = sersync_find_contact(r, &contact);
	if(c != NULL && sersync_admit(sc, c))
		rc = _sersync_ul.delete_ucontact(r, c);
	return sersync_record_unlock(d, aor, r, rc, "delete", &contact);
}

/* sersync_apply_fn: one decoded record into usrloc */
int sersync_apply_one(void *ctx, const struct sersync_contact *sc)
{
	char dname[SERSYNC_DOMAIN_MAX];
	udomain_t *d;
	str aor;

	if(sc == NULL)
		return -1;
	/* a record this node can never apply is refused, not logged: the
	 * engine quarantines it and logs each cause once */
	if(sc->domain.len == 0 || sc->domain.len >= sizeof(dname)
			|| sc->aor.len == 0 || sc->contact.len == 0)
		return sersync_apply_refuse(
				"invalid field: no usrloc table, AOR or contact, or a table"
				" name of %d bytes",
				(int)sc->domain.len);
	memcpy(dname, sc->domain.s, sc->domain.len);
	dname[sc->domain.len] = '\0';
	if(_sersync_ul.get_udomain(dname, &d) < 0)
		return sersync_apply_refuse(
				"usrloc table '%s' is not registered on this node", dname);
	sersync_str_to(&aor, &sc->aor);

	switch(sc->op) {
		case SERSYNC_OP_UPSERT:
			return sersync_apply_upsert(d, &aor, sc);
		case SERSYNC_OP_DELETE:
			return sersync_apply_delete(d, &aor, sc);
		default:
			return sersync_apply_refuse(
					"invalid field: unknown operation %d", (int)sc->op);
	}
}

/*
 * The walk for the check of SER against the journal (sersync.digest,
 * sersync.digest_range in sersync_rpc.c): every replicated usrloc table,
 * slot by slot, each slot under usrloc's own slot lock (as usrloc's timer
 * and ul.dump walk it) held for that slot only. Each live contact is
 * filled as the callback fills it and handed to the engine's walk, which
 * digests it or keeps it; a contact write-back mode keeps deleted
 * (expires == UL_EXPIRED_TIME, until usrloc's timer) is not live.
 * *max_lock_ns: the longest one slot lock was held. 0, or -1 with a
 * fault reason in err.
 */
int sersync_ul_walk(struct sersync_walk *w, uint64_t *contacts,
		uint64_t *max_lock_ns, char *err, size_t errlen)
{
	struct sersync_contact sc;
	struct timespec t0;
	struct timespec t1;
	udomain_t *d;
	urecord_t *r;
	ucontact_t *c;
	uint64_t ns;
	int i;
	int k;
	int rc;

	*contacts = 0;
	*max_lock_ns = 0;
	if(_sersync_ul.db_mode == 3) {
		snprintf(err, errlen, "usrloc db_mode 3 keeps no contacts in memory");
		return -1;
	}
	for(k = 0; k < _sersync_ndomains; k++) {
		if(_sersync_ul.get_udomain(_sersync_domain_list[k].s, &d) < 0) {
			snprintf(err, errlen, "usrloc table '%s' is not registered",
					_sersync_domain_list[k].s);
			return -1;
		}
		for(i = 0; i < d->size; i++) {
			rec_lock_get(&d->table[i].rlock);
			clock_gettime(CLOCK_MONOTONIC, &t0);
			rc = SERSYNC_OK;
			for(r = d->table[i].first; r != NULL && rc == SERSYNC_OK;
					r = r->next) {
				for(c = r->contacts; c != NULL; c = c->next) {
					if(c->expires == UL_EXPIRED_TIME)
						continue;
					sersync_contact_fill(&sc, c, SERSYNC_OP_UPSERT);
					rc = sersync_walk_add(w, &sc);
					if(rc != SERSYNC_OK)
						break;
					(*contacts)++;
				}
			}
			clock_gettime(CLOCK_MONOTONIC, &t1);
			rec_lock_release(&d->table[i].rlock);
			ns = (uint64_t)((int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL
							+ (int64_t)(t1.tv_nsec - t0.tv_nsec));
			if(ns > *max_lock_ns)
				*max_lock_ns = ns;
			if(rc != SERSYNC_OK) {
				snprintf(err, errlen, "the walk refused a contact (rc %d)",
						rc);
				return -1;
			}
		}
	}
	return 0;
}
