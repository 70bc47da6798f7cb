/*
 * auth.c - token caches per credential profile and the one refresh thread behind them.
 *
 * Locking: everything a worker can see (token, expiry, state, errors, stats) lives in
 * struct auth_profile under auth.mu. The refresh thread copies what it needs from the cfg
 * into a snapshot under the lock and then talks to the network without it, so workers never
 * wait for I/O and auth_reload can swap the cfg at any time. The notify callback runs
 * without the lock held: it wakes worker loops, which may be calling auth_get_token.
 */
#include "auth.h"

#include <curl/curl.h>
#include <errno.h>
#include <json-c/json.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cptime.h"
#include "dynbuf.h"
#include "jwt.h"
#include "log.h"
#include "secretfile.h"
#include "tls.h"

#define NOT_SCHEDULED      INT64_MAX
#define BACKOFF_MIN_MS     500
#define BACKOFF_MAX_MS     30000
#define FAILED_RETRY_MS    30000 /* plus up to as much again of jitter */
#define INVALIDATE_GAP_MS  1000  /* a 401 storm cannot turn into a token request storm */
#define EXPIRY_MARGIN_MS   2000  /* stop handing out a token this long before it expires */
#define FEDERATED_MAX      (16 * 1024)
#define DEFAULT_CONNECT_MS 10000
#define DEFAULT_REQUEST_MS 30000
#define EXPIRES_IN_MAX     (7 * 86400)
#define ERROR_MAX          1024 /* room for AAD's description plus our hint */
#define JWT_BEARER         "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

struct auth_profile {
	/* Guarded by auth.mu. */
	char token[AUTH_TOKEN_BUF]; /* "" = none */
	int64_t expires_epoch_ms, expires_mono_ms, lifetime_ms, obtained_mono_ms;
	bool demanded;       /* somebody asked: keep it fresh from now on */
	bool in_flight;      /* a request is on the wire (at most one per profile) */
	bool failed;         /* last attempt failed permanently */
	int64_t next_due_ms; /* monotonic time of the next request, NOT_SCHEDULED if none */
	unsigned backoff_n;
	uint64_t gen; /* reload generation the in-flight request was built with */
	char last_error[ERROR_MAX];
	char logged_key[128]; /* the failure last logged: each distinct one is logged once */
	uint64_t refreshes, failures;

	/* Owned by the refresh thread. */
	CURL *easy;
	struct curl_slist *headers;
	struct dynbuf form, resp; /* secret buffers: the form and the answer hold credentials */
	char curl_err[CURL_ERROR_SIZE];
	bool managed;
};

/* What one request needs from the cfg, copied under the lock. */
struct snapshot {
	struct cfg_tenant t;
	char scope[CFG_VALUE_MAX];
	char ca_file[CFG_VALUE_MAX];
	long connect_ms, request_ms;
	uint64_t gen;
};

enum outcome_kind { OUT_OK, OUT_TRANSIENT, OUT_PERMANENT };

struct outcome {
	enum outcome_kind kind;
	char key[128];
	char msg[ERROR_MAX];
};

