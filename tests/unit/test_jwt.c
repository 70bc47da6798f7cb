/* test_jwt.c - client assertions: base64url, header and claims, PS256/RS256 signatures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "jwt.h"

static EVP_PKEY *test_key, *other_key;
static X509 *test_cert;
static char tmpdir[] = "/tmp/test_jwt.XXXXXX";

/* A self-signed certificate valid from now+from_s to now+to_s. */
static X509 *make_cert(EVP_PKEY *key, long from_s, long to_s)
{
	X509 *c = X509_new();
	assert_non_null(c);
	assert_int_equal(X509_set_version(c, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(c), from_s));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(c), to_s));
	assert_int_equal(X509_set_pubkey(c, key), 1);
	X509_NAME *name = X509_get_subject_name(c);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"chatprov-test",
	                           -1, -1, 0);
	assert_int_equal(X509_set_issuer_name(c, name), 1);
	assert_true(X509_sign(c, key, EVP_sha256()) > 0);
	return c;
}

static void write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	if (cert)
		assert_int_equal(PEM_write_X509(f, cert), 1);
	if (key)
		assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
}

static int setup(void **state)
{
	(void)state;
	test_key = EVP_RSA_gen(2048);
	other_key = EVP_RSA_gen(2048);
	if (!test_key || !other_key || !mkdtemp(tmpdir))
		return -1;
	test_cert = make_cert(test_key, -60, 86400);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		return -1;
	X509_free(test_cert);
	EVP_PKEY_free(test_key);
	EVP_PKEY_free(other_key);
	return 0;
}

static void test_b64url(void **state)
{
	(void)state;
	char out[16];
	unsigned char back[16];
	size_t n = 0;
	static const struct {
		const char *in, *out;
	} vec[] = {{"", ""},        {"f", "Zg"},        {"fo", "Zm8"},
	           {"foo", "Zm9v"}, {"foob", "Zm9vYg"}, {"\xfb\xff", "-_8"}};
	for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
		size_t len = strlen(vec[i].in);
		assert_true(
		    jwt_b64url_encode((const unsigned char *)vec[i].in, len, out, sizeof out));
		assert_string_equal(out, vec[i].out);
		assert_true(jwt_b64url_decode(out, strlen(out), back, sizeof back, &n));
		assert_int_equal(n, len);
		assert_memory_equal(back, vec[i].in, len);
	}
	assert_false(jwt_b64url_decode("+/8", 3, back, sizeof back, &n));
	assert_false(jwt_b64url_decode("Z", 1, back, sizeof back, &n));
	assert_false(jwt_b64url_decode("Zm9v!", 5, back, sizeof back, &n));
	assert_false(
	    jwt_b64url_encode((const unsigned char *)"foo", 3, out, 4)); /* no room for NUL */
}

/* Decodes one base64url part of a JWT into a json object. */
static struct json_object *decode_part(const char *s, size_t len)
{
	unsigned char buf[4096];
	size_t n = 0;
	assert_true(jwt_b64url_decode(s, len, buf, sizeof buf - 1, &n));
	buf[n] = '\0';
	struct json_object *o = json_tokener_parse((const char *)buf);
	assert_non_null(o);
	return o;
}

static const char *str_of(struct json_object *o, const char *key)
{
	struct json_object *v;
	assert_true(json_object_object_get_ex(o, key, &v));
	return json_object_get_string(v);
}

static int64_t int_of(struct json_object *o, const char *key)
{
	struct json_object *v;
	assert_true(json_object_object_get_ex(o, key, &v));
	assert_true(json_object_is_type(v, json_type_int));
	return json_object_get_int64(v);
}

static void expect_thumbprint(struct json_object *hdr, const char *key, const EVP_MD *md)
{
	unsigned char dig[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	char want[64];
	assert_int_equal(X509_digest(test_cert, md, dig, &n), 1);
	assert_true(jwt_b64url_encode(dig, n, want, sizeof want));
	assert_string_equal(str_of(hdr, key), want);
}

/* Verifies the signature exactly as Entra ID does: PSS with salt 32 and MGF1-SHA256, or PKCS1. */
static bool verify(const char *jwt, EVP_PKEY *key, enum cfg_assertion_alg alg)
{
	const char *dot2 = strrchr(jwt, '.');
	unsigned char sig[1024];
	size_t siglen = 0;
	assert_true(jwt_b64url_decode(dot2 + 1, strlen(dot2 + 1), sig, sizeof sig, &siglen));
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	assert_int_equal(EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, key), 1);
	if (alg == CFG_ALG_PS256) {
		assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
		assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32), 1);
		assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()), 1);
	}
	int rc =
	    EVP_DigestVerify(md, sig, siglen, (const unsigned char *)jwt, (size_t)(dot2 - jwt));
	EVP_MD_CTX_free(md);
	return rc == 1;
}

