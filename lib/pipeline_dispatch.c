/*
 * pipeline_dispatch.c - what a valid event becomes, by what the request state says.
 *
 * Owns: admission (job, offset, memory), preparing the request, routing by the state (a
 * replay, a resumed operation, a lookup, an intent, or the scheduler), the intent record,
 * and the duplicates of an id in progress (followers: answered, restarted, dropped).
 * Invariants: a group chat is pushed to the scheduler only after its intent is acknowledged
 * (publishing calls back dispatch_queue_job); at most one job per id is active, the others
 * wait as followers and get the same result bytes.
 * Callers: intake (dispatch_admit), rebalance (dispatch_drop_followers), publishing through
 * p->events (set by pipeline_new). Calls publish and core.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chatreq.h"
#include "cptime.h"
#include "graphreq.h"
#include "log.h"
#include "pipeline_int.h"
#include "staterec.h"

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

void dispatch_queue_job(struct pipeline *p, struct job *job)
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
	if (publish_queue_record(p, p->cfg->kafka.state_topic, job->partition, job->ev->id,
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
	publish_result_key(job, &key, &key_len);
	job->status = si->done_succeeded ? JOB_SUCCEEDED : JOB_FAILED;
	job->pending_deliveries = 1;
	core_mark_result_queued(p, job);
	struct log_ctx ctx = {.request_id = job->ev->id,
	                      .client_request_id = job->client_request_id};
	log_with(LOG_LVL_INFO, &ctx, "replayed request: answering with the recorded result");
	rd_kafka_headers_t *h = job->headers ? rd_kafka_headers_copy(job->headers) : NULL;
	bool ok = publish_queue_record(p, p->cfg->kafka.output_topic, RD_KAFKA_PARTITION_UA, key,
	                               key_len, value, len, h, job, false);
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
	bool mine = state_fetch(p->state, job->ev->id, si->partition, si->offset, &value, &len, err,
	                        sizeof err);
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
		dispatch_queue_job(p, job);
}

/* The leader of an id finished: every waiting duplicate gets the same result bytes. */
void dispatch_answer_followers(struct pipeline *p, const rd_kafka_message_t *done)
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
		publish_result_key(job, &key, &key_len);
		job->status = staterec_succeeded(done) ? JOB_SUCCEEDED : JOB_FAILED;
		job->pending_deliveries = 1;
		core_mark_result_queued(p, job);
		rd_kafka_headers_t *h = job->headers ? rd_kafka_headers_copy(job->headers) : NULL;
		(void)publish_queue_record(p, p->cfg->kafka.output_topic, RD_KAFKA_PARTITION_UA,
		                           key, key_len, done->payload, done->len, h, job, false);
	}
}

/*
 * The leader of an id is gone. A duplicate that arrived after the leader's done record was
 * acknowledged (answer_followers had run) but before its result was: it starts again, and
 * the state now answers it (a replay of the done record, or a lookup if there is none).
 */
void dispatch_restart_followers(struct pipeline *p, const char *id)
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
void dispatch_drop_followers(struct pipeline *p, bool (*drop)(struct pipeline *, struct job *))
{
	struct job *list = p->followers;
	p->followers = NULL;
	while (list) {
		struct job *job = list;
		list = job->next_follower;
		job->next_follower = NULL;
		if (drop(p, job)) {
			core_release(p, job);
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
	for (size_t i = 0;
	     rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
	     i++)
		bytes += strlen(name) + size + 16;
	return bytes;
}

void dispatch_admit(struct pipeline *p, const rd_kafka_message_t *msg)
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
		publish_reject(p, msg, job, reason);
		return;
	}
	if (p->cfg->kafka.dlq_topic[0] && !job_keep_payload(job, msg)) {
		/* A failure could not be copied to the DLQ as it came. */
		log_error("out of memory admitting an event");
		atomic_store(&p->fatal, true);
		core_release(p, job);
		return;
	}
	dispatch(p, job);
}