struct auth {
	pthread_mutex_t mu;
	const struct cfg *cfg;
	uint64_t gen;
	size_t n;
	struct auth_profile *p;
	void (*notify)(void *arg);
	void *notify_arg;
	bool stop, started;
	pthread_t thread;
	/* Owned by the refresh thread. */
	CURLM *multi;
	struct snapshot snap;
	struct auth_token_response resp;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static uint32_t random_u32(void)
{
	uint32_t r;
	if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
		r = (uint32_t)cptime_mono_ms() * 2654435761u;
	return r;
}

/* Exponential backoff with jitter: half fixed, half random, within 0.5 s .. 30 s. */
static int64_t backoff_ms(unsigned n)
{
	int64_t d = BACKOFF_MIN_MS;
	for (unsigned i = 0; i < n && d < BACKOFF_MAX_MS; i++)
		d *= 2;
	d = d < BACKOFF_MAX_MS ? d : BACKOFF_MAX_MS;
	d = d / 2 + (int64_t)(random_u32() % (uint32_t)(d / 2 + 1));
	return d < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : d;
}

/*
 * When to refresh a token of lifetime L: token_refresh_ahead_s before expiry, but between
 * 50% and 80% of L, so short lifetimes (tests, 10 s) are still refreshed ahead of time.
 */
static int64_t refresh_delay_ms(int64_t lifetime_ms, double ahead_s)
{
	int64_t d = lifetime_ms - (int64_t)(ahead_s * 1000.0);
	int64_t lo = lifetime_ms / 2, hi = lifetime_ms * 8 / 10;
	return d < lo ? lo : d > hi ? hi : d;
}

static bool token_valid(const struct auth_profile *p, int64_t now_ms)
{
	int64_t margin = p->lifetime_ms / 10;
	margin = margin < EXPIRY_MARGIN_MS ? margin : EXPIRY_MARGIN_MS;
	return p->token[0] && now_ms < p->expires_mono_ms - margin;
}

static void drop_token(struct auth_profile *p)
{
	OPENSSL_cleanse(p->token, sizeof p->token);
	p->expires_epoch_ms = p->expires_mono_ms = p->lifetime_ms = 0;
}

static void wake(struct auth *a)
{
	if (a->multi)
		curl_multi_wakeup(a->multi);
}

/* ---- token response parser ---------------------------------------------------------------- */

static void copy_first_line(char *dst, size_t cap, const char *src)
{
	size_t n = strcspn(src, "\r\n");
	n = n < cap - 1 ? n : cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/*
 * Entra appends "Trace ID: … Correlation ID: … Timestamp: …" to a description, on lines of
 * their own or (some proxies, graph-sim) on the same line: per-request noise in a log line.
 */
static void copy_description(char *dst, size_t cap, const char *src)
{
	copy_first_line(dst, cap, src);
	char *trace = strstr(dst, " Trace ID:");
	if (trace)
		*trace = '\0';
}

static const char *get_string(struct json_object *root, const char *key)
{
	struct json_object *v;
	if (!json_object_object_get_ex(root, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* expires_in: a JSON number (Entra ID) or a numeric string (IMDS, ADFS). */
static bool parse_expires_in(struct json_object *root, int64_t *out)
{
	struct json_object *v;
	if (!json_object_object_get_ex(root, "expires_in", &v))
		return false;
	int64_t n;
	if (json_object_is_type(v, json_type_int)) {
		n = json_object_get_int64(v);
	} else if (json_object_is_type(v, json_type_double)) {
		double d = json_object_get_double(v);
		if (!(d >= 1.0 && d <= (double)EXPIRES_IN_MAX))
			return false;
		n = (int64_t)d;
	} else if (json_object_is_type(v, json_type_string)) {
		const char *s = json_object_get_string(v);
		char *end;
		errno = 0;
		long long l = strtoll(s, &end, 10);
		if (errno || end == s || *end || s[0] == '-' || s[0] == '+' || s[0] == ' ')
			return false;
		n = l;
	} else {
		return false;
	}
	if (n < 1 || n > EXPIRES_IN_MAX)
		return false;
	*out = n;
	return true;
}

/* The token goes into an Authorization header: printable ASCII without spaces only. */
static bool token_chars_ok(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return false;
	return len > 0;
}

static void parse_error_fields(struct json_object *root, struct auth_token_response *out)
{
	const char *e = get_string(root, "error");
	const char *d = get_string(root, "error_description");
	struct json_object *codes;
	out->server_error = e != NULL;
	if (e)
		copy_first_line(out->error, sizeof out->error, e);
	if (d)
		copy_description(out->error_description, sizeof out->error_description, d);
	if (json_object_object_get_ex(root, "error_codes", &codes) &&
	    json_object_is_type(codes, json_type_array) && json_object_array_length(codes) > 0) {
		struct json_object *c = json_object_array_get_idx(codes, 0);
		if (json_object_is_type(c, json_type_int) && json_object_get_int64(c) > 0)
			out->aadsts = (long)json_object_get_int64(c);
	}
	const char *tag = d ? strstr(d, "AADSTS") : NULL;
	if (!out->aadsts && tag) {
		char *end;
		long v = strtol(tag + 6, &end, 10);
		if (end != tag + 6 && v > 0)
			out->aadsts = v;
	}
}

static bool parse_fail(struct auth_token_response *out, const char *why)
{
	if (!out->server_error)
		snprintf(out->error, sizeof out->error, "invalid_response");
	if (!out->error_description[0])
		snprintf(out->error_description, sizeof out->error_description, "%s", why);
	OPENSSL_cleanse(out->access_token, sizeof out->access_token);
	return false;
}

static bool parse_token_fields(struct json_object *root, struct auth_token_response *out)
{
	const char *type = get_string(root, "token_type");
	const char *tok = get_string(root, "access_token");
	struct json_object *tv;
	if (type) {
		if (strcasecmp(type, "Bearer") != 0)
			return parse_fail(out, "token_type is not Bearer");
		snprintf(out->token_type, sizeof out->token_type, "%s", type);
	}
	if (!tok || !json_object_object_get_ex(root, "access_token", &tv))
		return parse_fail(out, "no access_token in the response");
	size_t len = (size_t)json_object_get_string_len(tv);
	if (len > AUTH_TOKEN_MAX)
		return parse_fail(out, "access_token longer than 16 KiB");
	if (!token_chars_ok(tok, len))
		return parse_fail(out,
		                  "access_token is empty or has characters a header cannot carry");
	if (!parse_expires_in(root, &out->expires_in_s))
		return parse_fail(out, "expires_in missing or out of range");
	memcpy(out->access_token, tok, len);
	out->access_token[len] = '\0';
	/* json-c frees without wiping: clear its copy of the token first (it owns the memory). */
	OPENSSL_cleanse((char *)tok, len);
	return true;
}

bool auth_parse_token_response(const char *body, size_t len, long http_status,
                               struct auth_token_response *out)
{
	memset(out, 0, sizeof *out);
	out->http_status = http_status;
	if (len > AUTH_BODY_MAX)
		return parse_fail(out, "response body larger than 64 KiB");
	struct json_tokener *tok = json_tokener_new_ex(8);
	if (!tok)
		return parse_fail(out, "out of memory");
	struct json_object *root = json_tokener_parse_ex(tok, body, (int)len);
	size_t end = json_tokener_get_parse_end(tok);
	bool complete = json_tokener_get_error(tok) == json_tokener_success;
	json_tokener_free(tok);
	while (complete && end < len && strchr(" \t\r\n", body[end]) && body[end])
		end++;
	bool ok = false;
	if (!root || !complete || end != len || !json_object_is_type(root, json_type_object)) {
		ok = parse_fail(out, "response is not a JSON object");
	} else {
		parse_error_fields(root, out);
		if (out->server_error)
			ok = parse_fail(out, "");
		else if (http_status < 200 || http_status > 299)
			ok = parse_fail(out, "unexpected HTTP status without an OAuth error");
		else
			ok = parse_token_fields(root, out);
	}
	json_object_put(root);
	return ok;
}

/* ---- building a request (refresh thread, without the lock) ------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	return dynbuf_add(arg, data, size * n) ? size * n : 0;
}

static bool form_add(CURL *easy, struct dynbuf *b, const char *key, const char *value, size_t vlen)
{
	if (vlen > (size_t)INT32_MAX)
		return false;
	char *esc = curl_easy_escape(easy, value, (int)vlen);
	if (!esc)
		return false;
	size_t elen = strlen(esc);
	bool ok = (dynbuf_len(b) == 0 || dynbuf_adds(b, "&")) && dynbuf_adds(b, key) &&
	          dynbuf_adds(b, "=") && dynbuf_add(b, esc, elen);
	OPENSSL_cleanse(esc, elen);
	curl_free(esc);
	return ok;
}

static bool oom(char *err, size_t errcap)
{
	snprintf(err, errcap, "out of memory (or over 64 KiB) building the token request");
	return false;
}

/* {authority_url}/{tenant_id}/oauth2/v2.0/token; the tenant id must stay one path segment. */
static bool token_endpoint(const struct snapshot *s, char *buf, size_t cap, char *err,
                           size_t errcap)
{
	const char *tid = s->t.tenant_id;
	size_t n = strlen(s->t.authority_url);
	while (n > 0 && s->t.authority_url[n - 1] == '/')
		n--;
	if (!*tid || tid[strspn(tid, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                             "0123456789.-_")]) {
		snprintf(err, errcap, "tenant_id '%.200s' is not a GUID or domain name", tid);
		return false;
	}
	int w = snprintf(buf, cap, "%.*s/%s/oauth2/v2.0/token", (int)n, s->t.authority_url, tid);
	if (w < 0 || (size_t)w >= cap) {
		snprintf(err, errcap, "token endpoint URL too long");
		return false;
	}
	return true;
}

static bool add_secret(struct auth_profile *p, const struct snapshot *s, char *err, size_t errcap)
{
	char secret[CFG_SECRET_MAX + 1];
	bool ok = cfg_read_secret(&s->t, secret, sizeof secret, err, errcap);
	if (ok && !form_add(p->easy, &p->form, "client_secret", secret, strlen(secret)))
		ok = oom(err, errcap);
	OPENSSL_cleanse(secret, sizeof secret);
	return ok;
}

static bool add_assertion(struct auth_profile *p, const char *assertion, size_t len, char *err,
                          size_t errcap)
{
	if (form_add(p->easy, &p->form, "client_assertion_type", JWT_BEARER, strlen(JWT_BEARER)) &&
	    form_add(p->easy, &p->form, "client_assertion", assertion, len))
		return true;
	return oom(err, errcap);
}

static bool add_certificate(struct auth_profile *p, const struct snapshot *s, const char *endpoint,
                            char *err, size_t errcap)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	char *jwt = malloc(JWT_ASSERTION_MAX);
	struct jwt_claims c = {.client_id = s->t.client_id,
	                       .audience = endpoint,
	                       .now_s = cptime_wall_ms() / 1000,
	                       .lifetime_s = JWT_DEFAULT_LIFETIME_S};
	bool ok = jwt ? true : oom(err, errcap);
	ok = ok && jwt_load_credential(s->t.certificate_file, s->t.private_key_file, &cert, &key,
	                               err, errcap);
	ok = ok && jwt_sign_assertion(cert, key, s->t.assertion_alg, &c, jwt, JWT_ASSERTION_MAX,
	                              err, errcap);
	ok = ok && add_assertion(p, jwt, strlen(jwt), err, errcap);
	if (jwt)
		OPENSSL_cleanse(jwt, JWT_ASSERTION_MAX);
	free(jwt);
	X509_free(cert);
	EVP_PKEY_free(key);
	return ok;
}

/* The projected service account token is rotated by the kubelet: read it every time. */
static bool add_federated(struct auth_profile *p, const struct snapshot *s, char *err,
                          size_t errcap)
{
	struct dynbuf token;
	char why[CP_ERRSTR_SIZE];
	if (!secretfile_read(s->t.federated_token_file, FEDERATED_MAX, " \t\r\n", &token, why,
	                     sizeof why)) {
		snprintf(err, errcap, "federated_token_file %s", why);
		return false;
	}
	bool ok = add_assertion(p, dynbuf_str(&token), dynbuf_len(&token), err, errcap);
	dynbuf_wipe(&token);
	return ok;
}

static bool build_form(struct auth_profile *p, const struct snapshot *s, const char *endpoint,
                       char *err, size_t errcap)
{
	const char *gt = "client_credentials";
	if (!form_add(p->easy, &p->form, "grant_type", gt, strlen(gt)) ||
	    !form_add(p->easy, &p->form, "client_id", s->t.client_id, strlen(s->t.client_id)) ||
	    !form_add(p->easy, &p->form, "scope", s->scope, strlen(s->scope)))
		return oom(err, errcap);
	switch (s->t.credential) {
	case CFG_CRED_SECRET:
		return add_secret(p, s, err, errcap);
	case CFG_CRED_CERTIFICATE:
		return add_certificate(p, s, endpoint, err, errcap);
	case CFG_CRED_FEDERATED:
		return add_federated(p, s, err, errcap);
	case CFG_CRED_MANAGED:
		break;
	}
	snprintf(err, errcap, "credential kind %d cannot use the token endpoint",
	         (int)s->t.credential);
	return false;
}

/*
 * IMDS: GET {imds_url}?api-version=2018-02-01&resource={graph root}/[&client_id=...]. The
 * resource is the scope without ".default", keeping the trailing slash Microsoft documents.
 */
static bool managed_url(struct auth_profile *p, const struct snapshot *s, char *url, size_t cap,
                        char *err, size_t errcap)
{
	char resource[CFG_VALUE_MAX + 1];
	size_t n = strlen(s->scope), sfx = strlen(".default");
	if (n >= sfx && strcmp(s->scope + n - sfx, ".default") == 0)
		n -= sfx;
	memcpy(resource, s->scope, n);
	if (n == 0 || resource[n - 1] != '/')
		resource[n++] = '/';
	resource[n] = '\0';
	char *res = curl_easy_escape(p->easy, resource, 0);
	char *cid = s->t.client_id[0] ? curl_easy_escape(p->easy, s->t.client_id, 0) : NULL;
	int w = res ? snprintf(url, cap, "%s%capi-version=2018-02-01&resource=%s%s%s",
	                       s->t.imds_url, strchr(s->t.imds_url, '?') ? '&' : '?', res,
	                       cid ? "&client_id=" : "", cid ? cid : "")
	            : -1;
	curl_free(res);
	curl_free(cid);
	if (w < 0 || (size_t)w >= cap || (s->t.client_id[0] && !cid)) {
		snprintf(err, errcap, "managed identity URL too long (or out of memory)");
		return false;
	}
	return true;
}

static bool set_options(struct auth_profile *p, const struct snapshot *s, const char *url)
{
	CURL *e = p->easy;
	bool ok =
	    curl_easy_setopt(e, CURLOPT_URL, url) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_PRIVATE, p) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, p->curl_err) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, &p->resp) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, p->headers) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_USERAGENT, "chatprovd/" CHATPROV_VERSION) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, s->connect_ms) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, s->request_ms) == CURLE_OK;
	if (ok)
		ok = tls_trust_ca_file(e, s->ca_file);
	/* The metadata endpoint is link-local: never through a proxy (http_proxy and the
	 * like), which would carry the request, and the token, off the host. */
	if (ok && p->managed)
		ok = curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) == CURLE_OK &&
		     curl_easy_setopt(e, CURLOPT_NOPROXY, "*") == CURLE_OK;
	else if (ok)
		ok = curl_easy_setopt(e, CURLOPT_POSTFIELDS, dynbuf_str(&p->form)) == CURLE_OK &&
		     curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)dynbuf_len(&p->form)) ==
		         CURLE_OK;
	return ok;
}

