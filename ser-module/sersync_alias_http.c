/*
 * sersync - replication of usrloc between SER (Kamailio) nodes
 *
 * sersync_alias_http(): the alias API for web applications over HTTP,
 * and nothing else. jsonrpcs' jsonrpc_dispatch() serves every RPC SER has
 * (core.kill, sersync.forget, ...) and has no allow-list; matching the
 * body with a regex is bypassable (escapes, key case, duplicate keys).
 * This function parses the JSON-RPC request with the parser jsonrpcs
 * itself uses (srjson, on the same body bytes: get_body()), accepts it
 * only when its one "method" member names a sersync.alias_* RPC of this
 * module's table, and then hands it to jsonrpc_dispatch(), which runs the
 * same RPC handler as any other door. Everything else is answered with a
 * JSON-RPC error and never reaches jsonrpcs.
 *
 * Called from event_route[xhttp:request] on the path or port the web
 * applications use (README, "Aliases over HTTP"). Needs xhttp and jsonrpcs
 * loaded.
 *
 * This file is part of sersync, released under the GNU GPL v2 or later.
 */

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "../../core/dprint.h"
#include "../../core/sr_module.h"
#include "../../core/parser/msg_parser.h"
#include "../../core/utils/srjson.h"
#include "../xhttp/api.h"

#include "sersync_mod.h"

static xhttp_api_t _sersync_xhttp;
static cmd_function _sersync_jsonrpc_dispatch = NULL;

int sersync_alias_http_init(void)
{
	if(find_module_by_name("xhttp") == NULL
			|| find_module_by_name("jsonrpcs") == NULL)
		return 0;
	if(xhttp_load_api(&_sersync_xhttp) < 0)
		return -1;
	_sersync_jsonrpc_dispatch = find_export("jsonrpc_dispatch", 0, 0);
	return 0;
}

/* a method this function serves: one of the alias RPCs of our table */
static int sersync_alias_http_allowed(const char *method)
{
	rpc_export_t *r;

	for(r = sersync_rpc_cmds; r->name != NULL; r++) {
		if(strncmp(r->name, "sersync.alias_", 14) == 0
				&& strcmp(r->name, method) == 0)
			return 1;
	}
	return 0;
}

/* the JSON-RPC error reply; id: the request's (a number or a string),
 * else null */
static void sersync_alias_http_refuse(sip_msg_t *msg, int http_code,
		const char *http_text, int code, const char *message, srjson_doc_t *doc,
		srjson_t *id)
{
	char body[512];
	char idbuf[80];
	str reason;
	str ctype = str_init("application/json");
	str sbody;
	int n;

	strcpy(idbuf, "null");
	if(id != NULL && id->type == srjson_Number)
		snprintf(idbuf, sizeof(idbuf), "%.0f", id->valuedouble);
	else if(id != NULL && id->type == srjson_String && id->valuestring != NULL
			&& strlen(id->valuestring) < 64
			&& strspn(id->valuestring, "abcdefghijklmnopqrstuvwxyz"
									   "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
									   "0123456789-_.:")
					   == strlen(id->valuestring))
		snprintf(idbuf, sizeof(idbuf), "\"%s\"", id->valuestring);
	n = snprintf(body, sizeof(body),
			"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":%d,\"message\":\"%s\"},"
			"\"id\":%s}",
			code, message, idbuf);
	if(n < 0 || n >= (int)sizeof(body))
		n = (int)strlen(body);
	reason.s = (char *)http_text;
	reason.len = strlen(http_text);
	sbody.s = body;
	sbody.len = n;
	_sersync_xhttp.reply(msg, http_code, &reason, &ctype, &sbody);
}

/* the request's members named "method", as srjson_GetObjectItem() matches
 * them (case-insensitively) */
static int sersync_alias_http_methods(srjson_t *root)
{
	srjson_t *c;
	int n = 0;

	for(c = root->child; c != NULL; c = c->next) {
		if(c->string != NULL && strcasecmp(c->string, "method") == 0)
			n++;
	}
	return n;
}

/*
 * Serves one JSON-RPC request over HTTP if it calls a sersync.alias_*
 * RPC, else refuses it with a JSON-RPC error (logged). 1 when served (the
 * RPC's own reply was sent, success or fault), -1 when refused.
 */
int sersync_alias_http(sip_msg_t *msg, char *p1, char *p2)
{
	srjson_doc_t *doc;
	srjson_t *method;
	srjson_t *id;
	char *body;
	int rc;

	if(msg == NULL || !IS_HTTP(msg)) {
		LM_ERR("sersync_alias_http() serves HTTP requests only: call it"
			   " from event_route[xhttp:request]\n");
		return -1;
	}
	if(_sersync_xhttp.reply == NULL || _sersync_jsonrpc_dispatch == NULL) {
		LM_ERR("sersync_alias_http() needs the xhttp and jsonrpcs modules"
			   " loaded\n");
		return -1;
	}
	/* the body as jsonrpcs reads it */
	body = get_body(msg);
	doc = srjson_NewDoc(NULL);
	if(doc == NULL) {
		LM_ERR("cannot create a JSON document\n");
		return -1;
	}
	rc = -1;
	id = NULL;
	doc->root = (body != NULL) ? srjson_Parse(doc, body) : NULL;
	if(doc->root == NULL) {
		LM_WARN("alias HTTP API: a request that is not JSON refused\n");
		sersync_alias_http_refuse(
				msg, 400, "Bad Request", -32700, "Parse error", doc, NULL);
		goto done;
	}
	if(doc->root->type != srjson_Object) {
		LM_WARN("alias HTTP API: a request that is not a JSON object"
				" refused\n");
		sersync_alias_http_refuse(msg, 400, "Bad Request", -32600,
				"Invalid request: one JSON-RPC object", doc, NULL);
		goto done;
	}
	id = srjson_GetObjectItem(doc, doc->root, "id");
	method = srjson_GetObjectItem(doc, doc->root, "method");
	if(sersync_alias_http_methods(doc->root) != 1 || method == NULL
			|| method->type != srjson_String || method->valuestring == NULL) {
		LM_WARN("alias HTTP API: a request without exactly one method"
				" refused\n");
		sersync_alias_http_refuse(msg, 400, "Bad Request", -32600,
				"Invalid request: exactly one method", doc, id);
		goto done;
	}
	if(!sersync_alias_http_allowed(method->valuestring)) {
		LM_WARN("alias HTTP API: method \"%.64s\" refused: only the"
				" sersync.alias_* RPCs are served here\n",
				method->valuestring);
		sersync_alias_http_refuse(msg, 403, "Forbidden", -32601,
				"Method not allowed here: only sersync.alias_* RPCs", doc,
				id);
		goto done;
	}
	rc = 1;
done:
	srjson_DeleteDoc(doc);
	if(rc < 0)
		return -1;
	/* jsonrpcs parses the same bytes with the same parser: it finds the
	 * method checked above, and runs its RPC handler */
	_sersync_jsonrpc_dispatch(msg, NULL, NULL);
	return 1;
}
