/* pipeline.c - the Kafka thread: consume, validate, queue, publish, store offsets. */
#include "pipeline.h"

#include <json-c/json.h>
#include <librdkafka/rdkafka.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "auth.h"
#include "chatreq.h"
#include "cptime.h"
#include "event.h"
#include "graphreq.h"
#include "job.h"
#include "kafka.h"
#include "log.h"
#include "offtrack.h"
#include "pipeline_metrics.h"
#include "result.h"
#include "pacer.h"
#include "state.h"
#include "worker.h"

#define MAX_WORKERS       16
#define MESSAGES_PER_TURN 500
/*
 * Sendable jobs (and group chats waiting for their intent's ack) kept ahead of the workers:
 * a quarter of max_in_flight, at least this many, which covers the intent's round trip to
 * the broker at 10,000+ events/s (docs/performance.md).
 */
#define MIN_READ_AHEAD 256
/* Results awaiting the broker's ack, per unit of read-ahead: room for bursty acks. */
#define ACKS_PER_READ_AHEAD 4
/* Offsets finished behind a slow one still cost a little memory each: bounded too. */
#define TRACKED_PER_QUEUED 4
#define MAX_PARTITIONS     (OFFTRACK_MAX_PARTITION + 1)
#define FORGET_EVERY_MS    (60 * 1000)
/* How long the start waits for the producer's topic metadata (it goes on without). */
#define WARM_UP_MS 5000
/* An unreadable input message is fetched again after this, doubling up to the max. */
#define REFETCH_BASE_MS 100
#define REFETCH_MAX_MS  30000
/* How long a stop waits for a first assignment already under way (await_first_assignment). */
#define FIRST_ASSIGNMENT_WAIT_MS 10000
/* A revoke waits for POSTs in flight: at most one request timeout, plus this. */
#define REVOKE_SLACK_MS 5000
/* Waiting for the hand-over marks, after the results they cover are flushed. */
#define MARK_FLUSH_MS 5000
/* Waiting for the coordinator to answer a commit (revoke, finish). */
#define COMMIT_WAIT_MS 5000
/* How long an assignment waits for the input topic's partition count (the limits' share). */
#define METADATA_WAIT_MS 2000
/*
 * A record the broker refused is produced again after a backoff (doubling from the base,
 * up to the max); a job's records are given up after this many refusals.
 */
#define REFUSALS_MAX         5
#define REPRODUCE_BASE_MS    100
#define REPRODUCE_MAX_MS     10000

/*
 * A record that failed (a delivery report with an error, or refused by produce()), waiting
 * to be judged (err) and produced again (due_ms). Any thread adds; the Kafka thread judges.
 */
struct reproduce {
	struct reproduce *next;
	rd_kafka_resp_err_t err; /* the failure still to judge; 0 once judged */
	int64_t due_ms;
	char *topic;
	int32_t partition;
	void *key, *value;
	size_t key_len, len;
	rd_kafka_headers_t *headers;
	struct job *job;
};

/* What the Kafka thread knows of one input partition. */
struct partition_state {
	bool assigned;
	bool dirty; /* offsets progressed since the last store */
	/*
	 * During a revoke's hand-over, the generation being given up: its workers start
	 * nothing more, but the results they flush still count, so that they are committed
	 * before the partition goes (0: none).
	 */
	uint64_t handing_over;
	/*
	 * A consumer error at refetch_offset (a message that could not be read): nothing at or
	 * after it is taken until it is fetched again, at refetch_due_ms; refetch_tries drives
	 * the backoff and resets once a message past it is taken.
	 */
	bool refetch_pending;
	int64_t refetch_offset, refetch_due_ms;
	unsigned refetch_tries;
	/* Offsets below this were answered by the partition's previous owner (its hand-over
	 * mark, state.h): they are skipped, not answered twice. -1: none. */
	int64_t answered_below;
};

struct pipeline {
	/* The configuration the pipeline was built with: its fixed keys hold until exit. */
	const struct cfg *cfg;
	/* Reloadable keys read outside the workers and the scheduler (pipeline_reload):
	 * the first two by the Kafka thread, window_s by the metrics thread. */
	int64_t state_retention_ms, op_timeout_ms;
	_Atomic double window_s;
	struct metrics *registry;
	struct pipeline_metrics *metrics;
	rd_kafka_t *consumer, *producer;
	struct auth *auth;
	struct pacer *pacer;
	/*
	 * [limits] as configured (the app's limits, the last reload's): the scheduler gets this
	 * instance's share of them, owned input partitions / the input topic's partitions.
	 */
	struct pacer_limits app_limits;
	double app_tenant_limits[CFG_MAX_TENANTS];
	size_t n_app_tenants;
	int input_partitions; /* from the topic's metadata; 0: not known (the whole limits) */
	double share;         /* of app_limits this instance sends now (apply_share) */
	struct offtrack *offsets;
	struct worker *workers[MAX_WORKERS];
	unsigned n_workers, next_worker;
	char bind_root[JOB_URL_MAX];
	struct event_limits limits;

	struct partition_state *parts;
	size_t n_parts;
	/*
	 * Per partition, shared with the workers: the assignment generation (changed on every
	 * assign and revoke, so work of an earlier assignment is recognised and dropped) and
	 * the POSTs in flight (a revoke waits for them before giving the partition away).
	 */
	_Atomic uint64_t *generations;
	atomic_uint *posting;
	uint64_t next_generation;

	/*
	 * Intake: every assigned partition's fetch queue forwards to `messages`, which the
	 * Kafka thread reads only as far as its credit goes (see credit()); the rest waits in
	 * librdkafka's bounded pre-fetch, so no partition is ever paused for backpressure and no
	 * resume costs a re-fetch. wake_fd (an eventfd) wakes the thread: librdkafka writes it
	 * when a queue it sleeps on gets work, the workers and release() when credit returns.
	 */
	rd_kafka_queue_t *messages;
	int wake_fd;
	atomic_bool wants_credit;
	size_t read_ahead;

	struct state *state;
	struct job *followers; /* duplicates waiting for the result of an id in progress */
	struct reproduce *reproduce; /* failed records waiting for their backoff */
	pthread_mutex_t reproduce_lock;
	int64_t last_forget_ms;

	/* Jobs consumed and not yet acknowledged or abandoned; of those, the ones whose
	 * result is already in the producer (cheap: only waiting for the broker's ack). */
	atomic_size_t in_memory;
	atomic_size_t awaiting_ack;
	atomic_size_t memory_bytes; /* of the jobs in memory: see event_memory_bytes() */
	size_t largest_event;       /* memory_bytes of the largest event taken so far */
	size_t intents_pending; /* group chats waiting for their intent's ack (Kafka thread) */
	atomic_bool paused;     /* the memory bound (max_queued) stops intake */
	bool draining, workers_joined, group_joined, producer_warm;
	/* pipeline_finish: one deadline for its flushes and commits, including the revoke that
	 * leaving the group runs (0: none). */
	int64_t finish_deadline_ms;
	atomic_bool fatal;
	atomic_bool forbidden_hinted[CFG_MAX_TENANTS]; /* the workers' 403 hint, once per tenant */
	struct pipeline_counters counters;
	pthread_mutex_t counters_lock;

	/*
	 * A long wait of the Kafka thread (restore, fetch, hand-over) in progress: since when
	 * it last advanced, and whom to tell on every turn of it (pipeline_set_wait_hook).
	 */
	bool waiting;
	int64_t wait_advanced_ms;
	void (*wait_hook)(void *arg);
	void *wait_hook_arg;
};

/* ---- long waits ---- */

/* One turn of a long wait; the caller's hook feeds the watchdog if it advanced lately. */
static void wait_tick(struct pipeline *p, bool advanced)
{
	int64_t now = cptime_mono_ms();
	if (!p->waiting || advanced)
		p->wait_advanced_ms = now;
	p->waiting = true;
	if (p->wait_hook)
		p->wait_hook(p->wait_hook_arg);
}

static void on_state_progress(bool advanced, void *arg)
{
	wait_tick(arg, advanced);
}

/* ---- partitions ---- */

