/*
 * ledger.c - what the simulator saw (request counts, token grants and failures, throttling,
 * Retry-After violations), the throttling buckets, and the /_sim/ control endpoints.
 *
 * Throttling follows the Teams limits: a token bucket per tenant and one global bucket,
 * both full at start and refilled continuously at limit/window per second. A request
 * needs a token from both; a refused one takes none and learns (Retry-After) when the
 * emptier bucket will hold a token again.
 */
#include <json-c/linkhash.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gsim.h"

#define STATUS_SLOTS       600
#define FAILURE_CODES      64
#define VIOLATION_GRACE_MS 50
/* Violations recorded one by one in the ledger (the count goes on beyond). */
#define VIOLATIONS_KEPT 1000

static const char *const route_names[GS_R_COUNT] = {
    [GS_R_TOKEN] = "POST /{tenant}/oauth2/v2.0/token",
    [GS_R_MI] = "GET /metadata/identity/oauth2/token",
    [GS_R_CHATS_POST] = "POST /{version}/chats",
    [GS_R_CHATS_LIST] = "GET /{version}/chats",
    [GS_R_CHAT_GET] = "GET /{version}/chats/{id}",
    [GS_R_OP_GET] = "GET /{version}/chats/{id}/operations/{opId}",
    [GS_R_USER_CHATS] = "GET /{version}/users/{id}/chats",
    [GS_R_USER_GET] = "GET /{version}/users/{id}",
    [GS_R_CHAT_MEMBERS] = "GET /{version}/chats/{id}/members",
    [GS_R_OTHER] = "other",
};

static const char *const grant_names[GS_G_COUNT] = {
    [GS_G_SECRET] = "client_secret",
    [GS_G_CERT] = "client_assertion_certificate",
    [GS_G_FEDERATED] = "client_assertion_federated",
    [GS_G_MI] = "managed_identity",
};

struct bucket {
	double tokens;
	int64_t last_ms;
	int64_t retry_until_ms; /* advertised Retry-After deadline, 0: none */
	int64_t retry_given_ms; /* when that Retry-After was given */
	char tenant[];
};

static uint64_t counts[GS_R_COUNT][STATUS_SLOTS]; /* atomics: counted outside the lock */
static uint64_t grants[GS_G_COUNT];
static struct {
	int code;
	uint64_t n;
} failures[FAILURE_CODES];
static uint64_t throttled, violations;
/* The first VIOLATIONS_KEPT requests that arrived inside an advertised Retry-After. */
static struct violation {
	char tenant[64];
	char crid[64];
	int64_t after_given_ms, before_end_ms;
} violation_list[VIOLATIONS_KEPT];
static uint64_t connections_accepted, connections_cut; /* atomics: counted outside the lock */
static struct lh_table *buckets; /* tenant -> struct bucket */
static struct bucket global_bucket;

void gs_ledger_count(enum gs_route route, unsigned status)
{
	if (status < STATUS_SLOTS)
		__atomic_fetch_add(&counts[route][status], 1, __ATOMIC_RELAXED);
}

void gs_ledger_connection_accepted(void)
{
	__atomic_fetch_add(&connections_accepted, 1, __ATOMIC_RELAXED);
}

void gs_ledger_connection_cut(void)
{
	__atomic_fetch_add(&connections_cut, 1, __ATOMIC_RELAXED);
}

void gs_ledger_grant_locked(enum gs_grant g)
{
	grants[g]++;
}

void gs_ledger_failure_locked(int aadsts)
{
	for (size_t i = 0; i < FAILURE_CODES; i++) {
		if (failures[i].code == aadsts || failures[i].code == 0) {
			failures[i].code = aadsts;
			failures[i].n++;
			return;
		}
	}
}

static void bucket_free(struct lh_entry *e)
{
	free((void *)lh_entry_v(e));
}

void gs_throttle_reset_locked(void)
{
	if (buckets)
		lh_table_free(buckets);
	buckets = lh_kchar_table_new(64, bucket_free);
	global_bucket.tokens = gs.k.limit_global;
	global_bucket.last_ms = gs_mono_ms();
	global_bucket.retry_until_ms = 0;
}

static struct bucket *tenant_bucket(const char *tenant, int64_t now)
{
	void *v;
	if (buckets && lh_table_lookup_ex(buckets, tenant, &v))
		return v;
	size_t len = strlen(tenant);
	struct bucket *b = calloc(1, sizeof(*b) + len + 1);
	if (!b || !buckets)
		return b ? (free(b), NULL) : NULL;
	memcpy(b->tenant, tenant, len + 1);
	b->tokens = gs.k.limit_per_tenant;
	b->last_ms = now;
	if (lh_table_insert(buckets, b->tenant, b) != 0) {
		free(b);
		return NULL;
	}
	return b;
}

