/*
 * pipeline_int.h - what the files of the pipeline share: struct pipeline, the partition
 * table, and the functions each file offers the files above it. Private to lib/pipeline*.c;
 * the daemon sees only pipeline.h.
 *
 * Layers, from the bottom up (docs/architecture.md, "The pipeline's files"); a file calls
 * only the files below it, and tools/check-pipeline-layers checks it:
 *
 *   pipeline.c            lifecycle and the Kafka thread's turn (pipeline_*)
 *   pipeline_intake.c     intake_*     pipeline_rebalance.c  rebalance_*   (side by side)
 *   pipeline_dispatch.c   dispatch_*
 *   pipeline_publish.c    publish_*    pipeline_collect.c    collect_*
 *   pipeline_core.c       core_*: partitions, generations, credit wake-ups, job accounting
 *
 * The one notification that goes up, publishing telling dispatch that a record it waited
 * for is acknowledged, goes through struct pipeline_events, which pipeline_new fills in.
 */
#ifndef CHATPROV_PIPELINE_INT_H
#define CHATPROV_PIPELINE_INT_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "cfg.h"
#include "common.h"
#include "event.h"
#include "job.h"
#include "metrics.h"
#include "offtrack.h"
#include "pacer.h"
#include "pipeline.h"
#include "pipeline_metrics.h"
#include "state.h"
#include "worker.h"

#define MAX_WORKERS       16
#define MESSAGES_PER_TURN 500
#define MAX_PARTITIONS    (OFFTRACK_MAX_PARTITION + 1)
/* Waiting for the coordinator to answer a commit (revoke, finish). */
#define COMMIT_WAIT_MS 5000

struct blockshare;
struct reproduce;
struct pipeline;

/*
 * Calls up from publishing into dispatch, set by pipeline_new to dispatch's functions, so
 * that publishing never names a function above it. All on the Kafka thread.
 */
struct pipeline_events {
	/* A done record was acknowledged: the duplicates waiting for its id get its result. */
	void (*done_recorded)(struct pipeline *p, const rd_kafka_message_t *done);
	/* An intent was acknowledged: its group chat may be POSTed now. */
	void (*intent_durable)(struct pipeline *p, struct job *job);
	/* The leader of an id settled: duplicates that missed its done record start again. */
	void (*leader_settled)(struct pipeline *p, const char *id);
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
	struct pipeline_events events; /* set by pipeline_new */
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
	struct blockshare *blockshare; /* NULL: Retry-After not shared ([kafka] limits_topic) */
	/*
	 * [limits] as configured (the app's limits, the last reload's): the scheduler gets this
	 * instance's share of them, owned input partitions / the input topic's partitions.
	 */
	struct pacer_limits app_limits;
	double app_tenant_limits[CFG_MAX_TENANTS];
	size_t n_app_tenants;
	int input_partitions; /* from the topic's metadata; 0: not known (the whole limits) */
	double share;         /* of app_limits this instance sends now (rebalance_apply_share) */
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
	 * Kafka thread reads only as far as its credit goes (see intake_credit()); the rest waits
	 * in librdkafka's bounded pre-fetch, so no partition is ever paused for backpressure and no
	 * resume costs a re-fetch. wake_fd (an eventfd) wakes the thread: librdkafka writes it
	 * when a queue it sleeps on gets work, the workers and core_release() when credit returns.
	 */
	rd_kafka_queue_t *messages;
	int wake_fd;
	atomic_bool wants_credit;
	size_t read_ahead;

	struct state *state;
	struct job *followers;       /* duplicates waiting for the result of an id in progress */
	struct reproduce *reproduce; /* failed records waiting for their backoff (publish) */
	pthread_mutex_t reproduce_lock;
	int64_t last_forget_ms;

