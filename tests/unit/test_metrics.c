/* test_metrics.c - the Prometheus registry, its text format and its HTTP endpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

#define DROPPED_HEADER                                                                             \
	"# HELP chatprov_metrics_series_dropped_total Label combinations refused because the "     \
	"series limit was reached.\n"                                                              \
	"# TYPE chatprov_metrics_series_dropped_total counter\n"

static struct metrics *new_registry(size_t max_series)
{
	struct metrics *m = NULL;
	char err[CP_ERRSTR_SIZE];
	assert_true(metrics_new(max_series, &m, err, sizeof(err)));
	return m;
}

static struct metrics_family *reg(struct metrics *m, const struct metrics_spec *spec)
{
	struct metrics_family *f = NULL;
	char err[CP_ERRSTR_SIZE] = "";
	if (!metrics_register(m, spec, &f, err, sizeof(err)))
		fail_msg("register %s: %s", spec->name, err);
	return f;
}

static char *render(struct metrics *m)
{
	char *out = NULL;
	size_t len = 0;
	assert_true(metrics_render(m, &out, &len));
	assert_int_equal(strlen(out), len);
	return out;
}

static const double latency_buckets[] = {0.1, 1};

static void assert_contains(const char *text, const char *needle)
{
	if (!strstr(text, needle))
		fail_msg("expected \"%s\" in:\n%s", needle, text);
}

static void test_text_output_exact(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	struct metrics_family *req =
	    reg(m, &(struct metrics_spec){.name = "chatprov_requests_total",
	                                  .help = "Requests by final status.",
	                                  .type = METRICS_COUNTER,
	                                  .labels = (const char *const[]){"status", NULL}});
	struct metrics_family *inflight =
	    reg(m, &(struct metrics_spec){.name = "chatprov_in_flight",
	                                  .help = "Requests in flight.",
	                                  .type = METRICS_GAUGE,
	                                  .labels = (const char *const[]){"tenant", NULL}});
	struct metrics_family *lat =
	    reg(m, &(struct metrics_spec){.name = "chatprov_graph_latency_seconds",
	                                  .help = "Graph latency.",
	                                  .type = METRICS_HISTOGRAM,
	                                  .buckets = latency_buckets,
	                                  .n_buckets = 2});

	struct metrics_series *ok = metrics_series(req, METRICS_LABELS("succeeded"));
	metrics_inc(ok);
	metrics_add(ok, 2);
	metrics_inc(metrics_series(req, METRICS_LABELS("failed")));
	/* A second lookup returns the same handle. */
	assert_ptr_equal(ok, metrics_series(req, METRICS_LABELS("succeeded")));
	assert_int_equal(metrics_counter_value(ok), 3);

	struct metrics_series *g = metrics_series(inflight, METRICS_LABELS("contoso"));
	metrics_gauge_set(g, 4);
	metrics_gauge_add(g, -1.5);
	assert_true(metrics_gauge_value(g) == 2.5);

	struct metrics_series *h = metrics_series(lat, NULL);
	metrics_observe(h, 0.25);
	metrics_observe(h, 1); /* le is inclusive: counted in le="1" */
	metrics_observe(h, 4);

	char *text = render(m);
	assert_string_equal(text, DROPPED_HEADER
	                    "chatprov_metrics_series_dropped_total 0\n"
	                    "# HELP chatprov_requests_total Requests by final status.\n"
	                    "# TYPE chatprov_requests_total counter\n"
	                    "chatprov_requests_total{status=\"succeeded\"} 3\n"
	                    "chatprov_requests_total{status=\"failed\"} 1\n"
	                    "# HELP chatprov_in_flight Requests in flight.\n"
	                    "# TYPE chatprov_in_flight gauge\n"
	                    "chatprov_in_flight{tenant=\"contoso\"} 2.5\n"
	                    "# HELP chatprov_graph_latency_seconds Graph latency.\n"
	                    "# TYPE chatprov_graph_latency_seconds histogram\n"
	                    "chatprov_graph_latency_seconds_bucket{le=\"0.1\"} 0\n"
	                    "chatprov_graph_latency_seconds_bucket{le=\"1\"} 2\n"
	                    "chatprov_graph_latency_seconds_bucket{le=\"+Inf\"} 3\n"
	                    "chatprov_graph_latency_seconds_sum 5.25\n"
	                    "chatprov_graph_latency_seconds_count 3\n");
	free(text);
	metrics_free(m);
}

