/*
 * test_tokenreq.c - what a token endpoint's (or IMDS's) answer means: the parser's table and
 * its bounds, and the classification of a failure as transient (retried with backoff) or
 * permanent (the credentials are wrong), with its AADSTS code, hint and log key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tokenreq.h"

static void test_parse_accepts_only_usable_tokens_within_bounds(void **state)
{
	(void)state;
	static struct tokenreq_response r;
	static const struct {
		const char *body;
		long status;
		bool ok;
		const char *token, *error;
		int64_t expires;
		long aadsts;
	} cases[] = {
	    {"{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"eyJ.a.b\"}", 200,
	     true, "eyJ.a.b", "", 3599, 0},
	    {"{\"access_token\":\"m\",\"expires_in\":\"86399\",\"token_type\":\"Bearer\"}\n", 200,
	     true, "m", "", 86399, 0},
	    {"{\"token_type\":\"Bearer\",\"expires_in\":3599}", 200, false, "", "invalid_response",
	     0, 0},
	    {"{\"error\":\"invalid_request\",\"error_description\":\"AADSTS90002: Tenant 'x' not "
	     "found.\\r\\nTrace ID: 1\",\"error_codes\":[90002]}",
	     400, false, "", "invalid_request", 0, 90002},
	    {"{\"error\":\"invalid_scope\",\"error_description\":\"AADSTS70011: bad scope\"}", 400,
	     false, "", "invalid_scope", 0, 70011},
	    {"<html>503</html>", 503, false, "", "invalid_response", 0, 0},
	    {"{\"access_token\":\"x\",\"expires_in\":1}", 503, false, "", "invalid_response", 0, 0},
	    {"{\"access_token\":\"a b\",\"expires_in\":60}", 200, false, "", "invalid_response", 0,
	     0},
	    {"{\"access_token\":\"x\",\"expires_in\":\"60s\"}", 200, false, "", "invalid_response",
	     0, 0},
	    {"{\"access_token\":\"x\",\"expires_in\":0}", 200, false, "", "invalid_response", 0, 0},
	    {"{\"access_token\":\"x\",\"expires_in\":60,\"token_type\":\"pop\"}", 200, false, "",
	     "invalid_response", 0, 0},
	    {"{\"access_token\":\"x\",\"expires_in\":60} {}", 200, false, "", "invalid_response", 0,
	     0},
	    {"[1,2]", 200, false, "", "invalid_response", 0, 0},
	    {"", 200, false, "", "invalid_response", 0, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bool ok = tokenreq_parse_response(cases[i].body, strlen(cases[i].body),
		                                  cases[i].status, &r);
		assert_int_equal(ok, cases[i].ok);
		assert_string_equal(r.access_token, cases[i].token);
		assert_string_equal(r.error, cases[i].error);
		assert_int_equal(r.aadsts, cases[i].aadsts);
		if (ok)
			assert_int_equal(r.expires_in_s, cases[i].expires);
	}
	/* The description keeps its first line only: Trace IDs are noise in logs. */
	assert_true(tokenreq_parse_response(cases[0].body, strlen(cases[0].body), 200, &r));
	assert_false(tokenreq_parse_response(cases[3].body, strlen(cases[3].body), 400, &r));
	assert_string_equal(r.error_description, "AADSTS90002: Tenant 'x' not found.");
	assert_true(r.server_error);
	const char *same_line =
	    "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: "
	    "Invalid client secret provided. Trace ID: 1 Correlation ID: 2 "
	    "Timestamp: 2026-01-01 00:00:00Z\"}";
	assert_false(tokenreq_parse_response(same_line, strlen(same_line), 401, &r));
	assert_string_equal(r.error_description, "AADSTS7000215: Invalid client secret provided.");
	assert_int_equal(r.aadsts, 7000215);

	/* Oversized: a body over 64 KiB, and a token over 16 KiB. */
	size_t big = TOKENREQ_BODY_MAX + 10;
	char *b = malloc(big + 1);
	assert_non_null(b);
	memset(b, ' ', big);
	b[big] = '\0';
	assert_false(tokenreq_parse_response(b, big, 200, &r));
	assert_non_null(strstr(r.error_description, "64 KiB"));
	int n = snprintf(b, big, "{\"expires_in\":60,\"access_token\":\"");
	memset(b + n, 'A', TOKENREQ_TOKEN_MAX + 1);
	snprintf(b + n + TOKENREQ_TOKEN_MAX + 1, 4, "\"}");
	assert_false(tokenreq_parse_response(b, strlen(b), 200, &r));
	assert_non_null(strstr(r.error_description, "16 KiB"));
	/* Exactly 16 KiB is fine. */
	snprintf(b + n + TOKENREQ_TOKEN_MAX, 4, "\"}");
	assert_true(tokenreq_parse_response(b, strlen(b), 200, &r));
	assert_int_equal(strlen(r.access_token), TOKENREQ_TOKEN_MAX);
	free(b);
}

static struct tokenreq_outcome classify(bool managed, long status, const char *body)
{
	static struct tokenreq_response r;
	struct tokenreq_outcome o;
	memset(&o, 0, sizeof o);
	assert_false(tokenreq_parse_response(body, strlen(body), status, &r));
	tokenreq_classify_http(managed, status, &r, &o);
	return o;
}

