/* worker.c - one libcurl multi loop per thread: POST /chats and operation polls. */
#include "worker.h"

#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chatreq.h"
#include "cptime.h"
#include "dynbuf.h"
#include "graphreq.h"
#include "graphresp.h"
#include "idcache.h"
#include "log.h"
#include "pipeline_metrics.h"
#include "tls.h"

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
	char *token; /* the bearer token sent, for auth_invalidate on 401 */
	char *url;   /* XFER_LOOKUP, XFER_RESOLVE: the query; XFER_CHAT: the chat */
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

/* ---- small containers ---- */

static bool heap_push(struct job_heap *h, struct job *job)
{
	if (h->len == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct job **items = realloc(h->items, cap * sizeof *items);
		if (!items)
			return false;
		h->items = items;
		h->cap = cap;
	}
	size_t i = h->len++;
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (h->items[parent]->next_poll_mono_ms <= job->next_poll_mono_ms)
			break;
		h->items[i] = h->items[parent];
		i = parent;
	}
	h->items[i] = job;
	return true;
}

static struct job *heap_pop(struct job_heap *h)
{
	struct job *top = h->items[0];
	struct job *last = h->items[--h->len];
	size_t i = 0;
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= h->len)
			break;
		if (child + 1 < h->len &&
		    h->items[child + 1]->next_poll_mono_ms < h->items[child]->next_poll_mono_ms)
			child++;
		if (last->next_poll_mono_ms <= h->items[child]->next_poll_mono_ms)
			break;
		h->items[i] = h->items[child];
		i = child;
	}
	if (h->len)
		h->items[i] = last;
	return top;
}

static bool park_job(struct worker *w, struct job *job)
{
	if (w->n_parked == w->cap_parked) {
		size_t cap = w->cap_parked ? w->cap_parked * 2 : 16;
		struct job **p = realloc(w->parked, cap * sizeof *p);
		if (!p)
			return false;
		w->parked = p;
		w->cap_parked = cap;
	}
	w->parked[w->n_parked++] = job;
	return true;
}

static void update_active(struct worker *w)
{
	atomic_store(&w->active, w->in_flight + w->polls.len + w->n_parked);
}

static struct worker_policy current_policy(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	struct worker_policy p = w->policy;
	pthread_mutex_unlock(&w->lock);
	return p;
}

static bool is_stopping(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	bool s = w->stopping;
	pthread_mutex_unlock(&w->lock);
	return s;
}

/* ---- outcomes ---- */

static void log_ctx_of(const struct job *job, const struct xfer *x, struct log_ctx *ctx)
{
	*ctx = (struct log_ctx){
	    .request_id = job->ev ? job->ev->id : NULL,
	    .chat_id = job->chat_id[0] ? job->chat_id : NULL,
	    .graph_request_id = x && x->request_id[0] ? x->request_id : NULL,
	    .client_request_id = job->client_request_id,
	    .tenant = job->ev ? job->ev->tenant : NULL,
	};
}

static void finish_job(struct worker *w, struct job *job)
{
	job->completed_wall_ms = cptime_wall_ms();
	pipeline_metrics_job_done(w->conf.metrics, job);
	w->conf.on_done(job, w->conf.arg);
}

static void requeue_retry(struct worker *w, struct job *job, long http_status, int64_t now,
                          int64_t delay)
{
	pipeline_metrics_retry(w->conf.metrics, job->tenant);
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, now + delay, now)) {
		job_fail(job, http_status, "QueueFull", "scheduler queue full on retry", true);
		finish_job(w, job);
	}
}

/* Backs a job off (never less than the server's Retry-After) and queues it again, or
 * fails it when the retry budget is spent. */
static void retry_or_fail(struct worker *w, struct job *job, long http_status, const char *code,
                          const char *message, int64_t retry_after)
{
	struct worker_policy p = current_policy(w);
	int64_t now = cptime_mono_ms();
	job->transient_failures++;
	int64_t delay =
	    retry_next_delay_ms(&p.retry, job->transient_failures, retry_after, &w->rng);
	if (!retry_may_retry(&p.retry, job->transient_failures, job->first_attempt_mono_ms, now,
	                     delay)) {
		job_fail(job, http_status, code, message, true);
		finish_job(w, job);
		return;
	}
	requeue_retry(w, job, http_status, now, delay);
}

/* A job that must wait for a poll at `at`; fails it if that is past its deadline. */
static void schedule_poll(struct worker *w, struct job *job, int64_t at)
{
	if (at > job->op_deadline_mono_ms) {
		job_fail(job, job->http_status, "OperationTimeout",
		         "the async operation did not finish before [operations] timeout_s", true);
		snprintf(job->op_status, sizeof job->op_status, "%s",
		         job->op_status[0] ? job->op_status : "notStarted");
		finish_job(w, job);
		return;
	}
	job->next_poll_mono_ms = at;
	if (!heap_push(&w->polls, job)) {
		job_fail(job, job->http_status, "OutOfMemory", "cannot queue operation poll", true);
		finish_job(w, job);
	}
}

static int64_t retry_after_ms(const struct xfer *x, int64_t fallback_ms)
{
	int64_t delay;
	if (x->retry_after[0] &&
	    graphresp_parse_retry_after(x->retry_after, cptime_wall_ms(), &delay))
		return delay;
	return fallback_ms;
}

static void fail_from_graph_error(struct job *job, const struct xfer *x, long status,
                                  bool retryable)
{
	struct graphresp_error ge;
	char message[JOB_ERR_MSG_MAX];
	if (graphresp_parse_error(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &ge)) {
		job_fail(job, status, ge.code, ge.message, retryable);
		return;
	}
	snprintf(message, sizeof message, "Graph answered HTTP %ld", status);
	job_fail(job, status, "HttpError", message, retryable);
}

/* ---- POST /chats answers ---- */

/* A chat Graph described: the result names it with its details. */
static void take_chat(struct job *job, const struct graphresp_chat *chat)
{
	job->status = JOB_SUCCEEDED;
	snprintf(job->chat_id, sizeof job->chat_id, "%s", chat->id);
	bool stored = job_set_string(&job->chat_web_url, chat->web_url);
	(void)stored; /* without memory the result lacks only the web URL */
	snprintf(job->chat_created, sizeof job->chat_created, "%s", chat->created);
}

static void on_created(struct worker *w, struct job *job, struct xfer *x)
{
	struct graphresp_chat chat;
	char err[256];
	if (!graphresp_parse_chat(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &chat, err, sizeof err)) {
		/* The chat exists but we cannot say which: never create it again blindly. */
		job_fail(job, 201, "InvalidResponse", err, false);
		finish_job(w, job);
		return;
	}
	take_chat(job, &chat);
	finish_job(w, job);
}

static void follow_operation(struct worker *w, struct job *job, struct xfer *x)
{
	struct worker_policy p = current_policy(w);
	char url[JOB_URL_MAX];
	if (!x->location[0] ||
	    !graphreq_resolve_location(w->version_root, x->location, url, sizeof url) ||
	    !job_set_string(&job->op_url, url)) {
		job_fail(job, 202, "InvalidLocation",
		         "202 Accepted without a usable Location on this Graph host", false);
		finish_job(w, job);
		return;
	}
	int64_t now = cptime_mono_ms();
	job->phase = JOB_PHASE_POLL;
	/* Before the hook: the operation record carries this start, which bounds the
	 * operation's deadline and its 404 grace for whichever instance resumes it. */
	job->op_started_mono_ms = now;
	job->op_deadline_mono_ms = now + p.op_timeout_ms;
	if (w->conf.hooks.on_accepted)
		w->conf.hooks.on_accepted(job, w->conf.arg);
	int64_t wait = retry_after_ms(x, p.poll_interval_ms);
	schedule_poll(w, job, now + (wait > p.poll_interval_ms ? wait : p.poll_interval_ms));
}

