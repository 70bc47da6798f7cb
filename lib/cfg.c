/*
 * cfg.c - configuration: libinih for the syntax, one table of keys for the meaning.
 *
 * Loading runs in three passes over one struct cfg that starts out holding every default:
 *   1. the file: inih calls on_pair() for each "key = value"; the value is parsed and stored
 *      at once, so the first bad line is the one reported;
 *   2. the environment: CHATPROV_<SECTION>_<KEY> variables replace stored values, then
 *      AZURE_* (Kubernetes workload identity) fill [auth] keys still empty;
 *   3. finishing: [tenant.NAME] profiles inherit from [auth]/[limits], credentials are
 *      resolved, cloud presets fill the roots, required keys and cross-key rules are checked.
 * Every stored value remembers where it came from (file line or environment variable) so that
 * errors found in pass 3 can still point at a line.
 */
#include "cfg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "secretfile.h"

/* Longest accepted line; inih's own default (200) is too short for paths and URLs. */
#define CFG_LINE_MAX 4096
#define ENV_PREFIX   "CHATPROV_"

/* ---- cloud presets ---------------------------------------------------------------------- */

struct cloud_preset {
	const char *graph_root;
	const char *authority;
};

/* clang-format off */
static const struct cloud_preset clouds[] = {
	[CFG_CLOUD_GLOBAL] = {"https://graph.microsoft.com", "https://login.microsoftonline.com"},
	[CFG_CLOUD_USGOV] = {"https://graph.microsoft.us", "https://login.microsoftonline.us"},
	[CFG_CLOUD_USGOVDOD] = {"https://dod-graph.microsoft.us", "https://login.microsoftonline.us"},
	[CFG_CLOUD_CHINA] = {"https://microsoftgraph.chinacloudapi.cn",
			     "https://login.chinacloudapi.cn"},
};
/* clang-format on */

/* ---- the key table ---------------------------------------------------------------------- */

enum cfg_type {
	CFG_T_STRING,
	CFG_T_BOOL,
	CFG_T_UINT, /* unsigned or size_t, by the field's size */
	CFG_T_DOUBLE,
	CFG_T_ENUM,   /* stored as the index into choices (an enum field) */
	CFG_T_CHOICE, /* stored as the chosen text (a char array) */
	CFG_T_URL,
	CFG_T_PATH,
	CFG_T_LISTEN, /* host:port, or "" */
};

/* Flags of a key. */
#define KF_RELOAD    0x01 /* may change on SIGHUP */
#define KF_REQUIRED  0x02 /* must end up non-empty */
#define KF_TOPIC     0x04 /* a Kafka topic name */
#define KF_LINKLOCAL 0x08 /* a URL that may use plain http to a link-local host (IMDS) */
#define KF_CRED      0x10 /* one of the credential-kind keys of a profile */

struct cfg_key {
	const char *section;
	const char *key;
	enum cfg_type type;
	const char *def; /* default, as text: parsed by the same code as file values */
	double min, max; /* bounds of numbers */
	unsigned flags;
	size_t offset, size; /* the field, in struct cfg or (tenant keys) struct cfg_tenant */
	const char *const *choices;
};

static const char *const cloud_names[] = {"global", "usgov", "usgovdod", "china", NULL};
static const char *const version_names[] = {"v1.0", "beta", NULL};
static const char *const alg_names[] = {"PS256", "RS256", NULL};
static const char *const level_names[] = {"error", "warning", "notice", "info", "debug", NULL};

/* clang-format off */
#define G(f) offsetof(struct cfg, f), sizeof(((struct cfg *)0)->f)
#define T(f) offsetof(struct cfg_tenant, f), sizeof(((struct cfg_tenant *)0)->f)
#define STR(s, k, def, fl, f) {s, k, CFG_T_STRING, def, 0, 0, fl, G(f), NULL}
#define NUM(s, k, ty, def, lo, hi, fl, f) {s, k, ty, def, lo, hi, fl, G(f), NULL}

/* Keys stored once in struct cfg. Order is the order of cfg_dump. */
static const struct cfg_key global_keys[] = {
	STR("kafka", "brokers", "", KF_REQUIRED, kafka.brokers),
	STR("kafka", "group_id", "", KF_REQUIRED, kafka.group_id),
	STR("kafka", "input_topic", "", KF_REQUIRED | KF_TOPIC, kafka.input_topic),
	STR("kafka", "output_topic", "", KF_REQUIRED | KF_TOPIC, kafka.output_topic),
	STR("kafka", "dlq_topic", "", KF_TOPIC, kafka.dlq_topic),
	STR("kafka", "state_topic", "", KF_TOPIC, kafka.state_topic),
	NUM("kafka", "max_message_bytes", CFG_T_UINT, "1048576", 1024, 16777216, 0,
	    kafka.max_message_bytes),
	NUM("kafka", "max_queued", CFG_T_UINT, "10000", 1, 1000000, 0, kafka.max_queued),
	NUM("kafka", "max_queued_bytes", CFG_T_UINT, "268435456", 1048576, 68719476736.0, 0,
	    kafka.max_queued_bytes),
	{"graph", "cloud", CFG_T_ENUM, "global", 0, 0, 0, G(graph.cloud), cloud_names},
	{"graph", "base_url", CFG_T_URL, "", 0, 0, 0, G(graph.base_url), NULL},
	{"graph", "api_version", CFG_T_CHOICE, "v1.0", 0, 0, 0, G(graph.api_version),
	 version_names},
	{"graph", "ca_file", CFG_T_PATH, "", 0, 0, 0, G(graph.ca_file), NULL},
	NUM("graph", "max_in_flight", CFG_T_UINT, "256", 1, 10000, 0, graph.max_in_flight),
	NUM("graph", "workers", CFG_T_UINT, "1", 1, 16, 0, graph.workers),
	NUM("graph", "request_timeout_s", CFG_T_DOUBLE, "30", 1, 600, 0, graph.request_timeout_s),
	NUM("graph", "connect_timeout_s", CFG_T_DOUBLE, "10", 1, 120, 0, graph.connect_timeout_s),
	NUM("graph", "max_members", CFG_T_UINT, "250", 2, 250, 0, graph.max_members),
	NUM("graph", "max_topic_length", CFG_T_UINT, "250", 1, 250, 0, graph.max_topic_length),
	NUM("graph", "max_response_bytes", CFG_T_UINT, "1048576", 4096, 67108864, 0,
	    graph.max_response_bytes),
	NUM("auth", "refresh_ahead_s", CFG_T_DOUBLE, "300", 0, 3000, KF_RELOAD,
	    token_refresh_ahead_s),
	NUM("limits", "chat_creates_per_10s_global", CFG_T_DOUBLE, "200", 0.1, 100000, KF_RELOAD,
	    limits.chat_creates_per_10s_global),
	NUM("limits", "window_s", CFG_T_DOUBLE, "10", 0.1, 3600, KF_RELOAD, limits.window_s),
	NUM("operations", "poll_interval_s", CFG_T_DOUBLE, "30", 0.05, 3600, KF_RELOAD,
	    operations.poll_interval_s),
	NUM("operations", "timeout_s", CFG_T_DOUBLE, "900", 1, 86400, KF_RELOAD,
	    operations.timeout_s),
	NUM("retry", "max_attempts", CFG_T_UINT, "8", 1, 100, KF_RELOAD, retry.max_attempts),
	NUM("retry", "base_delay_s", CFG_T_DOUBLE, "0.5", 0.001, 60, KF_RELOAD,
	    retry.base_delay_s),
	NUM("retry", "max_delay_s", CFG_T_DOUBLE, "60", 0.01, 3600, KF_RELOAD, retry.max_delay_s),
	NUM("retry", "max_elapsed_s", CFG_T_DOUBLE, "900", 1, 86400, KF_RELOAD,
	    retry.max_elapsed_s),
	NUM("retry", "not_found_s", CFG_T_DOUBLE, "600", 0, 86400, KF_RELOAD, retry.not_found_s),
	NUM("retry", "not_found_base_delay_s", CFG_T_DOUBLE, "2", 0.01, 600, KF_RELOAD,
	    retry.not_found_base_delay_s),
	NUM("retry", "not_found_max_delay_s", CFG_T_DOUBLE, "60", 0.01, 3600, KF_RELOAD,
	    retry.not_found_max_delay_s),
	NUM("recovery", "group_chat_lookup", CFG_T_BOOL, "yes", 0, 0, KF_RELOAD,
	    recovery.group_chat_lookup),
	NUM("recovery", "state_retention_s", CFG_T_DOUBLE, "604800", 60, 31536000, KF_RELOAD,
	    recovery.state_retention_s),
	{"metrics", "listen", CFG_T_LISTEN, "127.0.0.1:9464", 0, 0, 0, G(metrics.listen), NULL},
	{"log", "level", CFG_T_CHOICE, "info", 0, 0, KF_RELOAD, G(log.level), level_names},
};
#define N_GKEYS CP_ARRAY_LEN(global_keys)

