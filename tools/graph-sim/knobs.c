/*
 * knobs.c - the simulator's configuration (--config file and POST /_sim/config).
 *
 * The JSON of every patch received so far is merged into one object; a new `struct
 * gs_knobs` is built from it from scratch (certificates loaded outside the state lock) and
 * swapped in. A bad patch changes nothing. A knob set to null goes back to its default.
 */
#include <ctype.h>
#include <math.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gsim.h"

struct gs_state gs = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Serialises appliers; the state lock is held only for the swap. */
static pthread_mutex_t apply_mu = PTHREAD_MUTEX_INITIALIZER;
static json_object *merged; /* every knob set so far */
/* When late_users was last set: its users become known after_s from then. */
static int64_t late_users_set_mono;

struct num_knob {
	const char *name;
	size_t off;
	double def, min, max;
};

#define NK(n, f, d, lo, hi)                                                                        \
	{                                                                                          \
		n, offsetof(struct gs_knobs, f), d, lo, hi                                         \
	}
static const struct num_knob num_knobs[] = {
    NK("token_lifetime_s", token_lifetime_s, 3599, 1, 86400),
    NK("limit_per_tenant", limit_per_tenant, 20, 1, 1e9),
    NK("limit_global", limit_global, 200, 1, 1e9),
    NK("limit_window_s", limit_window_s, 10, 0.001, 86400),
    NK("fault_503_rate", fault_503_rate, 0, 0, 1),
    NK("fault_503_retry_after_s", fault_503_retry_after_s, 1, 0, 31536000),
    NK("fault_504_rate", fault_504_rate, 0, 0, 1),
    NK("fault_500_rate", fault_500_rate, 0, 0, 1),
    NK("fault_reset_rate", fault_reset_rate, 0, 0, 1),
    NK("fault_hang_rate", fault_hang_rate, 0, 0, 1),
    NK("hang_s", hang_s, 30, 0, 3600),
    NK("latency_ms", latency_ms, 0, 0, 600000),
    NK("fault_created_504_rate", fault_created_504_rate, 0, 0, 1),
    NK("token_fault_503_rate", token_fault_503_rate, 0, 0, 1),
    NK("fault_cut_busiest_h2_every_s", cut_busiest_h2_every_s, 0, 0, 3600),
    NK("operation_in_progress_after_s", op_in_progress_after_s, 1, 0, 86400),
    NK("operation_done_after_s", op_done_after_s, 3, 0, 86400),
    NK("operation_fail_rate", op_fail_rate, 0, 0, 1),
    NK("hostile_rate", hostile_rate, 1, 0, 1),
    NK("chats_page_size", chats_page_size, 0, 0, 1000),
    NK("clock_skew_s", clock_skew_s, 0, -86400, 86400),
};

static const char *const retry_modes[] = {"integer", "fractional", "absent"};
static const char *const hostile_modes[] = {
    "none",         "oversized_body",   "invalid_json_201", "201_without_id",
    "endless_body", "foreign_location", "retry_after_year", "foreign_next_link"};

static void client_free(struct gs_client *c)
{
	free(c->tenant);
	free(c->client_id);
	free(c->secret);
	free(c->cert_file);
	EVP_PKEY_free(c->cert_key);
	gs_strlist_free(&c->federated);
}

void gs_knobs_free_struct(struct gs_knobs *k)
{
	for (size_t i = 0; i < k->n_clients; i++)
		client_free(&k->clients[i]);
	free(k->clients);
	gs_strlist_free(&k->federated);
	gs_strlist_free(&k->unknown_users);
	for (size_t i = 0; i < k->n_late_users; i++)
		free(k->late_users[i].user);
	free(k->late_users);
	gs_strlist_free(&k->consent_missing);
	for (size_t i = 0; i < k->n_users; i++) {
		free(k->users[i].upn);
		free(k->users[i].mail);
	}
	free(k->users);
	free(k->expected_scope);
	free(k->mi_client_id);
	free(k->foreign_root);
	memset(k, 0, sizeof(*k));
}

static bool strlist_from(json_object *a, struct gs_strlist *out, bool lower, const char *what,
                         char *err, size_t errcap)
{
	if (!json_object_is_type(a, json_type_array)) {
		snprintf(err, errcap, "%s must be an array of strings", what);
		return false;
	}
	size_t n = json_object_array_length(a);
	out->v = calloc(n ? n : 1, sizeof(char *));
	if (!out->v)
		goto oom;
	for (size_t i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(a, i);
		if (!json_object_is_type(e, json_type_string)) {
			snprintf(err, errcap, "%s must be an array of strings", what);
			return false;
		}
		const char *s = json_object_get_string(e);
		out->v[i] = lower ? gs_strdup_lower(s) : strdup(s);
		if (!out->v[i])
			goto oom;
		out->n = i + 1;
	}
	return true;
oom:
	snprintf(err, errcap, "out of memory");
	return false;
}

