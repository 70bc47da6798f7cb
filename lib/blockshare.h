/*
 * blockshare.h - Graph's 429 Retry-After shared by the instances of a group through
 * [kafka] limits_topic. Graph limits an app per tenant, whatever the number of instances:
 * when one is throttled, the requests the others send inside the window draw 429s of their
 * own. An instance that gets a 429 writes "this tenant is blocked until T"; every instance
 * reads the topic and holds the tenant until T (pacer_block).
 *
 * Record: key "<client_id>/<tenant_id>" (the app and the tenant a limit belongs to), value
 * the end of the block as Unix milliseconds in decimal, header chatprov-instance naming the
 * writer (an instance skips its own). The time is the wall clock's, so the hosts' clocks
 * must agree (NTP): a block read after its end changes nothing.
 */
#ifndef CHATPROV_BLOCKSHARE_H
#define CHATPROV_BLOCKSHARE_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "common.h"
#include "pacer.h"

#define BLOCKSHARE_INSTANCE_HEADER "chatprov-instance"

struct blockshare;
struct pipeline_metrics;

/*
 * Reads limits_topic from its end (every partition) and writes to it through producer;
 * counts in metrics (chatprov_retry_after_shared_total; may be NULL).
 * *out is NULL, and the call succeeds, when [kafka] limits_topic is empty or the topic
 * does not exist (a warning says so): each instance then honours only its own 429s.
 */
bool blockshare_new(const struct cfg *cfg, rd_kafka_t *producer, struct pacer *pacer,
                    struct pipeline_metrics *metrics, struct blockshare **out, char *err,
                    size_t errcap) CP_MUSTCHECK;

/* A pacer_throttle_fn (any thread): tells the other instances of tenant's block. */
void blockshare_publish(size_t tenant, int64_t until_mono_ms, void *arg);

/*
 * librdkafka writes an 8-byte increment to the eventfd wake_fd when a record arrives, so the
 * Kafka thread's wait ends at once instead of at its next turn. NULL-safe.
 */
void blockshare_wake_on(struct blockshare *b, int wake_fd);

/* The Kafka thread, each turn: applies the blocks the other instances wrote. NULL-safe. */
void blockshare_poll(struct blockshare *b);

/* SIGHUP: tenant and client ids and the longest block taken from new_cfg. NULL-safe. */
void blockshare_reload(struct blockshare *b, const struct cfg *new_cfg);

void blockshare_free(struct blockshare *b);

#endif
