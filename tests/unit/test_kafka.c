/*
 * test_kafka.c - how kafka.c layers a handle's configuration: chatprovd's defaults, then the
 * operator's [librdkafka] entries (which beat the defaults), then the settings the delivery
 * guarantees rely on (which beat everything); and an entry librdkafka refuses is reported with
 * where it came from. The handles are created for real (librdkafka reads nothing until used)
 * and their settings read back with rd_kafka_conf_get.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kafka.h"
#include "log.h"

static struct cfg *new_cfg(void)
{
	struct cfg *c = calloc(1, sizeof *c);
	assert_non_null(c);
	snprintf(c->kafka.brokers, sizeof c->kafka.brokers, "127.0.0.1:9");
	snprintf(c->kafka.group_id, sizeof c->kafka.group_id, "chatprov-test");
	c->kafka.max_message_bytes = 1024 * 1024;
	return c;
}

static void add_entry(struct cfg *c, const char *key, const char *value, const char *origin)
{
	struct cfg_rdkafka_entry *e = &c->rdkafka[c->n_rdkafka++];
	snprintf(e->key, sizeof e->key, "%s", key);
	snprintf(e->value, sizeof e->value, "%s", value);
	snprintf(e->origin, sizeof e->origin, "%s", origin);
}

static void assert_setting(rd_kafka_t *rk, const char *key, const char *want)
{
	char value[512];
	size_t size = sizeof value;
	assert_int_equal(rd_kafka_conf_get(rd_kafka_conf(rk), key, value, &size), RD_KAFKA_CONF_OK);
	assert_string_equal(value, want);
}

static void test_consumer_operator_beats_defaults_guarantees_beat_operator(void **state)
{
	(void)state;
	char err[CP_ERRSTR_SIZE] = "";
	struct cfg *c = new_cfg();
	add_entry(c, "queued.max.messages.kbytes", "4096", "t.conf:3");
	add_entry(c, "enable.auto.offset.store", "true", "t.conf:4");
	rd_kafka_t *rk = kafka_consumer_new(c, NULL, NULL, err, sizeof err);
	assert_non_null(rk);
	assert_setting(rk, "queued.max.messages.kbytes", "4096");
	assert_setting(rk, "enable.auto.offset.store", "false");
	assert_setting(rk, "partition.assignment.strategy", "cooperative-sticky");
	assert_setting(rk, "group.id", "chatprov-test");
	assert_setting(rk, "fetch.error.backoff.ms", "20");
	rd_kafka_destroy(rk);
	free(c);
}

static void test_producer_is_idempotent_and_takes_a_dlq_copy(void **state)
{
	(void)state;
	char err[CP_ERRSTR_SIZE] = "";
	struct cfg *c = new_cfg();
	add_entry(c, "enable.idempotence", "false", "t.conf:5");
	add_entry(c, "acks", "1", "t.conf:6");
	add_entry(c, "linger.ms", "50", "t.conf:7");
	rd_kafka_t *rk = kafka_producer_new(c, NULL, NULL, err, sizeof err);
	assert_non_null(rk);
	assert_setting(rk, "enable.idempotence", "true");
	assert_setting(rk, "acks", "-1"); /* all */
	assert_setting(rk, "linger.ms", "50");
	/* max_message_bytes plus the DLQ headers' headroom (64 KiB). */
	assert_setting(rk, "message.max.bytes", "1114112");
	rd_kafka_destroy(rk);
	free(c);
}

static void test_reader_never_commits_and_sees_partition_ends(void **state)
{
	(void)state;
	char err[CP_ERRSTR_SIZE] = "";
	struct cfg *c = new_cfg();
	add_entry(c, "enable.auto.commit", "true", "t.conf:8");
	add_entry(c, "enable.partition.eof", "false", "t.conf:9");
	rd_kafka_t *rk = kafka_reader_new(c, err, sizeof err);
	assert_non_null(rk);
	assert_setting(rk, "enable.auto.commit", "false");
	assert_setting(rk, "enable.partition.eof", "true");
	assert_setting(rk, "group.id", "chatprov-test.state-reader");
	rd_kafka_destroy(rk);
	rk = kafka_inspector_new(c, err, sizeof err);
	assert_non_null(rk);
	assert_setting(rk, "enable.auto.commit", "false");
	assert_setting(rk, "group.id", "chatprov-test"); /* for its committed offsets */
	rd_kafka_destroy(rk);
	free(c);
}

static void test_refused_entry_names_its_origin(void **state)
{
	(void)state;
	char err[CP_ERRSTR_SIZE] = "";
	struct cfg *c = new_cfg();
	add_entry(c, "no.such.property", "1", "t.conf:12");
	assert_null(kafka_consumer_new(c, NULL, NULL, err, sizeof err));
	assert_non_null(strstr(err, "t.conf:12: [librdkafka] no.such.property: "));
	err[0] = '\0';
	assert_null(kafka_producer_new(c, NULL, NULL, err, sizeof err));
	assert_non_null(strstr(err, "t.conf:12: [librdkafka] no.such.property: "));
	free(c);
}

int main(void)
{
	log_init("test_kafka");
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_consumer_operator_beats_defaults_guarantees_beat_operator),
	    cmocka_unit_test(test_producer_is_idempotent_and_takes_a_dlq_copy),
	    cmocka_unit_test(test_reader_never_commits_and_sees_partition_ends),
	    cmocka_unit_test(test_refused_entry_names_its_origin),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
