/*
 * tokenreq.c - one token request, its answer and the classification of a failure (see
 * tokenreq.h). Runs on auth's refresh thread only, without auth's lock.
 */
#include "tokenreq.h"

#include <errno.h>
#include <json-c/json.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cptime.h"
#include "dynbuf.h"
#include "jwt.h"
#include "secretfile.h"
#include "tls.h"

#define FEDERATED_MAX  (16 * 1024)
#define EXPIRES_IN_MAX (7 * 86400)
#define JWT_BEARER     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

struct tokenreq {
	void *owner; /* CURLINFO_PRIVATE of the easy handle */
	CURL *easy;
	struct curl_slist *headers;
	struct dynbuf form, resp; /* secret buffers: the form and the answer hold credentials */
	char curl_err[CURL_ERROR_SIZE];
	bool managed;
};

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

static void parse_error_fields(struct json_object *root, struct tokenreq_response *out)
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

static bool parse_fail(struct tokenreq_response *out, const char *why)
{
	if (!out->server_error)
		snprintf(out->error, sizeof out->error, "invalid_response");
	if (!out->error_description[0])
		snprintf(out->error_description, sizeof out->error_description, "%s", why);
	OPENSSL_cleanse(out->access_token, sizeof out->access_token);
	return false;
}

static bool parse_token_fields(struct json_object *root, struct tokenreq_response *out)
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
	if (len > TOKENREQ_TOKEN_MAX)
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

bool tokenreq_parse_response(const char *body, size_t len, long http_status,
                             struct tokenreq_response *out)
{
	memset(out, 0, sizeof *out);
	out->http_status = http_status;
	if (len > TOKENREQ_BODY_MAX)
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

static size_t keep_answer(char *data, size_t size, size_t n, void *arg)
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
static bool token_endpoint(const struct tokenreq_params *s, char *buf, size_t cap, char *err,
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

static bool add_secret(struct tokenreq *req, const struct tokenreq_params *s, char *err,
                       size_t errcap)
{
	char secret[CFG_SECRET_MAX + 1];
	bool ok = cfg_read_secret(&s->t, secret, sizeof secret, err, errcap);
	if (ok && !form_add(req->easy, &req->form, "client_secret", secret, strlen(secret)))
		ok = oom(err, errcap);
	OPENSSL_cleanse(secret, sizeof secret);
	return ok;
}

static bool add_assertion(struct tokenreq *req, const char *assertion, size_t len, char *err,
                          size_t errcap)
{
	if (form_add(req->easy, &req->form, "client_assertion_type", JWT_BEARER,
	             strlen(JWT_BEARER)) &&
	    form_add(req->easy, &req->form, "client_assertion", assertion, len))
		return true;
	return oom(err, errcap);
}

static bool add_certificate(struct tokenreq *req, const struct tokenreq_params *s,
                            const char *endpoint, char *err, size_t errcap)
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
	ok = ok && add_assertion(req, jwt, strlen(jwt), err, errcap);
	if (jwt)
		OPENSSL_cleanse(jwt, JWT_ASSERTION_MAX);
	free(jwt);
	X509_free(cert);
	EVP_PKEY_free(key);
	return ok;
}

/* The projected service account token is rotated by the kubelet: read it every time. */
static bool add_federated(struct tokenreq *req, const struct tokenreq_params *s, char *err,
                          size_t errcap)
{
	struct dynbuf token;
	char why[CP_ERRSTR_SIZE];
	if (!secretfile_read(s->t.federated_token_file, FEDERATED_MAX, " \t\r\n", &token, why,
	                     sizeof why)) {
		snprintf(err, errcap, "federated_token_file %s", why);
		return false;
	}
	bool ok = add_assertion(req, dynbuf_str(&token), dynbuf_len(&token), err, errcap);
	dynbuf_wipe(&token);
	return ok;
}

static bool build_form(struct tokenreq *req, const struct tokenreq_params *s, const char *endpoint,
                       char *err, size_t errcap)
{
	const char *gt = "client_credentials";
	if (!form_add(req->easy, &req->form, "grant_type", gt, strlen(gt)) ||
	    !form_add(req->easy, &req->form, "client_id", s->t.client_id, strlen(s->t.client_id)) ||
	    !form_add(req->easy, &req->form, "scope", s->scope, strlen(s->scope)))
		return oom(err, errcap);
	switch (s->t.credential) {
	case CFG_CRED_SECRET:
		return add_secret(req, s, err, errcap);
	case CFG_CRED_CERTIFICATE:
		return add_certificate(req, s, endpoint, err, errcap);
	case CFG_CRED_FEDERATED:
		return add_federated(req, s, err, errcap);
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
static bool managed_url(struct tokenreq *req, const struct tokenreq_params *s, char *url,
                        size_t cap, char *err, size_t errcap)
{
	char resource[CFG_VALUE_MAX + 1];
	size_t n = strlen(s->scope), sfx = strlen(".default");
	if (n >= sfx && strcmp(s->scope + n - sfx, ".default") == 0)
		n -= sfx;
	memcpy(resource, s->scope, n);
	if (n == 0 || resource[n - 1] != '/')
		resource[n++] = '/';
	resource[n] = '\0';
	char *res = curl_easy_escape(req->easy, resource, 0);
	char *cid = s->t.client_id[0] ? curl_easy_escape(req->easy, s->t.client_id, 0) : NULL;
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

static bool set_options(struct tokenreq *req, const struct tokenreq_params *s, const char *url)
{
	CURL *e = req->easy;
	bool ok =
	    curl_easy_setopt(e, CURLOPT_URL, url) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_PRIVATE, req->owner) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->curl_err) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep_answer) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, &req->resp) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers) == CURLE_OK &&
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
	if (ok && req->managed)
		ok = curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) == CURLE_OK &&
		     curl_easy_setopt(e, CURLOPT_NOPROXY, "*") == CURLE_OK;
	else if (ok)
		ok = curl_easy_setopt(e, CURLOPT_POSTFIELDS, dynbuf_str(&req->form)) == CURLE_OK &&
		     curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)dynbuf_len(&req->form)) ==
		         CURLE_OK;
	return ok;
}

