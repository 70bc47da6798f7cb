/*
 * kafka.h - librdkafka handles configured from chatprovd's configuration.
 *
 * Our defaults come first, then every [librdkafka] entry verbatim, then the few settings
 * that the delivery guarantees depend on (they cannot be overridden; a conflicting entry
 * is reported once at start).
 */
#ifndef CHATPROV_KAFKA_H
#define CHATPROV_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "cfg.h"
#include "common.h"

typedef void(kafka_rebalance_cb)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                 rd_kafka_topic_partition_list_t *partitions, void *opaque);
typedef void(kafka_delivery_cb)(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque);

/* A consumer in cfg's group, cooperative-sticky, offsets stored by us only. */
rd_kafka_t *kafka_consumer_new(const struct cfg *cfg, kafka_rebalance_cb *rebalance, void *opaque,
                               char *err, size_t errcap) CP_MUSTCHECK;

/* An idempotent producer (acks=all) whose delivery reports go to on_delivery. */
rd_kafka_t *kafka_producer_new(const struct cfg *cfg, kafka_delivery_cb *on_delivery, void *opaque,
                               char *err, size_t errcap) CP_MUSTCHECK;

/*
 * A consumer outside any group for reading a topic by assign(): the state topic's restore
 * and fetches. Partition EOF events are on, so a reader knows when it has seen everything.
 */
rd_kafka_t *kafka_reader_new(const struct cfg *cfg, char *err, size_t errcap) CP_MUSTCHECK;

/* Reads [kafka] limits_topic by assign() (blockshare): no group joined, nothing committed. */
rd_kafka_t *kafka_limits_reader_new(const struct cfg *cfg, char *err, size_t errcap) CP_MUSTCHECK;

/*
 * chatprovctl's reader: a consumer that carries the daemon's group.id, so that it can ask for
 * the group's committed offsets (rd_kafka_committed), but reads by assign() only: it never
 * joins the group, commits nothing and stores no offset. Partition EOF events are on.
 */
rd_kafka_t *kafka_inspector_new(const struct cfg *cfg, char *err, size_t errcap) CP_MUSTCHECK;

/*
 * Asks the cluster for the topic's metadata, so that the producer knows its leaders (and is
 * connected) before the first record: otherwise the first intents wait for that lookup
 * while the consumer's first fetches keep the broker busy. Failures are only logged.
 */
void kafka_warm_up(rd_kafka_t *producer, const char *topic, int timeout_ms);

/* The topic's partition count from the cluster's metadata; -1 when it cannot be had. */
int kafka_partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms);

/*
 * The last value of header name as a NUL-terminated string in out (headers are bytes without
 * a terminator). False when it is absent, null, holds a NUL byte, or does not fit in cap - 1
 * bytes: a value cut short could pass for another.
 */
bool kafka_header_text(const rd_kafka_headers_t *h, const char *name, char *out,
                       size_t cap) CP_MUSTCHECK;
/* Whether header name is present (its last value may be null or empty). */
bool kafka_header_has(const rd_kafka_headers_t *h, const char *name) CP_MUSTCHECK;
/* Whether the last value of header name is exactly value. */
bool kafka_header_is(const rd_kafka_headers_t *h, const char *name, const char *value) CP_MUSTCHECK;

/* Subscribes the consumer to one topic. */
bool kafka_subscribe(rd_kafka_t *consumer, const char *topic, char *err,
                     size_t errcap) CP_MUSTCHECK;

#endif
