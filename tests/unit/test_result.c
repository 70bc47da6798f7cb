/*
 * test_result.c - chatprov.result.v1 as DESIGN.md spells it: every key present in order,
 * null where a part is absent, RFC 3339 times with milliseconds, no escaped slashes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "event.h"
#include "job.h"
#include "result.h"

#define RECEIVED_MS  1795687200123LL /* 2026-11-26T10:00:00.123Z */
#define COMPLETED_MS 1795687200535LL /* 2026-11-26T10:00:00.535Z */

static const char group_event[] =
    "{\"id\":\"hr-2026-000123\",\"tenant\":\"contoso\",\"chatType\":\"group\","
    "\"topic\":\"Welcome, Jane / \\u00e9quipe \\\"A\\\"\",\"members\":["
    "{\"userId\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\",\"roles\":[\"owner\"]},"
    "{\"userId\":\"alex@contoso.com\"}]}";

static const char one_on_one_event[] =
    "{\"id\":\"req-1\",\"chatType\":\"oneOnOne\",\"members\":["
    "{\"userId\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},{\"userId\":\"alex@contoso.com\"}]}";

static struct job *new_job(const char *event_json)
{
	struct job *job = calloc(1, sizeof *job);
	assert_non_null(job);
	if (event_json) {
		char reason[EVENT_REASON_SIZE];
		if (!event_decode(event_json, strlen(event_json), NULL, &job->ev, reason,
		                  sizeof reason))
			fail_msg("event_decode: %s", reason);
	}
	job->received_wall_ms = RECEIVED_MS;
	job->completed_wall_ms = COMPLETED_MS;
	return job;
}

static void set(char **field, const char *value)
{
	assert_true(job_set_string(field, value));
}

/* Renders, checks the text is one JSON object with no escaped slash, and parses it. */
static struct json_object *render(const struct job *job, char **text)
{
	size_t len = 0;
	char *out = result_render(job, &len);
	assert_non_null(out);
	assert_int_equal(strlen(out), len);
	assert_null(strstr(out, "\\/"));
	struct json_object *root = json_tokener_parse(out);
	assert_non_null(root);
	assert_true(json_object_is_type(root, json_type_object));
	if (text)
		*text = out;
	else
		free(out);
	return root;
}

/* The top-level keys, in the contract's order, and nothing else. */
static void assert_keys(struct json_object *obj, const char *const *keys, size_t n)
{
	size_t i = 0;
	json_object_object_foreach(obj, key, val)
	{
		(void)val;
		assert_true(i < n);
		assert_string_equal(key, keys[i]);
		i++;
	}
	assert_int_equal(i, n);
}

static const char *const top_keys[] = {"schema", "id",    "status",   "chat",       "operation",
                                       "error",  "graph", "attempts", "receivedAt", "completedAt"};
static const char *const chat_keys[] = {"id", "chatType", "topic", "webUrl", "createdDateTime"};
static const char *const op_keys[] = {"id", "status", "attemptsCount"};
static const char *const error_keys[] = {"code", "message", "httpStatus", "retryable"};
static const char *const graph_keys[] = {"requestId", "clientRequestId", "httpStatus"};

static struct json_object *member(struct json_object *obj, const char *key)
{
	struct json_object *v = NULL;
	assert_true(json_object_object_get_ex(obj, key, &v));
	return v;
}

static void assert_null_member(struct json_object *obj, const char *key)
{
	assert_null(member(obj, key));
}

static void assert_str_member(struct json_object *obj, const char *key, const char *want)
{
	struct json_object *v = member(obj, key);
	assert_true(json_object_is_type(v, json_type_string));
	assert_string_equal(json_object_get_string(v), want);
}

static void assert_int_member(struct json_object *obj, const char *key, int want)
{
	struct json_object *v = member(obj, key);
	assert_true(json_object_is_type(v, json_type_int));
	assert_int_equal(json_object_get_int(v), want);
}

static void assert_common(struct json_object *root, const char *status, int attempts)
{
	assert_keys(root, top_keys, CP_ARRAY_LEN(top_keys));
	assert_str_member(root, "schema", "chatprov.result.v1");
	assert_str_member(root, "status", status);
	assert_int_member(root, "attempts", attempts);
	assert_str_member(root, "receivedAt", "2026-11-26T10:00:00.123Z");
	assert_str_member(root, "completedAt", "2026-11-26T10:00:00.535Z");
}

