/*
 * test_state.c - the request state mirror against librdkafka's in-process mock cluster:
 * restore to the high watermark, record precedence, tombstones, expiry, fetch by offset,
 * partitions, the active flag, a table that grows, compacted done requests (runs) and the
 * id check of a fetch. With CHATPROV_STATE_BENCH=1 (bench/state) it runs only its two
 * benches instead: the restore rate of 200,000 records and the memory and lookup cost of
 * 1,000,000 done requests.
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
#include <malloc.h>

#include "cfg.h"
#include "cptime.h"
#include "event.h"
#include "mock_kafka.h"
#include "state.h"

#define HOUR_MS   (3600 * 1000LL)
#define DAY_MS    (24 * HOUR_MS)
#define NO_STATUS NULL

/* One mock cluster and one producer for the whole file; a topic of its own per test. */
static rd_kafka_t *cluster_owner;
static rd_kafka_mock_cluster_t *mcluster;
static rd_kafka_t *producer;
static int topic_seq;

/* What each test works with. */
struct fixture {
	char topic[64];
	struct cfg *cfg;
	struct state *st;
};

/* A delivery report stores the offset where the test asked for it (msg_opaque). */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	(void)rk;
	(void)opaque;
	assert_int_equal(msg->err, RD_KAFKA_RESP_ERR_NO_ERROR);
	if (msg->_private)
		*(int64_t *)msg->_private = msg->offset;
}

static int group_setup(void **state)
{
	(void)state;
	mcluster = mock_cluster_start(&cluster_owner);
	producer = mock_client(RD_KAFKA_PRODUCER, rd_kafka_mock_cluster_bootstraps(mcluster), NULL,
	                       on_delivery);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	assert_int_equal(rd_kafka_flush(producer, 10 * 1000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(producer);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(cluster_owner);
	return 0;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	snprintf(f->topic, sizeof f->topic, "t.state.%d", ++topic_seq);
	mock_topic(mcluster, producer, f->topic, 2);
	f->cfg = calloc(1, sizeof *f->cfg);
	assert_non_null(f->cfg);
	snprintf(f->cfg->kafka.brokers, sizeof f->cfg->kafka.brokers, "%s",
	         rd_kafka_mock_cluster_bootstraps(mcluster));
	snprintf(f->cfg->kafka.group_id, sizeof f->cfg->kafka.group_id, "g.%s", f->topic);
	snprintf(f->cfg->kafka.state_topic, sizeof f->cfg->kafka.state_topic, "%s", f->topic);
	f->cfg->n_rdkafka = 0;
	char err[256] = "";
	if (!state_new(f->cfg, &f->st, err, sizeof err))
		fail_msg("state_new: %s", err);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	state_free(f->st);
	free(f->cfg);
	free(f);
	return 0;
}

/* ---- producing state records ---- */

/* Queues one record; value NULL is a tombstone, ts 0 means now. */
static void queue_unknown(const char *topic, int32_t partition, const char *id, const char *kind,
                          const char *status, const char *unknown_since, const void *value,
                          size_t len, int64_t ts, int64_t *offset)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(3);
	assert_non_null(h);
	if (kind)
		assert_int_equal(rd_kafka_header_add(h, STATE_HEADER, -1, kind, -1), 0);
	if (status)
		assert_int_equal(rd_kafka_header_add(h, STATE_STATUS_HEADER, -1, status, -1), 0);
	if (unknown_since)
		assert_int_equal(
		    rd_kafka_header_add(h, STATE_HEADER_OUTCOME_UNKNOWN, -1, unknown_since, -1), 0);
	rd_kafka_resp_err_t e;
	do {
		e = rd_kafka_producev(
		    producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
		    RD_KAFKA_V_KEY(id, id ? strlen(id) : 0), RD_KAFKA_V_VALUE((void *)value, len),
		    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
		    RD_KAFKA_V_TIMESTAMP(ts), RD_KAFKA_V_OPAQUE(offset), RD_KAFKA_V_END);
		if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			rd_kafka_poll(producer, 100);
	} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
	assert_int_equal(e, RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void queue(const char *topic, int32_t partition, const char *id, const char *kind,
                  const char *status, const void *value, size_t len, int64_t ts, int64_t *offset)
{
	queue_unknown(topic, partition, id, kind, status, NULL, value, len, ts, offset);
}

static void flush(void)
{
	assert_int_equal(rd_kafka_flush(producer, 30 * 1000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* Produces one record and returns its offset once acknowledged. */
static int64_t put_at(const struct fixture *f, int32_t partition, const char *id, const char *kind,
                      const char *status, const char *value, int64_t ts)
{
	int64_t offset = -1;
	queue(f->topic, partition, id, kind, status, value, value ? strlen(value) : 0, ts, &offset);
	flush();
	assert_true(offset >= 0);
	return offset;
}

static int64_t put(const struct fixture *f, int32_t partition, const char *id, const char *kind,
                   const char *status, const char *value)
{
	return put_at(f, partition, id, kind, status, value, 0);
}

/* A failed done record whose chat may exist, from `since` (the header's text). */
static int64_t put_unknown(const struct fixture *f, int32_t partition, const char *id,
                           const char *since)
{
	int64_t offset = -1;
	queue_unknown(f->topic, partition, id, "done", "failed", since, "{}", 2, 0, &offset);
	flush();
	assert_true(offset >= 0);
	return offset;
}

static size_t restore(struct fixture *f, int32_t partition)
{
	char err[256] = "";
	size_t records = 99;
	if (!state_restore(f->st, partition, 30 * DAY_MS, NULL, NULL, &records, err, sizeof err))
		fail_msg("state_restore: %s", err);
	return records;
}

static struct state_info get(struct fixture *f, const char *id)
{
	struct state_info si;
	state_get(f->st, id, &si);
	return si;
}

static const char done_ok[] = "{\"schema\":\"chatprov.result.v1\",\"id\":\"r1\","
                              "\"status\":\"succeeded\",\"url\":\"https://x/y\"}";

/* ---- tests ---- */

static void test_restore_reads_to_high_watermark(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "a", "intent", NO_STATUS, "{\"at\":1}");
	int64_t off_b = put(f, 0, "b", "done", "succeeded", done_ok);
	put(f, 0, "c", "done", "failed", "{\"status\":\"failed\"}");
	put(f, 1, "d", "intent", NO_STATUS, "{}"); /* other partition: not read */
	assert_int_equal(restore(f, 0), 3);
	assert_int_equal(state_count(f->st), 3);

	struct state_info si = get(f, "a");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_int_equal(si.partition, 0);
	assert_false(si.active);
	assert_true(si.at_wall_ms > cptime_wall_ms() - 60 * 1000);
	si = get(f, "b");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, off_b);
	assert_true(si.done_succeeded);
	si = get(f, "c");
	assert_int_equal(si.kind, STATE_DONE);
	assert_false(si.done_succeeded);
	assert_int_equal(get(f, "d").kind, STATE_NONE);
	assert_int_equal(get(f, "never-seen").kind, STATE_NONE);

	assert_int_equal(restore(f, 1), 1);
	si = get(f, "d");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_int_equal(si.partition, 1);
	assert_int_equal(state_count(f->st), 4);
}

static void test_later_records_win(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "x", "intent", NO_STATUS, "{}");
	int64_t done_x = put(f, 0, "x", "done", "succeeded", done_ok);
	put(f, 0, "x", "intent", NO_STATUS, "{}"); /* a success is final */
	put(f, 0, "y", "done", "failed", "{}");
	int64_t intent_y = put(f, 0, "y", "intent", NO_STATUS, "{}"); /* a failure is not */
	int64_t done_v = put(f, 0, "v", "done", "failed", "{}");
	put(f, 0, "z", "intent", NO_STATUS, "{}");
	put(f, 0, "z", "operation", NO_STATUS, "{\"location\":\"https://g/op1\",\"startedAt\":5}");
	put(f, 0, "w", "operation", NO_STATUS, "{\"location\":\"https://g/op2\",\"startedAt\":6}");
	put(f, 0, "w", "intent", NO_STATUS, "{}"); /* an operation is not an intent again */
	assert_int_equal(restore(f, 0), 10);

	struct state_info si = get(f, "x");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, done_x);
	assert_true(si.done_succeeded);
	si = get(f, "y");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_int_equal(si.offset, intent_y);
	si = get(f, "v");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, done_v);
	assert_false(si.done_succeeded);
	si = get(f, "z");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_string_equal(si.op_url, "https://g/op1");
	si = get(f, "w");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_string_equal(si.op_url, "https://g/op2");
	assert_int_equal(si.op_started_wall_ms, 6);
	assert_int_equal(state_count(f->st), 5);
}

/*
 * A failure that may have created its chat reads as an intent from the time its record
 * gives, whatever came before it in the attempt; a success after it wins, and a re-drive's
 * records after a plain failure move on from it.
 */
static void test_failed_outcome_unknown_reads_as_intent(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "op", "intent", NO_STATUS, "{}");
	put(f, 0, "op", "operation", NO_STATUS, "{\"location\":\"https://g/op\",\"startedAt\":5}");
	int64_t ended = put_unknown(f, 0, "op", "1795742192628");
	put_unknown(f, 0, "later", "1795742192000");
	int64_t ok = put(f, 0, "later", "done", "succeeded", done_ok);
	put_unknown(f, 0, "garbled", "12x");
	put(f, 0, "redriven", "done", "failed", "{}");
	put(f, 0, "redriven", "intent", NO_STATUS, "{}");
	int64_t op = put(f, 0, "redriven", "operation", NO_STATUS,
	                 "{\"location\":\"https://g/op9\",\"startedAt\":9}");
	assert_int_equal(restore(f, 0), 9);

	struct state_info si = get(f, "op");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_int_equal(si.offset, ended);
	assert_int_equal(si.at_wall_ms, 1795742192628LL);
	assert_string_equal(si.op_url, ""); /* that operation is over */
	si = get(f, "later");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, ok);
	assert_true(si.done_succeeded);
	si = get(f, "garbled"); /* an unreadable time: the record's own */
	assert_int_equal(si.kind, STATE_INTENT);
	assert_true(si.at_wall_ms > cptime_wall_ms() - 60000);
	si = get(f, "redriven");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_int_equal(si.offset, op);
	assert_string_equal(si.op_url, "https://g/op9");

}

