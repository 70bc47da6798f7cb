/*
 * auth.c - Entra ID's token endpoint, the managed-identity endpoint (IMDS) and the bearer
 * check every Graph call goes through.
 *
 * Access tokens are opaque random strings kept in a hash table with their tenant and
 * expiry: the simulator only needs to recognise its own tokens, not to mint real JWTs.
 */
#include <json-c/linkhash.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gsim.h"

#define FORM_VALUE_MAX 16384

static struct lh_table *tokens; /* value -> struct gs_token, under gs.mu */

static const char *const graph_scopes[] = {
    "https://graph.microsoft.com/.default",
    "https://graph.microsoft.us/.default",
    "https://dod-graph.microsoft.us/.default",
    "https://microsoftgraph.chinacloudapi.cn/.default",
};

static const char *const mi_resources[] = {
    "https://graph.microsoft.com/",
    "https://graph.microsoft.com",
    "https://graph.microsoft.us/",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us/",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn/",
    "https://microsoftgraph.chinacloudapi.cn",
};

static void token_free(struct lh_entry *e)
{
	struct gs_token *t = (struct gs_token *)lh_entry_v(e);
	free(t->tenant);
	free(t);
}

bool gs_auth_init(void)
{
	tokens = lh_kchar_table_new(1024, token_free);
	return tokens != NULL;
}

void gs_auth_shutdown(void)
{
	if (tokens)
		lh_table_free(tokens);
	tokens = NULL;
}

/* Drops expired tokens once the table is large, so a long benchmark stays bounded. */
static void purge_expired_locked(int64_t now)
{
	struct lh_entry *e, *tmp;
	if (lh_table_length(tokens) < 100000)
		return;
	lh_foreach_safe(tokens, e, tmp)
	{
		const struct gs_token *t = lh_entry_v(e);
		if (t->expires_mono <= now)
			lh_table_delete_entry(tokens, e);
	}
}

/* Under the lock: stores a new token and returns it. */
static const struct gs_token *issue_locked(const char *tenant, const char *guid, int64_t now,
                                           double lifetime_s)
{
	struct gs_token *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->tenant = strdup(tenant);
	snprintf(t->tenant_guid, sizeof(t->tenant_guid), "%s", guid);
	t->expires_mono = now + (int64_t)(lifetime_s * 1000);
	if (!t->tenant || !gs_token_random(t->value, sizeof(t->value)))
		goto fail;
	purge_expired_locked(now);
	if (lh_table_insert(tokens, t->value, t) != 0)
		goto fail;
	return t;
fail:
	free(t->tenant);
	free(t);
	return NULL;
}

json_object *gs_auth_tokens_ledger_locked(void)
{
	json_object *a = json_object_new_array();
	struct lh_entry *e;
	lh_foreach(tokens, e)
	{
		const struct gs_token *t = lh_entry_v(e);
		json_object_array_add(a, json_object_new_string(t->value));
	}
	return a;
}

/* Entra's error shape; counts the failure by AADSTS code. Called under the lock. */
static void entra_error(const struct gs_req *q, struct gs_reply *r, unsigned status,
                        const char *error, int code, const char *fmt, ...) CP_PRINTF(6, 7);
static void entra_error(const struct gs_req *q, struct gs_reply *r, unsigned status,
                        const char *error, int code, const char *fmt, ...)
{
	char msg[600], desc[900], ts[32], corr[GS_GUID_LEN + 1];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	gs_fmt_time(q->wall_ms, ts, sizeof(ts));
	ts[10] = ' ';
	ts[19] = 'Z';
	ts[20] = '\0';
	snprintf(corr, sizeof(corr), "%s",
	         q->crid && gs_is_guid(q->crid) ? q->crid : r->request_id);
	snprintf(desc, sizeof(desc), "AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s",
	         code, msg, r->request_id, corr, ts);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "error", json_object_new_string(error));
	json_object_object_add(o, "error_description", json_object_new_string(desc));
	json_object *codes = json_object_new_array();
	json_object_array_add(codes, json_object_new_int(code));
	json_object_object_add(o, "error_codes", codes);
	json_object_object_add(o, "timestamp", json_object_new_string(ts));
	json_object_object_add(o, "trace_id", json_object_new_string(r->request_id));
	json_object_object_add(o, "correlation_id", json_object_new_string(corr));
	json_object_object_add(o, "error_uri",
	                       json_object_new_string("https://login.microsoftonline.com/error"));
	gs_reply_json(r, status, o);
	gs_ledger_failure_locked(code);
}