static void test_escaping_and_labels(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	struct metrics_family *f =
	    reg(m, &(struct metrics_spec){.name = "x_events_total",
	                                  .help = "back\\slash and\nnewline \"quoted\"",
	                                  .type = METRICS_COUNTER,
	                                  .labels = (const char *const[]){"a", "b", NULL}});
	metrics_inc(metrics_series(f, METRICS_LABELS("q\"uo\\te\nnl", NULL)));
	struct metrics_family *h =
	    reg(m, &(struct metrics_spec){.name = "x_seconds",
	                                  .help = "h",
	                                  .type = METRICS_HISTOGRAM,
	                                  .labels = (const char *const[]){"t", NULL},
	                                  .buckets = (const double[]){0.5},
	                                  .n_buckets = 1});
	metrics_observe(metrics_series(h, METRICS_LABELS("c")), 0.1);
	char *text = render(m);
	assert_contains(text, "# HELP x_events_total back\\\\slash and\\nnewline \"quoted\"\n");
	assert_contains(text, "x_events_total{a=\"q\\\"uo\\\\te\\nnl\",b=\"\"} 1\n");
	assert_contains(text, "x_seconds_bucket{t=\"c\",le=\"0.5\"} 1\n");
	assert_contains(text, "x_seconds_sum{t=\"c\"} 0.1\n");
	free(text);
	metrics_free(m);
}

static void expect_register_error(struct metrics *m, const struct metrics_spec *spec,
                                  const char *fragment)
{
	struct metrics_family *f = NULL;
	char err[CP_ERRSTR_SIZE] = "";
	assert_false(metrics_register(m, spec, &f, err, sizeof(err)));
	if (!strstr(err, fragment))
		fail_msg("error \"%s\" does not mention \"%s\"", err, fragment);
}

static void test_register_validation(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	static const double bad_buckets[] = {1, 0.5};
	expect_register_error(
	    m, &(struct metrics_spec){.name = "x_events", .type = METRICS_COUNTER}, "_total");
	expect_register_error(m, &(struct metrics_spec){.name = "9x", .type = METRICS_GAUGE},
	                      "invalid metric name");
	expect_register_error(
	    m,
	    &(struct metrics_spec){.name = "x",
	                           .type = METRICS_GAUGE,
	                           .labels = (const char *const[]){"a", "a", NULL}},
	    "duplicate");
	expect_register_error(m,
	                      &(struct metrics_spec){.name = "x",
	                                             .type = METRICS_GAUGE,
	                                             .labels = (const char *const[]){"__a", NULL}},
	                      "invalid label");
	expect_register_error(m,
	                      &(struct metrics_spec){.name = "x_seconds",
	                                             .type = METRICS_HISTOGRAM,
	                                             .buckets = bad_buckets,
	                                             .n_buckets = 2},
	                      "increasing");
	expect_register_error(m,
	                      &(struct metrics_spec){.name = "x_seconds",
	                                             .type = METRICS_HISTOGRAM,
	                                             .labels = (const char *const[]){"le", NULL},
	                                             .buckets = latency_buckets,
	                                             .n_buckets = 2},
	                      "invalid label");
	expect_register_error(m,
	                      &(struct metrics_spec){.name = "x_count",
	                                             .type = METRICS_HISTOGRAM,
	                                             .buckets = latency_buckets,
	                                             .n_buckets = 2},
	                      "reserved suffix");
	reg(m, &(struct metrics_spec){.name = "x", .type = METRICS_GAUGE});
	expect_register_error(m, &(struct metrics_spec){.name = "x", .type = METRICS_GAUGE},
	                      "twice");
	metrics_free(m);
}