static bool setup_easy(struct auth_profile *p, const struct snapshot *s, const char *url, char *err,
                       size_t errcap)
{
	curl_slist_free_all(p->headers);
	p->headers = curl_slist_append(NULL, "Accept: application/json");
	if (p->headers && p->managed) {
		struct curl_slist *h = curl_slist_append(p->headers, "Metadata: true");
		if (!h)
			curl_slist_free_all(p->headers);
		p->headers = h;
	}
	p->curl_err[0] = '\0';
	if (!p->headers || !set_options(p, s, url)) {
		snprintf(err, errcap, "cannot set up the token request (out of memory?)");
		return false;
	}
	return true;
}

/* ---- outcomes -------------------------------------------------------------------------------- */

static const char *hint_for(long aadsts)
{
	switch (aadsts) {
	case 7000215:
		return "invalid client secret — check client_secret_file / the graph-client-secret "
		       "credential";
	case 7000222:
		return "the client secret has expired — create a new one and update "
		       "client_secret_file";
	case 700016:
		return "application not found in the tenant — check client_id and tenant_id (and "
		       "admin consent in that tenant)";
	case 90002:
	case 900023:
		return "tenant not found — wrong cloud or tenant_id?";
	case 70011:
		return "invalid scope — wrong cloud? (the scope must be the cloud's Graph "
		       ".default)";
	case 700027:
		return "client assertion rejected — certificate not registered on the app, wrong "
		       "key or expired certificate";
	case 700023:
		return "client assertion audience is not this token endpoint — check "
		       "authority_url, cloud and tenant_id (a proxy must not rewrite the path)";
	case 700021:
		return "client assertion issuer/subject is not the client id — check client_id";
	case 50027:
		return "malformed or replayed client assertion — check the federated token file "
		       "holds one JWT";
	case 700024:
		return "client assertion outside its validity window — check the clock, or the "
		       "federated token has expired";
	case 70021:
	case 700213:
		return "no matching federated credential on the app — check its issuer, subject "
		       "and audience";
	case 7000112:
		return "the application is disabled in the tenant";
	default:
		return NULL;
	}
}

