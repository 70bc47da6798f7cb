/*
 * blockshare.c - Graph's 429 Retry-After shared through [kafka] limits_topic (blockshare.h
 * says what and why). Writes come from the workers (through the scheduler's throttle
 * observer), reads run on the Kafka thread; the keys of the tenant profiles are read by both
 * and replaced on a reload, under one mutex.
 */
#include "blockshare.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cptime.h"
#include "kafka.h"
#include "log.h"
#include "pipeline_metrics.h"

/* "<client_id>/<tenant_id>": GUIDs in practice, bounded by the config's value size. */
#define KEY_MAX          (2 * CFG_VALUE_MAX + 2)
#define INSTANCE_MAX     33
#define METADATA_WAIT_MS (5 * 1000)
/* Records applied per turn of the Kafka thread, at most: the rest wait for the next turn. */
#define POLL_BATCH 256

struct blockshare {
	rd_kafka_t *producer;  /* the pipeline's */
	rd_kafka_topic_t *out; /* limits_topic on producer, its leaders known before a 429 */
	rd_kafka_t *reader;    /* limits_topic, every partition, from its end */
	struct pacer *pacer;
	char topic[CFG_NAME_MAX * 4];
	char instance[INSTANCE_MAX];

	pthread_mutex_t lock; /* keys, n_keys, max_block_ms */
	char (*keys)[KEY_MAX];
	size_t n_keys;
	int64_t max_block_ms; /* [retry] max_elapsed_s: a hostile record holds no longer */

	struct pipeline_metrics *metrics;
};

static void key_of(const struct cfg_tenant *t, char *out, size_t cap)
{
	snprintf(out, cap, "%s/%s", t->client_id, t->tenant_id);
}

static void take_config(struct blockshare *b, const struct cfg *cfg)
{
	pthread_mutex_lock(&b->lock);
	for (size_t i = 0; i < b->n_keys && i < cfg->n_tenants; i++)
		key_of(&cfg->tenants[i], b->keys[i], KEY_MAX);
	b->max_block_ms = (int64_t)(cfg->retry.max_elapsed_s * 1000);
	pthread_mutex_unlock(&b->lock);
}

/* 16 random bytes as hex: tells this process's records from the others'. */
static bool make_instance_id(char *out, size_t cap)
{
	unsigned char raw[16];
	if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
		return false;
	for (size_t i = 0; i < sizeof raw && 2 * i + 2 < cap; i++)
		snprintf(out + 2 * i, cap - 2 * i, "%02x", raw[i]);
	return true;
}

/*
 * Where a partition ends now. Assigning that offset, not OFFSET_END, means the reader's
 * first fetch needs no offset lookup of its own: a block written just after start-up
 * (the first burst's 429) is read, not skipped or read late.
 */
static int64_t end_of(struct blockshare *b, int partition, int64_t deadline_ms)
{
	int64_t low = 0, high = 0, left = deadline_ms - cptime_mono_ms();
	if (left <= 0 ||
	    rd_kafka_query_watermark_offsets(b->reader, b->topic, partition, &low, &high,
	                                     (int)left) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return RD_KAFKA_OFFSET_END;
	return high;
}

/* Every partition of the topic, from its end: only blocks written from now on matter. */
static bool assign_all(struct blockshare *b, int partitions, char *err, size_t errcap)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(partitions);
	if (!list) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	/* All queries share one bound: a slow broker delays the start by METADATA_WAIT_MS. */
	int64_t deadline = cptime_mono_ms() + METADATA_WAIT_MS;
	for (int i = 0; i < partitions; i++)
		rd_kafka_topic_partition_list_add(list, b->topic, i)->offset =
		    end_of(b, i, deadline);
	rd_kafka_resp_err_t rc = rd_kafka_assign(b->reader, list);
	rd_kafka_topic_partition_list_destroy(list);
	if (rc) {
		snprintf(err, errcap, "[kafka] limits_topic %s: %s", b->topic,
		         rd_kafka_err2str(rc));
		return false;
	}
	return true;
}

