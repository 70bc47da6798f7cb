/*
 * state_topic.c - the state mirror's reading of the state topic: a partition's restore (every
 * record from the low watermark to the high one, waiting out broker outages) and the fetch of
 * one recorded result for a replay, with a read-ahead cache of the done records passed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cptime.h"
#include "kafka.h"
#include "log.h"
#include "state_int.h"

/* ---- reading the topic ---- */

void state_set_progress(struct state *st, state_progress_fn *fn, void *arg)
{
	st->on_progress = fn;
	st->progress_arg = arg;
}

static void progress(struct state *st, bool advanced)
{
	if (st->on_progress)
		st->on_progress(advanced, st->progress_arg);
}

static bool assign_at(struct state *st, int32_t partition, int64_t offset, char *err, size_t errcap)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
	if (!list) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	rd_kafka_topic_partition_list_add(list, st->topic, partition)->offset = offset;
	rd_kafka_resp_err_t e = rd_kafka_assign(st->reader, list);
	rd_kafka_topic_partition_list_destroy(list);
	if (e) {
		snprintf(err, errcap, "state topic %s [%d]: %s", st->topic, (int)partition,
		         rd_kafka_err2str(e));
		return false;
	}
	return true;
}

static void unassign(struct state *st)
{
	rd_kafka_assign(st->reader, NULL);
}

/* Consumes up to `until` (exclusive), applying every record to the mirror. */
static bool read_range(struct state *st, int32_t partition, int64_t until, int64_t timeout_ms,
                       size_t *records, char *err, size_t errcap)
{
	int64_t deadline = cptime_mono_ms() + timeout_ms;
	int64_t next = -1;
	while (next < until) {
		if (cptime_mono_ms() > deadline) {
			snprintf(err, errcap,
			         "state topic %s [%d]: timed out at offset %lld of %lld", st->topic,
			         (int)partition, (long long)next, (long long)until);
			return false;
		}
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(st->reader, 200);
		progress(st, msg && !msg->err);
		if (!msg)
			continue;
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			/* The end as the broker sees it now: only the high watermark we were
			 * asked to reach finishes the read. */
			next = msg->offset > next ? msg->offset : next;
			rd_kafka_message_destroy(msg);
			continue;
		}
		if (msg->err) {
			log_warning("state topic: %s", rd_kafka_message_errstr(msg));
			rd_kafka_message_destroy(msg);
			continue;
		}
		next = msg->offset + 1;
		bool applied = state_apply(st, msg);
		rd_kafka_message_destroy(msg);
		if (!applied) {
			snprintf(err, errcap, "out of memory restoring state");
			return false;
		}
		(*records)++;
	}
	return true;
}

/* The partition's offset range; on error, err says which and why. */
static rd_kafka_resp_err_t watermarks(struct state *st, int32_t partition, int64_t *low,
                                      int64_t *high, int timeout_ms, char *err, size_t errcap)
{
	rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(st->reader, st->topic, partition,
	                                                         low, high, timeout_ms);
	if (e)
		snprintf(err, errcap, "state topic %s [%d]: %s", st->topic, (int)partition,
		         rd_kafka_err2str(e));
	return e;
}

