/* pipeline_metrics.c - chatprov_* series on the metrics registry. */
#include "pipeline_metrics.h"

#include <stdio.h>
#include <stdlib.h>

#include "cptime.h"
#include "eta.h"
#include "log.h"
#include "result.h"

static const double latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1,     2.5,  5,     10,   30,  60,   300};
static const double e2e_buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,
                                     10,   30,   60,  120,  300, 900, 3600};

struct tenant_series {
	struct metrics_series *retries, *throttled, *queued, *rate, *token_expiry;
	struct metrics_series *outcomes[4], *backlog, *backlog_eta;
	struct metrics_series *token_refreshes, *token_failures, *not_found, *forbidden;
	uint64_t seen_refreshes, seen_failures;
};

struct pipeline_metrics {
	struct metrics *registry;
	struct metrics_family *requests, *responses, *retries, *throttled, *graph_latency;
	struct metrics_family *e2e_latency, *queued, *rate, *token_expiry, *token_refreshes;
	struct metrics_family *token_failures, *in_memory, *active, *paused, *lag, *refused;
	struct metrics_family *memory_bytes, *unreadable, *handover_skipped, *blocks_shared;
	struct metrics_family *not_found, *forbidden;
	struct metrics_family *tenant_requests, *backlog, *backlog_eta;
	struct metrics_series *backlog_all, *backlog_eta_all;
	struct metrics_series *requests_by_status[4];
	struct metrics_series *graph_latency_all, *e2e_all, *in_memory_g, *active_g, *paused_g;
	const struct cfg *cfg;
	size_t n_tenants;
	struct tenant_series tenants[CFG_MAX_TENANTS];
};

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

static bool reg(struct pipeline_metrics *pm, struct metrics_family **fam, const char *name,
                const char *help, enum metrics_type type, const char *const *labels,
                const double *buckets, size_t n_buckets)
{
	char err[256];
	struct metrics_spec spec = {.name = name,
	                            .help = help,
	                            .type = type,
	                            .labels = labels,
	                            .buckets = buckets,
	                            .n_buckets = n_buckets};
	if (metrics_register(pm->registry, &spec, fam, err, sizeof err))
		return true;
	log_error("metrics: %s", err);
	return false;
}