/*
 * A request that reached Graph and failed without a clear refusal (5xx, a reset or a
 * timeout after sending) may have created the chat. Only group chats care: creating a
 * one-on-one chat again returns the same chat.
 */
static bool may_have_created(const struct job *job, CURLcode rc, long status)
{
	if (job->ev->chat_type != EVENT_CHAT_GROUP)
		return false;
	if (rc == CURLE_OK)
		return status >= 500;
	return rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST &&
	       rc != CURLE_COULDNT_RESOLVE_PROXY && rc != CURLE_SSL_CONNECT_ERROR &&
	       rc != CURLE_PEER_FAILED_VERIFICATION;
}

/* A Retry-After that ends after the job's retry budget: waiting for it is pointless. */
static bool beyond_budget(struct worker *w, const struct job *job, int64_t wait, int64_t now)
{
	struct worker_policy p = current_policy(w);
	return wait > 0 && p.retry.max_elapsed_ms > 0 && job->first_attempt_mono_ms &&
	       now + wait > job->first_attempt_mono_ms + p.retry.max_elapsed_ms;
}

/*
 * How long a Retry-After may hold a whole tenant. Graph's are seconds; a hostile or broken
 * answer of a day would stall the tenant for a day, so the block ends after the retry
 * budget's max_elapsed_s at the latest (requests are then refused one by one again).
 */
static int64_t bounded_block(struct worker *w, int64_t wait)
{
	struct worker_policy p = current_policy(w);
	if (p.retry.max_elapsed_ms > 0 && wait > p.retry.max_elapsed_ms)
		return p.retry.max_elapsed_ms;
	return wait;
}

/* 429: the tenant slows down and waits out Retry-After; the job goes back in the queue. */
static void on_throttled(struct worker *w, struct job *job, struct xfer *x, int64_t now,
                         const struct log_ctx *ctx)
{
	int64_t wait = retry_after_ms(x, -1);
	bool beyond = beyond_budget(w, job, wait, now);
	pacer_on_result(w->conf.pacer, job->tenant, PACER_THROTTLED, bounded_block(w, wait), now);
	log_with(LOG_LVL_INFO, ctx, "throttled by Graph (429), Retry-After %s",
	         x->retry_after[0] ? x->retry_after : "absent");
	if (beyond) {
		char message[JOB_ERR_MSG_MAX];
		snprintf(message, sizeof message, "Retry-After %s is beyond [retry] max_elapsed_s",
		         x->retry_after);
		job_fail(job, 429, "TooManyRequests", message, true);
		finish_job(w, job);
		return;
	}
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, now, now)) {
		job_fail(job, 429, "QueueFull", "scheduler queue full on retry", true);
		finish_job(w, job);
	}
}

/* 5xx, reset, timeout: back off (no less than a 503's Retry-After) and try again. */
static void on_transient(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                         long status, int64_t now, const struct log_ctx *ctx)
{
	char message[JOB_ERR_MSG_MAX];
	if (rc != CURLE_OK)
		snprintf(message, sizeof message, "%s",
		         x->curl_err[0] ? x->curl_err : curl_easy_strerror(rc));
	else
		snprintf(message, sizeof message, "Graph answered HTTP %ld", status);
	log_with(LOG_LVL_INFO, ctx, "transient failure: %s", message);
	if (may_have_created(job, rc, status)) {
		/* Graph may have made the group chat before failing to say so. */
		job->needs_lookup = true;
		job->unsure_post_wall_ms = cptime_wall_ms() - (now - x->started_mono_ms);
		/* A 500 or 503 is Graph's answer, not a 202 that went missing. */
		job->answer_lost = rc != CURLE_OK || status == 504;
		log_with(LOG_LVL_NOTICE, ctx,
		         "outcome unknown: will look the chat up before creating it again");
	}
	/* A 503's Retry-After holds the whole tenant, not only this request. */
	int64_t wait = retry_after_ms(x, 0);
	pacer_on_result(w->conf.pacer, job->tenant, PACER_FAILED_OTHER, bounded_block(w, wait),
	                now);
	retry_or_fail(w, job, status, rc != CURLE_OK ? "TransportError" : "ServiceUnavailable",
	              message, wait);
}

/* The member Graph's 404 names (its message quotes the id or UPN), else "unnamed". */
static const char *unknown_member(const struct job *job, const char *graph_message)
{
	for (size_t i = 0; i < job->ev->n_members; i++)
		if (strcasestr(graph_message, job->ev->members[i].user_id))
			return job->ev->members[i].user_id;
	return "unnamed";
}

/*
 * 404 from POST /chats: a member Teams does not know yet (a new account still replicating
 * from Entra ID). The request waits on [retry] not_found_s, a budget apart from the
 * transient one: the wait is a delayed requeue in the scheduler, so this worker and the
 * tenant's other requests go on meanwhile. False: the budget is spent, the request fails.
 */
static bool wait_for_member(struct worker *w, struct job *job, const struct xfer *x,
                            int64_t now, const struct log_ctx *ctx)
{
	struct worker_policy p = current_policy(w);
	struct graphresp_error ge = {.message = ""};
	if (!graphresp_parse_error(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &ge))
		ge.message[0] = '\0';
	const char *member = unknown_member(job, ge.message);
	if (!job->not_found_since_mono_ms)
		job->not_found_since_mono_ms = now;
	int64_t delay = retry_not_found_delay_ms(&p.not_found, ++job->not_found_retries,
	                                         job->not_found_since_mono_ms, now, &w->rng);
	if (delay < 0) {
		log_with(LOG_LVL_NOTICE, ctx,
		         "member %s still unknown to Teams after [retry] not_found_s (%u tries): %s",
		         member, job->attempts, ge.message);
		return false;
	}
	log_with(job->not_found_retries == 1 ? LOG_LVL_NOTICE : LOG_LVL_DEBUG, ctx,
	         "member %s unknown to Teams (%s): trying again in %.1f s, for up to "
	         "[retry] not_found_s",
	         member, ge.message[0] ? ge.message : "404 Not Found", (double)delay / 1000);
	pipeline_metrics_not_found_retry(w->conf.metrics, job->tenant);
	/* Waiting for replication is not a transient failure: max_elapsed_s does not count it. */
	job->first_attempt_mono_ms += delay;
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, now + delay, now)) {
		job_fail(job, 404, "QueueFull", "scheduler queue full on retry", true);
		finish_job(w, job);
	}
	return true;
}

/* 403 from POST /chats: counted per tenant; the first one tells the operator what to grant. */
static void note_forbidden(struct worker *w, const struct job *job, const struct log_ctx *ctx)
{
	pipeline_metrics_forbidden(w->conf.metrics, job->tenant);
	if (w->conf.forbidden_hinted &&
	    atomic_exchange(&w->conf.forbidden_hinted[job->tenant], true))
		return;
	log_with(LOG_LVL_WARNING, ctx,
	         "Graph refused POST /chats with 403 %s for tenant profile %s: %s. Hint: the app "
	         "registration needs the application permission Chat.Create, granted with admin "
	         "consent in this tenant (docs/real-tenant.md); once it is, re-drive the failed "
	         "requests from the DLQ (chatprovctl redrive --code %s)",
	         job->err_code, w->conf.cfg->tenants[job->tenant].name,
	         job->err_message ? job->err_message : "no message", job->err_code);
}

