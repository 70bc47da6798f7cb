/* jwt.c - RS256/PS256 client assertions signed with OpenSSL's EVP API. */
#include "jwt.h"

#include <json-c/json.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends OpenSSL's most recent error reason so that "why" is never lost. */
static void ssl_error(char *err, size_t errcap, const char *what)
{
	unsigned long e = ERR_get_error();
	char reason[256] = "";
	if (e)
		ERR_error_string_n(e, reason, sizeof reason);
	ERR_clear_error();
	snprintf(err, errcap, "%s%s%s", what, e ? ": " : "", reason);
}

bool jwt_b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap)
{
	if (len > (size_t)INT32_MAX || cap < 4 * ((len + 2) / 3) + 1)
		return false;
	int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (int i = 0; i < n; i++) {
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
	}
	return true;
}

bool jwt_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *outlen)
{
	while (len > 0 && in[len - 1] == '=')
		len--;
	if (len % 4 == 1 || len > (size_t)INT32_MAX - 4)
		return false;
	size_t padded = (len + 3) / 4 * 4, pad = padded - len;
	if (cap < padded / 4 * 3)
		return false;
	char *tmp = malloc(padded + 1);
	if (!tmp)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		/* Standard alphabet characters are not base64url: refuse them. */
		if (c == '+' || c == '/' || c == '=') {
			free(tmp);
			return false;
		}
		tmp[i] = c == '-' ? '+' : c == '_' ? '/' : c;
	}
	memset(tmp + len, '=', pad);
	int n = EVP_DecodeBlock(out, (unsigned char *)tmp, (int)padded);
	free(tmp);
	if (n < 0 || (size_t)n < pad)
		return false;
	*outlen = (size_t)n - pad;
	return true;
}

static bool check_validity(X509 *cert, const char *path, char *err, size_t errcap)
{
	const ASN1_TIME *not_after = X509_get0_notAfter(cert);
	const ASN1_TIME *not_before = X509_get0_notBefore(cert);
	const char *problem = NULL;
	const ASN1_TIME *when = NULL;
	if (X509_cmp_current_time(not_after) <= 0) {
		problem = "expired on";
		when = not_after;
	} else if (X509_cmp_current_time(not_before) >= 0) {
		problem = "is not valid before";
		when = not_before;
	}
	if (!problem)
		return true;
	char stamp[64] = "?";
	BIO *mem = BIO_new(BIO_s_mem());
	if (mem && ASN1_TIME_print(mem, when) > 0) {
		int n = BIO_read(mem, stamp, (int)sizeof stamp - 1);
		stamp[n > 0 ? n : 0] = '\0';
	}
	BIO_free(mem);
	snprintf(err, errcap, "certificate %s %s %s: renew it and update certificate_file", path,
	         problem, stamp);
	return false;
}

static bool read_pem(const char *path, bool want_key, void **out, char *err, size_t errcap)
{
	BIO *bio = BIO_new_file(path, "r");
	if (!bio) {
		char what[CFG_VALUE_MAX + 64];
		snprintf(what, sizeof what, "cannot read %s", path);
		ssl_error(err, errcap, what);
		return false;
	}
	*out = want_key ? (void *)PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
	                : (void *)PEM_read_bio_X509(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!*out) {
		char what[CFG_VALUE_MAX + 64];
		snprintf(what, sizeof what, "no PEM %s in %s",
		         want_key ? "private key" : "certificate", path);
		ssl_error(err, errcap, what);
		return false;
	}
	return true;
}

bool jwt_load_credential(const char *cert_path, const char *key_path, X509 **cert, EVP_PKEY **key,
                         char *err, size_t errcap)
{
	X509 *c = NULL;
	EVP_PKEY *k = NULL;
	if (!key_path || !*key_path)
		key_path = cert_path;
	if (!read_pem(cert_path, false, (void **)&c, err, errcap) ||
	    !check_validity(c, cert_path, err, errcap) ||
	    !read_pem(key_path, true, (void **)&k, err, errcap))
		goto fail;
	if (!EVP_PKEY_is_a(k, "RSA")) {
		snprintf(err, errcap, "private key %s is not an RSA key (PS256/RS256 need RSA)",
		         key_path);
		goto fail;
	}
	if (X509_check_private_key(c, k) != 1) {
		ERR_clear_error();
		snprintf(err, errcap, "private key %s does not match certificate %s", key_path,
		         cert_path);
		goto fail;
	}
	*cert = c;
	*key = k;
	return true;
fail:
	X509_free(c);
	EVP_PKEY_free(k);
	return false;
}