static bool transient_status(long st, const struct auth_token_response *r, bool managed)
{
	if (st >= 500 || st == 408 || st == 429 || (st >= 200 && st <= 299))
		return true;
	if (strcmp(r->error, "temporarily_unavailable") == 0)
		return true;
	/* IMDS answers 404 while an identity is being assigned and 410 while it restarts. */
	return managed && (st == 404 || st == 410);
}

static void classify_http(bool managed, long st, const struct auth_token_response *r,
                          struct outcome *o)
{
	const char *hint = hint_for(r->aadsts);
	char code[32] = "";
	if (r->aadsts && !strstr(r->error_description, "AADSTS"))
		snprintf(code, sizeof code, "AADSTS%ld: ", r->aadsts);
	o->kind = transient_status(st, r, managed) ? OUT_TRANSIENT : OUT_PERMANENT;
	snprintf(o->msg, sizeof o->msg, "%s HTTP %ld %s: %s%s%s%s",
	         managed ? "IMDS" : "token endpoint", st, r->error, code, r->error_description,
	         hint ? " — " : "", hint ? hint : "");
	snprintf(o->key, sizeof o->key, "http:%ld:%s:%ld", st, r->error, r->aadsts);
}

static void classify_curl(const struct auth_profile *p, CURLcode rc, struct outcome *o)
{
	o->kind = OUT_TRANSIENT;
	if (rc == CURLE_WRITE_ERROR && dynbuf_too_big(&p->resp))
		snprintf(o->msg, sizeof o->msg, "%s response larger than 64 KiB",
		         p->managed ? "IMDS" : "token endpoint");
	else
		snprintf(o->msg, sizeof o->msg, "%s unreachable: %s%s%s",
		         p->managed ? "IMDS" : "token endpoint", curl_easy_strerror(rc),
		         p->curl_err[0] ? ": " : "", p->curl_err);
	snprintf(o->key, sizeof o->key, "curl:%d", (int)rc);
}

