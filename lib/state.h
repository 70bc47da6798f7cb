/*
 * state.h - what this instance knows about each request id: the in-memory mirror of the
 * compacted state topic, for the input partitions it owns.
 *
 * The state topic is partitioned like the input: the state of a request lives in the
 * partition number of its input message, keyed by request id, so whichever instance owns
 * input partition P restores state partition P before processing it. Records carry their
 * kind in the "chatprov-state" header:
 *   intent     written and acknowledged before POST /chats of a group chat
 *   operation  after a 202: {"location": url, "startedAt": epoch ms, "attempts": POSTs sent}
 *   done       the final result, byte for byte as published on the output topic
 * and a tombstone (null value) removes a request. Requests past [recovery]
 * state_retention_s are dropped from memory, and tombstoned when their partition is next
 * restored (at every assignment), so the topic stays bounded by retention.
 *
 * Memory: a request in progress (intent, operation, active here) has a full entry, about
 * 90 bytes with its share of the table (plus the Location of a running operation). A done
 * request, nearly every remembered one, is compacted to 20 bytes: a 64-bit fingerprint of
 * its id, its record's partition, offset and status, and the record time in whole seconds
 * (20.2 bytes of heap per request measured with 1,000,000, against 88.5 for full entries;
 * docs/state.md, "Memory"). A done result itself stays in Kafka and is fetched by offset
 * when a replay needs it, and that fetch confirms the id. Used only by the Kafka thread.
 */
#ifndef CHATPROV_STATE_H
#define CHATPROV_STATE_H

#include <librdkafka/rdkafka.h>

#include "cfg.h"
#include "common.h"
#include "staterec.h"

/* A copy of what is known about one request. */
struct state_info {
	enum state_kind kind;
	int32_t partition;
	int64_t at_wall_ms;  /* when the record was written, for a done record the intent's time
	                        if it had one (whole seconds if fingerprint_only) */
	int64_t offset;      /* STATE_DONE: the record holding the result */
	bool done_succeeded; /* STATE_DONE: the result's status was "succeeded" */
	char op_url[2048];   /* STATE_OPERATION: where to poll */
	int64_t op_started_wall_ms;
	unsigned op_attempts; /* STATE_OPERATION: POSTs sent up to the 202 (0: not recorded) */
	char op_request_id[64]; /* STATE_OPERATION: Graph's request-id of that POST ("": none) */
	bool active; /* a job for this id is in progress in this instance */
	/*
	 * STATE_DONE known by a 64-bit fingerprint of the id only (a compacted request):
	 * another id may share it (a chance of about n / 2^64 with n requests remembered).
	 * state_fetch tells.
	 */
	bool fingerprint_only;
};

struct state;

/* A consumer of its own (no group) reads the state topic for restores and fetches. */
bool state_new(const struct cfg *cfg, struct state **out, char *err, size_t errcap) CP_MUSTCHECK;
void state_free(struct state *st);

/* Called during a restore for each request whose last record is past retention. */
typedef void(state_expired_fn)(const char *id, int32_t partition, void *arg);

/*
 * Reads state partition `partition` from its beginning to its high watermark. Requests
 * older than retention_ms are not kept: on_expired is told, so the caller tombstones them.
 */
bool state_restore(struct state *st, int32_t partition, int64_t retention_ms,
                   state_expired_fn *on_expired, void *arg, size_t *records, char *err,
                   size_t errcap) CP_MUSTCHECK;

/*
 * state_restore and state_fetch wait for the broker. From inside those waits fn is called
 * at least every 200 ms of polling, and after each watermark query (a restore's take at most
 * 5 s, a fetch's 10 s, plus 2.5 s between a restore's attempts); advanced says whether the
 * wait moved forward (a record or the watermarks arrived). The caller feeds its watchdog
 * from it while the wait advances, so a slow broker is not mistaken for a stuck loop.
 */
typedef void(state_progress_fn)(bool advanced, void *arg);
void state_set_progress(struct state *st, state_progress_fn *fn, void *arg);

/* Forgets every request of a partition (revoked or lost). */
void state_drop_partition(struct state *st, int32_t partition);

/*
 * The hand-over mark of a partition read by state_restore (staterec.h, STATE_MARK_KEY). False when
 * there is none; state_drop_partition forgets it.
 */
bool state_answered_below(const struct state *st, int32_t partition, int64_t *offset);

/* What is known about request `id` (STATE_NONE and !active when nothing). */
void state_get(struct state *st, const char *id, struct state_info *out);

/* Marks a job for id as in progress here (or no longer). False: out of memory. */
bool state_set_active(struct state *st, const char *id, int32_t partition,
                      bool active) CP_MUSTCHECK;

/*
 * Applies a state record read from the topic (a restore): kind from the header, value as
 * written (NULL: tombstone), time from the record's timestamp.
 */
bool state_apply(struct state *st, const rd_kafka_message_t *msg) CP_MUSTCHECK;

/*
 * state_apply for a record this instance produced, from its delivery report: the record's
 * time is now (the acknowledgement's), not the report's timestamp, which is the broker's
 * LogAppendTime whenever it sends one. librdkafka's mock cluster answers every Produce with
 * a LogAppendTime of 1234 ms: read as the record's time, every request this instance
 * finished was "older than retention" and state_forget_older dropped it a minute later, so
 * a later copy of a group chat was POSTed again without a lookup (issue 13's soak).
 */
bool state_apply_delivered(struct state *st, const rd_kafka_message_t *msg) CP_MUSTCHECK;

/*
 * The value of request id's done record at offset (malloc'd, *len bytes). Fails, with
 * "fingerprint collision" in err, when the record there is another request's: the caller
 * then treats id as not done.
 */
bool state_fetch(struct state *st, const char *id, int32_t partition, int64_t offset, char **value,
                 size_t *len, char *err, size_t errcap) CP_MUSTCHECK;

/*
 * Forgets requests whose last record is older than before_wall_ms (and that are not
 * active). Their tombstones are written by the next restore of their partition.
 */
size_t state_forget_older(struct state *st, int64_t before_wall_ms);

/* Remembered requests, for metrics and the recovery notes. */
size_t state_count(const struct state *st);

/*
 * Bytes the mirror holds (entries, compacted runs, tables; with glibc's 16 bytes per
 * block), not counting the fixed struct and the results cached for replays.
 */
size_t state_memory_bytes(const struct state *st);


#endif
