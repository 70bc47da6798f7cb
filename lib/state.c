/* state.c - in-memory mirror of the state topic, restored per partition. */
#include "state.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cptime.h"
#include "graphreq.h"
#include "kafka.h"
#include "log.h"

#define KEY_BYTES          16
#define ID_MAX             200
#define RESTORE_TIMEOUT_MS (120 * 1000)
#define FETCH_TIMEOUT_MS   (10 * 1000)
#define INITIAL_BUCKETS    1024
/*
 * Replays come in bursts (after a crash, every request past the last commit comes again,
 * in input order, and their done records are neighbours in the state partition): one
 * fetch reads ahead and keeps the done records it passes, within these bounds.
 */
#define FETCH_AHEAD      1024
#define CACHE_SLOTS      4096
#define CACHE_BYTES      (16u << 20)
#define CACHE_RECORD_MAX (64u << 10)

/* Keyed by the 128-bit UUIDv5 of the id: fixed size, no copy of the id string. */
struct entry {
	struct entry *next;
	uint8_t key[KEY_BYTES];
	int32_t partition;
	uint8_t kind;
	bool active;
	bool done_succeeded;
	int64_t at_wall_ms;
	int64_t offset;
	char *op_url; /* STATE_OPERATION only */
	int64_t op_started_wall_ms;
};

struct cached_result {
	int32_t partition;
	int64_t offset;
	char *value; /* NULL: free slot */
	size_t len;
};

struct state {
	rd_kafka_t *reader;
	struct cached_result cache[CACHE_SLOTS];
	size_t cache_next, cache_bytes;
	/*
	 * During a restore: requests whose last record is older than this are expired. Which
	 * record is the last is known only at the end, so the ids of old records are collected
	 * (NUL-separated) and checked then.
	 */
	int64_t expire_before_ms;
	state_expired_fn *on_expired;
	void *expired_arg;
	char *old_ids;
	size_t old_ids_len, old_ids_cap;
	char topic[CFG_NAME_MAX * 4];
	struct entry **buckets;
	size_t n_buckets, count;
};