/* Produces a record with headers and value as given (headers consumed). */
static int64_t put_record(const struct fixture *f, const char *id, rd_kafka_headers_t *h,
                          const char *value)
{
	int64_t offset = -1;
	assert_non_null(h);
	assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(f->topic),
	                                   RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_KEY(id, strlen(id)),
	                                   RD_KAFKA_V_VALUE((void *)value, strlen(value)),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(&offset),
	                                   RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	flush();
	assert_true(offset >= 0);
	return offset;
}

/* A done record as the pipeline writes it: with the intent's time (any text for a test). */
static void put_done_since(const struct fixture *f, const char *id, const char *intent_at)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(3);
	assert_non_null(h);
	assert_int_equal(rd_kafka_header_add(h, STATE_HEADER, -1, "done", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, STATE_INTENT_AT_HEADER, -1, intent_at, -1), 0);
	put_record(f, id, h, done_ok);
}

/* What staterec writes, the mirror reads back: the record format in one place. */
static void test_staterec_round_trip(void **state)
{
	struct fixture *f = *state;
	struct staterec_operation op = {.location = "https://g/v1.0/chats('19:a@thread.v2')/o",
	                                .started_wall_ms = 1767225600123LL,
	                                .attempts = 2,
	                                .request_id = "6d0c5c5b-2a5b-4e5a-9e0e-4f1c2b3a4d5e"};
	char *value = staterec_operation_value(&op);
	put_record(f, "op", staterec_headers(STATE_OPERATION), value);
	free(value);
	put_record(f, "ok", staterec_done_headers("succeeded", 1767225600000LL, 0), done_ok);
	put_record(f, "unsure", staterec_done_headers("failed", 0, 1767225500000LL), "{}");
	int64_t failed = put_record(f, "failed", staterec_done_headers("failed", 0, 0), "{}");
	assert_int_equal(restore(f, 0), 4);
	struct state_info si = get(f, "op");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_string_equal(si.op_url, op.location);
	assert_string_equal(si.op_request_id, op.request_id);
	assert_int_equal(si.op_started_wall_ms, op.started_wall_ms);
	assert_int_equal(si.op_attempts, 2);
	si = get(f, "ok");
	assert_int_equal(si.kind, STATE_DONE);
	assert_true(si.done_succeeded);
	assert_int_equal(si.at_wall_ms, 1767225600000LL); /* the intent's time */
	si = get(f, "unsure");
	assert_int_equal(si.kind, STATE_INTENT); /* looked up before it is created again */
	assert_int_equal(si.at_wall_ms, 1767225500000LL);
	si = get(f, "failed");
	assert_int_equal(si.kind, STATE_DONE);
	assert_false(si.done_succeeded);
	assert_int_equal(si.offset, failed);
}

/*
 * A done record's time is its request's intent's, when it names one: a lookup after a
 * failed replay fetch searches from when the POST may have left, not from the result.
 */
static void test_done_keeps_the_intent_time(void **state)
{
	struct fixture *f = *state;
	char at[32];
	int64_t now = cptime_wall_ms(), intent = (now - 3600 * 1000) / 1000 * 1000;
	snprintf(at, sizeof at, "%lld", (long long)intent);
	put(f, 0, "a", "intent", NO_STATUS, "{}");
	put_done_since(f, "a", at);
	snprintf(at, sizeof at, "%lld", (long long)(now + 3600 * 1000));
	put_done_since(f, "future", at);
	put_done_since(f, "junk", "12x");
	put_done_since(f, "negative", "-5");
	put_done_since(f, "huge", "99999999999999999999999");
	assert_int_equal(restore(f, 0), 6);
	struct state_info si = get(f, "a");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.at_wall_ms, intent);
	/* Anything else than a time before the record's own: the record's time. */
	static const char *const others[] = {"future", "junk", "negative", "huge"};
	for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
		si = get(f, others[i]);
		assert_int_equal(si.kind, STATE_DONE);
		assert_true(si.at_wall_ms >= now / 1000 * 1000 - 60 * 1000);
		assert_true(si.at_wall_ms <= cptime_wall_ms());
	}
}

static void test_tombstone_removes(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "gone", "done", "succeeded", done_ok);
	put(f, 0, "kept", "intent", NO_STATUS, "{}");
	put(f, 0, "gone", NULL, NULL, NULL);
	put(f, 0, "back", "intent", NO_STATUS, "{}");
	put(f, 0, "back", NULL, NULL, NULL);
	put(f, 0, "back", "intent", NO_STATUS, "{}"); /* a new life after its tombstone */
	assert_int_equal(restore(f, 0), 6);
	assert_int_equal(get(f, "gone").kind, STATE_NONE);
	assert_int_equal(get(f, "kept").kind, STATE_INTENT);
	assert_int_equal(get(f, "back").kind, STATE_INTENT);
	assert_int_equal(state_count(f->st), 2);
}