/*
 * Keys of a credential profile. For the default profile they live in [auth], except
 * chat_creates_per_10s_per_tenant which lives in [limits]; a [tenant.NAME] takes them all.
 */
static const struct cfg_key tenant_keys[] = {
	{"auth", "tenant_id", CFG_T_STRING, "", 0, 0, KF_RELOAD | KF_REQUIRED, T(tenant_id), NULL},
	{"auth", "client_id", CFG_T_STRING, "", 0, 0, KF_RELOAD, T(client_id), NULL},
	{"auth", "client_secret_file", CFG_T_PATH, "", 0, 0, KF_RELOAD | KF_CRED,
	 T(client_secret_file), NULL},
	{"auth", "certificate_file", CFG_T_PATH, "", 0, 0, KF_RELOAD | KF_CRED,
	 T(certificate_file), NULL},
	{"auth", "private_key_file", CFG_T_PATH, "", 0, 0, KF_RELOAD | KF_CRED,
	 T(private_key_file), NULL},
	{"auth", "assertion_alg", CFG_T_ENUM, "PS256", 0, 0, KF_RELOAD, T(assertion_alg),
	 alg_names},
	{"auth", "federated_token_file", CFG_T_PATH, "", 0, 0, KF_RELOAD | KF_CRED,
	 T(federated_token_file), NULL},
	{"auth", "managed_identity", CFG_T_BOOL, "no", 0, 0, KF_RELOAD | KF_CRED,
	 T(managed_identity), NULL},
	{"auth", "imds_url", CFG_T_URL, "http://169.254.169.254/metadata/identity/oauth2/token", 0,
	 0, KF_RELOAD | KF_LINKLOCAL, T(imds_url), NULL},
	{"auth", "authority_url", CFG_T_URL, "", 0, 0, KF_RELOAD, T(authority_url), NULL},
	{"limits", "chat_creates_per_10s_per_tenant", CFG_T_DOUBLE, "20", 0.1, 10000, KF_RELOAD,
	 T(limits.chat_creates_per_10s_per_tenant), NULL},
};
/* clang-format on */
#define N_TKEYS CP_ARRAY_LEN(tenant_keys)

static const char *const known_sections[] = {"kafka",   "librdkafka", "graph", "auth",
                                             "limits",  "operations", "retry", "recovery",
                                             "metrics", "log"};

/* librdkafka properties whose values are secrets: masked by cfg_dump. */
static bool rdkafka_key_is_secret(const char *key)
{
	return strstr(key, "password") || strstr(key, "secret") ||
	       strcmp(key, "ssl.key.pem") == 0 || strcmp(key, "sasl.oauthbearer.config") == 0 ||
	       strcmp(key, "ssl_key") == 0;
}

/* ---- load state ------------------------------------------------------------------------- */

/*
 * Origin of a stored value: > 0 a file line, ORIGIN_ENV a CHATPROV_* variable, ORIGIN_AZURE
 * one of the AZURE_* variables Kubernetes workload identity injects, 0 default.
 */
#define ORIGIN_ENV   (-1)
#define ORIGIN_AZURE (-2)

struct load {
	struct cfg *cfg;
	const char *path;
	char dir[CFG_VALUE_MAX]; /* the file's directory: base of relative paths */
	FILE *f;
	int lineno;    /* line inih is working on (counted by our reader) */
	int long_line; /* first line longer than CFG_LINE_MAX, 0 = none */
	int err_line;  /* line of the stored error; 0 when it has none */
	bool failed;
	char *err;
	size_t errcap;
	rd_kafka_conf_t *scratch; /* validates [librdkafka] entries */
	int gorigin[N_GKEYS];
	int torigin[CFG_MAX_TENANTS][N_TKEYS];
	struct cfg_tenant proto; /* profile defaults: the start of every [tenant.NAME] */
};

static void fail(struct load *ld, int line, const char *fmt, ...) CP_PRINTF(3, 4);

/* Keeps the first error only: it is the one nearest the top of the file. */
static void fail(struct load *ld, int line, const char *fmt, ...)
{
	if (ld->failed)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ld->err, ld->errcap, fmt, ap);
	va_end(ap);
	ld->failed = true;
	ld->err_line = line;
}

/* "CHATPROV_" + parts upper-cased, '.' and '-' as '_'. */
static void env_name(char *buf, size_t cap, const char *a, const char *b, const char *c)
{
	snprintf(buf, cap, ENV_PREFIX "%s%s%s%s%s", a, b ? "_" : "", b ? b : "", c ? "_" : "",
	         c ? c : "");
	for (char *p = buf; *p; p++) {
		if (*p == '.' || *p == '-')
			*p = '_';
		else
			*p = (char)toupper((unsigned char)*p);
	}
}