static bool register_families(struct pipeline_metrics *pm)
{
	return reg(pm, &pm->requests, "chatprov_requests_total",
	           "Requests that reached a final outcome, by status.", METRICS_COUNTER,
	           L("status"), NULL, 0) &&
	       reg(pm, &pm->responses, "chatprov_graph_responses_total",
	           "Graph answers by tenant profile and HTTP status (0: no answer).",
	           METRICS_COUNTER, L("tenant", "code"), NULL, 0) &&
	       reg(pm, &pm->retries, "chatprov_retries_total",
	           "Transient failures retried with backoff.", METRICS_COUNTER, L("tenant"), NULL,
	           0) &&
	       reg(pm, &pm->throttled, "chatprov_throttled_total",
	           "429 Too Many Requests answers from Graph.", METRICS_COUNTER, L("tenant"), NULL,
	           0) &&
	       reg(pm, &pm->graph_latency, "chatprov_graph_request_duration_seconds",
	           "Duration of Graph HTTP exchanges.", METRICS_HISTOGRAM, NULL, latency_buckets,
	           CP_ARRAY_LEN(latency_buckets)) &&
	       reg(pm, &pm->e2e_latency, "chatprov_request_duration_seconds",
	           "From consumption (receivedAt) to final outcome (completedAt).",
	           METRICS_HISTOGRAM, NULL, e2e_buckets, CP_ARRAY_LEN(e2e_buckets)) &&
	       reg(pm, &pm->queued, "chatprov_queued_requests",
	           "Requests waiting in the scheduler, by tenant profile.", METRICS_GAUGE,
	           L("tenant"), NULL, 0) &&
	       reg(pm, &pm->rate, "chatprov_send_rate_per_second",
	           "Current adaptive POST /chats rate, by tenant profile.", METRICS_GAUGE,
	           L("tenant"), NULL, 0) &&
	       reg(pm, &pm->token_expiry, "chatprov_token_expiry_seconds",
	           "Seconds until the cached access token expires.", METRICS_GAUGE, L("tenant"),
	           NULL, 0) &&
	       reg(pm, &pm->token_refreshes, "chatprov_token_refreshes_total",
	           "Access tokens acquired.", METRICS_COUNTER, L("tenant"), NULL, 0) &&
	       reg(pm, &pm->token_failures, "chatprov_token_failures_total",
	           "Failed token requests.", METRICS_COUNTER, L("tenant"), NULL, 0) &&
	       reg(pm, &pm->in_memory, "chatprov_in_memory_requests",
	           "Requests consumed whose result is not yet acknowledged.", METRICS_GAUGE, NULL,
	           NULL, 0) &&
	       reg(pm, &pm->active, "chatprov_in_flight_requests",
	           "Requests inside HTTP workers (transfers, operation polls).", METRICS_GAUGE,
	           NULL, NULL, 0) &&
	       reg(pm, &pm->paused, "chatprov_consumer_paused",
	           "1 while a memory bound holds intake back.", METRICS_GAUGE, NULL, NULL, 0) &&
	       reg(pm, &pm->lag, "chatprov_consumer_lag", "Messages behind the high watermark.",
	           METRICS_GAUGE, L("partition"), NULL, 0) &&
	       reg(pm, &pm->refused, "chatprov_records_refused_total",
	           "Records the broker refused for good, given up after bounded retries, by topic.",
	           METRICS_COUNTER, L("topic"), NULL, 0) &&
	       reg(pm, &pm->memory_bytes, "chatprov_in_memory_bytes",
	           "Bytes of the requests in memory, as counted against [kafka] max_queued_bytes.",
	           METRICS_GAUGE, NULL, NULL, 0) &&
	       reg(pm, &pm->unreadable, "chatprov_unreadable_messages_total",
	           "Consumer errors at an input offset: the message is fetched again, never "
	           "skipped.",
	           METRICS_COUNTER, NULL, NULL, 0) &&
	       reg(pm, &pm->handover_skipped, "chatprov_handover_skipped_total",
	           "Input messages skipped because the partition's previous owner had answered "
	           "them (its hand-over mark), when its commit was refused during a rebalance.",
	           METRICS_COUNTER, NULL, NULL, 0) &&
	       reg(pm, &pm->blocks_shared, "chatprov_retry_after_shared_total",
	           "429 Retry-After blocks shared through [kafka] limits_topic: sent by this "
	           "instance, or applied here from another.",
	           METRICS_COUNTER, L("direction"), NULL, 0) &&
	       reg(pm, &pm->not_found, "chatprov_not_found_retries_total",
	           "404 answers to POST /chats waited out: a member not yet known to Teams.",
	           METRICS_COUNTER, L("tenant"), NULL, 0) &&
	       reg(pm, &pm->forbidden, "chatprov_forbidden_total",
	           "403 answers to POST /chats: the app lacks a permission (admin consent).",
	           METRICS_COUNTER, L("tenant"), NULL, 0) &&
	       reg(pm, &pm->tenant_requests, "chatprov_tenant_requests_total",
	           "Final outcomes by tenant profile (rejected events of an unknown profile: "
	           "default).",
	           METRICS_COUNTER, L("tenant", "status"), NULL, 0) &&
	       reg(pm, &pm->backlog, "chatprov_backlog_events",
	           "Work to do: queued per tenant profile; tenant=\"\": consumer lag plus work "
	           "in memory.",
	           METRICS_GAUGE, L("tenant"), NULL, 0) &&
	       reg(pm, &pm->backlog_eta, "chatprov_backlog_eta_seconds",
	           "When the backlog may have left at the rates the scheduler allows now.",
	           METRICS_GAUGE, L("tenant"), NULL, 0);
}

