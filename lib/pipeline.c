/*
 * pipeline.c - the pipeline's lifecycle and the Kafka thread's turn.
 *
 * Owns: building and freeing everything the pipeline holds (consumer, producer, state,
 * scheduler, workers, token cache), wiring the callbacks (workers' hooks, librdkafka's
 * delivery and rebalance callbacks, the metrics scrape, struct pipeline_events), reloads,
 * the drain and the finish.
 * Invariants: teardown goes from the outside in (architecture.md, "Stopping"); the finish
 * keeps its flushes and commits within PIPELINE_FLUSH_MS together.
 * Callers: daemon/main.c through pipeline.h. The top layer: it may call every other
 * pipeline file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "blockshare.h"
#include "chatreq.h"
#include "cptime.h"
#include "kafka.h"
#include "log.h"
#include "pipeline_int.h"

/*
 * Sendable jobs (and group chats waiting for their intent's ack) kept ahead of the workers:
 * a quarter of max_in_flight, at least this many, which covers the intent's round trip to
 * the broker at 10,000+ events/s (docs/performance.md).
 */
#define MIN_READ_AHEAD  256
#define FORGET_EVERY_MS (60 * 1000)
/* How long a stop waits for a first assignment already under way (await_first_assignment). */
#define FIRST_ASSIGNMENT_WAIT_MS 10000

static void on_state_progress(bool advanced, void *arg)
{
	core_wait_tick(arg, advanced);
}

