/*
 * cfg_finish.c - pass 3 of loading: defaults, the AZURE_* variables of workload identity,
 * [tenant.NAME] profiles inheriting from [auth]/[limits], credentials resolved, cloud
 * presets, required keys and the rules that span keys.
 */
#include <stdlib.h>
#include <string.h>

#include "cfg_int.h"

void finish_defaults(struct load *ld)
{
	char why[CP_ERRSTR_SIZE];
	struct cfg *cfg = ld->cfg;
	/* Defaults are valid by construction; a failure here is a table bug caught by tests. */
	for (size_t i = 0; i < KEYS_N_GLOBAL; i++)
		if (!value_set(ld, &keys_global[i], cfg, keys_global[i].def, why, sizeof(why)))
			load_fail(ld, 0, "internal: default of %s: %s", keys_global[i].key, why);
	struct cfg_tenant *proto = &ld->proto;
	for (size_t i = 0; i < KEYS_N_TENANT; i++)
		if (!value_set(ld, &keys_tenant[i], proto, keys_tenant[i].def, why, sizeof(why)))
			load_fail(ld, 0, "internal: default of %s: %s", keys_tenant[i].key, why);
	cfg->tenants[0] = *proto;
	snprintf(cfg->tenants[0].name, sizeof(cfg->tenants[0].name), "default");
	cfg->n_tenants = 1;
}