static void resolve_tenant(struct pipeline_metrics *pm, size_t i)
{
	const char *const *t = METRICS_LABELS(pm->cfg->tenants[i].name);
	struct tenant_series *ts = &pm->tenants[i];
	ts->retries = metrics_series(pm->retries, t);
	ts->throttled = metrics_series(pm->throttled, t);
	ts->queued = metrics_series(pm->queued, t);
	ts->rate = metrics_series(pm->rate, t);
	ts->token_expiry = metrics_series(pm->token_expiry, t);
	ts->token_refreshes = metrics_series(pm->token_refreshes, t);
	ts->token_failures = metrics_series(pm->token_failures, t);
	ts->not_found = metrics_series(pm->not_found, t);
	ts->forbidden = metrics_series(pm->forbidden, t);
	ts->backlog = metrics_series(pm->backlog, t);
	ts->backlog_eta = metrics_series(pm->backlog_eta, t);
	static const enum job_status statuses[] = {JOB_SUCCEEDED, JOB_FAILED, JOB_REJECTED};
	for (size_t k = 0; k < CP_ARRAY_LEN(statuses); k++)
		ts->outcomes[statuses[k]] = metrics_series(
		    pm->tenant_requests,
		    METRICS_LABELS(pm->cfg->tenants[i].name, result_status_name(statuses[k])));
}

struct pipeline_metrics *pipeline_metrics_new(struct metrics *registry, const struct cfg *cfg)
{
	if (!registry)
		return NULL;
	struct pipeline_metrics *pm = calloc(1, sizeof *pm);
	if (!pm)
		return NULL;
	pm->registry = registry;
	pm->cfg = cfg;
	if (!register_families(pm)) {
		free(pm);
		return NULL;
	}
	static const enum job_status statuses[] = {JOB_SUCCEEDED, JOB_FAILED, JOB_REJECTED,
	                                           JOB_PENDING};
	for (size_t i = 0; i < 3; i++)
		pm->requests_by_status[statuses[i]] =
		    metrics_series(pm->requests, METRICS_LABELS(result_status_name(statuses[i])));
	pm->graph_latency_all = metrics_series(pm->graph_latency, NULL);
	pm->e2e_all = metrics_series(pm->e2e_latency, NULL);
	pm->in_memory_g = metrics_series(pm->in_memory, NULL);
	pm->active_g = metrics_series(pm->active, NULL);
	pm->paused_g = metrics_series(pm->paused, NULL);
	pm->backlog_all = metrics_series(pm->backlog, METRICS_LABELS(""));
	pm->backlog_eta_all = metrics_series(pm->backlog_eta, METRICS_LABELS(""));
	pm->n_tenants = cfg->n_tenants;
	for (size_t i = 0; i < pm->n_tenants; i++)
		resolve_tenant(pm, i);
	return pm;
}

void pipeline_metrics_free(struct pipeline_metrics *pm)
{
	free(pm); /* the series belong to the registry */
}

void pipeline_metrics_job_done(struct pipeline_metrics *pm, const struct job *job)
{
	if (!pm || (unsigned)job->status >= CP_ARRAY_LEN(pm->requests_by_status) ||
	    !pm->requests_by_status[job->status])
		return;
	metrics_inc(pm->requests_by_status[job->status]);
	if (job->tenant < pm->n_tenants && pm->tenants[job->tenant].outcomes[job->status])
		metrics_inc(pm->tenants[job->tenant].outcomes[job->status]);
	int64_t done = job->completed_wall_ms ? job->completed_wall_ms : cptime_wall_ms();
	metrics_observe(pm->e2e_all, (double)(done - job->received_wall_ms) / 1000.0);
}

void pipeline_metrics_retry(struct pipeline_metrics *pm, size_t tenant)
{
	if (pm && tenant < pm->n_tenants)
		metrics_inc(pm->tenants[tenant].retries);
}

void pipeline_metrics_not_found_retry(struct pipeline_metrics *pm, size_t tenant)
{
	if (pm && tenant < pm->n_tenants)
		metrics_inc(pm->tenants[tenant].not_found);
}

void pipeline_metrics_forbidden(struct pipeline_metrics *pm, size_t tenant)
{
	if (pm && tenant < pm->n_tenants)
		metrics_inc(pm->tenants[tenant].forbidden);
}

