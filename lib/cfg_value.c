/*
 * cfg_value.c - the value parsers: a key's text (from the file, the environment or its
 * default) checked against its type and bounds and stored into struct cfg.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfg_int.h"
#include "log.h"

void value_fmt_num(double v, char *buf, size_t cap)
{
	snprintf(buf, cap, "%.15g", v);
	if (strtod(buf, NULL) != v)
		snprintf(buf, cap, "%.17g", v);
}

static bool parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = {"yes", "true", "1", "on"};
	static const char *const no[] = {"no", "false", "0", "off"};
	for (size_t i = 0; i < CP_ARRAY_LEN(yes); i++) {
		if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
			*out = strcasecmp(v, yes[i]) == 0;
			return true;
		}
	}
	return false;
}

static bool parse_number(const struct cfg_key *k, const char *v, double *out, char *err,
                         size_t errcap)
{
	/* strtod alone would take "inf", "nan", hex and leading blanks. */
	bool integer = k->type == CFG_T_UINT;
	const char *mag = v[0] == '-' ? v + 1 : v;
	size_t len = strlen(mag);
	bool valid = integer ? len > 0 && strspn(mag, "0123456789") == len
	                     : strspn(mag, "0123456789.eE+-") == len &&
	                           (isdigit((unsigned char)mag[0]) || mag[0] == '.');
	char *end = NULL;
	double d = 0;
	if (valid && integer) {
		errno = 0;
		unsigned long long u = strtoull(mag, &end, 10);
		d = errno == ERANGE ? HUGE_VAL : (double)u;
		if (v[0] == '-' && d != 0)
			d = -d;
	} else if (valid) {
		d = strtod(v, &end);
	}
	if (!valid || *end != '\0' || isnan(d)) {
		snprintf(err, errcap, "'%s' is not %s", v, integer ? "a whole number" : "a number");
		return false;
	}
	if (!(d >= k->min && d <= k->max)) {
		char lo[32], hi[32];
		value_fmt_num(k->min, lo, sizeof(lo));
		value_fmt_num(k->max, hi, sizeof(hi));
		snprintf(err, errcap, "'%s' is out of range (%s..%s)", v, lo, hi);
		return false;
	}
	*out = d;
	return true;
}

static int find_choice(const char *const *choices, const char *v)
{
	for (int i = 0; choices[i]; i++)
		if (strcmp(choices[i], v) == 0)
			return i;
	return -1;
}

static void list_choices(const char *const *choices, char *buf, size_t cap)
{
	size_t len = 0;
	buf[0] = '\0';
	for (int i = 0; choices[i] && len < cap; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "|" : "", choices[i]);
}

static bool host_is_loopback(const char *host)
{
	struct in_addr a4;
	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
		return true;
	return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

static bool host_is_linklocal(const char *host)
{
	struct in_addr a4;
	return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 16) == 0xa9fe;
}

/* http(s), a host, no user info or fragment; plain http only to loopback (or IMDS). */
static bool check_url(const struct cfg_key *k, const char *v, char *err, size_t errcap)
{
	bool ok = false;
	char *scheme = NULL, *host = NULL, *user = NULL, *frag = NULL, *query = NULL;
	CURLU *u = curl_url();
	if (!u) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	if (curl_url_set(u, CURLUPART_URL, v, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0') {
		snprintf(err, errcap,
		         "'%s' is not a valid URL (expected https://host[:port][/path])", v);
		goto out;
	}
	if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0) {
		snprintf(err, errcap, "'%s': scheme must be https (or http to a loopback host)", v);
		goto out;
	}
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
	    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK) {
		snprintf(err, errcap, "URL must not contain user info or a fragment");
		goto out;
	}
	/* Roots get paths appended, so a query would end up in the middle; IMDS may have one. */
	if (!(k->flags & KF_LINKLOCAL) &&
	    curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
		snprintf(err, errcap,
		         "URL must not contain a query (it is a root that paths are "
		         "appended to)");
		goto out;
	}
	if (strcmp(scheme, "http") == 0 && !host_is_loopback(host) &&
	    !((k->flags & KF_LINKLOCAL) && host_is_linklocal(host))) {
		snprintf(err, errcap,
		         "'%s': plain http is only allowed to loopback hosts (127.0.0.0/8, "
		         "localhost, [::1]); use https",
		         v);
		goto out;
	}
	/* Allowed for local test endpoints only: say so, every time the value is loaded. */
	if (strcmp(scheme, "http") == 0 && host_is_loopback(host))
		log_warning(
		    "[%s] %s = %s: plain http, unencrypted; for loopback test endpoints only",
		    k->section, k->key, v);
	ok = true;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(frag);
	curl_free(query);
	curl_url_cleanup(u);
	return ok;
}

