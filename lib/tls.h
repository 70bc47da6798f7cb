/*
 * tls.h - what a libcurl handle trusts: the system's CA store, plus [graph] ca_file.
 *
 * CURLOPT_CAINFO would replace the system store with ca_file; an extra bundle (a private CA
 * for a proxy or a simulator) must add to it instead, so the certificates of ca_file are
 * loaded into each connection's X509 store after libcurl has set up the system's.
 */
#ifndef CHATPROV_TLS_H
#define CHATPROV_TLS_H

#include <curl/curl.h>

#include "common.h"

/*
 * Makes easy trust ca_file's certificates on top of the system store; "" changes nothing.
 * ca_file must stay valid as long as the handle may connect. A file that cannot be read
 * fails the connection (CURLE_SSL_CACERT_BADFILE): trust never silently shrinks.
 */
bool tls_trust_ca_file(CURL *easy, const char *ca_file) CP_MUSTCHECK;

#endif