/* Where a tenant key's value came from, as text for an error message. */
static void tenant_key_env(const struct cfg *cfg, size_t ti, size_t ki, char *buf, size_t cap)
{
	if (ti == 0)
		env_name(buf, cap, tenant_keys[ki].section, tenant_keys[ki].key, NULL);
	else
		env_name(buf, cap, "tenant", cfg->tenants[ti].name, tenant_keys[ki].key);
}

static void origin_text(const struct load *ld, int origin, const char *envvar, char *buf,
                        size_t cap)
{
	if (origin > 0)
		snprintf(buf, cap, "%s:%d", ld->path, origin);
	else if (origin == ORIGIN_ENV)
		snprintf(buf, cap, "env %s", envvar);
	else
		snprintf(buf, cap, "%s", ld->path);
}

/* ---- value parsers ---------------------------------------------------------------------- */

static void fmt_num(double v, char *buf, size_t cap)
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
		fmt_num(k->min, lo, sizeof(lo));
		fmt_num(k->max, hi, sizeof(hi));
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

/* Parses v as key k and stores it into the record at base. err gets the reason on failure. */
static bool set_value(const struct load *ld, const struct cfg_key *k, void *base, const char *v,
                      char *err, size_t errcap)
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

/* ---- pass 1: the file ------------------------------------------------------------------- */

static const struct cfg_key *find_key(const struct cfg_key *tab, size_t n, const char *section,
                                      const char *key, size_t *idx)
{
	for (size_t i = 0; i < n; i++) {
		if ((!section || strcmp(tab[i].section, section) == 0) &&
		    strcmp(tab[i].key, key) == 0) {
			*idx = i;
			return &tab[i];
		}
	}
	return NULL;
}

static bool tenant_name_ok(const char *name)
{
	size_t len = strlen(name);
	return len >= 1 && len <= 63 &&
	       strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") ==
	           len &&
	       strcmp(name, "default") != 0;
}

/* Index of the [tenant.NAME] profile, added on first sight; -1 after an error. */
static int tenant_slot(struct load *ld, const char *name, int line)
{
	struct cfg *cfg = ld->cfg;
	for (size_t i = 1; i < cfg->n_tenants; i++)
		if (strcmp(cfg->tenants[i].name, name) == 0)
			return (int)i;
	if (!tenant_name_ok(name)) {
		fail(ld, line,
		     "%s:%d: bad tenant profile name '%s' in [tenant.%s] (1-63 of [A-Za-z0-9_.-]; "
		     "'default' is reserved)",
		     ld->path, line, name, name);
		return -1;
	}
	if (cfg->n_tenants >= CFG_MAX_TENANTS) {
		fail(ld, line, "%s:%d: too many tenant profiles (at most %d)", ld->path, line,
		     CFG_MAX_TENANTS - 1);
		return -1;
	}
	char a[CFG_NAME_MAX * 2], b[CFG_NAME_MAX * 2];
	env_name(a, sizeof(a), "tenant", name, NULL);
	for (size_t i = 1; i < cfg->n_tenants; i++) {
		env_name(b, sizeof(b), "tenant", cfg->tenants[i].name, NULL);
		if (strcmp(a, b) == 0) {
			fail(ld, line,
			     "%s:%d: tenant profiles '%s' and '%s' have the same environment "
			     "variable name %s_*",
			     ld->path, line, cfg->tenants[i].name, name, a);
			return -1;
		}
	}
	size_t ti = cfg->n_tenants++;
	/* Start from the table defaults; unset keys inherit from [auth] at the end. */
	cfg->tenants[ti] = ld->proto;
	snprintf(cfg->tenants[ti].name, sizeof(cfg->tenants[ti].name), "%s", name);
	return (int)ti;
}

static bool set_tenant_key(struct load *ld, size_t ti, size_t ki, const char *section,
                           const char *value, int line)
{
	char why[CP_ERRSTR_SIZE];
	int *origin = &ld->torigin[ti][ki];
	if (*origin > 0) {
		fail(ld, line, "%s:%d: duplicate key '%s' in [%s] (first set at line %d)", ld->path,
		     line, tenant_keys[ki].key, section, *origin);
		return false;
	}
	if (!set_value(ld, &tenant_keys[ki], &ld->cfg->tenants[ti], value, why, sizeof(why))) {
		fail(ld, line, "%s:%d: [%s] %s: %s", ld->path, line, section, tenant_keys[ki].key,
		     why);
		return false;
	}
	*origin = line;
	return true;
}

static bool set_global_key(struct load *ld, size_t ki, const char *value, int line)
{
	char why[CP_ERRSTR_SIZE];
	const struct cfg_key *k = &global_keys[ki];
	if (ld->gorigin[ki] > 0) {
		fail(ld, line, "%s:%d: duplicate key '%s' in [%s] (first set at line %d)", ld->path,
		     line, k->key, k->section, ld->gorigin[ki]);
		return false;
	}
	if (!set_value(ld, k, ld->cfg, value, why, sizeof(why))) {
		fail(ld, line, "%s:%d: [%s] %s: %s", ld->path, line, k->section, k->key, why);
		return false;
	}
	ld->gorigin[ki] = line;
	return true;
}

/* Checks one [librdkafka] pair with librdkafka itself; errstr is librdkafka's text. */
static bool rdkafka_check(struct load *ld, const char *key, const char *value, char *errstr,
                          size_t cap, rd_kafka_conf_res_t *res)
{
	if (strcmp(key, "bootstrap.servers") == 0 || strcmp(key, "metadata.broker.list") == 0 ||
	    strcmp(key, "group.id") == 0) {
		snprintf(errstr, cap, "set by chatprovd from [kafka] %s",
		         key[0] == 'g' ? "group_id" : "brokers");
		*res = RD_KAFKA_CONF_INVALID;
		return false;
	}
	errstr[0] = '\0'; /* librdkafka writes it only on failure */
	*res = rd_kafka_conf_set(ld->scratch, key, value, errstr, cap);
	/* Some of librdkafka's messages end in a newline; ours are one line. */
	size_t len = strlen(errstr);
	while (len > 0 && isspace((unsigned char)errstr[len - 1]))
		errstr[--len] = '\0';
	return *res == RD_KAFKA_CONF_OK;
}

static const struct cfg_rdkafka_entry *rdkafka_find(const struct cfg *cfg, const char *key)
{
	for (size_t i = 0; i < cfg->n_rdkafka; i++)
		if (strcmp(cfg->rdkafka[i].key, key) == 0)
			return &cfg->rdkafka[i];
	return NULL;
}