static void refill(struct bucket *b, double limit, int64_t now)
{
	double per_ms = limit / (gs.k.limit_window_s * 1000.0);
	if (now > b->last_ms)
		b->tokens = fmin(limit, b->tokens + (double)(now - b->last_ms) * per_ms);
	b->last_ms = now;
}

/* Seconds until the bucket holds one token. */
static double wait_s(const struct bucket *b, double limit)
{
	return (1.0 - b->tokens) * gs.k.limit_window_s / limit;
}

bool gs_throttle_admit_locked(const char *tenant, int64_t now_ms, double *retry_after_s)
{
	struct bucket *b = tenant_bucket(tenant, now_ms);
	if (!b) {
		*retry_after_s = 1;
		return false;
	}
	refill(b, gs.k.limit_per_tenant, now_ms);
	refill(&global_bucket, gs.k.limit_global, now_ms);
	if (b->tokens >= 1 && global_bucket.tokens >= 1) {
		b->tokens -= 1;
		global_bucket.tokens -= 1;
		return true;
	}
	double w = 0;
	if (b->tokens < 1)
		w = wait_s(b, gs.k.limit_per_tenant);
	if (global_bucket.tokens < 1)
		w = fmax(w, wait_s(&global_bucket, gs.k.limit_global));
	*retry_after_s = w;
	throttled++;
	return false;
}

void gs_throttle_note_retry_locked(const char *tenant, int64_t until_ms)
{
	struct bucket *b = tenant_bucket(tenant, gs_mono_ms());
	if (b && until_ms > b->retry_until_ms) {
		b->retry_until_ms = until_ms;
		b->retry_given_ms = gs_mono_ms();
	}
}

void gs_throttle_check_violation_locked(const char *tenant, const char *crid, int64_t now_ms)
{
	void *v;
	if (!buckets || !lh_table_lookup_ex(buckets, tenant, &v))
		return;
	const struct bucket *b = v;
	if (!b->retry_until_ms || now_ms + VIOLATION_GRACE_MS >= b->retry_until_ms)
		return;
	if (violations < VIOLATIONS_KEPT) {
		struct violation *r = &violation_list[violations];
		snprintf(r->tenant, sizeof(r->tenant), "%s", tenant);
		snprintf(r->crid, sizeof(r->crid), "%s", crid ? crid : "");
		r->after_given_ms = now_ms - b->retry_given_ms;
		r->before_end_ms = b->retry_until_ms - now_ms;
	}
	violations++;
}

static json_object *violations_json(void)
{
	json_object *a = json_object_new_array();
	for (uint64_t i = 0; i < violations && i < VIOLATIONS_KEPT; i++) {
		const struct violation *r = &violation_list[i];
		json_object *o = json_object_new_object();
		json_object_object_add(o, "tenant", json_object_new_string(r->tenant));
		json_object_object_add(o, "client_request_id", json_object_new_string(r->crid));
		json_object_object_add(o, "after_given_ms", json_object_new_int64(r->after_given_ms));
		json_object_object_add(o, "before_end_ms", json_object_new_int64(r->before_end_ms));
		json_object_array_add(a, o);
	}
	return a;
}

/* Integer: whole seconds rounded up; fractional: milliseconds ("2.128"). Under the lock. */
bool gs_retry_after_value(double seconds, char *buf, size_t cap)
{
	switch (gs.k.retry_mode) {
	case GS_RA_INTEGER:
		snprintf(buf, cap, "%.0f", fmax(1, ceil(seconds - 1e-9)));
		return true;
	case GS_RA_FRACTIONAL:
		snprintf(buf, cap, "%.3f", fmax(0.001, seconds));
		return true;
	case GS_RA_ABSENT:
		break;
	}
	return false;
}

void gs_ledger_reset_locked(void)
{
	memset(counts, 0, sizeof(counts));
	memset(grants, 0, sizeof(grants));
	memset(failures, 0, sizeof(failures));
	throttled = violations = 0;
	__atomic_store_n(&connections_accepted, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&connections_cut, 0, __ATOMIC_RELAXED);
	gs_throttle_reset_locked();
}

