/*
 * cfg.h - chatprovd configuration: INI file (libinih) plus CHATPROV_<SECTION>_<KEY>
 * environment overrides, validated against one table of keys.
 *
 * The loaded configuration is a plain, read-only record (struct cfg): every other module
 * reads it, none writes it. A reload builds a new struct cfg and swaps it in.
 */
#ifndef CHATPROV_CFG_H
#define CHATPROV_CFG_H

#include <stdio.h>

#include "common.h"

#define CFG_NAME_MAX    64
#define CFG_VALUE_MAX   1024
#define CFG_MAX_TENANTS 64
#define CFG_MAX_RDKAFKA 128
#define CFG_SECRET_MAX  8192 /* largest secret or token file cfg_read_secret_file accepts */

enum cfg_cloud { CFG_CLOUD_GLOBAL, CFG_CLOUD_USGOV, CFG_CLOUD_USGOVDOD, CFG_CLOUD_CHINA };
enum cfg_assertion_alg { CFG_ALG_PS256, CFG_ALG_RS256 };
enum cfg_credential {
	CFG_CRED_SECRET,      /* client_secret_file or $CREDENTIALS_DIRECTORY/graph-client-secret */
	CFG_CRED_CERTIFICATE, /* certificate_file + private_key_file */
	CFG_CRED_FEDERATED,   /* federated_token_file */
	CFG_CRED_MANAGED,     /* managed_identity = yes */
};

/* Rate limits of one tenant profile (the [limits] keys that a [tenant.NAME] may override). */
struct cfg_limits {
	double chat_creates_per_10s_per_tenant; /* [limits] chat_creates_per_10s_per_tenant */
};

/* One credential profile: [auth] is profile 0, named "default"; [tenant.NAME] are the rest. */
struct cfg_tenant {
	char name[CFG_NAME_MAX];
	char tenant_id[CFG_VALUE_MAX];
	char client_id[CFG_VALUE_MAX];
	enum cfg_credential credential;
	char client_secret_file[CFG_VALUE_MAX]; /* resolved path; "" when not a secret profile */
	char certificate_file[CFG_VALUE_MAX];
	char private_key_file[CFG_VALUE_MAX];
	enum cfg_assertion_alg assertion_alg;
	char federated_token_file[CFG_VALUE_MAX];
	bool managed_identity;
	char imds_url[CFG_VALUE_MAX];      /* full IMDS token URL */
	char authority_url[CFG_VALUE_MAX]; /* login root, e.g. https://login.microsoftonline.com */
	struct cfg_limits limits;
};

/* A verbatim [librdkafka] entry, kept with where it came from for error messages. */
struct cfg_rdkafka_entry {
	char key[CFG_NAME_MAX * 2];
	char value[CFG_VALUE_MAX];
	char origin[CFG_VALUE_MAX]; /* "file:line" or "env CHATPROV_LIBRDKAFKA_..." */
};

struct cfg {
	char path[CFG_VALUE_MAX]; /* the file it was loaded from */

	struct {
		char brokers[CFG_VALUE_MAX];
		char group_id[CFG_VALUE_MAX];
		char input_topic[CFG_NAME_MAX * 4];
		char output_topic[CFG_NAME_MAX * 4];
		char dlq_topic[CFG_NAME_MAX * 4];    /* "" = no DLQ */
		char state_topic[CFG_NAME_MAX * 4];  /* defaulted to "<input_topic>.state" */
		char limits_topic[CFG_NAME_MAX * 4]; /* "" = Retry-After blocks not shared */
		size_t max_message_bytes;            /* default 1 MiB */
		size_t max_queued;       /* events still to do in memory before intake stops */
		size_t max_queued_bytes; /* their bytes (key, headers, value, copies) */
	} kafka;

	size_t n_rdkafka;
	struct cfg_rdkafka_entry rdkafka[CFG_MAX_RDKAFKA];

	struct {
		enum cfg_cloud cloud;
		char graph_root[CFG_VALUE_MAX]; /* the cloud's root: used in bind URLs */
		char base_url[CFG_VALUE_MAX];   /* where requests go: base_url or graph_root */
		char api_version[16];           /* "v1.0" | "beta" */
		char ca_file[CFG_VALUE_MAX];
		char scope[CFG_VALUE_MAX]; /* the cloud's ".default" scope */
		unsigned max_in_flight;
		unsigned workers;
		double request_timeout_s;
		double connect_timeout_s;
		size_t max_members;
		size_t max_topic_length;
		size_t max_response_bytes;
	} graph;

	/* tenants[0] is [auth] ("default"); tenants[1..] are [tenant.NAME] in file order. */
	size_t n_tenants;
	struct cfg_tenant tenants[CFG_MAX_TENANTS];
	double token_refresh_ahead_s;

	struct {
		double chat_creates_per_10s_global;
		double window_s; /* length of the rate window: 10 in production, shorter in tests */
	} limits;

	struct {
		double poll_interval_s;
		double timeout_s;
	} operations;

	struct {
		unsigned max_attempts;
		double base_delay_s;
		double max_delay_s;
		double max_elapsed_s;
		/* 404 from POST /chats (a member not yet known to Teams): a budget of its own */
		double not_found_s; /* after the first 404; 0: fail at once */
		double not_found_base_delay_s;
		double not_found_max_delay_s;
	} retry;

	struct {
		bool group_chat_lookup;
		double state_retention_s;
	} recovery;

	struct {
		char listen[CFG_VALUE_MAX]; /* "" = no metrics endpoint */
	} metrics;

	struct {
		char level[16];
	} log;
};

/*
 * Loads and validates a configuration file, then applies CHATPROV_<SECTION>_<KEY>
 * environment overrides. On failure err holds one precise message ("file:line: ...").
 * The result is heap-allocated; release it with cfg_free.
 * Not thread-safe against other users of libinih: it sets libinih's (process-wide) options.
 */
bool cfg_load(const char *path, struct cfg **out, char *err, size_t errcap) CP_MUSTCHECK;
void cfg_free(struct cfg *cfg);

/* Reads a profile's client secret (file or systemd credential) into buf; never logged. */
bool cfg_read_secret(const struct cfg_tenant *tenant, char *buf, size_t cap, char *err,
                     size_t errcap) CP_MUSTCHECK;

/*
 * Reads a secret-bearing file (client secret, federated token): at most CFG_SECRET_MAX bytes,
 * trailing newlines stripped, must not be empty. Error messages name the path, never the
 * content.
 */
bool cfg_read_secret_file(const char *path, char *buf, size_t cap, char *err,
                          size_t errcap) CP_MUSTCHECK;

/* Index of the profile an event's "tenant" names (NULL/"" = default = 0); -1 if unknown. */
int cfg_tenant_index(const struct cfg *cfg, const char *name);

/* Writes the effective configuration as INI, secrets masked (for --check-config). */
void cfg_dump(const struct cfg *cfg, FILE *out);

/*
 * --check-config: loads path, prints the effective configuration to out (0) or the error to
 * err (1). Returns the exit status.
 */
int cfg_check(const char *path, FILE *out, FILE *err);

/*
 * Names of keys whose change needs a restart rather than SIGHUP, comma separated, as
 * "section.key" (and "librdkafka" for any [librdkafka] change); "" when a reload suffices.
 */
void cfg_restart_needed(const struct cfg *old_cfg, const struct cfg *new_cfg, char *buf,
                        size_t cap);

#endif
