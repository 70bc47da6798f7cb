/* tls.c - the system's CA store plus [graph] ca_file, for every libcurl handle. */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "log.h"

/* Runs when libcurl has built the connection's SSL_CTX, system store included. */
static CURLcode add_ca_file(CURL *easy, void *ssl_ctx, void *arg)
{
	const char *ca_file = arg;
	(void)easy;
	X509_STORE *store = SSL_CTX_get_cert_store(ssl_ctx);
	if (!store || X509_STORE_load_file(store, ca_file) != 1) {
		char why[256];
		ERR_error_string_n(ERR_get_error(), why, sizeof why);
		ERR_clear_error();
		log_error("[graph] ca_file %s: cannot load: %s", ca_file, why);
		return CURLE_SSL_CACERT_BADFILE;
	}
	return CURLE_OK;
}

bool tls_trust_ca_file(CURL *easy, const char *ca_file)
{
	if (!ca_file[0])
		return true;
	return curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, add_ca_file) == CURLE_OK &&
	       curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, (void *)ca_file) == CURLE_OK;
}
