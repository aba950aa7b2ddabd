/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * RPC commands. sersync.status reads the engine's shared status area;
 * sersync.apply is how the engine writes remote records into usrloc: it
 * calls it through SER's RPC door (jsonrpcs FIFO), so the records are
 * written inside SER, under usrloc's locks, by an RPC process.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <string.h>

#include "../../core/dprint.h"
#include "../../core/rpc.h"
#include "../../core/socket_info.h"
#include "../usrloc/ucontact.h"

#include "sersync_mod.h"

/* usrloc table names are short; get_udomain() wants them NUL-terminated */
#define SERSYNC_DOMAIN_MAX 128
/* "proto:[ipv6]:port" fits easily */
#define SERSYNC_SOCKET_MAX 128

static const char *sersync_peer_state_str(int32_t state)
{
	switch(state) {
		case SERSYNC_PEER_DOWN:
			return "down";
		case SERSYNC_PEER_CONNECTING:
			return "connecting";
		case SERSYNC_PEER_UP:
			return "up";
		case SERSYNC_PEER_REFUSED:
			return "refused";
		default:
			return "unknown";
	}
}

/* the strings of struct sersync_status are NUL-terminated by contract;
 * terminate them anyway before printing */
#define SERSYNC_TERM(a) ((a)[sizeof(a) - 1] = '\0')

static const char *sersync_status_doc[2] = {
		"Engine and peer status: queue, journal, apply counters and, per"
		" peer, link state, sent/acked/pending records and lag.",
		0};

static void sersync_rpc_status(rpc_t *rpc, void *ctx)
{
	/* about 12 KiB: static, RPC handlers run one at a time per process */
	static struct sersync_status st;
	struct sersync_peer_status *ps;
	void *th;
	void *ah;
	void *ph;
	uint32_t i;
	int rc;

	memset(&st, 0, sizeof(st));
	rc = sersync_status_read(_sersync_shared, &st);
	if(rc != SERSYNC_OK) {
		rpc->fault(ctx, 500, "Cannot read sersync status (rc %d)", rc);
		return;
	}
	SERSYNC_TERM(st.node_id);
	SERSYNC_TERM(st.last_error);

	if(rpc->add(ctx, "{", &th) < 0) {
		rpc->fault(ctx, 500, "Internal error creating reply");
		return;
	}
	if(rpc->struct_add(th, "sdJJJJJJJJs", "node_id", st.node_id, "running",
			   (int)st.running, "queue_depth",
			   (unsigned long long)st.queue_depth, "queue_dropped",
			   (unsigned long long)st.queue_dropped, "journaled",
			   (unsigned long long)st.journaled, "last_seq",
			   (unsigned long long)st.last_seq, "applied",
			   (unsigned long long)st.applied, "apply_pending",
			   (unsigned long long)st.apply_pending, "apply_failures",
			   (unsigned long long)st.apply_failures, "applied_via_db",
			   (unsigned long long)st.applied_via_db, "last_error",
			   st.last_error)
			< 0) {
		rpc->fault(ctx, 500, "Internal error adding status");
		return;
	}
	if(rpc->struct_add(th, "[", "peers", &ah) < 0) {
		rpc->fault(ctx, 500, "Internal error adding peers");
		return;
	}
	for(i = 0; i < st.npeers && i < SERSYNC_MAX_PEERS; i++) {
		ps = &st.peers[i];
		SERSYNC_TERM(ps->node_id);
		SERSYNC_TERM(ps->address);
		SERSYNC_TERM(ps->last_error);
		if(rpc->array_add(ah, "{", &ph) < 0) {
			rpc->fault(ctx, 500, "Internal error adding a peer");
			return;
		}
		if(rpc->struct_add(ph, "sssJJJJJs", "node_id", ps->node_id, "address",
				   ps->address, "state", sersync_peer_state_str(ps->state),
				   "sent", (unsigned long long)ps->sent, "acked",
				   (unsigned long long)ps->acked, "pending",
				   (unsigned long long)ps->pending, "lag_ms",
				   (unsigned long long)ps->lag_ms, "received",
				   (unsigned long long)ps->received, "last_error",
				   ps->last_error)
				< 0) {
			rpc->fault(ctx, 500, "Internal error adding peer status");
			return;
		}
	}
}

/* usrloc wants str with char *; it copies, never writes through them.
 * Empty strings point at "": shm_str_dup() warns on a NULL source. */
static void sersync_str_to(str *dst, const struct sersync_str *src)
{
	dst->s = (src->len > 0 && src->s != NULL) ? (char *)src->s : "";
	dst->len = (src->s != NULL) ? (int)src->len : 0;
}

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

	_sersync_ul.lock_udomain(d, aor);
	rc = _sersync_ul.get_urecord(d, aor, &r);
	if(rc < 0) {
		_sersync_ul.unlock_udomain(d, aor);
		LM_ERR("cannot look up %.*s\n", aor->len, aor->s);
		return -1;
	}
	if(rc > 0 && _sersync_ul.insert_urecord(d, aor, &r) < 0) {
		_sersync_ul.unlock_udomain(d, aor);
		LM_ERR("cannot insert record %.*s\n", aor->len, aor->s);
		return -1;
	}
	c = sersync_find_contact(r, &contact);
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
		LM_ERR("contact %.*s of %.*s has no ruid\n", contact.len, contact.s,
				aor->len, aor->s);
		rc = -1;
	} else {
		rc = _sersync_ul.insert_ucontact(r, &contact, &ci, &c);
	}