/* Adds or replaces an entry; origin is "file:line" or "env NAME". */
static bool rdkafka_put(struct load *ld, const char *key, const char *value, const char *origin,
                        int line)
{
	struct cfg *cfg = ld->cfg;
	struct cfg_rdkafka_entry *e = NULL;
	for (size_t i = 0; i < cfg->n_rdkafka && !e; i++)
		if (strcmp(cfg->rdkafka[i].key, key) == 0)
			e = &cfg->rdkafka[i];
	if (strlen(key) >= sizeof(cfg->rdkafka[0].key) ||
	    strlen(value) >= sizeof(cfg->rdkafka[0].value)) {
		fail(ld, line, "%s: [librdkafka] %s: key or value too long", origin, key);
		return false;
	}
	if (!e) {
		if (cfg->n_rdkafka >= CFG_MAX_RDKAFKA) {
			fail(ld, line, "%s: [librdkafka] too many entries (at most %d)", origin,
			     CFG_MAX_RDKAFKA);
			return false;
		}
		e = &cfg->rdkafka[cfg->n_rdkafka++];
	}
	snprintf(e->key, sizeof(e->key), "%s", key);
	snprintf(e->value, sizeof(e->value), "%s", value);
	snprintf(e->origin, sizeof(e->origin), "%s", origin);
	return true;
}

static bool on_rdkafka(struct load *ld, const char *key, const char *value, int line)
{
	char origin[CFG_VALUE_MAX], errstr[CP_ERRSTR_SIZE];
	rd_kafka_conf_res_t res;
	snprintf(origin, sizeof(origin), "%s:%d", ld->path, line);
	const struct cfg_rdkafka_entry *dup = rdkafka_find(ld->cfg, key);
	if (dup) {
		fail(ld, line, "%s: duplicate key '%s' in [librdkafka] (first set at %s)", origin,
		     key, dup->origin);
		return false;
	}
	if (!rdkafka_check(ld, key, value, errstr, sizeof(errstr), &res)) {
		fail(ld, line, "%s: [librdkafka] %s: %s", origin, key, errstr);
		return false;
	}
	return rdkafka_put(ld, key, value, origin, line);
}

static bool section_known(const char *section)
{
	for (size_t i = 0; i < CP_ARRAY_LEN(known_sections); i++)
		if (strcmp(known_sections[i], section) == 0)
			return true;
	return false;
}

static bool on_tenant_pair(struct load *ld, const char *section, const char *name,
                           const char *value, int line)
{
	size_t ki, gi;
	int ti = tenant_slot(ld, section + strlen("tenant."), line);
	if (ti < 0)
		return false;
	if (find_key(tenant_keys, N_TKEYS, NULL, name, &ki))
		return set_tenant_key(ld, (size_t)ti, ki, section, value, line);
	if (find_key(global_keys, N_GKEYS, "auth", name, &gi) ||
	    find_key(global_keys, N_GKEYS, "limits", name, &gi))
		fail(ld, line, "%s:%d: unknown key '%s' in [%s] (it is global: set it in [%s])",
		     ld->path, line, name, section, global_keys[gi].section);
	else
		fail(ld, line, "%s:%d: unknown key '%s' in [%s]", ld->path, line, name, section);
	return false;
}

static bool on_pair(struct load *ld, const char *section, const char *name, const char *value,
                    int line)
{
	size_t ki;
	if (section[0] == '\0') {
		fail(ld, line, "%s:%d: key '%s' outside of any [section]", ld->path, line, name);
		return false;
	}
	if (strcmp(section, "librdkafka") == 0)
		return on_rdkafka(ld, name, value, line);
	if (strncmp(section, "tenant.", strlen("tenant.")) == 0)
		return on_tenant_pair(ld, section, name, value, line);
	if (find_key(global_keys, N_GKEYS, section, name, &ki))
		return set_global_key(ld, ki, value, line);
	if (find_key(tenant_keys, N_TKEYS, section, name, &ki))
		return set_tenant_key(ld, 0, ki, section, value, line);
	if (section_known(section))
		fail(ld, line, "%s:%d: unknown key '%s' in [%s]", ld->path, line, name, section);
	else
		fail(ld, line, "%s:%d: unknown section [%s]", ld->path, line, section);
	return false;
}

static int ini_handler_cb(void *user, const char *section, const char *name, const char *value)
{
	struct load *ld = user;
	if (ld->failed)
		return 0;
	return on_pair(ld, section, name, value, ld->lineno) ? 1 : 0;
}

/* fgets for inih that counts lines (the Debian build has no INI_HANDLER_LINENO). */
static char *ini_reader_cb(char *str, int num, void *stream)
{
	struct load *ld = stream;
	if (ld->long_line || !fgets(str, num, ld->f))
		return NULL;
	ld->lineno++;
	size_t len = strlen(str);
	if (len == (size_t)num - 1 && str[len - 1] != '\n' && !feof(ld->f)) {
		ld->long_line = ld->lineno;
		return NULL;
	}
	return str;
}

static void ini_settings(void)
{
	/*
	 * Debian's libinih exposes its compile-time options as variables. Lines up to
	 * CFG_LINE_MAX; no indented continuation lines (a stray indent is a syntax error, not a
	 * silent append); ';' starts a comment at the start of a line or after whitespace.
	 */
	ini_use_stack = false;
	ini_allow_realloc = false;
	ini_initial_alloc = CFG_LINE_MAX;
	ini_max_line = CFG_LINE_MAX;
	ini_allow_multiline = false;
	ini_allow_no_value = false;
	ini_allow_bom = true;
	ini_allow_inline_comments = true;
	ini_stop_on_first_error = false;
}

static bool parse_file(struct load *ld)
{
	struct stat st;
	ld->f = fopen(ld->path, "re");
	if (!ld->f) {
		fail(ld, 0, "%s: cannot open: %s", ld->path, strerror(errno));
		return false;
	}
	if (fstat(fileno(ld->f), &st) == 0 && S_ISDIR(st.st_mode)) {
		fail(ld, 0, "%s: is a directory", ld->path);
		return false;
	}
	ini_settings();
	int rc = ini_parse_stream(ini_reader_cb, ld, ini_handler_cb, ld);
	if (ld->long_line && (!ld->failed || ld->long_line < ld->err_line)) {
		ld->failed = false;
		fail(ld, ld->long_line, "%s:%d: line too long (at most %d characters)", ld->path,
		     ld->long_line, CFG_LINE_MAX - 2);
	} else if (rc > 0 && (!ld->failed || rc < ld->err_line)) {
		ld->failed = false;
		fail(ld, rc, "%s:%d: syntax error (expected '[section]' or 'key = value')",
		     ld->path, rc);
	} else if (rc < 0 && !ld->failed) {
		fail(ld, 0, "%s: out of memory while parsing", ld->path);
	}
	if (!ld->failed && ferror(ld->f))
		fail(ld, 0, "%s: read error", ld->path);
	return !ld->failed;
}

/* ---- pass 2: the environment ------------------------------------------------------------ */