/* False on an error; true with *partitions 0 when the topic does not exist. */
static bool open_reader(struct blockshare *b, const struct cfg *cfg, int *partitions, char *err,
                        size_t errcap)
{
	b->reader = kafka_limits_reader_new(cfg, err, errcap);
	if (!b->reader)
		return false;
	*partitions = kafka_partition_count(b->reader, b->topic, METADATA_WAIT_MS);
	if (*partitions <= 0) {
		*partitions = 0;
		return true;
	}
	return assign_all(b, *partitions, err, errcap);
}

/*
 * The producer learns the topic's leaders now: the first record to an unknown topic waits
 * for a metadata refresh (measured: 180-620 ms on the first 429s), while the other instances
 * keep sending into the window.
 */
static bool open_writer(struct blockshare *b, char *err, size_t errcap)
{
	const struct rd_kafka_metadata *md = NULL;
	b->out = rd_kafka_topic_new(b->producer, b->topic, NULL);
	if (!b->out) {
		snprintf(err, errcap, "[kafka] limits_topic %s: %s", b->topic,
		         rd_kafka_err2str(rd_kafka_last_error()));
		return false;
	}
	rd_kafka_resp_err_t rc = rd_kafka_metadata(b->producer, 0, b->out, &md, METADATA_WAIT_MS);
	if (rc)
		log_warning("[kafka] limits_topic %s: metadata: %s", b->topic,
		            rd_kafka_err2str(rc));
	if (md)
		rd_kafka_metadata_destroy(md);
	return true;
}

bool blockshare_new(const struct cfg *cfg, rd_kafka_t *producer, struct pacer *pacer,
                    struct pipeline_metrics *metrics, struct blockshare **out, char *err,
                    size_t errcap)
{
	*out = NULL;
	if (!cfg->kafka.limits_topic[0])
		return true;
	struct blockshare *b = calloc(1, sizeof *b);
	if (!b || pthread_mutex_init(&b->lock, NULL) != 0) {
		free(b);
		snprintf(err, errcap, "out of memory");
		return false;
	}
	b->producer = producer;
	b->pacer = pacer;
	b->metrics = metrics;
	b->n_keys = cfg->n_tenants;
	snprintf(b->topic, sizeof b->topic, "%s", cfg->kafka.limits_topic);
	b->keys = calloc(b->n_keys ? b->n_keys : 1, sizeof *b->keys);
	int partitions = 0;
	if (!b->keys || !make_instance_id(b->instance, sizeof b->instance)) {
		snprintf(err, errcap, "blockshare: %s",
		         b->keys ? strerror(errno) : "out of memory");
		goto fail;
	}
	take_config(b, cfg);
	if (!open_reader(b, cfg, &partitions, err, errcap))
		goto fail;
	if (partitions > 0 && !open_writer(b, err, errcap))
		goto fail;
	if (partitions == 0) {
		log_warning(
		    "[kafka] limits_topic %s does not exist: each instance honours only the "
		    "Retry-After it was given itself",
		    b->topic);
		blockshare_free(b);
		return true;
	}
	log_info("Retry-After shared through %s (%d partitions), instance %s", b->topic, partitions,
	         b->instance);
	*out = b;
	return true;
fail:
	blockshare_free(b);
	return false;
}