void pipeline_metrics_graph_response(struct pipeline_metrics *pm, size_t tenant, long status,
                                     double seconds)
{
	if (!pm || tenant >= pm->n_tenants)
		return;
	char code[16];
	snprintf(code, sizeof code, "%ld", status);
	metrics_inc(
	    metrics_series(pm->responses, METRICS_LABELS(pm->cfg->tenants[tenant].name, code)));
	if (status == 429)
		metrics_inc(pm->tenants[tenant].throttled);
	metrics_observe(pm->graph_latency_all, seconds);
}

void pipeline_metrics_handover_skipped(struct pipeline_metrics *pm)
{
	if (pm)
		metrics_inc(metrics_series(pm->handover_skipped, NULL));
}

void pipeline_metrics_block_shared(struct pipeline_metrics *pm, bool sent)
{
	if (pm)
		metrics_inc(metrics_series(pm->blocks_shared,
		                           (const char *const[]){sent ? "sent" : "applied"}));
}

void pipeline_metrics_unreadable(struct pipeline_metrics *pm)
{
	if (pm)
		metrics_inc(metrics_series(pm->unreadable, NULL));
}

void pipeline_metrics_memory_bytes(struct pipeline_metrics *pm, size_t bytes)
{
	if (pm)
		metrics_gauge_set(metrics_series(pm->memory_bytes, NULL), (double)bytes);
}

void pipeline_metrics_record_refused(struct pipeline_metrics *pm, const char *topic)
{
	if (pm)
		metrics_inc(metrics_series(pm->refused, METRICS_LABELS(topic)));
}

/* Counters fed from another module's running totals: add only what is new. */
static void add_delta(struct metrics_series *s, uint64_t total, uint64_t *seen)
{
	if (total > *seen)
		metrics_add(s, total - *seen);
	*seen = total;
}

void pipeline_metrics_tenant_gauges(struct pipeline_metrics *pm, size_t tenant,
                                    const struct pipeline_metrics_tenant *t)
{
	if (!pm || tenant >= pm->n_tenants)
		return;
	struct tenant_series *ts = &pm->tenants[tenant];
	metrics_gauge_set(ts->queued, (double)t->queued);
	metrics_gauge_set(ts->rate, t->current_rate_per_s);
	if (t->token_expires_in_s >= 0)
		metrics_gauge_set(ts->token_expiry, t->token_expires_in_s);
	else
		metrics_gauge_unset(ts->token_expiry);
	add_delta(ts->token_refreshes, t->token_refreshes, &ts->seen_refreshes);
	add_delta(ts->token_failures, t->token_failures, &ts->seen_failures);
}

void pipeline_metrics_process_gauges(struct pipeline_metrics *pm, size_t in_memory, size_t active,
                                     bool paused)
{
	if (!pm)
		return;
	metrics_gauge_set(pm->in_memory_g, (double)in_memory);
	metrics_gauge_set(pm->active_g, (double)active);
	metrics_gauge_set(pm->paused_g, paused ? 1 : 0);
}

void pipeline_metrics_lag(struct pipeline_metrics *pm, int32_t partition, int64_t lag)
{
	if (!pm)
		return;
	char label[16];
	snprintf(label, sizeof label, "%d", (int)partition);
	struct metrics_series *s = metrics_series(pm->lag, METRICS_LABELS(label));
	if (lag >= 0)
		metrics_gauge_set(s, (double)lag);
	else
		metrics_gauge_unset(s);
}

void pipeline_metrics_backlog(struct pipeline_metrics *pm, struct pacer *pacer, double backlog,
                              double unqueued)
{
	struct eta_tenant t[CFG_MAX_TENANTS];
	double total;
	if (!pm || !pacer_backlog_eta(pacer, unqueued, t, pm->n_tenants, &total))
		return;
	for (size_t i = 0; i < pm->n_tenants; i++) {
		metrics_gauge_set(pm->tenants[i].backlog, t[i].events);
		metrics_gauge_set(pm->tenants[i].backlog_eta, t[i].eta_s);
	}
	metrics_gauge_set(pm->backlog_all, backlog);
	metrics_gauge_set(pm->backlog_eta_all, total);
}