static bool env_librdkafka(struct load *ld, const char *var, const char *rest, const char *value)
{
	char key[CFG_NAME_MAX * 2], mapped[CFG_NAME_MAX * 4], origin[CFG_VALUE_MAX];
	char errstr[CP_ERRSTR_SIZE];
	rd_kafka_conf_res_t res;
	snprintf(origin, sizeof(origin), "env %s", var);
	key[0] = '\0';
	/* A key already in the file wins the mapping, so names with '_' can be overridden. */
	for (size_t i = 0; i < ld->cfg->n_rdkafka; i++) {
		env_name(mapped, sizeof(mapped), "librdkafka", ld->cfg->rdkafka[i].key, NULL);
		if (strcmp(mapped, var) == 0)
			snprintf(key, sizeof(key), "%s", ld->cfg->rdkafka[i].key);
	}
	if (key[0] == '\0') {
		if (strlen(rest) >= sizeof(key)) {
			fail(ld, 0, "%s: name too long", origin);
			return false;
		}
		size_t i = 0;
		for (; rest[i]; i++)
			key[i] = rest[i] == '_' ? '.' : (char)tolower((unsigned char)rest[i]);
		key[i] = '\0';
	}
	if (!rdkafka_check(ld, key, value, errstr, sizeof(errstr), &res)) {
		if (res == RD_KAFKA_CONF_UNKNOWN)
			fail(ld, 0,
			     "%s: [librdkafka] %s: %s (a property whose name has '_' can only be "
			     "overridden when it is in the file)",
			     origin, key, errstr);
		else
			fail(ld, 0, "%s: [librdkafka] %s: %s", origin, key, errstr);
		return false;
	}
	return rdkafka_put(ld, key, value, origin, 0);
}

static bool env_apply(struct load *ld, const struct cfg_key *k, void *base, int *origin,
                      const char *var, const char *section, const char *value)
{
	char why[CP_ERRSTR_SIZE];
	if (!set_value(ld, k, base, value, why, sizeof(why))) {
		fail(ld, 0, "env %s: [%s] %s: %s", var, section, k->key, why);
		return false;
	}
	*origin = ORIGIN_ENV;
	return true;
}

/* Applies one CHATPROV_* variable; returns false after an error, *hit says it was ours. */
static bool env_one(struct load *ld, const char *var, const char *value, bool *hit)
{
	char name[CFG_NAME_MAX * 4], section[CFG_NAME_MAX * 2];
	struct cfg *cfg = ld->cfg;
	*hit = true;
	for (size_t i = 0; i < N_GKEYS; i++) {
		env_name(name, sizeof(name), global_keys[i].section, global_keys[i].key, NULL);
		if (strcmp(name, var) == 0)
			return env_apply(ld, &global_keys[i], cfg, &ld->gorigin[i], var,
			                 global_keys[i].section, value);
	}
	for (size_t ti = 0; ti < cfg->n_tenants; ti++) {
		for (size_t ki = 0; ki < N_TKEYS; ki++) {
			tenant_key_env(cfg, ti, ki, name, sizeof(name));
			if (strcmp(name, var) != 0)
				continue;
			if (ti == 0)
				snprintf(section, sizeof(section), "%s", tenant_keys[ki].section);
			else
				snprintf(section, sizeof(section), "tenant.%s",
				         cfg->tenants[ti].name);
			return env_apply(ld, &tenant_keys[ki], &cfg->tenants[ti],
			                 &ld->torigin[ti][ki], var, section, value);
		}
	}
	*hit = false;
	return true;
}

/* Is var in the namespace of a section (so that an unknown name there is a typo)? */
static bool env_in_section_namespace(const char *var)
{
	char prefix[CFG_NAME_MAX];
	for (size_t i = 0; i < CP_ARRAY_LEN(known_sections); i++) {
		env_name(prefix, sizeof(prefix), known_sections[i], "", NULL);
		if (strncmp(var, prefix, strlen(prefix)) == 0)
			return true;
	}
	return strncmp(var, ENV_PREFIX "TENANT_", strlen(ENV_PREFIX "TENANT_")) == 0;
}

static bool apply_environment(struct load *ld)
{
	char var[CFG_NAME_MAX * 4];
	const char *lrk = ENV_PREFIX "LIBRDKAFKA_";
	for (char **e = environ; e && *e; e++) {
		const char *eq = strchr(*e, '=');
		if (strncmp(*e, ENV_PREFIX, strlen(ENV_PREFIX)) != 0 || !eq)
			continue;
		if ((size_t)(eq - *e) >= sizeof(var))
			continue;
		memcpy(var, *e, (size_t)(eq - *e));
		var[eq - *e] = '\0';
		bool hit;
		if (strncmp(var, lrk, strlen(lrk)) == 0) {
			if (!env_librdkafka(ld, var, var + strlen(lrk), eq + 1))
				return false;
			continue;
		}
		if (!env_one(ld, var, eq + 1, &hit))
			return false;
		if (!hit && env_in_section_namespace(var)) {
			fail(ld, 0,
			     "env %s: matches no configuration key (CHATPROV_TENANT_<NAME>_<KEY> "
			     "needs an existing [tenant.NAME] section)",
			     var);
			return false;
		}
	}
	return true;
}

/* ---- pass 3: finishing ------------------------------------------------------------------ */

static void apply_defaults(struct load *ld)
{
	char why[CP_ERRSTR_SIZE];
	struct cfg *cfg = ld->cfg;
	/* Defaults are valid by construction; a failure here is a table bug caught by tests. */
	for (size_t i = 0; i < N_GKEYS; i++)
		if (!set_value(ld, &global_keys[i], cfg, global_keys[i].def, why, sizeof(why)))
			fail(ld, 0, "internal: default of %s: %s", global_keys[i].key, why);
	struct cfg_tenant *proto = &ld->proto;
	for (size_t i = 0; i < N_TKEYS; i++)
		if (!set_value(ld, &tenant_keys[i], proto, tenant_keys[i].def, why, sizeof(why)))
			fail(ld, 0, "internal: default of %s: %s", tenant_keys[i].key, why);
	cfg->tenants[0] = *proto;
	snprintf(cfg->tenants[0].name, sizeof(cfg->tenants[0].name), "default");
	cfg->n_tenants = 1;
}

/* Does profile ti itself name a credential? ("managed_identity = no" or an empty path do not.) */
static bool tenant_has_cred_key(const struct load *ld, size_t ti)
{
	const struct cfg_tenant *t = &ld->cfg->tenants[ti];
	for (size_t ki = 0; ki < N_TKEYS; ki++) {
		const struct cfg_key *k = &tenant_keys[ki];
		if (!(k->flags & KF_CRED) || ld->torigin[ti][ki] == 0)
			continue;
		const char *p = (const char *)t + k->offset;
		if (k->type == CFG_T_BOOL ? *(const bool *)(const void *)p : p[0] != '\0')
			return true;
	}
	return false;
}

/*
 * A [tenant.NAME] key not given inherits [auth]'s (or [limits]') value. Credential keys
 * inherit as one group: a profile that names any credential gets none of [auth]'s, so a
 * certificate profile never also inherits [auth]'s client secret.
 */