static void test_series_overflow_bound(void **state)
{
	(void)state;
	struct metrics *m = new_registry(3);
	struct metrics_family *f =
	    reg(m, &(struct metrics_spec){.name = "x_events_total",
	                                  .help = "h",
	                                  .type = METRICS_COUNTER,
	                                  .labels = (const char *const[]){"id", NULL}});
	struct metrics_series *s[5];
	char id[8];
	for (int i = 0; i < 5; i++) {
		snprintf(id, sizeof(id), "%d", i);
		s[i] = metrics_series(f, METRICS_LABELS(id));
		metrics_inc(s[i]);
	}
	/* Refused series share the family's sink; existing series keep working. */
	assert_ptr_equal(s[3], s[4]);
	assert_ptr_equal(s[0], metrics_series(f, METRICS_LABELS("0")));
	char *text = render(m);
	assert_contains(text, "x_events_total{id=\"2\"} 1\n");
	assert_null(strstr(text, "id=\"3\""));
	assert_null(strstr(text, "id=\"4\""));
	assert_contains(text, "chatprov_metrics_series_dropped_total 2\n");
	free(text);
	metrics_free(m);
}

static void test_gauge_unset(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	struct metrics_family *f =
	    reg(m, &(struct metrics_spec){.name = "x_lag",
	                                  .help = "h",
	                                  .type = METRICS_GAUGE,
	                                  .labels = (const char *const[]){"partition", NULL}});
	struct metrics_series *s = metrics_series(f, METRICS_LABELS("7"));
	metrics_gauge_set(s, 12);
	metrics_gauge_unset(s);
	char *text = render(m);
	assert_null(strstr(text, "x_lag{"));
	free(text);
	metrics_gauge_set(s, 3);
	text = render(m);
	assert_contains(text, "x_lag{partition=\"7\"} 3\n");
	free(text);
	metrics_free(m);
}

/* ---- concurrency ---- */

#define THREADS    8
#define ITERATIONS 50000

struct worker_arg {
	struct metrics_family *counter;
	struct metrics_family *hist;
	int index;
};

static void *worker(void *p)
{
	struct worker_arg *a = p;
	struct metrics_series *shared = metrics_series(a->counter, METRICS_LABELS("shared"));
	struct metrics_series *h = metrics_series(a->hist, NULL);
	char own[16];
	snprintf(own, sizeof(own), "t%d", a->index);
	for (int i = 0; i < ITERATIONS; i++) {
		metrics_inc(shared);
		metrics_observe(h, (i % 2) ? 0.5 : 2.0);
		/* Lookups race with creation by other threads: all must land on one series. */
		if (i % 100 == 0)
			metrics_inc(metrics_series(a->counter, METRICS_LABELS(own)));
		if (i % 1000 == 0)
			metrics_inc(metrics_series(a->counter, METRICS_LABELS("late")));
	}
	return NULL;
}

static void test_concurrent_exact_totals(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	struct metrics_family *c =
	    reg(m, &(struct metrics_spec){.name = "x_ops_total",
	                                  .help = "h",
	                                  .type = METRICS_COUNTER,
	                                  .labels = (const char *const[]){"who", NULL}});
	struct metrics_family *h = reg(m, &(struct metrics_spec){.name = "x_seconds",
	                                                         .help = "h",
	                                                         .type = METRICS_HISTOGRAM,
	                                                         .buckets = latency_buckets,
	                                                         .n_buckets = 2});
	pthread_t tids[THREADS];
	struct worker_arg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct worker_arg){c, h, i};
		assert_int_equal(pthread_create(&tids[i], NULL, worker, &args[i]), 0);
	}
	/* Scrapes run while the workers count. */
	for (int i = 0; i < 20; i++)
		free(render(m));
	for (int i = 0; i < THREADS; i++)
		pthread_join(tids[i], NULL);
	assert_int_equal(metrics_counter_value(metrics_series(c, METRICS_LABELS("shared"))),
	                 THREADS * ITERATIONS);
	assert_int_equal(metrics_counter_value(metrics_series(c, METRICS_LABELS("t3"))),
	                 ITERATIONS / 100);
	assert_int_equal(metrics_counter_value(metrics_series(c, METRICS_LABELS("late"))),
	                 THREADS * ITERATIONS / 1000);
	char *text = render(m);
	char line[128];
	snprintf(line, sizeof(line), "x_seconds_count %d\n", THREADS * ITERATIONS);
	assert_contains(text, line);
	snprintf(line, sizeof(line), "x_seconds_bucket{le=\"1\"} %d\n", THREADS * ITERATIONS / 2);
	assert_contains(text, line);
	snprintf(line, sizeof(line), "x_seconds_sum %d\n", THREADS * ITERATIONS / 2 * 5 / 2);
	assert_contains(text, line);
	free(text);
	metrics_free(m);
}