static void test_operation_parsed(void **state)
{
	struct fixture *f = *state;
	const char *url = "https://graph.microsoft.com/v1.0/chats('19:a@thread.v2')/"
	                  "operations('op-1')";
	char value[512];
	snprintf(value, sizeof value,
	         "{\"location\": \"%s\", \"startedAt\": 1767225600123, \"attempts\": 3, "
	         "\"requestId\": \"6d0c5c5b-2a5b-4e5a-9e0e-4f1c2b3a4d5e\"}",
	         url);
	put(f, 1, "op", "operation", NO_STATUS, value);
	/* A requestId too long to be Graph's is left out, the operation kept. */
	snprintf(value, sizeof value,
	         "{\"location\": \"%s\", \"startedAt\": 5, \"requestId\": \"%0100d\"}", url, 7);
	put(f, 1, "op-long-id", "operation", NO_STATUS, value);
	/* Written by an older version: no attempts. */
	snprintf(value, sizeof value, "{\"location\": \"%s\", \"startedAt\": 5}", url);
	put(f, 1, "op-old", "operation", NO_STATUS, value);
	/* Unreadable: not JSON, no location, a location that is not a string, no startedAt. */
	put(f, 1, "bad1", "operation", NO_STATUS, "not json");
	put(f, 1, "bad2", "operation", NO_STATUS, "{\"startedAt\": 5}");
	put(f, 1, "bad3", "operation", NO_STATUS, "{\"location\": 7, \"startedAt\": 5}");
	put(f, 1, "bad4", "operation", NO_STATUS, "{\"location\": \"https://g/op\"}");
	assert_int_equal(restore(f, 1), 7);

	struct state_info si = get(f, "op-long-id");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_string_equal(si.op_url, url);
	assert_string_equal(si.op_request_id, "");
	si = get(f, "op");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_int_equal(si.partition, 1);
	assert_string_equal(si.op_url, url);
	assert_int_equal(si.op_started_wall_ms, 1767225600123LL);
	assert_int_equal(si.op_attempts, 3);
	assert_string_equal(si.op_request_id, "6d0c5c5b-2a5b-4e5a-9e0e-4f1c2b3a4d5e");
	si = get(f, "op-old");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_int_equal(si.op_attempts, 0);
	assert_string_equal(si.op_request_id, "");
	for (int i = 1; i <= 4; i++) {
		char id[8];
		snprintf(id, sizeof id, "bad%d", i);
		si = get(f, id);
		assert_int_equal(si.kind, STATE_INTENT); /* the POST may have happened */
		assert_string_equal(si.op_url, "");
	}
}

static void test_done_clears_operation(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "o", "operation", NO_STATUS, "{\"location\":\"https://g/op\",\"startedAt\":1}");
	int64_t off = put(f, 0, "o", "done", "succeeded", done_ok);
	assert_int_equal(restore(f, 0), 2);
	struct state_info si = get(f, "o");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, off);
	assert_string_equal(si.op_url, "");
}

/* Records without an id, without a kind or with an unknown kind are not ours. */
static void test_foreign_records_ignored(void **state)
{
	struct fixture *f = *state;
	put(f, 0, NULL, "intent", NO_STATUS, "{}");
	put(f, 0, "nokind", NULL, NO_STATUS, "{}");
	put(f, 0, "oddkind", "finished", NO_STATUS, "{}");
	put(f, 0, "ok", "intent", NO_STATUS, "{}");
	assert_int_equal(restore(f, 0), 4);
	assert_int_equal(get(f, "nokind").kind, STATE_NONE);
	assert_int_equal(get(f, "oddkind").kind, STATE_NONE);
	assert_int_equal(get(f, "ok").kind, STATE_INTENT);
	assert_int_equal(state_count(f->st), 1);
}

/* The hand-over mark: the latest per partition counts, it is no request, and it goes with
 * its partition. A request id cannot collide with it (ids have no control characters). */
static void test_handover_mark_latest_per_partition(void **state)
{
	struct fixture *f = *state;
	int64_t below = -1;
	put(f, 0, STATE_MARK_KEY, STATE_MARK_KIND, NO_STATUS, "17");
	put(f, 0, "r1", "intent", NO_STATUS, "{}");
	put(f, 0, STATE_MARK_KEY, STATE_MARK_KIND, NO_STATUS, "42");
	put(f, 1, STATE_MARK_KEY, STATE_MARK_KIND, NO_STATUS, "not a number");
	put(f, 1, "answered-below", STATE_MARK_KIND, NO_STATUS, "99"); /* not the mark's key */
	assert_int_equal(restore(f, 0), 3);
	assert_int_equal(restore(f, 1), 2);
	assert_true(state_answered_below(f->st, 0, &below));
	assert_int_equal(below, 42);
	assert_false(state_answered_below(f->st, 1, &below));
	assert_false(state_answered_below(f->st, 7, &below));
	assert_int_equal(state_count(f->st), 1); /* only r1 */
	state_drop_partition(f->st, 0);
	assert_false(state_answered_below(f->st, 0, &below));
}

static void test_fetch_returns_the_recorded_result_bytes(void **state)
{
	struct fixture *f = *state;
	put(f, 1, "i", "intent", NO_STATUS, "{}");
	int64_t off = put(f, 1, "r1", "done", "succeeded", done_ok);
	put(f, 1, "j", "intent", NO_STATUS, "{}");
	/* Bytes that are not text survive too: the result is copied, not re-rendered. */
	static const char binary[] = {'{', 0, '\x01', '\xff', '}'};
	int64_t off_bin = -1;
	queue(f->topic, 1, "r2", "done", "failed", binary, sizeof binary, 0, &off_bin);
	flush();
	assert_int_equal(restore(f, 1), 4);
	assert_int_equal(get(f, "r1").offset, off);

	char err[256] = "";
	char *value = NULL;
	size_t len = 0;
	if (!state_fetch(f->st, "r1", 1, off, &value, &len, err, sizeof err))
		fail_msg("state_fetch: %s", err);
	assert_int_equal(len, strlen(done_ok));
	assert_memory_equal(value, done_ok, len);
	assert_int_equal(value[len], '\0');
	free(value);

	value = NULL;
	assert_true(state_fetch(f->st, "r2", 1, off_bin, &value, &len, err, sizeof err));
	assert_int_equal(len, sizeof binary);
	assert_memory_equal(value, binary, len);
	free(value);

	/*
	 * Fetching again works (the reader was left unassigned), and without waiting for the
	 * previous fetch's long poll: replays are answered from the Kafka thread, one by one.
	 */
	int64_t started = cptime_mono_ms();
	for (int i = 0; i < 10; i++) {
		value = NULL;
		assert_true(state_fetch(f->st, i % 2 ? "r1" : "r2", 1, i % 2 ? off : off_bin,
		                        &value, &len, err, sizeof err));
		assert_int_equal(len, i % 2 ? strlen(done_ok) : sizeof binary);
		free(value);
	}
	assert_true(cptime_mono_ms() - started < 2500);
}

/* What the progress callback saw: calls, how many advanced, the longest silence. */
struct progress_seen {
	size_t calls, advanced;
	int64_t last_ms, longest_gap_ms;
};

