/*
 * test_staterec.c - the state record format, written side: headers of each kind, the
 * intent and operation values. The read side is exercised through restores in test_state.c, which
 * produces records with these functions to a mock cluster.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "kafka.h"
#include "staterec.h"

static void assert_header(const rd_kafka_headers_t *h, const char *name, const char *value)
{
	char text[64];
	if (!value) {
		assert_false(kafka_header_has(h, name));
		return;
	}
	assert_true(kafka_header_text(h, name, text, sizeof text));
	assert_string_equal(text, value);
}

static void test_kinds_and_their_headers(void **state)
{
	(void)state;
	assert_string_equal(staterec_kind_name(STATE_INTENT), "intent");
	assert_string_equal(staterec_kind_name(STATE_OPERATION), "operation");
	assert_string_equal(staterec_kind_name(STATE_DONE), "done");
	rd_kafka_headers_t *h = staterec_headers(STATE_INTENT);
	assert_non_null(h);
	assert_header(h, STATE_HEADER, "intent");
	assert_int_equal(rd_kafka_header_cnt(h), 1);
	rd_kafka_headers_destroy(h);
	h = staterec_mark_headers();
	assert_header(h, STATE_HEADER, STATE_MARK_KIND);
	rd_kafka_headers_destroy(h);
	assert_int_equal(STATE_MARK_KEY[0], 1); /* a control character: never a request id */
	assert_string_equal(STATE_MARK_KEY + 1, "answered-below");
}

static void test_done_headers_carry_only_what_applies(void **state)
{
	(void)state;
	rd_kafka_headers_t *h = staterec_done_headers("succeeded", 0, 0);
	assert_header(h, STATE_HEADER, "done");
	assert_header(h, STATE_STATUS_HEADER, "succeeded");
	assert_header(h, STATE_INTENT_AT_HEADER, NULL);
	assert_header(h, STATE_HEADER_OUTCOME_UNKNOWN, NULL);
	rd_kafka_headers_destroy(h);
	h = staterec_done_headers("failed", 1767225600123LL, 1767225599000LL);
	assert_header(h, STATE_STATUS_HEADER, "failed");
	assert_header(h, STATE_INTENT_AT_HEADER, "1767225600123");
	assert_header(h, STATE_HEADER_OUTCOME_UNKNOWN, "1767225599000");
	rd_kafka_headers_destroy(h);
}

static void test_operation_value_is_flat_json(void **state)
{
	(void)state;
	struct staterec_operation op = {.location = "https://g/v1.0/chats('19:a@thread.v2')/x",
	                                .started_wall_ms = 5,
	                                .attempts = 2,
	                                .request_id = "6d0c5c5b-2a5b-4e5a-9e0e-4f1c2b3a4d5e"};
	char *value = staterec_operation_value(&op);
	assert_non_null(value);
	json_object *o = json_tokener_parse(value);
	assert_non_null(o);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "location")),
	                    op.location);
	assert_int_equal(json_object_get_int64(json_object_object_get(o, "startedAt")), 5);
	assert_int_equal(json_object_get_int64(json_object_object_get(o, "attempts")), 2);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "requestId")),
	                    op.request_id);
	assert_non_null(strstr(value, "/chats(")); /* slashes are not escaped */
	json_object_put(o);
	free(value);
	op.request_id = "";
	value = staterec_operation_value(&op);
	assert_null(strstr(value, "requestId"));
	free(value);
}

static void test_intent_value(void **state)
{
	(void)state;
	char value[128];
	staterec_intent_value(value, sizeof value, 1767225600123LL,
	                      "6d0c5c5b-2a5b-4e5a-9e0e-4f1c2b3a4d5e");
	assert_string_equal(value, "{\"at\":1767225600123,\"clientRequestId\":"
	                           "\"6d0c5c5b-2a5b-4e5a-9e0e-4f1c2b3a4d5e\"}");
	char small[8];
	staterec_intent_value(small, sizeof small, 1, "x"); /* cut, still terminated */
	assert_string_equal(small, "{\"at\":1");
}

/* kafka_header_text refuses what it would have to cut, or what holds a NUL byte. */
static void test_header_text_is_exact(void **state)
{
	(void)state;
	char text[8];
	rd_kafka_headers_t *h = rd_kafka_headers_new(4);
	assert_int_equal(rd_kafka_header_add(h, "a", -1, "1234567", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "b", -1, "12345678", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "c", -1, "x\0y", 3), 0);
	assert_int_equal(rd_kafka_header_add(h, "d", -1, NULL, 0), 0);
	assert_true(kafka_header_text(h, "a", text, sizeof text));
	assert_string_equal(text, "1234567");
	assert_false(kafka_header_text(h, "b", text, sizeof text));
	assert_false(kafka_header_text(h, "c", text, sizeof text));
	assert_false(kafka_header_text(h, "d", text, sizeof text));
	assert_false(kafka_header_text(h, "e", text, sizeof text));
	assert_true(kafka_header_has(h, "d"));
	assert_false(kafka_header_has(h, "e"));
	assert_true(kafka_header_is(h, "a", "1234567"));
	assert_false(kafka_header_is(h, "a", "123456"));
	assert_false(kafka_header_is(h, "d", ""));
	assert_false(kafka_header_text(NULL, "a", text, sizeof text));
	rd_kafka_headers_destroy(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_kinds_and_their_headers),
	    cmocka_unit_test(test_done_headers_carry_only_what_applies),
	    cmocka_unit_test(test_operation_value_is_flat_json),
	    cmocka_unit_test(test_intent_value),
	    cmocka_unit_test(test_header_text_is_exact),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
