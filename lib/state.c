/*
 * state.c - in-memory mirror of the state topic, restored per partition.
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

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cptime.h"
#include "event.h"
#include "graphreq.h"
#include "kafka.h"
#include "log.h"

#define KEY_BYTES          16
/* Ids are up to 200 characters, EVENT_ID_MAX_BYTES bytes: a longer key is not ours. */
#define ID_MAX             EVENT_ID_MAX_BYTES
#define RESTORE_TIMEOUT_MS (120 * 1000)
#define FETCH_TIMEOUT_MS   (10 * 1000)
#define INITIAL_BUCKETS    1024
/*
 * Replays come in bursts (after a crash, every request past the last commit comes again,
 * in input order, and their done records are neighbours in the state partition): one
 * fetch reads ahead and keeps the done records it passes, within these bounds (results
 * are about 1 KB: a read-ahead is about 1 MB; the byte bound keeps the whole process
 * under its 64 MiB target even with large results).
 */
#define FETCH_AHEAD      1024
#define CACHE_SLOTS      4096
#define CACHE_BYTES      (4u << 20)
#define CACHE_RECORD_MAX (64u << 10)

/*
 * Compaction. COMPACT_EVERY bounds the done entries waiting in the live table (about
 * 330 kB); RUN_CAP bounds a run, hence the second copy a merge or a rewrite holds for a
 * moment (1.3 MB), and makes a lookup a search of at most 65,536 fingerprints per run.
 * A test build may make both tiny (-DSTATE_COMPACT_EVERY=16 -DSTATE_RUN_CAP=256), so that
 * every request goes through runs, merges and rewrites.
 */
#ifndef STATE_COMPACT_EVERY
#define STATE_COMPACT_EVERY 4096
#endif
#ifndef STATE_RUN_CAP
#define STATE_RUN_CAP 65536
#endif
#define COMPACT_EVERY STATE_COMPACT_EVERY
#define RUN_CAP       STATE_RUN_CAP
#define RUNS_INITIAL  16
/* A run entry: fingerprint, packed done fields, record time. */
#define RUN_ENTRY_BYTES (sizeof(uint64_t) * 2 + sizeof(uint32_t))
/* Partitions are 0..65535 (offtrack.h): 16 bits, the succeeded flag 1, the offset 47. */
#define PARTITION_BITS  16
#define PARTITION_LIMIT ((int64_t)1 << PARTITION_BITS)
#define OFFSET_SHIFT    (PARTITION_BITS + 1)
#define OFFSET_LIMIT    ((int64_t)1 << (64 - OFFSET_SHIFT))
/* What glibc adds to each block, for state_memory_bytes. */
#define MALLOC_OVERHEAD 16

/* Keyed by the 128-bit UUIDv5 of the id: fixed size, no copy of the id string. */
struct entry {
	struct entry *next;
	uint8_t key[KEY_BYTES];
	int32_t partition;
	uint8_t kind;
	bool active;
	bool done_succeeded;
	bool fingerprint_only; /* done fields taken from a run (state_set_active): see state.h */
	int64_t at_wall_ms;
	int64_t offset;
	char *op_url; /* STATE_OPERATION only; followed by the POST's request-id (op_request_id) */
	int64_t op_started_wall_ms;
	uint32_t op_attempts; /* STATE_OPERATION only */
};

/*
 * Done requests sorted by fingerprint, in one block: this header, then the three arrays.
 * A dead slot (at_s 0) keeps its fingerprint, so that the order holds until a rewrite.
 */
struct run {
	size_t len, dead;
	uint64_t *fp;
	uint64_t *packed; /* offset << OFFSET_SHIFT | partition << 1 | succeeded */
	uint32_t *at_s;   /* the record's time, seconds (rounded down); 0: dead */
};

/* One request in a run. */
struct slot {
	struct run *run;
	size_t i;
};