static void log_failure(const char *name, const struct outcome *o)
{
	struct log_ctx ctx = {.tenant = name};
	if (o->kind == OUT_TRANSIENT)
		log_with(LOG_LVL_WARNING, &ctx,
		         "auth: profile '%s': token request failed, retrying with backoff: %s",
		         name, o->msg);
	else
		log_with(LOG_LVL_ERROR, &ctx,
		         "auth: profile '%s': credentials rejected (retried every 30-60 s or on "
		         "reload): %s",
		         name, o->msg);
}

static void apply_success(struct auth *a, struct auth_profile *p, const char *name,
                          const struct auth_token_response *r)
{
	int64_t now = cptime_mono_ms();
	OPENSSL_cleanse(p->token, sizeof p->token);
	memcpy(p->token, r->access_token, strlen(r->access_token) + 1);
	p->lifetime_ms = r->expires_in_s * 1000;
	p->obtained_mono_ms = now;
	p->expires_mono_ms = now + p->lifetime_ms;
	p->expires_epoch_ms = cptime_wall_ms() + p->lifetime_ms;
	p->failed = false;
	p->backoff_n = 0;
	p->last_error[0] = '\0';
	p->refreshes++;
	p->next_due_ms = now + refresh_delay_ms(p->lifetime_ms, a->cfg->token_refresh_ahead_s);
	if (p->logged_key[0])
		log_with(LOG_LVL_NOTICE, &(struct log_ctx){.tenant = name},
		         "auth: profile '%s': token acquired again", name);
	else
		log_debug("auth: profile '%s': token acquired, expires in %lld s", name,
		          (long long)r->expires_in_s);
	p->logged_key[0] = '\0';
}

