/*
 * jwt.c - verification of certificate client assertions (RFC 7523 JWTs, RS256 or PS256).
 *
 * What Entra checks: the x5t / x5t#S256 header names the registered certificate, the
 * signature verifies with its key (PS256 with the salt length equal to the digest length,
 * as .NET verifies it), iss = sub = client id, aud = the token endpoint the client called,
 * exp in the future, nbf not in the future, jti present and not seen before.
 */
#include <json-c/linkhash.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gsim.h"

#define JWT_MAX 16384

static struct lh_table *seen_jti; /* "client_id jti" -> expiry (epoch s), under gs.mu */

static void jti_free(struct lh_entry *e)
{
	free((void *)lh_entry_k(e));
}

bool gs_jwt_init(void)
{
	seen_jti = lh_kchar_table_new(256, jti_free);
	return seen_jti != NULL;
}

void gs_jwt_shutdown(void)
{
	if (seen_jti)
		lh_table_free(seen_jti);
	seen_jti = NULL;
}

static json_object *decode_json(const char *part, size_t len)
{
	unsigned char buf[JWT_MAX];
	size_t n;
	if (!gs_b64url_decode(part, len, buf, sizeof(buf) - 1, &n))
		return NULL;
	buf[n] = '\0';
	json_object *o = json_tokener_parse((const char *)buf);
	if (o && !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

static const char *str_claim(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static bool num_claim(json_object *o, const char *key, int64_t *out)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) ||
	    !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
		return false;
	*out = json_object_get_int64(v);
	return true;
}

/* The header's thumbprints must name the registered certificate. */
static bool thumbprint_ok(const struct gs_client *c, json_object *hdr)
{
	const char *x5t = str_claim(hdr, "x5t");
	const char *x5t256 = str_claim(hdr, "x5t#S256");
	char enc[64];
	if (!x5t && !x5t256)
		return false;
	gs_b64url_encode(c->x5t, sizeof(c->x5t), enc, sizeof(enc));
	if (x5t && strcmp(x5t, enc) != 0)
		return false;
	gs_b64url_encode(c->x5t256, sizeof(c->x5t256), enc, sizeof(enc));
	return !x5t256 || strcmp(x5t256, enc) == 0;
}

static bool signature_ok(const struct gs_client *c, bool pss, const char *signed_part,
                         size_t signed_len, const char *sig64, size_t sig64_len)
{
	unsigned char sig[1024];
	size_t sig_len;
	EVP_PKEY_CTX *pctx = NULL;
	bool ok = false;
	if (!gs_b64url_decode(sig64, sig64_len, sig, sizeof(sig), &sig_len))
		return false;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!md || EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, c->cert_key) != 1)
		goto out;
	if (pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
	            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
		goto out;
	ok =
	    EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)signed_part, signed_len) == 1;
out:
	EVP_MD_CTX_free(md);
	return ok;
}

/* aud is a URL: any scheme://host, but exactly the path the client posted to. */
static bool audience_ok(const char *aud, const char *path)
{
	const char *p = NULL;
	if (strncmp(aud, "https://", 8) == 0)
		p = aud + 8;
	else if (strncmp(aud, "http://", 7) == 0)
		p = aud + 7;
	if (!p)
		return false;
	p = strchr(p, '/');
	return p && strcmp(p, path) == 0;
}

static int check_claims(const struct gs_client *c, json_object *pl, const char *aud_path,
                        int64_t now, char *msg, size_t cap)
{
	const char *iss = str_claim(pl, "iss"), *sub = str_claim(pl, "sub");
	const char *aud = str_claim(pl, "aud"), *jti = str_claim(pl, "jti");
	int64_t exp, nbf;
	if (!iss || !sub || strcasecmp(iss, c->client_id) != 0 ||
	    strcasecmp(sub, c->client_id) != 0)
		return snprintf(msg, cap,
		                "Client assertion application identifier doesn't match "
		                "'client_id' parameter (iss and sub must be '%s').",
		                c->client_id),
		       700021;
	if (!aud || !audience_ok(aud, aud_path))
		return snprintf(msg, cap,
		                "Client assertion audience claim does not match the "
		                "token endpoint (path %s).",
		                aud_path),
		       700023;
	if (!num_claim(pl, "exp", &exp) || exp <= now || (num_claim(pl, "nbf", &nbf) && nbf > now))
		return snprintf(msg, cap,
		                "Client assertion is not within its valid time range. "
		                "Current time: %lld.",
		                (long long)now),
		       700024;
	if (!jti || !*jti)
		return snprintf(msg, cap, "Client assertion has no 'jti' claim."), 50027;
	return 0;
}

/* Remembers the jti; a second use is a replay. */
static int note_jti(const struct gs_client *c, const char *jti, char *msg, size_t cap)
{
	char *key = NULL;
	if (asprintf(&key, "%s %s", c->client_id, jti) < 0)
		return snprintf(msg, cap, "Out of memory."), 50000;
	if (lh_table_lookup_ex(seen_jti, key, NULL)) {
		free(key);
		return snprintf(msg, cap, "The client assertion (jti) was already used."), 50027;
	}
	if (lh_table_insert(seen_jti, key, NULL) != 0) {
		free(key);
		return snprintf(msg, cap, "Out of memory."), 50000;
	}
	return 0;
}

int gs_jwt_verify_locked(const struct gs_client *c, const char *jwt, const char *aud_path,
                         int64_t now_s, char *msg, size_t msgcap)
{
	const char *d1 = strchr(jwt, '.');
	const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
	json_object *hdr = NULL, *pl = NULL;
	int code = 50027;
	snprintf(msg, msgcap, "JWT token is invalid or malformed.");
	if (!d2 || strchr(d2 + 1, '.') || strlen(jwt) > JWT_MAX || d2[1] == '\0')
		goto out;
	hdr = decode_json(jwt, (size_t)(d1 - jwt));
	pl = decode_json(d1 + 1, (size_t)(d2 - d1 - 1));
	const char *alg = hdr ? str_claim(hdr, "alg") : NULL;
	if (!pl || !alg)
		goto out;
	bool pss = strcmp(alg, "PS256") == 0;
	if (!pss && strcmp(alg, "RS256") != 0) {
		snprintf(msg, msgcap, "The JWT algorithm '%s' is not supported (RS256, PS256).",
		         alg);
		goto out;
	}
	code = 700027;
	if (!thumbprint_ok(c, hdr)) {
		snprintf(msg, msgcap,
		         "Client assertion failed signature validation: the key "
		         "named by x5t/x5t#S256 was not found.");
		goto out;
	}
	if (!signature_ok(c, pss, jwt, (size_t)(d2 - jwt), d2 + 1, strlen(d2 + 1))) {
		snprintf(msg, msgcap, "Client assertion contains an invalid signature.");
		goto out;
	}
	code = check_claims(c, pl, aud_path, now_s, msg, msgcap);
	if (code == 0)
		code = note_jti(c, str_claim(pl, "jti"), msg, msgcap);
out:
	json_object_put(hdr);
	json_object_put(pl);
	return code;
}