static void token_reply(struct gs_reply *r, const struct gs_token *t, double lifetime_s)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "token_type", json_object_new_string("Bearer"));
	json_object_object_add(o, "expires_in", json_object_new_int64((int64_t)lifetime_s));
	json_object_object_add(o, "ext_expires_in", json_object_new_int64((int64_t)lifetime_s));
	json_object_object_add(o, "access_token", json_object_new_string(t->value));
	gs_reply_json(r, 200, o);
	gs_reply_header(r, "Cache-Control", "no-store, no-cache");
	gs_reply_header(r, "Pragma", "no-cache");
}

static bool scope_ok(const char *scope, const char *expected)
{
	if (expected)
		return strcmp(scope, expected) == 0;
	for (size_t i = 0; i < CP_ARRAY_LEN(graph_scopes); i++)
		if (strcmp(scope, graph_scopes[i]) == 0)
			return true;
	return false;
}

/* Checks the credential; returns the grant kind or -1 with the error written. */
static int check_credential(const struct gs_req *q, struct gs_reply *r, const struct gs_client *c)
{
	char secret[1024], atype[128];
	char *assertion = malloc(FORM_VALUE_MAX);
	int kind = -1;
	if (!assertion)
		return -1;
	bool has_secret =
	    gs_form_get(q->body, q->body_len, "client_secret", secret, sizeof(secret));
	bool has_type =
	    gs_form_get(q->body, q->body_len, "client_assertion_type", atype, sizeof(atype));
	bool has_assert =
	    gs_form_get(q->body, q->body_len, "client_assertion", assertion, FORM_VALUE_MAX);
	if (has_secret) {
		if (c->secret && strcmp(secret, c->secret) == 0)
			kind = GS_G_SECRET;
		else
			entra_error(q, r, 401, "invalid_client", 7000215,
			            "Invalid client secret provided. Ensure the secret being sent "
			            "in the request is the client secret value, not the client "
			            "secret ID, for a secret added to app '%s'.",
			            c->client_id);
		goto out;
	}
	if (!has_assert) {
		entra_error(q, r, 401, "invalid_client", 7000216,
		            "'client_assertion', 'client_secret' or 'request' is required for the "
		            "'client_credentials' grant type.");
		goto out;
	}
	if (!has_type ||
	    strcmp(atype, "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") != 0) {
		entra_error(q, r, 400, "invalid_request", 50027,
		            "Invalid client_assertion_type; expected "
		            "'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.");
		goto out;
	}
	char msg[300] = "";
	int code;
	if (gs_strlist_has(&c->federated, assertion, false) ||
	    gs_strlist_has(&gs.k.federated, assertion, false))
		code = 0, kind = GS_G_FEDERATED;
	else if (!c->cert_key)
		code = 700027, snprintf(msg, sizeof(msg),
		                        "Client assertion failed signature validation: no "
		                        "certificate or federated credential matches.");
	else
		code = gs_jwt_verify_locked(c, assertion, q->path, q->wall_ms / 1000, msg,
		                            sizeof(msg));
	if (code == 0)
		kind = kind < 0 ? GS_G_CERT : kind;
	else
		entra_error(q, r, 401, "invalid_client", code, "%s", msg);
out:
	free(assertion);
	return kind;
}

