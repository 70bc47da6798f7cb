/*
 * pipeline_rebalance.c - partitions coming and going, and this instance's share of [limits].
 *
 * Owns: the assignment and revoke steps (restore, generations, forwarding to intake), the
 * hand-over at a revoke (waiting for POSTs in flight, flush, marks, commit), the hand-over
 * marks, tombstones of restored requests past retention, and the share of [limits].
 * Invariants: a partition's state is restored before any of its events is taken (or the
 * daemon stops); at a revoke no POST of ours is in flight and every outcome is flushed
 * before the partition goes (within the bounds in architecture.md); every assign and
 * revoke starts a new generation, so older work is recognised and dropped.
 * Callers: librdkafka's rebalance callback (rebalance_on_rebalance, on the Kafka thread, set
 * by pipeline_start); pipeline.c (reload, finish). Calls dispatch (dropping followers),
 * publish (records) and core.
 */
#include <stdio.h>
#include <string.h>

#include "cptime.h"
#include "kafka.h"
#include "log.h"
#include "pipeline_int.h"
#include "staterec.h"

/* How long the start waits for the producer's topic metadata (it goes on without). */
#define WARM_UP_MS 5000
/* A revoke waits for POSTs in flight: at most one request timeout, plus this. */
#define REVOKE_SLACK_MS 5000
/* Waiting for the hand-over marks, after the results they cover are flushed. */
#define MARK_FLUSH_MS 5000
/* How long an assignment waits for the input topic's partition count (the limits' share). */
#define METADATA_WAIT_MS 2000

static void learn_input_partitions(struct pipeline *p);

static void new_generation(struct pipeline *p, int32_t partition)
{
	atomic_store(&p->generations[partition], ++p->next_generation);
}

/* A restored request past retention: its tombstone keeps the compacted topic bounded. */
static void tombstone(const char *id, int32_t partition, void *arg)
{
	struct pipeline *p = arg;
	rd_kafka_resp_err_t err =
	    publish_produce(p, p->cfg->kafka.state_topic, partition, id, strlen(id), NULL, 0,
	                    RD_KAFKA_MSG_F_COPY, NULL, NULL);
	if (err)
		log_warning("cannot tombstone %s: %s", id, rd_kafka_err2str(err));
}

/* The state of a partition is restored before any of its events is processed. */
static bool restore_partition(struct pipeline *p, int32_t partition)
{
	char err[CP_ERRSTR_SIZE];
	size_t records = 0;
	int64_t started = cptime_mono_ms();
	int64_t retention = p->state_retention_ms;
	if (!state_restore(p->state, partition, retention, tombstone, p, &records, err,
	                   sizeof err)) {
		log_error("cannot restore request state: %s", err);
		return false;
	}
	log_info("restored state of partition %d: %zu records in %lld ms", (int)partition, records,
	         (long long)(cptime_mono_ms() - started));
	return true;
}

/* The partition's messages go to the intake queue, read as far as the credit goes. */
static bool forward_to_intake(struct pipeline *p, const char *topic, int32_t partition)
{
	rd_kafka_queue_t *q = rd_kafka_queue_get_partition(p->consumer, topic, partition);
	if (!q)
		return false;
	rd_kafka_queue_forward(q, p->messages);
	rd_kafka_queue_destroy(q);
	return true;
}

static void take_handover_mark(struct pipeline *p, struct partition_state *ps, int32_t partition)
{
	ps->answered_below = -1;
	if (!state_answered_below(p->state, partition, &ps->answered_below))
		return;
	log_info("partition %d: offsets below %lld were answered by its previous owner",
	         (int)partition, (long long)ps->answered_below);
}

/*
 * Writes the hand-over mark of a partition this instance still owns: the offsets its
 * results cover. The commit beside it can be refused while the group rebalances; the
 * mark, in the state topic the next owner restores, cannot.
 */
