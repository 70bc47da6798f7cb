/*
 * test_pipeline.c - the pipeline's files (intake, dispatch, publish, rebalance, core) in one
 * process against librdkafka's in-process mock cluster, on the paths that never call Graph:
 * invalid events answered `rejected` once each, copied to the DLQ byte for byte, their
 * offsets committed; and the hand-over mark a previous owner left, whose offsets are skipped.
 * Graph and the token endpoint are a closed port: nothing here may reach them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "cfg.h"
#include "cptime.h"
#include "metrics.h"
#include "mock_kafka.h"
#include "pipeline.h"
#include "staterec.h"

#define WAIT_MS         (30 * 1000)
#define MAX_RECORDS     16
#define TENANT_GUID     "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define CLIENT_GUID     "0f3b8c2e-1d5a-4e6f-9a7b-8c9d0e1f2a3b"
#define CLOSED_PORT_URL "http://127.0.0.1:9"

static rd_kafka_t *cluster_owner;
static rd_kafka_mock_cluster_t *mcluster;
static rd_kafka_t *producer;
static int topic_seq;

/* One test's topics, configuration and pipeline. */
struct fixture {
	char dir[64];
	char input[64], output[64], dlq[64], state[80], group[64];
	struct cfg *cfg;
	struct metrics *metrics;
	struct pipeline *p;
	rd_kafka_t *reader; /* reads the output and DLQ topics */
};

/* What a topic held, read back from its beginning. */
struct record {
	char *value;
	size_t len;
	char status_header[16];
};
struct records {
	size_t n;
	struct record rec[MAX_RECORDS];
};

