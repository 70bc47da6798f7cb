/*
 * state.c - in-memory mirror of the state topic, restored per partition: the keys, the live
 * table, applying records and answering queries. The runs are in state_runs.c, the reading
 * of the topic (restore, fetch, read-ahead cache) in state_topic.c; state_int.h is what the
 * three share.
 *
 * Two stores, so that the history of done requests (nearly every remembered request) costs
 * about 20 bytes each instead of a full entry:
 *
 *  - The live table: a chained hash of full entries keyed by the 16-byte UUIDv5 of the id.
 *    It holds every request in progress (intent, operation, active in this instance) and the
 *    done requests not yet compacted. Its answer is exact, and it wins.
 *  - Runs: arrays of done, inactive requests sorted by a 64-bit fingerprint of the key, as
 *    three parallel arrays (fingerprint; offset|partition|succeeded packed in 64 bits; the
 *    record time in seconds), 20 bytes an entry. Once COMPACT_EVERY entries became done
 *    and inactive, those of the live table move into a new run; the two smallest runs merge
 *    while they are of comparable sizes (binary-counter style, so an entry is copied a few
 *    times in all) and fit in RUN_CAP together, which bounds the transient copy of a merge.
 *
 * A request is in one place at most: a record for an id found in a run updates or removes
 * it there, and state_set_active moves it back into the live table. Deletions in a run
 * (tombstone, expiry, a move back) only mark the slot dead, keeping the order; dead slots
 * leave memory when the run is rewritten: by a merge, at the end of a restore, or by the
 * once-a-minute state_forget_older, which also drops the runs' requests past retention.
 *
 * Two different ids whose fingerprints are equal (about n^2 / 2^65: one chance in 37 million
 * for a million requests) are taken for one. Every done answer is replayed through state_fetch,
 * which compares the record's key with the id, so a collision ends as "not done" (and a
 * group chat is looked up before being created), never as another request's result.
 */
#include "state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cptime.h"
#include "graphreq.h"
#include "kafka.h"
#include "log.h"
#include "state_int.h"

/* ---- keys ---- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

bool state_key_of(const char *id, uint8_t key[KEY_BYTES])
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

/* state_key_of with a memory of the last id: saves a SHA-1 per call on the pipeline's path. */
bool state_key_of_id(struct state *st, const char *id, uint8_t key[KEY_BYTES])
{
	size_t len = strlen(id);
	if (len && len == st->last_id_len && memcmp(id, st->last_id, len) == 0) {
		memcpy(key, st->last_key, KEY_BYTES);
		return true;
	}
	if (!state_key_of(id, key))
		return false;
	if (len <= ID_MAX) {
		memcpy(st->last_id, id, len + 1);
		st->last_id_len = len;
		memcpy(st->last_key, key, KEY_BYTES);
	}
	return true;
}

/* A record's key as a C string (false: none, or too long to be one of ours). */
bool state_record_id(const rd_kafka_message_t *msg, char id[ID_MAX + 1])
{
	if (!msg->key || msg->key_len == 0 || msg->key_len > ID_MAX)
		return false;
	memcpy(id, msg->key, msg->key_len);
	id[msg->key_len] = '\0';
	return true;
}

/*
 * The 64 bits of a key that runs keep. A UUIDv5 fixes 4 version bits in its first half and
 * 2 variant bits in its second, at other places: the XOR of the halves has 64 uniform bits.
 */
uint64_t state_fingerprint(const uint8_t key[KEY_BYTES])
{
	uint64_t first, second;
	memcpy(&first, key, sizeof first);
	memcpy(&second, key + sizeof first, sizeof second);
	return first ^ second;
}

/* ---- the live table ---- */

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

/* A new, empty entry (the key must not be in the table). */
static struct entry *add(struct state *st, const uint8_t key[KEY_BYTES])
{
	if (st->live_count >= st->n_buckets)
		grow(st);
	struct entry *e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	memcpy(e->key, key, KEY_BYTES);
	size_t b = bucket_of(st, key);
	e->next = st->buckets[b];
	st->buckets[b] = e;
	st->live_count++;
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
			st->live_count--;
			return;
		}
		link = &(*link)->next;
	}
}