const char *state_kind_name(enum state_kind kind)
{
	switch (kind) {
	case STATE_INTENT:
		return "intent";
	case STATE_OPERATION:
		return "operation";
	case STATE_DONE:
		return "done";
	case STATE_NONE:
		break;
	}
	return "none";
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool key_of(const char *id, uint8_t key[KEY_BYTES])
{
	char uuid[37];
	if (!graphreq_client_request_id(id, uuid))
		return false;
	size_t k = 0;
	for (size_t i = 0; uuid[i] && k < 2 * KEY_BYTES; i++) {
		int v = hexval(uuid[i]);
		if (v < 0)
			continue;
		key[k / 2] = (uint8_t)(k % 2 ? (key[k / 2] | v) : v << 4);
		k++;
	}
	return k == 2 * KEY_BYTES;
}

static size_t bucket_of(const struct state *st, const uint8_t key[KEY_BYTES])
{
	uint64_t h;
	memcpy(&h, key, sizeof h);
	return (size_t)(h % st->n_buckets);
}

static struct entry *find(struct state *st, const uint8_t key[KEY_BYTES])
{
	for (struct entry *e = st->buckets[bucket_of(st, key)]; e; e = e->next)
		if (memcmp(e->key, key, KEY_BYTES) == 0)
			return e;
	return NULL;
}

static void entry_free(struct entry *e)
{
	free(e->op_url);
	free(e);
}

/* Doubles the table when it gets crowded; on allocation failure it just stays crowded. */
static void grow(struct state *st)
{
	size_t n = st->n_buckets * 2;
	struct entry **buckets = calloc(n, sizeof *buckets);
	if (!buckets)
		return;
	struct entry **old = st->buckets;
	size_t old_n = st->n_buckets;
	st->buckets = buckets;
	st->n_buckets = n;
	for (size_t i = 0; i < old_n; i++) {
		struct entry *e = old[i];
		while (e) {
			struct entry *next = e->next;
			size_t b = bucket_of(st, e->key);
			e->next = buckets[b];
			buckets[b] = e;
			e = next;
		}
	}
	free(old);
}

static struct entry *find_or_add(struct state *st, const uint8_t key[KEY_BYTES])
{
	struct entry *e = find(st, key);
	if (e)
		return e;
	if (st->count >= st->n_buckets)
		grow(st);
	e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	memcpy(e->key, key, KEY_BYTES);
	size_t b = bucket_of(st, key);
	e->next = st->buckets[b];
	st->buckets[b] = e;
	st->count++;
	return e;
}

static void remove_entry(struct state *st, const uint8_t key[KEY_BYTES])
{
	struct entry **link = &st->buckets[bucket_of(st, key)];
	while (*link) {
		if (memcmp((*link)->key, key, KEY_BYTES) == 0) {
			struct entry *e = *link;
			*link = e->next;
			entry_free(e);
			st->count--;
			return;
		}
		link = &(*link)->next;
	}
}

bool state_new(const struct cfg *cfg, struct state **out, char *err, size_t errcap)
{
	struct state *st = calloc(1, sizeof *st);
	if (!st) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	snprintf(st->topic, sizeof st->topic, "%s", cfg->kafka.state_topic);
	st->n_buckets = INITIAL_BUCKETS;
	st->buckets = calloc(st->n_buckets, sizeof *st->buckets);
	if (!st->buckets) {
		snprintf(err, errcap, "out of memory");
		goto fail;
	}
	st->reader = kafka_reader_new(cfg, err, errcap);
	if (!st->reader)
		goto fail;
	*out = st;
	return true;
fail:
	state_free(st);
	return false;
}

void state_free(struct state *st)
{
	if (!st)
		return;
	if (st->reader) {
		rd_kafka_consumer_close(st->reader);
		rd_kafka_destroy(st->reader);
	}
	for (size_t i = 0; st->buckets && i < st->n_buckets; i++) {
		struct entry *e = st->buckets[i];
		while (e) {
			struct entry *next = e->next;
			entry_free(e);
			e = next;
		}
	}
	for (size_t i = 0; i < CACHE_SLOTS; i++)
		free(st->cache[i].value);
	free(st->buckets);
	free(st->old_ids);
	free(st);
}

/* ---- records ---- */

static bool header_value(const rd_kafka_message_t *msg, const char *name, char *out, size_t cap)
{
	rd_kafka_headers_t *hdrs = NULL;
	const void *val = NULL;
	size_t size = 0;
	if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
	    rd_kafka_header_get_last(hdrs, name, &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
	    !val || size >= cap)
		return false;
	memcpy(out, val, size);
	out[size] = '\0';
	return true;
}

static enum state_kind kind_of(const char *name)
{
	for (enum state_kind k = STATE_INTENT; k <= STATE_DONE; k++)
		if (strcmp(name, state_kind_name(k)) == 0)
			return k;
	return STATE_NONE;
}

static bool apply_operation(struct entry *e, const rd_kafka_message_t *msg)
{
	struct json_tokener *tok = json_tokener_new_ex(4);
	if (!tok)
		return false;
	struct json_object *root = json_tokener_parse_ex(tok, msg->payload, (int)msg->len);
	json_tokener_free(tok);
	struct json_object *loc = NULL, *started = NULL;
	bool ok = root && json_object_object_get_ex(root, "location", &loc) &&
	          json_object_is_type(loc, json_type_string) &&
	          json_object_object_get_ex(root, "startedAt", &started);
	if (ok) {
		char *url = strdup(json_object_get_string(loc));
		ok = url != NULL;
		if (ok) {
			free(e->op_url);
			e->op_url = url;
			e->op_started_wall_ms = json_object_get_int64(started);
		}
	}
	json_object_put(root);
	return ok;
}

/* Notes the id of a record past retention; whether it was the id's last is seen later. */
static bool remember_old(struct state *st, const char *id, size_t len)
{
	if (st->old_ids_cap - st->old_ids_len < len + 1) {
		size_t cap = st->old_ids_cap ? st->old_ids_cap * 2 : 4096;
		char *ids = realloc(st->old_ids, cap);
		if (!ids)
			return false;
		st->old_ids = ids;
		st->old_ids_cap = cap;
	}
	memcpy(st->old_ids + st->old_ids_len, id, len + 1);
	st->old_ids_len += len + 1;
	return true;
}

/* At the end of a restore: forgets and reports the requests whose last record is old. */
static void expire_old(struct state *st, int32_t partition)
{
	uint8_t key[KEY_BYTES];
	for (size_t at = 0; at < st->old_ids_len; at += strlen(st->old_ids + at) + 1) {
		const char *id = st->old_ids + at;
		struct entry *e = key_of(id, key) ? find(st, key) : NULL;
		/* Gone: tombstoned, or already reported for an earlier record of the id. */
		if (!e || e->active || e->partition != partition ||
		    e->at_wall_ms >= st->expire_before_ms)
			continue;
		remove_entry(st, key);
		st->on_expired(id, partition, st->expired_arg);
	}
}

bool state_apply(struct state *st, const rd_kafka_message_t *msg)
{
	char id[ID_MAX + 1], kind_name[16], status[16];
	uint8_t key[KEY_BYTES];
	if (!msg->key || msg->key_len == 0 || msg->key_len > ID_MAX)
		return true; /* not ours: ignore */
	memcpy(id, msg->key, msg->key_len);
	id[msg->key_len] = '\0';
	if (!key_of(id, key))
		return true;
	if (!msg->payload) {
		remove_entry(st, key);
		return true;
	}
	if (!header_value(msg, STATE_HEADER, kind_name, sizeof kind_name))
		return true;
	enum state_kind kind = kind_of(kind_name);
	struct entry *e = kind == STATE_NONE ? NULL : find_or_add(st, key);
	if (!e)
		return kind == STATE_NONE;
	rd_kafka_timestamp_type_t tstype;
	int64_t ts = rd_kafka_message_timestamp(msg, &tstype);
	/* A record past retention is forgotten: it does not hold back a newer one. */
	if (st->on_expired && !e->active && e->at_wall_ms < st->expire_before_ms) {
		e->kind = STATE_NONE;
		free(e->op_url);
		e->op_url = NULL;
	}
	/* A later record never goes back: done stays done, an operation is not an intent. */
	if (kind < e->kind)
		return true;
	e->kind = (uint8_t)kind;
	e->partition = msg->partition;
	e->at_wall_ms = ts > 0 ? ts : cptime_wall_ms();
	e->offset = msg->offset;
	if (kind == STATE_DONE) {
		e->done_succeeded = header_value(msg, "chatprov-status", status, sizeof status) &&
		                    strcmp(status, "succeeded") == 0;
		free(e->op_url);
		e->op_url = NULL;
	} else if (kind == STATE_OPERATION && !apply_operation(e, msg)) {
		log_warning("state: unreadable operation record for %s", id);
		e->kind = STATE_INTENT;
	}
	if (st->on_expired && e->at_wall_ms < st->expire_before_ms)
		return remember_old(st, id, strlen(id));
	return true;
}

/* ---- queries ---- */

void state_get(struct state *st, const char *id, struct state_info *out)
{
	uint8_t key[KEY_BYTES];
	memset(out, 0, sizeof *out);
	struct entry *e = key_of(id, key) ? find(st, key) : NULL;
	if (!e)
		return;
	out->kind = (enum state_kind)e->kind;
	out->partition = e->partition;
	out->at_wall_ms = e->at_wall_ms;
	out->offset = e->offset;
	out->done_succeeded = e->done_succeeded;
	out->active = e->active;
	out->op_started_wall_ms = e->op_started_wall_ms;
	if (e->op_url)
		snprintf(out->op_url, sizeof out->op_url, "%s", e->op_url);
}

bool state_set_active(struct state *st, const char *id, int32_t partition, bool active)
{
	uint8_t key[KEY_BYTES];
	if (!key_of(id, key))
		return false;
	struct entry *e = active ? find_or_add(st, key) : find(st, key);
	if (!e)
		return !active;
	e->active = active;
	e->partition = partition;
	if (!active && e->kind == STATE_NONE)
		remove_entry(st, key);
	return true;
}

static void cache_clear(struct cached_result *c, size_t *bytes)
{
	*bytes -= c->len;
	free(c->value);
	c->value = NULL;
	c->len = 0;
}

void state_drop_partition(struct state *st, int32_t partition)
{
	for (size_t i = 0; i < CACHE_SLOTS; i++)
		if (st->cache[i].value && st->cache[i].partition == partition)
			cache_clear(&st->cache[i], &st->cache_bytes);
	for (size_t i = 0; i < st->n_buckets; i++) {
		struct entry **link = &st->buckets[i];
		while (*link) {
			struct entry *e = *link;
			if (e->partition == partition) {
				*link = e->next;
				entry_free(e);
				st->count--;
			} else {
				link = &e->next;
			}
		}
	}
}

size_t state_count(const struct state *st)
{
	return st->count;
}

/* ---- reading the topic ---- */

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
	if (!assign_at(st, partition, low, err, errcap))
		return false;
	st->expire_before_ms = cptime_wall_ms() - retention_ms;
	st->on_expired = on_expired;
	st->expired_arg = arg;
	st->old_ids_len = 0;
	bool ok = read_range(st, partition, high, RESTORE_TIMEOUT_MS, records, err, errcap);
	/* After a partial read a newer record may not have been seen: report nothing. */
	if (ok)
		expire_old(st, partition);
	st->on_expired = NULL;
	free(st->old_ids);
	st->old_ids = NULL;
	st->old_ids_len = st->old_ids_cap = 0;
	unassign(st);
	return ok;
}