static void inherit_tenants(struct load *ld)
{
	struct cfg *cfg = ld->cfg;
	for (size_t ti = 1; ti < cfg->n_tenants; ti++) {
		bool own_cred = tenant_has_cred_key(ld, ti);
		for (size_t ki = 0; ki < N_TKEYS; ki++) {
			const struct cfg_key *k = &tenant_keys[ki];
			bool cred = k->flags & KF_CRED;
			if ((cred && own_cred) || (!cred && ld->torigin[ti][ki] != 0))
				continue;
			memcpy((char *)&cfg->tenants[ti] + k->offset,
			       (char *)&cfg->tenants[0] + k->offset, k->size);
			ld->torigin[ti][ki] = ld->torigin[0][ki];
		}
	}
}

static void tenant_section(const struct cfg *cfg, size_t ti, char *buf, size_t cap)
{
	if (ti == 0)
		snprintf(buf, cap, "[auth]");
	else
		snprintf(buf, cap, "[tenant.%s]", cfg->tenants[ti].name);
}

/* Text of where key ki of profile ti was set, for cross-key errors. */
static void tenant_origin(const struct load *ld, size_t ti, size_t ki, char *buf, size_t cap)
{
	char var[CFG_NAME_MAX * 4];
	tenant_key_env(ld->cfg, ti, ki, var, sizeof(var));
	origin_text(ld, ld->torigin[ti][ki], var, buf, cap);
}

static size_t tkey_index(const char *key)
{
	size_t ki = 0;
	if (!find_key(tenant_keys, N_TKEYS, NULL, key, &ki))
		abort(); /* a literal key name below that is not in the table */
	return ki;
}

/*
 * The variables the Azure workload identity webhook injects into a pod. They are defaults
 * for [auth]: a key the file and CHATPROV_* leave empty takes the variable's value, and the
 * federated token file is used only when [auth] names no credential of its own. [tenant.NAME]
 * profiles inherit them like any other [auth] value.
 */
static const struct {
	const char *var, *key;
} azure_vars[] = {
    {"AZURE_TENANT_ID", "tenant_id"},
    {"AZURE_CLIENT_ID", "client_id"},
    {"AZURE_FEDERATED_TOKEN_FILE", "federated_token_file"},
    {"AZURE_AUTHORITY_HOST", "authority_url"},
};

static bool apply_azure(struct load *ld)
{
	struct cfg_tenant *t = &ld->cfg->tenants[0];
	bool has_cred = tenant_has_cred_key(ld, 0);
	char why[CP_ERRSTR_SIZE];
	for (size_t i = 0; i < CP_ARRAY_LEN(azure_vars); i++) {
		const char *value = getenv(azure_vars[i].var);
		size_t ki = tkey_index(azure_vars[i].key);
		const struct cfg_key *k = &tenant_keys[ki];
		if (!value || !value[0] || ((const char *)t + k->offset)[0] != '\0')
			continue;
		if ((k->flags & KF_CRED) && has_cred)
			continue;
		if (!set_value(ld, k, t, value, why, sizeof(why))) {
			fail(ld, 0, "env %s: [auth] %s: %s", azure_vars[i].var, k->key, why);
			return false;
		}
		ld->torigin[0][ki] = ORIGIN_AZURE;
	}
	return true;
}

static bool resolve_credential(struct load *ld, size_t ti)
{
	struct cfg_tenant *t = &ld->cfg->tenants[ti];
	char sec[CFG_NAME_MAX * 2], at[CFG_VALUE_MAX + 64];
	const char *kinds[4];
	size_t n = 0;
	tenant_section(ld->cfg, ti, sec, sizeof(sec));
	if (t->certificate_file[0] != t->private_key_file[0] &&
	    (!t->certificate_file[0] || !t->private_key_file[0])) {
		const char *given =
		    t->certificate_file[0] ? "certificate_file" : "private_key_file";
		tenant_origin(ld, ti, tkey_index(given), at, sizeof(at));
		fail(ld, 0, "%s: %s %s needs both certificate_file and private_key_file", at, sec,
		     given);
		return false;
	}
	if (t->client_secret_file[0])
		kinds[n++] = "client_secret_file";
	if (t->certificate_file[0])
		kinds[n++] = "certificate_file";
	if (t->federated_token_file[0])
		kinds[n++] = "federated_token_file";
	if (t->managed_identity)
		kinds[n++] = "managed_identity";
	if (n > 1) {
		/* Point at the later of the two (an environment variable counts as latest). */
		size_t k0 = tkey_index(kinds[0]), k1 = tkey_index(kinds[1]);
		int o0 = ld->torigin[ti][k0], o1 = ld->torigin[ti][k1];
		bool first = o0 == ORIGIN_ENV || (o1 != ORIGIN_ENV && o0 > o1);
		tenant_origin(ld, ti, first ? k0 : k1, at, sizeof(at));
		fail(ld, 0, "%s: %s has more than one credential: %s and %s (choose one)", at, sec,
		     kinds[0], kinds[1]);
		return false;
	}
	if (n == 0) {
		const char *dir = getenv("CREDENTIALS_DIRECTORY");
		if (!dir || !dir[0]) {
			fail(ld, 0,
			     "%s: %s: no credential configured (set client_secret_file, "
			     "certificate_file + private_key_file, federated_token_file or "
			     "managed_identity = yes; or run with a systemd credential "
			     "graph-client-secret)",
			     ld->path, sec);
			return false;
		}
		int len = snprintf(t->client_secret_file, sizeof(t->client_secret_file),
		                   "%s/graph-client-secret", dir);
		if (len < 0 || (size_t)len >= sizeof(t->client_secret_file)) {
			fail(ld, 0, "%s: %s: CREDENTIALS_DIRECTORY is too long", ld->path, sec);
			return false;
		}
	}
	t->credential = t->client_secret_file[0]     ? CFG_CRED_SECRET
	                : t->certificate_file[0]     ? CFG_CRED_CERTIFICATE
	                : t->federated_token_file[0] ? CFG_CRED_FEDERATED
	                                             : CFG_CRED_MANAGED;
	return true;
}

static bool finish_tenant(struct load *ld, size_t ti)
{
	struct cfg_tenant *t = &ld->cfg->tenants[ti];
	char sec[CFG_NAME_MAX * 2];
	tenant_section(ld->cfg, ti, sec, sizeof(sec));
	if (!resolve_credential(ld, ti))
		return false;
	if (!t->tenant_id[0]) {
		fail(ld, 0, "%s: missing required key 'tenant_id' in %s", ld->path, sec);
		return false;
	}
	if (!t->client_id[0] && t->credential != CFG_CRED_MANAGED) {
		fail(ld, 0, "%s: missing required key 'client_id' in %s", ld->path, sec);
		return false;
	}
	if (!t->authority_url[0])
		snprintf(t->authority_url, sizeof(t->authority_url), "%s",
		         clouds[ld->cfg->graph.cloud].authority);
	return true;
}

static bool check_required(struct load *ld)
{
	struct cfg *cfg = ld->cfg;
	for (size_t i = 0; i < N_GKEYS; i++) {
		const struct cfg_key *k = &global_keys[i];
		if ((k->flags & KF_REQUIRED) && ((char *)cfg + k->offset)[0] == '\0') {
			fail(ld, 0, "%s: missing required key '%s' in [%s]", ld->path, k->key,
			     k->section);
			return false;
		}
	}
	return true;
}

