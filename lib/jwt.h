/*
 * jwt.h - signed JWT client assertions for certificate credentials (RFC 7523).
 *
 * Microsoft identity platform accepts a JWT signed with the app's certificate key instead of
 * a client secret. Header: alg PS256 (RSA-PSS, SHA-256, MGF1-SHA-256, salt 32) or RS256,
 * typ JWT, x5t#S256 (base64url SHA-256 of the DER certificate) and, for RS256, x5t (SHA-1).
 * Claims: aud (the token endpoint URL), iss = sub = client id, jti (random GUID), nbf = iat =
 * now, exp = now + lifetime. Assertions are credentials: never log them.
 */
#ifndef CHATPROV_JWT_H
#define CHATPROV_JWT_H

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "cfg.h"
#include "common.h"

/* An assertion with a 4096-bit key and long URLs stays well below this. */
#define JWT_ASSERTION_MAX 8192
/* Microsoft accepts exp up to 10 minutes ahead; 600 s is what MSAL uses. */
#define JWT_DEFAULT_LIFETIME_S 600

struct jwt_claims {
	const char *client_id; /* iss and sub */
	const char *audience;  /* aud: the token endpoint URL */
	int64_t now_s;         /* nbf and iat, Unix seconds */
	int64_t lifetime_s;    /* exp = now_s + lifetime_s */
};

/*
 * Loads a PEM certificate and RSA private key (key_path NULL or "" = the key is in the
 * certificate file). Fails with a clear message when a file is unreadable, the certificate is
 * expired or not yet valid, or the key does not belong to the certificate.
 */
bool jwt_load_credential(const char *cert_path, const char *key_path, X509 **cert, EVP_PKEY **key,
                         char *err, size_t errcap) CP_MUSTCHECK;

/* Builds and signs an assertion into out (NUL-terminated). */
bool jwt_sign_assertion(X509 *cert, EVP_PKEY *key, enum cfg_assertion_alg alg,
                        const struct jwt_claims *claims, char *out, size_t cap, char *err,
                        size_t errcap) CP_MUSTCHECK;

/* Base64url without padding; out gets a NUL-terminated string. */
bool jwt_b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap) CP_MUSTCHECK;
/* Decodes base64url (padding optional); rejects any character outside the alphabet. */
bool jwt_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap,
                       size_t *outlen) CP_MUSTCHECK;

#endif