struct cached_result {
	int32_t partition;
	int64_t offset;
	uint8_t key[KEY_BYTES]; /* whose record it is: state_fetch checks the id */
	char *value;            /* NULL: free slot */
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
	/* Told from inside every wait for the broker (state_set_progress). */
	state_progress_fn *on_progress;
	void *progress_arg;
	/* The live table. */
	struct entry **buckets;
	size_t n_buckets, live_count;
	size_t done_since_compact; /* entries that became done and inactive since the last */
	/* The runs, oldest first. */
	struct run **runs;
	size_t n_runs, runs_cap;
	/* The last id's key: the pipeline asks about one id several times in a row. */
	char last_id[ID_MAX + 1];
	size_t last_id_len; /* 0: none */
	uint8_t last_key[KEY_BYTES];
	/* Hand-over marks by partition (-1: none), n_marks long. */
	int64_t *marks;
	size_t n_marks;
};

/* ---- keys ---- */

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

/* key_of with a memory of the last id: saves a SHA-1 per call on the pipeline's path. */
static bool key_of_id(struct state *st, const char *id, uint8_t key[KEY_BYTES])
{
	size_t len = strlen(id);
	if (len && len == st->last_id_len && memcmp(id, st->last_id, len) == 0) {
		memcpy(key, st->last_key, KEY_BYTES);
		return true;
	}
	if (!key_of(id, key))
		return false;
	if (len <= ID_MAX) {
		memcpy(st->last_id, id, len + 1);
		st->last_id_len = len;
		memcpy(st->last_key, key, KEY_BYTES);
	}
	return true;
}

/* A record's key as a C string (false: none, or too long to be one of ours). */
static bool record_id(const rd_kafka_message_t *msg, char id[ID_MAX + 1])
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
static uint64_t fingerprint(const uint8_t key[KEY_BYTES])
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

typedef bool(entry_leaves_fn)(const struct entry *e, void *arg);

/* Removes the entries `leaves` selects; returns how many. */
static size_t live_sweep(struct state *st, entry_leaves_fn *leaves, void *arg)
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

/* ---- runs ---- */

static struct run *run_new(size_t len)
{
	struct run *r = malloc(sizeof *r + len * RUN_ENTRY_BYTES);
	if (!r)
		return NULL;
	r->len = len;
	r->dead = 0;
	/* The header's size is a multiple of 8 (it holds pointers): the arrays are aligned. */
	r->fp = (uint64_t *)(r + 1);
	r->packed = r->fp + len;
	r->at_s = (uint32_t *)(r->packed + len);
	return r;
}

static size_t run_alive(const struct run *r)
{
	return r->len - r->dead;
}

static void run_copy(struct run *to, size_t j, const struct run *from, size_t i)
{
	to->fp[j] = from->fp[i];
	to->packed[j] = from->packed[i];
	to->at_s[j] = from->at_s[i];
}

/*
 * The done fields in run form. False when they do not fit (an offset of 2^47 or more, a
 * time before 1970-01-01T00:00:01): such a request simply stays in the live table.
 */
static bool pack_done(int32_t partition, int64_t offset, bool succeeded, int64_t at_wall_ms,
                      uint64_t *packed, uint32_t *at_s)
{
	int64_t seconds = at_wall_ms / 1000;
	if (offset < 0 || offset >= OFFSET_LIMIT || partition < 0 || partition >= PARTITION_LIMIT ||
	    seconds < 1 || seconds > UINT32_MAX)
		return false;
	*packed = (uint64_t)offset << OFFSET_SHIFT | (uint64_t)partition << 1 | (uint64_t)succeeded;
	*at_s = (uint32_t)seconds;
	return true;
}

static int32_t slot_partition(struct slot s)
{
	return (int32_t)((s.run->packed[s.i] >> 1) & (PARTITION_LIMIT - 1));
}

static int64_t slot_at_ms(struct slot s)
{
	return (int64_t)s.run->at_s[s.i] * 1000;
}

