/*
 * mock_kafka.h - librdkafka's in-process mock cluster for unit tests: real messages (with
 * headers, timestamps and offsets) without a broker process.
 */
#ifndef CHATPROV_TEST_MOCK_KAFKA_H
#define CHATPROV_TEST_MOCK_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* A client of the cluster at brokers (NULL: a handle that only owns a mock cluster). */
static inline rd_kafka_t *
mock_client(rd_kafka_type_t type, const char *brokers, const char *group_id,
            void (*on_delivery)(rd_kafka_t *, const rd_kafka_message_t *, void *))
{
	char errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	assert_non_null(conf);
	assert_int_equal(rd_kafka_conf_set(conf, "linger.ms", "0", errstr, sizeof errstr),
	                 RD_KAFKA_CONF_OK);
	assert_int_equal(rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr),
	                 RD_KAFKA_CONF_OK);
	if (brokers)
		assert_int_equal(
		    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof errstr),
		    RD_KAFKA_CONF_OK);
	if (group_id)
		assert_int_equal(
		    rd_kafka_conf_set(conf, "group.id", group_id, errstr, sizeof errstr),
		    RD_KAFKA_CONF_OK);
	if (on_delivery)
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, sizeof errstr);
	if (!rk)
		fail_msg("rd_kafka_new: %s", errstr);
	return rk;
}

/* A one-broker cluster owned by *owner (destroy the cluster, then the owner). */
static inline rd_kafka_mock_cluster_t *mock_cluster_start(rd_kafka_t **owner)
{
	*owner = mock_client(RD_KAFKA_PRODUCER, NULL, NULL, NULL);
	rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(*owner, 1);
	assert_non_null(mc);
	return mc;
}

/*
 * Creates topic and has producer learn of it now: otherwise its first message waits for the
 * next one-second topic scan.
 */
static inline void mock_topic(rd_kafka_mock_cluster_t *mc, rd_kafka_t *producer, const char *topic,
                              int partitions)
{
	assert_int_equal(rd_kafka_mock_topic_create(mc, topic, partitions, 1),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(producer, topic, NULL);
	assert_non_null(rkt);
	const struct rd_kafka_metadata *md = NULL;
	assert_int_equal(rd_kafka_metadata(producer, 0, rkt, &md, 10 * 1000),
	                 RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
}

#endif