static void on_progress(bool advanced, void *arg)
{
	struct progress_seen *p = arg;
	int64_t now = cptime_mono_ms();
	if (p->calls && now - p->last_ms > p->longest_gap_ms)
		p->longest_gap_ms = now - p->last_ms;
	p->last_ms = now;
	p->calls++;
	p->advanced += advanced;
}

/*
 * The Kafka thread feeds systemd's watchdog from inside restores and fetches: on a slow
 * broker they must keep calling back, and say when they advance.
 */
static void test_progress_reported_while_waiting(void **state)
{
	struct fixture *f = *state;
	struct progress_seen seen = {0};
	int64_t off = 0;
	for (int i = 0; i < 5; i++) {
		char id[16];
		snprintf(id, sizeof id, "p%d", i);
		off = put(f, 0, id, "done", "succeeded", done_ok);
	}
	state_set_progress(f->st, on_progress, &seen);
	rd_kafka_mock_broker_set_rtt(mcluster, 1, 150);
	assert_int_equal(restore(f, 0), 5);
	/* The watermarks, then each record. */
	assert_true(seen.advanced >= 6);
	assert_true(seen.longest_gap_ms < 1000);

	seen = (struct progress_seen){0};
	char err[256] = "", *value = NULL;
	size_t len = 0;
	if (!state_fetch(f->st, "p4", 0, off, &value, &len, err, sizeof err))
		fail_msg("state_fetch: %s", err);
	free(value);
	rd_kafka_mock_broker_set_rtt(mcluster, 1, 0);
	assert_true(seen.advanced >= 2);
	assert_true(seen.longest_gap_ms < 1000);
	state_set_progress(f->st, NULL, NULL);
}

/* n copies of the UTF-8 character ch: an id of n code points, n * strlen(ch) bytes. */
static const char *repeat_char(char *buf, size_t cap, const char *ch, size_t n)
{
	size_t k = strlen(ch);
	assert_true(n * k < cap);
	for (size_t i = 0; i < n; i++)
		memcpy(buf + i * k, ch, k);
	buf[n * k] = '\0';
	return buf;
}

/*
 * The id limit is 200 characters (code points), not bytes: the longest valid ids, 200
 * two-byte or four-byte characters (400 and 800 bytes), keep their state like any other,
 * whichever store holds it and whichever record kind; a key one byte beyond what a valid
 * id can be is not one of ours.
 */
static void test_multibyte_ids(void **state)
{
	struct fixture *f = *state;
	char e_acute[EVENT_ID_MAX_BYTES + 1], emoji[EVENT_ID_MAX_BYTES + 1];
	char intent[EVENT_ID_MAX_BYTES + 1], too_long[EVENT_ID_MAX_BYTES + 2];
	repeat_char(e_acute, sizeof e_acute, "\xc3\xa9", EVENT_ID_MAX_CHARS);
	repeat_char(emoji, sizeof emoji, "\xf0\x9f\x98\x80", EVENT_ID_MAX_CHARS);
	repeat_char(intent, sizeof intent, "\xe2\x82\xac", EVENT_ID_MAX_CHARS);
	repeat_char(too_long, sizeof too_long, "x", EVENT_ID_MAX_BYTES + 1);
	assert_int_equal(strlen(emoji), EVENT_ID_MAX_BYTES);
	int64_t off_e = put(f, 1, e_acute, "done", "succeeded", done_ok);
	int64_t off_emoji = put(f, 1, emoji, "done", "failed", done_ok);
	put(f, 1, intent, "intent", NO_STATUS, "{}");
	put(f, 1, too_long, "intent", NO_STATUS, "{}");
	assert_int_equal(restore(f, 1), 4);

	struct state_info si = get(f, e_acute);
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, off_e);
	assert_true(si.done_succeeded);
	si = get(f, emoji);
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, off_emoji);
	assert_false(si.done_succeeded);
	assert_int_equal(get(f, intent).kind, STATE_INTENT);
	assert_int_equal(get(f, too_long).kind, STATE_NONE);
	assert_int_equal(state_count(f->st), 3);

	/* A replay fetches the result by the id and checks the record's key is that id. */
	char err[256] = "";
	char *value = NULL;
	size_t len = 0;
	if (!state_fetch(f->st, emoji, 1, off_emoji, &value, &len, err, sizeof err))
		fail_msg("state_fetch: %s", err);
	assert_int_equal(len, strlen(done_ok));
	free(value);
	value = NULL;
	assert_false(state_fetch(f->st, e_acute, 1, off_emoji, &value, &len, err, sizeof err));
	assert_null(value);

	/* Active and back: moved through the live table like a short id. */
	assert_true(state_set_active(f->st, e_acute, 1, true));
	assert_true(get(f, e_acute).active);
	assert_true(state_set_active(f->st, e_acute, 1, false));
	assert_int_equal(get(f, e_acute).kind, STATE_DONE);
}

static void test_fetch_bad_offset(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "r", "done", "succeeded", done_ok);
	int64_t end = put(f, 0, "s", "done", "succeeded", done_ok) + 1;
	char err[256] = "";
	char *value = NULL;
	size_t len = 0;
	int64_t started = cptime_mono_ms();
	assert_false(state_fetch(f->st, "s", 0, end + 5, &value, &len, err, sizeof err));
	assert_null(value);
	assert_non_null(strstr(err, f->topic));
	err[0] = '\0';
	assert_false(state_fetch(f->st, "s", 0, -7, &value, &len, err, sizeof err));
	assert_null(value);
	assert_true(err[0] != '\0');
	/* An empty partition has nothing to fetch either. */
	assert_false(state_fetch(f->st, "s", 1, 0, &value, &len, err, sizeof err));
	assert_null(value);
	/* Failing is immediate, not a wait for records that will never come. */
	assert_true(cptime_mono_ms() - started < 3000);

	/* And the reader still works afterwards. */
	assert_true(state_fetch(f->st, "s", 0, end - 1, &value, &len, err, sizeof err));
	assert_memory_equal(value, done_ok, len);
	free(value);
}

/* ---- expiry ---- */

struct expired {
	char ids[8][32];
	int32_t partitions[8];
	int n;
};

static void on_expired(const char *id, int32_t partition, void *arg)
{
	struct expired *x = arg;
	assert_true(x->n < 8);
	snprintf(x->ids[x->n], sizeof x->ids[x->n], "%s", id);
	x->partitions[x->n] = partition;
	x->n++;
}

static void test_expiry_during_restore(void **state)
{
	struct fixture *f = *state;
	int64_t now = cptime_wall_ms();
	put_at(f, 1, "old-done", "done", "succeeded", done_ok, now - 3 * DAY_MS);
	put_at(f, 1, "old-intent", "intent", NO_STATUS, "{}", now - 2 * DAY_MS);
	put_at(f, 1, "recent", "intent", NO_STATUS, "{}", now - HOUR_MS);
	put(f, 1, "fresh", "done", "failed", "{}");
	put_at(f, 0, "other-partition", "intent", NO_STATUS, "{}", now - 3 * DAY_MS);

	struct expired x = {0};
	char err[256] = "";
	size_t records = 0;
	if (!state_restore(f->st, 1, DAY_MS, on_expired, &x, &records, err, sizeof err))
		fail_msg("state_restore: %s", err);
	assert_int_equal(records, 4);
	assert_int_equal(x.n, 2);
	assert_true((strcmp(x.ids[0], "old-done") == 0 && strcmp(x.ids[1], "old-intent") == 0) ||
	            (strcmp(x.ids[1], "old-done") == 0 && strcmp(x.ids[0], "old-intent") == 0));
	assert_int_equal(x.partitions[0], 1);
	assert_int_equal(x.partitions[1], 1);
	assert_int_equal(get(f, "old-done").kind, STATE_NONE);
	assert_int_equal(get(f, "old-intent").kind, STATE_NONE);
	struct state_info si = get(f, "recent");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_true(si.at_wall_ms == now - HOUR_MS); /* the record's own timestamp */
	assert_int_equal(get(f, "fresh").kind, STATE_DONE);
	assert_int_equal(state_count(f->st), 2);
}