/* Records an outcome; returns whether waiters must be told (token acquired or failed). */
static bool apply_outcome(struct auth *a, size_t i, const struct outcome *o,
                          const struct auth_token_response *r)
{
	struct auth_profile *p = &a->p[i];
	const char *name = a->cfg->tenants[i].name;
	int64_t now = cptime_mono_ms();
	p->in_flight = false;
	if (o->kind == OUT_OK && r) {
		apply_success(a, p, name, r);
		return true;
	}
	p->failures++;
	snprintf(p->last_error, sizeof p->last_error, "%s", o->msg);
	if (strcmp(p->logged_key, o->key) != 0) {
		log_failure(name, o);
		snprintf(p->logged_key, sizeof p->logged_key, "%s", o->key);
	}
	if (o->kind == OUT_TRANSIENT) {
		p->next_due_ms = now + backoff_ms(p->backoff_n++);
		return false;
	}
	p->failed = true;
	p->backoff_n = 0;
	/* Built from a cfg that a reload has replaced since: try the new one at once. */
	p->next_due_ms = p->gen != a->gen
	                     ? now
	                     : now + FAILED_RETRY_MS + (int64_t)(random_u32() % FAILED_RETRY_MS);
	return true;
}

static void complete(struct auth *a, size_t i, const struct outcome *o,
                     const struct auth_token_response *r)
{
	pthread_mutex_lock(&a->mu);
	bool tell = apply_outcome(a, i, o, r);
	void (*cb)(void *) = a->notify;
	void *arg = a->notify_arg;
	pthread_mutex_unlock(&a->mu);
	if (tell && cb)
		cb(arg);
}

/* ---- the refresh thread ---------------------------------------------------------------------- */

static long ms_or(double s, long dflt)
{
	return s > 0 && s < 86400 ? (long)(s * 1000.0) : dflt;
}

/* Under the lock: the first profile due now (marked in flight, snapshot taken), or a->n. */
static size_t take_due(struct auth *a, int *timeout_ms)
{
	int64_t now = cptime_mono_ms(), wait = 60000;
	for (size_t i = 0; i < a->n; i++) {
		struct auth_profile *p = &a->p[i];
		if (p->in_flight || p->next_due_ms == NOT_SCHEDULED)
			continue;
		if (p->next_due_ms <= now) {
			const struct cfg *c = a->cfg;
			a->snap.t = c->tenants[i];
			snprintf(a->snap.scope, sizeof a->snap.scope, "%s", c->graph.scope);
			snprintf(a->snap.ca_file, sizeof a->snap.ca_file, "%s", c->graph.ca_file);
			a->snap.connect_ms = ms_or(c->graph.connect_timeout_s, DEFAULT_CONNECT_MS);
			a->snap.request_ms = ms_or(c->graph.request_timeout_s, DEFAULT_REQUEST_MS);
			a->snap.gen = p->gen = a->gen;
			p->in_flight = true;
			p->next_due_ms = NOT_SCHEDULED;
			return i;
		}
		wait = p->next_due_ms - now < wait ? p->next_due_ms - now : wait;
	}
	*timeout_ms = (int)wait;
	return a->n;
}