static void on_post_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status)
{
	int64_t now = cptime_mono_ms();
	struct log_ctx ctx;
	log_ctx_of(job, x, &ctx);
	switch (retry_classify(status, (int)rc)) {
	case RETRY_SUCCESS:
		pacer_on_result(w->conf.pacer, job->tenant, PACER_OK, 0, now);
		if (status == 202)
			follow_operation(w, job, x);
		else
			on_created(w, job, x);
		return;
	case RETRY_THROTTLED:
		on_throttled(w, job, x, now, &ctx);
		return;
	case RETRY_AUTH:
		auth_invalidate(w->conf.auth, job->tenant, x->token);
		if (!job->auth_retried) {
			job->auth_retried = true;
			if (pacer_requeue(w->conf.pacer, job->tenant, job, now, now))
				return;
		}
		fail_from_graph_error(job, x, status, false);
		finish_job(w, job);
		return;
	case RETRY_TRANSIENT:
		on_transient(w, job, x, rc, status, now, &ctx);
		return;
	case RETRY_PERMANENT:
		pacer_on_result(w->conf.pacer, job->tenant, PACER_OK, 0, now);
		enum retry_refusal refusal =
		    rc == CURLE_OK ? retry_classify_refusal(status) : RETRY_REFUSAL_FINAL;
		if (refusal == RETRY_REFUSAL_NOT_FOUND && wait_for_member(w, job, x, now, &ctx))
			return;
		if (rc != CURLE_OK)
			job_fail(job, 0, "TransportError",
			         x->curl_err[0] ? x->curl_err : curl_easy_strerror(rc), false);
		else
			fail_from_graph_error(job, x, status, false);
		if (refusal == RETRY_REFUSAL_FORBIDDEN)
			note_forbidden(w, job, &ctx);
		log_with(LOG_LVL_NOTICE, &ctx, "Graph refused the chat: %s (HTTP %ld)",
		         job->err_code, status);
		finish_job(w, job);
		return;
	}
}

/* ---- operation poll answers ---- */

/*
 * An operation names only the chat's id: its webUrl and createdDateTime are read with
 * GET /chats('{id}'), so that the result reads like a 201's, resumed operation or not.
 */
static void read_chat(struct worker *w, struct job *job, int64_t at)
{
	job->phase = JOB_PHASE_CHAT;
	job->next_poll_mono_ms = at;
	if (!job->chat_id[0] || !heap_push(&w->polls, job))
		finish_job(w, job); /* succeeded all the same, without the details */
}

static void on_operation(struct worker *w, struct job *job, struct xfer *x)
{
	struct worker_policy p = current_policy(w);
	struct graphresp_operation op;
	char err[256];
	int64_t now = cptime_mono_ms();
	if (!graphresp_parse_operation(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &op, err, sizeof err)) {
		schedule_poll(w, job, now + p.poll_interval_ms);
		return;
	}
	snprintf(job->op_id, sizeof job->op_id, "%s", op.id);
	snprintf(job->op_status, sizeof job->op_status, "%s", op.status_text);
	job->op_attempts = op.attempts_count;
	switch (op.status) {
	case GRAPHRESP_OP_SUCCEEDED:
		job->status = JOB_SUCCEEDED;
		snprintf(job->chat_id, sizeof job->chat_id, "%s", op.target_resource_id);
		read_chat(w, job, now);
		return;
	case GRAPHRESP_OP_FAILED:
		job_fail(
		    job, job->http_status, op.error_code[0] ? op.error_code : "OperationFailed",
		    op.error_message[0] ? op.error_message : "the async operation failed", false);
		finish_job(w, job);
		return;
	default: {
		int64_t wait = retry_after_ms(x, p.poll_interval_ms);
		schedule_poll(w, job,
		              now + (wait > p.poll_interval_ms ? wait : p.poll_interval_ms));
		return;
	}
	}
}

static void on_poll_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status)
{
	struct worker_policy p = current_policy(w);
	int64_t now = cptime_mono_ms();
	if (rc == CURLE_OK && status == 200) {
		on_operation(w, job, x);
		return;
	}
	if (rc == CURLE_OK && status == 401)
		auth_invalidate(w->conf.auth, job->tenant, x->token);
	bool fresh_404 = status == 404 && now - job->op_started_mono_ms < OP_NOT_FOUND_GRACE_MS;
	enum retry_class cls = retry_classify(status, (int)rc);
	if (rc == CURLE_OK && status >= 400 && cls == RETRY_PERMANENT && !fresh_404) {
		fail_from_graph_error(job, x, status, false);
		finish_job(w, job);
		return;
	}
	/* Throttled, transient, 401 or a young 404: poll again later, within the deadline. */
	int64_t wait = retry_after_ms(x, p.poll_interval_ms);
	if (fresh_404 || cls == RETRY_AUTH)
		wait = retry_after_ms(x, 1000);
	schedule_poll(w, job, now + wait);
}

/* The chat of a finished operation: its details, or, after a few tries, the result without. */
static void on_chat_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status)
{
	struct graphresp_chat chat;
	char err[256] = "";
	enum retry_class cls = retry_classify(status, (int)rc);
	if (cls == RETRY_SUCCESS &&
	    graphresp_parse_chat(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &chat, err, sizeof err) &&
	    strcmp(chat.id, job->chat_id) == 0) {
		take_chat(job, &chat);
		finish_job(w, job);
		return;
	}
	if (cls == RETRY_AUTH)
		auth_invalidate(w->conf.auth, job->tenant, x->token);
	bool again = cls == RETRY_TRANSIENT || cls == RETRY_THROTTLED || cls == RETRY_AUTH;
	if (again && ++job->chat_reads < CHAT_READ_TRIES) {
		read_chat(w, job, cptime_mono_ms() + retry_after_ms(x, 1000));
		return;
	}
	struct log_ctx ctx;
	log_ctx_of(job, x, &ctx);
	log_with(LOG_LVL_NOTICE, &ctx,
	         "operation succeeded; reading the chat failed (HTTP %ld%s%s): no webUrl in the "
	         "result",
	         status, err[0] ? ": " : "", err);
	finish_job(w, job);
}

/* ---- lookup answers (unknown outcomes of group chats) ---- */

static void requeue_at(struct worker *w, struct job *job, int64_t at)
{
	int64_t now = cptime_mono_ms();
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, at > now ? at : now, now)) {
		job_fail(job, 0, "QueueFull", "scheduler queue full", true);
		finish_job(w, job);
	}
}

static void requeue_now(struct worker *w, struct job *job)
{
	requeue_at(w, job, 0);
}

static void drop_candidates(struct job_lookup *l)
{
	free(l->candidates);
	free(l->after_candidates);
	l->candidates = NULL;
	l->after_candidates = NULL;
	l->n_candidates = l->next_candidate = 0;
}

static void lookup_from_first_page(struct job *job)
{
	free(job->lookup->next_page);
	job->lookup->next_page = NULL;
	job->lookup->pages = 0;
	drop_candidates(job->lookup);
}

/*
 * The lookup query of a job; ids is a 2 * n_members array it points into (freed by the
 * caller). False: out of memory.
 */
static bool lookup_query(const struct job *job, struct graphresp_lookup_query *q, const char ***ids)
{
	size_t n = job->ev->n_members;
	const struct job_lookup *l = job->lookup;
	const char **all = calloc(n ? 2 * n : 1, sizeof *all);
	if (!all)
		return false;
	const char **object_ids = all + n;
	for (size_t i = 0; i < n; i++) {
		all[i] = job->ev->members[i].user_id;
		object_ids[i] = l && l->object_ids[i][0] ? l->object_ids[i] : NULL;
	}
	/* Clocks differ: accept chats created up to a minute before the POST may have left. */
	*q = (struct graphresp_lookup_query){.topic = job->ev->topic,
	                                     .user_ids = all,
	                                     .object_ids = object_ids,
	                                     .n_user_ids = n,
	                                     .created_after_ms = job->intent_wall_ms - 60 * 1000};
	*ids = all;
	return true;
}

static bool parse_lookup(const struct job *job, const struct xfer *x,
                         struct graphresp_lookup_result *found, char *err, size_t errcap)
{
	struct graphresp_lookup_query q;
	const char **ids;
	if (!lookup_query(job, &q, &ids)) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	bool ok =
	    graphresp_parse_lookup(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &q, found, err, errcap);
	free(ids);
	return ok;
}

