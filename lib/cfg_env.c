/*
 * cfg_env.c - pass 2 of loading: CHATPROV_<SECTION>_<KEY> variables replace what the file
 * set, CHATPROV_LIBRDKAFKA_* add librdkafka properties.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg_int.h"

static bool env_librdkafka(struct load *ld, const char *var, const char *rest, const char *value)
{
	char key[CFG_NAME_MAX * 2], mapped[CFG_NAME_MAX * 4], origin[CFG_VALUE_MAX];
	char errstr[CP_ERRSTR_SIZE];
	rd_kafka_conf_res_t res;
	snprintf(origin, sizeof(origin), "env %s", var);
	key[0] = '\0';
	/* A key already in the file wins the mapping, so names with '_' can be overridden. */
	for (size_t i = 0; i < ld->cfg->n_rdkafka; i++) {
		keys_env_name(mapped, sizeof(mapped), "librdkafka", ld->cfg->rdkafka[i].key, NULL);
		if (strcmp(mapped, var) == 0)
			snprintf(key, sizeof(key), "%s", ld->cfg->rdkafka[i].key);
	}
	if (key[0] == '\0') {
		if (strlen(rest) >= sizeof(key)) {
			load_fail(ld, 0, "%s: name too long", origin);
			return false;
		}
		size_t i = 0;
		for (; rest[i]; i++)
			key[i] = rest[i] == '_' ? '.' : (char)tolower((unsigned char)rest[i]);
		key[i] = '\0';
	}
	if (!load_rdkafka_check(ld, key, value, errstr, sizeof(errstr), &res)) {
		if (res == RD_KAFKA_CONF_UNKNOWN)
			load_fail(
			    ld, 0,
			    "%s: [librdkafka] %s: %s (a property whose name has '_' can only be "
			    "overridden when it is in the file)",
			    origin, key, errstr);
		else
			load_fail(ld, 0, "%s: [librdkafka] %s: %s", origin, key, errstr);
		return false;
	}
	return load_rdkafka_put(ld, key, value, origin, 0);
}

static bool env_apply(struct load *ld, const struct cfg_key *k, void *base, int *origin,
                      const char *var, const char *section, const char *value)
{
	char why[CP_ERRSTR_SIZE];
	if (!value_set(ld, k, base, value, why, sizeof(why))) {
		load_fail(ld, 0, "env %s: [%s] %s: %s", var, section, k->key, why);
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
	for (size_t i = 0; i < KEYS_N_GLOBAL; i++) {
		keys_env_name(name, sizeof(name), keys_global[i].section, keys_global[i].key, NULL);
		if (strcmp(name, var) == 0)
			return env_apply(ld, &keys_global[i], cfg, &ld->gorigin[i], var,
			                 keys_global[i].section, value);
	}
	for (size_t ti = 0; ti < cfg->n_tenants; ti++) {
		for (size_t ki = 0; ki < KEYS_N_TENANT; ki++) {
			keys_tenant_env(cfg, ti, ki, name, sizeof(name));
			if (strcmp(name, var) != 0)
				continue;
			if (ti == 0)
				snprintf(section, sizeof(section), "%s", keys_tenant[ki].section);
			else
				snprintf(section, sizeof(section), "tenant.%s",
				         cfg->tenants[ti].name);
			return env_apply(ld, &keys_tenant[ki], &cfg->tenants[ti],
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
	for (size_t i = 0; i < KEYS_N_SECTIONS; i++) {
		keys_env_name(prefix, sizeof(prefix), keys_sections[i], "", NULL);
		if (strncmp(var, prefix, strlen(prefix)) == 0)
			return true;
	}
	return strncmp(var, ENV_PREFIX "TENANT_", strlen(ENV_PREFIX "TENANT_")) == 0;
}

bool env_pass(struct load *ld)
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
			load_fail(
			    ld, 0,
			    "env %s: matches no configuration key (CHATPROV_TENANT_<NAME>_<KEY> "
			    "needs an existing [tenant.NAME] section)",
			    var);
			return false;
		}
	}
	return true;
}