/* The cached leader of a partition can outlive a failover: ask the cluster again. */
static void refresh_metadata(struct state *st)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(st->reader, st->topic, NULL);
	if (!rkt)
		return;
	if (rd_kafka_metadata(st->reader, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
}

/*
 * A broker that is down or a leader that moves is waited for, up to RESTORE_TIMEOUT_MS:
 * processing a partition without its state is not an option.
 */
static bool wait_for_watermarks(struct state *st, int32_t partition, int64_t *low, int64_t *high,
                                char *err, size_t errcap)
{
	int64_t deadline = cptime_mono_ms() + RESTORE_TIMEOUT_MS;
	bool logged = false;
	rd_kafka_resp_err_t e;
	while ((e = watermarks(st, partition, low, high, 5 * 1000, err, errcap)) != 0) {
		progress(st, false);
		if (e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
		    e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
			/* A configuration error, not an outage: say what is needed. */
			snprintf(err, errcap,
			         "state topic %s has no partition %d: it needs at least as many "
			         "partitions as the input topic",
			         st->topic, (int)partition);
			return false;
		}
		if (cptime_mono_ms() > deadline)
			return false;
		if (!logged)
			log_warning("%s; waiting for the broker", err);
		logged = true;
		refresh_metadata(st);
		struct timespec pause = {.tv_nsec = 500 * 1000 * 1000};
		nanosleep(&pause, NULL);
	}
	progress(st, true);
	return true;
}

bool state_restore(struct state *st, int32_t partition, int64_t retention_ms,
                   state_expired_fn *on_expired, void *arg, size_t *records, char *err,
                   size_t errcap)
{
	int64_t low = 0, high = 0;
	*records = 0;
	if (!wait_for_watermarks(st, partition, &low, &high, err, errcap))
		return false;
	if (high <= low)
		return true;
	log_info("state topic %s [%d]: restoring offsets %lld..%lld", st->topic, (int)partition,
	         (long long)low, (long long)high - 1);
	if (!assign_at(st, partition, low, err, errcap))
		return false;
	st->expire_before_ms = cptime_wall_ms() - retention_ms;
	st->on_expired = on_expired;
	st->expired_arg = arg;
	st->old_ids_len = 0;
	bool ok = read_range(st, partition, high, RESTORE_TIMEOUT_MS, records, err, errcap);
	/* After a partial read a newer record may not have been seen: report nothing. */
	if (ok)
		state_expire_old(st, partition);
	st->on_expired = NULL;
	free(st->old_ids);
	st->old_ids = NULL;
	st->old_ids_len = st->old_ids_cap = 0;
	/* Tombstones and expiry left dead slots in the runs: their memory goes now. */
	state_runs_drop_dead(st);
	unassign(st);
	return ok;
}

enum cache_answer {
	CACHE_MISS,
	CACHE_TAKEN,
	CACHE_OTHER_REQUEST, /* the record at that offset is not the request's */
};

/* Hands over a cached result (the slot is emptied: a replay reads its record once). */
static enum cache_answer cache_take(struct state *st, int32_t partition, int64_t offset,
                                    const uint8_t key[KEY_BYTES], char **value, size_t *len)
{
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		struct cached_result *c = &st->cache[i];
		if (!c->value || c->partition != partition || c->offset != offset)
			continue;
		if (memcmp(c->key, key, KEY_BYTES) != 0)
			return CACHE_OTHER_REQUEST;
		*value = c->value;
		*len = c->len;
		st->cache_bytes -= c->len;
		c->value = NULL;
		c->len = 0;
		return CACHE_TAKEN;
	}
	return CACHE_MISS;
}

/* Keeps a done record passed while reading ahead; the oldest slot makes room. */
static void cache_put(struct state *st, const rd_kafka_message_t *msg)
{
	char id[ID_MAX + 1];
	uint8_t key[KEY_BYTES];
	if (!msg->payload || msg->len > CACHE_RECORD_MAX ||
	    st->cache_bytes + msg->len > CACHE_BYTES || staterec_kind(msg) != STATE_DONE ||
	    !state_record_id(msg, id) || !state_key_of(id, key))
		return;
	struct cached_result *c = &st->cache[st->cache_next];
	st->cache_next = (st->cache_next + 1) % CACHE_SLOTS;
	if (c->value)
		state_cache_clear(c, &st->cache_bytes);
	c->value = malloc(msg->len + 1);
	if (!c->value)
		return;
	memcpy(c->value, msg->payload, msg->len);
	c->value[msg->len] = '\0';
	c->len = msg->len;
	c->partition = msg->partition;
	c->offset = msg->offset;
	memcpy(c->key, key, KEY_BYTES);
	st->cache_bytes += msg->len;
}

