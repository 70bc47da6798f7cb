/*
 * cfg.c - configuration: libinih for the syntax, one table of keys for the meaning.
 *
 * Loading runs in three passes over one struct cfg that starts out holding every default:
 *   1. the file (here): inih calls on_pair() for each "key = value"; the value is parsed and
 *      stored at once, so the first bad line is the one reported;
 *   2. the environment (cfg_env.c): CHATPROV_<SECTION>_<KEY> variables replace stored
 *      values;
 *   3. finishing (cfg_finish.c): AZURE_* (Kubernetes workload identity) fill [auth] keys
 *      still empty, [tenant.NAME] profiles inherit from [auth]/[limits], credentials are
 *      resolved, cloud presets fill the roots, required keys and cross-key rules are checked.
 * The key table is cfg_keys.c, the value parsers cfg_value.c, the dump and the reload
 * comparison cfg_dump.c (all behind cfg_int.h). Every stored value remembers where it came
 * from (file line or environment variable) so that errors found in pass 3 can still point at
 * a line.
 */
#include "cfg_int.h"

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

void load_fail(struct load *ld, int line, const char *fmt, ...)
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

void load_origin_text(const struct load *ld, int origin, const char *envvar, char *buf, size_t cap)
{
	if (origin > 0)
		snprintf(buf, cap, "%s:%d", ld->path, origin);
	else if (origin == ORIGIN_ENV)
		snprintf(buf, cap, "env %s", envvar);
	else
		snprintf(buf, cap, "%s", ld->path);
}