#define AAD_ERROR(code, text) "{\"error\":\"" code "\",\"error_description\":\"" text "\"}"

static void test_classify_http_transient_or_permanent(void **state)
{
	(void)state;
	static const struct {
		bool managed;
		long status;
		const char *body;
		enum tokenreq_kind kind;
	} cases[] = {
	    {false, 503, "<html>busy</html>", TOKENREQ_TRANSIENT},
	    {false, 500, AAD_ERROR("server_error", "AADSTS50000: oops"), TOKENREQ_TRANSIENT},
	    {false, 429, AAD_ERROR("throttled", "slow down"), TOKENREQ_TRANSIENT},
	    {false, 408, "", TOKENREQ_TRANSIENT},
	    {false, 200, "{\"expires_in\":60}", TOKENREQ_TRANSIENT}, /* 2xx without a token */
	    {false, 400, AAD_ERROR("temporarily_unavailable", "try later"), TOKENREQ_TRANSIENT},
	    {false, 401, AAD_ERROR("invalid_client", "AADSTS7000215: bad secret"),
	     TOKENREQ_PERMANENT},
	    {false, 400, AAD_ERROR("invalid_scope", "AADSTS70011: bad scope"), TOKENREQ_PERMANENT},
	    /* IMDS: 404 while an identity is being assigned, 410 while it restarts. */
	    {true, 404, "", TOKENREQ_TRANSIENT},
	    {true, 410, "", TOKENREQ_TRANSIENT},
	    {false, 404, "", TOKENREQ_PERMANENT},
	    {true, 400, AAD_ERROR("invalid_request", "Identity not found"), TOKENREQ_PERMANENT},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct tokenreq_outcome o =
		    classify(cases[i].managed, cases[i].status, cases[i].body);
		assert_int_equal(o.kind, cases[i].kind);
	}
}

static void test_classify_http_message_has_code_and_hint(void **state)
{
	(void)state;
	struct tokenreq_outcome o =
	    classify(false, 401, AAD_ERROR("invalid_client", "AADSTS7000215: bad secret"));
	assert_string_equal(o.msg, "token endpoint HTTP 401 invalid_client: AADSTS7000215: bad "
	                           "secret — invalid client secret — check client_secret_file / "
	                           "the graph-client-secret credential");
	assert_string_equal(o.key, "http:401:invalid_client:7000215");
	/* The code only from error_codes: it is named in the message once. */
	o = classify(false, 400,
	             "{\"error\":\"invalid_request\",\"error_description\":\"Tenant not found\","
	             "\"error_codes\":[90002]}");
	assert_string_equal(o.msg, "token endpoint HTTP 400 invalid_request: AADSTS90002: Tenant "
	                           "not found — tenant not found — wrong cloud or tenant_id?");
	/* No known code: no hint; IMDS named as such. */
	o = classify(true, 400, AAD_ERROR("invalid_request", "Identity not found"));
	assert_string_equal(o.msg, "IMDS HTTP 400 invalid_request: Identity not found");
	assert_string_equal(o.key, "http:400:invalid_request:0");
}

static void test_classify_curl_is_transient_with_curls_text(void **state)
{
	(void)state;
	struct tokenreq *req;
	struct tokenreq_outcome o;
	assert_true(tokenreq_new(NULL, &req));
	tokenreq_classify_curl(req, CURLE_COULDNT_CONNECT, &o);
	assert_int_equal(o.kind, TOKENREQ_TRANSIENT);
	assert_string_equal(o.msg, "token endpoint unreachable: Couldn't connect to server");
	assert_string_equal(o.key, "curl:7");
	tokenreq_free(req);
}

static void test_local_failure_is_permanent_and_keyed_by_its_text(void **state)
{
	(void)state;
	struct tokenreq *req;
	struct tokenreq_params p = {.t = {.credential = CFG_CRED_SECRET}};
	struct tokenreq_outcome o;
	assert_true(tokenreq_new(NULL, &req));
	snprintf(p.t.tenant_id, sizeof p.t.tenant_id, "not/one/segment");
	snprintf(p.t.authority_url, sizeof p.t.authority_url, "https://login.example");
	assert_false(tokenreq_prepare(req, &p, &o));
	assert_int_equal(o.kind, TOKENREQ_PERMANENT);
	assert_string_equal(o.msg, "tenant_id 'not/one/segment' is not a GUID or domain name");
	assert_string_equal(o.key,
	                    "local:tenant_id 'not/one/segment' is not a GUID or domain name");
	tokenreq_fail_local(req, "cannot start the token request", &o);
	assert_string_equal(o.key, "local:cannot start the token request");
	tokenreq_free(req);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_accepts_only_usable_tokens_within_bounds),
	    cmocka_unit_test(test_classify_http_transient_or_permanent),
	    cmocka_unit_test(test_classify_http_message_has_code_and_hint),
	    cmocka_unit_test(test_classify_curl_is_transient_with_curls_text),
	    cmocka_unit_test(test_local_failure_is_permanent_and_keyed_by_its_text),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