/* The token endpoint's checks, in Entra's order, under the lock. */
static void token_locked(const struct gs_req *q, struct gs_reply *r, const char *tenant)
{
	char grant[64], client_id[256], scope[512], ra[32];
	const char *canonical = NULL, *guid = NULL;
	if (strcmp(q->method, "POST") != 0) {
		entra_error(q, r, 405, "invalid_request", 900561,
		            "The endpoint only accepts POST requests. Received a %s request.",
		            q->method);
		return;
	}
	if (gs_roll(gs.k.token_fault_503_rate)) {
		entra_error(q, r, 503, "temporarily_unavailable", 90033,
		            "A transient error has occurred. Please try again.");
		if (gs_retry_after_value(gs.k.fault_503_retry_after_s, ra, sizeof(ra)))
			gs_reply_header(r, "Retry-After", "%s", ra);
		return;
	}
	if (!gs_knobs_tenant_known(&gs.k, tenant, &canonical, &guid)) {
		entra_error(q, r, 400, "invalid_request", 90002,
		            "Tenant '%s' not found. Check to make sure you have the correct tenant "
		            "ID and are signing into the correct cloud.",
		            tenant);
		return;
	}
	if (!gs_form_get(q->body, q->body_len, "grant_type", grant, sizeof(grant))) {
		entra_error(q, r, 400, "invalid_request", 900144,
		            "The request body must contain the following parameter: "
		            "'grant_type'.");
		return;
	}
	if (strcmp(grant, "client_credentials") != 0) {
		entra_error(q, r, 400, "unsupported_grant_type", 70003,
		            "The app requested an unsupported grant type '%s'.", grant);
		return;
	}
	if (!gs_form_get(q->body, q->body_len, "client_id", client_id, sizeof(client_id))) {
		entra_error(q, r, 400, "invalid_request", 900144,
		            "The request body must contain the following parameter: 'client_id'.");
		return;
	}
	const struct gs_client *c = gs_knobs_client(&gs.k, tenant, client_id);
	if (!c) {
		entra_error(q, r, 400, "unauthorized_client", 700016,
		            "Application with identifier '%s' was not found in the directory "
		            "'%s'. This can happen if the application has not been installed by "
		            "the administrator of the tenant.",
		            client_id, tenant);
		return;
	}
	if (!gs_form_get(q->body, q->body_len, "scope", scope, sizeof(scope))) {
		entra_error(q, r, 400, "invalid_request", 900144,
		            "The request body must contain the following parameter: 'scope'.");
		return;
	}
	if (!scope_ok(scope, gs.k.expected_scope)) {
		entra_error(q, r, 400, "invalid_scope", 70011,
		            "The provided value for the input parameter 'scope' is not valid. The "
		            "scope %s is not valid.",
		            scope);
		return;
	}
	int kind = check_credential(q, r, c);
	if (kind < 0)
		return;
	const struct gs_token *t = issue_locked(canonical, guid, q->mono_ms, gs.k.token_lifetime_s);
	if (!t) {
		entra_error(q, r, 500, "server_error", 50000, "Out of memory.");
		return;
	}
	gs_ledger_grant_locked((enum gs_grant)kind);
	token_reply(r, t, gs.k.token_lifetime_s);
}

/* POST /{tenant}/oauth2/v2.0/token, client_credentials. */
void gs_handle_token(const struct gs_req *q, struct gs_reply *r, const char *tenant)
{
	r->route = GS_R_TOKEN;
	gs_lock();
	token_locked(q, r, tenant);
	gs_unlock();
	gs_ledger_count(r->route, r->status);
}

/* IMDS errors are flat {error, error_description}. */
static void mi_error(struct gs_reply *r, unsigned status, const char *error, const char *desc)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "error", json_object_new_string(error));
	json_object_object_add(o, "error_description", json_object_new_string(desc));
	gs_reply_json(r, status, o);
}

static bool mi_resource_ok(const char *res)
{
	for (size_t i = 0; i < CP_ARRAY_LEN(mi_resources); i++)
		if (strcmp(res, mi_resources[i]) == 0)
			return true;
	return false;
}