/* "host:port" with a non-empty host ("[v6]" allowed) and a port 0..65535 (0: ephemeral). */
static bool check_listen(const char *v, char *err, size_t errcap)
{
	const char *colon = strrchr(v, ':');
	bool host_ok = false;
	if (colon && colon != v) {
		if (v[0] == '[')
			host_ok = colon[-1] == ']' && colon - v > 2;
		else
			host_ok = memchr(v, ':', (size_t)(colon - v)) == NULL;
	}
	char *end = NULL;
	long port = 0;
	if (colon && isdigit((unsigned char)colon[1])) {
		errno = 0;
		port = strtol(colon + 1, &end, 10);
	}
	if (!host_ok || !end || *end != '\0' || errno || port < 0 || port > 65535) {
		snprintf(err, errcap, "'%s' is not host:port (e.g. 127.0.0.1:9464; empty disables)",
		         v);
		return false;
	}
	return true;
}

/* Kafka's own rule for topic names. */
static bool check_topic(const char *v, char *err, size_t errcap)
{
	size_t len = strlen(v);
	if (len > 249 ||
	    strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	              "0123456789._-") != len ||
	    strcmp(v, ".") == 0 || strcmp(v, "..") == 0) {
		snprintf(err, errcap,
		         "'%s' is not a valid Kafka topic name ([A-Za-z0-9._-], at most 249)", v);
		return false;
	}
	return true;
}

static bool store_text(const char *v, void *dst, size_t size, char *err, size_t errcap)
{
	size_t len = strlen(v);
	if (len >= size) {
		snprintf(err, errcap, "value too long (%zu characters, at most %zu)", len,
		         size - 1);
		return false;
	}
	memcpy(dst, v, len + 1);
	return true;
}

static bool store_path(const struct load *ld, const char *v, void *dst, size_t size, char *err,
                       size_t errcap)
{
	char buf[CFG_VALUE_MAX * 2];
	if (v[0] == '\0' || v[0] == '/' || ld->dir[0] == '\0')
		return store_text(v, dst, size, err, errcap);
	/* Relative paths mean relative to the file, not to whatever the cwd happens to be. */
	snprintf(buf, sizeof(buf), "%s/%s", ld->dir, v);
	return store_text(buf, dst, size, err, errcap);
}

static bool store_url(const struct cfg_key *k, const char *v, void *dst, size_t size, char *err,
                      size_t errcap)
{
	if (v[0] == '\0') {
		if (k->flags & KF_LINKLOCAL) {
			snprintf(err, errcap, "must not be empty");
			return false;
		}
		return store_text(v, dst, size, err, errcap);
	}
	if (!check_url(k, v, err, errcap) || !store_text(v, dst, size, err, errcap))
		return false;
	/* Roots are joined with "/v1.0/..." and "/{tenant}/...": no trailing slash. */
	char *s = dst;
	size_t len = strlen(s);
	while (len > 0 && s[len - 1] == '/' && !(len >= 3 && s[len - 2] == '/'))
		s[--len] = '\0';
	return true;
}

static bool store_uint(const struct cfg_key *k, double d, void *dst)
{
	if (k->size == sizeof(unsigned)) {
		unsigned u = (unsigned)d;
		memcpy(dst, &u, sizeof(u));
	} else {
		size_t z = (size_t)d;
		memcpy(dst, &z, sizeof(z));
	}
	return true;
}

bool value_set(const struct load *ld, const struct cfg_key *k, void *base, const char *v, char *err,
               size_t errcap)
{
	void *dst = (char *)base + k->offset;
	double d;
	bool b;
	int idx;
	switch (k->type) {
	case CFG_T_STRING:
		if ((k->flags & KF_TOPIC) && v[0] && !check_topic(v, err, errcap))
			return false;
		return store_text(v, dst, k->size, err, errcap);
	case CFG_T_PATH:
		return store_path(ld, v, dst, k->size, err, errcap);
	case CFG_T_URL:
		return store_url(k, v, dst, k->size, err, errcap);
	case CFG_T_LISTEN:
		if (v[0] && !check_listen(v, err, errcap))
			return false;
		return store_text(v, dst, k->size, err, errcap);
	case CFG_T_BOOL:
		if (!parse_bool(v, &b)) {
			snprintf(err, errcap,
			         "'%s' is not a boolean (yes/no, true/false, on/off, 1/0)", v);
			return false;
		}
		memcpy(dst, &b, sizeof(b));
		return true;
	case CFG_T_UINT:
		return parse_number(k, v, &d, err, errcap) && store_uint(k, d, dst);
	case CFG_T_DOUBLE:
		if (!parse_number(k, v, &d, err, errcap))
			return false;
		memcpy(dst, &d, sizeof(d));
		return true;
	case CFG_T_ENUM:
	case CFG_T_CHOICE:
		idx = find_choice(k->choices, v);
		if (idx < 0) {
			char list[128];
			list_choices(k->choices, list, sizeof(list));
			snprintf(err, errcap, "'%s' is not one of %s", v, list);
			return false;
		}
		if (k->type == CFG_T_CHOICE)
			return store_text(v, dst, k->size, err, errcap);
		memcpy(dst, &idx, sizeof(idx));
		return true;
	}
	snprintf(err, errcap, "internal error: unknown key type");
	return false;
}
