/*
 * staterec.h - the format of the records in the state topic (docs/state.md), written and
 * read here only.
 *
 * A record is keyed by the request id and partitioned like the input. Its kind is in the
 * STATE_HEADER header: "intent" (a POST may leave; a small JSON value), "operation" (a 202's
 * operation, a JSON value), "done" (the result's bytes; STATE_STATUS_HEADER says how it
 * ended). A null value is a tombstone. Besides requests, one hand-over mark per partition
 * (STATE_MARK_KEY) says below which input offset every result is acknowledged.
 */
#ifndef CHATPROV_STATEREC_H
#define CHATPROV_STATEREC_H

#include <librdkafka/rdkafka.h>

#include "common.h"

#define STATE_HEADER "chatprov-state"
/* A done record's outcome; the DLQ's copies of failed requests carry the same header. */
#define STATE_STATUS_HEADER "chatprov-status"
/*
 * On a failed done record whose group chat may exist all the same (a POST whose answer was
 * lost, an operation not seen to its end): the time (epoch ms) from which the chat may have
 * been created. The mirror takes such a record for an intent of that time, so the request
 * is looked up before it is created again.
 */
#define STATE_HEADER_OUTCOME_UNKNOWN "chatprov-outcome-unknown"
/*
 * On a done record of a request that had an intent: the intent's time (epoch ms), when its
 * first POST may have left. The mirror takes it as the record's time, so that a lookup
 * after a failed replay fetch searches from there, not from when the result was written.
 */
#define STATE_INTENT_AT_HEADER "chatprov-intent-at"
/*
 * The hand-over mark: one record per state partition (this key, a control character first,
 * so no request id can be it; STATE_HEADER = STATE_MARK_KIND; value: a decimal offset).
 * Every input offset of the partition below it has its result acknowledged. An instance
 * that gives a partition up writes it, because the commit it tries in the same moment is
 * refused while the group rebalances (REBALANCE_IN_PROGRESS); the next owner skips what the
 * mark covers instead of answering it a second time (docs/state.md).
 */
#define STATE_MARK_KEY  "\001answered-below" /* octal: a hex escape would eat the "a" */
#define STATE_MARK_KIND "answered-below"

enum state_kind {
	STATE_NONE,      /* nothing known */
	STATE_INTENT,    /* a POST may have been sent; its outcome is unknown */
	STATE_OPERATION, /* a 202 operation is running */
	STATE_DONE,      /* final result at `offset` of the state partition */
};

/* The header value of a record kind ("intent", "operation", "done"). */
const char *staterec_kind_name(enum state_kind kind);

/* ---- writing ---- */

/* The headers of an intent or operation record. NULL: out of memory. */
rd_kafka_headers_t *staterec_headers(enum state_kind kind) CP_MUSTCHECK;

/*
 * The headers of a done record: its status ("succeeded", "failed"), the intent's time
 * (0: there was none) and, for a failure whose chat may exist, since when (0: it cannot).
 */
rd_kafka_headers_t *staterec_done_headers(const char *status, int64_t intent_wall_ms,
                                          int64_t unknown_since_wall_ms) CP_MUSTCHECK;

/* The headers of a hand-over mark; its value is the offset in decimal. */
rd_kafka_headers_t *staterec_mark_headers(void) CP_MUSTCHECK;

/*
 * An intent record's value, {"at":ms,"clientRequestId":id}, in out (cut to cap as snprintf
 * cuts; 128 bytes hold it).
 */
void staterec_intent_value(char *out, size_t cap, int64_t at_wall_ms,
                           const char *client_request_id);

/* What an operation record holds. */
struct staterec_operation {
	const char *location;    /* where to poll */
	int64_t started_wall_ms; /* when the operation started */
	unsigned attempts;       /* POSTs sent up to the 202 (0: not recorded) */
	const char *request_id;  /* Graph's request-id of that POST ("": none) */
};

/* An operation record's value, malloc'd JSON. NULL: out of memory. */
char *staterec_operation_value(const struct staterec_operation *op) CP_MUSTCHECK;

/* ---- reading ---- */

/* A record's kind; STATE_NONE when it has none, or one this version does not know. */
enum state_kind staterec_kind(const rd_kafka_message_t *msg);

/* A done record whose status is "succeeded". */
bool staterec_succeeded(const rd_kafka_message_t *msg);

/* Whether the record has this header, whatever its value. */
bool staterec_has(const rd_kafka_message_t *msg, const char *header);

/* A header holding a whole decimal number. False: absent or not one. */
bool staterec_number(const rd_kafka_message_t *msg, const char *header, int64_t *out) CP_MUSTCHECK;

/* A hand-over mark (key and kind); *offset its offset when readable (else false). */
bool staterec_is_mark(const rd_kafka_message_t *msg);
bool staterec_mark_offset(const rd_kafka_message_t *msg, int64_t *offset) CP_MUSTCHECK;

/*
 * An operation record's value: *strings is the location then the request id ("" when
 * absent, or longer than Graph's), NUL-terminated one after the other in one malloc'd
 * block. False: unreadable (not JSON, no location string, no startedAt) or out of memory.
 */
bool staterec_read_operation(const rd_kafka_message_t *msg, char **strings,
                             int64_t *started_wall_ms, unsigned *attempts) CP_MUSTCHECK;

#endif