/* IMDS answers with every value as a string, unlike the v2.0 endpoint. */
static void mi_reply(struct gs_reply *r, const struct gs_token *t, const char *client_id,
                     const char *resource, double lifetime_s, int64_t wall_ms)
{
	char buf[32];
	int64_t now_s = wall_ms / 1000;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "access_token", json_object_new_string(t->value));
	json_object_object_add(o, "client_id", json_object_new_string(client_id));
	snprintf(buf, sizeof(buf), "%lld", (long long)lifetime_s);
	json_object_object_add(o, "expires_in", json_object_new_string(buf));
	json_object_object_add(o, "ext_expires_in", json_object_new_string(buf));
	snprintf(buf, sizeof(buf), "%lld", (long long)(now_s + (int64_t)lifetime_s));
	json_object_object_add(o, "expires_on", json_object_new_string(buf));
	snprintf(buf, sizeof(buf), "%lld", (long long)now_s);
	json_object_object_add(o, "not_before", json_object_new_string(buf));
	json_object_object_add(o, "resource", json_object_new_string(resource));
	json_object_object_add(o, "token_type", json_object_new_string("Bearer"));
	gs_reply_json(r, 200, o);
}

static void mi_locked(const struct gs_req *q, struct gs_reply *r)
{
	const char *meta = gs_req_header(q, "Metadata");
	const char *ver = gs_req_arg(q, "api-version");
	const char *res = gs_req_arg(q, "resource");
	const char *cid = gs_req_arg(q, "client_id");
	const struct gs_client *c = &gs.k.clients[0];
	const char *mi_id = gs.k.mi_client_id ? gs.k.mi_client_id : c->client_id;
	char ra[32];
	if (strcmp(q->method, "GET") != 0)
		mi_error(r, 405, "invalid_request", "Only GET is supported");
	else if (!meta || strcasecmp(meta, "true") != 0)
		mi_error(r, 400, "invalid_request", "Required metadata header not specified");
	else if (!ver || !*ver)
		mi_error(r, 400, "invalid_request",
		         "Required query variable 'api-version' is missing");
	else if (!res || !*res)
		mi_error(r, 400, "invalid_request",
		         "Required query variable 'resource' is missing");
	else if (!mi_resource_ok(res))
		mi_error(r, 400, "invalid_resource",
		         "AADSTS500011: The resource principal was not found in the tenant.");
	else if (cid && strcasecmp(cid, mi_id) != 0)
		mi_error(r, 400, "invalid_request", "Identity not found");
	else if (gs_roll(gs.k.token_fault_503_rate)) {
		mi_error(r, 503, "temporarily_unavailable", "IMDS is temporarily unavailable");
		if (gs_retry_after_value(gs.k.fault_503_retry_after_s, ra, sizeof(ra)))
			gs_reply_header(r, "Retry-After", "%s", ra);
	} else {
		const struct gs_token *t =
		    issue_locked(c->tenant, c->tenant_guid, q->mono_ms, gs.k.token_lifetime_s);
		if (!t) {
			mi_error(r, 500, "server_error", "out of memory");
			return;
		}
		gs_ledger_grant_locked(GS_G_MI);
		mi_reply(r, t, mi_id, res, gs.k.token_lifetime_s, q->wall_ms);
	}
}

/* GET /metadata/identity/oauth2/token (Azure IMDS). */
void gs_handle_mi(const struct gs_req *q, struct gs_reply *r)
{
	r->route = GS_R_MI;
	gs_lock();
	mi_locked(q, r);
	gs_unlock();
	gs_ledger_count(r->route, r->status);
}

static void unauthorized(const struct gs_req *q, struct gs_reply *r, const char *msg)
{
	gs_reply_graph_error(r, q, 401, "InvalidAuthenticationToken", "%s", msg);
	gs_reply_header(
	    r, "WWW-Authenticate",
	    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/"
	    "common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"");
}

const struct gs_token *gs_auth_bearer_locked(const struct gs_req *q, struct gs_reply *r)
{
	const char *h = gs_req_header(q, "Authorization");
	void *v = NULL;
	if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
		unauthorized(q, r, "Access token is empty.");
		return NULL;
	}
	if (!lh_table_lookup_ex(tokens, h + 7, &v)) {
		unauthorized(q, r, "IDX14100: JWT is not well formed, there are no dots (.).");
		return NULL;
	}
	const struct gs_token *t = v;
	if (t->expires_mono <= q->mono_ms) {
		unauthorized(q, r, "Lifetime validation failed, the token is expired.");
		return NULL;
	}
	return t;
}