/* Removes the entries `leaves` selects; returns how many. */
size_t state_live_sweep(struct state *st, entry_leaves_fn *leaves, void *arg)
{
	size_t removed = 0;
	for (size_t i = 0; i < st->n_buckets; i++) {
		struct entry **link = &st->buckets[i];
		while (*link) {
			struct entry *e = *link;
			if (leaves(e, arg)) {
				*link = e->next;
				entry_free(e);
				st->live_count--;
				removed++;
			} else {
				link = &e->next;
			}
		}
	}
	return removed;
}

/* ---- the mirror: both stores ---- */

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

static bool every_entry(const struct entry *e, void *arg)
{
	(void)e;
	(void)arg;
	return true;
}

void state_free(struct state *st)
{
	if (!st)
		return;
	if (st->reader) {
		rd_kafka_consumer_close(st->reader);
		rd_kafka_destroy(st->reader);
	}
	if (st->buckets)
		(void)state_live_sweep(st, every_entry, NULL);
	for (size_t r = 0; r < st->n_runs; r++)
		free(st->runs[r]);
	for (size_t i = 0; i < CACHE_SLOTS; i++)
		free(st->cache[i].value);
	free(st->runs);
	free(st->marks);
	free(st->buckets);
	free(st->old_ids);
	free(st);
}

/* ---- records ---- */

/* The POST's request-id, stored after the operation URL in one block (staterec.h). */
static const char *op_request_id(const struct entry *e)
{
	return e->op_url + strlen(e->op_url) + 1;
}

