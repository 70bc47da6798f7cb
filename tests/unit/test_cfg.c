/*
 * test_cfg.c - configuration loading: every key, every default, every error path with its
 * exact file:line and message, environment overrides, tenant profiles, secrets, dump, reload.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cfg.h"

/* Nine lines: errors appended to it are on line 10 and later. */
#define MINIMAL                                                                                    \
	"[kafka]\n"                                                                                \
	"brokers = 127.0.0.1:9092\n"                                                               \
	"group_id = chatprovd\n"                                                                   \
	"input_topic = chat.requests\n"                                                            \
	"output_topic = chat.results\n"                                                            \
	"[auth]\n"                                                                                 \
	"tenant_id = contoso.onmicrosoft.com\n"                                                    \
	"client_id = 00000000-0000-0000-0000-000000000000\n"                                       \
	"client_secret_file = /run/secret\n"

/* MINIMAL without a credential (eight lines). */
#define NOCRED                                                                                     \
	"[kafka]\n"                                                                                \
	"brokers = b:9092\n"                                                                       \
	"group_id = g\n"                                                                           \
	"input_topic = in\n"                                                                       \
	"output_topic = out\n"                                                                     \
	"[auth]\n"                                                                                 \
	"tenant_id = t\n"                                                                          \
	"client_id = c\n"

static char tmpdir[] = "/tmp/test_cfg.XXXXXX";
static char last_path[256];

