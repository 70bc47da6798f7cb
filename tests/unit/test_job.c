/*
 * test_job.c - a job from a consumed message (key and headers copied, not borrowed),
 * job_fail, job_set_string and job_id. The messages are real librdkafka messages from the
 * in-process mock cluster: headers cannot be attached to a hand-made message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "cptime.h"
#include "event.h"
#include "job.h"
#include "mock_kafka.h"

#define TOPIC "t.input"

static rd_kafka_t *cluster_owner, *consumer;
static rd_kafka_mock_cluster_t *mcluster;

/* Message 0 of partition 1: key and headers. Message 1: neither. */
static int group_setup(void **state)
{
	(void)state;
	mcluster = mock_cluster_start(&cluster_owner);
	const char *brokers = rd_kafka_mock_cluster_bootstraps(mcluster);
	rd_kafka_t *producer = mock_client(RD_KAFKA_PRODUCER, brokers, NULL, NULL);
	mock_topic(mcluster, producer, TOPIC, 2);
	rd_kafka_headers_t *h = rd_kafka_headers_new(4);
	assert_non_null(h);
	assert_int_equal(
	    rd_kafka_header_add(h, "traceparent", -1,
	                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", -1),
	    0);
	assert_int_equal(rd_kafka_header_add(h, "corr", -1, "one", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "corr", -1, "two", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "empty", -1, NULL, 0), 0);
	assert_int_equal(
	    rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(1),
	                      RD_KAFKA_V_KEY("hr-2026-000123", 14), RD_KAFKA_V_VALUE("{}", 2),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
	                      RD_KAFKA_V_END),
	    RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
	                                   RD_KAFKA_V_PARTITION(1), RD_KAFKA_V_VALUE("{}", 2),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(rd_kafka_flush(producer, 10 * 1000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(producer);

	consumer = mock_client(RD_KAFKA_CONSUMER, brokers, "g.test_job", NULL);
	rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, TOPIC, 1)->offset = RD_KAFKA_OFFSET_BEGINNING;
	assert_int_equal(rd_kafka_assign(consumer, parts), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(parts);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	rd_kafka_consumer_close(consumer);
	rd_kafka_destroy(consumer);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(cluster_owner);
	return 0;
}

static rd_kafka_message_t *next_message(void)
{
	int64_t deadline = cptime_mono_ms() + 10 * 1000;
	while (cptime_mono_ms() < deadline) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(consumer, 100);
		if (msg && !msg->err)
			return msg;
		if (msg)
			rd_kafka_message_destroy(msg);
	}
	fail_msg("no message from the mock cluster");
	return NULL;
}

static void assert_header(const rd_kafka_headers_t *h, size_t idx, const char *name,
                          const char *value)
{
	const char *got_name = NULL;
	const void *got = NULL;
	size_t size = 0;
	assert_int_equal(rd_kafka_header_get_all(h, idx, &got_name, &got, &size),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_string_equal(got_name, name);
	if (!value) {
		assert_null(got);
		return;
	}
	assert_int_equal(size, strlen(value));
	assert_memory_equal(got, value, size);
}

/* Runs first: consumes message 0 (key and headers). */
static void test_new_copies_key_and_headers(void **state)
{
	(void)state;
	rd_kafka_message_t *msg = next_message();
	int64_t before = cptime_wall_ms();
	struct job *job;
	assert_true(job_new(msg, 7, &job));
	assert_int_equal(job->partition, 1);
	assert_int_equal(job->offset, 0);
	assert_int_equal(job->generation, 7);
	assert_true(job->received_wall_ms >= before && job->received_wall_ms <= cptime_wall_ms());
	assert_int_equal(job->status, JOB_PENDING);
	assert_null(job->ev);
	assert_null(job_id(job));
	assert_int_equal(job->key_len, 14);
	assert_true(job->key != msg->key);
	/* Everything survives the message: the job outlives it in the pipeline. */
	rd_kafka_message_destroy(msg);
	assert_memory_equal(job->key, "hr-2026-000123", 14);
	assert_non_null(job->headers);
	assert_int_equal(rd_kafka_header_cnt(job->headers), 4);
	assert_header(job->headers, 0, "traceparent",
	              "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
	assert_header(job->headers, 1, "corr", "one");
	assert_header(job->headers, 2, "corr", "two");
	assert_header(job->headers, 3, "empty", NULL);
	job_free(job);
}

/* Runs second: message 1 has neither key nor headers. */
static void test_new_without_key_or_headers(void **state)
{
	(void)state;
	rd_kafka_message_t *msg = next_message();
	struct job *job;
	assert_true(job_new(msg, 8, &job));
	assert_int_equal(job->offset, 1);
	assert_null(job->key);
	assert_int_equal(job->key_len, 0);
	assert_null(job->headers);
	rd_kafka_message_destroy(msg);
	job_free(job);
	job_free(NULL);
}

static void test_fail_replaces_the_error_and_cuts_a_long_code(void **state)
{
	(void)state;
	struct job *job = calloc(1, sizeof *job);
	assert_non_null(job);
	job_fail(job, 429, "TooManyRequests", "slow down", true);
	assert_int_equal(job->status, JOB_FAILED);
	assert_int_equal(job->http_status, 429);
	assert_string_equal(job->err_code, "TooManyRequests");
	assert_string_equal(job->err_message, "slow down");
	assert_true(job->err_retryable);

	/* A later failure replaces the earlier one entirely. */
	job_fail(job, 0, NULL, NULL, false);
	assert_int_equal(job->http_status, 0);
	assert_string_equal(job->err_code, "");
	assert_null(job->err_message);
	assert_false(job->err_retryable);

	/* A code longer than its field is cut, never overflowing; the message is kept whole. */
	char code[JOB_ERR_CODE_MAX * 2], message[JOB_ERR_MSG_MAX * 2];
	memset(code, 'C', sizeof code - 1);
	code[sizeof code - 1] = '\0';
	memset(message, 'm', sizeof message - 1);
	message[sizeof message - 1] = '\0';
	job_fail(job, 500, code, message, true);
	assert_int_equal(strlen(job->err_code), JOB_ERR_CODE_MAX - 1);
	assert_memory_equal(job->err_code, code, JOB_ERR_CODE_MAX - 1);
	assert_string_equal(job->err_message, message);
	job_free(job);
}

static void test_set_string_copies_and_empty_clears(void **state)
{
	(void)state;
	char *field = NULL;
	char value[] = "https://graph.microsoft.com/v1.0/chats('19:a')/operations('1')";
	assert_true(job_set_string(&field, value));
	assert_string_equal(field, value);
	assert_true(field != value);
	value[0] = 'X'; /* a copy, not the caller's buffer */
	assert_string_equal(field,
	                    "https://graph.microsoft.com/v1.0/chats('19:a')/operations('1')");
	assert_true(job_set_string(&field, "second")); /* the first is freed (ASan would tell) */
	assert_string_equal(field, "second");
	assert_true(job_set_string(&field, ""));
	assert_null(field);
	assert_true(job_set_string(&field, "third"));
	assert_true(job_set_string(&field, NULL));
	assert_null(field);
}

static void test_id_is_the_events_then_the_guessed_one(void **state)
{
	(void)state;
	struct job *job = calloc(1, sizeof *job);
	assert_non_null(job);
	assert_null(job_id(job));
	assert_true(job_set_string(&job->rejected_id, "guessed-id"));
	assert_string_equal(job_id(job), "guessed-id");
	static const char event[] = "{\"id\":\"req-9\",\"chatType\":\"oneOnOne\",\"members\":["
	                            "{\"userId\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},"
	                            "{\"userId\":\"alex@contoso.com\"}]}";
	char reason[EVENT_REASON_SIZE];
	if (!event_decode(event, strlen(event), NULL, &job->ev, reason, sizeof reason))
		fail_msg("event_decode: %s", reason);
	assert_string_equal(job_id(job), "req-9"); /* the event's id wins */
	job_free(job);                             /* frees the event and the strings */
}

/* The payload is a copy (the message goes back to librdkafka); an empty value keeps none. */
static void test_keep_payload_copies_and_keeps_no_empty_one(void **state)
{
	(void)state;
	char value[] = "{\"id\":\"x\"}";
	rd_kafka_message_t msg = {.payload = value, .len = sizeof value - 1};
	struct job *job = calloc(1, sizeof *job);
	assert_non_null(job);
	assert_true(job_keep_payload(job, &msg));
	assert_int_equal(job->payload_len, sizeof value - 1);
	assert_true(job->payload != (void *)value);
	value[0] = 'X';
	assert_memory_equal(job->payload, "{\"id\":\"x\"}", job->payload_len);
	job_free(job); /* frees the copy (ASan would tell) */
	job = calloc(1, sizeof *job);
	assert_non_null(job);
	msg.len = 0;
	assert_true(job_keep_payload(job, &msg));
	assert_null(job->payload);
	job_free(job);
}

static struct job *failed_chat(const char *chat_type)
{
	char event[512];
	char reason[EVENT_REASON_SIZE];
	snprintf(event, sizeof event,
	         "{\"id\":\"r\",\"chatType\":\"%s\",\"members\":["
	         "{\"userId\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},"
	         "{\"userId\":\"alex@contoso.com\"}]}",
	         chat_type);
	struct job *job = calloc(1, sizeof *job);
	assert_non_null(job);
	if (!event_decode(event, strlen(event), NULL, &job->ev, reason, sizeof reason))
		fail_msg("event_decode: %s", reason);
	return job;
}

/* Which failed group chats may exist all the same (a re-drive looks them up first). */
static void test_chat_may_exist(void **state)
{
	(void)state;
	struct job *job = failed_chat("group");
	job_fail(job, 403, "Forbidden", "no consent", false);
	assert_false(job_chat_may_exist(job)); /* refused: nothing was created */
	job_fail(job, 404, "NotFound", "user", false);
	assert_false(job_chat_may_exist(job));
	job_fail(job, 429, "TooManyRequests", "later", true);
	assert_false(job_chat_may_exist(job));
	job_fail(job, 0, "TransportError", "could not connect", true);
	assert_false(job_chat_may_exist(job));
	job->needs_lookup = true; /* a POST whose answer was lost */
	job_fail(job, 503, "ServiceUnavailable", "retries spent", true);
	assert_true(job_chat_may_exist(job));
	job_fail(job, 403, "OutcomeUnknown", "the lookup was refused", false);
	assert_true(job_chat_may_exist(job));
	job->needs_lookup = false;
	job_fail(job, 201, "InvalidResponse", "no id", false); /* created, but which? */
	assert_true(job_chat_may_exist(job));
	job_fail(job, 202, "InvalidLocation", "foreign host", false);
	assert_true(job_chat_may_exist(job));
	assert_true(job_set_string(&job->op_url, "https://g/v1.0/chats('a')/operations('b')"));
	job_fail(job, 404, "NotFound", "the operation is gone", false); /* after a 202 */
	assert_true(job_chat_may_exist(job));
	job->status = JOB_SUCCEEDED;
	assert_false(job_chat_may_exist(job));
	job_free(job);
	/* A one-on-one chat is the same chat when created again: never in doubt. */
	job = failed_chat("oneOnOne");
	job->needs_lookup = true;
	job_fail(job, 503, "ServiceUnavailable", "retries spent", true);
	assert_false(job_chat_may_exist(job));
	job_free(job);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_new_copies_key_and_headers),
	    cmocka_unit_test(test_new_without_key_or_headers),
	    cmocka_unit_test(test_fail_replaces_the_error_and_cuts_a_long_code),
	    cmocka_unit_test(test_set_string_copies_and_empty_clears),
	    cmocka_unit_test(test_id_is_the_events_then_the_guessed_one),
	    cmocka_unit_test(test_keep_payload_copies_and_keeps_no_empty_one),
	    cmocka_unit_test(test_chat_may_exist),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