static json_object *requests_json(void)
{
	json_object *o = json_object_new_object();
	for (int r = 0; r < GS_R_COUNT; r++) {
		json_object *st = NULL;
		for (int s = 0; s < STATUS_SLOTS; s++) {
			uint64_t n = __atomic_load_n(&counts[r][s], __ATOMIC_RELAXED);
			if (!n)
				continue;
			char key[16];
			snprintf(key, sizeof(key), "%d", s);
			if (!st)
				st = json_object_new_object();
			json_object_object_add(st,
			                       s == GS_ST_RESET  ? "reset"
			                       : s == GS_ST_HANG ? "hang"
			                                         : key,
			                       json_object_new_int64((int64_t)n));
		}
		if (st)
			json_object_object_add(o, route_names[r], st);
	}
	return o;
}

json_object *gs_ledger_json_locked(void)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "requests", requests_json());
	json_object *chats = gs_chats_ledger_locked(); /* {chats, chat_posts, duplicate_...} */
	json_object_object_foreach(chats, key, val)
	{
		json_object_object_add(o, key, json_object_get(val));
	}
	json_object_put(chats);
	json_object_object_add(o, "operations", gs_ops_ledger_locked());
	json_object_object_add(o, "retry_after_violations",
	                       json_object_new_int64((int64_t)violations));
	json_object_object_add(o, "retry_after_violators", violations_json());
	json_object_object_add(o, "throttled", json_object_new_int64((int64_t)throttled));
	json_object_object_add(o, "connections_accepted",
	                       json_object_new_int64((int64_t)__atomic_load_n(&connections_accepted,
	                                                                      __ATOMIC_RELAXED)));
	json_object_object_add(
	    o, "connections_cut",
	    json_object_new_int64((int64_t)__atomic_load_n(&connections_cut, __ATOMIC_RELAXED)));
	json_object *g = json_object_new_object();
	for (int i = 0; i < GS_G_COUNT; i++)
		json_object_object_add(g, grant_names[i],
		                       json_object_new_int64((int64_t)grants[i]));
	json_object_object_add(o, "token_grants", g);
	json_object *f = json_object_new_object();
	for (size_t i = 0; i < FAILURE_CODES && failures[i].code; i++) {
		char code[24];
		snprintf(code, sizeof(code), "AADSTS%d", failures[i].code);
		json_object_object_add(f, code, json_object_new_int64((int64_t)failures[i].n));
	}
	json_object_object_add(o, "token_failures", f);
	json_object_object_add(o, "issued_tokens", gs_auth_tokens_ledger_locked());
	return o;
}

static void plain_json(struct gs_reply *r, unsigned status, const char *key, const char *msg)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, key, json_object_new_string(msg));
	gs_reply_json(r, status, o);
}

static void sim_config(const struct gs_req *q, struct gs_reply *r)
{
	char err[256];
	json_tokener *tok = json_tokener_new();
	json_object *patch = tok ? json_tokener_parse_ex(tok, q->body, (int)q->body_len) : NULL;
	if (!patch || json_tokener_get_error(tok) != json_tokener_success) {
		plain_json(r, 400, "error", "the body is not JSON");
	} else if (!gs_knobs_apply(patch, err, sizeof(err))) {
		plain_json(r, 400, "error", err);
	} else {
		gs_reply_json(r, 200, gs_knobs_to_json());
	}
	json_object_put(patch);
	if (tok)
		json_tokener_free(tok);
}

/* /_sim/health, /_sim/ledger, /_sim/config, /_sim/reset: not counted in the ledger. */
void gs_handle_sim(const struct gs_req *q, struct gs_reply *r, const char *rest)
{
	bool get = strcmp(q->method, "GET") == 0, post = strcmp(q->method, "POST") == 0;
	r->route = GS_R_OTHER;
	if (get && strcmp(rest, "health") == 0) {
		r->status = 200;
		r->body = strdup("{\"status\":\"ok\"}");
		r->len = r->body ? strlen(r->body) : 0;
		r->content_type = "application/json";
	} else if (get && strcmp(rest, "ledger") == 0) {
		gs_lock();
		json_object *o = gs_ledger_json_locked();
		gs_unlock();
		gs_reply_json(r, 200, o);
	} else if (get && strcmp(rest, "config") == 0) {
		gs_reply_json(r, 200, gs_knobs_to_json());
	} else if (post && strcmp(rest, "config") == 0) {
		sim_config(q, r);
	} else if (post && strcmp(rest, "reset") == 0) {
		gs_lock();
		gs_ledger_reset_locked();
		gs_chats_reset_locked();
		gs_unlock();
		plain_json(r, 200, "status", "reset");
	} else {
		plain_json(r, 404, "error", "unknown /_sim/ endpoint");
	}
}
