/*
 * kmock.h - kafka-mock: librdkafka's mock cluster on loopback, driven by line commands.
 *
 * main.c owns the process (options, signals, stdin/stdout); commands.c turns one command
 * line into one call of the rdkafka_mock.h API and one reply line.
 */
#ifndef CHATPROV_KMOCK_H
#define CHATPROV_KMOCK_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "common.h"

/* Longest command line accepted on stdin and longest reply written. */
#define KMOCK_LINE_MAX 4096
/* Kafka's own limit for a topic name. */
#define KMOCK_TOPIC_MAX      249
#define KMOCK_PARTITIONS_MAX 10000
#define KMOCK_BROKERS_MAX    32
/* Errors one push-errors command may queue. */
#define KMOCK_PUSH_MAX 64

struct kmock {
	rd_kafka_t *rk; /* producer-type handle that owns the cluster */
	rd_kafka_mock_cluster_t *mcluster;
	int broker_cnt; /* brokers have ids 1..broker_cnt */
};

enum kmock_verdict { KMOCK_CONTINUE, KMOCK_QUIT };

/* Runs one command line (modified in place). Always fills reply with "OK ..." or
 * "ERR <reason>", without a newline. */
enum kmock_verdict kmock_command(struct kmock *km, char *line, char *reply, size_t reply_size);

/* Parses "NAME:PARTITIONS" or "NAME:PARTITIONS:compact" (the mock keeps every record
 * anyway, so compaction is accepted and has no effect). */
bool kmock_parse_topic_spec(const char *spec, char *name, size_t name_size, int *partitions,
                            char *err, size_t err_size) CP_MUSTCHECK;
bool kmock_create_topic(struct kmock *km, const char *name, int partitions, char *err,
                        size_t err_size) CP_MUSTCHECK;
/* Whole-string decimal integer in [min, max]. */
bool kmock_parse_long(const char *s, long min, long max, long *out) CP_MUSTCHECK;

#endif
