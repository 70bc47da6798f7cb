/* plan.c - validate, build and count events the way the daemon would; ETA per tenant. */
#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chatreq.h"
#include "cpjson.h"
#include "eta.h"
#include "event.h"
#include "pacer.h"

struct plan {
	const struct cfg *cfg;
	struct chatreq_roots roots;
	struct event_limits limits;
	size_t events, valid, rejected;
	size_t chats[CFG_MAX_TENANTS];
};

bool plan_new(const struct cfg *cfg, struct plan **out, char *err, size_t errcap)
{
	struct plan *p = calloc(1, sizeof *p);
	if (!p) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	p->cfg = cfg;
	p->limits = chatreq_event_limits(cfg);
	if (!chatreq_roots(cfg, &p->roots)) {
		snprintf(err, errcap, "graph root too long");
		free(p);
		return false;
	}
	*out = p;
	return true;
}

void plan_free(struct plan *p)
{
	free(p);
}

size_t plan_rejected(const struct plan *p)
{
	return p->rejected;
}

static json_object *request_json(const struct plan *p, const struct chatreq *req)
{
	json_object *r = json_object_new_object(), *h = json_object_new_object();
	json_object *body = json_tokener_parse(req->body);
	if (!r || !h || !body)
		goto fail;
	bool ok =
	    cpjson_put(h, "client-request-id", json_object_new_string(req->client_request_id));
	if (!ok || !cpjson_put(r, "method", json_object_new_string("POST")) ||
	    !cpjson_put(r, "url", json_object_new_string(p->roots.chats_url)))
		goto fail;
	ok = cpjson_put(r, "headers", h);
	h = NULL;
	ok = ok && cpjson_put(r, "body", body);
	body = NULL;
	if (!ok)
		goto fail;
	return r;
fail:
	json_object_put(body);
	json_object_put(h);
	json_object_put(r);
	return NULL;
}

static bool valid_json(struct plan *p, const struct event_request *ev, const struct chatreq *req,
                       json_object *o)
{
	p->valid++;
	p->chats[req->tenant]++;
	return cpjson_put(o, "id", json_object_new_string(ev->id)) &&
	       cpjson_put(o, "status", json_object_new_string("valid")) &&
	       cpjson_put(o, "tenant", json_object_new_string(p->cfg->tenants[req->tenant].name)) &&
	       cpjson_put(o, "request", request_json(p, req));
}

static bool rejected_json(struct plan *p, const void *buf, size_t len,
                          const struct event_request *ev, const char *reason, json_object *o)
{
	char id[EVENT_ID_MAX_CHARS * 4 + 1];
	p->rejected++;
	json_object *idv = NULL;
	if (ev)
		idv = json_object_new_string(ev->id);
	else if (event_peek_id(buf, len, id, sizeof id))
		idv = json_object_new_string(id);
	if (json_object_object_add(o, "id", idv) != 0) {
		json_object_put(idv);
		return false;
	}
	return cpjson_put(o, "status", json_object_new_string("rejected")) &&
	       cpjson_put(o, "reason", json_object_new_string(reason));
}

bool plan_event(struct plan *p, const void *buf, size_t len, json_object **out)
{
	char reason[EVENT_REASON_SIZE * 2];
	struct event_request *ev = NULL;
	struct chatreq req = {0};
	bool ok = false;
	json_object *o = json_object_new_object();
	if (!o)
		return false;
	p->events++;
	if (event_decode(buf, len, &p->limits, &ev, reason, sizeof reason) &&
	    chatreq_prepare(p->cfg, p->roots.bind_root, ev, &req, reason, sizeof reason))
		ok = valid_json(p, ev, &req, o);
	else if (strcmp(reason, "out of memory") != 0)
		ok = rejected_json(p, buf, len, ev, reason, o);
	free(req.body);
	event_free(ev);
	if (!ok) {
		json_object_put(o);
		return false;
	}
	*out = o;
	return true;
}

/* Seconds to a tenth; null (json-c's NULL) when never. */
static bool put_eta(json_object *obj, const char *key, double eta_s)
{
	if (!isfinite(eta_s))
		return json_object_object_add(obj, key, NULL) == 0;
	return cpjson_put(obj, key, json_object_new_double(round(eta_s * 10) / 10));
}

/* Tenant i's limit per window: its own, else the [limits] default (as the scheduler does). */
static double tenant_limit(const struct cfg *cfg, size_t i)
{
	double limit = cfg->tenants[i].limits.chat_creates_per_10s_per_tenant;
	return limit > 0 ? limit : cfg->tenants[0].limits.chat_creates_per_10s_per_tenant;
}

static bool tenants_json(const struct plan *p, const struct eta_tenant *t,
                         json_object *tenants)
{
	for (size_t i = 0; i < p->cfg->n_tenants; i++) {
		if (!p->chats[i])
			continue;
		json_object *o = json_object_new_object();
		if (!cpjson_put(tenants, p->cfg->tenants[i].name, o) ||
		    !cpjson_put(o, "chats", json_object_new_int64((int64_t)p->chats[i])) ||
		    !put_eta(o, "etaSeconds", t[i].eta_s))
			return false;
	}
	return true;
}

bool plan_summary(struct plan *p, json_object **out)
{
	const struct cfg *cfg = p->cfg;
	struct eta_tenant t[CFG_MAX_TENANTS];
	double eta = 0, global = cfg->limits.chat_creates_per_10s_global;
	for (size_t i = 0; i < cfg->n_tenants; i++) {
		double limit = tenant_limit(cfg, i);
		t[i] = (struct eta_tenant){.events = (double)p->chats[i],
		                                 .rate = limit,
		                                 .tokens = eta_first_burst(limit,
		                                                            PACER_SLOW_START_TOKENS)};
	}
	if (!eta_compute(t, cfg->n_tenants, global, eta_full_bucket(global), cfg->limits.window_s,
	               &eta))
		return false;
	json_object *s = json_object_new_object(), *tenants = json_object_new_object();
	if (!s || !tenants) {
		json_object_put(s);
		json_object_put(tenants);
		return false;
	}
	bool ok = cpjson_put(s, "events", json_object_new_int64((int64_t)p->events)) &&
	          cpjson_put(s, "valid", json_object_new_int64((int64_t)p->valid)) &&
	          cpjson_put(s, "rejected", json_object_new_int64((int64_t)p->rejected)) &&
	          tenants_json(p, t, tenants);
	/* cpjson_put() takes tenants, then s, in every case. */
	ok = cpjson_put(s, "tenants", tenants) && ok && put_eta(s, "etaSeconds", eta);
	json_object *root = json_object_new_object();
	if (!root) {
		json_object_put(s);
		return false;
	}
	if (!cpjson_put(root, "summary", s) || !ok) {
		json_object_put(root);
		return false;
	}
	*out = root;
	return true;
}