/* Hands over a cached result (the slot is emptied: a replay reads its record once). */
static bool cache_take(struct state *st, int32_t partition, int64_t offset, char **value,
                       size_t *len)
{
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		struct cached_result *c = &st->cache[i];
		if (c->value && c->partition == partition && c->offset == offset) {
			*value = c->value;
			*len = c->len;
			st->cache_bytes -= c->len;
			c->value = NULL;
			c->len = 0;
			return true;
		}
	}
	return false;
}

/* Keeps a done record passed while reading ahead; the oldest slot makes room. */
static void cache_put(struct state *st, const rd_kafka_message_t *msg)
{
	char kind[16];
	if (!msg->payload || msg->len > CACHE_RECORD_MAX ||
	    st->cache_bytes + msg->len > CACHE_BYTES ||
	    !header_value(msg, STATE_HEADER, kind, sizeof kind) || kind_of(kind) != STATE_DONE)
		return;
	struct cached_result *c = &st->cache[st->cache_next];
	st->cache_next = (st->cache_next + 1) % CACHE_SLOTS;
	if (c->value)
		cache_clear(c, &st->cache_bytes);
	c->value = malloc(msg->len + 1);
	if (!c->value)
		return;
	memcpy(c->value, msg->payload, msg->len);
	c->value[msg->len] = '\0';
	c->len = msg->len;
	c->partition = msg->partition;
	c->offset = msg->offset;
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

/* Reads from `offset` (the record wanted) up to `until`, caching the done records after it. */
static bool read_ahead(struct state *st, int32_t partition, int64_t offset, int64_t until,
                       char **value, size_t *len, char *err, size_t errcap)
{
	int64_t deadline = cptime_mono_ms() + FETCH_TIMEOUT_MS;
	int64_t next = offset;
	bool found = false;
	while (next < until && cptime_mono_ms() < deadline) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(st->reader, 100);
		if (!msg)
			continue;
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			rd_kafka_message_destroy(msg);
			break;
		}
		if (!msg->err) {
			next = msg->offset + 1;
			if (msg->offset == offset && !found) {
				found = copy_value(msg, value, len);
				if (!found) {
					rd_kafka_message_destroy(msg);
					snprintf(err, errcap, "out of memory");
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

bool state_fetch(struct state *st, int32_t partition, int64_t offset, char **value, size_t *len,
                 char *err, size_t errcap)
{
	int64_t low = 0, high = 0;
	if (cache_take(st, partition, offset, value, len))
		return true;
	if (watermarks(st, partition, &low, &high, FETCH_TIMEOUT_MS, err, errcap))
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
	bool ok = read_ahead(st, partition, offset, until, value, len, err, errcap);
	unassign(st);
	return ok;
}

size_t state_forget_older(struct state *st, int64_t before_wall_ms)
{
	size_t forgotten = 0;
	for (size_t i = 0; i < st->n_buckets; i++) {
		struct entry **link = &st->buckets[i];
		while (*link) {
			struct entry *e = *link;
			if (!e->active && e->kind != STATE_NONE && e->at_wall_ms < before_wall_ms) {
				*link = e->next;
				entry_free(e);
				st->count--;
				forgotten++;
			} else {
				link = &e->next;
			}
		}
	}
	return forgotten;
}