static void start_request(struct auth *a, size_t i)
{
	struct auth_profile *p = &a->p[i];
	const struct snapshot *s = &a->snap;
	struct outcome o = {.kind = OUT_PERMANENT};
	char url[2 * CFG_VALUE_MAX + 128];
	dynbuf_wipe(&p->form);
	dynbuf_wipe(&p->resp);
	dynbuf_init_secret(&p->form, AUTH_BODY_MAX - 1);
	dynbuf_init_secret(&p->resp, AUTH_BODY_MAX);
	p->managed = s->t.credential == CFG_CRED_MANAGED;
	if (!p->easy && !(p->easy = curl_easy_init())) {
		oom(o.msg, sizeof o.msg);
		goto fail;
	}
	curl_easy_reset(p->easy);
	bool ok = p->managed ? managed_url(p, s, url, sizeof url, o.msg, sizeof o.msg)
	                     : token_endpoint(s, url, sizeof url, o.msg, sizeof o.msg) &&
	                           build_form(p, s, url, o.msg, sizeof o.msg);
	if (!ok || !setup_easy(p, s, url, o.msg, sizeof o.msg))
		goto fail;
	if (curl_multi_add_handle(a->multi, p->easy) != CURLM_OK) {
		snprintf(o.msg, sizeof o.msg, "cannot start the token request");
		goto fail;
	}
	return;
fail:
	dynbuf_wipe(&p->form);
	/* Local credential problems (unreadable file, expired certificate) are permanent. */
	snprintf(o.key, sizeof o.key, "local:%.120s", o.msg);
	complete(a, i, &o, NULL);
}

static void finish_request(struct auth *a, struct auth_profile *p, CURLcode rc)
{
	struct outcome o = {.kind = OUT_OK};
	struct auth_token_response *r = &a->resp;
	long status = 0;
	curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
	if (rc != CURLE_OK)
		classify_curl(p, rc, &o);
	else if (!auth_parse_token_response(dynbuf_str(&p->resp), dynbuf_len(&p->resp), status, r))
		classify_http(p->managed, status, r, &o);
	dynbuf_wipe(&p->form);
	dynbuf_wipe(&p->resp);
	complete(a, (size_t)(p - a->p), &o, r);
	OPENSSL_cleanse(r->access_token, sizeof r->access_token);
}

static void drain_done(struct auth *a)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(a->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		/* The message dies with remove_handle: copy what we need first. */
		CURL *e = m->easy_handle;
		CURLcode rc = m->data.result;
		struct auth_profile *p = NULL;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&p);
		curl_multi_remove_handle(a->multi, e);
		if (p)
			finish_request(a, p, rc);
	}
}

static void *refresh_main(void *arg)
{
	struct auth *a = arg;
	for (;;) {
		int timeout = 0, running = 0;
		pthread_mutex_lock(&a->mu);
		bool stop = a->stop;
		size_t due = stop ? a->n : take_due(a, &timeout);
		pthread_mutex_unlock(&a->mu);
		if (stop)
			break;
		if (due < a->n) {
			start_request(a, due);
			continue;
		}
		/* Wakes for I/O, curl's own timers, the next due refresh or curl_multi_wakeup. */
		if (curl_multi_poll(a->multi, NULL, 0, timeout, NULL) != CURLM_OK ||
		    curl_multi_perform(a->multi, &running) != CURLM_OK)
			log_error("auth: libcurl multi handle failed");
		drain_done(a);
	}
	return NULL;
}

/* ---- public API ---------------------------------------------------------------------------- */

bool auth_new(const struct cfg *cfg, struct auth **out, char *err, size_t errcap)
{
	struct auth *a = NULL;
	if (!cfg || cfg->n_tenants == 0 || cfg->n_tenants > CFG_MAX_TENANTS) {
		snprintf(err, errcap, "auth: the configuration has no credential profile");
		return false;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errcap, "auth: curl_global_init failed");
		return false;
	}
	a = calloc(1, sizeof *a);
	if (!a || !(a->p = calloc(cfg->n_tenants, sizeof *a->p)) ||
	    !(a->multi = curl_multi_init())) {
		snprintf(err, errcap, "auth: out of memory");
		goto fail;
	}
	if (pthread_mutex_init(&a->mu, NULL) != 0) {
		snprintf(err, errcap, "auth: pthread_mutex_init failed");
		goto fail;
	}
	a->cfg = cfg;
	a->n = cfg->n_tenants;
	for (size_t i = 0; i < a->n; i++)
		a->p[i].next_due_ms = NOT_SCHEDULED;
	*out = a;
	return true;
fail:
	if (a) {
		if (a->multi)
			curl_multi_cleanup(a->multi);
		free(a->p);
		free(a);
	}
	curl_global_cleanup();
	return false;
}

bool auth_start(struct auth *a)
{
	pthread_mutex_lock(&a->mu);
	a->p[0].demanded = true;
	a->p[0].next_due_ms = cptime_mono_ms();
	pthread_mutex_unlock(&a->mu);
	int rc = pthread_create(&a->thread, NULL, refresh_main, a);
	if (rc != 0) {
		log_error("auth: cannot start the token refresh thread: %s", strerror(rc));
		return false;
	}
	a->started = true;
	return true;
}