	/* Jobs consumed and not yet acknowledged or abandoned; of those, the ones whose
	 * result is already in the producer (cheap: only waiting for the broker's ack). */
	atomic_size_t in_memory;
	atomic_size_t awaiting_ack;
	atomic_size_t memory_bytes; /* of the jobs in memory: see event_memory_bytes() */
	size_t largest_event;       /* memory_bytes of the largest event taken so far */
	size_t intents_pending;     /* group chats waiting for their intent's ack (Kafka thread) */
	atomic_bool paused;         /* the memory bound (max_queued) stops intake */
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

/* ---- pipeline_core.c: shared state and primitives ---- */

/* One turn of a long wait (restore, fetch, hand-over): feeds the wait hook. */
void core_wait_tick(struct pipeline *p, bool advanced);
/* The partition's entry, the table grown to hold it (it may move).
 * NULL: a negative id, or out of memory. */
struct partition_state *core_partition(struct pipeline *p, int32_t id);
/* Stores the next offset to commit of every partition that progressed. */
void core_store_offsets(struct pipeline *p);
/* The bound on offsets tracked (done behind a slow one). */
size_t core_tracked_limit(const struct pipeline *p);
/* Wakes the Kafka thread if it waits for credit: after a change intake_credit reads. */
void core_wake_for_credit(struct pipeline *p);
/* The job belongs to its partition's current generation (also the workers' hook). */
bool core_job_is_current(const struct job *job, void *arg);
/* A result of this job may still move its partition's offsets and state. */
bool core_settles_here(struct pipeline *p, const struct job *job);
/* want_ms, cut to what is left of pipeline_finish's deadline when there is one. */
int core_within_finish(const struct pipeline *p, int want_ms);
/* Commits the stored offsets, waiting at most timeout_ms for the coordinator. */
rd_kafka_resp_err_t core_commit_within(struct pipeline *p, int timeout_ms);
/* The job's result is in the producer: from now on it only waits for the ack. */
void core_mark_result_queued(struct pipeline *p, struct job *job);
/* A job leaves memory (settled or abandoned), exactly once; any thread. */
void core_release(struct pipeline *p, struct job *job);

/* ---- pipeline_publish.c: records to the producer and their delivery reports ---- */

/* One produce call; headers are consumed on success and destroyed on failure. */
rd_kafka_resp_err_t publish_produce(struct pipeline *p, const char *topic, int32_t partition,
                                    const void *key, size_t key_len, void *value, size_t len,
                                    int flags, rd_kafka_headers_t *headers, struct job *job);
/*
 * Queues one record (copied), through a full producer queue; a refusal is kept to be judged
 * and produced again. headers are consumed. False only when memory ran out (then fatal):
 * callers that have nothing to add ignore it.
 */
bool publish_queue_record(struct pipeline *p, const char *topic, int32_t partition, const void *key,
                          size_t key_len, const void *value, size_t len,
                          rd_kafka_headers_t *headers, struct job *job, bool block);
/* The key of a job's result: its input key, or its id. */
void publish_result_key(const struct job *job, const void **key, size_t *key_len);
/* The workers' on_done: a final result is published; an abandoned job released. */
void publish_on_job_done(struct job *job, void *arg);
/* The workers' on_accepted hook: a 202's operation goes to the state topic. */
void publish_record_operation(struct job *job, void *arg);
/* Kafka thread, every turn: judges failed records, produces again those due. */
void publish_reproduce_due(struct pipeline *p);
/* At exit: frees the copies of failed records (their jobs stay with their holders). */
void publish_reproduce_drop_all(struct pipeline *p);
/* librdkafka's delivery report callback, on the Kafka thread. */
void publish_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque);
/* An invalid event: its rejected result (and DLQ copy) goes out at once. */
void publish_reject(struct pipeline *p, const rd_kafka_message_t *msg, struct job *job,
                    const char *reason);

/* ---- pipeline_collect.c: counters and the metrics scrape ---- */

/* The metrics thread's collect callback, before each scrape. */
void collect_metrics(struct metrics *m, void *arg);

/* ---- pipeline_dispatch.c: what a valid event becomes; duplicates of an id in progress ---- */

/* Pushes a prepared job to the scheduler and wakes a worker. */
void dispatch_queue_job(struct pipeline *p, struct job *job);
/* A done record was acknowledged: the duplicates of its id get the same result bytes. */
void dispatch_answer_followers(struct pipeline *p, const rd_kafka_message_t *done);
/* The leader of id settled: its remaining duplicates are routed again. */
void dispatch_restart_followers(struct pipeline *p, const char *id);
/* Releases the duplicates drop() selects; routes the others again. */
void dispatch_drop_followers(struct pipeline *p, bool (*drop)(struct pipeline *, struct job *));
/* An input message becomes a job: rejected, answered from the state, or queued. */
void dispatch_admit(struct pipeline *p, const rd_kafka_message_t *msg);

/* ---- pipeline_intake.c: taking messages as far as the credit goes ---- */

/* How many messages may be taken now (0 while draining, at a
 * memory bound or with the read-ahead full). */
size_t intake_credit(struct pipeline *p);
/* Seeks partitions held at an unreadable message back to it once its backoff ended. */
void intake_refetch_unreadable(struct pipeline *p);
/* Takes up to credit messages from the intake queue; returns how many. */
size_t intake_take_messages(struct pipeline *p, size_t credit);
/* The group's own queue: rebalances (through their callback) and consumer errors. */
void intake_serve_consumer_events(struct pipeline *p);
/* Sleeps until a queue gets work or credit returns, at most timeout_ms. */
void intake_wait_for_work(struct pipeline *p, bool has_credit, int timeout_ms);
/* The intake queue and its wake-up eventfd, once the consumer exists. */
bool intake_open(struct pipeline *p, char *err, size_t errcap) CP_MUSTCHECK;
/* Before the consumer goes: librdkafka must not write to a closed descriptor. */
void intake_close(struct pipeline *p);

/* ---- pipeline_rebalance.c: assignments, revokes, hand-overs, this instance's share ---- */

/* The hand-over mark of a partition still owned: the offsets its results cover. */
void rebalance_write_handover_mark(struct pipeline *p, int32_t partition);
/* Flushes the producer (bounded), so that the marks written are acknowledged. */
void rebalance_flush_handover_marks(struct pipeline *p);
/* librdkafka's rebalance callback, on the Kafka thread. */
void rebalance_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *parts, void *opaque);
/* This instance's share of [limits] (owned / total input partitions) to the scheduler. */
void rebalance_apply_share(struct pipeline *p);

#endif