/* A drain stops fetching altogether. */
static void pause_all(struct pipeline *p)
{
	rd_kafka_topic_partition_list_t *assigned = NULL;
	if (rd_kafka_assignment(p->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	rd_kafka_pause_partitions(p->consumer, assigned);
	rd_kafka_topic_partition_list_destroy(assigned);
}

/* A worker took sendable jobs: the read-ahead has room again. */
static void took_work(void *arg)
{
	core_wake_for_credit(arg);
}

static void post_begin(int32_t partition, void *arg)
{
	struct pipeline *p = arg;
	atomic_fetch_add(&p->posting[partition], 1);
}

static void post_end(int32_t partition, void *arg)
{
	struct pipeline *p = arg;
	atomic_fetch_sub(&p->posting[partition], 1);
}

/* Requests past retention leave memory; their tombstones come with the next restore. */
static void forget_old_state(struct pipeline *p)
{
	int64_t now = cptime_mono_ms();
	if (now - p->last_forget_ms < FORGET_EVERY_MS)
		return;
	p->last_forget_ms = now;
	size_t n = state_forget_older(p->state, cptime_wall_ms() - p->state_retention_ms);
	if (n)
		log_info("forgot %zu requests older than [recovery] state_retention_s", n);
}

bool pipeline_poll(struct pipeline *p, int timeout_ms)
{
	intake_serve_consumer_events(p);
	rd_kafka_poll(p->producer, 0);
	blockshare_poll(p->blockshare);
	publish_reproduce_due(p);
	intake_refetch_unreadable(p);
	size_t allowed = intake_credit(p);
	size_t taken = allowed ? intake_take_messages(p, allowed) : 0;
	core_store_offsets(p);
	forget_old_state(p);
	p->waiting = false; /* the long waits of this turn, if any, are over */
	char errstr[CP_ERRSTR_SIZE];
	if (rd_kafka_fatal_error(p->producer, errstr, sizeof errstr)) {
		log_error("producer fatal error: %s", errstr);
		return false;
	}
	if (atomic_load(&p->fatal))
		return false;
	/* Reports that arrived meanwhile are served next turn: their queue wakes the wait. */
	if (taken == 0)
		intake_wait_for_work(p, allowed > 0, timeout_ms);
	return true;
}

static struct worker_policy policy_of(const struct cfg *cfg)
{
	return (struct worker_policy){
	    .retry = {.max_attempts = cfg->retry.max_attempts,
	              .base_delay_ms = (int64_t)(cfg->retry.base_delay_s * 1000),
	              .max_delay_ms = (int64_t)(cfg->retry.max_delay_s * 1000),
	              .max_elapsed_ms = (int64_t)(cfg->retry.max_elapsed_s * 1000)},
	    .not_found = {.budget_ms = (int64_t)(cfg->retry.not_found_s * 1000),
	                  .base_delay_ms = (int64_t)(cfg->retry.not_found_base_delay_s * 1000),
	                  .max_delay_ms = (int64_t)(cfg->retry.not_found_max_delay_s * 1000)},
	    .poll_interval_ms = (int64_t)(cfg->operations.poll_interval_s * 1000),
	    .op_timeout_ms = (int64_t)(cfg->operations.timeout_s * 1000),
	    .group_chat_lookup = cfg->recovery.group_chat_lookup,
	};
}

static struct pacer_limits limits_of(const struct cfg *cfg)
{
	return (struct pacer_limits){
	    .per_tenant_limit = cfg->tenants[0].limits.chat_creates_per_10s_per_tenant,
	    .global_limit = cfg->limits.chat_creates_per_10s_global,
	    .window_s = cfg->limits.window_s,
	    .slow_start_tokens = PACER_SLOW_START_TOKENS,
	};
}

static void keep_app_limits(struct pipeline *p, const struct cfg *cfg)
{
	p->app_limits = limits_of(cfg);
	p->n_app_tenants = cfg->n_tenants;
	for (size_t i = 0; i < cfg->n_tenants; i++)
		p->app_tenant_limits[i] = cfg->tenants[i].limits.chat_creates_per_10s_per_tenant;
}

static void take_reloadable(struct pipeline *p, const struct cfg *cfg)
{
	p->state_retention_ms = (int64_t)(cfg->recovery.state_retention_s * 1000);
	p->op_timeout_ms = (int64_t)(cfg->operations.timeout_s * 1000);
	atomic_store(&p->window_s, cfg->limits.window_s);
}

static bool create_scheduler(struct pipeline *p)
{
	struct pacer_limits lim = limits_of(p->cfg);
	keep_app_limits(p, p->cfg);
	p->share = 1.0;
	if (!pacer_new(&lim, p->cfg->kafka.max_queued, &p->pacer))
		return false;
	for (size_t i = 0; i < p->cfg->n_tenants; i++) {
		size_t index;
		const struct cfg_tenant *t = &p->cfg->tenants[i];
		if (!pacer_add_tenant(p->pacer, t->name, t->limits.chat_creates_per_10s_per_tenant,
		                      &index) ||
		    index != i)
			return false;
	}
	return true;
}

bool pipeline_new(const struct cfg *cfg, struct metrics *metrics, struct pipeline **out, char *err,
                  size_t errcap)
{
	struct pipeline *p = calloc(1, sizeof *p);
	if (!p) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	p->cfg = cfg;
	p->events = (struct pipeline_events){.done_recorded = dispatch_answer_followers,
	                                     .intent_durable = dispatch_queue_job,
	                                     .leader_settled = dispatch_restart_followers};
	take_reloadable(p, cfg);
	p->registry = metrics;
	p->wake_fd = -1;
	p->read_ahead = cfg->graph.max_in_flight / 4 > MIN_READ_AHEAD ? cfg->graph.max_in_flight / 4
	                                                              : MIN_READ_AHEAD;
	pthread_mutex_init(&p->counters_lock, NULL);
	pthread_mutex_init(&p->reproduce_lock, NULL);
	p->limits = chatreq_event_limits(cfg);
	struct chatreq_roots roots;
	if (!chatreq_roots(cfg, &roots)) {
		snprintf(err, errcap, "graph root too long");
		goto fail;
	}
	memcpy(p->bind_root, roots.bind_root, sizeof p->bind_root);
	p->generations = calloc(MAX_PARTITIONS, sizeof *p->generations);
	p->posting = calloc(MAX_PARTITIONS, sizeof *p->posting);
	if (!p->generations || !p->posting ||
	    !offtrack_new(core_tracked_limit(p) + MESSAGES_PER_TURN, &p->offsets) ||
	    !create_scheduler(p)) {
		snprintf(err, errcap, "out of memory");
		goto fail;
	}
	if (!state_new(cfg, &p->state, err, errcap))
		goto fail;
	state_set_progress(p->state, on_state_progress, p);
	p->metrics = pipeline_metrics_new(metrics, cfg);
	if (metrics && !p->metrics) {
		snprintf(err, errcap, "cannot register metrics");
		goto fail;
	}
	if (!auth_new(cfg, &p->auth, err, errcap))
		goto fail;
	*out = p;
	return true;
fail:
	pipeline_free(p);
	return false;
}

static void on_token_change(void *arg)
{
	struct pipeline *p = arg;
	for (unsigned i = 0; i < p->n_workers; i++)
		worker_token_changed(p->workers[i]);
}

static bool start_workers(struct pipeline *p, char *err, size_t errcap)
{
	unsigned n = p->cfg->graph.workers;
	if (n > MAX_WORKERS)
		n = MAX_WORKERS;
	for (unsigned i = 0; i < n; i++) {
		unsigned share =
		    p->cfg->graph.max_in_flight / n + (i < p->cfg->graph.max_in_flight % n ? 1 : 0);
		struct worker_conf wc = {.cfg = p->cfg,
		                         .policy = policy_of(p->cfg),
		                         .max_in_flight = share ? share : 1,
		                         .pacer = p->pacer,
		                         .auth = p->auth,
		                         .metrics = p->metrics,
		                         .forbidden_hinted = p->forbidden_hinted,
		                         .on_done = publish_on_job_done,
		                         .hooks = {.is_current = core_job_is_current,
		                                   .took_work = took_work,
		                                   .post_begin = post_begin,
		                                   .post_end = post_end,
		                                   .on_accepted = publish_record_operation},
		                         .arg = p};
		if (!worker_new(&wc, &p->workers[i])) {
			snprintf(err, errcap, "cannot create HTTP worker");
			return false;
		}
		p->n_workers = i + 1;
		if (!worker_start(p->workers[i])) {
			snprintf(err, errcap, "cannot start HTTP worker thread");
			return false;
		}
	}
	return true;
}

bool pipeline_start(struct pipeline *p, char *err, size_t errcap)
{
	p->producer = kafka_producer_new(p->cfg, publish_on_delivery, p, err, errcap);
	if (!p->producer)
		return false;
	p->consumer = kafka_consumer_new(p->cfg, rebalance_on_rebalance, p, err, errcap);
	if (!p->consumer || !intake_open(p, err, errcap))
		return false;
	/* Before the workers: their first 429 is shared too. */
	if (!blockshare_new(p->cfg, p->producer, p->pacer, p->metrics, &p->blockshare, err, errcap))
		return false;
	if (p->blockshare) {
		pacer_set_throttle_observer(p->pacer, blockshare_publish, p->blockshare);
		blockshare_wake_on(p->blockshare, p->wake_fd);
	}
	if (!start_workers(p, err, errcap))
		return false;
	auth_set_notify(p->auth, on_token_change, p);
	if (p->registry)
		metrics_set_collect_cb(p->registry, collect_metrics, p);
	if (!auth_start(p->auth)) {
		snprintf(err, errcap, "cannot start the token thread");
		return false;
	}
	return kafka_subscribe(p->consumer, p->cfg->kafka.input_topic, err, errcap);
}

bool pipeline_ready(struct pipeline *p)
{
	return p->group_joined && auth_profile_ready(p->auth, 0);
}

void pipeline_set_wait_hook(struct pipeline *p, void (*fn)(void *arg), void *arg)
{
	p->wait_hook = fn;
	p->wait_hook_arg = arg;
}

bool pipeline_progressing(struct pipeline *p, int64_t now, int64_t max_age_ms)
{
	if (p->waiting && now - p->wait_advanced_ms > max_age_ms)
		return false;
	for (unsigned i = 0; i < p->n_workers; i++)
		if (now - worker_heartbeat_ms(p->workers[i]) > max_age_ms)
			return false;
	return true;
}

bool pipeline_reload(struct pipeline *p, const struct cfg *new_cfg)
{
	if (new_cfg->n_tenants != p->cfg->n_tenants)
		return false;
	if (!auth_reload(p->auth, new_cfg))
		return false;
	keep_app_limits(p, new_cfg);
	rebalance_apply_share(p);
	blockshare_reload(p->blockshare, new_cfg);
	struct worker_policy policy = policy_of(new_cfg);
	for (unsigned i = 0; i < p->n_workers; i++)
		worker_set_policy(p->workers[i], &policy);
	/* Only auth keeps new_cfg, until the next reload: the cfg it replaced is unused now. */
	take_reloadable(p, new_cfg);
	return true;
}

void pipeline_begin_drain(struct pipeline *p)
{
	if (p->draining)
		return;
	p->draining = true;
	pause_all(p);
	for (unsigned i = 0; i < p->n_workers; i++)
		worker_stop(p->workers[i]);
}

/* Jobs that were never finished go away without a result: their offsets stay uncommitted. */
static void drop_unfinished(struct pipeline *p, struct job **jobs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		core_release(p, jobs[i]);
}

static void join_workers(struct pipeline *p)
{
	size_t handed_back = 0;
	for (unsigned i = 0; i < p->n_workers; i++) {
		struct job **jobs;
		size_t n = worker_join(p->workers[i], &jobs);
		drop_unfinished(p, jobs, n);
		handed_back += n;
		free(jobs);
	}
	void *queued[256];
	size_t n;
	while ((n = pacer_drain(p->pacer, queued, CP_ARRAY_LEN(queued))) > 0) {
		drop_unfinished(p, (struct job **)queued, n);
		handed_back += n;
	}
	while (p->followers) {
		struct job *next = p->followers->next_follower;
		core_release(p, p->followers);
		p->followers = next;
		handed_back++;
	}
	if (handed_back)
		log_notice("handed back %zu unfinished requests to the group", handed_back);
	p->workers_joined = true;
}

bool pipeline_drained(struct pipeline *p)
{
	if (!p->draining)
		return false;
	if (!p->workers_joined) {
		for (unsigned i = 0; i < p->n_workers; i++)
			if (!worker_exited(p->workers[i]))
				return false;
		join_workers(p);
	}
	return p->in_memory == 0;
}

/*
 * librdkafka 2.0.2 aborts the process (an assertion in the sticky assignor's state destroy,
 * its issue 4312) when a consumer is closed after its JoinGroup was answered and before its
 * first assignment arrived: a SIGTERM in the first seconds of a member joining a busy group.
 * So a member that has a member id but no assignment yet waits for it (taken and paused, see
 * take_assignment_while_draining), at most FIRST_ASSIGNMENT_WAIT_MS, before it leaves.
 */
static void await_first_assignment(struct pipeline *p)
{
	int64_t deadline = cptime_mono_ms() + FIRST_ASSIGNMENT_WAIT_MS;
	while (!p->group_joined && cptime_mono_ms() < deadline) {
		char *member = rd_kafka_memberid(p->consumer);
		bool joining = member && member[0];
		rd_kafka_mem_free(p->consumer, member);
		if (!joining)
			return;
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(p->consumer, 100);
		if (msg)
			rd_kafka_message_destroy(msg);
	}
}

void pipeline_finish(struct pipeline *p)
{
	if (!p->consumer)
		return;
	if (p->registry)
		metrics_set_collect_cb(p->registry, NULL, NULL);
	if (!p->workers_joined) {
		for (unsigned i = 0; i < p->n_workers; i++)
			worker_stop(p->workers[i]);
		join_workers(p);
	}
	p->finish_deadline_ms = cptime_mono_ms() + PIPELINE_FLUSH_MS;
	rd_kafka_resp_err_t err =
	    rd_kafka_flush(p->producer, core_within_finish(p, PIPELINE_FLUSH_MS));
	if (err)
		log_warning("final flush: %s", rd_kafka_err2str(err));
	for (size_t i = 0; i < p->n_parts; i++)
		if (p->parts[i].assigned)
			rebalance_write_handover_mark(p, (int32_t)i);
	rebalance_flush_handover_marks(p);
	core_store_offsets(p);
	err = core_commit_within(p, core_within_finish(p, COMMIT_WAIT_MS));
	if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
		log_warning("final commit failed: %s", rd_kafka_err2str(err));
	intake_close(p);
	await_first_assignment(p);
	err = rd_kafka_consumer_close(p->consumer);
	if (err)
		log_warning("leaving the consumer group: %s", rd_kafka_err2str(err));
	rd_kafka_destroy(p->consumer);
	p->consumer = NULL;
}

void pipeline_free(struct pipeline *p)
{
	if (!p)
		return;
	/* First the threads whose callbacks reach into p: a scrape in progress (waited for),
	 * then the token thread (on_token_change walks the workers). */
	if (p->registry)
		metrics_set_collect_cb(p->registry, NULL, NULL);
	auth_stop(p->auth);
	for (unsigned i = 0; i < p->n_workers; i++)
		worker_free(p->workers[i]);
	p->n_workers = 0;
	/* The workers were its only writers; the producer it writes through goes next. */
	blockshare_free(p->blockshare);
	p->blockshare = NULL;
	intake_close(p);
	if (p->consumer)
		rd_kafka_destroy(p->consumer);
	if (p->producer) {
		rd_kafka_flush(p->producer, 1000);
		rd_kafka_destroy(p->producer);
	}
	auth_free(p->auth);
	if (p->pacer) {
		void *queued[256];
		size_t n;
		while ((n = pacer_drain(p->pacer, queued, CP_ARRAY_LEN(queued))) > 0)
			for (size_t i = 0; i < n; i++)
				job_free(queued[i]);
		pacer_free(p->pacer);
	}
	while (p->followers) {
		struct job *next = p->followers->next_follower;
		job_free(p->followers);
		p->followers = next;
	}
	publish_reproduce_drop_all(p);
	state_free(p->state);
	offtrack_free(p->offsets);
	pipeline_metrics_free(p->metrics);
	free(p->parts);
	free(p->generations);
	free(p->posting);
	pthread_mutex_destroy(&p->counters_lock);
	pthread_mutex_destroy(&p->reproduce_lock);
	free(p);
}