static bool parse_members(const struct job *job, const struct xfer *x, bool *match, char *err,
                          size_t errcap)
{
	struct graphresp_lookup_query q;
	const char **ids;
	if (!lookup_query(job, &q, &ids)) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	bool ok = graphresp_parse_members(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &q, match,
	                                  err, errcap);
	free(ids);
	return ok;
}

/* Not on this page: read the next one, from the Graph host only, for so many pages. */
static void lookup_next_page(struct worker *w, struct job *job, const char *next_link,
                             const struct log_ctx *ctx)
{
	char url[GRAPHREQ_URL_MAX];
	struct job_lookup *l = job->lookup;
	const char *why = NULL;
	if (++l->pages >= LOOKUP_MAX_PAGES)
		why = "the group chat may exist; the owner's chats with this topic span too many "
		      "pages to look through";
	else if (!graphreq_resolve_location(w->version_root, next_link, url, sizeof url))
		why = "the group chat may exist; the lookup's next page is not on the Graph host";
	else if (!job_set_string(&l->next_page, url))
		why = "the group chat may exist; out of memory reading the lookup's next page";
	if (why) {
		log_with(LOG_LVL_WARNING, ctx, "lookup: %s", why);
		job_fail(job, job->http_status, "OutcomeUnknown", why, false);
		finish_job(w, job);
		return;
	}
	requeue_now(w, job);
}

/*
 * A lookup is a GET: trying it again creates nothing. Its failures (a cut connection fails
 * every request on it at once) count in a budget of their own, bounded by time only
 * ([retry] max_elapsed_s from its first failure): the POST's attempts and a burst of
 * transport errors must not turn a chat that may exist into OutcomeUnknown.
 */
static void lookup_retry_or_fail(struct worker *w, struct job *job, long status,
                                 int64_t retry_after)
{
	struct worker_policy p = current_policy(w);
	struct job_lookup *l = job->lookup;
	int64_t now = cptime_mono_ms();
	if (!l->failures++)
		l->first_failure_mono_ms = now;
	int64_t delay = retry_next_delay_ms(&p.retry, l->failures, retry_after, &w->rng);
	p.retry.max_attempts = UINT_MAX;
	if (!retry_may_retry(&p.retry, l->failures, l->first_failure_mono_ms, now, delay)) {
		job_fail(job, status, "OutcomeUnknown",
		         "the group chat may exist and the lookup keeps failing", true);
		finish_job(w, job);
		return;
	}
	requeue_retry(w, job, status, now, delay);
}

/* A lookup request that did not succeed: try again, refresh the token, or give up. */
static void lookup_failed(struct worker *w, struct job *job, struct xfer *x, enum retry_class cls,
                          long status)
{
	if (cls == RETRY_AUTH && !job->auth_retried) {
		auth_invalidate(w->conf.auth, job->tenant, x->token);
		job->auth_retried = true;
		int64_t now = cptime_mono_ms();
		if (pacer_requeue(w->conf.pacer, job->tenant, job, now, now))
			return;
	}
	if (cls == RETRY_TRANSIENT || cls == RETRY_THROTTLED) {
		/* Pages can move meanwhile, a next link expire: start over from the first. */
		lookup_from_first_page(job);
		lookup_retry_or_fail(w, job, status, retry_after_ms(x, 0));
		return;
	}
	/* 403 (no Chat.ReadBasic.All), 404, ...: we cannot know, so we do not create again. */
	char message[JOB_ERR_MSG_MAX];
	snprintf(message, sizeof message,
	         "the group chat may exist and Graph refused the lookup (HTTP %ld)", status);
	job_fail(job, status, "OutcomeUnknown", message, false);
	finish_job(w, job);
}

/*
 * A group chat with an app is made by a 202 operation, and its chat is listed only once the
 * operation ends (graph-sim does so; Graph documents nothing either way). A POST whose 202
 * was lost (no answer, a 504, or an instance that died after it) may have started one: until the operation could have ended, a lookup that finds
 * nothing looks again every poll_interval_s before a second POST. Bounded: ANSWER_LOST_SETTLE_MS
 * after that POST left, and never past [operations] timeout_s.
 */
static bool lookup_again_later(struct worker *w, struct job *job, const struct log_ctx *ctx)
{
	struct worker_policy p = current_policy(w);
	int64_t sent = job->unsure_post_wall_ms ? job->unsure_post_wall_ms : job->intent_wall_ms;
	int64_t settle = p.op_timeout_ms < ANSWER_LOST_SETTLE_MS ? p.op_timeout_ms
	                                                          : ANSWER_LOST_SETTLE_MS;
	int64_t left = sent + settle - cptime_wall_ms();
	if (!job->ev->app_id || !job->answer_lost || !sent || left <= 0)
		return false;
	int64_t wait = p.poll_interval_ms < left ? p.poll_interval_ms : left;
	log_with(LOG_LVL_INFO, ctx,
	         "lookup: not listed yet; a 202 operation may still be making it: looking again in "
	         "%lld ms",
	         (long long)wait);
	lookup_from_first_page(job);
	requeue_at(w, job, cptime_mono_ms() + wait);
	return true;
}

static void lookup_found(struct worker *w, struct job *job, const struct graphresp_chat *chat,
                         const struct log_ctx *ctx)
{
	log_with(LOG_LVL_NOTICE, ctx, "lookup: found the chat created earlier: %s", chat->id);
	take_chat(job, chat);
	job->needs_lookup = false;
	job_lookup_end(job);
	finish_job(w, job);
}

/* The lookup read every page: the chat is created, unless a 202 may still be making it. */
static void lookup_found_nothing(struct worker *w, struct job *job, const struct log_ctx *ctx)
{
	if (lookup_again_later(w, job, ctx))
		return;
	job->needs_lookup = false;
	job_lookup_end(job);
	log_with(LOG_LVL_NOTICE, ctx, "lookup: the chat does not exist; creating it");
	requeue_now(w, job);
}

/*
 * Chats that may be the one but name only 25 of its members (graphresp.h): each is settled
 * by its full member list (GET /chats/{id}/members), then the page's next link is read.
 */
static void follow_candidates(struct worker *w, struct job *job,
                              const struct graphresp_lookup_result *found,
                              const struct log_ctx *ctx)
{
	struct job_lookup *l = job->lookup;
	const char *why = NULL;
	drop_candidates(l);
	if (found->n_candidates > GRAPHRESP_LOOKUP_CANDIDATES)
		why = "the group chat may exist; too many chats with its topic name only 25 of its "
		      "members to settle which one it is";
	else if (!(l->candidates = calloc(found->n_candidates, sizeof *l->candidates)) ||
	         (found->next_link[0] && !job_set_string(&l->after_candidates, found->next_link)))
		why = "the group chat may exist; out of memory following the lookup";
	if (why) {
		log_with(LOG_LVL_WARNING, ctx, "lookup: %s", why);
		job_fail(job, job->http_status, "OutcomeUnknown", why, false);
		finish_job(w, job);
		return;
	}
	memcpy(l->candidates, found->candidates, found->n_candidates * sizeof *l->candidates);
	l->n_candidates = found->n_candidates;
	log_with(LOG_LVL_INFO, ctx,
	         "lookup: %zu chat(s) with its topic list only 25 of their members: reading their "
	         "member lists",
	         l->n_candidates);
	requeue_now(w, job);
}

/* A lookup's GET answered: true when it succeeded; otherwise its failure is handled. */
static bool lookup_answered(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                            long status, struct log_ctx *ctx)
{
	log_ctx_of(job, x, ctx);
	enum retry_class cls = retry_classify(status, (int)rc);
	if (cls == RETRY_SUCCESS)
		return true;
	lookup_failed(w, job, x, cls, status);
	return false;
}

