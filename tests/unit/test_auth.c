/*
 * test_auth.c - token caches against a tiny token endpoint (libmicrohttpd on 127.0.0.1).
 *
 * The server records what it received per tenant path and answers as the test tells it:
 * tokens with a chosen lifetime, 503s, invalid_client, or IMDS-style string expires_in.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <openssl/pem.h>

#include "auth.h"
#include "cptime.h"
#include "jwt.h"
#include "log.h"

enum srv_mode { SRV_TOKEN, SRV_INVALID_CLIENT };

struct srv {
	struct MHD_Daemon *d;
	unsigned port;
	pthread_mutex_t mu;
	enum srv_mode mode;
	int expires_in;
	int fail_503; /* answer this many requests with 503 first */
	int delay_ms; /* before answering */
	int count[2]; /* requests per tenant (tenant0, tenant1) */
	int imds_count;
	int seq;
	char body[16384]; /* last POST body */
	char url[512];
	char method[16];
	char metadata[32];
	char resource[256], api_version[32], mi_client[64];
};

static struct srv srv;
static char tmpdir[] = "/tmp/test_auth.XXXXXX";

struct upload {
	char buf[16384];
	size_t len;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body)
{
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(r, "Content-Type", "application/json");
	enum MHD_Result rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

static void record(struct MHD_Connection *c, const char *url, const char *method,
                   const struct upload *up)
{
	const char *v;
	snprintf(srv.url, sizeof srv.url, "%s", url);
	snprintf(srv.method, sizeof srv.method, "%s", method);
	snprintf(srv.body, sizeof srv.body, "%.*s", (int)up->len, up->buf);
	v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Metadata");
	snprintf(srv.metadata, sizeof srv.metadata, "%s", v ? v : "");
	v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "resource");
	snprintf(srv.resource, sizeof srv.resource, "%s", v ? v : "");
	v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "api-version");
	snprintf(srv.api_version, sizeof srv.api_version, "%s", v ? v : "");
	v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "client_id");
	snprintf(srv.mi_client, sizeof srv.mi_client, "%s", v ? v : "");
}

static enum MHD_Result answer(struct MHD_Connection *c, const char *url)
{
	char out[512];
	unsigned status = 200;
	bool imds = strncmp(url, "/metadata/", 10) == 0;
	int tenant = strncmp(url, "/tenant1/", 9) == 0;
	pthread_mutex_lock(&srv.mu);
	int delay = srv.delay_ms;
	if (imds)
		srv.imds_count++;
	else
		srv.count[tenant]++;
	if (srv.fail_503 > 0) {
		srv.fail_503--;
		status = 503;
		snprintf(out, sizeof out, "{\"error\":\"temporarily_unavailable\"}");
	} else if (srv.mode == SRV_INVALID_CLIENT) {
		status = 401;
		snprintf(out, sizeof out,
		         "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: "
		         "Invalid client secret provided.\\r\\nTrace ID: %d\",\"error_codes\":"
		         "[7000215]}",
		         srv.seq++);
	} else if (imds) {
		snprintf(out, sizeof out,
		         "{\"access_token\":\"mi-%d\",\"expires_in\":\"%d\",\"token_type\":"
		         "\"Bearer\",\"resource\":\"https://graph.microsoft.com/\"}",
		         srv.seq++, srv.expires_in);
	} else {
		snprintf(out, sizeof out,
		         "{\"token_type\":\"Bearer\",\"expires_in\":%d,\"ext_expires_in\":%d,"
		         "\"access_token\":\"tok-%d-%d\"}",
		         srv.expires_in, srv.expires_in, tenant, srv.seq++);
	}
	pthread_mutex_unlock(&srv.mu);
	if (delay)
		usleep((useconds_t)delay * 1000);
	return reply(c, status, out);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls)
{
	(void)cls;
	(void)version;
	struct upload *up = *con_cls;
	if (!up) {
		up = calloc(1, sizeof *up);
		*con_cls = up;
		return up ? MHD_YES : MHD_NO;
	}
	if (*data_size) {
		size_t n = *data_size < sizeof up->buf - up->len ? *data_size : 0;
		memcpy(up->buf + up->len, data, n);
		up->len += n;
		*data_size = 0;
		return MHD_YES;
	}
	pthread_mutex_lock(&srv.mu);
	record(c, url, method, up);
	pthread_mutex_unlock(&srv.mu);
	return answer(c, url);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

/* ---- fixtures ------------------------------------------------------------------------------- */

static void write_file(const char *name, const char *content)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
}