static void slot_read(struct slot s, struct state_info *out)
{
	uint64_t packed = s.run->packed[s.i];
	out->kind = STATE_DONE;
	out->partition = slot_partition(s);
	out->offset = (int64_t)(packed >> OFFSET_SHIFT);
	out->done_succeeded = packed & 1;
	out->at_wall_ms = slot_at_ms(s);
	out->fingerprint_only = true;
}

static void slot_kill(struct slot s)
{
	s.run->at_s[s.i] = 0;
	s.run->dead++;
}

/*
 * The first index whose fingerprint is >= fp. Fingerprints are uniform (SHA-1), so
 * interpolating between the ends of the range lands next to the place in a few probes;
 * bisection finishes, and bounds the cost whatever the data.
 */
static size_t run_lower_bound(const struct run *r, uint64_t fp)
{
	size_t lo = 0, hi = r->len;
	for (int probes = 0; hi - lo > 16 && probes < 4; probes++) {
		uint64_t first = r->fp[lo], last = r->fp[hi - 1];
		if (fp <= first)
			return lo;
		if (fp > last)
			return hi;
		double share = (double)(fp - first) / (double)(last - first);
		size_t at = lo + (size_t)(share * (double)(hi - 1 - lo));
		at = at < hi ? at : hi - 1;
		if (r->fp[at] < fp)
			lo = at + 1;
		else
			hi = at;
	}
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (r->fp[mid] < fp)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The request with this fingerprint in the runs, newest run first. */
static bool run_find(const struct state *st, uint64_t fp, struct slot *out)
{
	for (size_t r = st->n_runs; r-- > 0;) {
		struct run *run = st->runs[r];
		for (size_t i = run_lower_bound(run, fp); i < run->len && run->fp[i] == fp; i++) {
			if (run->at_s[i]) {
				*out = (struct slot){.run = run, .i = i};
				return true;
			}
		}
	}
	return false;
}

/* Both runs in one, in order, without their dead slots. */
static struct run *run_merge(const struct run *a, const struct run *b)
{
	struct run *m = run_new(run_alive(a) + run_alive(b));
	if (!m)
		return NULL;
	size_t i = 0, j = 0, k = 0;
	while (i < a->len || j < b->len) {
		bool from_a = j == b->len || (i < a->len && a->fp[i] <= b->fp[j]);
		const struct run *from = from_a ? a : b;
		size_t at = from_a ? i++ : j++;
		if (from->at_s[at])
			run_copy(m, k++, from, at);
	}
	return m;
}

static bool runs_reserve(struct state *st)
{
	if (st->n_runs < st->runs_cap)
		return true;
	size_t cap = st->runs_cap ? st->runs_cap * 2 : RUNS_INITIAL;
	struct run **runs = realloc(st->runs, cap * sizeof *runs);
	if (!runs)
		return false;
	st->runs = runs;
	st->runs_cap = cap;
	return true;
}

static void runs_remove(struct state *st, size_t r)
{
	free(st->runs[r]);
	memmove(&st->runs[r], &st->runs[r + 1], (st->n_runs - r - 1) * sizeof *st->runs);
	st->n_runs--;
}

/* The indexes of the two runs with the fewest alive entries (n_runs >= 2), a first. */
static void two_smallest(const struct state *st, size_t *a, size_t *b)
{
	*a = 0;
	*b = 1;
	if (run_alive(st->runs[1]) < run_alive(st->runs[0])) {
		*a = 1;
		*b = 0;
	}
	for (size_t r = 2; r < st->n_runs; r++) {
		size_t alive = run_alive(st->runs[r]);
		if (alive < run_alive(st->runs[*a])) {
			*b = *a;
			*a = r;
		} else if (alive < run_alive(st->runs[*b])) {
			*b = r;
		}
	}
}

/* Rewrites run r without its dead slots; on allocation failure they stay a little longer. */
static void run_rewrite(struct state *st, size_t r)
{
	static const struct run no_run = {0};
	struct run *copy = run_merge(st->runs[r], &no_run);
	if (!copy)
		return;
	free(st->runs[r]);
	st->runs[r] = copy;
}

/*
 * Keeps the runs few and dense: a run a quarter dead is rewritten (each rewrite pays for
 * itself with the slots it frees), and the two smallest runs merge while they fit in
 * RUN_CAP together and are of comparable sizes (or small: runs shrunk by forgetting join up
 * again). A failed merge leaves the runs as they are: lookups get slower, not wrong.
 */
static void merge_runs(struct state *st)
{
	for (size_t r = st->n_runs; r-- > 0;) {
		if (run_alive(st->runs[r]) == 0)
			runs_remove(st, r);
		else if (st->runs[r]->dead * 4 > st->runs[r]->len)
			run_rewrite(st, r);
	}
	while (st->n_runs >= 2) {
		size_t a, b;
		two_smallest(st, &a, &b);
		size_t small = run_alive(st->runs[a]), large = run_alive(st->runs[b]);
		if (small + large > RUN_CAP || (2 * small < large && small + large > RUN_CAP / 4))
			return;
		struct run *m = run_merge(st->runs[a], st->runs[b]);
		if (!m)
			return;
		/* The merged run takes the newer place. */
		size_t newer = a > b ? a : b, older = a > b ? b : a;
		free(st->runs[newer]);
		st->runs[newer] = m;
		runs_remove(st, older);
	}
}

/* Rewrites every run that has dead slots, without them (memory back to the allocator). */
static void runs_drop_dead(struct state *st)
{
	for (size_t r = 0; r < st->n_runs; r++)
		if (st->runs[r]->dead)
			run_rewrite(st, r);
	merge_runs(st);
}

typedef bool(slot_leaves_fn)(struct slot s, const void *arg);

/* Removes the run entries `leaves` selects; returns how many. */
static size_t runs_sweep(struct state *st, slot_leaves_fn *leaves, const void *arg)
{
	size_t removed = 0;
	for (size_t r = 0; r < st->n_runs; r++) {
		for (size_t i = 0; i < st->runs[r]->len; i++) {
			struct slot s = {.run = st->runs[r], .i = i};
			if (s.run->at_s[i] && leaves(s, arg)) {
				slot_kill(s);
				removed++;
			}
		}
	}
	runs_drop_dead(st);
	return removed;
}

/* ---- compaction: done entries from the live table into a run ---- */

struct done_batch {
	struct run *run;
	size_t n;
};

static bool movable(const struct entry *e, uint64_t *packed, uint32_t *at_s)
{
	return e->kind == STATE_DONE && !e->active &&
	       pack_done(e->partition, e->offset, e->done_succeeded, e->at_wall_ms, packed, at_s);
}

static bool count_movable(const struct entry *e, void *arg)
{
	uint64_t packed;
	uint32_t at_s;
	size_t *n = arg;
	*n += movable(e, &packed, &at_s);
	return false;
}

static bool move_to_batch(const struct entry *e, void *arg)
{
	struct done_batch *batch = arg;
	uint64_t packed;
	uint32_t at_s;
	if (batch->n == batch->run->len || !movable(e, &packed, &at_s))
		return false;
	batch->run->fp[batch->n] = fingerprint(e->key);
	batch->run->packed[batch->n] = packed;
	batch->run->at_s[batch->n] = at_s;
	batch->n++;
	return true;
}

/*
 * Sorts a run's entries by fingerprint (they come in the hash's order), by a bottom-up
 * merge sort through tmp, a run of the same length: qsort cannot move three arrays at once.
 */
static void run_sort(struct run *r, struct run *tmp)
{
	struct run *from = r, *to = tmp;
	for (size_t width = 1; width < r->len; width *= 2) {
		for (size_t lo = 0; lo < r->len; lo += 2 * width) {
			size_t mid = lo + width < r->len ? lo + width : r->len;
			size_t hi = mid + width < r->len ? mid + width : r->len;
			size_t i = lo, j = mid;
			for (size_t k = lo; k < hi; k++) {
				bool left = j == hi || (i < mid && from->fp[i] <= from->fp[j]);
				run_copy(to, k, from, left ? i++ : j++);
			}
		}
		struct run *swap = from;
		from = to;
		to = swap;
	}
	for (size_t k = 0; from != r && k < r->len; k++)
		run_copy(r, k, from, k);
}

/*
 * Moves up to RUN_CAP done, inactive entries into a new run; *moved says how many. All
 * memory is taken before the first entry moves: on failure nothing has changed.
 */
static bool compact_batch(struct state *st, size_t *moved)
{
	size_t n = 0;
	*moved = 0;
	(void)live_sweep(st, count_movable, &n);
	if (n == 0)
		return true;
	n = n < RUN_CAP ? n : RUN_CAP;
	struct done_batch batch = {.run = run_new(n)};
	struct run *tmp = run_new(n);
	if (!batch.run || !tmp || !runs_reserve(st))
		goto fail;
	(void)live_sweep(st, move_to_batch, &batch);
	run_sort(batch.run, tmp);
	free(tmp);
	st->runs[st->n_runs++] = batch.run;
	*moved = batch.n;
	return true;
fail:
	free(tmp);
	free(batch.run);
	return false;
}

/*
 * Once COMPACT_EVERY entries became done and inactive, the live table's done, inactive
 * entries move into runs: at most that many wait there, however many jobs are in progress.
 * Out of memory, they stay where they are: correct, only bigger.
 */
static void compact(struct state *st, const struct entry *changed)
{
	if (changed->kind != STATE_DONE || changed->active ||
	    ++st->done_since_compact < COMPACT_EVERY)
		return;
	st->done_since_compact = 0;
	size_t moved = 0;
	while (compact_batch(st, &moved) && moved == RUN_CAP)
		continue;
	merge_runs(st);
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
		(void)live_sweep(st, every_entry, NULL);
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
	rd_kafka_headers_t *h = NULL;
	if (rd_kafka_message_headers(msg, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
	    !kafka_header_has(h, STATE_HEADER_OUTCOME_UNKNOWN))
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
	if (!record_id(msg, rec->id) || !key_of_id(st, rec->id, rec->key))
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
	bool expired = st->on_expired && slot_at_ms(s) < st->expire_before_ms;
	*ok = true;
	if (!expired && rec->kind != STATE_DONE) {
		if (s.run->packed[s.i] & 1)
			return true; /* a success is final */
		/* After a failure, a re-drive: the request is live again. */
		slot_kill(s);
		return false;
	}
	if (expired || !pack_done(rec->partition, rec->offset, rec->succeeded, rec->at_wall_ms,
	                          &packed, &at_s)) {
		slot_kill(s);
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
	else if (run_find(st, fingerprint(key), &s))
		slot_kill(s);
}

/* A hand-over mark: the partition's latest one counts. False: out of memory. */
static bool apply_mark(struct state *st, const rd_kafka_message_t *msg)
{
	int64_t offset;
	size_t partition = (size_t)msg->partition;
	if (msg->partition < 0)
		return true;
	if (!staterec_mark_offset(msg, &offset)) {
		log_warning("state: unreadable hand-over mark in partition %d", (int)msg->partition);
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
	if (!e && run_find(st, fingerprint(rec.key), &s) && apply_in_run(st, s, &rec, &ok))
		return ok;
	e = e ? e : add(st, rec.key);
	if (!e)
		return false;
	ok = apply_live(st, e, &rec);
	compact(st, e);
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
	if (!run_find(st, fingerprint(key), &s) || slot_partition(s) != partition ||
	    slot_at_ms(s) >= st->expire_before_ms)
		return false;
	slot_kill(s);
	return true;
}

/* At the end of a restore: forgets and reports the requests whose last record is old. */
static void expire_old(struct state *st, int32_t partition)
{
	uint8_t key[KEY_BYTES];
	for (size_t at = 0; at < st->old_ids_len; at += strlen(st->old_ids + at) + 1) {
		const char *id = st->old_ids + at;
		/* Not found: tombstoned, or already reported for an earlier record of the id. */
		if (key_of(id, key) && expire(st, key, partition))
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
	if (!key_of_id(st, id, key))
		return;
	const struct entry *e = find(st, key);
	if (e)
		entry_read(e, out);
	else if (run_find(st, fingerprint(key), &s))
		slot_read(s, out);
}

/* A new live entry for key; a done request in a run moves into it (active ones are live). */
static struct entry *add_from_run(struct state *st, const uint8_t key[KEY_BYTES])
{
	struct slot s;
	struct entry *e = add(st, key);
	if (!e || !run_find(st, fingerprint(key), &s))
		return e;
	struct state_info done; /* slot_read is the one place that unpacks a slot */
	slot_read(s, &done);
	e->kind = (uint8_t)done.kind;
	e->partition = done.partition;
	e->offset = done.offset;
	e->done_succeeded = done.done_succeeded;
	e->at_wall_ms = done.at_wall_ms;
	e->fingerprint_only = done.fingerprint_only;
	slot_kill(s);
	return e;
}

bool state_set_active(struct state *st, const char *id, int32_t partition, bool active)
{
	uint8_t key[KEY_BYTES];
	if (!key_of_id(st, id, key))
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
		compact(st, e);
	return true;
}

static void cache_clear(struct cached_result *c, size_t *bytes)
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
	return slot_partition(s) == *(const int32_t *)arg;
}

void state_drop_partition(struct state *st, int32_t partition)
{
	if (partition >= 0 && (size_t)partition < st->n_marks)
		st->marks[partition] = -1;
	for (size_t i = 0; i < CACHE_SLOTS; i++)
		if (st->cache[i].value && st->cache[i].partition == partition)
			cache_clear(&st->cache[i], &st->cache_bytes);
	(void)live_sweep(st, entry_in_partition, &partition);
	(void)runs_sweep(st, slot_in_partition, &partition);
}

static bool entry_forgettable(const struct entry *e, void *arg)
{
	return !e->active && e->kind != STATE_NONE && e->at_wall_ms < *(const int64_t *)arg;
}

static bool slot_older(struct slot s, const void *arg)
{
	return slot_at_ms(s) < *(const int64_t *)arg;
}

size_t state_forget_older(struct state *st, int64_t before_wall_ms)
{
	size_t forgotten = live_sweep(st, entry_forgettable, &before_wall_ms);
	/* Also rewrites the runs without their dead slots, whatever made them dead. */
	return forgotten + runs_sweep(st, slot_older, &before_wall_ms);
}

size_t state_count(const struct state *st)
{
	size_t n = st->live_count;
	for (size_t r = 0; r < st->n_runs; r++)
		n += run_alive(st->runs[r]);
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
		expire_old(st, partition);
	st->on_expired = NULL;
	free(st->old_ids);
	st->old_ids = NULL;
	st->old_ids_len = st->old_ids_cap = 0;
	/* Tombstones and expiry left dead slots in the runs: their memory goes now. */
	runs_drop_dead(st);
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
	    st->cache_bytes + msg->len > CACHE_BYTES ||
	    staterec_kind(msg) != STATE_DONE ||
	    !record_id(msg, id) || !key_of(id, key))
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
	if (!record_id(msg, id) || !key_of(id, key) || memcmp(key, want, KEY_BYTES) != 0) {
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
	if (!key_of_id(st, id, want)) {
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
