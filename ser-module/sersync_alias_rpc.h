/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * An alias RPC's request: read and checked by sersync_alias_parse.c,
 * carried out by sersync_alias_rpc.c.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#ifndef _SERSYNC_ALIAS_RPC_H_
#define _SERSYNC_ALIAS_RPC_H_

#include "../../core/str.h"
#include "../../core/rpc.h"

#include "sersync_mod.h"

/* one item of an alias RPC: an alias URI and maybe a target URI */
struct sersync_alias_item
{
	str alias;
	str target; /* len 0: none */
	int pos;	/* parameter or line number, from 1 */
	struct sersync_alias_row row;
};

struct sersync_alias_req
{
	str *params;
	int nparams;
	int pcap;
	struct sersync_alias_item *items;
	int n;
	int icap;
	int lines; /* items came from one string of lines */
};

/* the request of an add or replace call, of an rm call, of a list call:
 * read from the parameters, every URI checked, the alias table known to
 * be there; 0, or -1 after a fault (free req either way) */
int sersync_alias_pairs_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req);
int sersync_alias_rm_req(rpc_t *rpc, void *ctx, struct sersync_alias_req *req);
int sersync_alias_list_req(
		rpc_t *rpc, void *ctx, struct sersync_alias_req *req);
void sersync_alias_req_free(struct sersync_alias_req *req);
/* 0 when this node has an alias table (db_url), else 1 after a fault */
int sersync_alias_no_db(rpc_t *rpc, void *ctx);
/* grows *arr (of size elem, pkg memory) to hold at least need entries */
int sersync_grow(void **arr, int *cap, int need, size_t elem);

#endif /* _SERSYNC_ALIAS_RPC_H_ */