void rebalance_write_handover_mark(struct pipeline *p, int32_t partition)
{
	char value[24];
	int64_t next;
	if (!offtrack_position(p->offsets, partition, &next))
		return;
	int len = snprintf(value, sizeof value, "%lld", (long long)next);
	rd_kafka_headers_t *h = staterec_mark_headers();
	if (!h) {
		log_warning("out of memory writing the hand-over mark of partition %d",
		            (int)partition);
		return;
	}
	rd_kafka_resp_err_t err = publish_produce(p, p->cfg->kafka.state_topic, partition,
	                                          STATE_MARK_KEY, strlen(STATE_MARK_KEY), value,
	                                          (size_t)len, RD_KAFKA_MSG_F_COPY, h, NULL);
	if (err)
		log_warning("cannot write the hand-over mark of partition %d: %s", (int)partition,
		            rd_kafka_err2str(err));
}

void rebalance_flush_handover_marks(struct pipeline *p)
{
	rd_kafka_resp_err_t err = rd_kafka_flush(p->producer, core_within_finish(p, MARK_FLUSH_MS));
	if (err)
		log_warning("hand-over marks: %s", rd_kafka_err2str(err));
}

/* An assignment that arrives while stopping is taken and paused: it is only given back. */
static void take_assignment_while_draining(struct pipeline *p,
                                           rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_error_t *error = rd_kafka_incremental_assign(p->consumer, parts);
	if (error) {
		log_error("incremental assign failed: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
	rd_kafka_pause_partitions(p->consumer, parts);
	p->group_joined = true;
}

static void on_assign(struct pipeline *p, rd_kafka_topic_partition_list_t *parts)
{
	if (p->draining) {
		take_assignment_while_draining(p, parts);
		return;
	}
	for (int i = 0; i < parts->cnt; i++) {
		int32_t id = parts->elems[i].partition;
		struct partition_state *ps = core_partition(p, id);
		if (!ps || id >= MAX_PARTITIONS || !restore_partition(p, id) ||
		    !forward_to_intake(p, parts->elems[i].topic, id)) {
			/* Processing without the state could create a group chat twice. */
			atomic_store(&p->fatal, true);
			continue;
		}
		ps->assigned = true;
		ps->refetch_pending = false;
		ps->refetch_tries = 0;
		take_handover_mark(p, ps, id);
		new_generation(p, id);
		offtrack_drop_partition(p->offsets, id);
		log_info("assigned %s [%d]", parts->elems[i].topic, id);
	}
	learn_input_partitions(p);
	rebalance_apply_share(p);
	/* Once the state topic is known to exist (a producer may create what it asks for). */
	if (!p->producer_warm && !atomic_load(&p->fatal)) {
		kafka_warm_up(p->producer, p->cfg->kafka.state_topic, WARM_UP_MS);
		kafka_warm_up(p->producer, p->cfg->kafka.output_topic, WARM_UP_MS);
		p->producer_warm = true;
	}
	rd_kafka_error_t *error = rd_kafka_incremental_assign(p->consumer, parts);
	if (error) {
		log_error("incremental assign failed: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
	if (p->draining)
		rd_kafka_pause_partitions(p->consumer, parts);
	p->group_joined = true;
}

static bool posting_any(struct pipeline *p, const rd_kafka_topic_partition_list_t *parts)
{
	for (int i = 0; i < parts->cnt; i++)
		if (atomic_load(&p->posting[parts->elems[i].partition]) > 0)
			return true;
	return false;
}

/*
 * Before a partition goes to another instance, no POST of ours may still be in the air
 * and every outcome must be in the state topic: otherwise the new owner could create a
 * group chat that we are creating too. New generations stop our workers from starting
 * anything for these partitions; then we wait for the POSTs in flight and flush.
 */
static void hand_over(struct pipeline *p, rd_kafka_topic_partition_list_t *parts)
{
	int64_t deadline =
	    cptime_mono_ms() + (int64_t)(p->cfg->graph.request_timeout_s * 1000) + REVOKE_SLACK_MS;
	/* Bounded by the request timeout; the POSTs are the workers', whose heartbeats
	 * pipeline_progressing watches. */
	while (posting_any(p, parts) && cptime_mono_ms() < deadline) {
		rd_kafka_poll(p->producer, 20);
		core_wait_tick(p, true);
	}
	if (posting_any(p, parts))
		log_warning("revoke: POSTs still in flight after the request timeout");
	rd_kafka_resp_err_t err =
	    rd_kafka_flush(p->producer, core_within_finish(p, PIPELINE_FLUSH_MS));
	if (err)
		log_warning("revoke: flushing results: %s", rd_kafka_err2str(err));
	for (int i = 0; i < parts->cnt; i++)
		rebalance_write_handover_mark(p, parts->elems[i].partition);
	rebalance_flush_handover_marks(p);
	core_store_offsets(p);
	err = core_commit_within(p, core_within_finish(p, COMMIT_WAIT_MS));
	if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
		log_warning("commit before revoke failed: %s", rd_kafka_err2str(err));
}

static bool follower_revoked(struct pipeline *p, struct job *job)
{
	return !core_job_is_current(job, p);
}

static void on_revoke(struct pipeline *p, rd_kafka_topic_partition_list_t *parts, bool lost)
{
	for (int i = 0; i < parts->cnt; i++) {
		int32_t id = parts->elems[i].partition;
		if (id >= MAX_PARTITIONS)
			continue;
		struct partition_state *ps = core_partition(p, id);
		if (ps && !lost)
			ps->handing_over = atomic_load(&p->generations[id]);
		new_generation(p, id);
	}
	if (!lost)
		hand_over(p, parts);
	for (int i = 0; i < parts->cnt; i++) {
		int32_t id = parts->elems[i].partition;
		struct partition_state *ps = core_partition(p, id);
		if (!ps)
			continue;
		ps->assigned = false;
		ps->handing_over = 0;
		offtrack_drop_partition(p->offsets, id);
		state_drop_partition(p->state, id);
		log_info("%s %s [%d]", lost ? "lost" : "revoked", parts->elems[i].topic, id);
	}
	rebalance_apply_share(p);
	dispatch_drop_followers(p, follower_revoked);
	rd_kafka_error_t *error = rd_kafka_incremental_unassign(p->consumer, parts);
	if (error) {
		log_error("incremental unassign failed: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
}

void rebalance_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	struct pipeline *p = opaque;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
		on_assign(p, parts);
	else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
		on_revoke(p, parts, rd_kafka_assignment_lost(rk));
	else
		log_error("rebalance error: %s", rd_kafka_err2str(err));
}

/* Input partitions this instance owns (the Kafka thread's view of the assignment). */
static size_t owned_partitions(const struct pipeline *p)
{
	size_t n = 0;
	for (size_t i = 0; i < p->n_parts; i++)
		n += p->parts[i].assigned;
	return n;
}

/*
 * Scale-out shares Graph's limits (docs/scheduling.md, "Several instances"): each instance
 * sends owned / total input partitions of [limits], so the group together stays within
 * them whatever the number of instances. Called on every assignment change and reload;
 * AIMD keeps each tenant's position as a share of its limit. Until the topic's metadata
 * is known the share is the whole [limits] (as for one instance).
 */
void rebalance_apply_share(struct pipeline *p)
{
	size_t owned = owned_partitions(p), total = (size_t)p->input_partitions;
	/* Owning nothing (all revoked, not assigned yet) there is nothing to send: the last
	 * share stands, so that metrics and a reload do not show a made-up one. */
	if (total > 0 && owned > 0)
		p->share = (double)(owned < total ? owned : total) / (double)total;
	else if (total == 0)
		p->share = 1.0;
	double share = p->share;
	struct pacer_limits lim = p->app_limits;
	lim.per_tenant_limit *= share;
	lim.global_limit *= share;
	if (!pacer_set_limits(p->pacer, &lim))
		log_warning("limits: cannot apply this instance's share %.4g", share);
	for (size_t i = 0; i < p->n_app_tenants; i++)
		(void)pacer_set_tenant_limit(p->pacer, i, p->app_tenant_limits[i] * share);
	log_info("limits: this instance owns %zu of %zu partitions of %s: it sends %.4g of "
	         "[limits]",
	         owned, total, p->cfg->kafka.input_topic, share);
}

/* The input topic's partition count from the cluster (kept when the metadata fails). */
static void learn_input_partitions(struct pipeline *p)
{
	int n = kafka_partition_count(p->consumer, p->cfg->kafka.input_topic, METADATA_WAIT_MS);
	if (n > 0)
		p->input_partitions = n;
	else if (p->input_partitions == 0)
		log_warning("limits: partitions of %s unknown: this instance takes the whole "
		            "[limits] until they are known",
		            p->cfg->kafka.input_topic);
}