/* Does profile ti itself name a credential? ("managed_identity = no" or an empty path do not.) */
static bool tenant_has_cred_key(const struct load *ld, size_t ti)
{
	const struct cfg_tenant *t = &ld->cfg->tenants[ti];
	for (size_t ki = 0; ki < KEYS_N_TENANT; ki++) {
		const struct cfg_key *k = &keys_tenant[ki];
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
		for (size_t ki = 0; ki < KEYS_N_TENANT; ki++) {
			const struct cfg_key *k = &keys_tenant[ki];
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
	keys_tenant_env(ld->cfg, ti, ki, var, sizeof(var));
	load_origin_text(ld, ld->torigin[ti][ki], var, buf, cap);
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

bool finish_azure(struct load *ld)
{
	struct cfg_tenant *t = &ld->cfg->tenants[0];
	bool has_cred = tenant_has_cred_key(ld, 0);
	char why[CP_ERRSTR_SIZE];
	for (size_t i = 0; i < CP_ARRAY_LEN(azure_vars); i++) {
		const char *value = getenv(azure_vars[i].var);
		size_t ki = keys_tenant_index(azure_vars[i].key);
		const struct cfg_key *k = &keys_tenant[ki];
		if (!value || !value[0] || ((const char *)t + k->offset)[0] != '\0')
			continue;
		if ((k->flags & KF_CRED) && has_cred)
			continue;
		if (!value_set(ld, k, t, value, why, sizeof(why))) {
			load_fail(ld, 0, "env %s: [auth] %s: %s", azure_vars[i].var, k->key, why);
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
		tenant_origin(ld, ti, keys_tenant_index(given), at, sizeof(at));
		load_fail(ld, 0, "%s: %s %s needs both certificate_file and private_key_file", at,
		          sec, given);
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
		size_t k0 = keys_tenant_index(kinds[0]), k1 = keys_tenant_index(kinds[1]);
		int o0 = ld->torigin[ti][k0], o1 = ld->torigin[ti][k1];
		bool first = o0 == ORIGIN_ENV || (o1 != ORIGIN_ENV && o0 > o1);
		tenant_origin(ld, ti, first ? k0 : k1, at, sizeof(at));
		load_fail(ld, 0, "%s: %s has more than one credential: %s and %s (choose one)", at,
		          sec, kinds[0], kinds[1]);
		return false;
	}
	if (n == 0) {
		const char *dir = getenv("CREDENTIALS_DIRECTORY");
		if (!dir || !dir[0]) {
			load_fail(ld, 0,
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
			load_fail(ld, 0, "%s: %s: CREDENTIALS_DIRECTORY is too long", ld->path,
			          sec);
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
		load_fail(ld, 0, "%s: missing required key 'tenant_id' in %s", ld->path, sec);
		return false;
	}
	if (!t->client_id[0] && t->credential != CFG_CRED_MANAGED) {
		load_fail(ld, 0, "%s: missing required key 'client_id' in %s", ld->path, sec);
		return false;
	}
	if (!t->authority_url[0])
		snprintf(t->authority_url, sizeof(t->authority_url), "%s",
		         keys_clouds[ld->cfg->graph.cloud].authority);
	return true;
}

static bool check_required(struct load *ld)
{
	struct cfg *cfg = ld->cfg;
	for (size_t i = 0; i < KEYS_N_GLOBAL; i++) {
		const struct cfg_key *k = &keys_global[i];
		if ((k->flags & KF_REQUIRED) && ((char *)cfg + k->offset)[0] == '\0') {
			load_fail(ld, 0, "%s: missing required key '%s' in [%s]", ld->path, k->key,
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
	if (!keys_find(keys_global, KEYS_N_GLOBAL, section, key, &ki))
		abort();
	keys_env_name(var, sizeof(var), section, key, NULL);
	load_origin_text(ld, ld->gorigin[ki], var, buf, cap);
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
	         {"dlq_topic", cfg->kafka.dlq_topic},
	         {"limits_topic", cfg->kafka.limits_topic}};
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
		load_fail(ld, 0,
		          "%s: [kafka] %s and %s are the same topic: input_topic, output_topic, "
		          "state_topic, dlq_topic and limits_topic must be different topics",
		          at, first, second);
		return false;
	}
	if (cfg->retry.base_delay_s > cfg->retry.max_delay_s) {
		global_origin(ld, "retry", "base_delay_s", at, sizeof(at));
		load_fail(ld, 0, "%s: [retry] base_delay_s (%g) must not exceed max_delay_s (%g)",
		          at, cfg->retry.base_delay_s, cfg->retry.max_delay_s);
		return false;
	}
	if (cfg->retry.not_found_base_delay_s > cfg->retry.not_found_max_delay_s) {
		global_origin(ld, "retry", "not_found_base_delay_s", at, sizeof(at));
		load_fail(
		    ld, 0,
		    "%s: [retry] not_found_base_delay_s (%g) must not exceed not_found_max_delay_s "
		    "(%g)",
		    at, cfg->retry.not_found_base_delay_s, cfg->retry.not_found_max_delay_s);
		return false;
	}
	if (cfg->operations.poll_interval_s > cfg->operations.timeout_s) {
		global_origin(ld, "operations", "poll_interval_s", at, sizeof(at));
		load_fail(ld, 0,
		          "%s: [operations] poll_interval_s (%g) must not exceed timeout_s (%g)",
		          at, cfg->operations.poll_interval_s, cfg->operations.timeout_s);
		return false;
	}
	if (cfg->kafka.max_queued_bytes < 4 * cfg->kafka.max_message_bytes) {
		global_origin(ld, "kafka", "max_queued_bytes", at, sizeof(at));
		load_fail(
		    ld, 0,
		    "%s: [kafka] max_queued_bytes (%zu) must be at least 4 x max_message_bytes "
		    "(%zu): an event costs up to about twice its size",
		    at, cfg->kafka.max_queued_bytes, cfg->kafka.max_message_bytes);
		return false;
	}
	return true;
}

bool finish_pass(struct load *ld)
{
	struct cfg *cfg = ld->cfg;
	const struct cloud_preset *cp = &keys_clouds[cfg->graph.cloud];
	if (!check_required(ld))
		return false;
	if (!cfg->kafka.state_topic[0]) {
		int len = snprintf(cfg->kafka.state_topic, sizeof(cfg->kafka.state_topic),
		                   "%s.state", cfg->kafka.input_topic);
		if (len < 0 || (size_t)len > 249) {
			load_fail(ld, 0,
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