/* ---- HTTP ---- */

struct body {
	char data[65536];
	size_t len;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t k = size * n;
	if (b->len + k >= sizeof(b->data))
		return 0;
	memcpy(b->data + b->len, p, k);
	b->len += k;
	b->data[b->len] = '\0';
	return k;
}

/* Returns the HTTP status; the body and Content-Type are copied out. */
static long http_get(uint16_t port, const char *path, bool post, struct body *b, char *ctype,
                     size_t ctcap)
{
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", (unsigned)port, path);
	b->len = 0;
	b->data[0] = '\0';
	CURL *c = curl_easy_init();
	assert_non_null(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	if (post)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "x=1");
	CURLcode rc = curl_easy_perform(c);
	if (rc != CURLE_OK)
		fail_msg("GET %s: %s", url, curl_easy_strerror(rc));
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	char *ct = NULL;
	curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
	snprintf(ctype, ctcap, "%s", ct ? ct : "");
	curl_easy_cleanup(c);
	return status;
}

static void collect(struct metrics *m, void *arg)
{
	(void)m;
	struct metrics_series *s = arg;
	metrics_gauge_add(s, 1); /* counts scrapes */
}

static void test_http_endpoints(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	char err[CP_ERRSTR_SIZE];
	struct metrics_family *f =
	    reg(m, &(struct metrics_spec){.name = "x_scrapes", .help = "h", .type = METRICS_GAUGE});
	metrics_set_collect_cb(m, collect, metrics_series(f, NULL));
	assert_int_equal(metrics_port(m), 0);
	if (!metrics_listen(m, "127.0.0.1:0", err, sizeof(err)))
		fail_msg("listen: %s", err);
	uint16_t port = metrics_port(m);
	assert_true(port > 0);

	struct body *b = calloc(1, sizeof(*b));
	assert_non_null(b);
	char ct[128];
	assert_int_equal(http_get(port, "/metrics", false, b, ct, sizeof(ct)), 200);
	assert_string_equal(ct, "text/plain; version=0.0.4; charset=utf-8");
	assert_contains(b->data, "x_scrapes 1\n");
	assert_int_equal(http_get(port, "/metrics", false, b, ct, sizeof(ct)), 200);
	assert_contains(b->data, "x_scrapes 2\n");

	assert_int_equal(http_get(port, "/healthz", false, b, ct, sizeof(ct)), 200);
	assert_string_equal(b->data, "ok\n");
	assert_int_equal(http_get(port, "/readyz", false, b, ct, sizeof(ct)), 503);
	assert_string_equal(b->data, "not ready: starting\n");
	metrics_set_ready(m, true, NULL);
	assert_int_equal(http_get(port, "/readyz", false, b, ct, sizeof(ct)), 200);
	metrics_set_ready(m, false, "kafka unreachable");
	assert_int_equal(http_get(port, "/readyz", false, b, ct, sizeof(ct)), 503);
	assert_string_equal(b->data, "not ready: kafka unreachable\n");

	assert_int_equal(http_get(port, "/nope", false, b, ct, sizeof(ct)), 404);
	assert_int_equal(http_get(port, "/metrics", true, b, ct, sizeof(ct)), 405);
	free(b);
	metrics_free(m);
}

