/*
 * ctl.h - chatprovctl, the operator's command: its subcommands and the Kafka reading they
 * share. Each subcommand returns the process's exit code.
 */
#ifndef CHATPROV_CTL_H
#define CHATPROV_CTL_H

#include <librdkafka/rdkafka.h>

#include "cfg.h"
#include "common.h"

enum ctl_exit { CTL_OK = 0, CTL_FAILED = 1, CTL_USAGE = 2 };

/* Each command parses its options (argv[0] is its name), then loads config_path. */
int ctl_plan(const char *config_path, int argc, char **argv);
int ctl_status(const char *config_path, int argc, char **argv);
int ctl_redrive(const char *config_path, int argc, char **argv);

/* Loads the configuration; prints why not. The caller frees it with cfg_free. */
struct cfg *ctl_load_config(const char *path);

/* A whole non-negative number in [min, max]; false on anything else. */
bool ctl_parse_count(const char *text, long long min, long long max, long long *out) CP_MUSTCHECK;

/* ---- ctl_kafka.c: reading a topic's current contents without joining a group ---- */

/* Where a read of one partition starts and stops ([start, end)). */
struct ctl_range {
	int32_t partition;
	int64_t start, end;
};

/* Called for each message read; false stops the read. */
typedef bool(ctl_message_fn)(const rd_kafka_message_t *msg, void *arg);

/*
 * The ranges of every partition of topic: from the group's committed offset (from_committed;
 * the low watermark when the group has none) or from the low watermark, to the high
 * watermark now. *ranges is malloc'd. False with err filled.
 */
bool ctl_topic_ranges(rd_kafka_t *rk, const char *topic, bool from_committed,
                      struct ctl_range **ranges, size_t *n, char *err, size_t errcap) CP_MUSTCHECK;

/* Reads every message of the ranges, in partition order; no offset is stored or committed. */
bool ctl_read_ranges(rd_kafka_t *rk, const char *topic, const struct ctl_range *ranges, size_t n,
                     ctl_message_fn *fn, void *arg, char *err, size_t errcap) CP_MUSTCHECK;

/* Messages in the ranges (the end minus the start, summed). */
int64_t ctl_ranges_total(const struct ctl_range *ranges, size_t n);

#endif
