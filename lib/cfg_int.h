/*
 * cfg_int.h - what the files of the configuration module share. cfg.c: loading (pass 1,
 * the file) and the public API; cfg_keys.c: the key table; cfg_value.c: the value parsers;
 * cfg_env.c: pass 2, the environment; cfg_finish.c: pass 3, profiles, credentials and
 * cross-key rules; cfg_dump.c: the dump and the reload comparison. Private to them: the rest
 * of the library uses cfg.h.
 */
#ifndef CHATPROV_CFG_INT_H
#define CHATPROV_CFG_INT_H

#include <librdkafka/rdkafka.h>
#include <stdio.h>

#include "cfg.h"

/* Longest accepted line; inih's own default (200) is too short for paths and URLs. */
#define CFG_LINE_MAX 4096
#define ENV_PREFIX   "CHATPROV_"

/* ---- the key table (cfg_keys.c) -------------------------------------------------------- */

struct cloud_preset {
	const char *graph_root;
	const char *authority;
};

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

/* The tables' lengths, as constants: struct load sizes its origin arrays by them. */
#define KEYS_N_GLOBAL   37
#define KEYS_N_TENANT   11
#define KEYS_N_SECTIONS 10

extern const struct cloud_preset keys_clouds[];
/* Keys stored once in struct cfg. Order is the order of cfg_dump. */
extern const struct cfg_key keys_global[KEYS_N_GLOBAL];
/*
 * Keys of a credential profile. For the default profile they live in [auth], except
 * chat_creates_per_10s_per_tenant which lives in [limits]; a [tenant.NAME] takes them all.
 */
extern const struct cfg_key keys_tenant[KEYS_N_TENANT];
extern const char *const keys_sections[KEYS_N_SECTIONS];

/* librdkafka properties whose values are secrets: masked by cfg_dump. */
bool keys_rdkafka_is_secret(const char *key);
/* The key named key in tab (in section, or any section when NULL); *idx its index. */
const struct cfg_key *keys_find(const struct cfg_key *tab, size_t n, const char *section,
                                const char *key, size_t *idx);
bool keys_section_known(const char *section);
/* Index of a profile key by name; aborts on a name not in the table (a literal in our code). */
size_t keys_tenant_index(const char *key);
/* "CHATPROV_" + parts upper-cased, '.' and '-' as '_'. */
void keys_env_name(char *buf, size_t cap, const char *a, const char *b, const char *c);
/* The variable that sets key ki of profile ti. */
void keys_tenant_env(const struct cfg *cfg, size_t ti, size_t ki, char *buf, size_t cap);

/* ---- load state (cfg.c) ---------------------------------------------------------------- */

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
	int gorigin[KEYS_N_GLOBAL];
	int torigin[CFG_MAX_TENANTS][KEYS_N_TENANT];
	struct cfg_tenant proto; /* profile defaults: the start of every [tenant.NAME] */
};

/* Keeps the first error only: it is the one nearest the top of the file. */
void load_fail(struct load *ld, int line, const char *fmt, ...) CP_PRINTF(3, 4);
/* Where a value came from (origin as in struct load), as text for an error message. */
void load_origin_text(const struct load *ld, int origin, const char *envvar, char *buf, size_t cap);
/* Checks one [librdkafka] pair with librdkafka itself; errstr is librdkafka's text. */
CP_MUSTCHECK bool load_rdkafka_check(struct load *ld, const char *key, const char *value,
                                     char *errstr, size_t cap, rd_kafka_conf_res_t *res);
const struct cfg_rdkafka_entry *load_rdkafka_find(const struct cfg *cfg, const char *key);
/* Adds or replaces an entry; origin is "file:line" or "env NAME". */
CP_MUSTCHECK bool load_rdkafka_put(struct load *ld, const char *key, const char *value,
                                   const char *origin, int line);

/* ---- value parsers (cfg_value.c) ------------------------------------------------------- */

/* Parses v as key k and stores it into the record at base. err gets the reason on failure. */
CP_MUSTCHECK bool value_set(const struct load *ld, const struct cfg_key *k, void *base,
                            const char *v, char *err, size_t errcap);
/* A number as the shortest text that reads back the same ("20", "0.5"). */
void value_fmt_num(double v, char *buf, size_t cap);

/* ---- pass 2 (cfg_env.c) and pass 3 (cfg_finish.c) -------------------------------------- */

CP_MUSTCHECK bool env_pass(struct load *ld);
/* Every key's default into ld->cfg and ld->proto: the start of pass 1. */
void finish_defaults(struct load *ld);
CP_MUSTCHECK bool finish_azure(struct load *ld);
CP_MUSTCHECK bool finish_pass(struct load *ld);

#endif