void blockshare_publish(size_t tenant, int64_t until_mono_ms, void *arg)
{
	struct blockshare *b = arg;
	char key[KEY_MAX], value[24];
	pthread_mutex_lock(&b->lock);
	bool known = tenant < b->n_keys;
	if (known)
		memcpy(key, b->keys[tenant], sizeof key);
	pthread_mutex_unlock(&b->lock);
	if (!known)
		return;
	int64_t until_wall = cptime_wall_ms() + (until_mono_ms - cptime_mono_ms());
	int len = snprintf(value, sizeof value, "%" PRId64, until_wall);
	rd_kafka_headers_t *h = rd_kafka_headers_new(1);
	if (!h)
		return;
	rd_kafka_header_add(h, BLOCKSHARE_INSTANCE_HEADER, -1, b->instance, -1);
	/* No opaque: its delivery report settles no job. */
	rd_kafka_resp_err_t rc =
	    rd_kafka_producev(b->producer, RD_KAFKA_V_RKT(b->out), RD_KAFKA_V_KEY(key, strlen(key)),
	                      RD_KAFKA_V_VALUE(value, (size_t)len), RD_KAFKA_V_HEADERS(h),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	if (rc) {
		rd_kafka_headers_destroy(h);
		log_warning("cannot share a Retry-After through %s: %s", b->topic,
		            rd_kafka_err2str(rc));
		return;
	}
	pipeline_metrics_block_shared(b->metrics, true);
}

/* The tenant profile a record's key names, or -1. */
static int tenant_of(struct blockshare *b, const rd_kafka_message_t *m)
{
	int found = -1;
	pthread_mutex_lock(&b->lock);
	for (size_t i = 0; i < b->n_keys && found < 0; i++)
		if (m->key_len == strlen(b->keys[i]) && memcmp(m->key, b->keys[i], m->key_len) == 0)
			found = (int)i;
	pthread_mutex_unlock(&b->lock);
	return found;
}

/* The block's end on this host's monotonic clock, bounded; false for a malformed record. */
static bool until_of(struct blockshare *b, const rd_kafka_message_t *m, int64_t now, int64_t *until)
{
	char text[24], *end = NULL;
	if (!m->payload || m->len == 0 || m->len >= sizeof text)
		return false;
	memcpy(text, m->payload, m->len);
	text[m->len] = '\0';
	errno = 0;
	long long wall = strtoll(text, &end, 10);
	if (errno || *end)
		return false;
	int64_t wait = (int64_t)wall - cptime_wall_ms();
	pthread_mutex_lock(&b->lock);
	if (b->max_block_ms > 0 && wait > b->max_block_ms)
		wait = b->max_block_ms;
	pthread_mutex_unlock(&b->lock);
	*until = now + wait;
	return true;
}

static void apply(struct blockshare *b, const rd_kafka_message_t *m)
{
	rd_kafka_headers_t *h = NULL;
	char writer[INSTANCE_MAX];
	if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
	    kafka_header_text(h, BLOCKSHARE_INSTANCE_HEADER, writer, sizeof writer) &&
	    strcmp(writer, b->instance) == 0)
		return; /* ours: the scheduler holds it already */
	int tenant = tenant_of(b, m);
	int64_t now = cptime_mono_ms(), until;
	if (tenant < 0 || !until_of(b, m, now, &until) || until <= now)
		return; /* another app's or tenant's limit, or a block already over */
	pacer_block(b->pacer, (size_t)tenant, until, now);
	pipeline_metrics_block_shared(b->metrics, false);
	log_info("tenant profile %d held for %lld ms: another instance was throttled (429)", tenant,
	         (long long)(until - now));
}

void blockshare_poll(struct blockshare *b)
{
	if (!b)
		return;
	for (int i = 0; i < POLL_BATCH; i++) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(b->reader, 0);
		if (!m)
			return;
		if (!m->err)
			apply(b, m);
		else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			log_warning("[kafka] limits_topic %s: %s", b->topic,
			            rd_kafka_message_errstr(m));
		rd_kafka_message_destroy(m);
	}
}

void blockshare_wake_on(struct blockshare *b, int wake_fd)
{
	static const uint64_t one = 1; /* an eventfd takes 8-byte increments */
	if (!b)
		return;
	rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(b->reader);
	if (!q)
		return;
	rd_kafka_queue_io_event_enable(q, wake_fd, &one, sizeof one);
	rd_kafka_queue_destroy(q);
}

void blockshare_reload(struct blockshare *b, const struct cfg *new_cfg)
{
	if (b)
		take_config(b, new_cfg);
}

void blockshare_free(struct blockshare *b)
{
	if (!b)
		return;
	if (b->reader) {
		rd_kafka_consumer_close(b->reader);
		rd_kafka_destroy(b->reader);
	}
	if (b->out)
		rd_kafka_topic_destroy(b->out);
	free(b->keys);
	pthread_mutex_destroy(&b->lock);
	free(b);
}
