/* ctl_status.c - `chatprovctl status [--watch]`: the daemon's metrics and the group's lag. */
#include <curl/curl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cptime.h"
#include "ctl.h"
#include "kafka.h"
#include "promtext.h"

#define MAX_TENANTS  CFG_MAX_TENANTS
#define BAR_WIDTH    30
#define HTTP_TIMEOUT 5L
#define URL_MAX      (CFG_VALUE_MAX + 32)

/* One tenant's figures from a scrape. */
struct tenant_view {
	char name[CFG_NAME_MAX];
	double done, failed, rejected, queued, throttled, allowed, eta, rate;
};

/* What one look at the daemon and the group shows. */
struct view {
	int64_t at_ms;
	size_t n;
	struct tenant_view t[MAX_TENANTS];
	double done, failed, rejected, backlog, eta, rate;
	int64_t group_lag; /* -1: unknown */
};

struct status_run {
	const struct cfg *cfg;
	char url[URL_MAX];
	rd_kafka_t *rk;
	bool tty;
};

/* ---- the metrics endpoint ---- */

/* http://HOST:PORT/metrics from [metrics] listen; a wildcard address becomes loopback. */
static bool metrics_url(const char *listen, char *url, size_t cap)
{
	const char *colon = strrchr(listen, ':');
	if (!listen[0] || !colon || strcmp(colon + 1, "0") == 0 || !colon[1])
		return false;
	char host[CFG_VALUE_MAX];
	snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
	if (strcmp(host, "0.0.0.0") == 0 || host[0] == '\0')
		snprintf(host, sizeof host, "127.0.0.1");
	else if (strcmp(host, "[::]") == 0)
		snprintf(host, sizeof host, "[::1]");
	return snprintf(url, cap, "http://%s:%s/metrics", host, colon + 1) < (int)cap;
}

struct body {
	char *p;
	size_t len;
};

static size_t on_data(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t len = size * n;
	if (b->len + len > PROMTEXT_MAX_BYTES)
		return 0;
	char *p = realloc(b->p, b->len + len + 1);
	if (!p)
		return 0;
	memcpy(p + b->len, data, len);
	b->p = p;
	b->len += len;
	p[b->len] = '\0';
	return len;
}

static struct promtext *scrape(const char *url, char *err, size_t errcap)
{
	struct body b = {0};
	struct promtext *pt = NULL;
	char curl_err[CURL_ERROR_SIZE] = "";
	long code = 0;
	CURL *h = curl_easy_init();
	if (!h) {
		snprintf(err, errcap, "out of memory");
		return NULL;
	}
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, HTTP_TIMEOUT);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
	CURLcode rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
	if (rc != CURLE_OK)
		snprintf(err, errcap, "%s: %s", url,
		         curl_err[0] ? curl_err : curl_easy_strerror(rc));
	else if (code != 200)
		snprintf(err, errcap, "%s: HTTP %ld", url, code);
	else if (!promtext_parse(b.p ? b.p : "", b.len, &pt, curl_err, sizeof curl_err))
		snprintf(err, errcap, "%s: %s", url, curl_err);
	curl_easy_cleanup(h);
	free(b.p);
	return pt;
}

/* ---- a view ---- */

static double sum(const struct promtext *pt, const char *name, const char *label, const char *value)
{
	double v = 0;
	return promtext_sum(pt, name, label, value, &v) ? v : 0;
}

/* The per-tenant outcome counter, by status. */
static double outcome(const struct promtext *pt, const char *tenant, const char *status)
{
	double total = 0;
	for (size_t i = 0; i < promtext_count(pt); i++) {
		const char *t = promtext_label(pt, i, "tenant"),
		           *s = promtext_label(pt, i, "status");
		if (strcmp(promtext_name(pt, i), "chatprov_tenant_requests_total") == 0 && t && s &&
		    strcmp(t, tenant) == 0 && strcmp(s, status) == 0)
			total += promtext_value(pt, i);
	}
	return total;
}

static void read_tenant(const struct promtext *pt, struct tenant_view *t)
{
	t->done = outcome(pt, t->name, "succeeded");
	t->failed = outcome(pt, t->name, "failed");
	t->rejected = outcome(pt, t->name, "rejected");
	t->queued = sum(pt, "chatprov_queued_requests", "tenant", t->name);
	t->throttled = sum(pt, "chatprov_throttled_total", "tenant", t->name);
	t->allowed = sum(pt, "chatprov_send_rate_per_second", "tenant", t->name);
	t->eta = sum(pt, "chatprov_backlog_eta_seconds", "tenant", t->name);
}