static struct cfg *make_cfg(size_t n)
{
	struct cfg *c = calloc(1, sizeof *c);
	assert_non_null(c);
	snprintf(c->graph.scope, sizeof c->graph.scope, "https://graph.microsoft.com/.default");
	c->graph.connect_timeout_s = 2;
	c->graph.request_timeout_s = 5;
	c->token_refresh_ahead_s = 300;
	c->n_tenants = n;
	for (size_t i = 0; i < n; i++) {
		struct cfg_tenant *t = &c->tenants[i];
		snprintf(t->name, sizeof t->name, i ? "t%zu" : "default", i);
		snprintf(t->tenant_id, sizeof t->tenant_id, "tenant%zu", i);
		snprintf(t->client_id, sizeof t->client_id, "client-%zu", i);
		t->credential = CFG_CRED_SECRET;
		snprintf(t->client_secret_file, sizeof t->client_secret_file, "%s/secret", tmpdir);
		snprintf(t->authority_url, sizeof t->authority_url, "http://127.0.0.1:%u/",
		         srv.port);
	}
	return c;
}

static int setup(void **state)
{
	(void)state;
	if (!mkdtemp(tmpdir) || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	pthread_mutex_init(&srv.mu, NULL);
	srv.d = MHD_start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL, handler,
	    NULL, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_SOCK_ADDR,
	    &(struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)},
	    MHD_OPTION_END);
	if (!srv.d)
		return -1;
	srv.port = MHD_get_daemon_info(srv.d, MHD_DAEMON_INFO_BIND_PORT)->port;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	MHD_stop_daemon(srv.d);
	curl_global_cleanup();
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Every test starts with a fresh server state and the secret "s3cr&t=+x". */
static int reset(void **state)
{
	(void)state;
	pthread_mutex_lock(&srv.mu);
	srv.mode = SRV_TOKEN;
	srv.expires_in = 3599;
	srv.fail_503 = srv.delay_ms = 0;
	srv.count[0] = srv.count[1] = srv.imds_count = 0;
	srv.body[0] = '\0';
	pthread_mutex_unlock(&srv.mu);
	write_file("secret", "s3cr&t=+x\n");
	return 0;
}

static int count_of(int tenant)
{
	pthread_mutex_lock(&srv.mu);
	int n = tenant < 0 ? srv.imds_count : srv.count[tenant];
	pthread_mutex_unlock(&srv.mu);
	return n;
}

static void last_body(char *buf, size_t cap)
{
	pthread_mutex_lock(&srv.mu);
	snprintf(buf, cap, "%s", srv.body);
	pthread_mutex_unlock(&srv.mu);
}

/* Polls until the profile answers OK or FAILED (or the deadline passes). */
static enum auth_status wait_status(struct auth *a, size_t profile, char *tok, int64_t ms)
{
	int64_t end = cptime_mono_ms() + ms;
	enum auth_status st;
	while ((st = auth_get_token(a, profile, tok, AUTH_TOKEN_BUF, NULL)) == AUTH_PENDING &&
	       cptime_mono_ms() < end)
		usleep(10 * 1000);
	return st;
}

static struct auth *start(const struct cfg *c)
{
	struct auth *a = NULL;
	char err[512];
	assert_true(auth_new(c, &a, err, sizeof err));
	assert_true(auth_start(a));
	return a;
}

/* ---- flows ------------------------------------------------------------------------------------
 */