static bool setup_easy(struct tokenreq *req, const struct tokenreq_params *s, const char *url,
                       char *err, size_t errcap)
{
	curl_slist_free_all(req->headers);
	req->headers = curl_slist_append(NULL, "Accept: application/json");
	if (req->headers && req->managed) {
		struct curl_slist *h = curl_slist_append(req->headers, "Metadata: true");
		if (!h)
			curl_slist_free_all(req->headers);
		req->headers = h;
	}
	req->curl_err[0] = '\0';
	if (!req->headers || !set_options(req, s, url)) {
		snprintf(err, errcap, "cannot set up the token request (out of memory?)");
		return false;
	}
	return true;
}

/* ---- classifying the outcome
 * -------------------------------------------------------------------------------- */

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

static bool transient_status(long st, const struct tokenreq_response *r, bool managed)
{
	if (st >= 500 || st == 408 || st == 429 || (st >= 200 && st <= 299))
		return true;
	if (strcmp(r->error, "temporarily_unavailable") == 0)
		return true;
	/* IMDS answers 404 while an identity is being assigned and 410 while it restarts. */
	return managed && (st == 404 || st == 410);
}

void tokenreq_classify_http(bool managed, long st, const struct tokenreq_response *r,
                            struct tokenreq_outcome *o)
{
	const char *hint = hint_for(r->aadsts);
	char code[32] = "";
	if (r->aadsts && !strstr(r->error_description, "AADSTS"))
		snprintf(code, sizeof code, "AADSTS%ld: ", r->aadsts);
	o->kind = transient_status(st, r, managed) ? TOKENREQ_TRANSIENT : TOKENREQ_PERMANENT;
	snprintf(o->msg, sizeof o->msg, "%s HTTP %ld %s: %s%s%s%s",
	         managed ? "IMDS" : "token endpoint", st, r->error, code, r->error_description,
	         hint ? " — " : "", hint ? hint : "");
	snprintf(o->key, sizeof o->key, "http:%ld:%s:%ld", st, r->error, r->aadsts);
}