static void fill_chat(struct job *job)
{
	job->status = JOB_SUCCEEDED;
	job->http_status = 201;
	job->attempts = 1;
	snprintf(job->chat_id, sizeof job->chat_id, "19:abc@thread.v2");
	set(&job->chat_web_url, "https://teams.microsoft.com/l/chat/19%3Aabc%40thread.v2/0");
	snprintf(job->chat_created, sizeof job->chat_created, "2026-11-26T10:00:00.4Z");
	snprintf(job->graph_request_id, sizeof job->graph_request_id, "req-graph-1");
	snprintf(job->client_request_id, sizeof job->client_request_id,
	         "0f8a1c2e-3b4d-5e6f-8a9b-0c1d2e3f4a5b");
}

static void test_succeeded_201_exact(void **state)
{
	(void)state;
	struct job *job = new_job(group_event);
	fill_chat(job);
	char *text = NULL;
	struct json_object *root = render(job, &text);
	assert_string_equal(
	    text, "{\"schema\":\"chatprov.result.v1\",\"id\":\"hr-2026-000123\","
	          "\"status\":\"succeeded\",\"chat\":{\"id\":\"19:abc@thread.v2\","
	          "\"chatType\":\"group\",\"topic\":\"Welcome, Jane / \xc3\xa9quipe \\\"A\\\"\","
	          "\"webUrl\":\"https://teams.microsoft.com/l/chat/19%3Aabc%40thread.v2/0\","
	          "\"createdDateTime\":\"2026-11-26T10:00:00.4Z\"},\"operation\":null,"
	          "\"error\":null,\"graph\":{\"requestId\":\"req-graph-1\","
	          "\"clientRequestId\":\"0f8a1c2e-3b4d-5e6f-8a9b-0c1d2e3f4a5b\","
	          "\"httpStatus\":201},\"attempts\":1,"
	          "\"receivedAt\":\"2026-11-26T10:00:00.123Z\","
	          "\"completedAt\":\"2026-11-26T10:00:00.535Z\"}");
	assert_common(root, "succeeded", 1);
	assert_keys(member(root, "chat"), chat_keys, CP_ARRAY_LEN(chat_keys));
	assert_keys(member(root, "graph"), graph_keys, CP_ARRAY_LEN(graph_keys));
	json_object_put(root);
	free(text);
	job_free(job);
}

static void test_succeeded_one_on_one(void **state)
{
	(void)state;
	struct job *job = new_job(one_on_one_event);
	fill_chat(job);
	job->attempts = 3;
	struct json_object *root = render(job, NULL);
	assert_common(root, "succeeded", 3);
	assert_str_member(root, "id", "req-1");
	struct json_object *chat = member(root, "chat");
	assert_keys(chat, chat_keys, CP_ARRAY_LEN(chat_keys));
	assert_str_member(chat, "chatType", "oneOnOne");
	assert_null_member(chat, "topic");
	json_object_put(root);
	job_free(job);
}

static void test_succeeded_via_202(void **state)
{
	(void)state;
	struct job *job = new_job(group_event);
	fill_chat(job);
	job->http_status = 202;
	set(&job->chat_web_url, NULL); /* an operation's chat may come without one */
	job->chat_created[0] = '\0';
	snprintf(job->op_id, sizeof job->op_id, "op-77");
	snprintf(job->op_status, sizeof job->op_status, "succeeded");
	job->op_attempts = 4;
	struct json_object *root = render(job, NULL);
	assert_common(root, "succeeded", 1);
	struct json_object *op = member(root, "operation");
	assert_keys(op, op_keys, CP_ARRAY_LEN(op_keys));
	assert_str_member(op, "id", "op-77");
	assert_str_member(op, "status", "succeeded");
	assert_int_member(op, "attemptsCount", 4);
	struct json_object *chat = member(root, "chat");
	assert_str_member(chat, "id", "19:abc@thread.v2");
	assert_null_member(chat, "webUrl");
	assert_null_member(chat, "createdDateTime");
	assert_int_member(member(root, "graph"), "httpStatus", 202);
	assert_null_member(root, "error");
	json_object_put(root);
	job_free(job);
}

static void test_failed_graph_error(void **state)
{
	(void)state;
	struct job *job = new_job(group_event);
	job->attempts = 1;
	snprintf(job->graph_request_id, sizeof job->graph_request_id, "req-graph-2");
	snprintf(job->client_request_id, sizeof job->client_request_id,
	         "0f8a1c2e-3b4d-5e6f-8a9b-0c1d2e3f4a5b");
	job_fail(job, 403, "Forbidden", "Missing scope permissions on the request.", false);
	struct json_object *root = render(job, NULL);
	assert_common(root, "failed", 1);
	assert_str_member(root, "id", "hr-2026-000123");
	assert_null_member(root, "chat");
	assert_null_member(root, "operation");
	struct json_object *err = member(root, "error");
	assert_keys(err, error_keys, CP_ARRAY_LEN(error_keys));
	assert_str_member(err, "code", "Forbidden");
	assert_str_member(err, "message", "Missing scope permissions on the request.");
	assert_int_member(err, "httpStatus", 403);
	assert_true(json_object_is_type(member(err, "retryable"), json_type_boolean));
	assert_false(json_object_get_boolean(member(err, "retryable")));
	struct json_object *graph = member(root, "graph");
	assert_keys(graph, graph_keys, CP_ARRAY_LEN(graph_keys));
	assert_str_member(graph, "requestId", "req-graph-2");
	assert_int_member(graph, "httpStatus", 403);
	json_object_put(root);
	job_free(job);
}