/* The tenant profiles the daemon reports (chatprov_queued_requests has every one). */
static void read_tenants(const struct promtext *pt, struct view *v)
{
	for (size_t i = 0; i < promtext_count(pt) && v->n < MAX_TENANTS; i++) {
		const char *name = promtext_label(pt, i, "tenant");
		if (strcmp(promtext_name(pt, i), "chatprov_queued_requests") != 0 || !name)
			continue;
		struct tenant_view *t = &v->t[v->n++];
		snprintf(t->name, sizeof t->name, "%s", name);
		read_tenant(pt, t);
		v->done += t->done;
		v->failed += t->failed;
		v->rejected += t->rejected;
	}
}

/* The group's lag on the input topic: committed offsets to the high watermarks. */
static int64_t group_lag(struct status_run *r)
{
	char err[CP_ERRSTR_SIZE];
	struct ctl_range *ranges = NULL;
	size_t n = 0;
	if (!r->rk ||
	    !ctl_topic_ranges(r->rk, r->cfg->kafka.input_topic, true, &ranges, &n, err, sizeof err))
		return -1;
	int64_t lag = ctl_ranges_total(ranges, n);
	free(ranges);
	return lag;
}

static bool look(struct status_run *r, struct view *v, char *err, size_t errcap)
{
	struct promtext *pt = scrape(r->url, err, errcap);
	if (!pt)
		return false;
	*v = (struct view){.at_ms = cptime_mono_ms()};
	read_tenants(pt, v);
	double daemon_backlog = sum(pt, "chatprov_backlog_events", "tenant", "");
	double daemon_eta = sum(pt, "chatprov_backlog_eta_seconds", "tenant", "");
	promtext_free(pt);
	v->group_lag = group_lag(r);
	v->backlog = daemon_backlog;
	v->eta = daemon_eta;
	/* Other instances' share of the group's work: the same pace, proportionally longer. */
	if (v->group_lag > daemon_backlog) {
		v->backlog = (double)v->group_lag;
		v->eta = daemon_backlog > 0 ? daemon_eta * v->backlog / daemon_backlog : INFINITY;
	}
	return true;
}

/* Rates from the difference with an earlier view. */
static void rates(struct view *now, const struct view *before)
{
	double dt = (double)(now->at_ms - before->at_ms) / 1000.0;
	if (dt <= 0)
		return;
	now->rate = 0;
	for (size_t i = 0; i < now->n; i++)
		for (size_t k = 0; k < before->n; k++) {
			const struct tenant_view *b = &before->t[k];
			struct tenant_view *t = &now->t[i];
			if (strcmp(b->name, t->name) != 0)
				continue;
			double d = (t->done + t->failed + t->rejected) -
			           (b->done + b->failed + b->rejected);
			t->rate = d > 0 ? d / dt : 0;
			now->rate += t->rate;
		}
}

/* ---- output ---- */

static void bar(char *out, double done, double total)
{
	size_t full = total > 0 ? (size_t)(BAR_WIDTH * (done / total)) : BAR_WIDTH;
	full = full > BAR_WIDTH ? BAR_WIDTH : full;
	memset(out, '#', full);
	memset(out + full, '.', BAR_WIDTH - full);
	out[BAR_WIDTH] = '\0';
}

static void print_table(const struct view *v, bool bars)
{
	char eta[48], b[BAR_WIDTH + 1];
	printf("%-16s %9s %7s %8s %7s %9s %7s %9s %10s%s\n", "TENANT", "DONE", "FAILED", "REJECTED",
	       "QUEUED", "THROTTLED", "RATE/S", "ALLOWED/S", "ETA", bars ? "  PROGRESS" : "");
	for (size_t i = 0; i < v->n; i++) {
		const struct tenant_view *t = &v->t[i];
		cptime_format_duration(t->eta, eta, sizeof eta);
		bar(b, t->done + t->failed + t->rejected,
		    t->done + t->failed + t->rejected + t->queued);
		printf("%-16s %9.0f %7.0f %8.0f %7.0f %9.0f %7.1f %9.1f %10s%s%s\n", t->name,
		       t->done, t->failed, t->rejected, t->queued, t->throttled, t->rate,
		       t->allowed, eta, bars ? "  " : "", bars ? b : "");
	}
	char lag[32] = "unknown";
	if (v->group_lag >= 0)
		snprintf(lag, sizeof lag, "%lld", (long long)v->group_lag);
	cptime_format_duration(v->eta, eta, sizeof eta);
	printf("\nbacklog %.0f events (group lag %s), %.1f/s, ETA %s\n", v->backlog, lag, v->rate,
	       eta);
	if (bars) {
		double finished = v->done + v->failed + v->rejected;
		bar(b, finished, finished + v->backlog);
		printf("[%s] %.0f of %.0f\n", b, finished, finished + v->backlog);
	}
}