static bool load_cert(struct gs_client *c, char *err, size_t errcap)
{
	FILE *f = fopen(c->cert_file, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	unsigned int n1 = 0, n2 = 0;
	if (f)
		fclose(f);
	if (!x) {
		snprintf(err, errcap, "cannot read a PEM certificate from %s", c->cert_file);
		return false;
	}
	c->cert_key = X509_get_pubkey(x);
	bool ok = c->cert_key && X509_digest(x, EVP_sha1(), c->x5t, &n1) &&
	          X509_digest(x, EVP_sha256(), c->x5t256, &n2);
	X509_free(x);
	if (!ok)
		snprintf(err, errcap, "cannot use the certificate in %s", c->cert_file);
	return ok;
}

static bool str_field(json_object *o, const char *key, bool required, char **out, char *err,
                      size_t errcap)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null)) {
		if (required)
			snprintf(err, errcap, "clients[]: \"%s\" is required", key);
		return !required;
	}
	if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0) {
		snprintf(err, errcap, "clients[]: \"%s\" must be a non-empty string", key);
		return false;
	}
	*out = strdup(json_object_get_string(v));
	if (!*out)
		snprintf(err, errcap, "out of memory");
	return *out != NULL;
}

static bool client_from(json_object *o, struct gs_client *c, char *err, size_t errcap)
{
	static const char *const keys[] = {
	    "tenant",          "tenant_id", "client_id", "secret", "certificate_pem_file",
	    "federated_tokens"};
	char *tid = NULL;
	if (!json_object_is_type(o, json_type_object)) {
		snprintf(err, errcap, "clients[] entries must be objects");
		return false;
	}
	json_object_object_foreach(o, key, val)
	{
		bool known = false;
		(void)val;
		for (size_t i = 0; i < CP_ARRAY_LEN(keys); i++)
			known |= strcmp(key, keys[i]) == 0;
		if (!known) {
			snprintf(err, errcap, "clients[]: unknown key \"%s\"", key);
			return false;
		}
	}
	if (!str_field(o, "tenant", true, &c->tenant, err, errcap) ||
	    !str_field(o, "client_id", true, &c->client_id, err, errcap) ||
	    !str_field(o, "secret", false, &c->secret, err, errcap) ||
	    !str_field(o, "certificate_pem_file", false, &c->cert_file, err, errcap) ||
	    !str_field(o, "tenant_id", false, &tid, err, errcap))
		goto fail;
	if (tid && !gs_is_guid(tid)) {
		snprintf(err, errcap, "clients[]: tenant_id must be a GUID");
		goto fail;
	}
	if (tid)
		snprintf(c->tenant_guid, sizeof(c->tenant_guid), "%s", tid);
	else if (gs_is_guid(c->tenant))
		snprintf(c->tenant_guid, sizeof(c->tenant_guid), "%s", c->tenant);
	else
		gs_guid_from_name(c->tenant, c->tenant_guid);
	json_object *fed;
	if (json_object_object_get_ex(o, "federated_tokens", &fed) &&
	    !strlist_from(fed, &c->federated, false, "clients[].federated_tokens", err, errcap))
		goto fail;
	if (c->cert_file && !load_cert(c, err, errcap))
		goto fail;
	free(tid);
	return true;
fail:
	free(tid);
	return false;
}