/*
 * Retention counts from a request's last record: an old intent whose done record is recent
 * must be neither forgotten nor reported for a tombstone (which would delete the done record
 * at the next restore and let a replay create the group chat again).
 */
static void test_expiry_uses_last_record(void **state)
{
	struct fixture *f = *state;
	int64_t now = cptime_wall_ms();
	put_at(f, 0, "slow", "intent", NO_STATUS, "{}", now - 2 * DAY_MS);
	put_at(f, 0, "slow", "operation", NO_STATUS,
	       "{\"location\":\"https://g/op\",\"startedAt\":1}", now - 2 * DAY_MS + 1000);
	int64_t off = put(f, 0, "slow", "done", "succeeded", done_ok);
	/* Past retention once, then answered again recently (a new intent after it). */
	put_at(f, 0, "again", "done", "failed", "{}", now - 3 * DAY_MS);
	put(f, 0, "again", "intent", NO_STATUS, "{}");
	put_at(f, 0, "stale", "intent", NO_STATUS, "{}", now - 2 * DAY_MS);

	struct expired x = {0};
	char err[256] = "";
	size_t records = 0;
	if (!state_restore(f->st, 0, DAY_MS, on_expired, &x, &records, err, sizeof err))
		fail_msg("state_restore: %s", err);
	assert_int_equal(records, 6);
	struct state_info si = get(f, "slow");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, off);
	si = get(f, "again");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_int_equal(x.n, 1);
	assert_string_equal(x.ids[0], "stale");
	assert_int_equal(get(f, "stale").kind, STATE_NONE);
	assert_int_equal(state_count(f->st), 2);
}

static void test_forget_older(void **state)
{
	struct fixture *f = *state;
	int64_t now = cptime_wall_ms();
	put_at(f, 0, "old", "done", "succeeded", done_ok, now - 2 * DAY_MS);
	put_at(f, 1, "old1", "intent", NO_STATUS, "{}", now - 2 * DAY_MS);
	put_at(f, 0, "old-active", "intent", NO_STATUS, "{}", now - 2 * DAY_MS);
	put(f, 0, "new", "done", "succeeded", done_ok);
	assert_int_equal(restore(f, 0), 3);
	assert_int_equal(restore(f, 1), 1);
	assert_true(state_set_active(f->st, "old-active", 0, true));
	assert_true(state_set_active(f->st, "only-active", 0, true)); /* kind none */

	assert_int_equal(state_forget_older(f->st, now - DAY_MS), 2);
	assert_int_equal(get(f, "old").kind, STATE_NONE);
	assert_int_equal(get(f, "old1").kind, STATE_NONE);
	struct state_info si = get(f, "old-active");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_true(si.active);
	assert_true(get(f, "only-active").active);
	assert_int_equal(get(f, "new").kind, STATE_DONE);
	assert_int_equal(state_count(f->st), 3);
	assert_int_equal(state_forget_older(f->st, now - DAY_MS), 0);
}

static void test_drop_partition(void **state)
{
	struct fixture *f = *state;
	for (int i = 0; i < 50; i++) {
		char id[16];
		snprintf(id, sizeof id, "id-%d", i);
		queue(f->topic, i % 2, id, "intent", NO_STATUS, "{}", 2, 0, NULL);
	}
	flush();
	assert_int_equal(restore(f, 0), 25);
	assert_int_equal(restore(f, 1), 25);
	assert_int_equal(state_count(f->st), 50);
	state_drop_partition(f->st, 0);
	assert_int_equal(state_count(f->st), 25);
	for (int i = 0; i < 50; i++) {
		char id[16];
		snprintf(id, sizeof id, "id-%d", i);
		struct state_info si = get(f, id);
		assert_int_equal(si.kind, i % 2 ? STATE_INTENT : STATE_NONE);
	}
	state_drop_partition(f->st, 0); /* nothing left there */
	assert_int_equal(state_count(f->st), 25);
	state_drop_partition(f->st, 1);
	assert_int_equal(state_count(f->st), 0);
}

static void test_active_flag(void **state)
{
	struct fixture *f = *state;
	/* Unknown id: an active entry without a record. */
	assert_true(state_set_active(f->st, "new-id", 1, true));
	struct state_info si = get(f, "new-id");
	assert_int_equal(si.kind, STATE_NONE);
	assert_true(si.active);
	assert_int_equal(si.partition, 1);
	assert_int_equal(state_count(f->st), 1);
	/* Clearing it removes the entry. */
	assert_true(state_set_active(f->st, "new-id", 1, false));
	si = get(f, "new-id");
	assert_false(si.active);
	assert_int_equal(state_count(f->st), 0);
	/* Clearing an id never seen is fine and adds nothing. */
	assert_true(state_set_active(f->st, "never", 0, false));
	assert_int_equal(state_count(f->st), 0);

	/* A known request keeps its record when its job ends. */
	int64_t off = put(f, 0, "known", "done", "succeeded", done_ok);
	assert_int_equal(restore(f, 0), 1);
	assert_true(state_set_active(f->st, "known", 0, true));
	si = get(f, "known");
	assert_true(si.active);
	assert_int_equal(si.kind, STATE_DONE);
	assert_true(state_set_active(f->st, "known", 0, false));
	si = get(f, "known");
	assert_false(si.active);
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, off);
	assert_int_equal(state_count(f->st), 1);
}

/*
 * A tombstone acknowledged by the broker is applied outside a restore. (A hand-made message
 * can only be a tombstone: librdkafka reads headers and timestamps from its own message
 * structure, which a stack message does not have.)
 */
static void test_apply_tombstone(void **state)
{
	struct fixture *f = *state;
	put(f, 0, "live", "intent", NO_STATUS, "{}");
	assert_int_equal(restore(f, 0), 1);
	rd_kafka_message_t msg = {0};
	msg.partition = 0;
	msg.offset = 42;
	msg.key = (void *)"live";
	msg.key_len = 4;
	assert_true(state_apply(f->st, &msg));
	assert_int_equal(get(f, "live").kind, STATE_NONE);
	assert_int_equal(state_count(f->st), 0);
	/* No key: not ours. */
	msg.key = NULL;
	msg.key_len = 0;
	assert_true(state_apply(f->st, &msg));
}

/* The state the delivery reports of delivered_producer apply to (state_apply_delivered). */
static struct state *delivered_to;

static void apply_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	(void)rk;
	(void)opaque;
	assert_int_equal(msg->err, RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_true(state_apply_delivered(delivered_to, msg));
}

static void produce_own(rd_kafka_t *rk, const char *topic, const char *id, const char *kind,
                        const char *status, const char *intent_at)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(3);
	assert_non_null(h);
	assert_int_equal(rd_kafka_header_add(h, STATE_HEADER, -1, kind, -1), 0);
	if (status)
		assert_int_equal(rd_kafka_header_add(h, STATE_STATUS_HEADER, -1, status, -1), 0);
	if (intent_at)
		assert_int_equal(rd_kafka_header_add(h, STATE_INTENT_AT_HEADER, -1, intent_at, -1),
		                 0);
	assert_int_equal(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
	                                   RD_KAFKA_V_KEY(id, strlen(id)),
	                                   RD_KAFKA_V_VALUE((void *)done_ok, strlen(done_ok)),
	                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
	                                   RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
}

