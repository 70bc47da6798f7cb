/*
 * worker_answers.c - what each Graph answer means for its job: created, accepted (202),
 * throttled, transient, refused; an operation's progress; a lookup's pages, candidates and
 * member resolutions. Ends in a final outcome (worker_finish_job) or a requeue.
 */
#include <curl/curl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chatreq.h"
#include "cptime.h"
#include "graphreq.h"
#include "graphresp.h"
#include "log.h"
#include "pipeline_metrics.h"
#include "tls.h"
#include "worker_int.h"

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

void worker_finish_job(struct worker *w, struct job *job)
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
		worker_finish_job(w, job);
	}
}

/* Backs a job off (never less than the server's Retry-After) and queues it again, or
 * fails it when the retry budget is spent. */
static void retry_or_fail(struct worker *w, struct job *job, long http_status, const char *code,
                          const char *message, int64_t retry_after)
{
	struct worker_policy p = worker_current_policy(w);
	int64_t now = cptime_mono_ms();
	job->transient_failures++;
	int64_t delay =
	    retry_next_delay_ms(&p.retry, job->transient_failures, retry_after, &w->rng);
	if (!retry_may_retry(&p.retry, job->transient_failures, job->first_attempt_mono_ms, now,
	                     delay)) {
		job_fail(job, http_status, code, message, true);
		worker_finish_job(w, job);
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
		worker_finish_job(w, job);
		return;
	}
	job->next_poll_mono_ms = at;
	if (!worker_heap_push(&w->polls, job)) {
		job_fail(job, job->http_status, "OutOfMemory", "cannot queue operation poll", true);
		worker_finish_job(w, job);
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
	if (!graphresp_parse_chat(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &chat, err,
	                          sizeof err)) {
		/* The chat exists but we cannot say which: never create it again blindly. */
		job_fail(job, 201, "InvalidResponse", err, false);
		worker_finish_job(w, job);
		return;
	}
	take_chat(job, &chat);
	worker_finish_job(w, job);
}

static void follow_operation(struct worker *w, struct job *job, struct xfer *x)
{
	struct worker_policy p = worker_current_policy(w);
	char url[JOB_URL_MAX];
	if (!x->location[0] ||
	    !graphreq_resolve_location(w->version_root, x->location, url, sizeof url) ||
	    !job_set_string(&job->op_url, url)) {
		job_fail(job, 202, "InvalidLocation",
		         "202 Accepted without a usable Location on this Graph host", false);
		worker_finish_job(w, job);
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
	struct worker_policy p = worker_current_policy(w);
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
	struct worker_policy p = worker_current_policy(w);
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
		worker_finish_job(w, job);
		return;
	}
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, now, now)) {
		job_fail(job, 429, "QueueFull", "scheduler queue full on retry", true);
		worker_finish_job(w, job);
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
static bool wait_for_member(struct worker *w, struct job *job, const struct xfer *x, int64_t now,
                            const struct log_ctx *ctx)
{
	struct worker_policy p = worker_current_policy(w);
	struct graphresp_error ge = {.message = ""};
	if (!graphresp_parse_error(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &ge))
		ge.message[0] = '\0';
	const char *member = unknown_member(job, ge.message);
	if (!job->not_found_since_mono_ms)
		job->not_found_since_mono_ms = now;
	int64_t delay = retry_not_found_delay_ms(&p.not_found, ++job->not_found_retries,
	                                         job->not_found_since_mono_ms, now, &w->rng);
	if (delay < 0) {
		log_with(
		    LOG_LVL_NOTICE, ctx,
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
		worker_finish_job(w, job);
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

void worker_on_post_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
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
		worker_finish_job(w, job);
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
		worker_finish_job(w, job);
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
	if (!job->chat_id[0] || !worker_heap_push(&w->polls, job))
		worker_finish_job(w, job); /* succeeded all the same, without the details */
}

static void on_operation(struct worker *w, struct job *job, struct xfer *x)
{
	struct worker_policy p = worker_current_policy(w);
	struct graphresp_operation op;
	char err[256];
	int64_t now = cptime_mono_ms();
	if (!graphresp_parse_operation(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &op, err,
	                               sizeof err)) {
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
		worker_finish_job(w, job);
		return;
	default: {
		int64_t wait = retry_after_ms(x, p.poll_interval_ms);
		schedule_poll(w, job,
		              now + (wait > p.poll_interval_ms ? wait : p.poll_interval_ms));
		return;
	}
	}
}

void worker_on_poll_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status)
{
	struct worker_policy p = worker_current_policy(w);
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
		worker_finish_job(w, job);
		return;
	}
	/* Throttled, transient, 401 or a young 404: poll again later, within the deadline. */
	int64_t wait = retry_after_ms(x, p.poll_interval_ms);
	if (fresh_404 || cls == RETRY_AUTH)
		wait = retry_after_ms(x, 1000);
	schedule_poll(w, job, now + wait);
}

/* The chat of a finished operation: its details, or, after a few tries, the result without. */
void worker_on_chat_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                           long status)
{
	struct graphresp_chat chat;
	char err[256] = "";
	enum retry_class cls = retry_classify(status, (int)rc);
	if (cls == RETRY_SUCCESS &&
	    graphresp_parse_chat(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &chat, err,
	                         sizeof err) &&
	    strcmp(chat.id, job->chat_id) == 0) {
		take_chat(job, &chat);
		worker_finish_job(w, job);
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
	worker_finish_job(w, job);
}

/* ---- lookup answers (unknown outcomes of group chats) ---- */

static void requeue_at(struct worker *w, struct job *job, int64_t at)
{
	int64_t now = cptime_mono_ms();
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, at > now ? at : now, now)) {
		job_fail(job, 0, "QueueFull", "scheduler queue full", true);
		worker_finish_job(w, job);
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
	bool ok = graphresp_parse_lookup(dynbuf_str(&x->resp), dynbuf_len(&x->resp), &q, found, err,
	                                 errcap);
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
		worker_finish_job(w, job);
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
	struct worker_policy p = worker_current_policy(w);
	struct job_lookup *l = job->lookup;
	int64_t now = cptime_mono_ms();
	if (!l->failures++)
		l->first_failure_mono_ms = now;
	int64_t delay = retry_next_delay_ms(&p.retry, l->failures, retry_after, &w->rng);
	p.retry.max_attempts = UINT_MAX;
	if (!retry_may_retry(&p.retry, l->failures, l->first_failure_mono_ms, now, delay)) {
		job_fail(job, status, "OutcomeUnknown",
		         "the group chat may exist and the lookup keeps failing", true);
		worker_finish_job(w, job);
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
	worker_finish_job(w, job);
}

/*
 * A group chat with an app is made by a 202 operation, and its chat is listed only once the
 * operation ends (graph-sim does so; Graph documents nothing either way). A POST whose 202
 * was lost (no answer, a 504, or an instance that died after it) may have started one: until the
 * operation could have ended, a lookup that finds nothing looks again every poll_interval_s before
 * a second POST. Bounded: ANSWER_LOST_SETTLE_MS after that POST left, and never past [operations]
 * timeout_s.
 */
static bool lookup_again_later(struct worker *w, struct job *job, const struct log_ctx *ctx)
{
	struct worker_policy p = worker_current_policy(w);
	int64_t sent = job->unsure_post_wall_ms ? job->unsure_post_wall_ms : job->intent_wall_ms;
	int64_t settle =
	    p.op_timeout_ms < ANSWER_LOST_SETTLE_MS ? p.op_timeout_ms : ANSWER_LOST_SETTLE_MS;
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
	worker_finish_job(w, job);
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
		worker_finish_job(w, job);
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

void worker_on_lookup_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
                             long status)
{
	struct log_ctx ctx;
	if (!lookup_answered(w, job, x, rc, status, &ctx))
		return;
	struct graphresp_lookup_result found;
	char err[256];
	if (!parse_lookup(job, x, &found, err, sizeof err)) {
		job_fail(job, status, "OutcomeUnknown", err, false);
		worker_finish_job(w, job);
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
void worker_on_members_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
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
		worker_finish_job(w, job);
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
void worker_on_resolve_answer(struct worker *w, struct job *job, struct xfer *x, CURLcode rc,
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
			worker_finish_job(w, job);
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