static struct partition_state *partition(struct pipeline *p, int32_t id)
{
	if (id < 0)
		return NULL;
	if ((size_t)id >= p->n_parts) {
		size_t n = (size_t)id + 1;
		struct partition_state *parts = realloc(p->parts, n * sizeof *parts);
		if (!parts)
			return NULL;
		memset(parts + p->n_parts, 0, (n - p->n_parts) * sizeof *parts);
		p->parts = parts;
		p->n_parts = n;
	}
	return &p->parts[id];
}

static bool is_input_topic(struct pipeline *p, const char *topic)
{
	return strcmp(topic, p->cfg->kafka.input_topic) == 0;
}

/* Stores, for every partition that progressed, the next offset to commit. */
static void store_offsets(struct pipeline *p)
{
	rd_kafka_topic_partition_list_t *list = NULL;
	for (size_t i = 0; i < p->n_parts; i++) {
		struct partition_state *ps = &p->parts[i];
		int64_t next;
		if (!ps->assigned || !ps->dirty)
			continue;
		ps->dirty = false;
		if (!offtrack_committable(p->offsets, (int32_t)i, &next))
			continue;
		if (!list && !(list = rd_kafka_topic_partition_list_new(8)))
			return;
		rd_kafka_topic_partition_list_add(list, p->cfg->kafka.input_topic, (int32_t)i)
		    ->offset = next;
	}
	if (!list)
		return;
	rd_kafka_resp_err_t err = rd_kafka_offsets_store(p->consumer, list);
	if (err && err != RD_KAFKA_RESP_ERR__STATE)
		log_warning("cannot store offsets: %s", rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(list);
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

static size_t tracked_limit(const struct pipeline *p)
{
	return p->cfg->kafka.max_queued * TRACKED_PER_QUEUED;
}

static size_t room_under(size_t used, size_t bound)
{
	return used < bound ? bound - used : 0;
}

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

/*
 * Memory: work still to do counts against max_queued; results waiting for the broker's
 * acknowledgement against their own, smaller bound (a stalled producer stops intake
 * instead of piling up results); offsets finished behind a slow one are bounded too.
 */
static size_t memory_room(const struct pipeline *p)
{
	size_t in_memory = atomic_load(&p->in_memory);
	size_t awaiting = atomic_load(&p->awaiting_ack);
	size_t to_do = in_memory > awaiting ? in_memory - awaiting : 0;
	size_t room = room_under(to_do, p->cfg->kafka.max_queued);
	if (atomic_load(&p->memory_bytes) >= p->cfg->kafka.max_queued_bytes)
		room = 0;
	room = min_size(room, room_under(awaiting, p->read_ahead * ACKS_PER_READ_AHEAD));
	return min_size(room, room_under(offtrack_tracked_total(p->offsets), tracked_limit(p)));
}

/* The paused flag (metrics, STATUS) says whether a memory bound holds intake back. */
static void note_memory_bound(struct pipeline *p, size_t room)
{
	bool paused = room == 0;
	if (paused != p->paused)
		log_debug("%s intake: %zu events in memory, %zu awaiting acks",
		          paused ? "stopping" : "resuming", (size_t)atomic_load(&p->in_memory),
		          (size_t)atomic_load(&p->awaiting_ack));
	p->paused = paused;
}

/*
 * How many events may be taken from librdkafka now. Besides the memory bound, a
 * read-ahead bound: jobs that could be sent now but wait for a free worker slot are pure
 * queueing delay here (receivedAt counts from consumption), and in Kafka they cost
 * nothing, so at most read_ahead of them (with the group chats waiting for their intent's
 * acknowledgement) are held. Work waiting for tokens or a Retry-After is not sendable and
 * does not count: a throttled tenant never stops the others behind it in a partition.
 */
static size_t credit(struct pipeline *p)
{
	if (p->draining)
		return 0;
	size_t room = memory_room(p);
	note_memory_bound(p, room);
	if (room == 0)
		return 0;
	size_t ahead =
	    pacer_sendable(p->pacer, cptime_mono_ms(), p->read_ahead) + p->intents_pending;
	return min_size(room, room_under(ahead, p->read_ahead));
}

/*
 * Workers and releases call this after changing what credit() reads; cheap when nobody
 * waits. Sequentially consistent on both sides (the Kafka thread raises the flag, then
 * reads): one of the two sees the other, and the poll timeout bounds any miss anyway.
 */
static void wake_for_credit(struct pipeline *p)
{
	if (!atomic_load(&p->wants_credit) || !atomic_exchange(&p->wants_credit, false))
		return;
	uint64_t one = 1;
	if (write(p->wake_fd, &one, sizeof one) < 0) {
		/* EAGAIN: the counter is full, so a wake-up is pending anyway. */
	}
}

/* ---- rebalances ---- */

static bool job_is_current(const struct job *job, void *arg)
{
	const struct pipeline *p = arg;
	return atomic_load(&p->generations[job->partition]) == job->generation;
}

/* A result of this job may still move its partition's offsets and state. */
static bool settles_here(struct pipeline *p, const struct job *job)
{
	struct partition_state *ps = partition(p, job->partition);
	return ps && ps->assigned &&
	       (job_is_current(job, p) ||
	        (ps->handing_over && job->generation == ps->handing_over));
}

static void new_generation(struct pipeline *p, int32_t partition)
{
	atomic_store(&p->generations[partition], ++p->next_generation);
}

static rd_kafka_resp_err_t produce(struct pipeline *p, const char *topic, int32_t partition,
                                   const void *key, size_t key_len, void *value, size_t len,
                                   int flags, rd_kafka_headers_t *headers, struct job *job);

/* A restored request past retention: its tombstone keeps the compacted topic bounded. */
static void tombstone(const char *id, int32_t partition, void *arg)
{
	struct pipeline *p = arg;
	rd_kafka_resp_err_t err = produce(p, p->cfg->kafka.state_topic, partition, id, strlen(id),
	                                  NULL, 0, RD_KAFKA_MSG_F_COPY, NULL, NULL);
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

static void apply_share(struct pipeline *p);
static void learn_input_partitions(struct pipeline *p);

/* A wait of up to want_ms, cut to what is left of the finish deadline when there is one. */
static int within_finish(const struct pipeline *p, int want_ms)
{
	if (!p->finish_deadline_ms)
		return want_ms;
	int64_t left = p->finish_deadline_ms - cptime_mono_ms();
	return left <= 0 ? 0 : left < want_ms ? (int)left : want_ms;
}

/*
 * Commits the stored offsets and waits at most timeout_ms for the coordinator's answer: a
 * synchronous rd_kafka_commit waits without a bound for a coordinator that is away.
 */
static rd_kafka_resp_err_t commit_within(struct pipeline *p, int timeout_ms)
{
	rd_kafka_queue_t *q = rd_kafka_queue_new(p->consumer);
	if (!q)
		return RD_KAFKA_RESP_ERR__NOENT;
	rd_kafka_resp_err_t err = rd_kafka_commit_queue(p->consumer, NULL, q, NULL, NULL);
	if (!err) {
		rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms);
		err = ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT;
		if (ev)
			rd_kafka_event_destroy(ev);
	}
	rd_kafka_queue_destroy(q);
	return err;
}

static void take_handover_mark(struct pipeline *p, struct partition_state *ps, int32_t partition)
{
	ps->answered_below = -1;
	if (!state_answered_below(p->state, partition, &ps->answered_below))
		return;
	log_info("partition %d: offsets below %lld were answered by its previous owner", (int)partition,
	         (long long)ps->answered_below);
}

/*
 * Writes the hand-over mark of a partition this instance still owns: the offsets its
 * results cover. The commit beside it can be refused while the group rebalances; the
 * mark, in the state topic the next owner restores, cannot.
 */
static void write_handover_mark(struct pipeline *p, int32_t partition)
{
	char value[24];
	int64_t next;
	if (!offtrack_position(p->offsets, partition, &next))
		return;
	int len = snprintf(value, sizeof value, "%lld", (long long)next);
	rd_kafka_headers_t *h = staterec_mark_headers();
	if (!h) {
		log_warning("out of memory writing the hand-over mark of partition %d", (int)partition);
		return;
	}
	rd_kafka_resp_err_t err =
	    produce(p, p->cfg->kafka.state_topic, partition, STATE_MARK_KEY, strlen(STATE_MARK_KEY),
	            value, (size_t)len, RD_KAFKA_MSG_F_COPY, h, NULL);
	if (err)
		log_warning("cannot write the hand-over mark of partition %d: %s", (int)partition,
		            rd_kafka_err2str(err));
}

static void flush_handover_marks(struct pipeline *p)
{
	rd_kafka_resp_err_t err = rd_kafka_flush(p->producer, within_finish(p, MARK_FLUSH_MS));
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
		struct partition_state *ps = partition(p, id);
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
	apply_share(p);
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
		wait_tick(p, true);
	}
	if (posting_any(p, parts))
		log_warning("revoke: POSTs still in flight after the request timeout");
	rd_kafka_resp_err_t err = rd_kafka_flush(p->producer, within_finish(p, PIPELINE_FLUSH_MS));
	if (err)
		log_warning("revoke: flushing results: %s", rd_kafka_err2str(err));
	for (int i = 0; i < parts->cnt; i++)
		write_handover_mark(p, parts->elems[i].partition);
	flush_handover_marks(p);
	store_offsets(p);
	err = commit_within(p, within_finish(p, COMMIT_WAIT_MS));
	if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
		log_warning("commit before revoke failed: %s", rd_kafka_err2str(err));
}

static void drop_followers(struct pipeline *p, bool (*drop)(struct pipeline *, struct job *));

static bool follower_revoked(struct pipeline *p, struct job *job)
{
	return !job_is_current(job, p);
}

static void on_revoke(struct pipeline *p, rd_kafka_topic_partition_list_t *parts, bool lost)
{
	for (int i = 0; i < parts->cnt; i++) {
		int32_t id = parts->elems[i].partition;
		if (id >= MAX_PARTITIONS)
			continue;
		struct partition_state *ps = partition(p, id);
		if (ps && !lost)
			ps->handing_over = atomic_load(&p->generations[id]);
		new_generation(p, id);
	}
	if (!lost)
		hand_over(p, parts);
	for (int i = 0; i < parts->cnt; i++) {
		int32_t id = parts->elems[i].partition;
		struct partition_state *ps = partition(p, id);
		if (!ps)
			continue;
		ps->assigned = false;
		ps->handing_over = 0;
		offtrack_drop_partition(p->offsets, id);
		state_drop_partition(p->state, id);
		log_info("%s %s [%d]", lost ? "lost" : "revoked", parts->elems[i].topic, id);
	}
	apply_share(p);
	drop_followers(p, follower_revoked);
	rd_kafka_error_t *error = rd_kafka_incremental_unassign(p->consumer, parts);
	if (error) {
		log_error("incremental unassign failed: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
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

/* ---- publishing results ---- */

static void count_outcome(struct pipeline *p, enum job_status status)
{
	pthread_mutex_lock(&p->counters_lock);
	if (status == JOB_SUCCEEDED)
		p->counters.succeeded++;
	else if (status == JOB_FAILED)
		p->counters.failed++;
	else if (status == JOB_REJECTED)
		p->counters.rejected++;
	pthread_mutex_unlock(&p->counters_lock);
}

/* Its result goes to the producer now: from here on it only waits for the ack. */
static void mark_result_queued(struct pipeline *p, struct job *job)
{
	if (!job->result_queued)
		atomic_fetch_add(&p->awaiting_ack, 1);
	job->result_queued = true;
}

/* A job leaves memory: abandoned (revoke, drain) or settled. Any thread. */
static void release(struct pipeline *p, struct job *job)
{
	if (job->result_queued)
		atomic_fetch_sub(&p->awaiting_ack, 1);
	atomic_fetch_sub(&p->memory_bytes, job->memory_bytes);
	atomic_fetch_sub(&p->in_memory, 1);
	job_free(job);
	wake_for_credit(p);
}

static void restart_followers(struct pipeline *p, const char *id);

static void job_settled(struct pipeline *p, struct job *job)
{
	/* A result from before a revoke no longer moves this assignment's offsets; one
	 * flushed by the revoke's hand-over does, so that it is committed. */
	bool current = settles_here(p, job);
	/* Looked up after settles_here: partition() may move the table. */
	struct partition_state *ps = partition(p, job->partition);
	if (current && offtrack_done(p->offsets, job->partition, job->offset) && ps)
		ps->dirty = true;
	if (current && job->ev && !state_set_active(p->state, job->ev->id, job->partition, false))
		log_warning("state: cannot clear the active mark of %s", job->ev->id);
	if (current && job->ev)
		restart_followers(p, job->ev->id);
	count_outcome(p, job->status);
	release(p, job);
}

static rd_kafka_resp_err_t produce(struct pipeline *p, const char *topic, int32_t partition,
                                   const void *key, size_t key_len, void *value, size_t len,
                                   int flags, rd_kafka_headers_t *headers, struct job *job)
{
	rd_kafka_resp_err_t err = rd_kafka_producev(
	    p->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
	    RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE(value, len), RD_KAFKA_V_MSGFLAGS(flags),
	    RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(job), RD_KAFKA_V_END);
	if (err && headers)
		rd_kafka_headers_destroy(headers); /* not consumed on failure */
	return err;
}

static bool record_failed(struct pipeline *p, const char *topic, int32_t partition,
                          const void *key, size_t key_len, const void *value, size_t len,
                          const rd_kafka_headers_t *headers, struct job *job,
                          rd_kafka_resp_err_t err);

/*
 * Queues one record, retrying while the producer queue is full. From worker threads
 * (block) librdkafka waits for space; the Kafka thread cannot wait on itself, so it
 * serves delivery reports meanwhile. headers are consumed either way.
 */
static bool queue_record(struct pipeline *p, const char *topic, int32_t partition, const void *key,
                         size_t key_len, const void *value, size_t len, rd_kafka_headers_t *headers,
                         struct job *job, bool block)
{
	int flags = RD_KAFKA_MSG_F_COPY | (block ? RD_KAFKA_MSG_F_BLOCK : 0);
	for (;;) {
		rd_kafka_headers_t *h = headers ? rd_kafka_headers_copy(headers) : NULL;
		rd_kafka_resp_err_t err =
		    produce(p, topic, partition, key, key_len, (void *)value, len, flags, h, job);
		if (!err)
			break;
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || block) {
			/* Refused before it left (too large, topic not authorized...): judged by
			 * the Kafka thread like a failed delivery, never a reason to exit. */
			bool kept = record_failed(p, topic, partition, key, key_len, value, len,
			                          headers, job, err);
			if (headers)
				rd_kafka_headers_destroy(headers);
			return kept;
		}
		rd_kafka_poll(p->producer, 50);
	}
	if (headers)
		rd_kafka_headers_destroy(headers);
	return true;
}

static void result_key(const struct job *job, const void **key, size_t *key_len)
{
	const char *id = job_id(job);
	*key = job->key;
	*key_len = job->key_len;
	if (!*key && id) {
		*key = id;
		*key_len = strlen(id);
	}
}

/* Headers a DLQ copy gets; a re-driven message may carry them already from its last trip. */
static const char *const dlq_header_names[] = {
    STATE_STATUS_HEADER,      "chatprov-error-code",       "chatprov-error-message",
    "chatprov-http-status",   "chatprov-reject-reason",    "chatprov-dlq-truncated",
    "chatprov-source-topic",  "chatprov-source-partition", "chatprov-source-offset"};

static bool add_header_num(rd_kafka_headers_t *h, const char *name, long long value)
{
	char num[32];
	snprintf(num, sizeof num, "%lld", value);
	return rd_kafka_header_add(h, name, -1, num, -1) == 0;
}

/*
 * Why a request is in the DLQ, so that an operator can select and re-drive it: its status,
 * the error (Graph's code and message where Graph answered), Graph's HTTP status when there
 * is one, and where the message came from.
 */
static bool add_dlq_headers(const struct pipeline *p, rd_kafka_headers_t *h, const struct job *job)
{
	const char *message = job->err_message ? job->err_message : "";
	bool ok = rd_kafka_header_add(h, STATE_STATUS_HEADER, -1, result_status_name(job->status),
	                              -1) == 0 &&
	          rd_kafka_header_add(h, "chatprov-error-code", -1, job->err_code, -1) == 0 &&
	          rd_kafka_header_add(h, "chatprov-error-message", -1, message, -1) == 0;
	if (ok && job->http_status > 0)
		ok = add_header_num(h, "chatprov-http-status", job->http_status);
	return ok &&
	       rd_kafka_header_add(h, "chatprov-source-topic", -1, p->cfg->kafka.input_topic, -1) ==
	           0 &&
	       add_header_num(h, "chatprov-source-partition", job->partition) &&
	       add_header_num(h, "chatprov-source-offset", job->offset);
}

/* The input headers, without what an earlier DLQ trip added. NULL: out of memory. */
static rd_kafka_headers_t *dlq_base_headers(const struct job *job)
{
	rd_kafka_headers_t *h =
	    job->headers ? rd_kafka_headers_copy(job->headers) : rd_kafka_headers_new(8);
	for (size_t i = 0; h && i < CP_ARRAY_LEN(dlq_header_names); i++)
		(void)rd_kafka_header_remove(h, dlq_header_names[i]);
	return h;
}

/* A failed request goes to the DLQ as it came (key, value, input headers), with why. */
static bool copy_failed_to_dlq(struct pipeline *p, struct job *job, bool block)
{
	rd_kafka_headers_t *h = dlq_base_headers(job);
	if (!h || !add_dlq_headers(p, h, job)) {
		if (h)
			rd_kafka_headers_destroy(h);
		log_error("out of memory copying a failed request to the DLQ");
		atomic_store(&p->fatal, true);
		return false;
	}
	return queue_record(p, p->cfg->kafka.dlq_topic, RD_KAFKA_PARTITION_UA, job->key,
	                    job->key_len, job->payload, job->payload_len, h, job, block);
}

/*
 * A done record also says when the request's first POST may have left, and a failed group
 * chat that may exist all the same (job_chat_may_exist) since when it may have been created:
 * a re-drive looks it up first (staterec.h).
 */
static rd_kafka_headers_t *done_headers(const struct job *job)
{
	int64_t since = 0;
	if (job_chat_may_exist(job)) {
		since = job->intent_wall_ms;
		if (!since && job->op_started_mono_ms)
			since = cptime_wall_ms() - (cptime_mono_ms() - job->op_started_mono_ms);
		if (since <= 0)
			since = job->received_wall_ms;
	}
	return staterec_done_headers(result_status_name(job->status), job->intent_wall_ms, since);
}

/*
 * The result goes to the output topic and, for a request Graph saw, the same bytes to the
 * state topic as its final record: a replay of a success is answered from there without
 * Graph. A failure is copied to the DLQ as well, for a re-drive.
 */
static bool publish_result(struct pipeline *p, struct job *job, bool block)
{
	size_t len = 0;
	char *value = result_render(job, &len);
	if (!value) {
		log_error("out of memory rendering a result");
		atomic_store(&p->fatal, true);
		return false;
	}
	const void *key;
	size_t key_len;
	result_key(job, &key, &key_len);
	bool with_state = job->ev != NULL;
	bool with_dlq = job->status == JOB_FAILED && p->cfg->kafka.dlq_topic[0];
	job->pending_deliveries += (with_state ? 2 : 1) + (with_dlq ? 1 : 0);
	mark_result_queued(p, job);
	bool ok = !with_dlq || copy_failed_to_dlq(p, job, block);
	rd_kafka_headers_t *h = job->headers ? rd_kafka_headers_copy(job->headers) : NULL;
	ok = ok && queue_record(p, p->cfg->kafka.output_topic, RD_KAFKA_PARTITION_UA, key,
	                        key_len, value, len, h, job, block);
	if (ok && with_state) {
		h = done_headers(job);
		ok = h && queue_record(p, p->cfg->kafka.state_topic, job->partition, job->ev->id,
		                       strlen(job->ev->id), value, len, h, job, block);
	}
	free(value);
	return ok;
}

static void on_job_done(struct job *job, void *arg)
{
	struct pipeline *p = arg;
	if (job->status == JOB_ABANDONED) {
		release(p, job);
		return;
	}
	struct log_ctx ctx = {.request_id = job_id(job),
	                      .chat_id = job->chat_id[0] ? job->chat_id : NULL,
	                      .graph_request_id =
	                          job->graph_request_id[0] ? job->graph_request_id : NULL,
	                      .client_request_id = job->client_request_id};
	log_with(job->status == JOB_SUCCEEDED ? LOG_LVL_INFO : LOG_LVL_NOTICE, &ctx,
	         "request %s after %u attempt(s)%s%s", result_status_name(job->status),
	         job->attempts, job->err_code[0] ? ": " : "", job->err_code);
	(void)publish_result(p, job, true);
}

/* A 202's operation is recorded so that any instance can follow it after a crash. */
static void record_operation(struct job *job, void *arg)
{
	struct pipeline *p = arg;
	/* The result of a resumed operation names the POST that started it (requestId). */
	struct staterec_operation op = {
	    .location = job->op_url,
	    .started_wall_ms = cptime_wall_ms() - (cptime_mono_ms() - job->op_started_mono_ms),
	    .attempts = job->attempts,
	    .request_id = job->graph_request_id};
	char *value = staterec_operation_value(&op);
	rd_kafka_headers_t *h = value ? staterec_headers(STATE_OPERATION) : NULL;
	if (!h || !queue_record(p, p->cfg->kafka.state_topic, job->partition, job->ev->id,
	                        strlen(job->ev->id), value, strlen(value), h, NULL, true))
		log_warning("cannot record the operation of %s", job->ev->id);
	free(value);
}

/* A worker took sendable jobs: the read-ahead has room again. */
static void took_work(void *arg)
{
	wake_for_credit(arg);
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

static void queue_job(struct pipeline *p, struct job *job);
static void answer_followers(struct pipeline *p, const rd_kafka_message_t *done);

/* An acknowledged state record: mirror it, and move its job on. */
static void on_state_delivered(struct pipeline *p, const rd_kafka_message_t *msg, struct job *job)
{
	struct partition_state *ps = partition(p, msg->partition);
	bool owned = job ? settles_here(p, job) : ps && ps->assigned;
	enum state_kind kind = staterec_kind(msg);
	if (owned && kind != STATE_NONE && !state_apply_delivered(p->state, msg))
		log_warning("state: out of memory mirroring a record");
	if (kind == STATE_DONE && owned)
		answer_followers(p, msg);
	if (kind == STATE_INTENT && job) {
		p->intents_pending--;
		/* The intent is durable: now the POST may go (unless we are leaving). */
		if (job_is_current(job, p) && !p->draining)
			queue_job(p, job);
		else
			release(p, job);
	} else if (kind == STATE_DONE && job && --job->pending_deliveries == 0) {
		job_settled(p, job);
	}
}

/* ---- failed records ---- */

static void reproduce_free(struct reproduce *r)
{
	if (r->headers)
		rd_kafka_headers_destroy(r->headers);
	free(r->topic);
	free(r->key);
	free(r->value);
	free(r);
}

static void *copy_bytes(const void *src, size_t len)
{
	void *out = malloc(len ? len : 1);
	if (out && len)
		memcpy(out, src, len);
	return out;
}

/*
 * A record failed: a copy of it (headers borrowed, copied) goes to the Kafka thread, which
 * judges it at its next turn. Any thread; false only when memory runs out (then fatal).
 */
static bool record_failed(struct pipeline *p, const char *topic, int32_t partition,
                          const void *key, size_t key_len, const void *value, size_t len,
                          const rd_kafka_headers_t *headers, struct job *job,
                          rd_kafka_resp_err_t err)
{
	struct reproduce *r = calloc(1, sizeof *r);
	if (!r)
		goto fail;
	r->err = err;
	r->topic = strdup(topic);
	r->partition = partition;
	r->key_len = key_len;
	r->key = key ? copy_bytes(key, key_len) : NULL;
	r->len = len;
	r->value = value ? copy_bytes(value, len) : NULL;
	r->headers = headers ? rd_kafka_headers_copy(headers) : NULL;
	r->job = job;
	if (!r->topic || (key && !r->key) || (value && !r->value) || (headers && !r->headers))
		goto fail;
	pthread_mutex_lock(&p->reproduce_lock);
	r->next = p->reproduce;
	p->reproduce = r;
	pthread_mutex_unlock(&p->reproduce_lock);
	return true;
fail:
	if (r)
		reproduce_free(r);
	log_error("out of memory keeping a failed record for %s", topic);
	atomic_store(&p->fatal, true);
	return false;
}

/* Errors that say the cluster could not take the record in time, not that it refused it. */
static bool is_timeout(rd_kafka_resp_err_t err)
{
	switch (err) {
	case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TIMED_OUT:
	case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
	case RD_KAFKA_RESP_ERR__QUEUE_FULL:
	case RD_KAFKA_RESP_ERR__TRANSPORT:
	case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
	case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
	case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
	case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
	case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
	case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
		return true;
	default:
		return false;
	}
}

/* The intent could not be written: the POST must not go; the request fails without Graph. */
static void intent_refused(struct pipeline *p, struct job *job, rd_kafka_resp_err_t err)
{
	char message[256];
	p->intents_pending--;
	if (!job_is_current(job, p) || p->draining) {
		release(p, job);
		return;
	}
	snprintf(message, sizeof message,
	         "the state topic refused the request's intent record (%s); Graph was not called",
	         rd_kafka_err2str(err));
	job_fail(job, 0, "StateWriteRefused", message, true);
	job->completed_wall_ms = cptime_wall_ms();
	pipeline_metrics_job_done(p->metrics, job);
	(void)publish_result(p, job, false);
}

/*
 * A record refused for good (docs/crash-safety.md, "Records the broker refuses"): its
 * request does not hold its partition's offsets back. A refused intent fails the request
 * without a POST; a result, a done record or a DLQ copy counts as delivered; a record
 * without a job (operation, tombstone) is dropped. The log and a metric say what was lost.
 */
static void give_up_record(struct pipeline *p, const struct reproduce *r, unsigned failures)
{
	struct log_ctx ctx = {.request_id = r->job ? job_id(r->job) : NULL};
	log_with(LOG_LVL_ERROR, &ctx,
	         "record for %s [%d] refused for good by the broker: %s; given up after %u "
	         "attempt(s)",
	         r->topic, (int)r->partition, rd_kafka_err2str(r->err), failures);
	pipeline_metrics_record_refused(p->metrics, r->topic);
	if (!r->job)
		return;
	if (strcmp(r->topic, p->cfg->kafka.state_topic) == 0 &&
	    kafka_header_is(r->headers, STATE_HEADER, staterec_kind_name(STATE_INTENT)))
		intent_refused(p, r->job, r->err);
	else if (--r->job->pending_deliveries == 0)
		job_settled(p, r->job);
}

/*
 * librdkafka has retried what it can: a failed record was either not taken in time (the
 * cluster unreachable for message.timeout.ms) or refused (too large, not authorized...). A
 * timed-out record is produced again without bound, so that an outage loses nothing; a
 * refused one at most REFUSALS_MAX times. Both after a backoff, never in a hot loop.
 * False: given up (r may go).
 */
static bool judge_failure(struct pipeline *p, struct reproduce *r, int64_t now)
{
	unsigned failures = r->job ? ++r->job->delivery_failures : 1;
	if (!is_timeout(r->err) && (!r->job || failures > REFUSALS_MAX)) {
		give_up_record(p, r, failures);
		return false;
	}
	unsigned shift = failures - 1 < 16 ? failures - 1 : 16;
	int64_t delay = REPRODUCE_BASE_MS << shift;
	if (delay > REPRODUCE_MAX_MS)
		delay = REPRODUCE_MAX_MS;
	log_warning("delivery to %s failed: %s; trying again in %lld ms", r->topic,
	            rd_kafka_err2str(r->err), (long long)delay);
	r->due_ms = now + delay;
	r->err = RD_KAFKA_RESP_ERR_NO_ERROR;
	return true;
}

/* False: the record left (queued, or given up); r may go. */
static bool serve_failed_record(struct pipeline *p, struct reproduce *r, int64_t now)
{
	if (r->err && !judge_failure(p, r, now))
		return false;
	if (r->due_ms > now)
		return true;
	rd_kafka_headers_t *h = r->headers ? rd_kafka_headers_copy(r->headers) : NULL;
	rd_kafka_resp_err_t err = produce(p, r->topic, r->partition, r->key, r->key_len, r->value,
	                                  r->len, RD_KAFKA_MSG_F_COPY, h, r->job);
	if (!err)
		return false;
	r->err = err; /* refused again before it left: judged like any failure */
	return judge_failure(p, r, now);
}

/* Kafka thread, every turn: judges new failures, produces again those whose backoff ended. */
static void reproduce_due(struct pipeline *p)
{
	pthread_mutex_lock(&p->reproduce_lock);
	struct reproduce *list = p->reproduce, *keep = NULL;
	p->reproduce = NULL;
	pthread_mutex_unlock(&p->reproduce_lock);
	int64_t now = cptime_mono_ms();
	while (list) {
		struct reproduce *r = list;
		list = r->next;
		if (serve_failed_record(p, r, now)) {
			r->next = keep;
			keep = r;
		} else {
			reproduce_free(r);
		}
	}
	if (!keep)
		return;
	struct reproduce *last = keep;
	while (last->next)
		last = last->next;
	pthread_mutex_lock(&p->reproduce_lock);
	last->next = p->reproduce;
	p->reproduce = keep;
	pthread_mutex_unlock(&p->reproduce_lock);
}

/* At exit: the jobs stay with whoever holds them; only the copies go. */
static void reproduce_drop_all(struct pipeline *p)
{
	while (p->reproduce) {
		struct reproduce *next = p->reproduce->next;
		reproduce_free(p->reproduce);
		p->reproduce = next;
	}
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	struct pipeline *p = opaque;
	struct job *job = msg->_private;
	(void)rk;
	if (msg->err) {
		rd_kafka_headers_t *hdrs = NULL;
		if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
			hdrs = NULL;
		if (msg->err == RD_KAFKA_RESP_ERR__FATAL) {
			log_error("delivery to %s failed: %s", rd_kafka_topic_name(msg->rkt),
			          rd_kafka_err2str(msg->err));
			atomic_store(&p->fatal, true);
		} else {
			record_failed(p, rd_kafka_topic_name(msg->rkt), msg->partition, msg->key,
			              msg->key_len, msg->payload, msg->len, hdrs, job, msg->err);
		}
		return;
	}
	if (strcmp(rd_kafka_topic_name(msg->rkt), p->cfg->kafka.state_topic) == 0)
		on_state_delivered(p, msg, job);
	else if (job && --job->pending_deliveries == 0)
		job_settled(p, job);
}

/* ---- admission ---- */

/*
 * The original message, byte for byte, with headers that say why it was rejected. A
 * message over max_message_bytes may not fit in a produce request at all: its copy keeps
 * the key and headers, an empty value, and chatprov-dlq-truncated with the original size.
 */
static bool copy_to_dlq(struct pipeline *p, const rd_kafka_message_t *msg, struct job *job,
                        const char *reason)
{
	bool truncate = msg->len > p->cfg->kafka.max_message_bytes;
	rd_kafka_headers_t *h = dlq_base_headers(job);
	if (!h || rd_kafka_header_add(h, "chatprov-reject-reason", -1, reason, -1) != 0 ||
	    !add_dlq_headers(p, h, job) ||
	    (truncate && !add_header_num(h, "chatprov-dlq-truncated", (long long)msg->len))) {
		if (h)
			rd_kafka_headers_destroy(h);
		return false;
	}
	return queue_record(p, p->cfg->kafka.dlq_topic, RD_KAFKA_PARTITION_UA, msg->key,
	                    msg->key_len, truncate ? NULL : msg->payload, truncate ? 0 : msg->len,
	                    h, job, false);
}

static void reject(struct pipeline *p, const rd_kafka_message_t *msg, struct job *job,
                   const char *reason)
{
	char id[EVENT_ID_MAX_BYTES + 1];
	if (!job->rejected_id && event_peek_id(msg->payload, msg->len, id, sizeof id))
		job->rejected_id = strdup(id);
	job->status = JOB_REJECTED;
	job_fail(job, 0, "InvalidRequest", reason, false);
	job->status = JOB_REJECTED;
	job->completed_wall_ms = cptime_wall_ms();
	struct log_ctx ctx = {.request_id = job->rejected_id};
	log_with(LOG_LVL_NOTICE, &ctx, "rejected %s [%d] @%lld: %s", rd_kafka_topic_name(msg->rkt),
	         (int)msg->partition, (long long)msg->offset, reason);
	if (p->cfg->kafka.dlq_topic[0]) {
		job->pending_deliveries = 1;
		if (!copy_to_dlq(p, msg, job, reason)) {
			log_error("cannot queue DLQ copy");
			atomic_store(&p->fatal, true);
			return;
		}
	}
	pipeline_metrics_job_done(p->metrics, job);
	(void)publish_result(p, job, false);
}

/* Turns a valid event into a job ready to queue; false: rejected with reason. */
static bool prepare(struct pipeline *p, struct job *job, char *reason, size_t cap)
{
	struct chatreq req;
	if (!chatreq_prepare(p->cfg, p->bind_root, job->ev, &req, reason, cap))
		return false;
	job->tenant = req.tenant;
	memcpy(job->client_request_id, req.client_request_id, sizeof job->client_request_id);
	job->body = req.body;
	return true;
}

static void wake_a_worker(struct pipeline *p)
{
	worker_wakeup(p->workers[p->next_worker]);
	p->next_worker = (p->next_worker + 1) % p->n_workers;
}

static void queue_job(struct pipeline *p, struct job *job)
{
	int64_t now = cptime_mono_ms();
	if (!pacer_push(p->pacer, job->tenant, job, now, now)) {
		/* Cannot happen while in_memory <= max_queued; fail loudly rather than drop. */
		log_error("scheduler refused an event: queue full");
		atomic_store(&p->fatal, true);
		return;
	}
	wake_a_worker(p);
}

/* Before the first POST of a group chat: the intent must be durable (see state.h). */
static void write_intent(struct pipeline *p, struct job *job)
{
	char value[128];
	job->intent_wall_ms = cptime_wall_ms();
	staterec_intent_value(value, sizeof value, job->intent_wall_ms, job->client_request_id);
	rd_kafka_headers_t *h = staterec_headers(STATE_INTENT);
	if (!h) {
		log_error("out of memory writing an intent");
		atomic_store(&p->fatal, true);
		return;
	}
	if (queue_record(p, p->cfg->kafka.state_topic, job->partition, job->ev->id,
	                 strlen(job->ev->id), value, strlen(value), h, job, false))
		p->intents_pending++;
}

/* A request answered before: publish the recorded result again; Graph is not asked. */
static bool replay(struct pipeline *p, struct job *job, const struct state_info *si)
{
	char err[CP_ERRSTR_SIZE];
	char *value = NULL;
	size_t len = 0;
	if (!state_fetch(p->state, job->ev->id, si->partition, si->offset, &value, &len, err,
	                 sizeof err)) {
		log_warning("cannot fetch the recorded result of %s: %s", job->ev->id, err);
		return false;
	}
	const void *key;
	size_t key_len;
	result_key(job, &key, &key_len);
	job->status = si->done_succeeded ? JOB_SUCCEEDED : JOB_FAILED;
	job->pending_deliveries = 1;
	mark_result_queued(p, job);
	struct log_ctx ctx = {.request_id = job->ev->id,
	                      .client_request_id = job->client_request_id};
	log_with(LOG_LVL_INFO, &ctx, "replayed request: answering with the recorded result");
	rd_kafka_headers_t *h = job->headers ? rd_kafka_headers_copy(job->headers) : NULL;
	bool ok = queue_record(p, p->cfg->kafka.output_topic, RD_KAFKA_PARTITION_UA, key, key_len,
	                       value, len, h, job, false);
	free(value);
	return ok;
}

/*
 * Picks up a 202 operation recorded by whichever instance started it. The recorded poll URL
 * is outside input like a fresh Location (a forged or stale record, another base_url): it
 * passes the same check, or the operation is not followed and the request is treated as
 * sent with an unknown outcome (a group chat is looked up, a one-on-one chat posted again),
 * so the bearer token never goes to another host.
 */
static void resume_operation(struct pipeline *p, struct job *job, const struct state_info *si)
{
	int64_t now_mono = cptime_mono_ms(), now_wall = cptime_wall_ms();
	int64_t started = si->op_started_wall_ms ? si->op_started_wall_ms : si->at_wall_ms;
	char version_root[JOB_URL_MAX], url[JOB_URL_MAX];
	if (snprintf(version_root, sizeof version_root, "%s/%s", p->cfg->graph.base_url,
	             p->cfg->graph.api_version) >= (int)sizeof version_root ||
	    !graphreq_resolve_location(version_root, si->op_url, url, sizeof url)) {
		log_warning("request %s: the recorded operation URL is not on %s: not polled",
		            job->ev->id, version_root);
		job->needs_lookup = job->ev->chat_type == EVENT_CHAT_GROUP;
		job->intent_wall_ms = si->at_wall_ms;
		return;
	}
	if (!job_set_string(&job->op_url, url)) {
		atomic_store(&p->fatal, true);
		return;
	}
	job->phase = JOB_PHASE_POLL;
	job->http_status = 202;
	snprintf(job->graph_request_id, sizeof job->graph_request_id, "%s", si->op_request_id);
	/* A record without the count still stands for the POST that got the 202. */
	job->attempts = si->op_attempts ? si->op_attempts : 1;
	/* The POST that got the 202 left just before it: the done record's lookup window. */
	if (!job->intent_wall_ms)
		job->intent_wall_ms = started;
	job->op_started_mono_ms = now_mono - (now_wall - started);
	job->op_deadline_mono_ms = job->op_started_mono_ms + p->op_timeout_ms;
	job->next_poll_mono_ms = now_mono;
}

static bool is_group(const struct job *job)
{
	return job->ev->chat_type == EVENT_CHAT_GROUP;
}

/*
 * A recorded failure whose chat cannot exist (Graph refused it, or it was never sent): the
 * request starts afresh. A failure that may have created the chat is recorded as an intent
 * instead (see state.h), so it is looked up first. A compacted record known only by its
 * fingerprint is confirmed first: another id's failure must not skip this one's lookup.
 */
static bool refused_before(struct pipeline *p, const struct job *job, const struct state_info *si)
{
	char err[CP_ERRSTR_SIZE];
	char *value = NULL;
	size_t len = 0;
	if (si->kind != STATE_DONE || si->done_succeeded)
		return false;
	if (!si->fingerprint_only)
		return true;
	bool mine = state_fetch(p->state, job->ev->id, si->partition, si->offset, &value, &len,
	                        err, sizeof err);
	free(value);
	if (!mine)
		log_warning("cannot confirm the recorded failure of %s: %s", job->ev->id, err);
	return mine;
}

/* Routes a valid job by what the state says about its id. */
static void dispatch(struct pipeline *p, struct job *job)
{
	struct state_info si;
	state_get(p->state, job->ev->id, &si);
	if (si.active) {
		/* The same id is in progress here: this copy gets that one's result. */
		job->next_follower = p->followers;
		p->followers = job;
		return;
	}
	/* Only a success is final; a failure is attempted again when its id comes back. */
	if (si.kind == STATE_DONE && si.done_succeeded && replay(p, job, &si))
		return;
	bool again = refused_before(p, job, &si);
	if (again) {
		struct log_ctx ctx = {.request_id = job->ev->id,
		                      .client_request_id = job->client_request_id};
		log_with(LOG_LVL_INFO, &ctx, "request failed before: attempting it again");
	}
	if (si.kind == STATE_OPERATION)
		resume_operation(p, job, &si);
	if ((si.kind == STATE_INTENT || (si.kind == STATE_DONE && !again)) && is_group(job)) {
		/* Sent before, outcome unknown (or its record unreadable): look before posting. */
		job->needs_lookup = true;
		job->answer_lost = true; /* the instance that sent it may have died with a 202 */
		job->intent_wall_ms = si.at_wall_ms;
	}
	if (!state_set_active(p->state, job->ev->id, job->partition, true)) {
		log_error("out of memory tracking request state");
		atomic_store(&p->fatal, true);
		return;
	}
	if ((si.kind == STATE_NONE || again) && is_group(job))
		write_intent(p, job);
	else
		queue_job(p, job);
}

/* The leader of an id finished: every waiting duplicate gets the same result bytes. */
static void answer_followers(struct pipeline *p, const rd_kafka_message_t *done)
{
	struct job **link = &p->followers;
	while (*link) {
		struct job *job = *link;
		if (done->key_len != strlen(job->ev->id) ||
		    memcmp(done->key, job->ev->id, done->key_len) != 0) {
			link = &job->next_follower;
			continue;
		}
		*link = job->next_follower;
		const void *key;
		size_t key_len;
		result_key(job, &key, &key_len);
		job->status = staterec_succeeded(done) ? JOB_SUCCEEDED : JOB_FAILED;
		job->pending_deliveries = 1;
		mark_result_queued(p, job);
		rd_kafka_headers_t *h = job->headers ? rd_kafka_headers_copy(job->headers) : NULL;
		(void)queue_record(p, p->cfg->kafka.output_topic, RD_KAFKA_PARTITION_UA, key,
		                   key_len, done->payload, done->len, h, job, false);
	}
}

/*
 * The leader of an id is gone. A duplicate that arrived after the leader's done record was
 * acknowledged (answer_followers had run) but before its result was: it starts again, and
 * the state now answers it (a replay of the done record, or a lookup if there is none).
 */
static void restart_followers(struct pipeline *p, const char *id)
{
	struct job **link = &p->followers, *restart = NULL;
	while (*link) {
		struct job *job = *link;
		if (strcmp(job->ev->id, id) != 0) {
			link = &job->next_follower;
			continue;
		}
		*link = job->next_follower;
		job->next_follower = restart;
		restart = job;
	}
	while (restart) {
		struct job *job = restart;
		restart = job->next_follower;
		job->next_follower = NULL;
		dispatch(p, job);
	}
}

/* Followers of a revoked partition go; those whose leader went get a new start. */
static void drop_followers(struct pipeline *p, bool (*drop)(struct pipeline *, struct job *))
{
	struct job *list = p->followers;
	p->followers = NULL;
	while (list) {
		struct job *job = list;
		list = job->next_follower;
		job->next_follower = NULL;
		if (drop(p, job)) {
			release(p, job);
			continue;
		}
		dispatch(p, job);
	}
}

/*
 * What an event costs in memory until its result is acknowledged: the job, its copies of
 * the key and headers, and twice the value (the decoded event, and the request body built
 * from it), three times with a DLQ (the value is kept for a DLQ copy). Large headers count:
 * each job keeps a copy to carry them to the result.
 */
static size_t event_memory_bytes(const rd_kafka_message_t *msg, bool keeps_value)
{
	size_t bytes = sizeof(struct job) + msg->key_len + (keeps_value ? 3 : 2) * msg->len;
	rd_kafka_headers_t *hdrs = NULL;
	const char *name;
	const void *value;
	size_t size;
	if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return bytes;
	for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) ==
	                   RD_KAFKA_RESP_ERR_NO_ERROR;
	     i++)
		bytes += strlen(name) + size + 16;
	return bytes;
}

static void admit(struct pipeline *p, const rd_kafka_message_t *msg)
{
	uint64_t generation = atomic_load(&p->generations[msg->partition]);
	struct job *job;
	if (!job_new(msg, generation, &job)) {
		log_error("out of memory admitting an event");
		atomic_store(&p->fatal, true);
		return;
	}
	if (!offtrack_begin(p->offsets, msg->partition, msg->offset)) {
		log_error("offset tracker refused [%d] @%lld", (int)msg->partition,
		          (long long)msg->offset);
		job_free(job);
		atomic_store(&p->fatal, true);
		return;
	}
	job->memory_bytes = event_memory_bytes(msg, p->cfg->kafka.dlq_topic[0] != '\0');
	if (job->memory_bytes > p->largest_event)
		p->largest_event = job->memory_bytes;
	atomic_fetch_add(&p->memory_bytes, job->memory_bytes);
	atomic_fetch_add(&p->in_memory, 1);
	pthread_mutex_lock(&p->counters_lock);
	p->counters.consumed++;
	pthread_mutex_unlock(&p->counters_lock);

	char reason[CP_ERRSTR_SIZE];
	if (!event_decode(msg->payload, msg->len, &p->limits, &job->ev, reason, sizeof reason) ||
	    !prepare(p, job, reason, sizeof reason)) {
		if (job->ev && !job->rejected_id)
			job->rejected_id = strdup(job->ev->id);
		event_free(job->ev);
		job->ev = NULL;
		reject(p, msg, job, reason);
		return;
	}
	if (p->cfg->kafka.dlq_topic[0] && !job_keep_payload(job, msg)) {
		/* A failure could not be copied to the DLQ as it came. */
		log_error("out of memory admitting an event");
		atomic_store(&p->fatal, true);
		release(p, job);
		return;
	}
	dispatch(p, job);
}

/*
 * A consumer error at an offset of an input partition (a corrupt batch librdkafka skips,
 * a fetch that failed there): the message at that offset was not read, so nothing after it
 * may be taken, or its offset would be committed past it without a result. The partition
 * is held there and sought back to it after a backoff (refetch_unreadable); a message that
 * stays unreadable holds its partition, with an error each time (docs/crash-safety.md).
 */
static void hold_unreadable(struct pipeline *p, struct partition_state *ps,
                            const rd_kafka_message_t *msg)
{
	if (ps->refetch_pending && msg->offset >= ps->refetch_offset)
		return; /* held at or before it already */
	unsigned shift = ps->refetch_tries < 16 ? ps->refetch_tries : 16;
	int64_t delay = (int64_t)REFETCH_BASE_MS << shift;
	if (delay > REFETCH_MAX_MS)
		delay = REFETCH_MAX_MS;
	ps->refetch_pending = true;
	ps->refetch_offset = msg->offset;
	ps->refetch_due_ms = cptime_mono_ms() + delay;
	ps->refetch_tries++;
	pipeline_metrics_unreadable(p->metrics);
	log_error("%s [%d] @%lld unreadable: %s; nothing after it is taken, fetching it again "
	          "in %lld ms",
	          rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset,
	          rd_kafka_message_errstr(msg), (long long)delay);
}

/* Seeks the held partitions whose backoff ended back to their unreadable message. */
static void refetch_unreadable(struct pipeline *p)
{
	int64_t now = cptime_mono_ms();
	for (size_t i = 0; i < p->n_parts; i++) {
		struct partition_state *ps = &p->parts[i];
		if (!ps->assigned || !ps->refetch_pending || ps->refetch_due_ms > now)
			continue;
		rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
		if (!list)
			return;
		rd_kafka_topic_partition_list_add(list, p->cfg->kafka.input_topic, (int32_t)i)
		    ->offset = ps->refetch_offset;
		/* Asynchronous; what was fetched before it is discarded by librdkafka. */
		rd_kafka_error_t *error = rd_kafka_seek_partitions(p->consumer, list, 0);
		if (error) {
			log_warning("cannot seek [%d] back to @%lld: %s", (int)i,
			            (long long)ps->refetch_offset, rd_kafka_error_string(error));
			rd_kafka_error_destroy(error);
			ps->refetch_due_ms = now + REFETCH_BASE_MS;
		} else {
			ps->refetch_pending = false;
		}
		rd_kafka_topic_partition_list_destroy(list);
	}
}

/* A message the previous owner answered (its hand-over mark): only its offset moves. */
static void skip_answered(struct pipeline *p, struct partition_state *ps,
                          const rd_kafka_message_t *msg)
{
	if (!offtrack_begin(p->offsets, msg->partition, msg->offset)) {
		log_error("offset tracker refused [%d] @%lld", (int)msg->partition,
		          (long long)msg->offset);
		atomic_store(&p->fatal, true);
		return;
	}
	(void)offtrack_done(p->offsets, msg->partition, msg->offset);
	ps->dirty = true;
	pipeline_metrics_handover_skipped(p->metrics);
}

static void take_message(struct pipeline *p, const rd_kafka_message_t *msg)
{
	struct partition_state *ps = partition(p, msg->partition);
	/* A message of a partition revoked meanwhile is not ours to process. */
	bool ours =
	    ps && ps->assigned && msg->rkt && is_input_topic(p, rd_kafka_topic_name(msg->rkt));
	if (msg->err) {
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			return;
		if (ours && msg->offset >= 0)
			hold_unreadable(p, ps, msg);
		else
			log_warning("consumer: %s", rd_kafka_message_errstr(msg));
		return;
	}
	if (!ours || (ps->refetch_pending && msg->offset >= ps->refetch_offset))
		return; /* not ours, or behind an unreadable one: fetched again after the seek */
	if (ps->refetch_tries && msg->offset >= ps->refetch_offset)
		ps->refetch_tries = 0;
	if (msg->offset < ps->answered_below) {
		skip_answered(p, ps, msg);
		return;
	}
	admit(p, msg);
}

/*
 * Events that fit in the byte bound, judged by the largest event seen (or, before any, the
 * largest message allowed): a batch passes max_queued_bytes by one event at most.
 */
static size_t fit_in_bytes(struct pipeline *p)
{
	size_t room = room_under(atomic_load(&p->memory_bytes), p->cfg->kafka.max_queued_bytes);
	size_t largest = p->largest_event ? p->largest_event : p->cfg->kafka.max_message_bytes;
	size_t n = room / largest;
	return n ? n : 1;
}

/* Takes up to the credit from the intake queue; returns how many messages it took. */
static size_t take_messages(struct pipeline *p, size_t credit)
{
	rd_kafka_message_t *msgs[MESSAGES_PER_TURN];
	size_t n = min_size(min_size(credit, MESSAGES_PER_TURN), fit_in_bytes(p));
	ssize_t got = rd_kafka_consume_batch_queue(p->messages, 0, msgs, n);
	for (ssize_t i = 0; i < got; i++) {
		take_message(p, msgs[i]);
		rd_kafka_message_destroy(msgs[i]);
	}
	return got > 0 ? (size_t)got : 0;
}

/* Rebalances (through the callback) and consumer errors: the group's own queue. */
static void serve_consumer_events(struct pipeline *p)
{
	rd_kafka_message_t *msg;
	while ((msg = rd_kafka_consumer_poll(p->consumer, 0)) != NULL) {
		take_message(p, msg); /* errors; messages not expected: every partition forwards */
		rd_kafka_message_destroy(msg);
	}
}

/*
 * Sleeps until something is due: an event, a delivery report or (with credit) a message
 * arrives, librdkafka writing wake_fd as its queue turns non-empty; or credit returns,
 * a worker or a release writing it. Every queue was drained just before, so no wake-up
 * is lost; with messages waiting, only credit is waited for.
 */
static void wait_for_work(struct pipeline *p, bool has_credit, int timeout_ms)
{
	if (has_credit && rd_kafka_queue_length(p->messages) > 0)
		return;
	if (!has_credit) {
		atomic_store(&p->wants_credit, true);
		if (credit(p) > 0) { /* returned before the flag was up */
			atomic_store(&p->wants_credit, false);
			return;
		}
	}
	struct pollfd pfd = {.fd = p->wake_fd, .events = POLLIN};
	if (poll(&pfd, 1, timeout_ms) > 0) {
		uint64_t count;
		if (read(p->wake_fd, &count, sizeof count) < 0) {
			/* EAGAIN: another reader was faster; nothing to reset */
		}
	}
	atomic_store(&p->wants_credit, false);
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
	serve_consumer_events(p);
	rd_kafka_poll(p->producer, 0);
	reproduce_due(p);
	refetch_unreadable(p);
	size_t allowed = credit(p);
	size_t taken = allowed ? take_messages(p, allowed) : 0;
	store_offsets(p);
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
		wait_for_work(p, allowed > 0, timeout_ms);
	return true;
}

/* ---- lifecycle ---- */

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
static void apply_share(struct pipeline *p)
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
	    !offtrack_new(tracked_limit(p) + MESSAGES_PER_TURN, &p->offsets) ||
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
static void collect_metrics(struct metrics *m, void *arg)
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
		                         .on_done = on_job_done,
		                         .hooks = {.is_current = job_is_current,
		                                   .took_work = took_work,
		                                   .post_begin = post_begin,
		                                   .post_end = post_end,
		                                   .on_accepted = record_operation},
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

/* librdkafka writes wake_fd when one of these queues turns non-empty. */
static void set_wakeups(struct pipeline *p, int fd)
{
	static const uint64_t one = 1; /* an eventfd takes 8-byte increments */
	rd_kafka_queue_t *group = rd_kafka_queue_get_consumer(p->consumer);
	rd_kafka_queue_t *reports = rd_kafka_queue_get_main(p->producer);
	rd_kafka_queue_io_event_enable(p->messages, fd, &one, sizeof one);
	if (group)
		rd_kafka_queue_io_event_enable(group, fd, &one, sizeof one);
	if (reports)
		rd_kafka_queue_io_event_enable(reports, fd, &one, sizeof one);
	if (group)
		rd_kafka_queue_destroy(group);
	if (reports)
		rd_kafka_queue_destroy(reports);
}

static bool open_intake(struct pipeline *p, char *err, size_t errcap)
{
	p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	p->messages = rd_kafka_queue_new(p->consumer);
	if (p->wake_fd < 0 || !p->messages) {
		snprintf(err, errcap, "cannot create the intake queue");
		return false;
	}
	set_wakeups(p, p->wake_fd);
	return true;
}

/* Before the consumer goes: librdkafka must not write to a closed descriptor. */
static void close_intake(struct pipeline *p)
{
	if (p->messages) {
		set_wakeups(p, -1);
		rd_kafka_queue_destroy(p->messages);
		p->messages = NULL;
	}
	if (p->wake_fd >= 0)
		close(p->wake_fd);
	p->wake_fd = -1;
}

bool pipeline_start(struct pipeline *p, char *err, size_t errcap)
{
	p->producer = kafka_producer_new(p->cfg, on_delivery, p, err, errcap);
	if (!p->producer)
		return false;
	p->consumer = kafka_consumer_new(p->cfg, on_rebalance, p, err, errcap);
	if (!p->consumer || !open_intake(p, err, errcap))
		return false;
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

/* The backlog (lag plus work in memory) and its ETA at the rates the scheduler allows now. */
static void backlog_eta(struct pipeline *p, struct pipeline_counters *out)
{
	struct pacer_eta_tenant t[CFG_MAX_TENANTS];
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

bool pipeline_reload(struct pipeline *p, const struct cfg *new_cfg)
{
	if (new_cfg->n_tenants != p->cfg->n_tenants)
		return false;
	if (!auth_reload(p->auth, new_cfg))
		return false;
	keep_app_limits(p, new_cfg);
	apply_share(p);
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
		release(p, jobs[i]);
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
		release(p, p->followers);
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
	rd_kafka_resp_err_t err = rd_kafka_flush(p->producer, within_finish(p, PIPELINE_FLUSH_MS));
	if (err)
		log_warning("final flush: %s", rd_kafka_err2str(err));
	for (size_t i = 0; i < p->n_parts; i++)
		if (p->parts[i].assigned)
			write_handover_mark(p, (int32_t)i);
	flush_handover_marks(p);
	store_offsets(p);
	err = commit_within(p, within_finish(p, COMMIT_WAIT_MS));
	if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
		log_warning("final commit failed: %s", rd_kafka_err2str(err));
	close_intake(p);
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
	close_intake(p);
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
	reproduce_drop_all(p);
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