/*
 * What this instance wrote is mirrored from its delivery reports, whose timestamp is the
 * broker's LogAppendTime when it sends one (librdkafka's mock cluster: always 1234 ms). The
 * record's time is the acknowledgement's: before, every request an instance finished read
 * as a record of 1970, state_forget_older dropped it a minute later and a later copy of a
 * group chat was POSTed again without a lookup (the soak's "group chats created twice").
 */
static void test_delivered_records_keep_their_time(void **state)
{
	struct fixture *f = *state;
	rd_kafka_t *own = mock_client(RD_KAFKA_PRODUCER, rd_kafka_mock_cluster_bootstraps(mcluster),
	                              NULL, apply_delivery);
	char at[32];
	int64_t before = cptime_wall_ms(), intent = before - 5 * 60 * 1000;
	snprintf(at, sizeof at, "%lld", (long long)intent);
	delivered_to = f->st;
	produce_own(own, f->topic, "done", "done", "succeeded", NULL);
	produce_own(own, f->topic, "done-since", "done", "succeeded", at);
	produce_own(own, f->topic, "intent", "intent", NO_STATUS, NULL);
	assert_int_equal(rd_kafka_flush(own, 30 * 1000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(own);
	int64_t after = cptime_wall_ms();

	struct state_info si = get(f, "done");
	assert_int_equal(si.kind, STATE_DONE);
	assert_true(si.at_wall_ms >= before && si.at_wall_ms <= after);
	assert_int_equal(get(f, "done-since").at_wall_ms, intent);
	si = get(f, "intent");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_true(si.at_wall_ms >= before && si.at_wall_ms <= after);
	/* A day's retention keeps all three. */
	assert_int_equal(state_forget_older(f->st, cptime_wall_ms() - DAY_MS), 0);
	assert_int_equal(get(f, "done").kind, STATE_DONE);
	assert_int_equal(get(f, "done-since").kind, STATE_DONE);
	assert_int_equal(get(f, "intent").kind, STATE_INTENT);
}

static void test_restore_empty_partition(void **state)
{
	struct fixture *f = *state;
	int64_t started = cptime_mono_ms();
	assert_int_equal(restore(f, 0), 0);
	assert_int_equal(restore(f, 1), 0);
	assert_int_equal(state_count(f->st), 0);
	assert_true(cptime_mono_ms() - started < 3000);
	/* A restore after records arrive reads them. */
	put(f, 0, "late", "intent", NO_STATUS, "{}");
	assert_int_equal(restore(f, 0), 1);
	assert_int_equal(get(f, "late").kind, STATE_INTENT);
}

static void test_restore_unknown_partition(void **state)
{
	struct fixture *f = *state;
	char err[256] = "";
	size_t records = 0;
	assert_false(state_restore(f->st, 7, DAY_MS, NULL, NULL, &records, err, sizeof err));
	assert_non_null(strstr(err, f->topic));
}

/* Produces n done records of value_len bytes, ids "<prefix><i>", over `partitions`, at ts. */
static void produce_many_at(const char *topic, int32_t partitions, const char *prefix, size_t n,
                            size_t value_len, int64_t ts)
{
	char *value = malloc(value_len);
	assert_non_null(value);
	memset(value, 'v', value_len);
	for (size_t i = 0; i < n; i++) {
		char id[64];
		snprintf(id, sizeof id, "%s%zu", prefix, i);
		queue(topic, (int32_t)(i % (size_t)partitions), id, "done",
		      i % 3 ? "succeeded" : "failed", value, value_len, ts, NULL);
		if (i % 1000 == 0)
			rd_kafka_poll(producer, 0);
	}
	flush();
	free(value);
}

static void produce_many(const char *topic, int32_t partitions, const char *prefix, size_t n,
                         size_t value_len)
{
	produce_many_at(topic, partitions, prefix, n, value_len, 0);
}

static void test_many_ids(void **state)
{
	struct fixture *f = *state;
	const size_t n = 20000;
	produce_many(f->topic, 1, "hr-2026-", n, 40);
	assert_int_equal(restore(f, 0), n);
	assert_int_equal(state_count(f->st), n);
	for (size_t i = 0; i < n; i++) {
		char id[64];
		snprintf(id, sizeof id, "hr-2026-%zu", i);
		struct state_info si = get(f, id);
		assert_int_equal(si.kind, STATE_DONE);
		assert_int_equal(si.offset, (int64_t)i);
		assert_int_equal(si.done_succeeded, i % 3 != 0);
	}
	assert_int_equal(get(f, "hr-2026-20000").kind, STATE_NONE);
	/* A restore of the same partition again changes nothing. */
	assert_int_equal(restore(f, 0), n);
	assert_int_equal(state_count(f->st), n);
}

/* ---- compacted done requests (runs) ---- */

/* A topic of its own with more partitions, and a state reading it. */
static void use_topic(struct fixture *f, const char *suffix, int32_t partitions)
{
	char err[256] = "";
	snprintf(f->cfg->kafka.state_topic, sizeof f->cfg->kafka.state_topic, "%s.%s", f->topic,
	         suffix);
	mock_topic(mcluster, producer, f->cfg->kafka.state_topic, partitions);
	state_free(f->st);
	f->st = NULL;
	if (!state_new(f->cfg, &f->st, err, sizeof err))
		fail_msg("state_new: %s", err);
}

static const char *id_of(char id[64], const char *prefix, size_t i)
{
	snprintf(id, 64, "%s%zu", prefix, i);
	return id;
}

/* The request produce_many made i of, as the mirror must tell it. */
static void assert_done(struct fixture *f, const char *prefix, size_t i, int32_t partitions)
{
	char id[64];
	struct state_info si = get(f, id_of(id, prefix, i));
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.partition, (int32_t)(i % (size_t)partitions));
	assert_int_equal(si.offset, (int64_t)(i / (size_t)partitions));
	assert_int_equal(si.done_succeeded, i % 3 != 0);
	assert_false(si.active);
}

/*
 * Records in a partition, none dropped: the mock broker silently drops records beyond its
 * per-partition size, which would make a test lose some.
 */
static int64_t records_in(struct fixture *f, int32_t partition)
{
	int64_t low = -1, high = -1;
	assert_int_equal(rd_kafka_query_watermark_offsets(producer, f->cfg->kafka.state_topic,
	                                                  partition, &low, &high, 10 * 1000),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(low, 0);
	return high;
}

/* The mock broker keeps 100,000 records per partition at most: spread over enough. */
static void restore_all(struct fixture *f, int32_t partitions, size_t n)
{
	size_t total = 0;
	for (int32_t p = 0; p < partitions; p++) {
		size_t records = restore(f, p);
		assert_int_equal(records, records_in(f, p));
		total += records;
	}
	assert_int_equal(total, n);
}

/*
 * 200,000 done requests: each is found with its offset, partition and status, nearly all
 * compacted (fingerprint_only) at no more than 24 bytes each; then a partition goes, then
 * everything past retention.
 */
static void test_compacted_many_done(void **state)
{
	struct fixture *f = *state;
	const size_t n = 200000;
	const int32_t partitions = 8;
	use_topic(f, "many", partitions);
	produce_many(f->cfg->kafka.state_topic, partitions, "req-", n, 2);
	restore_all(f, partitions, n);
	assert_int_equal(state_count(f->st), n);
	size_t compacted = 0;
	char id[64];
	for (size_t i = 0; i < n; i++) {
		assert_done(f, "req-", i, partitions);
		compacted += get(f, id_of(id, "req-", i)).fingerprint_only;
	}
	assert_true(compacted > n - 5000);
	assert_int_equal(get(f, "req-200000").kind, STATE_NONE);
	size_t bytes = state_memory_bytes(f->st);
	print_message("%zu done requests: %zu bytes, %.1f per request\n", n, bytes,
	              (double)bytes / (double)n);
	assert_true(bytes <= 24 * n);

	state_drop_partition(f->st, 3);
	assert_int_equal(state_count(f->st), n - n / (size_t)partitions);
	for (size_t i = 0; i < n; i += 7) {
		if (i % (size_t)partitions == 3)
			assert_int_equal(get(f, id_of(id, "req-", i)).kind, STATE_NONE);
		else
			assert_done(f, "req-", i, partitions);
	}
	assert_true(state_memory_bytes(f->st) < bytes);

	assert_int_equal(state_forget_older(f->st, cptime_wall_ms() - DAY_MS), 0);
	assert_int_equal(state_count(f->st), n - n / (size_t)partitions);
	assert_int_equal(state_forget_older(f->st, cptime_wall_ms() + 60 * 1000),
	                 n - n / (size_t)partitions);
	assert_int_equal(state_count(f->st), 0);
	assert_int_equal(get(f, "req-1").kind, STATE_NONE);
	assert_true(state_memory_bytes(f->st) < 200 * 1000);
}

/* Later records for compacted requests: same precedence as for the others. */
static void test_compacted_later_records(void **state)
{
	struct fixture *f = *state;
	const size_t n = 10000;
	char id[64];
	produce_many(f->topic, 1, "c-", n, 2);
	assert_int_equal(restore(f, 0), n);
	struct state_info si = get(f, "c-5");
	assert_true(si.fingerprint_only);
	assert_true(si.at_wall_ms <= cptime_wall_ms() && si.at_wall_ms > cptime_wall_ms() - 60000);

	put(f, 0, "c-5", "intent", NO_STATUS, "{}"); /* a success stays */
	/* c-6 failed: a re-drive's records move it on, out of its run */
	int64_t op6 =
	    put(f, 0, "c-6", "operation", NO_STATUS, "{\"location\":\"https://g/op\",\"startedAt\":1}");
	put(f, 0, "c-7", NULL, NULL, NULL);
	int64_t again = put(f, 0, "c-8", "done", "failed", "{}"); /* a later done wins */
	put(f, 0, "c-9", NULL, NULL, NULL);
	put(f, 0, "c-9", "intent", NO_STATUS, "{}"); /* a new life after its tombstone */
	assert_int_equal(restore(f, 0), n + 6);

	si = get(f, "c-5");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, 5);
	assert_true(si.fingerprint_only);
	si = get(f, "c-6");
	assert_int_equal(si.kind, STATE_OPERATION);
	assert_int_equal(si.offset, op6);
	assert_false(si.fingerprint_only);
	assert_string_equal(si.op_url, "https://g/op");
	assert_int_equal(get(f, "c-7").kind, STATE_NONE);
	si = get(f, "c-8");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, again);
	assert_false(si.done_succeeded);
	si = get(f, "c-9");
	assert_int_equal(si.kind, STATE_INTENT);
	assert_false(si.fingerprint_only);
	assert_int_equal(state_count(f->st), n - 1);
	for (size_t i = 10; i < n; i += 13)
		assert_done(f, "c-", i, 1);

	/* A tombstone acknowledged outside a restore, for a compacted request. */
	rd_kafka_message_t msg = {0};
	msg.key = (void *)id_of(id, "c-", 4321);
	msg.key_len = strlen(id);
	assert_true(state_apply(f->st, &msg));
	assert_int_equal(get(f, "c-4321").kind, STATE_NONE);
	assert_int_equal(state_count(f->st), n - 2);
}