/* Base64url of a digest of the DER certificate: x5t (SHA-1) and x5t#S256 (SHA-256). */
static bool thumbprint(X509 *cert, const EVP_MD *md, char *out, size_t cap)
{
	unsigned char dig[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	return X509_digest(cert, md, dig, &n) == 1 && jwt_b64url_encode(dig, n, out, cap);
}

static bool add_str(struct json_object *o, const char *k, const char *v)
{
	struct json_object *s = json_object_new_string(v);
	if (!s || json_object_object_add(o, k, s) != 0) {
		json_object_put(s);
		return false;
	}
	return true;
}

static bool add_int(struct json_object *o, const char *k, int64_t v)
{
	struct json_object *i = json_object_new_int64(v);
	if (!i || json_object_object_add(o, k, i) != 0) {
		json_object_put(i);
		return false;
	}
	return true;
}

static bool random_guid(char *out, size_t cap)
{
	unsigned char b[16];
	if (RAND_bytes(b, sizeof b) != 1)
		return false;
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	int n = snprintf(out, cap,
	                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
	                 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
	                 b[12], b[13], b[14], b[15]);
	return n > 0 && (size_t)n < cap;
}

static struct json_object *build_header(X509 *cert, enum cfg_assertion_alg alg)
{
	char s256[64], s1[64];
	struct json_object *h = json_object_new_object();
	if (!h || !thumbprint(cert, EVP_sha256(), s256, sizeof s256) ||
	    !add_str(h, "alg", alg == CFG_ALG_RS256 ? "RS256" : "PS256") ||
	    !add_str(h, "typ", "JWT") || !add_str(h, "x5t#S256", s256))
		goto fail;
	/* Older v1 endpoints only know the SHA-1 thumbprint; PS256 is v2-only, so skip it there. */
	if (alg == CFG_ALG_RS256 &&
	    (!thumbprint(cert, EVP_sha1(), s1, sizeof s1) || !add_str(h, "x5t", s1)))
		goto fail;
	return h;
fail:
	json_object_put(h);
	return NULL;
}

static struct json_object *build_claims(const struct jwt_claims *c)
{
	char jti[40];
	struct json_object *o = json_object_new_object();
	if (!o || !random_guid(jti, sizeof jti) || !add_str(o, "aud", c->audience) ||
	    !add_str(o, "iss", c->client_id) || !add_str(o, "sub", c->client_id) ||
	    !add_str(o, "jti", jti) || !add_int(o, "nbf", c->now_s) ||
	    !add_int(o, "iat", c->now_s) || !add_int(o, "exp", c->now_s + c->lifetime_s)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

/* Appends base64url(JSON of obj) to out at *len. */
static bool append_json(struct json_object *obj, char *out, size_t cap, size_t *len)
{
	size_t n = 0;
	const char *s = json_object_to_json_string_length(
	    obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	if (!s || *len >= cap ||
	    !jwt_b64url_encode((const unsigned char *)s, n, out + *len, cap - *len))
		return false;
	*len += strlen(out + *len);
	return true;
}

static bool sign(EVP_PKEY *key, enum cfg_assertion_alg alg, const char *input, size_t len,
                 unsigned char *sig, size_t *siglen, char *err, size_t errcap)
{
	EVP_PKEY_CTX *pctx = NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	bool ok = md && EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, key) == 1;
	if (ok && alg == CFG_ALG_PS256)
		ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
		     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
		     EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) == 1;
	ok = ok && EVP_DigestSign(md, sig, siglen, (const unsigned char *)input, len) == 1;
	if (!ok)
		ssl_error(err, errcap, "signing the client assertion failed");
	EVP_MD_CTX_free(md);
	return ok;
}

bool jwt_sign_assertion(X509 *cert, EVP_PKEY *key, enum cfg_assertion_alg alg,
                        const struct jwt_claims *claims, char *out, size_t cap, char *err,
                        size_t errcap)
{
	struct json_object *header = build_header(cert, alg);
	struct json_object *body = build_claims(claims);
	unsigned char sig[1024]; /* up to RSA-8192 */
	size_t len = 0, siglen = sizeof sig;
	if (!header || !body) {
		snprintf(err, errcap, "building the client assertion failed (out of memory?)");
		goto fail;
	}
	if ((size_t)EVP_PKEY_get_size(key) > sizeof sig) {
		snprintf(err, errcap, "RSA key larger than 8192 bits");
		goto fail;
	}
	if (!append_json(header, out, cap, &len) || len + 1 >= cap)
		goto too_long;
	out[len++] = '.';
	if (!append_json(body, out, cap, &len))
		goto too_long;
	if (!sign(key, alg, out, len, sig, &siglen, err, errcap))
		goto fail;
	if (len + 1 >= cap)
		goto too_long;
	out[len++] = '.';
	if (!jwt_b64url_encode(sig, siglen, out + len, cap - len))
		goto too_long;
	json_object_put(header);
	json_object_put(body);
	return true;
too_long:
	snprintf(err, errcap, "client assertion longer than %zu bytes", cap);
fail:
	json_object_put(header);
	json_object_put(body);
	if (cap)
		out[0] = '\0';
	return false;
}