static void global_origin(const struct load *ld, const char *section, const char *key, char *buf,
                          size_t cap)
{
	size_t ki = 0;
	char var[CFG_NAME_MAX * 4];
	if (!find_key(global_keys, N_GKEYS, section, key, &ki))
		abort();
	env_name(var, sizeof(var), section, key, NULL);
	origin_text(ld, ld->gorigin[ki], var, buf, cap);
}

/*
 * Every topic has one role: a DLQ copy in the state topic would read as a request's state, a
 * result in the input as an event. True when all differ; else *first, *second are the keys.
 */
static bool topics_distinct(const struct cfg *cfg, const char **first, const char **second)
{
	const struct {
		const char *key, *name;
	} t[] = {{"input_topic", cfg->kafka.input_topic},
	         {"output_topic", cfg->kafka.output_topic},
	         {"state_topic", cfg->kafka.state_topic},
	         {"dlq_topic", cfg->kafka.dlq_topic}};
	for (size_t i = 0; i < CP_ARRAY_LEN(t); i++)
		for (size_t j = i + 1; j < CP_ARRAY_LEN(t); j++)
			if (t[i].name[0] && strcmp(t[i].name, t[j].name) == 0) {
				*first = t[i].key;
				*second = t[j].key;
				return false;
			}
	return true;
}

/* Rules that involve two keys. */
static bool check_cross(struct load *ld)
{
	struct cfg *cfg = ld->cfg;
	char at[CFG_VALUE_MAX + 64];
	const char *first, *second;
	if (!topics_distinct(cfg, &first, &second)) {
		global_origin(ld, "kafka", second, at, sizeof(at));
		fail(ld, 0,
		     "%s: [kafka] %s and %s are the same topic: input_topic, output_topic, "
		     "state_topic and dlq_topic must be different topics",
		     at, first, second);
		return false;
	}
	if (cfg->retry.base_delay_s > cfg->retry.max_delay_s) {
		global_origin(ld, "retry", "base_delay_s", at, sizeof(at));
		fail(ld, 0, "%s: [retry] base_delay_s (%g) must not exceed max_delay_s (%g)", at,
		     cfg->retry.base_delay_s, cfg->retry.max_delay_s);
		return false;
	}
	if (cfg->retry.not_found_base_delay_s > cfg->retry.not_found_max_delay_s) {
		global_origin(ld, "retry", "not_found_base_delay_s", at, sizeof(at));
		fail(
		    ld, 0,
		    "%s: [retry] not_found_base_delay_s (%g) must not exceed not_found_max_delay_s "
		    "(%g)",
		    at, cfg->retry.not_found_base_delay_s, cfg->retry.not_found_max_delay_s);
		return false;
	}
	if (cfg->operations.poll_interval_s > cfg->operations.timeout_s) {
		global_origin(ld, "operations", "poll_interval_s", at, sizeof(at));
		fail(ld, 0, "%s: [operations] poll_interval_s (%g) must not exceed timeout_s (%g)",
		     at, cfg->operations.poll_interval_s, cfg->operations.timeout_s);
		return false;
	}
	if (cfg->kafka.max_queued_bytes < 4 * cfg->kafka.max_message_bytes) {
		global_origin(ld, "kafka", "max_queued_bytes", at, sizeof(at));
		fail(ld, 0,
		     "%s: [kafka] max_queued_bytes (%zu) must be at least 4 x max_message_bytes "
		     "(%zu): an event costs up to about twice its size",
		     at, cfg->kafka.max_queued_bytes, cfg->kafka.max_message_bytes);
		return false;
	}
	return true;
}

static bool finish(struct load *ld)
{
	struct cfg *cfg = ld->cfg;
	const struct cloud_preset *cp = &clouds[cfg->graph.cloud];
	if (!check_required(ld))
		return false;
	if (!cfg->kafka.state_topic[0]) {
		int len = snprintf(cfg->kafka.state_topic, sizeof(cfg->kafka.state_topic),
		                   "%s.state", cfg->kafka.input_topic);
		if (len < 0 || (size_t)len > 249) {
			fail(ld, 0,
			     "%s: [kafka] input_topic too long to derive state_topic from it",
			     ld->path);
			return false;
		}
	}
	snprintf(cfg->graph.graph_root, sizeof(cfg->graph.graph_root), "%s", cp->graph_root);
	snprintf(cfg->graph.scope, sizeof(cfg->graph.scope), "%s/.default", cp->graph_root);
	if (!cfg->graph.base_url[0])
		snprintf(cfg->graph.base_url, sizeof(cfg->graph.base_url), "%s", cp->graph_root);
	inherit_tenants(ld);
	for (size_t ti = 0; ti < cfg->n_tenants; ti++)
		if (!finish_tenant(ld, ti))
			return false;
	return check_cross(ld);
}

/* ---- public ----------------------------------------------------------------------------- */

static void set_dir(struct load *ld, const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		if (!getcwd(ld->dir, sizeof(ld->dir)))
			ld->dir[0] = '\0';
	} else if (slash == path) {
		snprintf(ld->dir, sizeof(ld->dir), "/");
	} else {
		snprintf(ld->dir, sizeof(ld->dir), "%.*s", (int)(slash - path), path);
	}
}

bool cfg_load(const char *path, struct cfg **out, char *err, size_t errcap)
{
	struct load *ld = calloc(1, sizeof(*ld));
	struct cfg *cfg = calloc(1, sizeof(*cfg));
	*out = NULL;
	if (!ld || !cfg) {
		snprintf(err, errcap, "%s: out of memory", path);
		goto fail;
	}
	ld->cfg = cfg;
	ld->path = path;
	ld->err = err;
	ld->errcap = errcap;
	snprintf(cfg->path, sizeof(cfg->path), "%s", path);
	set_dir(ld, path);
	ld->scratch = rd_kafka_conf_new();
	if (!ld->scratch) {
		fail(ld, 0, "%s: out of memory", path);
		goto fail;
	}
	apply_defaults(ld);
	if (ld->failed || !parse_file(ld) || !apply_environment(ld) || !apply_azure(ld) ||
	    !finish(ld))
		goto fail;
	rd_kafka_conf_destroy(ld->scratch);
	if (ld->f)
		fclose(ld->f);
	free(ld);
	*out = cfg;
	return true;
fail:
	if (ld && ld->scratch)
		rd_kafka_conf_destroy(ld->scratch);
	if (ld && ld->f)
		fclose(ld->f);
	free(ld);
	free(cfg);
	return false;
}

void cfg_free(struct cfg *cfg)
{
	free(cfg);
}

int cfg_tenant_index(const struct cfg *cfg, const char *name)
{
	if (!name || !name[0] || strcmp(name, "default") == 0)
		return 0;
	for (size_t i = 1; i < cfg->n_tenants; i++)
		if (strcmp(cfg->tenants[i].name, name) == 0)
			return (int)i;
	return -1;
}

