/*
 * cfg_keys.c - the configuration's vocabulary: every key with its section, type, default,
 * bounds and flags (one table each for global and profile keys), the known sections, the
 * cloud presets, and the CHATPROV_* environment name of each key.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "cfg_int.h"

/* clang-format off */
const struct cloud_preset keys_clouds[] = {
	[CFG_CLOUD_GLOBAL] = {"https://graph.microsoft.com", "https://login.microsoftonline.com"},
	[CFG_CLOUD_USGOV] = {"https://graph.microsoft.us", "https://login.microsoftonline.us"},
	[CFG_CLOUD_USGOVDOD] = {"https://dod-graph.microsoft.us", "https://login.microsoftonline.us"},
	[CFG_CLOUD_CHINA] = {"https://microsoftgraph.chinacloudapi.cn",
			     "https://login.chinacloudapi.cn"},
};
/* clang-format on */

static const char *const cloud_names[] = {"global", "usgov", "usgovdod", "china", NULL};
static const char *const version_names[] = {"v1.0", "beta", NULL};
static const char *const alg_names[] = {"PS256", "RS256", NULL};
static const char *const level_names[] = {"error", "warning", "notice", "info", "debug", NULL};

/* clang-format off */
#define G(f) offsetof(struct cfg, f), sizeof(((struct cfg *)0)->f)
#define T(f) offsetof(struct cfg_tenant, f), sizeof(((struct cfg_tenant *)0)->f)
#define STR(s, k, def, fl, f) {s, k, CFG_T_STRING, def, 0, 0, fl, G(f), NULL}
#define NUM(s, k, ty, def, lo, hi, fl, f) {s, k, ty, def, lo, hi, fl, G(f), NULL}

const struct cfg_key keys_global[] = {
	STR("kafka", "brokers", "", KF_REQUIRED, kafka.brokers),
	STR("kafka", "group_id", "", KF_REQUIRED, kafka.group_id),
	STR("kafka", "input_topic", "", KF_REQUIRED | KF_TOPIC, kafka.input_topic),
	STR("kafka", "output_topic", "", KF_REQUIRED | KF_TOPIC, kafka.output_topic),
	STR("kafka", "dlq_topic", "", KF_TOPIC, kafka.dlq_topic),
	STR("kafka", "state_topic", "", KF_TOPIC, kafka.state_topic),
	STR("kafka", "limits_topic", "", KF_TOPIC, kafka.limits_topic),
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

/*
 * Keys of a credential profile. For the default profile they live in [auth], except
 * chat_creates_per_10s_per_tenant which lives in [limits]; a [tenant.NAME] takes them all.
 */
const struct cfg_key keys_tenant[] = {
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

const char *const keys_sections[] = {"kafka",      "librdkafka", "graph",    "auth",    "limits",
                                     "operations", "retry",      "recovery", "metrics", "log"};

bool keys_rdkafka_is_secret(const char *key)
{
	return strstr(key, "password") || strstr(key, "secret") ||
	       strcmp(key, "ssl.key.pem") == 0 || strcmp(key, "sasl.oauthbearer.config") == 0 ||
	       strcmp(key, "ssl_key") == 0;
}

const struct cfg_key *keys_find(const struct cfg_key *tab, size_t n, const char *section,
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

bool keys_section_known(const char *section)
{
	for (size_t i = 0; i < KEYS_N_SECTIONS; i++)
		if (strcmp(keys_sections[i], section) == 0)
			return true;
	return false;
}

size_t keys_tenant_index(const char *key)
{
	size_t ki = 0;
	if (!keys_find(keys_tenant, KEYS_N_TENANT, NULL, key, &ki))
		abort(); /* a literal key name below that is not in the table */
	return ki;
}

void keys_env_name(char *buf, size_t cap, const char *a, const char *b, const char *c)
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
void keys_tenant_env(const struct cfg *cfg, size_t ti, size_t ki, char *buf, size_t cap)
{
	if (ti == 0)
		keys_env_name(buf, cap, keys_tenant[ki].section, keys_tenant[ki].key, NULL);
	else
		keys_env_name(buf, cap, "tenant", cfg->tenants[ti].name, keys_tenant[ki].key);
}