void tokenreq_classify_curl(const struct tokenreq *req, CURLcode rc, struct tokenreq_outcome *o)
{
	o->kind = TOKENREQ_TRANSIENT;
	if (rc == CURLE_WRITE_ERROR && dynbuf_too_big(&req->resp))
		snprintf(o->msg, sizeof o->msg, "%s response larger than 64 KiB",
		         req->managed ? "IMDS" : "token endpoint");
	else
		snprintf(o->msg, sizeof o->msg, "%s unreachable: %s%s%s",
		         req->managed ? "IMDS" : "token endpoint", curl_easy_strerror(rc),
		         req->curl_err[0] ? ": " : "", req->curl_err);
	snprintf(o->key, sizeof o->key, "curl:%d", (int)rc);
}

/* ---- one request's life ------------------------------------------------------------------- */

bool tokenreq_new(void *owner, struct tokenreq **out)
{
	struct tokenreq *req = calloc(1, sizeof *req);
	if (!req)
		return false;
	req->owner = owner;
	*out = req;
	return true;
}

void tokenreq_free(struct tokenreq *req)
{
	if (!req)
		return;
	if (req->easy)
		curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	dynbuf_wipe(&req->form);
	dynbuf_wipe(&req->resp);
	OPENSSL_cleanse(req, sizeof *req);
	free(req);
}

CURL *tokenreq_easy(const struct tokenreq *req)
{
	return req->easy;
}

void tokenreq_fail_local(struct tokenreq *req, const char *why, struct tokenreq_outcome *o)
{
	dynbuf_wipe(&req->form);
	o->kind = TOKENREQ_PERMANENT;
	if (why != o->msg)
		snprintf(o->msg, sizeof o->msg, "%s", why);
	/* Local credential problems (unreadable file, expired certificate) are permanent. */
	snprintf(o->key, sizeof o->key, "local:%.120s", o->msg);
}

bool tokenreq_prepare(struct tokenreq *req, const struct tokenreq_params *s,
                      struct tokenreq_outcome *o)
{
	char url[2 * CFG_VALUE_MAX + 128];
	o->msg[0] = '\0';
	dynbuf_wipe(&req->form);
	dynbuf_wipe(&req->resp);
	dynbuf_init_secret(&req->form, TOKENREQ_BODY_MAX - 1);
	dynbuf_init_secret(&req->resp, TOKENREQ_BODY_MAX);
	req->managed = s->t.credential == CFG_CRED_MANAGED;
	if (!req->easy && !(req->easy = curl_easy_init())) {
		oom(o->msg, sizeof o->msg);
		goto fail;
	}
	curl_easy_reset(req->easy);
	bool ok = req->managed ? managed_url(req, s, url, sizeof url, o->msg, sizeof o->msg)
	                       : token_endpoint(s, url, sizeof url, o->msg, sizeof o->msg) &&
	                             build_form(req, s, url, o->msg, sizeof o->msg);
	if (!ok || !setup_easy(req, s, url, o->msg, sizeof o->msg))
		goto fail;
	return true;
fail:
	tokenreq_fail_local(req, o->msg, o);
	return false;
}

void tokenreq_finish(struct tokenreq *req, CURLcode rc, struct tokenreq_response *r,
                     struct tokenreq_outcome *o)
{
	long status = 0;
	*o = (struct tokenreq_outcome){.kind = TOKENREQ_OK};
	curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
	if (rc != CURLE_OK)
		tokenreq_classify_curl(req, rc, o);
	else if (!tokenreq_parse_response(dynbuf_str(&req->resp), dynbuf_len(&req->resp), status,
	                                  r))
		tokenreq_classify_http(req->managed, status, r, o);
	dynbuf_wipe(&req->form);
	dynbuf_wipe(&req->resp);
}