static void test_secret_flow_sends_escaped_form_and_reports_expiry(void **state)
{
	(void)state;
	int64_t exp = 0, before = cptime_wall_ms(); /* before the eager fetch can complete */
	struct cfg *c = make_cfg(1);
	struct auth *a = start(c);
	char tok[AUTH_TOKEN_BUF], body[16384];
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	assert_int_equal(auth_get_token(a, 0, tok, sizeof tok, &exp), AUTH_OK);
	assert_memory_equal(tok, "tok-0-", 6);
	assert_true(exp >= before + 3599000 && exp <= cptime_wall_ms() + 3599000);
	assert_true(auth_profile_ready(a, 0));
	last_body(body, sizeof body);
	assert_non_null(strstr(body, "grant_type=client_credentials"));
	assert_non_null(strstr(body, "client_id=client-0"));
	assert_non_null(strstr(body, "scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"));
	assert_non_null(strstr(body, "client_secret=s3cr%26t%3D%2Bx"));
	pthread_mutex_lock(&srv.mu);
	assert_string_equal(srv.url, "/tenant0/oauth2/v2.0/token");
	assert_string_equal(srv.method, "POST");
	pthread_mutex_unlock(&srv.mu);
	struct auth_stats st;
	auth_get_stats(a, 0, &st);
	assert_int_equal(st.refreshes, 1);
	assert_int_equal(st.failures, 0);
	assert_int_equal(st.expires_epoch_ms, exp);
	assert_int_equal(auth_get_token(a, 5, tok, sizeof tok, NULL), AUTH_FAILED);
	auth_free(a);
	free(c);
}

/*
 * A 2 s lifetime (shorter than token_refresh_ahead_s) is refreshed between 50% and 80% of
 * it: the token never lapses in between.
 */
static void test_refresh_ahead(void **state)
{
	(void)state;
	srv.expires_in = 2;
	struct cfg *c = make_cfg(1);
	struct auth *a = start(c);
	char first[AUTH_TOKEN_BUF], tok[AUTH_TOKEN_BUF];
	assert_int_equal(wait_status(a, 0, first, 3000), AUTH_OK);
	int64_t t0 = cptime_mono_ms(), changed_at = 0;
	while (cptime_mono_ms() - t0 < 2600) {
		assert_int_equal(auth_get_token(a, 0, tok, sizeof tok, NULL), AUTH_OK);
		if (!changed_at && strcmp(tok, first) != 0)
			changed_at = cptime_mono_ms();
		usleep(20 * 1000);
	}
	assert_true(changed_at > 0);
	assert_true(changed_at - t0 >= 900 && changed_at - t0 <= 1700);
	assert_true(count_of(0) >= 2);
	auth_free(a);
	free(c);
}

struct waiter {
	struct auth *a;
	pthread_mutex_t *mu;
	pthread_cond_t *cv;
	char tok[AUTH_TOKEN_BUF];
	enum auth_status st;
};

static pthread_mutex_t notify_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notify_cv = PTHREAD_COND_INITIALIZER;
static int notified;

static void on_notify(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&notify_mu);
	notified++;
	pthread_cond_broadcast(&notify_cv);
	pthread_mutex_unlock(&notify_mu);
}

static int notified_now(void)
{
	pthread_mutex_lock(&notify_mu);
	int n = notified;
	pthread_mutex_unlock(&notify_mu);
	return n;
}

/*
 * The notify callback reaches into the caller (the pipeline's workers): once auth_stop
 * returns it must never run again, however often tokens were being refreshed.
 */
static void test_stop_ends_notifications(void **state)
{
	(void)state;
	srv.expires_in = 1; /* refreshed every 0.5 s, each refresh notifies */
	struct cfg *c = make_cfg(1);
	struct auth *a = start(c);
	auth_set_notify(a, on_notify, NULL);
	int start_count = notified_now();
	int64_t end = cptime_mono_ms() + 5000;
	while (notified_now() < start_count + 2 && cptime_mono_ms() < end)
		usleep(10 * 1000);
	assert_true(notified_now() >= start_count + 2);
	auth_stop(a);
	int stopped = notified_now();
	usleep(1500 * 1000);
	assert_int_equal(notified_now(), stopped);
	auth_stop(a); /* a repeat is harmless, and so is auth_free after it */
	auth_free(a);
	free(c);
}

/* Waits on the notify callback, not on a sleep loop, as a worker would. */
static void *waiter_main(void *arg)
{
	struct waiter *w = arg;
	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 5;
	pthread_mutex_lock(&notify_mu);
	while ((w->st = auth_get_token(w->a, 1, w->tok, sizeof w->tok, NULL)) == AUTH_PENDING)
		if (pthread_cond_timedwait(&notify_cv, &notify_mu, &deadline) != 0)
			break;
	pthread_mutex_unlock(&notify_mu);
	return NULL;
}