/* Writes text to a fresh file in tmpdir; returns its path (valid until the next call). */
static const char *write_file(const char *name, const char *text, size_t len)
{
	if (name) {
		snprintf(last_path, sizeof(last_path), "%s/%s", tmpdir, name);
	} else {
		snprintf(last_path, sizeof(last_path), "%s/conf.XXXXXX", tmpdir);
		int fd = mkstemp(last_path);
		assert_true(fd >= 0);
		close(fd);
	}
	FILE *f = fopen(last_path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	return last_path;
}

static const char *write_conf(const char *text)
{
	return write_file(NULL, text, strlen(text));
}

static struct cfg *load_ok(const char *text)
{
	char err[CP_ERRSTR_SIZE] = "";
	struct cfg *cfg = NULL;
	const char *path = write_conf(text);
	if (!cfg_load(path, &cfg, err, sizeof(err)))
		fail_msg("unexpected error: %s", err);
	unlink(path);
	return cfg;
}

/* Copies pattern with every "%s" replaced by path. */
static void subst_path(char *out, size_t cap, const char *pattern, const char *path)
{
	size_t len = 0;
	for (const char *p = pattern; *p && len + 1 < cap; p++) {
		if (p[0] == '%' && p[1] == 's') {
			len += (size_t)snprintf(out + len, cap - len, "%s", path);
			p++;
		} else {
			out[len++] = *p;
		}
	}
	out[len < cap ? len : cap - 1] = '\0';
}

/* Loads text expecting failure; want and got get the expected and actual messages. */
static bool try_err(const char *text, const char *expected, char *want, char *got, size_t cap)
{
	struct cfg *cfg = NULL;
	const char *path = write_conf(text);
	got[0] = '\0';
	subst_path(want, cap, expected, path);
	bool failed = !cfg_load(path, &cfg, got, cap);
	unlink(path);
	if (!failed) {
		cfg_free(cfg);
		snprintf(got, cap, "(loaded without error)");
	}
	return failed && cfg == NULL;
}

/* expected says "%s" where the file's path goes. */
static void load_err(const char *text, const char *expected)
{
	char want[CP_ERRSTR_SIZE], got[CP_ERRSTR_SIZE];
	bool failed = try_err(text, expected, want, got, sizeof(want));
	assert_string_equal(got, want);
	assert_true(failed);
}

static int setup_all(void **state)
{
	(void)state;
	unsetenv("CREDENTIALS_DIRECTORY");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_all(void **state)
{
	(void)state;
	char path[512];
	DIR *d = opendir(tmpdir);
	struct dirent *e;
	while (d && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	return rmdir(tmpdir);
}

static void test_minimal_defaults(void **state)
{
	(void)state;
	struct cfg *c = load_ok(MINIMAL);
	assert_string_equal(c->kafka.brokers, "127.0.0.1:9092");
	assert_string_equal(c->kafka.group_id, "chatprovd");
	assert_string_equal(c->kafka.input_topic, "chat.requests");
	assert_string_equal(c->kafka.output_topic, "chat.results");
	assert_string_equal(c->kafka.dlq_topic, "");
	assert_string_equal(c->kafka.state_topic, "chat.requests.state");
	assert_int_equal(c->kafka.max_message_bytes, 1048576);
	assert_int_equal(c->kafka.max_queued, 10000);
	assert_int_equal(c->n_rdkafka, 0);
	assert_int_equal(c->graph.cloud, CFG_CLOUD_GLOBAL);
	assert_string_equal(c->graph.graph_root, "https://graph.microsoft.com");
	assert_string_equal(c->graph.base_url, "https://graph.microsoft.com");
	assert_string_equal(c->graph.scope, "https://graph.microsoft.com/.default");
	assert_string_equal(c->graph.api_version, "v1.0");
	assert_string_equal(c->graph.ca_file, "");
	assert_int_equal(c->graph.max_in_flight, 256);
	assert_int_equal(c->graph.workers, 1);
	assert_true(c->graph.request_timeout_s == 30);
	assert_true(c->graph.connect_timeout_s == 10);
	assert_int_equal(c->graph.max_members, 250);
	assert_int_equal(c->graph.max_topic_length, 250);
	assert_int_equal(c->graph.max_response_bytes, 1048576);
	assert_int_equal(c->n_tenants, 1);
	const struct cfg_tenant *t = &c->tenants[0];
	assert_string_equal(t->name, "default");
	assert_string_equal(t->tenant_id, "contoso.onmicrosoft.com");
	assert_string_equal(t->client_id, "00000000-0000-0000-0000-000000000000");
	assert_int_equal(t->credential, CFG_CRED_SECRET);
	assert_string_equal(t->client_secret_file, "/run/secret");
	assert_string_equal(t->certificate_file, "");
	assert_string_equal(t->private_key_file, "");
	assert_int_equal(t->assertion_alg, CFG_ALG_PS256);
	assert_string_equal(t->federated_token_file, "");
	assert_false(t->managed_identity);
	assert_string_equal(t->imds_url, "http://169.254.169.254/metadata/identity/oauth2/token");
	assert_string_equal(t->authority_url, "https://login.microsoftonline.com");
	assert_true(t->limits.chat_creates_per_10s_per_tenant == 20);
	assert_true(c->token_refresh_ahead_s == 300);
	assert_true(c->limits.chat_creates_per_10s_global == 200);
	assert_true(c->limits.window_s == 10);
	assert_true(c->operations.poll_interval_s == 30);
	assert_true(c->operations.timeout_s == 900);
	assert_int_equal(c->retry.max_attempts, 8);
	assert_true(c->retry.base_delay_s == 0.5);
	assert_true(c->retry.max_delay_s == 60);
	assert_true(c->retry.max_elapsed_s == 900);
	assert_true(c->retry.not_found_s == 600);
	assert_true(c->retry.not_found_base_delay_s == 2);
	assert_true(c->retry.not_found_max_delay_s == 60);
	assert_true(c->recovery.group_chat_lookup);
	assert_true(c->recovery.state_retention_s == 604800);
	assert_string_equal(c->metrics.listen, "127.0.0.1:9464");
	assert_string_equal(c->log.level, "info");
	cfg_free(c);
}

static const char all_keys[] = "; every key, none at its default\n"
                               "[kafka]\n"
                               "brokers = k1:9092,k2:9092\n"
                               "group_id = grp\n"
                               "input_topic = in-topic\n"
                               "output_topic = out_topic\n"
                               "dlq_topic = dlq\n"
                               "state_topic = st\n"
                               "max_message_bytes = 2048\n"
                               "max_queued = 5\n"
                               "[librdkafka]\n"
                               "security.protocol = ssl\n"
                               "client.id = chatprov-test   ; inline comment\n"
                               "[graph]\n"
                               "cloud = usgov\n"
                               "base_url = http://127.0.0.1:8080/\n"
                               "api_version = beta\n"
                               "ca_file = /etc/ca.pem\n"
                               "max_in_flight = 10000\n"
                               "workers = 16\n"
                               "request_timeout_s = 1.5\n"
                               "connect_timeout_s = 120\n"
                               "max_members = 2\n"
                               "max_topic_length = 1\n"
                               "max_response_bytes = 4096\n"
                               "[auth]\n"
                               "tenant_id = tid\n"
                               "client_id = cid\n"
                               "certificate_file = /c.pem\n"
                               "private_key_file = /k.pem\n"
                               "assertion_alg = RS256\n"
                               "imds_url = http://localhost:1234/imds\n"
                               "authority_url = https://login.example.test/base\n"
                               "refresh_ahead_s = 0\n"
                               "[limits]\n"
                               "chat_creates_per_10s_per_tenant = 0.1\n"
                               "chat_creates_per_10s_global = 100000\n"
                               "window_s = 0.5\n"
                               "[operations]\n"
                               "poll_interval_s = 0.05\n"
                               "timeout_s = 86400\n"
                               "[retry]\n"
                               "max_attempts = 100\n"
                               "base_delay_s = 0.001\n"
                               "max_delay_s = 3600\n"
                               "max_elapsed_s = 1\n"
                               "not_found_s = 0\n"
                               "not_found_base_delay_s = 600\n"
                               "not_found_max_delay_s = 3600\n"
                               "[recovery]\n"
                               "group_chat_lookup = off\n"
                               "state_retention_s = 60\n"
                               "[metrics]\n"
                               "listen = [::1]:1\n"
                               "[log]\n"
                               "level = debug\n";

static void test_all_keys(void **state)
{
	(void)state;
	struct cfg *c = load_ok(all_keys);
	assert_string_equal(c->kafka.brokers, "k1:9092,k2:9092");
	assert_string_equal(c->kafka.group_id, "grp");
	assert_string_equal(c->kafka.input_topic, "in-topic");
	assert_string_equal(c->kafka.output_topic, "out_topic");
	assert_string_equal(c->kafka.dlq_topic, "dlq");
	assert_string_equal(c->kafka.state_topic, "st");
	assert_int_equal(c->kafka.max_message_bytes, 2048);
	assert_int_equal(c->kafka.max_queued, 5);
	assert_int_equal(c->n_rdkafka, 2);
	assert_string_equal(c->rdkafka[0].key, "security.protocol");
	assert_string_equal(c->rdkafka[0].value, "ssl");
	assert_string_equal(c->rdkafka[1].key, "client.id");
	assert_string_equal(c->rdkafka[1].value, "chatprov-test");
	assert_non_null(strstr(c->rdkafka[1].origin, ":13"));
	assert_int_equal(c->graph.cloud, CFG_CLOUD_USGOV);
	assert_string_equal(c->graph.graph_root, "https://graph.microsoft.us");
	assert_string_equal(c->graph.base_url, "http://127.0.0.1:8080");
	assert_string_equal(c->graph.scope, "https://graph.microsoft.us/.default");
	assert_string_equal(c->graph.api_version, "beta");
	assert_string_equal(c->graph.ca_file, "/etc/ca.pem");
	assert_int_equal(c->graph.max_in_flight, 10000);
	assert_int_equal(c->graph.workers, 16);
	assert_true(c->graph.request_timeout_s == 1.5);
	assert_true(c->graph.connect_timeout_s == 120);
	assert_int_equal(c->graph.max_members, 2);
	assert_int_equal(c->graph.max_topic_length, 1);
	assert_int_equal(c->graph.max_response_bytes, 4096);
	const struct cfg_tenant *t = &c->tenants[0];
	assert_string_equal(t->tenant_id, "tid");
	assert_string_equal(t->client_id, "cid");
	assert_int_equal(t->credential, CFG_CRED_CERTIFICATE);
	assert_string_equal(t->client_secret_file, "");
	assert_string_equal(t->certificate_file, "/c.pem");
	assert_string_equal(t->private_key_file, "/k.pem");
	assert_int_equal(t->assertion_alg, CFG_ALG_RS256);
	assert_string_equal(t->imds_url, "http://localhost:1234/imds");
	assert_string_equal(t->authority_url, "https://login.example.test/base");
	assert_true(c->token_refresh_ahead_s == 0);
	assert_true(t->limits.chat_creates_per_10s_per_tenant == 0.1);
	assert_true(c->limits.chat_creates_per_10s_global == 100000);
	assert_true(c->limits.window_s == 0.5);
	assert_true(c->operations.poll_interval_s == 0.05);
	assert_true(c->operations.timeout_s == 86400);
	assert_int_equal(c->retry.max_attempts, 100);
	assert_true(c->retry.base_delay_s == 0.001);
	assert_true(c->retry.max_delay_s == 3600);
	assert_true(c->retry.max_elapsed_s == 1);
	assert_true(c->retry.not_found_s == 0);
	assert_true(c->retry.not_found_base_delay_s == 600);
	assert_true(c->retry.not_found_max_delay_s == 3600);
	assert_false(c->recovery.group_chat_lookup);
	assert_true(c->recovery.state_retention_s == 60);
	assert_string_equal(c->metrics.listen, "[::1]:1");
	assert_string_equal(c->log.level, "debug");
	cfg_free(c);
}

static void test_other_credentials(void **state)
{
	(void)state;
	struct cfg *c = load_ok(NOCRED "federated_token_file = /var/run/token\n");
	assert_int_equal(c->tenants[0].credential, CFG_CRED_FEDERATED);
	assert_string_equal(c->tenants[0].federated_token_file, "/var/run/token");
	cfg_free(c);
	/* Managed identity needs no client_id (system-assigned identity). */
	c = load_ok("[kafka]\nbrokers=b\ngroup_id=g\ninput_topic=i\noutput_topic=o\n"
	            "[auth]\ntenant_id=t\nmanaged_identity=yes\n");
	assert_int_equal(c->tenants[0].credential, CFG_CRED_MANAGED);
	assert_true(c->tenants[0].managed_identity);
	assert_string_equal(c->tenants[0].client_id, "");
	cfg_free(c);
	/* Every accepted spelling of a boolean. */
	static const char *const yes[] = {"yes", "true", "1", "on", "YES", "True"};
	static const char *const no[] = {"no", "false", "0", "off", "NO", "Off"};
	char text[512];
	for (size_t i = 0; i < 6; i++) {
		snprintf(text, sizeof(text), MINIMAL "[recovery]\ngroup_chat_lookup = %s\n",
		         yes[i]);
		c = load_ok(text);
		assert_true(c->recovery.group_chat_lookup);
		cfg_free(c);
		snprintf(text, sizeof(text), MINIMAL "[recovery]\ngroup_chat_lookup = %s\n", no[i]);
		c = load_ok(text);
		assert_false(c->recovery.group_chat_lookup);
		cfg_free(c);
	}
}

static void test_cloud_presets(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		enum cfg_cloud cloud;
		const char *root, *authority;
	} want[] = {
	    {"global", CFG_CLOUD_GLOBAL, "https://graph.microsoft.com",
	     "https://login.microsoftonline.com"},
	    {"usgov", CFG_CLOUD_USGOV, "https://graph.microsoft.us",
	     "https://login.microsoftonline.us"},
	    {"usgovdod", CFG_CLOUD_USGOVDOD, "https://dod-graph.microsoft.us",
	     "https://login.microsoftonline.us"},
	    {"china", CFG_CLOUD_CHINA, "https://microsoftgraph.chinacloudapi.cn",
	     "https://login.chinacloudapi.cn"},
	};
	char text[1024], scope[256];
	for (size_t i = 0; i < 4; i++) {
		snprintf(text, sizeof(text),
		         MINIMAL "[tenant.x]\ntenant_id=x\n[graph]\ncloud = %s\n", want[i].name);
		struct cfg *c = load_ok(text);
		snprintf(scope, sizeof(scope), "%s/.default", want[i].root);
		assert_int_equal(c->graph.cloud, want[i].cloud);
		assert_string_equal(c->graph.graph_root, want[i].root);
		assert_string_equal(c->graph.base_url, want[i].root);
		assert_string_equal(c->graph.scope, scope);
		assert_string_equal(c->tenants[0].authority_url, want[i].authority);
		assert_string_equal(c->tenants[1].authority_url, want[i].authority);
		cfg_free(c);
	}
}

static void test_reroute_keeps_scope(void **state)
{
	(void)state;
	struct cfg *c = load_ok(
	    MINIMAL "authority_url = http://127.0.0.1:9000/\n"
	            "[graph]\ncloud = china\nbase_url = https://proxy.example:8443/graph\n");
	assert_string_equal(c->graph.base_url, "https://proxy.example:8443/graph");
	assert_string_equal(c->graph.graph_root, "https://microsoftgraph.chinacloudapi.cn");
	assert_string_equal(c->graph.scope, "https://microsoftgraph.chinacloudapi.cn/.default");
	assert_string_equal(c->tenants[0].authority_url, "http://127.0.0.1:9000");
	cfg_free(c);
	/* Other loopback spellings are fine over plain http. */
	c = load_ok(MINIMAL "[graph]\nbase_url = http://localhost:1/\n");
	assert_string_equal(c->graph.base_url, "http://localhost:1");
	cfg_free(c);
	c = load_ok(MINIMAL "[graph]\nbase_url = http://[::1]:8/x\n");
	assert_string_equal(c->graph.base_url, "http://[::1]:8/x");
	cfg_free(c);
	c = load_ok(MINIMAL "[graph]\nbase_url = http://127.200.0.9\n");
	cfg_free(c);
}

static void test_syntax_errors(void **state)
{
	(void)state;
	load_err(MINIMAL "[nope]\nx = 1\n", "%s:11: unknown section [nope]");
	load_err(MINIMAL "[kafka]\nbrokerz = x\n", "%s:11: unknown key 'brokerz' in [kafka]");
	load_err(MINIMAL "brokers = again\n", "%s:10: unknown key 'brokers' in [auth]");
	load_err(MINIMAL "[kafka]\nbrokers = again\n",
	         "%s:11: duplicate key 'brokers' in [kafka] (first set at line 2)");
	load_err(MINIMAL "client_id = again\n",
	         "%s:10: duplicate key 'client_id' in [auth] (first set at line 8)");
	load_err("x = 1\n" MINIMAL, "%s:1: key 'x' outside of any [section]");
	load_err(MINIMAL "[kafka\n", "%s:10: syntax error (expected '[section]' or 'key = value')");
	load_err(MINIMAL "just words\n",
	         "%s:10: syntax error (expected '[section]' or 'key = value')");
	/* An indented line is not a continuation of the previous value. */
	load_err(MINIMAL "  more\n", "%s:10: syntax error (expected '[section]' or 'key = value')");
	/* The first error wins, whichever of inih and the table finds it. */
	load_err(MINIMAL "oops\n[kafka]\nfoo = 1\n",
	         "%s:10: syntax error (expected '[section]' or 'key = value')");
	load_err(MINIMAL "[kafka]\nfoo = 1\noops\n", "%s:11: unknown key 'foo' in [kafka]");
	char text[12000];
	char longv[5000];
	memset(longv, 'a', sizeof(longv) - 1);
	longv[sizeof(longv) - 1] = '\0';
	snprintf(text, sizeof(text), MINIMAL "[kafka]\ndlq_topic = %s\n", longv);
	load_err(text, "%s:11: line too long (at most 4094 characters)");
	/* Long but legal lines parse (inih's default limit is 200). */
	memset(longv, 'a', 900);
	longv[900] = '\0';
	snprintf(text, sizeof(text), MINIMAL "[graph]\nca_file = /%s\n", longv);
	struct cfg *c = load_ok(text);
	assert_int_equal(strlen(c->graph.ca_file), 901);
	cfg_free(c);
	snprintf(text, sizeof(text), MINIMAL "[graph]\nca_file = /%s%s\n", longv, longv);
	load_err(text, "%s:11: [graph] ca_file: value too long (1801 characters, at most 1023)");
}

static void test_value_errors(void **state)
{
	(void)state;
	load_err(MINIMAL "[kafka]\nmax_queued = lots\n",
	         "%s:11: [kafka] max_queued: 'lots' is not a whole number");
	load_err(MINIMAL "[kafka]\nmax_queued = 1.5\n",
	         "%s:11: [kafka] max_queued: '1.5' is not a whole number");
	load_err(MINIMAL "[kafka]\nmax_queued = 0x10\n",
	         "%s:11: [kafka] max_queued: '0x10' is not a whole number");
	load_err(MINIMAL "[kafka]\nmax_queued =\n",
	         "%s:11: [kafka] max_queued: '' is not a whole number");
	load_err(MINIMAL "[kafka]\nmax_queued = 0\n",
	         "%s:11: [kafka] max_queued: '0' is out of range (1..1000000)");
	load_err(MINIMAL "[kafka]\nmax_queued = -1\n",
	         "%s:11: [kafka] max_queued: '-1' is out of range (1..1000000)");
	load_err(MINIMAL "[kafka]\nmax_queued = 1000001\n",
	         "%s:11: [kafka] max_queued: '1000001' is out of range (1..1000000)");
	load_err(MINIMAL "[kafka]\nmax_queued = 99999999999999999999999\n",
	         "%s:11: [kafka] max_queued: '99999999999999999999999' is out of range "
	         "(1..1000000)");
	load_err(MINIMAL "[operations]\npoll_interval_s = 0.01\n",
	         "%s:11: [operations] poll_interval_s: '0.01' is out of range (0.05..3600)");
	load_err(MINIMAL "[operations]\ntimeout_s = 86400.5\n",
	         "%s:11: [operations] timeout_s: '86400.5' is out of range (1..86400)");
	load_err(MINIMAL "[retry]\nbase_delay_s = nan\n",
	         "%s:11: [retry] base_delay_s: 'nan' is not a number");
	load_err(MINIMAL "[retry]\nbase_delay_s = inf\n",
	         "%s:11: [retry] base_delay_s: 'inf' is not a number");
	load_err(MINIMAL "[retry]\nbase_delay_s = 1..2\n",
	         "%s:11: [retry] base_delay_s: '1..2' is not a number");
	load_err(MINIMAL "[retry]\nmax_elapsed_s = 1e9\n",
	         "%s:11: [retry] max_elapsed_s: '1e9' is out of range (1..86400)");
	load_err(MINIMAL "[retry]\nnot_found_s = -1\n",
	         "%s:11: [retry] not_found_s: '-1' is out of range (0..86400)");
	load_err(MINIMAL "[retry]\nnot_found_s = 86401\n",
	         "%s:11: [retry] not_found_s: '86401' is out of range (0..86400)");
	load_err(MINIMAL "[retry]\nnot_found_s = ten\n",
	         "%s:11: [retry] not_found_s: 'ten' is not a number");
	load_err(MINIMAL "[retry]\nnot_found_base_delay_s = 0\n",
	         "%s:11: [retry] not_found_base_delay_s: '0' is out of range (0.01..600)");
	load_err(MINIMAL "[limits]\nchat_creates_per_10s_per_tenant = 0\n",
	         "%s:11: [limits] chat_creates_per_10s_per_tenant: '0' is out of range "
	         "(0.1..10000)");
	load_err(MINIMAL "[graph]\nworkers = 17\n",
	         "%s:11: [graph] workers: '17' is out of range (1..16)");
	load_err(MINIMAL "[recovery]\ngroup_chat_lookup = maybe\n",
	         "%s:11: [recovery] group_chat_lookup: 'maybe' is not a boolean (yes/no, "
	         "true/false, on/off, 1/0)");
	load_err(
	    MINIMAL "managed_identity = 2\n",
	    "%s:10: [auth] managed_identity: '2' is not a boolean (yes/no, true/false, on/off, "
	    "1/0)");
	load_err(MINIMAL "[graph]\ncloud = mars\n",
	         "%s:11: [graph] cloud: 'mars' is not one of global|usgov|usgovdod|china");
	load_err(MINIMAL "[graph]\napi_version = v2\n",
	         "%s:11: [graph] api_version: 'v2' is not one of v1.0|beta");
	load_err(MINIMAL "assertion_alg = ES256\n",
	         "%s:10: [auth] assertion_alg: 'ES256' is not one of PS256|RS256");
	load_err(MINIMAL "[log]\nlevel = loud\n",
	         "%s:11: [log] level: 'loud' is not one of error|warning|notice|info|debug");
	load_err(MINIMAL "[kafka]\ndlq_topic = bad topic\n",
	         "%s:11: [kafka] dlq_topic: 'bad topic' is not a valid Kafka topic name "
	         "([A-Za-z0-9._-], at most 249)");
}

static void test_url_errors(void **state)
{
	(void)state;
	load_err(MINIMAL "[graph]\nbase_url = not a url\n",
	         "%s:11: [graph] base_url: 'not a url' is not a valid URL (expected "
	         "https://host[:port][/path])");
	load_err(MINIMAL "[graph]\nbase_url = ftp://example.com/\n",
	         "%s:11: [graph] base_url: 'ftp://example.com/': scheme must be https (or http "
	         "to a loopback host)");
	load_err(MINIMAL "[graph]\nbase_url = https://u:p@example.com/\n",
	         "%s:11: [graph] base_url: URL must not contain user info or a fragment");
	load_err(MINIMAL "[graph]\nbase_url = https://graph.example.com/?x=1\n",
	         "%s:11: [graph] base_url: URL must not contain a query (it is a root that paths "
	         "are appended to)");
	load_err(MINIMAL "[graph]\nbase_url = http://graph.example.com\n",
	         "%s:11: [graph] base_url: 'http://graph.example.com': plain http is only "
	         "allowed to loopback hosts (127.0.0.0/8, localhost, [::1]); use https");
	load_err(MINIMAL "authority_url = http://10.0.0.1/\n",
	         "%s:10: [auth] authority_url: 'http://10.0.0.1/': plain http is only allowed to "
	         "loopback hosts (127.0.0.0/8, localhost, [::1]); use https");
	/* IMDS is link-local and plain http by nature; other URLs may not use that. */
	load_err(MINIMAL "authority_url = http://169.254.169.254/\n",
	         "%s:10: [auth] authority_url: 'http://169.254.169.254/': plain http is only "
	         "allowed to loopback hosts (127.0.0.0/8, localhost, [::1]); use https");
	load_err(MINIMAL "imds_url = http://imds.example.com/\n",
	         "%s:10: [auth] imds_url: 'http://imds.example.com/': plain http is only allowed "
	         "to loopback hosts (127.0.0.0/8, localhost, [::1]); use https");
	load_err(MINIMAL "imds_url =\n", "%s:10: [auth] imds_url: must not be empty");
	load_err(MINIMAL "[metrics]\nlisten = 9464\n",
	         "%s:11: [metrics] listen: '9464' is not host:port (e.g. 127.0.0.1:9464; empty "
	         "disables)");
	load_err(MINIMAL "[metrics]\nlisten = :9464\n",
	         "%s:11: [metrics] listen: ':9464' is not host:port (e.g. 127.0.0.1:9464; empty "
	         "disables)");
	load_err(MINIMAL "[metrics]\nlisten = localhost:65536\n",
	         "%s:11: [metrics] listen: 'localhost:65536' is not host:port (e.g. "
	         "127.0.0.1:9464; empty disables)");
	load_err(MINIMAL "[metrics]\nlisten = ::1:80\n",
	         "%s:11: [metrics] listen: '::1:80' is not host:port (e.g. 127.0.0.1:9464; empty "
	         "disables)");
	struct cfg *c = load_ok(MINIMAL "[metrics]\nlisten =\n");
	assert_string_equal(c->metrics.listen, "");
	cfg_free(c);
	c = load_ok(MINIMAL "[metrics]\nlisten = 0.0.0.0:80\n");
	assert_string_equal(c->metrics.listen, "0.0.0.0:80");
	cfg_free(c);
}

static void test_required_and_cross(void **state)
{
	(void)state;
	load_err("[kafka]\ngroup_id = g\ninput_topic = i\noutput_topic = o\n",
	         "%s: missing required key 'brokers' in [kafka]");
	load_err("[kafka]\nbrokers = b\ninput_topic = i\noutput_topic = o\n",
	         "%s: missing required key 'group_id' in [kafka]");
	load_err("[kafka]\nbrokers = b\ngroup_id = g\noutput_topic = o\n",
	         "%s: missing required key 'input_topic' in [kafka]");
	load_err("[kafka]\nbrokers = b\ngroup_id = g\ninput_topic = i\n",
	         "%s: missing required key 'output_topic' in [kafka]");
	load_err("[kafka]\nbrokers=b\ngroup_id=g\ninput_topic=i\noutput_topic=o\n[auth]\n"
	         "client_id=c\nclient_secret_file=/s\n",
	         "%s: missing required key 'tenant_id' in [auth]");
	load_err("[kafka]\nbrokers=b\ngroup_id=g\ninput_topic=i\noutput_topic=o\n[auth]\n"
	         "tenant_id=t\nclient_secret_file=/s\n",
	         "%s: missing required key 'client_id' in [auth]");
	load_err(NOCRED, "%s: [auth]: no credential configured (set client_secret_file, "
	                 "certificate_file + private_key_file, federated_token_file or "
	                 "managed_identity = yes; or run with a systemd credential "
	                 "graph-client-secret)");
	load_err(MINIMAL "federated_token_file = /t\n",
	         "%s:10: [auth] has more than one credential: client_secret_file and "
	         "federated_token_file (choose one)");
	load_err(NOCRED "managed_identity = yes\ncertificate_file = /c\nprivate_key_file = /k\n",
	         "%s:10: [auth] has more than one credential: certificate_file and "
	         "managed_identity (choose one)");
	load_err(NOCRED "certificate_file = /c\n",
	         "%s:9: [auth] certificate_file needs both certificate_file and private_key_file");
	load_err(NOCRED "private_key_file = /k\n",
	         "%s:9: [auth] private_key_file needs both certificate_file and private_key_file");
	load_err(MINIMAL "[kafka]\nstate_topic = chat.results\n",
	         "%s:11: [kafka] output_topic and state_topic are the same topic: input_topic, "
	         "output_topic, state_topic, dlq_topic and limits_topic must be different topics");
	load_err(MINIMAL "[kafka]\ndlq_topic = chat.requests\n",
	         "%s:11: [kafka] input_topic and dlq_topic are the same topic: input_topic, "
	         "output_topic, state_topic, dlq_topic and limits_topic must be different topics");
	/* A DLQ copy in the state topic would read as a request's state; in the output, as a
	 * result. The derived state topic counts too. */
	load_err(MINIMAL "[kafka]\nstate_topic = chat.state\ndlq_topic = chat.state\n",
	         "%s:12: [kafka] state_topic and dlq_topic are the same topic: input_topic, "
	         "output_topic, state_topic, dlq_topic and limits_topic must be different topics");
	load_err(MINIMAL "[kafka]\ndlq_topic = chat.requests.state\n",
	         "%s:11: [kafka] state_topic and dlq_topic are the same topic: input_topic, "
	         "output_topic, state_topic, dlq_topic and limits_topic must be different topics");
	load_err(MINIMAL "[kafka]\nlimits_topic = chat.requests.state\n",
	         "%s:11: [kafka] state_topic and limits_topic are the same topic: input_topic, "
	         "output_topic, state_topic, dlq_topic and limits_topic must be different topics");
	load_err(MINIMAL "[kafka]\ndlq_topic = chat.results\n",
	         "%s:11: [kafka] output_topic and dlq_topic are the same topic: input_topic, "
	         "output_topic, state_topic, dlq_topic and limits_topic must be different topics");
	load_err(MINIMAL "[retry]\nbase_delay_s = 30\nmax_delay_s = 20\n",
	         "%s:11: [retry] base_delay_s (30) must not exceed max_delay_s (20)");
	load_err(MINIMAL "[retry]\nnot_found_base_delay_s = 30\nnot_found_max_delay_s = 20\n",
	         "%s:11: [retry] not_found_base_delay_s (30) must not exceed not_found_max_delay_s "
	         "(20)");
	load_err(MINIMAL "[operations]\npoll_interval_s = 60\ntimeout_s = 30\n",
	         "%s:11: [operations] poll_interval_s (60) must not exceed timeout_s (30)");
	load_err(MINIMAL "[kafka]\nmax_queued_bytes = 2097152\n",
	         "%s:11: [kafka] max_queued_bytes (2097152) must be at least 4 x max_message_bytes "
	         "(1048576): an event costs up to about twice its size");
	load_err(MINIMAL "[kafka]\ninput_topic = again\n",
	         "%s:11: duplicate key 'input_topic' in [kafka] (first set at line 4)");
}

static void test_missing_file(void **state)
{
	(void)state;
	char err[CP_ERRSTR_SIZE];
	struct cfg *c = (struct cfg *)1;
	assert_false(cfg_load("/nonexistent/chatprovd.conf", &c, err, sizeof(err)));
	assert_null(c);
	assert_string_equal(err, "/nonexistent/chatprovd.conf: cannot open: No such file or "
	                         "directory");
	assert_false(cfg_load(tmpdir, &c, err, sizeof(err)));
	assert_non_null(strstr(err, ": is a directory"));
}

static void test_librdkafka_entries_checked_by_librdkafka_with_line(void **state)
{
	(void)state;
	load_err(MINIMAL "[librdkafka]\nno.such.property = 1\n",
	         "%s:11: [librdkafka] no.such.property: No such configuration property: "
	         "\"no.such.property\"");
	load_err(MINIMAL "[librdkafka]\nsecurity.protocol = carrier-pigeon\n",
	         "%s:11: [librdkafka] security.protocol: Invalid value \"carrier-pigeon\" for "
	         "configuration property \"security.protocol\"");
	load_err(MINIMAL "[librdkafka]\nsocket.timeout.ms = 1\n",
	         "%s:11: [librdkafka] socket.timeout.ms: Configuration property "
	         "\"socket.timeout.ms\" value 1 is outside allowed range 10..300000");
	load_err(MINIMAL "[librdkafka]\nlinger.ms = 5\nlinger.ms = 6\n",
	         "%s:12: duplicate key 'linger.ms' in [librdkafka] (first set at %s:11)");
	load_err(MINIMAL "[librdkafka]\nbootstrap.servers = x:1\n",
	         "%s:11: [librdkafka] bootstrap.servers: set by chatprovd from [kafka] brokers");
	load_err(MINIMAL "[librdkafka]\ngroup.id = x\n",
	         "%s:11: [librdkafka] group.id: set by chatprovd from [kafka] group_id");
}

static void test_env_overrides(void **state)
{
	(void)state;
	setenv("CHATPROV_KAFKA_BROKERS", "env1:9092", 1);
	setenv("CHATPROV_GRAPH_BASE_URL", "http://127.0.0.1:7777", 1);
	setenv("CHATPROV_LIBRDKAFKA_SECURITY_PROTOCOL", "ssl", 1);
	setenv("CHATPROV_LIBRDKAFKA_LINGER_MS", "7", 1);
	setenv("CHATPROV_AUTH_CLIENT_ID", "env-client", 1);
	setenv("CHATPROV_LIMITS_CHAT_CREATES_PER_10S_PER_TENANT", "3", 1);
	setenv("CHATPROV_LOG_LEVEL", "debug", 1);
	setenv("CHATPROV_RETRY_NOT_FOUND_S", "0", 1);
	setenv("CHATPROV_BUILD_DIR", "/not/ours", 1); /* not a section: ignored */
	struct cfg *c = load_ok(MINIMAL "[librdkafka]\nlinger.ms = 5\n");
	assert_string_equal(c->kafka.brokers, "env1:9092");
	assert_string_equal(c->graph.base_url, "http://127.0.0.1:7777");
	assert_string_equal(c->tenants[0].client_id, "env-client");
	assert_true(c->tenants[0].limits.chat_creates_per_10s_per_tenant == 3);
	assert_string_equal(c->log.level, "debug");
	assert_true(c->retry.not_found_s == 0);
	assert_int_equal(c->n_rdkafka, 2);
	assert_string_equal(c->rdkafka[0].key, "linger.ms");
	assert_string_equal(c->rdkafka[0].value, "7");
	assert_string_equal(c->rdkafka[0].origin, "env CHATPROV_LIBRDKAFKA_LINGER_MS");
	assert_string_equal(c->rdkafka[1].key, "security.protocol");
	assert_string_equal(c->rdkafka[1].value, "ssl");
	cfg_free(c);
	unsetenv("CHATPROV_KAFKA_BROKERS");
	unsetenv("CHATPROV_GRAPH_BASE_URL");
	unsetenv("CHATPROV_LIBRDKAFKA_SECURITY_PROTOCOL");
	unsetenv("CHATPROV_LIBRDKAFKA_LINGER_MS");
	unsetenv("CHATPROV_AUTH_CLIENT_ID");
	unsetenv("CHATPROV_LIMITS_CHAT_CREATES_PER_10S_PER_TENANT");
	unsetenv("CHATPROV_LOG_LEVEL");
	unsetenv("CHATPROV_RETRY_NOT_FOUND_S");
	unsetenv("CHATPROV_BUILD_DIR");

	/* The environment can supply a required key the file lacks. */
	setenv("CHATPROV_KAFKA_OUTPUT_TOPIC", "from-env", 1);
	c = load_ok("[kafka]\nbrokers=b\ngroup_id=g\ninput_topic=i\n[auth]\ntenant_id=t\n"
	            "client_id=c\nclient_secret_file=/s\n");
	assert_string_equal(c->kafka.output_topic, "from-env");
	cfg_free(c);
	unsetenv("CHATPROV_KAFKA_OUTPUT_TOPIC");
}

static void env_err(const char *var, const char *value, const char *text, const char *want)
{
	char w[CP_ERRSTR_SIZE], got[CP_ERRSTR_SIZE];
	setenv(var, value, 1);
	bool failed = try_err(text, want, w, got, sizeof(w));
	unsetenv(var); /* before asserting: a failure must not leak into later tests */
	assert_string_equal(got, w);
	assert_true(failed);
}

static void test_env_errors(void **state)
{
	(void)state;
	env_err("CHATPROV_RETRY_MAX_ATTEMPTS", "0", MINIMAL,
	        "env CHATPROV_RETRY_MAX_ATTEMPTS: [retry] max_attempts: '0' is out of range "
	        "(1..100)");
	env_err(
	    "CHATPROV_GRAPH_BASE_URL", "http://example.com", MINIMAL,
	    "env CHATPROV_GRAPH_BASE_URL: [graph] base_url: 'http://example.com': plain http is "
	    "only allowed to loopback hosts (127.0.0.0/8, localhost, [::1]); use https");
	env_err("CHATPROV_RECOVERY_GROUP_CHAT_LOOKUP", "perhaps", MINIMAL,
	        "env CHATPROV_RECOVERY_GROUP_CHAT_LOOKUP: [recovery] group_chat_lookup: 'perhaps' "
	        "is not a boolean (yes/no, true/false, on/off, 1/0)");
	env_err("CHATPROV_KAFKA_BROKRS", "x", MINIMAL,
	        "env CHATPROV_KAFKA_BROKRS: matches no configuration key "
	        "(CHATPROV_TENANT_<NAME>_<KEY> needs an existing [tenant.NAME] section)");
	env_err("CHATPROV_TENANT_NOPE_CLIENT_ID", "x", MINIMAL,
	        "env CHATPROV_TENANT_NOPE_CLIENT_ID: matches no configuration key "
	        "(CHATPROV_TENANT_<NAME>_<KEY> needs an existing [tenant.NAME] section)");
	env_err("CHATPROV_LIBRDKAFKA_NO_SUCH", "1", MINIMAL,
	        "env CHATPROV_LIBRDKAFKA_NO_SUCH: [librdkafka] no.such: No such configuration "
	        "property: \"no.such\" (a property whose name has '_' can only be overridden when "
	        "it is in the file)");
	env_err("CHATPROV_LIBRDKAFKA_ACKS", "some", MINIMAL,
	        "env CHATPROV_LIBRDKAFKA_ACKS: [librdkafka] acks: Invalid value for "
	        "configuration property \"request.required.acks\"");
	env_err("CHATPROV_LOG_LEVEL", "", MINIMAL,
	        "env CHATPROV_LOG_LEVEL: [log] level: '' is not one of "
	        "error|warning|notice|info|debug");
	env_err("CHATPROV_TENANT_FAB_X_CLIENT_ID", "", MINIMAL "[tenant.fab-x]\nclient_id = c2\n",
	        "%s: missing required key 'client_id' in [tenant.fab-x]");
	/* An env value that is itself fine still meets the cross-key rules. */
	env_err("CHATPROV_AUTH_FEDERATED_TOKEN_FILE", "/tok", MINIMAL,
	        "env CHATPROV_AUTH_FEDERATED_TOKEN_FILE: [auth] has more than one credential: "
	        "client_secret_file and federated_token_file (choose one)");
}

static void unset_azure(void)
{
	unsetenv("AZURE_TENANT_ID");
	unsetenv("AZURE_CLIENT_ID");
	unsetenv("AZURE_FEDERATED_TOKEN_FILE");
	unsetenv("AZURE_AUTHORITY_HOST");
}

static void set_azure(void)
{
	setenv("AZURE_TENANT_ID", "11111111-2222-3333-4444-555555555555", 1);
	setenv("AZURE_CLIENT_ID", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", 1);
	setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token",
	       1);
	setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/", 1);
}

#define KAFKA_ONLY "[kafka]\nbrokers=b\ngroup_id=g\ninput_topic=i\noutput_topic=o\n"

/* What the Azure workload identity webhook injects is enough for [auth]. */
static void test_azure_workload_identity(void **state)
{
	(void)state;
	set_azure();
	struct cfg *c = load_ok(KAFKA_ONLY "[graph]\ncloud = usgov\n");
	const struct cfg_tenant *t = &c->tenants[0];
	assert_int_equal(t->credential, CFG_CRED_FEDERATED);
	assert_string_equal(t->tenant_id, "11111111-2222-3333-4444-555555555555");
	assert_string_equal(t->client_id, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
	assert_string_equal(t->federated_token_file,
	                    "/var/run/secrets/azure/tokens/azure-identity-token");
	assert_string_equal(t->authority_url, "https://login.microsoftonline.us");
	cfg_free(c);

	/* The file first: its keys and its credential win; AZURE_* only fill what is empty. */
	c = load_ok(KAFKA_ONLY "[auth]\ntenant_id = file-tenant\nclient_secret_file = /s\n"
	                       "[tenant.fab]\ntenant_id = fab\ncertificate_file = /c\n"
	                       "private_key_file = /k\n");
	t = &c->tenants[0];
	assert_int_equal(t->credential, CFG_CRED_SECRET);
	assert_string_equal(t->tenant_id, "file-tenant");
	assert_string_equal(t->client_id, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
	assert_string_equal(t->federated_token_file, "");
	assert_string_equal(t->client_secret_file, "/s");
	/* Profiles inherit AZURE_* values the way they inherit any [auth] value. */
	assert_string_equal(c->tenants[1].client_id, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
	assert_string_equal(c->tenants[1].authority_url, "https://login.microsoftonline.us");
	assert_int_equal(c->tenants[1].credential, CFG_CRED_CERTIFICATE);
	cfg_free(c);

	/* CHATPROV_* comes before AZURE_*; managed identity is a credential too. */
	setenv("CHATPROV_AUTH_TENANT_ID", "env-tenant", 1);
	setenv("CHATPROV_AUTH_AUTHORITY_URL", "https://login.chinacloudapi.cn", 1);
	c = load_ok(KAFKA_ONLY "[auth]\nmanaged_identity = yes\n");
	unsetenv("CHATPROV_AUTH_TENANT_ID");
	unsetenv("CHATPROV_AUTH_AUTHORITY_URL");
	t = &c->tenants[0];
	assert_string_equal(t->tenant_id, "env-tenant");
	assert_string_equal(t->authority_url, "https://login.chinacloudapi.cn");
	assert_int_equal(t->credential, CFG_CRED_MANAGED);
	assert_string_equal(t->federated_token_file, "");
	cfg_free(c);

	/* Empty variables count as unset. */
	setenv("AZURE_TENANT_ID", "", 1);
	char want[CP_ERRSTR_SIZE], got[CP_ERRSTR_SIZE];
	bool failed = try_err(KAFKA_ONLY, "%s: missing required key 'tenant_id' in [auth]", want,
	                      got, sizeof(want));
	unset_azure();
	assert_string_equal(got, want);
	assert_true(failed);

	/* Values are validated like file values; errors name the variable. */
	setenv("AZURE_AUTHORITY_HOST", "http://login.example.com/", 1);
	failed = try_err(MINIMAL,
	                 "env AZURE_AUTHORITY_HOST: [auth] authority_url: "
	                 "'http://login.example.com/': plain http is only allowed to loopback "
	                 "hosts (127.0.0.0/8, localhost, [::1]); use https",
	                 want, got, sizeof(want));
	unset_azure();
	assert_string_equal(got, want);
	assert_true(failed);
}

static void test_tenants(void **state)
{
	(void)state;
	struct cfg *c = load_ok(MINIMAL "authority_url = https://login.example.test\n"
	                                "assertion_alg = RS256\n"
	                                "[limits]\nchat_creates_per_10s_per_tenant = 15\n"
	                                "[tenant.fabrikam]\n"
	                                "tenant_id = fabrikam.onmicrosoft.com\n"
	                                "certificate_file = /f.crt\nprivate_key_file = /f.key\n"
	                                "chat_creates_per_10s_per_tenant = 5\n"
	                                "[tenant.Tail_spin.toys-1]\n"
	                                "tenant_id = tailspin\n");
	assert_int_equal(c->n_tenants, 3);
	const struct cfg_tenant *f = &c->tenants[1], *t = &c->tenants[2];
	assert_string_equal(f->name, "fabrikam");
	assert_string_equal(f->tenant_id, "fabrikam.onmicrosoft.com");
	assert_string_equal(f->client_id, "00000000-0000-0000-0000-000000000000");
	/* A profile with its own credential inherits none of [auth]'s credential keys. */
	assert_int_equal(f->credential, CFG_CRED_CERTIFICATE);
	assert_string_equal(f->client_secret_file, "");
	assert_int_equal(f->assertion_alg, CFG_ALG_RS256);
	assert_string_equal(f->authority_url, "https://login.example.test");
	assert_true(f->limits.chat_creates_per_10s_per_tenant == 5);
	/* One without inherits the [auth] credential and the [limits] rate. */
	assert_string_equal(t->name, "Tail_spin.toys-1");
	assert_string_equal(t->tenant_id, "tailspin");
	assert_int_equal(t->credential, CFG_CRED_SECRET);
	assert_string_equal(t->client_secret_file, "/run/secret");
	assert_true(t->limits.chat_creates_per_10s_per_tenant == 15);
	assert_int_equal(cfg_tenant_index(c, NULL), 0);
	assert_int_equal(cfg_tenant_index(c, ""), 0);
	assert_int_equal(cfg_tenant_index(c, "default"), 0);
	assert_int_equal(cfg_tenant_index(c, "fabrikam"), 1);
	assert_int_equal(cfg_tenant_index(c, "Tail_spin.toys-1"), 2);
	assert_int_equal(cfg_tenant_index(c, "FABRIKAM"), -1);
	assert_int_equal(cfg_tenant_index(c, "contoso"), -1);
	cfg_free(c);

	/* "managed_identity = no" names no credential: the [auth] one is still inherited. */
	c = load_ok(MINIMAL
	            "[tenant.x]\ntenant_id = x\nmanaged_identity = no\nclient_secret_file =\n");
	assert_int_equal(c->tenants[1].credential, CFG_CRED_SECRET);
	assert_string_equal(c->tenants[1].client_secret_file, "/run/secret");
	cfg_free(c);
	c = load_ok(MINIMAL "[tenant.x]\nmanaged_identity = yes\n");
	assert_int_equal(c->tenants[1].credential, CFG_CRED_MANAGED);
	assert_string_equal(c->tenants[1].client_secret_file, "");
	assert_string_equal(c->tenants[1].tenant_id, "contoso.onmicrosoft.com");
	cfg_free(c);

	setenv("CHATPROV_TENANT_TAIL_SPIN_TOYS_1_CLIENT_ID", "env-cid", 1);
	c = load_ok(MINIMAL "[tenant.Tail_spin.toys-1]\ntenant_id = x\n");
	assert_string_equal(c->tenants[1].client_id, "env-cid");
	assert_string_equal(c->tenants[0].client_id, "00000000-0000-0000-0000-000000000000");
	cfg_free(c);
	unsetenv("CHATPROV_TENANT_TAIL_SPIN_TOYS_1_CLIENT_ID");
}

static void test_tenant_errors(void **state)
{
	(void)state;
	load_err(MINIMAL "[tenant.default]\ntenant_id = x\n",
	         "%s:11: bad tenant profile name 'default' in [tenant.default] (1-63 of "
	         "[A-Za-z0-9_.-]; 'default' is reserved)");
	load_err(MINIMAL "[tenant.a b]\ntenant_id = x\n",
	         "%s:11: bad tenant profile name 'a b' in [tenant.a b] (1-63 of [A-Za-z0-9_.-]; "
	         "'default' is reserved)");
	load_err(MINIMAL "[tenant.]\ntenant_id = x\n",
	         "%s:11: bad tenant profile name '' in [tenant.] (1-63 of [A-Za-z0-9_.-]; "
	         "'default' is reserved)");
	load_err(MINIMAL "[tenant.a.b]\ntenant_id = x\n[tenant.a-b]\ntenant_id = y\n",
	         "%s:13: tenant profiles 'a.b' and 'a-b' have the same environment variable name "
	         "CHATPROV_TENANT_A_B_*");
	load_err(MINIMAL "[tenant.x]\nrefresh_ahead_s = 1\n",
	         "%s:11: unknown key 'refresh_ahead_s' in [tenant.x] (it is global: set it in "
	         "[auth])");
	load_err(MINIMAL "[tenant.x]\nwindow_s = 1\n",
	         "%s:11: unknown key 'window_s' in [tenant.x] (it is global: set it in [limits])");
	load_err(MINIMAL "[tenant.x]\nbogus = 1\n", "%s:11: unknown key 'bogus' in [tenant.x]");
	load_err(MINIMAL "[tenant.x]\ntenant_id = a\ntenant_id = b\n",
	         "%s:12: duplicate key 'tenant_id' in [tenant.x] (first set at line 11)");
	load_err(MINIMAL "[tenant.x]\ncertificate_file = /c\n",
	         "%s:11: [tenant.x] certificate_file needs both certificate_file and "
	         "private_key_file");
	load_err(MINIMAL "[tenant.x]\nmanaged_identity = yes\nfederated_token_file = /t\n",
	         "%s:12: [tenant.x] has more than one credential: federated_token_file and "
	         "managed_identity (choose one)");
	load_err(MINIMAL "[tenant.x]\nchat_creates_per_10s_per_tenant = 10001\n",
	         "%s:11: [tenant.x] chat_creates_per_10s_per_tenant: '10001' is out of range "
	         "(0.1..10000)");
	char text[8192];
	size_t len = (size_t)snprintf(text, sizeof(text), "%s", MINIMAL);
	for (int i = 0; i < CFG_MAX_TENANTS; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len,
		                        "[tenant.t%d]\nclient_id=c\n", i);
	load_err(text, "%s:137: too many tenant profiles (at most 63)");
}

static void test_credentials_directory(void **state)
{
	(void)state;
	setenv("CREDENTIALS_DIRECTORY", "/run/credentials/chatprovd.service", 1);
	struct cfg *c = load_ok(NOCRED "[tenant.x]\ntenant_id = x\n");
	assert_int_equal(c->tenants[0].credential, CFG_CRED_SECRET);
	assert_string_equal(c->tenants[0].client_secret_file,
	                    "/run/credentials/chatprovd.service/graph-client-secret");
	assert_string_equal(c->tenants[1].client_secret_file,
	                    "/run/credentials/chatprovd.service/graph-client-secret");
	cfg_free(c);
	/* An explicit credential wins over the systemd credential. */
	c = load_ok(NOCRED "federated_token_file = /tok\n");
	assert_int_equal(c->tenants[0].credential, CFG_CRED_FEDERATED);
	assert_string_equal(c->tenants[0].client_secret_file, "");
	cfg_free(c);
	setenv("CREDENTIALS_DIRECTORY", "", 1);
	load_err(NOCRED, "%s: [auth]: no credential configured (set client_secret_file, "
	                 "certificate_file + private_key_file, federated_token_file or "
	                 "managed_identity = yes; or run with a systemd credential "
	                 "graph-client-secret)");
	unsetenv("CREDENTIALS_DIRECTORY");
}

static void test_relative_paths(void **state)
{
	(void)state;
	struct cfg *c =
	    load_ok(NOCRED "client_secret_file = secret.txt\n[graph]\nca_file = ca/x.pem\n");
	char want[512];
	snprintf(want, sizeof(want), "%s/secret.txt", tmpdir);
	assert_string_equal(c->tenants[0].client_secret_file, want);
	snprintf(want, sizeof(want), "%s/ca/x.pem", tmpdir);
	assert_string_equal(c->graph.ca_file, want);
	cfg_free(c);
}

#define SECRET "s3cr3t-Value~With.Chars"

static void read_secret_err(const char *content, size_t len, size_t cap, const char *want_tail)
{
	char buf[CFG_SECRET_MAX + 16], err[CP_ERRSTR_SIZE];
	struct cfg_tenant t = {.credential = CFG_CRED_SECRET};
	const char *path = write_file("secret", content, len);
	snprintf(t.client_secret_file, sizeof(t.client_secret_file), "%s", path);
	assert_false(cfg_read_secret(&t, buf, cap, err, sizeof(err)));
	char want[CP_ERRSTR_SIZE];
	snprintf(want, sizeof(want), "%s: %s", path, want_tail);
	assert_string_equal(err, want);
	assert_null(strstr(err, SECRET));
	unlink(path);
}

static void test_read_secret(void **state)
{
	(void)state;
	char buf[CFG_SECRET_MAX + 16], err[CP_ERRSTR_SIZE];
	struct cfg_tenant t = {.credential = CFG_CRED_SECRET};
	const char *path = write_file("secret", SECRET "\r\n\n", strlen(SECRET) + 3);
	snprintf(t.client_secret_file, sizeof(t.client_secret_file), "%s", path);
	assert_true(cfg_read_secret(&t, buf, sizeof(buf), err, sizeof(err)));
	assert_string_equal(buf, SECRET);
	unlink(path);

	read_secret_err("", 0, sizeof(buf), "secret file is empty");
	read_secret_err("\n\n", 2, sizeof(buf), "secret file is empty");
	read_secret_err(SECRET, strlen(SECRET), 8, "secret does not fit the buffer (8 bytes)");
	read_secret_err(SECRET "\0x", strlen(SECRET) + 2, sizeof(buf),
	                "secret file contains a NUL byte");
	static char big[CFG_SECRET_MAX + 1];
	memset(big, 'x', sizeof(big));
	read_secret_err(big, sizeof(big), sizeof(buf), "secret file is larger than 8192 bytes");
	/* Exactly the maximum is fine. */
	path = write_file("secret", big, CFG_SECRET_MAX);
	assert_true(cfg_read_secret_file(path, buf, sizeof(buf), err, sizeof(err)));
	assert_int_equal(strlen(buf), CFG_SECRET_MAX);
	unlink(path);

	snprintf(t.client_secret_file, sizeof(t.client_secret_file), "%s/missing", tmpdir);
	assert_false(cfg_read_secret(&t, buf, sizeof(buf), err, sizeof(err)));
	char want[CP_ERRSTR_SIZE];
	snprintf(want, sizeof(want), "%s/missing: cannot read secret: No such file or directory",
	         tmpdir);
	assert_string_equal(err, want);
	assert_false(cfg_read_secret_file(tmpdir, buf, sizeof(buf), err, sizeof(err)));
	assert_non_null(strstr(err, "secret is not a regular file"));
	t.credential = CFG_CRED_MANAGED;
	snprintf(t.name, sizeof(t.name), "mi");
	assert_false(cfg_read_secret(&t, buf, sizeof(buf), err, sizeof(err)));
	assert_string_equal(err, "tenant profile 'mi' has no client secret");
}

static char *dump_to_string(const struct cfg *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	assert_non_null(f);
	cfg_dump(c, f);
	assert_int_equal(fclose(f), 0);
	return text;
}

static void test_dump_masks_secrets(void **state)
{
	(void)state;
	struct cfg *c = load_ok(MINIMAL "[librdkafka]\nsasl.password = " SECRET "\n"
	                                "ssl.key.password = " SECRET "\nlinger.ms = 3\n"
	                                "[tenant.x]\ntenant_id = x\n");
	char *text = dump_to_string(c);
	assert_null(strstr(text, SECRET));
	assert_non_null(strstr(text, "sasl.password = ********\n"));
	assert_non_null(strstr(text, "ssl.key.password = ********\n"));
	assert_non_null(strstr(text, "linger.ms = 3\n"));
	assert_non_null(strstr(text, "; secret: <from file /run/secret>\n"));
	assert_non_null(strstr(text, "[tenant.x]\ntenant_id = x\n"));
	/* Defaults are printed too. */
	assert_non_null(strstr(text, "max_queued = 10000\n"));
	assert_non_null(strstr(text, "state_topic = chat.requests.state\n"));
	assert_non_null(strstr(text, "base_delay_s = 0.5\n"));
	assert_non_null(strstr(text, "group_chat_lookup = yes\n"));
	assert_non_null(strstr(text, "cloud = global\n"));
	free(text);
	cfg_free(c);

	/* Without masked values the dump loads back to the same configuration. */
	c = load_ok(all_keys);
	text = dump_to_string(c);
	struct cfg *again = load_ok(text);
	char *text2 = dump_to_string(again);
	assert_string_equal(strchr(text, '\n'), strchr(text2, '\n'));
	assert_true(again->limits.window_s == c->limits.window_s);
	free(text);
	free(text2);
	cfg_free(again);
	cfg_free(c);
}

static void test_restart_needed(void **state)
{
	(void)state;
	char buf[512];
	struct cfg *a = load_ok(MINIMAL);
	struct cfg *b = load_ok(MINIMAL "[log]\nlevel = debug\n[retry]\nmax_attempts = 3\n"
	                                "[limits]\nwindow_s = 1\n[operations]\ntimeout_s = 99\n"
	                                "[tenant.x]\ntenant_id = x\n");
	cfg_restart_needed(a, b, buf, sizeof(buf));
	assert_string_equal(buf, "");
	cfg_free(b);
	b = load_ok(MINIMAL "[kafka]\nmax_queued = 5\n[graph]\ncloud = china\nworkers = 2\n"
	                    "max_in_flight = 9\n[metrics]\nlisten = 127.0.0.1:1\n"
	                    "[librdkafka]\nlinger.ms = 1\n[log]\nlevel = error\n");
	cfg_restart_needed(a, b, buf, sizeof(buf));
	assert_string_equal(buf, "kafka.max_queued,graph.cloud,graph.base_url,graph.max_in_flight,"
	                         "graph.workers,metrics.listen,librdkafka");
	cfg_restart_needed(b, a, buf, sizeof(buf));
	assert_string_equal(buf, "kafka.max_queued,graph.cloud,graph.base_url,graph.max_in_flight,"
	                         "graph.workers,metrics.listen,librdkafka");
	cfg_restart_needed(a, b, buf, 12);
	assert_true(strlen(buf) < 12);
	cfg_free(b);
	cfg_free(a);
}

static void test_check_exit_codes_and_messages(void **state)
{
	(void)state;
	char *out_text = NULL, *err_text = NULL;
	size_t olen = 0, elen = 0;
	FILE *out = open_memstream(&out_text, &olen), *err = open_memstream(&err_text, &elen);
	const char *path = write_conf(MINIMAL);
	assert_int_equal(cfg_check(path, out, err), 0);
	unlink(path);
	path = write_conf(MINIMAL "[x]\ny=1\n");
	assert_int_equal(cfg_check(path, out, err), 1);
	fclose(out);
	fclose(err);
	assert_non_null(strstr(out_text, "[kafka]\nbrokers = 127.0.0.1:9092\n"));
	assert_non_null(strstr(err_text, ":11: unknown section [x]\n"));
	unlink(path);
	free(out_text);
	free(err_text);
}

/* The shipped example configuration loads (it has every key). */
static void test_example_config(void **state)
{
	(void)state;
	char err[CP_ERRSTR_SIZE];
	struct cfg *c = NULL;
	/* Its [auth] relies on the systemd credential, as the shipped unit does. */
	setenv("CREDENTIALS_DIRECTORY", "/run/credentials/chatprovd.service", 1);
	bool ok = cfg_load("../../etc/chatprovd.conf", &c, err, sizeof(err));
	unsetenv("CREDENTIALS_DIRECTORY");
	if (!ok)
		fail_msg("%s", err);
	assert_int_equal(c->n_tenants, 2);
	assert_int_equal(c->n_rdkafka, 1);
	assert_int_equal(c->tenants[0].credential, CFG_CRED_SECRET);
	assert_int_equal(c->tenants[1].credential, CFG_CRED_CERTIFICATE);
	assert_true(c->tenants[1].limits.chat_creates_per_10s_per_tenant == 10);
	cfg_free(c);
}

static char *read_text(const char *path)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	char *text = calloc(1, 256 * 1024);
	assert_non_null(text);
	text[0] = '\n'; /* so that "\nkey =" also matches the first line */
	size_t n = fread(text + 1, 1, 256 * 1024 - 2, f);
	assert_true(n > 0);
	fclose(f);
	return text;
}

/* Every key cfg_dump knows is in the example configuration and in the reference. */
static void test_every_key_documented(void **state)
{
	(void)state;
	struct cfg *c = load_ok(MINIMAL);
	char *dump = dump_to_string(c);
	char *example = read_text("../../etc/chatprovd.conf");
	char *doc = read_text("../../docs/configuration.md");
	char needle[128];
	int keys = 0;
	for (char *line = strtok(dump, "\n"); line; line = strtok(NULL, "\n")) {
		char *eq = strstr(line, " = ");
		if (line[0] == ';' || line[0] == '[' || !eq)
			continue;
		*eq = '\0';
		keys++;
		snprintf(needle, sizeof(needle), "\n%s =", line);
		if (!strstr(example, needle))
			fail_msg("key '%s' missing from etc/chatprovd.conf", line);
		snprintf(needle, sizeof(needle), "| `%s` |", line);
		if (!strstr(doc, needle))
			fail_msg("key '%s' missing from docs/configuration.md", line);
	}
	assert_int_equal(keys, 48);
	free(dump);
	free(example);
	free(doc);
	cfg_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_minimal_defaults),
	    cmocka_unit_test(test_all_keys),
	    cmocka_unit_test(test_other_credentials),
	    cmocka_unit_test(test_cloud_presets),
	    cmocka_unit_test(test_reroute_keeps_scope),
	    cmocka_unit_test(test_syntax_errors),
	    cmocka_unit_test(test_value_errors),
	    cmocka_unit_test(test_url_errors),
	    cmocka_unit_test(test_required_and_cross),
	    cmocka_unit_test(test_missing_file),
	    cmocka_unit_test(test_librdkafka_entries_checked_by_librdkafka_with_line),
	    cmocka_unit_test(test_env_overrides),
	    cmocka_unit_test(test_env_errors),
	    cmocka_unit_test(test_azure_workload_identity),
	    cmocka_unit_test(test_tenants),
	    cmocka_unit_test(test_tenant_errors),
	    cmocka_unit_test(test_credentials_directory),
	    cmocka_unit_test(test_relative_paths),
	    cmocka_unit_test(test_read_secret),
	    cmocka_unit_test(test_dump_masks_secrets),
	    cmocka_unit_test(test_restart_needed),
	    cmocka_unit_test(test_check_exit_codes_and_messages),
	    cmocka_unit_test(test_example_config),
	    cmocka_unit_test(test_every_key_documented),
	};
	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
