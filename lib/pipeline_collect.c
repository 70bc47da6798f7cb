/*
 * pipeline_collect.c - the pipeline's numbers: STATUS= counters and the metrics scrape.
 *
 * Owns: nothing; it reads the counters, the scheduler, auth and the consumer's cached
 * watermarks (no request to the broker).
 * Invariants: everything read here is thread-safe, since the scrape runs on the metrics
 * thread.
 * Callers: the daemon (pipeline_counters), the metrics thread (collect_metrics, registered
 * by pipeline_start). Calls core's state only.
 */
#include "auth.h"
#include "cptime.h"
#include "eta.h"
#include "pipeline_int.h"

/*
 * Consumer lag of every assigned partition, from librdkafka's cached watermarks (no
 * request to the broker); reported per partition to metrics, summed for STATUS=.
 * Returns -1 while nothing is known.
 */
static int64_t collect_lag(struct pipeline *p, bool to_metrics)
{
	int64_t total = -1;
	rd_kafka_topic_partition_list_t *assigned = NULL;
	if (!p->consumer || rd_kafka_assignment(p->consumer, &assigned) != 0)
		return -1;
	if (rd_kafka_position(p->consumer, assigned) == RD_KAFKA_RESP_ERR_NO_ERROR) {
		for (int i = 0; i < assigned->cnt; i++) {
			rd_kafka_topic_partition_t *tp = &assigned->elems[i];
			int64_t low, high;
			if (rd_kafka_get_watermark_offsets(p->consumer, tp->topic, tp->partition,
			                                   &low, &high) != 0 ||
			    high < 0)
				continue;
			int64_t pos = tp->offset >= 0 ? tp->offset : low;
			int64_t lag = high > pos ? high - pos : 0;
			total = (total < 0 ? 0 : total) + lag;
			if (to_metrics)
				pipeline_metrics_lag(p->metrics, tp->partition, lag);
		}
	}
	rd_kafka_topic_partition_list_destroy(assigned);
	return total;
}

/* Runs on the metrics HTTP thread before each scrape: every source here is thread-safe. */
void collect_metrics(struct metrics *m, void *arg)
{
	struct pipeline *p = arg;
	(void)m;
	int64_t now_wall = cptime_wall_ms();
	for (size_t i = 0; i < p->cfg->n_tenants; i++) {
		struct pacer_tenant_stats ss;
		struct auth_stats as;
		if (!pacer_tenant_stats(p->pacer, i, &ss))
			continue;
		auth_get_stats(p->auth, i, &as);
		struct pipeline_metrics_tenant t = {
		    .queued = ss.queued,
		    .current_rate_per_s = ss.current_rate / atomic_load(&p->window_s),
		    .token_expires_in_s =
		        as.expires_epoch_ms ? (double)(as.expires_epoch_ms - now_wall) / 1000 : -1,
		    .token_refreshes = as.refreshes,
		    .token_failures = as.failures,
		};
		pipeline_metrics_tenant_gauges(p->metrics, i, &t);
	}
	struct pipeline_counters c;
	pipeline_counters(p, &c);
	pipeline_metrics_process_gauges(p->metrics, c.in_memory, c.active, c.paused);
	pipeline_metrics_memory_bytes(p->metrics, atomic_load(&p->memory_bytes));
	(void)collect_lag(p, true);
	pipeline_metrics_backlog(p->metrics, p->pacer, (double)c.backlog,
	                         (double)(c.backlog - (int64_t)c.queued));
}

/* The backlog (lag plus work in memory) and its ETA at the rates the scheduler allows now. */
static void backlog_eta(struct pipeline *p, struct pipeline_counters *out)
{
	struct eta_tenant t[CFG_MAX_TENANTS];
	out->backlog = (out->lag > 0 ? out->lag : 0) + (int64_t)out->in_memory;
	double unqueued = (double)(out->backlog - (int64_t)out->queued);
	if (!pacer_backlog_eta(p->pacer, unqueued > 0 ? unqueued : 0, t, CFG_MAX_TENANTS,
	                       &out->backlog_eta_s))
		out->backlog_eta_s = -1;
}

void pipeline_counters(struct pipeline *p, struct pipeline_counters *out)
{
	pthread_mutex_lock(&p->counters_lock);
	*out = p->counters;
	pthread_mutex_unlock(&p->counters_lock);
	out->in_memory = p->in_memory;
	out->paused = p->paused;
	out->queued = pacer_queued_total(p->pacer);
	out->active = 0;
	for (unsigned i = 0; i < p->n_workers; i++)
		out->active += worker_active(p->workers[i]);
	out->throttled = 0;
	for (size_t i = 0; i < p->cfg->n_tenants; i++) {
		struct pacer_tenant_stats ts;
		if (pacer_tenant_stats(p->pacer, i, &ts))
			out->throttled += ts.throttled;
	}
	out->lag = collect_lag(p, false);
	backlog_eta(p, out);
}