static void test_one_request_per_profile(void **state)
{
	(void)state;
	srv.delay_ms = 300;
	struct cfg *c = make_cfg(2);
	struct auth *a = start(c);
	auth_set_notify(a, on_notify, NULL);
	struct waiter w[8];
	pthread_t th[8];
	for (int i = 0; i < 8; i++) {
		w[i] = (struct waiter){.a = a};
		assert_int_equal(pthread_create(&th[i], NULL, waiter_main, &w[i]), 0);
	}
	for (int i = 0; i < 8; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(w[i].st, AUTH_OK);
		assert_string_equal(w[i].tok, w[0].tok);
	}
	assert_memory_equal(w[0].tok, "tok-1-", 6);
	assert_int_equal(count_of(1), 1);
	assert_int_equal(count_of(0), 1); /* profile 0 was fetched eagerly, once */
	assert_true(notified >= 1);
	auth_free(a);
	free(c);
}

static void test_invalidate_drops_only_the_current_token(void **state)
{
	(void)state;
	struct cfg *c = make_cfg(1);
	struct auth *a = start(c);
	char first[AUTH_TOKEN_BUF], tok[AUTH_TOKEN_BUF];
	assert_int_equal(wait_status(a, 0, first, 3000), AUTH_OK);
	auth_invalidate(a, 0, "some-older-token");
	assert_int_equal(auth_get_token(a, 0, tok, sizeof tok, NULL), AUTH_OK);
	assert_string_equal(tok, first);
	auth_invalidate(a, 0, first);
	assert_int_equal(auth_get_token(a, 0, tok, sizeof tok, NULL), AUTH_PENDING);
	assert_false(auth_profile_ready(a, 0));
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	assert_string_not_equal(tok, first);
	assert_int_equal(count_of(0), 2);
	auth_free(a);
	free(c);
}

static void test_transient_503(void **state)
{
	(void)state;
	srv.fail_503 = 2;
	struct cfg *c = make_cfg(1);
	struct auth *a = start(c);
	char tok[AUTH_TOKEN_BUF], err[1024];
	int64_t t0 = cptime_mono_ms();
	assert_int_equal(wait_status(a, 0, tok, 5000), AUTH_OK);
	/* Two backoffs of at least 0.5 s each, well under the 30 s cap. */
	assert_true(cptime_mono_ms() - t0 >= 900);
	assert_int_equal(count_of(0), 3);
	struct auth_stats st;
	auth_get_stats(a, 0, &st);
	assert_int_equal(st.failures, 2);
	assert_int_equal(st.refreshes, 1);
	auth_last_error(a, 0, err, sizeof err);
	assert_string_equal(err, "");
	auth_free(a);
	free(c);
}

static void test_connection_refused_is_pending(void **state)
{
	(void)state;
	struct cfg *c = make_cfg(1);
	snprintf(c->tenants[0].authority_url, sizeof c->tenants[0].authority_url,
	         "http://127.0.0.1:1");
	struct auth *a = start(c);
	char tok[AUTH_TOKEN_BUF], err[1024];
	assert_int_equal(wait_status(a, 0, tok, 700), AUTH_PENDING);
	auth_last_error(a, 0, err, sizeof err);
	assert_non_null(strstr(err, "unreachable"));
	auth_free(a);
	free(c);
}

/* Runs fn with stderr redirected to a file and returns what was logged. */
static void capture_stderr_start(int *saved, const char *path)
{
	fflush(stderr);
	*saved = dup(2);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	dup2(fd, 2);
	close(fd);
}

static void capture_stderr_end(int saved, const char *path, char *buf, size_t cap)
{
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, cap - 1, f);
	buf[n] = '\0';
	fclose(f);
}

