/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * The alias RPCs' arguments: alias_uri [target_uri] parameters, or one
 * string of lines, read into a request (sersync_alias_rpc.h) and checked
 * in full, every URI split into an alias row, before sersync_alias_rpc.c
 * touches the table: a bad item faults 400, naming it.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <string.h>

#include "../../core/dprint.h"
#include "../../core/mem/mem.h"
#include "../../core/rpc.h"
#include "../../core/parser/msg_parser.h"
#include "../../core/parser/parse_uri.h"

#include "sersync_mod.h"
#include "sersync_alias_rpc.h"

/* items per call, whatever the form */
#define SERSYNC_ALIAS_ITEMS_MAX 100000
/* how much of a bad item a fault message quotes: jsonrpcs cuts fault
 * messages at 127 characters, the reason comes first */
#define SERSYNC_ALIAS_QUOTE_MAX 32

void sersync_alias_req_free(struct sersync_alias_req *req)
{
	if(req->params != NULL)
		pkg_free(req->params);
	if(req->items != NULL)
		pkg_free(req->items);
	memset(req, 0, sizeof(*req));
}

/* grows *arr (of size elem) to hold at least need entries */
int sersync_grow(void **arr, int *cap, int need, size_t elem)
{
	void *p;
	int ncap;

	if(need <= *cap)
		return 0;
	ncap = (*cap > 0) ? *cap * 2 : 16;
	while(ncap < need)
		ncap *= 2;
	p = pkg_realloc(*arr, (size_t)ncap * elem);
	if(p == NULL) {
		PKG_MEM_ERROR;
		return -1;
	}
	*arr = p;
	*cap = ncap;
	return 0;
}

/* every parameter, as strings (numbers converted) */
static int sersync_alias_params(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	str s;
	int rc;

	for(;;) {
		s.s = NULL;
		s.len = 0;
		rc = rpc->scan(ctx, "*.S", &s);
		if(rc == 0 && !sersync_rpc_left(rpc, ctx))
			return 0;
		if(rc != 1) {
			rpc->fault(ctx, 400, "Parameter %d is not a string",
					req->nparams + 1);
			return -1;
		}
		if(req->nparams >= SERSYNC_ALIAS_ITEMS_MAX * 2) {
			rpc->fault(ctx, 400, "Too many parameters: at most %d",
					SERSYNC_ALIAS_ITEMS_MAX * 2);
			return -1;
		}
		if(sersync_grow((void **)&req->params, &req->pcap, req->nparams + 1,
				   sizeof(str))
				< 0) {
			rpc->fault(ctx, 500, "Out of memory");
			return -1;
		}
		req->params[req->nparams++] = s;
	}
}

static int sersync_alias_item_add(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, str *alias, str *target, int pos)
{
	struct sersync_alias_item *it;

	if(req->n >= SERSYNC_ALIAS_ITEMS_MAX) {
		rpc->fault(ctx, 400, "Too many items: at most %d per call",
				SERSYNC_ALIAS_ITEMS_MAX);
		return -1;
	}
	if(sersync_grow((void **)&req->items, &req->icap, req->n + 1,
			   sizeof(struct sersync_alias_item))
			< 0) {
		rpc->fault(ctx, 500, "Out of memory");
		return -1;
	}
	it = &req->items[req->n++];
	memset(it, 0, sizeof(*it));
	it->alias = *alias;
	if(target != NULL)
		it->target = *target;
	it->pos = pos;
	return 0;
}

static int sersync_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int sersync_has_space(const str *s)
{
	int i;

	for(i = 0; i < s->len; i++) {
		if(sersync_is_space(s->s[i]) || s->s[i] == '\n')
			return 1;
	}
	return 0;
}

/*
 * Items from one string of lines, "alias_uri [target_uri]" each, fields
 * separated by blanks; blank lines are skipped. Each line has between
 * min and max fields.
 */
