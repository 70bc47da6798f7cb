/*
 * cfg_dump.c - the configuration as text (chatprovd --check-config, secrets masked) and
 * what a reload cannot change without a restart.
 */
#include <stdio.h>
#include <string.h>

#include "cfg_int.h"

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
		value_fmt_num(d, num, sizeof(num));
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
	for (size_t ki = 0; ki < KEYS_N_TENANT; ki++) {
		const struct cfg_key *k = &keys_tenant[ki];
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
	for (size_t i = 0; i < KEYS_N_GLOBAL; i++)
		if (strcmp(keys_global[i].section, section) == 0)
			dump_value(&keys_global[i], cfg, out);
	if (strcmp(section, "auth") == 0)
		dump_tenant(cfg, 0, out);
	if (strcmp(section, "limits") == 0)
		dump_value(&keys_tenant[keys_tenant_index("chat_creates_per_10s_per_tenant")],
		           &cfg->tenants[0], out);
	if (strcmp(section, "graph") == 0)
		fprintf(out, "; graph root %s, scope %s\n", cfg->graph.graph_root,
		        cfg->graph.scope);
	if (strcmp(section, "librdkafka") == 0) {
		for (size_t i = 0; i < cfg->n_rdkafka; i++) {
			const struct cfg_rdkafka_entry *e = &cfg->rdkafka[i];
			fprintf(out, "%s = %s\n", e->key,
			        keys_rdkafka_is_secret(e->key) ? "********" : e->value);
		}
	}
}

void cfg_dump(const struct cfg *cfg, FILE *out)
{
	fprintf(out, "; effective configuration of %s (defaults included, secrets masked)\n",
	        cfg->path);
	for (size_t i = 0; i < KEYS_N_SECTIONS; i++)
		dump_section(cfg, keys_sections[i], out);
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
		const struct cfg_rdkafka_entry *e = load_rdkafka_find(b, a->rdkafka[i].key);
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
	for (size_t i = 0; i < KEYS_N_GLOBAL; i++) {
		const struct cfg_key *k = &keys_global[i];
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