static int occurrences(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

static void test_invalid_client(void **state)
{
	(void)state;
	char logpath[256], logged[8192], tok[AUTH_TOKEN_BUF], err[1024];
	int saved;
	snprintf(logpath, sizeof logpath, "%s/log", tmpdir);
	srv.mode = SRV_INVALID_CLIENT;
	struct cfg *c = make_cfg(1);
	capture_stderr_start(&saved, logpath);
	struct auth *a = start(c);
	enum auth_status st = wait_status(a, 0, tok, 3000);
	/* A reload retries a failed profile at once; the same failure is not logged again. */
	bool reloaded = auth_reload(a, c);
	int64_t end = cptime_mono_ms() + 3000;
	while (count_of(0) < 2 && cptime_mono_ms() < end)
		usleep(10 * 1000);
	usleep(300 * 1000); /* no busy retry loop */
	int requests = count_of(0);
	auth_last_error(a, 0, err, sizeof err);
	auth_free(a);
	capture_stderr_end(saved, logpath, logged, sizeof logged);
	assert_int_equal(st, AUTH_FAILED);
	assert_true(reloaded);
	assert_int_equal(requests, 2);
	assert_non_null(strstr(err, "AADSTS7000215"));
	assert_non_null(strstr(err, "check client_secret_file / the graph-client-secret"));
	assert_null(strstr(err, "Trace ID"));
	assert_int_equal(occurrences(logged, "AADSTS7000215"), 1);
	assert_null(strstr(logged, "s3cr"));
	free(c);
}

static void test_unreadable_secret(void **state)
{
	(void)state;
	struct cfg *c = make_cfg(1);
	snprintf(c->tenants[0].client_secret_file, sizeof c->tenants[0].client_secret_file,
	         "%s/missing", tmpdir);
	struct auth *a = start(c);
	char tok[AUTH_TOKEN_BUF], err[1024];
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_FAILED);
	auth_last_error(a, 0, err, sizeof err);
	assert_non_null(strstr(err, "missing"));
	assert_int_equal(count_of(0), 0);
	assert_false(auth_profile_ready(a, 0));
	auth_free(a);
	free(c);
}

static void test_federated_reread(void **state)
{
	(void)state;
	char tok[AUTH_TOKEN_BUF], body[16384];
	write_file("fed", "fed-one\n");
	struct cfg *c = make_cfg(1);
	c->tenants[0].credential = CFG_CRED_FEDERATED;
	c->tenants[0].client_secret_file[0] = '\0';
	snprintf(c->tenants[0].federated_token_file, sizeof c->tenants[0].federated_token_file,
	         "%s/fed", tmpdir);
	struct auth *a = start(c);
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	last_body(body, sizeof body);
	assert_non_null(strstr(body, "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3A"
	                             "client-assertion-type%3Ajwt-bearer"));
	assert_non_null(strstr(body, "client_assertion=fed-one"));
	assert_null(strstr(body, "client_secret"));
	write_file("fed", "fed-two");
	auth_invalidate(a, 0, tok);
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	last_body(body, sizeof body);
	assert_non_null(strstr(body, "client_assertion=fed-two"));
	auth_free(a);
	free(c);
}

static void test_managed_identity(void **state)
{
	(void)state;
	char tok[AUTH_TOKEN_BUF];
	int64_t exp = 0;
	struct cfg *c = make_cfg(1);
	c->tenants[0].credential = CFG_CRED_MANAGED;
	c->tenants[0].managed_identity = true;
	snprintf(c->tenants[0].client_id, sizeof c->tenants[0].client_id, "mi-client");
	snprintf(c->tenants[0].imds_url, sizeof c->tenants[0].imds_url,
	         "http://127.0.0.1:%u/metadata/identity/oauth2/token", srv.port);
	struct auth *a = start(c);
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	assert_int_equal(auth_get_token(a, 0, tok, sizeof tok, &exp), AUTH_OK);
	assert_memory_equal(tok, "mi-", 3);
	assert_true(exp > cptime_wall_ms() + 3590000);
	pthread_mutex_lock(&srv.mu);
	assert_string_equal(srv.method, "GET");
	assert_string_equal(srv.metadata, "true");
	assert_string_equal(srv.api_version, "2018-02-01");
	assert_string_equal(srv.resource, "https://graph.microsoft.com/");
	assert_string_equal(srv.mi_client, "mi-client");
	assert_string_equal(srv.body, "");
	pthread_mutex_unlock(&srv.mu);
	assert_int_equal(count_of(-1), 1);
	auth_free(a);
	free(c);
}