static int sersync_alias_lines(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, const str *text, int min, int max)
{
	str field[3];
	char *p;
	char *end;
	char *eol;
	int nf;
	int line;

	req->lines = 1;
	p = text->s;
	end = text->s + text->len;
	for(line = 1; p < end; line++) {
		eol = memchr(p, '\n', end - p);
		if(eol == NULL)
			eol = end;
		nf = 0;
		while(p < eol) {
			while(p < eol && sersync_is_space(*p))
				p++;
			if(p >= eol)
				break;
			if(nf < 3)
				field[nf].s = p;
			while(p < eol && !sersync_is_space(*p))
				p++;
			if(nf < 3)
				field[nf].len = (int)(p - field[nf].s);
			nf++;
		}
		p = eol + 1;
		if(nf == 0)
			continue;
		if(nf < min || nf > max) {
			rpc->fault(ctx, 400, "Line %d: expected %s, got %d field(s)", line,
					(min == max) ? "'alias_uri target_uri'"
								 : "'alias_uri [target_uri]'",
					nf);
			return -1;
		}
		if(sersync_alias_item_add(
				   rpc, ctx, req, &field[0], nf > 1 ? &field[1] : NULL, line)
				< 0)
			return -1;
	}
	if(req->n == 0) {
		rpc->fault(ctx, 400, "No aliases given");
		return -1;
	}
	return 0;
}

/* items from alias_uri target_uri pairs, or from one string of lines */
static int sersync_alias_pairs(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	int i;

	if(req->nparams == 0) {
		rpc->fault(ctx, 400, "Expected alias_uri target_uri pairs, or one"
							 " string of lines 'alias_uri target_uri'");
		return -1;
	}
	if(req->nparams == 1)
		return sersync_alias_lines(rpc, ctx, req, &req->params[0], 2, 2);
	if(req->nparams % 2 != 0) {
		rpc->fault(ctx, 400, "Odd number of parameters (%d): expected"
							 " alias_uri target_uri pairs",
				req->nparams);
		return -1;
	}
	for(i = 0; i < req->nparams; i += 2) {
		if(sersync_alias_item_add(rpc, ctx, req, &req->params[i],
				   &req->params[i + 1], i + 1)
				< 0)
			return -1;
	}
	return 0;
}

/*
 * The user and host of a SIP URI, each at most SERSYNC_ALIAS_FIELD_MAX
 * (dbaliases' column size). Returns NULL, or what is wrong with it.
 * Port, parameters and headers are not stored (alias_db ignores them).
 */
static const char *sersync_alias_uri(const str *uri, str *user, str *host)
{
	struct sip_uri pu;

	if(uri->s == NULL || uri->len <= 0)
		return "empty";
	if(uri->len > SERSYNC_ALIAS_URI_MAX)
		return "longer than 256 characters";
	if(uri->len < 4
			|| (strncasecmp(uri->s, "sip:", 4) != 0
					&& (uri->len < 5 || strncasecmp(uri->s, "sips:", 5) != 0)))
		return "not a SIP URI (it must start with sip: or sips:)";
	if(uri->s[uri->len - 1] == '@')
		return "no host (domain) part";
	memset(&pu, 0, sizeof(pu));
	if(parse_uri(uri->s, uri->len, &pu) < 0)
		return "not a valid SIP URI";
	if(pu.type != SIP_URI_T && pu.type != SIPS_URI_T)
		return "not a SIP URI (it must start with sip: or sips:)";
	if(pu.user.len <= 0)
		return "no user part (expected sip:user@domain)";
	if(pu.host.len <= 0)
		return "no host (domain) part";
	if(pu.user.len > SERSYNC_ALIAS_FIELD_MAX)
		return "user part longer than 64 characters";
	if(pu.host.len > SERSYNC_ALIAS_FIELD_MAX)
		return "domain longer than 64 characters";
	*user = pu.user;
	*host = pu.host;
	return NULL;
}