static bool copy_value(const rd_kafka_message_t *msg, char **value, size_t *len)
{
	*value = malloc(msg->len + 1);
	if (!*value)
		return false;
	memcpy(*value, msg->payload, msg->len);
	(*value)[msg->len] = '\0';
	*len = msg->len;
	return true;
}

static void collision(const struct state *st, int32_t partition, int64_t offset, char *err,
                      size_t errcap)
{
	snprintf(err, errcap,
	         "fingerprint collision: state record %s [%d] @%lld is another request's",
	         st->topic, (int)partition, (long long)offset);
}

/* The wanted record, if it is the request's (its key is the id that was asked for). */
static bool take_record(const struct state *st, const rd_kafka_message_t *msg,
                        const uint8_t want[KEY_BYTES], char **value, size_t *len, char *err,
                        size_t errcap)
{
	char id[ID_MAX + 1];
	uint8_t key[KEY_BYTES];
	if (!state_record_id(msg, id) || !state_key_of(id, key) ||
	    memcmp(key, want, KEY_BYTES) != 0) {
		collision(st, msg->partition, msg->offset, err, errcap);
		return false;
	}
	if (!copy_value(msg, value, len)) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	return true;
}

/* Reads from `offset` (the record wanted) up to `until`, caching the done records after it. */
static bool read_ahead(struct state *st, int32_t partition, int64_t offset, int64_t until,
                       const uint8_t want[KEY_BYTES], char **value, size_t *len, char *err,
                       size_t errcap)
{
	int64_t deadline = cptime_mono_ms() + FETCH_TIMEOUT_MS;
	int64_t next = offset;
	bool found = false;
	while (next < until && cptime_mono_ms() < deadline) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(st->reader, 100);
		progress(st, msg && !msg->err);
		if (!msg)
			continue;
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			rd_kafka_message_destroy(msg);
			break;
		}
		if (!msg->err) {
			next = msg->offset + 1;
			if (msg->offset == offset && !found) {
				found = take_record(st, msg, want, value, len, err, errcap);
				if (!found) {
					rd_kafka_message_destroy(msg);
					return false;
				}
			} else if (msg->offset > offset) {
				cache_put(st, msg);
			}
		}
		rd_kafka_message_destroy(msg);
	}
	if (!found)
		snprintf(err, errcap, "state record %s [%d] @%lld not found", st->topic,
		         (int)partition, (long long)offset);
	return found;
}

bool state_fetch(struct state *st, const char *id, int32_t partition, int64_t offset, char **value,
                 size_t *len, char *err, size_t errcap)
{
	uint8_t want[KEY_BYTES];
	int64_t low = 0, high = 0;
	if (!state_key_of_id(st, id, want)) {
		snprintf(err, errcap, "cannot compute the key of request %s", id);
		return false;
	}
	enum cache_answer cached = cache_take(st, partition, offset, want, value, len);
	if (cached == CACHE_TAKEN)
		return true;
	if (cached == CACHE_OTHER_REQUEST) {
		collision(st, partition, offset, err, errcap);
		return false;
	}
	bool known = watermarks(st, partition, &low, &high, FETCH_TIMEOUT_MS, err, errcap) == 0;
	progress(st, known);
	if (!known)
		return false;
	/* Otherwise the read would wait for a record that cannot come. */
	if (offset < low || offset >= high) {
		snprintf(err, errcap, "state record %s [%d] @%lld outside %lld..%lld", st->topic,
		         (int)partition, (long long)offset, (long long)low, (long long)high - 1);
		return false;
	}
	if (!assign_at(st, partition, offset, err, errcap))
		return false;
	int64_t until = offset + 1 + FETCH_AHEAD < high ? offset + 1 + FETCH_AHEAD : high;
	bool ok = read_ahead(st, partition, offset, until, want, value, len, err, errcap);
	unassign(st);
	return ok;
}
