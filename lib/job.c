/* job.c - lifetime of one input event in the pipeline. */
#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cptime.h"

bool job_new(const rd_kafka_message_t *msg, uint64_t generation, struct job **out)
{
	struct job *job = calloc(1, sizeof *job);
	if (!job)
		return false;
	job->partition = msg->partition;
	job->offset = msg->offset;
	job->generation = generation;
	job->received_wall_ms = cptime_wall_ms();
	if (msg->key && msg->key_len) {
		job->key = malloc(msg->key_len);
		if (!job->key)
			goto fail;
		memcpy(job->key, msg->key, msg->key_len);
		job->key_len = msg->key_len;
	}
	rd_kafka_headers_t *hdrs = NULL;
	if (rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs) {
		job->headers = rd_kafka_headers_copy(hdrs);
		if (!job->headers)
			goto fail;
	}
	*out = job;
	return true;
fail:
	job_free(job);
	return false;
}

void job_free(struct job *job)
{
	if (!job)
		return;
	free(job->key);
	free(job->payload);
	if (job->headers)
		rd_kafka_headers_destroy(job->headers);
	job_lookup_end(job);
	event_free(job->ev);
	free(job->body);
	free(job->rejected_id);
	free(job->op_url);
	free(job->chat_web_url);
	free(job->err_message);
	free(job);
}

bool job_keep_payload(struct job *job, const rd_kafka_message_t *msg)
{
	if (!msg->payload || !msg->len)
		return true;
	job->payload = malloc(msg->len);
	if (!job->payload)
		return false;
	memcpy(job->payload, msg->payload, msg->len);
	job->payload_len = msg->len;
	return true;
}

bool job_chat_may_exist(const struct job *job)
{
	if (job->status != JOB_FAILED || !job->ev || job->ev->chat_type != EVENT_CHAT_GROUP)
		return false;
	/* needs_lookup stays set until a lookup answered; a 202 leaves its Location. */
	return job->needs_lookup || job->op_url || job->http_status == 201 ||
	       job->http_status == 202;
}

void job_lookup_end(struct job *job)
{
	struct job_lookup *l = job->lookup;
	if (!l)
		return;
	free(l->object_ids);
	free(l->next_page);
	free(l->candidates);
	free(l->after_candidates);
	free(l);
	job->lookup = NULL;
}

void job_fail(struct job *job, long http_status, const char *code, const char *message,
              bool retryable)
{
	job->status = JOB_FAILED;
	job->http_status = http_status;
	snprintf(job->err_code, sizeof job->err_code, "%s", code ? code : "");
	/* Without memory for the message, the code alone still says what happened. */
	bool stored = job_set_string(&job->err_message, message);
	(void)stored;
	job->err_retryable = retryable;
}

bool job_set_string(char **field, const char *value)
{
	char *copy = NULL;
	if (value && *value && !(copy = strdup(value)))
		return false;
	free(*field);
	*field = copy;
	return true;
}

const char *job_id(const struct job *job)
{
	return job->ev ? job->ev->id : job->rejected_id;
}