done:
	_sersync_ul.release_urecord(r);
	_sersync_ul.unlock_udomain(d, aor);
	if(rc < 0) {
		LM_ERR("cannot write contact %.*s of %.*s\n", contact.len, contact.s,
				aor->len, aor->s);
		return -1;
	}
	return 0;
}

static int sersync_apply_delete(
		udomain_t *d, str *aor, const struct sersync_contact *sc)
{
	urecord_t *r;
	ucontact_t *c;
	str contact;
	int rc;

	sersync_str_to(&contact, &sc->contact);
	_sersync_ul.lock_udomain(d, aor);
	rc = _sersync_ul.get_urecord(d, aor, &r);
	if(rc < 0) {
		_sersync_ul.unlock_udomain(d, aor);
		LM_ERR("cannot look up %.*s\n", aor->len, aor->s);
		return -1;
	}
	if(rc > 0) {
		/* already gone: a deletion is idempotent */
		_sersync_ul.unlock_udomain(d, aor);
		return 0;
	}
	c = sersync_find_contact(r, &contact);
	rc = 0;
	if(c != NULL)
		rc = _sersync_ul.delete_ucontact(r, c);
	_sersync_ul.release_urecord(r);
	_sersync_ul.unlock_udomain(d, aor);
	if(rc < 0) {
		LM_ERR("cannot delete contact %.*s of %.*s\n", contact.len, contact.s,
				aor->len, aor->s);
		return -1;
	}
	return 0;
}

/* sersync_apply_fn: one decoded record into usrloc */
static int sersync_apply_one(void *ctx, const struct sersync_contact *sc)
{
	char dname[SERSYNC_DOMAIN_MAX];
	udomain_t *d;
	str aor;

	if(sc == NULL)
		return -1;
	if(sc->domain.len == 0 || sc->domain.len >= sizeof(dname)
			|| sc->aor.len == 0 || sc->contact.len == 0) {
		LM_ERR("record without usrloc table, AOR or contact\n");
		return -1;
	}
	memcpy(dname, sc->domain.s, sc->domain.len);
	dname[sc->domain.len] = '\0';
	if(_sersync_ul.get_udomain(dname, &d) < 0) {
		LM_ERR("usrloc table '%s' is not registered with usrloc on this"
			   " node (add it to modparam(\"sersync\", \"domains\", ...))\n",
				dname);
		return -1;
	}
	sersync_str_to(&aor, &sc->aor);

	switch(sc->op) {
		case SERSYNC_OP_UPSERT:
			return sersync_apply_upsert(d, &aor, sc);
		case SERSYNC_OP_DELETE:
			return sersync_apply_delete(d, &aor, sc);
		default:
			LM_ERR("unknown operation %d for %.*s\n", (int)sc->op, aor.len,
					aor.s);
			return -1;
	}
}

static const char *sersync_apply_doc[2] = {
		"Apply a batch of replicated contacts to usrloc. Takes one string,"
		" the payload the sersync engine encodes; returns the number of"
		" records applied. Used by the engine itself.",
		0};

/* sersync_apply_alias_fn: alias replication is not wired in yet */
static int sersync_apply_alias(void *ctx, const struct sersync_alias *a)
{
	LM_ERR("alias records are not supported by this module build\n");
	return -1;
}

static const struct sersync_apply_ops sersync_apply_ops = {
		.contact = sersync_apply_one, .alias = sersync_apply_alias, .ctx = NULL};

static void sersync_rpc_apply(rpc_t *rpc, void *ctx)
{
	str payload = STR_NULL;
	str extra = STR_NULL;
	uint32_t count;
	int rc;

	if(rpc->scan(ctx, "S", &payload) != 1) {
		rpc->fault(ctx, 400, "Expected one string parameter: the payload");
		return;
	}
	if(rpc->scan(ctx, "*.S", &extra) != 0) {
		rpc->fault(ctx, 400, "Too many parameters: expected only the payload");
		return;
	}
	if(payload.s == NULL || payload.len <= 0) {
		rpc->fault(ctx, 400, "Empty payload");
		return;
	}

	count = 0;
	_sersync_replaying = 1;
	rc = sersync_apply_decode(
			payload.s, (size_t)payload.len, &sersync_apply_ops, &count);
	_sersync_replaying = 0;

	switch(rc) {
		case SERSYNC_OK:
			break;
		case SERSYNC_E_DECODE:
			rpc->fault(ctx, 400, "Malformed payload");
			return;
		case SERSYNC_E_CALLBACK:
			rpc->fault(ctx, 500, "Apply failed after %u record(s)",
					(unsigned int)count);
			return;
		default:
			rpc->fault(ctx, 500, "Apply failed (rc %d) after %u record(s)", rc,
					(unsigned int)count);
			return;
	}
	rpc->add(ctx, "u", (unsigned int)count);
}

/* clang-format off */
rpc_export_t sersync_rpc_cmds[] = {
	{"sersync.status", sersync_rpc_status, sersync_status_doc, 0},
	{"sersync.apply",  sersync_rpc_apply,  sersync_apply_doc,  0},
	{0, 0, 0, 0}
};
/* clang-format on */