/* {"upn", "mail"?, "id"?}: id defaults to the GUID graph-sim derives from the UPN. */
static bool user_from(json_object *o, struct gs_user *u, char *err, size_t errcap)
{
	json_object *v;
	json_object_object_foreach(o, key, val)
	{
		(void)val;
		if (strcmp(key, "upn") != 0 && strcmp(key, "mail") != 0 && strcmp(key, "id") != 0) {
			snprintf(err, errcap, "users[]: unknown key \"%s\"", key);
			return false;
		}
	}
	if (!json_object_object_get_ex(o, "upn", &v) || !json_object_is_type(v, json_type_string) ||
	    !strchr(json_object_get_string(v), '@')) {
		snprintf(err, errcap, "users[]: \"upn\" must be a user principal name");
		return false;
	}
	u->upn = gs_strdup_lower(json_object_get_string(v));
	if (json_object_object_get_ex(o, "mail", &v) && v &&
	    (!json_object_is_type(v, json_type_string) ||
	     !(u->mail = strdup(json_object_get_string(v))))) {
		snprintf(err, errcap, "users[]: \"mail\" must be a string");
		return false;
	}
	if (!json_object_object_get_ex(o, "id", &v)) {
		if (u->upn)
			gs_guid_from_name(u->upn, u->id);
	} else if (!json_object_is_type(v, json_type_string) ||
	           !gs_is_guid(json_object_get_string(v))) {
		snprintf(err, errcap, "users[]: \"id\" must be a GUID");
		return false;
	} else {
		for (size_t i = 0; i < GS_GUID_LEN; i++)
			u->id[i] = (char)tolower((unsigned char)json_object_get_string(v)[i]);
	}
	if (!u->upn)
		snprintf(err, errcap, "out of memory");
	return u->upn != NULL;
}

static bool users_from(json_object *a, struct gs_knobs *k, char *err, size_t errcap)
{
	if (!json_object_is_type(a, json_type_array)) {
		snprintf(err, errcap, "users must be an array of objects");
		return false;
	}
	size_t n = json_object_array_length(a);
	k->users = calloc(n ? n : 1, sizeof(*k->users));
	if (!k->users) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		json_object *o = json_object_array_get_idx(a, i);
		k->n_users = i + 1;
		if (!json_object_is_type(o, json_type_object)) {
			snprintf(err, errcap, "users[] entries must be objects");
			return false;
		}
		if (!user_from(o, &k->users[i], err, errcap))
			return false;
	}
	return true;
}

static bool clients_from(json_object *a, struct gs_knobs *k, char *err, size_t errcap)
{
	if (!json_object_is_type(a, json_type_array)) {
		snprintf(err, errcap, "clients must be an array");
		return false;
	}
	size_t n = json_object_array_length(a);
	k->clients = calloc(n ? n : 1, sizeof(*k->clients));
	if (!k->clients) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		k->n_clients = i + 1;
		if (!client_from(json_object_array_get_idx(a, i), &k->clients[i], err, errcap))
			return false;
	}
	return true;
}

static bool default_client(struct gs_knobs *k)
{
	k->clients = calloc(1, sizeof(*k->clients));
	if (!k->clients)
		return false;
	k->n_clients = 1;
	struct gs_client *c = &k->clients[0];
	c->tenant = strdup("contoso.onmicrosoft.com");
	c->client_id = strdup("00000000-0000-0000-0000-000000000001");
	c->secret = strdup("sim-secret");
	gs_guid_from_name(c->tenant, c->tenant_guid);
	return c->tenant && c->client_id && c->secret;
}

/* late_users: [{"user": id or UPN, "after_s": seconds after the knob was set}]. */
static bool late_users_from(json_object *a, struct gs_knobs *k, char *err, size_t errcap)
{
	static const char what[] = "late_users must be an array of {\"user\": string, "
	                           "\"after_s\": number 0..86400}";
	if (!json_object_is_type(a, json_type_array)) {
		snprintf(err, errcap, "%s", what);
		return false;
	}
	size_t n = json_object_array_length(a);
	k->late_users = calloc(n ? n : 1, sizeof(*k->late_users));
	if (!k->late_users) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(a, i), *user, *after;
		if (!json_object_is_type(e, json_type_object) || json_object_object_length(e) != 2 ||
		    !json_object_object_get_ex(e, "user", &user) ||
		    !json_object_is_type(user, json_type_string) ||
		    !json_object_object_get_ex(e, "after_s", &after) ||
		    !(json_object_is_type(after, json_type_int) ||
		      json_object_is_type(after, json_type_double))) {
			snprintf(err, errcap, "%s", what);
			return false;
		}
		double s = json_object_get_double(after);
		if (!isfinite(s) || s < 0 || s > 86400) {
			snprintf(err, errcap, "%s", what);
			return false;
		}
		struct gs_late_user *u = &k->late_users[i];
		u->user = gs_strdup_lower(json_object_get_string(user));
		if (!u->user) {
			snprintf(err, errcap, "out of memory");
			return false;
		}
		u->known_at_mono = late_users_set_mono + (int64_t)(s * 1000);
		k->n_late_users = i + 1;
	}
	return true;
}

