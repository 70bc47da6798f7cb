/*
 * pipeline_metrics.h - the daemon's Prometheus series (chatprov_*), registered once and
 * updated through pre-resolved handles so that the hot path is one atomic operation.
 *
 * Every function accepts a NULL pipeline_metrics (metrics disabled) and does nothing.
 */
#ifndef CHATPROV_PIPELINE_METRICS_H
#define CHATPROV_PIPELINE_METRICS_H

#include "cfg.h"
#include "common.h"
#include "job.h"
#include "metrics.h"
#include "pacer.h"

struct pipeline_metrics;

/* NULL when registry is NULL or on failure (the caller tells the two apart). */
struct pipeline_metrics *pipeline_metrics_new(struct metrics *registry, const struct cfg *cfg);
void pipeline_metrics_free(struct pipeline_metrics *pm);

/* A final outcome: chatprov_requests_total{status} and the end-to-end latency. */
void pipeline_metrics_job_done(struct pipeline_metrics *pm, const struct job *job);
/* A transient failure that will be retried. */
void pipeline_metrics_retry(struct pipeline_metrics *pm, size_t tenant);
/* A 404 from POST /chats that will be tried again ([retry] not_found_s). */
void pipeline_metrics_not_found_retry(struct pipeline_metrics *pm, size_t tenant);
/* A 403 from POST /chats (missing permission or consent). */
void pipeline_metrics_forbidden(struct pipeline_metrics *pm, size_t tenant);
/* One Graph answer (status 0: no HTTP answer) and how long it took. */
void pipeline_metrics_graph_response(struct pipeline_metrics *pm, size_t tenant, long status,
                                     double seconds);

/* An input message the consumer could not read (it is fetched again, never skipped). */
void pipeline_metrics_unreadable(struct pipeline_metrics *pm);
/* An input message skipped: the partition's previous owner answered it (hand-over mark). */
void pipeline_metrics_handover_skipped(struct pipeline_metrics *pm);
/* A 429's block told to the other instances (sent) or taken from one (applied). */
void pipeline_metrics_block_shared(struct pipeline_metrics *pm, bool sent);
/* A record the broker refused for good and that was given up, by topic. */
void pipeline_metrics_record_refused(struct pipeline_metrics *pm, const char *topic);

/* Gauges refreshed before each scrape. */
struct pipeline_metrics_tenant {
	size_t queued;
	double current_rate_per_s;
	double token_expires_in_s; /* negative: no token */
	uint64_t token_refreshes, token_failures;
};
void pipeline_metrics_tenant_gauges(struct pipeline_metrics *pm, size_t tenant,
                                    const struct pipeline_metrics_tenant *t);
void pipeline_metrics_process_gauges(struct pipeline_metrics *pm, size_t in_memory, size_t active,
                                     bool paused);
void pipeline_metrics_lag(struct pipeline_metrics *pm, int32_t partition, int64_t lag);
/* Bytes the requests in memory count against [kafka] max_queued_bytes. */
void pipeline_metrics_memory_bytes(struct pipeline_metrics *pm, size_t bytes);
/*
 * chatprov_backlog_events and chatprov_backlog_eta_seconds: per tenant profile its queued
 * work and when it may all have left at the rates the scheduler allows now; under
 * tenant="" (Prometheus reads it as no tenant label) the whole backlog, `backlog` events of
 * which `unqueued` are not in the scheduler yet (consumer lag, work being decoded).
 */
void pipeline_metrics_backlog(struct pipeline_metrics *pm, struct pacer *pacer, double backlog,
                              double unqueued);

#endif