/* A collect callback that takes a while, as one reaching into a busy pipeline does. */
struct slow_collect {
	atomic_bool started, finished;
};

static void slow_collect(struct metrics *m, void *arg)
{
	(void)m;
	struct slow_collect *sc = arg;
	atomic_store(&sc->started, true);
	struct timespec pause = {.tv_nsec = 300 * 1000 * 1000};
	nanosleep(&pause, NULL);
	atomic_store(&sc->finished, true);
}

struct scrape {
	uint16_t port;
	long status;
};

/* GET /metrics; status 0 when no answer came (the endpoint stopped under it). */
static void *scrape_once(void *arg)
{
	struct scrape *sc = arg;
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/metrics", (unsigned)sc->port);
	sc->status = -1;
	CURL *c = curl_easy_init();
	if (!c)
		return NULL;
	FILE *sink = fopen("/dev/null", "w");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
	sc->status = 0;
	if (sink && curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &sc->status);
	if (sink)
		fclose(sink);
	curl_easy_cleanup(c);
	return NULL;
}

/*
 * Whoever removes the collect callback may free what it uses: removal must wait for a scrape
 * that is running it, and metrics_stop for every request being served.
 */
static void test_collect_removal_waits_for_scrape(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	char err[CP_ERRSTR_SIZE];
	struct slow_collect sc = {0};
	metrics_set_collect_cb(m, slow_collect, &sc);
	if (!metrics_listen(m, "127.0.0.1:0", err, sizeof(err)))
		fail_msg("listen: %s", err);
	struct scrape req = {.port = metrics_port(m)};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, scrape_once, &req), 0);
	while (!atomic_load(&sc.started))
		sched_yield();
	metrics_set_collect_cb(m, NULL, NULL);
	assert_true(atomic_load(&sc.finished));

	/* Again with the endpoint stopped under a running scrape. */
	pthread_join(t, NULL);
	assert_int_equal(req.status, 200);
	sc = (struct slow_collect){0};
	metrics_set_collect_cb(m, slow_collect, &sc);
	assert_int_equal(pthread_create(&t, NULL, scrape_once, &req), 0);
	while (!atomic_load(&sc.started))
		sched_yield();
	metrics_stop(m);
	assert_true(atomic_load(&sc.finished));
	assert_int_equal(metrics_port(m), 0);
	pthread_join(t, NULL);
	metrics_free(m);
}

static void test_listen_errors(void **state)
{
	(void)state;
	struct metrics *m = new_registry(0);
	char err[CP_ERRSTR_SIZE];
	assert_false(metrics_listen(m, "localhost", err, sizeof(err)));
	assert_non_null(strstr(err, "host:port"));
	assert_false(metrics_listen(m, "127.0.0.1:65536", err, sizeof(err)));
	assert_false(metrics_listen(m, "127.0.0.1:x", err, sizeof(err)));
	assert_false(metrics_listen(m, "no.such.host.invalid:1", err, sizeof(err)));
	/* Empty: no endpoint, not an error. */
	assert_true(metrics_listen(m, "", err, sizeof(err)));
	assert_int_equal(metrics_port(m), 0);
	/* IPv6 loopback, if the host has it. */
	if (metrics_listen(m, "[::1]:0", err, sizeof(err)))
		assert_true(metrics_port(m) > 0);
	metrics_free(m);
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_text_output_exact),
	    cmocka_unit_test(test_escaping_and_labels),
	    cmocka_unit_test(test_register_validation),
	    cmocka_unit_test(test_series_overflow_bound),
	    cmocka_unit_test(test_gauge_unset),
	    cmocka_unit_test(test_concurrent_exact_totals),
	    cmocka_unit_test(test_http_endpoints),
	    cmocka_unit_test(test_collect_removal_waits_for_scrape),
	    cmocka_unit_test(test_listen_errors),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