static void test_reload_switches_secret(void **state)
{
	(void)state;
	char tok[AUTH_TOKEN_BUF], first[AUTH_TOKEN_BUF], body[16384];
	write_file("secret-b", "bravo");
	struct cfg *c = make_cfg(1);
	struct cfg *c2 = make_cfg(1);
	snprintf(c2->tenants[0].client_secret_file, sizeof c2->tenants[0].client_secret_file,
	         "%s/secret-b", tmpdir);
	struct auth *a = start(c);
	assert_int_equal(wait_status(a, 0, first, 3000), AUTH_OK);
	struct cfg *bad = make_cfg(2);
	assert_false(auth_reload(a, bad));
	free(bad);
	assert_true(auth_reload(a, c2));
	free(c); /* the caller may free the old cfg at once */
	/* The cached token stays valid: no new request until a 401 or its refresh. */
	assert_int_equal(auth_get_token(a, 0, tok, sizeof tok, NULL), AUTH_OK);
	assert_string_equal(tok, first);
	assert_int_equal(count_of(0), 1);
	auth_invalidate(a, 0, first);
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	last_body(body, sizeof body);
	assert_non_null(strstr(body, "client_secret=bravo"));
	auth_free(a);
	free(c2);
}

/* Certificate credentials end to end: the assertion's aud is the endpoint actually used. */
static void write_cert(const char *name, EVP_PKEY *key, long not_after_s)
{
	char path[256];
	X509 *x = X509_new();
	assert_non_null(x);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
	X509_gmtime_adj(X509_getm_notBefore(x), -86400 * 2);
	X509_gmtime_adj(X509_getm_notAfter(x), not_after_s);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"t", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, x), 1);
	assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	X509_free(x);
}

static void expect_aud(const char *body, const char *want_aud)
{
	const char *p = strstr(body, "client_assertion=");
	assert_non_null(p);
	p += strlen("client_assertion=");
	const char *d1 = strchr(p, '.');
	assert_non_null(d1);
	const char *d2 = strchr(d1 + 1, '.');
	assert_non_null(d2);
	unsigned char claims[2048];
	size_t n = 0;
	assert_true(
	    jwt_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), claims, sizeof claims - 1, &n));
	claims[n] = '\0';
	struct json_object *o = json_tokener_parse((const char *)claims), *aud;
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "aud", &aud));
	assert_string_equal(json_object_get_string(aud), want_aud);
	json_object_put(o);
}

static void test_certificate(void **state)
{
	(void)state;
	char tok[AUTH_TOKEN_BUF], body[16384], err[1024], aud[256];
	EVP_PKEY *key = EVP_RSA_gen(2048);
	assert_non_null(key);
	write_cert("cert.pem", key, 86400);
	write_cert("old.pem", key, -3600);
	EVP_PKEY_free(key);
	struct cfg *c = make_cfg(2);
	for (int i = 0; i < 2; i++) {
		c->tenants[i].credential = CFG_CRED_CERTIFICATE;
		c->tenants[i].client_secret_file[0] = '\0';
		snprintf(c->tenants[i].certificate_file, sizeof c->tenants[i].certificate_file,
		         "%s/%s", tmpdir, i ? "old.pem" : "cert.pem");
	}
	struct auth *a = start(c);
	assert_int_equal(wait_status(a, 0, tok, 3000), AUTH_OK);
	last_body(body, sizeof body);
	assert_non_null(strstr(body, "client_assertion_type=urn%3Aietf"));
	snprintf(aud, sizeof aud, "http://127.0.0.1:%u/tenant0/oauth2/v2.0/token", srv.port);
	expect_aud(body, aud);
	assert_int_equal(wait_status(a, 1, tok, 3000), AUTH_FAILED);
	auth_last_error(a, 1, err, sizeof err);
	assert_non_null(strstr(err, "expired"));
	assert_int_equal(count_of(1), 0);
	auth_free(a);
	free(c);
}

int main(void)
{
	log_init("test_auth");
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_secret_flow_sends_escaped_form_and_reports_expiry, reset),
	    cmocka_unit_test_setup(test_refresh_ahead, reset),
	    cmocka_unit_test_setup(test_stop_ends_notifications, reset),
	    cmocka_unit_test_setup(test_one_request_per_profile, reset),
	    cmocka_unit_test_setup(test_invalidate_drops_only_the_current_token, reset),
	    cmocka_unit_test_setup(test_transient_503, reset),
	    cmocka_unit_test_setup(test_connection_refused_is_pending, reset),
	    cmocka_unit_test_setup(test_invalid_client, reset),
	    cmocka_unit_test_setup(test_unreadable_secret, reset),
	    cmocka_unit_test_setup(test_federated_reread, reset),
	    cmocka_unit_test_setup(test_managed_identity, reset),
	    cmocka_unit_test_setup(test_reload_switches_secret, reset),
	    cmocka_unit_test_setup(test_certificate, reset),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