static bool apply_operation(struct entry *e, const rd_kafka_message_t *msg)
{
	char *strings;
	int64_t started;
	unsigned attempts;
	if (!staterec_read_operation(msg, &strings, &started, &attempts))
		return false;
	free(e->op_url);
	e->op_url = strings;
	e->op_started_wall_ms = started;
	e->op_attempts = attempts;
	return true;
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

/* A state record as the mirror sees it. */
struct record {
	const rd_kafka_message_t *msg;
	char id[ID_MAX + 1];
	uint8_t key[KEY_BYTES];
	enum state_kind kind; /* STATE_NONE: a tombstone */
	int32_t partition;
	int64_t offset;
	int64_t at_wall_ms;
	bool succeeded;
	bool done; /* a done record (a failure that may have created its chat reads as an intent) */
};

/*
 * A failed done record whose chat may exist all the same (STATE_HEADER_OUTCOME_UNKNOWN)
 * reads as an intent from the time the header gives: the request is looked up before it is
 * created again. An unreadable time falls back to the record's own.
 */
static void read_outcome_unknown(const rd_kafka_message_t *msg, struct record *rec)
{
	int64_t at;
	if (!staterec_has(msg, STATE_HEADER_OUTCOME_UNKNOWN))
		return;
	rec->kind = STATE_INTENT;
	if (staterec_number(msg, STATE_HEADER_OUTCOME_UNKNOWN, &at) && at > 0)
		rec->at_wall_ms = at;
}

/* A done record's STATE_INTENT_AT_HEADER, if present and not after the record itself. */
static void take_intent_time(const rd_kafka_message_t *msg, int64_t *at_wall_ms)
{
	int64_t v;
	if (staterec_number(msg, STATE_INTENT_AT_HEADER, &v) && v > 0 && v <= *at_wall_ms)
		*at_wall_ms = v;
}

/*
 * False: not one of ours (no id, no kind or an unknown one). written_wall_ms, when not 0, is
 * the record's time instead of the message's timestamp (see state_apply_delivered).
 */
static bool record_read(struct state *st, const rd_kafka_message_t *msg, int64_t written_wall_ms,
                        struct record *rec)
{
	if (!state_record_id(msg, rec->id) || !state_key_of_id(st, rec->id, rec->key))
		return false;
	rec->msg = msg;
	rec->kind = STATE_NONE;
	rec->partition = msg->partition;
	rec->offset = msg->offset;
	rec->at_wall_ms = 0;
	rec->succeeded = false;
	rec->done = false;
	if (!msg->payload)
		return true;
	rec->kind = staterec_kind(msg);
	rd_kafka_timestamp_type_t tstype;
	int64_t ts = rd_kafka_message_timestamp(msg, &tstype);
	rec->at_wall_ms = written_wall_ms ? written_wall_ms : ts > 0 ? ts : cptime_wall_ms();
	if (rec->kind == STATE_DONE)
		take_intent_time(msg, &rec->at_wall_ms);
	rec->succeeded = staterec_succeeded(msg);
	rec->done = rec->kind == STATE_DONE;
	if (rec->done && !rec->succeeded)
		read_outcome_unknown(msg, rec);
	return rec->kind != STATE_NONE;
}

/* During a restore: the last record of the request may be past retention. */
static bool note_if_old(struct state *st, const struct record *rec)
{
	if (!st->on_expired || rec->at_wall_ms >= st->expire_before_ms)
		return true;
	return remember_old(st, rec->id, strlen(rec->id));
}

/*
 * Whether a record replaces what the entry says. Records only move forward (an operation is
 * not an intent), and a success is final: only another done record replaces it. A failure
 * is not final: what a re-drive writes after it (an intent, an operation) applies. A done
 * record always ends the attempt before it, even one read as an intent.
 */
static bool supersedes(const struct entry *e, const struct record *rec)
{
	if (e->kind == STATE_DONE)
		return !e->done_succeeded || rec->kind == STATE_DONE;
	return rec->done || rec->kind >= e->kind;
}

static bool apply_live(struct state *st, struct entry *e, const struct record *rec)
{
	/* A record past retention is forgotten: it does not hold back a newer one. */
	if (st->on_expired && !e->active && e->at_wall_ms < st->expire_before_ms) {
		e->kind = STATE_NONE;
		free(e->op_url);
		e->op_url = NULL;
	}
	if (!supersedes(e, rec))
		return true;
	e->kind = (uint8_t)rec->kind;
	e->partition = rec->partition;
	e->at_wall_ms = rec->at_wall_ms;
	e->offset = rec->offset;
	e->fingerprint_only = false;
	if (rec->kind == STATE_DONE)
		e->done_succeeded = rec->succeeded;
	if (rec->kind != STATE_OPERATION) {
		free(e->op_url);
		e->op_url = NULL;
	} else if (!apply_operation(e, rec->msg)) {
		log_warning("state: unreadable operation record for %s", rec->id);
		e->kind = STATE_INTENT;
	}
	return note_if_old(st, rec);
}

/*
 * A record for a request that lives in a run, with the same rules as apply_live. True when
 * the run took it (*ok: false if out of memory); false when it belongs in the live table
 * (the slot is then gone).
 */
static bool apply_in_run(struct state *st, struct slot s, const struct record *rec, bool *ok)
{
	uint64_t packed;
	uint32_t at_s;
	bool expired = st->on_expired && state_slot_at_ms(s) < st->expire_before_ms;
	*ok = true;
	if (!expired && rec->kind != STATE_DONE) {
		if (s.run->packed[s.i] & 1)
			return true; /* a success is final */
		/* After a failure, a re-drive: the request is live again. */
		state_slot_kill(s);
		return false;
	}
	if (expired || !state_pack_done(rec->partition, rec->offset, rec->succeeded,
	                                rec->at_wall_ms, &packed, &at_s)) {
		state_slot_kill(s);
		return false;
	}
	/* The fingerprint stays: the order holds. */
	s.run->packed[s.i] = packed;
	s.run->at_s[s.i] = at_s;
	*ok = note_if_old(st, rec);
	return true;
}

/* A tombstone: the request goes, from wherever it is. */
static void forget_key(struct state *st, const uint8_t key[KEY_BYTES])
{
	struct slot s;
	if (find(st, key))
		remove_entry(st, key);
	else if (state_run_find(st, state_fingerprint(key), &s))
		state_slot_kill(s);
}

/* A hand-over mark: the partition's latest one counts. False: out of memory. */
static bool apply_mark(struct state *st, const rd_kafka_message_t *msg)
{
	int64_t offset;
	size_t partition = (size_t)msg->partition;
	if (msg->partition < 0)
		return true;
	if (!staterec_mark_offset(msg, &offset)) {
		log_warning("state: unreadable hand-over mark in partition %d",
		            (int)msg->partition);
		return true;
	}
	if (partition >= st->n_marks) {
		size_t n = partition + 1;
		int64_t *marks = realloc(st->marks, n * sizeof *marks);
		if (!marks)
			return false;
		for (size_t i = st->n_marks; i < n; i++)
			marks[i] = -1;
		st->marks = marks;
		st->n_marks = n;
	}
	st->marks[partition] = offset;
	return true;
}

bool state_answered_below(const struct state *st, int32_t partition, int64_t *offset)
{
	if (partition < 0 || (size_t)partition >= st->n_marks || st->marks[partition] < 0)
		return false;
	*offset = st->marks[partition];
	return true;
}

static bool apply_record(struct state *st, const rd_kafka_message_t *msg, int64_t written_wall_ms)
{
	struct record rec;
	struct slot s;
	bool ok = true;
	if (staterec_is_mark(msg))
		return apply_mark(st, msg);
	if (!record_read(st, msg, written_wall_ms, &rec))
		return true; /* not ours: ignore */
	if (rec.kind == STATE_NONE) {
		forget_key(st, rec.key);
		return true;
	}
	struct entry *e = find(st, rec.key);
	if (!e && state_run_find(st, state_fingerprint(rec.key), &s) &&
	    apply_in_run(st, s, &rec, &ok))
		return ok;
	e = e ? e : add(st, rec.key);
	if (!e)
		return false;
	ok = apply_live(st, e, &rec);
	state_compact(st, e);
	return ok;
}

bool state_apply(struct state *st, const rd_kafka_message_t *msg)
{
	return apply_record(st, msg, 0);
}

bool state_apply_delivered(struct state *st, const rd_kafka_message_t *msg)
{
	return apply_record(st, msg, cptime_wall_ms());
}

/* Forgets a request of `partition` whose last record is past retention; false if none. */
static bool expire(struct state *st, const uint8_t key[KEY_BYTES], int32_t partition)
{
	struct entry *e = find(st, key);
	struct slot s;
	if (e) {
		if (e->active || e->partition != partition || e->at_wall_ms >= st->expire_before_ms)
			return false;
		remove_entry(st, key);
		return true;
	}
	if (!state_run_find(st, state_fingerprint(key), &s) ||
	    state_slot_partition(s) != partition || state_slot_at_ms(s) >= st->expire_before_ms)
		return false;
	state_slot_kill(s);
	return true;
}

/* At the end of a restore: forgets and reports the requests whose last record is old. */
void state_expire_old(struct state *st, int32_t partition)
{
	uint8_t key[KEY_BYTES];
	for (size_t at = 0; at < st->old_ids_len; at += strlen(st->old_ids + at) + 1) {
		const char *id = st->old_ids + at;
		/* Not found: tombstoned, or already reported for an earlier record of the id. */
		if (state_key_of(id, key) && expire(st, key, partition))
			st->on_expired(id, partition, st->expired_arg);
	}
}

/* ---- queries ---- */

static void entry_read(const struct entry *e, struct state_info *out)
{
	out->kind = (enum state_kind)e->kind;
	out->partition = e->partition;
	out->at_wall_ms = e->at_wall_ms;
	out->offset = e->offset;
	out->done_succeeded = e->done_succeeded;
	out->active = e->active;
	out->fingerprint_only = e->fingerprint_only;
	out->op_started_wall_ms = e->op_started_wall_ms;
	out->op_attempts = e->op_attempts;
	out->op_request_id[0] = '\0';
	if (e->op_url) {
		snprintf(out->op_url, sizeof out->op_url, "%s", e->op_url);
		snprintf(out->op_request_id, sizeof out->op_request_id, "%s", op_request_id(e));
	}
}

void state_get(struct state *st, const char *id, struct state_info *out)
{
	uint8_t key[KEY_BYTES];
	struct slot s;
	memset(out, 0, sizeof *out);
	if (!state_key_of_id(st, id, key))
		return;
	const struct entry *e = find(st, key);
	if (e)
		entry_read(e, out);
	else if (state_run_find(st, state_fingerprint(key), &s))
		state_slot_read(s, out);
}

/* A new live entry for key; a done request in a run moves into it (active ones are live). */
static struct entry *add_from_run(struct state *st, const uint8_t key[KEY_BYTES])
{
	struct slot s;
	struct entry *e = add(st, key);
	if (!e || !state_run_find(st, state_fingerprint(key), &s))
		return e;
	struct state_info done; /* slot_read is the one place that unpacks a slot */
	state_slot_read(s, &done);
	e->kind = (uint8_t)done.kind;
	e->partition = done.partition;
	e->offset = done.offset;
	e->done_succeeded = done.done_succeeded;
	e->at_wall_ms = done.at_wall_ms;
	e->fingerprint_only = done.fingerprint_only;
	state_slot_kill(s);
	return e;
}

bool state_set_active(struct state *st, const char *id, int32_t partition, bool active)
{
	uint8_t key[KEY_BYTES];
	if (!state_key_of_id(st, id, key))
		return false;
	struct entry *e = find(st, key);
	if (!e && active)
		e = add_from_run(st, key);
	if (!e)
		return !active;
	e->active = active;
	e->partition = partition;
	if (!active && e->kind == STATE_NONE)
		remove_entry(st, key);
	else
		state_compact(st, e);
	return true;
}

void state_cache_clear(struct cached_result *c, size_t *bytes)
{
	*bytes -= c->len;
	free(c->value);
	c->value = NULL;
	c->len = 0;
}

static bool entry_in_partition(const struct entry *e, void *arg)
{
	return e->partition == *(const int32_t *)arg;
}

static bool slot_in_partition(struct slot s, const void *arg)
{
	return state_slot_partition(s) == *(const int32_t *)arg;
}

void state_drop_partition(struct state *st, int32_t partition)
{
	if (partition >= 0 && (size_t)partition < st->n_marks)
		st->marks[partition] = -1;
	for (size_t i = 0; i < CACHE_SLOTS; i++)
		if (st->cache[i].value && st->cache[i].partition == partition)
			state_cache_clear(&st->cache[i], &st->cache_bytes);
	(void)state_live_sweep(st, entry_in_partition, &partition);
	(void)state_runs_sweep(st, slot_in_partition, &partition);
}

static bool entry_forgettable(const struct entry *e, void *arg)
{
	return !e->active && e->kind != STATE_NONE && e->at_wall_ms < *(const int64_t *)arg;
}

static bool slot_older(struct slot s, const void *arg)
{
	return state_slot_at_ms(s) < *(const int64_t *)arg;
}

size_t state_forget_older(struct state *st, int64_t before_wall_ms)
{
	size_t forgotten = state_live_sweep(st, entry_forgettable, &before_wall_ms);
	/* Also rewrites the runs without their dead slots, whatever made them dead. */
	return forgotten + state_runs_sweep(st, slot_older, &before_wall_ms);
}

size_t state_count(const struct state *st)
{
	size_t n = st->live_count;
	for (size_t r = 0; r < st->n_runs; r++)
		n += state_run_alive(st->runs[r]);
	return n;
}

size_t state_memory_bytes(const struct state *st)
{
	size_t bytes =
	    st->n_buckets * sizeof *st->buckets + st->runs_cap * sizeof *st->runs + st->old_ids_cap;
	for (size_t i = 0; i < st->n_buckets; i++) {
		for (const struct entry *e = st->buckets[i]; e; e = e->next) {
			bytes += sizeof *e + MALLOC_OVERHEAD;
			if (e->op_url)
				bytes += strlen(e->op_url) + strlen(op_request_id(e)) + 2 +
				         MALLOC_OVERHEAD;
		}
	}
	for (size_t r = 0; r < st->n_runs; r++)
		bytes += sizeof(struct run) + st->runs[r]->len * RUN_ENTRY_BYTES + MALLOC_OVERHEAD;
	return bytes;
}
