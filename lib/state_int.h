/*
 * state_int.h - what the three files of the state mirror share (state.c: keys, live table,
 * records, queries; state_runs.c: the compact sorted runs; state_topic.c: reading the
 * topic). Private to them: the rest of the library uses state.h.
 */
#ifndef CHATPROV_STATE_INT_H
#define CHATPROV_STATE_INT_H

#include <stdint.h>

#include "event.h"
#include "state.h"

#define KEY_BYTES 16
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

typedef bool(entry_leaves_fn)(const struct entry *e, void *arg);
typedef bool(slot_leaves_fn)(struct slot s, const void *arg);

/* ---- state.c: keys and the live table ---- */

/* The 16-byte key of an id: the bytes of its client-request-id (UUIDv5 of the id). */
bool state_key_of(const char *id, uint8_t key[KEY_BYTES]);
/* state_key_of, remembering the last id asked about. */
bool state_key_of_id(struct state *st, const char *id, uint8_t key[KEY_BYTES]);
/* A record's id from its key; false when it cannot be a request's. */
bool state_record_id(const rd_kafka_message_t *msg, char id[ID_MAX + 1]);
/* The 64 bits of a key that runs keep. */
uint64_t state_fingerprint(const uint8_t key[KEY_BYTES]);
/* Drops the live entries leaves() picks; how many. */
size_t state_live_sweep(struct state *st, entry_leaves_fn *leaves, void *arg);
/* After a restore: the requests whose last record is past retention get their tombstone. */
void state_expire_old(struct state *st, int32_t partition);
void state_cache_clear(struct cached_result *c, size_t *bytes);

/* ---- state_runs.c: the runs ---- */

bool state_pack_done(int32_t partition, int64_t offset, bool succeeded, int64_t at_wall_ms,
                     uint64_t *packed, uint32_t *at_s);
int32_t state_slot_partition(struct slot s);
int64_t state_slot_at_ms(struct slot s);
void state_slot_read(struct slot s, struct state_info *out);
void state_slot_kill(struct slot s);
size_t state_run_alive(const struct run *r);
bool state_run_find(const struct state *st, uint64_t fp, struct slot *out);
/* Rewrites the runs without their dead slots. */
void state_runs_drop_dead(struct state *st);
/* Kills the slots leaves() picks, then drops the dead ones; how many it killed. */
size_t state_runs_sweep(struct state *st, slot_leaves_fn *leaves, const void *arg);
/* Moves done, inactive entries into a run once COMPACT_EVERY of them wait (changed: the
 * entry that just changed, or NULL). */
void state_compact(struct state *st, const struct entry *changed);

#endif