/* One line per look when stdout is not a terminal. */
static void print_line(const struct view *v)
{
	char eta[48], at[32] = "";
	time_t now = time(NULL);
	struct tm tm;
	if (gmtime_r(&now, &tm))
		strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", &tm);
	cptime_format_duration(v->eta, eta, sizeof eta);
	printf("%s backlog %.0f done %.0f failed %.0f rejected %.0f rate %.1f/s eta %s\n", at,
	       v->backlog, v->done, v->failed, v->rejected, v->rate, eta);
}

static bool drained(const struct view *v)
{
	return v->backlog <= 0 && v->group_lag <= 0;
}

/* ---- the command ---- */

static void pause_s(double s)
{
	struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - floor(s)) * 1e9)};
	nanosleep(&ts, NULL);
}

static int watch(struct status_run *r, double interval)
{
	char err[CP_ERRSTR_SIZE];
	struct view before, now;
	if (!look(r, &before, err, sizeof err))
		goto fail;
	for (;;) {
		pause_s(interval);
		if (!look(r, &now, err, sizeof err))
			goto fail;
		rates(&now, &before);
		if (r->tty) {
			printf("\033[H\033[2J"); /* home, clear: redraw in place */
			print_table(&now, true);
		} else {
			print_line(&now);
		}
		fflush(stdout);
		if (drained(&now)) {
			printf("backlog drained\n");
			return CTL_OK;
		}
		before = now;
	}
fail:
	fprintf(stderr, "chatprovctl status: %s\n", err);
	return CTL_FAILED;
}

static int once(struct status_run *r, double interval)
{
	char err[CP_ERRSTR_SIZE];
	struct view before, now;
	if (!look(r, &before, err, sizeof err)) {
		fprintf(stderr, "chatprovctl status: %s\n", err);
		return CTL_FAILED;
	}
	/* A rate needs two looks. */
	pause_s(interval);
	if (!look(r, &now, err, sizeof err)) {
		fprintf(stderr, "chatprovctl status: %s\n", err);
		return CTL_FAILED;
	}
	rates(&now, &before);
	print_table(&now, false);
	return CTL_OK;
}

static int parse_opts(int argc, char **argv, bool *watch_mode, double *interval)
{
	static const struct option longopts[] = {
	    {"watch", no_argument, NULL, 'w'},
	    {"interval", required_argument, NULL, 'i'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "wi:", longopts, NULL)) != -1) {
		char *end;
		if (c == 'w') {
			*watch_mode = true;
			continue;
		}
		if (c == 'i') {
			*interval = strtod(optarg, &end);
			if (*end == '\0' && *interval >= 0.1 && *interval <= 3600)
				continue;
			fprintf(stderr, "chatprovctl status: --interval is 0.1..3600 seconds\n");
		}
		return CTL_USAGE;
	}
	if (optind < argc) {
		fprintf(stderr, "chatprovctl status: unexpected argument '%s'\n", argv[optind]);
		return CTL_USAGE;
	}
	return CTL_OK;
}

int ctl_status(const char *config_path, int argc, char **argv)
{
	bool watch_mode = false;
	double interval = 1;
	int rc = parse_opts(argc, argv, &watch_mode, &interval);
	if (rc != CTL_OK)
		return rc;
	struct cfg *cfg = ctl_load_config(config_path);
	if (!cfg)
		return CTL_FAILED;
	char err[CP_ERRSTR_SIZE];
	struct status_run r = {.cfg = cfg, .tty = isatty(STDOUT_FILENO) == 1};
	rc = CTL_FAILED;
	if (!metrics_url(cfg->metrics.listen, r.url, sizeof r.url)) {
		fprintf(stderr,
		        "chatprovctl status: [metrics] listen = '%s' gives no address to "
		        "read (empty or port 0)\n",
		        cfg->metrics.listen);
		goto out;
	}
	r.rk = kafka_inspector_new(cfg, err, sizeof err);
	if (!r.rk)
		fprintf(stderr, "chatprovctl status: group lag unknown: %s\n", err);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	rc = watch_mode ? watch(&r, interval) : once(&r, interval);
	curl_global_cleanup();
out:
	if (r.rk)
		rd_kafka_destroy(r.rk);
	cfg_free(cfg);
	return rc;
}
