/*
 * pipeline_publish.c - records to the producer, and what their delivery reports settle.
 *
 * Owns: producing (publish_produce, publish_queue_record), results with their done record
 * and DLQ copy, rejections, operation records, the failed records waiting to be produced
 * again (struct reproduce), and the delivery reports.
 * Invariants: a job's offset is done only when every record of its result is acknowledged
 * or given up; a record refused before it left or in its delivery report is judged on the
 * Kafka thread, produced again after a backoff (without bound after a timeout, at most
 * REFUSALS_MAX times after a refusal); headers given to it are consumed either way.
 * Callers: dispatch, rebalance and pipeline.c; the workers (publish_on_job_done,
 * publish_record_operation, any thread); librdkafka (publish_on_delivery, Kafka thread).
 * Calls core; up to dispatch only through p->events.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cptime.h"
#include "kafka.h"
#include "log.h"
#include "pipeline_int.h"
#include "result.h"
#include "staterec.h"

/*
 * A record the broker refused is produced again after a backoff (doubling from the base,
 * up to the max); a job's records are given up after this many refusals.
 */
#define REFUSALS_MAX      5
#define REPRODUCE_BASE_MS 100
#define REPRODUCE_MAX_MS  10000

/*
 * A record that failed (a delivery report with an error, or refused by publish_produce()), waiting
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

static bool record_failed(struct pipeline *p, const char *topic, int32_t partition, const void *key,
                          size_t key_len, const void *value, size_t len,
                          const rd_kafka_headers_t *headers, struct job *job,
                          rd_kafka_resp_err_t err);

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

static void job_settled(struct pipeline *p, struct job *job)
{
	/* A result from before a revoke no longer moves this assignment's offsets; one
	 * flushed by the revoke's hand-over does, so that it is committed. */
	bool current = core_settles_here(p, job);
	/* Looked up after settles_here: core_partition() may move the table. */
	struct partition_state *ps = core_partition(p, job->partition);
	if (current && offtrack_done(p->offsets, job->partition, job->offset) && ps)
		ps->dirty = true;
	if (current && job->ev && !state_set_active(p->state, job->ev->id, job->partition, false))
		log_warning("state: cannot clear the active mark of %s", job->ev->id);
	if (current && job->ev)
		p->events.leader_settled(p, job->ev->id);
	count_outcome(p, job->status);
	core_release(p, job);
}

rd_kafka_resp_err_t publish_produce(struct pipeline *p, const char *topic, int32_t partition,
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

/*
 * Queues one record, retrying while the producer queue is full. From worker threads
 * (block) librdkafka waits for space; the Kafka thread cannot wait on itself, so it
 * serves delivery reports meanwhile. headers are consumed either way.
 */
bool publish_queue_record(struct pipeline *p, const char *topic, int32_t partition, const void *key,
                          size_t key_len, const void *value, size_t len,
                          rd_kafka_headers_t *headers, struct job *job, bool block)
{
	int flags = RD_KAFKA_MSG_F_COPY | (block ? RD_KAFKA_MSG_F_BLOCK : 0);
	for (;;) {
		rd_kafka_headers_t *h = headers ? rd_kafka_headers_copy(headers) : NULL;
		rd_kafka_resp_err_t err = publish_produce(p, topic, partition, key, key_len,
		                                          (void *)value, len, flags, h, job);
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

void publish_result_key(const struct job *job, const void **key, size_t *key_len)
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
    STATE_STATUS_HEADER,     "chatprov-error-code",       "chatprov-error-message",
    "chatprov-http-status",  "chatprov-reject-reason",    "chatprov-dlq-truncated",
    "chatprov-source-topic", "chatprov-source-partition", "chatprov-source-offset"};

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
	return publish_queue_record(p, p->cfg->kafka.dlq_topic, RD_KAFKA_PARTITION_UA, job->key,
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
	publish_result_key(job, &key, &key_len);
	bool with_state = job->ev != NULL;
	bool with_dlq = job->status == JOB_FAILED && p->cfg->kafka.dlq_topic[0];
	job->pending_deliveries += (with_state ? 2 : 1) + (with_dlq ? 1 : 0);
	core_mark_result_queued(p, job);
	bool ok = !with_dlq || copy_failed_to_dlq(p, job, block);
	rd_kafka_headers_t *h = job->headers ? rd_kafka_headers_copy(job->headers) : NULL;
	ok = ok && publish_queue_record(p, p->cfg->kafka.output_topic, RD_KAFKA_PARTITION_UA, key,
	                                key_len, value, len, h, job, block);
	if (ok && with_state) {
		h = done_headers(job);
		ok = h &&
		     publish_queue_record(p, p->cfg->kafka.state_topic, job->partition, job->ev->id,
		                          strlen(job->ev->id), value, len, h, job, block);
	}
	free(value);
	return ok;
}

void publish_on_job_done(struct job *job, void *arg)
{
	struct pipeline *p = arg;
	if (job->status == JOB_ABANDONED) {
		core_release(p, job);
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
void publish_record_operation(struct job *job, void *arg)
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
	if (!h || !publish_queue_record(p, p->cfg->kafka.state_topic, job->partition, job->ev->id,
	                                strlen(job->ev->id), value, strlen(value), h, NULL, true))
		log_warning("cannot record the operation of %s", job->ev->id);
	free(value);
}

/* An acknowledged state record: mirror it, and move its job on. */
static void on_state_delivered(struct pipeline *p, const rd_kafka_message_t *msg, struct job *job)
{
	struct partition_state *ps = core_partition(p, msg->partition);
	bool owned = job ? core_settles_here(p, job) : ps && ps->assigned;
	enum state_kind kind = staterec_kind(msg);
	if (owned && kind != STATE_NONE && !state_apply_delivered(p->state, msg))
		log_warning("state: out of memory mirroring a record");
	if (kind == STATE_DONE && owned)
		p->events.done_recorded(p, msg);
	if (kind == STATE_INTENT && job) {
		p->intents_pending--;
		/* The intent is durable: now the POST may go (unless we are leaving). */
		if (core_job_is_current(job, p) && !p->draining)
			p->events.intent_durable(p, job);
		else
			core_release(p, job);
	} else if (kind == STATE_DONE && job && --job->pending_deliveries == 0) {
		job_settled(p, job);
	}
}

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
static bool record_failed(struct pipeline *p, const char *topic, int32_t partition, const void *key,
                          size_t key_len, const void *value, size_t len,
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
	if (!core_job_is_current(job, p) || p->draining) {
		core_release(p, job);
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
	rd_kafka_resp_err_t err = publish_produce(p, r->topic, r->partition, r->key, r->key_len,
	                                          r->value, r->len, RD_KAFKA_MSG_F_COPY, h, r->job);
	if (!err)
		return false;
	r->err = err; /* refused again before it left: judged like any failure */
	return judge_failure(p, r, now);
}

/* Kafka thread, every turn: judges new failures, produces again those whose backoff ended. */
void publish_reproduce_due(struct pipeline *p)
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
void publish_reproduce_drop_all(struct pipeline *p)
{
	while (p->reproduce) {
		struct reproduce *next = p->reproduce->next;
		reproduce_free(p->reproduce);
		p->reproduce = next;
	}
}

void publish_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
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
	return publish_queue_record(p, p->cfg->kafka.dlq_topic, RD_KAFKA_PARTITION_UA, msg->key,
	                            msg->key_len, truncate ? NULL : msg->payload,
	                            truncate ? 0 : msg->len, h, job, false);
}

void publish_reject(struct pipeline *p, const rd_kafka_message_t *msg, struct job *job,
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
