/* result.c - rendering chatprov.result.v1 with json-c. */
#include "result.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "cptime.h"

const char *result_status_name(enum job_status status)
{
	switch (status) {
	case JOB_SUCCEEDED:
		return "succeeded";
	case JOB_FAILED:
		return "failed";
	case JOB_REJECTED:
		return "rejected";
	case JOB_PENDING:
	case JOB_ABANDONED:
		break;
	}
	return "pending";
}

/* json-c reports allocation failure only through NULL returns; a NULL value is added as
 * JSON null, so every helper below checks what it creates and what it adds. */
static bool put(struct json_object *obj, const char *key, struct json_object *val)
{
	if (json_object_object_add(obj, key, val) != 0) {
		json_object_put(val);
		return false;
	}
	return true;
}

static bool put_string(struct json_object *obj, const char *key, const char *s)
{
	if (!s || !*s)
		return put(obj, key, NULL);
	struct json_object *v = json_object_new_string(s);
	return v && put(obj, key, v);
}

static bool put_timestamp(struct json_object *obj, const char *key, int64_t epoch_ms)
{
	char stamp[32];
	if (!cptime_format_rfc3339(epoch_ms, stamp, sizeof stamp))
		return put(obj, key, NULL);
	return put_string(obj, key, stamp);
}

static const char *chat_type_name(const struct job *job)
{
	return job->ev->chat_type == EVENT_CHAT_GROUP ? "group" : "oneOnOne";
}

static struct json_object *render_chat(const struct job *job)
{
	struct json_object *chat = json_object_new_object();
	if (!chat)
		return NULL;
	if (!put_string(chat, "id", job->chat_id) ||
	    !put_string(chat, "chatType", chat_type_name(job)) ||
	    !put_string(chat, "topic", job->ev->topic) ||
	    !put_string(chat, "webUrl", job->chat_web_url) ||
	    !put_string(chat, "createdDateTime", job->chat_created))
		goto fail;
	return chat;
fail:
	json_object_put(chat);
	return NULL;
}

static struct json_object *render_operation(const struct job *job)
{
	struct json_object *op = json_object_new_object();
	if (!op)
		return NULL;
	if (!put_string(op, "id", job->op_id) || !put_string(op, "status", job->op_status) ||
	    !put(op, "attemptsCount", json_object_new_int(job->op_attempts)))
		goto fail;
	return op;
fail:
	json_object_put(op);
	return NULL;
}

static struct json_object *render_error(const struct job *job)
{
	struct json_object *err = json_object_new_object();
	if (!err)
		return NULL;
	if (!put_string(err, "code", job->err_code) ||
	    !put_string(err, "message", job->err_message) ||
	    !put(err, "httpStatus",
	         job->http_status > 0 ? json_object_new_int((int)job->http_status) : NULL) ||
	    !put(err, "retryable", json_object_new_boolean(job->err_retryable)))
		goto fail;
	return err;
fail:
	json_object_put(err);
	return NULL;
}

static struct json_object *render_graph(const struct job *job)
{
	if (job->status == JOB_REJECTED)
		return NULL;
	struct json_object *graph = json_object_new_object();
	if (!graph)
		return NULL;
	if (!put_string(graph, "requestId", job->graph_request_id) ||
	    !put_string(graph, "clientRequestId", job->client_request_id) ||
	    !put(graph, "httpStatus",
	         job->http_status > 0 ? json_object_new_int((int)job->http_status) : NULL))
		goto fail;
	return graph;
fail:
	json_object_put(graph);
	return NULL;
}

/* Each optional part is NULL when absent, which json-c writes as null. */
static bool render_parts(struct json_object *root, const struct job *job)
{
	bool has_chat = job->status == JOB_SUCCEEDED && job->chat_id[0];
	bool has_op = job->op_id[0] != '\0';
	bool has_err = job->status == JOB_FAILED || job->status == JOB_REJECTED;
	struct json_object *part;

	part = has_chat ? render_chat(job) : NULL;
	if ((has_chat && !part) || !put(root, "chat", part))
		return false;
	part = has_op ? render_operation(job) : NULL;
	if ((has_op && !part) || !put(root, "operation", part))
		return false;
	part = has_err ? render_error(job) : NULL;
	if ((has_err && !part) || !put(root, "error", part))
		return false;
	part = render_graph(job);
	if ((job->status != JOB_REJECTED && !part) || !put(root, "graph", part))
		return false;
	return true;
}

char *result_render(const struct job *job, size_t *len)
{
	char *out = NULL;
	struct json_object *root = json_object_new_object();
	if (!root)
		return NULL;
	const char *id = job_id(job);
	if (!put_string(root, "schema", "chatprov.result.v1") || !put_string(root, "id", id) ||
	    !put_string(root, "status", result_status_name(job->status)) ||
	    !render_parts(root, job) ||
	    !put(root, "attempts", json_object_new_int((int)job->attempts)) ||
	    !put_timestamp(root, "receivedAt", job->received_wall_ms) ||
	    !put_timestamp(root, "completedAt", job->completed_wall_ms))
		goto done;
	size_t n = 0;
	const char *text = json_object_to_json_string_length(
	    root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	if (!text)
		goto done;
	out = malloc(n + 1);
	if (!out)
		goto done;
	memcpy(out, text, n + 1);
	*len = n;
done:
	json_object_put(root);
	return out;
}