static int enum_index(const char *const *names, size_t n, json_object *v)
{
	if (!json_object_is_type(v, json_type_string))
		return -1;
	for (size_t i = 0; i < n; i++)
		if (strcmp(json_object_get_string(v), names[i]) == 0)
			return (int)i;
	return -1;
}

static bool num_knob(const struct num_knob *d, json_object *v, struct gs_knobs *k, char *err,
                     size_t errcap)
{
	double x = json_object_get_double(v);
	if (!(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)) ||
	    !isfinite(x) || x < d->min || x > d->max) {
		snprintf(err, errcap, "%s must be a number in %g..%g", d->name, d->min, d->max);
		return false;
	}
	*(double *)((char *)k + d->off) = x;
	return true;
}

static bool str_knob(json_object *v, char **out, const char *name, char *err, size_t errcap)
{
	if (!json_object_is_type(v, json_type_string)) {
		snprintf(err, errcap, "%s must be a string", name);
		return false;
	}
	*out = strdup(json_object_get_string(v));
	return *out != NULL;
}

/* One knob of the merged object into k. */
static bool set_knob(const char *key, json_object *v, struct gs_knobs *k, char *err, size_t errcap)
{
	for (size_t i = 0; i < CP_ARRAY_LEN(num_knobs); i++)
		if (strcmp(key, num_knobs[i].name) == 0)
			return num_knob(&num_knobs[i], v, k, err, errcap);
	if (strcmp(key, "clients") == 0)
		return clients_from(v, k, err, errcap);
	if (strcmp(key, "users") == 0)
		return users_from(v, k, err, errcap);
	if (strcmp(key, "federated_tokens") == 0)
		return strlist_from(v, &k->federated, false, key, err, errcap);
	if (strcmp(key, "unknown_users") == 0)
		return strlist_from(v, &k->unknown_users, true, key, err, errcap);
	if (strcmp(key, "late_users") == 0)
		return late_users_from(v, k, err, errcap);
	if (strcmp(key, "consent_missing") == 0)
		return strlist_from(v, &k->consent_missing, true, key, err, errcap);
	if (strcmp(key, "expected_scope") == 0)
		return str_knob(v, &k->expected_scope, key, err, errcap);
	if (strcmp(key, "managed_identity_client_id") == 0)
		return str_knob(v, &k->mi_client_id, key, err, errcap);
	if (strcmp(key, "foreign_location_root") == 0)
		return str_knob(v, &k->foreign_root, key, err, errcap);
	if (strcmp(key, "retry_after_mode") == 0) {
		int i = enum_index(retry_modes, CP_ARRAY_LEN(retry_modes), v);
		if (i < 0)
			snprintf(err, errcap, "retry_after_mode must be integer|fractional|absent");
		k->retry_mode = (enum gs_retry_mode)(i < 0 ? 0 : i);
		return i >= 0;
	}
	if (strcmp(key, "hostile_mode") == 0) {
		int i = enum_index(hostile_modes, CP_ARRAY_LEN(hostile_modes), v);
		if (i < 0)
			snprintf(err, errcap, "unknown hostile_mode");
		k->hostile = (enum gs_hostile)(i < 0 ? 0 : i);
		return i >= 0;
	}
	snprintf(err, errcap, "unknown knob \"%s\"", key);
	return false;
}

static bool build(json_object *cfg, struct gs_knobs *k, char *err, size_t errcap)
{
	memset(k, 0, sizeof(*k));
	for (size_t i = 0; i < CP_ARRAY_LEN(num_knobs); i++)
		*(double *)((char *)k + num_knobs[i].off) = num_knobs[i].def;
	json_object_object_foreach(cfg, key, val)
	{
		if (!set_knob(key, val, k, err, errcap))
			return false;
	}
	if (k->op_done_after_s < k->op_in_progress_after_s) {
		snprintf(err, errcap, "operation_done_after_s < operation_in_progress_after_s");
		return false;
	}
	if (k->n_clients == 0 && !default_client(k)) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	return true;
}