static void on_lookup_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                             long status)
{
	struct log_ctx ctx;
	if (!lookup_answered(w, job, x, rc, status, &ctx))
		return;
	struct graphresp_lookup_result found;
	char err[256];
	if (!parse_lookup(job, x, &found, err, sizeof err)) {
		job_fail(job, status, "OutcomeUnknown", err, false);
		finish_job(w, job);
		return;
	}
	if (!found.found && found.n_candidates) {
		follow_candidates(w, job, &found, &ctx);
		return;
	}
	if (!found.found && found.next_link[0]) {
		lookup_next_page(w, job, found.next_link, &ctx);
		return;
	}
	if (found.found)
		lookup_found(w, job, &found.chat, &ctx);
	else
		lookup_found_nothing(w, job, &ctx);
}

/* GET /chats/{candidate}/members answered: the chat, or on to the next candidate or page. */
static void on_members_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                              long status)
{
	struct log_ctx ctx;
	if (!lookup_answered(w, job, x, rc, status, &ctx))
		return;
	struct job_lookup *l = job->lookup;
	bool match = false;
	char err[256];
	if (!parse_members(job, x, &match, err, sizeof err)) {
		job_fail(job, status, "OutcomeUnknown", err, false);
		finish_job(w, job);
		return;
	}
	if (match) {
		lookup_found(w, job, &l->candidates[l->next_candidate], &ctx);
		return;
	}
	if (++l->next_candidate < l->n_candidates) {
		requeue_now(w, job);
		return;
	}
	char *after = l->after_candidates;
	l->after_candidates = NULL;
	drop_candidates(l);
	if (after)
		lookup_next_page(w, job, after, &ctx);
	else
		lookup_found_nothing(w, job, &ctx);
	free(after);
}

/* GET /users/{upn}?$select=id answered: the member's object id, or none to match it by. */
static void on_resolve_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                              long status)
{
	struct job_lookup *l = job->lookup;
	const char *upn = job->ev->members[l->resolved].user_id;
	struct log_ctx ctx;
	log_ctx_of(job, x, &ctx);
	enum retry_class cls = retry_classify(status, (int)rc);
	if (cls == RETRY_SUCCESS) {
		struct graphresp_user user;
		char err[256];
		if (!graphresp_parse_user(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &user, err,
		                          sizeof err)) {
			job_fail(job, job->http_status, "OutcomeUnknown", err, false);
			finish_job(w, job);
			return;
		}
		memcpy(l->object_ids[l->resolved], user.id, sizeof user.id);
		if (!idcache_put(w->ids, job->ev->tenant, upn, user.id, cptime_mono_ms()))
			log_with(LOG_LVL_WARNING, &ctx, "lookup: cannot cache the id of %s", upn);
	} else if (status == 403 || status == 404) {
		/* No User.ReadBasic.All, or not a user of this tenant: mail and UPN must do. */
		log_with(LOG_LVL_WARNING, &ctx,
		         "lookup: cannot resolve %s to an object id (HTTP %ld); matching it by "
		         "UPN and mail only",
		         upn, status);
	} else {
		lookup_failed(w, job, x, cls, status);
		return;
	}
	l->resolved++;
	requeue_now(w, job);
}

/* ---- transfers ---- */

static size_t keep_response_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	/* Over the limit or out of memory, 0 aborts the transfer: CURLE_WRITE_ERROR. */
	return dynbuf_add(&x->resp, data, size * nmemb) ? size * nmemb : 0;
}

/* Copies a header's value (trimmed) when its name matches. */
static bool take_header(const char *line, size_t len, const char *name, char *out, size_t cap)
{
	size_t nlen = strlen(name);
	if (len <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
		return false;
	const char *v = line + nlen + 1;
	const char *end = line + len;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	size_t vlen = (size_t)(end - v);
	if (vlen >= cap)
		vlen = 0; /* too long to be trusted: treat as absent */
	memcpy(out, v, vlen);
	out[vlen] = '\0';
	return true;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;
	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		/* A new response (after 100 Continue): forget the previous one's headers. */
		x->request_id[0] = x->location[0] = x->retry_after[0] = '\0';
		return n;
	}
	if (!take_header(data, n, "request-id", x->request_id, sizeof x->request_id) &&
	    !take_header(data, n, "location", x->location, sizeof x->location))
		(void)take_header(data, n, "retry-after", x->retry_after, sizeof x->retry_after);
	return n;
}

/* Appends "Name: value" to a header list; the line is wiped once curl has copied it. */
static bool add_header(struct curl_slist **list, const char *name, const char *value)
{
	char line[TOKEN_MAX + 64];
	int len = snprintf(line, sizeof line, "%s: %s", name, value);
	if (len < 0 || len >= (int)sizeof line)
		return false;
	struct curl_slist *n = curl_slist_append(*list, line);
	explicit_bzero(line, (size_t)len); /* only what was written: this runs per header */
	if (!n)
		return false;
	*list = n;
	return true;
}

static void xfer_free(struct xfer *x)
{
	if (!x)
		return;
	if (x->easy)
		curl_easy_cleanup(x->easy);
	/* The Authorization line holds the token: wipe every header line before freeing. */
	for (struct curl_slist *h = x->headers; h; h = h->next)
		explicit_bzero(h->data, strlen(h->data));
	curl_slist_free_all(x->headers);
	if (x->token) {
		explicit_bzero(x->token, strlen(x->token));
		free(x->token);
	}
	dynbuf_free(&x->resp);
	free(x->url);
	free(x);
}

static bool xfer_headers(struct xfer *x, const char *token)
{
	char bearer[TOKEN_MAX + 8];
	struct job *job = x->job;
	int len = snprintf(bearer, sizeof bearer, "Bearer %s", token);
	if (len < 0 || len >= (int)sizeof bearer)
		return false;
	bool ok = add_header(&x->headers, "Authorization", bearer) &&
	          add_header(&x->headers, "client-request-id", job->client_request_id) &&
	          add_header(&x->headers, "return-client-request-id", "true") &&
	          add_header(&x->headers, "Accept", "application/json") &&
	          add_header(&x->headers, "User-Agent", "chatprovd/" CHATPROV_VERSION);
	explicit_bzero(bearer, (size_t)len);
	if (!ok)
		return false;
	if (x->kind == XFER_POST) {
		if (!add_header(&x->headers, "Content-Type", "application/json"))
			return false;
		/* "Expect:" with no value stops curl's 100-continue round trip on HTTP/1.1. */
		struct curl_slist *n = curl_slist_append(x->headers, "Expect:");
		if (!n)
			return false;
		x->headers = n;
		return true;
	}
	return add_header(&x->headers, "Prefer", "include-unknown-enum-members");
}

static const char *xfer_url(const struct worker *w, const struct xfer *x)
{
	switch (x->kind) {
	case XFER_POST:
		return w->chats_url;
	case XFER_POLL:
		return x->job->op_url;
	case XFER_LOOKUP:
	case XFER_RESOLVE:
	case XFER_CHAT:
	case XFER_MEMBERS:
		break;
	}
	return x->url;
}

/* XFER_POST: hands libcurl the job's body. */
static size_t read_body(char *buf, size_t size, size_t nitems, void *arg)
{
	struct xfer *x = arg;
	size_t left = x->body_len - x->body_sent;
	size_t n = size * nitems < left ? size * nitems : left;
	memcpy(buf, x->job->body + x->body_sent, n);
	x->body_sent += n;
	return n;
}

/*
 * When a reused connection dies before an answer, libcurl sends the request again on a new
 * one by itself, rewinding the body first; the POST may have reached Graph already and
 * nothing would tell the worker. A body that cannot be rewound makes that resend fail, so
 * the error reaches on_post_answer: a group chat goes through the unknown-outcome path
 * (lookup), a one-on-one chat is retried (Graph returns the same chat).
 */
static int refuse_rewind(void *arg, curl_off_t offset, int origin)
{
	(void)arg;
	(void)offset;
	(void)origin;
	return CURL_SEEKFUNC_CANTSEEK;
}