bool cfg_read_secret_file(const char *path, char *buf, size_t cap, char *err, size_t errcap)
{
	struct dynbuf secret;
	if (!secretfile_read(path, CFG_SECRET_MAX, "\r\n", &secret, err, errcap))
		return false;
	size_t len = dynbuf_len(&secret);
	bool ok = false;
	if (memchr(dynbuf_str(&secret), '\0', len)) {
		snprintf(err, errcap, "%s: secret file contains a NUL byte", path);
		goto fail;
	}
	if (len >= cap) {
		snprintf(err, errcap, "%s: secret does not fit the buffer (%zu bytes)", path, cap);
		goto fail;
	}
	memcpy(buf, dynbuf_str(&secret), len + 1);
	ok = true;
fail:
	dynbuf_wipe(&secret);
	return ok;
}

bool cfg_read_secret(const struct cfg_tenant *tenant, char *buf, size_t cap, char *err,
                     size_t errcap)
{
	if (tenant->credential != CFG_CRED_SECRET || !tenant->client_secret_file[0]) {
		snprintf(err, errcap, "tenant profile '%s' has no client secret", tenant->name);
		return false;
	}
	return cfg_read_secret_file(tenant->client_secret_file, buf, cap, err, errcap);
}

/* ---- dump ------------------------------------------------------------------------------- */

static void dump_value(const struct cfg_key *k, const void *base, FILE *out)
{
	const char *p = (const char *)base + k->offset;
	double d;
	int idx;
	bool b;
	char num[40];
	switch (k->type) {
	case CFG_T_BOOL:
		memcpy(&b, p, sizeof(b));
		fprintf(out, "%s = %s\n", k->key, b ? "yes" : "no");
		return;
	case CFG_T_UINT:
		if (k->size == sizeof(unsigned))
			fprintf(out, "%s = %u\n", k->key, *(const unsigned *)(const void *)p);
		else
			fprintf(out, "%s = %zu\n", k->key, *(const size_t *)(const void *)p);
		return;
	case CFG_T_DOUBLE:
		memcpy(&d, p, sizeof(d));
		fmt_num(d, num, sizeof(num));
		fprintf(out, "%s = %s\n", k->key, num);
		return;
	case CFG_T_ENUM:
		memcpy(&idx, p, sizeof(idx));
		fprintf(out, "%s = %s\n", k->key, k->choices[idx]);
		return;
	default:
		fprintf(out, "%s = %s\n", k->key, p);
		return;
	}
}

static void dump_tenant(const struct cfg *cfg, size_t ti, FILE *out)
{
	const struct cfg_tenant *t = &cfg->tenants[ti];
	for (size_t ki = 0; ki < N_TKEYS; ki++) {
		const struct cfg_key *k = &tenant_keys[ki];
		if (ti == 0 && strcmp(k->section, "auth") != 0)
			continue;
		if (strcmp(k->key, "client_secret_file") == 0 && t->client_secret_file[0]) {
			/* The path is not the secret; say so, so nobody goes looking for it here.
			 */
			fprintf(out, "; secret: <from file %s>\n", t->client_secret_file);
		}
		dump_value(k, t, out);
	}
}

static void dump_section(const struct cfg *cfg, const char *section, FILE *out)
{
	fprintf(out, "\n[%s]\n", section);
	for (size_t i = 0; i < N_GKEYS; i++)
		if (strcmp(global_keys[i].section, section) == 0)
			dump_value(&global_keys[i], cfg, out);
	if (strcmp(section, "auth") == 0)
		dump_tenant(cfg, 0, out);
	if (strcmp(section, "limits") == 0)
		dump_value(&tenant_keys[tkey_index("chat_creates_per_10s_per_tenant")],
		           &cfg->tenants[0], out);
	if (strcmp(section, "graph") == 0)
		fprintf(out, "; graph root %s, scope %s\n", cfg->graph.graph_root,
		        cfg->graph.scope);
	if (strcmp(section, "librdkafka") == 0) {
		for (size_t i = 0; i < cfg->n_rdkafka; i++) {
			const struct cfg_rdkafka_entry *e = &cfg->rdkafka[i];
			fprintf(out, "%s = %s\n", e->key,
			        rdkafka_key_is_secret(e->key) ? "********" : e->value);
		}
	}
}

void cfg_dump(const struct cfg *cfg, FILE *out)
{
	fprintf(out, "; effective configuration of %s (defaults included, secrets masked)\n",
	        cfg->path);
	for (size_t i = 0; i < CP_ARRAY_LEN(known_sections); i++)
		dump_section(cfg, known_sections[i], out);
	for (size_t ti = 1; ti < cfg->n_tenants; ti++) {
		fprintf(out, "\n[tenant.%s]\n", cfg->tenants[ti].name);
		dump_tenant(cfg, ti, out);
	}
}

int cfg_check(const char *path, FILE *out, FILE *err)
{
	char why[CP_ERRSTR_SIZE];
	struct cfg *cfg;
	if (!cfg_load(path, &cfg, why, sizeof(why))) {
		fprintf(err, "%s\n", why);
		return 1;
	}
	cfg_dump(cfg, out);
	cfg_free(cfg);
	return 0;
}

/* ---- reload ----------------------------------------------------------------------------- */

static bool key_differs(const struct cfg_key *k, const void *a, const void *b)
{
	const char *pa = (const char *)a + k->offset, *pb = (const char *)b + k->offset;
	switch (k->type) {
	case CFG_T_STRING:
	case CFG_T_CHOICE:
	case CFG_T_URL:
	case CFG_T_PATH:
	case CFG_T_LISTEN:
		return strcmp(pa, pb) != 0;
	default:
		return memcmp(pa, pb, k->size) != 0;
	}
}

static bool rdkafka_differs(const struct cfg *a, const struct cfg *b)
{
	if (a->n_rdkafka != b->n_rdkafka)
		return true;
	for (size_t i = 0; i < a->n_rdkafka; i++) {
		const struct cfg_rdkafka_entry *e = rdkafka_find(b, a->rdkafka[i].key);
		if (!e || strcmp(e->value, a->rdkafka[i].value) != 0)
			return true;
	}
	return false;
}

void cfg_restart_needed(const struct cfg *old_cfg, const struct cfg *new_cfg, char *buf, size_t cap)
{
	size_t len = 0;
	if (cap == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < N_GKEYS; i++) {
		const struct cfg_key *k = &global_keys[i];
		if ((k->flags & KF_RELOAD) || !key_differs(k, old_cfg, new_cfg))
			continue;
		int n =
		    snprintf(buf + len, cap - len, "%s%s.%s", len ? "," : "", k->section, k->key);
		if (n < 0 || (size_t)n >= cap - len)
			return;
		len += (size_t)n;
	}
	if (rdkafka_differs(old_cfg, new_cfg))
		snprintf(buf + len, cap - len, "%slibrdkafka", len ? "," : "");
}
