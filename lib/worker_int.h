/*
 * worker_int.h - what the three files of an HTTP worker share (worker.c: the loop, queues,
 * lifecycle; worker_xfer.c: setting up, launching and ending transfers; worker_answers.c:
 * what each answer means for its job). Private to them: the rest of the library uses
 * worker.h.
 */
#ifndef CHATPROV_WORKER_INT_H
#define CHATPROV_WORKER_INT_H

#include <curl/curl.h>
#include <stdatomic.h>

#include "dynbuf.h"
#include "idcache.h"
#include "worker.h"

#define TOKEN_MAX        AUTH_TOKEN_BUF
#define HEADER_VALUE_MAX 2048
/* A 404 right after a 202 means Graph has not published the operation yet. */
#define OP_NOT_FOUND_GRACE_MS (30 * 1000)
#define LOOP_IDLE_MS          500
/* A 202 operation ends within this long (graph-sim: 3 s by default): the chat a lost 202
 * may have started is looked for this long before a second POST. */
#define ANSWER_LOST_SETTLE_MS (30 * 1000)
/* A lookup reads at most this many pages of the owner's chats, then gives up (unknown). */
#define LOOKUP_MAX_PAGES 100
/* Object ids of members named by UPN, per worker: how many, for how long. */
#define IDCACHE_CAPACITY 512
#define IDCACHE_TTL_MS   (60 * 60 * 1000)
/* Reads of a chat an operation made, before the result goes out without its details. */
#define CHAT_READ_TRIES 3

enum xfer_kind { XFER_POST, XFER_POLL, XFER_LOOKUP, XFER_RESOLVE, XFER_CHAT, XFER_MEMBERS };

/* One HTTP exchange in flight. Lives from start_transfer to finish_transfer. */
struct xfer {
	struct worker *w;
	struct job *job;
	enum xfer_kind kind;
	CURL *easy;
	struct curl_slist *headers;
	char *token;        /* the bearer token sent, for auth_invalidate on 401 */
	char *url;          /* XFER_LOOKUP, XFER_RESOLVE: the query; XFER_CHAT: the chat */
	struct dynbuf resp; /* the answer's body, at most max_response_bytes */
	int64_t started_mono_ms;
	char request_id[64];
	char location[JOB_URL_MAX];
	char retry_after[64];
	char curl_err[CURL_ERROR_SIZE];
	size_t body_len, body_sent; /* XFER_POST: the job's body, as read by libcurl */
	bool held; /* XFER_POST: a Retry-After blocked the tenant before it went on the wire */
	int64_t prev_first_attempt_ms; /* XFER_POST: the job's, before this attempt counted */
};

/* Jobs waiting for a time: operation polls. A binary min-heap on job->next_poll_mono_ms. */
struct job_heap {
	struct job **items;
	size_t len, cap;
};

struct worker {
	struct worker_conf conf;
	pthread_t thread;
	bool started;
	CURLM *multi;
	char version_root[JOB_URL_MAX]; /* where requests go: {base_url}/{version} */
	char bind_root[JOB_URL_MAX];    /* what bodies name: {graph_root}/{version} */
	char chats_url[JOB_URL_MAX];
	bool https;
	bool protocol_known; /* https: the first answer said HTTP/2 or not (note_protocol) */

	pthread_mutex_t lock; /* guards policy and stop flag */
	struct worker_policy policy;
	bool stopping;

	struct job_heap polls;
	struct job **parked; /* waiting for a token of their tenant */
	size_t n_parked, cap_parked;
	size_t in_flight;
	uint64_t rng;
	char *token_buf;
	struct idcache *ids; /* object ids of members named by UPN, for lookups */
	atomic_llong heartbeat_ms;
	atomic_size_t active;
	atomic_bool exited;
	atomic_bool token_changed; /* the auth thread has news: retry the parked jobs */
	atomic_bool wake_pending;  /* a wake-up is on its way: worker_wakeup need not send one */
	int64_t parked_retry_ms;   /* when parked jobs were last retried */
};

/* ---- worker.c ---- */

struct worker_policy worker_current_policy(struct worker *w);
/* Queues a job until its next_poll_mono_ms (an operation poll); false: out of memory. */
bool worker_heap_push(struct job_heap *h, struct job *job);
/* Parks a job that waits for its tenant's token; false: out of memory. */
bool worker_park_job(struct worker *w, struct job *job);

/* ---- worker_xfer.c ---- */

/* Gets the tenant's token and starts the job's next exchange, or parks it. */
void worker_launch(struct worker *w, struct job *job);
/* A transfer ended: its answer goes to the worker_on_*_answer of its kind. */
void worker_finish_transfer(struct worker *w, CURL *easy, CURLcode rc);
/* How many HTTPS connections a worker keeps for max_in_flight transfers. */
long worker_https_connection_cap(unsigned max_in_flight);

/* ---- worker_answers.c ---- */

/* The job's outcome is final: its result goes to the pipeline. */
void worker_finish_job(struct worker *w, struct job *job);
void worker_on_post_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status);
void worker_on_poll_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status);
void worker_on_chat_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status);
void worker_on_lookup_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                             long status);
void worker_on_members_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                              long status);
void worker_on_resolve_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                              long status);

#endif