/*
 * Right before a POST goes on the wire (its connection ready, nothing of it sent): a 429
 * that came back since the scheduler handed the job out blocks its tenant, and a transfer
 * that waited in libcurl's queue for a connection must not go inside the advertised
 * window. Aborted here, it ends with CURLE_ABORTED_BY_CALLBACK and is requeued (hold_post).
 */
static int hold_if_blocked(void *arg, char *primary_ip, char *local_ip, int primary_port,
                           int local_port)
{
	struct xfer *x = arg;
	(void)primary_ip;
	(void)local_ip;
	(void)primary_port;
	(void)local_port;
	if (!pacer_blocked(x->w->conf.pacer, x->job->tenant, cptime_mono_ms()))
		return CURL_PREREQFUNC_OK;
	x->held = true;
	return CURL_PREREQFUNC_ABORT;
}

static bool xfer_post_body(struct xfer *x)
{
	CURL *e = x->easy;
	x->body_len = strlen(x->job->body);
	/* A read callback makes libcurl allocate an upload buffer per transfer, 64 KiB by
	 * default: the smallest it takes (bodies are a few KiB) keeps 1,000 in flight small. */
	return curl_easy_setopt(e, CURLOPT_POST, 1L) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_READFUNCTION, read_body) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_READDATA, x) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, refuse_rewind) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_SEEKDATA, x) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, hold_if_blocked) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_PREREQDATA, x) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len) ==
	           CURLE_OK;
}

static bool xfer_setup(struct worker *w, struct xfer *x)
{
	const struct cfg *cfg = w->conf.cfg;
	CURL *e = x->easy;
	bool ok =
	    curl_easy_setopt(e, CURLOPT_PRIVATE, x) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_URL, xfer_url(w, x)) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep_response_body) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, x) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HEADERDATA, x) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->curl_err) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(cfg->graph.request_timeout_s * 1000)) ==
	        CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	                     (long)(cfg->graph.connect_timeout_s * 1000)) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS) == CURLE_OK &&
	    /* Waiting to multiplex only makes sense over HTTP/2 (https): on HTTP/1.1 it
	     * ties every waiting transfer to one connection, hung or not. */
	    curl_easy_setopt(e, CURLOPT_PIPEWAIT, w->https ? 1L : 0L) == CURLE_OK &&
	    /* Answers are a few KiB: a 4 KiB receive buffer instead of 16 KiB per transfer
	     * (a thousand in flight); a larger answer is only read in more steps. */
	    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http") == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
	if (ok)
		ok = tls_trust_ca_file(e, cfg->graph.ca_file);
	if (ok && x->kind == XFER_POST)
		ok = xfer_post_body(x);
	return ok;
}

/* The first owner of a group chat: the user whose chats a lookup lists. */
static const char *lookup_owner(const struct job *job)
{
	for (size_t i = 0; i < job->ev->n_members; i++)
		if (!job->ev->members[i].guest && !job->ev->members[i].tenant_id)
			return job->ev->members[i].user_id;
	return NULL;
}

/* The URL of a lookup step (a member's object id, the first page, the next) or a chat read. */
static bool xfer_own_url(const struct worker *w, const struct job *job, struct xfer *x)
{
	char url[GRAPHREQ_URL_MAX + 1];
	const struct job_lookup *l = job->lookup;
	const char *owner = lookup_owner(job);
	bool built;
	if (x->kind == XFER_CHAT) {
		built = graphreq_chat_url(w->version_root, job->chat_id, url, sizeof url);
	} else if (x->kind == XFER_MEMBERS) {
		built = graphreq_chat_members_url(w->version_root,
		                                  l->candidates[l->next_candidate].id, url, sizeof url);
	} else if (x->kind == XFER_RESOLVE) {
		built = graphreq_user_id_url(w->version_root, job->ev->members[l->resolved].user_id,
		                             url, sizeof url);
	} else if (l->next_page) {
		x->url = strdup(l->next_page);
		return x->url != NULL;
	} else {
		built = owner && job->ev->topic &&
		        graphreq_lookup_url(w->version_root, owner, job->ev->topic, url, sizeof url);
	}
	if (!built) {
		return false;
	}
	x->url = strdup(url);
	return x->url != NULL;
}

/* A POST a Retry-After holds goes back to the queue: not an attempt, not a retry. */
static void requeue_held(struct worker *w, struct job *job)
{
	int64_t now = cptime_mono_ms();
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, now, now)) {
		job_fail(job, 429, "QueueFull", "scheduler queue full on retry", true);
		finish_job(w, job);
	}
}

/* A POST hold_if_blocked stopped before it was sent: the attempt it counted is undone. */
static void hold_post(struct worker *w, struct xfer *x)
{
	struct job *job = x->job;
	int32_t partition = job->partition;
	job->attempts--;
	job->first_attempt_mono_ms = x->prev_first_attempt_ms;
	requeue_held(w, job);
	if (w->conf.hooks.post_end)
		w->conf.hooks.post_end(partition, w->conf.arg);
}

/* Starts an exchange for job with token. false: the job was not started. */
static bool start_transfer(struct worker *w, struct job *job, enum xfer_kind kind,
                           const char *token)
{
	struct xfer *x = calloc(1, sizeof *x);
	if (!x)
		goto fail;
	x->w = w;
	x->job = job;
	x->kind = kind;
	dynbuf_init(&x->resp, w->conf.cfg->graph.max_response_bytes);
	x->started_mono_ms = cptime_mono_ms();
	x->token = strdup(token);
	x->easy = curl_easy_init();
	if (!x->token || !x->easy ||
	    ((kind == XFER_LOOKUP || kind == XFER_RESOLVE || kind == XFER_CHAT ||
	      kind == XFER_MEMBERS) &&
	     !xfer_own_url(w, job, x)) ||
	    !xfer_headers(x, token) || !xfer_setup(w, x) ||
	    curl_multi_add_handle(w->multi, x->easy) != CURLM_OK)
		goto fail;
	w->in_flight++;
	if (kind == XFER_POST) {
		x->prev_first_attempt_ms = job->first_attempt_mono_ms;
		job->attempts++;
		if (!job->first_attempt_mono_ms)
			job->first_attempt_mono_ms = x->started_mono_ms;
		if (!job->intent_wall_ms)
			job->intent_wall_ms = cptime_wall_ms();
	}
	return true;
fail:
	if (kind == XFER_POST && w->conf.hooks.post_end) /* begun by launch */
		w->conf.hooks.post_end(job->partition, w->conf.arg);
	xfer_free(x);
	return false;
}

/* A job whose partition went to another instance: it leaves without a result. */
static void abandon(struct worker *w, struct job *job)
{
	job->status = JOB_ABANDONED;
	w->conf.on_done(job, w->conf.arg);
}

/*
 * Moves a lookup past the members it needs no request for: ids, members of other tenants,
 * UPNs whose object id is cached. True when member l->resolved needs a GET /users.
 */
static bool lookup_needs_user(struct worker *w, struct job *job)
{
	struct job_lookup *l = job->lookup;
	int64_t now = cptime_mono_ms();
	for (; l->resolved < job->ev->n_members; l->resolved++) {
		const struct event_member *m = &job->ev->members[l->resolved];
		if (m->tenant_id || !event_is_upn(m->user_id))
			continue;
		if (!idcache_get(w->ids, job->ev->tenant, m->user_id, now,
		                 l->object_ids[l->resolved]))
			return true;
	}
	return false;
}

/* A lookup goes on: the next member to resolve, else the chats. False: the job failed. */
static bool lookup_kind(struct worker *w, struct job *job, enum xfer_kind *kind)
{
	if (!job->lookup) {
		job->lookup = calloc(1, sizeof *job->lookup);
		if (job->lookup)
			job->lookup->object_ids =
			    calloc(job->ev->n_members, sizeof *job->lookup->object_ids);
		if (!job->lookup || !job->lookup->object_ids) {
			job_lookup_end(job);
			job_fail(job, job->http_status, "OutcomeUnknown",
			         "the group chat may exist; out of memory looking it up", true);
			finish_job(w, job);
			return false;
		}
	}
	struct job_lookup *l = job->lookup;
	*kind = lookup_needs_user(w, job)              ? XFER_RESOLVE
	        : l->next_candidate < l->n_candidates ? XFER_MEMBERS
	                                              : XFER_LOOKUP;
	return true;
}