/* A compacted request in progress again, and done with: nothing about it is lost. */
static void test_compacted_active_again(void **state)
{
	struct fixture *f = *state;
	const size_t n = 10000;
	produce_many(f->topic, 2, "a-", n, 2);
	assert_int_equal(restore(f, 0) + restore(f, 1), n);
	assert_true(get(f, "a-77").fingerprint_only);

	assert_true(state_set_active(f->st, "a-77", 1, true));
	struct state_info si = get(f, "a-77");
	assert_true(si.active);
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, 77 / 2);
	assert_true(si.fingerprint_only); /* still known by its fingerprint only */
	assert_int_equal(state_count(f->st), n);
	/* Active requests are not forgotten, and neither are recent ones. */
	assert_int_equal(state_forget_older(f->st, cptime_wall_ms() - DAY_MS), 0);
	assert_int_equal(state_count(f->st), n);

	assert_true(state_set_active(f->st, "a-77", 1, false));
	assert_done(f, "a-", 77, 2);
	assert_int_equal(state_count(f->st), n);
	/* Many more in progress and done with: they go back to the runs. */
	char id[64];
	for (size_t i = 0; i < n; i += 2)
		assert_true(state_set_active(f->st, id_of(id, "a-", i), 0, true));
	for (size_t i = 0; i < n; i += 2)
		assert_true(state_set_active(f->st, id_of(id, "a-", i), 0, false));
	assert_int_equal(state_count(f->st), n);
	for (size_t i = 0; i < n; i++)
		assert_done(f, "a-", i, 2);
	assert_true(get(f, "a-4").fingerprint_only);
	/*
	 * The minute's pass leaves the runs without dead slots: what remains is 20 bytes a
	 * request, the table grown for 5,000 jobs at once (64 kB) and the done entries waiting
	 * for the next compaction (up to 4,096 of 80 bytes).
	 */
	assert_int_equal(state_forget_older(f->st, cptime_wall_ms() - DAY_MS), 0);
	assert_int_equal(state_count(f->st), n);
	assert_true(state_memory_bytes(f->st) <= 20 * n + 64 * 1024 + 4096 * 80);
}

struct expired_count {
	size_t n;
	int32_t partition;
	bool saw_recent;
};

static void count_expired(const char *id, int32_t partition, void *arg)
{
	struct expired_count *x = arg;
	assert_int_equal(partition, x->partition);
	x->saw_recent |= strcmp(id, "e-3") == 0 || strcmp(id, "e-4") == 0;
	x->n++;
}

/* Requests past retention are reported during a restore, compacted or not. */
static void test_compacted_expiry_during_restore(void **state)
{
	struct fixture *f = *state;
	const size_t n = 10000;
	int64_t now = cptime_wall_ms();
	produce_many_at(f->topic, 2, "e-", n, 2, now - 3 * DAY_MS);
	int64_t recent = put(f, 1, "e-3", "done", "succeeded", done_ok);
	put(f, 1, "e-5", "intent", NO_STATUS, "{}");
	struct expired_count x = {.partition = 1};
	char err[256] = "";
	size_t records = 0;
	if (!state_restore(f->st, 1, DAY_MS, count_expired, &x, &records, err, sizeof err))
		fail_msg("state_restore: %s", err);
	assert_int_equal(records, n / 2 + 2);
	assert_int_equal(x.n, n / 2 - 2);
	assert_false(x.saw_recent);
	struct state_info si = get(f, "e-3");
	assert_int_equal(si.kind, STATE_DONE);
	assert_int_equal(si.offset, recent);
	assert_int_equal(get(f, "e-5").kind, STATE_INTENT);
	assert_int_equal(get(f, "e-7").kind, STATE_NONE);
	assert_int_equal(state_count(f->st), 2);
	assert_true(state_memory_bytes(f->st) < 200 * 1000);
}

