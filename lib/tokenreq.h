/*
 * tokenreq.h - one OAuth2 token request and what its answer means: the form (client secret,
 * certificate assertion, federated token) or the IMDS URL, the libcurl easy handle that
 * carries it, the parser of the answer, and the classification of a failure as transient
 * (retry with backoff) or permanent (the credentials are wrong), with the hint for the
 * operator. It keeps no token: the caches and the refresh thread are auth's (auth.h), which
 * drives these requests on its multi handle. See docs/auth.md.
 */
#ifndef CHATPROV_TOKENREQ_H
#define CHATPROV_TOKENREQ_H

#include <curl/curl.h>

#include "cfg.h"
#include "common.h"

/* Bounds on what the token endpoint may send us. */
#define TOKENREQ_BODY_MAX  (64 * 1024)
#define TOKENREQ_TOKEN_MAX (16 * 1024)
/* Room for AAD's error description plus our hint. */
#define TOKENREQ_ERROR_MAX 1024

/* One profile's request: its easy handle and buffers, reused from one request to the next. */
struct tokenreq;

/* What one request needs from the cfg, copied under the cache's lock. */
struct tokenreq_params {
	struct cfg_tenant t;
	char scope[CFG_VALUE_MAX];
	char ca_file[CFG_VALUE_MAX];
	long connect_ms, request_ms;
};

/* What a token endpoint (or IMDS) answered, parsed. */
struct tokenreq_response {
	long http_status;
	char token_type[32];
	char access_token[TOKENREQ_TOKEN_MAX + 1];
	int64_t expires_in_s;
	bool server_error;           /* the body carried an "error" member */
	char error[64];              /* "invalid_client", or a parse failure when !server_error */
	char error_description[512]; /* first line of error_description, or why parsing failed */
	long aadsts; /* first of error_codes (or AADSTS<n> in the text); 0 if none */
};

enum tokenreq_kind {
	TOKENREQ_OK,        /* a usable token */
	TOKENREQ_TRANSIENT, /* the endpoint is down, slow or busy: retry with backoff */
	TOKENREQ_PERMANENT, /* the credentials or the configuration are wrong */
};

struct tokenreq_outcome {
	enum tokenreq_kind kind;
	char key[128]; /* the same failure gives the same key: each distinct one is logged once */
	char msg[TOKENREQ_ERROR_MAX];
};

/* A request whose easy handle carries owner as CURLINFO_PRIVATE. False without memory. */
bool tokenreq_new(void *owner, struct tokenreq **out) CP_MUSTCHECK;
/* Frees the handle and wipes the buffers; the caller has removed the handle from its multi. */
void tokenreq_free(struct tokenreq *req);
/* The easy handle of the request (NULL before the first tokenreq_prepare). */
CURL *tokenreq_easy(const struct tokenreq *req);

/*
 * Builds the request for s (reading secret, key or federated token files now) into the easy
 * handle, ready for curl_multi_add_handle. False with o filled as a permanent local failure.
 */
bool tokenreq_prepare(struct tokenreq *req, const struct tokenreq_params *s,
                      struct tokenreq_outcome *o) CP_MUSTCHECK;
/* The request could not start after tokenreq_prepare: o says so (permanent), the form is wiped. */
void tokenreq_fail_local(struct tokenreq *req, const char *why, struct tokenreq_outcome *o);
/*
 * The transfer ended with rc: parses the answer into r and classifies it into o (TOKENREQ_OK:
 * r->access_token holds the token, which the caller wipes after use). Wipes form and answer.
 */
void tokenreq_finish(struct tokenreq *req, CURLcode rc, struct tokenreq_response *r,
                     struct tokenreq_outcome *o);

/*
 * Parses a token response body (at most TOKENREQ_BODY_MAX bytes). True only when it carries a
 * usable bearer token: a 2xx status, an access_token of printable ASCII no longer than
 * TOKENREQ_TOKEN_MAX and a positive expires_in (a number or a numeric string). Otherwise
 * false, with the server's error fields or the parse failure in out.
 */
bool tokenreq_parse_response(const char *body, size_t len, long http_status,
                             struct tokenreq_response *out) CP_MUSTCHECK;

/* An HTTP answer without a usable token (managed: from IMDS), as a failed outcome. */
void tokenreq_classify_http(bool managed, long status, const struct tokenreq_response *r,
                            struct tokenreq_outcome *o);
/* A transfer that ended with rc != CURLE_OK, as a (transient) failed outcome. */
void tokenreq_classify_curl(const struct tokenreq *req, CURLcode rc, struct tokenreq_outcome *o);

#endif