/*
 * Counts a POST in flight, then checks that the partition is still ours: in this order, a
 * revoke (which changes the generation, then waits until no POST is counted) either sees
 * this one and waits for it, or happened before the check, which then fails. Checking first
 * would leave a window in which a revoke sees nothing in flight and the POST still leaves,
 * while the next owner's lookup may run before it lands. False: not ours, nothing counted.
 */
static bool begin_post(struct worker *w, struct job *job)
{
	const struct worker_hooks *h = &w->conf.hooks;
	if (h->post_begin)
		h->post_begin(job->partition, w->conf.arg);
	if (!h->is_current || h->is_current(job, w->conf.arg))
		return true;
	if (h->post_end)
		h->post_end(job->partition, w->conf.arg);
	return false;
}

/*
 * What a job needs next: a poll of its operation, a lookup of a group chat whose creation
 * may have happened already, or a POST. A lookup that cannot be made ends the job with
 * OutcomeUnknown rather than risk a second chat. Returns false when the job was finished.
 */
static bool next_kind(struct worker *w, struct job *job, enum xfer_kind *kind)
{
	if (w->conf.hooks.is_current && !w->conf.hooks.is_current(job, w->conf.arg)) {
		/* The new owner of the partition resumes from the state topic. */
		abandon(w, job);
		return false;
	}
	if (job->phase == JOB_PHASE_POLL || job->phase == JOB_PHASE_CHAT) {
		*kind = job->phase == JOB_PHASE_POLL ? XFER_POLL : XFER_CHAT;
		return true;
	}
	if (!job->needs_lookup) {
		*kind = XFER_POST;
		return true;
	}
	struct worker_policy p = current_policy(w);
	if (!p.group_chat_lookup || !job->ev->topic || !lookup_owner(job)) {
		job_fail(job, job->http_status, "OutcomeUnknown",
		         p.group_chat_lookup
		             ? "the group chat may exist; it has no topic or owner to look it up by"
		             : "the group chat may exist; [recovery] group_chat_lookup is off",
		         false);
		finish_job(w, job);
		return false;
	}
	return lookup_kind(w, job, kind);
}

/* Gets the tenant's token and starts the job's next exchange, or parks it. */
static void launch(struct worker *w, struct job *job)
{
	enum xfer_kind kind;
	if (!next_kind(w, job, &kind))
		return;
	int64_t expires;
	enum auth_status st =
	    auth_get_token(w->conf.auth, job->tenant, w->token_buf, TOKEN_MAX, &expires);
	if (st != AUTH_OK) {
		/*
		 * Pending credentials hold the job: nothing fails because the token endpoint
		 * blinked. Failing credentials hold it too, in case they are fixed (SIGHUP),
		 * but only for the retry budget's max_elapsed_s: a broken tenant profile must
		 * not hold memory, and so the other tenants, forever.
		 */
		int64_t now = cptime_mono_ms();
		if (!job->held_since_mono_ms)
			job->held_since_mono_ms = now;
		struct worker_policy p = current_policy(w);
		if (st == AUTH_FAILED && p.retry.max_elapsed_ms > 0 &&
		    now - job->held_since_mono_ms > p.retry.max_elapsed_ms) {
			char why[JOB_ERR_MSG_MAX];
			auth_last_error(w->conf.auth, job->tenant, why, sizeof why);
			job_fail(job, 0, "AuthenticationFailed", why, true);
			finish_job(w, job);
			return;
		}
		if (!park_job(w, job)) {
			job_fail(job, 0, "OutOfMemory", "cannot park job", true);
			finish_job(w, job);
		}
		return;
	}
	if (kind == XFER_POST && pacer_blocked(w->conf.pacer, job->tenant, cptime_mono_ms())) {
		/* Parked while a 429 came back: it waits for the block's end in the queue. */
		explicit_bzero(w->token_buf, strlen(w->token_buf));
		requeue_held(w, job);
		return;
	}
	if (kind == XFER_POST && !begin_post(w, job)) {
		explicit_bzero(w->token_buf, strlen(w->token_buf));
		abandon(w, job); /* the new owner resumes from the state topic */
		return;
	}
	bool ok = start_transfer(w, job, kind, w->token_buf);
	explicit_bzero(w->token_buf, strlen(w->token_buf));
	if (!ok) {
		job_fail(job, 0, "InternalError", "cannot start HTTP transfer", true);
		finish_job(w, job);
	}
}

/*
 * libcurl does not wait for a connection that is still in its handshake, or whose
 * SETTINGS (the server's stream limit) have not arrived, once it knows the host
 * multiplexes: a burst of transfers then opens a connection each (measured: 700 for 800
 * concurrent requests, and again after a connection died with 1,000 streams). Over https
 * the connections are capped from the start at what max_in_flight needs at the 100
 * streams per connection HTTP/2 servers should allow at least; the surplus waits in
 * libcurl's pending queue for a connection to multiplex on. A server that answers over
 * HTTP/1.1 cannot multiplex: the cap is lifted at its first answer.
 */
static long https_connection_cap(unsigned max_in_flight)
{
	const long streams_per_connection = 100, min_connections = 4;
	long n = ((long)max_in_flight + streams_per_connection - 1) / streams_per_connection;
	return n < min_connections ? min_connections : n;
}

static void note_protocol(struct worker *w, CURL *easy, long status)
{
	long version = 0;
	if (w->protocol_known || !w->https || status == 0 ||
	    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version) != CURLE_OK)
		return;
	w->protocol_known = true;
	if (version != CURL_HTTP_VERSION_2_0 &&
	    curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L) != CURLM_OK)
		log_msg(LOG_LVL_WARNING, "cannot lift the connection cap for HTTP/1.1");
}

static void finish_transfer(struct worker *w, CURL *easy, CURLcode rc)
{
	struct xfer *x = NULL;
	long status = 0;
	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	note_protocol(w, easy, status);
	curl_multi_remove_handle(w->multi, easy);
	w->in_flight--;
	if (x->held) {
		hold_post(w, x);
		xfer_free(x);
		return;
	}
	struct job *job = x->job;
	if (dynbuf_too_big(&x->resp)) {
		rc = CURLE_OK;
		dynbuf_reset(&x->resp);
		snprintf(x->curl_err, sizeof x->curl_err, "response body over max_response_bytes");
	}
	pipeline_metrics_graph_response(w->conf.metrics, job->tenant, status,
	                                (cptime_mono_ms() - x->started_mono_ms) / 1000.0);
	/* The result's "graph" part describes the POST; polls only move the operation. */
	if (x->kind == XFER_POST) {
		job->http_status = rc == CURLE_OK ? status : 0;
		snprintf(job->graph_request_id, sizeof job->graph_request_id, "%s", x->request_id);
	}
	long answer = rc == CURLE_OK ? status : 0;
	int32_t partition = job->partition; /* job may be gone once its outcome is out */
	switch (x->kind) {
	case XFER_POST:
		on_post_answer(w, job, x, rc, answer);
		if (w->conf.hooks.post_end)
			w->conf.hooks.post_end(partition, w->conf.arg);
		break;
	case XFER_POLL:
		on_poll_answer(w, job, x, rc, answer);
		break;
	case XFER_LOOKUP:
		on_lookup_answer(w, job, x, rc, answer);
		break;
	case XFER_RESOLVE:
		on_resolve_answer(w, job, x, rc, answer);
		break;
	case XFER_CHAT:
		on_chat_answer(w, job, x, rc, answer);
		break;
	case XFER_MEMBERS:
		on_members_answer(w, job, x, rc, answer);
		break;
	}
	xfer_free(x);
}