/* Retries ran out on a 503; or no HTTP answer at all (timeout): httpStatus null. */
static void test_failed_retryable(void **state)
{
	(void)state;
	struct job *job = new_job(one_on_one_event);
	job->attempts = 5;
	job_fail(job, 503, "ServiceUnavailable", "Try again later.", true);
	struct json_object *root = render(job, NULL);
	assert_common(root, "failed", 5);
	struct json_object *err = member(root, "error");
	assert_int_member(err, "httpStatus", 503);
	assert_true(json_object_get_boolean(member(err, "retryable")));
	json_object_put(root);

	job_fail(job, 0, "Timeout", "no response within 30 s", true);
	root = render(job, NULL);
	err = member(root, "error");
	assert_str_member(err, "code", "Timeout");
	assert_null_member(err, "httpStatus");
	assert_true(json_object_get_boolean(member(err, "retryable")));
	struct json_object *graph = member(root, "graph");
	assert_keys(graph, graph_keys, CP_ARRAY_LEN(graph_keys));
	assert_null_member(graph, "requestId");
	assert_null_member(graph, "httpStatus");
	json_object_put(root);
	job_free(job);
}

/* A failed operation: both the operation and the error are there. */
static void test_failed_operation(void **state)
{
	(void)state;
	struct job *job = new_job(group_event);
	job->attempts = 1;
	snprintf(job->op_id, sizeof job->op_id, "op-9");
	snprintf(job->op_status, sizeof job->op_status, "failed");
	job->op_attempts = 2;
	job_fail(job, 202, "OperationFailed", "the operation ended failed", false);
	struct json_object *root = render(job, NULL);
	assert_common(root, "failed", 1);
	assert_null_member(root, "chat");
	assert_str_member(member(root, "operation"), "status", "failed");
	assert_str_member(member(root, "error"), "code", "OperationFailed");
	json_object_put(root);
	job_free(job);
}

static void test_rejected_result_has_no_graph_or_chat(void **state)
{
	(void)state;
	struct job *job = new_job(NULL);
	job->status = JOB_REJECTED;
	set(&job->rejected_id, "bad-1");
	snprintf(job->err_code, sizeof job->err_code, "InvalidEvent");
	set(&job->err_message, "members[1].userId: not a GUID or user principal name");
	char *text = NULL;
	struct json_object *root = render(job, &text);
	assert_common(root, "rejected", 0);
	assert_str_member(root, "id", "bad-1");
	assert_null_member(root, "chat");
	assert_null_member(root, "operation");
	assert_null_member(root, "graph");
	struct json_object *err = member(root, "error");
	assert_keys(err, error_keys, CP_ARRAY_LEN(error_keys));
	assert_str_member(err, "code", "InvalidEvent");
	assert_str_member(err, "message", "members[1].userId: not a GUID or user principal name");
	assert_null_member(err, "httpStatus");
	assert_false(json_object_get_boolean(member(err, "retryable")));
	json_object_put(root);
	free(text);

	/* No id could be found in the message. */
	set(&job->rejected_id, NULL);
	root = render(job, &text);
	assert_common(root, "rejected", 0);
	assert_null_member(root, "id");
	assert_non_null(strstr(text, "\"id\":null"));
	json_object_put(root);
	free(text);
	job_free(job);
}

static void test_status_names(void **state)
{
	(void)state;
	assert_string_equal(result_status_name(JOB_SUCCEEDED), "succeeded");
	assert_string_equal(result_status_name(JOB_FAILED), "failed");
	assert_string_equal(result_status_name(JOB_REJECTED), "rejected");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_succeeded_201_exact),
	    cmocka_unit_test(test_succeeded_one_on_one),
	    cmocka_unit_test(test_succeeded_via_202),
	    cmocka_unit_test(test_failed_graph_error),
	    cmocka_unit_test(test_failed_retryable),
	    cmocka_unit_test(test_failed_operation),
	    cmocka_unit_test(test_rejected_result_has_no_graph_or_chat),
	    cmocka_unit_test(test_status_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