static int group_setup(void **state)
{
	(void)state;
	mcluster = mock_cluster_start(&cluster_owner);
	producer =
	    mock_client(RD_KAFKA_PRODUCER, rd_kafka_mock_cluster_bootstraps(mcluster), NULL, NULL);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	rd_kafka_destroy(producer);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(cluster_owner);
	return 0;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

static void write_config(struct fixture *f, const char *path)
{
	char secret[128], text[2048];
	snprintf(secret, sizeof secret, "%s/secret", f->dir);
	write_file(secret, "unit-test-secret\n");
	snprintf(text, sizeof text,
	         "[kafka]\nbrokers = %s\ngroup_id = %s\ninput_topic = %s\noutput_topic = %s\n"
	         "dlq_topic = %s\n"
	         "[librdkafka]\nsession.timeout.ms = 6000\nheartbeat.interval.ms = 500\n"
	         "[graph]\nbase_url = " CLOSED_PORT_URL "\n"
	         "[auth]\ntenant_id = " TENANT_GUID "\nclient_id = " CLIENT_GUID "\n"
	         "client_secret_file = %s\nauthority_url = " CLOSED_PORT_URL "\n"
	         "[metrics]\nlisten =\n[log]\nlevel = warning\n",
	         rd_kafka_mock_cluster_bootstraps(mcluster), f->group, f->input, f->output, f->dlq,
	         secret);
	write_file(path, text);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	int seq = ++topic_seq;
	snprintf(f->dir, sizeof f->dir, "/tmp/test_pipeline.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->input, sizeof f->input, "in.%d", seq);
	snprintf(f->output, sizeof f->output, "out.%d", seq);
	snprintf(f->dlq, sizeof f->dlq, "dlq.%d", seq);
	snprintf(f->state, sizeof f->state, "in.%d.state", seq);
	snprintf(f->group, sizeof f->group, "g.%d", seq);
	mock_topic(mcluster, producer, f->input, 2);
	mock_topic(mcluster, producer, f->output, 1);
	mock_topic(mcluster, producer, f->dlq, 1);
	mock_topic(mcluster, producer, f->state, 2);
	char path[128], err[CP_ERRSTR_SIZE];
	snprintf(path, sizeof path, "%s/chatprovd.conf", f->dir);
	write_config(f, path);
	if (!cfg_load(path, &f->cfg, err, sizeof err))
		fail_msg("cfg_load: %s", err);
	f->reader = mock_client(RD_KAFKA_CONSUMER, rd_kafka_mock_cluster_bootstraps(mcluster),
	                        "test-reader", NULL);
	*state = f;
	return 0;
}

static void start_pipeline(struct fixture *f)
{
	char err[CP_ERRSTR_SIZE];
	if (!metrics_new(0, &f->metrics, err, sizeof err))
		fail_msg("metrics_new: %s", err);
	if (!pipeline_new(f->cfg, f->metrics, &f->p, err, sizeof err) ||
	    !pipeline_start(f->p, err, sizeof err))
		fail_msg("pipeline: %s", err);
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	if (f->p) {
		pipeline_begin_drain(f->p);
		int64_t until = cptime_mono_ms() + WAIT_MS;
		while (!pipeline_drained(f->p) && cptime_mono_ms() < until)
			assert_true(pipeline_poll(f->p, 50));
		assert_true(pipeline_drained(f->p));
		pipeline_finish(f->p);
		pipeline_free(f->p);
	}
	metrics_free(f->metrics);
	rd_kafka_destroy(f->reader);
	cfg_free(f->cfg);
	char path[128];
	snprintf(path, sizeof path, "%s/secret", f->dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/chatprovd.conf", f->dir);
	unlink(path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void produce(const char *topic, int32_t partition, const char *key, const char *value,
                    rd_kafka_headers_t *headers)
{
	rd_kafka_resp_err_t err = rd_kafka_producev(
	    producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
	    RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE((void *)value, strlen(value)),
	    RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(rd_kafka_flush(producer, 10 * 1000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* Reads partition 0 of topic from its start: every record the broker holds now. */
static void read_topic(rd_kafka_t *rk, const char *topic, struct records *out)
{
	memset(out, 0, sizeof *out);
	int64_t low = 0, high = 0;
	assert_int_equal(rd_kafka_query_watermark_offsets(rk, topic, 0, &low, &high, 5000),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	if (high == 0)
		return;
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(list, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
	assert_int_equal(rd_kafka_assign(rk, list), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(list);
	int64_t until = cptime_mono_ms() + 10 * 1000;
	while (out->n < (size_t)high && out->n < MAX_RECORDS && cptime_mono_ms() < until) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		if (!m)
			continue;
		if (!m->err) {
			struct record *r = &out->rec[out->n++];
			r->value = strndup(m->payload, m->len);
			assert_non_null(r->value);
			r->len = m->len;
			rd_kafka_headers_t *h = NULL;
			const void *v = NULL;
			size_t vlen = 0;
			if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
			    rd_kafka_header_get_last(h, STATE_STATUS_HEADER, &v, &vlen) ==
			        RD_KAFKA_RESP_ERR_NO_ERROR)
				snprintf(r->status_header, sizeof r->status_header, "%.*s",
				         (int)vlen, (const char *)v);
		}
		rd_kafka_message_destroy(m);
	}
	assert_int_equal(rd_kafka_assign(rk, NULL), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void records_free(struct records *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->rec[i].value);
}

/* Runs the Kafka thread's loop until topic holds n records (or the wait ends). */
static void poll_until_records(struct fixture *f, const char *topic, int64_t n)
{
	int64_t until = cptime_mono_ms() + WAIT_MS, low = 0, high = 0;
	while (cptime_mono_ms() < until) {
		assert_true(pipeline_poll(f->p, 50));
		if (rd_kafka_query_watermark_offsets(f->reader, topic, 0, &low, &high, 1000) ==
		        RD_KAFKA_RESP_ERR_NO_ERROR &&
		    high >= n)
			return;
	}
	fail_msg("%s holds %lld records after %d ms, expected %lld", topic, (long long)high,
	         WAIT_MS, (long long)n);
}

/* The group's committed offset of each input partition, once it reaches want[]. */
static void poll_until_committed(struct fixture *f, const int64_t want[2])
{
	rd_kafka_t *inspector = mock_client(
	    RD_KAFKA_CONSUMER, rd_kafka_mock_cluster_bootstraps(mcluster), f->group, NULL);
	int64_t until = cptime_mono_ms() + WAIT_MS, got[2] = {-1, -1};
	while (cptime_mono_ms() < until) {
		int64_t next_check = cptime_mono_ms() + 500;
		while (cptime_mono_ms() < next_check)
			assert_true(pipeline_poll(f->p, 50));
		rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(2);
		rd_kafka_topic_partition_list_add(list, f->input, 0);
		rd_kafka_topic_partition_list_add(list, f->input, 1);
		if (rd_kafka_committed(inspector, list, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
			got[0] = list->elems[0].offset;
			got[1] = list->elems[1].offset;
		}
		rd_kafka_topic_partition_list_destroy(list);
		if (got[0] == want[0] && got[1] == want[1])
			break;
	}
	rd_kafka_destroy(inspector);
	assert_int_equal(got[0], want[0]);
	assert_int_equal(got[1], want[1]);
}

static void assert_result(const char *value, const char *id, const char *status)
{
	json_object *doc = json_tokener_parse(value);
	assert_non_null(doc);
	json_object *v = NULL;
	assert_true(json_object_object_get_ex(doc, "schema", &v));
	assert_string_equal(json_object_get_string(v), "chatprov.result.v1");
	assert_true(json_object_object_get_ex(doc, "status", &v));
	assert_string_equal(json_object_get_string(v), status);
	assert_true(json_object_object_get_ex(doc, "id", &v));
	if (id)
		assert_string_equal(json_object_get_string(v), id);
	else
		assert_null(v);
	json_object_put(doc);
}

/* Index of the record whose value contains needle; fails when none does. */
static size_t find_record(const struct records *r, const char *needle)
{
	for (size_t i = 0; i < r->n; i++)
		if (strstr(r->rec[i].value, needle))
			return i;
	fail_msg("no record contains %s", needle);
	return 0;
}

#define EVENT_NO_MEMBERS                                                                           \
	"{\"schema\":\"chatprov.request.v1\",\"id\":\"no-members\",\"chatType\":\"group\","        \
	"\"members\":[]}"
#define EVENT_BAD_GUID                                                                             \
	"{\"schema\":\"chatprov.request.v1\",\"id\":\"bad-guid\",\"chatType\":\"oneOnOne\","       \
	"\"members\":[{\"userId\":\"8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g\",\"roles\":[\"owner\"]}" \
	","                                                                                        \
	"{\"userId\":\"82af01c5-f7cc-4a2e-a728-3a5df21afd9d\",\"roles\":[\"owner\"]}]}"
#define EVENT_WRONG_SCHEMA "{\"schema\":\"chatprov.request.v2\",\"id\":\"wrong-schema\"}"
#define EVENT_NOT_JSON     "this is not JSON"

static void test_invalid_events_get_one_rejected_result_a_dlq_copy_and_a_commit(void **state)
{
	struct fixture *f = *state;
	start_pipeline(f);
	produce(f->input, 0, "no-members", EVENT_NO_MEMBERS, NULL);
	produce(f->input, 0, "not-json", EVENT_NOT_JSON, NULL);
	produce(f->input, 1, "bad-guid", EVENT_BAD_GUID, NULL);
	produce(f->input, 1, "wrong-schema", EVENT_WRONG_SCHEMA, NULL);
	poll_until_records(f, f->dlq, 4);
	poll_until_records(f, f->output, 4);
	poll_until_committed(f, (const int64_t[2]){2, 2});

	struct records out, dlq;
	read_topic(f->reader, f->output, &out);
	assert_int_equal(out.n, 4); /* one result each, however long the loop ran */
	assert_result(out.rec[find_record(&out, "\"no-members\"")].value, "no-members", "rejected");
	assert_result(out.rec[find_record(&out, "\"bad-guid\"")].value, "bad-guid", "rejected");
	assert_result(out.rec[find_record(&out, "\"wrong-schema\"")].value, "wrong-schema",
	              "rejected");
	read_topic(f->reader, f->dlq, &dlq);
	assert_int_equal(dlq.n, 4);
	const char *const originals[] = {EVENT_NO_MEMBERS, EVENT_NOT_JSON, EVENT_BAD_GUID,
	                                 EVENT_WRONG_SCHEMA};
	for (size_t i = 0; i < 4; i++) {
		size_t k = find_record(&dlq, originals[i]);
		assert_int_equal(dlq.rec[k].len, strlen(originals[i])); /* byte for byte */
		assert_string_equal(dlq.rec[k].status_header, "rejected");
	}
	records_free(&out);
	records_free(&dlq);
}

static void test_a_handover_mark_skips_what_the_previous_owner_answered(void **state)
{
	struct fixture *f = *state;
	/* The previous owner answered offsets 0 and 1 of partition 0, and said so. */
	produce(f->state, 0, STATE_MARK_KEY, "2", staterec_mark_headers());
	produce(f->input, 0, "answered-0", EVENT_WRONG_SCHEMA, NULL);
	produce(f->input, 0, "answered-1", EVENT_WRONG_SCHEMA, NULL);
	produce(f->input, 0, "new-2", EVENT_NO_MEMBERS, NULL);
	start_pipeline(f);
	poll_until_records(f, f->output, 1);
	poll_until_committed(f, (const int64_t[2]){3, RD_KAFKA_OFFSET_INVALID});

	struct records out;
	read_topic(f->reader, f->output, &out);
	assert_int_equal(out.n, 1);
	assert_result(out.rec[0].value, "no-members", "rejected");
	records_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(
	        test_invalid_events_get_one_rejected_result_a_dlq_copy_and_a_commit, setup,
	        teardown),
	    cmocka_unit_test_setup_teardown(
	        test_a_handover_mark_skips_what_the_previous_owner_answered, setup, teardown),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