static void check_assertion(enum cfg_assertion_alg alg)
{
	char jwt[JWT_ASSERTION_MAX], err[512] = "";
	const char *aud =
	    "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
	struct jwt_claims c = {.client_id = "11111111-2222-3333-4444-555555555555",
	                       .audience = aud,
	                       .now_s = 1790000000,
	                       .lifetime_s = 600};
	assert_true(
	    jwt_sign_assertion(test_cert, test_key, alg, &c, jwt, sizeof jwt, err, sizeof err));
	const char *dot1 = strchr(jwt, '.'), *dot2 = strrchr(jwt, '.');
	assert_non_null(dot1);
	assert_true(dot2 > dot1);
	assert_null(strchr(jwt, '=')); /* no padding */

	struct json_object *hdr = decode_part(jwt, (size_t)(dot1 - jwt));
	assert_string_equal(str_of(hdr, "alg"), alg == CFG_ALG_PS256 ? "PS256" : "RS256");
	assert_string_equal(str_of(hdr, "typ"), "JWT");
	expect_thumbprint(hdr, "x5t#S256", EVP_sha256());
	if (alg == CFG_ALG_RS256)
		expect_thumbprint(hdr, "x5t", EVP_sha1());
	else
		assert_false(json_object_object_get_ex(hdr, "x5t", NULL));
	json_object_put(hdr);

	struct json_object *cl = decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	assert_string_equal(str_of(cl, "aud"), aud);
	assert_string_equal(str_of(cl, "iss"), c.client_id);
	assert_string_equal(str_of(cl, "sub"), c.client_id);
	const char *jti = str_of(cl, "jti");
	assert_int_equal(strlen(jti), 36);
	assert_int_equal(jti[14], '4');
	assert_int_equal(int_of(cl, "nbf"), c.now_s);
	assert_int_equal(int_of(cl, "iat"), c.now_s);
	assert_int_equal(int_of(cl, "exp"), c.now_s + 600);
	json_object_put(cl);

	assert_true(verify(jwt, test_key, alg));
	assert_false(verify(jwt, other_key, alg));
	/* Any change to the signed part breaks the signature. */
	jwt[3] = jwt[3] == 'A' ? 'B' : 'A';
	assert_false(verify(jwt, test_key, alg));
}

static void test_ps256(void **state)
{
	(void)state;
	check_assertion(CFG_ALG_PS256);
}

static void test_rs256(void **state)
{
	(void)state;
	check_assertion(CFG_ALG_RS256);
}

static void test_unique_jti(void **state)
{
	(void)state;
	char a[JWT_ASSERTION_MAX], b[JWT_ASSERTION_MAX], err[512];
	struct jwt_claims c = {.client_id = "c", .audience = "aud", .now_s = 1, .lifetime_s = 600};
	assert_true(jwt_sign_assertion(test_cert, test_key, CFG_ALG_RS256, &c, a, sizeof a, err,
	                               sizeof err));
	assert_true(jwt_sign_assertion(test_cert, test_key, CFG_ALG_RS256, &c, b, sizeof b, err,
	                               sizeof err));
	/* RS256 is deterministic: only jti differs. */
	assert_string_not_equal(a, b);
	assert_false(
	    jwt_sign_assertion(test_cert, test_key, CFG_ALG_PS256, &c, a, 100, err, sizeof err));
	assert_non_null(strstr(err, "longer than"));
}

static void path_in(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void test_load_credential(void **state)
{
	(void)state;
	char cert[256], key[256], both[256], expired[256], err[512];
	X509 *c = NULL;
	EVP_PKEY *k = NULL;
	path_in(cert, sizeof cert, "cert.pem");
	path_in(key, sizeof key, "key.pem");
	path_in(both, sizeof both, "both.pem");
	path_in(expired, sizeof expired, "expired.pem");
	write_pem(cert, test_cert, NULL);
	write_pem(key, NULL, test_key);
	write_pem(both, test_cert, test_key);

	assert_true(jwt_load_credential(cert, key, &c, &k, err, sizeof err));
	assert_int_equal(X509_cmp(c, test_cert), 0);
	X509_free(c);
	EVP_PKEY_free(k);
	assert_true(jwt_load_credential(both, "", &c, &k, err, sizeof err));
	X509_free(c);
	EVP_PKEY_free(k);

	X509 *old = make_cert(test_key, -86400 * 30, -86400);
	write_pem(expired, old, NULL);
	X509_free(old);
	assert_false(jwt_load_credential(expired, key, &c, &k, err, sizeof err));
	assert_non_null(strstr(err, "expired on"));
	assert_non_null(strstr(err, expired));

	char wrong[256];
	path_in(wrong, sizeof wrong, "wrong.pem");
	write_pem(wrong, NULL, other_key);
	assert_false(jwt_load_credential(cert, wrong, &c, &k, err, sizeof err));
	assert_non_null(strstr(err, "does not match"));

	assert_false(jwt_load_credential("/nonexistent/cert.pem", key, &c, &k, err, sizeof err));
	assert_non_null(strstr(err, "cannot read /nonexistent/cert.pem"));
	assert_false(jwt_load_credential(key, key, &c, &k, err, sizeof err));
	assert_non_null(strstr(err, "no PEM certificate"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_b64url),          cmocka_unit_test(test_ps256),
	    cmocka_unit_test(test_rs256),           cmocka_unit_test(test_unique_jti),
	    cmocka_unit_test(test_load_credential),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