void auth_stop(struct auth *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	a->stop = true;
	pthread_mutex_unlock(&a->mu);
	wake(a);
	if (a->started)
		pthread_join(a->thread, NULL);
	a->started = false;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	auth_stop(a);
	for (size_t i = 0; i < a->n; i++) {
		struct auth_profile *p = &a->p[i];
		if (p->easy) {
			if (p->in_flight)
				curl_multi_remove_handle(a->multi, p->easy);
			curl_easy_cleanup(p->easy);
		}
		curl_slist_free_all(p->headers);
		dynbuf_wipe(&p->form);
		dynbuf_wipe(&p->resp);
	}
	OPENSSL_cleanse(a->p, a->n * sizeof *a->p);
	OPENSSL_cleanse(&a->resp, sizeof a->resp);
	free(a->p);
	curl_multi_cleanup(a->multi);
	pthread_mutex_destroy(&a->mu);
	free(a);
	curl_global_cleanup();
}

enum auth_status auth_get_token(struct auth *a, size_t profile, char *buf, size_t cap,
                                int64_t *expires_epoch_ms)
{
	if (profile >= a->n)
		return AUTH_FAILED;
	enum auth_status st = AUTH_PENDING;
	bool kick = false;
	pthread_mutex_lock(&a->mu);
	struct auth_profile *p = &a->p[profile];
	int64_t now = cptime_mono_ms();
	if (token_valid(p, now)) {
		size_t len = strlen(p->token);
		st = len < cap ? AUTH_OK : AUTH_FAILED; /* cap < AUTH_TOKEN_BUF: a caller bug */
		if (st == AUTH_OK) {
			memcpy(buf, p->token, len + 1);
			if (expires_epoch_ms)
				*expires_epoch_ms = p->expires_epoch_ms;
		}
	} else if (p->failed) {
		st = AUTH_FAILED;
	} else {
		p->demanded = true;
		if (!p->in_flight && p->next_due_ms == NOT_SCHEDULED) {
			p->next_due_ms = now;
			kick = true;
		}
	}
	pthread_mutex_unlock(&a->mu);
	if (kick)
		wake(a);
	return st;
}

void auth_invalidate(struct auth *a, size_t profile, const char *token)
{
	if (profile >= a->n || !token)
		return;
	bool kick = false;
	pthread_mutex_lock(&a->mu);
	struct auth_profile *p = &a->p[profile];
	if (p->token[0] && strcmp(p->token, token) == 0) {
		drop_token(p);
		if (!p->in_flight) {
			int64_t now = cptime_mono_ms(),
			        due = p->obtained_mono_ms + INVALIDATE_GAP_MS;
			due = due > now ? due : now;
			p->next_due_ms = due < p->next_due_ms ? due : p->next_due_ms;
			kick = true;
		}
	}
	pthread_mutex_unlock(&a->mu);
	if (kick)
		wake(a);
}

void auth_set_notify(struct auth *a, void (*cb)(void *arg), void *arg)
{
	pthread_mutex_lock(&a->mu);
	a->notify = cb;
	a->notify_arg = arg;
	pthread_mutex_unlock(&a->mu);
}

bool auth_profile_ready(struct auth *a, size_t profile)
{
	if (profile >= a->n)
		return false;
	pthread_mutex_lock(&a->mu);
	bool ok = token_valid(&a->p[profile], cptime_mono_ms());
	pthread_mutex_unlock(&a->mu);
	return ok;
}

void auth_last_error(struct auth *a, size_t profile, char *buf, size_t cap)
{
	if (!cap)
		return;
	buf[0] = '\0';
	if (profile >= a->n)
		return;
	pthread_mutex_lock(&a->mu);
	snprintf(buf, cap, "%s", a->p[profile].last_error);
	pthread_mutex_unlock(&a->mu);
}

void auth_get_stats(struct auth *a, size_t profile, struct auth_stats *out)
{
	memset(out, 0, sizeof *out);
	if (profile >= a->n)
		return;
	pthread_mutex_lock(&a->mu);
	out->refreshes = a->p[profile].refreshes;
	out->failures = a->p[profile].failures;
	out->expires_epoch_ms = a->p[profile].expires_epoch_ms;
	pthread_mutex_unlock(&a->mu);
}

bool auth_reload(struct auth *a, const struct cfg *new_cfg)
{
	bool ok = new_cfg && new_cfg->n_tenants == a->n;
	pthread_mutex_lock(&a->mu);
	for (size_t i = 0; ok && i < a->n; i++)
		ok = strcmp(a->cfg->tenants[i].name, new_cfg->tenants[i].name) == 0;
	if (ok) {
		int64_t now = cptime_mono_ms();
		a->cfg = new_cfg;
		a->gen++;
		for (size_t i = 0; i < a->n; i++)
			if (a->p[i].failed && !a->p[i].in_flight)
				a->p[i].next_due_ms = now;
	}
	pthread_mutex_unlock(&a->mu);
	if (!ok) {
		log_error("auth: reload refused: the credential profiles changed (restart needed)");
		return false;
	}
	wake(a);
	return true;
}