/* ---- the loop ---- */

static unsigned capacity(const struct worker *w)
{
	return w->in_flight >= w->conf.max_in_flight
	           ? 0
	           : w->conf.max_in_flight - (unsigned)w->in_flight;
}

static void admit_parked(struct worker *w)
{
	size_t n = w->n_parked;
	struct job **jobs = w->parked;
	w->parked = NULL;
	w->n_parked = w->cap_parked = 0;
	for (size_t i = 0; i < n; i++)
		launch(w, jobs[i]);
	free(jobs);
}

/* Starts due polls and scheduled POSTs; returns the next time anything is due. */
static int64_t admit_work(struct worker *w, int64_t now)
{
	int64_t wake = now + LOOP_IDLE_MS;
	/* Parked jobs wait for news from the auth thread, or a second for their deadline. */
	if (w->n_parked &&
	    (atomic_exchange(&w->token_changed, false) || now - w->parked_retry_ms >= 1000)) {
		w->parked_retry_ms = now;
		admit_parked(w);
	}
	while (w->polls.len && capacity(w) && w->polls.items[0]->next_poll_mono_ms <= now)
		launch(w, heap_pop(&w->polls));
	if (w->polls.len && w->polls.items[0]->next_poll_mono_ms < wake)
		wake = w->polls.items[0]->next_poll_mono_ms;
	bool took = false;
	while (capacity(w)) {
		void *job;
		size_t tenant;
		int64_t at = 0;
		enum pacer_take_status st = pacer_take(w->conf.pacer, now, &job, &tenant, &at);
		if (st == PACER_WAIT && at < wake)
			wake = at;
		if (st != PACER_TAKEN)
			break;
		launch(w, job);
		took = true;
	}
	if (took && w->conf.hooks.took_work)
		w->conf.hooks.took_work(w->conf.arg);
	return wake;
}

static void reap_transfers(struct worker *w)
{
	int queued;
	CURLMsg *msg;
	while ((msg = curl_multi_info_read(w->multi, &queued)) != NULL) {
		if (msg->msg == CURLMSG_DONE)
			finish_transfer(w, msg->easy_handle, msg->data.result);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (;;) {
		/* Before looking for work: a worker_wakeup from now on sends a wake-up again. */
		atomic_store(&w->wake_pending, false);
		int64_t now = cptime_mono_ms();
		atomic_store(&w->heartbeat_ms, now);
		bool stopping = is_stopping(w);
		if (stopping && w->in_flight == 0)
			break;
		int64_t wake = stopping ? now + LOOP_IDLE_MS : admit_work(w, now);
		update_active(w);
		int running;
		curl_multi_perform(w->multi, &running);
		reap_transfers(w);
		int64_t timeout = wake - cptime_mono_ms();
		if (timeout < 0)
			timeout = 0;
		if (timeout > LOOP_IDLE_MS)
			timeout = LOOP_IDLE_MS;
		curl_multi_poll(w->multi, NULL, 0, (int)timeout, NULL);
	}
	update_active(w);
	atomic_store(&w->exited, true);
	return NULL;
}

/* ---- lifecycle ---- */

static bool build_roots(struct worker *w)
{
	struct chatreq_roots roots;
	if (!chatreq_roots(w->conf.cfg, &roots))
		return false;
	memcpy(w->version_root, roots.version_root, sizeof w->version_root);
	memcpy(w->bind_root, roots.bind_root, sizeof w->bind_root);
	memcpy(w->chats_url, roots.chats_url, sizeof w->chats_url);
	return true;
}

bool worker_new(const struct worker_conf *conf, struct worker **out)
{
	struct worker *w = calloc(1, sizeof *w);
	if (!w)
		return false;
	w->conf = *conf;
	w->policy = conf->policy;
	w->rng = (uint64_t)cptime_wall_ms() ^ (uint64_t)(uintptr_t)w;
	if (pthread_mutex_init(&w->lock, NULL) != 0) {
		free(w);
		return false;
	}
	w->https = strncmp(conf->cfg->graph.base_url, "https://", 8) == 0;
	w->token_buf = calloc(1, TOKEN_MAX);
	w->multi = curl_multi_init();
	if (!w->token_buf || !w->multi || !idcache_new(IDCACHE_CAPACITY, IDCACHE_TTL_MS, &w->ids) ||
	    !build_roots(w))
		goto fail;
	/*
	 * libcurl puts at most CURLMOPT_MAX_CONCURRENT_STREAMS (default 100) streams on one
	 * HTTP/2 connection, whatever the server allows; past that each waiting transfer
	 * opens a connection of its own (PIPEWAIT only waits while libcurl does not know
	 * whether the host multiplexes): 1,000 in flight opened 160-750 TLS connections
	 * (bench/run h2). The server's own
	 * SETTINGS_MAX_CONCURRENT_STREAMS still applies below this.
	 */
	if (curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, (long)conf->max_in_flight) !=
	        CURLM_OK ||
	    curl_multi_setopt(w->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) !=
	        CURLM_OK ||
	    curl_multi_setopt(w->multi, CURLMOPT_MAX_CONCURRENT_STREAMS,
	                      (long)conf->max_in_flight) != CURLM_OK ||
	    (w->https && curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
	                                   https_connection_cap(conf->max_in_flight)) != CURLM_OK))
		goto fail;
	*out = w;
	return true;
fail:
	worker_free(w);
	return false;
}

bool worker_start(struct worker *w)
{
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
		return false;
	w->started = true;
	return true;
}

/*
 * One wake-up per loop turn of the worker, however many events the Kafka thread hands over
 * meanwhile: each is a syscall here and a poll plus a curl_multi_perform pass there
 * (issue 15). The worker clears the flag before it looks for work, so work handed over
 * after that look always sends one; before it, the wake-up already sent is still pending.
 */
void worker_wakeup(struct worker *w)
{
	if (!atomic_exchange(&w->wake_pending, true))
		curl_multi_wakeup(w->multi);
}

void worker_token_changed(struct worker *w)
{
	atomic_store(&w->token_changed, true);
	worker_wakeup(w);
}

void worker_set_policy(struct worker *w, const struct worker_policy *policy)
{
	pthread_mutex_lock(&w->lock);
	w->policy = *policy;
	pthread_mutex_unlock(&w->lock);
	worker_wakeup(w);
}

void worker_stop(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_mutex_unlock(&w->lock);
	worker_wakeup(w);
}

size_t worker_join(struct worker *w, struct job ***jobs)
{
	if (w->started) {
		pthread_join(w->thread, NULL);
		w->started = false;
	}
	size_t n = w->polls.len + w->n_parked;
	*jobs = NULL;
	if (n == 0)
		return 0;
	struct job **list = malloc(n * sizeof *list);
	if (!list)
		return 0;
	size_t k = 0;
	for (size_t i = 0; i < w->polls.len; i++)
		list[k++] = w->polls.items[i];
	for (size_t i = 0; i < w->n_parked; i++)
		list[k++] = w->parked[i];
	w->polls.len = w->n_parked = 0;
	update_active(w);
	*jobs = list;
	return k;
}

void worker_free(struct worker *w)
{
	if (!w)
		return;
	if (w->started)
		worker_stop(w);
	struct job **rest;
	size_t n = worker_join(w, &rest);
	for (size_t i = 0; i < n; i++)
		job_free(rest[i]);
	free(rest);
	if (w->multi)
		curl_multi_cleanup(w->multi);
	free(w->polls.items);
	free(w->parked);
	free(w->token_buf);
	idcache_free(w->ids);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

int64_t worker_heartbeat_ms(const struct worker *w)
{
	return atomic_load(&w->heartbeat_ms);
}

bool worker_exited(const struct worker *w)
{
	return atomic_load(&w->exited);
}

size_t worker_active(const struct worker *w)
{
	return atomic_load(&w->active);
}