/* ---- pass 1: the file ------------------------------------------------------------------- */

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
		load_fail(
		    ld, line,
		    "%s:%d: bad tenant profile name '%s' in [tenant.%s] (1-63 of [A-Za-z0-9_.-]; "
		    "'default' is reserved)",
		    ld->path, line, name, name);
		return -1;
	}
	if (cfg->n_tenants >= CFG_MAX_TENANTS) {
		load_fail(ld, line, "%s:%d: too many tenant profiles (at most %d)", ld->path, line,
		          CFG_MAX_TENANTS - 1);
		return -1;
	}
	char a[CFG_NAME_MAX * 2], b[CFG_NAME_MAX * 2];
	keys_env_name(a, sizeof(a), "tenant", name, NULL);
	for (size_t i = 1; i < cfg->n_tenants; i++) {
		keys_env_name(b, sizeof(b), "tenant", cfg->tenants[i].name, NULL);
		if (strcmp(a, b) == 0) {
			load_fail(ld, line,
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
		load_fail(ld, line, "%s:%d: duplicate key '%s' in [%s] (first set at line %d)",
		          ld->path, line, keys_tenant[ki].key, section, *origin);
		return false;
	}
	if (!value_set(ld, &keys_tenant[ki], &ld->cfg->tenants[ti], value, why, sizeof(why))) {
		load_fail(ld, line, "%s:%d: [%s] %s: %s", ld->path, line, section,
		          keys_tenant[ki].key, why);
		return false;
	}
	*origin = line;
	return true;
}

static bool set_global_key(struct load *ld, size_t ki, const char *value, int line)
{
	char why[CP_ERRSTR_SIZE];
	const struct cfg_key *k = &keys_global[ki];
	if (ld->gorigin[ki] > 0) {
		load_fail(ld, line, "%s:%d: duplicate key '%s' in [%s] (first set at line %d)",
		          ld->path, line, k->key, k->section, ld->gorigin[ki]);
		return false;
	}
	if (!value_set(ld, k, ld->cfg, value, why, sizeof(why))) {
		load_fail(ld, line, "%s:%d: [%s] %s: %s", ld->path, line, k->section, k->key, why);
		return false;
	}
	ld->gorigin[ki] = line;
	return true;
}

bool load_rdkafka_check(struct load *ld, const char *key, const char *value, char *errstr,
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

const struct cfg_rdkafka_entry *load_rdkafka_find(const struct cfg *cfg, const char *key)
{
	for (size_t i = 0; i < cfg->n_rdkafka; i++)
		if (strcmp(cfg->rdkafka[i].key, key) == 0)
			return &cfg->rdkafka[i];
	return NULL;
}

bool load_rdkafka_put(struct load *ld, const char *key, const char *value, const char *origin,
                      int line)
{
	struct cfg *cfg = ld->cfg;
	struct cfg_rdkafka_entry *e = NULL;
	for (size_t i = 0; i < cfg->n_rdkafka && !e; i++)
		if (strcmp(cfg->rdkafka[i].key, key) == 0)
			e = &cfg->rdkafka[i];
	if (strlen(key) >= sizeof(cfg->rdkafka[0].key) ||
	    strlen(value) >= sizeof(cfg->rdkafka[0].value)) {
		load_fail(ld, line, "%s: [librdkafka] %s: key or value too long", origin, key);
		return false;
	}
	if (!e) {
		if (cfg->n_rdkafka >= CFG_MAX_RDKAFKA) {
			load_fail(ld, line, "%s: [librdkafka] too many entries (at most %d)",
			          origin, CFG_MAX_RDKAFKA);
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
	const struct cfg_rdkafka_entry *dup = load_rdkafka_find(ld->cfg, key);
	if (dup) {
		load_fail(ld, line, "%s: duplicate key '%s' in [librdkafka] (first set at %s)",
		          origin, key, dup->origin);
		return false;
	}
	if (!load_rdkafka_check(ld, key, value, errstr, sizeof(errstr), &res)) {
		load_fail(ld, line, "%s: [librdkafka] %s: %s", origin, key, errstr);
		return false;
	}
	return load_rdkafka_put(ld, key, value, origin, line);
}
static bool on_tenant_pair(struct load *ld, const char *section, const char *name,
                           const char *value, int line)
{
	size_t ki, gi;
	int ti = tenant_slot(ld, section + strlen("tenant."), line);
	if (ti < 0)
		return false;
	if (keys_find(keys_tenant, KEYS_N_TENANT, NULL, name, &ki))
		return set_tenant_key(ld, (size_t)ti, ki, section, value, line);
	if (keys_find(keys_global, KEYS_N_GLOBAL, "auth", name, &gi) ||
	    keys_find(keys_global, KEYS_N_GLOBAL, "limits", name, &gi))
		load_fail(ld, line,
		          "%s:%d: unknown key '%s' in [%s] (it is global: set it in [%s])",
		          ld->path, line, name, section, keys_global[gi].section);
	else
		load_fail(ld, line, "%s:%d: unknown key '%s' in [%s]", ld->path, line, name,
		          section);
	return false;
}

static bool on_pair(struct load *ld, const char *section, const char *name, const char *value,
                    int line)
{
	size_t ki;
	if (section[0] == '\0') {
		load_fail(ld, line, "%s:%d: key '%s' outside of any [section]", ld->path, line,
		          name);
		return false;
	}
	if (strcmp(section, "librdkafka") == 0)
		return on_rdkafka(ld, name, value, line);
	if (strncmp(section, "tenant.", strlen("tenant.")) == 0)
		return on_tenant_pair(ld, section, name, value, line);
	if (keys_find(keys_global, KEYS_N_GLOBAL, section, name, &ki))
		return set_global_key(ld, ki, value, line);
	if (keys_find(keys_tenant, KEYS_N_TENANT, section, name, &ki))
		return set_tenant_key(ld, 0, ki, section, value, line);
	if (keys_section_known(section))
		load_fail(ld, line, "%s:%d: unknown key '%s' in [%s]", ld->path, line, name,
		          section);
	else
		load_fail(ld, line, "%s:%d: unknown section [%s]", ld->path, line, section);
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
		load_fail(ld, 0, "%s: cannot open: %s", ld->path, strerror(errno));
		return false;
	}
	if (fstat(fileno(ld->f), &st) == 0 && S_ISDIR(st.st_mode)) {
		load_fail(ld, 0, "%s: is a directory", ld->path);
		return false;
	}
	ini_settings();
	int rc = ini_parse_stream(ini_reader_cb, ld, ini_handler_cb, ld);
	if (ld->long_line && (!ld->failed || ld->long_line < ld->err_line)) {
		ld->failed = false;
		load_fail(ld, ld->long_line, "%s:%d: line too long (at most %d characters)",
		          ld->path, ld->long_line, CFG_LINE_MAX - 2);
	} else if (rc > 0 && (!ld->failed || rc < ld->err_line)) {
		ld->failed = false;
		load_fail(ld, rc, "%s:%d: syntax error (expected '[section]' or 'key = value')",
		          ld->path, rc);
	} else if (rc < 0 && !ld->failed) {
		load_fail(ld, 0, "%s: out of memory while parsing", ld->path);
	}
	if (!ld->failed && ferror(ld->f))
		load_fail(ld, 0, "%s: read error", ld->path);
	return !ld->failed;
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
		load_fail(ld, 0, "%s: out of memory", path);
		goto fail;
	}
	finish_defaults(ld);
	if (ld->failed || !parse_file(ld) || !env_pass(ld) || !finish_azure(ld) || !finish_pass(ld))
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