/* A fetch gives a request's result only: the record there must have the id as key. */
static void test_fetch_checks_the_id(void **state)
{
	struct fixture *f = *state;
	int64_t first = put(f, 1, "mine", "done", "succeeded", done_ok);
	int64_t second = put(f, 1, "next", "done", "failed", "{}");
	char err[256] = "";
	char *value = NULL;
	size_t len = 0;
	assert_false(state_fetch(f->st, "someone-else", 1, first, &value, &len, err, sizeof err));
	assert_null(value);
	assert_non_null(strstr(err, "fingerprint collision"));
	/* From the read-ahead cache too, which then still has it for the right id. */
	assert_true(state_fetch(f->st, "mine", 1, first, &value, &len, err, sizeof err));
	free(value);
	value = NULL;
	err[0] = '\0';
	assert_false(state_fetch(f->st, "mine", 1, second, &value, &len, err, sizeof err));
	assert_null(value);
	assert_non_null(strstr(err, "fingerprint collision"));
	assert_true(state_fetch(f->st, "next", 1, second, &value, &len, err, sizeof err));
	assert_memory_equal(value, "{}", len);
	free(value);
}

/*
 * The figure for docs/state.md (CHATPROV_STATE_BENCH=1): records restored per second, over
 * partitions restored one after the other as on an assignment. The mock broker keeps only a
 * few MB per partition (older records are dropped), so the history is spread over enough
 * partitions for all of it to stay, which the low watermarks confirm.
 */
static void bench_restore_rate(void **state)
{
	struct fixture *f = *state;
	const size_t n = 200000, value_len = 600;
	const int32_t partitions = 50;
	char err[256] = "";
	snprintf(f->cfg->kafka.state_topic, sizeof f->cfg->kafka.state_topic, "%s.bench", f->topic);
	mock_topic(mcluster, producer, f->cfg->kafka.state_topic, partitions);
	state_free(f->st);
	f->st = NULL;
	if (!state_new(f->cfg, &f->st, err, sizeof err))
		fail_msg("state_new: %s", err);
	produce_many(f->cfg->kafka.state_topic, partitions, "bench-request-", n, value_len);

	int64_t slowest = 0, started = cptime_mono_ms();
	size_t total = 0;
	for (int32_t p = 0; p < partitions; p++) {
		int64_t high = records_in(f, p);
		int64_t t = cptime_mono_ms();
		size_t records = 0;
		if (!state_restore(f->st, p, 30 * DAY_MS, NULL, NULL, &records, err, sizeof err))
			fail_msg("state_restore: %s", err);
		t = cptime_mono_ms() - t;
		slowest = t > slowest ? t : slowest;
		assert_int_equal(records, (size_t)high);
		total += records;
	}
	int64_t ms = cptime_mono_ms() - started;
	assert_int_equal(total, n);
	assert_int_equal(state_count(f->st), n);
	print_message("restored %zu records of %zu bytes over %d partitions in %lld ms "
	              "(slowest partition %lld ms): %.0f records/s\n",
	              n, value_len, (int)partitions, (long long)ms, (long long)slowest,
	              (double)n * 1000.0 / (double)(ms > 0 ? ms : 1));
}

/* What malloc holds (glibc: every arena, mmapped blocks included). */
static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

static long rss_kib(void)
{
	FILE *fp = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;
	while (fp && fgets(line, sizeof line, fp))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kib = strtol(line + 6, NULL, 10);
	if (fp)
		fclose(fp);
	return kib;
}

/* Microseconds per state_get of ids "<prefix><i>" (SHA-1 of the id included). */
static double lookup_us(struct fixture *f, const char *prefix, size_t n, size_t stride,
                        enum state_kind want)
{
	const size_t lookups = 1000000;
	int64_t t = cptime_mono_ms();
	for (size_t i = 0; i < lookups; i++) {
		char id[64];
		struct state_info si;
		state_get(f->st, id_of(id, prefix, (i * stride) % n), &si);
		assert_int_equal(si.kind, want);
	}
	return (double)(cptime_mono_ms() - t) * 1000.0 / (double)lookups;
}

/*
 * The memory figure for docs/state.md (CHATPROV_STATE_BENCH=1): 1,000,000 done requests
 * (CHATPROV_STATE_BENCH_N to change it) restored over 50 partitions; the heap and RSS they
 * add, what state_memory_bytes says, and the cost of a lookup that finds a request and of
 * one that does not (a new request: every run is searched).
 */
static void bench_memory_per_request(void **state)
{
	struct fixture *f = *state;
	const char *n_env = getenv("CHATPROV_STATE_BENCH_N");
	const size_t n = n_env ? strtoul(n_env, NULL, 10) : 1000000;
	const int32_t partitions = 50;
	use_topic(f, "memory", partitions);
	produce_many(f->cfg->kafka.state_topic, partitions, "bench-request-", n, 2);
	malloc_trim(0);
	size_t heap = heap_in_use();
	long rss = rss_kib();
	restore_all(f, partitions, n);
	assert_int_equal(state_count(f->st), n);
	malloc_trim(0);
	heap = heap_in_use() - heap;
	rss = rss_kib() - rss;
	size_t bytes = state_memory_bytes(f->st);
	double hit = lookup_us(f, "bench-request-", n, 7919, STATE_DONE);
	double miss = lookup_us(f, "absent-request-", SIZE_MAX, 1, STATE_NONE);
	print_message("%zu done requests: state_memory_bytes %.1f B each, heap +%.1f B, "
	              "RSS +%.1f B; state_get %.2f us found, %.2f us not found\n",
	              n, (double)bytes / (double)n, (double)heap / (double)n,
	              (double)rss * 1024.0 / (double)n, hit, miss);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_restore_reads_to_high_watermark, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_later_records_win, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_failed_outcome_unknown_reads_as_intent, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_done_keeps_the_intent_time, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tombstone_removes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_operation_parsed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_done_clears_operation, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreign_records_ignored, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_staterec_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_handover_mark_latest_per_partition, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_returns_the_recorded_result_bytes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_bad_offset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_multibyte_ids, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_expiry_during_restore, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_expiry_uses_last_record, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_forget_older, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_drop_partition, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_active_flag, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_apply_tombstone, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_delivered_records_keep_their_time, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_restore_empty_partition, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_restore_unknown_partition, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_many_ids, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compacted_many_done, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compacted_later_records, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compacted_active_again, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compacted_expiry_during_restore, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_checks_the_id, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_progress_reported_while_waiting, setup, teardown),
	};
	/* Figures, not checks (bench/state runs them): they assert only that the run was whole. */
	const struct CMUnitTest benches[] = {
	    cmocka_unit_test_setup_teardown(bench_restore_rate, setup, teardown),
	    cmocka_unit_test_setup_teardown(bench_memory_per_request, setup, teardown),
	};
	const char *bench = getenv("CHATPROV_STATE_BENCH");
	if (bench && strcmp(bench, "1") == 0)
		return cmocka_run_group_tests(benches, group_setup, group_teardown);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