static void sersync_alias_bad(rpc_t *rpc, void *ctx,
		struct sersync_alias_req *req, int pos, const char *what,
		const str *uri, const char *why)
{
	int q;

	q = (uri->len > SERSYNC_ALIAS_QUOTE_MAX) ? SERSYNC_ALIAS_QUOTE_MAX
											 : uri->len;
	rpc->fault(ctx, 400, "%s %d: %s %s: \"%.*s%s\"",
			req->lines ? "Line" : "Parameter", pos, what, why, q,
			uri->s ? uri->s : "", (q < uri->len) ? "..." : "");
}

/* splits every URI into the row's fields; faults on the first bad one */
static int sersync_alias_validate(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	struct sersync_alias_item *it;
	const char *why;
	int i;

	for(i = 0; i < req->n; i++) {
		it = &req->items[i];
		why = sersync_alias_uri(&it->alias, &it->row.auser, &it->row.adomain);
		if(why != NULL) {
			sersync_alias_bad(
					rpc, ctx, req, it->pos, "alias_uri", &it->alias, why);
			return -1;
		}
		if(it->target.len == 0)
			continue;
		why = sersync_alias_uri(&it->target, &it->row.user, &it->row.domain);
		if(why != NULL) {
			sersync_alias_bad(rpc, ctx, req, it->pos + (req->lines ? 0 : 1),
					"target_uri", &it->target, why);
			return -1;
		}
	}
	return 0;
}

int sersync_alias_no_db(rpc_t *rpc, void *ctx)
{
	if(sersync_alias_enabled())
		return 0;
	rpc->fault(ctx, 500, "No alias table: sersync needs"
						 " modparam(\"sersync\", \"db_url\", ...)");
	return 1;
}

/* items of an add or replace call: alias_uri target_uri pairs, or one
 * string of lines, all checked; 0, or -1 after a fault */
int sersync_alias_pairs_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	if(sersync_alias_params(rpc, ctx, req) < 0
			|| sersync_alias_pairs(rpc, ctx, req) < 0
			|| sersync_alias_validate(rpc, ctx, req) < 0
			|| sersync_alias_no_db(rpc, ctx))
		return -1;
	return 0;
}

/* items of an rm call: alias_uri [target_uri], or one string of lines,
 * all checked; 0, or -1 after a fault */
int sersync_alias_rm_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	if(sersync_alias_params(rpc, ctx, req) < 0)
		return -1;
	if(req->nparams == 1 && sersync_has_space(&req->params[0])) {
		if(sersync_alias_lines(rpc, ctx, req, &req->params[0], 1, 2) < 0)
			return -1;
	} else if(req->nparams == 1 || req->nparams == 2) {
		if(sersync_alias_item_add(rpc, ctx, req, &req->params[0],
				   req->nparams == 2 ? &req->params[1] : NULL, 1)
				< 0)
			return -1;
	} else {
		rpc->fault(ctx, 400, "Expected alias_uri [target_uri], or one string"
							 " of lines 'alias_uri [target_uri]'; got %d"
							 " parameters",
				req->nparams);
		return -1;
	}
	if(sersync_alias_validate(rpc, ctx, req) < 0
			|| sersync_alias_no_db(rpc, ctx))
		return -1;
	return 0;
}

/* the item of a list call: none (the whole table) or one alias_uri,
 * checked; 0, or -1 after a fault */
int sersync_alias_list_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req)
{
	if(sersync_alias_params(rpc, ctx, req) < 0)
		return -1;
	if(req->nparams > 1) {
		rpc->fault(ctx, 400, "Expected at most one parameter: alias_uri");
		return -1;
	}
	if(req->nparams == 1
			&& (sersync_alias_item_add(rpc, ctx, req, &req->params[0], NULL, 1)
							< 0
					|| sersync_alias_validate(rpc, ctx, req) < 0))
		return -1;
	if(sersync_alias_no_db(rpc, ctx))
		return -1;
	return 0;
}
