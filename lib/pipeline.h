/*
 * pipeline.h - the daemon's engine: Kafka in, scheduler, HTTP workers, results out.
 *
 * The thread that calls pipeline_poll is the Kafka thread: it consumes, decodes and
 * validates events, answers invalid ones at once, queues valid ones for the workers,
 * handles delivery reports and stores offsets. Everything else runs in worker threads,
 * the auth refresh thread and librdkafka's own threads.
 */
#ifndef CHATPROV_PIPELINE_H
#define CHATPROV_PIPELINE_H

#include "cfg.h"
#include "common.h"
#include "metrics.h"

struct pipeline;

/*
 * The longest producer flush the pipeline makes: at a revoke's hand-over and in
 * pipeline_finish. The daemon's stop budget (daemon/main.c, FINISH_BUDGET_MS) is built on it.
 */
#define PIPELINE_FLUSH_MS (10 * 1000)

/* Live counters, for STATUS= and metrics. */
struct pipeline_counters {
	uint64_t consumed, succeeded, failed, rejected;
	size_t in_memory;   /* jobs between consumption and acknowledged result */
	size_t queued;      /* waiting in the scheduler */
	size_t active;      /* in workers: transfers, operation polls, waiting for a token */
	uint64_t throttled; /* 429 answers, all tenants */
	int64_t lag;        /* messages behind the high watermarks of the assigned partitions;
	                     * -1 while unknown */
	int64_t backlog;      /* lag (when known) plus in_memory */
	double backlog_eta_s; /* when the backlog may have left at the rates allowed now */
	bool paused;
};

/*
 * cfg must outlive the pipeline: its fixed keys (topics, Graph endpoint, workers) hold until
 * exit. metrics may be NULL.
 */
bool pipeline_new(const struct cfg *cfg, struct metrics *metrics, struct pipeline **out, char *err,
                  size_t errcap) CP_MUSTCHECK;

/* Creates the Kafka handles, starts the token thread and the workers, subscribes. */
bool pipeline_start(struct pipeline *p, char *err, size_t errcap) CP_MUSTCHECK;

/*
 * One turn of the Kafka thread's loop; waits at most timeout_ms for a message.
 * Returns false on a fatal error (the producer lost its idempotence guarantee, or a
 * result could not be queued): the process must exit non-zero without committing more.
 */
bool pipeline_poll(struct pipeline *p, int timeout_ms) CP_MUSTCHECK;

/* Kafka reachable, group joined, a token held for the default profile. */
bool pipeline_ready(struct pipeline *p);

/*
 * Workers looped recently, and a long wait of the Kafka thread in progress (if any)
 * advanced recently: the watchdog's evidence of progress.
 */
bool pipeline_progressing(struct pipeline *p, int64_t now_mono_ms, int64_t max_age_ms);

/*
 * fn(arg) runs on the Kafka thread at least every 200 ms (and after each bounded blocking
 * call) from inside its long waits: a state restore or fetch, a hand-over at revoke. The
 * daemon feeds the watchdog there, gated by pipeline_progressing like in its own loop.
 */
void pipeline_set_wait_hook(struct pipeline *p, void (*fn)(void *arg), void *arg);

void pipeline_counters(struct pipeline *p, struct pipeline_counters *out);

/*
 * SIGHUP: applies the reloadable parts of new_cfg (limits, retry, operations, recovery,
 * credentials). new_cfg must stay valid until the next successful reload or pipeline_free;
 * the configuration a reload replaced (other than the one given to pipeline_new) is no
 * longer referenced once this returns true and may be freed.
 */
bool pipeline_reload(struct pipeline *p, const struct cfg *new_cfg) CP_MUSTCHECK;

/* Stops consuming and asks the workers to finish what they have in flight. */
void pipeline_begin_drain(struct pipeline *p);

/* True once every in-flight job is finished or handed back and every result acknowledged. */
bool pipeline_drained(struct pipeline *p);

/*
 * Flushes the producer, writes the hand-over marks, stores and commits the final offsets,
 * all within PIPELINE_FLUSH_MS together (the revoke that leaving the group runs included),
 * then leaves the group (librdkafka's LeaveGroup and last commit, a few seconds at most).
 */
void pipeline_finish(struct pipeline *p);

void pipeline_free(struct pipeline *p);

#endif
