/*
 * worker.h - an HTTP worker thread: one libcurl multi handle driving POST /chats requests
 * and async-operation polls for many jobs at once.
 *
 * A worker takes jobs from the scheduler when the rate limits allow, sends them with a
 * bearer token from the auth module, classifies every answer (success, 202, throttled,
 * transient, authentication, permanent), and hands each job back exactly once through
 * the done callback when it has a final outcome. A job waiting for its next operation poll
 * holds no transfer: it sits in the worker's timer heap.
 */
#ifndef CHATPROV_WORKER_H
#define CHATPROV_WORKER_H

#include <stdatomic.h>

#include "auth.h"
#include "cfg.h"
#include "common.h"
#include "job.h"
#include "retry.h"
#include "pacer.h"

struct worker;
struct pipeline_metrics;

/* The parts of the configuration a running worker may see change on SIGHUP. */
struct worker_policy {
	struct retry_policy retry;
	struct retry_not_found_policy not_found; /* 404 from POST /chats: its own budget */
	int64_t poll_interval_ms;
	int64_t op_timeout_ms;
	bool group_chat_lookup;
};

/*
 * What the pipeline is told while a worker handles a job (all from the worker thread).
 * is_current: false once the job's partition was revoked; it must not be sent then.
 * post_begin/post_end bracket a POST /chats, from before it is sent until its outcome is
 * recorded (result, operation record or requeue): a revoke waits for these to drain.
 * A POST is counted (post_begin) before its last is_current check, and both must be
 * sequentially consistent with the revoke's generation change and its wait: then a revoke
 * that sees no POST in flight is sure that none will start for that generation.
 * on_accepted: a 202 gave an operation to follow; the pipeline records it.
 */
struct worker_hooks {
	bool (*is_current)(const struct job *job, void *arg);
	void (*took_work)(void *arg); /* jobs left the scheduler for this worker */
	void (*post_begin)(int32_t partition, void *arg);
	void (*post_end)(int32_t partition, void *arg);
	void (*on_accepted)(struct job *job, void *arg);
};

struct worker_conf {
	const struct cfg *cfg; /* fixed keys only: URLs, timeouts, limits of buffers */
	struct worker_policy policy;
	unsigned max_in_flight; /* this worker's share of [graph] max_in_flight */
	struct pacer *pacer;
	struct auth *auth;
	struct pipeline_metrics *metrics; /* may be NULL */
	/* Per tenant profile, shared by the workers: the 403 hint was logged (NULL: always log). */
	atomic_bool *forbidden_hinted;
	/* Called from the worker thread with a job whose status is final (or abandoned). */
	void (*on_done)(struct job *job, void *arg);
	struct worker_hooks hooks;
	void *arg;
};

bool worker_new(const struct worker_conf *conf, struct worker **out) CP_MUSTCHECK;
bool worker_start(struct worker *w) CP_MUSTCHECK;

/* Wakes the worker's poll (new jobs queued, a token arrived, a stop was asked). */
void worker_wakeup(struct worker *w);

/* The auth thread acquired or lost a token: jobs parked for one are retried. */
void worker_token_changed(struct worker *w);

/* Applies a reloaded policy from the next loop iteration on. */
void worker_set_policy(struct worker *w, const struct worker_policy *policy);

/*
 * Asks the worker to drain: take no new jobs, finish the transfers in flight, then exit.
 * Jobs still waiting (operation polls, parked for a token) are handed back through
 * worker_join's out list, without a result, so their offsets stay uncommitted.
 */
void worker_stop(struct worker *w);

/* Waits for the thread; returns how many unfinished jobs were handed back in *jobs. */
size_t worker_join(struct worker *w, struct job ***jobs);
void worker_free(struct worker *w);

/* Monotonic ms of the worker loop's last iteration: the watchdog's proof of progress. */
int64_t worker_heartbeat_ms(const struct worker *w);

/* The thread has left its loop (after worker_stop, once its transfers finished). */
bool worker_exited(const struct worker *w);

/* Transfers in flight plus jobs waiting on a timer or a token inside this worker. */
size_t worker_active(const struct worker *w);

#endif