bool gs_knobs_apply(json_object *patch, char *err, size_t errcap)
{
	struct gs_knobs k;
	json_object *next = NULL;
	if (!json_object_is_type(patch, json_type_object)) {
		snprintf(err, errcap, "the configuration must be a JSON object");
		return false;
	}
	pthread_mutex_lock(&apply_mu);
	int64_t late_before = late_users_set_mono;
	if (json_object_object_get_ex(patch, "late_users", NULL))
		late_users_set_mono = gs_mono_ms(); /* their clocks start now */
	if (json_object_deep_copy(merged, &next, NULL) != 0)
		goto fail;
	json_object_object_foreach(patch, key, val)
	{
		if (json_object_is_type(val, json_type_null))
			json_object_object_del(next, key);
		else
			json_object_object_add(next, key, json_object_get(val));
	}
	if (!build(next, &k, err, errcap)) {
		gs_knobs_free_struct(&k);
		goto fail;
	}
	gs_lock();
	struct gs_knobs old = gs.k;
	gs.k = k;
	gs_throttle_reset_locked();
	gs_unlock();
	gs_knobs_free_struct(&old);
	json_object_put(merged);
	merged = next;
	pthread_mutex_unlock(&apply_mu);
	return true;
fail:
	late_users_set_mono = late_before;
	json_object_put(next);
	pthread_mutex_unlock(&apply_mu);
	return false;
}

bool gs_knobs_init(void)
{
	char err[256];
	merged = json_object_new_object();
	return merged && build(merged, &gs.k, err, sizeof(err));
}

void gs_knobs_shutdown(void)
{
	gs_knobs_free_struct(&gs.k);
	json_object_put(merged);
	merged = NULL;
}

json_object *gs_knobs_to_json(void)
{
	json_object *o = json_object_new_object();
	pthread_mutex_lock(&apply_mu);
	gs_lock();
	for (size_t i = 0; i < CP_ARRAY_LEN(num_knobs); i++)
		json_object_object_add(
		    o, num_knobs[i].name,
		    json_object_new_double(*(double *)((char *)&gs.k + num_knobs[i].off)));
	json_object_object_add(o, "retry_after_mode",
	                       json_object_new_string(retry_modes[gs.k.retry_mode]));
	json_object_object_add(o, "hostile_mode",
	                       json_object_new_string(hostile_modes[gs.k.hostile]));
	json_object *cl = json_object_new_array();
	for (size_t i = 0; i < gs.k.n_clients; i++) {
		json_object *c = json_object_new_object();
		json_object_object_add(c, "tenant", json_object_new_string(gs.k.clients[i].tenant));
		json_object_object_add(c, "tenant_id",
		                       json_object_new_string(gs.k.clients[i].tenant_guid));
		json_object_object_add(c, "client_id",
		                       json_object_new_string(gs.k.clients[i].client_id));
		json_object_object_add(c, "has_certificate",
		                       json_object_new_boolean(gs.k.clients[i].cert_key != NULL));
		json_object_array_add(cl, c);
	}
	json_object_object_add(o, "clients", cl);
	gs_unlock();
	json_object_object_foreach(merged, key, val)
	{
		if (strcmp(key, "unknown_users") == 0 || strcmp(key, "late_users") == 0 ||
		    strcmp(key, "consent_missing") == 0 || strcmp(key, "users") == 0 ||
		    strcmp(key, "expected_scope") == 0 ||
		    strcmp(key, "managed_identity_client_id") == 0 ||
		    strcmp(key, "foreign_location_root") == 0)
			json_object_object_add(o, key, json_object_get(val));
	}
	pthread_mutex_unlock(&apply_mu);
	return o;
}

const struct gs_user *gs_knobs_user(const struct gs_knobs *k, const char *upn_or_id)
{
	for (size_t i = 0; i < k->n_users; i++)
		if (strcasecmp(k->users[i].upn, upn_or_id) == 0 ||
		    strcasecmp(k->users[i].id, upn_or_id) == 0)
			return &k->users[i];
	return NULL;
}

/* A client of that tenant (name or GUID) with that id. */
const struct gs_client *gs_knobs_client(const struct gs_knobs *k, const char *tenant,
                                        const char *client_id)
{
	for (size_t i = 0; i < k->n_clients; i++) {
		const struct gs_client *c = &k->clients[i];
		if ((strcasecmp(c->tenant, tenant) == 0 ||
		     strcasecmp(c->tenant_guid, tenant) == 0) &&
		    strcasecmp(c->client_id, client_id) == 0)
			return c;
	}
	return NULL;
}

bool gs_knobs_tenant_known(const struct gs_knobs *k, const char *tenant, const char **canonical,
                           const char **guid)
{
	for (size_t i = 0; i < k->n_clients; i++) {
		const struct gs_client *c = &k->clients[i];
		if (strcasecmp(c->tenant, tenant) == 0 || strcasecmp(c->tenant_guid, tenant) == 0) {
			*canonical = c->tenant;
			*guid = c->tenant_guid;
			return true;
		}
	}
	return false;
}
